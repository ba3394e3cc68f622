//! The result-backend conformance suite: the contract documented on
//! [`ResultBackend`] in `celeriac_core::backend`, tested through `Arc<dyn ResultBackend>` only.
//!
//! Plug an engine in with a factory (any `Fn(FactoryOptions) -> impl Future<Output =
//! Result<Instance<dyn ResultBackend>, Skip>>`, or a type implementing [`BackendFactory`]) and
//! [`backend_tests!`](crate::backend_tests) (one `#[test]` per case) or [`run_all`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::backend::ResultBackend;
use celeriac_core::state::{ExceptionInfo, ExtendedMeta, TaskMeta, TaskState};
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{json, Map};

use crate::{unique, BoxFuture, Case, CaseResult, FactoryOptions, Instance, Report, Skip};

mod chords;
use chords::{
    chord_completes_once_in_header_order, chord_counts_a_member_stored_twice_once,
    chord_race_has_one_winner,
};

/// Opens a fresh, isolated result store for one case.
///
/// Implemented for every `Fn(FactoryOptions) -> Fut` where `Fut` resolves to
/// `Result<Instance<dyn ResultBackend>, Skip>`, so an `async fn` is a factory.
pub trait BackendFactory: Send + Sync {
    fn open(
        &self,
        options: FactoryOptions,
    ) -> BoxFuture<'_, Result<Instance<dyn ResultBackend>, Skip>>;
}

impl<F, Fut> BackendFactory for F
where
    F: Fn(FactoryOptions) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Instance<dyn ResultBackend>, Skip>> + Send + 'static,
{
    fn open(
        &self,
        options: FactoryOptions,
    ) -> BoxFuture<'_, Result<Instance<dyn ResultBackend>, Skip>> {
        Box::pin(self(options))
    }
}

/// The expiry the expiry cases use (Redis TTLs have 1 s granularity) and how long they wait.
pub const SHORT_EXPIRY: Duration = Duration::from_secs(1);
pub const EXPIRY_WAIT: Duration = Duration::from_millis(2500);

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case of the suite, in a stable order.
        pub fn cases() -> Vec<Case<dyn BackendFactory>> {
            vec![$(Case { name: stringify!($name), run: |f| Box::pin($name(f)) }),*]
        }
    };
}

cases!(
    unknown_is_none,
    round_trip_every_state,
    latest_state_wins,
    success_never_overwritten,
    results_expire,
    forget,
    wait_returns_when_ready,
    wait_wakes_on_other_instance,
    wait_times_out_with_latest,
    groups_save_restore,
    groups_expire,
    concurrent_stores,
    get_many_reads_in_order,
    chord_completes_once_in_header_order,
    chord_counts_a_member_stored_twice_once,
    chord_race_has_one_winner,
);

/// Runs every case whose name contains `filter` (all when `None`) against `factory`, printing
/// one line per case; panics at the end if any failed.
pub async fn run_all(factory: &(dyn BackendFactory + 'static), filter: Option<&str>) -> Report {
    crate::run_cases("backend", cases(), factory, filter).await
}

/// Runs one case on its own runtime; what [`backend_tests!`](crate::backend_tests) calls.
pub fn run_one(factory: &(dyn BackendFactory + 'static), name: &str) {
    crate::run_one_blocking("backend", cases(), factory, name)
}

#[doc(hidden)]
pub fn assert_listed(listed: &[&str]) {
    crate::assert_listed("backend", cases(), listed)
}

/// Generates one `#[test]` per backend case in a module `backend_conformance`, each opening
/// its store with `$factory` (an expression evaluating to a [`BackendFactory`], resolved in
/// the calling module).
#[macro_export]
macro_rules! backend_tests {
    ($factory:expr) => {
        $crate::backend_tests!(@cases $factory;
            unknown_is_none,
            round_trip_every_state,
            latest_state_wins,
            success_never_overwritten,
            results_expire,
            forget,
            wait_returns_when_ready,
            wait_wakes_on_other_instance,
            wait_times_out_with_latest,
            groups_save_restore,
            groups_expire,
            concurrent_stores,
            get_many_reads_in_order,
            chord_completes_once_in_header_order,
            chord_counts_a_member_stored_twice_once,
            chord_race_has_one_winner,
        );
    };
    (@cases $factory:expr; $($name:ident),* $(,)?) => {
        mod backend_conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    $crate::backend_suite::run_one(&$factory, stringify!($name));
                }
            )*
            #[test]
            fn every_case_has_a_test() {
                $crate::backend_suite::assert_listed(&[$(stringify!($name)),*]);
            }
        }
    };
}

// ----------------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------------

