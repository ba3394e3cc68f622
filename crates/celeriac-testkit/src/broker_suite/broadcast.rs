//! The broadcast capabilities: a consumer's queue set (`add_consumer` / `cancel_consumer`),
//! the remote-control mailbox and the event exchange. Each case runs on two instances of the
//! store where it matters, as two processes would use them.

use std::time::Duration;

use celeriac_core::control::{ControlInbox, ControlRequest, Mailbox, ReplyAddress};
use celeriac_core::events::{event, EventStream, WireEvent};
use serde_json::{json, Map, Value};

use super::{assert_nothing, consumer, fetch_n, ids, open_default, publish, tags, BrokerFactory};
use crate::{unique, CaseResult, Skip};

/// How long a case waits for something that should arrive at once.
const ARRIVES: Duration = Duration::from_secs(10);

/// A consumer fetches from a queue added while it runs, stops fetching from a cancelled
/// one, and waits (without an error) while it has none.
pub(super) async fn queue_set_adds_and_cancels(f: &dyn BrokerFactory) -> CaseResult {
    let (_i, b) = open_default(f).await?;
    let (qa, qb) = (unique("a"), unique("b"));
    let c = consumer(&b, &[&qa]).await;
    let Some(set) = c.queue_set() else {
        return Err(Skip::new(
            "no QueueSet capability (Consumer::queue_set() is None)",
        ));
    };
    let b1 = unique("b1");
    b.publish(publish(&qb, &b1, None)).await.expect("publish");
    assert_nothing(&*c, Duration::from_millis(300), "qb is not consumed yet").await;
    assert!(set.add_queue(&qb).await.expect("add_queue"), "qb is new");
    assert!(!set.add_queue(&qb).await.expect("add_queue"), "qb twice");
    assert_eq!(set.queues(), [qa.clone(), qb.clone()]);
    let got = fetch_n(&*c, 1, 1, ARRIVES).await;
    assert_eq!(ids(&got), [b1], "an added queue is fetched from");
    c.ack(&tags(&got)).await.expect("ack");

    assert!(set.cancel_queue(&qa).await.expect("cancel_queue"));
    assert!(
        !set.cancel_queue(&qa).await.expect("cancel_queue"),
        "qa twice"
    );
    let a1 = unique("a1");
    b.publish(publish(&qa, &a1, None)).await.expect("publish");
    assert_nothing(&*c, Duration::from_millis(300), "qa is cancelled").await;
    assert!(set.cancel_queue(&qb).await.expect("cancel_queue"));
    assert!(set.queues().is_empty());
    assert_nothing(&*c, Duration::from_millis(200), "no queue left").await;

    assert!(set.add_queue(&qa).await.expect("add_queue"));
    let got = fetch_n(&*c, 1, 1, ARRIVES).await;
    assert_eq!(ids(&got), [a1], "the message waited in its queue");
    c.ack(&tags(&got)).await.expect("ack");
    Ok(())
}

fn ping(ticket: &str, oid: &str, destination: Option<Vec<String>>) -> ControlRequest {
    ControlRequest {
        method: "ping".into(),
        arguments: Map::new(),
        destination,
        pattern: None,
        matcher: None,
        ticket: Some(ticket.into()),
        reply_to: Some(ReplyAddress {
            exchange: "reply.celery.pidbox".into(),
            routing_key: oid.into(),
        }),
        clock: 7,
    }
}

