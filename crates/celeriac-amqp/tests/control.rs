//! Remote control (`Mailbox`) and events (`Events`) of celeriac-amqp against a real
//! RabbitMQ named by `CELERIAC_TEST_AMQP_URL` (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`;
//! unset: skipped). Each test runs in a vhost of its own (`rabbitmqctl`), since broadcasts
//! reach every mailbox of a vhost. Several brokers in one test stand for several processes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac_amqp::AmqpBroker;
use celeriac_core::broker::Broker;
use celeriac_core::control::{ControlRequest, ReplyAddress};
use celeriac_core::events::{event, EventStream, WireEvent};
use celeriac_core::ErrorKind;
use celeriac_testkit::rabbitmq::{rabbitmqctl, TestVhost};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;

const URL_VAR: &str = "CELERIAC_TEST_AMQP_URL";
const WAIT: Duration = Duration::from_secs(10);

/// The test's own vhost; `None` (skipped, with a message) without the URL.
fn vhost(test: &str) -> Option<TestVhost> {
    let Some(base) = std::env::var(URL_VAR).ok().filter(|u| !u.trim().is_empty()) else {
        println!("skipped {test}: {URL_VAR} not set");
        return None;
    };
    let name = format!("celeriac-amqp-{test}-{}", std::process::id());
    let vh = TestVhost::create(&base, &name);
    Some(vh.unwrap_or_else(|| panic!("{test}: rabbitmqctl could not create vhost {name}")))
}

async fn open(vh: &TestVhost) -> Arc<AmqpBroker> {
    AmqpBroker::open(&vh.url).await.expect("open the broker")
}

fn request(method: &str, destination: Option<&[&str]>, wants_reply: bool) -> ControlRequest {
    ControlRequest {
        method: method.into(),
        arguments: Map::new(),
        destination: destination.map(|d| d.iter().map(|s| s.to_string()).collect()),
        pattern: None,
        matcher: None,
        ticket: wants_reply.then(|| uuid::Uuid::new_v4().to_string()),
        reply_to: wants_reply.then(|| ReplyAddress {
            exchange: "reply.celery.pidbox".into(),
            routing_key: uuid::Uuid::new_v4().to_string(),
        }),
        clock: 0,
    }
}

type Seen = Arc<Mutex<Vec<ControlRequest>>>;

/// A worker's mailbox loop as `celeriac-worker` runs it: every request is recorded; the
/// ones for `host` that want a reply get a decoy reply with another ticket first (which the
/// caller must drop), then `{host: {"ok": "pong"}}`.
async fn responder(b: Arc<AmqpBroker>, host: &str) -> (JoinHandle<()>, Seen) {
    let mut inbox = b.mailbox().expect("a mailbox").listen(host).await.unwrap();
    let seen: Seen = Arc::default();
    let (host, record) = (host.to_string(), seen.clone());
    let task = tokio::spawn(async move {
        let mailbox = b.mailbox().expect("a mailbox");
        while let Some(r) = inbox.next().await {
            record.lock().unwrap().push(r.clone());
            let (Some(ticket), Some(to)) = (&r.ticket, &r.reply_to) else {
                continue;
            };
            if !r.is_for(&host) {
                continue;
            }
            let decoy = json!({ host.as_str(): "decoy" });
            mailbox
                .reply(to, "another-ticket", 1, &decoy)
                .await
                .unwrap();
            let pong = json!({ host.as_str(): {"ok": "pong"} });
            mailbox.reply(to, ticket, r.clock + 1, &pong).await.unwrap();
        }
    });
    (task, seen)
}

