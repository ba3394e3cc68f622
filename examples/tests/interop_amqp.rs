//! Interop with real Python Celery 5.7 on RabbitMQ, both directions, results through the
//! Redis backend, using the demo app (examples/demo) and its Python twin
//! (tests/interop/pyapp.py).
//!
//! Needs `CELERIAC_TEST_AMQP_URL` and `CELERIAC_TEST_REDIS_URL` (skipped with a message when
//! either is unset), `rabbitmqctl` (each test gets its own vhost), and the interop Python.

mod common;

use std::process::Command;

use celeriac::serde_json::json;
use celeriac::{ResultError, TaskState};
use celeriac_demo::{add, fail, flaky};
use common::*;

/// A vhost of its own for one test, deleted when dropped.
struct Vhost {
    name: String,
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn env(db: u8, test: &str) -> Option<(Env, Vhost)> {
    let (Ok(amqp), Ok(redis_url)) = (
        std::env::var("CELERIAC_TEST_AMQP_URL"),
        std::env::var("CELERIAC_TEST_REDIS_URL"),
    ) else {
        eprintln!(
            "skipped {test}: CELERIAC_TEST_AMQP_URL and CELERIAC_TEST_REDIS_URL must both be set"
        );
        return None;
    };
    require_python(test);
    let vhost = Vhost {
        name: format!("celeriac-interop-{test}-{}", std::process::id()),
    };
    let _ = Command::new("rabbitmqctl")
        .args(["delete_vhost", &vhost.name])
        .output();
    rabbitmqctl(&["add_vhost", &vhost.name]);
    let (scheme, rest) = amqp
        .split_once("://")
        .expect("CELERIAC_TEST_AMQP_URL is a URL");
    let authority = rest.split('/').next().unwrap_or(rest);
    let user = authority
        .split('@')
        .next()
        .and_then(|a| a.split(':').next())
        .filter(|_| authority.contains('@'))
        .unwrap_or("guest");
    rabbitmqctl(&["set_permissions", "-p", &vhost.name, user, ".*", ".*", ".*"]);
    let broker = format!("{scheme}://{authority}/{}", vhost.name);

    let (rscheme, rrest) = redis_url
        .split_once("://")
        .expect("CELERIAC_TEST_REDIS_URL is a URL");
    let rauth = rrest.split(['/', '?']).next().unwrap_or(rrest);
    let backend = format!("{rscheme}://{rauth}/{db}");
    let client = redis::Client::open(backend.as_str()).expect("redis url");
    let mut conn = client
        .get_connection()
        .unwrap_or_else(|e| panic!("{test}: Redis at {backend} is down: {e}"));
    redis::cmd("FLUSHDB").exec(&mut conn).expect("FLUSHDB");
    Some((Env { broker, backend }, vhost))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_celeriac_worker_on_rabbitmq() {
    let Some((e, _vhost)) = env(6, "py-to-rust") else {
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
            "tasks.echo",
            "--args",
            "[1, \"a\"]",
            "--kwargs",
            "{\"k\": [true, null]}",
            "--countdown",
            "1",
            "--priority",
            "5",
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
    let r = py_client(&e, &["call", "tasks.flaky", "--args", "[2]"]);
    assert_eq!(
        (r["state"].as_str(), r["result"].as_i64()),
        (Some("SUCCESS"), Some(2)),
        "{r}"
    );
    let log = worker.stop();
    assert_eq!(
        count(&log, r["id"].as_str().unwrap(), "succeeded"),
        1,
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celeriac_client_to_python_worker_on_rabbitmq() {
    let Some((e, _vhost)) = env(7, "rust-to-py") else {
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
    let mut kwargs = celeriac::serde_json::Map::new();
    kwargs.insert("k".into(), json!({"nested": [1, 2.5, "x"]}));
    let echoed = celeriac::Call::new("tasks.echo", vec![json!("a"), json!(null)], kwargs)
        .countdown(std::time::Duration::from_millis(500))
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
        Err(ResultError::Task(err)) => assert_eq!(
            (err.exc_type.as_str(), err.message.as_str()),
            ("ValueError", "from rust")
        ),
        other => panic!("expected ValueError, got {other:?}"),
    }
    let retried = flaky::delay(&app, 2).await.unwrap();
    assert_eq!(retried.get(WAIT).await.unwrap(), 2);
    assert_eq!(retried.state().await.unwrap(), TaskState::Success);
    drop(worker.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_celeriac_workers_share_one_vhost_each_on_its_own_queue() {
    let Some((e, _vhost)) = env(8, "shared-vhost") else {
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
