//! Workflows: Celery's canvas from Rust. A [`Sig`] is any canvas (one task call, a chain,
//! a chord, a map) with the type of its result; a [`Group`] is a group, whose result is a
//! [`GroupResult`](crate::GroupResult).
//!
//! ```no_run
//! use celeriac::canvas::{chord, group, Sig};
//! use celeriac::{chain, task, App};
//! use std::time::Duration;
//!
//! #[task(name = "tasks.add")]
//! async fn add(x: i64, y: i64) -> i64 { x + y }
//! #[task(name = "tasks.tsum")]
//! async fn tsum(values: Vec<i64>) -> i64 { values.iter().sum() }
//!
//! # async fn demo(app: App) -> Result<(), Box<dyn std::error::Error>> {
//! // add(1, 2) → add(3, 10) → add(13, 100); the last step's result, its parents behind it.
//! let r = chain![add::s(1, 2), Sig::task::<add>(vec![10.into()]), Sig::task::<add>(vec![100.into()])]
//!     .apply_async(&app).await?;
//! assert_eq!(r.get(Duration::from_secs(10)).await?, 113);
//! let total = chord((0..10).map(|i| add::s(i, i)), Sig::task::<tsum>(vec![]))
//!     .apply_async(&app).await?;
//! let all = group((0..10).map(|i| add::s(i, 1))).apply_async(&app).await?;
//! # Ok(()) }
//! ```
//!
//! Steps of another language's tasks are signatures by name ([`Sig::by_name`]), with JSON
//! arguments and a JSON result. The wire form of each is Celery 5.7's (`docs/canvas.md`).

mod options;
mod send;

use std::marker::PhantomData;
use std::time::Duration;

use celeriac_core::canvas::{Canvas, Signature as WireSignature};
use celeriac_core::task::Task;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::app::App;
use crate::error::Error;
use crate::result::{AsyncResult, GroupResult};

pub(crate) use options::call_options_map;

/// A canvas whose result decodes as `O` (`Value` for tasks of other languages).
pub struct Sig<O = Value> {
    canvas: Canvas,
    _output: PhantomData<fn() -> O>,
}

impl<O> Clone for Sig<O> {
    fn clone(&self) -> Self {
        Sig::wrap(self.canvas.clone())
    }
}

impl<O> std::fmt::Debug for Sig<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig({})", self.canvas.to_signature().to_value())
    }
}

impl Sig<Value> {
    /// A call of any task by name (Celery's `signature('name', args, kwargs)`): Python
    /// tasks, or Rust tasks this program does not link.
    pub fn by_name(name: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        Sig::wrap(Canvas::Task(WireSignature::new(name, args, kwargs)))
    }

    /// A partial call of Rust task `T`: `args` come after what a parent step passes it
    /// (Celery's `add.s(10)` in a chain), its result typed as `T`'s.
    pub fn task<T: Task>(args: Vec<Value>) -> Sig<T::Output> {
        Sig::wrap(Canvas::Task(WireSignature::new(T::NAME, args, Map::new())))
    }

    /// Any canvas as Celery's signature dict describes it (e.g. one read from a message).
    pub fn from_value(value: &Value) -> Result<Self, Error> {
        Canvas::from_value(value)
            .map(Sig::wrap)
            .map_err(|e| Error::Encode(e.to_string()))
    }

    /// `T` applied to each item of `it` in one task (`celery.map`).
    pub fn map<T: Task>(
        it: impl IntoIterator<Item = impl Serialize>,
    ) -> Result<Sig<Vec<T::Output>>, Error> {
        Ok(Sig::wrap(mapping::<T>(false, to_values(it)?)))
    }

    /// `T` called with each item of `it` as its arguments, in one task (`celery.starmap`).
    pub fn starmap<T: Task>(
        it: impl IntoIterator<Item = impl Serialize>,
    ) -> Result<Sig<Vec<T::Output>>, Error> {
        Ok(Sig::wrap(mapping::<T>(true, to_values(it)?)))
    }
}

/// `celery.map` (or, with `star`, `celery.starmap`) of task `T` over `it`.
fn mapping<T: Task>(star: bool, it: Vec<Value>) -> Canvas {
    let task = WireSignature::new(T::NAME, vec![], Map::new());
    let options = Map::new();
    if star {
        Canvas::Starmap { task, it, options }
    } else {
        Canvas::Map { task, it, options }
    }
}

