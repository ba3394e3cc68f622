//! Interop with real Python Celery 5.7 on Redis, both directions, using the demo app
//! (examples/demo) and its Python twin (tests/interop/pyapp.py).
//!
//! Needs `CELERIAC_TEST_REDIS_URL` (skipped with a message when unset) and a Python with
//! `celery[redis]==5.7.0`: `.venv/bin/python` at the workspace root (what `.ci/run` creates)
//! or `CELERIAC_PYTHON`. Each test uses its own Redis database, flushed first.

mod common;

use std::time::{Duration, Instant};

use celeriac::serde_json::{json, Value};
use celeriac::{ResultError, TaskState};
use celeriac_demo::{add, fail, flaky, sleep};
use common::*;

/// One test's Redis database, flushed; `None` (test skipped) without CELERIAC_TEST_REDIS_URL.
fn env(db: u8, test: &str) -> Option<Env> {
    let Ok(base) = std::env::var("CELERIAC_TEST_REDIS_URL") else {
        eprintln!("skipped {test}: CELERIAC_TEST_REDIS_URL not set");
        return None;
    };
    require_python(test);
    // Keep scheme, credentials and host; the database is this test's own.
    let without_query = base.split('?').next().unwrap_or(&base);
    let (scheme, rest) = without_query
        .split_once("://")
        .expect("CELERIAC_TEST_REDIS_URL is a URL");
    let authority = rest.split('/').next().unwrap_or(rest);
    let root = format!("{scheme}://{authority}");
    let url = format!("{root}/{db}");
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut conn = client
        .get_connection()
        .unwrap_or_else(|e| panic!("{test}: Redis at {url} is down: {e}"));
    redis::cmd("FLUSHDB").exec(&mut conn).expect("FLUSHDB");
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
    let worker = rust_worker(&e, "celery", "");
    let r = py_client(&e, &["call", "tasks.add", "--args", "[2, 3]"]);
    assert_eq!(
        (r["state"].as_str(), r["result"].as_i64()),
        (Some("SUCCESS"), Some(5)),
        "{r}"
    );
    let r = py_client(
        &e,
        &[
            "call",
            "tasks.add",
            "--args",
            "[2]",
            "--kwargs",
            "{\"y\": 40}",
        ],
    );
    assert_eq!(r["result"], 42, "{r}");
    let r = py_client(
        &e,
        &[
            "call",
            "tasks.echo",
            "--args",
            "[1, \"a\"]",
            "--kwargs",
            "{\"k\": [true, null]}",
            "--countdown",
            "1",
            "--priority",
            "7",
            "--expires",
            "60",
        ],
    );
    assert_eq!(
        r["result"],
        json!({"args": [1, "a"], "kwargs": {"k": [true, null]}}),
        "{r}"
    );
    let r = py_client(&e, &["call", "tasks.fail", "--args", "[\"boom\"]"]);
    assert_eq!(
        (
            r["state"].as_str(),
            r["exc_type"].as_str(),
            r["exc_message"].as_str()
        ),
        (Some("FAILURE"), Some("ValueError"), Some("boom")),
        "{r}"
    );
    let r = py_client(&e, &["call", "tasks.flaky", "--args", "[3]"]);
    assert_eq!(
        (r["state"].as_str(), r["result"].as_i64()),
        (Some("SUCCESS"), Some(3)),
        "{r}"
    );
    // Expired before any worker saw it: Python sees REVOKED.
    let stopped = worker.stop();
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
    let worker = python_worker(&e, "celery", "3600");
    let app = rust_client(&e);
    assert_eq!(
        add::delay(&app, 2, 3)
            .await
            .unwrap()
            .get(WAIT)
            .await
            .unwrap(),
        5
    );
    let mut kwargs = serde_json::Map::new();
    kwargs.insert("k".into(), json!({"nested": [1, 2.5, "x"]}));
    let echoed = celeriac::Call::new("tasks.echo", vec![json!("a"), json!(null)], kwargs)
        .countdown(Duration::from_millis(500))
        .priority(8)
        .send(&app)
        .await
        .unwrap();
    assert_eq!(
        echoed.get(WAIT).await.unwrap(),
        json!({"args": ["a", null], "kwargs": {"k": {"nested": [1, 2.5, "x"]}}})
    );
    match fail::delay(&app, "from rust".into())
        .await
        .unwrap()
        .get(WAIT)
        .await
    {
        Err(ResultError::Task(err)) => {
            assert_eq!(
                (
                    err.exc_type.as_str(),
                    err.exc_module.as_str(),
                    err.message.as_str()
                ),
                ("ValueError", "builtins", "from rust")
            );
            assert!(
                err.traceback
                    .as_deref()
                    .unwrap_or("")
                    .contains("raise ValueError(message)"),
                "{err:?}"
            );
        }
        other => panic!("expected ValueError, got {other:?}"),
    }
    let retried = flaky::delay(&app, 2).await.unwrap();
    assert_eq!(retried.get(WAIT).await.unwrap(), 2);
    assert_eq!(retried.state().await.unwrap(), TaskState::Success);
    let log = worker.stop();
    assert!(count(&log, retried.id(), "succeeded") == 1, "{log:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_celeriac_workers_share_one_redis_each_on_its_own_queue() {
    let Some(e) = env(13, "python_and_celeriac_workers_share_one_redis") else {
        return;
    };
    let rust = rust_worker(&e, "rust", "");
    let py = python_worker(&e, "python", "3600");
    let app = rust_client(&e);
    let to_rust = add::s(1, 2).queue("rust").apply_async(&app).await.unwrap();
    let to_py = add::s(3, 4)
        .queue("python")
        .apply_async(&app)
        .await
        .unwrap();
    let py_to_rust = py_client(
        &e,
        &["call", "tasks.mul", "--args", "[5, 6]", "--queue", "rust"],
    );
    let py_to_py = py_client(
        &e,
        &["call", "tasks.mul", "--args", "[7, 8]", "--queue", "python"],
    );
    assert_eq!(to_rust.get(WAIT).await.unwrap(), 3);
    assert_eq!(to_py.get(WAIT).await.unwrap(), 7);
    assert_eq!(py_to_rust["result"], 30, "{py_to_rust}");
    assert_eq!(py_to_py["result"], 56, "{py_to_py}");
    let rust_log = rust.stop();
    let py_log = py.stop();
    for (id, log, other) in [
        (to_rust.id().to_string(), &rust_log, &py_log),
        (
            py_to_rust["id"].as_str().unwrap().to_string(),
            &rust_log,
            &py_log,
        ),
        (to_py.id().to_string(), &py_log, &rust_log),
        (
            py_to_py["id"].as_str().unwrap().to_string(),
            &py_log,
            &rust_log,
        ),
    ] {
        assert_eq!(
            count(log, &id, "succeeded"),
            1,
            "{id} not run where routed: {log:#?}"
        );
        assert_eq!(
            count(other, &id, "succeeded"),
            0,
            "{id} ran on the wrong worker"
        );
    }
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
