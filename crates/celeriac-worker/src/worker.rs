//! The worker: one fetch loop filling a prefetch window, one handler per delivery, a pool
//! of `concurrency` execution slots, and the background duties (lease keepalive, batched
//! acks, revocation follower).
//!
//! Shutdown: the first request stops fetching, returns messages that have not started, and
//! waits up to `shutdown_timeout` for running tasks; a second request (or the deadline)
//! stops running tasks at once, and every unfinished late-ack task goes back to its queue.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac_core::broker::{ConsumerSpec, Publish};
use celeriac_core::message::TaskMessage;
use celeriac_core::state::{ExceptionInfo, TaskMeta};
use celeriac_core::task::{TaskContext, TaskError, TaskOptions};
use celeriac_core::{Broker, BrokerError, Consumer, Delivery, DeliveryTag, ResultBackend};
use chrono::Utc;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::completer::{Completer, Stored};
use crate::executor::{run_with_limits, Ending, StopReason};
use crate::limiter::RateLimiter;
use crate::registry::{ErasedTask, Registry};
use crate::results::MetaBuilder;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Node name, `celery@<host>` by default.
    pub hostname: String,
    pub queues: Vec<String>,
    pub concurrency: usize,
    /// Messages reserved ahead = concurrency × multiplier.
    pub prefetch_multiplier: usize,
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
            prefetch_multiplier: 4,
            result_expires: Some(Duration::from_secs(86_400)),
            result_extended: false,
            shutdown_timeout: Duration::from_secs(30),
            revoke_poll_interval: Duration::from_millis(100),
            result_store_retry_for: Duration::from_secs(60),
            finished_ids_kept: 65_536,
            task_acks_late: false,
            task_ignore_result: false,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running,
    /// Stop fetching; finish running tasks.
    Draining,
    /// Stop running tasks now.
    Stopping,
}

/// Asks a running worker to stop; cheap to clone and send anywhere.
#[derive(Clone)]
pub struct ShutdownHandle {
    phase: Arc<watch::Sender<Phase>>,
}

impl ShutdownHandle {
    /// Warm shutdown: finish running tasks (up to the deadline), return the rest.
    pub fn graceful(&self) {
        self.phase.send_if_modified(|p| {
            let changed = *p < Phase::Draining;
            *p = (*p).max(Phase::Draining);
            changed
        });
    }

    /// Cold shutdown: stop running tasks now; late-ack ones go back to their queues.
    pub fn now(&self) {
        self.phase.send_replace(Phase::Stopping);
    }

    /// What a signal does: the first asks for a graceful stop, the second for a cold one.
    pub fn escalate(&self) {
        if *self.phase.borrow() == Phase::Running {
            self.graceful();
        } else {
            self.now();
        }
    }
}

/// Counters a worker keeps (read them through [`Worker::stats`]).
#[derive(Debug, Default)]
pub struct Counters {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub revoked: AtomicU64,
    pub dead_lettered: AtomicU64,
}

pub struct Worker {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    registry: Arc<Registry>,
    config: WorkerConfig,
    phase: Arc<watch::Sender<Phase>>,
    counters: Arc<Counters>,
}

