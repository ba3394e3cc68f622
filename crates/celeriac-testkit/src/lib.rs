//! Conformance suites for celeriac's seams: one suite per seam, run unchanged against every
//! engine (house style item 7). What an engine cannot do is a visible skip, never a silent pass.
//!
//! - [`broker_suite`]: the [`Broker`](celeriac_core::broker::Broker) /
//!   [`Consumer`](celeriac_core::broker::Consumer) contract and its capabilities.
//! - [`backend_suite`]: the [`ResultBackend`](celeriac_core::backend::ResultBackend) contract.
//! - [`beat_suite`]: the [`BeatStore`](celeriac_core::beat::BeatStore) contract, through a
//!   broker's or a result backend's `beat_store()`.
//! - [`rabbitmq`]: vhosts of their own for tests against RabbitMQ.
//!
//! The suites only ever talk to `Arc<dyn Broker>` / `Arc<dyn ResultBackend>`. An engine plugs
//! in with a factory: an async function that opens a fresh, isolated store (temp file, key
//! prefix, vhost...) and says how to open a second instance on the same store (what another
//! process would open). Then one macro line generates one `#[test]` per case:
//!
//! ```no_run
//! use std::sync::Arc;
//! use celeriac_core::broker::Broker;
//! use celeriac_sqlite::{SqliteOptions, SqliteStore};
//! use celeriac_testkit::{FactoryOptions, Instance, Skip};
//!
//! async fn sqlite_broker(opts: FactoryOptions) -> Result<Instance<dyn Broker>, Skip> {
//!     let dir = tempfile::tempdir().unwrap();
//!     let path = dir.path().join("celeriac.db");
//!     let mut options = SqliteOptions::default();
//!     if let Some(t) = opts.visibility_timeout {
//!         options.visibility_timeout = t;
//!     }
//!     let open = move || -> Arc<dyn Broker> { SqliteStore::open(&path, options.clone()).unwrap() };
//!     Ok(Instance::new(open(), move || std::future::ready(open())).keep(dir))
//! }
//!
//! celeriac_testkit::broker_tests!(sqlite_broker);
//! # fn main() {}
//! ```
//!
//! Each generated test prints `case NAME ... ok|FAILED|skipped (reason)`. [`broker_suite::run_all`],
//! [`backend_suite::run_all`] and [`beat_suite::run_all`] run every case in one go instead
//! (with a name filter).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub mod backend_suite;
pub mod beat_suite;
pub mod broker_suite;
pub mod published;
pub mod rabbitmq;

/// A boxed, sendable future (the suites avoid depending on the `futures` crate).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a case did not run: the engine lacks a capability, or the factory has no store to
/// test against (e.g. no server URL in the environment). Printed with the case name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip(pub String);

impl Skip {
    pub fn new(reason: impl Into<String>) -> Skip {
        Skip(reason.into())
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a case returns: `Ok(())` when it passed, `Err(Skip)` when it could not run. A failed
/// contract is a panic (an `assert!`), which the runner catches and reports.
pub type CaseResult = Result<(), Skip>;

/// What the factory is asked for. Factories that cannot honour an option return a [`Skip`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct FactoryOptions {
    /// How long a fetched message stays leased without a keepalive (kombu's
    /// `visibility_timeout`). `None`: the engine's default, which must be long enough that no
    /// lease lapses during a case (≥ 30 s). Cases that need lapses ask for 1 s.
    pub visibility_timeout: Option<Duration>,
}

impl FactoryOptions {
    pub fn with_visibility_timeout(timeout: Duration) -> FactoryOptions {
        FactoryOptions {
            visibility_timeout: Some(timeout),
        }
    }
}

type Reopen<T> = Box<dyn Fn() -> BoxFuture<'static, Arc<T>> + Send + Sync>;

/// One fresh, isolated store opened by a factory: the instance the case uses, a way to open
/// another instance on the same store (a second process), and whatever must live as long as
/// the store (a temp dir).
pub struct Instance<T: ?Sized + Send + Sync + 'static> {
    first: Arc<T>,
    reopen: Reopen<T>,
    _keep: Vec<Box<dyn Any + Send + Sync>>,
}