async fn open(
    f: &dyn BackendFactory,
) -> Result<(Instance<dyn ResultBackend>, Arc<dyn ResultBackend>), Skip> {
    let instance = f.open(FactoryOptions::default()).await?;
    let backend = instance.get();
    Ok((instance, backend))
}

/// Now, to the microsecond (what Celery's `date_done` carries).
fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A meta with every field set the way the worker sets it for `status`.
fn meta(id: &str, status: TaskState) -> TaskMeta {
    let mut m = TaskMeta::pending(id);
    m.status = status;
    m.result = match status {
        TaskState::Success => json!({"sum": 5, "items": [1, "two", null, true], "text": "é✓"}),
        TaskState::Started => json!({"pid": 4242, "hostname": "w1@host"}),
        TaskState::Failure | TaskState::Retry | TaskState::Revoked => {
            ExceptionInfo::new("ValueError", format!("boom {id}")).to_value()
        }
        _ => json!(null),
    };
    if status.is_exception() {
        m.traceback = Some("Traceback (most recent call last):\n  ValueError: boom\n".into());
    }
    m.date_done = Some(now_micros());
    m.parent_id = Some(unique("parent"));
    m.group_id = Some(unique("group"));
    m.children = Some(vec![json!([[unique("child"), null], null])]);
    m
}

fn with_extended(mut m: TaskMeta) -> TaskMeta {
    let mut kwargs = Map::new();
    kwargs.insert("z".into(), json!(1));
    kwargs.insert("a".into(), json!([2, 3]));
    m.extended = Some(ExtendedMeta {
        name: "conformance.add".into(),
        args: vec![json!(2), json!("x")],
        kwargs,
        worker: "w1@host".into(),
        retries: 2,
        queue: "celery".into(),
    });
    m
}

async fn get(b: &Arc<dyn ResultBackend>, id: &str) -> Option<TaskMeta> {
    b.get(id).await.expect("get")
}

async fn store(b: &Arc<dyn ResultBackend>, m: &TaskMeta, expires: Option<Duration>) {
    b.store(m, expires).await.expect("store")
}

// ----------------------------------------------------------------------------------------
// Cases
// ----------------------------------------------------------------------------------------

/// Nothing stored: `get` is `None` (PENDING), and so is `restore_group`.
async fn unknown_is_none(f: &dyn BackendFactory) -> CaseResult {
    let (_i, b) = open(f).await?;
    assert_eq!(get(&b, &unique("never")).await, None);
    assert_eq!(
        b.restore_group(&unique("never")).await.expect("restore"),
        None
    );
    Ok(())
}

/// Every state's meta (plain and extended, with or without `date_done`) reads back equal,
/// `date_done` to the microsecond — from this instance and another one.
async fn round_trip_every_state(f: &dyn BackendFactory) -> CaseResult {
    let (instance, b) = open(f).await?;
    let other = instance.open_again().await;
    let mut stored = Vec::new();
    for status in [
        TaskState::Success,
        TaskState::Failure,
        TaskState::Retry,
        TaskState::Started,
        TaskState::Revoked,
        TaskState::Received,
    ] {
        let plain = meta(&unique(status.as_str()), status);
        let mut bare = TaskMeta::pending(unique(status.as_str()));
        bare.status = status;
        bare.children = None;
        bare.result = plain.result.clone();
        let extended = with_extended(meta(&unique(status.as_str()), status));
        for m in [plain, bare, extended] {
            store(&b, &m, None).await;
            stored.push(m);
        }
    }
    for m in &stored {
        let got = get(&b, &m.task_id).await;
        assert_eq!(got.as_ref(), Some(m), "{} round trip", m.status);
        let got = get(&other, &m.task_id).await;
        assert_eq!(got.as_ref(), Some(m), "{} from another instance", m.status);
    }
    Ok(())
}

/// Before SUCCESS, each store replaces the previous state (STARTED → RETRY → STARTED →
/// FAILURE → SUCCESS; a retried failure may still succeed).
async fn latest_state_wins(f: &dyn BackendFactory) -> CaseResult {
    let (_i, b) = open(f).await?;
    let id = unique("t");
    for status in [
        TaskState::Started,
        TaskState::Retry,
        TaskState::Started,
        TaskState::Failure,
        TaskState::Success,
    ] {
        let m = meta(&id, status);
        store(&b, &m, None).await;
        assert_eq!(get(&b, &id).await, Some(m), "after storing {status}");
    }
    Ok(())
}