/// Waits until `seen` holds a request with `ticket` (or, for a cast, `method`).
async fn wait_seen(seen: &Seen, pick: impl Fn(&ControlRequest) -> bool) -> ControlRequest {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = seen.lock().unwrap().iter().find(|r| pick(r)) {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "request never seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|r| r.to_string());
    v
}

/// Broadcasts reach every mailbox; replies carrying the request's ticket come back (decoys
/// with another ticket are dropped); `limit` ends the wait early; a request for `[Y]` still
/// reaches X (choosing is the worker's `is_for`); a cast returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_every_mailbox_and_replies_come_back_with_their_ticket() {
    let Some(vh) = vhost("broadcast") else { return };
    let caller = open(&vh).await;
    let (_x, seen_x) = responder(open(&vh).await, "x@test").await;
    let (_y, seen_y) = responder(open(&vh).await, "y@test").await;
    let mailbox = caller.mailbox().expect("RabbitMQ has remote control");
    let both = vec![
        json!({"x@test": {"ok": "pong"}}),
        json!({"y@test": {"ok": "pong"}}),
    ];

    let ping = ControlRequest {
        clock: 41,
        ..request("ping", None, true)
    };
    let started = Instant::now();
    let replies = mailbox.broadcast(&ping, WAIT, Some(2)).await.unwrap();
    assert_eq!(sorted(replies), both);
    assert!(started.elapsed() < Duration::from_secs(5), "limit 2 waited");
    let got = wait_seen(&seen_x, |r| r.ticket == ping.ticket).await;
    assert_eq!(
        (got.method.as_str(), &got.reply_to),
        ("ping", &ping.reply_to)
    );
    assert!(got.clock > 41, "the request carries the caller's clock");

    let started = Instant::now();
    let one = mailbox
        .broadcast(&request("ping", None, true), WAIT, Some(1))
        .await
        .unwrap();
    assert_eq!(one.len(), 1, "{one:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "limit 1 waited");

    // No limit: every reply until the timeout.
    let timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let all = mailbox
        .broadcast(&request("ping", None, true), timeout, None)
        .await
        .unwrap();
    assert_eq!(sorted(all), both);
    assert!(started.elapsed() >= timeout);

    let only_y = request("ping", Some(&["y@test"]), true);
    let replies = mailbox.broadcast(&only_y, WAIT, Some(1)).await.unwrap();
    assert_eq!(replies, vec![json!({"y@test": {"ok": "pong"}})]);
    let at_x = wait_seen(&seen_x, |r| r.ticket == only_y.ticket).await;
    assert!(!at_x.is_for("x@test") && at_x.destination == only_y.destination);

    let started = Instant::now();
    let cast = request("heartbeat", None, false);
    assert!(mailbox
        .broadcast(&cast, WAIT, None)
        .await
        .unwrap()
        .is_empty());
    assert!(started.elapsed() < Duration::from_secs(5), "a cast waited");
    for seen in [&seen_x, &seen_y] {
        let r = wait_seen(seen, |r| r.method == "heartbeat").await;
        assert!(r.ticket.is_none() && r.reply_to.is_none());
    }
}

type RawQueue = (Connection, Channel, lapin::Consumer);

/// A queue of the test's own bound to `exchange` with `key`, consumed with no acks on a
/// plain lapin connection, to see messages exactly as RabbitMQ routes them.
async fn raw_queue(vh: &TestVhost, exchange: &str, key: &str) -> RawQueue {
    let conn = Connection::connect(&vh.url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let opts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare("".into(), opts, FieldTable::default())
        .await
        .unwrap();
    let name = q.name().clone();
    ch.queue_bind(
        name.clone(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let consumer = ch
        .basic_consume(name, "raw".into(), no_ack, FieldTable::default())
        .await
        .unwrap();
    (conn, ch, consumer)
}

async fn next_raw(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    use futures_core::Stream;
    let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *consumer).poll_next(cx));
    match tokio::time::timeout(WAIT, next).await {
        Ok(Some(Ok(d))) => d,
        other => panic!("no delivery: {:?}", other.map(|o| o.map(|r| r.map(|_| ())))),
    }
}

fn headers(d: &lapin::message::Delivery) -> Map<String, Value> {
    celeriac_amqp::from_table(d.properties.headers().as_ref().expect("headers"))
}

fn content_type(d: &lapin::message::Delivery) -> Option<String> {
    d.properties.content_type().as_ref().map(|s| s.to_string())
}

/// Publishes raw bytes (with confirm) as a Python process or a broken client would.
async fn publish_raw(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default().with_content_type("application/json".into());
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// `rabbitmqctl list_queues` of the vhost as JSON objects.
fn queues(vh: &TestVhost) -> Vec<Value> {
    let out = rabbitmqctl(&[
        "list_queues",
        "-p",
        &vh.name,
        "name",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "--formatter",
        "json",
    ])
    .expect("rabbitmqctl lists queues");
    serde_json::from_str(&out).expect("JSON")
}

fn queue(vh: &TestVhost, name: &str) -> Option<Value> {
    queues(vh).into_iter().find(|q| q["name"] == json!(name))
}

/// Vector 24's flags for Celery's pidbox and event queues, with its arguments.
fn assert_celery_queue(q: &Value, expires: i64, ttl: i64) {
    assert_eq!(
        (&q["durable"], &q["auto_delete"], &q["exclusive"]),
        (&json!(false), &json!(true), &json!(true)),
        "{q}"
    );
    let args = json!([
        ["x-expires", "signedint", expires],
        ["x-message-ttl", "signedint", ttl]
    ]);
    assert_eq!(q["arguments"], args, "{q}");
}

fn bindings(vh: &TestVhost) -> String {
    let cols = ["source_name", "destination_name", "routing_key"];
    let mut args = vec!["list_bindings", "-p", &vh.name];
    args.extend(cols);
    rabbitmqctl(&args).expect("rabbitmqctl lists bindings")
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Vectors 23 and 24: the worker's mailbox queue and the caller's reply queue are declared
/// as Celery declares them; requests and replies carry Celery's properties and headers; a
/// second node with the same name is refused; a dropped inbox takes its queue along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pidbox_queues_and_messages_are_celerys() {
    let Some(vh) = vhost("pidbox-wire") else {
        return;
    };
    let b = open(&vh).await;
    let mailbox = b.mailbox().unwrap();
    let inbox = mailbox.listen("x@test").await.unwrap();
    let q = queue(&vh, "x@test.celery.pidbox").expect("the mailbox queue");
    assert_celery_queue(&q, 10_000, 300_000);
    assert!(
        bindings(&vh).contains("celery.pidbox\tx@test.celery.pidbox\t\n"),
        "{}",
        bindings(&vh)
    );
    let err = open(&vh).await.mailbox().unwrap().listen("x@test").await;
    let err = err.err().expect("a second x@test is refused");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("already using"), "{err}");

    // The caller's reply queue exists while it waits, and goes with it.
    let (_conn, _ch, mut requests) = raw_queue(&vh, "celery.pidbox", "").await;
    let ping = request("ping", None, true);
    let oid = ping.reply_to.clone().unwrap().routing_key;
    let waiting = {
        let (b, ping) = (b.clone(), ping.clone());
        let wait = Duration::from_secs(2);
        tokio::spawn(async move { b.mailbox().unwrap().broadcast(&ping, wait, None).await })
    };
    let d = next_raw(&mut requests).await;
    let reply_queue = format!("{oid}.reply.celery.pidbox");
    let q = queue(&vh, &reply_queue).expect("the reply queue");
    assert_celery_queue(&q, 10_000, 300_000);
    let expect = format!("reply.celery.pidbox\t{reply_queue}\t{oid}\n");
    assert!(bindings(&vh).contains(&expect), "{}", bindings(&vh));
    assert_eq!(
        (d.exchange.as_str(), d.routing_key.as_str()),
        ("celery.pidbox", "")
    );
    assert_eq!(d.properties.delivery_mode(), &Some(2));
    assert_eq!(d.properties.priority(), &Some(0));
    assert_eq!(content_type(&d).as_deref(), Some("application/json"));
    let h = headers(&d);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(h["clock"].as_u64().is_some_and(|c| c > 0), "{h:?}");
    let expires = h["expires"].as_f64().expect("expires");
    assert!(expires > now && expires < now + 4.0, "{h:?}");
    let body: Value = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(body, ping.to_body());
    assert!(waiting.await.unwrap().unwrap().is_empty());
    wait_until("the reply queue is deleted", || {
        queue(&vh, &reply_queue).is_none()
    })
    .await;

    // A reply as kombu's `_publish_reply` sends it.
    let (_conn, _ch, mut replies) = raw_queue(&vh, "reply.celery.pidbox", "raw-oid").await;
    let to = ReplyAddress {
        exchange: "reply.celery.pidbox".into(),
        routing_key: "raw-oid".into(),
    };
    let pong = json!({"x@test": {"ok": "pong"}});
    mailbox.reply(&to, "t-1", 9, &pong).await.unwrap();
    let d = next_raw(&mut replies).await;
    assert_eq!(d.routing_key.as_str(), "raw-oid");
    assert_eq!(d.properties.delivery_mode(), &Some(1));
    assert_eq!(
        headers(&d),
        *json!({"ticket": "t-1", "clock": 9}).as_object().unwrap()
    );
    assert_eq!(d.data, br#"{"x@test": {"ok": "pong"}}"#.to_vec());

    drop(inbox);
    wait_until("the mailbox queue is deleted", || {
        queue(&vh, "x@test.celery.pidbox").is_none()
    })
    .await;
}

/// Pings until one reply comes back (or the wait runs out).
async fn ping_until_answered(b: &AmqpBroker) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ping = request("ping", None, true);
        let wait = Duration::from_millis(500);
        if let Ok(r) = b.mailbox().unwrap().broadcast(&ping, wait, Some(1)).await {
            if !r.is_empty() {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "no reply after the cut");
    }
}

/// Malformed messages in a mailbox are skipped; an inbox whose connection is closed by the
/// server declares its queue again and answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_skipped_and_the_inbox_reconnects() {
    let Some(vh) = vhost("pidbox-faults") else {
        return;
    };
    let caller = open(&vh).await;
    let (task, seen) = responder(open(&vh).await, "x@test").await;
    let (_conn, ch, _own) = raw_queue(&vh, "celery.pidbox", "").await;
    for garbage in [&b"not json"[..], br#"{"no": "method"}"#, b"[1, 2]"] {
        publish_raw(&ch, "celery.pidbox", "", garbage).await;
    }
    let replies = ping_until_answered(&caller).await;
    assert_eq!(replies, vec![json!({"x@test": {"ok": "pong"}})]);
    assert!(seen.lock().unwrap().iter().all(|r| r.method == "ping"));

    rabbitmqctl(&["close_all_connections", "-p", &vh.name, "test: cut"]).expect("cut");
    let replies = ping_until_answered(&caller).await;
    assert_eq!(replies, vec![json!({"x@test": {"ok": "pong"}})]);
    assert!(!task.is_finished(), "the inbox ended");
}

async fn next_event(stream: &mut Box<dyn EventStream>) -> Value {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(e)) => e,
        other => panic!("no event: {other:?}"),
    }
}

