//! The facade's errors: one for setting up and sending, one for reading results.

use celeriac_core::state::{ExceptionInfo, TaskState};
use celeriac_core::{BackendError, BrokerError};

/// Setting up an app, connecting, or sending a task failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (bad URL, unknown scheme...).
    Config(String),
    Broker(BrokerError),
    Backend(BackendError),
    /// Arguments or options could not be encoded.
    Encode(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(m) => write!(f, "configuration error: {m}"),
            Error::Broker(e) => write!(f, "{e}"),
            // "results are disabled: configure a result backend ...", with no prefix.
            Error::Backend(e) if e.kind() == celeriac_core::ErrorKind::Disabled => {
                f.write_str(e.message())
            }
            Error::Backend(e) => write!(f, "{e}"),
            Error::Encode(m) => write!(f, "cannot encode the call: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Broker(e) => Some(e),
            Error::Backend(e) => Some(e),
            _ => None,
        }
    }
}

impl From<BrokerError> for Error {
    fn from(e: BrokerError) -> Self {
        Error::Broker(e)
    }
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Self {
        Error::Backend(e)
    }
}

/// The exception a task ended with, as the worker stored it (Python or Rust worker alike).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteError {
    pub state: TaskState,
    /// `ValueError`, `TimeLimitExceeded`, `TaskRevokedError`...
    pub exc_type: String,
    pub exc_module: String,
    pub message: String,
    pub traceback: Option<String>,
}

impl RemoteError {
    pub(crate) fn from_exception(
        state: TaskState,
        exc: ExceptionInfo,
        traceback: Option<String>,
    ) -> Self {
        RemoteError {
            state,
            message: exc.message(),
            exc_type: exc.exc_type,
            exc_module: exc.exc_module,
            traceback,
        }
    }
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message)
    }
}

impl std::error::Error for RemoteError {}

/// Reading a result failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResultError {
    /// The task did not finish in time; `state` is the last one seen.
    Timeout {
        task_id: String,
        state: TaskState,
    },
    /// The task ended with FAILURE or REVOKED.
    Task(RemoteError),
    /// The stored value does not decode into the expected output type.
    Decode {
        task_id: String,
        reason: String,
    },
    Backend(Error),
}

impl std::fmt::Display for ResultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResultError::Timeout { task_id, state } => {
                write!(f, "task {task_id} not ready in time (state {state})")
            }
            ResultError::Task(e) => write!(f, "task failed with {e}"),
            ResultError::Decode { task_id, reason } => {
                write!(f, "result of task {task_id} does not decode: {reason}")
            }
            ResultError::Backend(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ResultError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResultError::Task(e) => Some(e),
            ResultError::Backend(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for ResultError {
    fn from(e: Error) -> Self {
        ResultError::Backend(e)
    }
}

impl From<BackendError> for ResultError {
    fn from(e: BackendError) -> Self {
        ResultError::Backend(Error::Backend(e))
    }
}
