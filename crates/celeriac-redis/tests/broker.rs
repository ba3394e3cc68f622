//! The Redis broker against a real server: `CELERIAC_TEST_REDIS_URL` (e.g.
//! `redis://127.0.0.1:6379/0`). Every test uses its own `global_keyprefix` and deletes its
//! keys at the end; without the variable each test prints why it is skipped and passes.
//! The generic broker contract is also checked by celeriac-testkit's conformance suite;
//! these tests check the kombu wire layout and the Redis-specific mechanisms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::broker::{
    Broker, Consumer, ConsumerSpec, Delivery, Publish, RawMessage, Signal,
};
use celeriac_core::ErrorKind;
use celeriac_redis::RedisBroker;
use chrono::{TimeDelta, Utc};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Map, Value};

const VAR: &str = "CELERIAC_TEST_REDIS_URL";

struct Env {
    base: String,
    prefix: String,
    url: String,
    plain: MultiplexedConnection,
}

impl Env {
    async fn new(extra: &str) -> Option<Env> {
        let Some(base) = std::env::var(VAR).ok().filter(|u| !u.trim().is_empty()) else {
            println!("skipped: {VAR} not set");
            return None;
        };
        let prefix = format!("t-{}:", uuid::Uuid::new_v4().simple());
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}global_keyprefix={prefix}{extra}");
        let plain = redis::Client::open(base.split('?').next().unwrap())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Some(Env {
            base,
            prefix,
            url,
            plain,
        })
    }

    async fn broker(&self) -> Arc<RedisBroker> {
        RedisBroker::open(&self.url).await.expect("open")
    }

    fn k(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn cmd<T: redis::FromRedisValue>(&self, c: &mut redis::Cmd) -> T {
        c.query_async(&mut self.plain.clone()).await.unwrap()
    }

    async fn cleanup(self) {
        let keys: Vec<String> = self
            .cmd(redis::cmd("KEYS").arg(format!("{}*", self.prefix)))
            .await;
        if !keys.is_empty() {
            let _: () = self.cmd(redis::cmd("DEL").arg(keys)).await;
        }
        let _ = &self.base;
    }
}

fn msg(id: &str) -> RawMessage {
    let mut headers = Map::new();
    headers.insert("lang".into(), json!("py"));
    headers.insert("task".into(), json!("tasks.add"));
    headers.insert("id".into(), json!(id));
    headers.insert("eta".into(), Value::Null);
    let mut properties = Map::new();
    properties.insert("correlation_id".into(), json!(id));
    properties.insert(
        "reply_to".into(),
        json!("5beee250-1ac7-320a-a0a4-96a9f6020816"),
    );
    properties.insert("delivery_mode".into(), json!(2));
    properties.insert("priority".into(), json!(0));
    RawMessage {
        headers,
        properties,
        content_type: "application/json".into(),
        content_encoding: "utf-8".into(),
        body: br#"[[2], {"y": 3}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#.to_vec(),
    }
}

fn publish(queue: &str, id: &str, priority: Option<u8>) -> Publish {
    Publish {
        queue: queue.into(),
        priority,
        not_before: None,
        message: msg(id),
    }
}

async fn consumer(b: &Arc<RedisBroker>, queues: &[&str]) -> Box<dyn Consumer> {
    b.consumer(ConsumerSpec {
        queues: queues.iter().map(|q| q.to_string()).collect(),
        name: "w@test".into(),
        prefetch: 0,
    })
    .await
    .expect("consumer")
}

fn ids(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| d.message.task_id().unwrap().to_string())
        .collect()
}

