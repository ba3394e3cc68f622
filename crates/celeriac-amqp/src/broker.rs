//! [`AmqpBroker`]: the [`Broker`] seam over a [`Session`] (one publisher connection shared by
//! every publish); consumers own their connection (see `consumer.rs`), revocations follow a
//! stream (`revocations.rs`), dead letters wait in a queue of their own (`dead_letters.rs`),
//! remote control and events use Celery's exchanges (`mailbox.rs`, `events.rs`).

use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use lapin::options::{QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;

use celeriac_core::broker::{
    Broker, Consumer, ConsumerSpec, DeadLetters, Publish, Purge, QueueLength, QueueStats,
    Revocation, Revocations, Signal, StatsCoverage,
};
use celeriac_core::control::{revoke_broadcast, Mailbox, BROADCAST_TTL_SECONDS};
use celeriac_core::events::Events;
use celeriac_core::BrokerError;

use crate::consumer::{AmqpConsumer, Core};
use crate::mailbox::publish_request;
use crate::revocations::RevocationLog;
use crate::rpc::RpcBackend;
use crate::session::{is_refusal, unreachable, Declare, Session};
use crate::url::AmqpUrl;

/// RabbitMQ through AMQP 0-9-1, laid out exactly as Celery declares it.
pub struct AmqpBroker {
    pub(crate) session: Arc<Session>,
    /// Live consumers, for the unacked counts they hold.
    consumers: Mutex<Vec<Weak<Core>>>,
    revocations: RevocationLog,
}

impl AmqpBroker {
    /// Opens `amqp://user:pass@host:port/vhost` (or `amqps://`) and connects. Nothing is
    /// declared yet: each queue, the delay ladder and the dead-letter queue are declared when
    /// first used (see `session.rs`).
    pub async fn open(url: &str) -> Result<Arc<AmqpBroker>, BrokerError> {
        let session = Arc::new(Session::new(AmqpUrl::parse(url)?));
        session.link().await?;
        Ok(Arc::new(AmqpBroker {
            session,
            consumers: Mutex::new(Vec::new()),
            revocations: RevocationLog::new(),
        }))
    }

    /// Celery's `rpc://` result backend on this broker's connection: results of the tasks
    /// this process sends arrive on `reply_queue` (the `reply_to` its messages carry), which
    /// expires after `result_expires` unused.
    pub fn rpc_backend(
        &self,
        reply_queue: &str,
        result_expires: Option<std::time::Duration>,
    ) -> Arc<RpcBackend> {
        Arc::new(RpcBackend::new(
            self.session.clone(),
            reply_queue.to_string(),
            result_expires,
        ))
    }

    /// The parsed URL this broker connects to.
    pub fn url(&self) -> &AmqpUrl {
        &self.session.url
    }

    fn register(&self, core: &Arc<Core>) {
        let mut c = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        c.retain(|w| w.strong_count() > 0);
        c.push(Arc::downgrade(core));
    }

    fn held_unacked(&self, queue: &str) -> u64 {
        let c = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        c.iter()
            .filter_map(Weak::upgrade)
            .map(|core| core.held_in(queue))
            .sum()
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn display_url(&self) -> String {
        self.session.url.display.clone()
    }

    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.session
            .ensure(&Declare::TaskQueue(queue.to_string()))
            .await
    }

    async fn publish(&self, message: Publish) -> Result<(), BrokerError> {
        let out = self.session.outgoing(message);
        self.session.send(std::slice::from_ref(&out)).await
    }

    async fn publish_batch(&self, messages: Vec<Publish>) -> Result<(), BrokerError> {
        let out: Vec<_> = messages
            .into_iter()
            .map(|m| self.session.outgoing(m))
            .collect();
        self.session.send(&out).await
    }

    async fn consumer(&self, spec: ConsumerSpec) -> Result<Box<dyn Consumer>, BrokerError> {
        // A worker starts: what Celery's worker declares at start comes with it, so Python
        // producers' ETA tasks and broadcasts are routed from now on.
        self.session.ensure(&Declare::WorkerStart).await?;
        let c = AmqpConsumer::start(self.session.clone(), spec).await?;
        self.register(c.core());
        Ok(Box::new(c))
    }

    fn delays_delivery(&self) -> bool {
        true
    }

    fn purge(&self) -> Option<&dyn Purge> {
        Some(self)
    }
    fn queue_stats(&self) -> Option<&dyn QueueStats> {
        Some(self)
    }
    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }
    fn revocations(&self) -> Option<&dyn Revocations> {
        Some(self)
    }
    fn mailbox(&self) -> Option<&dyn Mailbox> {
        Some(self)
    }
    fn events(&self) -> Option<&dyn Events> {
        Some(self)
    }

    async fn close(&self) -> Result<(), BrokerError> {
        self.revocations.stop_following().await;
        self.session.close().await
    }
}

