//! The Redis result backend against a real Redis server, checked byte for byte against what
//! Python Celery 5.7 writes (`shared/celery-vectors` 12, 14, 15, 18).
//!
//! Needs `CELERIAC_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379/0`); without it every test
//! prints "skipped" and passes. Every test uses fresh uuids and, where the key layout is
//! asserted, its own `global_keyprefix`.

use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::backend::ResultBackend;
use celeriac_core::error::ErrorKind;
use celeriac_core::json::to_python_json;
use celeriac_core::state::{ExceptionInfo, ExtendedMeta, TaskMeta, TaskState};
use celeriac_redis::RedisBackend;
use futures_core::Stream;
use serde_json::{json, Value};

fn redis_url() -> Option<String> {
    match std::env::var("CELERIAC_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            println!("skipped: CELERIAC_TEST_REDIS_URL not set");
            None
        }
    }
}

/// Binds `$url`, or prints "skipped" and returns. Also holds a shared lock for the test's
/// duration: the one test that kills a pub/sub connection takes it exclusively, so it can
/// tell its own waiter's connection from other tests'.
macro_rules! require_redis {
    ($url:ident) => {
        let $url = match redis_url() {
            Some(u) => u,
            None => return,
        };
        let _shared = EXCLUSIVE.read().await;
    };
}

static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn with_prefix(url: &str, prefix: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}global_keyprefix={prefix}")
}

/// A unique prefix without a trailing separator, so Celery's rule appends `_`.
fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

async fn open(url: &str) -> Arc<RedisBackend> {
    RedisBackend::open(url).await.expect("open Redis backend")
}

async fn raw_conn(url: &str) -> redis::aio::MultiplexedConnection {
    let base = url.split('?').next().unwrap();
    redis::Client::open(base)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn raw_get(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(c).await.unwrap()
}

async fn raw_ttl(c: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query_async(c).await.unwrap()
}

async fn raw_set(c: &mut redis::aio::MultiplexedConnection, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async::<()>(c)
        .await
        .unwrap()
}

async fn subscriber(url: &str, channel: &str) -> redis::aio::PubSub {
    let base = url.split('?').next().unwrap();
    let mut ps = redis::Client::open(base)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    ps.subscribe(channel).await.unwrap();
    ps
}

/// The next message within `within`, as (channel, payload).
async fn next_message(ps: &mut redis::aio::PubSub, within: Duration) -> Option<(String, String)> {
    let mut stream = pin!(ps.on_message());
    let msg = tokio::time::timeout(
        within,
        std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)),
    )
    .await
    .ok()??;
    Some((
        msg.get_channel_name().to_string(),
        String::from_utf8(msg.get_payload_bytes().to_vec()).unwrap(),
    ))
}

/// Ids of the server's clients in pub/sub mode.
async fn pubsub_client_ids(c: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    client_ids(c, &["TYPE", "pubsub"]).await
}

async fn all_client_ids(c: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    client_ids(c, &[]).await
}

/// How long a test waits for Redis to show what a spawned waiter has done.
const SETTLE: Duration = Duration::from_secs(5);

/// Waits until `channel` has `n` subscribers (PUBSUB NUMSUB), failing after `SETTLE`.
async fn until_subscribed(c: &mut redis::aio::MultiplexedConnection, channel: &str, n: i64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let numsub: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(c)
            .await
            .unwrap();
        let now = numsub.first().map_or(0, |(_, count)| *count);
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{channel} has {now} subscribers, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a pub/sub connection that is not in `before` appears, failing after
/// `SETTLE`; returns every such connection.
async fn new_pubsub_clients(
    c: &mut redis::aio::MultiplexedConnection,
    before: &[String],
) -> Vec<String> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let new: Vec<String> = pubsub_client_ids(c)
            .await
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
        if !new.is_empty() {
            return new;
        }
        assert!(Instant::now() < deadline, "no new pub/sub connection");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn client_ids(c: &mut redis::aio::MultiplexedConnection, filter: &[&str]) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg(filter)
        .query_async(c)
        .await
        .unwrap();
    list.lines()
        .filter_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

fn meta(id: &str, status: TaskState, result: Value) -> TaskMeta {
    let mut m = TaskMeta::pending(id);
    m.status = status;
    m.result = result;
    if status.is_ready() {
        // Microseconds, as Python's isoformat() keeps them.
        let now = chrono::Utc::now();
        m.date_done = chrono::DateTime::from_timestamp_micros(now.timestamp_micros());
    }
    m
}

fn failure(id: &str) -> TaskMeta {
    let mut m = meta(
        id,
        TaskState::Failure,
        ExceptionInfo::new("ValueError", "boom").to_value(),
    );
    m.traceback = Some("Traceback (most recent call last):\n  ...\nValueError: boom\n".into());
    m
}

fn vector(prefix: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/celery-vectors");
    let file = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("Celery wire vectors not found at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".json"))
        })
        .unwrap_or_else(|| panic!("no vector {prefix}_*.json in {}", dir.display()));
    serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap()
}

