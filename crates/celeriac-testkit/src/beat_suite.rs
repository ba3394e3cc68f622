//! The beat-store conformance suite: the contract documented on [`BeatStore`] in
//! `celeriac_core::beat` (one lease holder at a time, fencing tokens that grow when the lease
//! changes hands, last runs written only under the live token), tested through the
//! `beat_store()` of a broker or a result backend only.
//!
//! An engine plugs in with the factories it already has for the other suites, wrapped in
//! [`OnBroker`] or [`OnBackend`] (or with any [`BeatFactory`]), and
//! [`beat_tests!`](crate::beat_tests) (one `#[test]` per case) or [`run_all`]:
//!
//! ```ignore
//! celeriac_testkit::beat_tests!(celeriac_testkit::beat_suite::OnBroker(sqlite_broker));
//! celeriac_testkit::beat_tests!(
//!     celeriac_testkit::beat_suite::OnBackend(sqlite_backend),
//!     beat_conformance_backend
//! );
//! ```
//!
//! Every case uses fresh schedule names and two instances of the store (two processes), so
//! a factory may also hand out one shared store. Leases that must lapse are taken for
//! [`SHORT_TTL`]; the cases wait for the lapse by watching `lease_holder`, never by sleeping
//! a fixed time.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::backend::ResultBackend;
use celeriac_core::beat::{BeatStore, LastRun, LeaseHolder};
use celeriac_core::broker::Broker;
use celeriac_core::time::from_millis;
use chrono::{SubsecRound, Utc};

use crate::backend_suite::BackendFactory;
use crate::broker_suite::BrokerFactory;
use crate::{unique, BoxFuture, Case, CaseResult, FactoryOptions, Instance, Report, Skip};

/// What a beat case opens: an engine handle whose `beat_store()` it tests. Beat asks the
/// broker first and the result backend when the broker has no store, so both are tested.
#[derive(Clone)]
pub enum BeatHandle {
    Broker(Arc<dyn Broker>),
    Backend(Arc<dyn ResultBackend>),
}

impl BeatHandle {
    pub fn beat_store(&self) -> Option<&dyn BeatStore> {
        match self {
            BeatHandle::Broker(b) => b.beat_store(),
            BeatHandle::Backend(b) => b.beat_store(),
        }
    }
}

/// Opens a fresh, isolated store for one beat case.
///
/// Implemented for every `Fn(FactoryOptions) -> Fut` where `Fut` resolves to
/// `Result<Instance<BeatHandle>, Skip>`, and by [`OnBroker`] / [`OnBackend`].
pub trait BeatFactory: Send + Sync {
    fn open(&self, options: FactoryOptions) -> BoxFuture<'_, Result<Instance<BeatHandle>, Skip>>;
}

impl<F, Fut> BeatFactory for F
where
    F: Fn(FactoryOptions) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Instance<BeatHandle>, Skip>> + Send + 'static,
{
    fn open(&self, options: FactoryOptions) -> BoxFuture<'_, Result<Instance<BeatHandle>, Skip>> {
        Box::pin(self(options))
    }
}

/// Tests the `beat_store()` of the brokers a [`BrokerFactory`] opens.
pub struct OnBroker<F>(pub F);

/// Tests the `beat_store()` of the result backends a [`BackendFactory`] opens.
pub struct OnBackend<F>(pub F);

impl<F: BrokerFactory> BeatFactory for OnBroker<F> {
    fn open(&self, options: FactoryOptions) -> BoxFuture<'_, Result<Instance<BeatHandle>, Skip>> {
        Box::pin(async move {
            let instance = self.0.open(options).await?;
            Ok(instance.map(|b| Arc::new(BeatHandle::Broker(b))))
        })
    }
}

impl<F: BackendFactory> BeatFactory for OnBackend<F> {
    fn open(&self, options: FactoryOptions) -> BoxFuture<'_, Result<Instance<BeatHandle>, Skip>> {
        Box::pin(async move {
            let instance = self.0.open(options).await?;
            Ok(instance.map(|b| Arc::new(BeatHandle::Backend(b))))
        })
    }
}

