//! Rough throughput numbers: `cargo test --release -p celeriac-sqlite --test perf -- --ignored --nocapture`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::backend::ResultBackend;
use celeriac_core::broker::{Broker, Publish};
use celeriac_core::state::{TaskMeta, TaskState};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let db = db();
    let s = db.store.clone();
    let n = 20_000;

    let t = Instant::now();
    for i in 0..n {
        s.publish(publish("one", &format!("o{i}"), 0))
            .await
            .unwrap();
    }
    let e = t.elapsed();
    println!("publish one by one: {:.0}/s", n as f64 / e.as_secs_f64());

    let t = Instant::now();
    for chunk in 0..10 {
        let batch: Vec<Publish> = (0..n / 10)
            .map(|i| publish("batch", &format!("b{chunk}-{i}"), 0))
            .collect();
        s.publish_batch(batch).await.unwrap();
    }
    let e = t.elapsed();
    println!("publish_batch: {:.0}/s", n as f64 / e.as_secs_f64());

    // Drain with 4 "slots": each fetches, stores a result, acks.
    let t = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = consumer(&s, &["batch"]).await;
        let s = s.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let got = c.fetch(32, Duration::from_millis(20)).await.unwrap();
                if got.is_empty() {
                    break;
                }
                let mut handles = Vec::new();
                for d in &got {
                    let s = s.clone();
                    let id = d.message.task_id().unwrap().to_string();
                    handles.push(tokio::spawn(async move {
                        let mut m = TaskMeta::pending(id);
                        m.status = TaskState::Success;
                        m.result = 1.into();
                        s.store(&m, Some(Duration::from_secs(3600))).await.unwrap();
                    }));
                }
                for h in handles {
                    h.await.unwrap();
                }
                c.ack(&got.iter().map(|d| d.tag.clone()).collect::<Vec<_>>())
                    .await
                    .unwrap();
                done.fetch_add(got.len(), std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let e = t.elapsed();
    let d = done.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(d, n);
    println!(
        "drain (fetch + store result + ack): {:.0}/s",
        d as f64 / e.as_secs_f64()
    );
}
