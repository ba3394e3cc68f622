//! The outcome step: a job's [`Ending`] becomes an [`Outcome`] (a value: succeeded, failed,
//! retry, ...), and an outcome becomes its effects: counters, the log line, hooks, the
//! stored state, the retry message, and what becomes of the delivery ([`Settle`]). This is
//! the one place where events and canvas follow-ups attach.

use std::sync::atomic::Ordering;
use std::time::Duration;

use celeriac_core::broker::Publish;
use celeriac_core::message::TaskMessage;
use celeriac_core::state::{ExceptionInfo, TaskMeta};
use celeriac_core::task::{TaskError, TaskOptions};
use chrono::Utc;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::completer::Stored;
use crate::consumer::Settle;
use crate::pool::{Ending, StopReason};
use crate::request::Request;
use crate::worker::Shared;

/// Header counting the deliveries of a message that each lost their pool child.
pub(crate) const CHILD_LOSSES_HEADER: &str = "x-celeriac-child-losses";

#[derive(Debug)]
pub(crate) enum Outcome {
    Succeeded(Value),
    Failed {
        exception: ExceptionInfo,
        traceback: Option<String>,
    },
    Retry {
        countdown: Option<Duration>,
        exception: Option<ExceptionInfo>,
        traceback: Option<String>,
        max_retries: Option<u32>,
    },
    Rejected {
        reason: String,
        requeue: bool,
    },
    Ignored,
    /// `Task.replace`: this canvas (a signature dict) runs in the task's place.
    Replaced(Value),
    TimeLimited(Duration),
    /// `revoked` (before it ran), `terminated` or `expired`.
    Revoked(&'static str),
    /// A cold shutdown stopped it.
    ColdStopped,
    /// The child process running it died.
    Lost(String),
}

impl Outcome {
    /// Decides what an ending means for a task with these options on try `retries`.
    pub(crate) fn of(ending: Ending, options: &TaskOptions, retries: u32) -> Outcome {
        let error = match ending {
            Ending::Finished(Ok(value)) => return Outcome::Succeeded(value),
            Ending::Finished(Err(error)) => error,
            Ending::HardTimeLimit(limit) => return Outcome::TimeLimited(limit),
            Ending::Stopped(StopReason::Terminate) => return Outcome::Revoked("terminated"),
            Ending::Stopped(StopReason::Cold) => return Outcome::ColdStopped,
            Ending::Lost(how) => return Outcome::Lost(how),
        };
        match error {
            TaskError::Failure {
                exception,
                traceback,
            } if options.autoretry_for.contains(&exception.exc_type) => Outcome::Retry {
                countdown: Some(match &options.retry_backoff {
                    Some(backoff) => backoff.delay(retries),
                    None => options.default_retry_delay,
                }),
                exception: Some(exception),
                traceback,
                max_retries: None,
            },
            TaskError::Failure {
                exception,
                traceback,
            } => Outcome::Failed {
                exception,
                traceback,
            },
            TaskError::Retry {
                countdown,
                eta,
                exception,
                max_retries,
            } => Outcome::Retry {
                countdown: countdown
                    .or_else(|| eta.map(|eta| (eta - Utc::now()).to_std().unwrap_or_default())),
                exception,
                traceback: None,
                max_retries,
            },
            TaskError::Reject { reason, requeue } => Outcome::Rejected { reason, requeue },
            TaskError::Ignore => Outcome::Ignored,
            TaskError::Replace { signature } => Outcome::Replaced(signature),
            other => Outcome::Failed {
                exception: ExceptionInfo::new("RuntimeError", other.to_string()),
                traceback: None,
            },
        }
    }
}

impl Shared {
    /// Carries out an outcome; `done` is what a finished delivery gets (`Ack` with late
    /// ack, `Done` when it was acked before it ran).
    pub(crate) async fn finish(
        &self,
        req: &Request<'_>,
        outcome: Outcome,
        runtime: Duration,
        done: Settle,
    ) -> Settle {
        match outcome {
            Outcome::Succeeded(value) => self.succeeded(req, value, runtime, done).await,
            Outcome::Failed {
                exception,
                traceback,
            } => after_store(self.fail(req, &exception, traceback, runtime).await, done),
            Outcome::Retry {
                countdown,
                exception,
                traceback,
                max_retries,
            } => {
                let retry = RetryRequest {
                    countdown,
                    exception,
                    traceback,
                    max_retries: max_retries.or(req.options().max_retries),
                };
                self.retry(req, retry, done).await
            }
            Outcome::Rejected { reason, requeue } => {
                self.rejected(req, reason, requeue, done).await
            }
            Outcome::Ignored => done,
            Outcome::Replaced(signature) => self.replaced(req, &signature, runtime, done).await,
            Outcome::TimeLimited(limit) => self.time_limited(req, limit, runtime, done).await,
            Outcome::Revoked(reason) => self.revoked(req, reason, done).await,
            Outcome::ColdStopped => self.cold_stopped(req, runtime, done).await,
            Outcome::Lost(how) => self.lost(req, how, runtime, done).await,
        }
    }

