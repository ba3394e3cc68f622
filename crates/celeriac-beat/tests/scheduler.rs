//! The scheduler loop on Tokio's paused clock: a store in memory that keeps the
//! [`BeatStore`] contract on the same clock, and a broker that records what it is sent.
//! The same loop runs against the embedded store and Redis in real time in
//! `crates/celeriac/tests/beat.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use celeriac_beat::{
    Beat, BeatConfig, BeatHandle, Clock, Engines, Entry, EntryOptions, Missed, Schedule,
};
use celeriac_core::beat::{BeatStore, LastRun, LeaseHolder};
use celeriac_core::broker::{Consumer, ConsumerSpec, Publish};
use celeriac_core::canvas::FixedQueue;
use celeriac_core::message::TaskMessage;
use celeriac_core::{Broker, BrokerError, ErrorKind};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

/// Wall time that moves with Tokio's (paused) clock.
struct TokioClock {
    origin: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    fn new() -> Arc<TokioClock> {
        Arc::new(TokioClock {
            origin: Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap(),
            start: tokio::time::Instant::now(),
        })
    }
}

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.origin + TimeDelta::from_std(self.start.elapsed()).unwrap()
    }
    async fn sleep_until(&self, at: DateTime<Utc>) {
        let offset = (at - self.origin).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep_until(self.start + offset).await;
    }
}

#[derive(Default)]
struct Lease {
    holder: String,
    token: u64,
    until: Option<DateTime<Utc>>,
}

/// A store in memory, on the test clock; `cut_off` makes one holder's calls fail as if
/// its network to the store were down.
struct MemoryStore {
    clock: Arc<TokioClock>,
    lease: Mutex<Lease>,
    runs: Mutex<HashMap<String, LastRun>>,
    cut_off: Mutex<Option<String>>,
}

impl MemoryStore {
    fn new(clock: Arc<TokioClock>) -> Arc<MemoryStore> {
        Arc::new(MemoryStore {
            clock,
            lease: Mutex::default(),
            runs: Mutex::default(),
            cut_off: Mutex::default(),
        })
    }

    fn reachable(&self, holder: &str) -> Result<(), BrokerError> {
        match self.cut_off.lock().unwrap().as_deref() {
            Some(cut) if cut == holder => Err(BrokerError::new(ErrorKind::Unreachable, "cut off")),
            _ => Ok(()),
        }
    }

    fn live(&self, lease: &Lease) -> bool {
        lease.until.is_some_and(|u| u > self.clock.now())
    }
}

#[async_trait]
impl BeatStore for MemoryStore {
    async fn acquire_lease(
        &self,
        _schedule: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        self.reachable(holder)?;
        let mut lease = self.lease.lock().unwrap();
        let live = self.live(&lease);
        if live && lease.holder != holder {
            return Ok(None);
        }
        if !live {
            lease.token += 1;
            lease.holder = holder.to_string();
        }
        lease.until = Some(self.clock.now() + TimeDelta::from_std(ttl).unwrap());
        Ok(Some(lease.token))
    }

    async fn release_lease(&self, _: &str, holder: &str, token: u64) -> Result<(), BrokerError> {
        let mut lease = self.lease.lock().unwrap();
        if lease.holder == holder && lease.token == token {
            lease.until = None;
        }
        Ok(())
    }

    async fn lease_holder(&self, _: &str) -> Result<Option<LeaseHolder>, BrokerError> {
        let lease = self.lease.lock().unwrap();
        Ok(self.live(&lease).then(|| LeaseHolder {
            holder: lease.holder.clone(),
            token: lease.token,
            remaining: (lease.until.unwrap() - self.clock.now()).to_std().unwrap(),
        }))
    }

    async fn last_runs(&self, _: &str) -> Result<Vec<LastRun>, BrokerError> {
        Ok(self.runs.lock().unwrap().values().cloned().collect())
    }