fn keys_of(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

async fn fetch_n(c: &dyn Consumer, n: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(
            c.fetch(n - got.len(), deadline - Instant::now())
                .await
                .unwrap(),
        );
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_layout_and_bindings_match_kombu() {
    let Some(env) = Env::new("").await else {
        return;
    };
    let b = env.broker().await;
    b.declare_queue("celery").await.unwrap();
    b.publish(publish("celery", "9f3c1b52", None))
        .await
        .unwrap();
    let raw: Vec<String> = env
        .cmd(redis::cmd("LRANGE").arg(env.k("celery")).arg(0).arg(-1))
        .await;
    assert_eq!(raw.len(), 1);
    // Python's separators.
    assert!(raw[0].starts_with("{\"body\": \""), "{}", raw[0]);
    let v: Value = serde_json::from_str(&raw[0]).unwrap();
    // Key order and types as vector 01.
    assert_eq!(
        keys_of(&v),
        [
            "body",
            "content-encoding",
            "content-type",
            "headers",
            "properties"
        ]
    );
    assert_eq!(
        keys_of(&v["properties"]),
        [
            "correlation_id",
            "reply_to",
            "delivery_mode",
            "delivery_info",
            "priority",
            "body_encoding",
            "delivery_tag"
        ]
    );
    assert_eq!(
        v["properties"]["delivery_info"],
        json!({"exchange": "", "routing_key": "celery"})
    );
    assert_eq!(v["properties"]["priority"], json!(0));
    assert_eq!(v["properties"]["body_encoding"], json!("base64"));
    assert_eq!(v["properties"]["delivery_mode"], json!(2));
    let tag = v["properties"]["delivery_tag"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(tag).unwrap().get_version_num(), 4);
    assert_eq!(v["content-type"], json!("application/json"));
    assert_eq!(v["content-encoding"], json!("utf-8"));
    assert_eq!(v["headers"], Value::Object(msg("9f3c1b52").headers));
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD
        .decode(v["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(body, msg("x").body);
    for set in ["_kombu.binding.celery", "_kombu.binding_permanent.celery"] {
        let members: Vec<String> = env.cmd(redis::cmd("SMEMBERS").arg(env.k(set))).await;
        assert_eq!(members, ["celery\x06\x16\x06\x16celery"], "{set}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_lists_and_order() {
    let Some(env) = Env::new("").await else {
        return;
    };
    let b = env.broker().await;
    b.publish_batch(vec![
        publish("q", "p0", Some(0)),
        publish("q", "pdefault", None),
        publish("q", "p5", Some(5)),
        publish("q", "p9", Some(9)),
    ])
    .await
    .unwrap();
    let wire = |key: String| {
        let env = &env;
        async move {
            let raw: Vec<String> = env.cmd(redis::cmd("LRANGE").arg(key).arg(0).arg(-1)).await;
            raw.iter()
                .map(|r| {
                    let v: Value = serde_json::from_str(r).unwrap();
                    (
                        v["headers"]["id"].as_str().unwrap().to_string(),
                        v["properties"]["priority"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    // Celeriac 9 (most urgent) → wire 0; default → wire 0; 5 → wire 4 (step 3); 0 → wire 9.
    assert_eq!(
        wire(env.k("q")).await,
        [("p9".into(), 0), ("pdefault".into(), 0)]
    );
    assert_eq!(wire(env.k("q\x06\x163")).await, [("p5".into(), 4)]);
    assert!(wire(env.k("q\x06\x166")).await.is_empty());
    assert_eq!(wire(env.k("q\x06\x169")).await, [("p0".into(), 9)]);
    let c = consumer(&b, &["q"]).await;
    let got = fetch_n(&*c, 4, Duration::from_secs(3)).await;
    assert_eq!(ids(&got), ["pdefault", "p9", "p5", "p0"]);
    let prio: Vec<u64> = got
        .iter()
        .map(|d| d.message.properties["priority"].as_u64().unwrap())
        .collect();
    assert_eq!(prio, [9, 9, 5, 0], "delivered in celeriac's order");
    c.close().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_batch_records_unacked_and_ack_removes() {
    let Some(env) = Env::new("").await else {
        return;
    };
    let b = env.broker().await;
    b.publish_batch(
        (0..3)
            .map(|i| publish("q", &format!("m{i}"), None))
            .collect(),
    )
    .await
    .unwrap();
    let c = consumer(&b, &["q"]).await;
    let got = c.fetch(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(ids(&got), ["m0", "m1", "m2"], "one batch, FIFO");
    let len: u64 = env.cmd(redis::cmd("LLEN").arg(env.k("q"))).await;
    assert_eq!(len, 0);
    for d in &got {
        let stored: String = env
            .cmd(redis::cmd("HGET").arg(env.k("unacked")).arg(&d.tag.0))
            .await;
        let v: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(v[1], json!(""));
        assert_eq!(v[2], json!("q"));
        assert_eq!(v[0]["properties"]["delivery_tag"], json!(d.tag.0));
        let score: Option<f64> = env
            .cmd(
                redis::cmd("ZSCORE")
                    .arg(env.k("unacked_index"))
                    .arg(&d.tag.0),
            )
            .await;
        let now = Utc::now().timestamp() as f64;
        assert!((score.unwrap() - now).abs() < 30.0, "unix seconds");
    }
    let lengths = b
        .queue_stats()
        .unwrap()
        .queue_lengths(&["q".into()])
        .await
        .unwrap();
    assert_eq!((lengths[0].ready, lengths[0].unacked), (0, 3));
    let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
    c.ack(&tags).await.unwrap();
    let n: u64 = env.cmd(redis::cmd("HLEN").arg(env.k("unacked"))).await;
    let z: u64 = env
        .cmd(redis::cmd("ZCARD").arg(env.k("unacked_index")))
        .await;
    assert_eq!((n, z), (0, 0));
    c.close().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_restores_with_kombu_flags() {
    let Some(env) = Env::new("").await else {
        return;
    };
    let b = env.broker().await;
    b.publish_batch(vec![publish("q", "a", None), publish("q", "b", None)])
        .await
        .unwrap();
    let c = consumer(&b, &["q"]).await;
    let got = fetch_n(&*c, 2, Duration::from_secs(2)).await;
    let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
    c.requeue(&tags).await.unwrap();
    let raw: Vec<String> = env
        .cmd(redis::cmd("LRANGE").arg(env.k("q")).arg(0).arg(-1))
        .await;
    assert_eq!(raw.len(), 2);
    let v: Value = serde_json::from_str(&raw[1]).unwrap();
    assert_eq!(v["headers"]["id"], json!("a"), "RPUSHed: `a` is next");
    assert_eq!(v["headers"]["redelivered"], json!(true));
    assert_eq!(v["properties"]["delivery_info"]["redelivered"], json!(true));
    let again = fetch_n(&*c, 2, Duration::from_secs(2)).await;
    assert_eq!(ids(&again), ["a", "b"], "order kept");
    assert!(again.iter().all(|d| d.redelivered));
    assert!(!again[0].message.headers.contains_key("redelivered"));
    c.close().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_consumer_restored_by_sweep_after_visibility_timeout() {
    let Some(env) = Env::new("&visibility_timeout=1").await else {
        return;
    };
    let b = env.broker().await;
    b.publish(publish("q", "lost", None)).await.unwrap();
    let dead = consumer(&b, &["q"]).await;
    assert_eq!(
        ids(&fetch_n(&*dead, 1, Duration::from_secs(2)).await),
        ["lost"]
    );
    let t0 = Instant::now();
    drop(dead);
    let other = consumer(&b, &["q"]).await;
    let got = fetch_n(&*other, 1, Duration::from_secs(5)).await;
    assert_eq!(ids(&got), ["lost"]);
    assert!(got[0].redelivered);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    other.ack(&[got[0].tag.clone()]).await.unwrap();
    other.close().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_prevents_restore_of_long_task() {
    let Some(env) = Env::new("&visibility_timeout=1").await else {
        return;
    };
    let b = env.broker().await;
    b.publish(publish("q", "long", None)).await.unwrap();
    let worker = consumer(&b, &["q"]).await;
    assert!(worker.keepalive_interval() <= Duration::from_millis(334));
    let got = fetch_n(&*worker, 1, Duration::from_secs(2)).await;
    let other_broker = env.broker().await;
    let other = consumer(&other_broker, &["q"]).await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        worker.keepalive().await.unwrap();
        let stolen = other.fetch(1, Duration::from_millis(250)).await.unwrap();
        assert!(
            stolen.is_empty(),
            "restored while kept alive: {:?}",
            ids(&stolen)
        );
    }
    worker.ack(&[got[0].tag.clone()]).await.unwrap();
    assert!(other
        .fetch(1, Duration::from_millis(1500))
        .await
        .unwrap()
        .is_empty());
    worker.close().await.unwrap();
    other.close().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_restores_held_and_buffered() {
    let Some(env) = Env::new("").await else {
        return;
    };
    let b = env.broker().await;
    b.publish_batch(
        (0..3)
            .map(|i| publish("q", &format!("m{i}"), None))
            .collect(),
    )
    .await
    .unwrap();
    let c = consumer(&b, &["q"]).await;
    let got = c.fetch(2, Duration::from_secs(2)).await.unwrap();
    assert_eq!(ids(&got), ["m0", "m1"]);
    c.close().await.unwrap();
    c.close().await.unwrap();
    assert_eq!(
        c.fetch(1, Duration::ZERO).await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    let n: u64 = env.cmd(redis::cmd("HLEN").arg(env.k("unacked"))).await;
    assert_eq!(n, 0);
    let c2 = consumer(&b, &["q"]).await;
    let again = fetch_n(&*c2, 3, Duration::from_secs(2)).await;
    assert_eq!(ids(&again), ["m0", "m1", "m2"]);
    c2.close().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_fetch_future_loses_nothing() {
    let Some(env) = Env::new("").await else {
        return;
    };
    let b = env.broker().await;
    let c = consumer(&b, &["q"]).await;
    // The fetch blocks in BRPOP; the caller gives up on it.
    let waiting = c.fetch(1, Duration::from_secs(3));
    assert!(tokio::time::timeout(Duration::from_millis(200), waiting)
        .await
        .is_err());
    // The message arrives while the abandoned BRPOP is still blocked and is popped by it.
    b.publish(publish("q", "late", None)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let len: u64 = env.cmd(redis::cmd("LLEN").arg(env.k("q"))).await;
        if len == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not popped by the abandoned fetch"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = c.fetch(1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(ids(&got), ["late"], "the next fetch returns it");
    c.ack(&[got[0].tag.clone()]).await.unwrap();
    c.close().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_is_parked_and_runs_once_on_time_with_two_consumers() {
    let Some(env) = Env::new("&visibility_timeout=1").await else {
        return;
    };
    let b = env.broker().await;
    let due = Utc::now() + TimeDelta::milliseconds(2500);
    let mut p = publish("q", "eta", None);
    p.message
        .headers
        .insert("eta".into(), json!(celeriac_core::time::to_iso(due)));
    p.not_before = Some(due);
    b.publish(p).await.unwrap();
    // Published like Celery: on the list, with headers.eta.
    let len: u64 = env.cmd(redis::cmd("LLEN").arg(env.k("q"))).await;
    assert_eq!(len, 1);
    let c1: Arc<Box<dyn Consumer>> = Arc::new(consumer(&b, &["q"]).await);
    let b2 = env.broker().await;
    let c2: Arc<Box<dyn Consumer>> = Arc::new(consumer(&b2, &["q"]).await);
    assert!(c1
        .fetch(10, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    // Parked: not unacked, not on the list, in the delayed set.
    let parked: u64 = env
        .cmd(redis::cmd("ZCARD").arg(env.k("celeriac.delayed.q")))
        .await;
    let unacked: u64 = env.cmd(redis::cmd("HLEN").arg(env.k("unacked"))).await;
    assert_eq!((parked, unacked), (1, 0));
    let l = b.queue_stats().unwrap().queue_lengths(&[]).await.unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!((l[0].ready, l[0].scheduled, l[0].unacked), (0, 1, 0));
    let run = |c: Arc<Box<dyn Consumer>>| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                for d in c.fetch(4, Duration::from_millis(500)).await.unwrap() {
                    got.push(Utc::now());
                    c.ack(&[d.tag]).await.unwrap();
                }
            }
            got
        })
    };
    let (h1, h2) = (run(c1.clone()), run(c2.clone()));
    let mut times = h1.await.unwrap();
    times.extend(h2.await.unwrap());
    assert_eq!(times.len(), 1, "exactly once: {times:?}");
    let late = times[0] - due;
    assert!(late >= TimeDelta::zero(), "early by {late}");
    assert!(late < TimeDelta::milliseconds(700), "late by {late}");
    c1.close().await.unwrap();
    c2.close().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_queue_lengths() {
    let Some(env) = Env::new("").await else {
        return;
    };
    let b = env.broker().await;
    b.declare_queue("empty").await.unwrap();
    b.publish_batch(vec![
        publish("a", "1", None),
        publish("a", "2", Some(0)),
        publish("b", "3", None),
    ])
    .await
    .unwrap();
    let mut later = publish("a", "4", None);
    later.not_before = Some(Utc::now() + TimeDelta::hours(2));
    b.publish(later).await.unwrap();
    let stats = b.queue_stats().unwrap();
    let all = stats.queue_lengths(&[]).await.unwrap();
    let names: Vec<&str> = all.iter().map(|l| l.queue.as_str()).collect();
    assert_eq!(names, ["a", "b", "empty"]);
    assert_eq!((all[0].ready, all[0].scheduled), (2, 1));
    assert_eq!(all[1].ready, 1);
    assert_eq!(b.purge().unwrap().purge("a").await.unwrap(), 3);
    let a = stats.queue_lengths(&["a".into()]).await.unwrap();
    assert_eq!((a[0].ready, a[0].scheduled, a[0].unacked), (0, 0, 0));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_undecodable_envelopes() {
    let Some(env) = Env::new("").await else {
        return;
    };
    let b = env.broker().await;
    b.publish(publish("q", "bad", None)).await.unwrap();
    let _: () = env
        .cmd(redis::cmd("LPUSH").arg(env.k("q")).arg("this is not json"))
        .await;
    let c = consumer(&b, &["q"]).await;
    let got = fetch_n(&*c, 1, Duration::from_secs(2)).await;
    assert_eq!(ids(&got), ["bad"]);
    assert!(c
        .fetch(1, Duration::from_millis(100))
        .await
        .unwrap()
        .is_empty());
    c.dead_letter(&got[0].tag, "cannot run").await.unwrap();
    let n: u64 = env.cmd(redis::cmd("HLEN").arg(env.k("unacked"))).await;
    assert_eq!(n, 0);
    let dl = b.dead_letters().unwrap();
    let list = dl.list_dead_letters(10).await.unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let bad = list.iter().find(|d| d.reason == "cannot run").unwrap();
    assert_eq!(bad.queue, "q");
    assert_eq!(bad.message.task_id(), Some("bad"));
    let junk = list
        .iter()
        .find(|d| d.reason.contains("undecodable"))
        .unwrap();
    assert_eq!(junk.message.body, b"this is not json");
    assert_eq!(
        dl.requeue_dead_letters(std::slice::from_ref(&bad.id))
            .await
            .unwrap(),
        1
    );
    let back = fetch_n(&*c, 1, Duration::from_secs(2)).await;
    assert_eq!(ids(&back), ["bad"]);
    assert_eq!(dl.list_dead_letters(10).await.unwrap().len(), 1);
    c.close().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_durable_and_broadcast_to_python_workers() {
    let Some(env) = Env::new("").await else {
        return;
    };
    let b = env.broker().await;
    let client = redis::Client::open(env.base.split('?').next().unwrap()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    let db = b.url().db;
    sub.subscribe(format!("{}/{db}.celery.pidbox", env.prefix))
        .await
        .unwrap();
    let r = b.revocations().unwrap();
    r.revoke(&["t1".into(), "t2".into()], Some(Signal::TERM))
        .await
        .unwrap();
    let mut stream = Box::pin(sub.on_message());
    let next = std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx));
    let m = tokio::time::timeout(Duration::from_secs(2), next)
        .await
        .unwrap()
        .unwrap();
    let payload: String = m.get_payload().unwrap();
    let v: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        keys_of(&v),
        [
            "body",
            "content-encoding",
            "content-type",
            "headers",
            "properties"
        ]
    );
    assert_eq!(keys_of(&v["headers"]), ["clock", "expires"]);
    assert_eq!(
        v["properties"]["delivery_info"],
        json!({"exchange": "celery.pidbox", "routing_key": ""})
    );
    use base64::Engine;
    let body: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(v["body"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        body,
        json!({"method": "revoke",
               "arguments": {"task_id": ["t1", "t2"], "terminate": true, "signal": "SIGTERM",
                             "celeriac_recorded": true},
               "destination": null, "pattern": null, "matcher": null})
    );
    assert_eq!(
        keys_of(&body),
        ["method", "arguments", "destination", "pattern", "matcher"]
    );
    assert!(r.is_revoked("t1").await.unwrap());
    assert!(!r.is_revoked("t3").await.unwrap());
    let (all, cursor) = r.revocations_since(0).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|x| x.terminate));
    r.revoke(&["t3".into()], None).await.unwrap();
    let (new, next) = r.revocations_since(cursor).await.unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].task_id, "t3");
    assert!(next > cursor);
    assert!(r.revocations_since(next).await.unwrap().0.is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_consuming_after_client_kill() {
    let Some(env) = Env::new("").await else {
        return;
    };
    let b = env.broker().await;
    b.publish(publish("q", "before", None)).await.unwrap();
    let c: Arc<Box<dyn Consumer>> = Arc::new(consumer(&b, &["q"]).await);
    let before = fetch_n(&**c, 1, Duration::from_secs(2)).await;
    assert_eq!(ids(&before), ["before"]);
    c.ack(&[before[0].tag.clone()]).await.unwrap();
    // A fetch blocked in BRPOP while its connections are killed.
    let blocked = tokio::spawn({
        let c = c.clone();
        async move { c.fetch(1, Duration::from_secs(3)).await }
    });
    let name = format!("name={}", b.client_name());
    let deadline = Instant::now() + Duration::from_secs(5);
    let list = loop {
        let list: String = env.cmd(redis::cmd("CLIENT").arg("LIST")).await;
        let blocked_here = list.lines().any(|l| {
            l.split(' ').any(|f| f.starts_with(&name)) && l.split(' ').any(|f| f == "cmd=brpop")
        });
        if blocked_here {
            break list;
        }
        assert!(Instant::now() < deadline, "the fetch never blocked: {list}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mine: Vec<String> = list
        .lines()
        .filter(|l| l.split(' ').any(|f| f.starts_with(&name)))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(String::from)
        })
        .collect();
    assert!(mine.len() >= 2, "command and fetch connections: {list}");
    for id in &mine {
        let _: i64 = env
            .cmd(redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id))
            .await;
    }
    match blocked.await.unwrap() {
        Ok(got) => assert!(got.is_empty()),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}"),
    }
    b.publish(publish("q", "after", None)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        match c.fetch(1, Duration::from_millis(500)).await {
            Ok(d) => got = d,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(ids(&got), ["after"], "consuming resumed, nothing lost");
    c.close().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error_without_password() {
    let e = match RedisBroker::open("redis://:hunter2@127.0.0.1:1/0").await {
        Err(e) => e,
        Ok(_) => panic!("connected to port 1"),
    };
    assert_eq!(e.kind(), ErrorKind::Unreachable);
    let text = e.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