    async fn succeeded(
        &self,
        req: &Request<'_>,
        value: Value,
        runtime: Duration,
        done: Settle,
    ) -> Settle {
        let h = req.headers();
        info!(task_id = %h.id, "Task {}[{}] succeeded in {:.6}s: {}", h.task, h.id, runtime.as_secs_f64(), celeriac_core::repr::repr(&value));
        self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
        self.hooks.emit_task_success(&req.info(), &value);
        self.task_event("task-succeeded", |w| {
            w.str("uuid", &h.id)
                .str("result", &celeriac_core::repr::repr(&value))
                .f64("runtime", runtime.as_secs_f64());
        });
        // Follow-ups go out before the result is stored (as in Celery), so its children
        // name them and whoever sees SUCCESS finds the next step already sent. If they
        // cannot be sent, a late-ack message runs again; an early-ack one fails, as Celery's
        // worker fails a task whose callbacks it could not publish.
        let children = match self.send_success_followups(req, &value).await {
            Ok(children) => children,
            Err(_) if done == Settle::Ack => return Settle::Requeue,
            Err(why) => {
                let why = format!("could not send the follow-ups: {why}");
                let exc = ExceptionInfo::new("OperationalError", why);
                return after_store(self.fail(req, &exc, None, runtime).await, done);
            }
        };
        if self.keeps_result(req) || req.msg.embed.chord.is_some() {
            let mut meta = req.builder.success(value);
            meta.children = Some(children);
            after_store(self.store(req.msg, &meta).await, done)
        } else {
            self.completer.record_finished(&h.id);
            done
        }
    }

    async fn fail(
        &self,
        req: &Request<'_>,
        exc: &ExceptionInfo,
        traceback: Option<String>,
        runtime: Duration,
    ) -> Stored {
        let h = req.headers();
        error!(task_id = %h.id, "Task {}[{}] raised unexpected: {} (after {:.3}s)", h.task, h.id, exc.repr(), runtime.as_secs_f64());
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.hooks
            .emit_task_failure(&req.info(), exc, traceback.as_deref());
        self.task_event("task-failed", |w| {
            w.str("uuid", &h.id)
                .str("exception", &exc.repr())
                .opt_str("traceback", traceback.as_deref());
        });
        let stored = self
            .store(req.msg, &req.builder.failure(exc, traceback.clone()))
            .await;
        self.send_failure_followups(req.msg, exc, traceback.as_deref())
            .await;
        stored
    }

    async fn replaced(
        &self,
        req: &Request<'_>,
        signature: &Value,
        runtime: Duration,
        done: Settle,
    ) -> Settle {
        match self.replace_task(req, signature).await {
            Ok(()) => done,
            Err(why) => {
                let exc = ExceptionInfo::new(
                    "ReplaceError",
                    format!("could not replace the task: {why}"),
                );
                after_store(self.fail(req, &exc, None, runtime).await, done)
            }
        }
    }

    async fn rejected(
        &self,
        req: &Request<'_>,
        reason: String,
        requeue: bool,
        done: Settle,
    ) -> Settle {
        let h = req.headers();
        if requeue && done == Settle::Ack {
            info!(task_id = %h.id, "Task {}[{}] rejected and requeued: {reason}", h.task, h.id);
            return Settle::Requeue;
        }
        warn!(task_id = %h.id, "Task {}[{}] rejected: {reason}", h.task, h.id);
        self.task_event("task-rejected", |w| {
            w.str("uuid", &h.id).bool("requeue", requeue);
        });
        let exc = ExceptionInfo {
            exc_type: "Reject".into(),
            exc_module: "celery.exceptions".into(),
            exc_message: vec![json!(reason), json!(requeue)],
        };
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        let stored = self.store(req.msg, &req.builder.failure(&exc, None)).await;
        after_store(stored, done)
    }

