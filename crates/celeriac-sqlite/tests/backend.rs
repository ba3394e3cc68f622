mod common;

use std::time::{Duration, Instant};

use celeriac_core::backend::ResultBackend;
use celeriac_core::state::{ExceptionInfo, TaskMeta, TaskState};
use common::*;
use serde_json::json;

fn meta(id: &str, status: TaskState, result: serde_json::Value) -> TaskMeta {
    let mut m = TaskMeta::pending(id);
    m.status = status;
    m.result = result;
    if status.is_ready() {
        m.date_done = Some(chrono::Utc::now());
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_get_forget() {
    let db = db();
    let b = &db.store;
    assert!(b.get("t").await.unwrap().is_none());
    b.store(
        &meta("t", TaskState::Started, json!({"pid": 1, "hostname": "h"})),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        b.get("t").await.unwrap().unwrap().status,
        TaskState::Started
    );
    let done = meta("t", TaskState::Success, json!(5));
    b.store(&done, None).await.unwrap();
    let got = b.get("t").await.unwrap().unwrap();
    assert_eq!(got, TaskMeta::from_json(done.to_json().as_bytes()).unwrap());
    assert_eq!(got.result, json!(5));
    b.forget("t").await.unwrap();
    assert!(b.get("t").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_text_is_celery_meta_json() {
    let db = db();
    let mut m = meta(
        "t",
        TaskState::Failure,
        ExceptionInfo::new("ValueError", "boom").to_value(),
    );
    m.date_done = None;
    db.store.store(&m, None).await.unwrap();
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let text: String = conn
        .query_row("SELECT meta FROM results WHERE task_id = 't'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(text, m.to_json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_is_never_overwritten() {
    let db = db();
    let b = &db.store;
    b.store(&meta("t", TaskState::Success, json!("first")), None)
        .await
        .unwrap();
    b.store(&meta("t", TaskState::Started, json!(null)), None)
        .await
        .unwrap();
    b.store(
        &meta(
            "t",
            TaskState::Failure,
            ExceptionInfo::new("ValueError", "late").to_value(),
        ),
        None,
    )
    .await
    .unwrap();
    b.store(&meta("t", TaskState::Success, json!("second")), None)
        .await
        .unwrap();
    let got = b.get("t").await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.result),
        (TaskState::Success, json!("first"))
    );
    // Failures may be overwritten (a retry that later succeeds).
    b.store(
        &meta(
            "f",
            TaskState::Failure,
            ExceptionInfo::new("ValueError", "x").to_value(),
        ),
        None,
    )
    .await
    .unwrap();
    b.store(&meta("f", TaskState::Success, json!(1)), None)
        .await
        .unwrap();
    assert_eq!(
        b.get("f").await.unwrap().unwrap().status,
        TaskState::Success
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire() {
    let db = db();
    let b = &db.store;
    b.store(
        &meta("short", TaskState::Success, json!(1)),
        Some(Duration::from_millis(150)),
    )
    .await
    .unwrap();
    b.store(&meta("kept", TaskState::Success, json!(2)), None)
        .await
        .unwrap();
    assert!(b.get("short").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        b.get("short").await.unwrap().is_none(),
        "expired results are invisible"
    );
    assert!(b.get("kept").await.unwrap().is_some());
    // An expired row no longer blocks a new result under the same id.
    b.store(&meta("short", TaskState::Success, json!(3)), None)
        .await
        .unwrap();
    assert_eq!(b.get("short").await.unwrap().unwrap().result, json!(3));
    // Pruning removes expired rows for good (it runs at most once a minute per store).
    b.store(
        &meta("gone", TaskState::Success, json!(4)),
        Some(Duration::from_millis(1)),
    )
    .await
    .unwrap();
    let fresh = db.reopen();
    tokio::time::sleep(Duration::from_millis(20)).await;
    fresh
        .store(&meta("other", TaskState::Success, json!(5)), None)
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM results WHERE task_id = 'gone'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0, "expired rows are pruned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_wakes_on_in_process_store() {
    let db = db();
    let b = db.store.clone();
    let writer = b.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer
            .store(&meta("t", TaskState::Started, json!(null)), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer
            .store(&meta("t", TaskState::Success, json!(42)), None)
            .await
            .unwrap();
    });
    let start = Instant::now();
    let got = b.wait("t", Duration::from_secs(5)).await.unwrap().unwrap();
    assert_eq!(got.result, json!(42));
    assert!(start.elapsed() < Duration::from_secs(1));
    // Timing out returns the latest state.
    assert!(b
        .wait("never", Duration::from_millis(50))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_wakes_when_another_store_writes() {
    let db = db();
    let other = db.reopen();
    let mut latencies = Vec::new();
    for i in 0..10 {
        let id = format!("t{i}");
        let w = other.clone();
        let wid = id.clone();
        let stored = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            w.store(&meta(&wid, TaskState::Success, json!(i)), None)
                .await
                .unwrap();
            Instant::now()
        });
        let got = db
            .store
            .wait(&id, Duration::from_secs(3))
            .await
            .unwrap()
            .unwrap();
        let woke = Instant::now();
        assert_eq!(got.result, json!(i));
        latencies.push(woke.saturating_duration_since(stored.await.unwrap()));
    }
    latencies.sort();
    println!("cross-store store -> wait latency {latencies:?}");
    // Woken by the write, not by the 3 s timeout (how fast is the benchmark's business).
    assert!(latencies[9] < Duration::from_secs(1), "{latencies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_save_restore() {
    let db = db();
    let b = &db.store;
    assert!(b.restore_group("g").await.unwrap().is_none());
    let ids = vec!["a".to_string(), "b".to_string()];
    b.save_group("g", &ids, None).await.unwrap();
    assert_eq!(b.restore_group("g").await.unwrap(), Some(ids));
    b.save_group("g2", &["x".into()], Some(Duration::from_millis(50)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(b.restore_group("g2").await.unwrap().is_none());
    // Visible from another store on the same file.
    assert!(db.reopen().restore_group("g").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stores_group_commit() {
    let db = db();
    let mut tasks = Vec::new();
    for i in 0..500 {
        let b = db.store.clone();
        tasks.push(tokio::spawn(async move {
            b.store(&meta(&format!("t{i}"), TaskState::Success, json!(i)), None)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in [0, 250, 499] {
        assert_eq!(
            db.store
                .get(&format!("t{i}"))
                .await
                .unwrap()
                .unwrap()
                .result,
            json!(i)
        );
    }
}
