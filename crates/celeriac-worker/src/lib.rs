//! The celeriac worker: takes messages from a [`Broker`](celeriac_core::Broker), runs the
//! registered tasks, and turns every ending (value, error, panic, timeout, revoke) into a
//! stored state.
//!
//! Most users start it through `celeriac_cli::run(app)`; the facade's `App::worker()` builds
//! one from configuration.

mod completer;
mod executor;
mod limiter;
mod registry;
mod results;
mod worker;

pub use registry::{ErasedTask, Registry};
pub use worker::{ShutdownHandle, Worker, WorkerConfig, WorkerError};
