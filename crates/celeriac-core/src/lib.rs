//! The contract of celeriac: what a task message is on the wire, what a task is, and the
//! seams (`Broker`, `Consumer`, `ResultBackend`) every storage engine implements.
//!
//! Nothing here does I/O. Engines (`celeriac-sqlite`, later Redis and AMQP) implement the
//! traits; the worker and the client only ever talk to the traits.
//!
//! ```
//! use celeriac_core::message::{TaskMessage, CallSpec};
//! let msg = TaskMessage::new_call(CallSpec::new("tasks.add").args(vec![2.into(), 3.into()]));
//! let raw = msg.to_raw();
//! let back = TaskMessage::from_raw(&raw).unwrap();
//! assert_eq!(back.headers.task, "tasks.add");
//! ```

pub mod backend;
pub mod beat;
pub mod broker;
pub mod canvas;
pub mod control;
pub mod error;
pub mod events;
pub mod json;
pub mod message;
pub mod rate;
pub mod repr;
pub mod state;
pub mod task;
pub mod time;
pub mod url;

pub use backend::ResultBackend;
pub use broker::{Broker, Consumer, Delivery, DeliveryTag, Publish, RawMessage};
pub use error::{BackendError, BrokerError, ErrorKind, ProtocolError};
pub use message::TaskMessage;
pub use state::{ExceptionInfo, TaskMeta, TaskState};
pub use task::{Task, TaskContext, TaskError, TaskOptions};
