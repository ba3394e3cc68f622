//! RabbitMQ end to end: interop with real Python Celery 5.7, both directions, results through
//! the Redis backend or rpc://, using the demo app (examples/demo) and its Python twin
//! (tests/interop/pyapp.py): tasks, remote control (`inspect`) and events; and celeriac
//! worker processes through revokes and network cuts.
//!
//! Needs `CELERIAC_TEST_AMQP_URL` and `CELERIAC_TEST_REDIS_URL` (skipped with a message when
//! either is unset), `rabbitmqctl` (each test gets its own vhost), and the interop Python.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use celeriac::core::control::{ControlRequest, ReplyAddress};
use celeriac::serde_json::{json, Value};
use celeriac::{ResultError, TaskState};
use celeriac_demo::{add, echo, sleep};
use celeriac_testkit::rabbitmq::{rabbitmqctl, TestVhost};
use common::control::{
    assert_flower_sees, assert_python_controlled, assert_python_saw_events,
    flower_controls_the_worker, start_flower,
};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canvases_cross_between_python_and_celeriac_workers_on_rabbitmq() {
    let Some((e, _vhost)) = env(3, "canvas") else {
        return;
    };
    common::canvas::canvases_cross_languages(&e).await;
}

fn env(db: u8, test: &str) -> Option<(Env, TestVhost)> {
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
    let name = format!("celeriac-interop-{test}-{}", std::process::id());
    let vhost = TestVhost::create(&amqp, &name).unwrap_or_else(|| {
        panic!("{test}: rabbitmqctl could not create vhost {name} (the tests need it)")
    });
    let broker = vhost.url.clone();

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

/// A vhost of the test's own and no Redis: results go through rpc:// (`backend` as given).
fn rpc_env(test: &str, backend: &str) -> Option<(Env, TestVhost)> {
    let Ok(amqp) = std::env::var("CELERIAC_TEST_AMQP_URL") else {
        eprintln!("skipped {test}: CELERIAC_TEST_AMQP_URL not set");
        return None;
    };
    require_python(test);
    let name = format!("celeriac-interop-{test}-{}", std::process::id());
    let vhost = TestVhost::create(&amqp, &name).unwrap_or_else(|| {
        panic!("{test}: rabbitmqctl could not create vhost {name} (the tests need it)")
    });
    let e = Env {
        broker: vhost.url.clone(),
        backend: backend.to_string(),
    };
    Some((e, vhost))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_celeriac_worker_on_rabbitmq() {
    let Some((e, _vhost)) = env(6, "py-to-rust") else {
        return;
    };
    drop(python_calls_celeriac_worker(&e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celeriac_client_and_beat_to_python_worker_on_rabbitmq() {
    let Some((e, _vhost)) = env(7, "rust-to-py") else {
        return;
    };
    celeriac_calls_python_worker(&e).await;
    // The lease lives in the Redis result backend: RabbitMQ keeps no state for it.
    common::beat::celeriac_beat_drives_a_python_worker(&e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_celeriac_workers_share_one_vhost_each_on_its_own_queue() {
    let Some((e, _vhost)) = env(8, "shared-vhost") else {
        return;
    };
    workers_share_a_broker_each_on_its_own_queue(&e).await;
}

/// Celery's quorum-queue setup (`task_default_queue_type = "quorum"`, celeriac's
/// `?queue_type=quorum`): both directions on one vhost, whichever side declares `celery`
/// first, the other's declaration matches it. Python's countdown on a quorum queue arrives
/// with an `eta` header (Celery skips the delay ladder for direct exchanges) and celeriac
/// parks it in the ladder; celeriac's countdown goes through the ladder to the Python worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_on_quorum_queues() {
    let Some((mut e, vhost)) = env(9, "quorum") else {
        return;
    };
    e.broker.push_str("?queue_type=quorum");
    drop(python_calls_celeriac_worker(&e));
    celeriac_calls_python_worker(&e).await;
    let queues = rabbitmqctl(&["list_queues", "-p", &vhost.name, "-q", "name", "type"])
        .expect("rabbitmqctl lists queues");
    assert!(
        queues
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["celery", "quorum"]),
        "{queues}"
    );
}

fn assert_revoked_state(result: Result<celeriac::serde_json::Value, ResultError>) {
    match result {
        Err(ResultError::Task(e)) => assert_eq!(e.state, TaskState::Revoked, "{e:?}"),
        other => panic!("expected REVOKED, got {other:?}"),
    }
}

/// A revoke recorded on RabbitMQ outlives the worker: one task revoked while a worker runs
/// (due after it stops), one revoked while no worker runs at all; the next worker discards
/// both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_survives_a_celeriac_worker_restart_on_rabbitmq() {
    let Some((e, _vhost)) = env(10, "revoke-restart") else {
        return;
    };
    let app = rust_client(&e);
    let first = rust_worker(&e, "celery", "");
    let due_later = add::s(1, 2)
        .countdown(Duration::from_secs(2))
        .apply_async(&app)
        .await
        .unwrap();
    due_later.revoke(false).await.unwrap();
    let first_log = first.stop();
    let offline = echo::s(Default::default(), Default::default())
        .apply_async(&app)
        .await
        .unwrap();
    offline.revoke(false).await.unwrap();
    let second = rust_worker(&e, "celery", "");
    for id in [due_later.id(), offline.id()] {
        second.wait_for(&format!("[{id}] revoked: not run"));
        let r: celeriac::AsyncResult<celeriac::serde_json::Value> =
            celeriac::AsyncResult::new(app.clone(), id);
        assert_revoked_state(r.get(WAIT).await);
    }
    let log = second.stop();
    for id in [due_later.id(), offline.id()] {
        assert_eq!(count(&log, id, "succeeded"), 0, "{log:#?}");
        assert_eq!(count(&first_log, id, "succeeded"), 0, "{first_log:#?}");
    }
}

/// celeriac's revoke reaches a running Python worker as Celery's `revoke` broadcast on
/// `celery.pidbox`: the Python worker flags the id and discards the task when its ETA comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celeriac_revoke_reaches_a_python_worker() {
    let Some((e, _vhost)) = env(5, "revoke-to-python") else {
        return;
    };
    let py = python_worker(&e, "celery", "3600");
    let app = rust_client(&e);
    let revoked = add::s(5, 5)
        .countdown(Duration::from_secs(2))
        .apply_async(&app)
        .await
        .unwrap();
    let kept = add::s(6, 6)
        .countdown(Duration::from_secs(2))
        .apply_async(&app)
        .await
        .unwrap();
    revoked.revoke(false).await.unwrap();
    py.wait_for(&format!("Tasks flagged as revoked: {}", revoked.id()));
    assert_eq!(kept.get(WAIT).await.unwrap(), 12);
    py.wait_for(&format!(
        "Discarding revoked task: tasks.add[{}]",
        revoked.id()
    ));
    assert_revoked_state(
        celeriac::AsyncResult::<celeriac::serde_json::Value>::new(app.clone(), revoked.id())
            .get(WAIT)
            .await,
    );
    let log = py.stop();
    assert_eq!(count(&log, revoked.id(), "succeeded"), 0, "{log:#?}");
    assert_eq!(count(&log, kept.id(), "succeeded"), 1, "{log:#?}");
}

/// A TCP proxy to RabbitMQ whose connections the test can cut (both directions shut down,
/// as when a network path dies).
struct CutProxy {
    port: u16,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl CutProxy {
    fn start(target: String) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let open = conns.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming().map_while(Result::ok) {
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut open = open.lock().unwrap();
                for (from, to) in [(&inbound, &outbound), (&outbound, &inbound)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
                open.push(inbound);
                open.push(outbound);
            }
        });
        CutProxy { port, conns }
    }

    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A celeriac worker reaching RabbitMQ through a proxy loses its connections while late-ack
/// tasks run: it reconnects, the tasks whose acks were lost come back marked redelivered and
/// are not run again (their result is already stored), nothing is lost, and revokes reach it
/// again. Results in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_under_a_worker_loses_nothing_and_runs_nothing_twice() {
    let Some((e, _vhost)) = env(4, "network-cut") else {
        return;
    };
    network_cut_loses_nothing(e).await;
}

/// The same cut with the default result backend on RabbitMQ (rpc://, nothing to ask whether a
/// task finished): the worker's own record of finished ids keeps redelivered copies from
/// running twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_with_the_default_rpc_backend_runs_nothing_twice() {
    // No result backend configured anywhere: the default.
    let Some((e, _vhost)) = rpc_env("network-cut-rpc", "") else {
        return;
    };
    network_cut_loses_nothing(e).await;
}

async fn network_cut_loses_nothing(e: Env) {
    let (scheme_host, vhost) = e.broker.rsplit_once('/').expect("broker URL has a vhost");
    let host_port = scheme_host.rsplit('@').next().unwrap().to_string();
    let proxy = CutProxy::start(host_port);
    let through_proxy = Env {
        broker: format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", proxy.port),
        backend: e.backend.clone(),
    };
    let worker = rust_worker(&through_proxy, "celery", "");
    let app = rust_client(&e);
    let mut results = Vec::new();
    for _ in 0..12 {
        results.push(sleep::delay(&app, 0.6).await.unwrap());
    }
    // Cut as the first task finishes: with -c 4, eight or more are still held (running or
    // waiting for a slot), their acks will go nowhere, and RabbitMQ hands their messages back
    // while the first copies are still here.
    worker.wait_for("succeeded in");
    proxy.cut();
    for r in &results {
        assert_eq!(r.get(WAIT).await.unwrap(), 0.6);
    }
    // The worker's revocation follower was cut too: it follows the stream again.
    let revoked = add::s(1, 1)
        .countdown(Duration::from_secs(1))
        .apply_async(&app)
        .await
        .unwrap();
    revoked.revoke(false).await.unwrap();
    worker.wait_for(&format!("[{}] revoked: not run", revoked.id()));
    let log = worker.stop();
    for r in &results {
        assert_eq!(count(&log, r.id(), "succeeded"), 1, "{}: {log:#?}", r.id());
    }
    assert_eq!(count(&log, revoked.id(), "succeeded"), 0, "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("redelivered but already") && l.contains(": not run again")),
        "the cut sent no finished task back: {log:#?}"
    );
}

/// Celery's rpc:// result backend, both ways: a Python client with `backend="rpc://"` gets
/// results (and failures, retries) from a celeriac worker, a celeriac client gets them from a
/// Python worker; with an AMQP broker and no backend configured, rpc:// is the default; and
/// another process asking for an rpc:// result is told why it cannot have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_results_both_directions() {
    let Some((e, _vhost)) = rpc_env("rpc", "rpc://") else {
        return;
    };
    drop(python_calls_celeriac_worker(&e));
    celeriac_calls_python_worker(&e).await;

    let worker = rust_worker(&e, "celery", "");
    let app = celeriac_demo::app().reconfigured(|c| {
        c.broker_url = Some(e.broker.clone());
        c.result_backend = None;
    });
    assert_eq!(app.backend().await.unwrap().display_url(), "rpc://");
    let sent = add::delay(&app, 20, 22).await.unwrap();
    assert_eq!(sent.get(WAIT).await.unwrap(), 42);
    let out = std::process::Command::new(DEMO)
        .args(["result", sent.id(), "--wait", "5"])
        .env("CELERIAC_BROKER_URL", &e.broker)
        .env("CELERIAC_RESULT_BACKEND", "rpc://")
        .env("NO_COLOR", "1")
        .output()
        .expect("demo binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("was not sent by this process")
            && stderr.contains("delivers results only to the process that sent the task"),
        "{stderr}"
    );
    app.close().await.unwrap();
    drop(worker.stop());
}

