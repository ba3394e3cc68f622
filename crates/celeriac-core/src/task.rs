//! What a task is: a typed argument set with a stable name, options, and an async `run`.
//!
//! `#[task]` writes these impls for you; everything it does can be written by hand:
//!
//! ```
//! use celeriac_core::task::{Task, TaskContext, TaskError, ArgError, CallArgs};
//! use serde_json::{Map, Value};
//!
//! struct Add { x: i64, y: i64 }
//!
//! impl Task for Add {
//!     const NAME: &'static str = "tasks.add";
//!     type Output = i64;
//!     fn from_call(args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Self, ArgError> {
//!         let mut call = CallArgs::new(Self::NAME, args, kwargs, &["x", "y"])?;
//!         let x = call.take("x", "i64")?;
//!         let y = call.take("y", "i64")?;
//!         call.finish()?;
//!         Ok(Add { x, y })
//!     }
//!     fn to_call(&self) -> (Vec<Value>, Map<String, Value>) {
//!         (vec![self.x.into(), self.y.into()], Map::new())
//!     }
//!     async fn run(self, _ctx: TaskContext) -> Result<i64, TaskError> {
//!         Ok(self.x + self.y)
//!     }
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::rate::RateLimit;
use crate::state::ExceptionInfo;

/// A task type. `Self` is the task's arguments; `NAME` is its identity on the wire.
pub trait Task: Send + Sized + 'static {
    const NAME: &'static str;
    /// Other names this task also answers to (renames).
    const ALIASES: &'static [&'static str] = &[];
    /// The names of its positional parameters, in order (`#[task]` fills it in). Celery's
    /// arity check reads it: an errback taking more than one argument is called in-process
    /// as `(request, exc, traceback)`.
    const PARAMS: &'static [&'static str] = &[];
    /// Whether it takes any number of further positional arguments (`VarArgs`).
    const VARARGS: bool = false;
    type Output: Serialize + DeserializeOwned + Send + 'static;

    fn options() -> TaskOptions {
        TaskOptions::default()
    }

    /// Builds the arguments from a call: positional args, then keyword args by name.
    fn from_call(args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Self, ArgError>;

    /// The arguments as positional JSON values, as they go on the wire.
    fn to_call(&self) -> (Vec<Value>, Map<String, Value>);

    fn run(self, ctx: TaskContext) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;

    /// How the worker runs the task: by default the future of [`Task::run`]. A task whose
    /// body is plain blocking code returns [`TaskBody::Blocking`] so that the worker's pool
    /// runs it on a thread of its own (or in a child process), never on the async executor;
    /// `#[task]` does that for a plain `fn`.
    fn body(self, ctx: TaskContext) -> TaskBody<Self::Output> {
        TaskBody::Async(Box::pin(self.run(ctx)))
    }
}

/// A task body as the worker's pool receives it.
pub enum TaskBody<T> {
    /// Awaited on an async runtime.
    Async(Pin<Box<dyn Future<Output = Result<T, TaskError>> + Send>>),
    /// Called on a thread that may block.
    Blocking(Box<dyn FnOnce() -> Result<T, TaskError> + Send>),
}

impl<T: 'static> TaskBody<T> {
    /// The same body with its output mapped (the registry erases outputs to JSON this way).
    pub fn map<U: 'static>(
        self,
        f: impl FnOnce(Result<T, TaskError>) -> Result<U, TaskError> + Send + 'static,
    ) -> TaskBody<U>
    where
        T: Send,
    {
        match self {
            TaskBody::Async(future) => TaskBody::Async(Box::pin(async move { f(future.await) })),
            TaskBody::Blocking(call) => TaskBody::Blocking(Box::new(move || f(call()))),
        }
    }
}

/// Exponential retry delays for `autoretry_for` (Celery's `retry_backoff`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBackoff {
    /// The first delay; each retry doubles it.
    pub base: Duration,
    pub max: Duration,
    /// Pick a random delay between 0 and the computed one ("full jitter", Celery's default).
    pub jitter: bool,
}

impl RetryBackoff {
    pub fn delay(&self, retries: u32) -> Duration {
        let factor = 2f64.powi(retries.min(30) as i32);
        let full = self.base.mul_f64(factor).min(self.max);
        if self.jitter {
            full.mul_f64(fastrand::f64())
        } else {
            full
        }
    }
}

