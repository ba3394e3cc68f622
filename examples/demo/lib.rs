//! The demo app: the tasks the quickstart, the tests and the Python interop suites call.
//! Names and signatures are a contract with those suites: keep them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use celeriac::core::state::ExceptionInfo;
use celeriac::serde_json::{json, Value};
use celeriac::{task, App, TaskContext, TaskError, VarArgs, VarKwargs};

#[task(name = "tasks.add")]
pub async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "tasks.mul")]
pub async fn mul(x: i64, y: i64) -> i64 {
    x * y
}

/// Returns its one argument (an errback that takes the failed task's id).
#[task(name = "tasks.identity")]
pub async fn identity(value: Value) -> Value {
    value
}

/// The sum of a list: the body of the demo's chords.
#[task(name = "tasks.tsum")]
pub async fn tsum(values: Vec<f64>) -> f64 {
    values.iter().sum()
}

#[task(name = "tasks.noop")]
pub async fn noop() {}

/// Returns what it was called with: `{"args": [...], "kwargs": {...}}`.
#[task(name = "tasks.echo")]
pub async fn echo(args: VarArgs, kwargs: VarKwargs) -> Value {
    json!({"args": args.0, "kwargs": kwargs.0})
}

/// Sleeps, then returns `seconds`. Acks late: a worker killed mid-sleep loses nothing.
#[task(name = "tasks.sleep", acks_late = true)]
pub async fn sleep(seconds: f64) -> Result<f64, TaskError> {
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(TaskError::failure(
            "ValueError",
            format!("seconds must be >= 0, got {seconds}"),
        ));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    Ok(seconds)
}

/// Fails with `ValueError(message)`.
#[task(name = "tasks.fail")]
pub async fn fail(message: String) -> Result<(), TaskError> {
    Err(TaskError::failure("ValueError", message))
}

/// Fails its first `n` tries (retrying at once), then returns how many retries it took.
#[task(name = "tasks.flaky", max_retries = 10)]
pub fn flaky(ctx: TaskContext, n: u32) -> Result<u32, TaskError> {
    if ctx.retries < n {
        return Err(ctx.retry(
            Duration::ZERO,
            Some(ExceptionInfo::new("KeyError", "try again")),
        ));
    }
    Ok(ctx.retries)
}

/// Keeps one CPU busy for `seconds` (a plain `fn` that never looks at its soft limit), then
/// returns `seconds`: what a runaway computation looks like to the worker.
#[task(name = "tasks.spin")]
pub fn spin(seconds: f64) -> Result<f64, TaskError> {
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(TaskError::failure(
            "ValueError",
            format!("seconds must be >= 0, got {seconds}"),
        ));
    }
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut state: u64 = 1;
    while Instant::now() < until {
        for _ in 0..10_000 {
            state = std::hint::black_box(
                state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1),
            );
        }
    }
    Ok(seconds)
}

/// Memory `leak` keeps for the life of the process.
static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Allocates `mb` MB and keeps it for the life of the process, touching every page so it is
/// resident; returns the process's resident MB afterwards.
#[task(name = "tasks.leak")]
pub fn leak(mb: u64) -> Result<u64, TaskError> {
    let bytes = usize::try_from(mb.saturating_mul(1 << 20))
        .map_err(|_| TaskError::failure("ValueError", format!("{mb} MB is too much")))?;
    let mut block = vec![0u8; bytes];
    for page in block.iter_mut().step_by(4096) {
        *page = 1;
    }
    LEAKED.lock().unwrap_or_else(|p| p.into_inner()).push(block);
    Ok(resident_mb())
}

/// Kills the process running it (`abort`) every time: a poison pill. Acks late, so each
/// delivery goes back to its queue until the worker gives up on it.
#[task(name = "tasks.crash", acks_late = true)]
pub fn crash() {
    std::process::abort()
}

/// The pool index `worker_process_init` saw in this process (`None` outside a process-pool
/// child): proves per-child start-up work ran, once, where the tasks run.
#[task(name = "tasks.child_index")]
pub fn child_index() -> Option<usize> {
    CHILD_INDEX.get().copied()
}

/// Set by the demo app's `worker_process_init` hook.
static CHILD_INDEX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The id of the process that ran it (a pool child's, with `-P process`).
#[task(name = "tasks.pid")]
pub fn pid() -> u32 {
    std::process::id()
}

fn resident_mb() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096 / (1 << 20)
}

/// The demo app with every demo task registered, and one periodic task in code for
/// `demo beat` / `demo worker -B` (on its own queue, so other workers never see it).
pub fn app() -> App {
    let heartbeat = celeriac::beat::Schedule::every("1s").expect("a valid interval");
    App::builder("demo")
        .beat(
            celeriac::beat::Entry::new("demo-heartbeat", "tasks.add", heartbeat)
                .args(vec![20.into(), 22.into()])
                .queue("demo-beat"),
        )
        .task::<add>()
        .task::<mul>()
        .task::<noop>()
        .task::<tsum>()
        .task::<identity>()
        .task::<echo>()
        .task::<sleep>()
        .task::<fail>()
        .task::<flaky>()
        .task::<spin>()
        .task::<leak>()
        .task::<pid>()
        .task::<crash>()
        .task::<child_index>()
        .hooks(|h| {
            h.worker_process_init(|process| {
                CHILD_INDEX
                    .set(process.index)
                    .map_err(|_| "worker_process_init ran twice in one child".into())
            });
        })
        .build()
}
