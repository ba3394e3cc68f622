//! `--beat`: a beat process (this binary's `beat` verb, a real separate process) with a
//! schedule of `-n` entries, each every `--beat-period` seconds, their phases spread evenly
//! (so `n / period` ticks fall due each second). Their last runs are recorded in the store
//! before beat starts, so each tick's due time is known exactly; the bench consumes the
//! queue and reports how late each tick arrived (p50/p99/max, due → fetched, so the broker's
//! own delivery is included), beat's CPU per second and its peak RSS.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use celeriac::beat::{schedule_text, Entry, Schedule, Tz};
use celeriac::core::beat::LastRun;
use celeriac::core::broker::ConsumerSpec;
use celeriac::core::TaskMessage;
use celeriac::App;
use chrono::{DateTime, TimeDelta, Utc};

use crate::control_load::{cpu_ticks, ticks_per_second};

const QUEUE: &str = "beat-bench";
const SCHEDULE_NAME: &str = "celeriac.beat";

pub(crate) struct BeatBench {
    pub entries: usize,
    pub period_secs: u64,
    pub run_secs: u64,
}

pub(crate) async fn run(
    app: &App,
    url: &str,
    backend: &str,
    bench: BeatBench,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempdir()?;
    let schedule = dir.join("schedule.toml");
    std::fs::write(&schedule, schedule_file(bench.entries, bench.period_secs))?;
    let period = TimeDelta::seconds(bench.period_secs as i64);
    // Due from 3 s after now: beat has started and planned by then.
    let first_due = Utc::now() + TimeDelta::seconds(3);
    let spacing = period / bench.entries as i32;
    seed_last_runs(app, bench.entries, first_due - period, spacing).await?;
    let mut beat = spawn_beat(url, backend, &schedule)?;
    let consumer = app
        .broker()
        .await?
        .consumer(ConsumerSpec {
            queues: vec![QUEUE.into()],
            name: "beat-bench".into(),
            prefetch: 0,
        })
        .await?;
    let wait_start = first_due - Utc::now();
    tokio::time::sleep(wait_start.to_std().unwrap_or_default()).await;
    let cpu_before = cpu_ticks(beat.id());
    let started = Instant::now();
    let window = Duration::from_secs(bench.run_secs);
    let mut seen = vec![0i32; bench.entries];
    let mut lateness = Vec::new();
    while started.elapsed() < window {
        let batch = consumer.fetch(1000, Duration::from_millis(100)).await?;
        let fetched = Utc::now();
        for delivery in &batch {
            let message = TaskMessage::from_raw(&delivery.message)?;
            let index = message.args[0].as_u64().unwrap_or(0) as usize;
            let due = first_due + spacing * index as i32 + period * seen[index];
            seen[index] += 1;
            lateness.push((fetched - due).num_microseconds().unwrap_or(0));
        }
        let tags: Vec<_> = batch.into_iter().map(|d| d.tag).collect();
        consumer.ack(&tags).await?;
    }
    let cpu = (cpu_ticks(beat.id()) - cpu_before) as f64 / ticks_per_second();
    let rss = (
        crate::peak_rss_kib(beat.id()),
        crate::status_kib(beat.id(), "VmRSS:"),
    );
    crate::stop(&mut beat);
    consumer.close().await?;
    let _ = std::fs::remove_dir_all(&dir);
    report(
        &bench,
        &mut lateness,
        cpu / started.elapsed().as_secs_f64(),
        rss,
    );
    Ok(())
}

/// `rss_kib`: (peak, at the end).
fn report(bench: &BeatBench, lateness: &mut [i64], cpu_per_second: f64, rss_kib: (u64, u64)) {
    lateness.sort_unstable();
    let pick = |q: f64| {
        let i = ((lateness.len() as f64 * q) as usize).min(lateness.len().saturating_sub(1));
        lateness.get(i).map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    println!(
        "beat: {} entries every {} s ({} ticks/s due), {} ticks received in {} s",
        bench.entries,
        bench.period_secs,
        bench.entries as u64 / bench.period_secs,
        lateness.len(),
        bench.run_secs
    );
    println!(
        "tick lateness (due -> fetched by a consumer): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
    println!(
        "beat process: CPU {:.1}% of one core, RSS peak {:.1} MiB, at the end {:.1} MiB",
        cpu_per_second * 100.0,
        rss_kib.0 as f64 / 1024.0,
        rss_kib.1 as f64 / 1024.0
    );
}

fn schedule_file(entries: usize, period_secs: u64) -> String {
    let mut text = String::with_capacity(entries * 90);
    for i in 0..entries {
        text.push_str(&format!(
            "[[entry]]\nname = \"e{i}\"\ntask = \"bench.noop\"\nargs = [{i}]\nevery = \"{period_secs}s\"\nqueue = \"{QUEUE}\"\n\n"
        ));
    }
    text
}

/// Records entry `i` as last run at `base + i * spacing`, under a lease taken and given
/// back at once, so the beat process takes over from these runs.
async fn seed_last_runs(
    app: &App,
    entries: usize,
    base: DateTime<Utc>,
    spacing: TimeDelta,
) -> Result<(), Box<dyn std::error::Error>> {
    let broker = app.broker().await?;
    let store = broker
        .beat_store()
        .ok_or("this broker keeps no beat state")?;
    let token = store
        .acquire_lease(SCHEDULE_NAME, "bench-seed", Duration::from_secs(60))
        .await?
        .ok_or("another beat holds the lease")?;
    let period = spacing * entries as i32;
    let schedule = Schedule::every(&format!("{}s", period.num_seconds()))?;
    let text = schedule_text(&Entry::new("", "", schedule), Tz::UTC);
    let runs: Vec<LastRun> = (0..entries)
        .map(|i| LastRun {
            entry: format!("e{i}"),
            schedule: text.clone(),
            at: base + spacing * i as i32,
            total_run_count: 1,
        })
        .collect();
    for chunk in runs.chunks(1000) {
        store
            .record_runs(SCHEDULE_NAME, "bench-seed", token, chunk)
            .await?;
    }
    store
        .release_lease(SCHEDULE_NAME, "bench-seed", token)
        .await?;
    Ok(())
}

fn spawn_beat(url: &str, backend: &str, schedule: &std::path::Path) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(["beat", "-l", "warn", "-n", "beat@bench", "--schedule"])
        .arg(schedule)
        .env("CELERIAC_BROKER_URL", url)
        .env("CELERIAC_RESULT_BACKEND", backend)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("celeriac-bench-beat-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
