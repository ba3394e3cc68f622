//! What a worker is told: [`WorkerConfig`], and the error it can fail to start with.

use std::time::Duration;

use celeriac_core::BrokerError;

use crate::autoscale::AutoscaleConfig;
use crate::pool::process::ChildCommand;
use crate::pool::{Optimization, PoolKind};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Node name, `celery@<host>` by default.
    pub hostname: String,
    pub queues: Vec<String>,
    /// Tasks run at once (pool threads or children); with autoscale, the starting size.
    pub concurrency: usize,
    /// `-P`: where task bodies run.
    pub pool: PoolKind,
    /// `-O`: whether a job may wait behind another in a busy child.
    pub optimization: Optimization,
    /// Messages reserved ahead = pool size × multiplier.
    pub prefetch_multiplier: usize,
    /// `--disable-prefetch`: fetch a message only when a slot is free to run it.
    pub disable_prefetch: bool,
    /// `--time-limit` / `task_time_limit`: the hard limit of tasks that set none.
    pub time_limit: Option<Duration>,
    /// `--soft-time-limit` / `task_soft_time_limit`.
    pub soft_time_limit: Option<Duration>,
    /// `--max-tasks-per-child`: a process-pool child is replaced after this many tasks.
    pub max_tasks_per_child: Option<u64>,
    /// `--max-memory-per-child`: a child left above this many KiB resident after a task is
    /// replaced (Celery's unit).
    pub max_memory_per_child_kib: Option<u64>,
    /// `--autoscale MAX,MIN` and its guard.
    pub autoscale: Option<AutoscaleConfig>,
    /// How process-pool children are started (default: this executable).
    pub child_command: Option<ChildCommand>,
    /// Deliveries of one task that may each lose their child process before the message
    /// goes to the dead-letter queue (a poison pill) instead of back to its queue.
    pub max_child_losses: u32,
    pub result_expires: Option<Duration>,
    pub result_extended: bool,
    /// How long a graceful shutdown waits for running tasks.
    pub shutdown_timeout: Duration,
    /// How often revocations recorded by other processes are picked up.
    pub revoke_poll_interval: Duration,
    /// How long a failing result store is retried (Celery's `result_backend_always_retry`,
    /// here on by default). Past it a late-ack message goes back to its queue.
    pub result_store_retry_for: Duration,
    /// How many recently finished task ids the worker remembers, to recognize redelivered
    /// messages of finished tasks without asking the backend.
    pub finished_ids_kept: usize,
    /// `task_acks_late`: every task acks late, whatever its own option says.
    pub task_acks_late: bool,
    /// `-E` / `worker_send_task_events`: send task events (monitors, Flower).
    pub send_task_events: bool,
    /// Send `worker-heartbeat` events (off with `--without-heartbeat`).
    pub heartbeats: bool,
    /// `worker_enable_remote_control`: answer `inspect` / `control` requests.
    pub remote_control: bool,
    /// `task_ignore_result`: no task stores its result here (as Celery's worker, whatever
    /// the message says).
    pub task_ignore_result: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            hostname: format!("celery@{}", celeriac_core::message::hostname()),
            queues: vec!["celery".into()],
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            pool: PoolKind::Async,
            optimization: Optimization::Fair,
            prefetch_multiplier: 4,
            disable_prefetch: false,
            time_limit: None,
            soft_time_limit: None,
            max_tasks_per_child: None,
            max_memory_per_child_kib: None,
            autoscale: None,
            child_command: None,
            max_child_losses: 3,
            result_expires: Some(Duration::from_secs(86_400)),
            result_extended: false,
            shutdown_timeout: Duration::from_secs(30),
            revoke_poll_interval: Duration::from_secs(1),
            result_store_retry_for: Duration::from_secs(60),
            finished_ids_kept: 65_536,
            task_acks_late: false,
            send_task_events: false,
            heartbeats: true,
            remote_control: true,
            task_ignore_result: false,
        }
    }
}

impl WorkerConfig {
    /// The pool size the worker starts with.
    pub(crate) fn initial_size(&self) -> usize {
        match (&self.autoscale, self.pool) {
            (_, crate::PoolKind::Solo) => 1,
            (Some(a), _) => a.min.max(1),
            (None, _) => self.concurrency.max(1),
        }
    }

    /// The largest the pool may grow to.
    pub(crate) fn max_size(&self) -> usize {
        match (&self.autoscale, self.pool) {
            (_, crate::PoolKind::Solo) => 1,
            (Some(a), _) => a.max.max(1),
            (None, _) => self.concurrency.max(1),
        }
    }

    /// Messages reserved per execution slot.
    pub(crate) fn reserved_per_slot(&self) -> usize {
        if self.disable_prefetch {
            1
        } else {
            self.prefetch_multiplier.max(1)
        }
    }
}

#[derive(Debug)]
#[non_exhaustive]
pub enum WorkerError {
    Broker(BrokerError),
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerError::Broker(e) => write!(f, "worker could not start: {e}"),
        }
    }
}

impl std::error::Error for WorkerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WorkerError::Broker(e) => Some(e),
        }
    }
}