/// Answers, as `hostname` would, the request with `ticket` (a store shared with other
/// cases may carry their requests too).
async fn answer(
    mut inbox: Box<dyn ControlInbox>,
    mailbox: &dyn Mailbox,
    hostname: &str,
    ticket: &str,
) {
    let request = tokio::time::timeout(ARRIVES, async {
        loop {
            let request = inbox.next().await.expect("the inbox stays open");
            if request.ticket.as_deref() == Some(ticket) {
                return request;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{hostname} got no request within {ARRIVES:?}"));
    assert_eq!(request.method, "ping");
    assert!(
        request.clock >= 7,
        "the sender's clock arrives: {request:?}"
    );
    let to = request.reply_to.expect("reply_to");
    let body = json!({ hostname: {"ok": "pong"} });
    mailbox.reply(&to, ticket, 1, &body).await.expect("reply");
}

/// A broadcast reaches every listener (on this instance and another), each reply comes
/// back to the caller with its ticket, and `limit` ends the wait early. Destinations are
/// carried, not filtered: a worker decides with `ControlRequest::is_for`.
pub(super) async fn mailbox_reaches_every_listener(f: &dyn BrokerFactory) -> CaseResult {
    let (instance, b) = open_default(f).await?;
    let Some(mailbox) = b.mailbox() else {
        return Err(Skip::new(
            "no Mailbox capability (Broker::mailbox() is None)",
        ));
    };
    let other = instance.open_again().await;
    let other_mailbox = other.mailbox().expect("Mailbox on every instance");
    let (n1, n2) = (unique("n1@conformance"), unique("n2@conformance"));
    let inbox1 = mailbox.listen(&n1).await.expect("listen");
    let inbox2 = other_mailbox.listen(&n2).await.expect("listen");
    let (ticket, oid) = (unique("ticket"), unique("oid"));
    let request = ping(&ticket, &oid, Some(vec![n2.clone()]));
    let (replies, (), ()) = tokio::join!(
        mailbox.broadcast(&request, ARRIVES, Some(2)),
        answer(inbox1, mailbox, &n1, &ticket),
        answer(inbox2, other_mailbox, &n2, &ticket),
    );
    let mut replies = replies.expect("broadcast");
    replies.sort_by_key(Value::to_string);
    let mut want = vec![
        json!({ &n1: {"ok": "pong"} }),
        json!({ &n2: {"ok": "pong"} }),
    ];
    want.sort_by_key(Value::to_string);
    assert_eq!(replies, want, "both replies, and only them");

    let started = std::time::Instant::now();
    let lonely = ping(&unique("ticket"), &unique("oid"), None);
    let none = mailbox
        .broadcast(&lonely, Duration::from_millis(300), None)
        .await
        .expect("broadcast");
    assert!(none.is_empty(), "nobody answered this one: {none:?}");
    assert!(
        started.elapsed() < ARRIVES,
        "a broadcast ends at its timeout"
    );
    Ok(())
}

/// Events sent on one instance reach every receiver (this instance and another), in order,
/// with their fields.
pub(super) async fn events_reach_every_receiver(f: &dyn BrokerFactory) -> CaseResult {
    let (instance, b) = open_default(f).await?;
    let Some(events) = b.events() else {
        return Err(Skip::new("no Events capability (Broker::events() is None)"));
    };
    let other = instance.open_again().await;
    let mut here = events.receive_events().await.expect("receive");
    let mut there = other
        .events()
        .expect("Events on every instance")
        .receive_events()
        .await
        .expect("receive");
    let host = unique("w@conformance");
    let sent: Vec<Value> = (0..3)
        .map(|i| {
            let mut fields = Map::new();
            fields.insert("uuid".into(), json!(format!("task-{i}")));
            event("task-received", &host, i, fields)
        })
        .collect();
    let wire: Vec<WireEvent> = sent.iter().map(WireEvent::from_value).collect();
    events.send_events(&host, &wire).await.expect("send");
    for stream in [&mut here, &mut there] {
        let got = mine(stream.as_mut(), &host, sent.len()).await;
        assert_eq!(got, sent, "every event, in order, as sent");
    }
    Ok(())
}

/// The next `n` events of `host` (others on a shared store are skipped).
async fn mine(stream: &mut dyn EventStream, host: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let next = tokio::time::timeout(ARRIVES, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} events within {ARRIVES:?}", got.len()))
            .expect("the stream stays open");
        if next["hostname"] == host {
            got.push(next);
        }
    }
    got
}
