//! `cargo run --release -p celeriac-bench -- [--broker URL] [-n N]`
//!
//! Measures, for no-op tasks on any broker: enqueue rate with one `apply_async` per task and
//! with the bulk API, drain rate of one worker process (acks and results included),
//! send→start latency p50/p99 at a steady rate, and the worker's peak RSS.
//! With no `--broker`, a fresh embedded store in a temp directory is used.
//!
//! The worker is this same binary run as `celeriac-bench worker ...` (the bench's tasks live
//! here), so the figures are for a separate worker process, as in production.
//!
//! `--events`: the worker sends task events (`-E`); with `--monitor` the bench receives
//! them while it drains, as a monitor such as Flower would. `--control-load N`: N idle
//! workers answer remote control instead (`control_load.rs`). `--canvas`: a group, a chord
//! and a chain instead (`canvas.rs`). `--beat`: a beat process with `-n` entries instead
//! (`beat.rs`).

mod beat;
mod canvas;
mod control_load;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use celeriac::{task, App};
use clap::Parser;

#[task(name = "bench.noop")]
async fn noop() {}

/// Returns how many microseconds passed between the send and the start.
#[task(name = "bench.stamp")]
async fn stamp(sent_micros: i64) -> i64 {
    now_micros() - sent_micros
}

/// A chord body: how many header results it got.
#[task(name = "bench.count")]
async fn count(values: Vec<celeriac::serde_json::Value>) -> usize {
    values.len()
}