/// A task's default options; a call may override the ones Celery lets callers override.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    pub queue: Option<String>,
    /// `None`: retry forever.
    pub max_retries: Option<u32>,
    pub default_retry_delay: Duration,
    pub retry_backoff: Option<RetryBackoff>,
    /// Error kinds (`exc_type` names) that trigger an automatic retry.
    pub autoretry_for: Vec<String>,
    pub time_limit: Option<Duration>,
    pub soft_time_limit: Option<Duration>,
    pub acks_late: bool,
    /// Celery's flag for late-ack tasks whose worker dies: put the message back (true) or
    /// count it as failed (false). Accepted so Celery task definitions carry over, but a
    /// celeriac worker never loses such a task: every engine delivers the message again (the
    /// embedded store's lease lapses, Redis's restore sweep, AMQP's redelivery), which is
    /// Celery's `true` behaviour whatever this says.
    pub reject_on_worker_lost: bool,
    pub ignore_result: bool,
    pub track_started: bool,
    pub rate_limit: Option<RateLimit>,
    /// Default expiry of a call, from send time.
    pub expires: Option<Duration>,
    pub priority: Option<u8>,
    /// A plain `fn`: runs on the blocking pool, never on the async executor.
    pub blocking: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            queue: None,
            max_retries: Some(3),
            default_retry_delay: Duration::from_secs(180),
            retry_backoff: None,
            autoretry_for: Vec::new(),
            time_limit: None,
            soft_time_limit: None,
            acks_late: false,
            reject_on_worker_lost: false,
            ignore_result: false,
            track_started: false,
            rate_limit: None,
            expires: None,
            priority: None,
            blocking: false,
        }
    }
}

/// Why a task did not return a value. Retry, reject and ignore are values, not strings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TaskError {
    /// The task failed; stored as FAILURE (or retried when its kind is in `autoretry_for`).
    Failure {
        exception: ExceptionInfo,
        traceback: Option<String>,
    },
    /// Run again later with the same id and arguments.
    Retry {
        countdown: Option<Duration>,
        eta: Option<DateTime<Utc>>,
        /// The reason, stored with the RETRY state and used as the failure when retries run out.
        exception: Option<ExceptionInfo>,
        max_retries: Option<u32>,
    },
    /// Refuse the message: requeue it, or drop it and store FAILURE (`Reject`).
    Reject { reason: String, requeue: bool },
    /// Drop the message silently: nothing is stored.
    Ignore,
    /// Celery's `Task.replace(sig)`: the canvas `signature` (a signature dict) runs in this
    /// task's place, with its id, group, chord and follow-ups; this task stores nothing.
    Replace { signature: serde_json::Value },
}

impl TaskError {
    /// A failure with a Python-style exception type (`ValueError`, `KeyError`, or your own).
    pub fn failure(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError::Failure {
            exception: ExceptionInfo::new(exc_type, message),
            traceback: None,
        }
    }

    pub fn with_traceback(self, tb: impl Into<String>) -> Self {
        match self {
            TaskError::Failure { exception, .. } => TaskError::Failure {
                exception,
                traceback: Some(tb.into()),
            },
            other => other,
        }
    }

    pub fn reject(reason: impl Into<String>, requeue: bool) -> Self {
        TaskError::Reject {
            reason: reason.into(),
            requeue,
        }
    }

    /// Celery's `raise self.replace(sig)`: `signature` (a canvas's signature dict, e.g.
    /// `Sig::to_value()`) runs in this task's place.
    pub fn replace(signature: serde_json::Value) -> Self {
        TaskError::Replace { signature }
    }

    /// The error kind name used by `autoretry_for` and stored as `exc_type`.
    pub fn kind(&self) -> &str {
        match self {
            TaskError::Failure { exception, .. } => &exception.exc_type,
            TaskError::Retry { .. } => "Retry",
            TaskError::Reject { .. } => "Reject",
            TaskError::Ignore => "Ignore",
            TaskError::Replace { .. } => "Replace",
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::Failure { exception, .. } => write!(f, "{exception}"),
            TaskError::Retry {
                exception: Some(e), ..
            } => write!(f, "retry: {e}"),
            TaskError::Retry { .. } => write!(f, "retry"),
            TaskError::Reject { reason, requeue } => {
                write!(f, "rejected (requeue={requeue}): {reason}")
            }
            TaskError::Ignore => write!(f, "ignored"),
            TaskError::Replace { signature } => write!(f, "replaced by {signature}"),
        }
    }
}

/// Any error type becomes a failure whose kind is the error's type name, with its source
/// chain as the traceback. (`TaskError` itself is not a `std::error::Error` so that this
/// blanket conversion can exist, as with `anyhow::Error`.)
impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(e: E) -> Self {
        let full = std::any::type_name::<E>();
        let base = full.split('<').next().unwrap_or(full);
        let short = base.rsplit("::").next().unwrap_or(base);
        let mut chain = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            chain.push_str("\ncaused by: ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        TaskError::Failure {
            exception: ExceptionInfo::new(short, e.to_string()).with_module(module_of(base)),
            traceback: Some(format!("{full}: {chain}")),
        }
    }
}

