//! End-to-end check of the generated code against a stand-in for the `celeriac` facade:
//! `extern crate self as celeriac` makes `::celeriac::...` resolve to this test crate.

extern crate self as celeriac;

pub use celeriac_core as core;
pub use serde;
pub use serde_json;

use std::marker::PhantomData;
use std::time::Duration;

use celeriac_core::task::{ArgError, Task, TaskContext, TaskError, VarArgs, VarKwargs};
use celeriac_macros::task;
use serde_json::{json, Map, Value};

/// Stand-ins for the facade's caller API, with the same shapes.
pub struct App;
#[derive(Debug)]
pub struct Error;
pub struct AsyncResult<T>(pub (Vec<Value>, Map<String, Value>), PhantomData<T>);
pub struct Signature<T: Task>(pub T);
impl<T: Task> Signature<T> {
    pub fn new(task: T) -> Self {
        Signature(task)
    }
    pub async fn apply_async(self, _app: &App) -> Result<AsyncResult<T::Output>, Error> {
        Ok(AsyncResult(self.0.to_call(), PhantomData))
    }
}

impl<T: Task> Signature<T> {
    pub fn si(self) -> canvas::Sig<T::Output> {
        canvas::Sig(T::NAME, self.0.to_call().0, PhantomData)
    }
}

/// Stand-ins for the facade's workflow API: what each generated constructor builds.
pub mod canvas {
    use super::*;

    pub struct Sig<O>(pub &'static str, pub Vec<Value>, pub PhantomData<O>);
    pub struct Group<O>(pub Vec<Sig<O>>);

    fn values(it: impl IntoIterator<Item = impl serde::Serialize>) -> Vec<Value> {
        it.into_iter()
            .map(|i| serde_json::to_value(i).unwrap())
            .collect()
    }

    impl Sig<Value> {
        pub fn map<T: Task>(
            it: impl IntoIterator<Item = impl serde::Serialize>,
        ) -> Result<Sig<Vec<T::Output>>, Error> {
            Ok(Sig("celery.map", values(it), PhantomData))
        }
        pub fn starmap<T: Task>(
            it: impl IntoIterator<Item = impl serde::Serialize>,
        ) -> Result<Sig<Vec<T::Output>>, Error> {
            Ok(Sig("celery.starmap", values(it), PhantomData))
        }
    }

    pub fn chunks<T: Task>(
        it: impl IntoIterator<Item = impl serde::Serialize>,
        n: usize,
    ) -> Result<Group<Vec<T::Output>>, Error> {
        let items = values(it);
        Ok(Group(
            items
                .chunks(n)
                .map(|c| Sig("celery.starmap", c.to_vec(), PhantomData))
                .collect(),
        ))
    }
}

pub mod tasks {
    use super::*;

    /// Adds.
    #[task]
    pub async fn add(x: i64, y: i64) -> i64 {
        x + y
    }

    #[task(name = "tasks.sleep", acks_late = true)]
    pub async fn sleep(seconds: f64) -> Result<f64, TaskError> {
        Ok(seconds)
    }

    #[task(name = "tasks.flaky", max_retries = 5, retry_backoff = true, autoretry_for = ["IoError"])]
    pub fn flaky(ctx: TaskContext, mut n: u32) -> Result<u32, TaskError> {
        n += ctx.retries;
        if n == 0 {
            return Err(TaskError::failure("ValueError", "zero"));
        }
        Ok(n)
    }

    #[task(name = "tasks.parse")]
    pub fn parse(s: String) -> Result<i32, std::num::ParseIntError> {
        s.parse()
    }

    #[task(name = "tasks.echo", aliases = ["old.echo"])]
    pub async fn echo(app: String, args: VarArgs, kwargs: VarKwargs) -> Value {
        json!({"app": app, "args": args.0, "kwargs": kwargs.0})
    }

    #[task(name = "tasks.star", queue = "q", rate_limit = "10/m", priority = 7, max_retries = none,
           time_limit = 30, soft_time_limit = 2.5, expires = 60, ignore_result, track_started = true,
           reject_on_worker_lost = true, default_retry_delay = 0.5)]
    pub async fn star(first: Option<i64>, args: VarArgs) {
        let _ = (first, args);
    }

    #[task(name = "tasks.kw")]
    pub async fn kw(r#type: String, kwargs: VarKwargs) -> usize {
        r#type.len() + kwargs.0.len()
    }
}

#[task]
async fn at_root() {}

use tasks::*;

fn call<T: Task>(args: Value, kwargs: Value) -> Result<T, ArgError> {
    let Value::Array(args) = args else { panic!() };
    let Value::Object(kwargs) = kwargs else {
        panic!()
    };
    T::from_call(args, kwargs)
}

