//! The scheduler loop: many beat processes share one schedule through a leader lease in
//! the broker's store ([`BeatStore`]); the one that holds it sends each due tick once.
//!
//! Each wake the loop (1) takes or renews the lease when it is time to, (2) sends what is
//! due, recording the ticks under its fencing token *before* sending them, and (3) sleeps
//! until the next due entry, the next renewal, or `max_interval`, whichever comes first.
//! Followers try for the lease every `min(ttl / 4, 1 s)`, so a dead leader is replaced
//! within the TTL plus a second. A new leader plans from the recorded last runs
//! ([`Missed`] says what happens to a tick that fell due while nobody led).
//!
//! Failure modes, and why each is safe:
//! * A leader that pauses (GC, SIGSTOP, a slow disk) past its TTL loses the lease; its
//!   record is refused for the stale token, so it sends nothing more and steps down.
//! * A leader stops trusting its lease a tenth of the TTL before the store would hand it
//!   on, so clocks that disagree a little cannot make two senders.
//! * The store unreachable: the leader keeps sending until it can no longer trust its
//!   lease, then waits as a follower; nobody can take over either, so no tick is doubled.
//! * The broker refusing a send: the tick is already recorded, so it is retried while
//!   this process leads; a leader killed between record and send loses that one tick
//!   (never sends it twice).

mod clock;
mod due;
mod lease;
mod tick;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::beat::{BeatStore, LastRun};
use celeriac_core::broker::Publish;
use celeriac_core::canvas::Router;
use celeriac_core::{Broker, ResultBackend};
use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use clock::{Clock, SystemClock};
pub use due::{schedule_text, Missed};

use crate::{Entry, Tz};
use due::DueQueue;
use lease::Held;

/// How one beat process takes part in a schedule.
#[derive(Clone, Debug)]
pub struct BeatConfig {
    /// The lease and the last runs are kept under this name: beats with the same name on
    /// the same broker share one schedule.
    pub schedule_name: String,
    /// Who this process is, in the store and in logs (`beat@host:pid`).
    pub holder: String,
    pub lease_ttl: Duration,
    /// The longest the loop sleeps (Celery's `beat_max_loop_interval`).
    pub max_interval: Duration,
    pub missed: Missed,
    /// The zone crontab fields and relative intervals are read in (Celery's `timezone`).
    pub timezone: Tz,
}

impl BeatConfig {
    pub fn new(holder: impl Into<String>) -> BeatConfig {
        BeatConfig {
            schedule_name: "celeriac.beat".to_string(),
            holder: holder.into(),
            lease_ttl: Duration::from_secs(10),
            max_interval: Duration::from_secs(300),
            missed: Missed::RunOnce,
            timezone: Tz::UTC,
        }
    }

    fn follower_poll(&self) -> Duration {
        (self.lease_ttl / 4)
            .min(Duration::from_secs(1))
            .min(self.max_interval)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    #[error("beat needs a store for its lease and last runs: the broker {broker} has none{backend}; use the embedded store or Redis as broker or result backend")]
    NoStore { broker: String, backend: String },
    #[error("beat's lease TTL must be at least 1 second (got {0:?})")]
    LeaseTooShort(Duration),
}

/// Where the lease lives: the broker's store, else the result backend's (RabbitMQ keeps
/// no state a lease could live in; see `docs/beat.md`).
#[derive(Clone)]
pub struct Engines {
    pub broker: Arc<dyn Broker>,
    pub backend: Option<Arc<dyn ResultBackend>>,
}

impl Engines {
    fn store(&self) -> Option<&dyn BeatStore> {
        self.broker
            .beat_store()
            .or_else(|| self.backend.as_ref().and_then(|b| b.beat_store()))
    }
}

/// A beat ready to start.
pub struct Beat {
    entries: Vec<Arc<Entry>>,
    engines: Engines,
    router: Arc<dyn Router>,
    clock: Arc<dyn Clock>,
    config: BeatConfig,
}

impl Beat {
    pub fn new(
        entries: Vec<Entry>,
        engines: Engines,
        router: Arc<dyn Router>,
        config: BeatConfig,
    ) -> Result<Beat, BeatError> {
        if config.lease_ttl < Duration::from_secs(1) {
            return Err(BeatError::LeaseTooShort(config.lease_ttl));
        }
        if engines.store().is_none() {
            let backend = match &engines.backend {
                Some(b) => format!(" and neither has the result backend {}", b.display_url()),
                None => " and there is no result backend".to_string(),
            };
            return Err(BeatError::NoStore {
                broker: engines.broker.display_url(),
                backend,
            });
        }
        Ok(Beat {
            entries: entries.into_iter().map(Arc::new).collect(),
            engines,
            router,
            clock: Arc::new(SystemClock),
            config,
        })
    }