fn to_values(it: impl IntoIterator<Item = impl Serialize>) -> Result<Vec<Value>, Error> {
    it.into_iter()
        .map(|item| serde_json::to_value(item).map_err(|e| Error::Encode(e.to_string())))
        .collect()
}

/// `T` called with each item of `it` as its arguments, `n` calls per task: a group of
/// `celery.starmap` tasks, as Celery's `chunks` sends it.
pub fn chunks<T: Task>(
    it: impl IntoIterator<Item = impl Serialize>,
    n: usize,
) -> Result<Group<Vec<T::Output>>, Error> {
    let items = to_values(it)?;
    let members = items
        .chunks(n.max(1))
        .map(|part| Sig::wrap(mapping::<T>(true, part.to_vec())))
        .collect::<Vec<Sig<Vec<T::Output>>>>();
    Ok(group(members))
}

macro_rules! sig_option_setters {
    () => {
        /// Run no earlier than `delay` after it is sent.
        pub fn countdown(self, delay: Duration) -> Self {
            self.set("countdown", json!(delay.as_secs_f64()))
        }
        /// Run no earlier than `at`.
        pub fn eta(self, at: DateTime<Utc>) -> Self {
            self.set("eta", json!(celeriac_core::time::to_iso(at)))
        }
        /// Not run (REVOKED, `expired`) if not started within `after` of being sent.
        pub fn expires_in(self, after: Duration) -> Self {
            self.set("expires", json!(after.as_secs_f64()))
        }
        /// Send to this queue (beats routes).
        pub fn queue(self, queue: impl Into<String>) -> Self {
            self.set("queue", json!(queue.into()))
        }
        /// 0..=9, 9 most urgent.
        pub fn priority(self, priority: u8) -> Self {
            self.set("priority", json!(priority.min(9)))
        }
    };
}

impl<O> Sig<O> {
    fn wrap(canvas: Canvas) -> Self {
        Sig {
            canvas,
            _output: PhantomData,
        }
    }

    /// The result typed as `P` (for a step by name whose result's type is known).
    pub fn returning<P>(self) -> Sig<P> {
        Sig::wrap(self.canvas)
    }

    /// Celery's `.si()` / `immutable=True`: a parent's result is not passed to it.
    pub fn immutable(mut self) -> Self {
        if let Canvas::Task(sig) = &mut self.canvas {
            sig.immutable = true;
        }
        self
    }

    /// Sets an `apply_async` option Celery keeps in the signature (`options`).
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.canvas.options_mut().insert(key.to_string(), value);
        self
    }

    sig_option_setters!();

    /// Use this id for the result (a chain: its last step's).
    pub fn task_id(self, id: impl Into<String>) -> Self {
        self.set("task_id", json!(id.into()))
    }

    /// On success, `callback` is applied with the result (Celery's `link`).
    pub fn link<P>(self, callback: impl Into<Sig<P>>) -> Self {
        self.push_option("link", callback.into().to_value())
    }

    /// On failure, `errback` is sent with the failed task's id first (`link_error`).
    pub fn link_error<P>(self, errback: impl Into<Sig<P>>) -> Self {
        self.push_option("link_error", errback.into().to_value())
    }

    fn push_option(mut self, key: &str, value: Value) -> Self {
        let options = self.canvas.options_mut();
        let mut list = celeriac_core::canvas::list_option(options, key).unwrap_or_default();
        list.push(value);
        options.insert(key.to_string(), Value::Array(list));
        self
    }

    /// A chain: `self`, then `next` with `self`'s result (Celery's `|`).
    pub fn then<P>(self, next: impl Into<Sig<P>>) -> Sig<P> {
        let next = next.into().canvas;
        let mut steps = match self.canvas {
            Canvas::Chain(steps, options) if options.is_empty() => steps,
            other => vec![other],
        };
        match next {
            Canvas::Chain(more, options) if options.is_empty() => steps.extend(more),
            other => steps.push(other),
        }
        Sig::wrap(Canvas::Chain(steps, Map::new()))
    }

    /// The canvas as core models it.
    pub fn canvas(&self) -> &Canvas {
        &self.canvas
    }

    /// Celery's signature dict of this canvas.
    pub fn to_value(&self) -> Value {
        self.canvas.to_signature().to_value()
    }
}