    async fn time_limited(
        &self,
        req: &Request<'_>,
        limit: Duration,
        runtime: Duration,
        done: Settle,
    ) -> Settle {
        let h = req.headers();
        let secs = limit.as_secs_f64();
        error!(task_id = %h.id, "Task {}[{}] hard time limit ({secs}s) exceeded: stopped", h.task, h.id);
        let exc = ExceptionInfo::new("TimeLimitExceeded", format!("{secs}"));
        let traceback = format!("TimeLimitExceeded: task ran longer than {secs}s");
        after_store(self.fail(req, &exc, Some(traceback), runtime).await, done)
    }

    async fn revoked(&self, req: &Request<'_>, reason: &str, done: Settle) -> Settle {
        self.counters.revoked.fetch_add(1, Ordering::Relaxed);
        self.hooks.emit_task_revoked(&req.info(), reason);
        self.task_event("task-revoked", |w| {
            w.str("uuid", &req.headers().id)
                .bool("terminated", reason == "terminated")
                .null("signum")
                .bool("expired", reason == "expired");
        });
        let stored = self.store(req.msg, &req.builder.revoked(reason)).await;
        after_store(stored, done)
    }

    async fn cold_stopped(&self, req: &Request<'_>, runtime: Duration, done: Settle) -> Settle {
        let h = req.headers();
        if done == Settle::Ack {
            warn!(task_id = %h.id, "Task {}[{}] stopped by shutdown: returned to its queue", h.task, h.id);
            return Settle::Requeue;
        }
        let exc = ExceptionInfo::new(
            "WorkerLostError",
            "worker shut down while the task was running",
        )
        .with_module("billiard.exceptions");
        self.fail(req, &exc, None, runtime).await;
        Settle::Done
    }

    /// The child died under the task. Early ack: FAILURE `WorkerLostError`. Late ack: the
    /// message goes back to its queue carrying a count of such losses; at
    /// `max_child_losses` it is a poison pill and goes to the dead-letter queue instead.
    async fn lost(
        &self,
        req: &Request<'_>,
        how: String,
        runtime: Duration,
        done: Settle,
    ) -> Settle {
        let h = req.headers();
        let exc =
            ExceptionInfo::new("WorkerLostError", how.clone()).with_module("billiard.exceptions");
        if done != Settle::Ack {
            return after_store(self.fail(req, &exc, None, runtime).await, done);
        }
        let losses = child_losses(req.msg) + 1;
        if losses >= self.config.max_child_losses {
            let reason = format!(
                "worker-lost: {}[{}] lost its pool child on {losses} deliveries (last: {how})",
                h.task, h.id
            );
            error!(task_id = %h.id, "{reason}: moving it to the dead-letter queue");
            // In the dead-letter queue before the caller learns of the failure.
            self.dead_letter(req.delivery, &reason).await;
            self.fail(req, &exc, Some(reason.clone()), runtime).await;
            return Settle::Done;
        }
        warn!(task_id = %h.id, "Task {}[{}] lost its pool child ({how}): returned to its queue ({losses} of {} such losses before the dead-letter queue)", h.task, h.id, self.config.max_child_losses);
        let mut next = req.msg.clone();
        next.headers
            .extra
            .insert(CHILD_LOSSES_HEADER.into(), json!(losses));
        match self.republish(req, next, None).await {
            Ok(()) => Settle::Ack,
            Err(()) => Settle::Requeue,
        }
    }

