//! Single flight: identical concurrent lookups share one run of the work behind them.
//!
//! [`Flights::run`] boards a request on the flight of its key. The first request to get in flies
//! it (runs the work: for the cache, one L2 lookup and, when it misses, one computation); later ones
//! wait for its outcome. A cancelled leader hands over to one of the waiters, which then runs its
//! own work. An outcome, answer or failure, is shared by the requests that waited for it, and the
//! flight leaves the map when its last passenger does: nothing is kept, so a failure is never
//! cached and a later request starts a new flight (or finds what the last one left in L1).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// One flight: the first request to get in fills it, later ones wait for it.
type Flight<T> = Arc<OnceCell<T>>;

/// The flights in progress, by key.
pub struct Flights<T> {
    /// A plain mutex: held to board or leave a flight, never across an await.
    map: Mutex<HashMap<String, Flight<T>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights { map: Mutex::new(HashMap::new()) }
    }
}

impl<T: Clone> Flights<T> {
    /// The outcome of the flight of `key`, and whether this call flew it (ran `work`). Concurrent
    /// calls with the same key run one `work` between them and all get its outcome.
    pub async fn run<F, Fut>(&self, key: &str, work: F) -> (T, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let flight = self.map.lock().expect("flights lock").entry(key.to_owned()).or_default().clone();
        let boarding = Boarding { flights: &self.map, key, flight: &flight };
        // Set by whoever flies (the other requests only wait for it).
        let mut led = false;
        let led_ref = &mut led;
        let outcome = flight
            .get_or_init(move || async move {
                let outcome = work().await;
                *led_ref = true;
                outcome
            })
            .await
            .clone();
        drop(boarding);
        (outcome, led)
    }
}

impl<T> Flights<T> {
    /// Requests currently boarded on a flight (waiting for one or flying it).
    pub fn passengers(&self) -> usize {
        let flights = self.map.lock().expect("flights lock");
        flights.values().map(|f| Arc::strong_count(f).saturating_sub(1)).sum()
    }
}

/// A request's place on a flight: when it leaves (done, or cancelled), the flight leaves the map once
/// it finished or nobody else waits for it, so later requests read L1 or start a new flight and no
/// abandoned flight stays behind.
struct Boarding<'a, T> {
    flights: &'a Mutex<HashMap<String, Flight<T>>>,
    key: &'a str,
    flight: &'a Flight<T>,
}

