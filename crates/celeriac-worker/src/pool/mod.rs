//! The pool seam: where a task's body runs once the request passed its filters.
//!
//! Every pool gives the same five things: back-pressure ([`Pool::reserve`] waits for room),
//! running one job to its [`Ending`] (time limits included), stopping a running task from
//! outside ([`Pool::terminate`], [`Pool::terminate_all`]), resizing, and shutdown. Which one
//! runs a worker is [`PoolKind`] (`-P`): `docs/pools.md` says what each enforces.

mod in_process;
pub(crate) mod process;
mod threads;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::task::{TaskContext, TaskError};
use serde_json::{Map, Value};
use tokio::sync::OwnedSemaphorePermit;

use crate::capacity::Capacity;
use crate::registry::ErasedTask;

pub(crate) use in_process::InProcessPool;
pub(crate) use process::ProcessPool;

/// `-P/--pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolKind {
    /// Async bodies on the worker's runtime; plain `fn` bodies on its blocking threads.
    #[default]
    Async,
    /// Every body on a bounded set of `-c` threads of the worker's own.
    Threads,
    /// `-c` child processes of the worker's binary; hard limits kill the child.
    Process,
    /// One task at a time, for debugging.
    Solo,
}

impl PoolKind {
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Async => "async",
            PoolKind::Threads => "threads",
            PoolKind::Process => "process",
            PoolKind::Solo => "solo",
        }
    }

    /// Celery's names are accepted too (`prefork` is the process pool).
    pub fn parse(name: &str) -> Option<PoolKind> {
        match name {
            "async" | "gevent" | "eventlet" => Some(PoolKind::Async),
            "threads" => Some(PoolKind::Threads),
            "process" | "prefork" | "processes" => Some(PoolKind::Process),
            "solo" => Some(PoolKind::Solo),
            _ => None,
        }
    }
}

/// `-O`: whether a job may wait behind another in a busy child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Optimization {
    /// Celery's default and `-O fair`: a job goes only to an idle child.
    #[default]
    Fair,
    /// `-O fast` (Celery's `fcfs`): jobs are written to busy children too, two deep.
    Fast,
}

impl Optimization {
    pub fn parse(name: &str) -> Option<Optimization> {
        match name {
            "fair" | "default" => Some(Optimization::Fair),
            "fast" | "fcfs" => Some(Optimization::Fast),
            _ => None,
        }
    }

    /// Jobs one child holds at most.
    pub(crate) fn depth(self) -> usize {
        match self {
            Optimization::Fair => 1,
            Optimization::Fast => 2,
        }
    }
}

/// One task run, as a pool receives it.
pub(crate) struct Job {
    pub task: Arc<dyn ErasedTask>,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub ctx: TaskContext,
    pub soft_limit: Option<Duration>,
    pub hard_limit: Option<Duration>,
}

/// Why the worker stopped a running task from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `revoke(terminate=True)`.
    Terminate,
    /// Second shutdown signal: stop now.
    Cold,
}

/// How a job ended. The boundary is total: a value, an error, a panic, a timeout, a stop
/// request or a dead child each come back as one of these.
#[derive(Debug)]
pub(crate) enum Ending {
    Finished(Result<Value, TaskError>),
    HardTimeLimit(Duration),
    Stopped(StopReason),
    /// The child process running the task died (killed, crashed, out of memory).
    Lost(String),
}

/// Room for one job, held until the job ends (on the async and threads pools, until its
/// code really returns).
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// What a pool reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub kind: &'static str,
    /// Execution slots (threads, children) the pool aims for.
    pub size: usize,
    /// Jobs running or queued in the pool.
    pub busy: usize,
    /// Child process ids (process pool).
    pub pids: Vec<u32>,
    /// Children started since the worker started, replacements included.
    pub children_started: u64,
}

#[async_trait]
pub(crate) trait Pool: Send + Sync {
    /// Waits for room for one more job; `None` once the pool is shut down.
    async fn reserve(&self) -> Option<Slot>;
    /// Runs `job` to its ending under its time limits.
    async fn run(&self, slot: Slot, job: Job) -> Ending;
    /// Stops the running task `task_id` (`signal` reaches a child process; the other pools
    /// cancel at the task's next await). False when it is not running here.
    fn terminate(&self, task_id: &str, signal: i32) -> bool;
    /// Cold shutdown: stops every running task.
    fn terminate_all(&self);
    fn resize(&self, size: usize);
    fn size(&self) -> usize;
    /// Lets running jobs finish, then releases threads or children.
    async fn shutdown(&self);
    fn stats(&self) -> PoolStats;
}

/// Execution slots: a [`Capacity`] whose places are [`Slot`]s.
pub(crate) struct Slots(Capacity);

impl Slots {
    pub(crate) fn new(n: usize) -> Slots {
        Slots(Capacity::new(n))
    }

    pub(crate) async fn reserve(&self) -> Option<Slot> {
        Some(Slot {
            _permit: self.0.take().await?,
        })
    }

    pub(crate) fn resize(&self, from: usize, to: usize) {
        self.0.resize(from, to);
    }

    pub(crate) fn close(&self) {
        self.0.close();
    }
}

/// The pool a worker configuration asks for.
pub(crate) fn build(config: &crate::WorkerConfig) -> Arc<dyn Pool> {
    let size = config.initial_size();
    match config.pool {
        PoolKind::Async => Arc::new(InProcessPool::asynchronous(size)),
        PoolKind::Threads => Arc::new(InProcessPool::threads(size)),
        PoolKind::Solo => Arc::new(InProcessPool::solo()),
        PoolKind::Process => {
            let pool = ProcessPool::new(process::Settings::from_config(config));
            pool.start();
            Arc::new(pool)
        }
    }
}
