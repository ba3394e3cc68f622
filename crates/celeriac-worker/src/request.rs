//! A request: one delivery from receipt to the moment its body starts. The filters run in
//! order (decode, registry, redelivered copies in hand, expiry, revoked, already finished,
//! ETA, rate limit, a pool slot, revoked again); each may settle the message instead of
//! running it. Then the body runs in the pool and its ending goes to `outcome.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac_core::message::{TaskHeaders, TaskMessage};
use celeriac_core::state::ExceptionInfo;
use celeriac_core::task::{TaskContext, TaskOptions};
use celeriac_core::time::to_iso;
use celeriac_core::Delivery;
use chrono::Utc;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};
use tracing::{debug, error, info, warn};

use crate::consumer::Settle;
use crate::hooks::TaskInfo;
use crate::outcome::Outcome;
use crate::pool::{Job, Slot};
use crate::registry::ErasedTask;
use crate::results::MetaBuilder;
use crate::shutdown::Phase;
use crate::tracking::{Stage, TrackGuard};
use crate::worker::Shared;

/// One decoded delivery of a registered task.
pub(crate) struct Request<'a> {
    pub delivery: &'a Delivery,
    pub msg: &'a TaskMessage,
    pub builder: MetaBuilder<'a>,
    pub task: Arc<dyn ErasedTask>,
    /// The delivery's prefetch-window place, given back when the message is acked.
    window: Mutex<Option<OwnedSemaphorePermit>>,
    /// Where `inspect active|reserved|scheduled` see it.
    track: TrackGuard<'a>,
}

impl Request<'_> {
    pub(crate) fn headers(&self) -> &TaskHeaders {
        &self.msg.headers
    }

    pub(crate) fn options(&self) -> &TaskOptions {
        self.task.options()
    }

    fn release_window_place(&self) {
        lock(&self.window).take();
    }

    pub(crate) fn info(&self) -> TaskInfo<'_> {
        TaskInfo {
            id: &self.msg.headers.id,
            name: &self.msg.headers.task,
            args: &self.msg.args,
            kwargs: &self.msg.kwargs,
            retries: self.msg.headers.retries,
            queue: &self.delivery.queue,
        }
    }
}

/// Task ids of the deliveries this worker handles (waiting or running), each until its
/// result is stored, with how many copies; notified whenever one leaves.
#[derive(Default)]
pub(crate) struct InHandIds {
    ids: Mutex<HashMap<String, usize>>,
    released: Notify,
}

impl InHandIds {
    /// Deliveries in hand (waiting or running).
    pub(crate) fn len(&self) -> usize {
        lock(&self.ids).values().sum()
    }
}

impl Shared {
    pub(crate) async fn handle(self: &Arc<Self>, delivery: Delivery, window: OwnedSemaphorePermit) {
        let msg = match TaskMessage::from_raw(&delivery.message) {
            Ok(msg) => Arc::new(msg),
            Err(e) => {
                let id = delivery.message.task_id().unwrap_or("?");
                error!(queue = %delivery.queue, task_id = id, "cannot decode message, moving it to the dead-letter queue: {e}");
                self.dead_letter(&delivery, &format!("{}: {e}", e.code()))
                    .await;
                return;
            }
        };
        let builder = MetaBuilder {
            msg: &msg,
            hostname: &self.config.hostname,
            queue: &delivery.queue,
            extended: self.config.result_extended,
        };
        let Some(task) = self.registry.get(&msg.headers.task).cloned() else {
            self.unregistered(&delivery, &builder).await;
            return;
        };
        let track = self
            .tracked
            .enter(msg.clone(), &delivery.queue, delivery.redelivered);
        let request = Request {
            delivery: &delivery,
            msg: &msg,
            builder,
            task,
            window: Mutex::new(Some(window)),
            track,
        };
        let settle = self.process(&request).await;
        self.settle(&delivery.tag, settle).await;
    }

    async fn unregistered(&self, delivery: &Delivery, builder: &MetaBuilder<'_>) {
        let h = &builder.msg.headers;
        error!(task_id = %h.id, "received unregistered task {:?}; moving it to the dead-letter queue", h.task);
        let exc = ExceptionInfo::new("NotRegistered", h.task.clone());
        let mut meta = builder.failure(&exc, None);
        meta.children = Some(Vec::new());
        self.store(builder.msg, &meta).await;
        let reason = format!(
            "unknown-task: {:?} is not registered on {}",
            h.task, self.config.hostname
        );
        self.dead_letter(delivery, &reason).await;
    }

