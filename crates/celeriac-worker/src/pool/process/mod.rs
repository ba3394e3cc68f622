//! The process pool (`-P process`): `-c` children of the worker's own binary, so each has
//! the same registry. The worker keeps the broker connection, acks and result storage; a
//! child only runs bodies. Jobs and results cross a Unix socket per child ([`frame`]).
//!
//! What the worker can do here and nowhere else: kill. At the hard time limit, on
//! `revoke(terminate=True, signal=...)` and on a cold shutdown the child running the task
//! is sent a signal, and a new child takes its place. A child that dies on its own (panic
//! with `panic=abort`, segfault, `kill -9`, out of memory) is replaced too; the job it was
//! running ends [`Ending::Lost`], and the jobs queued behind it (`-O fast`) go to another
//! child untouched.
//!
//! A child is recycled after `max_tasks_per_child` tasks, or after a task that left it
//! above `max_memory_per_child` KiB resident: it finishes the task first, and its
//! replacement is started at once.

pub(crate) mod child;
mod children;
pub(crate) mod frame;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::warn;

use super::{Ending, Job, Pool, PoolStats, Slot, Slots, StopReason};
use frame::{ContextFrame, JobFrame};

/// How the worker starts a child: by default its own executable, which must hand control
/// to [`child::run_child`] when [`child::CHILD_ENV`] is set (`celeriac_cli::run` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Extra environment for the children (the CLI passes the log settings this way).
    pub env: Vec<(String, String)>,
}