    async fn record_runs(
        &self,
        _: &str,
        holder: &str,
        token: u64,
        runs: &[LastRun],
    ) -> Result<bool, BrokerError> {
        self.reachable(holder)?;
        let lease = self.lease.lock().unwrap();
        if !(self.live(&lease) && lease.holder == holder && lease.token == token) {
            return Ok(false);
        }
        let mut stored = self.runs.lock().unwrap();
        for run in runs {
            stored.insert(run.entry.clone(), run.clone());
        }
        Ok(true)
    }
}

/// One sent tick: the task, who sent it, and when (test clock).
#[derive(Clone, Debug)]
struct Sent {
    task: String,
    origin: String,
    at: DateTime<Utc>,
    message: TaskMessage,
    queue: String,
}

struct RecordingBroker {
    clock: Arc<TokioClock>,
    store: Arc<MemoryStore>,
    sent: Mutex<Vec<Sent>>,
    refusing: AtomicBool,
    /// False: a broker with no store of its own (RabbitMQ).
    keeps_state: bool,
}

#[async_trait]
impl Broker for RecordingBroker {
    fn display_url(&self) -> String {
        "memory://".into()
    }
    async fn declare_queue(&self, _: &str) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn publish(&self, p: Publish) -> Result<(), BrokerError> {
        if self.refusing.load(Ordering::SeqCst) {
            return Err(BrokerError::new(ErrorKind::Unreachable, "refusing"));
        }
        let message = TaskMessage::from_raw(&p.message).unwrap();
        self.sent.lock().unwrap().push(Sent {
            task: message.headers.task.clone(),
            origin: message.headers.origin.clone().unwrap_or_default(),
            at: self.clock.now(),
            message,
            queue: p.queue,
        });
        Ok(())
    }
    async fn consumer(&self, _: ConsumerSpec) -> Result<Box<dyn Consumer>, BrokerError> {
        Err(BrokerError::new(ErrorKind::Unsupported, "beat only sends"))
    }
    fn beat_store(&self) -> Option<&dyn BeatStore> {
        self.keeps_state
            .then_some(self.store.as_ref() as &dyn BeatStore)
    }
}

struct Rig {
    clock: Arc<TokioClock>,
    store: Arc<MemoryStore>,
    broker: Arc<RecordingBroker>,
}

impl Rig {
    fn new() -> Rig {
        let clock = TokioClock::new();
        let store = MemoryStore::new(clock.clone());
        let broker = Arc::new(RecordingBroker {
            clock: clock.clone(),
            store: store.clone(),
            sent: Mutex::default(),
            refusing: AtomicBool::new(false),
            keeps_state: true,
        });
        Rig {
            clock,
            store,
            broker,
        }
    }

    fn beat(
        &self,
        holder: &str,
        entries: Vec<Entry>,
        tweak: impl FnOnce(&mut BeatConfig),
    ) -> BeatHandle {
        let mut config = BeatConfig::new(holder);
        tweak(&mut config);
        let engines = Engines {
            broker: self.broker.clone(),
            backend: None,
        };
        Beat::new(
            entries,
            engines,
            Arc::new(FixedQueue("celery".into())),
            config,
        )
        .unwrap()
        .with_clock(self.clock.clone())
        .start()
    }

    fn sent(&self, task: &str) -> Vec<Sent> {
        let sent = self.broker.sent.lock().unwrap();
        sent.iter().filter(|s| s.task == task).cloned().collect()
    }

    /// Seconds after the rig's start, for readable assertions.
    fn secs(&self, at: DateTime<Utc>) -> f64 {
        (at - self.clock.origin).num_milliseconds() as f64 / 1000.0
    }
}

fn entry(name: &str, schedule: &str) -> Entry {
    let schedule: Schedule = match schedule.strip_prefix("cron ") {
        Some(cron) => cron.parse::<celeriac_beat::Crontab>().unwrap().into(),
        None => schedule.parse::<celeriac_beat::Interval>().unwrap().into(),
    };
    Entry {
        name: name.into(),
        task: format!("tasks.{name}"),
        args: vec![name.into()],
        kwargs: Default::default(),
        options: EntryOptions::default(),
        schedule,
    }
}

