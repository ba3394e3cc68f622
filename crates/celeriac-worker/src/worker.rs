//! The worker: its components and their lifecycle. The consumer fills the prefetch window
//! (`consumer.rs`); each delivery becomes a request (`request.rs`) whose body runs in the
//! pool (`pool/`) and whose ending becomes an outcome (`outcome.rs`) stored by the
//! completer (`completer.rs`); background components keep leases and revocations current
//! (`keepalive.rs`) and resize the pool (`autoscale.rs`).
//!
//! Shutdown: the first request stops fetching, returns messages that have not started, and
//! waits up to `shutdown_timeout` for running tasks; a second request (or the deadline)
//! stops running tasks at once, and every unfinished late-ack task goes back to its queue.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use celeriac_core::broker::ConsumerSpec;
use celeriac_core::canvas::{FixedQueue, Router};
use celeriac_core::{Broker, Consumer, DeliveryTag, ResultBackend};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::autoscale::Autoscaler;
use crate::capacity::Capacity;
use crate::completer::Completer;
use crate::consumer::{ack_loop, fetch_loop, IN_FLIGHT_PER_PLACE};
use crate::hooks::{Hooks, WorkerInfo};
use crate::limiter::RateLimiter;
use crate::pool::{self, Pool, PoolStats};
use crate::registry::Registry;
use crate::request::InHandIds;
use crate::revocations::Revoked;
use crate::shutdown::{Phase, ShutdownHandle};
use crate::{WorkerConfig, WorkerError};

/// Celery's `task_default_queue`.
const DEFAULT_QUEUE: &str = "celery";