impl<T> Drop for Boarding<'_, T> {
    fn drop(&mut self) {
        let Ok(mut flights) = self.flights.lock() else { return };
        let Some(current) = flights.get(self.key) else { return };
        // The map's reference and ours: nobody else will fly it. (Joining happens under this lock.)
        let alone = Arc::strong_count(self.flight) <= 2;
        if Arc::ptr_eq(current, self.flight) && (self.flight.initialized() || alone) {
            flights.remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The work is held by a barrier (or never finishes) until every request has boarded, so no
    //! request can arrive after the flight landed and start another: deterministic on a
    //! single-threaded runtime, whatever the machine's load.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::{oneshot, Barrier};
    use tokio::task::JoinHandle;

    use super::*;

    /// Lets the spawned requests run until `n` of them have boarded.
    async fn until_boarded<T: Clone>(flights: &Flights<T>, n: usize) {
        for _ in 0..10_000 {
            if flights.passengers() >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{} of {n} requests boarded", flights.passengers());
    }

    /// Lets the held work go on (it waits at `gate`); fails rather than hangs when no work is waiting,
    /// or when several works released each other.
    async fn release(gate: &Barrier) {
        let released = tokio::time::timeout(std::time::Duration::from_secs(10), gate.wait()).await;
        released.expect("one work waits at the gate");
    }

    /// `n` requests for `key` whose work waits at `gate` and then answers `answer`, counted in `runs`.
    fn requests<T: Clone + Send + Sync + 'static>(
        flights: &Arc<Flights<T>>,
        key: &'static str,
        n: usize,
        gate: &Arc<Barrier>,
        runs: &Arc<AtomicUsize>,
        answer: T,
    ) -> Vec<JoinHandle<(T, bool)>> {
        (0..n)
            .map(|_| {
                let (flights, gate, runs, answer) = (flights.clone(), gate.clone(), runs.clone(), answer.clone());
                tokio::spawn(async move {
                    let work = || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        release(&gate).await;
                        answer
                    };
                    flights.run(key, work).await
                })
            })
            .collect()
    }

    async fn outcomes<T>(requests: Vec<JoinHandle<(T, bool)>>) -> Vec<(T, bool)> {
        let mut out = Vec::with_capacity(requests.len());
        for r in requests {
            out.push(r.await.expect("request task"));
        }
        out
    }

    #[tokio::test]
    async fn identical_concurrent_requests_share_one_run_of_the_work_and_leave_nothing_behind() {
        let (flights, gate, runs) = (Arc::new(Flights::default()), Arc::new(Barrier::new(2)), Arc::default());

        let boarded = requests(&flights, "q", 20, &gate, &runs, 7_u32);
        until_boarded(&flights, 20).await;
        release(&gate).await;
        let answers = outcomes(boarded).await;

        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(answers.iter().all(|(answer, _)| *answer == 7), "{answers:?}");
        assert_eq!(answers.iter().filter(|(_, led)| *led).count(), 1, "exactly one request flew");
        assert_eq!(flights.passengers(), 0);
        assert!(flights.map.lock().unwrap().is_empty(), "a landed flight leaves the map");
    }

    #[tokio::test]
    async fn a_failure_is_shared_by_the_requests_that_waited_for_it_and_never_kept() {
        let (flights, gate, runs) = (Arc::new(Flights::default()), Arc::new(Barrier::new(2)), Arc::default());
        let failed: Result<u32, Arc<String>> = Err(Arc::new("database unavailable".to_owned()));

        let boarded = requests(&flights, "q", 5, &gate, &runs, failed);
        until_boarded(&flights, 5).await;
        release(&gate).await;
        let answers = outcomes(boarded).await;
        let later = flights.run("q", || async { Ok(8) }).await;

        assert!(answers.iter().all(|(a, _)| a.as_ref().is_err_and(|e| e.as_str() == "database unavailable")));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(later, (Ok(8), true), "the next request flies again");
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_the_flight_over_to_a_waiting_request() {
        let flights: Arc<Flights<u32>> = Arc::new(Flights::default());
        let (started, leader_started) = oneshot::channel();
        let leader = tokio::spawn({
            let flights = flights.clone();
            async move {
                let work = || async move {
                    let _ = started.send(());
                    std::future::pending::<u32>().await
                };
                flights.run("q", work).await
            }
        });
        leader_started.await.expect("the leader runs its work");
        let waiter = tokio::spawn({
            let flights = flights.clone();
            async move { flights.run("q", || async { 2 }).await }
        });
        until_boarded(&flights, 2).await;

        leader.abort();
        let handed_over = waiter.await.expect("waiter task");

        assert!(leader.await.unwrap_err().is_cancelled());
        assert_eq!(handed_over, (2, true), "the waiter flew its own work");
        assert_eq!(flights.passengers(), 0);
        assert!(flights.map.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_held_flight_does_not_hold_requests_for_other_keys() {
        let (flights, gate, runs) = (Arc::new(Flights::default()), Arc::new(Barrier::new(2)), Arc::default());

        let held = requests(&flights, "slow", 3, &gate, &runs, 1_u32);
        until_boarded(&flights, 3).await;
        let other = flights.run("fast", || async { 2 }).await;
        release(&gate).await;
        let answers = outcomes(held).await;

        assert_eq!(other, (2, true));
        assert!(answers.iter().all(|(a, _)| *a == 1));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
