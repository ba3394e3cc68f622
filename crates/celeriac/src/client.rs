//! Sending tasks: typed [`Signature`]s for Rust tasks, [`Call`]s by name for any task
//! (Python ones included), both with Celery's `apply_async` options.
//!
//! # Which options a call gets
//!
//! Every way of sending a task — `Signature::apply_async`, `Signature::into_call` with
//! [`App::send_batch`], [`Call::send`], [`App::send_task`], the CLI's `call` verb — resolves
//! its options in one place, the same way:
//!
//! 1. what the call itself sets ([`CallOptions`]);
//! 2. the app's: the options the app registered the task with (`AppBuilder::task` /
//!    `task_with`, looked up by name) and, for the queue, `task_routes`, which beat the
//!    task's own `queue`;
//! 3. the task's own attributes (`#[task(queue = ..)]`), which only a typed call of a task
//!    this app did not register can supply;
//! 4. the defaults: `task_default_queue`, no priority, no expiry.
//!
//! So the queue is: call > `task_routes` > the task's queue (as registered, else its
//! attribute) > `task_default_queue`. A result is ignored when the call says so, else when
//! the task (as registered, else its attribute) says so, else when the app's
//! `task_ignore_result` does: a task's `false` cannot be told apart from "unset", so it does
//! not override the app-wide setting.

use std::time::Duration;

use celeriac_core::broker::Publish;
use celeriac_core::message::{CallSpec, TaskMessage};
use celeriac_core::task::{Task, TaskOptions};
use celeriac_worker::PublishInfo;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::app::App;
use crate::error::Error;
use crate::result::AsyncResult;

/// `apply_async` options. Unset ones fall back to the task's defaults and the app's routes.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub countdown: Option<Duration>,
    pub eta: Option<DateTime<Utc>>,
    pub expires_in: Option<Duration>,
    pub expires_at: Option<DateTime<Utc>>,
    /// 0..=9, 9 most urgent.
    pub priority: Option<u8>,
    pub queue: Option<String>,
    pub task_id: Option<String>,
    pub headers: Map<String, Value>,
    pub ignore_result: Option<bool>,
    pub time_limit: Option<Duration>,
    pub soft_time_limit: Option<Duration>,
}

macro_rules! option_setters {
    () => {
        /// Run no earlier than `delay` from now.
        pub fn countdown(mut self, delay: Duration) -> Self {
            self.options.countdown = Some(delay);
            self
        }
        /// Run no earlier than `at`.
        pub fn eta(mut self, at: DateTime<Utc>) -> Self {
            self.options.eta = Some(at);
            self
        }
        /// Drop the task (REVOKED, reason `expired`) if it has not started within `after`.
        pub fn expires_in(mut self, after: Duration) -> Self {
            self.options.expires_in = Some(after);
            self
        }
        /// Drop the task if it has not started by `at`.
        pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
            self.options.expires_at = Some(at);
            self
        }
        /// 0..=9, 9 most urgent.
        pub fn priority(mut self, priority: u8) -> Self {
            self.options.priority = Some(priority.min(9));
            self
        }
        /// Send to this queue (overrides routes and the task's queue).
        pub fn queue(mut self, queue: impl Into<String>) -> Self {
            self.options.queue = Some(queue.into());
            self
        }
        /// Use this task id instead of a fresh one.
        pub fn task_id(mut self, id: impl Into<String>) -> Self {
            self.options.task_id = Some(id.into());
            self
        }
        /// Adds a custom message header.
        pub fn header(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
            self.options.headers.insert(name.into(), value.into());
            self
        }
        pub fn ignore_result(mut self, ignore: bool) -> Self {
            self.options.ignore_result = Some(ignore);
            self
        }
        /// Hard time limit for this call (overrides the task's).
        pub fn time_limit(mut self, limit: Duration) -> Self {
            self.options.time_limit = Some(limit);
            self
        }
        /// Soft time limit for this call (overrides the task's).
        pub fn soft_time_limit(mut self, limit: Duration) -> Self {
            self.options.soft_time_limit = Some(limit);
            self
        }
        pub fn options(mut self, options: CallOptions) -> Self {
            self.options = options;
            self
        }
    };
}

/// A typed call of a Rust task: `add::s(2, 3).countdown(..).apply_async(&app)`.
pub struct Signature<T: Task> {
    task: T,
    options: CallOptions,
}

impl<T: Task> Signature<T> {
    pub fn new(task: T) -> Self {
        Signature {
            task,
            options: CallOptions::default(),
        }
    }

    option_setters!();

    /// Sends the call; the result handle decodes the output as `T::Output`.
    pub async fn apply_async(self, app: &App) -> Result<AsyncResult<T::Output>, Error> {
        let (args, kwargs) = self.task.to_call();
        let publish = build(
            app,
            T::NAME,
            Some(&T::options()),
            args,
            kwargs,
            &self.options,
        )?;
        let id = publish.message.task_id().unwrap_or_default().to_string();
        send_all(app, vec![publish]).await?;
        Ok(AsyncResult::new(app.clone(), id))
    }

