//! Dead letters on RabbitMQ: the original message plus bookkeeping headers, in the durable
//! queue `celeriac.dead_letters` (declared with the first dead letter).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::Channel;
use serde_json::Value;
use tracing::debug;

use celeriac_core::broker::{DeadLetter, DeadLetters, RawMessage};
use celeriac_core::BrokerError;

use crate::codec::{properties_for, raw_message};
use crate::session::{
    unreachable, Declare, Link, OutProps, Outgoing, DL_AT, DL_ID, DL_QUEUE, DL_REASON,
};
use crate::topology::DEAD_LETTERS;
use crate::AmqpBroker;

fn split_dead_letter(mut m: RawMessage) -> Option<DeadLetter> {
    let take = |m: &mut RawMessage, k: &str| -> Option<String> {
        m.headers
            .shift_remove(k)
            .and_then(|v| v.as_str().map(str::to_string))
    };
    let id = take(&mut m, DL_ID)?;
    let reason = take(&mut m, DL_REASON).unwrap_or_default();
    let queue = take(&mut m, DL_QUEUE).unwrap_or_default();
    let at = take(&mut m, DL_AT)
        .and_then(|s| crate::codec::parse_time(&s))
        .unwrap_or_else(Utc::now);
    Some(DeadLetter {
        id,
        queue,
        reason,
        at,
        message: m,
    })
}

impl AmqpBroker {
    /// Every dead letter, taken with basic.get on a private channel; closing that channel
    /// puts back whatever was not acked.
    async fn take_dead_letters(
        &self,
        limit: usize,
    ) -> Result<(Arc<Link>, Channel, Vec<(u64, DeadLetter)>), BrokerError> {
        // Listing before any dead letter was written must not fail on a missing queue.
        self.session.ensure(&Declare::DeadLetters).await?;
        let (link, ch) = self.session.temp_channel().await?;
        let mut got = Vec::new();
        while got.len() < limit {
            match ch
                .basic_get(DEAD_LETTERS.into(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(m)) => {
                    let d = &m.delivery;
                    let raw = raw_message(&d.properties, d.data.clone());
                    if let Some(dl) = split_dead_letter(raw) {
                        got.push((d.delivery_tag, dl));
                    } else {
                        debug!("message without dead-letter headers in {DEAD_LETTERS}");
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(unreachable(&self.session.url, e)),
            }
        }
        Ok((link, ch, got))
    }
}

#[async_trait]
impl DeadLetters for AmqpBroker {
    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let (_link, ch, got) = self.take_dead_letters(limit).await?;
        let _ = ch.close(200, "listed".into()).await;
        Ok(got.into_iter().map(|(_, d)| d).collect())
    }

    async fn requeue_dead_letters(&self, ids: &[String]) -> Result<u64, BrokerError> {
        let (_link, ch, got) = self.take_dead_letters(usize::MAX).await?;
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut n = 0;
        for (tag, d) in got {
            if !ids.is_empty() && !wanted.contains(d.id.as_str()) {
                continue;
            }
            let priority = d
                .message
                .properties
                .get("priority")
                .and_then(Value::as_u64)
                .map(|p| p as u8);
            let out = Outgoing {
                exchange: String::new(),
                routing_key: d.queue.clone(),
                declare: Declare::TaskQueue(d.queue.clone()),
                props: OutProps::Built(properties_for(&d.message, priority, true)),
                body: d.message.body.clone(),
            };
            self.session.send(std::slice::from_ref(&out)).await?;
            ch.basic_ack(tag, BasicAckOptions::default())
                .await
                .map_err(|e| unreachable(&self.session.url, e))?;
            n += 1;
        }
        let _ = ch.close(200, "requeued".into()).await;
        Ok(n)
    }
}