/// A lease no case lets lapse.
pub const LONG_TTL: Duration = Duration::from_secs(30);
/// The lease the lapse cases take: short enough to wait for, long enough to use first.
pub const SHORT_TTL: Duration = Duration::from_millis(300);
/// How long after taking a [`SHORT_TTL`] lease it must have lapsed at the latest.
pub const LAPSE_DEADLINE: Duration = Duration::from_secs(5);

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case of the suite, in a stable order.
        pub fn cases() -> Vec<Case<dyn BeatFactory>> {
            vec![$(Case { name: stringify!($name), run: |f| Box::pin($name(f)) }),*]
        }
    };
}

cases!(
    one_holder_at_a_time,
    renew_keeps_token,
    lapsed_lease_passes_with_a_larger_token,
    stale_token_writes_nothing,
    last_runs_round_trip,
    release_frees_at_once,
    schedules_are_isolated,
);

/// Runs every case whose name contains `filter` (all when `None`) against `factory`, printing
/// one line per case; panics at the end if any failed.
pub async fn run_all(factory: &(dyn BeatFactory + 'static), filter: Option<&str>) -> Report {
    crate::run_cases("beat", cases(), factory, filter).await
}

/// Runs one case on its own runtime; what [`beat_tests!`](crate::beat_tests) calls.
pub fn run_one(factory: &(dyn BeatFactory + 'static), name: &str) {
    crate::run_one_blocking("beat", cases(), factory, name)
}

#[doc(hidden)]
pub fn assert_listed(listed: &[&str]) {
    crate::assert_listed("beat", cases(), listed)
}

/// Generates one `#[test]` per beat case in a module `beat_conformance` (or the module named
/// second, so one test file can run the suite on a broker and on a backend), each opening
/// its store with `$factory` (an expression evaluating to a [`BeatFactory`], resolved in the
/// calling module).
#[macro_export]
macro_rules! beat_tests {
    ($factory:expr) => {
        $crate::beat_tests!($factory, beat_conformance);
    };
    ($factory:expr, $module:ident) => {
        $crate::beat_tests!(@cases $module, $factory;
            one_holder_at_a_time,
            renew_keeps_token,
            lapsed_lease_passes_with_a_larger_token,
            stale_token_writes_nothing,
            last_runs_round_trip,
            release_frees_at_once,
            schedules_are_isolated,
        );
    };
    (@cases $module:ident, $factory:expr; $($name:ident),* $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    $crate::beat_suite::run_one(&$factory, stringify!($name));
                }
            )*
            #[test]
            fn every_case_has_a_test() {
                $crate::beat_suite::assert_listed(&[$(stringify!($name)),*]);
            }
        }
    };
}

// ----------------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------------

/// The case's instance and a second one on the same store (another process); skips when
/// the engine has no beat store.
async fn open(
    f: &dyn BeatFactory,
) -> Result<(Instance<BeatHandle>, Arc<BeatHandle>, Arc<BeatHandle>), Skip> {
    let instance = f.open(FactoryOptions::default()).await?;
    let first = instance.get();
    if first.beat_store().is_none() {
        return Err(Skip::new("the engine has no BeatStore capability"));
    }
    let second = instance.open_again().await;
    Ok((instance, first, second))
}

fn store(h: &BeatHandle) -> &dyn BeatStore {
    h.beat_store().expect("checked by open")
}

const A: &str = "beat-a@conformance";
/// Nothing recorded (compares with a `Vec<LastRun>`).
const NO_RUNS: [LastRun; 0] = [];
const B: &str = "beat-b@conformance";

async fn acquire(s: &dyn BeatStore, schedule: &str, holder: &str, ttl: Duration) -> Option<u64> {
    s.acquire_lease(schedule, holder, ttl)
        .await
        .expect("acquire_lease")
}

async fn holder(s: &dyn BeatStore, schedule: &str) -> Option<LeaseHolder> {
    s.lease_holder(schedule).await.expect("lease_holder")
}

/// Who holds `schedule`, as (holder, token).
async fn held_by(s: &dyn BeatStore, schedule: &str) -> Option<(String, u64)> {
    holder(s, schedule).await.map(|h| (h.holder, h.token))
}

async fn record(s: &dyn BeatStore, schedule: &str, by: &str, token: u64, runs: &[LastRun]) -> bool {
    s.record_runs(schedule, by, token, runs)
        .await
        .expect("record_runs")
}

