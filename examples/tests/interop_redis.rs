//! Interop with real Python Celery 5.7 on Redis, both directions, using the demo app
//! (examples/demo) and its Python twin (tests/interop/pyapp.py).
//!
//! Needs `CELERIAC_TEST_REDIS_URL` (skipped with a message when unset) and a Python with
//! `celery[redis]==5.7.0`: `.venv/bin/python` at the workspace root (what `.ci/run` creates)
//! or `CELERIAC_PYTHON`. Each test uses its own Redis database, flushed first.

mod common;

use std::time::{Duration, Instant};

use celeriac::core::control::{ControlRequest, ReplyAddress};
use celeriac::serde_json::{json, Value};
use celeriac_demo::sleep;
use common::control::{
    assert_flower_sees, assert_python_controlled, assert_python_saw_events,
    flower_controls_the_worker, start_flower,
};
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
async fn canvases_cross_between_python_and_celeriac_workers() {
    let Some(e) = env(2, "canvases_cross_between_python_and_celeriac_workers") else {
        return;
    };
    common::canvas::canvases_cross_languages(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celeriac_client_and_beat_to_python_worker() {
    let Some(e) = env(12, "celeriac_client_and_beat_to_python_worker") else {
        return;
    };
    celeriac_calls_python_worker(&e).await;
    common::beat::celeriac_beat_drives_a_python_worker(&e);
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

/// Python Celery's `app.control.inspect()` and `broadcast()` against a celeriac worker:
/// ping, registered (plain and with attributes), stats, clock, revoked, and Celery's error
/// reply for an unknown command. Redis database 1 is shared with prefix-isolated tests, so
/// this one is isolated by its node name instead of a flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_inspects_a_celeriac_worker() {
    let Some(db1) = worker_on_db1(
        "python_inspects_a_celeriac_worker",
        "inspect",
        &[],
        "remote control: listening",
    ) else {
        return;
    };
    let (e, node, queue, worker) = (db1.env, db1.node, db1.queue, db1.worker);
    let r = interop_script(&e, "control.py", &[&node, "5"]);
    assert_eq!(r["ping"], json!({ node.as_str(): {"ok": "pong"} }), "{r}");
    let registered = r["registered"][node.as_str()]
        .as_array()
        .expect("registered");
    assert!(registered.contains(&json!("tasks.add")), "{r}");
    assert!(
        r["registered_items"][node.as_str()]
            .as_array()
            .unwrap()
            .contains(&json!("tasks.sleep [acks_late=True max_retries=3]")),
        "{r}"
    );
    let stats = &r["stats"][node.as_str()];
    assert_eq!(stats["pool"]["max-concurrency"], json!(2), "{r}");
    assert!(
        stats["pid"].as_u64().is_some() && stats["clock"].is_string(),
        "{r}"
    );
    assert!(r["clock"][node.as_str()]["clock"].as_u64().is_some(), "{r}");
    assert!(r["revoked"][node.as_str()].is_array(), "{r}");
    assert_eq!(
        r["unknown"],
        json!([{ node.as_str(): {"error": "KeyError('no_such_command')"} }]),
        "{r}"
    );
    assert!(
        r["everyone"]
            .as_array()
            .unwrap()
            .contains(&json!({ node.as_str(): {"ok": "pong"} })),
        "{r}"
    );

    // celeriac's own caller, through the broker's mailbox, gets the same reply.
    let app = celeriac_demo::app().reconfigured(|c| c.broker_url = Some(e.broker.clone()));
    let broker = app.broker().await.unwrap();
    let oid = celeriac::core::message::new_id();
    let request = ControlRequest {
        method: "ping".into(),
        arguments: Default::default(),
        destination: Some(vec![node.clone()]),
        pattern: None,
        matcher: None,
        ticket: Some(celeriac::core::message::new_id()),
        reply_to: Some(ReplyAddress {
            exchange: "reply.celery.pidbox".into(),
            routing_key: oid,
        }),
        clock: 0,
    };
    let mailbox = broker.mailbox().expect("Redis has remote control");
    let replies = mailbox
        .broadcast(&request, Duration::from_secs(5), Some(1))
        .await
        .unwrap();
    assert_eq!(replies, vec![json!({ node.as_str(): {"ok": "pong"} })]);

    let r = control_py(&e, &["busy", &node, &queue]);
    python_inspects_a_busy_celeriac_worker(&r, &node, &queue);
    celeriac_cli_inspects_and_controls(&e, &node);
    drop(worker.stop());

    // The same verbs against a Python worker.
    let python = python_worker(&e, &queue, "3600");
    celeriac_cli_inspects_and_controls(&e, "py@interop");
    drop(python.stop());
}

/// Python Celery's control commands that change a celeriac worker: `add_consumer` (a task
/// on the new queue runs), `cancel_consumer`, `revoke` of a queued task (REVOKED at once),
/// `revoke(terminate=True)` of a running one (REVOKED), and `shutdown` (the worker exits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_controls_a_celeriac_worker() {
    let Some(db1) = worker_on_db1(
        "python_controls_a_celeriac_worker",
        "consumers",
        &[],
        "remote control: listening",
    ) else {
        return;
    };
    let (e, node, queue, mut worker) = (db1.env, db1.node, db1.queue, db1.worker);
    let extra = format!("{queue}-extra");
    let r = interop_script(&e, "consumers.py", &[&node, &queue, &extra]);
    assert_python_controlled(&r, &node, &queue, &extra);
    assert!(worker.wait_exit().success(), "shutdown is a clean exit");
    let log = worker.lines().join("\n");
    assert!(log.contains("remote control: shutdown requested"), "{log}");
}

/// Runs the demo binary's remote-control verbs (the same as the `celeriac` binary's) and
/// returns their standard output.
fn cli_remote(e: &Env, args: &[&str]) -> String {
    let out = std::process::Command::new(DEMO)
        .args(args)
        .env("CELERIAC_BROKER_URL", &e.broker)
        .env("CELERIAC_RESULT_BACKEND", &e.backend)
        .output()
        .expect("the demo binary runs");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `inspect ping --json`, `inspect registered`, `status`, `control rate_limit` against one
/// node, in Celery's output shapes.
fn celeriac_cli_inspects_and_controls(e: &Env, node: &str) {
    let json_out = cli_remote(e, &["inspect", "ping", "-d", node, "-t", "5", "--json"]);
    let parsed: Value = celeriac::serde_json::from_str(json_out.trim()).expect("JSON");
    assert_eq!(parsed, json!({ node: {"ok": "pong"} }), "{json_out}");
    let text = cli_remote(e, &["inspect", "registered", "-d", node, "-t", "5"]);
    assert!(text.contains(&format!("->  {node}: OK")), "{text}");
    assert!(text.contains("    * tasks.add"), "{text}");
    assert!(text.trim_end().ends_with("1 node online."), "{text}");
    let text = cli_remote(e, &["status", "-d", node, "-t", "5"]);
    assert!(
        text.contains(&format!("->  {node}: OK")) && text.contains("1 node online."),
        "{text}"
    );
    let text = cli_remote(
        e,
        &[
            "control",
            "rate_limit",
            "tasks.add",
            "100/s",
            "-d",
            node,
            "-t",
            "5",
        ],
    );
    assert!(text.contains("new rate limit set successfully"), "{text}");
    let queue = format!("cli-added-{}", std::process::id());
    for (verb, reply) in [
        ("add_consumer", format!("add consumer {queue}")),
        (
            "cancel_consumer",
            format!("no longer consuming from {queue}"),
        ),
    ] {
        let text = cli_remote(e, &["control", verb, &queue, "-d", node, "-t", "5"]);
        assert!(text.contains(&reply), "{verb}: {text}");
    }
}

/// A celeriac worker on Redis database 1, which the remote-control, events and Flower tests
/// share: each is isolated by its own node name and queue (`<kind>-<pid>`), not by a flush.
struct Db1Worker {
    env: Env,
    node: String,
    queue: String,
    worker: Proc,
}

/// Starts it (`-c 2`, `extra` flags), once its log shows `ready`; `None` (the test is
/// skipped, with a message) without `CELERIAC_TEST_REDIS_URL`.
fn worker_on_db1(test: &str, kind: &str, extra: &[&str], ready: &str) -> Option<Db1Worker> {
    let Ok(base) = std::env::var("CELERIAC_TEST_REDIS_URL") else {
        eprintln!("skipped {test}: CELERIAC_TEST_REDIS_URL not set");
        return None;
    };
    require_python(test);
    let (scheme, rest) = base.split_once("://").expect("a URL");
    let authority = rest.split('/').next().unwrap_or(rest);
    let url = format!("{scheme}://{authority}/1");
    let env = Env {
        broker: url.clone(),
        backend: url,
    };
    let node = format!("{kind}-{}@interop", std::process::id());
    let queue = format!("{kind}-{}", std::process::id());
    let mut cmd = std::process::Command::new(DEMO);
    cmd.args(["worker", "-l", "info", "-c", "2", "-n", &node, "-Q", &queue])
        .args(extra)
        .env("CELERIAC_BROKER_URL", &env.broker)
        .env("CELERIAC_RESULT_BACKEND", &env.backend)
        .env("NO_COLOR", "1");
    let worker = Proc::spawn(cmd, ready);
    Some(Db1Worker {
        env,
        node,
        queue,
        worker,
    })
}

/// Runs `tests/interop/control.py` and parses its JSON line.
fn control_py(e: &Env, args: &[&str]) -> Value {
    interop_script(e, "control.py", args)
}

/// With -c 2 and two 2 s tasks, both run (or one runs, one waits): `active` lists them in
/// Celery's request-info shape, `query_task` finds them, control commands answer as Celery.
fn python_inspects_a_busy_celeriac_worker(r: &Value, node: &str, queue: &str) {
    let active = r["active"][node].as_array().expect("active");
    assert!(!active.is_empty(), "{r}");
    let one = &active[0];
    assert_eq!(one["name"], json!("tasks.sleep"), "{r}");
    assert_eq!(one["args"], json!([2]), "{r}");
    assert_eq!(one["hostname"], json!(node), "{r}");
    assert_eq!(one["delivery_info"]["routing_key"], json!(queue), "{r}");
    assert!(
        one["time_start"].as_f64().is_some() && one["worker_pid"].as_u64().is_some(),
        "{r}"
    );
    assert_eq!(r["active_safe"][node][0]["args"], json!("[2]"), "{r}");
    let ids = r["ids"].as_array().unwrap();
    let found = r["query_task"][node].as_object().expect("query_task");
    assert!(
        !found.is_empty() && found.keys().all(|k| ids.contains(&json!(k))),
        "{r}"
    );
    assert!(r["reserved"][node].is_array(), "{r}");
    let reply = |key: &str| r[key][0][node].clone();
    assert_eq!(
        reply("rate_limit"),
        json!({"ok": "new rate limit set successfully"}),
        "{r}"
    );
    assert_eq!(
        reply("rate_limit_off"),
        json!({"ok": "rate limit disabled successfully"}),
        "{r}"
    );
    assert_eq!(
        reply("rate_limit_unknown"),
        json!({"error": "unknown task"}),
        "{r}"
    );
    assert_eq!(
        reply("time_limit"),
        json!({"ok": "time limits set successfully"}),
        "{r}"
    );
    assert_eq!(reply("pool_grow"), json!({"ok": "pool will grow"}), "{r}");
    assert_eq!(
        reply("pool_shrink"),
        json!({"ok": "pool will shrink"}),
        "{r}"
    );
    assert_eq!(
        reply("autoscale"),
        json!({"error": "ValueError('Autoscale not enabled')"}),
        "{r}"
    );
    assert_eq!(r["results"], json!([2.0, 2.0]), "{r}");
}

/// A celeriac worker started with `-E`, watched by Python Celery's `app.events.Receiver`:
/// heartbeats and the task events arrive with Celery's fields, and Celery's own state
/// machine (Flower's) sees the tasks SUCCESS and FAILURE and the worker alive. Redis
/// database 1, isolated by node name and queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receives_the_events_of_a_celeriac_worker() {
    let Some(db1) = worker_on_db1(
        "python_receives_the_events_of_a_celeriac_worker",
        "events",
        &["-E"],
        "worker ready",
    ) else {
        return;
    };
    let (e, node, queue, worker) = (db1.env, db1.node, db1.queue, db1.worker);
    let r = interop_script(&e, "events.py", &[&node, &queue]);
    assert_python_saw_events(&r);

    // The `events` verb sees the same stream: the next heartbeat, as JSON.
    let dumped = cli_remote(&e, &["events", "--dump", "--count", "1", "--timeout", "10"]);
    let first: Value = celeriac::serde_json::from_str(dumped.trim()).expect("one JSON event");
    assert!(
        first["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("worker-")),
        "{dumped}"
    );
    drop(worker.stop());
}

/// Flower 2.2, started against the broker, lists a celeriac worker (`/api/workers`, from
/// its inspect replies) and follows its task to SUCCESS (`/api/task/info`, from its events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flower_sees_a_celeriac_worker_and_its_tasks() {
    let Some(db1) = worker_on_db1(
        "flower_sees_a_celeriac_worker_and_its_tasks",
        "flower",
        &["-E"],
        "worker ready",
    ) else {
        return;
    };
    let (e, node, queue, worker) = (db1.env, db1.node, db1.queue, db1.worker);
    let (flower, port) = start_flower(&e);
    let extra = format!("{queue}-extra");
    let r = interop_script(&e, "flower_api.py", &[&port, &node, &queue, &extra]);
    assert_flower_sees(&r, &node);
    flower_controls_the_worker(&r, &node, &extra);
    drop(flower.stop());
    drop(worker.stop());
}
