//! The queues of a running [`AmqpConsumer`](super::AmqpConsumer) (Celery's `add_consumer` /
//! `cancel_consumer`). A queue keeps its index for the consumer's life, so deliveries in hand
//! name it whatever happens later; cancelling marks it inactive and, in push mode, sends
//! `basic.cancel` for its consumer tag. Each (re)activation is a new *epoch*: the pump of a
//! cancelled epoch ends quietly instead of taking the channel down with it.

use async_trait::async_trait;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use tracing::debug;

use celeriac_core::broker::QueueSet;
use celeriac_core::{BrokerError, ErrorKind};

use super::{AmqpConsumer, CLink, Core};
use crate::session::{is_refusal, unreachable};
use crate::topology;

struct Entry {
    name: String,
    active: bool,
    epoch: u64,
}

/// Every queue the consumer ever had, by index; the active ones are consumed.
pub(super) struct QueueList {
    entries: Vec<Entry>,
}

impl QueueList {
    pub(super) fn new(names: &[String]) -> QueueList {
        let mut list = QueueList {
            entries: Vec::new(),
        };
        for name in names {
            list.activate(name);
        }
        list
    }

    pub(super) fn name(&self, index: usize) -> &str {
        &self.entries[index].name
    }

    pub(super) fn index_of(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }

    /// The active queues: (index, name, epoch).
    pub(super) fn active(&self) -> Vec<(usize, String, u64)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.active)
            .map(|(i, e)| (i, e.name.clone(), e.epoch))
            .collect()
    }

    /// Whether queue `index` is still consumed in `epoch`.
    pub(super) fn is_current(&self, index: usize, epoch: u64) -> bool {
        self.entries
            .get(index)
            .is_some_and(|e| e.active && e.epoch == epoch)
    }

    /// Marks `name` active; its index and epoch, `None` when it already was.
    fn activate(&mut self, name: &str) -> Option<(usize, u64)> {
        match self.index_of(name) {
            Some(i) if self.entries[i].active => None,
            Some(i) => {
                let e = &mut self.entries[i];
                e.active = true;
                e.epoch += 1;
                Some((i, e.epoch))
            }
            None => {
                self.entries.push(Entry {
                    name: name.to_string(),
                    active: true,
                    epoch: 0,
                });
                Some((self.entries.len() - 1, 0))
            }
        }
    }

    /// Marks `name` inactive; its index and the epoch that ends, `None` when not active.
    fn deactivate(&mut self, name: &str) -> Option<(usize, u64)> {
        let i = self.index_of(name)?;
        let e = &mut self.entries[i];
        if !e.active {
            return None;
        }
        e.active = false;
        Some((i, e.epoch))
    }
}

/// The consumer tag of queue `index` in channel generation `gen` and queue `epoch`.
pub(super) fn consumer_tag(name: &str, gen: u64, index: usize, epoch: u64) -> String {
    format!("celeriac-{name}-{gen}-{index}-{epoch}")
}

impl Core {
    pub(super) fn queue_list(&self) -> std::sync::MutexGuard<'_, QueueList> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Declares `queue` as Celery does, with the delay ladder bound to it.
    pub(super) async fn declare_on(
        &self,
        ch: &lapin::Channel,
        queue: &str,
    ) -> Result<(), BrokerError> {
        let url = &self.session.url;
        let declared = async {
            topology::declare_task_queue(ch, url, queue).await?;
            topology::bind_delayed_delivery(ch, queue).await
        };
        if let Err(e) = declared.await {
            return Err(if is_refusal(&e) {
                BrokerError::new(
                    ErrorKind::InvalidConfig,
                    format!("queue {queue:?} exists with other arguments than celeriac's: {e}"),
                )
            } else {
                unreachable(url, e)
            });
        }
        self.session.remember(queue);
        Ok(())
    }

    /// `basic.consume` of queue `index` on the link of generation `gen`, with its pump.
    pub(super) async fn consume(
        self: &std::sync::Arc<Self>,
        link: &CLink,
        gen: u64,
        index: usize,
        epoch: u64,
    ) -> Result<(), BrokerError> {
        let queue = self.queue_list().name(index).to_string();
        let consumer = link
            .ch
            .basic_consume(
                queue.as_str().into(),
                consumer_tag(&self.name, gen, index, epoch).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unreachable(&self.session.url, e))?;
        let core = self.clone();
        let ch = link.ch.clone();
        tokio::spawn(async move { core.pump(consumer, ch, gen, index, epoch).await });
        Ok(())
    }

    /// The live link and its generation, if connected.
    fn live_link(&self) -> Option<(CLink, u64)> {
        let st = self.lock();
        st.link.clone().map(|l| (l, st.gen))
    }
}

#[async_trait]
impl QueueSet for AmqpConsumer {
    fn queues(&self) -> Vec<String> {
        let list = self.core.queue_list();
        list.active().into_iter().map(|(_, name, _)| name).collect()
    }

    async fn add_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        let core = &self.core;
        let Some((index, epoch)) = core.queue_list().activate(queue) else {
            return Ok(false);
        };
        // Without a live link, the next one declares and consumes every active queue.
        let Some((link, gen)) = core.live_link() else {
            return Ok(true);
        };
        let started = async {
            core.declare_on(&link.ch, queue).await?;
            if core.prefetch > 0 {
                core.consume(&link, gen, index, epoch).await?;
            }
            Ok(())
        };
        if let Err(e) = started.await {
            core.queue_list().deactivate(queue);
            return Err(e);
        }
        Ok(true)
    }

    async fn cancel_queue(&self, queue: &str) -> Result<bool, BrokerError> {
        let core = &self.core;
        let Some((index, epoch)) = core.queue_list().deactivate(queue) else {
            return Ok(false);
        };
        if core.prefetch > 0 {
            if let Some((link, gen)) = core.live_link() {
                let tag = consumer_tag(&core.name, gen, index, epoch);
                if let Err(e) = link
                    .ch
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await
                {
                    // The channel is gone: the next link consumes the active queues only.
                    debug!("basic.cancel of {queue} failed: {e}");
                }
            }
        }
        Ok(true)
    }
}
