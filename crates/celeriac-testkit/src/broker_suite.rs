//! The broker conformance suite: the contract documented on
//! [`Broker`], [`Consumer`] and the capability traits in `celeriac_core::broker`, tested
//! through `Arc<dyn Broker>` only.
//!
//! Plug an engine in with a factory (any `Fn(FactoryOptions) -> impl Future<Output =
//! Result<Instance<dyn Broker>, Skip>>`, or a type implementing [`BrokerFactory`]) and
//! [`broker_tests!`](crate::broker_tests) (one `#[test]` per case) or [`run_all`].
//!
//! Every case opens its own store through the factory and uses fresh queue names and task
//! ids, so a factory may also hand out one shared store.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac_core::broker::{
    Broker, Consumer, ConsumerSpec, Delivery, Publish, RawMessage, Signal,
};
use celeriac_core::error::ErrorKind;
use chrono::{TimeDelta, Utc};
use serde_json::{json, Map, Value};

use crate::{unique, BoxFuture, Case, CaseResult, FactoryOptions, Instance, Report, Skip};

mod broadcast;
use broadcast::{
    events_reach_every_receiver, mailbox_reaches_every_listener, queue_set_adds_and_cancels,
};

/// Opens a fresh, isolated broker store for one case.
///
/// Implemented for every `Fn(FactoryOptions) -> Fut` where `Fut` resolves to
/// `Result<Instance<dyn Broker>, Skip>`, so an `async fn` is a factory.
pub trait BrokerFactory: Send + Sync {
    fn open(&self, options: FactoryOptions) -> BoxFuture<'_, Result<Instance<dyn Broker>, Skip>>;
}

impl<F, Fut> BrokerFactory for F
where
    F: Fn(FactoryOptions) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Instance<dyn Broker>, Skip>> + Send + 'static,
{
    fn open(&self, options: FactoryOptions) -> BoxFuture<'_, Result<Instance<dyn Broker>, Skip>> {
        Box::pin(self(options))
    }
}

/// The lease length asked for by the cases that let leases lapse.
pub const SHORT_LEASE: Duration = Duration::from_secs(1);

/// How long after a lease lapses a message must be deliverable again at the latest.
pub const REDELIVERY_SLACK: Duration = Duration::from_secs(5);

const NO_WAIT: Duration = Duration::ZERO;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case of the suite, in a stable order.
        pub fn cases() -> Vec<Case<dyn BrokerFactory>> {
            vec![$(Case { name: stringify!($name), run: |f| Box::pin($name(f)) }),*]
        }
    };
}

cases!(
    round_trip,
    fifo_within_a_priority,
    priority_order,
    consumes_only_its_queues,
    fetch_waits_and_wakes,
    two_consumers_never_share,
    requeue_redelivers,
    lapsed_lease_redelivers,
    dropped_consumer_redelivers,
    keepalive_holds_lease,
    close_requeues_held,
    not_before_delays_delivery,
    not_before_without_delayed_delivery,
    purge,
    queue_lengths,
    dead_letter_removes_message,
    dead_letters_list_and_requeue,
    revocations_durable,
    cancelled_fetch_loses_nothing,
    queue_set_adds_and_cancels,
    mailbox_reaches_every_listener,
    events_reach_every_receiver,
);

/// Runs every case whose name contains `filter` (all when `None`) against `factory`, printing
/// one line per case; panics at the end if any failed.
pub async fn run_all(factory: &(dyn BrokerFactory + 'static), filter: Option<&str>) -> Report {
    crate::run_cases("broker", cases(), factory, filter).await
}

/// Runs one case on its own runtime; what [`broker_tests!`](crate::broker_tests) calls.
pub fn run_one(factory: &(dyn BrokerFactory + 'static), name: &str) {
    crate::run_one_blocking("broker", cases(), factory, name)
}

#[doc(hidden)]
pub fn assert_listed(listed: &[&str]) {
    crate::assert_listed("broker", cases(), listed)
}

/// Generates one `#[test]` per broker case in a module `broker_conformance`, each opening its
/// store with `$factory` (an expression evaluating to a [`BrokerFactory`], resolved in the
/// calling module).
#[macro_export]
macro_rules! broker_tests {
    ($factory:expr) => {
        $crate::broker_tests!(@cases $factory;
            round_trip,
            fifo_within_a_priority,
            priority_order,
            consumes_only_its_queues,
            fetch_waits_and_wakes,
            two_consumers_never_share,
            requeue_redelivers,
            lapsed_lease_redelivers,
            dropped_consumer_redelivers,
            keepalive_holds_lease,
            close_requeues_held,
            not_before_delays_delivery,
            not_before_without_delayed_delivery,
            purge,
            queue_lengths,
            dead_letter_removes_message,
            dead_letters_list_and_requeue,
            revocations_durable,
            cancelled_fetch_loses_nothing,
            queue_set_adds_and_cancels,
            mailbox_reaches_every_listener,
            events_reach_every_receiver,
        );
    };
    (@cases $factory:expr; $($name:ident),* $(,)?) => {
        mod broker_conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    $crate::broker_suite::run_one(&$factory, stringify!($name));
                }
            )*
            #[test]
            fn every_case_has_a_test() {
                $crate::broker_suite::assert_listed(&[$(stringify!($name)),*]);
            }
        }
    };
}

// ----------------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------------

