//! The celeriac worker: takes messages from a [`Broker`](celeriac_core::Broker), runs the
//! registered tasks in a pool (`async`, `threads`, `process`, `solo`), and turns every
//! ending (value, error, panic, timeout, revoke, a dead child) into a stored state.
//!
//! Most users start it through `celeriac_cli::run(app)`; the facade's `App::worker()` builds
//! one from configuration. `docs/architecture.md` shows its components; `docs/pools.md`
//! what each pool enforces.

mod autoscale;
mod builtins;
mod capacity;
mod completer;
mod config;
mod consumer;
mod control_commands;
mod control_queues;
mod events;
mod followups;
mod hooks;
mod keepalive;
mod limiter;
mod mailbox;
mod outcome;
mod pool;
mod registry;
mod remote_control;
mod request;
mod results;
mod revocations;
mod shutdown;
mod tracking;
mod worker;

pub use autoscale::{AutoscaleConfig, Autoscaler, Decision, LoadSensors, Readings, SystemSensors};
pub use config::{WorkerConfig, WorkerError};
pub use hooks::{HookResult, Hooks, ProcessInfo, PublishInfo, TaskInfo, WorkerInfo};
pub use pool::process::child::{pool_child_index, run_child, CHILD_ENV};
pub use pool::process::ChildCommand;
pub use pool::{Optimization, PoolKind, PoolStats, StopReason};
pub use registry::{ErasedTask, Registry};
pub use shutdown::ShutdownHandle;
pub use worker::{Counters, PoolWatch, Worker};
