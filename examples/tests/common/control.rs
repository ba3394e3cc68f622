//! What the remote-control interop tests check, on Redis and on RabbitMQ alike.

use celeriac::serde_json::{json, Value};

use super::{interop_dir, python, Env, Proc};

/// What `tests/interop/consumers.py` got back from a celeriac worker: `add_consumer` (its
/// task ran), `cancel_consumer`, a revoke of a queued task (REVOKED at once) and a terminate
/// of a running one (REVOKED), each with Celery's replies.
pub fn assert_python_controlled(r: &Value, node: &str, queue: &str, extra: &str) {
    let reply = |key: &str| r[key][0][node].clone();
    assert_eq!(
        reply("add_consumer"),
        json!({"ok": format!("add consumer {extra}")}),
        "{r}"
    );
    assert_eq!(r["extra_result"], json!(5), "{r}");
    assert_eq!(r["queues_after_add"], json!([queue, extra]), "{r}");
    assert_eq!(
        reply("cancel_consumer"),
        json!({"ok": format!("no longer consuming from {extra}")}),
        "{r}"
    );
    assert_eq!(r["queues_after_cancel"], json!([queue]), "{r}");
    let later = r["later"]["id"].as_str().unwrap();
    assert_eq!(
        reply("revoke_reply"),
        json!({"ok": format!("tasks {{'{later}'}} flagged as revoked")}),
        "{r}"
    );
    assert_eq!(r["later"]["state"], json!("REVOKED"), "{r}");
    assert_eq!(r["terminated"]["state"], json!("REVOKED"), "{r}");
    assert_eq!(r["terminated_raises"], json!("TaskRevokedError"), "{r}");
    let revoked = r["revoked"].as_array().unwrap();
    assert!(revoked.contains(&r["terminated"]["id"]), "{r}");
}

/// Flower's control endpoints act on the celeriac worker and report its replies.
pub fn flower_controls_the_worker(r: &Value, node: &str, extra: &str) {
    let body = |key: &str| {
        assert_eq!(r[key]["status"], json!(200), "{key}: {r}");
        celeriac::serde_json::from_str::<Value>(r[key]["body"].as_str().unwrap())
            .unwrap_or_else(|_| panic!("{key} answered JSON: {r}"))
    };
    assert_eq!(
        body("grow")["message"],
        json!(format!("Growing '{node}' worker's pool by 1")),
        "{r}"
    );
    assert_eq!(
        body("shrink")["message"],
        json!(format!("Shrinking '{node}' worker's pool by 1")),
        "{r}"
    );
    assert_eq!(
        body("add_consumer")["message"],
        json!(format!("add consumer {extra}")),
        "{r}"
    );
    assert_eq!(r["extra_result"], json!(3), "{r}");
    assert_eq!(
        body("cancel_consumer")["message"],
        json!(format!("no longer consuming from {extra}")),
        "{r}"
    );
    assert_eq!(
        body("rate_limit")["message"],
        json!("new rate limit set successfully"),
        "{r}"
    );
    assert_eq!(r["revoke"]["status"], json!(200), "{r}");
    assert_eq!(r["revoked_state"], json!("REVOKED"), "{r}");
    assert_eq!(r["revoked_raises"], json!("TaskRevokedError"), "{r}");
}

/// Flower 2.2 against the test's broker, its API open, on a port of this process.
pub fn start_flower(e: &Env) -> (Proc, String) {
    let port = (20_000 + std::process::id() % 20_000).to_string();
    let mut flower = std::process::Command::new(python());
    flower
        .args([
            "-m",
            "celery",
            "-A",
            "pyapp",
            "flower",
            "--address=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .current_dir(interop_dir())
        .env("CELERIAC_INTEROP_BROKER", &e.broker)
        .env("CELERIAC_INTEROP_BACKEND", &e.backend)
        .env("FLOWER_UNAUTHENTICATED_API", "true");
    (Proc::spawn(flower, "Visit me at"), port)
}

/// What `tests/interop/flower_api.py` read from Flower about a celeriac worker: listed with
/// its stats and tasks, its task followed to SUCCESS.
pub fn assert_flower_sees(r: &Value, node: &str) {
    let listed = &r["workers"][node];
    assert!(listed.is_object(), "Flower lists the worker: {r}");
    assert_eq!(listed["stats"]["pool"]["max-concurrency"], json!(2), "{r}");
    assert!(
        listed["registered"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("tasks.add"))),
        "{r}"
    );
    assert_eq!(r["task"]["state"], json!("SUCCESS"), "{r}");
    assert_eq!(r["task"]["name"], json!("tasks.add"), "{r}");
    assert_eq!(r["task"]["worker"], json!(node), "{r}");
    assert_eq!(r["task"]["result"], json!("42"), "{r}");
}

/// What `tests/interop/events.py` saw of a celeriac worker started with `-E`: its periodic
/// heartbeat and the events of a task that succeeded and one that failed, with Celery's
/// fields, and Celery's own state machine (Flower's) sees both tasks end and the worker alive.
pub fn assert_python_saw_events(r: &Value) {
    let events = r["events"].as_array().expect("events");
    let of = |kind: &str| events.iter().find(|e| e["type"] == json!(kind)).cloned();
    // The periodic heartbeat (`freq` 2); one with `freq` 5 answers a `heartbeat` command,
    // which Flower (in another test on the same broker) broadcasts to every worker.
    let heartbeat = events
        .iter()
        .find(|e| e["type"] == json!("worker-heartbeat") && e["freq"] == json!(2.0))
        .unwrap_or_else(|| panic!("no periodic heartbeat: {r}"));
    assert!(
        heartbeat["loadavg"]
            .as_array()
            .is_some_and(|l| l.len() == 3),
        "{heartbeat}"
    );
    for field in [
        "timestamp",
        "utcoffset",
        "pid",
        "clock",
        "active",
        "processed",
    ] {
        assert!(!heartbeat[field].is_null(), "{field} missing: {heartbeat}");
    }
    let ids = r["ids"].as_array().unwrap();
    let received = of("task-received").unwrap_or_else(|| panic!("no task-received: {r}"));
    assert!(ids.contains(&received["uuid"]), "{received}");
    assert!(of("task-started").is_some(), "no task-started: {r}");
    let succeeded = of("task-succeeded").unwrap_or_else(|| panic!("no task-succeeded: {r}"));
    assert_eq!(
        (&succeeded["uuid"], &succeeded["result"]),
        (&ids[0], &json!("5")),
        "{succeeded}"
    );
    assert!(succeeded["runtime"].as_f64().is_some(), "{succeeded}");
    let failed = of("task-failed").unwrap_or_else(|| panic!("no task-failed: {r}"));
    assert_eq!(failed["uuid"], ids[1], "{failed}");
    assert_eq!(failed["exception"], json!("ValueError('boom')"), "{failed}");
    let state = |i: usize| r["states"][ids[i].as_str().unwrap()].clone();
    assert_eq!(
        (state(0), state(1)),
        (json!("SUCCESS"), json!("FAILURE")),
        "{r}"
    );
    assert_eq!(
        r["task_names"][ids[0].as_str().unwrap()],
        json!("tasks.add"),
        "{r}"
    );
    assert_eq!(r["worker_alive"], json!(true), "{r}");
}
