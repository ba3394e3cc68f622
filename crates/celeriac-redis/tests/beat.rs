//! Beat's lease and last runs on a real server (`CELERIAC_TEST_REDIS_URL`, e.g.
//! `redis://127.0.0.1:6379/0`): the key layout of `keys.rs`, and that a broker and a result
//! backend opened on one URL share one lease. The generic `BeatStore` contract is checked by
//! celeriac-testkit's beat suite. The test uses its own `global_keyprefix` and deletes its
//! keys at the end; without the variable it prints why it is skipped and passes.

use celeriac_core::backend::ResultBackend;
use celeriac_core::beat::LastRun;
use celeriac_core::broker::Broker;
use celeriac_core::time::from_millis;
use celeriac_redis::{RedisBackend, RedisBroker};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use std::time::Duration;

const VAR: &str = "CELERIAC_TEST_REDIS_URL";

async fn cmd<T: redis::FromRedisValue>(c: &MultiplexedConnection, cmd: &mut redis::Cmd) -> T {
    cmd.query_async(&mut c.clone()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_backend_share_one_lease_in_the_documented_keys() {
    let Some(base) = std::env::var(VAR).ok().filter(|u| !u.trim().is_empty()) else {
        println!("skipped: {VAR} not set");
        return;
    };
    // No trailing separator: the backend's own keys would get `_` appended, beat's must not.
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}global_keyprefix={prefix}");
    let plain = redis::Client::open(base.split('?').next().unwrap())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let broker = RedisBroker::open(&url).await.expect("open broker");
    let backend = RedisBackend::open(&url).await.expect("open backend");
    let (b, r) = (
        broker.beat_store().expect("the broker has a beat store"),
        ResultBackend::beat_store(&*backend).expect("the backend has a beat store"),
    );
    let (holder, ttl) = ("beat@host:1", Duration::from_secs(10));
    let token = b.acquire_lease("default", holder, ttl).await.unwrap();
    let token = token.expect("a free lease");
    let lease = format!("{prefix}celeriac.beat.default.lease");
    let value: Option<String> = cmd(&plain, redis::cmd("GET").arg(&lease)).await;
    assert_eq!(value, Some(format!("{token}:{holder}")));
    let pttl: i64 = cmd(&plain, redis::cmd("PTTL").arg(&lease)).await;
    assert!((1..=10_000).contains(&pttl), "PX is the TTL: {pttl}");
    let counter: String = cmd(
        &plain,
        redis::cmd("GET").arg(format!("{prefix}celeriac.beat.default.token")),
    )
    .await;
    assert_eq!(counter, token.to_string());

    assert_eq!(
        r.acquire_lease("default", "other", ttl).await.unwrap(),
        None
    );
    let seen = r.lease_holder("default").await.unwrap().expect("held");
    assert_eq!((seen.holder.as_str(), seen.token), (holder, token));
    let run = LastRun {
        entry: "tick".into(),
        schedule: "<freq: 10.00 seconds>".into(),
        at: from_millis(1_767_225_600_123),
        total_run_count: 3,
    };
    let recorded = r
        .record_runs("default", holder, token, std::slice::from_ref(&run))
        .await;
    assert!(recorded.unwrap());
    let runs = format!("{prefix}celeriac.beat.default.runs");
    let stored: String = cmd(&plain, redis::cmd("HGET").arg(&runs).arg("tick")).await;
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(
        stored,
        json!({"schedule": "<freq: 10.00 seconds>", "at": 1_767_225_600_123_i64, "n": 3})
    );
    assert_eq!(b.last_runs("default").await.unwrap(), [run]);

    b.release_lease("default", holder, token).await.unwrap();
    let value: Option<String> = cmd(&plain, redis::cmd("GET").arg(&lease)).await;
    assert_eq!(value, None, "released");
    let keys: Vec<String> = cmd(&plain, redis::cmd("KEYS").arg(format!("{prefix}*"))).await;
    let mut names: Vec<_> = keys
        .iter()
        .map(|k| k.strip_prefix(&prefix).unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["celeriac.beat.default.runs", "celeriac.beat.default.token"],
        "the token counter outlives the lease"
    );
    let _: () = cmd(&plain, redis::cmd("DEL").arg(&keys)).await;
}

/// The broker's beat store sends on its named command connection; when that connection is
/// killed, the next call reconnects and carries on (a renewal keeps its token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_beat_store_survives_a_killed_connection() {
    let Some(base) = std::env::var(VAR).ok().filter(|u| !u.trim().is_empty()) else {
        println!("skipped: {VAR} not set");
        return;
    };
    let prefix = format!("t-{}:", uuid::Uuid::new_v4().simple());
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}global_keyprefix={prefix}");
    let plain = redis::Client::open(base.split('?').next().unwrap())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let broker = RedisBroker::open(&url).await.expect("open broker");
    let store = broker.beat_store().expect("the broker has a beat store");
    let ttl = Duration::from_secs(10);
    let token = store.acquire_lease("default", "a", ttl).await.unwrap();
    let name = format!("{}-cmd", broker.client_name());
    let clients: String = cmd(&plain, redis::cmd("CLIENT").arg("LIST")).await;
    let id = clients
        .lines()
        .find(|l| l.split(' ').any(|f| f == format!("name={name}")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("no connection named {name}: beat used another one"))
        .to_string();
    let killed: i64 = cmd(&plain, redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&id)).await;
    assert_eq!(killed, 1);
    let renewed = store.acquire_lease("default", "a", ttl).await;
    assert_eq!(renewed.expect("retried on a new connection"), token);
    let keys: Vec<String> = cmd(&plain, redis::cmd("KEYS").arg(format!("{prefix}*"))).await;
    let _: () = cmd(&plain, redis::cmd("DEL").arg(&keys)).await;
}
