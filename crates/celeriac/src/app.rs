//! The app: configuration, the task registry, and the connections opened from them.

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::backend::mark_revoked_if_not_started;
use celeriac_core::broker::Signal;
use celeriac_core::task::{Task, TaskOptions};
use celeriac_core::{Broker, ResultBackend};
use celeriac_worker::{Hooks, Registry, Worker, WorkerConfig};
use tokio::sync::OnceCell;

use crate::config::{Config, ConfigError, ConfigSources};
use crate::connect::{self, Connections};
use crate::error::Error;

/// An app: cheap to clone, shared by clients and workers. Connections open on first use.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    name: String,
    config: Config,
    registry: Arc<Registry>,
    hooks: Arc<Hooks>,
    beat_schedule: Vec<celeriac_beat::Entry>,
    connections: OnceCell<Connections>,
    oid: String,
}

/// The last clone of an app closes its connections in the background, when it is dropped
/// inside a tokio runtime that keeps running (dropping never blocks) and nothing else (a
/// worker) still uses them. A process about to exit calls [`App::close`] instead: a runtime
/// shutting down may not run the background close.
impl Drop for AppInner {
    fn drop(&mut self) {
        let Some(connections) = self.connections.take() else {
            return;
        };
        if Arc::strong_count(&connections.broker) > 1 || Arc::strong_count(&connections.backend) > 1
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let _ = connections.backend.close().await;
            let _ = connections.broker.close().await;
        });
    }
}

pub struct AppBuilder {
    name: String,
    config: Config,
    registry: Registry,
    hooks: Hooks,
    beat_schedule: Vec<celeriac_beat::Entry>,
}

impl AppBuilder {
    /// Sets `broker_url` (a file, `CELERIAC_BROKER_URL` or `--broker` loaded later wins).
    pub fn broker_url(mut self, url: impl Into<String>) -> Self {
        self.config.broker_url = Some(url.into());
        self
    }

    /// Sets `result_backend` (a file, `CELERIAC_RESULT_BACKEND` or `--result-backend` loaded
    /// later wins).
    pub fn result_backend(mut self, url: impl Into<String>) -> Self {
        self.config.result_backend = Some(url.into());
        self
    }

    /// Registers a task with its own default options.
    pub fn task<T: Task>(mut self) -> Self {
        self.registry.register::<T>();
        self
    }

    /// Registers a task with options changed from its defaults.
    pub fn task_with<T: Task>(mut self, change: impl FnOnce(&mut TaskOptions)) -> Self {
        let mut options = T::options();
        change(&mut options);
        self.registry.register_with_options::<T>(options);
        self
    }

    /// Adds a `task_routes` entry: tasks matching `pattern` (`*` wildcards) go to `queue`.
    pub fn route(mut self, pattern: impl Into<String>, queue: impl Into<String>) -> Self {
        self.config.task_routes.push((pattern.into(), queue.into()));
        self
    }

    /// Changes any other setting.
    pub fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Layers a configuration file, the environment and flags over what the code set so
    /// far, as the command line does: `.load_config(&ConfigSources::from_process())?`.
    pub fn load_config(mut self, sources: &ConfigSources) -> Result<Self, ConfigError> {
        self.config = self.config.load(sources)?.into_config();
        Ok(self)
    }

    /// Registers hooks (Celery's signals): `.hooks(|h| { h.task_success(|task, value| {
    /// ..; Ok(()) }); })`. A hook that fails or panics is logged and skipped.
    pub fn hooks(mut self, register: impl FnOnce(&mut Hooks)) -> Self {
        register(&mut self.hooks);
        self
    }

    /// Adds a periodic task to the app's beat schedule (`my-app beat`, `worker -B`).
    pub fn beat(mut self, entry: celeriac_beat::Entry) -> Self {
        self.beat_schedule.push(entry);
        self
    }

    pub fn build(self) -> App {
        App {
            inner: Arc::new(AppInner {
                name: self.name,
                config: self.config,
                registry: Arc::new(self.registry.with_builtins()),
                hooks: Arc::new(self.hooks),
                beat_schedule: self.beat_schedule,
                connections: OnceCell::new(),
                oid: celeriac_core::message::new_id(),
            }),
        }
    }
}