/// Every entry's last run, sorted by entry (the store answers in no particular order).
async fn last_runs(s: &dyn BeatStore, schedule: &str) -> Vec<LastRun> {
    let mut runs = s.last_runs(schedule).await.expect("last_runs");
    runs.sort_by(|a, b| a.entry.cmp(&b.entry));
    runs
}

fn run(entry: &str, schedule: &str, at_ms: i64, count: u64) -> LastRun {
    LastRun {
        entry: entry.to_string(),
        schedule: schedule.to_string(),
        at: from_millis(at_ms),
        total_run_count: count,
    }
}

/// Waits until `schedule`'s lease has lapsed (`lease_holder` says nobody holds it), at most
/// until [`LAPSE_DEADLINE`] after `taken`; returns how long after `taken` that was.
async fn wait_lapsed(s: &dyn BeatStore, schedule: &str, taken: Instant) -> Duration {
    loop {
        let now = holder(s, schedule).await;
        let waited = taken.elapsed();
        match now {
            None => return waited,
            Some(h) if waited > LAPSE_DEADLINE => {
                panic!("a lease taken for {SHORT_TTL:?} is still held {waited:?} later: {h:?}")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

// ----------------------------------------------------------------------------------------
// Cases
// ----------------------------------------------------------------------------------------

/// Two holders on two instances race for one lease 20 times, the winner releasing it after
/// each round: each round exactly one gets it, the lease names the winner and its token,
/// the loser cannot take it while it is live, and the token grows every round (a released
/// lease taken again has changed hands, whoever takes it).
async fn one_holder_at_a_time(f: &dyn BeatFactory) -> CaseResult {
    let (_i, first, second) = open(f).await?;
    let (a, b) = (store(&first), store(&second));
    let s = unique("race");
    let mut last: Option<u64> = None;
    for round in 0..20 {
        let (ta, tb) = tokio::join!(acquire(a, &s, A, LONG_TTL), acquire(b, &s, B, LONG_TTL));
        let (winner, token, loser, loser_name) = match (ta, tb) {
            (Some(t), None) => (A, t, b, B),
            (None, Some(t)) => (B, t, a, A),
            both => panic!(
                "round {round}: exactly one of two racing holders gets the lease, got {both:?}"
            ),
        };
        assert_eq!(
            held_by(a, &s).await,
            Some((winner.to_string(), token)),
            "round {round}: the lease names the winner"
        );
        assert_eq!(
            acquire(loser, &s, loser_name, LONG_TTL).await,
            None,
            "round {round}: the loser cannot take a live lease"
        );
        if let Some(old) = last {
            assert!(
                token > old,
                "round {round}: a released lease was taken again with token {token} after {old}"
            );
        }
        last = Some(token);
        let winner_store = if winner == A { a } else { b };
        winner_store
            .release_lease(&s, winner, token)
            .await
            .expect("release_lease");
    }
    Ok(())
}

/// A holder that acquires again keeps its token, and the lease then lasts the new TTL:
/// longer after a long renewal, and lapsing after a short one.
async fn renew_keeps_token(f: &dyn BeatFactory) -> CaseResult {
    let (_i, first, second) = open(f).await?;
    let (a, b) = (store(&first), store(&second));
    let s = unique("renew");
    let token = acquire(a, &s, A, SHORT_TTL)
        .await
        .expect("a free lease is taken");
    for _ in 0..3 {
        assert_eq!(
            acquire(a, &s, A, LONG_TTL).await,
            Some(token),
            "renewing keeps the token"
        );
    }
    let h = holder(b, &s)
        .await
        .expect("held, seen from another instance");
    assert_eq!((h.holder.as_str(), h.token), (A, token));
    assert!(
        h.remaining > LONG_TTL / 2 && h.remaining <= LONG_TTL,
        "a lease renewed for {LONG_TTL:?} has {:?} left",
        h.remaining
    );
    assert!(
        record(a, &s, A, token, &[]).await,
        "the renewed token is not live"
    );
    let renewed = Instant::now();
    assert_eq!(acquire(a, &s, A, SHORT_TTL).await, Some(token));
    let h = holder(a, &s).await.expect("still held");
    assert!(
        h.remaining <= SHORT_TTL,
        "a lease renewed for {SHORT_TTL:?} has {:?} left",
        h.remaining
    );
    wait_lapsed(a, &s, renewed).await;
    Ok(())
}

/// A lease not renewed lapses after its TTL and then goes to another holder, with a larger
/// token; the old holder then cannot take it back. A holder that takes back its own lapsed
/// lease gets a larger token too.
async fn lapsed_lease_passes_with_a_larger_token(f: &dyn BeatFactory) -> CaseResult {
    let (_i, first, second) = open(f).await?;
    let (a, b) = (store(&first), store(&second));
    let s = unique("lapse");
    let taken = Instant::now();
    let ta = acquire(a, &s, A, SHORT_TTL)
        .await
        .expect("a free lease is taken");
    assert_eq!(
        acquire(b, &s, B, LONG_TTL).await,
        None,
        "a live lease is not taken"
    );
    let lapsed = wait_lapsed(b, &s, taken).await;
    assert!(
        lapsed >= SHORT_TTL / 2,
        "a lease taken for {SHORT_TTL:?} lapsed after {lapsed:?}"
    );
    let tb = acquire(b, &s, B, LONG_TTL)
        .await
        .expect("a lapsed lease goes to the next holder");
    assert!(
        tb > ta,
        "the new holder's token {tb} is not larger than the old {ta}"
    );
    assert_eq!(
        acquire(a, &s, A, LONG_TTL).await,
        None,
        "the old holder finds it taken"
    );
    assert_eq!(held_by(a, &s).await, Some((B.to_string(), tb)));

    let again = unique("lapse-same");
    let taken = Instant::now();
    let t1 = acquire(a, &again, A, SHORT_TTL)
        .await
        .expect("a free lease is taken");
    wait_lapsed(a, &again, taken).await;
    let t2 = acquire(a, &again, A, LONG_TTL)
        .await
        .expect("a lapsed lease is taken");
    assert!(
        t2 > t1,
        "the same holder took its lapsed lease back with token {t2} after {t1}"
    );
    Ok(())
}

/// `record_runs` writes nothing and answers false under a token never handed out, another
/// holder's name, a lease that lapsed (before and after someone else took it); the live
/// holder's write then lands alone.
async fn stale_token_writes_nothing(f: &dyn BeatFactory) -> CaseResult {
    let (_i, first, second) = open(f).await?;
    let (a, b) = (store(&first), store(&second));
    let s = unique("stale");
    let stale = [run("tick", "<freq: 10.00 seconds>", 1_767_225_600_000, 1)];
    let taken = Instant::now();
    let ta = acquire(a, &s, A, SHORT_TTL)
        .await
        .expect("a free lease is taken");
    assert!(
        !record(a, &s, A, ta + 1, &stale).await,
        "a token never handed out wrote"
    );
    assert!(
        !record(a, &s, B, ta, &stale).await,
        "another holder's name wrote"
    );
    assert_eq!(
        last_runs(a, &s).await,
        NO_RUNS,
        "a refused record wrote runs"
    );
    wait_lapsed(a, &s, taken).await;
    assert!(
        !record(a, &s, A, ta, &stale).await,
        "a lapsed lease's token wrote"
    );
    let tb = acquire(b, &s, B, LONG_TTL)
        .await
        .expect("a lapsed lease is taken");
    assert!(
        !record(a, &s, A, ta, &stale).await,
        "the old leader's token wrote"
    );
    assert_eq!(
        last_runs(b, &s).await,
        NO_RUNS,
        "a refused record wrote runs"
    );
    let live = [run("tick", "<freq: 10.00 seconds>", 1_767_225_610_000, 2)];
    assert!(
        record(b, &s, B, tb, &live).await,
        "the live holder's token did not write"
    );
    assert_eq!(last_runs(a, &s).await, live);
    Ok(())
}

/// Recorded runs read back from any instance exactly (entry, schedule text, due time to the
/// millisecond, count); recording an entry again replaces it and leaves the others; nothing
/// recorded and no lease on a fresh schedule.
async fn last_runs_round_trip(f: &dyn BeatFactory) -> CaseResult {
    let (_i, first, second) = open(f).await?;
    let (a, b) = (store(&first), store(&second));
    let s = unique("runs");
    assert_eq!(holder(a, &s).await, None, "a fresh schedule has a lease");
    assert_eq!(last_runs(a, &s).await, NO_RUNS, "a fresh schedule has runs");
    let token = acquire(a, &s, A, LONG_TTL)
        .await
        .expect("a free lease is taken");
    let now_ms = Utc::now().trunc_subsecs(3).timestamp_millis();
    let v1 = vec![
        run("nightly", "<crontab: 0 3 * * * (m/h/dM/MY/d)>", now_ms, 1),
        run("tick", "<freq: 10.00 seconds>", 1_767_225_600_123, 3),
    ];
    assert!(
        record(a, &s, A, token, &v1).await,
        "the holder could not record"
    );
    assert_eq!(
        last_runs(b, &s).await,
        v1,
        "read back from another instance"
    );
    assert!(
        record(a, &s, A, token, &[]).await,
        "recording nothing under a live lease answered false"
    );
    assert_eq!(
        last_runs(a, &s).await,
        v1,
        "recording nothing changes nothing"
    );
    // The holder is a name, not a connection: the same holder may write from anywhere.
    let tick = run("tick", "<freq: 20.00 seconds>", 1_767_225_620_999, 4);
    assert!(record(b, &s, A, token, std::slice::from_ref(&tick)).await);
    assert_eq!(
        last_runs(a, &s).await,
        [v1[0].clone(), tick],
        "a recorded entry replaces its earlier state, the others stay"
    );
    Ok(())
}

/// A released lease is free at once for another holder (with a larger token), who is not
/// disturbed by a late release; a release with a wrong token or by another holder does
/// nothing.
async fn release_frees_at_once(f: &dyn BeatFactory) -> CaseResult {
    let (_i, first, second) = open(f).await?;
    let (a, b) = (store(&first), store(&second));
    let s = unique("release");
    let ta = acquire(a, &s, A, LONG_TTL)
        .await
        .expect("a free lease is taken");
    a.release_lease(&s, A, ta + 1).await.expect("release_lease");
    b.release_lease(&s, B, ta).await.expect("release_lease");
    assert_eq!(
        held_by(b, &s).await,
        Some((A.to_string(), ta)),
        "a release with another token or by another holder does nothing"
    );
    a.release_lease(&s, A, ta).await.expect("release_lease");
    assert_eq!(holder(b, &s).await, None, "released at once");
    let tb = acquire(b, &s, B, LONG_TTL)
        .await
        .expect("a released lease is free at once");
    assert!(
        tb > ta,
        "the next holder's token {tb} is not larger than the old {ta}"
    );
    assert!(
        !record(a, &s, A, ta, &[]).await,
        "the released token still writes"
    );
    a.release_lease(&s, A, ta).await.expect("release_lease");
    assert_eq!(
        held_by(a, &s).await,
        Some((B.to_string(), tb)),
        "a late release does nothing"
    );
    Ok(())
}

/// Two schedules (one named like the other's key suffix) have their own leases, tokens and
/// runs.
async fn schedules_are_isolated(f: &dyn BeatFactory) -> CaseResult {
    let (_i, first, second) = open(f).await?;
    let (a, b) = (store(&first), store(&second));
    let s1 = unique("iso");
    let s2 = format!("{s1}.lease");
    let t1 = acquire(a, &s1, A, LONG_TTL)
        .await
        .expect("a free lease is taken");
    let t2 = acquire(b, &s2, B, LONG_TTL)
        .await
        .expect("another schedule's lease is free");
    assert_eq!(acquire(a, &s2, A, LONG_TTL).await, None);
    assert_eq!(acquire(b, &s1, B, LONG_TTL).await, None);
    let r1 = [run("tick", "<freq: 1.00 seconds>", 1_767_225_600_001, 1)];
    let r2 = [run("tick", "<freq: 2.00 seconds>", 1_767_225_600_002, 2)];
    assert!(record(a, &s1, A, t1, &r1).await);
    assert!(record(b, &s2, B, t2, &r2).await);
    assert!(
        !record(a, &s2, A, t1, &r1).await,
        "a lease on one schedule wrote another's runs"
    );
    assert_eq!(last_runs(b, &s1).await, r1);
    assert_eq!(last_runs(a, &s2).await, r2);
    a.release_lease(&s1, A, t1).await.expect("release_lease");
    assert_eq!(holder(a, &s1).await, None);
    assert_eq!(
        held_by(a, &s2).await,
        Some((B.to_string(), t2)),
        "releasing one schedule leaves the other held"
    );
    Ok(())
}
