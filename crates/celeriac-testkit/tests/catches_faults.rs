//! The suites are not vacuous: engines with a planted fault fail the case that covers it,
//! and an engine without a capability skips the case that needs it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::backend::{ChordJoin, ChordPart, PartReturn, ResultBackend};
use celeriac_core::beat::{BeatStore, LastRun, LeaseHolder};
use celeriac_core::broker::{
    Broker, Consumer, ConsumerSpec, Delivery, DeliveryTag, Publish, QueueSet,
};
use celeriac_core::control::{ControlInbox, ControlRequest, Mailbox, ReplyAddress};
use celeriac_core::error::{BackendError, BrokerError};
use celeriac_core::events::{EventStream, Events, WireEvent};
use celeriac_core::state::TaskMeta;
use celeriac_sqlite::SqliteStore;
use celeriac_testkit::{
    backend_suite, beat_suite, broker_suite, FactoryOptions, Instance, Outcome, Skip,
};
use chrono::SubsecRound;
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    OverwritesSuccess,
    MillisecondDates,
    IgnoresExpiry,
    IgnoresPriority,
    NeverRedelivered,
    CloseDoesNothing,
    CancelIgnored,
    FirstReplyOnly,
    EventsReordered,
    ChordCountsCopies,
    ChordClaimIgnored,
    ChordUnordered,
    BeatTwoHolders,
    BeatNeverLapses,
    BeatSameTokenOnTakeover,
    BeatTokenPerHolder,
    BeatIgnoresToken,
    BeatReleaseIgnored,
    BeatSecondPrecision,
    NoCapabilities,
}

/// The SQLite store with one fault planted.
struct Faulty {
    inner: Arc<SqliteStore>,
    fault: Fault,
    /// The first token each (schedule, holder) got, for `BeatTokenPerHolder`.
    first_tokens: Mutex<HashMap<(String, String), u64>>,
}

struct FaultyConsumer {
    inner: Box<dyn Consumer>,
    fault: Fault,
}

#[async_trait]
impl Broker for Faulty {
    fn display_url(&self) -> String {
        Broker::display_url(&*self.inner)
    }
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.inner.declare_queue(queue).await
    }
    async fn publish(&self, mut message: Publish) -> Result<(), BrokerError> {
        if self.fault == Fault::IgnoresPriority {
            message.priority = None;
        }
        self.inner.publish(message).await
    }
    async fn consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn Consumer>, BrokerError> {
        Ok(Box::new(FaultyConsumer {
            inner: self.inner.consumer(spec).await?,
            fault: self.fault,
        }))
    }
    fn delays_delivery(&self) -> bool {
        self.inner.delays_delivery()
    }
    fn purge(&self) -> Option<&dyn celeriac_core::broker::Purge> {
        (self.fault != Fault::NoCapabilities)
            .then(|| self.inner.purge())
            .flatten()
    }
    fn mailbox(&self) -> Option<&dyn Mailbox> {
        (self.fault != Fault::NoCapabilities).then_some(self)
    }
    fn events(&self) -> Option<&dyn Events> {
        (self.fault != Fault::NoCapabilities).then_some(self)
    }
    fn beat_store(&self) -> Option<&dyn BeatStore> {
        (self.fault != Fault::NoCapabilities).then_some(self)
    }
}

