//! The in-process pools (async, threads, solo), hooks and autoscale, through the public API
//! on a real embedded store (one temp SQLite file per test). The process pool runs real
//! child processes: its tests are in `examples/tests/pools.rs`, with the demo binary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac::{
    task, App, AutoscaleConfig, PoolKind, ResultError, TaskError, TaskState, WorkerConfig,
};
use celeriac_worker::{LoadSensors, PoolWatch};

const WAIT: Duration = Duration::from_secs(20);

/// When each labelled event happened.
static STAMPS: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());

fn stamp(label: &str) {
    STAMPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((label.to_string(), Instant::now()));
}

fn stamped(label: &str) -> Option<Instant> {
    let stamps = STAMPS.lock().unwrap_or_else(|p| p.into_inner());
    stamps.iter().find(|(l, _)| l == label).map(|(_, at)| *at)
}

/// Keeps the CPU busy for `seconds` whatever its limits say, then stamps `label`.
#[task(name = "p.runaway")]
fn runaway(label: String, seconds: f64) -> f64 {
    stamp(&format!("{label}:started"));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    stamp(&format!("{label}:returned"));
    seconds
}

/// Stamps `label` when it starts.
#[task(name = "p.mark")]
fn mark(label: String) -> String {
    stamp(&label);
    label
}

#[task(name = "p.nap")]
async fn nap(seconds: f64) -> f64 {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    seconds
}

#[task(name = "p.fails")]
async fn fails() -> Result<(), TaskError> {
    Err(TaskError::failure("ValueError", "planted"))
}

fn app_at(
    dir: &tempfile::TempDir,
    build: impl FnOnce(celeriac::AppBuilder) -> celeriac::AppBuilder,
) -> App {
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let builder = App::builder("pools")
        .broker_url(url)
        .task::<runaway>()
        .task::<mark>()
        .task::<nap>()
        .task::<fails>();
    build(builder).build()
}

struct Running {
    shutdown: celeriac::ShutdownHandle,
    join: tokio::task::JoinHandle<Result<(), celeriac::WorkerError>>,
    pool: PoolWatch,
}

async fn start(app: &App, config: WorkerConfig) -> Running {
    let worker = app.worker(config).await.unwrap();
    let shutdown = worker.shutdown_handle();
    let pool = worker.pool_watch();
    Running {
        shutdown,
        pool,
        join: tokio::spawn(worker.run()),
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.graceful();
        self.join.await.unwrap().unwrap();
    }

    fn size(&self) -> usize {
        self.pool.stats().map_or(0, |s| s.size)
    }
}

