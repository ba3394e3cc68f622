//! celeriac-amqp against a real RabbitMQ, named by `CELERIAC_TEST_AMQP_URL`
//! (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`). Each test runs in its own vhost when
//! `rabbitmqctl` is usable here (created and deleted around the test), else in the URL's
//! vhost with fresh queue names.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celeriac_amqp::{AmqpBroker, AmqpUrl};
use celeriac_core::broker::{Broker, Consumer, ConsumerSpec, Delivery, Publish, RawMessage};
use chrono::{TimeDelta, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const URL_VAR: &str = "CELERIAC_TEST_AMQP_URL";

fn base_url() -> Option<String> {
    let u = std::env::var(URL_VAR).ok().filter(|u| !u.trim().is_empty());
    if u.is_none() {
        println!("skipped: {URL_VAR} not set");
    }
    u
}

/// A vhost of its own, deleted on drop (when rabbitmqctl works here).
struct Vhost {
    name: Option<String>,
    url: String,
}

fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Vhost {
    fn new(base: &str) -> Vhost {
        let name = format!("celeriac-test-{}", uuid::Uuid::new_v4().simple());
        let parsed = AmqpUrl::parse(base).expect("test URL");
        let local = parsed.host == "127.0.0.1" || parsed.host == "localhost";
        if local
            && rabbitmqctl(&["add_vhost", &name]).is_some()
            && rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]).is_some()
        {
            let (head, _) = base.split_once('?').unwrap_or((base, ""));
            let root = head.rsplit_once('/').map(|(r, _)| r).unwrap_or(head);
            let root = if root.ends_with(':') || root.ends_with('/') {
                head
            } else {
                root
            };
            return Vhost {
                url: format!("{root}/{name}"),
                name: Some(name),
            };
        }
        Vhost {
            name: None,
            url: base.to_string(),
        }
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let Some(n) = &self.name {
            rabbitmqctl(&["delete_vhost", n]);
        }
    }
}

fn unique(p: &str) -> String {
    format!("{p}-{}", uuid::Uuid::new_v4().simple())
}

fn msg(id: &str) -> RawMessage {
    let mut headers = Map::new();
    headers.insert("task".into(), json!("t.echo"));
    headers.insert("id".into(), json!(id));
    let mut properties = Map::new();
    properties.insert("correlation_id".into(), json!(id));
    RawMessage {
        headers,
        properties,
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        body: b"[[], {}, {}]".to_vec(),
    }
}

fn publish(q: &str, id: &str) -> Publish {
    Publish {
        queue: q.into(),
        priority: None,
        not_before: None,
        message: msg(id),
    }
}

async fn consumer(b: &Arc<AmqpBroker>, q: &str, prefetch: usize) -> Box<dyn Consumer> {
    b.consumer(ConsumerSpec {
        queues: vec![q.to_string()],
        name: "test@amqp".into(),
        prefetch,
    })
    .await
    .expect("consumer")
}

fn ids(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| d.message.task_id().unwrap().to_string())
        .collect()
}

async fn ready_count(b: &Arc<AmqpBroker>, q: &str) -> u64 {
    b.queue_stats()
        .unwrap()
        .queue_lengths(&[q.to_string()])
        .await
        .unwrap()[0]
        .ready
}

