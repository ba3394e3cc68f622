//! The worker through the public API, on a real embedded store (one temp SQLite file per test).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use celeriac::core::broker::{Publish, RawMessage};
use celeriac::core::state::ExceptionInfo;
use celeriac::serde_json::{json, Map, Value};
use celeriac::{task, App, Call, ResultError, TaskContext, TaskError, TaskState, WorkerConfig};

const WAIT: Duration = Duration::from_secs(20);

#[task(name = "t.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "t.blocking_add")]
fn blocking_add(x: i64, y: i64) -> i64 {
    // Proves plain fns run off the async executor: blocking here would stall it otherwise.
    std::thread::sleep(Duration::from_millis(20));
    x + y
}

#[task(name = "t.panics")]
async fn panics() -> i64 {
    panic!("kaboom")
}

#[task(name = "t.soft", soft_time_limit = 0.2, time_limit = 5)]
async fn soft(ctx: TaskContext) -> Result<String, TaskError> {
    tokio::select! {
        _ = ctx.soft_time_limit() => Ok("cleaned up after soft limit".to_string()),
        _ = tokio::time::sleep(Duration::from_secs(4)) => Ok("finished".to_string()),
    }
}

#[task(name = "t.hard", time_limit = 0.3)]
async fn hard() -> String {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "never".into()
}

static BACKOFF_TRIES: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
struct Flaky;
impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("flaky dependency")
    }
}
impl std::error::Error for Flaky {}

#[task(name = "t.backoff", autoretry_for = ["Flaky"], retry_backoff = 0.1, retry_jitter = false, max_retries = 3)]
async fn backoff(ctx: TaskContext) -> Result<u32, Flaky> {
    BACKOFF_TRIES.fetch_add(1, Ordering::SeqCst);
    if ctx.retries < 2 {
        return Err(Flaky);
    }
    Ok(ctx.retries)
}

#[task(name = "t.always_retry", max_retries = 2)]
async fn always_retry(ctx: TaskContext) -> Result<(), TaskError> {
    Err(ctx.retry(
        Duration::ZERO,
        Some(ExceptionInfo::new("KeyError", "still broken")),
    ))
}

static STARTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[task(name = "t.limited", rate_limit = "10/s")]
async fn limited() {
    STARTS.lock().unwrap().push(Instant::now());
}

static ORDER: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[task(name = "t.record")]
async fn record(label: String) {
    ORDER.lock().unwrap().push(label);
}

#[task(name = "t.slow", acks_late = true)]
async fn slow(seconds: f64) -> f64 {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    seconds
}

static NAPS_STARTED: AtomicU32 = AtomicU32::new(0);

/// Early ack by its own options; only the `task_acks_late` test uses it.
#[task(name = "t.nap")]
async fn nap(seconds: f64) -> f64 {
    NAPS_STARTED.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    seconds
}

static REQUEUED_RUNS: AtomicU32 = AtomicU32::new(0);

/// Only the requeue-on-failed-store test uses this task: its run count is that test's own.
#[task(name = "t.requeued", acks_late = true)]
async fn requeued() -> u32 {
    REQUEUED_RUNS.fetch_add(1, Ordering::SeqCst) + 1
}

static DRAIN_STARTS: AtomicU32 = AtomicU32::new(0);

/// Only the graceful-shutdown test uses this task, so its start count is that test's own.
#[task(name = "t.counted_slow", acks_late = true)]
async fn counted_slow(seconds: f64) -> f64 {
    DRAIN_STARTS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    seconds
}

static RUNS: AtomicU32 = AtomicU32::new(0);

#[task(name = "t.count_runs")]
async fn count_runs() -> u32 {
    RUNS.fetch_add(1, Ordering::SeqCst) + 1
}

type WorkerJoin = tokio::task::JoinHandle<Result<(), celeriac::WorkerError>>;

/// Starts a worker for `app` in this process; stop it through the handle, then join.
async fn spawn_worker(app: &App, concurrency: usize) -> (celeriac::ShutdownHandle, WorkerJoin) {
    let config = WorkerConfig {
        concurrency,
        shutdown_timeout: Duration::from_secs(10),
        ..app.worker_config()
    };
    let worker = app.worker(config).await.unwrap();
    (worker.shutdown_handle(), tokio::spawn(worker.run()))
}

struct Running {
    app: App,
    shutdown: celeriac::ShutdownHandle,
    join: WorkerJoin,
    _dir: tempfile::TempDir,
}