async fn open(
    f: &dyn BrokerFactory,
    options: FactoryOptions,
) -> Result<(Instance<dyn Broker>, Arc<dyn Broker>), Skip> {
    let instance = f.open(options).await?;
    let broker = instance.get();
    Ok((instance, broker))
}

async fn open_default(
    f: &dyn BrokerFactory,
) -> Result<(Instance<dyn Broker>, Arc<dyn Broker>), Skip> {
    open(f, FactoryOptions::default()).await
}

async fn open_short_lease(
    f: &dyn BrokerFactory,
) -> Result<(Instance<dyn Broker>, Arc<dyn Broker>), Skip> {
    open(f, FactoryOptions::with_visibility_timeout(SHORT_LEASE)).await
}

async fn consumer(broker: &Arc<dyn Broker>, queues: &[&str]) -> Box<dyn Consumer> {
    broker
        .consumer(ConsumerSpec {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            name: "conformance@testkit".into(),
            prefetch: 0,
        })
        .await
        .expect("consumer")
}

/// A protocol-2-looking message whose headers, properties and body name `id`.
fn msg(id: &str) -> RawMessage {
    let mut headers = Map::new();
    headers.insert("lang".into(), json!("py"));
    headers.insert("task".into(), json!("conformance.echo"));
    headers.insert("id".into(), json!(id));
    headers.insert("root_id".into(), json!(id));
    headers.insert("parent_id".into(), Value::Null);
    headers.insert("retries".into(), json!(0));
    headers.insert("timelimit".into(), json!([null, 30]));
    headers.insert("argsrepr".into(), json!("('é', '✓')"));
    headers.insert("ignore_result".into(), json!(false));
    let mut properties = Map::new();
    properties.insert("correlation_id".into(), json!(id));
    properties.insert("reply_to".into(), json!("b6a4f0d2-reply"));
    RawMessage {
        headers,
        properties,
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        body: format!("[[\"{id}\", \"é✓\"], {{}}, {{\"callbacks\": null}}]").into_bytes(),
    }
}

fn publish(queue: &str, id: &str, priority: Option<u8>) -> Publish {
    Publish {
        queue: queue.into(),
        priority,
        not_before: None,
        message: msg(id),
    }
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| {
            d.message
                .task_id()
                .expect("delivered message has an id")
                .to_string()
        })
        .collect()
}

fn tags(deliveries: &[Delivery]) -> Vec<celeriac_core::DeliveryTag> {
    deliveries.iter().map(|d| d.tag.clone()).collect()
}

/// Fetches until `n` messages arrived or `within` passed, in batches of at most `batch`.
async fn fetch_n(c: &dyn Consumer, n: usize, batch: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let want = batch.min(n - got.len());
        let more = c.fetch(want, left).await.expect("fetch");
        assert!(
            more.len() <= want,
            "fetch(max = {want}) returned {} messages",
            more.len()
        );
        got.extend(more);
    }
    got
}

/// Asserts that nothing is delivered to `c` within `wait`.
async fn assert_nothing(c: &dyn Consumer, wait: Duration, why: &str) {
    let got = c.fetch(10, wait).await.expect("fetch");
    assert!(got.is_empty(), "{why}: got {:?}", ids(&got));
}

/// The delivered message equals the published one; a broker may add properties of its own
/// (delivery info, priority) but must keep every property it was given.
fn assert_same_message(got: &RawMessage, sent: &RawMessage) {
    assert_eq!(got.headers, sent.headers, "headers survive the broker");
    assert_eq!(got.body, sent.body, "body bytes survive the broker");
    assert_eq!(got.content_type, sent.content_type);
    assert_eq!(got.content_encoding, sent.content_encoding);
    for (k, v) in &sent.properties {
        assert_eq!(
            got.properties.get(k),
            Some(v),
            "property {k:?} survives the broker (got {:?})",
            got.properties
        );
    }
}

// ----------------------------------------------------------------------------------------
// Cases
// ----------------------------------------------------------------------------------------

/// publish → fetch → ack keeps headers, properties and body bytes; a held message is not
/// delivered twice; an acked message is gone; close is idempotent and stops the consumer.
async fn round_trip(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_default(f).await?;
    let q = unique("q");
    b.declare_queue(&q).await.expect("declare");
    b.declare_queue(&q).await.expect("declaring twice is fine");
    let json_id = unique("json");
    let sent = msg(&json_id);
    b.publish(publish(&q, &json_id, None))
        .await
        .expect("publish");
    // Arbitrary bytes, not UTF-8: the broker carries the body undecoded.
    let bin_id = unique("bin");
    let mut binary = msg(&bin_id);
    binary.content_type = "application/octet-stream".into();
    binary.content_encoding = "binary".into();
    binary.body = (0..=255u8).rev().chain(0..=255u8).collect();
    b.publish(Publish {
        queue: q.clone(),
        priority: None,
        not_before: None,
        message: binary.clone(),
    })
    .await
    .expect("publish binary");

    let c = consumer(&b, &[&q]).await;
    let got = fetch_n(&*c, 2, 10, Duration::from_secs(5)).await;
    assert_eq!(ids(&got), [json_id.clone(), bin_id.clone()]);
    for (d, sent) in got.iter().zip([&sent, &binary]) {
        assert_eq!(d.queue, q, "delivery names its queue");
        assert!(!d.redelivered, "first delivery is not redelivered");
        assert_same_message(&d.message, sent);
    }
    let tag_set: HashSet<_> = got.iter().map(|d| &d.tag).collect();
    assert_eq!(tag_set.len(), 2, "delivery tags are distinct");

    assert_nothing(&*c, NO_WAIT, "a held message is not delivered again").await;
    let other = consumer(&b, &[&q]).await;
    assert_nothing(
        &*other,
        Duration::from_millis(200),
        "a held message is not delivered to another consumer",
    )
    .await;

    c.ack(&tags(&got)).await.expect("ack");
    c.close().await.expect("close");
    c.close().await.expect("close is idempotent");
    let after = c.fetch(1, NO_WAIT).await;
    assert_eq!(
        after.as_ref().map(|d| d.len()).map_err(|e| e.kind()),
        Err(ErrorKind::Closed),
        "fetch after close fails with ErrorKind::Closed"
    );
    assert_nothing(
        &*other,
        Duration::from_millis(300),
        "acked messages are gone",
    )
    .await;
    other.close().await.expect("close");
    Ok(())
}