struct Shared {
    broker: Arc<dyn Broker>,
    consumer: Arc<dyn Consumer>,
    completer: Completer,
    registry: Arc<Registry>,
    config: WorkerConfig,
    limiter: RateLimiter,
    slots: Semaphore,
    revoked: Mutex<RevokedSet>,
    running: Mutex<HashMap<String, oneshot::Sender<StopReason>>>,
    /// Task ids of the deliveries this worker handles (waiting or running), each until its
    /// result is stored, with how many copies.
    in_hand: Mutex<HashMap<String, usize>>,
    /// Notified whenever an id leaves `in_hand`.
    released: Notify,
    acks: mpsc::UnboundedSender<DeliveryTag>,
    phase: watch::Receiver<Phase>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct RevokedSet {
    cursor: u64,
    ids: HashSet<String>,
    /// The last read failed (warned once, until a read succeeds again).
    failing: bool,
}

impl Worker {
    pub fn new(
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
        registry: Arc<Registry>,
        config: WorkerConfig,
    ) -> Self {
        let (phase, _) = watch::channel(Phase::Running);
        Worker {
            broker,
            backend,
            registry,
            config,
            phase: Arc::new(phase),
            counters: Arc::default(),
        }
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            phase: self.phase.clone(),
        }
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    pub fn stats(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// A start-up banner in the spirit of Celery's.
    pub fn banner(&self, app_name: &str) -> String {
        let c = &self.config;
        let mut tasks = String::new();
        for name in self.registry.names() {
            tasks.push_str(&format!("  . {name}\n"));
        }
        format!(
            " -------------- {host} v{version}\n\
             --- ***** -----\n\
             -- ******* ---- [config]\n\
             - *** --- * --- .> app:         {app_name}\n\
             - ** ---------- .> transport:   {broker}\n\
             - ** ---------- .> results:     {backend}\n\
             - *** --- * --- .> concurrency: {conc} (async, blocking tasks on the blocking pool)\n\
             -- ******* ---- .> prefetch:    {prefetch} (multiplier {mult})\n\
             --- ***** -----\n\
             -------------- [queues]\n{queues}\n[tasks]\n{tasks}",
            host = c.hostname,
            version = env!("CARGO_PKG_VERSION"),
            broker = self.broker.display_url(),
            backend = self.backend.display_url(),
            conc = c.concurrency,
            prefetch = c.concurrency * c.prefetch_multiplier,
            mult = c.prefetch_multiplier,
            queues = c
                .queues
                .iter()
                .map(|q| format!("                .> {q}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// Runs until shut down through a [`ShutdownHandle`].
    pub async fn run(self) -> Result<(), WorkerError> {
        let config = self.config.clone();
        for q in &config.queues {
            self.broker
                .declare_queue(q)
                .await
                .map_err(WorkerError::Broker)?;
        }
        let consumer: Arc<dyn Consumer> = Arc::from(
            self.broker
                .consumer(ConsumerSpec {
                    queues: config.queues.clone(),
                    name: config.hostname.clone(),
                    prefetch: config.concurrency.max(1) * config.prefetch_multiplier.max(1),
                })
                .await
                .map_err(WorkerError::Broker)?,
        );
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            broker: self.broker.clone(),
            consumer: consumer.clone(),
            completer: Completer::new(
                self.backend.clone(),
                config.result_store_retry_for,
                config.result_expires,
                config.finished_ids_kept,
                self.phase.subscribe(),
            ),
            registry: self.registry.clone(),
            limiter: RateLimiter::default(),
            slots: Semaphore::new(config.concurrency.max(1)),
            revoked: Mutex::new(RevokedSet::default()),
            running: Mutex::new(HashMap::new()),
            in_hand: Mutex::new(HashMap::new()),
            released: Notify::new(),
            acks: ack_tx,
            phase: self.phase.subscribe(),
            counters: self.counters.clone(),
            config,
        });
        shared.sync_revocations().await;

        let acker = tokio::spawn(ack_loop(consumer.clone(), ack_rx));
        let background = tokio::spawn(background_loop(shared.clone()));
        info!(hostname = %shared.config.hostname, queues = ?shared.config.queues, "worker ready");

        let mut handlers = JoinSet::new();
        fetch_loop(&shared, &mut handlers).await;

        // Draining: wait for running tasks until the deadline or a second signal.
        let mut phase = self.phase.subscribe();
        let deadline = tokio::time::sleep(shared.config.shutdown_timeout);
        tokio::pin!(deadline);
        if !handlers.is_empty() {
            info!(
                tasks = handlers.len(),
                "shutting down: waiting for running tasks (signal again to stop now)"
            );
        }
        loop {
            tokio::select! {
                joined = handlers.join_next() => if joined.is_none() { break },
                _ = &mut deadline => {
                    warn!("shutdown deadline passed: stopping running tasks");
                    self.phase.send_replace(Phase::Stopping);
                    break;
                }
                _ = phase.wait_for(|p| *p == Phase::Stopping) => break,
            }
        }
        if !handlers.is_empty() {
            shared.stop_all_running();
            while handlers.join_next().await.is_some() {}
        }
        background.abort();
        let _ = background.await;
        // Every handler has finished; dropping the last `Shared` drops the ack sender, so the
        // acker flushes what is queued and ends.
        drop(shared);
        let _ = acker.await;
        if let Err(e) = consumer.close().await {
            error!("could not return held messages to the broker: {e}");
        }
        info!("worker stopped");
        Ok(())
    }
}

async fn fetch_loop(shared: &Arc<Shared>, handlers: &mut JoinSet<()>) {
    let window = Arc::new(Semaphore::new(
        shared.config.concurrency.max(1) * shared.config.prefetch_multiplier.max(1),
    ));
    let mut phase = shared.phase.clone();
    let mut failures = 0u32;
    loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        while handlers.try_join_next().is_some() {}
        let first = tokio::select! {
            permit = window.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
            _ = phase.changed() => continue,
        };
        let mut permits = vec![first];
        while let Ok(p) = window.clone().try_acquire_owned() {
            permits.push(p);
        }
        shared.sync_revocations().await;
        let fetched = tokio::select! {
            r = shared.consumer.fetch(permits.len(), Duration::from_millis(500)) => r,
            _ = phase.changed() => continue,
        };
        match fetched {
            Ok(deliveries) => {
                if failures > 0 {
                    info!("broker reachable again: consuming");
                    failures = 0;
                }
                for delivery in deliveries {
                    let Some(permit) = permits.pop() else { break };
                    let shared = shared.clone();
                    handlers.spawn(async move {
                        shared.handle(delivery).await;
                        drop(permit);
                    });
                }
            }
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                error!("cannot fetch from the broker ({e}); retrying in {pause:?}");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = phase.changed() => {}
                }
            }
        }
    }
}

async fn ack_loop(consumer: Arc<dyn Consumer>, mut rx: mpsc::UnboundedReceiver<DeliveryTag>) {
    let mut batch = Vec::with_capacity(256);
    while let Some(tag) = rx.recv().await {
        batch.push(tag);
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(tag) => batch.push(tag),
                Err(_) => break,
            }
        }
        if let Err(e) = consumer.ack(&batch).await {
            error!(
                "could not ack {} messages (they will be delivered again): {e}",
                batch.len()
            );
        }
        batch.clear();
    }
}

