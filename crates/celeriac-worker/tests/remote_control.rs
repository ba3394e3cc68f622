//! Remote-control commands that change what a running worker does (`add_consumer`,
//! `cancel_consumer`, `revoke` and `terminate` broadcasts as Python clients send them,
//! `worker_enable_remote_control`), through the broker's mailbox, on a real embedded store.

use std::time::{Duration, Instant};

use celeriac::core::control::{ControlRequest, ReplyAddress};
use celeriac::serde_json::{json, Map, Value};
use celeriac::{task, App, ResultError, TaskState, WorkerConfig};

const WAIT: Duration = Duration::from_secs(20);
const NODE: &str = "rc@test";

#[task(name = "rc.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "rc.sleep")]
async fn sleep(seconds: f64) -> f64 {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    seconds
}

type WorkerJoin = tokio::task::JoinHandle<Result<(), celeriac::WorkerError>>;

struct Running {
    app: App,
    shutdown: celeriac::ShutdownHandle,
    join: WorkerJoin,
    _dir: tempfile::TempDir,
}

async fn start(settings: impl FnOnce(&mut celeriac::Config)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let app = App::builder("rc")
        .broker_url(url)
        .task::<add>()
        .task::<sleep>()
        .configure(settings)
        .build();
    let config = WorkerConfig {
        hostname: NODE.into(),
        concurrency: 2,
        shutdown_timeout: Duration::from_secs(10),
        ..app.worker_config()
    };
    let worker = app.worker(config).await.unwrap();
    let (shutdown, join) = (worker.shutdown_handle(), tokio::spawn(worker.run()));
    Running {
        app,
        shutdown,
        join,
        _dir: dir,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.graceful();
        self.join.await.unwrap().unwrap();
    }

    /// Broadcasts `method(arguments)` to this worker; its reply payload, if any came.
    async fn call(&self, method: &str, arguments: Value, timeout: Duration) -> Option<Value> {
        let request = ControlRequest {
            method: method.into(),
            arguments: arguments.as_object().cloned().unwrap_or_else(Map::new),
            destination: Some(vec![NODE.into()]),
            pattern: None,
            matcher: None,
            ticket: Some(uuid()),
            reply_to: Some(ReplyAddress {
                exchange: "reply.celery.pidbox".into(),
                routing_key: uuid(),
            }),
            clock: 0,
        };
        let broker = self.app.broker().await.unwrap();
        let replies = broker
            .mailbox()
            .expect("the embedded store has a mailbox")
            .broadcast(&request, timeout, Some(1))
            .await
            .unwrap();
        replies.into_iter().next().map(|r| r[NODE].clone())
    }

    /// Waits until the worker answers (its mailbox listens once the worker runs).
    async fn call_when_up(&self, method: &str, arguments: Value) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(reply) = self
                .call(method, arguments.clone(), Duration::from_secs(1))
                .await
            {
                return reply;
            }
            assert!(Instant::now() < deadline, "{NODE} never answered {method}");
        }
    }

    async fn ready_in(&self, queue: &str) -> u64 {
        let broker = self.app.broker().await.unwrap();
        let lengths = broker
            .queue_stats()
            .unwrap()
            .queue_lengths(&[queue.into()])
            .await
            .unwrap();
        lengths[0].ready
    }
}

fn uuid() -> String {
    celeriac::core::message::new_id()
}

