mod common;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac_core::broker::{Broker, Publish, QueueLength, Signal};
use celeriac_core::error::ErrorKind;
use celeriac_sqlite::SqliteStore;
use common::*;

const NO_WAIT: Duration = Duration::ZERO;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fetch_ack() {
    let db = db();
    let s = &db.store;
    s.declare_queue("celery").await.unwrap();
    s.publish(publish("celery", "a", 0)).await.unwrap();
    let c = consumer(s, &["celery"]).await;
    let got = c.fetch(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(ids(&got), ["a"]);
    assert!(!got[0].redelivered);
    assert_eq!(got[0].queue, "celery");
    assert_eq!(got[0].message, msg("a"));
    assert!(
        c.fetch(10, NO_WAIT).await.unwrap().is_empty(),
        "leased message is not delivered twice"
    );
    let stats = s
        .queue_stats()
        .unwrap()
        .queue_lengths(&["celery".into()])
        .await
        .unwrap();
    assert_eq!(stats[0].unacked, 1);
    c.ack(&[got[0].tag.clone()]).await.unwrap();
    let stats = s
        .queue_stats()
        .unwrap()
        .queue_lengths(&["celery".into()])
        .await
        .unwrap();
    assert_eq!(
        stats[0],
        QueueLength {
            queue: "celery".into(),
            ready: 0,
            scheduled: 0,
            unacked: 0
        }
    );
    c.close().await.unwrap();
    c.close().await.unwrap();
    assert_eq!(
        c.fetch(1, NO_WAIT).await.unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_then_fifo() {
    let db = db();
    let s = &db.store;
    let batch = vec![
        publish("q", "low1", 0),
        publish("q", "high1", 9),
        publish("q", "mid", 5),
        publish("q", "low2", 0),
        publish("q", "high2", 9),
    ];
    s.publish_batch(batch).await.unwrap();
    s.publish(publish("q", "low3", 0)).await.unwrap();
    let c = consumer(s, &["q"]).await;
    let got = c.fetch(3, NO_WAIT).await.unwrap();
    assert_eq!(ids(&got), ["high1", "high2", "mid"]);
    let got = c.fetch(10, NO_WAIT).await.unwrap();
    assert_eq!(ids(&got), ["low1", "low2", "low3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_in_the_order_given() {
    let db = db();
    let s = &db.store;
    s.publish(publish("b", "b1", 0)).await.unwrap();
    s.publish(publish("a", "a1", 0)).await.unwrap();
    s.publish(publish("other", "o1", 0)).await.unwrap();
    let c = consumer(s, &["a", "b"]).await;
    let got = c.fetch(10, NO_WAIT).await.unwrap();
    assert_eq!(ids(&got), ["a1", "b1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_message_waits_for_its_time() {
    let db = db();
    let s = &db.store;
    let mut p = publish("q", "later", 0);
    p.not_before = Some(chrono::Utc::now() + chrono::Duration::milliseconds(400));
    s.publish(p).await.unwrap();
    let mut far = publish("q", "tomorrow", 0);
    far.not_before = Some(chrono::Utc::now() + chrono::Duration::days(1));
    s.publish(far).await.unwrap();
    let mut past = publish("q", "past", 0);
    past.not_before = Some(chrono::Utc::now() - chrono::Duration::seconds(5));
    s.publish(past).await.unwrap();

    let stats = s.queue_stats().unwrap().queue_lengths(&[]).await.unwrap();
    assert_eq!(
        stats,
        [QueueLength {
            queue: "q".into(),
            ready: 1,
            scheduled: 2,
            unacked: 0
        }]
    );

    let c = consumer(s, &["q"]).await;
    assert_eq!(ids(&c.fetch(10, NO_WAIT).await.unwrap()), ["past"]);
    assert!(c
        .fetch(10, Duration::from_millis(100))
        .await
        .unwrap()
        .is_empty());
    // Waiting longer than the due time wakes at the due time without any publish.
    let start = Instant::now();
    let got = c.fetch(10, Duration::from_secs(3)).await.unwrap();
    assert_eq!(ids(&got), ["later"]);
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
    assert!(
        c.fetch(10, NO_WAIT).await.unwrap().is_empty(),
        "tomorrow's message stays scheduled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_lease_is_redelivered() {
    let db = db_with(short_lease(300));
    let s = &db.store;
    s.publish(publish("q", "a", 0)).await.unwrap();
    let dead = consumer(s, &["q"]).await;
    let got = dead.fetch(1, NO_WAIT).await.unwrap();
    assert_eq!(ids(&got), ["a"]);
    // The "dead" worker never keeps alive nor acks.
    let other = consumer(s, &["q"]).await;
    assert!(other.fetch(1, NO_WAIT).await.unwrap().is_empty());
    let start = Instant::now();
    let again = other.fetch(1, Duration::from_secs(3)).await.unwrap();
    assert_eq!(ids(&again), ["a"]);
    assert!(again[0].redelivered);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    // The first holder's late ack must not remove the message now held by another.
    dead.ack(&[got[0].tag.clone()]).await.unwrap();
    let lengths = s.queue_stats().unwrap();
    assert_eq!(
        lengths.queue_lengths(&["q".into()]).await.unwrap()[0].unacked,
        1
    );
    other.ack(&[again[0].tag.clone()]).await.unwrap();
    assert_eq!(
        lengths.queue_lengths(&["q".into()]).await.unwrap()[0].unacked,
        0
    );
    std::mem::forget(dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_prevents_redelivery() {
    let db = db_with(short_lease(300));
    let s = &db.store;
    s.publish(publish("q", "long", 0)).await.unwrap();
    let worker = Arc::new(consumer(s, &["q"]).await);
    assert_eq!(worker.keepalive_interval(), Duration::from_millis(100));
    let got = worker.fetch(1, NO_WAIT).await.unwrap();
    let w = worker.clone();
    let keep = tokio::spawn(async move {
        loop {
            tokio::time::sleep(w.keepalive_interval()).await;
            w.keepalive().await.unwrap();
        }
    });
    let other = consumer(s, &["q"]).await;
    // The task "runs" for 5 lease lengths: nobody else gets it.
    assert!(other
        .fetch(1, Duration::from_millis(1500))
        .await
        .unwrap()
        .is_empty());
    worker.ack(&[got[0].tag.clone()]).await.unwrap();
    keep.abort();
    assert!(other
        .fetch(1, Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_never_share_a_message() {
    let db = db();
    let s = &db.store;
    let all: Vec<Publish> = (0..1000)
        .map(|i| publish("q", &format!("m{i}"), (i % 10) as u8))
        .collect();
    s.publish_batch(all).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let c = consumer(s, &["q"]).await;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let got = c.fetch(7, Duration::from_millis(50)).await.unwrap();
                if got.is_empty() {
                    break;
                }
                c.ack(&got.iter().map(|d| d.tag.clone()).collect::<Vec<_>>())
                    .await
                    .unwrap();
                seen.extend(ids(&got));
            }
            seen
        }));
    }
    let mut total = Vec::new();
    let mut per = Vec::new();
    for t in tasks {
        let seen = t.await.unwrap();
        per.push(seen.len());
        total.extend(seen);
    }
    let unique: HashSet<_> = total.iter().collect();
    assert_eq!(total.len(), 1000, "per consumer {per:?}");
    assert_eq!(unique.len(), 1000);
    assert!(
        per.iter().all(|&n| n > 0),
        "both consumers got work: {per:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_share_messages_and_wake_promptly() {
    let db = db();
    let producer = db.reopen();
    let c = consumer(&db.store, &["q"]).await;
    // Prime: a wait with nothing there.
    assert!(c
        .fetch(1, Duration::from_millis(20))
        .await
        .unwrap()
        .is_empty());
    let mut latencies = Vec::new();
    for i in 0..20 {
        let p = producer.clone();
        let id = format!("x{i}");
        let sent = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let t = Instant::now();
            p.publish(publish("q", &id, 0)).await.unwrap();
            t
        });
        let got = c.fetch(1, Duration::from_secs(3)).await.unwrap();
        let received = Instant::now();
        let sent = sent.await.unwrap();
        assert_eq!(ids(&got), [format!("x{i}")]);
        latencies.push(received.saturating_duration_since(sent));
        c.ack(&[got[0].tag.clone()]).await.unwrap();
    }
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    println!("cross-store publish -> fetch latency p50 {p50:?}, all {latencies:?}");
    assert!(
        p50 < Duration::from_millis(10),
        "p50 cross-store wake latency {p50:?} ({latencies:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_publish_wakes_fetch() {
    let db = db();
    let s = db.store.clone();
    let c = consumer(&s, &["q"]).await;
    let p = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.publish(publish("q", "late", 0)).await.unwrap();
    });
    let start = Instant::now();
    let got = c.fetch(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ids(&got), ["late"]);
    assert!(start.elapsed() < Duration::from_millis(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_and_close_give_messages_back() {
    let db = db();
    let s = &db.store;
    s.publish_batch(vec![
        publish("q", "a", 0),
        publish("q", "b", 0),
        publish("q", "c", 0),
    ])
    .await
    .unwrap();
    let c = consumer(s, &["q"]).await;
    let got = c.fetch(3, NO_WAIT).await.unwrap();
    c.requeue(&[got[0].tag.clone()]).await.unwrap();
    let other = consumer(s, &["q"]).await;
    let again = other.fetch(3, NO_WAIT).await.unwrap();
    assert_eq!(ids(&again), ["a"]);
    assert!(again[0].redelivered);
    c.close().await.unwrap();
    let rest = other.fetch(3, NO_WAIT).await.unwrap();
    assert_eq!(ids(&rest), ["b", "c"]);
    assert!(rest.iter().all(|d| d.redelivered));
    // Dropping without close also gives messages back.
    drop(other);
    let third = consumer(s, &["q"]).await;
    let back = third.fetch(3, Duration::from_secs(1)).await.unwrap();
    assert_eq!(back.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_fetch_does_not_strand_messages() {
    let db = db_with(short_lease(60_000));
    let s = &db.store;
    let all: Vec<Publish> = (0..50).map(|i| publish("q", &format!("m{i}"), 0)).collect();
    s.publish_batch(all).await.unwrap();
    let c = consumer(s, &["q"]).await;
    let mut returned = 0;
    for _ in 0..50 {
        // Polled once (the lease request is sent), then dropped before the answer.
        let mut fetch = std::pin::pin!(c.fetch(1, Duration::from_secs(1)));
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(fetch.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(r) = first {
            returned += r.unwrap().len();
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = s
        .queue_stats()
        .unwrap()
        .queue_lengths(&["q".into()])
        .await
        .unwrap();
    // What the cancelled fetches leased went back at once; only what was returned is held.
    assert_eq!(stats[0].unacked as usize, returned, "{stats:?}");
    assert_eq!(stats[0].ready as usize, 50 - returned, "{stats:?}");
    assert!(
        returned < 50,
        "some fetches were cancelled ({returned} returned)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_and_requeue() {
    let db = db();
    let s = &db.store;
    s.publish_batch(vec![publish("q", "bad1", 3), publish("q", "bad2", 0)])
        .await
        .unwrap();
    let c = consumer(s, &["q"]).await;
    let got = c.fetch(2, NO_WAIT).await.unwrap();
    c.dead_letter(&got[0].tag, "not-json").await.unwrap();
    c.dead_letter(&got[1].tag, "missing-task").await.unwrap();
    let dl = s.dead_letters().unwrap();
    let list = dl.list_dead_letters(10).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].reason, "missing-task", "newest first");
    assert_eq!(list[0].message, msg("bad2"));
    assert_eq!(list[1].queue, "q");
    assert_eq!(dl.list_dead_letters(1).await.unwrap().len(), 1);
    let stats = s
        .queue_stats()
        .unwrap()
        .queue_lengths(&["q".into()])
        .await
        .unwrap();
    assert_eq!((stats[0].ready, stats[0].unacked), (0, 0));

    assert_eq!(
        dl.requeue_dead_letters(&[list[1].id.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(ids(&c.fetch(5, NO_WAIT).await.unwrap()), ["bad1"]);
    assert_eq!(dl.requeue_dead_letters(&[]).await.unwrap(), 1);
    assert!(dl.list_dead_letters(10).await.unwrap().is_empty());
    assert_eq!(ids(&c.fetch(5, NO_WAIT).await.unwrap()), ["bad2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_ready_and_scheduled_not_leased() {
    let db = db();
    let s = &db.store;
    s.publish_batch(vec![
        publish("q", "a", 0),
        publish("q", "b", 0),
        publish("q", "c", 0),
        publish("keep", "k", 0),
    ])
    .await
    .unwrap();
    let mut later = publish("q", "later", 0);
    later.not_before = Some(chrono::Utc::now() + chrono::Duration::hours(1));
    s.publish(later).await.unwrap();
    let c = consumer(s, &["q"]).await;
    let held = c.fetch(1, NO_WAIT).await.unwrap();
    assert_eq!(s.purge().unwrap().purge("q").await.unwrap(), 3);
    let stats = s.queue_stats().unwrap().queue_lengths(&[]).await.unwrap();
    assert_eq!(
        stats,
        [
            QueueLength {
                queue: "keep".into(),
                ready: 1,
                scheduled: 0,
                unacked: 0
            },
            QueueLength {
                queue: "q".into(),
                ready: 0,
                scheduled: 0,
                unacked: 1
            },
        ]
    );
    c.ack(&[held[0].tag.clone()]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_lengths_lists_declared_queues() {
    let db = db();
    let s = &db.store;
    s.declare_queue("empty").await.unwrap();
    s.publish(publish("full", "x", 0)).await.unwrap();
    let stats = s.queue_stats().unwrap().queue_lengths(&[]).await.unwrap();
    let names: Vec<_> = stats.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(names, ["empty", "full"]);
    // Known to other stores on the same file too.
    let other = db.reopen();
    assert_eq!(
        other
            .queue_stats()
            .unwrap()
            .queue_lengths(&[])
            .await
            .unwrap(),
        stats
    );
    let unknown = s
        .queue_stats()
        .unwrap()
        .queue_lengths(&["nope".into()])
        .await
        .unwrap();
    assert_eq!(unknown[0].ready, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_durable() {
    let db = db();
    let r = db.store.revocations().unwrap();
    r.revoke(&["t1".into(), "t2".into()], None).await.unwrap();
    assert!(r.is_revoked("t1").await.unwrap());
    assert!(!r.is_revoked("t3").await.unwrap());
    let (all, cursor) = r.revocations_since(0).await.unwrap();
    assert_eq!(
        all.iter().map(|x| x.task_id.as_str()).collect::<Vec<_>>(),
        ["t1", "t2"]
    );
    let (none, same) = r.revocations_since(cursor).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(same, cursor);
    r.revoke(&["t1".into()], Some(Signal::TERM)).await.unwrap();

    let path = db.path();
    drop(db.store);
    let reopened = SqliteStore::open(&path, Default::default()).unwrap();
    let r = reopened.revocations().unwrap();
    assert!(r.is_revoked("t2").await.unwrap());
    let (new, next) = r.revocations_since(cursor).await.unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].task_id, "t1");
    assert!(new[0].terminate);
    assert!(next > cursor);
    r.revoke(&["t1".into()], None).await.unwrap();
    let (again, _) = r.revocations_since(next).await.unwrap();
    assert!(
        again[0].terminate,
        "a later revoke without terminate keeps terminate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_url_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.db");
    let s = SqliteStore::open_url(&format!(
        "sqlite://{}?visibility_timeout=0.5",
        file.display()
    ))
    .unwrap();
    assert_eq!(s.path(), file);
    assert_eq!(s.options().visibility_timeout, Duration::from_millis(500));
    assert_eq!(
        Broker::display_url(&*s),
        format!("sqlite://{}", file.display())
    );
    assert!(file.exists());

    let e = SqliteStore::open_url("amqp://x").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    let e = SqliteStore::open_url("sqlite://").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    let missing = dir.path().join("no/such/dir/x.db");
    let e = SqliteStore::open_url(&format!("sqlite://{}", missing.display())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unreachable);
    assert!(e.to_string().contains("no/such/dir"), "{e}");
}