/// Polls `condition` until it holds or `WAIT` passes (then panics with `what`).
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// On a pool that cannot kill code, a plain `fn` past its hard limit is reported FAILURE
/// at the limit, and its slot stays taken until the code returns: the next task (with
/// `-c 1`) starts only after that.
async fn runaway_keeps_its_slot(pool: PoolKind) {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir, |b| b);
    let config = WorkerConfig {
        pool,
        concurrency: 1,
        time_limit: Some(Duration::from_millis(300)),
        ..app.worker_config()
    };
    let w = start(&app, config).await;
    let name = pool.name();
    let stuck = runaway::delay(&app, name.to_string(), 1.5).await.unwrap();
    wait_until("the runaway to start", || {
        stamped(&format!("{name}:started")).is_some()
    })
    .await;
    let next = mark::delay(&app, format!("{name}:next")).await.unwrap();
    match stuck.get(WAIT).await {
        Err(ResultError::Task(e)) => assert_eq!(e.exc_type, "TimeLimitExceeded"),
        other => panic!("expected TimeLimitExceeded, got {other:?}"),
    }
    assert!(
        stamped(&format!("{name}:returned")).is_none(),
        "FAILURE is reported at the limit, before the code returns"
    );
    assert_eq!(next.get(WAIT).await.unwrap(), format!("{name}:next"));
    let returned = stamped(&format!("{name}:returned")).expect("the runaway returned");
    let next_started = stamped(&format!("{name}:next")).unwrap();
    assert!(
        next_started >= returned,
        "with -c 1 the next task waited for the runaway's slot"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_pool_keeps_a_runaway_slot_busy_past_its_hard_limit() {
    runaway_keeps_its_slot(PoolKind::Threads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_pool_keeps_a_runaway_slot_busy_past_its_hard_limit() {
    runaway_keeps_its_slot(PoolKind::Async).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solo_pool_runs_one_task_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir, |b| b);
    let config = WorkerConfig {
        pool: PoolKind::Solo,
        concurrency: 8,
        ..app.worker_config()
    };
    let w = start(&app, config).await;
    let first = runaway::delay(&app, "solo-first".into(), 0.3)
        .await
        .unwrap();
    wait_until("the first to start", || {
        stamped("solo-first:started").is_some()
    })
    .await;
    let second = mark::delay(&app, "solo-second".into()).await.unwrap();
    first.get(WAIT).await.unwrap();
    second.get(WAIT).await.unwrap();
    assert!(stamped("solo-second").unwrap() >= stamped("solo-first:returned").unwrap());
    assert_eq!(w.size(), 1, "solo ignores -c");
    w.stop().await;
}

/// How many messages of the default queue wait ready (not fetched by any worker).
async fn ready(app: &App) -> u64 {
    let broker = app.broker().await.unwrap();
    let lengths = broker
        .queue_stats()
        .unwrap()
        .queue_lengths(&["celery".to_string()])
        .await
        .unwrap();
    lengths.iter().map(|l| l.ready).sum()
}

/// With `-c 1`, while one task runs, whether the next message still waits in the queue:
/// the default prefetch reserves it, `--disable-prefetch` leaves it there.
async fn next_waits_in_the_queue(disable_prefetch: bool) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir, |b| b);
    let config = WorkerConfig {
        concurrency: 1,
        disable_prefetch,
        ..app.worker_config()
    };
    let w = start(&app, config).await;
    let label = format!("prefetch-{disable_prefetch}");
    let busy = runaway::delay(&app, label.clone(), 1.0).await.unwrap();
    wait_until("the first task to start", || {
        stamped(&format!("{label}:started")).is_some()
    })
    .await;
    let next = nap::delay(&app, 0.0).await.unwrap();
    // Given time to be fetched (if it is to be) while the first task still runs.
    let deadline = Instant::now() + Duration::from_millis(600);
    let mut waits = ready(&app).await > 0;
    while waits && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waits = ready(&app).await > 0;
    }
    assert!(
        stamped(&format!("{label}:returned")).is_none(),
        "measured while busy"
    );
    busy.get(WAIT).await.unwrap();
    next.get(WAIT).await.unwrap();
    w.stop().await;
    waits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_prefetch_fetches_only_for_a_free_slot() {
    assert!(
        !next_waits_in_the_queue(false).await,
        "prefetch reserves the next message"
    );
    assert!(
        next_waits_in_the_queue(true).await,
        "--disable-prefetch leaves it queued"
    );
}

/// Hook calls, in order, as `hook:task-name`.
static HOOKS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn called(hook: &str) -> bool {
    HOOKS.lock().unwrap().iter().any(|h| h == hook)
}

