//! The process pool (`-P process`) with real worker processes of the demo binary, on the
//! embedded store and on Redis: hard limits kill the child, a child killed mid-task loses
//! nothing else, children are recycled by task count and by memory, `-O fair` lets short
//! tasks pass a long one, and a poison pill ends in the dead-letter queue.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use celeriac::{App, ResultError, TaskState};
use celeriac_demo::{add, child_index, crash, leak, pid, sleep, spin};
use common::{Proc, DEMO, WAIT};

/// Where a test's worker and client meet.
struct Store {
    _dir: tempfile::TempDir,
    url: String,
}

fn sqlite_store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pools.db").display());
    Store { _dir: dir, url }
}

/// Redis database 1, under a key prefix of this run's own (so tests run side by side).
fn redis_store(test: &str) -> Option<Store> {
    let Ok(base) = std::env::var("CELERIAC_TEST_REDIS_URL") else {
        eprintln!("skipped {test}: CELERIAC_TEST_REDIS_URL not set");
        return None;
    };
    let (scheme, rest) = base.split_once("://").expect("a URL");
    let authority = rest.split('/').next().unwrap_or(rest);
    let prefix = format!("pools-{test}-{}-", std::process::id());
    Some(Store {
        _dir: tempfile::tempdir().unwrap(),
        url: format!("{scheme}://{authority}/1?global_keyprefix={prefix}"),
    })
}

fn worker(s: &Store, args: &[&str]) -> Proc {
    let mut cmd = Command::new(DEMO);
    cmd.args(["worker", "-P", "process", "-l", "debug", "-n", "pools@%h"])
        .args(args)
        .env("CELERIAC_BROKER_URL", &s.url)
        .env("NO_COLOR", "1")
        .current_dir(s._dir.path());
    Proc::spawn(cmd, "worker ready")
}

fn client(s: &Store) -> App {
    celeriac_demo::app().reconfigured(|c| c.broker_url = Some(s.url.clone()))
}

