//! The demo app: the tasks the quickstart, the tests and the Python interop suites call.
//! Names and signatures are a contract with those suites: keep them.

use std::time::Duration;

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

/// The demo app with every demo task registered.
pub fn app() -> App {
    App::builder("demo")
        .task::<add>()
        .task::<mul>()
        .task::<noop>()
        .task::<echo>()
        .task::<sleep>()
        .task::<fail>()
        .task::<flaky>()
        .build()
}
