//! Interop with real Python Celery 5.7 on Redis, both directions, using the demo app
//! (examples/demo) and its Python twin (tests/interop/pyapp.py).
//!
//! Needs `CELERIAC_TEST_REDIS_URL` (skipped with a message when unset) and a Python with
//! `celery[redis]==5.7.0`: `.venv/bin/python` at the workspace root (what `.ci/run` creates)
//! or `CELERIAC_PYTHON`. Each test uses its own Redis database, flushed first.

mod common;

use std::time::{Duration, Instant};

use celeriac::serde_json::{json, Value};
use celeriac_demo::sleep;
use common::*;

/// One test's Redis database, flushed; `None` (test skipped) without CELERIAC_TEST_REDIS_URL.
fn env(db: u8, test: &str) -> Option<Env> {
    let url = redis_db(test, db)?;
    require_python(test);
    Some(Env {
        broker: url.clone(),
        backend: url,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_celeriac_worker() {
    let Some(e) = env(11, "python_client_to_celeriac_worker") else {
        return;
    };
    let stopped = python_calls_celeriac_worker(&e);
    // Expired before any worker saw it: Python sees REVOKED.
    let r = py_client(
        &e,
        &[
            "call",
            "tasks.add",
            "--args",
            "[1, 1]",
            "--expires",
            "0.5",
            "--no-wait",
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    let worker = rust_worker(&e, "celery", "");
    let id = r["id"].as_str().unwrap().to_string();
    let r = py_client(&e, &["get", &id]);
    assert_eq!(r["state"].as_str(), Some("REVOKED"), "{r}");
    drop(worker.stop());
    assert!(
        count(&stopped, "tasks.add", "succeeded") >= 2,
        "{stopped:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celeriac_client_to_python_worker() {
    let Some(e) = env(12, "celeriac_client_to_python_worker") else {
        return;
    };
    celeriac_calls_python_worker(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_celeriac_workers_share_one_redis_each_on_its_own_queue() {
    let Some(e) = env(13, "python_and_celeriac_workers_share_one_redis") else {
        return;
    };
    workers_share_a_broker_each_on_its_own_queue(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_celeriac_worker_mid_task_and_python_worker_takes_it_over() {
    let Some(e) = env(14, "kill_9_celeriac_worker_mid_task") else {
        return;
    };
    let mut victim = rust_worker(&e, "celery", "?visibility_timeout=2");
    let app = rust_client(&e);
    let r = sleep::delay(&app, 3.0).await.unwrap();
    let deadline = Instant::now() + WAIT;
    // Held by the celeriac worker (in Redis's unacked hash): then kill it.
    let client = redis::Client::open(e.broker.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    loop {
        let held: i64 = redis::cmd("HLEN").arg("unacked").query(&mut conn).unwrap();
        if held == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "task never delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
    victim.kill9();
    std::thread::sleep(Duration::from_secs(3));
    // A Python worker started now restores the lost message (its start-up sweep) and runs it.
    let py = python_worker(&e, "celery", "2");
    assert_eq!(r.get(WAIT).await.unwrap(), 3.0);
    let log = py.stop();
    assert_eq!(count(&log, r.id(), "succeeded"), 1, "{log:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_beyond_the_visibility_timeout_runs_once_on_time() {
    let Some(e) = env(15, "eta_beyond_the_visibility_timeout") else {
        return;
    };
    // Visibility timeout 1 s, ETA 4 s away, two celeriac workers: Celery would redeliver it.
    let a = rust_worker(&e, "celery", "?visibility_timeout=1");
    let b = rust_worker(&e, "celery", "?visibility_timeout=1");
    let app = rust_client(&e);
    let sent = Instant::now();
    let r = py_client(
        &e,
        &[
            "call",
            "tasks.echo",
            "--args",
            "[\"later\"]",
            "--countdown",
            "4",
            "--no-wait",
        ],
    );
    let id = r["id"].as_str().unwrap().to_string();
    let res: celeriac::AsyncResult<Value> = celeriac::AsyncResult::new(app.clone(), id.as_str());
    assert_eq!(
        res.get(WAIT).await.unwrap(),
        json!({"args": ["later"], "kwargs": {}})
    );
    assert!(
        sent.elapsed() >= Duration::from_secs(4),
        "ran early: {:?}",
        sent.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    let logs = [a.stop(), b.stop()].concat();
    assert_eq!(count(&logs, &id, "succeeded"), 1, "{logs:#?}");
}