    /// Republishes the call with the same id and `retries + 1`, due after `countdown`, then
    /// stores RETRY. Past `max_retries` the task fails with its last error instead.
    async fn retry(&self, req: &Request<'_>, retry: RetryRequest, done: Settle) -> Settle {
        let h = req.headers();
        if retry.max_retries.is_some_and(|max| h.retries >= max) {
            let exc = retry.exception.unwrap_or_else(|| {
                ExceptionInfo::new(
                    "MaxRetriesExceededError",
                    format!(
                        "Can't retry {}[{}] args:{} kwargs:{}",
                        h.task,
                        h.id,
                        h.argsrepr.as_deref().unwrap_or("()"),
                        h.kwargsrepr.as_deref().unwrap_or("{}")
                    ),
                )
            });
            let stored = self.fail(req, &exc, retry.traceback, Duration::ZERO).await;
            return after_store(stored, done);
        }
        let countdown = retry.countdown.unwrap_or(req.options().default_retry_delay);
        let eta = Utc::now() + chrono::Duration::from_std(countdown).unwrap_or_default();
        let mut next = req.msg.clone();
        next.headers.retries = h.retries + 1;
        next.headers.eta = Some(eta);
        next.headers.parent_id = Some(h.id.clone());
        let exc = retry.exception.unwrap_or_else(|| {
            ExceptionInfo::new("Retry", format!("Retry in {}s", countdown.as_secs_f64()))
                .with_module("celery.exceptions")
        });
        info!(task_id = %h.id, "Task {}[{}] retry: Retry in {}s: {}", h.task, h.id, countdown.as_secs_f64(), exc.repr());
        self.counters.retried.fetch_add(1, Ordering::Relaxed);
        self.hooks.emit_task_retry(&req.info(), &exc);
        self.task_event("task-retried", |w| {
            w.str("uuid", &h.id)
                .str("exception", &exc.repr())
                .opt_str("traceback", retry.traceback.as_deref());
        });
        // RETRY goes in before the new message exists: stored after, it could overwrite the
        // final state of a retry that already ran (only SUCCESS is protected).
        if self.keeps_result(req) {
            self.store(req.msg, &req.builder.retry(&exc, retry.traceback))
                .await;
        }
        match self.republish(req, next, Some(eta)).await {
            Ok(()) => done,
            // Not acked yet with late ack: put it back rather than lose it.
            Err(()) if done == Settle::Ack => Settle::Requeue,
            Err(()) => done,
        }
    }

    /// Publishes `next` (a changed copy of the request's message) to the same queue.
    async fn republish(
        &self,
        req: &Request<'_>,
        mut next: TaskMessage,
        not_before: Option<chrono::DateTime<Utc>>,
    ) -> Result<(), ()> {
        let h = req.headers();
        // Transport properties of the old delivery (its TTL, tags) must not ride along.
        next.properties.extra.clear();
        let publish = Publish {
            queue: req.delivery.queue.clone(),
            priority: Some(req.msg.properties.priority),
            not_before,
            message: next.to_raw(),
        };
        self.broker.publish(publish).await.map_err(|e| {
            error!(task_id = %h.id, "could not publish {}[{}] again: {e}", h.task, h.id);
        })
    }

    /// Stores a state of the task of `msg` (retried while the backend fails, see
    /// `completer.rs`); a final state stored is remembered as finished.
    pub(crate) async fn store(&self, msg: &TaskMessage, meta: &TaskMeta) -> Stored {
        let chord = msg.embed.chord.as_ref().filter(|_| meta.status.is_ready());
        let stored = match chord {
            Some(body) => {
                let h = &msg.headers;
                self.count_in_chord(meta, body, h.group_index, h.root_id.as_deref())
                    .await
            }
            None => self.completer.store(msg, meta).await,
        };
        if stored == Stored::Yes && meta.status.is_ready() {
            self.completer.record_finished(&meta.task_id);
        }
        stored
    }
}

pub(crate) struct RetryRequest {
    countdown: Option<Duration>,
    exception: Option<ExceptionInfo>,
    traceback: Option<String>,
    max_retries: Option<u32>,
}

/// How many deliveries of this message lost their pool child so far.
fn child_losses(msg: &TaskMessage) -> u32 {
    msg.headers
        .extra
        .get(CHILD_LOSSES_HEADER)
        .and_then(Value::as_u64)
        .map_or(0, |n| n.min(u32::MAX as u64) as u32)
}

/// A message whose final state could not be stored is not acked: it goes back to its queue
/// (and runs again) rather than leave its caller waiting forever. Already-acked (early-ack)
/// messages cannot be taken back.
pub(crate) fn after_store(stored: Stored, settle: Settle) -> Settle {
    match (stored, settle) {
        (Stored::No, Settle::Ack) => Settle::Requeue,
        (_, settle) => settle,
    }
}
