//! A result is never lost to a broken connection: a celeriac worker process drains late-ack
//! tasks while every Redis connection of the test's database is killed (`CLIENT KILL`)
//! again and again, and every task ends with its result stored: sent = results stored.
//! Once on Redis (broker and results), once on RabbitMQ with Redis results (only the result
//! connections are cut).
//!
//! Needs `CELERIAC_TEST_REDIS_URL` (and `CELERIAC_TEST_AMQP_URL` for the second test);
//! skipped with a message when unset. Each test uses its own Redis database, flushed first.

mod common;

use std::time::{Duration, Instant};

use celeriac::serde_json;
use celeriac::{AsyncResult, Call};
use celeriac_testkit::rabbitmq::TestVhost;
use common::*;

const TASKS: usize = 4000;
const KILLS: usize = 6;

fn redis_conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .expect("redis url")
        .get_connection()
        .unwrap_or_else(|e| panic!("Redis at {url} is down: {e}"))
}

/// Kills every client connected to database `db` except the caller; returns how many.
fn kill_clients_of_db(conn: &mut redis::Connection, db: u8) -> usize {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(conn).unwrap();
    let me: i64 = redis::cmd("CLIENT").arg("ID").query(conn).unwrap();
    let mut killed = 0;
    for line in list.lines() {
        let field = |name: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        let (Some(id), Some(client_db)) = (field("id"), field("db")) else {
            continue;
        };
        if client_db != db.to_string() || id == me.to_string() {
            continue;
        }
        let n: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(&id)
            .query(conn)
            .unwrap_or(0);
        killed += n as usize;
    }
    killed
}

fn stored_results(conn: &mut redis::Connection) -> usize {
    let mut cursor = 0u64;
    let mut n = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("celery-task-meta-*")
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .unwrap();
        n += keys.len();
        if next == 0 {
            return n;
        }
        cursor = next;
    }
}

/// The client's own connections were killed too: its first read may meet a dead one.
async fn get_through_reconnect(r: &AsyncResult<serde_json::Value>) -> serde_json::Value {
    let mut tries = 0;
    loop {
        match r.get(WAIT).await {
            Ok(v) => return v,
            Err(celeriac::ResultError::Backend(e)) if tries < 3 => {
                eprintln!("reading {} again after: {e}", r.id());
                tries += 1;
            }
            Err(e) => panic!("task {}: {e}", r.id()),
        }
    }
}

/// Sends the tasks, kills the database's connections `KILLS` times while results come in
/// (each time after more results were stored), then waits until every result is stored.
async fn drain_through_kills(e: &Env, results_db_url: &str, db: u8, broker_options: &str) {
    let worker = rust_worker(e, "celery", broker_options);
    let app = rust_client(e);
    let calls: Vec<Call> = (0..TASKS)
        .map(|_| celeriac_demo::sleep::s(0.01).into_call())
        .collect();
    let sent: Vec<AsyncResult<_>> = app.send_batch(calls).await.expect("send");
    let mut admin = redis_conn(results_db_url);
    let deadline = Instant::now() + Duration::from_secs(240);
    let step = TASKS / (KILLS + 2);
    let mut kills = 0;
    while kills < KILLS {
        let target = step * (kills + 1);
        while stored_results(&mut admin) < target {
            assert!(Instant::now() < deadline, "stuck below {target} results");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let killed = kill_clients_of_db(&mut admin, db);
        assert!(killed > 0, "no connection of db {db} to kill");
        kills += 1;
    }
    while stored_results(&mut admin) < TASKS {
        assert!(
            Instant::now() < deadline,
            "only {} of {TASKS} results stored: results were lost",
            stored_results(&mut admin)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in &sent {
        assert_eq!(get_through_reconnect(r).await, serde_json::json!(0.01));
    }
    let log = worker.stop();
    assert!(
        log.iter().any(|l| l.contains("could not store")),
        "the kills never hit a result store: the test proved nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_result_is_lost_when_redis_connections_are_killed() {
    let db = 2;
    let Some(url) = redis_db("redis-kills", db) else {
        return;
    };
    let e = Env {
        broker: url.clone(),
        backend: url.clone(),
    };
    // A fetch whose reply dies with its connection leaves its message in kombu's `unacked`
    // until the visibility timeout restores it (kombu's design, on Python as here): kept
    // short so the test does not wait an hour for such a message.
    drain_through_kills(&e, &url, db, "?visibility_timeout=4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_result_is_lost_when_result_connections_are_killed_on_rabbitmq() {
    let db = 3;
    let Some(url) = redis_db("amqp-redis-kills", db) else {
        return;
    };
    let Ok(amqp) = std::env::var("CELERIAC_TEST_AMQP_URL") else {
        eprintln!("skipped amqp-redis-kills: CELERIAC_TEST_AMQP_URL not set");
        return;
    };
    let name = format!("celeriac-result-kills-{}", std::process::id());
    let vhost = TestVhost::create(&amqp, &name)
        .unwrap_or_else(|| panic!("rabbitmqctl could not create vhost {name}"));
    let e = Env {
        broker: vhost.url.clone(),
        backend: url.clone(),
    };
    drain_through_kills(&e, &url, db, "").await;
}