/// A celeriac worker on the test's vhost named `node`, consuming `queue` (`-c 2`, `extra`
/// flags), once its log shows `ready`.
fn named_worker(e: &Env, node: &str, queue: &str, extra: &[&str], ready: &str) -> Proc {
    let mut cmd = std::process::Command::new(DEMO);
    cmd.args(["worker", "-l", "info", "-c", "2", "-n", node, "-Q", queue])
        .args(extra)
        .env("CELERIAC_BROKER_URL", &e.broker)
        .env("CELERIAC_RESULT_BACKEND", &e.backend)
        .env("NO_COLOR", "1");
    Proc::spawn(cmd, ready)
}

/// Runs the demo binary's remote-control or events verb (the `celeriac` binary's) and parses
/// its standard output as one JSON value.
fn cli_json(e: &Env, args: &[&str]) -> Value {
    let out = std::process::Command::new(DEMO)
        .args(args)
        .env("CELERIAC_BROKER_URL", &e.broker)
        .env("CELERIAC_RESULT_BACKEND", &e.backend)
        .env("NO_COLOR", "1")
        .output()
        .expect("the demo binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    celeriac::serde_json::from_str(stdout.trim())
        .unwrap_or_else(|err| panic!("{args:?} printed {stdout:?}: {err}"))
}

/// `inspect ping --json`, `inspect registered --json`, `control add_consumer` and
/// `control cancel_consumer` against `node`.
fn celeriac_cli_inspects_and_controls(e: &Env, node: &str) {
    let ping = cli_json(e, &["inspect", "ping", "-d", node, "-t", "5", "--json"]);
    assert_eq!(ping, json!({ node: {"ok": "pong"} }));
    let registered = cli_json(
        e,
        &["inspect", "registered", "-d", node, "-t", "5", "--json"],
    );
    let names = registered[node]
        .as_array()
        .unwrap_or_else(|| panic!("{registered}"));
    assert!(
        names.contains(&json!("tasks.add")) && names.contains(&json!("tasks.sleep")),
        "{registered}"
    );
    let queue = format!("cli-added-{}", std::process::id());
    for (verb, reply) in [
        ("add_consumer", format!("add consumer {queue}")),
        (
            "cancel_consumer",
            format!("no longer consuming from {queue}"),
        ),
    ] {
        let replies = cli_json(
            e,
            &["control", verb, &queue, "-d", node, "-t", "5", "--json"],
        );
        assert_eq!(replies, json!([{ node: {"ok": reply} }]), "{verb}");
    }
}

/// Python Celery 5.7's `app.control.inspect()` against a celeriac worker on RabbitMQ (its
/// mailbox `<node>.celery.pidbox`): ping, registered (plain and with attributes), stats,
/// clock, revoked, active_queues, `broadcast()` of an unknown command and `ping()` to
/// everyone; celeriac's own `Mailbox::broadcast`; and the celeriac CLI against the celeriac
/// worker and against a Python worker. Results through rpc://.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_inspects_a_celeriac_worker_on_rabbitmq() {
    let Some((e, _vhost)) = rpc_env("inspect", "rpc://") else {
        return;
    };
    let (node, queue) = ("inspect@interop", "inspect");
    let worker = named_worker(&e, node, queue, &[], "remote control: listening");
    let r = interop_script(&e, "control.py", &[node, "5"]);
    assert_eq!(r["ping"], json!({ node: {"ok": "pong"} }), "{r}");
    let registered = r["registered"][node].as_array().expect("registered");
    assert!(registered.contains(&json!("tasks.add")), "{r}");
    assert!(
        r["registered_items"][node]
            .as_array()
            .unwrap()
            .contains(&json!("tasks.sleep [acks_late=True max_retries=3]")),
        "{r}"
    );
    let stats = &r["stats"][node];
    assert_eq!(stats["pool"]["max-concurrency"], json!(2), "{r}");
    assert!(
        stats["pid"].as_u64().is_some() && stats["clock"].is_string(),
        "{r}"
    );
    assert!(r["clock"][node]["clock"].as_u64().is_some(), "{r}");
    assert!(r["revoked"][node].is_array(), "{r}");
    let active_queues = r["active_queues"][node].as_array().expect("active_queues");
    assert_eq!(active_queues.len(), 1, "{r}");
    assert_eq!(active_queues[0]["name"], json!(queue), "{r}");
    assert_eq!(active_queues[0]["exchange"]["type"], json!("direct"), "{r}");
    assert_eq!(
        r["unknown"],
        json!([{ node: {"error": "KeyError('no_such_command')"} }]),
        "{r}"
    );
    assert_eq!(r["everyone"], json!([{ node: {"ok": "pong"} }]), "{r}");

    // celeriac's own caller, through the broker's mailbox, gets the same reply.
    let app = celeriac_demo::app().reconfigured(|c| c.broker_url = Some(e.broker.clone()));
    let broker = app.broker().await.unwrap();
    let request = ControlRequest {
        method: "ping".into(),
        arguments: Default::default(),
        destination: Some(vec![node.to_string()]),
        pattern: None,
        matcher: None,
        ticket: Some(celeriac::core::message::new_id()),
        reply_to: Some(ReplyAddress {
            exchange: "reply.celery.pidbox".into(),
            routing_key: celeriac::core::message::new_id(),
        }),
        clock: 0,
    };
    let mailbox = broker.mailbox().expect("RabbitMQ has remote control");
    let replies = mailbox
        .broadcast(&request, Duration::from_secs(5), Some(1))
        .await
        .unwrap();
    assert_eq!(replies, vec![json!({ node: {"ok": "pong"} })]);
    app.close().await.unwrap();

    celeriac_cli_inspects_and_controls(&e, node);
    drop(worker.stop());

    // The same verbs against a Python worker.
    let python = python_worker(&e, queue, "3600");
    celeriac_cli_inspects_and_controls(&e, "py@interop");
    drop(python.stop());
}