fn seen(entry: String) -> celeriac::HookResult {
    HOOKS.lock().unwrap().push(entry);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_see_each_step_and_a_failing_hook_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir, |b| {
        b.hooks(|h| {
            h.worker_init(|w| seen(format!("worker_init:{}", w.pool)));
            h.worker_ready(|_| seen("worker_ready".into()));
            h.worker_shutting_down(|_| seen("worker_shutting_down".into()));
            h.worker_shutdown(|_| seen("worker_shutdown".into()));
            h.before_task_publish(|m| seen(format!("before_task_publish:{}", m.name)));
            h.after_task_publish(|m| seen(format!("after_task_publish:{}", m.name)));
            h.task_received(|t| seen(format!("task_received:{}", t.name)));
            h.task_prerun(|_| panic!("planted panic in a hook"));
            h.task_prerun(|t| seen(format!("task_prerun:{}", t.name)));
            h.task_success(|_, _| Err("planted hook error".into()));
            h.task_success(|t, v| seen(format!("task_success:{}={v}", t.name)));
            h.task_failure(|t, e, _| seen(format!("task_failure:{}:{}", t.name, e.exc_type)));
            h.task_postrun(|t| seen(format!("task_postrun:{}", t.name)));
        })
    });
    let w = start(
        &app,
        WorkerConfig {
            concurrency: 1,
            ..app.worker_config()
        },
    )
    .await;
    wait_until("worker_ready", || called("worker_ready")).await;
    let ok = mark::delay(&app, "hooked".into()).await.unwrap();
    assert_eq!(ok.get(WAIT).await.unwrap(), "hooked");
    // `task_postrun` runs after the result is stored, so `get` may return before it.
    wait_until("task_postrun of p.mark", || called("task_postrun:p.mark")).await;
    let failed = fails::delay(&app).await.unwrap();
    assert!(matches!(failed.get(WAIT).await, Err(ResultError::Task(_))));
    // The result is stored before `task_postrun` runs: wait for it, then stop.
    wait_until("task_postrun of p.fails", || called("task_postrun:p.fails")).await;
    w.stop().await;
    let calls = HOOKS.lock().unwrap().clone();
    // `after_task_publish` runs in the client once the publish returned, while the worker
    // may already be running the task: it comes after its `before_task_publish`, and the
    // rest keeps one order.
    let position = |hook: &str| calls.iter().position(|h| h == hook);
    for task in ["p.mark", "p.fails"] {
        let before = position(&format!("before_task_publish:{task}"));
        let after = position(&format!("after_task_publish:{task}"));
        assert!(before.is_some() && after > before, "{task}: {calls:?}");
    }
    let ordered: Vec<&str> = calls
        .iter()
        .map(String::as_str)
        .filter(|h| !h.starts_with("after_task_publish:"))
        .collect();
    let expected = [
        "worker_init:async",
        "worker_ready",
        "before_task_publish:p.mark",
        "task_received:p.mark",
        "task_prerun:p.mark",
        "task_success:p.mark=\"hooked\"",
        "task_postrun:p.mark",
        "before_task_publish:p.fails",
        "task_received:p.fails",
        "task_prerun:p.fails",
        "task_failure:p.fails:ValueError",
        "task_postrun:p.fails",
        "worker_shutting_down",
        "worker_shutdown",
    ];
    assert_eq!(ordered, expected);
}

/// Free memory as a test says it is.
#[derive(Debug)]
struct PlantedSensors {
    free_memory_mb: AtomicU64,
}

impl LoadSensors for PlantedSensors {
    fn free_memory_mb(&self) -> Option<u64> {
        Some(self.free_memory_mb.load(Ordering::SeqCst))
    }
    fn load_per_cpu(&self) -> Option<f64> {
        Some(0.1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_grows_under_backlog_shrinks_when_idle_and_the_guard_holds() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_at(&dir, |b| b);
    let sensors = Arc::new(PlantedSensors {
        free_memory_mb: AtomicU64::new(4096),
    });
    let mut autoscale = AutoscaleConfig::new(4, 1);
    autoscale.keepalive = Duration::from_millis(300);
    autoscale.interval = Duration::from_millis(50);
    autoscale.min_free_memory_mb = Some(512);
    autoscale.sensors = sensors.clone();
    let config = WorkerConfig {
        pool: PoolKind::Threads,
        autoscale: Some(autoscale),
        ..app.worker_config()
    };
    let w = start(&app, config).await;
    wait_until("the pool to start at MIN", || w.size() == 1).await;

    let mut naps = Vec::new();
    for _ in 0..16 {
        naps.push(nap::delay(&app, 0.2).await.unwrap());
    }
    wait_until("the pool to grow to MAX under backlog", || w.size() == 4).await;
    for r in &naps {
        r.get(WAIT).await.unwrap();
    }
    wait_until("the pool to shrink to MIN once idle", || w.size() == 1).await;

    // Under the memory guard the same backlog drains at size 1.
    sensors.free_memory_mb.store(100, Ordering::SeqCst);
    let mut naps = Vec::new();
    for _ in 0..6 {
        naps.push(nap::delay(&app, 0.1).await.unwrap());
    }
    for r in &naps {
        assert_eq!(w.size(), 1, "the guard refuses growth while memory is low");
        r.get(WAIT).await.unwrap();
    }
    assert_eq!(w.size(), 1);
    assert_eq!(naps[0].state().await.unwrap(), TaskState::Success);
    w.stop().await;
}