/// A stored SUCCESS is never overwritten: later STARTED, RETRY, FAILURE, REVOKED and a second
/// SUCCESS lose — from this instance or another.
async fn success_never_overwritten(f: &dyn BackendFactory) -> CaseResult {
    let (instance, b) = open(f).await?;
    let other = instance.open_again().await;
    let id = unique("t");
    let first = meta(&id, TaskState::Success);
    store(&b, &first, None).await;
    for (who, backend) in [("this instance", &b), ("another instance", &other)] {
        for status in [
            TaskState::Started,
            TaskState::Retry,
            TaskState::Failure,
            TaskState::Revoked,
            TaskState::Success,
        ] {
            let mut late = meta(&id, status);
            if status == TaskState::Success {
                late.result = json!("second");
            }
            store(backend, &late, None).await;
            assert_eq!(
                get(&b, &id).await.as_ref(),
                Some(&first),
                "a late {status} from {who} overwrote SUCCESS"
            );
        }
    }
    Ok(())
}

/// A ready result stored with an expiry disappears after it; one stored without stays; an
/// expired result no longer blocks a new one under the same id.
async fn results_expire(f: &dyn BackendFactory) -> CaseResult {
    let (_i, b) = open(f).await?;
    let (short, kept, failed) = (unique("short"), unique("kept"), unique("failed"));
    store(&b, &meta(&short, TaskState::Success), Some(SHORT_EXPIRY)).await;
    store(&b, &meta(&failed, TaskState::Failure), Some(SHORT_EXPIRY)).await;
    store(&b, &meta(&kept, TaskState::Success), None).await;
    assert!(get(&b, &short).await.is_some(), "present before expiry");
    tokio::time::sleep(EXPIRY_WAIT).await;
    assert_eq!(get(&b, &short).await, None, "an expired SUCCESS is gone");
    assert_eq!(get(&b, &failed).await, None, "an expired FAILURE is gone");
    assert!(get(&b, &kept).await.is_some(), "no expiry: kept");
    let again = meta(&short, TaskState::Success);
    store(&b, &again, None).await;
    assert_eq!(
        get(&b, &short).await,
        Some(again),
        "an expired SUCCESS does not block a new result"
    );
    Ok(())
}

/// `forget` removes a result (any state); forgetting an unknown id is fine; after forgetting,
/// a new result can be stored under the id.
async fn forget(f: &dyn BackendFactory) -> CaseResult {
    let (instance, b) = open(f).await?;
    let (done, started) = (unique("done"), unique("started"));
    store(&b, &meta(&done, TaskState::Success), None).await;
    store(&b, &meta(&started, TaskState::Started), None).await;
    b.forget(&done).await.expect("forget");
    b.forget(&started).await.expect("forget");
    assert_eq!(get(&b, &done).await, None);
    assert_eq!(get(&b, &started).await, None);
    let other = instance.open_again().await;
    assert_eq!(get(&other, &done).await, None, "forgotten everywhere");
    b.forget(&unique("never")).await.expect("forget unknown");
    let fresh = meta(&done, TaskState::Failure);
    store(&b, &fresh, None).await;
    assert_eq!(get(&b, &done).await, Some(fresh));
    Ok(())
}

/// `wait` returns at once for a ready result and as soon as this instance stores one (passing
/// over non-ready states).
async fn wait_returns_when_ready(f: &dyn BackendFactory) -> CaseResult {
    let (_i, b) = open(f).await?;
    let ready = unique("ready");
    let m = meta(&ready, TaskState::Failure);
    store(&b, &m, None).await;
    let start = Instant::now();
    assert_eq!(
        b.wait(&ready, Duration::from_secs(10)).await.expect("wait"),
        Some(m)
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    let id = unique("t");
    let done = meta(&id, TaskState::Success);
    let (w, wid, wdone) = (b.clone(), id.clone(), done.clone());
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store(&w, &meta(&wid, TaskState::Started), None).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        store(&w, &wdone, None).await;
    });
    let start = Instant::now();
    let got = b.wait(&id, Duration::from_secs(20)).await.expect("wait");
    let took = start.elapsed();
    writer.await.expect("writer");
    assert_eq!(
        got,
        Some(done),
        "wait passes over STARTED and returns SUCCESS"
    );
    assert!(
        took < Duration::from_secs(5),
        "wait returned after {took:?} of 20 s"
    );
    Ok(())
}

/// `wait` returns promptly when another instance (another process) stores the ready result.
async fn wait_wakes_on_other_instance(f: &dyn BackendFactory) -> CaseResult {
    let (instance, b) = open(f).await?;
    let other = instance.open_again().await;
    for status in [TaskState::Success, TaskState::Failure, TaskState::Revoked] {
        let id = unique("t");
        let done = meta(&id, status);
        let (w, wdone) = (other.clone(), done.clone());
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            store(&w, &wdone, None).await;
        });
        let start = Instant::now();
        let got = b.wait(&id, Duration::from_secs(20)).await.expect("wait");
        let took = start.elapsed();
        writer.await.expect("writer");
        assert_eq!(got, Some(done), "{status} stored by another instance");
        assert!(
            took < Duration::from_secs(5),
            "wait for {status} from another instance returned after {took:?} of 20 s"
        );
    }
    Ok(())
}

