//! Error types, one per operation family, each with a matchable kind.

use std::fmt;

/// What went wrong, in a form callers can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The URL or configuration is not usable.
    InvalidConfig,
    /// The engine could not be reached or the connection broke.
    Unreachable,
    /// The engine answered but the operation failed (disk full, locked, constraint...).
    Storage,
    /// Bytes on the wire or in the store are not what the protocol says.
    Protocol,
    /// The engine does not offer this capability.
    Unsupported,
    /// The component was already stopped.
    Closed,
    /// Waiting for something took longer than allowed.
    Timeout,
    /// Turned off by configuration (`result_backend = "disabled"`).
    Disabled,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Storage => "storage error",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Closed => "closed",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Disabled => "disabled",
        };
        f.write_str(s)
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

macro_rules! family_error {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            kind: ErrorKind,
            message: String,
            source: Option<Source>,
        }

        impl $name {
            pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
                Self { kind, message: message.into(), source: None }
            }

            pub fn with_source(
                kind: ErrorKind,
                message: impl Into<String>,
                source: impl std::error::Error + Send + Sync + 'static,
            ) -> Self {
                Self { kind, message: message.into(), source: Some(Box::new(source)) }
            }

            pub fn kind(&self) -> ErrorKind {
                self.kind
            }

            pub fn message(&self) -> &str {
                &self.message
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($what, " {}: {}"), self.kind, self.message)?;
                if let Some(source) = &self.source {
                    write!(f, ": {source}")?;
                }
                Ok(())
            }
        }

        impl std::error::Error for $name {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
            }
        }
    };
}

family_error!(
    /// A broker operation failed (publish, fetch, ack, declare, purge...).
    BrokerError,
    "broker"
);
family_error!(
    /// A result-backend operation failed (store, get, wait, forget).
    BackendError,
    "result backend"
);

/// A message could not be decoded as a Celery task message. Every variant names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("content type {0:?} is refused (only application/json is accepted; pickle and yaml are never deserialized)")]
    UnsupportedContentType(String),
    #[error("content encoding {0:?} is not supported")]
    UnsupportedEncoding(String),
    #[error("compression {0:?} is not supported")]
    UnsupportedCompression(String),
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("message has no task name (no `task` header and no protocol 1 body)")]
    MissingTask,
    #[error("message has no task id (`id` header missing or not a string)")]
    MissingId,
    #[error("body has the wrong shape: {0}")]
    BadBody(String),
    #[error("header `{name}` is invalid: {reason}")]
    BadHeader { name: &'static str, reason: String },
    #[error("kombu typed value is invalid: {0}")]
    BadTypedValue(String),
    #[error("canvas is invalid: {0}")]
    BadCanvas(String),
}

impl ProtocolError {
    /// A short machine-readable name for dead-letter reasons and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::UnsupportedContentType(_) => "content-type-refused",
            ProtocolError::UnsupportedEncoding(_) => "content-encoding-refused",
            ProtocolError::UnsupportedCompression(_) => "compression-refused",
            ProtocolError::NotJson(_) => "not-json",
            ProtocolError::MissingTask => "missing-task",
            ProtocolError::MissingId => "missing-id",
            ProtocolError::BadBody(_) => "bad-body",
            ProtocolError::BadHeader { .. } => "bad-header",
            ProtocolError::BadTypedValue(_) => "bad-typed-value",
            ProtocolError::BadCanvas(_) => "bad-canvas",
        }
    }
}
