//! Idle consumers must not spin. Alone in its own test binary: it measures this process's
//! CPU time, which tests running beside it would inflate.

mod common;

use std::time::Duration;

use common::*;

/// CPU time (user + system) of this process, from /proc (Linux only).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_waiting_is_cheap() {
    let db = db();
    let other = db.reopen();
    let a = consumer(&db.store, &["q"]).await;
    let b = consumer(&other, &["q"]).await;
    let before = cpu_time();
    let (ra, rb) = tokio::join!(
        a.fetch(1, Duration::from_secs(1)),
        b.fetch(1, Duration::from_secs(1))
    );
    assert!(ra.unwrap().is_empty() && rb.unwrap().is_empty());
    if let (Some(before), Some(after)) = (before, cpu_time()) {
        // Two idle consumers on two stores must not wake each other in a loop.
        let used = after - before;
        assert!(
            used < Duration::from_millis(400),
            "idle waiting used {used:?} of CPU in 1 s"
        );
        println!("idle waiting used {used:?} of CPU in 1 s");
    }
}