fn entity_names(kind: &str, vhost: &str) -> Vec<String> {
    rabbitmqctl(&[kind, "-p", vhost, "name", "--formatter", "json"])
        .map(|out| {
            serde_json::from_str::<Vec<Value>>(&out)
                .unwrap()
                .into_iter()
                .map(|e| e["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A producer that sends plain tasks declares only their queues; the delay ladder comes with
/// the first ETA publish, the dead-letter queue with the first dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_declared_when_first_needed() {
    let Some(base) = base_url() else { return };
    let vh = Vhost::new(&base);
    let Some(name) = vh.name.clone() else {
        println!("skipped: rabbitmqctl not usable here");
        return;
    };
    let b = AmqpBroker::open(&vh.url).await.expect("open");
    b.publish(publish("plain", "p1")).await.expect("publish");
    let queues = entity_names("list_queues", &name);
    assert_eq!(queues, vec!["plain".to_string()], "only the task's queue");
    let exchanges = entity_names("list_exchanges", &name);
    for absent in [
        "celery_delayed_27",
        "celery_delayed_delivery",
        "celeryev",
        "celery.pidbox",
    ] {
        assert!(
            !exchanges.iter().any(|e| e == absent),
            "{absent} declared early: {exchanges:?}"
        );
    }

    let mut eta = publish("later", "e1");
    eta.not_before = Some(Utc::now() + TimeDelta::seconds(60));
    b.publish(eta).await.expect("publish with eta");
    let queues = entity_names("list_queues", &name);
    assert!(queues.iter().any(|q| q == "celery_delayed_0"), "{queues:?}");
    assert!(queues.iter().any(|q| q == "later"), "{queues:?}");
    assert!(
        !queues.iter().any(|q| q == "celeriac.dead_letters"),
        "{queues:?}"
    );
    let bindings = rabbitmqctl(&[
        "list_bindings",
        "-p",
        &name,
        "source_name",
        "destination_name",
    ])
    .unwrap();
    assert!(
        bindings.contains("celery_delayed_delivery\tlater"),
        "{bindings}"
    );

    let c = consumer(&b, "plain", 4).await;
    let got = c.fetch(1, Duration::from_secs(5)).await.expect("fetch");
    c.dead_letter(&got[0].tag, "test: dead")
        .await
        .expect("dead letter");
    let queues = entity_names("list_queues", &name);
    assert!(
        queues.iter().any(|q| q == "celeriac.dead_letters"),
        "{queues:?}"
    );
}

/// Vector 24: what a Celery 5.7 worker declares, compared field by field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_matches_celery() {
    let Some(base) = base_url() else { return };
    let vh = Vhost::new(&base);
    let Some(name) = vh.name.clone() else {
        println!("skipped: rabbitmqctl not usable here");
        return;
    };
    let b = AmqpBroker::open(&vh.url).await.expect("open");
    // A worker's start declares what Celery's worker declares.
    let _worker = consumer(&b, "celery", 4).await;
    let ex: Vec<Value> = serde_json::from_str(
        &rabbitmqctl(&[
            "list_exchanges",
            "-p",
            &name,
            "name",
            "type",
            "durable",
            "auto_delete",
            "--formatter",
            "json",
        ])
        .unwrap(),
    )
    .unwrap();
    let find = |all: &[Value], n: &str| {
        all.iter()
            .find(|e| e["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    for (n, t, durable) in [
        ("celery", "direct", true),
        ("celeryev", "topic", true),
        ("celery.pidbox", "fanout", false),
        ("reply.celery.pidbox", "direct", false),
    ] {
        let e = find(&ex, n);
        assert_eq!(
            (
                e["type"].as_str().unwrap(),
                e["durable"].as_bool().unwrap(),
                e["auto_delete"].as_bool().unwrap()
            ),
            (t, durable, false),
            "{e}"
        );
    }
    let qs: Vec<Value> = serde_json::from_str(
        &rabbitmqctl(&[
            "list_queues",
            "-p",
            &name,
            "name",
            "durable",
            "auto_delete",
            "exclusive",
            "arguments",
            "--formatter",
            "json",
        ])
        .unwrap(),
    )
    .unwrap();
    let q = find(&qs, "celery");
    assert_eq!(q["durable"], json!(true));
    assert_eq!(q["auto_delete"], json!(false));
    assert_eq!(q["exclusive"], json!(false));
    assert_eq!(q["arguments"], json!([]), "no arguments by default");
    let ladder = find(&qs, "celery_delayed_3");
    assert_eq!(
        ladder["arguments"],
        json!([
            ["x-dead-letter-exchange", "longstr", "celery_delayed_2"],
            ["x-dead-letter-strategy", "longstr", "at-least-once"],
            ["x-message-ttl", "signedint", 8000],
            ["x-overflow", "longstr", "reject-publish"],
            ["x-queue-type", "longstr", "quorum"]
        ])
    );
    let bindings = rabbitmqctl(&[
        "list_bindings",
        "-p",
        &name,
        "source_name",
        "destination_name",
        "routing_key",
    ])
    .unwrap();
    assert!(bindings.contains("celery\tcelery\tcelery"), "{bindings}");

    // max_priority / queue_type apply to task queues.
    let prio = AmqpBroker::open(&format!("{}?max_priority=10", vh.url))
        .await
        .unwrap();
    prio.declare_queue("hi").await.unwrap();
    let qs = rabbitmqctl(&["list_queues", "-p", &name, "name", "arguments"]).unwrap();
    assert!(
        qs.lines()
            .any(|l| l.starts_with("hi\t") && l.contains("x-max-priority") && l.contains("10")),
        "{qs}"
    );
    let quorum = AmqpBroker::open(&format!("{}?queue_type=quorum", vh.url))
        .await
        .unwrap();
    quorum.declare_queue("qq").await.unwrap();
    let qs = rabbitmqctl(&["list_queues", "-p", &name, "name", "type"]).unwrap();
    assert!(
        qs.lines()
            .any(|l| l.starts_with("qq\t") && l.contains("quorum")),
        "{qs}"
    );
    // A mismatching declaration is refused with a clear error, not a hang.
    let err = prio.declare_queue("celery").await.unwrap_err();
    assert!(err.to_string().contains("celery"), "{err}");
}

/// A message published with py-amqp's encoding of vector 01's headers (`S`, `V`, `I`,
/// `A`, `F`, `t`) is received with exactly vector 01's `application_headers`, and our own
/// publish produces the same table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_round_trip_python_encoding() {
    let Some(base) = base_url() else { return };
    let vh = Vhost::new(&base);
    let b = AmqpBroker::open(&vh.url).await.expect("open");
    let q = unique("q");
    b.declare_queue(&q).await.unwrap();
    let expected = json!({
        "lang": "py", "task": "tasks.add", "id": "9f3c1b52-6a0e-4f1d-8d2b-7c5e4a1f0b01",
        "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null,
        "retries": 0, "timelimit": [null, null], "root_id": "9f3c1b52-6a0e-4f1d-8d2b-7c5e4a1f0b01",
        "parent_id": null, "argsrepr": "(2,)", "kwargsrepr": "{'y': 3}", "origin": "gen14356@vm",
        "ignore_result": false, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}
    });
    // Python's wire bytes, field by field.
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes()));
    let mut t = FieldTable::default();
    for (k, v) in expected.as_object().unwrap() {
        let a = match v {
            Value::String(x) => s(x),
            Value::Null => AMQPValue::Void,
            Value::Bool(x) => AMQPValue::Boolean(*x),
            Value::Number(n) => AMQPValue::LongInt(n.as_i64().unwrap() as i32),
            Value::Array(_) => {
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void, AMQPValue::Void]))
            }
            Value::Object(_) => AMQPValue::FieldTable(FieldTable::default()),
        };
        t.insert(k.as_str().into(), a);
    }
    let conn = Connection::connect(&vh.url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body =
        br#"[[2], {"y": 3}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(t.clone())
            .with_delivery_mode(2)
            .with_priority(0)
            .with_correlation_id("9f3c1b52-6a0e-4f1d-8d2b-7c5e4a1f0b01".into())
            .with_reply_to("19903eeb-2c4e-3952-9c48-2cecb90d11f3".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let c = consumer(&b, &q, 4).await;
    let got = c.fetch(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0].message;
    assert_eq!(Value::Object(m.headers.clone()), expected);
    assert_eq!(m.body, body);
    assert_eq!(
        m.properties["correlation_id"],
        json!("9f3c1b52-6a0e-4f1d-8d2b-7c5e4a1f0b01")
    );
    assert_eq!(
        m.properties["reply_to"],
        json!("19903eeb-2c4e-3952-9c48-2cecb90d11f3")
    );
    assert_eq!(m.properties["delivery_mode"], json!(2));
    assert_eq!(m.properties["priority"], json!(0));
    assert_eq!(
        (m.content_type.as_str(), m.content_encoding.as_str()),
        ("application/json", "utf-8")
    );
    // Our encoding of the same headers is py-amqp's.
    assert_eq!(celeriac_amqp::to_table(expected.as_object().unwrap()), t);
    c.ack(&[got[0].tag.clone()]).await.unwrap();
    c.close().await.unwrap();
}

/// `expires` becomes the AMQP `expiration` (ms string); delivery_mode 2; priority as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_and_priority() {
    let Some(base) = base_url() else { return };
    let vh = Vhost::new(&base);
    let b = AmqpBroker::open(&format!("{}?max_priority=9", vh.url))
        .await
        .expect("open");
    let q = unique("q");
    let mut low = publish(&q, "low");
    low.priority = Some(1);
    low.message.headers.insert(
        "expires".into(),
        json!((Utc::now() + TimeDelta::seconds(60)).to_rfc3339()),
    );
    let mut high = publish(&q, "high");
    high.priority = Some(8);
    b.publish_batch(vec![low, high, publish(&q, "none")])
        .await
        .unwrap();
    let c = consumer(&b, &q, 10).await;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 3 && Instant::now() < deadline {
        got.extend(c.fetch(3, Duration::from_secs(1)).await.unwrap());
    }
    assert_eq!(ids(&got), ["high", "low", "none"]);
    let low = &got[1].message.properties;
    let ms: i64 = low["expiration"].as_str().unwrap().parse().unwrap();
    assert!((50_000..=60_000).contains(&ms), "{ms}");
    assert_eq!(low["delivery_mode"], json!(2));
    assert_eq!(low["priority"], json!(1));
    assert!(
        got[2].message.properties.get("priority").is_none(),
        "None sends no priority"
    );
    c.ack(&got.iter().map(|d| d.tag.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
}

/// basic.qos: never more than `prefetch` unacked deliveries; the rest stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_is_honoured() {
    let Some(base) = base_url() else { return };
    let vh = Vhost::new(&base);
    let b = AmqpBroker::open(&vh.url).await.expect("open");
    let q = unique("q");
    b.publish_batch((0..10).map(|i| publish(&q, &format!("m{i}"))).collect())
        .await
        .unwrap();
    let c = consumer(&b, &q, 3).await;
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while held.len() < 3 && Instant::now() < deadline {
        held.extend(c.fetch(10, Duration::from_millis(500)).await.unwrap());
    }
    assert_eq!(held.len(), 3);
    assert!(
        c.fetch(10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty(),
        "window full"
    );
    assert_eq!(ready_count(&b, &q).await, 7);
    // Acking two contiguous tags (multiple=true) opens two slots.
    c.ack(&[held[0].tag.clone(), held[1].tag.clone()])
        .await
        .unwrap();
    let more = c.fetch(10, Duration::from_secs(2)).await.unwrap();
    assert!(!more.is_empty() && more.len() <= 2, "{}", more.len());
    // Requeue (basic.reject requeue=true) gives the message back, redelivered.
    c.requeue(&[held[2].tag.clone()]).await.unwrap();
    let mut seen: Vec<Delivery> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut all = more;
    while Instant::now() < deadline && !seen.iter().any(|d| d.redelivered) {
        let n = c.fetch(10, Duration::from_millis(300)).await.unwrap();
        if n.is_empty() {
            c.ack(&all.iter().map(|d| d.tag.clone()).collect::<Vec<_>>())
                .await
                .unwrap();
            all.clear();
        }
        seen.extend(n.iter().cloned());
        all.extend(n);
    }
    let again = seen
        .iter()
        .find(|d| d.redelivered)
        .expect("requeued message redelivered");
    assert_eq!(again.message.task_id(), held[2].message.task_id());
}

/// ETA 3 s away: not held unacked (moved to the delay ladder), delivered on time, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_goes_through_the_delay_ladder() {
    let Some(base) = base_url() else { return };
    let vh = Vhost::new(&base);
    let b = AmqpBroker::open(&vh.url).await.expect("open");
    let q = unique("q");
    let eta = Utc::now() + TimeDelta::seconds(3);
    let mut p = publish(&q, "eta");
    // As a Python producer sends it: straight to the queue, `eta` header only.
    p.message
        .headers
        .insert("eta".into(), json!(eta.to_rfc3339()));
    b.publish(p).await.unwrap();
    let c = consumer(&b, &q, 4).await;
    let early = c.fetch(1, Duration::from_millis(1500)).await.unwrap();
    assert!(early.is_empty(), "not handed out before its ETA");
    let l = &b
        .queue_stats()
        .unwrap()
        .queue_lengths(std::slice::from_ref(&q))
        .await
        .unwrap()[0];
    assert_eq!(
        (l.ready, l.unacked),
        (0, 0),
        "neither ready nor held: in the ladder"
    );
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while got.is_empty() && Instant::now() < deadline {
        got = c.fetch(1, Duration::from_millis(500)).await.unwrap();
    }
    let at = Utc::now();
    assert_eq!(ids(&got), ["eta"]);
    assert!(
        at >= eta,
        "delivered {} ms early",
        (eta - at).num_milliseconds()
    );
    assert!(
        at - eta < TimeDelta::seconds(3),
        "delivered {} ms late",
        (at - eta).num_milliseconds()
    );
    assert_eq!(
        got[0].message.headers["eta"],
        json!(eta.to_rfc3339()),
        "headers unchanged"
    );
    c.ack(&[got[0].tag.clone()]).await.unwrap();
    assert!(
        c.fetch(5, Duration::from_secs(2)).await.unwrap().is_empty(),
        "exactly once"
    );
}

/// A tiny TCP proxy to RabbitMQ whose connections the test can cut.
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let c2 = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c2.lock().unwrap().push(h);
            }
        });
        Proxy {
            port,
            conns,
            accept,
        }
    }
    fn cut(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Cut every connection mid-stream: the consumer reconnects and resumes, messages it held
/// unacked come back (redelivered), acks with stale tags are dropped, publishes through the
/// proxy retry until confirmed; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_network_cut() {
    let Some(base) = base_url() else { return };
    let vh = Vhost::new(&base);
    let parsed = AmqpUrl::parse(&vh.url).unwrap();
    let proxy = Proxy::start(format!("{}:{}", parsed.host, parsed.port)).await;
    let vhost_enc = parsed.vhost.replace('/', "%2f");
    let proxied = format!("amqp://guest:guest@127.0.0.1:{}/{vhost_enc}", proxy.port);
    let direct = AmqpBroker::open(&vh.url).await.expect("open direct");
    let b = AmqpBroker::open(&proxied).await.expect("open proxied");
    let q = unique("q");
    let sent: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    direct
        .publish_batch(sent[..10].iter().map(|id| publish(&q, id)).collect())
        .await
        .unwrap();
    let c = consumer(&b, &q, 4).await;
    let first = c.fetch(2, Duration::from_secs(5)).await.unwrap();
    assert!(!first.is_empty());
    let mut done: HashSet<String> = HashSet::new();
    c.ack(&[first[0].tag.clone()]).await.unwrap();
    done.insert(first[0].message.task_id().unwrap().to_string());
    let stale: Vec<_> = first[1..].iter().map(|d| d.tag.clone()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A stale tag is dropped, never sent on the new channel.
    c.ack(&stale).await.unwrap();
    // Publishing through the cut connection retries and is confirmed.
    for id in &sent[10..] {
        b.publish(publish(&q, id))
            .await
            .expect("publish retried after the cut");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.len() < sent.len() && Instant::now() < deadline {
        let got = c.fetch(4, Duration::from_millis(500)).await.unwrap();
        for d in &got {
            done.insert(d.message.task_id().unwrap().to_string());
        }
        c.ack(&got.iter().map(|d| d.tag.clone()).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    let missing: Vec<_> = sent.iter().filter(|s| !done.contains(*s)).collect();
    assert!(missing.is_empty(), "lost after the cut: {missing:?}");
    c.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ready_count(&direct, &q).await,
        0,
        "everything acked exactly once"
    );
}

/// A consumer whose connection dies without acking (process killed) gives its messages
/// back to another consumer, marked redelivered; a dropped consumer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_consumer_redelivers() {
    let Some(base) = base_url() else { return };
    let vh = Vhost::new(&base);
    let parsed = AmqpUrl::parse(&vh.url).unwrap();
    let proxy = Proxy::start(format!("{}:{}", parsed.host, parsed.port)).await;
    let vhost_enc = parsed.vhost.replace('/', "%2f");
    let proxied = format!("amqp://guest:guest@127.0.0.1:{}/{vhost_enc}", proxy.port);
    let b = AmqpBroker::open(&vh.url).await.unwrap();
    let q = unique("q");
    b.publish_batch(vec![publish(&q, "a"), publish(&q, "b")])
        .await
        .unwrap();
    let dying_broker = AmqpBroker::open(&proxied).await.unwrap();
    let dying = consumer(&dying_broker, &q, 1).await;
    assert_eq!(
        ids(&dying.fetch(1, Duration::from_secs(5)).await.unwrap()),
        ["a"]
    );
    let other = consumer(&b, &q, 4).await;
    assert_eq!(
        ids(&other.fetch(1, Duration::from_secs(5)).await.unwrap()).len(),
        1,
        "b"
    );
    drop(proxy); // the dying process's TCP connection is gone
    let again = other.fetch(1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ids(&again), ["a"]);
    assert!(again[0].redelivered);
    std::mem::forget(dying);

    let q2 = unique("q2");
    let c = consumer(&b, &q2, 4).await;
    b.publish(publish(&q2, "c")).await.unwrap();
    assert_eq!(
        ids(&c.fetch(1, Duration::from_secs(5)).await.unwrap()),
        ["c"]
    );
    drop(c);
    let d = consumer(&b, &q2, 4).await;
    let back = d.fetch(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ids(&back), ["c"]);
    assert!(back[0].redelivered);
}

/// Dead letters: published (with confirm) to `celeriac.dead_letters` with the reason, the
/// original acked; listing puts them back; requeue republishes to the original queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_round_trip() {
    let Some(base) = base_url() else { return };
    let vh = Vhost::new(&base);
    let b = AmqpBroker::open(&vh.url).await.unwrap();
    let q = unique("q");
    b.publish(publish(&q, "bad")).await.unwrap();
    let c = consumer(&b, &q, 4).await;
    let got = c.fetch(1, Duration::from_secs(5)).await.unwrap();
    c.dead_letter(&got[0].tag, "not-json").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ready_count(&b, &q).await, 0);
    let dl = b.dead_letters().unwrap();
    let list = dl.list_dead_letters(100).await.unwrap();
    let mine: Vec<_> = list.iter().filter(|d| d.queue == q).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].reason, "not-json");
    assert_eq!(
        mine[0].message.headers,
        msg("bad").headers,
        "bookkeeping headers removed"
    );
    assert_eq!(
        dl.list_dead_letters(100).await.unwrap().len(),
        list.len(),
        "listing keeps them"
    );
    assert_eq!(
        dl.requeue_dead_letters(&[mine[0].id.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ids(&c.fetch(1, Duration::from_secs(5)).await.unwrap()),
        ["bad"]
    );
}

/// `?confirm_publish=false`: publishes return without confirms (Celery's default), and
/// `close` hands RabbitMQ everything published before it; publishing after `close` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_publishes_arrive_once_closed() {
    let Some(base) = base_url() else { return };
    let vh = Vhost::new(&base);
    let q = unique("nocf");
    let sep = if vh.url.contains('?') { '&' } else { '?' };
    let fire = AmqpBroker::open(&format!("{}{sep}confirm_publish=false", vh.url))
        .await
        .expect("open without confirms");
    assert!(!fire.url().confirm_publish);
    for i in 0..500 {
        fire.publish(publish(&q, &format!("f{i}")))
            .await
            .expect("publish");
    }
    fire.close().await.expect("close flushes");
    let e = fire.publish(publish(&q, "late")).await.unwrap_err();
    assert_eq!(e.kind(), celeriac_core::ErrorKind::Closed, "{e}");

    // The count a passive declare reports trails the routing by a moment: wait for it.
    let b = AmqpBroker::open(&vh.url).await.expect("open");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = ready_count(&b, &q).await;
        if ready == 500 {
            break;
        }
        assert!(Instant::now() < deadline, "{ready} of 500 arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Push mode (`basic.consume`, as a worker consumes): an added queue gets its own consumer
/// on the live channel, a cancelled one its `basic.cancel`, and the channel (with the other
/// queues and the deliveries in hand) carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_adds_and_cancels_queues_on_its_channel() {
    let Some(base) = base_url() else { return };
    let vh = Vhost::new(&base);
    let b = AmqpBroker::open(&vh.url).await.expect("open");
    let (qa, qb) = (unique("a"), unique("b"));
    let c = consumer(&b, &qa, 10).await;
    let set = c
        .queue_set()
        .expect("RabbitMQ consumers change their queues");
    assert!(set.add_queue(&qb).await.unwrap());
    assert!(!set.add_queue(&qb).await.unwrap(), "already consumed");
    b.publish(publish(&qb, "b1")).await.unwrap();
    let got = c.fetch(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ids(&got), ["b1"]);
    assert_eq!(got[0].queue, qb);

    assert!(set.cancel_queue(&qb).await.unwrap());
    assert_eq!(set.queues(), vec![qa.clone()]);
    b.publish(publish(&qb, "b2")).await.unwrap();
    b.publish(publish(&qa, "a1")).await.unwrap();
    let got_a = c.fetch(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ids(&got_a), ["a1"], "the other queue is still consumed");
    assert!(
        c.fetch(5, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty(),
        "nothing from the cancelled queue"
    );
    assert_eq!(ready_count(&b, &qb).await, 1, "b2 waits in its queue");
    // The delivery taken before the cancel is still settled on the same channel.
    c.ack(&[got[0].tag.clone(), got_a[0].tag.clone()])
        .await
        .unwrap();

    assert!(set.add_queue(&qb).await.unwrap(), "added again");
    let again = c.fetch(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ids(&again), ["b2"]);
    c.ack(&[again[0].tag.clone()]).await.unwrap();
    c.close().await.unwrap();
    assert_eq!(ready_count(&b, &qb).await, 0, "acked, not redelivered");
}