/// A chain step.
#[task(name = "bench.inc")]
async fn inc(x: i64) -> i64 {
    x + 1
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The bench's tasks, for this process (the client) and the worker it starts.
fn app_tasks(builder: celeriac::AppBuilder) -> celeriac::AppBuilder {
    builder
        .task::<noop>()
        .task::<stamp>()
        .task::<count>()
        .task::<inc>()
}

fn app(broker: &str, backend: &str) -> App {
    app_tasks(
        App::builder("bench")
            .broker_url(broker)
            .result_backend(backend),
    )
    .build()
}

#[derive(Parser, Debug)]
#[command(about = "celeriac benchmark")]
struct Opts {
    /// Broker URL (default: a fresh sqlite file in a temp dir).
    #[arg(long)]
    broker: Option<String>,
    /// Result backend URL (default: the broker's own store; a temp sqlite file for AMQP).
    #[arg(long = "result-backend")]
    result_backend: Option<String>,
    /// Tasks per enqueue kind: N single calls (half sequential, half from concurrent
    /// producers) and N in bulk; the drain phase runs all of them.
    #[arg(short = 'n', long, default_value_t = 50_000)]
    n: usize,
    /// Latency phase: number of tasks.
    #[arg(long, default_value_t = 2_000)]
    latency_tasks: usize,
    /// Latency phase: tasks per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Concurrent producers for the second single-call enqueue phase.
    #[arg(long, default_value_t = 8)]
    producers: usize,
    /// Worker concurrency.
    #[arg(short = 'c', long, default_value_t = 100)]
    concurrency: usize,
    /// Worker pool: async, threads, process, solo.
    #[arg(short = 'P', long, default_value = "async")]
    pool: String,
    /// Worker prefetch multiplier (messages reserved per pool slot).
    #[arg(long = "prefetch-multiplier", default_value_t = 4)]
    prefetch_multiplier: usize,
    /// The worker sends task events (`-E`).
    #[arg(long)]
    events: bool,
    /// With `--events`: this process receives them during the drain, as a monitor such as
    /// Flower would (on the same cores as the worker).
    #[arg(long, requires = "events")]
    monitor: bool,
    /// Instead of the task phases: start this many idle workers and measure remote control
    /// (ping and stats round trips) and the CPU their heartbeats cost.
    #[arg(long = "control-load", value_name = "WORKERS")]
    control_load: Option<usize>,
    /// Instead of the task phases: a group and a chord of `-n` members, and a chain of
    /// `--chain-steps` steps, timed from send to result.
    #[arg(long)]
    canvas: bool,
    /// With `--canvas`: the chain's length.
    #[arg(long = "chain-steps", default_value_t = 1_000)]
    chain_steps: usize,
    /// Instead of the task phases: a beat process with `-n` entries, each every
    /// `--beat-period` seconds, measured for `--beat-secs` seconds.
    #[arg(long)]
    beat: bool,
    #[arg(long = "beat-period", default_value_t = 10)]
    beat_period: u64,
    #[arg(long = "beat-secs", default_value_t = 30)]
    beat_secs: u64,
}

fn main() -> std::process::ExitCode {
    let verb = std::env::args().nth(1);
    if matches!(verb.as_deref(), Some("worker" | "beat")) || celeriac::pool_child_index().is_some()
    {
        // Child mode: the worker or beat process (reads CELERIAC_BROKER_URL), or one of
        // the worker's process-pool children.
        return celeriac_cli::run(app_tasks(App::builder("bench")).build());
    }
    let opts = Opts::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(bench(opts)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct TempDb(Option<std::path::PathBuf>);

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn bench(opts: Opts) -> Result<(), Box<dyn std::error::Error>> {
    let (url, _temp) = match &opts.broker {
        Some(url) => (url.clone(), TempDb(None)),
        None => {
            let dir = std::env::temp_dir().join(format!("celeriac-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            (
                format!("sqlite://{}", dir.join("bench.db").display()),
                TempDb(Some(dir)),
            )
        }
    };
    // Results go where the broker keeps them (embedded store, Redis), else to a temp file.
    let backend = match &opts.result_backend {
        Some(b) => b.clone(),
        None if url.starts_with("amqp") => {
            let dir =
                std::env::temp_dir().join(format!("celeriac-bench-results-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            format!("sqlite://{}", dir.join("results.db").display())
        }
        None => url.clone(),
    };
    let app = app(&url, &backend);
    app.connect().await?;
    let broker = app.broker().await?;
    if let Some(purge) = broker.purge() {
        purge.purge("celery").await?;
    }
    println!("broker: {}", broker.display_url());
    if let Some(n) = opts.control_load {
        let mut workers = (0..n)
            .map(|i| spawn_worker(&url, &backend, &opts, &format!("load{i}@localhost"), 2))
            .collect::<std::io::Result<Vec<_>>>()?;
        let measured = control_load::run(&app, &mut workers).await;
        workers.iter_mut().for_each(stop);
        return measured;
    }
    if opts.beat {
        let bench = beat::BeatBench {
            entries: opts.n,
            period_secs: opts.beat_period.max(1),
            run_secs: opts.beat_secs,
        };
        return beat::run(&app, &url, &backend, bench).await;
    }
    if opts.canvas {
        let mut worker = spawn_worker(&url, &backend, &opts, "bench@localhost", opts.concurrency)?;
        let measured = canvas::run(&app, opts.n, opts.chain_steps).await;
        stop(&mut worker);
        return measured;
    }
    println!("tasks per enqueue phase: {}", opts.n);

    // 1. Enqueue, one apply_async per task: from one sequential producer (bound by the
    //    broker round trip), then from concurrent producers (as a web server sends tasks).
    let sequential = opts.n / 2;
    let started = Instant::now();
    for _ in 0..sequential {
        noop::s().apply_async(&app).await?;
    }
    let single = sequential as f64 / started.elapsed().as_secs_f64();
    println!("enqueue (single apply_async, 1 producer):  {single:>10.0} tasks/s");
    let concurrent = opts.n - sequential;
    let per_producer = concurrent / opts.producers.max(1);
    let started = Instant::now();
    let mut producers = Vec::new();
    for _ in 0..opts.producers.max(1) {
        let app = app.clone();
        producers.push(tokio::spawn(async move {
            for _ in 0..per_producer {
                noop::s().apply_async(&app).await?;
            }
            Ok::<(), celeriac::Error>(())
        }));
    }
    for p in producers {
        p.await??;
    }
    let sent = per_producer * opts.producers.max(1);
    let parallel = sent as f64 / started.elapsed().as_secs_f64();
    println!(
        "enqueue (single apply_async, {} producers): {parallel:>10.0} tasks/s",
        opts.producers
    );

    // 2. Enqueue in bulk.
    let started = Instant::now();
    let mut left = opts.n;
    let mut last = None;
    while left > 0 {
        let batch = left.min(10_000);
        let sent = app
            .send_batch((0..batch).map(|_| noop::s().into_call()).collect())
            .await?;
        last = sent.into_iter().last();
        left -= batch;
    }
    let bulk = opts.n as f64 / started.elapsed().as_secs_f64();
    println!("enqueue (bulk send_batch):    {bulk:>10.0} tasks/s");

    // 3. Drain: one worker process, acks and results included.
    let total = (sequential + sent + opts.n) as u64;
    let started = Instant::now();
    let monitor = match opts.monitor {
        true => Some(count_events(&app).await?),
        false => None,
    };
    let mut worker = spawn_worker(&url, &backend, &opts, "bench@localhost", opts.concurrency)?;
    wait_drained(&app).await?;
    // Push-based brokers hand the worker its window before the queue reads empty: the drain
    // ends when the last task sent has finished.
    if let Some(last) = last {
        last.get(Duration::from_secs(600)).await?;
    }
    let drain = total as f64 / started.elapsed().as_secs_f64();
    println!(
        "drain ({total} tasks, 1 worker process, -P {} -c {} --prefetch-multiplier {}{}): {drain:>10.0} tasks/s (incl. process start)",
        opts.pool,
        opts.concurrency,
        opts.prefetch_multiplier,
        if opts.events { " -E" } else { "" }
    );
    if let Some(monitor) = monitor {
        let seen = monitor.load(std::sync::atomic::Ordering::Relaxed);
        println!("task events received during the drain: {seen}");
    }
    let rss_after_drain = peak_rss_kib(worker.id());
    for child in pool_children(worker.id()) {
        println!(
            "pool child {child}: RSS {:.1} MB (peak {:.1} MB)",
            status_kib(child, "VmRSS:") as f64 / 1024.0,
            status_kib(child, "VmHWM:") as f64 / 1024.0
        );
    }

    // 4. Latency at a steady rate, worker idle and warm.
    let interval = Duration::from_secs_f64(1.0 / opts.rate.max(1) as f64);
    let mut pending = Vec::with_capacity(opts.latency_tasks);
    let mut next = tokio::time::Instant::now();
    for _ in 0..opts.latency_tasks {
        tokio::time::sleep_until(next).await;
        next += interval;
        pending.push(stamp::s(now_micros()).apply_async(&app).await?);
    }
    let mut latencies = Vec::with_capacity(pending.len());
    for r in pending {
        latencies.push(r.get(Duration::from_secs(60)).await?);
    }
    latencies.sort_unstable();
    let pct =
        |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    println!(
        "send->start latency at {}/s ({} tasks): p50 {:.3} ms, p99 {:.3} ms",
        opts.rate,
        latencies.len(),
        pct(0.50),
        pct(0.99)
    );

    let peak = peak_rss_kib(worker.id()).max(rss_after_drain);
    println!(
        "worker peak RSS: {:.1} MB (with {total} tasks queued at start)",
        peak as f64 / 1024.0
    );
    stop(&mut worker);
    Ok(())
}

/// Receives the broker's events in the background; the count of task events so far.
async fn count_events(
    app: &App,
) -> Result<std::sync::Arc<std::sync::atomic::AtomicU64>, Box<dyn std::error::Error>> {
    let broker = app.broker().await?;
    let events = broker.events().ok_or("this broker carries no events")?;
    let mut stream = events.receive_events().await?;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            if event["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("task-"))
            {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    Ok(count)
}

fn spawn_worker(
    url: &str,
    backend: &str,
    opts: &Opts,
    node: &str,
    concurrency: usize,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "worker",
        "-l",
        "warn",
        "-P",
        &opts.pool,
        "-c",
        &concurrency.to_string(),
        "--prefetch-multiplier",
        &opts.prefetch_multiplier.to_string(),
        "-n",
        node,
    ]);
    if opts.events {
        cmd.arg("-E");
    }
    cmd.env("CELERIAC_BROKER_URL", url)
        .env("CELERIAC_RESULT_BACKEND", backend)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
}

async fn wait_drained(app: &App) -> Result<(), Box<dyn std::error::Error>> {
    let broker = app.broker().await?;
    let stats = broker
        .queue_stats()
        .ok_or("this broker cannot report queue lengths")?;
    loop {
        let lengths = stats.queue_lengths(&["celery".to_string()]).await?;
        if lengths
            .iter()
            .all(|q| q.ready == 0 && q.unacked == 0 && q.scheduled == 0)
        {
            return Ok(());
        }
        // Often enough for the end to be precise to ~1% of a drain of seconds; not so often
        // that the polling itself loads the broker (on RabbitMQ each poll is a call into the
        // queue's process, the one doing the work being measured).
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// VmHWM (peak resident set) of a process, in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A `/proc/<pid>/status` field in KiB (0 when unreadable).
pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The worker's child processes (its process pool), from every thread's `children` list.
fn pool_children(pid: u32) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children: Vec<u32> = threads
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children.sort_unstable();
    children
}

fn stop(worker: &mut Child) {
    // SAFETY-free: `kill` is a plain syscall wrapper; SIGTERM asks for a warm shutdown.
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
}