/// Within one priority, first in, first out — for `publish`, `publish_batch`, explicit and
/// default priorities, across fetch batches; `fetch(max)` never returns more than `max`.
async fn fifo_within_a_priority(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_default(f).await?;
    for priority in [None, Some(5)] {
        let q = unique("q");
        let mut expected = Vec::new();
        for i in 0..40 {
            let id = format!("{}-{i:03}", unique("one"));
            b.publish(publish(&q, &id, priority))
                .await
                .expect("publish");
            expected.push(id);
        }
        let batch: Vec<_> = (40..100)
            .map(|i| format!("{}-{i:03}", unique("batch")))
            .collect();
        expected.extend(batch.iter().cloned());
        b.publish_batch(batch.iter().map(|id| publish(&q, id, priority)).collect())
            .await
            .expect("publish_batch");
        let c = consumer(&b, &[&q]).await;
        let got = fetch_n(&*c, 100, 7, Duration::from_secs(10)).await;
        assert_eq!(ids(&got), expected, "FIFO with priority {priority:?}");
        c.ack(&tags(&got)).await.expect("ack");
        c.close().await.expect("close");
    }
    Ok(())
}

/// 9 is the most urgent priority, 0 the least; FIFO within a priority. (Only levels every
/// engine distinguishes are used: 9, 5 and 0 fall in different kombu Redis buckets.)
async fn priority_order(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_default(f).await?;
    let q = unique("q");
    let id = |name: &str| format!("{name}-{}", unique("p"));
    let (low1, high1, mid1, low2, high2, mid2, low3) = (
        id("low1"),
        id("high1"),
        id("mid1"),
        id("low2"),
        id("high2"),
        id("mid2"),
        id("low3"),
    );
    b.publish_batch(vec![
        publish(&q, &low1, Some(0)),
        publish(&q, &high1, Some(9)),
        publish(&q, &mid1, Some(5)),
        publish(&q, &low2, Some(0)),
    ])
    .await
    .expect("publish_batch");
    b.publish(publish(&q, &high2, Some(9)))
        .await
        .expect("publish");
    b.publish(publish(&q, &mid2, Some(5)))
        .await
        .expect("publish");
    b.publish(publish(&q, &low3, Some(0)))
        .await
        .expect("publish");
    let c = consumer(&b, &[&q]).await;
    let got = fetch_n(&*c, 7, 3, Duration::from_secs(5)).await;
    assert_eq!(
        ids(&got),
        [high1, high2, mid1, mid2, low1, low2, low3],
        "9 first, then 5, then 0; FIFO within each"
    );
    for d in &got {
        if let Some(p) = d.message.properties.get("priority") {
            let sent = match d.message.task_id().unwrap().split('-').next().unwrap() {
                "high1" | "high2" => 9,
                "mid1" | "mid2" => 5,
                _ => 0,
            };
            assert_eq!(
                p,
                &json!(sent),
                "a delivered `priority` property is in celeriac's order (9 most urgent)"
            );
        }
    }
    c.ack(&tags(&got)).await.expect("ack");
    Ok(())
}

/// A consumer gets the messages of the queues it names, and only those.
async fn consumes_only_its_queues(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_default(f).await?;
    let (qa, qb, qo) = (unique("a"), unique("b"), unique("other"));
    let (a1, b1, o1) = (unique("a1"), unique("b1"), unique("o1"));
    b.publish(publish(&qb, &b1, None)).await.expect("publish");
    b.publish(publish(&qa, &a1, None)).await.expect("publish");
    b.publish(publish(&qo, &o1, None)).await.expect("publish");
    let c = consumer(&b, &[&qa, &qb]).await;
    let got = fetch_n(&*c, 2, 10, Duration::from_secs(5)).await;
    let mut seen: Vec<_> = got
        .iter()
        .map(|d| (d.queue.clone(), d.message.task_id().unwrap().to_string()))
        .collect();
    seen.sort();
    let mut want = vec![(qa.clone(), a1), (qb.clone(), b1)];
    want.sort();
    assert_eq!(seen, want);
    assert_nothing(
        &*c,
        Duration::from_millis(300),
        "messages of other queues are not delivered",
    )
    .await;
    c.ack(&tags(&got)).await.expect("ack");
    let o = consumer(&b, &[&qo]).await;
    let got = fetch_n(&*o, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(ids(&got), [o1]);
    o.ack(&tags(&got)).await.expect("ack");
    Ok(())
}

/// An empty fetch waits about `wait` and returns nothing; a publish during the wait (from this
/// instance or another one on the same store) ends the wait early.
async fn fetch_waits_and_wakes(f: &dyn BrokerFactory) -> CaseResult {
    let (instance, b) = open_default(f).await?;
    let q = unique("q");
    b.declare_queue(&q).await.expect("declare");
    let c = consumer(&b, &[&q]).await;
    let start = Instant::now();
    assert!(c
        .fetch(5, Duration::from_millis(400))
        .await
        .expect("fetch")
        .is_empty());
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "an empty fetch(wait = 400ms) returned after {waited:?}"
    );
    let other = instance.open_again().await;
    for (who, publisher) in [("this instance", b.clone()), ("another instance", other)] {
        let id = unique("late");
        let (p, pid, pq) = (publisher.clone(), id.clone(), q.clone());
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            p.publish(publish(&pq, &pid, None)).await.expect("publish");
        });
        let start = Instant::now();
        let got = c.fetch(1, Duration::from_secs(20)).await.expect("fetch");
        let waited = start.elapsed();
        sender.await.expect("publisher");
        assert_eq!(ids(&got), [id], "publish from {who} is delivered");
        assert!(
            waited < Duration::from_secs(5),
            "a publish from {who} ends the wait (took {waited:?} of 20 s)"
        );
        c.ack(&tags(&got)).await.expect("ack");
    }
    Ok(())
}