    /// Everything between receipt and the final state. Returns what to do with the message.
    async fn process(&self, req: &Request<'_>) -> Settle {
        let h = req.headers();
        debug!(task_id = %h.id, "Task {}[{}] received", h.task, h.id);
        self.hooks.emit_task_received(&req.info());
        self.task_event("task-received", |w| {
            w.str("uuid", &h.id)
                .str("name", &h.task)
                .opt_str("args", h.argsrepr.as_deref())
                .opt_str("kwargs", h.kwargsrepr.as_deref())
                .opt_str("root_id", h.root_id.as_deref())
                .opt_str("parent_id", h.parent_id.as_deref())
                .u64("retries", u64::from(h.retries))
                .opt_str("eta", h.eta.map(to_iso).as_deref())
                .opt_str("expires", h.expires.map(to_iso).as_deref());
        });
        let mut phase = self.phase.clone();
        // A connection lost while this worker holds messages (AMQP) hands them back while the
        // first copies still wait or run here: the new copy waits for the first to finish and
        // store its result, then is settled by the check below instead of running again.
        if req.delivery.redelivered && !self.wait_not_in_hand(&h.id, &mut phase).await {
            return Settle::Requeue;
        }
        let _in_hand = InHand::enter(&self.in_hand, &h.id);
        if let Some(settle) = self.filter(req).await {
            return settle;
        }
        match self.wait_to_start(req, &mut phase).await {
            Ok(slot) => self.run(req, slot).await,
            Err(settle) => settle,
        }
    }

    /// The filters that need no waiting: expired, revoked, already finished.
    async fn filter(&self, req: &Request<'_>) -> Option<Settle> {
        let h = req.headers();
        if h.expires.is_some_and(|t| t <= Utc::now()) {
            info!(task_id = %h.id, "Task {}[{}] expired: not run", h.task, h.id);
            let outcome = Outcome::Revoked("expired");
            return Some(self.finish(req, outcome, Duration::ZERO, Settle::Ack).await);
        }
        if let Some(settle) = self.skip_revoked(req).await {
            return Some(settle);
        }
        if req.delivery.redelivered && self.already_finished(h).await {
            self.resume_followups(req).await;
            return Some(Settle::Ack);
        }
        None
    }