/// At the timeout, `wait` returns the latest non-ready meta (or `None` when nothing is stored),
/// not earlier.
async fn wait_times_out_with_latest(f: &dyn BackendFactory) -> CaseResult {
    let (_i, b) = open(f).await?;
    let id = unique("t");
    let started = meta(&id, TaskState::Started);
    store(&b, &started, None).await;
    let retry = meta(&id, TaskState::Retry);
    let (w, wretry) = (b.clone(), retry.clone());
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        store(&w, &wretry, None).await;
    });
    let start = Instant::now();
    let got = b.wait(&id, Duration::from_millis(600)).await.expect("wait");
    let took = start.elapsed();
    writer.await.expect("writer");
    assert_eq!(
        got,
        Some(retry),
        "the latest non-ready state at the timeout"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "wait(600ms) on a non-ready task returned after {took:?}"
    );
    let start = Instant::now();
    let none = b
        .wait(&unique("never"), Duration::from_millis(300))
        .await
        .expect("wait");
    let took = start.elapsed();
    assert_eq!(none, None);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "wait(300ms) on an unknown task returned after {took:?}"
    );
    Ok(())
}

/// A saved group restores its member ids in order, from any instance; saving again replaces it.
async fn groups_save_restore(f: &dyn BackendFactory) -> CaseResult {
    let (instance, b) = open(f).await?;
    let g = unique("g");
    let ids: Vec<String> = (0..5).map(|i| format!("{}-{i}", unique("m"))).collect();
    b.save_group(&g, &ids, None).await.expect("save_group");
    assert_eq!(
        b.restore_group(&g).await.expect("restore"),
        Some(ids.clone())
    );
    let other = instance.open_again().await;
    assert_eq!(
        other.restore_group(&g).await.expect("restore"),
        Some(ids),
        "visible from another instance"
    );
    let empty = unique("empty");
    b.save_group(&empty, &[], None).await.expect("save_group");
    assert_eq!(
        b.restore_group(&empty).await.expect("restore"),
        Some(Vec::new()),
        "an empty group is saved too"
    );
    let replaced = vec![unique("x")];
    b.save_group(&g, &replaced, None).await.expect("save_group");
    assert_eq!(b.restore_group(&g).await.expect("restore"), Some(replaced));
    Ok(())
}

/// A group saved with an expiry disappears after it; one without stays.
async fn groups_expire(f: &dyn BackendFactory) -> CaseResult {
    let (_i, b) = open(f).await?;
    let (short, kept) = (unique("short"), unique("kept"));
    b.save_group(&short, &[unique("a")], Some(SHORT_EXPIRY))
        .await
        .expect("save_group");
    b.save_group(&kept, &[unique("b")], None)
        .await
        .expect("save_group");
    assert!(b.restore_group(&short).await.expect("restore").is_some());
    tokio::time::sleep(EXPIRY_WAIT).await;
    assert_eq!(b.restore_group(&short).await.expect("restore"), None);
    assert!(b.restore_group(&kept).await.expect("restore").is_some());
    Ok(())
}

/// Many concurrent stores (as a busy worker makes) all land.
async fn concurrent_stores(f: &dyn BackendFactory) -> CaseResult {
    let (_i, b) = open(f).await?;
    let prefix = unique("t");
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (b, id) = (b.clone(), format!("{prefix}-{i}"));
        tasks.push(tokio::spawn(async move {
            let mut m = meta(&id, TaskState::Success);
            m.result = json!(i);
            store(&b, &m, None).await;
        }));
    }
    for t in tasks {
        t.await.expect("store task");
    }
    for i in 0..300 {
        let got = get(&b, &format!("{prefix}-{i}")).await;
        assert_eq!(got.map(|m| m.result), Some(json!(i)));
    }
    Ok(())
}

/// `get_many` answers for every id in order, `None` where nothing is stored.
async fn get_many_reads_in_order(f: &dyn BackendFactory) -> CaseResult {
    let (_i, b) = open(f).await?;
    let prefix = unique("many");
    let ids: Vec<String> = (0..1500).map(|i| format!("{prefix}-{i}")).collect();
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 3 != 1) {
        let mut m = meta(id, TaskState::Success);
        m.result = json!(i);
        store(&b, &m, None).await;
    }
    let metas = b.get_many(&ids).await.expect("get_many");
    assert_eq!(metas.len(), ids.len());
    for (i, meta) in metas.iter().enumerate() {
        match meta {
            Some(m) => assert_eq!((i % 3 != 1, &m.result), (true, &json!(i)), "id {i}"),
            None => assert_eq!(i % 3, 1, "id {i} was stored"),
        }
    }
    Ok(())
}
