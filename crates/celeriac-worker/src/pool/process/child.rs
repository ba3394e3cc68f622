//! The child side of the process pool: the worker's own binary, started with
//! [`CHILD_ENV`] set, reads jobs from the socket at [`CHANNEL_FD`], runs them one at a time
//! (async bodies on a small runtime, plain `fn` bodies on one of its threads) and answers
//! each with its result and the child's resident memory. It exits when the worker closes
//! the socket.

use std::io::{BufReader, BufWriter};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use celeriac_core::task::{panic_failure, TaskBody, TaskError};
use serde_json::Value;

use super::frame::{self, ContextFrame, DoneFrame, JobFrame, ResultFrame};
use crate::pool::in_process::soft_timer;
use crate::registry::Registry;

/// Set (to the child's index) in a pool child's environment.
pub const CHILD_ENV: &str = "CELERIAC_POOL_CHILD";
/// The descriptor of the child's end of the socket.
pub(crate) const CHANNEL_FD: i32 = 3;

/// The pool index when this process is a process-pool child.
pub fn pool_child_index() -> Option<usize> {
    std::env::var(CHILD_ENV).ok()?.parse().ok()
}

/// A process-pool child's main: `process_init` runs once first (Celery's
/// `worker_process_init`, where a user loads a model), then jobs until the worker closes
/// the socket.
pub fn run_child(registry: &Registry, process_init: impl FnOnce(usize)) -> ExitCode {
    let Some(index) = pool_child_index() else {
        eprintln!("error: not started as a process-pool child ({CHILD_ENV} is unset)");
        return ExitCode::FAILURE;
    };
    // SAFETY: the worker puts the socket at this descriptor before exec (see
    // `spawn_child`); nothing else in this process owns it.
    let stream = unsafe { UnixStream::from_raw_fd(CHANNEL_FD) };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: pool child {index} cannot start its runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    process_init(index);
    match serve(&runtime, registry, stream) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: pool child {index} lost its channel to the worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    runtime: &tokio::runtime::Runtime,
    registry: &Registry,
    stream: UnixStream,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    while let Some(job) = frame::read_blocking::<JobFrame>(&mut reader)? {
        let number = job.job;
        let measure_memory = job.measure_memory;
        let result = runtime.block_on(run_job(registry, job));
        let done = DoneFrame {
            job: number,
            result: ResultFrame::from_result(result),
            rss_kib: if measure_memory { resident_kib() } else { 0 },
        };
        frame::write_blocking(&mut writer, &frame::encode(&done))?;
    }
    Ok(())
}

async fn run_job(registry: &Registry, job: JobFrame) -> Result<Value, TaskError> {
    let Some(task) = registry.get(&job.task) else {
        return Err(TaskError::failure("NotRegistered", job.task));
    };
    let ctx = ContextFrame::into_context(job.ctx);
    let soft_handle = ctx.soft_limit_handle();
    let body = task
        .call(job.args, job.kwargs, ctx)
        .map_err(|e| TaskError::failure("TypeError", e.to_string()))?;
    let handle = match body {
        TaskBody::Async(future) => tokio::spawn(future),
        TaskBody::Blocking(call) => tokio::task::spawn_blocking(call),
    };
    let soft_limit = job
        .soft_limit
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64);
    let joined = tokio::select! {
        joined = handle => joined,
        never = soft_timer::<std::convert::Infallible>(soft_limit, &soft_handle) => match never {},
    };
    match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(panic_failure(e.into_panic())),
        Err(_) => Err(TaskError::failure("RuntimeError", "task was cancelled")),
    }
}

/// This process's resident set size in KiB (0 where it cannot be read).
pub(crate) fn resident_kib() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64 / 1024
}