    /// Waits for the ETA (on brokers that hand ETA tasks over early), the rate limit and a
    /// pool slot; a shutdown meanwhile puts the message back.
    async fn wait_to_start(
        &self,
        req: &Request<'_>,
        phase: &mut watch::Receiver<Phase>,
    ) -> Result<Slot, Settle> {
        let h = req.headers();
        let draining = |p: &Phase| *p != Phase::Running;
        if let Some(eta) = h.eta.filter(|eta| *eta > Utc::now()) {
            if !self.broker.delays_delivery() {
                let wait = (eta - Utc::now()).to_std().unwrap_or_default();
                req.track.set(Stage::Scheduled(eta));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = phase.wait_for(draining) => return Err(Settle::Requeue),
                }
                req.track.set(Stage::Reserved);
            }
        }
        if let Some(limit) = self.limiter.limit_for(&h.task, req.options().rate_limit) {
            tokio::select! {
                _ = self.limiter.wait(&h.task, limit) => {}
                _ = phase.wait_for(draining) => return Err(Settle::Requeue),
            }
        }
        let slot = tokio::select! {
            slot = self.pool.reserve() => slot.ok_or(Settle::Requeue)?,
            _ = phase.wait_for(draining) => return Err(Settle::Requeue),
        };
        if *self.phase.borrow() != Phase::Running {
            return Err(Settle::Requeue);
        }
        // Checked again: a revoke may have arrived while the task waited for a slot.
        match self.skip_revoked(req).await {
            Some(settle) => Err(settle),
            None => Ok(slot),
        }
    }

    /// Acks early (unless late), runs the body in the pool, and carries out its outcome.
    async fn run(&self, req: &Request<'_>, slot: Slot) -> Settle {
        let h = req.headers();
        let options = req.options();
        let acks_late = options.acks_late || self.config.task_acks_late;
        if !acks_late {
            self.settle(&req.delivery.tag, Settle::Ack).await;
            // With --disable-prefetch the place stays taken while the task runs: a message
            // is fetched only when a slot is free for it.
            if !self.config.disable_prefetch {
                req.release_window_place();
            }
        }
        if options.track_started && self.keeps_result(req) {
            self.store(req.msg, &req.builder.started()).await;
        }
        let job = self.job(req);
        self.accept(&h.task);
        req.track.set(Stage::Active {
            since: Utc::now().timestamp_micros() as f64 / 1e6,
            acknowledged: !acks_late,
        });
        self.hooks.emit_task_prerun(&req.info());
        self.task_event("task-started", |w| {
            w.str("uuid", &h.id);
        });
        debug!(task_id = %h.id, "Task {}[{}] starting on the {} pool", h.task, h.id, self.config.pool.name());
        let started = Instant::now();
        let ending = self.pool.run(slot, job).await;
        let runtime = started.elapsed();
        let outcome = Outcome::of(ending, options, h.retries);
        let done = if acks_late { Settle::Ack } else { Settle::Done };
        let settle = self.finish(req, outcome, runtime, done).await;
        self.hooks.emit_task_postrun(&req.info());
        settle
    }

    fn job(&self, req: &Request<'_>) -> Job {
        let h = req.headers();
        let options = req.options();
        let mut ctx = TaskContext::new(
            h.id.clone(),
            h.task.clone(),
            self.config.hostname.clone(),
            req.delivery.queue.clone(),
        );
        ctx.retries = h.retries;
        ctx.root_id = h.root_id.clone();
        ctx.parent_id = h.parent_id.clone();
        ctx.group = h.group.clone();
        ctx.eta = h.eta;
        ctx.expires = h.expires;
        ctx.max_retries = options.max_retries;
        // The message's limits beat those set by remote control, then the task's, then the
        // worker's (`--time-limit`).
        let set_at_run_time = self.limiter.time_limits_for(&h.task);
        Job {
            task: req.task.clone(),
            args: req.msg.args.clone(),
            kwargs: req.msg.kwargs.clone(),
            ctx,
            soft_limit: h
                .soft_time_limit
                .and_then(secs)
                .or(set_at_run_time.soft)
                .or(options.soft_time_limit)
                .or(self.config.soft_time_limit),
            hard_limit: h
                .time_limit
                .and_then(secs)
                .or(set_at_run_time.hard)
                .or(options.time_limit)
                .or(self.config.time_limit),
        }
    }

    /// Whether the task's states are stored: not when the message, the task or the worker's
    /// `task_ignore_result` says to ignore them.
    pub(crate) fn keeps_result(&self, req: &Request<'_>) -> bool {
        !(req.headers().ignore_result
            || req.options().ignore_result
            || self.config.task_ignore_result)
    }

    /// Waits while another delivery of task `id` is in this worker's hands; false when the
    /// worker started shutting down meanwhile.
    async fn wait_not_in_hand(&self, id: &str, phase: &mut watch::Receiver<Phase>) -> bool {
        let in_hand = || lock(&self.in_hand.ids).contains_key(id);
        if !in_hand() {
            return true;
        }
        info!(task_id = %id, "Task {id} redelivered while a copy is in hand here: waiting for it");
        loop {
            // Registered before the check, so a release in between is not missed.
            let released = self.in_hand.released.notified();
            if !in_hand() {
                return true;
            }
            tokio::select! {
                _ = released => {}
                _ = phase.wait_for(|p| *p != Phase::Running) => return false,
            }
        }
    }

    /// A message delivered again (its ack was lost with a connection, or its worker died
    /// after storing the result) whose task already has a final state is not run twice.
    async fn already_finished(&self, h: &TaskHeaders) -> bool {
        match self.completer.finished_state(&h.id).await {
            Ok(Some(state)) => {
                info!(task_id = %h.id, "Task {}[{}] redelivered but already {state}: not run again", h.task, h.id);
                true
            }
            Ok(None) => false,
            Err(e) => {
                warn!(task_id = %h.id, "cannot check whether redelivered task {} already finished ({e}); running it", h.id);
                false
            }
        }
    }

    /// When the task was revoked before it started: stores REVOKED and says what becomes
    /// of the message.
    async fn skip_revoked(&self, req: &Request<'_>) -> Option<Settle> {
        let h = req.headers();
        if !self.is_revoked(&h.id) {
            return None;
        }
        info!(task_id = %h.id, "Task {}[{}] revoked: not run", h.task, h.id);
        let outcome = Outcome::Revoked("revoked");
        Some(self.finish(req, outcome, Duration::ZERO, Settle::Ack).await)
    }
}

fn secs(s: f64) -> Option<Duration> {
    (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s))
}

/// Counts a delivery of a task id as in this worker's hands until dropped (after its result
/// is stored).
struct InHand<'a> {
    ids: &'a InHandIds,
    id: String,
}

impl<'a> InHand<'a> {
    fn enter(ids: &'a InHandIds, id: &str) -> InHand<'a> {
        *lock(&ids.ids).entry(id.to_string()).or_default() += 1;
        InHand {
            ids,
            id: id.to_string(),
        }
    }
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        let mut ids = lock(&self.ids.ids);
        if let Some(n) = ids.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                ids.remove(&self.id);
            }
        }
        drop(ids);
        self.ids.released.notify_waiters();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