/// Counters a worker keeps (read them through [`Worker::stats`]).
#[derive(Debug, Default)]
pub struct Counters {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub revoked: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// Reads the pool of a running worker (its size, children, busy slots).
#[derive(Clone, Default)]
pub struct PoolWatch(Arc<OnceLock<Arc<dyn Pool>>>);

impl PoolWatch {
    /// `None` until the worker has started its pool.
    pub fn stats(&self) -> Option<PoolStats> {
        self.0.get().map(|pool| pool.stats())
    }
}

pub struct Worker {
    pool_watch: PoolWatch,
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    registry: Arc<Registry>,
    hooks: Arc<Hooks>,
    router: Arc<dyn Router>,
    config: WorkerConfig,
    phase: Arc<watch::Sender<Phase>>,
    counters: Arc<Counters>,
}

/// What `Worker::start` hands to `run`: the shared state and the receiving ends its
/// background tasks drain.
struct Started {
    shared: Arc<Shared>,
    acks: mpsc::UnboundedReceiver<DeliveryTag>,
    events: mpsc::UnboundedReceiver<celeriac_core::events::WireEvent>,
}

/// What the worker's components share while it runs.
pub(crate) struct Shared {
    pub broker: Arc<dyn Broker>,
    pub consumer: Arc<dyn Consumer>,
    pub completer: Completer,
    pub registry: Arc<Registry>,
    pub hooks: Arc<Hooks>,
    /// Where follow-ups (chain steps, callbacks, chord bodies) go when their signature
    /// names no queue.
    pub router: Arc<dyn Router>,
    pub config: WorkerConfig,
    pub limiter: RateLimiter,
    pub pool: Arc<dyn Pool>,
    /// The prefetch window: pool size × messages reserved per slot.
    pub window: Capacity,
    /// Deliveries in hand at most (`consumer.rs`).
    pub in_flight: Capacity,
    pub revoked: Revoked,
    pub in_hand: InHandIds,
    pub tracked: crate::tracking::Tracked,
    /// `--autoscale` bounds as remote control last set them (max, min).
    pub autoscale_bounds: std::sync::Mutex<Option<(usize, usize)>>,
    pub acks: mpsc::UnboundedSender<DeliveryTag>,
    pub phase: watch::Receiver<Phase>,
    pub shutdown: ShutdownHandle,
    pub counters: Arc<Counters>,
    /// The Lamport clock of remote-control messages.
    pub clock: AtomicU64,
    pub started: std::time::Instant,
    pub events: crate::events::EventSender,
    /// Tasks started here, by name (`stats`' `total`).
    pub accepted: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Worker {
    pub fn new(
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
        registry: Arc<Registry>,
        config: WorkerConfig,
    ) -> Self {
        let (phase, _) = watch::channel(Phase::Running);
        let registry = if registry.has_builtins() {
            registry
        } else {
            Arc::new((*registry).clone().with_builtins())
        };
        Worker {
            pool_watch: PoolWatch::default(),
            broker,
            backend,
            registry,
            hooks: Arc::default(),
            router: Arc::new(FixedQueue(DEFAULT_QUEUE.into())),
            config,
            phase: Arc::new(phase),
            counters: Arc::default(),
        }
    }

    /// The hooks to call (Celery's signals).
    pub fn with_hooks(mut self, hooks: Arc<Hooks>) -> Self {
        self.hooks = hooks;
        self
    }

    /// How follow-ups are routed (the app's `task_routes`, task queues and default queue);
    /// without it they go to `celery` unless their signature names a queue.
    pub fn with_router(mut self, router: Arc<dyn Router>) -> Self {
        self.router = router;
        self
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

    /// A handle that reads the pool's state while the worker runs.
    pub fn pool_watch(&self) -> PoolWatch {
        self.pool_watch.clone()
    }

    /// A start-up banner in the spirit of Celery's.
    pub fn banner(&self, app_name: &str) -> String {
        let c = &self.config;
        let mut tasks = String::new();
        for name in self.registry.names() {
            tasks.push_str(&format!("  . {name}\n"));
        }
        let concurrency = match &c.autoscale {
            Some(a) => format!("{{min={}, max={}}} (autoscale)", a.min, a.max),
            None => c.initial_size().to_string(),
        };
        format!(
            " -------------- {host} v{version}\n\
             --- ***** -----\n\
             -- ******* ---- [config]\n\
             - *** --- * --- .> app:         {app_name}\n\
             - ** ---------- .> transport:   {broker}\n\
             - ** ---------- .> results:     {backend}\n\
             - *** --- * --- .> concurrency: {concurrency} ({pool})\n\
             -- ******* ---- .> prefetch:    {prefetch} ({per_slot} per slot)\n\
             --- ***** -----\n\
             -------------- [queues]\n{queues}\n[tasks]\n{tasks}",
            host = c.hostname,
            version = env!("CARGO_PKG_VERSION"),
            broker = self.broker.display_url(),
            backend = self.backend.display_url(),
            pool = c.pool.name(),
            prefetch = c.initial_size() * c.reserved_per_slot(),
            per_slot = c.reserved_per_slot(),
            queues = c
                .queues
                .iter()
                .map(|q| format!("                .> {q}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    fn info(&self) -> WorkerInfo<'_> {
        WorkerInfo {
            hostname: &self.config.hostname,
            queues: &self.config.queues,
            pool: self.config.pool.name(),
            concurrency: self.config.initial_size(),
        }
    }

    async fn start(&self) -> Result<Started, WorkerError> {
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
                    prefetch: config.max_size() * config.reserved_per_slot(),
                })
                .await
                .map_err(WorkerError::Broker)?,
        );
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let (events, event_rx) = crate::events::EventSender::new(config.send_task_events);
        let pool = pool::build(&config);
        let _ = self.pool_watch.0.set(pool.clone());
        let shared = Arc::new(Shared {
            broker: self.broker.clone(),
            consumer,
            completer: Completer::new(
                self.backend.clone(),
                config.result_store_retry_for,
                config.result_expires,
                config.finished_ids_kept,
                self.phase.subscribe(),
            ),
            registry: self.registry.clone(),
            hooks: self.hooks.clone(),
            router: self.router.clone(),
            limiter: RateLimiter::default(),
            pool,
            window: Capacity::new(config.initial_size() * config.reserved_per_slot()),
            in_flight: Capacity::new(
                config.max_size() * config.reserved_per_slot() * IN_FLIGHT_PER_PLACE,
            ),
            revoked: Revoked::default(),
            in_hand: InHandIds::default(),
            tracked: Default::default(),
            autoscale_bounds: std::sync::Mutex::new(
                config.autoscale.as_ref().map(|a| (a.max, a.min)),
            ),
            acks: ack_tx,
            phase: self.phase.subscribe(),
            shutdown: self.shutdown_handle(),
            counters: self.counters.clone(),
            clock: AtomicU64::new(0),
            started: std::time::Instant::now(),
            accepted: Default::default(),
            events,
            config,
        });
        Ok(Started {
            shared,
            acks: ack_rx,
            events: event_rx,
        })
    }

    /// Runs until shut down through a [`ShutdownHandle`].
    pub async fn run(self) -> Result<(), WorkerError> {
        self.hooks.emit_worker_init(&self.info());
        let Started {
            shared,
            acks,
            events,
        } = self.start().await?;
        shared.sync_revocations().await;
        let acker = tokio::spawn(ack_loop(shared.consumer.clone(), acks));
        let publisher = tokio::spawn(crate::events::publish(
            self.broker.clone(),
            shared.config.hostname.clone(),
            events,
        ));
        shared.worker_event("worker-online", crate::events::HEARTBEAT.as_secs_f64());
        let mut background = JoinSet::new();
        background.spawn(crate::keepalive::run(shared.clone()));
        background.spawn(crate::mailbox::run(shared.clone()));
        if shared.config.heartbeats {
            background.spawn(crate::events::heartbeats(shared.clone()));
        }
        if let Some(autoscale) = shared.config.autoscale.clone() {
            background.spawn(crate::autoscale::follow(
                shared.clone(),
                Autoscaler::new(autoscale),
            ));
        }
        info!(hostname = %shared.config.hostname, queues = ?shared.config.queues, pool = shared.config.pool.name(), "worker ready");
        self.hooks.emit_worker_ready(&self.info());

        let mut handlers = JoinSet::new();
        fetch_loop(&shared, &mut handlers).await;
        self.hooks.emit_worker_shutting_down(&self.info());
        self.drain(&shared, &mut handlers).await;

        background.shutdown().await;
        shared.pool.shutdown().await;
        let pool = shared.pool.stats();
        info!(
            pool = pool.kind,
            size = pool.size,
            children_started = pool.children_started,
            "pool stopped"
        );
        let consumer = shared.consumer.clone();
        shared.worker_event("worker-offline", crate::events::HEARTBEAT.as_secs_f64());
        // Every handler has finished; dropping the last `Shared` drops the ack sender, so the
        // acker flushes what is queued and ends.
        drop(shared);
        let _ = acker.await;
        // The events channel closed with `Shared`: the publisher sends what is left.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), publisher).await;
        if let Err(e) = consumer.close().await {
            error!("could not return held messages to the broker: {e}");
        }
        info!("worker stopped");
        self.hooks.emit_worker_shutdown(&self.info());
        Ok(())
    }

    /// Waits for running tasks until the deadline or a second signal, then stops the rest.
    async fn drain(&self, shared: &Shared, handlers: &mut JoinSet<()>) {
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
            shared.pool.terminate_all();
            while handlers.join_next().await.is_some() {}
        }
    }
}

impl Shared {
    /// Tasks running or waiting here, plus those ready in the consumed queues (where the
    /// broker can count them).
    pub(crate) async fn demand(&self) -> usize {
        let mut demand = self.in_hand.len();
        if let Some(stats) = self.broker.queue_stats() {
            if let Ok(lengths) = stats.queue_lengths(&self.config.queues).await {
                demand += lengths.iter().map(|l| l.ready as usize).sum::<usize>();
            }
        }
        demand
    }

    /// Counts a task started here under its name.
    pub(crate) fn accept(&self, name: &str) {
        let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        *accepted.entry(name.to_string()).or_default() += 1;
    }

    pub(crate) fn accepted_by_name(&self) -> std::collections::BTreeMap<String, u64> {
        self.accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A warm shutdown, as a signal asks for.
    pub(crate) fn request_shutdown(&self) {
        self.shutdown.graceful();
    }

    /// Resizes the pool and the prefetch window with it.
    pub(crate) fn resize_pool(&self, to: usize) {
        let from = self.pool.size();
        self.pool.resize(to);
        let per_slot = self.config.reserved_per_slot();
        self.window
            .resize(from * per_slot, self.pool.size() * per_slot);
    }
}
