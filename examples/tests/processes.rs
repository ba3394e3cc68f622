//! Whole processes sharing one SQLite file: the demo binary as worker(s), this test process as
//! the producer, and the CLI. Covers kill -9, two workers, restarts and signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac::core::broker::{Publish, RawMessage};
use celeriac::serde_json::{json, Map, Value};
use celeriac::{App, ResultError, TaskState};
use celeriac_demo::{add, echo, fail, flaky, sleep};

const WAIT: Duration = Duration::from_secs(30);
const DEMO: &str = env!("CARGO_BIN_EXE_celeriac-demo");

struct Store {
    dir: tempfile::TempDir,
    url: String,
}

fn store(query: &str) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}{query}", dir.path().join("shared.db").display());
    Store { dir, url }
}

fn producer(s: &Store) -> App {
    celeriac_demo::app().reconfigured(|c| c.broker_url = Some(s.url.clone()))
}

/// A worker process whose log lines are collected for assertions.
struct WorkerProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

fn spawn_worker(s: &Store, name: &str, extra: &[&str]) -> WorkerProcess {
    let mut child = Command::new(DEMO)
        .args(["worker", "-l", "info", "-n", name])
        .args(extra)
        .env("CELERIAC_BROKER_URL", &s.url)
        .env("NO_COLOR", "1")
        .current_dir(s.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo worker starts");
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let w = WorkerProcess { child, log };
    w.wait_for_log("worker ready");
    w
}

impl WorkerProcess {
    fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "worker never logged {needle:?}; log: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    fn wait_exit(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                let log = self.log.lock().unwrap().clone();
                return (status, log);
            }
            assert!(Instant::now() < deadline, "worker did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        let (status, log) = self.wait_exit();
        assert!(
            status.success(),
            "worker exited with {status}; log: {log:#?}"
        );
        log
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// How many times each task id was reported succeeded in these logs.
fn successes(logs: &[Vec<String>], id: &str) -> usize {
    logs.iter()
        .flatten()
        .filter(|l| l.contains(id) && l.contains("succeeded"))
        .count()
}

async fn wait_queue_empty(app: &App) {
    let broker = app.broker().await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let q = broker
            .queue_stats()
            .unwrap()
            .queue_lengths(&["celery".to_string()])
            .await
            .unwrap();
        if q.iter()
            .all(|q| q.ready == 0 && q.scheduled == 0 && q.unacked == 0)
        {
            return;
        }
        assert!(Instant::now() < deadline, "queue never drained: {q:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a worker holds at least `n` messages of `queue` (its prefetch window may take
/// more at once than it runs).
async fn wait_unacked(app: &App, queue: &str, n: u64) {
    let broker = app.broker().await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let lengths = broker
            .queue_stats()
            .unwrap()
            .queue_lengths(&[queue.to_string()])
            .await
            .unwrap();
        if lengths.first().is_some_and(|l| l.unacked >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {n} held in {queue}: {lengths:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_process_and_worker_process_share_one_file() {
    let s = store("");
    let worker = spawn_worker(&s, "w1@test", &["-c", "2"]);
    let app = producer(&s);
    let sum = add::delay(&app, 2, 3).await.unwrap();
    let echoed = app.send_task("tasks.echo", vec![json!(1), json!("a")], {
        let mut kw = Map::new();
        kw.insert("k".into(), json!(true));
        kw
    });
    let echoed = echoed.await.unwrap();
    let failed = fail::delay(&app, "boom".into()).await.unwrap();
    let retried = flaky::delay(&app, 2).await.unwrap();
    assert_eq!(sum.get(WAIT).await.unwrap(), 5);
    assert_eq!(
        echoed.get(WAIT).await.unwrap(),
        json!({"args": [1, "a"], "kwargs": {"k": true}})
    );
    match failed.get(WAIT).await {
        Err(ResultError::Task(e)) => {
            assert_eq!(
                (
                    e.exc_type.as_str(),
                    e.exc_module.as_str(),
                    e.message.as_str()
                ),
                ("ValueError", "builtins", "boom")
            );
        }
        other => panic!("expected ValueError, got {other:?}"),
    }
    assert_eq!(retried.get(WAIT).await.unwrap(), 2);
    let log = worker.stop();
    assert!(
        log.iter().any(|l| l.contains("SIGTERM received")),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_drain_one_queue_and_no_task_runs_twice() {
    let s = store("");
    let app = producer(&s);
    let calls: Vec<_> = (0..400).map(|i| add::s(i, i).into_call()).collect();
    let results = app.send_batch(calls).await.unwrap();
    let a = spawn_worker(&s, "a@test", &["-c", "4"]);
    let b = spawn_worker(&s, "b@test", &["-c", "4"]);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.get(WAIT).await.unwrap(), json!(2 * i as i64));
    }
    let logs = vec![a.stop(), b.stop()];
    for r in &results {
        assert_eq!(
            successes(&logs, r.id()),
            1,
            "task {} did not run exactly once",
            r.id()
        );
    }
    for log in &logs {
        assert!(
            log.iter().any(|l| l.contains("succeeded")),
            "a worker did no work: {log:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_late_ack_task_and_another_worker_finishes_it() {
    let s = store("?visibility_timeout=1");
    let app = producer(&s);
    let victim = spawn_worker(&s, "victim@test", &["-c", "1"]);
    let r = sleep::delay(&app, 1.5).await.unwrap();
    wait_unacked(&app, "celery", 1).await;
    victim.kill9();
    assert_eq!(r.state().await.unwrap(), TaskState::Pending);
    let rescuer = spawn_worker(&s, "rescuer@test", &["-c", "1"]);
    assert_eq!(r.get(WAIT).await.unwrap(), 1.5);
    let log = rescuer.stop();
    assert_eq!(successes(&[log], r.id()), 1);
}

/// The worker running a chord's last header member (late ack) dies: the member runs again on
/// another worker, is counted once, and the body runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_chords_last_member_and_the_body_still_runs_once() {
    use celeriac::canvas::{chord, Sig};
    let s = store("?visibility_timeout=1");
    let app = producer(&s);
    let victim = spawn_worker(&s, "victim@test", &["-c", "4"]);
    let header = [0.0, 0.0, 0.0, 2.0].map(sleep::s);
    let body = chord(header, Sig::task::<celeriac_demo::tsum>(vec![]))
        .apply_async(&app)
        .await
        .unwrap();
    let Some(celeriac::Parent::Group(members)) = body.parent() else {
        panic!("a chord's result has its header as parent");
    };
    for quick in &members.results()[..3] {
        quick.get(WAIT).await.unwrap();
    }
    wait_unacked(&app, "celery", 1).await;
    victim.kill9();
    assert_eq!(body.state().await.unwrap(), TaskState::Pending);
    let rescuer = spawn_worker(&s, "rescuer@test", &["-c", "4"]);
    assert_eq!(body.get(WAIT).await.unwrap(), json!(2.0));
    wait_queue_empty(&app).await;
    let log = rescuer.stop();
    assert_eq!(successes(&[log], body.id()), 1, "the body ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_task_is_not_redelivered_while_its_worker_lives() {
    // Lease of 1 s, task of 3 s: keepalive must hold the lease the whole time.
    let s = store("?visibility_timeout=1");
    let app = producer(&s);
    let a = spawn_worker(&s, "a@test", &["-c", "1"]);
    let b = spawn_worker(&s, "b@test", &["-c", "1"]);
    let r = sleep::delay(&app, 3.0).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 3.0);
    let logs = vec![a.stop(), b.stop()];
    assert_eq!(successes(&logs, r.id()), 1, "{logs:#?}");
    let started = logs.iter().flatten().filter(|l| l.contains(r.id())).count();
    assert_eq!(started, 1, "the task was delivered twice: {logs:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_survives_worker_restart() {
    let s = store("");
    let app = producer(&s);
    let first = spawn_worker(&s, "w@test", &["-c", "1"]);
    let due_soon = add::s(1, 2)
        .countdown(Duration::from_millis(1500))
        .apply_async(&app)
        .await
        .unwrap();
    due_soon.revoke(false).await.unwrap();
    first.stop();
    // Revoked while no worker runs at all.
    let offline = echo::s(Default::default(), Default::default())
        .apply_async(&app)
        .await
        .unwrap();
    offline.revoke(false).await.unwrap();
    let second = spawn_worker(&s, "w@test", &["-c", "1"]);
    // Let the worker take both messages (the first only once due), then check neither ran.
    wait_queue_empty(&app).await;
    for r in [&due_soon.id().to_string(), &offline.id().to_string()] {
        let res: celeriac::AsyncResult<Value> = celeriac::AsyncResult::new(app.clone(), r.as_str());
        match res.get(WAIT).await {
            Err(ResultError::Task(e)) => assert_eq!(
                (e.state, e.message.as_str()),
                (TaskState::Revoked, "revoked")
            ),
            other => panic!("expected REVOKED, got {other:?}"),
        }
    }
    let log = second.stop();
    assert_eq!(
        successes(std::slice::from_ref(&log), due_soon.id()),
        0,
        "{log:#?}"
    );
    assert_eq!(
        successes(std::slice::from_ref(&log), offline.id()),
        0,
        "{log:#?}"
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("revoked: not run"))
            .count(),
        2,
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_graceful_and_nothing_is_lost() {
    let s = store("");
    let app = producer(&s);
    let mut results = Vec::new();
    for _ in 0..6 {
        results.push(sleep::delay(&app, 0.5).await.unwrap());
    }
    let first = spawn_worker(&s, "first@test", &["-c", "2"]);
    wait_unacked(&app, "celery", 2).await;
    first.signal(libc::SIGTERM);
    let (status, first_log) = first.wait_exit();
    assert!(status.success(), "{first_log:#?}");
    let second = spawn_worker(&s, "second@test", &["-c", "4"]);
    for r in &results {
        assert_eq!(r.get(WAIT).await.unwrap(), 0.5);
    }
    let logs = vec![first_log, second.stop()];
    for r in &results {
        assert_eq!(successes(&logs, r.id()), 1, "{logs:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_stops_at_once_and_late_ack_tasks_go_back() {
    let s = store("");
    let app = producer(&s);
    let r = sleep::delay(&app, 60.0).await.unwrap();
    let w = spawn_worker(&s, "w@test", &["-c", "1"]);
    wait_unacked(&app, "celery", 1).await;
    w.signal(libc::SIGTERM);
    w.wait_for_log("SIGTERM received");
    w.signal(libc::SIGINT);
    let (status, log) = w.wait_exit();
    assert!(status.success(), "{log:#?}");
    let lengths = app
        .broker()
        .await
        .unwrap()
        .queue_stats()
        .unwrap()
        .queue_lengths(&["celery".into()])
        .await
        .unwrap();
    assert_eq!((lengths[0].ready, lengths[0].unacked), (1, 0), "{log:#?}");
    assert_eq!(r.state().await.unwrap(), TaskState::Pending);
}

fn cli(s: &Store, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(DEMO)
        .args(args)
        .env("CELERIAC_BROKER_URL", &s.url)
        .current_dir(s.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_call_result_queues_purge_and_dead_letters() {
    let s = store("");
    let (ok, id, err) = cli(&s, &["call", "tasks.add", "--args", "[20, 22]"]);
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    let (ok, out, _) = cli(&s, &["queues"]);
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with("celery") && l.split_whitespace().nth(1) == Some("1")),
        "{out}"
    );

    // A malformed message: nothing is lost, it waits in the dead-letter queue.
    let app = producer(&s);
    let mut headers = Map::new();
    headers.insert("task".into(), json!("tasks.add"));
    headers.insert("id".into(), json!("malformed-1"));
    let raw = RawMessage {
        headers,
        properties: Map::new(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        body: b"{oops".to_vec(),
    };
    app.broker()
        .await
        .unwrap()
        .publish(Publish {
            queue: "celery".into(),
            priority: None,
            not_before: None,
            message: raw,
        })
        .await
        .unwrap();

    let w = spawn_worker(&s, "w@test", &["-c", "1"]);
    let (ok, out, err) = cli(&s, &["result", &id, "--wait", "20"]);
    assert!(ok, "{err}");
    let meta: Value = celeriac::serde_json::from_str(&out).unwrap();
    assert_eq!(
        (meta["status"].as_str(), meta["result"].as_i64()),
        (Some("SUCCESS"), Some(42)),
        "{out}"
    );
    w.wait_for_log("dead-letter");
    let log = w.stop();
    assert!(
        log.iter()
            .any(|l| l.contains("malformed-1") && l.contains("not valid JSON")),
        "{log:#?}"
    );

    let (ok, out, _) = cli(&s, &["dead-letter", "list"]);
    assert!(
        ok && out.contains("malformed-1") && out.contains("not-json"),
        "{out}"
    );
    let (ok, out, _) = cli(&s, &["dead-letter", "requeue", "--all"]);
    assert!(ok && out.contains("Requeued 1 message"), "{out}");
    let (ok, out, err) = cli(&s, &["purge"]);
    assert!(
        !ok && out.is_empty() && err.contains("-f"),
        "purge must ask; stdin is not a terminal: {err}"
    );
    let (ok, out, _) = cli(&s, &["purge", "-f"]);
    assert!(
        ok && out.contains("Purged 1 message from queue celery"),
        "{out}"
    );
}

#[test]
fn cli_errors_are_one_clear_line_and_a_non_zero_exit() {
    let s = store("");
    let cases: &[(&[&str], &str)] = &[
        (&["--broker", "redis-ish:/nope", "queues"], "not a URL"),
        (
            &["--broker", "mqtt://localhost", "queues"],
            "unsupported broker URL scheme \"mqtt\"",
        ),
        (
            &["--broker", "sqlite:///no/such/dir/x.db", "queues"],
            "/no/such/dir/x.db",
        ),
        (
            &["call", "tasks.add", "--args", "[1,"],
            "--args is not valid JSON",
        ),
        (
            &["call", "tasks.add", "--kwargs", "[1]"],
            "--kwargs must be a JSON object",
        ),
    ];
    for (args, expected) in cases {
        let (ok, _, err) = cli(&s, args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

/// Remote control on the embedded store: the CLI in one process inspects and controls two
/// workers in others (ping, stats, registered, active, rate_limit, pool_grow, shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_inspects_and_controls_workers_in_other_processes() {
    let s = store("");
    let w1 = spawn_worker(&s, "w1@box", &["-c", "1"]);
    let w2 = spawn_worker(&s, "w2@box", &["-c", "1"]);
    w1.wait_for_log("remote control: listening");
    w2.wait_for_log("remote control: listening");
    let (ok, out, err) = cli(
        &s,
        &[
            "inspect",
            "ping",
            "-t",
            "3",
            "-d",
            "w1@box,w2@box",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let replies: celeriac::serde_json::Value = celeriac::serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        replies,
        celeriac::serde_json::json!({"w1@box": {"ok": "pong"}, "w2@box": {"ok": "pong"}})
    );
    let (ok, out, err) = cli(&s, &["status", "-t", "3", "-d", "w1@box,w2@box"]);
    assert!(ok && out.contains("2 nodes online."), "{out}{err}");

    let app = producer(&s);
    let running = celeriac_demo::sleep::delay(&app, 1.5).await.unwrap();
    // Polled: the task is listed once a worker has started it.
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, out, err) = cli(
            &s,
            &["inspect", "active", "-t", "2", "-d", "w1@box,w2@box", "-j"],
        );
        assert!(ok, "{err}");
        if out.contains(running.id()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the running task is never listed: {out}"
        );
    }
    let (ok, out, _) = cli(&s, &["inspect", "registered", "-t", "3", "-d", "w2@box"]);
    assert!(
        ok && out.contains("->  w2@box: OK") && out.contains("    * tasks.spin"),
        "{out}"
    );
    let (ok, out, _) = cli(
        &s,
        &["control", "pool_grow", "2", "-t", "3", "-d", "w2@box"],
    );
    assert!(ok && out.contains("pool will grow"), "{out}");
    let (ok, out, _) = cli(
        &s,
        &["inspect", "stats", "-t", "3", "-d", "w2@box", "--json"],
    );
    let stats: celeriac::serde_json::Value = celeriac::serde_json::from_str(out.trim()).unwrap();
    assert!(
        ok && stats["w2@box"]["pool"]["max-concurrency"] == 3,
        "{out}"
    );
    let (ok, _, err) = cli(&s, &["inspect", "no_such", "-t", "1"]);
    assert!(
        !ok && err.contains("Command no_such not recognized"),
        "{err}"
    );
    assert_eq!(running.get(WAIT).await.unwrap(), 1.5);

    let (ok, _, err) = cli(&s, &["control", "shutdown", "-t", "1", "-d", "w2@box"]);
    assert!(
        !ok && err.contains("No nodes replied"),
        "shutdown never replies: {err}"
    );
    let (status, _) = w2.wait_exit();
    assert!(status.success());
    drop(w1.stop());
}

/// `demo worker -B`: the app's schedule in code, sent by the beat inside the worker, run by
/// that worker; a second `-B` worker on the same store waits under the lease, so each tick
/// runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_embedded_beat_share_one_lease_and_run_the_code_schedule() {
    let s = store("");
    let a = spawn_worker(&s, "beat-a", &["-B", "-Q", "demo-beat"]);
    let b = spawn_worker(&s, "beat-b", &["-B", "-Q", "demo-beat"]);
    let deadline = Instant::now() + WAIT;
    let leaders_in = |logs: &[Vec<String>]| {
        logs.iter()
            .filter(|log| log.iter().any(|l| l.contains(" leads schedule ")))
            .count()
    };
    // Counted while both run: once the leader stops it gives the lease up, and the other
    // may take it before its own stop arrives.
    let leaders = loop {
        let running = [a.lines(), b.lines()];
        if successes(&running, "tasks.add[") >= 4 && leaders_in(&running) > 0 {
            break leaders_in(&running);
        }
        assert!(Instant::now() < deadline, "{running:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logs = [a.stop(), b.stop()];
    assert_eq!(leaders, 1, "{logs:#?}");
    assert!(
        logs.iter()
            .flatten()
            .any(|l| l.contains("succeeded") && l.contains("s: 42")),
        "{logs:#?}"
    );
}

/// `demo beat`: the schedule in code, sent by a beat process of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_binary_runs_its_code_schedule_as_a_beat_process() {
    let s = store("");
    let mut beat = Command::new(DEMO)
        .args(["beat", "-l", "info"])
        .env("CELERIAC_BROKER_URL", &s.url)
        .current_dir(s.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo beat starts");
    let app = producer(&s);
    let broker = app.broker().await.unwrap();
    let stats = broker.queue_stats().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let lengths = stats.queue_lengths(&["demo-beat".into()]).await.unwrap();
        if lengths.iter().map(|l| l.ready).sum::<u64>() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no ticks from demo beat");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unsafe { libc::kill(beat.id() as i32, libc::SIGTERM) };
    assert!(beat.wait().unwrap().success());
}