/// Durable revokes through the `celeriac.revocations` stream (see `revocations.rs`), each
/// also cast to every mailbox as Celery's `revoke` (`mailbox.rs`) for Python workers.
#[async_trait]
impl Revocations for AmqpBroker {
    async fn revoke(
        &self,
        task_ids: &[String],
        terminate: Option<Signal>,
    ) -> Result<(), BrokerError> {
        if task_ids.is_empty() {
            return Ok(());
        }
        let mark = uuid::Uuid::new_v4().to_string();
        let record = [RevocationLog::record(task_ids, terminate, &mark)];
        let cast = serde_json::Value::Object(revoke_broadcast(task_ids, terminate));
        // Both at once: the record (read back by the follower) and the cast to running
        // workers are independent, so neither waits for the other's confirm.
        let (recorded, cast) = tokio::join!(
            self.revocations
                .publish_and_wait(&self.session, &record, &mark),
            publish_request(&self.session, &cast, BROADCAST_TTL_SECONDS),
        );
        recorded.and(cast)
    }

    async fn is_revoked(&self, task_id: &str) -> Result<bool, BrokerError> {
        let log = &self.revocations;
        // A revoke is never undone, so an id already seen is an answer; otherwise `sync`
        // (which starts the follower if needed) makes the view current first.
        if log.contains(task_id) {
            return Ok(true);
        }
        log.sync(&self.session).await?;
        Ok(log.contains(task_id))
    }

    async fn revocations_since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), BrokerError> {
        let log = &self.revocations;
        log.ensure_following(&self.session.url).await?;
        if !log.caught_up() {
            log.sync(&self.session).await?;
        }
        Ok(log.since(cursor))
    }
}

#[async_trait]
impl Purge for AmqpBroker {
    fn purges_scheduled(&self) -> bool {
        // ETA messages wait in the shared delay-ladder queues, not per task queue.
        false
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let (link, ch) = self.session.spare_channel().await?;
        let n = match ch
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
        {
            Ok(n) => u64::from(n),
            Err(e) if is_refusal(&e) => 0, // no such queue: nothing to purge
            Err(e) => return Err(unreachable(&self.session.url, e)),
        };
        self.session.give_back(&link, ch).await;
        Ok(n)
    }
}

#[async_trait]
impl QueueStats for AmqpBroker {
    fn coverage(&self) -> StatsCoverage {
        // AMQP reports a queue's ready count only: ETA messages are in the shared delay
        // ladder, other connections' unacked messages and the list of queues need the
        // management API.
        StatsCoverage {
            scheduled: false,
            unacked_all_consumers: false,
            lists_all_queues: false,
        }
    }

    async fn queue_lengths(&self, queues: &[String]) -> Result<Vec<QueueLength>, BrokerError> {
        let names: Vec<String> = if queues.is_empty() {
            self.session.known_queues()
        } else {
            queues.to_vec()
        };
        let mut out = Vec::with_capacity(names.len());
        let (mut link, mut ch) = self.session.spare_channel().await?;
        for q in names {
            let ready = match ch
                .queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
            {
                Ok(s) => u64::from(s.message_count()),
                Err(e) if is_refusal(&e) => {
                    // 404: the channel is closed; take another for the next name.
                    (link, ch) = self.session.spare_channel().await?;
                    0
                }
                Err(e) => return Err(unreachable(&self.session.url, e)),
            };
            let unacked = self.held_unacked(&q);
            out.push(QueueLength {
                queue: q,
                ready,
                scheduled: 0,
                unacked,
            });
        }
        self.session.give_back(&link, ch).await;
        Ok(out)
    }
}