impl<O: DeserializeOwned> Sig<O> {
    /// Sends the canvas; the handle is its result's (a chain's last step, a chord's body),
    /// with [`AsyncResult::parent`] walking back through the steps before it.
    pub async fn apply_async(&self, app: &App) -> Result<AsyncResult<O>, Error> {
        let frozen = send::apply(app, &self.canvas).await?;
        Ok(AsyncResult::from_frozen(app, &frozen))
    }
}

impl<T: Task> From<crate::Signature<T>> for Sig<T::Output> {
    fn from(call: crate::Signature<T>) -> Self {
        let (task, options) = call.into_parts();
        let (args, kwargs) = task.to_call();
        let mut sig = WireSignature::new(T::NAME, args, kwargs);
        sig.options = call_options_map(&options);
        Sig::wrap(Canvas::Task(sig))
    }
}

impl From<crate::Call> for Sig<Value> {
    fn from(call: crate::Call) -> Self {
        let (name, args, kwargs, options) = call.into_parts();
        let mut sig = WireSignature::new(name, args, kwargs);
        sig.options = call_options_map(&options);
        Sig::wrap(Canvas::Task(sig))
    }
}

/// Tasks run together, each result in member order (Celery's `group`).
pub struct Group<O = Value> {
    members: Vec<Canvas>,
    options: Map<String, Value>,
    _output: PhantomData<fn() -> O>,
}

impl<O> Clone for Group<O> {
    fn clone(&self) -> Self {
        Group {
            members: self.members.clone(),
            options: self.options.clone(),
            _output: PhantomData,
        }
    }
}

/// A group of `members`.
pub fn group<O, S: Into<Sig<O>>>(members: impl IntoIterator<Item = S>) -> Group<O> {
    Group {
        members: members.into_iter().map(|m| m.into().canvas).collect(),
        options: Map::new(),
        _output: PhantomData,
    }
}

impl<O> Group<O> {
    /// Sets an `apply_async` option on every member.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.options.insert(key.to_string(), value);
        self
    }

    sig_option_setters!();

    /// Use this group id.
    pub fn group_id(self, id: impl Into<String>) -> Self {
        self.set("task_id", json!(id.into()))
    }

    fn canvas(&self) -> Canvas {
        Canvas::Group(self.members.clone(), self.options.clone())
    }
}

impl<O: DeserializeOwned> Group<O> {
    /// Sends every member; the handle reads their results in member order.
    pub async fn apply_async(&self, app: &App) -> Result<GroupResult<O>, Error> {
        let frozen = send::apply(app, &self.canvas()).await?;
        GroupResult::from_frozen(app, &frozen)
            .ok_or_else(|| Error::Encode("a group applied gave no group result".into()))
    }
}

/// A group as a step: its result is the list of its members'.
impl<O> From<Group<O>> for Sig<Vec<O>> {
    fn from(group: Group<O>) -> Self {
        Sig::wrap(group.canvas())
    }
}

/// Celery's `chord(header)(body)`: `body` runs once every task of `header` finished, with
/// their results as one list, in header order.
pub fn chord<H, B, S: Into<Sig<H>>>(
    header: impl IntoIterator<Item = S>,
    body: impl Into<Sig<B>>,
) -> Sig<B> {
    Sig::wrap(Canvas::Chord {
        header: header.into_iter().map(|m| m.into().canvas).collect(),
        body: Box::new(body.into().canvas),
        options: Map::new(),
    })
}

/// `chain![a, b, c]`: `a`, then `b` with `a`'s result, then `c` with `b`'s; the result is
/// `c`'s (Celery's `chain(a, b, c)`).
#[macro_export]
macro_rules! chain {
    ($only:expr $(,)?) => {
        $crate::canvas::Sig::from($only)
    };
    ($first:expr, $($rest:expr),+ $(,)?) => {
        $crate::canvas::Sig::from($first).then($crate::chain![$($rest),+])
    };
}