async fn run_for(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn one_beat_sends_each_second_of_a_1s_entry_on_time_as_celery_beat_messages() {
    let rig = Rig::new();
    let mut tick = entry("tick", "1s");
    tick.options = EntryOptions {
        queue: Some("py".into()),
        priority: Some(5),
        expires: Some(30.0),
        ..Default::default()
    };
    let beat = rig.beat("beat@a", vec![tick], |_| {});
    run_for(60.5).await;
    beat.stop().await;
    let sent = rig.sent("tasks.tick");
    let times: Vec<f64> = sent.iter().map(|s| rig.secs(s.at)).collect();
    let expected: Vec<f64> = (1..=60).map(f64::from).collect();
    assert_eq!(times, expected);
    let first = &sent[0];
    assert_eq!(first.queue, "py");
    assert_eq!(first.message.headers.extra["celery_beat_task"], true);
    assert_eq!(first.message.args, vec![serde_json::json!("tick")]);
    assert_eq!(first.origin, "beat@a");
    let expires = first.message.headers.expires.unwrap();
    assert_eq!((expires - first.at).num_seconds(), 30);
}

#[tokio::test(start_paused = true)]
async fn three_beats_on_one_schedule_send_each_tick_once() {
    let rig = Rig::new();
    let beats: Vec<BeatHandle> = ["beat@a", "beat@b", "beat@c"]
        .iter()
        .map(|h| rig.beat(h, vec![entry("tick", "1s")], |_| {}))
        .collect();
    run_for(12.5).await;
    let leaders = beats.iter().filter(|b| b.leading()).count();
    for b in beats {
        b.stop().await;
    }
    let sent = rig.sent("tasks.tick");
    assert_eq!(sent.len(), 12, "{sent:?}");
    assert_eq!(leaders, 1);
    let origins: std::collections::HashSet<_> = sent.iter().map(|s| &s.origin).collect();
    assert_eq!(origins.len(), 1, "one sender: {origins:?}");
}

#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_from_the_store_is_replaced_within_the_ttl_and_sends_nothing_more() {
    let rig = Rig::new();
    let a = rig.beat("beat@a", vec![entry("tick", "1s")], |_| {});
    run_for(0.1).await;
    let b = rig.beat("beat@b", vec![entry("tick", "1s")], |_| {});
    run_for(5.2).await;
    assert!(a.leading() && !b.leading());
    *rig.store.cut_off.lock().unwrap() = Some("beat@a".into());
    let cut_at = rig.clock.now();
    run_for(20.0).await;
    assert!(!a.leading() && b.leading());
    let sent = rig.sent("tasks.tick");
    let first_by_b = sent.iter().find(|s| s.origin == "beat@b").unwrap();
    let gap = (first_by_b.at - cut_at).to_std().unwrap();
    assert!(gap <= Duration::from_secs(11), "takeover after {gap:?}");
    assert!(
        sent.iter().all(|s| s.origin == "beat@b" || s.at <= cut_at),
        "a sent after it was cut off: {sent:?}"
    );
    // No tick twice: the one missed while nobody led went out once, on takeover.
    let times: Vec<f64> = sent.iter().map(|s| rig.secs(s.at)).collect();
    assert!(
        times.windows(2).all(|w| w[1] - w[0] >= 0.99),
        "sends closer than the interval: {times:?}"
    );
    a.stop().await;
    b.stop().await;
}

fn seed(rig: &Rig, name: &str, schedule: &str, at: DateTime<Utc>) {
    rig.store.runs.lock().unwrap().insert(
        name.into(),
        LastRun {
            entry: name.into(),
            schedule: schedule.into(),
            at,
            total_run_count: 7,
        },
    );
}

