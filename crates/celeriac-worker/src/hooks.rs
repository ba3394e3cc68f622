//! Hooks: Celery's signals as typed callbacks, registered on the app
//! (`App::builder(..).hooks(|h| { h.task_success(|task, value| ...); })`).
//!
//! A hook that returns an error or panics is logged and skipped: it never stops the worker
//! or the task. Task hooks run in the worker process (with `-P process`, in the parent,
//! where the outcome is decided); `worker_process_init` runs in each pool child before its
//! first task, which is where per-process setup (loading a model) goes.

use std::panic::AssertUnwindSafe;

use celeriac_core::state::ExceptionInfo;
use serde_json::{Map, Value};
use tracing::{error, warn};

/// What a hook returns; an error is logged with the hook's name.
pub type HookResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The task a task hook is about.
#[derive(Debug, Clone, Copy)]
pub struct TaskInfo<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub args: &'a [Value],
    pub kwargs: &'a Map<String, Value>,
    pub retries: u32,
    pub queue: &'a str,
}

/// The worker a worker hook is about.
#[derive(Debug, Clone, Copy)]
pub struct WorkerInfo<'a> {
    pub hostname: &'a str,
    pub queues: &'a [String],
    pub pool: &'static str,
    pub concurrency: usize,
}

/// A pool child starting (`worker_process_init`).
#[derive(Debug, Clone, Copy)]
pub struct ProcessInfo {
    /// The child's index in the pool (Celery's `%i`), reused by its replacement.
    pub index: usize,
    pub pid: u32,
}

/// A task message being sent (`before_task_publish`, `after_task_publish`).
#[derive(Debug, Clone, Copy)]
pub struct PublishInfo<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub queue: &'a str,
}

macro_rules! hooks {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) => $emit:ident;)*) => {
        /// The hooks an app registered, by Celery signal name.
        #[derive(Default)]
        pub struct Hooks {
            $($name: Vec<Box<dyn Fn($($ty),*) -> HookResult + Send + Sync>>,)*
        }

        impl Hooks {
            $(
                $(#[$doc])*
                pub fn $name(
                    &mut self,
                    hook: impl Fn($($ty),*) -> HookResult + Send + Sync + 'static,
                ) -> &mut Self {
                    self.$name.push(Box::new(hook));
                    self
                }

                /// Calls these hooks in the order they were registered (the worker and
                /// the client do; public for programs that embed either).
                pub fn $emit(&self, $($arg: $ty),*) {
                    for hook in &self.$name {
                        guarded(stringify!($name), || hook($($arg),*));
                    }
                }
            )*
        }

        impl std::fmt::Debug for Hooks {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut d = f.debug_struct("Hooks");
                $(d.field(stringify!($name), &self.$name.len());)*
                d.finish()
            }
        }
    };
}

hooks! {
    /// The worker is starting, before it connects its consumer.
    worker_init(worker: &WorkerInfo<'_>) => emit_worker_init;
    /// In each process-pool child, once, before its first task.
    worker_process_init(process: &ProcessInfo) => emit_worker_process_init;
    /// The worker consumes.
    worker_ready(worker: &WorkerInfo<'_>) => emit_worker_ready;
    /// A shutdown was asked for.
    worker_shutting_down(worker: &WorkerInfo<'_>) => emit_worker_shutting_down;
    /// The worker stopped: every task finished or went back.
    worker_shutdown(worker: &WorkerInfo<'_>) => emit_worker_shutdown;
    /// A message of a registered task arrived.
    task_received(task: &TaskInfo<'_>) => emit_task_received;
    /// The task is about to run.
    task_prerun(task: &TaskInfo<'_>) => emit_task_prerun;
    /// The task ran and its outcome was carried out.
    task_postrun(task: &TaskInfo<'_>) => emit_task_postrun;
    /// The task returned this value.
    task_success(task: &TaskInfo<'_>, value: &Value) => emit_task_success;
    /// The task failed (traceback when there is one).
    task_failure(task: &TaskInfo<'_>, exception: &ExceptionInfo, traceback: Option<&str>) => emit_task_failure;
    /// The task will run again, for this reason.
    task_retry(task: &TaskInfo<'_>, reason: &ExceptionInfo) => emit_task_retry;
    /// The task was revoked (`revoked`), terminated (`terminated`) or had expired (`expired`).
    task_revoked(task: &TaskInfo<'_>, reason: &str) => emit_task_revoked;
    /// A task message is about to be published.
    before_task_publish(message: &PublishInfo<'_>) => emit_before_task_publish;
    /// A task message was published.
    after_task_publish(message: &PublishInfo<'_>) => emit_after_task_publish;
}

impl Hooks {
    /// Whether any publish hook is registered (the client skips preparing their
    /// arguments otherwise).
    pub fn has_publish_hooks(&self) -> bool {
        !(self.before_task_publish.is_empty() && self.after_task_publish.is_empty())
    }
}

fn guarded(name: &str, hook: impl FnOnce() -> HookResult) {
    match std::panic::catch_unwind(AssertUnwindSafe(hook)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("hook {name} failed (ignored): {e}"),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            error!("hook {name} panicked (ignored): {message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_failing_or_panicking_hook_does_not_stop_the_next() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut hooks = Hooks::default();
        hooks.task_revoked(|_, _| Err("planted".into()));
        hooks.task_revoked(|_, _| panic!("planted panic"));
        let seen = calls.clone();
        hooks.task_revoked(move |task, reason| {
            assert_eq!((task.id, reason), ("t1", "expired"));
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let kwargs = Map::new();
        let task = TaskInfo {
            id: "t1",
            name: "tasks.x",
            args: &[],
            kwargs: &kwargs,
            retries: 0,
            queue: "celery",
        };
        hooks.emit_task_revoked(&task, "expired");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
