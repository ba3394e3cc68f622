//! The `#[task]` attribute for celeriac: turns a function into a typed Celery task.
//!
//! Use it through the `celeriac` crate (`celeriac::task`); the generated code names
//! `::celeriac` by absolute path.
//!
//! ```ignore
//! use celeriac::task;
//! use celeriac::core::task::{TaskContext, TaskError, VarArgs, VarKwargs};
//!
//! /// Adds two numbers. Name: "tasks.add" when this is in module `tasks`.
//! #[task]
//! pub async fn add(x: i64, y: i64) -> i64 {
//!     x + y
//! }
//!
//! #[task(name = "tasks.flaky", max_retries = 5, autoretry_for = ["IoError"], retry_backoff = true)]
//! pub fn flaky(ctx: TaskContext, n: u32) -> Result<u32, TaskError> {
//!     // A plain `fn` runs on a pool thread (or a child process), never on the executor.
//!     if ctx.retries < 2 { return Err(ctx.retry_default()); }
//!     Ok(n)
//! }
//!
//! #[task(name = "tasks.echo")]
//! pub async fn echo(args: VarArgs, kwargs: VarKwargs) -> serde_json::Value {
//!     serde_json::json!({ "args": args.0, "kwargs": kwargs.0 })
//! }
//!
//! # async fn caller(app: &celeriac::App) -> Result<(), celeriac::Error> {
//! let result = add::delay(app, 2, 3).await?;          // send now
//! let sig = add::s(2, 3);                              // or build a signature
//! let task = add { x: 2, y: 3 };                       // the arguments are a plain struct
//! # Ok(()) }
//! ```
//!
//! # What `#[task]` generates
//!
//! For `pub async fn add(x: i64, y: i64) -> i64`:
//!
//! - `pub struct add { pub x: i64, pub y: i64 }`, with the function's visibility and doc
//!   comments, one `pub` field per parameter (a `TaskContext` parameter is not a field).
//! - The function itself, renamed to a private `__celeriac_body_add` with its body and
//!   attributes untouched (so errors point at your code).
//! - `impl Task for add`:
//!   - `NAME`: the `name` option, or by default the last segment of `module_path!()`, a dot
//!     and the function name (`fn add` in module `tasks` is `"tasks.add"`; at a crate's
//!     root it is `"<crate>.add"`).
//!   - `ALIASES` from `aliases`.
//!   - `type Output`: if the return type's last path segment is `Result` (`Result<T, E>`,
//!     `io::Result<T>`, ...) it is `T`, and the error is converted with `Into<TaskError>`
//!     (any `std::error::Error` converts; so does `TaskError` itself). Otherwise it is the
//!     return type (`()` without one) and the value is wrapped in `Ok`.
//!   - `options()`: a `TaskOptions` with the given options, the rest default; `blocking` is
//!     true for a plain (non-`async`) function.
//!   - `from_call`: Python-style argument matching with `CallArgs`: every ordinary parameter,
//!     in order, by position or by keyword (an `Option<T>` parameter may be left out). A
//!     `VarArgs` parameter takes the positional arguments beyond them and a `VarKwargs`
//!     parameter the unmatched keywords; leftovers of a kind with no such parameter are an
//!     error (`TypeError`), as in Python.
//!   - `to_call`: the ordinary parameters as positional JSON values, the `VarArgs` values
//!     spread after them, the `VarKwargs` entries as keyword arguments.
//!   - `run`: calls the body (`.await` for an `async fn`; inline for a plain `fn`), passing
//!     the context to a `TaskContext` parameter.
//!   - `body` (plain `fn` only): `TaskBody::Blocking` with that call, which the worker's pool
//!     runs on a thread that may block (or in a child process), never on the async executor.
//! - `impl add { pub fn s(x, y) -> Signature<add>; pub async fn delay(app: &App, x, y) ->
//!   Result<AsyncResult<i64>, celeriac::Error> }`.
//!
//! # Parameters
//!
//! Each parameter must be a plain identifier (`mut` is fine) with an owned type that
//! implements `Serialize + DeserializeOwned + Send + 'static`. Special parameters, recognized
//! by the last segment of their type's path:
//!
//! - `TaskContext` (at most one): the running call's context (id, retries, soft time limit, ...).
//! - `VarArgs` (at most one): Python's `*args`.
//! - `VarKwargs` (at most one): Python's `**kwargs`.
//!
//! Generic functions, `self` parameters, patterns, references and `impl Trait` are compile
//! errors.
//!
//! # Options
//!
//! All optional; seconds are integer or float literals (`30`, `1.5`).
//!
//! | option | value | meaning (Celery's option of the same name) |
//! |---|---|---|
//! | `name` | `"str"` | the task name on the wire (default: see above) |
//! | `aliases` | `["a", "b"]` | other names this task answers to |
//! | `queue` | `"str"` | default queue |
//! | `max_retries` | integer, or `none` | retries before failing; `none`: retry forever (default 3) |
//! | `default_retry_delay` | seconds | delay of a retry without a countdown (default 180) |
//! | `retry_backoff` | `true`, `false` or seconds | exponential delays for `autoretry_for`; `true` means a 1 s base |
//! | `retry_backoff_max` | seconds | cap of the backoff delay (default 600; needs `retry_backoff`) |
//! | `retry_jitter` | bool | randomize backoff delays (default true; needs `retry_backoff`) |
//! | `autoretry_for` | `["KeyError", ...]` | error kinds (`TaskError::kind`, the `exc_type`) that retry automatically |
//! | `time_limit` | seconds | hard time limit |
//! | `soft_time_limit` | seconds | soft time limit (see `TaskContext::soft_time_limit`) |
//! | `acks_late` | bool | acknowledge after running instead of before |
//! | `reject_on_worker_lost` | bool | with `acks_late`, requeue when the worker dies |
//! | `ignore_result` | bool | do not store the result |
//! | `track_started` | bool | store a STARTED state |
//! | `rate_limit` | `"10/s"`, `"100/m"`, `"1000/h"`, `"4"` | checked at compile time |
//! | `expires` | seconds | default expiry of a call, from send time |
//! | `priority` | `0..=9` | default message priority |
//!
//! A flag option may be written bare (`acks_late` means `acks_late = true`). Unknown,
//! duplicate or ill-typed options are compile errors.

mod attrs;
mod expand;

use proc_macro::TokenStream;

/// Turns a function into a Celery task; see the [crate documentation](crate).
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