impl App {
    pub fn builder(name: impl Into<String>) -> AppBuilder {
        AppBuilder {
            name: name.into(),
            config: Config::default(),
            registry: Registry::new(),
            hooks: Hooks::default(),
            beat_schedule: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The entries given to [`AppBuilder::beat`].
    pub fn beat_schedule(&self) -> &[celeriac_beat::Entry] {
        &self.inner.beat_schedule
    }

    /// The app's id, sent as `reply_to` like Celery's app `oid`.
    pub(crate) fn oid(&self) -> &str {
        &self.inner.oid
    }

    /// A copy of this app with settings changed (connections are opened anew).
    pub fn reconfigured(&self, change: impl FnOnce(&mut Config)) -> App {
        let mut config = self.inner.config.clone();
        change(&mut config);
        App {
            inner: Arc::new(AppInner {
                name: self.inner.name.clone(),
                config,
                registry: self.inner.registry.clone(),
                hooks: self.inner.hooks.clone(),
                beat_schedule: self.inner.beat_schedule.clone(),
                connections: OnceCell::new(),
                // A new id: two apps listening on one rpc:// reply queue would split its
                // results between them.
                oid: celeriac_core::message::new_id(),
            }),
        }
    }

    async fn connections(&self) -> Result<&Connections, Error> {
        self.inner
            .connections
            .get_or_try_init(|| async {
                let config = &self.inner.config;
                let broker = config.broker_connect_url().map_err(Error::Config)?;
                let mut backend = config.resolved_backend_url();
                // A backend that is the broker's own store stays the same store.
                if backend == config.resolved_broker_url() {
                    backend = broker.clone();
                }
                let context = connect::BackendContext {
                    reply_queue: &self.inner.oid,
                    result_expires: self.inner.config.result_expires,
                };
                connect::open(&broker, &backend, context).await
            })
            .await
    }

    /// Finishes pending publishes and closes the app's connections (the broker's publisher
    /// connection, the result backend's). Sending afterwards fails; dropping an app without
    /// closing it lets the runtime end its connections abruptly, which can lose
    /// fire-and-forget publishes (`confirm_publish=false`) still in flight.
    pub async fn close(&self) -> Result<(), Error> {
        let Some(c) = self.inner.connections.get() else {
            return Ok(());
        };
        let backend = c.backend.close().await;
        c.broker.close().await?;
        Ok(backend?)
    }

    /// Opens the broker and result backend now, reporting a bad URL or an unreachable engine.
    pub async fn connect(&self) -> Result<(), Error> {
        self.connections().await.map(|_| ())
    }

    pub async fn broker(&self) -> Result<Arc<dyn Broker>, Error> {
        Ok(self.connections().await?.broker.clone())
    }

    pub async fn backend(&self) -> Result<Arc<dyn ResultBackend>, Error> {
        Ok(self.connections().await?.backend.clone())
    }

    /// The worker settings this app's configuration gives, before command-line changes.
    pub fn worker_config(&self) -> WorkerConfig {
        let c = &self.inner.config;
        let mut w = WorkerConfig {
            queues: vec![c.task_default_queue.clone()],
            ..WorkerConfig::default()
        };
        if let Some(n) = c.worker_concurrency {
            w.concurrency = n;
        }
        w.prefetch_multiplier = c.worker_prefetch_multiplier;
        w.result_expires = c.result_expires;
        w.result_extended = c.result_extended;
        w.shutdown_timeout = c.worker_shutdown_timeout;
        w.task_acks_late = c.task_acks_late;
        w.task_ignore_result = c.task_ignore_result;
        w.pool = c.worker_pool;
        w.max_tasks_per_child = c.worker_max_tasks_per_child;
        w.max_memory_per_child_kib = c.worker_max_memory_per_child;
        w.time_limit = c.task_time_limit;
        w.soft_time_limit = c.task_soft_time_limit;
        w.send_task_events = c.worker_send_task_events;
        w.remote_control = c.worker_enable_remote_control;
        w
    }

    /// A worker for this app's tasks; run it with [`Worker::run`], stop it with its
    /// [`ShutdownHandle`](celeriac_worker::ShutdownHandle).
    pub async fn worker(&self, config: WorkerConfig) -> Result<Worker, Error> {
        let c = self.connections().await?;
        Ok(Worker::new(
            c.broker.clone(),
            c.backend.clone(),
            self.inner.registry.clone(),
            config,
        )
        .with_hooks(self.inner.hooks.clone())
        .with_router(Arc::new(self.router())))
    }

    /// The app's routing, for anything applied without a queue of its own.
    pub(crate) fn router(&self) -> crate::routing::AppRouter {
        crate::routing::AppRouter {
            config: self.inner.config.clone(),
            registry: self.inner.registry.clone(),
        }
    }

    /// The hooks registered with [`AppBuilder::hooks`].
    pub fn hooks(&self) -> &Arc<Hooks> {
        &self.inner.hooks
    }

    /// Runs this process as a process-pool child when the worker started it as one (the
    /// environment says so): returns its exit code, or `None` in any other process.
    /// `celeriac_cli::run` calls this first; a binary with its own `main` that uses
    /// `-P process` must too.
    pub fn run_pool_child(&self) -> Option<std::process::ExitCode> {
        celeriac_worker::pool_child_index()?;
        let hooks = self.inner.hooks.clone();
        Some(celeriac_worker::run_child(
            &self.inner.registry,
            move |index| {
                hooks.emit_worker_process_init(&celeriac_worker::ProcessInfo {
                    index,
                    pid: std::process::id(),
                });
            },
        ))
    }

    /// Revokes tasks durably: they never run, on any worker, even after restarts. With
    /// `terminate`, a running one is stopped (SIGTERM to a process-pool child).
    pub async fn revoke(&self, task_ids: &[String], terminate: bool) -> Result<(), Error> {
        self.revoke_with(task_ids, terminate.then_some(Signal::TERM))
            .await
    }

    /// [`App::revoke`] with `terminate=True, signal=...` as Celery's: a process-pool child
    /// running the task gets `signal` (`Signal::KILL` cannot be caught); the other pools
    /// cancel it at its next await whatever the signal.
    pub async fn revoke_with(
        &self,
        task_ids: &[String],
        terminate: Option<Signal>,
    ) -> Result<(), Error> {
        let broker = self.broker().await?;
        let revocations = broker.revocations().ok_or_else(|| {
            Error::Config(format!(
                "broker {} does not support revokes",
                broker.display_url()
            ))
        })?;
        revocations.revoke(task_ids, terminate).await?;
        // A running task keeps its state until the worker ends it; with `terminate` the
        // worker running it records `terminated`, so nothing is written here. Where results
        // go to the sender only (rpc://) or nowhere, the worker that skips the task reports
        // REVOKED itself.
        if terminate.is_some() {
            return Ok(());
        }
        let backend = self.backend().await?;
        for id in task_ids {
            mark_revoked_if_not_started(&*backend, id, self.inner.config.result_expires).await?;
        }
        Ok(())
    }

    /// How long ready results are kept.
    pub fn result_expires(&self) -> Option<Duration> {
        self.inner.config.result_expires
    }
}