    pub(crate) fn into_parts(self) -> (T, CallOptions) {
        (self.task, self.options)
    }

    /// This call, immutable, as a workflow step (Celery's `.si()`): a parent's result is
    /// not passed to it.
    pub fn si(self) -> crate::canvas::Sig<T::Output> {
        crate::canvas::Sig::from(self).immutable()
    }

    /// A chain: this call, then `next` with its result.
    pub fn then<P>(self, next: impl Into<crate::canvas::Sig<P>>) -> crate::canvas::Sig<P> {
        crate::canvas::Sig::from(self).then(next)
    }

    /// On success, `callback` is applied with the result (Celery's `link`).
    pub fn link<P>(
        self,
        callback: impl Into<crate::canvas::Sig<P>>,
    ) -> crate::canvas::Sig<T::Output> {
        crate::canvas::Sig::from(self).link(callback)
    }

    /// On failure, `errback` is sent with the failed task's id first (`link_error`).
    pub fn link_error<P>(
        self,
        errback: impl Into<crate::canvas::Sig<P>>,
    ) -> crate::canvas::Sig<T::Output> {
        crate::canvas::Sig::from(self).link_error(errback)
    }

    /// The call as an untyped [`Call`], e.g. to send it in a batch.
    pub fn into_call(self) -> Call {
        let (args, kwargs) = self.task.to_call();
        Call {
            name: T::NAME.to_string(),
            args,
            kwargs,
            options: self.options,
            attributes: Some(T::options()),
        }
    }
}

/// A call by task name with JSON arguments (Celery's `send_task`): works for any task,
/// registered here or not, Rust or Python.
#[derive(Debug, Clone)]
pub struct Call {
    name: String,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    options: CallOptions,
    /// The task's own attributes, when the call was made from its type.
    attributes: Option<TaskOptions>,
}

impl Call {
    pub fn new(name: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        Call {
            name: name.into(),
            args,
            kwargs,
            options: CallOptions::default(),
            attributes: None,
        }
    }

    option_setters!();

    pub(crate) fn into_parts(self) -> (String, Vec<Value>, Map<String, Value>, CallOptions) {
        (self.name, self.args, self.kwargs, self.options)
    }

    pub async fn send(self, app: &App) -> Result<AsyncResult<Value>, Error> {
        let publish = self.to_publish(app)?;
        let id = publish.message.task_id().unwrap_or_default().to_string();
        send_all(app, vec![publish]).await?;
        Ok(AsyncResult::new(app.clone(), id))
    }

    fn to_publish(&self, app: &App) -> Result<Publish, Error> {
        build(
            app,
            &self.name,
            self.attributes.as_ref(),
            self.args.clone(),
            self.kwargs.clone(),
            &self.options,
        )
    }
}

impl App {
    /// Celery's `send_task`: sends a call by name.
    pub async fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<AsyncResult<Value>, Error> {
        Call::new(name, args, kwargs).send(self).await
    }

    /// Sends many calls in one broker round trip (one transaction on the embedded store).
    pub async fn send_batch(&self, mut calls: Vec<Call>) -> Result<Vec<AsyncResult<Value>>, Error> {
        // Encoding is the client's share of the work: for big batches, half of it runs on
        // the blocking pool while this task encodes the other half.
        let second_half = if calls.len() >= PARALLEL_ENCODE_MIN {
            let rest = calls.split_off(calls.len() / 2);
            let app = self.clone();
            Some(tokio::task::spawn_blocking(move || encode_all(&app, &rest)))
        } else {
            None
        };
        let mut publishes = encode_all(self, &calls)?;
        if let Some(handle) = second_half {
            let more = handle
                .await
                .map_err(|e| Error::Encode(format!("encoding task panicked: {e}")))??;
            publishes.extend(more);
        }
        let ids: Vec<String> = publishes
            .iter()
            .map(|p| p.message.task_id().unwrap_or_default().to_string())
            .collect();
        send_all(self, publishes).await?;
        Ok(ids
            .into_iter()
            .map(|id| AsyncResult::new(self.clone(), id))
            .collect())
    }
}