    /// Drives time through `clock` instead of the wall clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Beat {
        self.clock = clock;
        self
    }

    /// Starts the loop on the current Tokio runtime.
    pub fn start(self) -> BeatHandle {
        let status = Arc::new(Status::default());
        let (control, inbox) = mpsc::unbounded_channel();
        let runner = Runner {
            entries: self.entries,
            engines: self.engines,
            router: self.router,
            clock: self.clock,
            config: self.config,
            status: status.clone(),
            held: None,
            queue: None,
            retry_at: None,
        };
        BeatHandle {
            status,
            control,
            task: tokio::spawn(runner.run(inbox)),
        }
    }
}

#[derive(Default)]
struct Status {
    leading: AtomicBool,
}

enum Control {
    Reload(Vec<Entry>),
    Stop,
}

/// A running beat.
pub struct BeatHandle {
    status: Arc<Status>,
    control: mpsc::UnboundedSender<Control>,
    task: JoinHandle<()>,
}

impl BeatHandle {
    pub fn leading(&self) -> bool {
        self.status.leading.load(Ordering::SeqCst)
    }

    /// Replaces the schedule: unchanged entries keep their next run, changed and new ones
    /// start afresh, removed ones stop.
    pub fn reload(&self, entries: Vec<Entry>) {
        let _ = self.control.send(Control::Reload(entries));
    }

    /// Stops the loop and gives the lease up, so a follower takes over at once.
    pub async fn stop(self) {
        let _ = self.control.send(Control::Stop);
        if let Err(e) = self.task.await {
            tracing::error!("beat stopped abnormally: {e}");
        }
    }
}

struct Runner {
    /// Shared with the planned queue: a large schedule is held once.
    entries: Vec<Arc<Entry>>,
    engines: Engines,
    router: Arc<dyn Router>,
    clock: Arc<dyn Clock>,
    config: BeatConfig,
    status: Arc<Status>,
    held: Option<Held>,
    /// Planned while leading.
    queue: Option<DueQueue>,
    /// After a failed record, the next attempt.
    retry_at: Option<DateTime<Utc>>,
}

fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