/// A celeriac worker started with `-E` on RabbitMQ, watched by Python Celery's
/// `app.events.Receiver` (its own `celeryev.<uuid>` queue bound with `#`): heartbeats and
/// the task events arrive with Celery's fields, and Celery's own state machine (Flower's)
/// sees the tasks SUCCESS and FAILURE and the worker alive; celeriac's `events --dump` sees
/// the stream too. Results through rpc://.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receives_the_events_of_a_celeriac_worker_on_rabbitmq() {
    let Some((e, _vhost)) = rpc_env("events", "rpc://") else {
        return;
    };
    let (node, queue) = ("events@interop", "events");
    let worker = named_worker(&e, node, queue, &["-E"], "worker ready");
    let r = interop_script(&e, "events.py", &[node, queue]);
    assert_python_saw_events(&r);

    // The `events` verb sees the same stream: the next heartbeat, as JSON.
    let first = cli_json(&e, &["events", "--dump", "--count", "1", "--timeout", "10"]);
    assert!(
        first["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("worker-")),
        "{first}"
    );
    drop(worker.stop());
}

/// Results for the RabbitMQ control tests: Redis database 1 (shared by the remote-control
/// tests, which isolate themselves by node, queue and task ids), so a REVOKED state stored
/// by the worker is visible to the Python client, as it is with Celery's Redis backend.
fn redis_db1_backend(test: &str) -> Option<String> {
    let Ok(base) = std::env::var("CELERIAC_TEST_REDIS_URL") else {
        eprintln!("skipped {test}: CELERIAC_TEST_REDIS_URL not set");
        return None;
    };
    let (scheme, rest) = base.split_once("://")?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    Some(format!("{scheme}://{authority}/1"))
}