fn send_times(rig: &Rig, task: &str) -> Vec<f64> {
    rig.sent(task).iter().map(|s| rig.secs(s.at)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_replaced_leader_goes_on_from_the_recorded_runs_without_repeating_or_skipping() {
    let rig = Rig::new();
    let a = rig.beat("beat@a", vec![entry("tick", "1s")], |_| {});
    run_for(5.5).await;
    a.stop().await;
    run_for(2.7).await;
    let b = rig.beat("beat@b", vec![entry("tick", "1s")], |_| {});
    // Stopped between ticks: a stop at a due instant may or may not follow that tick.
    run_for(1.5).await;
    b.stop().await;
    // 6, 7 and 8 fell due while nobody ran: sent once at 8.2, then on the new phase.
    assert_eq!(
        send_times(&rig, "tasks.tick"),
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 8.2, 9.2]
    );
    let runs = rig.store.runs.lock().unwrap();
    assert_eq!(runs["tick"].total_run_count, 7);
}

#[tokio::test(start_paused = true)]
async fn a_missed_tick_can_be_skipped_instead() {
    let rig = Rig::new();
    let now = rig.clock.now();
    seed(
        &rig,
        "tick",
        "every 10s in UTC",
        now - TimeDelta::seconds(25),
    );
    let beat = rig.beat("beat@a", vec![entry("tick", "10s")], |c| {
        c.missed = Missed::Skip
    });
    run_for(10.5).await;
    beat.stop().await;
    assert_eq!(send_times(&rig, "tasks.tick"), vec![10.0]);
}

#[tokio::test(start_paused = true)]
async fn only_changed_entries_start_afresh() {
    let rig = Rig::new();
    let now = rig.clock.now();
    seed(
        &rig,
        "same",
        "every 10s in UTC",
        now - TimeDelta::seconds(3),
    );
    seed(
        &rig,
        "changed",
        "every 1h in UTC",
        now - TimeDelta::seconds(3),
    );
    let beat = rig.beat(
        "beat@a",
        vec![entry("same", "10s"), entry("changed", "10s")],
        |_| {},
    );
    run_for(4.0).await;
    // A reload keeps `same` and `changed` where they are, starts `new` now.
    beat.reload(vec![
        entry("same", "10s"),
        entry("changed", "10s"),
        entry("new", "10s"),
    ]);
    run_for(13.5).await;
    beat.stop().await;
    assert_eq!(send_times(&rig, "tasks.same"), vec![7.0, 17.0]);
    assert_eq!(send_times(&rig, "tasks.changed"), vec![10.0]);
    assert_eq!(send_times(&rig, "tasks.new"), vec![14.0]);
    assert_eq!(rig.store.runs.lock().unwrap()["same"].total_run_count, 9);
}

#[tokio::test(start_paused = true)]
async fn ticks_the_broker_refused_are_sent_when_it_recovers() {
    let rig = Rig::new();
    let beat = rig.beat("beat@a", vec![entry("tick", "1s")], |_| {});
    run_for(0.5).await;
    rig.broker.refusing.store(true, Ordering::SeqCst);
    run_for(2.6).await;
    rig.broker.refusing.store(false, Ordering::SeqCst);
    run_for(3.0).await;
    beat.stop().await;
    let times = send_times(&rig, "tasks.tick");
    assert!(times[0] >= 3.0, "sent while refused: {times:?}");
    // Every recorded tick went out.
    let recorded = rig.store.runs.lock().unwrap()["tick"].total_run_count;
    assert_eq!(recorded, times.len() as u64, "{times:?}");
    assert!(times.len() >= 4, "{times:?}");
}

#[tokio::test]
async fn a_broker_without_a_store_and_no_backend_that_has_one_is_refused_by_name() {
    let clock = TokioClock::new();
    let broker = Arc::new(RecordingBroker {
        clock: clock.clone(),
        store: MemoryStore::new(clock),
        sent: Mutex::default(),
        refusing: AtomicBool::new(false),
        keeps_state: false,
    });
    let engines = Engines {
        broker,
        backend: None,
    };
    let refused = Beat::new(
        vec![entry("tick", "1s")],
        engines,
        Arc::new(FixedQueue("celery".into())),
        BeatConfig::new("beat@a"),
    );
    let message = refused.err().expect("refused").to_string();
    assert!(
        message.contains("the broker memory:// has none and there is no result backend"),
        "{message}"
    );
}