/// `(key, raw)` of every stored `celery-task-meta-*` entry under `v`.
fn stored_metas(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, item) in m {
                if k.starts_with("celery-task-meta-") {
                    if let Some(raw) = item.get("raw").and_then(Value::as_str) {
                        out.push((k.clone(), raw.to_string()));
                        continue;
                    }
                }
                stored_metas(item, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| stored_metas(i, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stored_bytes_are_celery_meta_json_with_ttl() {
    require_redis!(url);
    let prefix = unique_prefix();
    let b = open(&with_prefix(&url, &prefix)).await;
    let mut raw = raw_conn(&url).await;

    let mut m = meta(
        &uid(),
        TaskState::Success,
        json!({"a": 1, "b": [1, 2.5, null]}),
    );
    m.group_id = Some(uid());
    m.parent_id = Some(uid());
    b.store(&m, Some(Duration::from_secs(3600))).await.unwrap();
    let key = format!("{prefix}_celery-task-meta-{}", m.task_id);
    assert_eq!(
        raw_get(&mut raw, &key).await.as_deref(),
        Some(&*m.to_json())
    );
    let ttl = raw_ttl(&mut raw, &key).await;
    assert!((3595..=3600).contains(&ttl), "ttl {ttl}");

    let f = failure(&uid());
    b.store(&f, Some(Duration::from_secs(86400))).await.unwrap();
    let key = format!("{prefix}_celery-task-meta-{}", f.task_id);
    let stored = raw_get(&mut raw, &key).await.unwrap();
    assert_eq!(stored, f.to_json());
    assert!(stored.contains(
        r#""result": {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}"#
    ));
    assert!((86395..=86400).contains(&raw_ttl(&mut raw, &key).await));
    assert_eq!(b.get(&f.task_id).await.unwrap().unwrap(), f);
}

#[tokio::test]
async fn no_expiry_means_no_ttl() {
    require_redis!(url);
    let prefix = unique_prefix();
    let b = open(&with_prefix(&url, &prefix)).await;
    let mut raw = raw_conn(&url).await;
    for expires in [None, Some(Duration::ZERO)] {
        let m = meta(&uid(), TaskState::Success, json!(1));
        b.store(&m, expires).await.unwrap();
        let key = format!("{prefix}_celery-task-meta-{}", m.task_id);
        assert_eq!(raw_get(&mut raw, &key).await.unwrap(), m.to_json());
        assert_eq!(raw_ttl(&mut raw, &key).await, -1, "{expires:?}");
        b.forget(&m.task_id).await.unwrap();
    }
}

#[tokio::test]
async fn every_write_is_published_on_the_key_name() {
    require_redis!(url);
    let prefix = format!("{}:", unique_prefix());
    let b = open(&with_prefix(&url, &prefix)).await;
    let id = uid();
    let channel = format!("{prefix}celery-task-meta-{id}");
    let mut ps = subscriber(&url, &channel).await;

    let started = meta(
        &id,
        TaskState::Started,
        json!({"pid": 7, "hostname": "w@h"}),
    );
    b.store(&started, None).await.unwrap();
    let done = meta(&id, TaskState::Success, json!("ok"));
    b.store(&done, Some(Duration::from_secs(60))).await.unwrap();
    let first = next_message(&mut ps, Duration::from_secs(5)).await.unwrap();
    let second = next_message(&mut ps, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first, (channel.clone(), started.to_json()));
    assert_eq!(second, (channel.clone(), done.to_json()));
    b.forget(&id).await.unwrap();
}

#[tokio::test]
async fn success_is_never_overwritten() {
    require_redis!(url);
    let prefix = unique_prefix();
    let b = open(&with_prefix(&url, &prefix)).await;
    let mut raw = raw_conn(&url).await;
    let id = uid();
    let key = format!("{prefix}_celery-task-meta-{id}");

    // Non-ready states and failures do get replaced.
    b.store(&meta(&id, TaskState::Started, json!({})), None)
        .await
        .unwrap();
    let mut retry = failure(&id);
    retry.status = TaskState::Retry;
    retry.date_done = None;
    b.store(&retry, None).await.unwrap();
    assert_eq!(b.get(&id).await.unwrap().unwrap().status, TaskState::Retry);
    let done = meta(&id, TaskState::Success, json!({"status": "FAILURE"}));
    b.store(&done, Some(Duration::from_secs(60))).await.unwrap();

    let mut ps = subscriber(&url, &key).await;
    for late in [
        failure(&id),
        retry.clone(),
        meta(&id, TaskState::Revoked, json!(null)),
        meta(&id, TaskState::Success, json!("duplicate")),
    ] {
        b.store(&late, None).await.unwrap();
    }
    assert_eq!(raw_get(&mut raw, &key).await.unwrap(), done.to_json());
    assert_eq!(b.get(&id).await.unwrap().unwrap(), done);
    assert!(
        (50..=60).contains(&raw_ttl(&mut raw, &key).await),
        "TTL of the kept SUCCESS is untouched"
    );
    assert_eq!(
        next_message(&mut ps, Duration::from_millis(200)).await,
        None,
        "a skipped write is not published"
    );

    // A result whose *value* mentions "SUCCESS" does not count as a success.
    let other = uid();
    let mut tricky = failure(&other);
    tricky.result = ExceptionInfo::new("ValueError", "SUCCESS").to_value();
    b.store(&tricky, None).await.unwrap();
    b.store(&meta(&other, TaskState::Success, json!(2)), None)
        .await
        .unwrap();
    assert_eq!(
        b.get(&other).await.unwrap().unwrap().status,
        TaskState::Success
    );
}

#[tokio::test]
async fn get_missing_is_none_and_forget_deletes() {
    require_redis!(url);
    let b = open(&url).await;
    let id = uid();
    assert_eq!(b.get(&id).await.unwrap(), None);
    b.store(&meta(&id, TaskState::Success, json!(5)), None)
        .await
        .unwrap();
    assert!(b.get(&id).await.unwrap().is_some());
    b.forget(&id).await.unwrap();
    assert_eq!(b.get(&id).await.unwrap(), None);
    let mut raw = raw_conn(&url).await;
    assert_eq!(
        raw_get(&mut raw, &format!("celery-task-meta-{id}")).await,
        None
    );
    b.forget(&id).await.unwrap();
}

#[tokio::test]
async fn undecodable_meta_is_a_protocol_error_naming_the_key() {
    require_redis!(url);
    let b = open(&url).await;
    let mut raw = raw_conn(&url).await;
    let id = uid();
    let key = format!("celery-task-meta-{id}");
    for bad in ["not json", "{\"result\": 1}", "[1, 2]"] {
        raw_set(&mut raw, &key, bad).await;
        let e = b.get(&id).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{bad}");
        assert!(e.to_string().contains(&key), "{e}");
    }
    b.forget(&id).await.unwrap();
}

#[tokio::test]
async fn reads_metas_written_by_python_celery() {
    require_redis!(url);
    let prefix = unique_prefix();
    let b = open(&with_prefix(&url, &prefix)).await;
    let mut raw = raw_conn(&url).await;
    let mut found = Vec::new();
    for v in ["14", "15", "16", "17", "18"] {
        stored_metas(&vector(v), &mut found);
    }
    assert!(found.len() >= 5, "expected metas in vectors 14-18");
    for (key, text) in &found {
        let id = key.strip_prefix("celery-task-meta-").unwrap();
        raw_set(&mut raw, &format!("{prefix}_{key}"), text).await;
        let m = b
            .get(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(m.task_id, id);
        let decoded: Value = serde_json::from_str(text).unwrap();
        assert_eq!(m.status.as_str(), decoded["status"].as_str().unwrap());
        assert_eq!(m.result, decoded["result"], "{key}");
        // What celeriac would write back is the very text Python wrote.
        assert_eq!(&m.to_json(), text, "{key}");
    }
    let failed = found
        .iter()
        .find(|(_, t)| t.contains("\"FAILURE\""))
        .expect("a FAILURE meta in vector 15");
    let id = failed.0.strip_prefix("celery-task-meta-").unwrap();
    let m = b.get(id).await.unwrap().unwrap();
    let exc = m.exception().unwrap();
    assert_eq!(
        (exc.exc_type.as_str(), exc.exc_module.as_str()),
        ("ValueError", "builtins")
    );
    assert_eq!(exc.exc_message, vec![json!("boom")]);
    assert!(m.traceback.unwrap().ends_with("ValueError: boom\n"));
}

#[tokio::test]
async fn extended_meta_round_trips() {
    require_redis!(url);
    let b = open(&url).await;
    let mut m = meta(&uid(), TaskState::Success, json!(3));
    m.extended = Some(ExtendedMeta {
        name: "tasks.add".into(),
        args: vec![json!(1), json!(2)],
        kwargs: serde_json::Map::new(),
        worker: "w2@capture".into(),
        retries: 0,
        queue: "celery".into(),
    });
    b.store(&m, Some(Duration::from_secs(60))).await.unwrap();
    let mut raw = raw_conn(&url).await;
    let text = raw_get(&mut raw, &format!("celery-task-meta-{}", m.task_id))
        .await
        .unwrap();
    assert!(text.contains(r#""name": "tasks.add", "args": [1, 2], "kwargs": {}, "worker": "w2@capture", "retries": 0, "queue": "celery", "task_id": "#));
    assert_eq!(b.get(&m.task_id).await.unwrap().unwrap(), m);
    b.forget(&m.task_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_wakes_when_another_connection_stores_the_result() {
    require_redis!(url);
    let waiter = open(&url).await;
    let writer = open(&url).await;
    let id = uid();
    let task = {
        let (waiter, id) = (waiter.clone(), id.clone());
        tokio::spawn(async move { waiter.wait(&id, Duration::from_secs(20)).await })
    };
    let mut raw = raw_conn(&url).await;
    until_subscribed(&mut raw, &format!("celery-task-meta-{id}"), 1).await;
    assert!(!task.is_finished());
    writer
        .store(&meta(&id, TaskState::Started, json!({})), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "STARTED is not ready");
    let stored_at = Instant::now();
    let done = meta(&id, TaskState::Success, json!(42));
    writer
        .store(&done, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let got = task.await.unwrap().unwrap().unwrap();
    assert!(
        stored_at.elapsed() < Duration::from_millis(500),
        "woke after {:?}",
        stored_at.elapsed()
    );
    assert_eq!(got, done);
    writer.forget(&id).await.unwrap();
}

#[tokio::test]
async fn wait_returns_the_current_meta_at_the_deadline() {
    require_redis!(url);
    let b = open(&url).await;
    let id = uid();
    let t0 = Instant::now();
    assert_eq!(b.wait(&id, Duration::from_millis(300)).await.unwrap(), None);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    let started = meta(&id, TaskState::Started, json!({"pid": 1, "hostname": "h"}));
    b.store(&started, None).await.unwrap();
    let t0 = Instant::now();
    let got = b.wait(&id, Duration::from_millis(300)).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(got, Some(started.clone()));
    assert_eq!(b.wait(&id, Duration::ZERO).await.unwrap(), Some(started));
    b.forget(&id).await.unwrap();
}

#[tokio::test]
async fn wait_sees_a_result_stored_before_it_subscribed() {
    require_redis!(url);
    let b = open(&url).await;
    let id = uid();
    let f = failure(&id);
    b.store(&f, Some(Duration::from_secs(60))).await.unwrap();
    let t0 = Instant::now();
    let got = b.wait(&id, Duration::from_secs(10)).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(got, Some(f));
    b.forget(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiters_share_one_pubsub_connection_and_unsubscribe() {
    require_redis!(url);
    let prefix = unique_prefix();
    let b = open(&with_prefix(&url, &prefix)).await;
    let writer = open(&with_prefix(&url, &prefix)).await;
    let ids: Vec<String> = (0..30).map(|_| uid()).collect();
    let mut tasks = Vec::new();
    // Three waiters per task id, thirty ids.
    for id in ids.iter().flat_map(|id| [id, id, id]) {
        let (b, id) = (b.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            b.wait(&id, Duration::from_secs(20)).await
        }));
    }
    let mut raw = raw_conn(&url).await;
    let channels: Vec<String> = ids
        .iter()
        .map(|id| format!("{prefix}_celery-task-meta-{id}"))
        .collect();
    for channel in &channels {
        until_subscribed(&mut raw, channel, 1).await;
    }
    let listed: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(format!("{prefix}_celery-task-meta-*"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(listed.len(), ids.len(), "one channel per task id");
    let numsub: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(&channels)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        numsub.iter().all(|(_, n)| *n == 1),
        "one subscription per channel: {numsub:?}"
    );
    let t0 = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        writer
            .store(&meta(id, TaskState::Success, json!(i)), None)
            .await
            .unwrap();
    }
    for (n, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap().unwrap().unwrap();
        assert_eq!(got.result, json!(n / 3));
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Every channel is unsubscribed once its waiters are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(format!("{prefix}_celery-task-meta-*"))
            .query_async(&mut raw)
            .await
            .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still subscribed: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        b.forget(id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_survives_a_killed_pubsub_connection() {
    let Some(url) = redis_url() else { return };
    let _alone = EXCLUSIVE.write().await;
    let b = open(&url).await;
    let mut raw = raw_conn(&url).await;
    let before = pubsub_client_ids(&mut raw).await;
    let id = uid();
    let task = {
        let (b, id) = (b.clone(), id.clone());
        tokio::spawn(async move { b.wait(&id, Duration::from_secs(20)).await })
    };
    until_subscribed(&mut raw, &format!("celery-task-meta-{id}"), 1).await;
    let new = new_pubsub_clients(&mut raw, &before).await;
    assert_eq!(new.len(), 1, "the waiter's pub/sub connection: {new:?}");
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&new[0])
        .query_async(&mut raw)
        .await
        .unwrap();
    // Stored while the waiter may be re-subscribing: the GET after re-subscribing covers it.
    let done = meta(&id, TaskState::Success, json!("after reconnect"));
    b.store(&done, Some(Duration::from_secs(60))).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("waiter woke after reconnecting")
        .unwrap()
        .unwrap();
    assert_eq!(got, Some(done));
    b.forget(&id).await.unwrap();
}

#[tokio::test]
async fn group_save_restore_is_byte_compatible_with_python() {
    require_redis!(url);
    let prefix = unique_prefix();
    let b = open(&with_prefix(&url, &prefix)).await;
    let mut raw = raw_conn(&url).await;

    let v = vector("12");
    let saved = v["saved_group_result"].as_object().unwrap();
    let (py_key, entry) = saved.iter().next().unwrap();
    let py_raw = entry["raw"].as_str().unwrap();
    let gid = py_key.strip_prefix("celery-taskset-meta-").unwrap();
    let children: Vec<String> = entry["decoded"]["result"][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(children.len(), 3);

    let key = format!("{prefix}_{py_key}");
    let mut ps = subscriber(&url, &key).await;
    b.save_group(gid, &children, Some(Duration::from_secs(86400)))
        .await
        .unwrap();
    let stored = raw_get(&mut raw, &key).await.unwrap();
    assert_eq!(stored, py_raw);
    assert_eq!(
        stored,
        to_python_json(&serde_json::from_str::<Value>(py_raw).unwrap())
    );
    assert!((86395..=86400).contains(&raw_ttl(&mut raw, &key).await));
    assert_eq!(
        next_message(&mut ps, Duration::from_secs(5)).await,
        Some((key.clone(), py_raw.to_string())),
        "saved like Celery's set(): SETEX + PUBLISH"
    );
    assert_eq!(b.restore_group(gid).await.unwrap(), Some(children.clone()));

    // Written by Python (same text), read by celeriac; and a missing group.
    let other = uid();
    let other_key = format!("{prefix}_celery-taskset-meta-{other}");
    raw_set(&mut raw, &other_key, &py_raw.replace(gid, &other)).await;
    assert_eq!(b.restore_group(&other).await.unwrap(), Some(children));
    assert_eq!(b.restore_group(&uid()).await.unwrap(), None);

    // No TTL when no expiry.
    b.save_group(&other, &[], None).await.unwrap();
    assert_eq!(raw_ttl(&mut raw, &other_key).await, -1);
    assert_eq!(
        raw_get(&mut raw, &other_key).await.unwrap(),
        format!("{{\"result\": [[\"{other}\", null], []]}}")
    );
    assert_eq!(b.restore_group(&other).await.unwrap(), Some(vec![]));

    raw_set(&mut raw, &other_key, "{\"result\": 5}").await;
    let e = b.restore_group(&other).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Protocol);
    assert!(e.to_string().contains(&other_key), "{e}");
}

#[tokio::test]
async fn global_keyprefix_follows_celerys_backend_rule() {
    require_redis!(url);
    let mut raw = raw_conn(&url).await;
    let base = unique_prefix();
    for (given, used) in [
        (base.clone(), format!("{base}_")),
        (format!("{base}:"), format!("{base}:")),
        (format!("{base}-"), format!("{base}-")),
        (format!("{base}."), format!("{base}.")),
        (format!("{base}_"), format!("{base}_")),
    ] {
        let b = open(&with_prefix(&url, &given)).await;
        let m = meta(&uid(), TaskState::Success, json!(1));
        b.store(&m, Some(Duration::from_secs(60))).await.unwrap();
        let key = format!("{used}celery-task-meta-{}", m.task_id);
        assert_eq!(
            raw_get(&mut raw, &key).await.as_deref(),
            Some(&*m.to_json()),
            "{given}"
        );
        b.save_group(&m.task_id, std::slice::from_ref(&m.task_id), None)
            .await
            .unwrap();
        let gkey = format!("{used}celery-taskset-meta-{}", m.task_id);
        assert!(raw_get(&mut raw, &gkey).await.is_some(), "{gkey}");
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .arg(&gkey)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn unreachable_server_is_named_without_the_password() {
    // Needs no Redis: port 1 refuses connections.
    let t0 = Instant::now();
    let e = RedisBackend::open("redis://:hunter2@127.0.0.1:1/3")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    let text = e.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    let e = RedisBackend::open("redis://:hunter2@127.0.0.1:1/x")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(!e.to_string().contains("hunter2"));
}

#[tokio::test]
async fn display_url_hides_the_password() {
    require_redis!(url);
    let b = open(&url).await;
    assert!(b.display_url().starts_with("redis"));
    assert!(!b.display_url().contains('@') || b.display_url().contains("***"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_backend_closes_its_pubsub_connection() {
    let Some(url) = redis_url() else { return };
    let _alone = EXCLUSIVE.write().await;
    let mut raw = raw_conn(&url).await;
    let before = pubsub_client_ids(&mut raw).await;
    let b = open(&url).await;
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.wait(&uid(), Duration::from_millis(400)).await })
    };
    let new = new_pubsub_clients(&mut raw, &before).await;
    assert_eq!(new.len(), 1, "one pub/sub connection: {new:?}");
    assert_eq!(waiting.await.unwrap().unwrap(), None);
    assert!(
        all_client_ids(&mut raw).await.contains(&new[0]),
        "kept open for later waits"
    );
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while all_client_ids(&mut raw).await.contains(&new[0]) {
        assert!(Instant::now() < deadline, "pub/sub connection left open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