impl ChildCommand {
    /// This process's own executable, with no arguments.
    pub fn current_exe() -> ChildCommand {
        ChildCommand {
            program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

pub(crate) struct Settings {
    pub size: usize,
    /// Jobs one child holds at most (1 with `-O fair`).
    pub depth: usize,
    pub max_tasks_per_child: Option<u64>,
    pub max_memory_per_child_kib: Option<u64>,
    pub command: ChildCommand,
}

impl Settings {
    pub(crate) fn from_config(config: &crate::WorkerConfig) -> Settings {
        Settings {
            size: config.concurrency.max(1),
            depth: config.optimization.depth(),
            max_tasks_per_child: config.max_tasks_per_child.filter(|n| *n > 0),
            max_memory_per_child_kib: config.max_memory_per_child_kib.filter(|n| *n > 0),
            command: config
                .child_command
                .clone()
                .unwrap_or_else(ChildCommand::current_exe),
        }
    }
}

/// Why the worker signalled a child; decides the ending of the job it was running.
#[derive(Debug, Clone, Copy)]
enum KillReason {
    HardLimit(Duration),
    Stop(StopReason),
}

/// A job not yet written to a child.
struct Pending {
    job: u64,
    task_id: String,
    /// The encoded frame, kept to be written again to another child if the first dies
    /// before starting it.
    bytes: Arc<Vec<u8>>,
    reply: oneshot::Sender<Ending>,
    started: Option<oneshot::Sender<()>>,
}

/// A job written to a child: the first of a child's queue is running.
struct InFlight {
    pending: Pending,
    kill: Option<KillReason>,
}

struct ChildEntry {
    index: usize,
    pid: u32,
    /// Frames to the child; `None` once the child was told to exit.
    writer: Option<mpsc::UnboundedSender<Arc<Vec<u8>>>>,
    queue: VecDeque<InFlight>,
    tasks_done: u64,
    /// Takes no new jobs; exits once its queue is empty.
    retiring: bool,
}

#[derive(Default)]
struct State {
    target: usize,
    children: Vec<ChildEntry>,
    pending: VecDeque<Pending>,
    next_job: u64,
    children_started: u64,
    closing: bool,
}

pub(crate) struct ProcessPool {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    slots: Slots,
    state: Mutex<State>,
    /// Notified whenever a child exits.
    exited: Notify,
}

impl ProcessPool {
    pub(crate) fn new(settings: Settings) -> ProcessPool {
        let size = settings.size;
        let inner = Arc::new(Inner {
            slots: Slots::new(size * settings.depth),
            settings,
            state: Mutex::new(State {
                target: size,
                ..State::default()
            }),
            exited: Notify::new(),
        });
        ProcessPool { inner }
    }

    /// Starts the children now rather than with the first job.
    pub(crate) fn start(&self) {
        let mut state = self.inner.lock();
        self.inner.ensure_children(&mut state);
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes waiting jobs to children with room, the least busy first.
    fn dispatch(&self, state: &mut State) {
        while !state.pending.is_empty() {
            let depth = self.settings.depth;
            let Some(child) = state
                .children
                .iter_mut()
                .filter(|c| !c.retiring && c.writer.is_some() && c.queue.len() < depth)
                .min_by_key(|c| c.queue.len())
            else {
                return;
            };
            let Some(mut pending) = state.pending.pop_front() else {
                return;
            };
            let sent = child
                .writer
                .as_ref()
                .is_some_and(|w| w.send(pending.bytes.clone()).is_ok());
            if !sent {
                // The child's writer is gone (it is dying): keep the job for another.
                child.writer = None;
                state.pending.push_front(pending);
                continue;
            }
            if child.queue.is_empty() {
                if let Some(started) = pending.started.take() {
                    let _ = started.send(());
                }
            }
            child.queue.push_back(InFlight {
                pending,
                kill: None,
            });
        }
    }

    /// Signals the child running job `job` (the first of its queue).
    fn kill_running(&self, state: &mut State, job: u64, reason: KillReason, signal: i32) -> bool {
        let child = state
            .children
            .iter_mut()
            .find(|c| c.queue.front().is_some_and(|f| f.pending.job == job));
        let Some(child) = child else { return false };
        if let Some(front) = child.queue.front_mut() {
            front.kill.get_or_insert(reason);
        }
        children::signal(child.pid, signal);
        true
    }
}

#[async_trait]
impl Pool for ProcessPool {
    async fn reserve(&self) -> Option<Slot> {
        self.inner.slots.reserve().await
    }

    async fn run(&self, slot: Slot, job: Job) -> Ending {
        let (reply, mut ended) = oneshot::channel();
        let (started, has_started) = oneshot::channel();
        let hard_limit = job.hard_limit;
        let number = {
            let mut state = self.inner.lock();
            if state.closing {
                return Ending::Stopped(StopReason::Cold);
            }
            state.next_job += 1;
            let number = state.next_job;
            let frame = JobFrame {
                job: number,
                task: job.task.name().to_string(),
                args: job.args,
                kwargs: job.kwargs,
                ctx: ContextFrame::from_context(&job.ctx),
                soft_limit: job.soft_limit.map(|d| d.as_secs_f64()),
                measure_memory: self.inner.settings.max_memory_per_child_kib.is_some(),
            };
            state.pending.push_back(Pending {
                job: number,
                task_id: job.ctx.id.clone(),
                bytes: Arc::new(frame::encode(&frame)),
                reply,
                started: Some(started),
            });
            self.inner.ensure_children(&mut state);
            self.inner.dispatch(&mut state);
            number
        };
        let ending = tokio::select! {
            ending = &mut ended => ending.ok(),
            _ = has_started => {
                tokio::select! {
                    ending = &mut ended => ending.ok(),
                    limit = super::in_process::hard_timer(hard_limit) => {
                        let killed = {
                            let mut state = self.inner.lock();
                            self.inner.kill_running(&mut state, number, KillReason::HardLimit(limit), libc::SIGKILL)
                        };
                        if !killed {
                            warn!("job {number} passed its hard limit but no child runs it");
                        }
                        ended.await.ok()
                    }
                }
            }
        };
        drop(slot);
        ending.unwrap_or_else(|| Ending::Lost("the pool dropped the job".into()))
    }

    fn terminate(&self, task_id: &str, signal: i32) -> bool {
        let mut state = self.inner.lock();
        let jobs: Vec<u64> = state
            .children
            .iter()
            .filter_map(|c| c.queue.front())
            .filter(|f| f.pending.task_id == task_id)
            .map(|f| f.pending.job)
            .collect();
        let reason = KillReason::Stop(StopReason::Terminate);
        jobs.into_iter()
            .filter(|job| self.inner.kill_running(&mut state, *job, reason, signal))
            .count()
            > 0
    }

    fn terminate_all(&self) {
        let mut state = self.inner.lock();
        // A cold shutdown: children stopped now are not replaced.
        state.closing = true;
        for pending in std::mem::take(&mut state.pending) {
            let _ = pending.reply.send(Ending::Stopped(StopReason::Cold));
        }
        let running: Vec<u64> = state
            .children
            .iter()
            .filter_map(|c| c.queue.front())
            .map(|f| f.pending.job)
            .collect();
        for job in running {
            let reason = KillReason::Stop(StopReason::Cold);
            self.inner
                .kill_running(&mut state, job, reason, libc::SIGTERM);
        }
    }

    fn resize(&self, size: usize) {
        let size = size.max(1);
        let mut state = self.inner.lock();
        let depth = self.inner.settings.depth;
        self.inner.slots.resize(state.target * depth, size * depth);
        state.target = size;
        self.inner.retire_extra(&mut state);
        self.inner.ensure_children(&mut state);
        self.inner.dispatch(&mut state);
    }

    fn size(&self) -> usize {
        self.inner.lock().target
    }

    async fn shutdown(&self) {
        {
            let mut state = self.inner.lock();
            state.closing = true;
            for child in &mut state.children {
                child.retiring = true;
                child.writer = None;
            }
        }
        self.inner.slots.close();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let exited = self.inner.exited.notified();
            let left: Vec<u32> = self.inner.lock().children.iter().map(|c| c.pid).collect();
            if left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!("pool children {left:?} did not exit: killing them");
                for pid in left {
                    children::signal(pid, libc::SIGKILL);
                }
                return;
            }
            let _ = tokio::time::timeout_at(deadline, exited).await;
        }
    }

    fn stats(&self) -> PoolStats {
        let state = self.inner.lock();
        PoolStats {
            kind: "process",
            size: state.target,
            busy: state.children.iter().map(|c| c.queue.len()).sum::<usize>() + state.pending.len(),
            pids: state.children.iter().map(|c| c.pid).collect(),
            children_started: state.children_started,
        }
    }
}
