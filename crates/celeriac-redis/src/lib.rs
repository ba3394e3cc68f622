//! Redis for celeriac, laid out exactly as kombu's Redis transport and Celery's Redis result
//! backend, so celeriac and Python Celery processes share queues and results.
//!
//! - [`RedisBroker`]: queues as lists with priority sub-lists, `_kombu.binding.*` sets,
//!   `unacked` / `unacked_index` / `unacked_mutex` ack emulation with the visibility-timeout
//!   restore sweep, fanout via PUBLISH.
//! - [`RedisBackend`]: `celery-task-meta-<id>` written with SETEX and PUBLISHed, so a waiting
//!   Python `AsyncResult.get()` wakes.
//!
//! Both also offer beat's leader lease and last runs (`beat_store()`, `beat.rs`): one
//! script per atomic step, timed by the server's clock.
//!
//! Every key name and Lua script lives in `keys.rs` with its contract.

mod backend;
mod beat;
mod broker;
mod keys;
mod url;

pub use backend::RedisBackend;
pub use broker::RedisBroker;
pub use url::{connect, redact, RedisUrl};
