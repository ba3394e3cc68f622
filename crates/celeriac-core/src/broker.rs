//! The broker seam: publish messages to named queues, consume them with leases, acknowledge.
//!
//! The required surface is small ([`Broker`] + [`Consumer`]); what only some engines can do is
//! a capability trait reached through an accessor that returns `None` when absent.
//!
//! Priorities: **9 is the most urgent, 0 the least**, on every broker celeriac ships. The
//! embedded store and RabbitMQ use that order natively; on Redis, whose kombu layout serves
//! 0 first, the broker maps an explicit priority `p` to `9 - p` on the wire and back on
//! delivery (so [`RawMessage`] properties always carry celeriac's order). Within one
//! priority, first in, first out. Redis keeps only four levels (kombu's steps 0, 3, 6, 9), so
//! nearby priorities may share a level there; `None` ranks where the engine's wire default
//! ranks (least urgent on the embedded store, with Celery's defaults on Redis), so do not mix
//! `None` and explicit priorities where the order between them matters.
//!
//! A delivered message carries every header and property that was published; an engine may
//! add transport properties but never changes headers.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::BrokerError;

/// A message as a broker carries it: headers, properties and the body bytes, undecoded.
#[derive(Debug, Clone, PartialEq)]
pub struct RawMessage {
    pub headers: Map<String, Value>,
    pub properties: Map<String, Value>,
    pub content_type: String,
    pub content_encoding: String,
    pub body: Vec<u8>,
}

impl RawMessage {
    /// The task id, when the headers carry one (protocol 2).
    pub fn task_id(&self) -> Option<&str> {
        self.headers.get("id").and_then(Value::as_str)
    }

    /// The task name, when the headers carry one (protocol 2).
    pub fn task_name(&self) -> Option<&str> {
        self.headers.get("task").and_then(Value::as_str)
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Queue name (Celery routes ordinary tasks to the default exchange with routing key = queue).
    pub queue: String,
    /// 0..=9, 9 most urgent; `None`: the caller gave none, and the broker uses the default
    /// of its wire format (0 on the embedded store; Celery's default list on Redis, which is
    /// also where Python producers put tasks without a priority).
    pub priority: Option<u8>,
    /// Not delivered before this time (ETA / countdown). Brokers with delayed delivery keep the
    /// message themselves; others deliver it at once and the worker holds it.
    pub not_before: Option<DateTime<Utc>>,
    pub message: RawMessage,
}

/// Opaque handle to one delivered message, used to ack or requeue it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryTag(pub String);

#[derive(Debug, Clone)]
pub struct Delivery {
    pub tag: DeliveryTag,
    pub queue: String,
    /// True when this message was delivered before and not acknowledged.
    pub redelivered: bool,
    pub message: RawMessage,
}

/// What to consume.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub queues: Vec<String>,
    /// The worker's node name, recorded with leases for people reading queue state.
    pub name: String,
    /// The most messages the worker holds at once (its prefetch window); push-based engines
    /// set their server-side limit from it (AMQP `basic.qos`). 0: no limit. Pull-based
    /// engines need not use it: `fetch(max)` already bounds what they hand out.
    pub prefetch: usize,
}

