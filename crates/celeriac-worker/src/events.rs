//! The worker's events (protocol §7): `worker-online`, `worker-heartbeat` every
//! [`HEARTBEAT`], `worker-offline`, and, with `-E` (or `enable_events` from remote control),
//! the task events. Emitting never waits on the broker: events go to a channel that one task
//! drains, publishing whatever accumulated in one round trip.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use celeriac_core::events::{event, WireEvent};
use celeriac_core::json::ObjectWriter;
use celeriac_core::Broker;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::worker::Shared;

/// Celery's default heartbeat interval (`freq`).
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);
/// Events published in one round trip at most.
const BATCH: usize = 512;

pub(crate) struct EventSender {
    tx: mpsc::UnboundedSender<WireEvent>,
    task_events: AtomicBool,
}

impl EventSender {
    pub(crate) fn new(task_events: bool) -> (EventSender, mpsc::UnboundedReceiver<WireEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = EventSender {
            tx,
            task_events: AtomicBool::new(task_events),
        };
        (sender, rx)
    }

    pub(crate) fn task_events_on(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Turns task events on or off; returns whether they were on.
    pub(crate) fn set_task_events(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed)
    }
}

impl Shared {
    /// Sends a task event when task events are on; its fields are written only then (the
    /// task path pays nothing for events that are off), straight to JSON.
    pub(crate) fn task_event(&self, kind: &str, fields: impl FnOnce(&mut ObjectWriter)) {
        if self.events.task_events.load(Ordering::Relaxed) && self.broker.events().is_some() {
            let clock = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
            let built = WireEvent::build(kind, &self.config.hostname, clock, fields);
            let _ = self.events.tx.send(built);
        }
    }

    fn send_event(&self, kind: &str, fields: Value) {
        let clock = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let fields = match fields {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let built = event(kind, &self.config.hostname, clock, fields);
        let _ = self.events.tx.send(WireEvent::from_value(&built));
    }

    /// `worker-online`, `worker-heartbeat` or `worker-offline` with Celery's fields.
    pub(crate) fn worker_event(&self, kind: &str, freq: f64) {
        if self.broker.events().is_none() {
            return;
        }
        let processed: u64 = self.accepted_by_name().values().sum();
        self.send_event(
            kind,
            json!({
                "freq": freq,
                "active": self.pool.stats().busy,
                "processed": processed,
                "loadavg": loadavg(),
                "sw_ident": "celeriac",
                "sw_ver": env!("CARGO_PKG_VERSION"),
                "sw_sys": sw_sys(),
            }),
        );
    }
}

/// The 1, 5 and 15 minute load averages, rounded up to two decimals as Celery does.
fn loadavg() -> Vec<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .map(|v| (v.parse::<f64>().unwrap_or(0.0) * 100.0).ceil() / 100.0)
        .collect()
}

/// Python's `platform.system()` for this build.
fn sw_sys() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        other => other,
    }
}

/// Publishes what the channel holds until every sender is gone.
pub(crate) async fn publish(
    broker: Arc<dyn Broker>,
    hostname: String,
    mut rx: mpsc::UnboundedReceiver<WireEvent>,
) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(64);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let Some(events) = broker.events() else {
            return;
        };
        match events.send_events(&hostname, &batch).await {
            Ok(()) if std::mem::take(&mut failing) => info!("events: sending again"),
            Ok(()) => {}
            // Events are best effort, as in Celery: dropped while the broker is away.
            Err(e) if !std::mem::replace(&mut failing, true) => {
                warn!(
                    "events: could not send {} events (dropping them): {e}",
                    batch.len()
                )
            }
            Err(_) => {}
        }
        batch.clear();
    }
}

/// `worker-heartbeat` every [`HEARTBEAT`].
pub(crate) async fn heartbeats(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        shared.worker_event("worker-heartbeat", HEARTBEAT.as_secs_f64());
    }
}
