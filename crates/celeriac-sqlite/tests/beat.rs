//! Beat's lease and last runs in the file: what the tables hold and how a file made before
//! them gets them. The generic `BeatStore` contract is checked by celeriac-testkit's beat
//! suite; every test here has its own temp file.

mod common;

use std::time::Duration;

use celeriac_core::backend::ResultBackend;
use celeriac_core::beat::{BeatStore, LastRun};
use celeriac_core::broker::Broker;
use celeriac_core::time::from_millis;
use common::*;

const TTL: Duration = Duration::from_secs(30);

fn beat(store: &celeriac_sqlite::SqliteStore) -> &dyn BeatStore {
    Broker::beat_store(store).expect("the embedded store has a beat store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_keeps_its_token_for_the_next_process() {
    let db = db();
    let first = beat(&db.store);
    let t1 = first.acquire_lease("default", "a", TTL).await.unwrap();
    assert_eq!(t1, Some(1));
    first.release_lease("default", "a", 1).await.unwrap();
    let other = db.reopen();
    let t2 = beat(&other)
        .acquire_lease("default", "b", TTL)
        .await
        .unwrap();
    assert_eq!(
        t2,
        Some(2),
        "the row outlives the release, so tokens keep growing"
    );
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let (holder, token, expires_at): (String, i64, i64) = conn
        .query_row(
            "SELECT holder, token, expires_at FROM beat_leases WHERE schedule = 'default'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((holder.as_str(), token), ("b", 2));
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        (now..=now + 30_000).contains(&expires_at),
        "expires_at is ms on the machine's clock: {expires_at} (now {now})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_before_beat_gets_the_tables_on_open() {
    let db = db();
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    conn.execute_batch("DROP TABLE beat_leases; DROP TABLE beat_runs;")
        .unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    let reopened = db.reopen();
    let store = ResultBackend::beat_store(&*reopened).expect("the backend side has it too");
    let token = store.acquire_lease("default", "a", TTL).await.unwrap();
    let run = LastRun {
        entry: "tick".into(),
        schedule: "<freq: 10.00 seconds>".into(),
        at: from_millis(1_767_225_600_123),
        total_run_count: 7,
    };
    let recorded = store
        .record_runs(
            "default",
            "a",
            token.expect("a free lease"),
            std::slice::from_ref(&run),
        )
        .await
        .unwrap();
    assert!(recorded);
    assert_eq!(store.last_runs("default").await.unwrap(), [run]);
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let after: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(after, version, "new tables need no schema version bump");
}