fn worker_event(kind: &str, n: u64) -> Value {
    let mut fields = Map::new();
    fields.insert("uuid".into(), json!(format!("t-{n}")));
    event(kind, "w@test", n, fields)
}

/// Events sent by one process reach another's receiver one at a time, with vector 21's
/// properties; a `task.multi` list (a Python worker's batch) comes apart; malformed messages
/// are skipped; the receiver's queue is vector 24's; after a cut it receives again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_received_one_at_a_time_including_task_multi() {
    let Some(vh) = vhost("events") else { return };
    let monitor = open(&vh).await;
    let sender = open(&vh).await;
    let mut stream = monitor.events().unwrap().receive_events().await.unwrap();
    let q = queues(&vh)
        .into_iter()
        .find(|q| {
            q["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("celeryev."))
        })
        .expect("the event queue");
    assert_celery_queue(&q, 60_000, 5_000);
    let name = q["name"].as_str().unwrap();
    assert!(bindings(&vh).contains(&format!("celeryev\t{name}\t#\n")));
    let (_conn, ch, mut raw) = raw_queue(&vh, "celeryev", "#").await;

    let sent = [
        worker_event("worker-heartbeat", 1),
        worker_event("task-started", 2),
    ];
    let events = sender.events().unwrap();
    events.send_events("w@test", &wire(&sent)).await.unwrap();
    assert_eq!(next_event(&mut stream).await, sent[0]);
    assert_eq!(next_event(&mut stream).await, sent[1]);
    let d = next_raw(&mut raw).await;
    assert_eq!(
        (d.exchange.as_str(), d.routing_key.as_str()),
        ("celeryev", "worker.heartbeat")
    );
    assert_eq!(d.properties.delivery_mode(), &Some(1));
    assert_eq!(content_type(&d).as_deref(), Some("application/json"));
    assert_eq!(
        headers(&d),
        *json!({"hostname": "w@test"}).as_object().unwrap()
    );
    let task = next_raw(&mut raw).await;
    assert_eq!(
        task.routing_key.as_str(),
        "task.multi",
        "task events travel in lists, as Celery's worker sends them"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&task.data).unwrap(),
        json!([sent[1]])
    );

    let multi = [
        worker_event("task-received", 3),
        worker_event("task-succeeded", 4),
    ];
    for garbage in [&b"not json"[..], b"42"] {
        publish_raw(&ch, "celeryev", "task.multi", garbage).await;
    }
    let body = serde_json::to_vec(&json!(multi)).unwrap();
    publish_raw(&ch, "celeryev", "task.multi", &body).await;
    assert_eq!(next_event(&mut stream).await, multi[0]);
    assert_eq!(next_event(&mut stream).await, multi[1]);

    rabbitmqctl(&["close_all_connections", "-p", &vh.name, "test: cut"]).expect("cut");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let beat = worker_event("worker-heartbeat", 5);
        events
            .send_events("w@test", &wire(std::slice::from_ref(&beat)))
            .await
            .unwrap();
        let wait = Duration::from_millis(300);
        if let Ok(Some(e)) = tokio::time::timeout(wait, stream.next()).await {
            assert_eq!(e["type"], json!("worker-heartbeat"), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "no event after the cut");
    }
}

/// Events as senders hand them to the engine.
fn wire(events: &[Value]) -> Vec<WireEvent> {
    events.iter().map(WireEvent::from_value).collect()
}
