//! The facade's single flight without Redis or PostgreSQL: each computation is held by a barrier
//! until every request has boarded its flight, so none can arrive after the flight landed and
//! compute again (the API tests in `tests/api/cache.rs` cover the same with Redis and a database).

use std::sync::Arc;

use serde_json::json;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::*;
use crate::config::Config;

/// The default configuration: L1 on, no Redis.
fn in_process_cache() -> Cache {
    let (cfg, stop, tracker) = (Config::default(), CancellationToken::new(), TaskTracker::new());
    Cache::start(&cfg, Bus::start(&cfg, stop.clone(), &tracker), stop, &tracker)
}

fn closed_query(app: Uuid) -> QueryKey {
    QueryKey { app, text: "timeline|1|2||day|UTC".into(), class: TtlClass::Closed, personal: false }
}

/// Lets the held work go on (it waits at `gate`); fails rather than hangs when no work is waiting,
/// or when several works released each other.
async fn release(gate: &Barrier) {
    let released = tokio::time::timeout(std::time::Duration::from_secs(10), gate.wait()).await;
    released.expect("one work waits at the gate");
}

/// `n` identical requests whose computation waits at `gate`, then gives `answer`.
fn requests(
    cache: &Cache,
    key: &QueryKey,
    n: usize,
    gate: &Arc<Barrier>,
    answer: fn() -> Result<(Value, Source), QueryError>,
) -> Vec<JoinHandle<Result<Hit, Arc<QueryError>>>> {
    (0..n)
        .map(|_| {
            let (cache, key, gate) = (cache.clone(), key.clone(), gate.clone());
            tokio::spawn(async move {
                let compute = || async move {
                    release(&gate).await;
                    answer()
                };
                cache.get_or_compute(&key, compute).await
            })
        })
        .collect()
}

/// Lets the spawned requests run until `n` of them have boarded.
async fn until_boarded(cache: &Cache, n: usize) {
    for _ in 0..10_000 {
        if cache.passengers() >= n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{} of {n} requests boarded", cache.passengers());
}

async fn answers(requests: Vec<JoinHandle<Result<Hit, Arc<QueryError>>>>) -> Vec<Result<Hit, Arc<QueryError>>> {
    let mut out = Vec::with_capacity(requests.len());
    for r in requests {
        out.push(r.await.expect("request task"));
    }
    out
}

#[tokio::test]
async fn identical_concurrent_misses_share_one_computation_and_the_waiters_are_answered_in_process() {
    let (cache, gate) = (in_process_cache(), Arc::new(Barrier::new(2)));
    let key = closed_query(Uuid::new_v4());

    let boarded = requests(&cache, &key, 10, &gate, || Ok((json!([1, 2]), Source::Rollup)));
    until_boarded(&cache, 10).await;
    release(&gate).await;
    let hits: Vec<Hit> = answers(boarded).await.into_iter().map(|h| h.expect("an answer")).collect();
    let again = cache.get_or_compute(&key, || async { unreachable!("answered from L1") }).await.unwrap();

    let mut tiers: Vec<&str> = hits.iter().map(|h| h.tier.as_str()).collect();
    tiers.sort_unstable();
    assert_eq!(tiers, [["l1"; 9].as_slice(), &["miss"]].concat());
    assert!(hits.iter().all(|h| &h.value.data[..] == b"[1,2]" && h.value.source == Source::Rollup));
    assert_eq!((again.tier, &again.value.data[..]), (Tier::L1, &b"[1,2]"[..]));
    assert_eq!((cache.computations(), cache.passengers()), (1, 0));
}

#[tokio::test]
async fn a_failed_computation_answers_every_waiter_and_the_next_request_computes_again() {
    let (cache, gate) = (in_process_cache(), Arc::new(Barrier::new(2)));
    let key = closed_query(Uuid::new_v4());
    let unavailable =
        || Err(QueryError::Pool(deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)));

    let boarded = requests(&cache, &key, 5, &gate, unavailable);
    until_boarded(&cache, 5).await;
    release(&gate).await;
    let failures = answers(boarded).await;
    let retried = cache.get_or_compute(&key, || async { Ok((json!({"n": 3}), Source::Raw)) }).await.unwrap();

    assert!(failures.iter().all(|f| f.as_ref().is_err_and(|e| matches!(**e, QueryError::Pool(_)))));
    assert_eq!((retried.tier, &retried.value.data[..]), (Tier::Miss, &br#"{"n":3}"#[..]));
    assert_eq!(cache.computations(), 2, "the failure was not cached");
}

#[tokio::test]
async fn a_commit_between_two_requests_makes_the_second_compute_again() {
    let cache = in_process_cache();
    let key = closed_query(Uuid::new_v4());

    let first = cache.get_or_compute(&key, || async { Ok((json!(1), Source::Raw)) }).await.unwrap();
    cache.invalidate_apps([key.app]);
    let second = cache.get_or_compute(&key, || async { Ok((json!(2), Source::Raw)) }).await.unwrap();

    assert_eq!((first.tier, &first.value.data[..]), (Tier::Miss, &b"1"[..]));
    assert_eq!((second.tier, &second.value.data[..]), (Tier::Miss, &b"2"[..]));
}