/// Python Celery's control commands that change a celeriac worker on RabbitMQ:
/// `add_consumer` (a `basic.consume` on the worker's live channel; its task runs),
/// `cancel_consumer`, `revoke`, `revoke(terminate=True)` and `shutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_controls_a_celeriac_worker_on_rabbitmq() {
    let test = "python_controls_a_celeriac_worker_on_rabbitmq";
    let Some(backend) = redis_db1_backend(test) else {
        return;
    };
    let Some((e, _vhost)) = rpc_env("consumers", &backend) else {
        return;
    };
    let node = format!("consumers-{}@amqp", std::process::id());
    let queue = format!("consumers-{}", std::process::id());
    let extra = format!("{queue}-extra");
    let mut worker = named_worker(&e, &node, &queue, &[], "remote control: listening");
    let r = interop_script(&e, "consumers.py", &[&node, &queue, &extra]);
    assert_python_controlled(&r, &node, &queue, &extra);
    assert!(worker.wait_exit().success(), "shutdown is a clean exit");
}

/// Flower 2.2 against RabbitMQ lists a celeriac worker, follows its task to SUCCESS from its
/// events and acts on it through its control endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flower_sees_and_controls_a_celeriac_worker_on_rabbitmq() {
    let test = "flower_sees_and_controls_a_celeriac_worker_on_rabbitmq";
    let Some(backend) = redis_db1_backend(test) else {
        return;
    };
    let Some((e, _vhost)) = rpc_env("flower", &backend) else {
        return;
    };
    let node = format!("flower-{}@amqp", std::process::id());
    let queue = format!("flower-{}", std::process::id());
    let extra = format!("{queue}-extra");
    let worker = named_worker(&e, &node, &queue, &["-E"], "worker ready");
    let (flower, port) = start_flower(&e);
    let r = interop_script(&e, "flower_api.py", &[&port, &node, &queue, &extra]);
    assert_flower_sees(&r, &node);
    flower_controls_the_worker(&r, &node, &extra);
    drop(flower.stop());
    drop(worker.stop());
}