/// Two consumers draining 1000 messages (mixed priorities) never get the same message, and
/// every message arrives.
async fn two_consumers_never_share(f: &dyn BrokerFactory) -> CaseResult {
    const N: usize = 1000;
    let (instance, b) = open_default(f).await?;
    let q = unique("q");
    let prefix = unique("m");
    let all: Vec<Publish> = (0..N)
        .map(|i| {
            publish(
                &q,
                &format!("{prefix}-{i}"),
                [None, Some(0), Some(5), Some(9)][i % 4],
            )
        })
        .collect();
    b.publish_batch(all).await.expect("publish_batch");
    let other = instance.open_again().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for broker in [b.clone(), other] {
        let c = consumer(&broker, &[&q]).await;
        let (seen, count) = (seen.clone(), count.clone());
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while count.load(Ordering::SeqCst) < N && Instant::now() < deadline {
                let got = c.fetch(7, Duration::from_millis(100)).await.expect("fetch");
                if got.is_empty() {
                    continue;
                }
                assert!(got.iter().all(|d| !d.redelivered), "nothing is redelivered");
                c.ack(&tags(&got)).await.expect("ack");
                count.fetch_add(got.len(), Ordering::SeqCst);
                seen.lock().unwrap().extend(ids(&got));
            }
            c.close().await.expect("close");
        }));
    }
    for w in workers {
        w.await.expect("consumer task");
    }
    let seen = seen.lock().unwrap();
    let unique_ids: HashSet<_> = seen.iter().collect();
    assert_eq!(
        unique_ids.len(),
        seen.len(),
        "no message is delivered twice"
    );
    assert_eq!(seen.len(), N, "every message is delivered");
    Ok(())
}