impl<T: ?Sized + Send + Sync + 'static> Instance<T> {
    /// `first` is the instance the case uses; `reopen` opens another one on the same store,
    /// the way a second process would (new connections, nothing shared in memory). It panics
    /// when that fails (the case then fails).
    pub fn new<F, Fut>(first: Arc<T>, reopen: F) -> Instance<T>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Arc<T>> + Send + 'static,
    {
        Instance {
            first,
            reopen: Box::new(move || Box::pin(reopen())),
            _keep: Vec::new(),
        }
    }

    /// Keeps `guard` (a temp dir, a server handle) alive until the case ends.
    pub fn keep(mut self, guard: impl Any + Send + Sync) -> Instance<T> {
        self._keep.push(Box::new(guard));
        self
    }

    /// The instance the case works with.
    pub fn get(&self) -> Arc<T> {
        self.first.clone()
    }

    /// Another instance on the same store, as another process would open it.
    pub async fn open_again(&self) -> Arc<T> {
        (self.reopen)().await
    }

    /// The same store seen through `f` (a broker as the handle a beat case tests), for
    /// this instance and every one opened again.
    pub(crate) fn map<U, F>(self, f: F) -> Instance<U>
    where
        U: ?Sized + Send + Sync + 'static,
        F: Fn(Arc<T>) -> Arc<U> + Clone + Send + Sync + 'static,
    {
        let Instance {
            first,
            reopen,
            _keep,
        } = self;
        let first = f(first);
        let reopen: Reopen<U> = Box::new(move || {
            let (again, f) = (reopen(), f.clone());
            Box::pin(async move { f(again.await) })
        });
        Instance {
            first,
            reopen,
            _keep,
        }
    }
}

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

/// One named case of a suite. `F` is the suite's factory trait object.
pub struct Case<F: ?Sized> {
    pub name: &'static str,
    pub run: for<'a> fn(&'a F) -> BoxFuture<'a, CaseResult>,
}

impl<F: ?Sized> Clone for Case<F> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F: ?Sized> Copy for Case<F> {}

impl<F: ?Sized> std::fmt::Debug for Case<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// No case may run longer than this; a hang is reported as a failure.
pub const CASE_TIME_LIMIT: Duration = Duration::from_secs(120);

impl<F: ?Sized> Case<F> {
    /// Runs the case, turning a panic or a hang into [`Outcome::Failed`], and prints
    /// `case SUITE::NAME ... ok|FAILED|skipped (reason)`.
    pub async fn run(&self, suite: &str, factory: &F) -> Outcome {
        let start = Instant::now();
        let run = CatchUnwind((self.run)(factory));
        let outcome = match tokio::time::timeout(CASE_TIME_LIMIT, run).await {
            Err(_) => Outcome::Failed(format!("did not finish within {CASE_TIME_LIMIT:?}")),
            Ok(Err(panic)) => Outcome::Failed(panic_message(&*panic)),
            Ok(Ok(Ok(()))) => Outcome::Passed,
            Ok(Ok(Err(skip))) => Outcome::Skipped(skip.0),
        };
        let took = start.elapsed();
        match &outcome {
            Outcome::Passed => println!("case {suite}::{} ... ok ({took:.2?})", self.name),
            Outcome::Skipped(why) => println!("case {suite}::{} ... skipped ({why})", self.name),
            Outcome::Failed(why) => {
                println!("case {suite}::{} ... FAILED ({took:.2?}): {why}", self.name)
            }
        }
        outcome
    }
}

/// The outcome of every case a suite's `run_all` ran.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub outcomes: Vec<(&'static str, Outcome)>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Passed))
    }
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|(_, o)| f(o)).count()
    }
}

/// Runs the cases whose name contains `filter` (all when `None`) one after another, prints a
/// summary and panics when any failed.
pub(crate) async fn run_cases<F: ?Sized>(
    suite: &str,
    cases: Vec<Case<F>>,
    factory: &F,
    filter: Option<&str>,
) -> Report {
    let mut report = Report::default();
    for case in cases {
        if filter.is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        let outcome = case.run(suite, factory).await;
        report.outcomes.push((case.name, outcome));
    }
    println!(
        "{suite} conformance: {} passed, {} skipped, {} failed",
        report.passed(),
        report.skipped(),
        report.failed()
    );
    let failed: Vec<_> = report
        .outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
        .map(|(n, _)| *n)
        .collect();
    assert!(failed.is_empty(), "{suite} conformance failed: {failed:?}");
    report
}

/// Runs one named case on a fresh runtime (what the generated `#[test]`s call); panics when
/// it failed or does not exist.
pub(crate) fn run_one_blocking<F: ?Sized>(
    suite: &str,
    cases: Vec<Case<F>>,
    factory: &F,
    name: &str,
) {
    let case = cases
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{suite} has no case named {name:?}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Outcome::Failed(why) = runtime.block_on(case.run(suite, factory)) {
        panic!("case {suite}::{name} FAILED: {why}");
    }
}

/// Panics unless `listed` names exactly the suite's cases (keeps the test macros honest).
pub(crate) fn assert_listed<F: ?Sized>(suite: &str, cases: Vec<Case<F>>, listed: &[&str]) {
    let mut have: Vec<_> = cases.iter().map(|c| c.name).collect();
    let mut want = listed.to_vec();
    have.sort_unstable();
    want.sort_unstable();
    assert_eq!(
        have, want,
        "{suite}: the test macro and cases() list different cases"
    );
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panicked".to_string()
    }
}

/// Polls a future, turning a panic in any poll into `Err(payload)`.
struct CatchUnwind<Fut>(Fut);

impl<Fut: Future + Unpin> Future for CatchUnwind<Fut> {
    type Output = Result<Fut::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// A fresh id for queues, tasks and groups, so cases never see each other's data even when a
/// factory shares one store between cases.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