fn app_at(dir: &tempfile::TempDir) -> App {
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    App::builder("test")
        .broker_url(url)
        .task::<add>()
        .task::<blocking_add>()
        .task::<panics>()
        .task::<soft>()
        .task::<hard>()
        .task::<backoff>()
        .task::<always_retry>()
        .task::<limited>()
        .task::<record>()
        .task::<slow>()
        .task::<count_runs>()
        .task::<counted_slow>()
        .task::<requeued>()
        .task::<nap>()
        .build()
}

async fn start(concurrency: usize) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir);
    let (shutdown, join) = spawn_worker(&app, concurrency).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_async_and_blocking_tasks() {
    let w = start(4).await;
    let a = add::delay(&w.app, 2, 3).await.unwrap();
    let b = blocking_add::delay(&w.app, 40, 2).await.unwrap();
    assert_eq!(a.get(WAIT).await.unwrap(), 5);
    assert_eq!(b.get(WAIT).await.unwrap(), 42);
    assert_eq!(a.state().await.unwrap(), TaskState::Success);
    assert!(a.successful().await.unwrap());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_arguments_and_wrong_types() {
    let w = start(2).await;
    let mut kw = Map::new();
    kw.insert("y".into(), json!(3));
    let by_keyword = Call::new("t.add", vec![json!(2)], kw)
        .send(&w.app)
        .await
        .unwrap();
    assert_eq!(by_keyword.get(WAIT).await.unwrap(), json!(5));

    let wrong = w
        .app
        .send_task("t.add", vec![json!("two"), json!(3)], Map::new())
        .await
        .unwrap();
    match wrong.get(WAIT).await {
        Err(ResultError::Task(e)) => {
            assert_eq!(e.exc_type, "TypeError");
            assert!(
                e.message.contains("argument 'x' must be i64"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a TypeError failure, got {other:?}"),
    }
    let missing = w
        .app
        .send_task("t.add", vec![json!(1)], Map::new())
        .await
        .unwrap();
    match missing.get(WAIT).await {
        Err(ResultError::Task(e)) => assert!(
            e.message.contains("missing required argument 'y' (i64)"),
            "{}",
            e.message
        ),
        other => panic!("expected a missing-argument failure, got {other:?}"),
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_failure_and_the_worker_keeps_going() {
    let w = start(2).await;
    let p = panics::delay(&w.app).await.unwrap();
    match p.get(WAIT).await {
        Err(ResultError::Task(e)) => {
            assert_eq!(e.state, TaskState::Failure);
            assert_eq!(e.exc_type, "Panic");
            assert!(e.message.contains("kaboom"));
        }
        other => panic!("expected a panic failure, got {other:?}"),
    }
    assert_eq!(
        add::delay(&w.app, 1, 1)
            .await
            .unwrap()
            .get(WAIT)
            .await
            .unwrap(),
        2
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_and_hard_time_limits() {
    let w = start(2).await;
    let s = soft::delay(&w.app).await.unwrap();
    let h = hard::delay(&w.app).await.unwrap();
    assert_eq!(s.get(WAIT).await.unwrap(), "cleaned up after soft limit");
    match h.get(WAIT).await {
        Err(ResultError::Task(e)) => assert_eq!(e.exc_type, "TimeLimitExceeded"),
        other => panic!("expected TimeLimitExceeded, got {other:?}"),
    }
    // A per-call hard limit overrides the task's.
    let quick = slow::s(5.0)
        .time_limit(Duration::from_millis(200))
        .apply_async(&w.app)
        .await
        .unwrap();
    match quick.get(WAIT).await {
        Err(ResultError::Task(e)) => assert_eq!(e.exc_type, "TimeLimitExceeded"),
        other => panic!("expected TimeLimitExceeded, got {other:?}"),
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoretry_with_backoff_then_success_and_max_retries_then_failure() {
    let w = start(2).await;
    let started = Instant::now();
    let r = backoff::delay(&w.app).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 2);
    assert_eq!(BACKOFF_TRIES.load(Ordering::SeqCst), 3);
    // Backoff 0.1s then 0.2s: the success cannot come sooner than 0.3s after the call.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    let give_up = always_retry::delay(&w.app).await.unwrap();
    match give_up.get(WAIT).await {
        Err(ResultError::Task(e)) => {
            assert_eq!(e.exc_type, "KeyError");
            assert_eq!(e.message, "still broken");
        }
        other => panic!("expected the last error after max_retries, got {other:?}"),
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_state_is_visible_between_tries() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir);
    // Poll the state while the task retries: RETRY must show between the tries.
    let (shutdown, join) = spawn_worker(&app, 1).await;
    let r = backoff::delay(&app).await.unwrap();
    let mut seen_retry = false;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match r.state().await.unwrap() {
            TaskState::Retry => seen_retry = true,
            TaskState::Success => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen_retry, "RETRY was never stored");
    assert_eq!(r.get(WAIT).await.unwrap(), 2);
    shutdown.graceful();
    join.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_task_starts() {
    let w = start(4).await;
    let sent = Instant::now();
    let mut results = Vec::new();
    for _ in 0..5 {
        results.push(limited::delay(&w.app).await.unwrap());
    }
    for r in results {
        r.get(WAIT).await.unwrap();
    }
    let starts = STARTS.lock().unwrap().clone();
    assert_eq!(starts.len(), 5);
    // 10/s: the fifth start comes at least four intervals of 100 ms after the first could.
    // Measured from the send, so a late first start (a loaded machine) cannot hide it.
    let last = *starts.iter().max().unwrap() - sent;
    assert!(
        last >= Duration::from_millis(390),
        "5 starts within {last:?} of sending"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_tasks_run_in_due_order_not_send_order() {
    let w = start(4).await;
    let mut results = Vec::new();
    for (label, ms) in [("third", 900u64), ("first", 300), ("second", 600)] {
        results.push(
            record::s(label.to_string())
                .countdown(Duration::from_millis(ms))
                .apply_async(&w.app)
                .await
                .unwrap(),
        );
    }
    let scheduled = celery_lengths(&w.app).await;
    assert_eq!(
        scheduled[0].scheduled, 3,
        "ETA tasks wait in the store, not in the worker"
    );
    for r in &results {
        r.get(WAIT).await.unwrap();
    }
    assert_eq!(*ORDER.lock().unwrap(), vec!["first", "second", "third"]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tasks_are_revoked_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir);
    let r = add::s(1, 2)
        .expires_in(Duration::from_millis(1))
        .apply_async(&app)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (shutdown, join) = spawn_worker(&app, 1).await;
    match r.get(WAIT).await {
        Err(ResultError::Task(e)) => {
            assert_eq!(e.state, TaskState::Revoked);
            assert_eq!(e.message, "expired");
        }
        other => panic!("expected REVOKED expired, got {other:?}"),
    }
    shutdown.graceful();
    join.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_before_run_and_terminate_while_running() {
    let w = start(2).await;
    let later = add::s(1, 1)
        .countdown(Duration::from_millis(400))
        .apply_async(&w.app)
        .await
        .unwrap();
    later.revoke(false).await.unwrap();
    assert_eq!(
        later.state().await.unwrap(),
        TaskState::Revoked,
        "REVOKED is visible at once"
    );
    // Once the task is due and the worker has taken it, it still has not run.
    wait_queue_empty(&w.app).await;
    match later.get(WAIT).await {
        Err(ResultError::Task(e)) => assert_eq!(
            (e.state, e.message.as_str()),
            (TaskState::Revoked, "revoked")
        ),
        other => panic!("expected REVOKED, got {other:?}"),
    }
    let long = slow::delay(&w.app, 30.0).await.unwrap();
    // Wait until it is running (leased), then terminate it.
    let deadline = Instant::now() + WAIT;
    while celery_lengths(&w.app).await[0].unacked == 0 {
        assert!(Instant::now() < deadline, "task never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    long.revoke(true).await.unwrap();
    match long.get(WAIT).await {
        Err(ResultError::Task(e)) => assert_eq!(
            (e.state, e.message.as_str()),
            (TaskState::Revoked, "terminated")
        ),
        other => panic!("expected REVOKED terminated, got {other:?}"),
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_messages_go_to_the_dead_letter_queue() {
    let w = start(2).await;
    let app = w.app.clone();
    let broker = w.app.broker().await.unwrap();
    let mut headers = Map::new();
    headers.insert("task".into(), json!("t.add"));
    headers.insert("id".into(), json!("bad-body-1"));
    let bad = RawMessage {
        headers,
        properties: Map::new(),
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        body: b"this is not json".to_vec(),
    };
    broker
        .publish(Publish {
            queue: "celery".into(),
            priority: None,
            not_before: None,
            message: bad,
        })
        .await
        .unwrap();
    let mut pickle = RawMessage {
        content_type: "application/x-python-serialize".into(),
        ..broker_msg("pickled-1")
    };
    pickle.body = vec![0x80, 0x04, 0x95];
    broker
        .publish(Publish {
            queue: "celery".into(),
            priority: None,
            not_before: None,
            message: pickle,
        })
        .await
        .unwrap();
    let unknown = w
        .app
        .send_task("t.does_not_exist", vec![], Map::new())
        .await
        .unwrap();
    match unknown.get(WAIT).await {
        Err(ResultError::Task(e)) => assert_eq!(e.exc_type, "NotRegistered"),
        other => panic!("expected NotRegistered, got {other:?}"),
    }
    let dead = broker.dead_letters().unwrap();
    let deadline = Instant::now() + WAIT;
    let letters = loop {
        let letters = dead.list_dead_letters(10).await.unwrap();
        if letters.len() == 3 || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let reasons: Vec<&str> = letters.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(letters.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.starts_with("not-json")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("content-type-refused")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("unknown-task") && r.contains("t.does_not_exist")),
        "{reasons:?}"
    );
    // Nothing was lost: requeueing puts them back on the queue.
    w.stop().await;
    let requeued = dead.requeue_dead_letters(&[]).await.unwrap();
    assert_eq!(requeued, 3);
    let lengths = celery_lengths(&app).await;
    assert_eq!(lengths[0].ready, 3);
}

/// Lengths of the default queue.
async fn celery_lengths(app: &App) -> Vec<celeriac::core::broker::QueueLength> {
    app.broker()
        .await
        .unwrap()
        .queue_stats()
        .unwrap()
        .queue_lengths(&["celery".into()])
        .await
        .unwrap()
}

/// Waits until `counter` reaches `at_least`, failing the test past [`WAIT`].
async fn wait_for_count(counter: &AtomicU32, at_least: u32, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = counter.load(Ordering::SeqCst);
        if n >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} {what}, expected {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_queue_empty(app: &App) {
    let deadline = Instant::now() + WAIT;
    loop {
        let q = celery_lengths(app).await;
        if q[0].ready == 0 && q[0].scheduled == 0 && q[0].unacked == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "queue never drained: {q:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn broker_msg(id: &str) -> RawMessage {
    let mut headers = Map::new();
    headers.insert("task".into(), json!("t.add"));
    headers.insert("id".into(), json!(id));
    RawMessage {
        headers,
        properties: Map::new(),
        content_type: String::new(),
        content_encoding: "binary".into(),
        body: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_running_and_returns_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir);
    let mut results = Vec::new();
    for _ in 0..6 {
        results.push(counted_slow::delay(&app, 1.0).await.unwrap());
    }
    let (shutdown, join) = spawn_worker(&app, 2).await;
    // Both execution slots busy: now ask for a graceful stop.
    let deadline = Instant::now() + WAIT;
    while DRAIN_STARTS.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the worker never started two tasks"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.graceful();
    join.await.unwrap().unwrap();
    let mut done = 0;
    for r in &results {
        if r.state().await.unwrap() == TaskState::Success {
            done += 1;
        }
    }
    assert_eq!(
        done, 2,
        "the two running tasks finish; the others are not started"
    );
    let lengths = celery_lengths(&app).await;
    assert_eq!(
        (lengths[0].ready, lengths[0].unacked),
        (4, 0),
        "prefetched messages went back"
    );

    // A second worker finishes the rest: nothing was lost.
    let (shutdown, join) = spawn_worker(&app, 4).await;
    for r in &results {
        assert_eq!(r.get(WAIT).await.unwrap(), 1.0);
    }
    assert_eq!(DRAIN_STARTS.load(Ordering::SeqCst), 6, "each task ran once");
    shutdown.graceful();
    join.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_shutdown_returns_late_ack_tasks_to_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir);
    let r = slow::delay(&app, 30.0).await.unwrap();
    let (shutdown, join) = spawn_worker(&app, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.graceful();
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.now();
    join.await.unwrap().unwrap();
    assert_eq!(r.state().await.unwrap(), TaskState::Pending);
    let lengths = celery_lengths(&app).await;
    assert_eq!((lengths[0].ready, lengths[0].unacked), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_forget_and_pending() {
    let w = start(1).await;
    let r = add::delay(&w.app, 20, 22).await.unwrap();
    assert_eq!(r.get(WAIT).await.unwrap(), 42);
    r.forget().await.unwrap();
    assert_eq!(r.state().await.unwrap(), TaskState::Pending);
    let never: celeriac::AsyncResult<Value> =
        celeriac::AsyncResult::new(w.app.clone(), "no-such-id");
    match never.get(Duration::from_millis(50)).await {
        Err(ResultError::Timeout { state, .. }) => assert_eq!(state, TaskState::Pending),
        other => panic!("expected a timeout, got {other:?}"),
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_task_that_already_finished_is_not_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir);
    let finished = count_runs::delay(&app).await.unwrap();
    let unfinished = count_runs::delay(&app).await.unwrap();
    // A worker stored `finished`'s result, then lost its ack (connection cut, crash): both
    // messages come back as redeliveries.
    let mut meta = celeriac::TaskMeta::pending(finished.id());
    meta.status = TaskState::Success;
    meta.result = json!(41);
    app.backend()
        .await
        .unwrap()
        .store(&meta, None)
        .await
        .unwrap();
    let broker = app.broker().await.unwrap();
    let spec = celeriac::core::broker::ConsumerSpec {
        queues: vec!["celery".into()],
        name: "lost@test".into(),
        prefetch: 0,
    };
    let lost = broker.consumer(spec).await.unwrap();
    let held = lost.fetch(2, WAIT).await.unwrap();
    assert_eq!(held.len(), 2);
    lost.requeue(&held.iter().map(|d| d.tag.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    lost.close().await.unwrap();

    let (shutdown, join) = spawn_worker(&app, 2).await;
    assert_eq!(
        unfinished.get(WAIT).await.unwrap(),
        1,
        "the unfinished one runs"
    );
    wait_queue_empty(&app).await;
    shutdown.graceful();
    join.await.unwrap().unwrap();
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        1,
        "the finished one did not run again"
    );
    assert_eq!(
        finished.get(WAIT).await.unwrap(),
        41,
        "its stored result stands"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_batch_is_sent_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir);
    let calls: Vec<Call> = (0..5000)
        .map(|i| add::s(i, 1).task_id(format!("batch-{i}")).into_call())
        .collect();
    let sent = app.send_batch(calls).await.unwrap();
    let ids: Vec<&str> = sent.iter().map(|r| r.id()).collect();
    let expected: Vec<String> = (0..5000).map(|i| format!("batch-{i}")).collect();
    assert_eq!(ids, expected.iter().map(String::as_str).collect::<Vec<_>>());
    let lengths = celery_lengths(&app).await;
    assert_eq!(lengths[0].ready, 5000);
}

/// `result_backend = "disabled"`: tasks run, nothing is stored, and reading a result is one
/// clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_backend_runs_tasks_and_says_results_are_off() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir).reconfigured(|c| c.result_backend = Some("disabled".into()));
    assert_eq!(app.backend().await.unwrap().display_url(), "disabled");
    let (shutdown, join) = spawn_worker(&app, 2).await;
    let sent = add::delay(&app, 1, 2).await.unwrap();
    wait_queue_empty(&app).await;
    match sent.get(WAIT).await {
        Err(e @ ResultError::Backend(_)) => assert!(
            e.to_string()
                .starts_with("results are disabled: configure a result backend"),
            "{e}"
        ),
        other => panic!("expected the disabled error, got {other:?}"),
    }
    shutdown.graceful();
    join.await.unwrap().unwrap();
}

/// A backend that fails its first `failing` stores of a final state, then works (or fails
/// them all): the planted fault for the worker's store retries.
struct FailingStores {
    inner: std::sync::Arc<dyn celeriac::core::ResultBackend>,
    failing: AtomicU32,
}

#[async_trait::async_trait]
impl celeriac::core::ResultBackend for FailingStores {
    fn display_url(&self) -> String {
        "failing-stores".into()
    }
    async fn store(
        &self,
        meta: &celeriac::TaskMeta,
        expires: Option<Duration>,
    ) -> Result<(), celeriac::core::BackendError> {
        let left = self.failing.load(Ordering::SeqCst);
        if meta.status.is_ready() && left > 0 {
            self.failing.store(left - 1, Ordering::SeqCst);
            return Err(celeriac::core::BackendError::new(
                celeriac::core::ErrorKind::Unreachable,
                "planted: broken pipe",
            ));
        }
        self.inner.store(meta, expires).await
    }
    async fn get(
        &self,
        id: &str,
    ) -> Result<Option<celeriac::TaskMeta>, celeriac::core::BackendError> {
        self.inner.get(id).await
    }
    async fn wait(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<celeriac::TaskMeta>, celeriac::core::BackendError> {
        self.inner.wait(id, timeout).await
    }
    async fn forget(&self, id: &str) -> Result<(), celeriac::core::BackendError> {
        self.inner.forget(id).await
    }
    async fn save_group(
        &self,
        g: &str,
        ids: &[String],
        e: Option<Duration>,
    ) -> Result<(), celeriac::core::BackendError> {
        self.inner.save_group(g, ids, e).await
    }
    async fn restore_group(
        &self,
        g: &str,
    ) -> Result<Option<Vec<String>>, celeriac::core::BackendError> {
        self.inner.restore_group(g).await
    }
}

async fn worker_with_failing_stores(
    app: &App,
    failing: u32,
    retry_for: Duration,
) -> (celeriac::ShutdownHandle, WorkerJoin) {
    let backend = std::sync::Arc::new(FailingStores {
        inner: app.backend().await.unwrap(),
        failing: AtomicU32::new(failing),
    });
    let config = WorkerConfig {
        concurrency: 2,
        result_store_retry_for: retry_for,
        ..app.worker_config()
    };
    let worker = celeriac::Worker::new(
        app.broker().await.unwrap(),
        backend,
        app.registry().clone(),
        config,
    );
    (worker.shutdown_handle(), tokio::spawn(worker.run()))
}

/// A store that fails a few times is retried until it goes through: the result is there and
/// the late-ack message is acked once, after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_result_store_is_retried_until_stored() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir);
    let (shutdown, join) = worker_with_failing_stores(&app, 3, WAIT).await;
    let sent = slow::delay(&app, 0.0).await.unwrap();
    assert_eq!(sent.get(WAIT).await.unwrap(), 0.0);
    wait_queue_empty(&app).await;
    shutdown.graceful();
    join.await.unwrap().unwrap();
}

/// A backend down past the retry bound: the late-ack message goes back to its queue instead
/// of being acked with its result lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ack_message_goes_back_when_its_result_cannot_be_stored() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir);
    let (shutdown, join) =
        worker_with_failing_stores(&app, u32::MAX, Duration::from_millis(200)).await;
    let sent = requeued::delay(&app).await.unwrap();
    // Requeued after each failed store and run again: wait until it ran at least twice.
    wait_for_count(&REQUEUED_RUNS, 2, "runs of the requeued task").await;
    shutdown.now();
    join.await.unwrap().unwrap();
    let q = celery_lengths(&app).await;
    assert_eq!(q[0].ready, 1, "the message is back in its queue: {q:?}");
    assert_eq!(sent.state().await.unwrap(), TaskState::Pending);
}

/// `task_acks_late = true` acks every task late, even one whose own option is early ack: a
/// cold shutdown while it runs puts it back in its queue instead of failing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_acks_late_makes_every_task_ack_late() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir).reconfigured(|c| c.task_acks_late = true);
    let r = nap::delay(&app, 30.0).await.unwrap();
    let (shutdown, join) = spawn_worker(&app, 1).await;
    wait_for_count(&NAPS_STARTED, 1, "started naps").await;
    shutdown.now();
    join.await.unwrap().unwrap();
    assert_eq!(r.state().await.unwrap(), TaskState::Pending);
    let lengths = celery_lengths(&app).await;
    assert_eq!((lengths[0].ready, lengths[0].unacked), (1, 0));
}

/// `task_ignore_result = true` on the worker's app: no result is stored, even for a message
/// sent by a client (Python, say) that asked to keep it, as Celery's worker does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_ignore_result_on_the_worker_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let client = app_at(&dir);
    let worker_app = client.reconfigured(|c| c.task_ignore_result = true);
    let (shutdown, join) = spawn_worker(&worker_app, 2).await;
    let sent = add::s(2, 2)
        .ignore_result(false)
        .apply_async(&client)
        .await
        .unwrap();
    wait_queue_empty(&client).await;
    shutdown.graceful();
    join.await.unwrap().unwrap();
    assert_eq!(sent.state().await.unwrap(), TaskState::Pending);
}
