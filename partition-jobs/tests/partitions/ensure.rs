//! `ensure_month`: creation, idempotence, races, and not blocking ingestion.

use partition_jobs::{ensure_month, ensure_months, read_catalog, Error};

use crate::helpers::{m, TestDb, LOCK_TIMEOUT};

#[tokio::test]
async fn ensure_month_creates_the_partition_then_reports_it_already_exists() {
    let db = TestDb::new().await;
    assert!(ensure_month(&db.client, m(2026, 11), LOCK_TIMEOUT).await.unwrap());
    assert!(!ensure_month(&db.client, m(2026, 11), LOCK_TIMEOUT).await.unwrap());

    let catalog = read_catalog(&db.client).await.unwrap();
    assert_eq!(catalog.partitions.len(), 1);
    let p = &catalog.partitions[0];
    assert_eq!(p.name, "events_2026_11");
    assert_eq!(p.month, Some(m(2026, 11)));
    assert_eq!((p.from, p.to), (Some(m(2026, 11).start()), Some(m(2026, 12).start())));
    assert_eq!(catalog.default_partition, None);
    // The parent's two indexes were made on the new partition by ATTACH.
    let indexes = "SELECT count(*) FROM pg_indexes WHERE tablename = 'events_2026_11'";
    assert_eq!(db.count(indexes).await, 2);
    let rollup = "SELECT count(*) FROM rollup_months WHERE month = '2026-11-01' AND complete";
    assert_eq!(db.count(rollup).await, 1);
}

#[tokio::test]
async fn bounds_are_read_correctly_whatever_the_session_time_zone() {
    let db = TestDb::new().await;
    ensure_month(&db.client, m(2027, 3), LOCK_TIMEOUT).await.unwrap();
    db.client.batch_execute("SET TimeZone = 'Asia/Kathmandu'; SET DateStyle = 'SQL, DMY'").await.unwrap();
    let catalog = read_catalog(&db.client).await.unwrap();
    assert_eq!(catalog.partitions[0].month, Some(m(2027, 3)));
    assert!(!ensure_month(&db.client, m(2027, 3), LOCK_TIMEOUT).await.unwrap());
    assert!(ensure_month(&db.client, m(2027, 4), LOCK_TIMEOUT).await.unwrap());
    let catalog = read_catalog(&db.client).await.unwrap();
    assert_eq!(catalog.partitions[1].to, Some(m(2027, 5).start()));
}

#[tokio::test]
async fn racing_ensure_month_from_two_connections_both_succeed_with_one_partition() {
    let db = TestDb::new().await;
    let (a, b) = (db.connect().await, db.connect().await);
    for month in m(2026, 1).through(m(2026, 6)) {
        let (ra, rb) = tokio::join!(ensure_month(&a, month, LOCK_TIMEOUT), ensure_month(&b, month, LOCK_TIMEOUT));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(ra ^ rb, "exactly one creates {month}: {ra} {rb}");
    }
    let expected: Vec<String> = m(2026, 1).through(m(2026, 6)).map(|x| x.partition_name()).collect();
    assert_eq!(db.partition_names().await, expected);
}

#[tokio::test]
async fn ensure_months_returns_only_the_months_it_created() {
    let db = TestDb::new().await;
    ensure_month(&db.client, m(2026, 12), LOCK_TIMEOUT).await.unwrap();
    let created = ensure_months(&db.client, m(2026, 11), m(2027, 1), LOCK_TIMEOUT).await.unwrap();
    assert_eq!(created, vec![m(2026, 11), m(2027, 1)]);
    let storm = ensure_months(&db.client, m(2026, 1), m(2036, 1), LOCK_TIMEOUT).await.unwrap_err();
    assert!(matches!(storm, Error::RangeTooLarge { limit: 120, .. }), "{storm:?}");
    assert_eq!(db.partition_names().await.len(), 3);
}

#[tokio::test]
async fn a_detached_table_of_the_month_is_never_reattached_silently() {
    let db = TestDb::new().await;
    ensure_month(&db.client, m(2026, 11), LOCK_TIMEOUT).await.unwrap();
    db.client.batch_execute("ALTER TABLE events DETACH PARTITION events_2026_11").await.unwrap();
    let err = ensure_month(&db.client, m(2026, 11), LOCK_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, Error::UnattachedTableExists { ref name } if name == "events_2026_11"));
    assert_eq!(read_catalog(&db.client).await.unwrap().detached, vec![m(2026, 11)]);
}

#[tokio::test]
async fn a_hand_made_partition_over_the_month_is_respected() {
    let db = TestDb::new().await;
    db.client
        .batch_execute(
            "CREATE TABLE events_q1 PARTITION OF events \
             FOR VALUES FROM ('2027-01-01 00:00+00') TO ('2027-04-01 00:00+00')",
        )
        .await
        .unwrap();
    assert!(!ensure_month(&db.client, m(2027, 2), LOCK_TIMEOUT).await.unwrap());
    db.client
        .batch_execute(
            "CREATE TABLE events_odd PARTITION OF events \
             FOR VALUES FROM ('2027-04-10 00:00+00') TO ('2027-04-20 00:00+00')",
        )
        .await
        .unwrap();
    let err = ensure_month(&db.client, m(2027, 4), LOCK_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, Error::Overlap { ref partition, .. } if partition == "events_odd"));
}

#[tokio::test]
async fn creating_next_month_does_not_block_ingestion_into_this_month() {
    let db = TestDb::new().await;
    ensure_month(&db.client, m(2026, 11), LOCK_TIMEOUT).await.unwrap();
    let at = m(2026, 11).start() + chrono::Duration::days(3);
    // A writer holds a transaction open on events (it inserted and read).
    let holder = db.connect().await;
    holder.batch_execute("BEGIN").await.unwrap();
    let insert = "INSERT INTO events (event_id, app_id, event_type, created_at, received_at) \
                  VALUES (gen_random_uuid(), gen_random_uuid(), 'open', $1, now())";
    holder.execute(insert, &[&at]).await.unwrap();
    holder.query("SELECT count(*) FROM events", &[]).await.unwrap();

    let ingest = db.connect().await;
    let keep_ingesting = async {
        for _ in 0..50 {
            let sql = "SET lock_timeout = '200ms'";
            ingest.batch_execute(sql).await.unwrap();
            ingest.execute(insert, &[&at]).await.expect("insert not blocked");
        }
    };
    let (created, ()) = tokio::join!(ensure_month(&db.client, m(2026, 12), LOCK_TIMEOUT), keep_ingesting);
    assert!(created.expect("attach does not wait for the open transaction"));
    // Control: the same open transaction makes `PARTITION OF` (ACCESS EXCLUSIVE) time out.
    let partition_of = "SET lock_timeout = '200ms'; CREATE TABLE events_2027_01 PARTITION OF events \
                        FOR VALUES FROM ('2027-01-01 00:00+00') TO ('2027-02-01 00:00+00')";
    let err = ingest.batch_execute(partition_of).await.unwrap_err();
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE));
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM events_2026_11").await, 51);
}
