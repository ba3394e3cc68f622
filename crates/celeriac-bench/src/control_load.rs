//! `celeriac-bench --control-load N`: N idle worker processes on one broker. Measures how
//! long an `inspect ping` broadcast takes until every worker has answered (p50/p99 over 50
//! pings), how long a `stats` broadcast takes, and what the idle workers' heartbeats cost
//! (CPU of all N processes over a quiet window, as a share of one core).

use std::process::Child;
use std::time::{Duration, Instant};

use celeriac::core::control::{ControlRequest, ReplyAddress};
use celeriac::core::message::new_id;
use celeriac::App;

const PINGS: usize = 50;
/// Celery's default `inspect` timeout.
const CELERY_TIMEOUT: Duration = Duration::from_secs(1);
const QUIET_WINDOW: Duration = Duration::from_secs(10);

fn request(method: &str) -> ControlRequest {
    ControlRequest {
        method: method.into(),
        arguments: Default::default(),
        destination: None,
        pattern: None,
        matcher: None,
        ticket: Some(new_id()),
        reply_to: Some(ReplyAddress {
            exchange: "reply.celery.pidbox".into(),
            routing_key: new_id(),
        }),
        clock: 0,
    }
}

/// How long `method` takes until `n` workers replied (`None`: fewer replied within `wait`).
async fn round_trip(app: &App, method: &str, n: usize, wait: Duration) -> Option<Duration> {
    let broker = app.broker().await.ok()?;
    let mailbox = broker.mailbox()?;
    let started = Instant::now();
    let replies = mailbox
        .broadcast(&request(method), wait, Some(n))
        .await
        .ok()?;
    (replies.len() >= n).then(|| started.elapsed())
}

/// CPU time (user + system) of a process so far, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
    field(11) + field(12)
}

pub(crate) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

pub(crate) async fn run(
    app: &App,
    workers: &mut [Child],
) -> Result<(), Box<dyn std::error::Error>> {
    let n = workers.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    while round_trip(app, "ping", n, Duration::from_secs(2))
        .await
        .is_none()
    {
        if Instant::now() > deadline {
            return Err(format!("not all {n} workers answered ping within 120 s").into());
        }
    }
    let mut pings = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let took = round_trip(app, "ping", n, Duration::from_secs(5))
            .await
            .ok_or("a ping did not reach every worker within 5 s")?;
        pings.push(took);
    }
    pings.sort_unstable();
    let pct = |p: f64| pings[((pings.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "inspect ping, {n} workers, until all replied ({PINGS} pings): p50 {:.1} ms, p99 {:.1} ms",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    match round_trip(app, "stats", n, Duration::from_secs(10)).await {
        Some(took) => println!(
            "inspect stats, {n} workers: {:.1} ms (Celery's default timeout: {} s)",
            took.as_secs_f64() * 1e3,
            CELERY_TIMEOUT.as_secs()
        ),
        None => println!("inspect stats, {n} workers: not every worker replied within 10 s"),
    }
    let before: u64 = workers.iter().map(|w| cpu_ticks(w.id())).sum();
    let started = Instant::now();
    tokio::time::sleep(QUIET_WINDOW).await;
    let after: u64 = workers.iter().map(|w| cpu_ticks(w.id())).sum();
    let cpu = (after - before) as f64 / ticks_per_second() / started.elapsed().as_secs_f64();
    println!(
        "{n} idle workers (heartbeats every 2 s), CPU over {} s: {:.2} % of one core",
        QUIET_WINDOW.as_secs(),
        cpu * 100.0
    );
    Ok(())
}