fn ctx() -> TaskContext {
    TaskContext::new("id".into(), "t".into(), "host".into(), "celery".into())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn names_and_options() {
    assert_eq!(add::NAME, "tasks.add");
    assert_eq!(at_root::NAME, "expand.at_root");
    assert_eq!(echo::ALIASES, ["old.echo"]);
    assert_eq!(add::ALIASES, [] as [&str; 0]);
    assert!(!add::options().blocking);
    assert!(flaky::options().blocking);
    assert!(sleep::options().acks_late);
    let o = flaky::options();
    assert_eq!(o.max_retries, Some(5));
    let b = o.retry_backoff.unwrap();
    assert_eq!(
        (b.base, b.max, b.jitter),
        (Duration::from_secs(1), Duration::from_secs(600), true)
    );
    assert_eq!(o.autoretry_for, ["IoError"]);
    let o = star::options();
    assert_eq!(o.queue.as_deref(), Some("q"));
    assert_eq!(o.max_retries, None);
    assert_eq!(o.priority, Some(7));
    assert_eq!(o.rate_limit.unwrap().interval(), Duration::from_secs(6));
    assert_eq!(o.time_limit, Some(Duration::from_secs(30)));
    assert_eq!(o.soft_time_limit, Some(Duration::from_millis(2500)));
    assert_eq!(o.expires, Some(Duration::from_secs(60)));
    assert_eq!(o.default_retry_delay, Duration::from_millis(500));
    assert!(o.ignore_result && o.track_started && o.reject_on_worker_lost && !o.acks_late);
}

#[test]
fn from_call_matches_like_python() {
    let t: add = call(json!([1]), json!({"y": 2})).unwrap();
    assert_eq!((t.x, t.y), (1, 2));
    let e = call::<add>(json!([1, 2, 3]), json!({})).err().unwrap();
    assert_eq!(
        e.to_string(),
        "tasks.add() takes 2 positional arguments but 3 were given"
    );
    let e = call::<add>(json!([1, 2]), json!({"z": 1})).err().unwrap();
    assert_eq!(
        e.to_string(),
        "tasks.add() got an unexpected keyword argument 'z'"
    );
    let e = call::<add>(json!(["a", 2]), json!({})).err().unwrap();
    assert!(
        e.to_string()
            .starts_with("tasks.add() argument 'x' must be i64"),
        "{e}"
    );

    let t: echo = call(json!(["a", 1, 2]), json!({"k": true})).unwrap();
    assert_eq!(
        (t.app.as_str(), t.args.0.len(), t.kwargs.0.len()),
        ("a", 2, 1)
    );

    // VarArgs without VarKwargs: unknown keywords are still an error.
    let t: star = call(json!([]), json!({})).unwrap();
    assert_eq!((t.first, t.args.0.len()), (None, 0));
    let t: star = call(json!([1, 2, 3]), json!({})).unwrap();
    assert_eq!((t.first, t.args.0), (Some(1), vec![json!(2), json!(3)]));
    let e = call::<star>(json!([1]), json!({"x": 1})).err().unwrap();
    assert!(matches!(e, ArgError::UnexpectedKeyword { .. }), "{e}");

    // VarKwargs without VarArgs: extra positionals are still an error; raw idents unraw.
    let t: kw = call(json!([]), json!({"type": "a", "b": 1})).unwrap();
    assert_eq!((t.r#type.as_str(), t.kwargs.0.len()), ("a", 1));
    let e = call::<kw>(json!(["a", "b"]), json!({})).err().unwrap();
    assert!(matches!(e, ArgError::TooManyPositional { .. }), "{e}");
}

#[test]
fn to_call_round_trips() {
    let (a, k) = add { x: 1, y: 2 }.to_call();
    assert_eq!((a, k.len()), (vec![json!(1), json!(2)], 0));
    let mut m = Map::new();
    m.insert("k".into(), json!(1));
    let t = echo {
        app: "x".into(),
        args: VarArgs(vec![json!(true)]),
        kwargs: VarKwargs(m),
    };
    let (a, k) = t.to_call();
    assert_eq!(a, vec![json!("x"), json!(true)]);
    assert_eq!(Value::Object(k.clone()), json!({"k": 1}));
    let back: echo = echo::from_call(a, k).unwrap();
    assert_eq!(back.args.0, vec![json!(true)]);
}

#[test]
fn run_async_and_blocking() {
    block_on(async {
        assert_eq!(add { x: 2, y: 3 }.run(ctx()).await, Ok(5));
        assert_eq!(sleep { seconds: 0.5 }.run(ctx()).await, Ok(0.5));
        assert_eq!(flaky { n: 4 }.run(ctx()).await, Ok(4));
        assert_eq!(
            flaky { n: 0 }.run(ctx()).await.unwrap_err().kind(),
            "ValueError"
        );
        assert_eq!(parse { s: "7".into() }.run(ctx()).await, Ok(7));
        let e = parse { s: "x".into() }.run(ctx()).await.unwrap_err();
        assert_eq!(e.kind(), "ParseIntError");
        assert_eq!(at_root {}.run(ctx()).await, Ok(()));
        let out = echo::s("a".into(), VarArgs(vec![]), VarKwargs::default())
            .0
            .run(ctx())
            .await;
        assert_eq!(out.unwrap(), json!({"app": "a", "args": [], "kwargs": {}}));
    });
}

#[test]
fn signature_and_delay() {
    let sig: Signature<add> = add::s(1, 2);
    assert_eq!((sig.0.x, sig.0.y), (1, 2));
    let r: AsyncResult<i64> = block_on(add::delay(&App, 1, 2)).unwrap();
    assert_eq!(r.0 .0, vec![json!(1), json!(2)]);
    let r = block_on(echo::delay(
        &App,
        "a".into(),
        VarArgs(vec![]),
        VarKwargs::default(),
    ))
    .unwrap();
    assert_eq!(r.0 .0, vec![json!("a")]);
}