/// The pids of the pool children the worker logged as started, in order.
fn child_pids(log: &[String]) -> Vec<u32> {
    log.iter()
        .filter_map(|l| l.split("started (pid ").nth(1))
        .filter_map(|rest| rest.trim_end_matches(')').parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn failure(result: Result<impl std::fmt::Debug, ResultError>) -> celeriac::RemoteError {
    match result {
        Err(ResultError::Task(e)) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A CPU loop past its hard limit: its child is killed, FAILURE `TimeLimitExceeded` is
/// stored, a new child takes its place and the next tasks run. (With the kill disabled the
/// loop would run its 25 s and succeed: this test fails.)
async fn hard_limit_kills_the_child(s: Store) {
    let w = worker(&s, &["-c", "2", "--time-limit", "1"]);
    let app = client(&s);
    let before = child_pids(&w.lines());
    assert_eq!(before.len(), 2, "{:?}", w.lines());
    let looping = spin::delay(&app, 25.0).await.unwrap();
    let e = failure(looping.get(Duration::from_secs(20)).await);
    assert_eq!(e.exc_type, "TimeLimitExceeded");
    wait_until("the looping child to be gone", || {
        before.iter().filter(|p| alive(**p)).count() == 1
    });
    wait_until("a replacement child", || child_pids(&w.lines()).len() == 3);
    for i in 0..4 {
        let r = add::delay(&app, i, 1).await.unwrap();
        assert_eq!(r.get(WAIT).await.unwrap(), i + 1);
    }
    let log = w.stop();
    assert!(log
        .iter()
        .any(|l| l.contains("hard time limit (1s) exceeded")));
    for pid in child_pids(&log) {
        assert!(!alive(pid), "child {pid} outlived its worker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_limit_kills_the_child_on_the_embedded_store() {
    hard_limit_kills_the_child(sqlite_store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_limit_kills_the_child_on_redis() {
    if let Some(s) = redis_store("hard") {
        hard_limit_kills_the_child(s).await;
    }
}

/// kill -9 of a child mid-task. Early ack (`tasks.spin`): FAILURE `WorkerLostError`.
/// Late ack (`tasks.sleep`): the message goes back and runs to SUCCESS on a new child.
/// Either way the worker goes on.
async fn kill_9_of_a_child(s: Store) {
    let w = worker(&s, &["-c", "1"]);
    let app = client(&s);

    let early = spin::delay(&app, 30.0).await.unwrap();
    w.wait_for(&format!("Task tasks.spin[{}] starting", early.id()));
    let child = *child_pids(&w.lines()).last().unwrap();
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
    let e = failure(early.get(WAIT).await);
    assert_eq!(e.exc_type, "WorkerLostError");
    assert!(e.message.contains("signal 9 (SIGKILL)"), "{e:?}");

    let late = sleep::delay(&app, 1.0).await.unwrap();
    w.wait_for(&format!("Task tasks.sleep[{}] starting", late.id()));
    let child = *child_pids(&w.lines()).last().unwrap();
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
    assert_eq!(late.get(WAIT).await.unwrap(), 1.0);

    let r = add::delay(&app, 2, 2).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 4);
    let log = w.stop();
    let lost = format!("Task tasks.sleep[{}] lost its pool child", late.id());
    assert!(log.iter().any(|l| l.contains(&lost)), "{log:#?}");
    let succeeded = format!("Task tasks.sleep[{}] succeeded", late.id());
    assert_eq!(log.iter().filter(|l| l.contains(&succeeded)).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_child_on_the_embedded_store() {
    kill_9_of_a_child(sqlite_store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_child_on_redis() {
    if let Some(s) = redis_store("kill9") {
        kill_9_of_a_child(s).await;
    }
}

/// `revoke(terminate=True, signal=...)`: the child running the task gets that signal
/// (SIGTERM by default), the task ends REVOKED `terminated`, a new child takes its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_sends_the_chosen_signal_to_the_child() {
    let s = sqlite_store();
    let w = worker(&s, &["-c", "1"]);
    let app = client(&s);
    for (signal, how) in [
        (None, "signal 15 (SIGTERM)"),
        (Some(celeriac::Signal::KILL), "signal 9 (SIGKILL)"),
    ] {
        let looping = spin::delay(&app, 30.0).await.unwrap();
        w.wait_for(&format!("Task tasks.spin[{}] starting", looping.id()));
        match signal {
            Some(signal) => looping.terminate(signal).await.unwrap(),
            None => looping.revoke(true).await.unwrap(),
        }
        let e = failure(looping.get(WAIT).await);
        assert_eq!(
            (e.exc_type.as_str(), e.message.as_str()),
            ("TaskRevokedError", "terminated")
        );
        w.wait_for(&format!("stopped by the worker: {how}"));
    }
    let r = add::delay(&app, 3, 4).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 7);
    w.stop();
}

/// `--max-tasks-per-child 1`: 20 tasks, 20 distinct child pids, none of them the worker's.
async fn one_task_per_child(s: Store) {
    let w = worker(&s, &["-c", "2", "--max-tasks-per-child", "1"]);
    let app = client(&s);
    let mut results = Vec::new();
    for _ in 0..20 {
        results.push(pid::delay(&app).await.unwrap());
    }
    let mut pids = Vec::new();
    for r in results {
        pids.push(r.get(WAIT).await.unwrap());
    }
    // Every child ran `worker_process_init` before its task, with its pool index.
    let index = child_index::delay(&app)
        .await
        .unwrap()
        .get(WAIT)
        .await
        .unwrap();
    assert!(matches!(index, Some(0 | 1)), "{index:?}");
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 20, "{pids:?}");
    w.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tasks_per_child_on_the_embedded_store() {
    one_task_per_child(sqlite_store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tasks_per_child_on_redis() {
    if let Some(s) = redis_store("maxtasks") {
        one_task_per_child(s).await;
    }
}

/// A task that leaks 50 MB per run with `--max-memory-per-child 102400` (100 MiB): every
/// task succeeds, children are replaced once over the limit, none grows far past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_memory_per_child_replaces_leaky_children() {
    let s = sqlite_store();
    let w = worker(&s, &["-c", "2", "--max-memory-per-child", "102400"]);
    let app = client(&s);
    let mut results = Vec::new();
    for _ in 0..6 {
        results.push(leak::delay(&app, 50).await.unwrap());
    }
    for r in results {
        let resident_mb = r.get(WAIT).await.unwrap();
        assert!(resident_mb < 170, "a child reached {resident_mb} MB");
    }
    let log = w.stop();
    let replaced = log
        .iter()
        .filter(|l| l.contains("--max-memory-per-child 102400): replacing it"))
        .count();
    assert!(replaced >= 2, "{log:#?}");
    assert!(child_pids(&log).len() >= 4, "{log:#?}");
}

/// `-O fair`: two children, one 5 s task and 20 short ones queued behind it: the short
/// ones all finish before the long one does (none waits in the busy child).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_dispatch_lets_short_tasks_pass_a_long_one() {
    let s = sqlite_store();
    let w = worker(&s, &["-c", "2", "-O", "fair", "--prefetch-multiplier", "4"]);
    let app = client(&s);
    let long = sleep::delay(&app, 5.0).await.unwrap();
    w.wait_for(&format!("Task tasks.sleep[{}] starting", long.id()));
    let mut short = Vec::new();
    for i in 0..20 {
        short.push(add::delay(&app, i, i).await.unwrap());
    }
    for r in &short {
        r.get(WAIT).await.unwrap();
    }
    assert_ne!(
        long.state().await.unwrap(),
        TaskState::Success,
        "every short task finished before the long one"
    );
    assert_eq!(long.get(WAIT).await.unwrap(), 5.0);
    w.stop();
}

/// A task that kills its child on every delivery goes to the dead-letter queue after
/// `--max-child-losses` deliveries, with the reason, and its caller sees FAILURE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_pill_ends_in_the_dead_letter_queue() {
    let s = sqlite_store();
    let w = worker(&s, &["-c", "1", "--max-child-losses", "2"]);
    let app = client(&s);
    let pill = crash::delay(&app).await.unwrap();
    let e = failure(pill.get(WAIT).await);
    assert_eq!(e.exc_type, "WorkerLostError");
    let broker = app.broker().await.unwrap();
    let dead = broker
        .dead_letters()
        .unwrap()
        .list_dead_letters(10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].reason.contains("worker-lost"),
        "{:?}",
        dead[0].reason
    );
    assert!(
        dead[0].reason.contains("on 2 deliveries"),
        "{:?}",
        dead[0].reason
    );
    let r = add::delay(&app, 1, 1).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 2);
    w.stop();
}