#[async_trait]
impl Mailbox for Faulty {
    async fn listen(&self, hostname: &str) -> Result<Box<dyn ControlInbox>, BrokerError> {
        self.inner.listen(hostname).await
    }
    async fn reply(
        &self,
        to: &ReplyAddress,
        ticket: &str,
        clock: u64,
        body: &Value,
    ) -> Result<(), BrokerError> {
        self.inner.reply(to, ticket, clock, body).await
    }
    async fn broadcast(
        &self,
        request: &ControlRequest,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, BrokerError> {
        let mut replies = self.inner.broadcast(request, timeout, limit).await?;
        if self.fault == Fault::FirstReplyOnly {
            replies.truncate(1);
        }
        Ok(replies)
    }
}

#[async_trait]
impl Events for Faulty {
    async fn send_events(&self, hostname: &str, events: &[WireEvent]) -> Result<(), BrokerError> {
        let mut events = events.to_vec();
        if self.fault == Fault::EventsReordered {
            events.reverse();
        }
        self.inner.send_events(hostname, &events).await
    }
    async fn receive_events(&self) -> Result<Box<dyn EventStream>, BrokerError> {
        self.inner.receive_events().await
    }
}

/// Each beat fault breaks one rule of the `BeatStore` contract.
#[async_trait]
impl BeatStore for Faulty {
    async fn acquire_lease(
        &self,
        schedule: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        let ttl = match self.fault {
            Fault::BeatNeverLapses => Duration::from_secs(3600),
            _ => ttl,
        };
        let got = self.inner.acquire_lease(schedule, holder, ttl).await?;
        Ok(match (self.fault, got) {
            // Answers as if it held a lease someone else holds.
            (Fault::BeatTwoHolders, None) => {
                self.inner.lease_holder(schedule).await?.map(|h| h.token)
            }
            // Every holder gets the first token.
            (Fault::BeatSameTokenOnTakeover, Some(_)) => Some(1),
            // A holder taking its lapsed lease back gets the token it had before.
            (Fault::BeatTokenPerHolder, Some(t)) => {
                let mut first = self.first_tokens.lock().unwrap();
                let key = (schedule.to_string(), holder.to_string());
                Some(*first.entry(key).or_insert(t))
            }
            (_, got) => got,
        })
    }
    async fn release_lease(
        &self,
        schedule: &str,
        holder: &str,
        token: u64,
    ) -> Result<(), BrokerError> {
        if self.fault == Fault::BeatReleaseIgnored {
            return Ok(());
        }
        self.inner.release_lease(schedule, holder, token).await
    }
    async fn lease_holder(&self, schedule: &str) -> Result<Option<LeaseHolder>, BrokerError> {
        self.inner.lease_holder(schedule).await
    }
    async fn last_runs(&self, schedule: &str) -> Result<Vec<LastRun>, BrokerError> {
        let mut runs = self.inner.last_runs(schedule).await?;
        if self.fault == Fault::BeatSecondPrecision {
            runs.iter_mut().for_each(|r| r.at = r.at.trunc_subsecs(0));
        }
        Ok(runs)
    }
    async fn record_runs(
        &self,
        schedule: &str,
        holder: &str,
        token: u64,
        runs: &[LastRun],
    ) -> Result<bool, BrokerError> {
        let mut token = token;
        if self.fault == Fault::BeatIgnoresToken {
            // Writes under whatever token the holder has now, as if it never checked.
            if let Some(h) = self.inner.lease_holder(schedule).await? {
                token = if h.holder == holder { h.token } else { token };
            }
        }
        self.inner.record_runs(schedule, holder, token, runs).await
    }
}

#[async_trait]
impl Consumer for FaultyConsumer {
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError> {
        let mut got = self.inner.fetch(max, wait).await?;
        if self.fault == Fault::NeverRedelivered {
            got.iter_mut().for_each(|d| d.redelivered = false);
        }
        Ok(got)
    }
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        self.inner.ack(tags).await
    }
    async fn requeue(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        self.inner.requeue(tags).await
    }
    async fn dead_letter(&self, tag: &DeliveryTag, reason: &str) -> Result<(), BrokerError> {
        self.inner.dead_letter(tag, reason).await
    }
    async fn keepalive(&self) -> Result<(), BrokerError> {
        self.inner.keepalive().await
    }
    fn keepalive_interval(&self) -> Duration {
        self.inner.keepalive_interval()
    }
    async fn close(&self) -> Result<(), BrokerError> {
        if self.fault == Fault::CloseDoesNothing {
            return Ok(());
        }
        self.inner.close().await
    }
    fn queue_set(&self) -> Option<&dyn QueueSet> {
        (self.fault != Fault::NoCapabilities).then_some(self)
    }
}

#[async_trait]
impl QueueSet for FaultyConsumer {
    fn queues(&self) -> Vec<String> {
        self.inner
            .queue_set()
            .map(|s| s.queues())
            .unwrap_or_default()
    }
    async fn add_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        self.inner
            .queue_set()
            .expect("sqlite has a queue set")
            .add_queue(queue)
            .await
    }
    async fn cancel_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        if self.fault == Fault::CancelIgnored {
            return Ok(true);
        }
        self.inner
            .queue_set()
            .expect("sqlite has a queue set")
            .cancel_queue(queue)
            .await
    }
}

