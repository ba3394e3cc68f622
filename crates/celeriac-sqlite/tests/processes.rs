//! Several real processes on one file: the test binary re-runs itself as consumers.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use celeriac_core::backend::ResultBackend;
use celeriac_core::broker::{Broker, Publish};
use celeriac_core::state::{TaskMeta, TaskState};
use celeriac_sqlite::SqliteStore;
use common::*;

const DB_ENV: &str = "CELERIAC_SQLITE_CHILD_DB";
const OUT_ENV: &str = "CELERIAC_SQLITE_CHILD_OUT";

/// Run by the children only: consume until the queue stays empty, store a result per message,
/// ack, and write the ids seen to a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn child_consumer() {
    let (Ok(db), Ok(out)) = (std::env::var(DB_ENV), std::env::var(OUT_ENV)) else {
        return;
    };
    let store = SqliteStore::open(&db, Default::default()).unwrap();
    let c = consumer(&store, &["q"]).await;
    let mut seen = Vec::new();
    loop {
        let got = c.fetch(10, Duration::from_millis(500)).await.unwrap();
        if got.is_empty() {
            break;
        }
        for d in &got {
            let id = d.message.task_id().unwrap().to_string();
            let mut m = TaskMeta::pending(&id);
            m.status = TaskState::Success;
            m.result = serde_json::json!(std::process::id());
            store.store(&m, None).await.unwrap();
            seen.push(id);
        }
        c.ack(&got.iter().map(|d| d.tag.clone()).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    c.close().await.unwrap();
    std::fs::write(out, seen.join("\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_file_without_duplicates() {
    let db = db();
    let n = 2000;
    let all: Vec<Publish> = (0..n)
        .map(|i| publish("q", &format!("m{i}"), (i % 10) as u8))
        .collect();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|k| {
            let out = db.dir.path().join(format!("child{k}.txt"));
            let child = std::process::Command::new(&exe)
                .args(["--exact", "child_consumer", "--ignored", "--nocapture"])
                .env(DB_ENV, db.path())
                .env(OUT_ENV, &out)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();
    // Publish while the children are already consuming, in chunks.
    for chunk in all.chunks(100) {
        db.store.publish_batch(chunk.to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seen = Vec::new();
    for (mut child, out) in children {
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(out).unwrap();
        seen.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(seen.len(), n, "every message delivered exactly once");
    assert_eq!(unique.len(), n);
    let stats = db
        .store
        .queue_stats()
        .unwrap()
        .queue_lengths(&[])
        .await
        .unwrap();
    assert_eq!((stats[0].ready, stats[0].unacked), (0, 0));
    let meta = db.store.get("m0").await.unwrap().unwrap();
    assert_eq!(meta.status, TaskState::Success);
}