/// Publishes encoded calls (one, or a batch in one round trip), with the publish hooks
/// around it and the result backend told first.
pub(crate) async fn send_all(app: &App, publishes: Vec<Publish>) -> Result<(), Error> {
    let hooks = app.hooks().clone();
    let infos = |publishes: &[Publish]| -> Vec<(String, String, String)> {
        publishes
            .iter()
            .map(|p| {
                let name = p.message.headers.get("task").and_then(Value::as_str);
                (
                    p.message.task_id().unwrap_or_default().to_string(),
                    name.unwrap_or_default().to_string(),
                    p.queue.clone(),
                )
            })
            .collect()
    };
    let sent = if hooks.has_publish_hooks() {
        infos(&publishes)
    } else {
        Vec::new()
    };
    let emit = |after: bool| {
        for (id, name, queue) in &sent {
            let info = PublishInfo { id, name, queue };
            if after {
                hooks.emit_after_task_publish(&info);
            } else {
                hooks.emit_before_task_publish(&info);
            }
        }
    };
    emit(false);
    announce(app, &publishes).await?;
    let sent_events = crate::sent_events::task_sent_events(app, &publishes);
    let broker = app.broker().await?;
    if publishes.len() == 1 {
        let publish = publishes.into_iter().next().expect("one publish");
        broker.publish(publish).await?;
    } else {
        broker.publish_batch(publishes).await?;
    }
    emit(true);
    crate::sent_events::send_task_sent(app, sent_events).await;
    Ok(())
}

/// Tells the result backend which tasks are about to be sent for results (rpc:// listens on
/// its reply queue from then on); tasks that ignore their result are left out.
async fn announce(app: &App, publishes: &[Publish]) -> Result<(), Error> {
    let ids: Vec<String> = publishes
        .iter()
        .filter(|p| p.message.headers.get("ignore_result") != Some(&Value::Bool(true)))
        .filter_map(|p| p.message.task_id().map(str::to_string))
        .collect();
    if !ids.is_empty() {
        app.backend().await?.before_send(&ids).await?;
    }
    Ok(())
}

/// Batches at least this big are encoded on two threads.
const PARALLEL_ENCODE_MIN: usize = 2048;

fn encode_all(app: &App, calls: &[Call]) -> Result<Vec<Publish>, Error> {
    calls.iter().map(|c| c.to_publish(app)).collect()
}

/// A call's options after resolution: what goes into the message and where it goes.
#[derive(Debug)]
struct Resolved {
    queue: String,
    priority: Option<u8>,
    eta: Option<DateTime<Utc>>,
    expires: Option<DateTime<Utc>>,
    ignore_result: bool,
}

/// The one resolution of a call's options (order in the module docs). `attributes` are the
/// task's own, known only to typed calls; the app's registration of `name` beats them.
fn resolve(
    app: &App,
    name: &str,
    attributes: Option<&TaskOptions>,
    call: &CallOptions,
    now: DateTime<Utc>,
) -> Result<Resolved, Error> {
    let task = app.registry().get(name).map(|t| t.options()).or(attributes);
    let after_now = |d: Duration| {
        chrono::Duration::from_std(d)
            .map(|d| now + d)
            .map_err(|_| Error::Encode(format!("duration {d:?} is out of range")))
    };
    let eta = match (call.countdown, call.eta) {
        (Some(countdown), _) => Some(after_now(countdown)?),
        (None, at) => at,
    };
    let expires = match (
        call.expires_in,
        call.expires_at,
        task.and_then(|t| t.expires),
    ) {
        (Some(after), _, _) => Some(after_now(after)?),
        (None, Some(at), _) => Some(at),
        (None, None, Some(after)) => Some(after_now(after)?),
        (None, None, None) => None,
    };
    let queue = call.queue.clone().unwrap_or_else(|| {
        crate::routing::queue_for(app.config(), app.registry(), name, attributes)
    });
    let priority = call
        .priority
        .or(task.and_then(|t| t.priority))
        .map(|p| p.min(9));
    let ignore_result = call.ignore_result.unwrap_or_else(|| {
        task.is_some_and(|t| t.ignore_result) || app.config().task_ignore_result
    });
    Ok(Resolved {
        queue,
        priority,
        eta,
        expires,
        ignore_result,
    })
}

/// Builds the message for a call, its options resolved by [`resolve`].
fn build(
    app: &App,
    name: &str,
    attributes: Option<&TaskOptions>,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    o: &CallOptions,
) -> Result<Publish, Error> {
    let resolved = resolve(app, name, attributes, o, Utc::now())?;
    let spec = CallSpec {
        name: name.to_string(),
        id: o.task_id.clone(),
        args,
        kwargs,
        eta: resolved.eta,
        expires: resolved.expires,
        priority: resolved.priority,
        time_limit: o.time_limit.map(|d| d.as_secs_f64()),
        soft_time_limit: o.soft_time_limit.map(|d| d.as_secs_f64()),
        ignore_result: resolved.ignore_result,
        headers: o.headers.clone(),
        reply_to: Some(app.oid().to_string()),
        ..CallSpec::default()
    };
    let message = TaskMessage::new_call(spec);
    Ok(Publish {
        queue: resolved.queue,
        priority: resolved.priority,
        not_before: resolved.eta,
        message: message.to_raw(),
    })
}