impl Runner {
    fn store(&self) -> &dyn BeatStore {
        self.engines.store().expect("checked by Beat::new")
    }

    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Control>) {
        loop {
            let wake = self.step().await;
            let clock = self.clock.clone();
            tokio::select! {
                _ = clock.sleep_until(wake) => {}
                message = inbox.recv() => match message {
                    Some(Control::Reload(entries)) => self.reload(entries),
                    Some(Control::Stop) | None => break,
                },
            }
        }
        self.resign().await;
    }

    /// One wake: the lease, then the sends; returns when to wake next.
    async fn step(&mut self) -> DateTime<Utc> {
        let now = self.clock.now();
        if self.held.is_none_or(|h| now >= h.renew_at) {
            self.hold(now).await;
        }
        let Some(held) = self.held else {
            return after(now, self.config.follower_poll());
        };
        if self.retry_at.is_none_or(|at| now >= at) {
            self.retry_at = None;
            self.send_due(held).await;
        }
        let now = self.clock.now();
        let mut wake = after(now, self.config.max_interval);
        if let Some(held) = self.held {
            wake = wake.min(held.renew_at);
        }
        // Waiting to retry a record, the due entries wait with it.
        let next_send = match self.retry_at {
            Some(retry) => Some(retry),
            None => self.queue.as_mut().and_then(DueQueue::next_due),
        };
        next_send.map_or(wake, |at| wake.min(at))
    }

    /// Takes or renews the lease.
    async fn hold(&mut self, asked_at: DateTime<Utc>) {
        let config = &self.config;
        let answer = self
            .store()
            .acquire_lease(&config.schedule_name, &config.holder, config.lease_ttl)
            .await;
        match answer {
            Ok(Some(token)) => {
                let known = self.held.is_some_and(|h| h.token == token);
                self.held = Some(Held::confirmed(token, asked_at, self.config.lease_ttl));
                if !known {
                    self.promote(token).await;
                }
            }
            Ok(None) => self.step_down("another beat holds the lease"),
            Err(e) => {
                tracing::warn!("beat: cannot reach the lease store: {e}");
                let now = self.clock.now();
                let retry = after(now, self.config.follower_poll());
                match &mut self.held {
                    Some(held) if held.trusted(now) => held.renew_at = retry,
                    Some(_) => self.step_down("the lease could not be renewed in time"),
                    None => {}
                }
            }
        }
    }

    async fn promote(&mut self, token: u64) {
        let runs = match self.store().last_runs(&self.config.schedule_name).await {
            Ok(runs) => runs,
            Err(e) => {
                // Leading without the last runs could repeat ticks: try again next wake.
                tracing::warn!("beat: took the lease but cannot read the last runs: {e}");
                self.held = None;
                return;
            }
        };
        let config = &self.config;
        let now = self.clock.now();
        let queue = DueQueue::plan(&self.entries, &runs, config.timezone, now, config.missed);
        tracing::info!(
            "beat: {} leads schedule {:?} (token {token}, {} entries)",
            config.holder,
            config.schedule_name,
            queue.len()
        );
        self.queue = Some(queue);
        self.status.leading.store(true, Ordering::SeqCst);
    }

    fn step_down(&mut self, why: &str) {
        if self.held.take().is_some() {
            tracing::warn!("beat: {} stops leading: {why}", self.config.holder);
        }
        self.queue = None;
        self.status.leading.store(false, Ordering::SeqCst);
    }

    fn reload(&mut self, entries: Vec<Entry>) {
        let entries: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
        let now = self.clock.now();
        if let Some(queue) = &mut self.queue {
            queue.replace(&entries, self.config.timezone, now);
        }
        tracing::info!("beat: schedule reloaded ({} entries)", entries.len());
        self.entries = entries;
    }

    /// Records and sends every due tick.
    async fn send_due(&mut self, held: Held) {
        let now = self.clock.now();
        if !held.trusted(now) {
            return self.step_down("the lease was not renewed in time");
        }
        let Some(queue) = self.queue.as_mut() else {
            return;
        };
        let taken = queue.take_due(now);
        if taken.is_empty() {
            return;
        }
        let runs: Vec<LastRun> = taken
            .iter()
            .map(|&(index, at)| {
                let slot = queue.slot(index);
                LastRun {
                    entry: slot.entry.name.clone(),
                    schedule: slot.schedule.clone(),
                    at,
                    total_run_count: slot.total_run_count + 1,
                }
            })
            .collect();
        let config = &self.config;
        let recorded = self
            .engines
            .store()
            .expect("checked by Beat::new")
            .record_runs(&config.schedule_name, &config.holder, held.token, &runs)
            .await;
        match recorded {
            Ok(true) => {}
            Ok(false) => return self.step_down("the lease passed to another beat"),
            Err(e) => {
                tracing::warn!("beat: cannot record {} due ticks: {e}", runs.len());
                queue.retry(&taken);
                self.retry_at = Some(after(now, Duration::from_secs(1)));
                return;
            }
        }
        let mut publishes = Vec::with_capacity(taken.len());
        for &(index, at) in &taken {
            let slot = queue.slot_mut(index);
            slot.total_run_count += 1;
            publishes.push(tick::tick_publish(
                &slot.entry,
                self.router.as_ref(),
                &config.holder,
                now,
            ));
            queue.reschedule(index, at, now, config.timezone);
        }
        self.publish(publishes, held).await;
    }

    /// Sends recorded ticks, trying again while this process still leads: they are
    /// recorded, so nobody else will send them.
    async fn publish(&self, publishes: Vec<Publish>, held: Held) {
        let count = publishes.len() as u64;
        loop {
            match self.engines.broker.publish_batch(publishes.clone()).await {
                Ok(()) => return tracing::debug!("beat: sent {count} ticks"),
                Err(e) if held.trusted(self.clock.now()) => {
                    tracing::warn!("beat: sending {count} ticks failed, trying again: {e}");
                    let retry = after(self.clock.now(), Duration::from_millis(500));
                    self.clock.sleep_until(retry).await;
                }
                Err(e) => {
                    let names: Vec<&str> = publishes
                        .iter()
                        .filter_map(|p| p.message.task_name())
                        .collect();
                    return tracing::error!(
                        "beat: {count} ticks lost ({names:?}): the broker refused them until the lease lapsed: {e}"
                    );
                }
            }
        }
    }

    async fn resign(&mut self) {
        let Some(held) = self.held else { return };
        let config = &self.config;
        if let Err(e) = self
            .store()
            .release_lease(&config.schedule_name, &config.holder, held.token)
            .await
        {
            tracing::warn!("beat: could not give the lease up (it lapses by itself): {e}");
        }
        self.step_down("stopped");
    }
}