/// A requeued message is deliverable again at once (to anyone), marked redelivered; the others
/// stay held.
async fn requeue_redelivers(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_default(f).await?;
    let q = unique("q");
    let (a, bb) = (unique("a"), unique("b"));
    b.publish_batch(vec![publish(&q, &a, None), publish(&q, &bb, None)])
        .await
        .expect("publish");
    let c = consumer(&b, &[&q]).await;
    let got = fetch_n(&*c, 2, 2, Duration::from_secs(5)).await;
    assert_eq!(ids(&got), [a.clone(), bb.clone()]);
    c.requeue(&[got[0].tag.clone()]).await.expect("requeue");
    let other = consumer(&b, &[&q]).await;
    let again = fetch_n(&*other, 1, 5, Duration::from_secs(5)).await;
    assert_eq!(ids(&again), [a], "the requeued message comes back");
    assert!(again[0].redelivered, "a requeued message is redelivered");
    assert_same_message(&again[0].message, &got[0].message);
    assert_nothing(
        &*other,
        Duration::from_millis(200),
        "the message still held is not delivered",
    )
    .await;
    other.ack(&tags(&again)).await.expect("ack");
    c.ack(&[got[1].tag.clone()]).await.expect("ack");
    // The same consumer can take a requeued message back too.
    let d = unique("d");
    b.publish(publish(&q, &d, None)).await.expect("publish");
    let got = fetch_n(&*c, 1, 1, Duration::from_secs(5)).await;
    c.requeue(&tags(&got)).await.expect("requeue");
    let back = fetch_n(&*c, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(ids(&back), [d]);
    assert!(back[0].redelivered);
    c.ack(&tags(&back)).await.expect("ack");
    Ok(())
}

/// A consumer whose process dies (no ack, no close, no drop, no keepalive) loses its lease:
/// after the visibility timeout another consumer gets the message, marked redelivered.
async fn lapsed_lease_redelivers(f: &dyn BrokerFactory) -> CaseResult {
    let (instance, b) = open_short_lease(f).await?;
    let q = unique("q");
    let id = unique("a");
    b.publish(publish(&q, &id, None)).await.expect("publish");
    // The dying "process": its own instance and consumer, never dropped.
    let dying = instance.open_again().await;
    let dead = consumer(&dying, &[&q]).await;
    let got = fetch_n(&*dead, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(ids(&got), std::slice::from_ref(&id));
    let fetched_at = Instant::now();
    std::mem::forget(dead);
    std::mem::forget(dying);

    let other = consumer(&b, &[&q]).await;
    assert_nothing(
        &*other,
        NO_WAIT,
        "a leased message is not delivered before its lease lapses",
    )
    .await;
    let again = fetch_n(&*other, 1, 1, SHORT_LEASE + REDELIVERY_SLACK).await;
    let after = fetched_at.elapsed();
    assert_eq!(
        ids(&again),
        [id],
        "redelivered within {:?} of the lease lapsing",
        REDELIVERY_SLACK
    );
    assert!(again[0].redelivered, "marked redelivered");
    assert!(
        after >= SHORT_LEASE / 2,
        "redelivered after {after:?}, before the {SHORT_LEASE:?} lease lapsed"
    );
    other.ack(&tags(&again)).await.expect("ack");
    Ok(())
}

/// A consumer dropped without ack or close gives its messages back (at once or when the lease
/// lapses), marked redelivered.
async fn dropped_consumer_redelivers(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_short_lease(f).await?;
    let q = unique("q");
    let (a, bb) = (unique("a"), unique("b"));
    b.publish_batch(vec![publish(&q, &a, None), publish(&q, &bb, None)])
        .await
        .expect("publish");
    let c = consumer(&b, &[&q]).await;
    let got = fetch_n(&*c, 2, 2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    drop(c);
    let other = consumer(&b, &[&q]).await;
    let again = fetch_n(&*other, 2, 2, SHORT_LEASE + REDELIVERY_SLACK).await;
    let mut back = ids(&again);
    back.sort();
    let mut want = vec![a, bb];
    want.sort();
    assert_eq!(back, want, "a dropped consumer's messages come back");
    assert!(again.iter().all(|d| d.redelivered), "marked redelivered");
    other.ack(&tags(&again)).await.expect("ack");
    Ok(())
}

/// While a consumer calls `keepalive` every `keepalive_interval`, it keeps its message however
/// long past the visibility timeout it holds it; once acked, nobody gets it.
async fn keepalive_holds_lease(f: &dyn BrokerFactory) -> CaseResult {
    let (instance, b) = open_short_lease(f).await?;
    let q = unique("q");
    let id = unique("long");
    b.publish(publish(&q, &id, None)).await.expect("publish");
    let worker: Arc<Box<dyn Consumer>> = Arc::new(consumer(&b, &[&q]).await);
    let interval = worker.keepalive_interval();
    assert!(
        !interval.is_zero() && interval < SHORT_LEASE,
        "keepalive_interval {interval:?} is shorter than the {SHORT_LEASE:?} lease"
    );
    let got = fetch_n(&**worker, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(ids(&got), [id]);
    let w = worker.clone();
    let keeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(w.keepalive_interval()).await;
            w.keepalive().await.expect("keepalive");
        }
    });
    let other_instance = instance.open_again().await;
    let other = consumer(&other_instance, &[&q]).await;
    assert_nothing(
        &*other,
        SHORT_LEASE * 4,
        "a message kept alive is not redelivered",
    )
    .await;
    assert!(!keeper.is_finished(), "keepalive kept succeeding");
    worker.ack(&tags(&got)).await.expect("ack");
    keeper.abort();
    let _ = keeper.await;
    assert_nothing(
        &*other,
        SHORT_LEASE * 2,
        "an acked message is not redelivered",
    )
    .await;
    Ok(())
}

/// `close` gives back every held message at once (redelivered), and is idempotent.
async fn close_requeues_held(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_default(f).await?;
    let q = unique("q");
    let mut sent: Vec<_> = (0..3).map(|i| format!("{}-{i}", unique("m"))).collect();
    sent.sort();
    b.publish_batch(sent.iter().map(|id| publish(&q, id, None)).collect())
        .await
        .expect("publish");
    let c = consumer(&b, &[&q]).await;
    let got = fetch_n(&*c, 3, 3, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 3);
    c.close().await.expect("close");
    c.close().await.expect("close again");
    let other = consumer(&b, &[&q]).await;
    // The default lease is long: what comes back now came back through close.
    let again = fetch_n(&*other, 3, 3, Duration::from_secs(5)).await;
    let mut back = ids(&again);
    back.sort();
    assert_eq!(back, sent, "close requeues everything held");
    assert!(again.iter().all(|d| d.redelivered), "marked redelivered");
    other.ack(&tags(&again)).await.expect("ack");
    Ok(())
}

/// On a broker that delays delivery: a message is not delivered before `not_before`, and is
/// delivered once due without another publish; past ETAs are due at once.
async fn not_before_delays_delivery(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_default(f).await?;
    if !b.delays_delivery() {
        return Err(Skip::new(
            "delays_delivery() is false: the worker holds ETA messages (see not_before_without_delayed_delivery)",
        ));
    }
    let q = unique("q");
    let (later, far, past) = (unique("later"), unique("tomorrow"), unique("past"));
    let due = Utc::now() + TimeDelta::milliseconds(1500);
    let mut p = publish(&q, &later, None);
    p.not_before = Some(due);
    b.publish(p).await.expect("publish");
    let mut p = publish(&q, &far, None);
    p.not_before = Some(Utc::now() + TimeDelta::days(1));
    b.publish(p).await.expect("publish");
    let mut p = publish(&q, &past, None);
    p.not_before = Some(Utc::now() - TimeDelta::seconds(5));
    b.publish(p).await.expect("publish");

    let c = consumer(&b, &[&q]).await;
    let got = fetch_n(&*c, 1, 10, Duration::from_secs(1)).await;
    assert_eq!(ids(&got), [past], "a past ETA is due at once");
    c.ack(&tags(&got)).await.expect("ack");
    // Wait in one fetch: it must wake when `later` becomes due, without any publish.
    let got = c.fetch(10, Duration::from_secs(8)).await.expect("fetch");
    let received = Utc::now();
    assert_eq!(ids(&got), [later], "the message is delivered once due");
    assert!(
        received >= due,
        "delivered {} ms before its not_before",
        (due - received).num_milliseconds()
    );
    assert!(
        received - due < TimeDelta::seconds(3),
        "delivered {} ms after its not_before",
        (received - due).num_milliseconds()
    );
    c.ack(&tags(&got)).await.expect("ack");
    assert_nothing(
        &*c,
        Duration::from_millis(300),
        "tomorrow's message stays scheduled",
    )
    .await;
    Ok(())
}

/// On a broker that does not delay delivery, a message with `not_before` is delivered at once
/// (the worker holds it).
async fn not_before_without_delayed_delivery(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_default(f).await?;
    if b.delays_delivery() {
        return Err(Skip::new(
            "delays_delivery() is true (see not_before_delays_delivery)",
        ));
    }
    let q = unique("q");
    let id = unique("later");
    let mut p = publish(&q, &id, None);
    p.not_before = Some(Utc::now() + TimeDelta::hours(1));
    b.publish(p).await.expect("publish");
    let c = consumer(&b, &[&q]).await;
    let got = fetch_n(&*c, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(ids(&got), [id], "delivered at once; the worker holds it");
    c.ack(&tags(&got)).await.expect("ack");
    Ok(())
}

/// Purge removes a queue's waiting messages (ready, and scheduled where the engine says it
/// can) and returns their count; held messages and other queues are untouched.
async fn purge(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_default(f).await?;
    let Some(purger) = b.purge() else {
        return Err(Skip::new("no Purge capability (Broker::purge() is None)"));
    };
    let (q, keep) = (unique("q"), unique("keep"));
    let first = unique("first");
    b.publish(publish(&q, &first, None)).await.expect("publish");
    b.publish_batch(vec![
        publish(&q, &unique("b"), None),
        publish(&q, &unique("c"), None),
        publish(&keep, &unique("k"), None),
    ])
    .await
    .expect("publish");
    let mut later = publish(&q, &unique("later"), None);
    later.not_before = Some(Utc::now() + TimeDelta::hours(1));
    b.publish(later).await.expect("publish");
    let c = consumer(&b, &[&q]).await;
    let held = fetch_n(&*c, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(ids(&held), [first]);
    let expected = if purger.purges_scheduled() { 3 } else { 2 };
    assert_eq!(
        purger.purge(&q).await.expect("purge"),
        expected,
        "two ready messages purged, and the scheduled one where purges_scheduled()"
    );
    assert_eq!(purger.purge(&q).await.expect("purge"), 0, "nothing left");
    assert_nothing(&*c, Duration::from_millis(300), "a purged queue is empty").await;
    c.ack(&tags(&held))
        .await
        .expect("the held message can still be acked");
    let k = consumer(&b, &[&keep]).await;
    let kept = fetch_n(&*k, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(kept.len(), 1, "other queues are untouched");
    k.ack(&tags(&kept)).await.expect("ack");
    let never = unique("never-used");
    assert_eq!(purger.purge(&never).await.expect("purge"), 0);
    Ok(())
}

/// queue_lengths counts ready, scheduled (only on brokers that delay delivery) and unacked
/// messages per queue; with no names it lists every known queue, declared ones included.
/// Parts an engine's `coverage()` says it cannot see are not required.
async fn queue_lengths(f: &dyn BrokerFactory) -> CaseResult {
    let (instance, b) = open_default(f).await?;
    let Some(stats) = b.queue_stats() else {
        return Err(Skip::new(
            "no QueueStats capability (Broker::queue_stats() is None)",
        ));
    };
    let (q, empty) = (unique("q"), unique("empty"));
    b.declare_queue(&empty).await.expect("declare");
    b.publish_batch(vec![
        publish(&q, &unique("a"), None),
        publish(&q, &unique("b"), None),
        publish(&q, &unique("c"), Some(9)),
    ])
    .await
    .expect("publish");
    let mut later = publish(&q, &unique("later"), None);
    later.not_before = Some(Utc::now() + TimeDelta::hours(1));
    b.publish(later).await.expect("publish");
    let delays = b.delays_delivery();
    let c = consumer(&b, &[&q]).await;
    let held = fetch_n(&*c, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(held.len(), 1);

    let lengths = stats
        .queue_lengths(std::slice::from_ref(&q))
        .await
        .expect("queue_lengths");
    assert_eq!(lengths.len(), 1, "{lengths:?}");
    let l = &lengths[0];
    assert_eq!(l.queue, q);
    let coverage = stats.coverage();
    let (ready, scheduled) = if delays { (2, 1) } else { (3, 0) };
    let scheduled = if coverage.scheduled { scheduled } else { 0 };
    assert_eq!(
        (l.ready, l.scheduled, l.unacked),
        (ready, scheduled, 1),
        "(ready, scheduled, unacked) of {l:?} with {coverage:?}"
    );
    c.ack(&tags(&held)).await.expect("ack");
    let l = stats
        .queue_lengths(std::slice::from_ref(&q))
        .await
        .expect("queue_lengths");
    assert_eq!(l[0].unacked, 0, "acked messages are not counted: {l:?}");

    // No names: every known queue, the declared empty one included; same from another instance.
    let all = stats.queue_lengths(&[]).await.expect("queue_lengths");
    let find = |all: &[celeriac_core::broker::QueueLength], name: &str| {
        all.iter()
            .find(|l| l.queue == name)
            .cloned()
            .unwrap_or_else(|| panic!("queue {name} missing from queue_lengths(&[]): {all:?}"))
    };
    assert_eq!(find(&all, &q).ready, ready);
    let e = find(&all, &empty);
    assert_eq!((e.ready, e.scheduled, e.unacked), (0, 0, 0));
    if !coverage.lists_all_queues {
        // Only the queues this process used are listed: another instance knows none of them.
        return Ok(());
    }
    let other = instance.open_again().await;
    let all2 = other
        .queue_stats()
        .expect("QueueStats on every instance")
        .queue_lengths(&[])
        .await
        .expect("queue_lengths");
    assert_eq!(find(&all2, &q).ready, ready);
    find(&all2, &empty);

    // An unknown queue: absent, or all zeros.
    let never = unique("never-used");
    let unknown = stats
        .queue_lengths(std::slice::from_ref(&never))
        .await
        .expect("queue_lengths");
    assert!(
        unknown
            .iter()
            .all(|l| l.queue == never && (l.ready, l.scheduled, l.unacked) == (0, 0, 0)),
        "{unknown:?}"
    );
    Ok(())
}

/// A dead-lettered message leaves its queue for good: not ready, not redelivered when the
/// lease would have lapsed.
async fn dead_letter_removes_message(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_short_lease(f).await?;
    let q = unique("q");
    let id = unique("bad");
    b.publish(publish(&q, &id, None)).await.expect("publish");
    let c = consumer(&b, &[&q]).await;
    let got = fetch_n(&*c, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(ids(&got), [id]);
    c.dead_letter(&got[0].tag, "not-json")
        .await
        .expect("dead_letter");
    let other = consumer(&b, &[&q]).await;
    assert_nothing(
        &*other,
        SHORT_LEASE * 3,
        "a dead letter is not delivered again",
    )
    .await;
    if let Some(stats) = b.queue_stats() {
        let l = stats
            .queue_lengths(std::slice::from_ref(&q))
            .await
            .expect("queue_lengths");
        assert!(
            l.iter().all(|l| (l.ready, l.unacked) == (0, 0)),
            "a dead letter is neither ready nor unacked: {l:?}"
        );
    }
    Ok(())
}

/// Dead letters are listed with their queue, reason and message, and can be put back on their
/// queue (by id, or all).
async fn dead_letters_list_and_requeue(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_default(f).await?;
    let Some(dl) = b.dead_letters() else {
        return Err(Skip::new(
            "no DeadLetters capability (Broker::dead_letters() is None)",
        ));
    };
    let q = unique("q");
    let (bad1, bad2) = (unique("bad1"), unique("bad2"));
    b.publish_batch(vec![publish(&q, &bad1, None), publish(&q, &bad2, None)])
        .await
        .expect("publish");
    let c = consumer(&b, &[&q]).await;
    let got = fetch_n(&*c, 2, 2, Duration::from_secs(5)).await;
    assert_eq!(ids(&got), [bad1.clone(), bad2.clone()]);
    let before = Utc::now() - TimeDelta::seconds(60);
    c.dead_letter(&got[0].tag, "not-json")
        .await
        .expect("dead_letter");
    c.dead_letter(&got[1].tag, "missing-task")
        .await
        .expect("dead_letter");

    let list = dl.list_dead_letters(1000).await.expect("list");
    let mine: Vec<_> = list.iter().filter(|d| d.queue == q).collect();
    assert_eq!(mine.len(), 2, "{list:?}");
    let find = |id: &str| {
        *mine
            .iter()
            .find(|d| d.message.task_id() == Some(id))
            .unwrap_or_else(|| panic!("dead letter {id} listed"))
    };
    let (d1, d2) = (find(&bad1), find(&bad2));
    assert_eq!(d1.reason, "not-json");
    assert_eq!(d2.reason, "missing-task");
    assert_same_message(&d2.message, &msg(&bad2));
    assert_ne!(d1.id, d2.id);
    for d in [d1, d2] {
        assert!(
            d.at >= before && d.at <= Utc::now() + TimeDelta::seconds(60),
            "{d:?}"
        );
    }
    assert_eq!(
        dl.list_dead_letters(1).await.expect("list").len(),
        1,
        "limit"
    );

    assert_eq!(
        dl.requeue_dead_letters(std::slice::from_ref(&d1.id))
            .await
            .expect("requeue"),
        1
    );
    let back = fetch_n(&*c, 1, 5, Duration::from_secs(5)).await;
    assert_eq!(ids(&back), [bad1], "requeued by id");
    assert_same_message(&back[0].message, &msg(back[0].message.task_id().unwrap()));
    c.ack(&tags(&back)).await.expect("ack");
    assert_nothing(
        &*c,
        Duration::from_millis(200),
        "only the named one is requeued",
    )
    .await;

    assert!(
        dl.requeue_dead_letters(&[]).await.expect("requeue all") >= 1,
        "requeue all"
    );
    let back = fetch_n(&*c, 1, 5, Duration::from_secs(5)).await;
    assert_eq!(ids(&back), [bad2], "requeued by requeue-all");
    c.ack(&tags(&back)).await.expect("ack");
    let list = dl.list_dead_letters(1000).await.expect("list");
    assert!(
        list.iter().all(|d| d.queue != q),
        "requeued dead letters are no longer listed: {list:?}"
    );
    Ok(())
}

/// Revocations are durable and shared: visible from another instance, listed after a cursor
/// exactly once, with `terminate`.
async fn revocations_durable(f: &dyn BrokerFactory) -> CaseResult {
    let (instance, b) = open_default(f).await?;
    let Some(r) = b.revocations() else {
        return Err(Skip::new(
            "no Revocations capability (Broker::revocations() is None)",
        ));
    };
    let (t1, t2, t3) = (unique("t1"), unique("t2"), unique("t3"));
    let before = Utc::now() - TimeDelta::seconds(60);
    r.revoke(&[t1.clone(), t2.clone()], None)
        .await
        .expect("revoke");
    assert!(r.is_revoked(&t1).await.expect("is_revoked"));
    assert!(r.is_revoked(&t2).await.expect("is_revoked"));
    assert!(!r.is_revoked(&t3).await.expect("is_revoked"));

    let (all, cursor) = r.revocations_since(0).await.expect("since 0");
    let mine: Vec<_> = all
        .iter()
        .filter(|x| x.task_id == t1 || x.task_id == t2)
        .collect();
    assert_eq!(mine.len(), 2, "since(0) lists everything: {all:?}");
    assert!(
        mine.iter().all(|x| !x.terminate && x.at >= before),
        "{mine:?}"
    );
    let (none, same) = r.revocations_since(cursor).await.expect("since cursor");
    assert!(
        none.is_empty(),
        "nothing after the returned cursor: {none:?}"
    );
    assert!(
        same >= cursor,
        "the cursor never goes back ({cursor} -> {same})"
    );

    // Another process revokes; this one sees it.
    let other = instance.open_again().await;
    let r2 = other.revocations().expect("Revocations on every instance");
    assert!(
        r2.is_revoked(&t1).await.expect("is_revoked"),
        "durable and shared"
    );
    r2.revoke(std::slice::from_ref(&t3), Some(Signal::KILL))
        .await
        .expect("revoke");
    assert!(r.is_revoked(&t3).await.expect("is_revoked"));
    let (new, next) = r.revocations_since(cursor).await.expect("since cursor");
    assert_eq!(
        new.iter().map(|x| x.task_id.as_str()).collect::<Vec<_>>(),
        [t3.as_str()],
        "only what was recorded after the cursor"
    );
    assert!(new[0].terminate, "terminate is kept");
    assert_eq!(new[0].signal, Signal::KILL, "and the signal it sends");
    assert!(next > cursor, "the cursor moves past new revocations");
    let (none, _) = r.revocations_since(next).await.expect("since next");
    assert!(none.is_empty(), "{none:?}");
    let (again, _) = r2.revocations_since(0).await.expect("since 0");
    for t in [&t1, &t2, &t3] {
        assert!(
            again.iter().any(|x| &x.task_id == t),
            "{t} listed on the other instance"
        );
    }
    Ok(())
}

/// A fetch future dropped at any point (before, while or after leasing) loses nothing: every
/// message is either returned by some fetch or deliverable again right away.
async fn cancelled_fetch_loses_nothing(f: &dyn BrokerFactory) -> CaseResult {
    const N: usize = 40;
    let (_i, b) = open_default(f).await?;
    let q = unique("q");
    let prefix = unique("m");
    b.publish_batch(
        (0..N)
            .map(|i| publish(&q, &format!("{prefix}-{i}"), None))
            .collect(),
    )
    .await
    .expect("publish");
    let c = consumer(&b, &[&q]).await;
    let mut returned = Vec::new();
    for i in 0..N {
        // Polled once (the request is sent), then dropped, or dropped after a short time.
        let fetch = c.fetch(1, Duration::from_secs(2));
        let got = if i % 2 == 0 {
            let mut fetch = std::pin::pin!(fetch);
            match std::future::poll_fn(|cx| std::task::Poll::Ready(fetch.as_mut().poll(cx))).await {
                std::task::Poll::Ready(r) => r.expect("fetch"),
                std::task::Poll::Pending => Vec::new(),
            }
        } else {
            let limit = Duration::from_micros(50 * i as u64);
            tokio::time::timeout(limit, fetch)
                .await
                .map(|r| r.expect("fetch"))
                .unwrap_or_default()
        };
        returned.extend(got);
    }
    let returned_ids = ids(&returned);
    c.ack(&tags(&returned)).await.expect("ack");
    // The default lease is long: whatever a cancelled fetch took must be back now.
    let rest = fetch_n(&*c, N - returned.len(), 10, Duration::from_secs(5)).await;
    let mut all: Vec<_> = returned_ids.into_iter().chain(ids(&rest)).collect();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        N,
        "{} returned by cancelled-or-not fetches, {} deliverable after: some were stranded",
        returned.len(),
        rest.len()
    );
    c.ack(&tags(&rest)).await.expect("ack");

    // A fetch dropped while waiting on an empty queue does not swallow the next message.
    let waiter = c.fetch(1, Duration::from_secs(10));
    assert!(tokio::time::timeout(Duration::from_millis(200), waiter)
        .await
        .is_err());
    let id = unique("after");
    b.publish(publish(&q, &id, None)).await.expect("publish");
    let got = fetch_n(&*c, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(ids(&got), [id], "the message reaches the next fetch");
    c.ack(&tags(&got)).await.expect("ack");
    Ok(())
}