fn module_of(type_path: &str) -> String {
    match type_path.rsplit_once("::") {
        Some((module, _)) => module.replace("::", "."),
        None => "celeriac".into(),
    }
}

/// The arguments did not fit the task's signature. Ends the task as FAILURE (`TypeError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgError {
    #[error("{task}() missing required argument '{name}' ({expected})")]
    Missing {
        task: String,
        name: String,
        expected: String,
    },
    #[error("{task}() argument '{name}' must be {expected}: {reason}")]
    WrongType {
        task: String,
        name: String,
        expected: String,
        reason: String,
    },
    #[error("{task}() takes {max} positional arguments but {given} were given")]
    TooManyPositional {
        task: String,
        max: usize,
        given: usize,
    },
    #[error("{task}() got an unexpected keyword argument '{name}'")]
    UnexpectedKeyword { task: String, name: String },
    #[error("{task}() got multiple values for argument '{name}'")]
    Duplicate { task: String, name: String },
    /// A call that no parameter list describes (a built-in task's malformed canvas).
    #[error("{task}(): {reason}")]
    Invalid { task: String, reason: String },
}

/// Matches a call's positional and keyword arguments to parameter names, as Python does.
pub struct CallArgs {
    task: &'static str,
    slots: Vec<(&'static str, Option<Value>)>,
    rest_args: Vec<Value>,
    rest_kwargs: Map<String, Value>,
}

impl CallArgs {
    pub fn new(
        task: &'static str,
        args: Vec<Value>,
        mut kwargs: Map<String, Value>,
        names: &[&'static str],
    ) -> Result<Self, ArgError> {
        let mut slots: Vec<(&'static str, Option<Value>)> =
            names.iter().map(|n| (*n, None)).collect();
        let mut args = args.into_iter();
        for slot in slots.iter_mut() {
            match args.next() {
                Some(v) => slot.1 = Some(v),
                None => break,
            }
        }
        let rest_args: Vec<Value> = args.collect();
        for slot in slots.iter_mut() {
            if let Some(v) = kwargs.shift_remove(slot.0) {
                if slot.1.is_some() {
                    return Err(ArgError::Duplicate {
                        task: task.into(),
                        name: slot.0.into(),
                    });
                }
                slot.1 = Some(v);
            }
        }
        Ok(CallArgs {
            task,
            slots,
            rest_args,
            rest_kwargs: kwargs,
        })
    }

    /// Takes parameter `name`, decoded as `T` (`expected` names the type in errors).
    pub fn take<T: DeserializeOwned>(&mut self, name: &str, expected: &str) -> Result<T, ArgError> {
        let slot = self.slots.iter_mut().find(|s| s.0 == name);
        let value = slot.and_then(|s| s.1.take());
        match value {
            Some(v) => crate::json::from_value(&v).map_err(|e| ArgError::WrongType {
                task: self.task.into(),
                name: name.into(),
                expected: expected.into(),
                reason: format!("got {}: {e}", crate::repr::repr(&v)),
            }),
            None => {
                // An `Option<T>` parameter may be left out.
                T::deserialize(Value::Null).map_err(|_| ArgError::Missing {
                    task: self.task.into(),
                    name: name.into(),
                    expected: expected.into(),
                })
            }
        }
    }

    /// Takes the positional arguments beyond the named ones (`*args`).
    pub fn take_rest_args(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.rest_args)
    }

    /// Takes the keyword arguments not matched to a name (`**kwargs`).
    pub fn take_rest_kwargs(&mut self) -> Map<String, Value> {
        std::mem::take(&mut self.rest_kwargs)
    }

    /// Fails when arguments were left over.
    pub fn finish(self) -> Result<(), ArgError> {
        if !self.rest_args.is_empty() {
            return Err(ArgError::TooManyPositional {
                task: self.task.into(),
                max: self.slots.len(),
                given: self.slots.len() + self.rest_args.len(),
            });
        }
        if let Some(name) = self.rest_kwargs.keys().next() {
            return Err(ArgError::UnexpectedKeyword {
                task: self.task.into(),
                name: name.clone(),
            });
        }
        Ok(())
    }
}

/// Variadic positional arguments (`*args`) for a task parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct VarArgs(pub Vec<Value>);

/// Variadic keyword arguments (`**kwargs`) for a task parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct VarKwargs(pub Map<String, Value>);

/// Set when the soft time limit passes; a task can poll it or await it. (Wakers are kept
/// here rather than in a runtime's primitive so that core depends on no async runtime.)
#[derive(Debug, Default)]
pub struct SoftLimit {
    exceeded: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
}

impl SoftLimit {
    pub fn trip(&self) {
        self.exceeded.store(true, Ordering::SeqCst);
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        for waker in waiters {
            waker.wake();
        }
    }

