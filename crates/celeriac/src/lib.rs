//! celeriac: Celery's model — tasks, queues, routes, workers, results — in Rust, speaking
//! Celery's wire protocol. With no broker configured everything runs on an embedded, durable
//! SQLite store (`sqlite://celeriac.db`), shared by every process on the machine.
//!
//! ```no_run
//! use celeriac::{task, App};
//! use std::time::Duration;
//!
//! #[task(name = "tasks.add")]
//! async fn add(x: i64, y: i64) -> i64 {
//!     x + y
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let app = App::builder("proj").task::<add>().build();
//! let result = add::delay(&app, 2, 3).await?;           // send
//! assert_eq!(result.get(Duration::from_secs(10)).await?, 5); // a worker runs it
//! # Ok(()) }
//! ```
//!
//! Settings have Celery's names ([`Config`]); deployments layer a `celeriac.toml`, `CELERIAC_*`
//! variables and flags over the code's with [`Config::load`] / [`AppBuilder::load_config`]
//! (`docs/configuration.md`).
//!
//! A worker is the user's own binary: `fn main() { celeriac_cli::run(app()) }` (see
//! `celeriac-cli`), or [`App::worker`] from code.
//!
//! Engines are cargo features, all on by default: `sqlite` (the embedded store), `redis`,
//! `amqp` (RabbitMQ). `default-features = false, features = ["redis"]` builds neither lapin
//! nor SQLite; a URL for an engine left out of the build is an [`Error::Config`] naming the
//! feature it needs.

mod app;
pub mod beat;
pub mod canvas;
mod client;
mod config;
mod connect;
mod error;
mod result;
mod routing;
mod sent_events;

pub use app::{App, AppBuilder};
pub use client::{Call, CallOptions, Signature};
pub use config::{
    setting_names, Config, ConfigEntry, ConfigError, ConfigSources, LoadedConfig, Origin,
};
pub use error::{Error, RemoteError, ResultError};
pub use result::{AsyncResult, GroupResult, Parent, ResultSet};

pub use celeriac_core as core;
pub use celeriac_core::broker::Signal;
pub use celeriac_core::state::{TaskMeta, TaskState};
pub use celeriac_core::task::{Task, TaskContext, TaskError, TaskOptions, VarArgs, VarKwargs};
pub use celeriac_macros::task;
pub use celeriac_worker::pool_child_index;
pub use celeriac_worker::{
    AutoscaleConfig, ChildCommand, HookResult, Hooks, Optimization, PoolKind, ProcessInfo,
    PublishInfo, ShutdownHandle, TaskInfo, Worker, WorkerConfig, WorkerError, WorkerInfo,
};
pub use serde;
pub use serde_json;
