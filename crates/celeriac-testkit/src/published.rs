//! Reading back what a client published, for tests of the sending side.

use std::time::{Duration, Instant};

use celeriac_core::broker::{Broker, ConsumerSpec};
use celeriac_core::message::TaskMessage;

/// Takes exactly `count` messages from `queues` within `wait`, decoded, as (queue, message)
/// in arrival order; panics when fewer arrive or when one more is waiting (a duplicate or a
/// stray message). The messages are acked: they are gone afterwards.
pub async fn take_published(
    broker: &dyn Broker,
    queues: &[&str],
    count: usize,
    wait: Duration,
) -> Vec<(String, TaskMessage)> {
    let consumer = broker
        .consumer(ConsumerSpec {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            name: "reader@testkit".into(),
            prefetch: 0,
        })
        .await
        .expect("a consumer on the published queues");
    let deadline = Instant::now() + wait;
    let mut seen = Vec::new();
    while seen.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} messages arrived: {seen:#?}",
            seen.len()
        );
        let got = consumer
            .fetch(count - seen.len(), wait)
            .await
            .expect("fetch");
        let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
        for d in got {
            let message = TaskMessage::from_raw(&d.message).expect("a task message");
            seen.push((d.queue, message));
        }
        consumer.ack(&tags).await.expect("ack");
    }
    let extra = consumer.fetch(1, Duration::ZERO).await.expect("fetch");
    assert!(extra.is_empty(), "more messages than sent: {extra:#?}");
    consumer.close().await.expect("close");
    seen
}