    pub fn is_tripped(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }

    fn poll_tripped(&self, waker: &Waker) -> Poll<()> {
        if self.is_tripped() {
            return Poll::Ready(());
        }
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // Checked again under the lock: `trip` takes the list after setting the flag.
        if self.is_tripped() {
            return Poll::Ready(());
        }
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
        Poll::Pending
    }
}

/// What a running task knows about its call.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub id: String,
    pub name: String,
    pub retries: u32,
    pub root_id: Option<String>,
    pub parent_id: Option<String>,
    pub group: Option<String>,
    pub eta: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    /// The worker's node name.
    pub hostname: String,
    /// The queue the message came from.
    pub queue: String,
    pub max_retries: Option<u32>,
    pub(crate) soft_limit: Arc<SoftLimit>,
}

impl TaskContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(id: String, name: String, hostname: String, queue: String) -> Self {
        TaskContext {
            id,
            name,
            retries: 0,
            root_id: None,
            parent_id: None,
            group: None,
            eta: None,
            expires: None,
            hostname,
            queue,
            max_retries: None,
            soft_limit: Arc::new(SoftLimit::default()),
        }
    }

    pub fn soft_limit_handle(&self) -> Arc<SoftLimit> {
        self.soft_limit.clone()
    }

    /// True once the soft time limit has passed; blocking tasks check this between steps.
    pub fn soft_time_limit_exceeded(&self) -> bool {
        self.soft_limit.is_tripped()
    }

    /// Resolves when the soft time limit passes (never, without one). Use it in `select!` to
    /// clean up before the hard limit stops the task.
    pub async fn soft_time_limit(&self) {
        let limit = self.soft_limit.clone();
        std::future::poll_fn(move |cx| limit.poll_tripped(cx.waker())).await
    }

    /// The error to return to retry after `countdown`, with `reason` stored as the RETRY result.
    pub fn retry(&self, countdown: Duration, reason: Option<ExceptionInfo>) -> TaskError {
        TaskError::Retry {
            countdown: Some(countdown),
            eta: None,
            exception: reason,
            max_retries: None,
        }
    }

    /// Retry after the task's `default_retry_delay`.
    pub fn retry_default(&self) -> TaskError {
        TaskError::Retry {
            countdown: None,
            eta: None,
            exception: None,
            max_retries: None,
        }
    }
}

/// A panic payload as a FAILURE (`exc_type` `Panic`).
pub fn panic_failure(payload: Box<dyn std::any::Any + Send>) -> TaskError {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "task panicked".into());
    TaskError::Failure {
        exception: ExceptionInfo::new("Panic", msg.clone()).with_module("celeriac"),
        traceback: Some(format!("panicked: {msg}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn call_args_follow_python_rules() {
        let mut kw = Map::new();
        kw.insert("y".into(), json!(3));
        let mut c = CallArgs::new("t", vec![json!(2)], kw, &["x", "y"]).unwrap();
        assert_eq!(c.take::<i64>("x", "i64").unwrap(), 2);
        assert_eq!(c.take::<i64>("y", "i64").unwrap(), 3);
        c.finish().unwrap();

        let mut c = CallArgs::new("t", vec![json!("a")], Map::new(), &["x", "y"]).unwrap();
        let e = c.take::<i64>("x", "i64").unwrap_err();
        assert!(e.to_string().contains("argument 'x' must be i64"), "{e}");
        let e = c.take::<i64>("y", "i64").unwrap_err();
        assert_eq!(e.to_string(), "t() missing required argument 'y' (i64)");
        let opt: Option<i64> = CallArgs::new("t", vec![], Map::new(), &["z"])
            .unwrap()
            .take("z", "Option<i64>")
            .unwrap();
        assert_eq!(opt, None);
    }

    #[test]
    fn errors_become_failures_named_by_type() {
        let e: TaskError = std::io::Error::other("disk").into();
        assert_eq!(e.kind(), "Error");
        let e: TaskError = "x".parse::<i32>().unwrap_err().into();
        assert_eq!(e.kind(), "ParseIntError");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = RetryBackoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
            jitter: false,
        };
        assert_eq!(b.delay(0), Duration::from_secs(1));
        assert_eq!(b.delay(2), Duration::from_secs(4));
        assert_eq!(b.delay(5), Duration::from_secs(5));
    }
}