#[async_trait]
impl ResultBackend for Faulty {
    fn display_url(&self) -> String {
        ResultBackend::display_url(&*self.inner)
    }
    async fn store(&self, meta: &TaskMeta, expires: Option<Duration>) -> Result<(), BackendError> {
        let mut meta = meta.clone();
        let mut expires = expires;
        match self.fault {
            Fault::OverwritesSuccess => self.inner.forget(&meta.task_id).await?,
            Fault::MillisecondDates => meta.date_done = meta.date_done.map(|d| d.trunc_subsecs(3)),
            Fault::IgnoresExpiry => expires = None,
            _ => {}
        }
        self.inner.store(&meta, expires).await
    }
    async fn get(&self, task_id: &str) -> Result<Option<TaskMeta>, BackendError> {
        self.inner.get(task_id).await
    }
    async fn wait(
        &self,
        task_id: &str,
        timeout: Duration,
    ) -> Result<Option<TaskMeta>, BackendError> {
        self.inner.wait(task_id, timeout).await
    }
    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        self.inner.forget(task_id).await
    }
    async fn save_group(
        &self,
        group_id: &str,
        task_ids: &[String],
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.inner.save_group(group_id, task_ids, expires).await
    }
    async fn restore_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        self.inner.restore_group(group_id).await
    }
    fn chords(&self) -> Option<&dyn ChordJoin> {
        (self.fault != Fault::NoCapabilities).then_some(self)
    }
}

#[async_trait]
impl ChordJoin for Faulty {
    async fn start_chord(
        &self,
        group_id: &str,
        size: usize,
        expires: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.inner.start_chord(group_id, size, expires).await
    }
    async fn store_part(
        &self,
        meta: &TaskMeta,
        expires: Option<Duration>,
        part: ChordPart<'_>,
    ) -> Result<PartReturn, BackendError> {
        let mut meta = meta.clone();
        if self.fault == Fault::ChordCountsCopies {
            meta.task_id = format!("{}-{}", meta.task_id, celeriac_core::message::new_id());
        }
        let counted = self.inner.store_part(&meta, expires, part).await?;
        Ok(match (self.fault, counted) {
            (Fault::ChordClaimIgnored, PartReturn::ClaimedElsewhere) => PartReturn::Complete {
                claim: String::new(),
                parts: Vec::new(),
            },
            (Fault::ChordUnordered, PartReturn::Complete { claim, mut parts }) => {
                parts.reverse();
                PartReturn::Complete { claim, parts }
            }
            (_, counted) => counted,
        })
    }
    async fn finish_chord(&self, group_id: &str, claim: &str) -> Result<bool, BackendError> {
        self.inner.finish_chord(group_id, claim).await
    }
}

fn faulty(
    fault: Fault,
    opts: &FactoryOptions,
) -> (tempfile::TempDir, impl Fn() -> Arc<Faulty> + Send + Sync) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("celeriac.db");
    let mut options = celeriac_sqlite::SqliteOptions::default();
    if let Some(t) = opts.visibility_timeout {
        options.visibility_timeout = t;
    }
    let open = move || {
        Arc::new(Faulty {
            inner: SqliteStore::open(&path, options.clone()).unwrap(),
            fault,
            first_tokens: Mutex::default(),
        })
    };
    (dir, open)
}

async fn broker_outcome(fault: Fault, case: &str) -> Outcome {
    let factory = move |opts: FactoryOptions| async move {
        let (dir, open) = faulty(fault, &opts);
        let first: Arc<dyn Broker> = open();
        Ok::<_, Skip>(
            Instance::new(first, move || {
                let again: Arc<dyn Broker> = open();
                std::future::ready(again)
            })
            .keep(dir),
        )
    };
    let case = broker_suite::cases()
        .into_iter()
        .find(|c| c.name == case)
        .unwrap();
    case.run("broker", &factory).await
}

async fn backend_outcome(fault: Fault, case: &str) -> Outcome {
    let factory = move |opts: FactoryOptions| async move {
        let (dir, open) = faulty(fault, &opts);
        let first: Arc<dyn ResultBackend> = open();
        Ok::<_, Skip>(
            Instance::new(first, move || {
                let again: Arc<dyn ResultBackend> = open();
                std::future::ready(again)
            })
            .keep(dir),
        )
    };
    let case = backend_suite::cases()
        .into_iter()
        .find(|c| c.name == case)
        .unwrap();
    case.run("backend", &factory).await
}

async fn beat_outcome(fault: Fault, case: &str) -> Outcome {
    let factory = move |opts: FactoryOptions| async move {
        let (dir, open) = faulty(fault, &opts);
        let first: Arc<dyn Broker> = open();
        Ok::<_, Skip>(
            Instance::new(first, move || {
                let again: Arc<dyn Broker> = open();
                std::future::ready(again)
            })
            .keep(dir),
        )
    };
    let case = beat_suite::cases()
        .into_iter()
        .find(|c| c.name == case)
        .unwrap();
    case.run("beat", &beat_suite::OnBroker(factory)).await
}