async fn background_loop(shared: Arc<Shared>) {
    let mut keepalive = tokio::time::interval(shared.consumer.keepalive_interval());
    let mut revokes = tokio::time::interval(shared.config.revoke_poll_interval);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    revokes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = keepalive.tick() => {
                if let Err(e) = shared.consumer.keepalive().await {
                    error!("could not renew message leases: {e}");
                }
            }
            _ = revokes.tick() => shared.sync_revocations().await,
        }
    }
}

/// What became of one message, decided once and then carried out.
enum Settle {
    Ack,
    Requeue,
    /// Already acknowledged (early ack) or handed to the dead-letter queue.
    Done,
}

impl Shared {
    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    async fn sync_revocations(&self) {
        let Some(revocations) = self.broker.revocations() else {
            return;
        };
        let cursor = self
            .revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cursor;
        match revocations.revocations_since(cursor).await {
            Ok((items, next)) => {
                let mut set = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
                if std::mem::take(&mut set.failing) {
                    info!("reading revocations again");
                }
                set.cursor = next.max(set.cursor);
                for r in items {
                    if r.terminate {
                        let running = self
                            .running
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&r.task_id);
                        if let Some(stop) = running {
                            info!(task_id = %r.task_id, "terminating revoked task");
                            let _ = stop.send(StopReason::Terminate);
                        }
                    }
                    set.ids.insert(r.task_id);
                }
            }
            Err(e) => {
                // Polled every `revoke_poll_interval`: one warning per outage, not per poll.
                let mut set = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
                if !std::mem::replace(&mut set.failing, true) {
                    warn!("could not read revocations (retrying quietly): {e}");
                } else {
                    debug!("could not read revocations: {e}");
                }
            }
        }
    }

    fn is_revoked(&self, id: &str) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ids
            .contains(id)
    }

    fn stop_all_running(&self) {
        let running: Vec<_> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, stop) in running {
            let _ = stop.send(StopReason::Cold);
        }
    }

    /// Stores a state of the task of `msg` (retried while the backend fails, see
    /// `completer.rs`); a final state stored is remembered as finished.
    async fn store(&self, msg: &TaskMessage, meta: &TaskMeta) -> Stored {
        let stored = self.completer.store(msg, meta).await;
        if stored == Stored::Yes && meta.status.is_ready() {
            self.completer.record_finished(&meta.task_id);
        }
        stored
    }

    async fn settle(&self, tag: &DeliveryTag, settle: Settle) {
        let result = match settle {
            Settle::Ack => self
                .acks
                .send(tag.clone())
                .map_err(|_| BrokerError::new(celeriac_core::ErrorKind::Closed, "acker stopped")),
            Settle::Requeue => self.consumer.requeue(std::slice::from_ref(tag)).await,
            Settle::Done => Ok(()),
        };
        if let Err(e) = result {
            error!("could not settle message {}: {e}", tag.0);
        }
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.consumer.dead_letter(&delivery.tag, reason).await {
            error!(
                "could not move message {} to the dead-letter queue ({reason}): {e}",
                delivery.tag.0
            );
        }
    }

    async fn handle(self: &Arc<Self>, delivery: Delivery) {
        let msg = match TaskMessage::from_raw(&delivery.message) {
            Ok(msg) => msg,
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
            error!(task_id = %msg.headers.id, "received unregistered task {:?}; moving it to the dead-letter queue", msg.headers.task);
            let exc = ExceptionInfo::new("NotRegistered", msg.headers.task.clone());
            let mut meta = builder.failure(&exc, None);
            meta.children = Some(Vec::new());
            self.store(&msg, &meta).await;
            self.dead_letter(
                &delivery,
                &format!(
                    "unknown-task: {:?} is not registered on {}",
                    msg.headers.task, self.config.hostname
                ),
            )
            .await;
            return;
        };
        let settle = self.execute(&delivery, &msg, &builder, task.as_ref()).await;
        self.settle(&delivery.tag, settle).await;
    }

    /// Everything between receipt and the final state. Returns what to do with the message.
    async fn execute(
        &self,
        delivery: &Delivery,
        msg: &TaskMessage,
        builder: &MetaBuilder<'_>,
        task: &dyn ErasedTask,
    ) -> Settle {
        let h = &msg.headers;
        debug!(task_id = %h.id, "Task {}[{}] received", h.task, h.id);
        let mut phase = self.phase.clone();
        let draining = |p: &Phase| *p != Phase::Running;
        // A connection lost while this worker holds messages (AMQP) hands them back while the
        // first copies still wait or run here: the new copy waits for the first to finish and
        // store its result, then is settled by the check below instead of running again.
        if delivery.redelivered && !self.wait_not_in_hand(&h.id, &mut phase).await {
            return Settle::Requeue;
        }
        let _in_hand = InHand::enter(self, &h.id);
        if h.expires.is_some_and(|t| t <= Utc::now()) {
            info!(task_id = %h.id, "Task {}[{}] expired: not run", h.task, h.id);
            self.counters.revoked.fetch_add(1, Ordering::Relaxed);
            let stored = self.store(msg, &builder.revoked("expired")).await;
            return after_store(stored, Settle::Ack);
        }
        if let Some(settle) = self.skip_revoked(builder).await {
            return settle;
        }
        if delivery.redelivered && self.already_finished(h).await {
            return Settle::Ack;
        }

        // Brokers without delayed delivery hand over ETA tasks early: hold them here.
        if let Some(eta) = h.eta.filter(|eta| *eta > Utc::now()) {
            if !self.broker.delays_delivery() {
                let wait = (eta - Utc::now()).to_std().unwrap_or_default();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = phase.wait_for(draining) => return Settle::Requeue,
                }
            }
        }
        let options = task.options();
        if let Some(limit) = options.rate_limit {
            tokio::select! {
                _ = self.limiter.wait(&h.task, limit) => {}
                _ = phase.wait_for(draining) => return Settle::Requeue,
            }
        }
        let _slot = tokio::select! {
            slot = self.slots.acquire() => match slot { Ok(s) => s, Err(_) => return Settle::Requeue },
            _ = phase.wait_for(draining) => return Settle::Requeue,
        };
        if self.phase() != Phase::Running {
            return Settle::Requeue;
        }
        // Checked again: a revoke may have arrived while the task waited for a slot.
        if let Some(settle) = self.skip_revoked(builder).await {
            return settle;
        }

        let acks_late = options.acks_late || self.config.task_acks_late;
        if !acks_late {
            self.settle(&delivery.tag, Settle::Ack).await;
        }
        if options.track_started && self.keeps_result(h, options) {
            self.store(msg, &builder.started()).await;
        }
        let mut ctx = TaskContext::new(
            h.id.clone(),
            h.task.clone(),
            self.config.hostname.clone(),
            delivery.queue.clone(),
        );
        ctx.retries = h.retries;
        ctx.root_id = h.root_id.clone();
        ctx.parent_id = h.parent_id.clone();
        ctx.group = h.group.clone();
        ctx.eta = h.eta;
        ctx.expires = h.expires;
        ctx.max_retries = options.max_retries;
        let soft_handle = ctx.soft_limit_handle();
        let hard = h.time_limit.and_then(secs).or(options.time_limit);
        let soft = h.soft_time_limit.and_then(secs).or(options.soft_time_limit);

        let (stop_tx, stop_rx) = oneshot::channel();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(h.id.clone(), stop_tx);
        let started = Instant::now();
        let ending = match task.call(msg.args.clone(), msg.kwargs.clone(), ctx) {
            Ok(future) => run_with_limits(future, soft, hard, soft_handle, stop_rx).await,
            Err(arg_error) => {
                Ending::Finished(Err(TaskError::failure("TypeError", arg_error.to_string())))
            }
        };
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&h.id);
        let runtime = started.elapsed().as_secs_f64();
        let keep_result = self.keeps_result(h, options);
        let done = if acks_late { Settle::Ack } else { Settle::Done };

        match ending {
            Ending::Finished(Ok(value)) => {
                info!(task_id = %h.id, "Task {}[{}] succeeded in {runtime:.6}s: {}", h.task, h.id, celeriac_core::repr::repr(&value));
                self.counters.succeeded.fetch_add(1, Ordering::Relaxed);
                if keep_result {
                    after_store(self.store(msg, &builder.success(value)).await, done)
                } else {
                    self.completer.record_finished(&h.id);
                    done
                }
            }
            Ending::Finished(Err(TaskError::Failure {
                exception,
                traceback,
            })) => {
                if options.autoretry_for.contains(&exception.exc_type) {
                    let countdown = match &options.retry_backoff {
                        Some(backoff) => backoff.delay(h.retries),
                        None => options.default_retry_delay,
                    };
                    return self
                        .retry(
                            delivery,
                            msg,
                            builder,
                            options,
                            Some(countdown),
                            Some(exception),
                            traceback,
                            done,
                        )
                        .await;
                }
                let stored = self.fail(builder, &exception, traceback, runtime).await;
                after_store(stored, done)
            }
            Ending::Finished(Err(TaskError::Retry {
                countdown,
                eta,
                exception,
                max_retries,
            })) => {
                let mut options = options.clone();
                if max_retries.is_some() {
                    options.max_retries = max_retries;
                }
                let countdown = match (countdown, eta) {
                    (Some(c), _) => Some(c),
                    (None, Some(eta)) => Some((eta - Utc::now()).to_std().unwrap_or_default()),
                    (None, None) => None,
                };
                self.retry(
                    delivery, msg, builder, &options, countdown, exception, None, done,
                )
                .await
            }
            Ending::Finished(Err(TaskError::Reject { reason, requeue })) => {
                if requeue && acks_late {
                    info!(task_id = %h.id, "Task {}[{}] rejected and requeued: {reason}", h.task, h.id);
                    return Settle::Requeue;
                }
                warn!(task_id = %h.id, "Task {}[{}] rejected: {reason}", h.task, h.id);
                let exc = ExceptionInfo {
                    exc_type: "Reject".into(),
                    exc_module: "celery.exceptions".into(),
                    exc_message: vec![json!(reason), json!(requeue)],
                };
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                after_store(self.store(msg, &builder.failure(&exc, None)).await, done)
            }
            Ending::Finished(Err(TaskError::Ignore)) => done,
            Ending::Finished(Err(other)) => {
                let exc = ExceptionInfo::new("RuntimeError", other.to_string());
                after_store(self.fail(builder, &exc, None, runtime).await, done)
            }
            Ending::HardTimeLimit(limit) => {
                let exc =
                    ExceptionInfo::new("TimeLimitExceeded", format!("{}", limit.as_secs_f64()));
                error!(task_id = %h.id, "Task {}[{}] hard time limit ({}s) exceeded: stopped", h.task, h.id, limit.as_secs_f64());
                let traceback = format!(
                    "TimeLimitExceeded: task ran longer than {}s",
                    limit.as_secs_f64()
                );
                let stored = self.fail(builder, &exc, Some(traceback), runtime).await;
                after_store(stored, done)
            }
            Ending::Stopped(StopReason::Terminate) => {
                self.counters.revoked.fetch_add(1, Ordering::Relaxed);
                after_store(self.store(msg, &builder.revoked("terminated")).await, done)
            }
            Ending::Stopped(StopReason::Cold) => {
                if acks_late {
                    warn!(task_id = %h.id, "Task {}[{}] stopped by shutdown: returned to its queue", h.task, h.id);
                    Settle::Requeue
                } else {
                    let exc = ExceptionInfo::new(
                        "WorkerLostError",
                        "worker shut down while the task was running",
                    );
                    self.fail(builder, &exc, None, runtime).await;
                    Settle::Done
                }
            }
        }
    }

    /// Whether the task's states are stored: not when the message, the task or the worker's
    /// `task_ignore_result` says to ignore them.
    fn keeps_result(&self, h: &celeriac_core::message::TaskHeaders, options: &TaskOptions) -> bool {
        !(h.ignore_result || options.ignore_result || self.config.task_ignore_result)
    }

    /// Waits while another delivery of task `id` is in this worker's hands; false when the
    /// worker started shutting down meanwhile.
    async fn wait_not_in_hand(&self, id: &str, phase: &mut watch::Receiver<Phase>) -> bool {
        let in_hand = || {
            self.in_hand
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(id)
        };
        if !in_hand() {
            return true;
        }
        info!(task_id = %id, "Task {id} redelivered while a copy is in hand here: waiting for it");
        loop {
            // Registered before the check, so a release in between is not missed.
            let released = self.released.notified();
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
    async fn already_finished(&self, h: &celeriac_core::message::TaskHeaders) -> bool {
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
    async fn skip_revoked(&self, builder: &MetaBuilder<'_>) -> Option<Settle> {
        let h = &builder.msg.headers;
        if !self.is_revoked(&h.id) {
            return None;
        }
        info!(task_id = %h.id, "Task {}[{}] revoked: not run", h.task, h.id);
        self.counters.revoked.fetch_add(1, Ordering::Relaxed);
        let stored = self.store(builder.msg, &builder.revoked("revoked")).await;
        Some(after_store(stored, Settle::Ack))
    }

    async fn fail(
        &self,
        builder: &MetaBuilder<'_>,
        exc: &ExceptionInfo,
        traceback: Option<String>,
        runtime: f64,
    ) -> Stored {
        let h = &builder.msg.headers;
        error!(task_id = %h.id, "Task {}[{}] raised unexpected: {} (after {runtime:.3}s)", h.task, h.id, exc.repr());
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.store(builder.msg, &builder.failure(exc, traceback))
            .await
    }

    /// Republishes the call with the same id and `retries + 1`, due after `countdown`, then
    /// stores RETRY. Past `max_retries` the task fails with its last error instead.
    #[allow(clippy::too_many_arguments)]
    async fn retry(
        &self,
        delivery: &Delivery,
        msg: &TaskMessage,
        builder: &MetaBuilder<'_>,
        options: &TaskOptions,
        countdown: Option<Duration>,
        exception: Option<ExceptionInfo>,
        traceback: Option<String>,
        done: Settle,
    ) -> Settle {
        let h = &msg.headers;
        if options.max_retries.is_some_and(|max| h.retries >= max) {
            let exc = exception.unwrap_or_else(|| {
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
            let stored = self.fail(builder, &exc, traceback, 0.0).await;
            return after_store(stored, done);
        }
        let countdown = countdown.unwrap_or(options.default_retry_delay);
        let eta = Utc::now() + chrono::Duration::from_std(countdown).unwrap_or_default();
        let mut next = msg.clone();
        next.headers.retries = h.retries + 1;
        next.headers.eta = Some(eta);
        next.headers.parent_id = Some(h.id.clone());
        // Transport properties of the old delivery (its TTL, tags) must not ride along.
        next.properties.extra.clear();
        let publish = Publish {
            queue: delivery.queue.clone(),
            priority: Some(msg.properties.priority),
            not_before: Some(eta),
            message: next.to_raw(),
        };
        let exc = exception.unwrap_or_else(|| {
            ExceptionInfo::new("Retry", format!("Retry in {}s", countdown.as_secs_f64()))
                .with_module("celery.exceptions")
        });
        info!(task_id = %h.id, "Task {}[{}] retry: Retry in {}s: {}", h.task, h.id, countdown.as_secs_f64(), exc.repr());
        self.counters.retried.fetch_add(1, Ordering::Relaxed);
        // RETRY goes in before the new message exists: stored after, it could overwrite the
        // final state of a retry that already ran (only SUCCESS is protected).
        if self.keeps_result(h, options) {
            self.store(msg, &builder.retry(&exc, traceback)).await;
        }
        if let Err(e) = self.broker.publish(publish).await {
            error!(task_id = %h.id, "could not publish the retry of {}[{}]: {e}", h.task, h.id);
            // Not acked yet with late ack: put it back rather than lose it.
            return match done {
                Settle::Ack => Settle::Requeue,
                other => other,
            };
        }
        done
    }
}

/// A message whose final state could not be stored is not acked: it goes back to its queue
/// (and runs again) rather than leave its caller waiting forever. Already-acked (early-ack)
/// messages cannot be taken back.
fn after_store(stored: Stored, settle: Settle) -> Settle {
    match (stored, settle) {
        (Stored::No, Settle::Ack) => Settle::Requeue,
        (_, settle) => settle,
    }
}

fn secs(s: f64) -> Option<Duration> {
    (s.is_finite() && s > 0.0).then(|| Duration::from_secs_f64(s))
}

/// Counts a delivery of a task id as in this worker's hands until dropped (after its result
/// is stored).
struct InHand<'a> {
    shared: &'a Shared,
    id: String,
}

impl<'a> InHand<'a> {
    fn enter(shared: &'a Shared, id: &str) -> InHand<'a> {
        *shared
            .in_hand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default() += 1;
        InHand {
            shared,
            id: id.to_string(),
        }
    }
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        let mut in_hand = self
            .shared
            .in_hand
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_hand.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                in_hand.remove(&self.id);
            }
        }
        drop(in_hand);
        self.shared.released.notify_waiters();
    }
}