/// The required broker surface.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The URL with any password hidden, for banners and logs.
    fn display_url(&self) -> String;

    /// Makes sure `queue` exists (a no-op for engines where queues are implicit).
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError>;

    /// Returns once the broker has the message durably (on RabbitMQ with
    /// `confirm_publish=false`: once it is written to the connection).
    async fn publish(&self, message: Publish) -> Result<(), BrokerError>;

    /// Publishes many messages at once; all or nothing where the engine allows.
    async fn publish_batch(&self, messages: Vec<Publish>) -> Result<(), BrokerError> {
        for m in messages {
            self.publish(m).await?;
        }
        Ok(())
    }

    async fn consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn Consumer>, BrokerError>;

    /// True when messages with `not_before` stay in the broker until due.
    fn delays_delivery(&self) -> bool {
        false
    }

    fn purge(&self) -> Option<&dyn Purge> {
        None
    }
    fn queue_stats(&self) -> Option<&dyn QueueStats> {
        None
    }
    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        None
    }
    fn revocations(&self) -> Option<&dyn Revocations> {
        None
    }
    /// Celery's remote control and inspection (`celery inspect`, `control`, Flower).
    fn mailbox(&self) -> Option<&dyn crate::control::Mailbox> {
        None
    }
    /// Celery's events (`celery events`, Flower).
    fn events(&self) -> Option<&dyn crate::events::Events> {
        None
    }
    /// Beat's leader lease and last runs, on engines with a store of their own.
    fn beat_store(&self) -> Option<&dyn crate::beat::BeatStore> {
        None
    }

    /// Finishes pending publishes and closes the connections this handle opened for
    /// publishing; later publishes fail with [`ErrorKind::Closed`](crate::ErrorKind).
    /// Consumers already started keep their own connections until closed or dropped.
    async fn close(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// A consumer holds leases on the messages it fetched until it acks or requeues them. If its
/// process dies, the leases lapse and the messages are delivered again; while it lives,
/// [`Consumer::keepalive`] keeps them, however long a task runs.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Up to `max` due messages, waiting up to `wait` for the first one. After
    /// [`Consumer::close`] it fails with [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    async fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BrokerError>;

    /// Done with these messages: remove them.
    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError>;

    /// Put these messages back, deliverable at once (shutdown, worker lost, reject+requeue).
    async fn requeue(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError>;

    /// Move a message that cannot be run to the dead-letter queue with the reason.
    /// Engines without one must keep the message somewhere a person can find it.
    async fn dead_letter(&self, tag: &DeliveryTag, reason: &str) -> Result<(), BrokerError>;

    /// Renews the leases of every message this consumer holds.
    async fn keepalive(&self) -> Result<(), BrokerError>;

    /// How often [`Consumer::keepalive`] must run for leases not to lapse.
    fn keepalive_interval(&self) -> Duration;

    /// Requeues everything still held and stops. Idempotent.
    async fn close(&self) -> Result<(), BrokerError>;

    /// Changing the queues while consuming (Celery's `add_consumer` / `cancel_consumer`).
    fn queue_set(&self) -> Option<&dyn QueueSet> {
        None
    }
}

/// The queues of a running [`Consumer`]. Messages already fetched stay held whatever
/// happens to their queue: cancelling a queue only stops new fetches from it.
#[async_trait]
pub trait QueueSet: Send + Sync {
    /// The queues consumed now, in fetch order.
    fn queues(&self) -> Vec<String>;
    /// Starts fetching from `queue` too (declared by the caller); `false` when it already was.
    async fn add_queue(&self, queue: &str) -> Result<bool, BrokerError>;
    /// Stops fetching from `queue`; `false` when it was not consumed. A consumer left with
    /// no queue fetches nothing (and waits) until one is added.
    async fn cancel_queue(&self, queue: &str) -> Result<bool, BrokerError>;
}

#[async_trait]
pub trait Purge: Send + Sync {
    /// Removes every waiting message of `queue` (ready and, when [`Purge::purges_scheduled`],
    /// scheduled; not those a worker holds); returns the count.
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;

    /// False when scheduled (ETA) messages sit where a purge of one queue cannot reach them
    /// (RabbitMQ's shared delay exchanges).
    fn purges_scheduled(&self) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLength {
    pub queue: String,
    /// Deliverable now.
    pub ready: u64,
    /// Waiting for their ETA.
    pub scheduled: u64,
    /// Delivered to a worker and not yet acknowledged.
    pub unacked: u64,
}

#[async_trait]
pub trait QueueStats: Send + Sync {
    /// Lengths of the named queues, or of every known queue when `queues` is empty.
    async fn queue_lengths(&self, queues: &[String]) -> Result<Vec<QueueLength>, BrokerError>;

    /// What the counts can see; engines that see less say so here (and people reading the
    /// numbers, like the CLI, show it).
    fn coverage(&self) -> StatsCoverage {
        StatsCoverage::default()
    }
}

/// Which parts of [`QueueLength`] an engine can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsCoverage {
    /// `scheduled` counts this queue's waiting ETA messages.
    pub scheduled: bool,
    /// `unacked` counts every consumer's messages, not only this process's.
    pub unacked_all_consumers: bool,
    /// `queue_lengths(&[])` lists every queue on the server, not only those this process used.
    pub lists_all_queues: bool,
}

impl Default for StatsCoverage {
    fn default() -> Self {
        StatsCoverage {
            scheduled: true,
            unacked_all_consumers: true,
            lists_all_queues: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub queue: String,
    pub reason: String,
    pub at: DateTime<Utc>,
    pub message: RawMessage,
}

#[async_trait]
pub trait DeadLetters: Send + Sync {
    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError>;
    /// Puts the given dead letters (all when `ids` is empty) back on their queues; returns the count.
    async fn requeue_dead_letters(&self, ids: &[String]) -> Result<u64, BrokerError>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct Revocation {
    pub task_id: String,
    /// Stop the task if it is running.
    pub terminate: bool,
    /// The signal a terminate sends to a process-pool child (Celery's `signal=`).
    pub signal: Signal,
    pub at: DateTime<Utc>,
}

/// A POSIX signal by number, named as Celery names them (`SIGTERM`, `SIGKILL`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub i32);

impl Signal {
    pub const TERM: Signal = Signal(15);
    pub const KILL: Signal = Signal(9);

    const NAMES: &'static [(&'static str, i32)] = &[
        ("SIGHUP", 1),
        ("SIGINT", 2),
        ("SIGQUIT", 3),
        ("SIGABRT", 6),
        ("SIGKILL", 9),
        ("SIGUSR1", 10),
        ("SIGUSR2", 12),
        ("SIGTERM", 15),
    ];

    /// `SIGKILL`, `KILL`, `kill` or `9`, as Celery's `revoke(signal=...)` accepts.
    pub fn parse(name: &str) -> Option<Signal> {
        if let Ok(n) = name.parse::<i32>() {
            return (1..=64).contains(&n).then_some(Signal(n));
        }
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == full)
            .map(|(_, number)| Signal(*number))
    }

    /// The name Celery's broadcasts carry (`SIGTERM`), or the number for others.
    pub fn name(self) -> String {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == self.0)
            .map_or_else(|| self.0.to_string(), |(name, _)| (*name).to_string())
    }
}

/// Durable revokes: a revoked id never runs, on any worker, even after restarts.
#[async_trait]
pub trait Revocations: Send + Sync {
    /// Records the revoke of `task_ids`; with `terminate`, a running one is stopped with
    /// that signal.
    async fn revoke(
        &self,
        task_ids: &[String],
        terminate: Option<Signal>,
    ) -> Result<(), BrokerError>;
    async fn is_revoked(&self, task_id: &str) -> Result<bool, BrokerError>;
    /// Revocations recorded after `cursor` (0 = all), and the cursor to pass next time; the
    /// cursor never goes backwards and moves forward whenever something is returned.
    async fn revocations_since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), BrokerError>;
}