fn assert_failed(outcome: Outcome, fault: Fault) {
    assert!(
        matches!(outcome, Outcome::Failed(_)),
        "{fault:?} was not caught: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_faults_are_caught() {
    for (fault, case) in [
        (Fault::OverwritesSuccess, "success_never_overwritten"),
        (Fault::MillisecondDates, "round_trip_every_state"),
        (Fault::IgnoresExpiry, "results_expire"),
        (
            Fault::ChordCountsCopies,
            "chord_counts_a_member_stored_twice_once",
        ),
        (
            Fault::ChordClaimIgnored,
            "chord_completes_once_in_header_order",
        ),
        (
            Fault::ChordUnordered,
            "chord_completes_once_in_header_order",
        ),
    ] {
        assert_failed(backend_outcome(fault, case).await, fault);
    }
    let no_join = backend_outcome(Fault::NoCapabilities, "chord_race_has_one_winner").await;
    assert!(
        matches!(&no_join, Outcome::Skipped(why) if why.contains("ChordJoin")),
        "{no_join:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_faults_are_caught() {
    for (fault, case) in [
        (Fault::IgnoresPriority, "priority_order"),
        (Fault::NeverRedelivered, "requeue_redelivers"),
        (Fault::NeverRedelivered, "lapsed_lease_redelivers"),
        (Fault::CloseDoesNothing, "close_requeues_held"),
        (Fault::CancelIgnored, "queue_set_adds_and_cancels"),
        (Fault::FirstReplyOnly, "mailbox_reaches_every_listener"),
        (Fault::EventsReordered, "events_reach_every_receiver"),
    ] {
        assert_failed(broker_outcome(fault, case).await, fault);
    }
    // The healthy parts of a faulty engine still pass.
    assert_eq!(
        broker_outcome(Fault::IgnoresPriority, "round_trip").await,
        Outcome::Passed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_capabilities_are_skipped() {
    for case in [
        "queue_lengths",
        "dead_letters_list_and_requeue",
        "revocations_durable",
    ] {
        assert!(matches!(
            broker_outcome(Fault::IgnoresPriority, case).await,
            Outcome::Skipped(_)
        ));
    }
    for (case, capability) in [
        ("queue_set_adds_and_cancels", "QueueSet"),
        ("mailbox_reaches_every_listener", "Mailbox"),
        ("events_reach_every_receiver", "Events"),
    ] {
        let outcome = broker_outcome(Fault::NoCapabilities, case).await;
        assert!(
            matches!(&outcome, Outcome::Skipped(why) if why.contains(capability)),
            "{case}: {outcome:?}"
        );
    }
    let purge = broker_outcome(Fault::NoCapabilities, "purge").await;
    assert!(
        matches!(&purge, Outcome::Skipped(why) if why.contains("Purge")),
        "{purge:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_faults_are_caught() {
    for (fault, case) in [
        (Fault::BeatTwoHolders, "one_holder_at_a_time"),
        (
            Fault::BeatNeverLapses,
            "lapsed_lease_passes_with_a_larger_token",
        ),
        (Fault::BeatNeverLapses, "renew_keeps_token"),
        (
            Fault::BeatSameTokenOnTakeover,
            "lapsed_lease_passes_with_a_larger_token",
        ),
        (Fault::BeatSameTokenOnTakeover, "release_frees_at_once"),
        (
            Fault::BeatTokenPerHolder,
            "lapsed_lease_passes_with_a_larger_token",
        ),
        (Fault::BeatIgnoresToken, "stale_token_writes_nothing"),
        (Fault::BeatReleaseIgnored, "release_frees_at_once"),
        (Fault::BeatSecondPrecision, "last_runs_round_trip"),
    ] {
        assert_failed(beat_outcome(fault, case).await, fault);
    }
    // The healthy parts of a faulty store still pass.
    assert_eq!(
        beat_outcome(Fault::BeatSecondPrecision, "one_holder_at_a_time").await,
        Outcome::Passed
    );
    let none = beat_outcome(Fault::NoCapabilities, "one_holder_at_a_time").await;
    assert!(
        matches!(&none, Outcome::Skipped(why) if why.contains("BeatStore")),
        "{none:?}"
    );
}