fn queue_names(active_queues: &Value) -> Vec<String> {
    active_queues
        .as_array()
        .expect("active_queues is a list")
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_cancel_consumer_change_the_queues_a_worker_runs() {
    let w = start(|_| {}).await;
    assert_eq!(
        queue_names(&w.call_when_up("active_queues", json!({})).await),
        ["celery"]
    );
    let waiting = add::s(1, 2)
        .queue("extra")
        .apply_async(&w.app)
        .await
        .unwrap();
    let reply = w
        .call("add_consumer", json!({"queue": "extra"}), WAIT)
        .await
        .expect("a reply");
    assert_eq!(reply, json!({"ok": "add consumer extra"}));
    assert_eq!(
        waiting.get(WAIT).await.unwrap(),
        3,
        "the added queue is consumed"
    );
    let queues = w.call("active_queues", json!({}), WAIT).await.unwrap();
    assert_eq!(queue_names(&queues), ["celery", "extra"]);

    let reply = w
        .call("cancel_consumer", json!({"queue": "celery"}), WAIT)
        .await
        .expect("a reply");
    assert_eq!(reply, json!({"ok": "no longer consuming from celery"}));
    let left = add::delay(&w.app, 2, 2).await.unwrap();
    let taken = add::s(3, 3)
        .queue("extra")
        .apply_async(&w.app)
        .await
        .unwrap();
    assert_eq!(taken.get(WAIT).await.unwrap(), 6);
    assert_eq!(
        w.ready_in("celery").await,
        1,
        "the cancelled queue keeps its task"
    );
    assert_eq!(left.state().await.unwrap(), TaskState::Pending);
    let queues = w.call("active_queues", json!({}), WAIT).await.unwrap();
    assert_eq!(queue_names(&queues), ["extra"]);

    let reply = w.call("add_consumer", json!({}), WAIT).await.unwrap();
    assert!(reply["error"].is_string(), "no queue named: {reply}");
    w.stop().await;
}

/// A revoke as Python's `app.control.revoke` sends it: a broadcast only, without
/// celeriac's durable record.
fn python_revoke(ids: &[&str], terminate: bool, signal: &str) -> Value {
    json!({"task_id": ids, "terminate": terminate, "signal": signal})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_revokes_are_recorded_and_terminate_running_tasks() {
    let w = start(|_| {}).await;
    w.call_when_up("ping", json!({})).await;
    let later = add::s(1, 1)
        .countdown(Duration::from_secs(2))
        .apply_async(&w.app)
        .await
        .unwrap();
    let reply = w
        .call(
            "revoke",
            python_revoke(&[later.id()], false, "SIGTERM"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        reply,
        json!({"ok": format!("tasks {{'{}'}} flagged as revoked", later.id())})
    );
    assert_eq!(later.state().await.unwrap(), TaskState::Revoked, "at once");
    let broker = w.app.broker().await.unwrap();
    let revocations = broker.revocations().unwrap();
    assert!(
        revocations.is_revoked(later.id()).await.unwrap(),
        "recorded durably, so it outlives the worker"
    );

    let long = sleep::delay(&w.app, 30.0).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let active = w.call("active", json!({}), WAIT).await.unwrap();
        if active.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the task never started");
    }
    let reply = w
        .call(
            "terminate",
            json!({"signal": "SIGKILL", "task_id": long.id()}),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(reply, json!({"ok": format!("terminate: {}", long.id())}));
    match long.get(WAIT).await {
        Err(ResultError::Task(e)) => assert_eq!(
            (e.state, e.message.as_str()),
            (TaskState::Revoked, "terminated")
        ),
        other => panic!("expected REVOKED terminated, got {other:?}"),
    }
    let reply = w
        .call("revoke", python_revoke(&["nobody"], true, "KILL"), WAIT)
        .await
        .unwrap();
    assert_eq!(reply, json!({"ok": "terminate: tasks unknown"}));
    let reply = w
        .call("revoke", python_revoke(&["x"], true, "SIGNOPE"), WAIT)
        .await
        .unwrap();
    assert!(reply["error"].is_string(), "{reply}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_control_can_be_turned_off() {
    let w = start(|c| c.worker_enable_remote_control = false).await;
    // The worker runs tasks, so it is up; its mailbox stays closed.
    assert_eq!(
        add::delay(&w.app, 2, 3)
            .await
            .unwrap()
            .get(WAIT)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        w.call("ping", json!({}), Duration::from_millis(500)).await,
        None
    );
    w.stop().await;
}
