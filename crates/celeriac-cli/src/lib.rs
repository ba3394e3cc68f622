//! Celery's command-line verbs for a celeriac app.
//!
//! A Rust worker cannot import your tasks at run time the way `celery -A proj worker` does, so
//! your own binary is the worker:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     let app = celeriac::App::builder("proj").build(); // .task::<add>() ...
//!     celeriac_cli::run(app)
//! }
//! ```
//!
//! `my-binary worker -Q a,b -c 4`, `my-binary call tasks.add --args '[2, 3]'`,
//! `my-binary result <id> --wait 10`, `revoke`, `purge`, `queues`, `dead-letter list|requeue`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use celeriac::core::state::TaskMeta;
use celeriac::{App, Call, Error, WorkerConfig};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(about = "celeriac: Celery's task queue in Rust", version)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct GlobalArgs {
    /// Broker URL (overrides CELERIAC_BROKER_URL; default sqlite://celeriac.db).
    #[arg(long, global = true)]
    broker: Option<String>,
    /// Result backend URL (overrides CELERIAC_RESULT_BACKEND).
    #[arg(long = "result-backend", global = true)]
    result_backend: Option<String>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(short = 'l', long = "loglevel", global = true, default_value = "info")]
    loglevel: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a worker consuming the given queues.
    Worker(WorkerArgs),
    /// Send a task by name; prints its id.
    Call(CallArgs),
    /// Show a task's state and result (optionally waiting for it).
    Result {
        task_id: String,
        /// Wait up to this many seconds for the task to finish.
        #[arg(long)]
        wait: Option<f64>,
    },
    /// Revoke a task: it will never run; with --terminate a running one is stopped.
    Revoke {
        task_ids: Vec<String>,
        #[arg(long)]
        terminate: bool,
    },
    /// Remove all waiting messages from queues.
    Purge {
        /// Queues to purge (comma-separated; default: the default queue).
        #[arg(short = 'Q', long = "queues", value_delimiter = ',')]
        queues: Vec<String>,
        /// Do not ask for confirmation.
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Queue lengths: ready, scheduled (waiting for ETA) and unacknowledged messages.
    Queues {
        /// Only these queues (comma-separated; default: every known queue).
        #[arg(short = 'Q', long = "queues", value_delimiter = ',')]
        queues: Vec<String>,
    },
    /// Messages no worker could run (malformed, unknown task, refused content type).
    #[command(subcommand, name = "dead-letter")]
    DeadLetter(DeadLetterCommand),
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// List dead letters, newest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put dead letters back on their queues.
    Requeue {
        /// Dead-letter ids to requeue.
        ids: Vec<String>,
        /// Requeue every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// Queues to consume, comma-separated (default: celery).
    #[arg(short = 'Q', long = "queues", value_delimiter = ',')]
    queues: Vec<String>,
    /// Number of tasks run at once (default: number of CPUs).
    #[arg(short = 'c', long)]
    concurrency: Option<usize>,
    /// Messages reserved ahead per execution slot.
    #[arg(long = "prefetch-multiplier")]
    prefetch_multiplier: Option<usize>,
    /// Node name (default: celery@<host>); `%h`, `%n`, `%d` expand as in Celery.
    #[arg(short = 'n', long)]
    hostname: Option<String>,
    /// Seconds a graceful shutdown waits for running tasks.
    #[arg(long = "shutdown-timeout")]
    shutdown_timeout: Option<f64>,
}

#[derive(Args, Debug)]
struct CallArgs {
    /// Task name, e.g. tasks.add.
    name: String,
    /// Positional arguments as a JSON array.
    #[arg(long, default_value = "[]")]
    args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    kwargs: String,
    /// Seconds to wait before the task may run.
    #[arg(long)]
    countdown: Option<f64>,
    /// Seconds after which the task expires unless started.
    #[arg(long)]
    expires: Option<f64>,
    /// Queue to send to (default: routes, then the default queue).
    #[arg(long)]
    queue: Option<String>,
    /// Priority 0..=9 (9 most urgent).
    #[arg(long)]
    priority: Option<u8>,
}

/// Runs the command line for an app whose binary holds the tasks (`worker` included).
pub fn run(app: App) -> ExitCode {
    dispatch(app, Cli::parse(), true)
}

/// [`run`] with the command line given (its first item is the program name), e.g. to drive
/// the verbs from a test or a wrapper.
pub fn run_from<I, T>(app: App, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    dispatch(app, Cli::parse_from(args), true)
}

/// Runs the command line without task code: every verb but `worker`.
pub fn run_without_tasks(app: App) -> ExitCode {
    dispatch(app, Cli::parse(), false)
}

fn dispatch(app: App, cli: Cli, has_tasks: bool) -> ExitCode {
    init_logging(&cli.global.loglevel);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let global = &cli.global;
    let app = app.reconfigured(|c| {
        if let Some(b) = &global.broker {
            c.broker_url = Some(b.clone());
        }
        if let Some(r) = &global.result_backend {
            c.result_backend = Some(r.clone());
        }
    });
    // Flags beat the environment: make the flag the value in force.
    if let Some(b) = &global.broker {
        std::env::set_var("CELERIAC_BROKER_URL", b);
    }
    if let Some(r) = &global.result_backend {
        std::env::set_var("CELERIAC_RESULT_BACKEND", r);
    }
    match runtime.block_on(execute(app, cli.command, has_tasks)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.to_ascii_lowercase()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn execute(app: App, command: Command, has_tasks: bool) -> Result<(), String> {
    let err = |e: Error| e.to_string();
    match command {
        Command::Worker(args) => {
            if !has_tasks {
                return Err("`worker` needs your task code: build a binary whose main calls celeriac_cli::run(app)".into());
            }
            run_worker(&app, args).await
        }
        Command::Call(args) => {
            let positional = parse_json(&args.args, "--args")?;
            let Value::Array(positional) = positional else {
                return Err(format!("--args must be a JSON array, got {}", args.args));
            };
            let keywords = parse_json(&args.kwargs, "--kwargs")?;
            let Value::Object(keywords) = keywords else {
                return Err(format!(
                    "--kwargs must be a JSON object, got {}",
                    args.kwargs
                ));
            };
            let mut call = Call::new(args.name, positional, keywords);
            if let Some(c) = args.countdown {
                call = call.countdown(seconds(c, "--countdown")?);
            }
            if let Some(e) = args.expires {
                call = call.expires_in(seconds(e, "--expires")?);
            }
            if let Some(q) = args.queue {
                call = call.queue(q);
            }
            if let Some(p) = args.priority {
                if p > 9 {
                    return Err(format!("--priority must be 0..=9, got {p}"));
                }
                call = call.priority(p);
            }
            let result = call.send(&app).await.map_err(err)?;
            println!("{}", result.id());
            Ok(())
        }
        Command::Result { task_id, wait } => {
            let backend = app.backend().await.map_err(err)?;
            let meta = match wait {
                Some(w) => backend.wait(&task_id, seconds(w, "--wait")?).await,
                None => backend.get(&task_id).await,
            }
            .map_err(|e| e.to_string())?;
            let meta = meta.unwrap_or_else(|| {
                let mut m = TaskMeta::pending(&task_id);
                m.children = None;
                m
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&meta.to_value()).unwrap_or_default()
            );
            Ok(())
        }
        Command::Revoke {
            task_ids,
            terminate,
        } => {
            if task_ids.is_empty() {
                return Err("revoke needs at least one task id".into());
            }
            app.revoke(&task_ids, terminate).await.map_err(err)?;
            for id in task_ids {
                println!(
                    "revoked {id}{}",
                    if terminate { " (terminate)" } else { "" }
                );
            }
            Ok(())
        }
        Command::Purge { queues, force } => {
            let queues = if queues.is_empty() {
                vec![app.config().task_default_queue.clone()]
            } else {
                queues
            };
            if !force {
                if !std::io::stdin().is_terminal() {
                    return Err(format!(
                        "refusing to purge {} without confirmation: pass -f",
                        queues.join(", ")
                    ));
                }
                eprint!(
                    "Purge every waiting message from {}? [y/N] ",
                    queues.join(", ")
                );
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                if !answer.trim().eq_ignore_ascii_case("y") {
                    return Err("purge cancelled".into());
                }
            }
            let broker = app.broker().await.map_err(err)?;
            let purge = broker
                .purge()
                .ok_or_else(|| format!("broker {} cannot purge", broker.display_url()))?;
            for q in queues {
                let n = purge.purge(&q).await.map_err(|e| e.to_string())?;
                println!(
                    "Purged {n} message{} from queue {q}.",
                    if n == 1 { "" } else { "s" }
                );
            }
            Ok(())
        }
        Command::Queues { queues } => {
            let broker = app.broker().await.map_err(err)?;
            let stats = broker.queue_stats().ok_or_else(|| {
                format!(
                    "broker {} cannot report queue lengths",
                    broker.display_url()
                )
            })?;
            let lengths = stats
                .queue_lengths(&queues)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{:<24} {:>10} {:>10} {:>10}",
                "queue", "ready", "scheduled", "unacked"
            );
            // What the engine cannot see is shown as `-`, not as a misleading 0.
            let coverage = stats.coverage();
            let shown = |known: bool, n: u64| if known { n.to_string() } else { "-".into() };
            for q in lengths {
                println!(
                    "{:<24} {:>10} {:>10} {:>10}",
                    q.queue,
                    q.ready,
                    shown(coverage.scheduled, q.scheduled),
                    shown(coverage.unacked_all_consumers, q.unacked)
                );
            }
            if !coverage.lists_all_queues && queues.is_empty() {
                println!(
                    "(this broker lists only queues this process declared: name them with -Q)"
                );
            }
            Ok(())
        }
        Command::DeadLetter(cmd) => {
            let broker = app.broker().await.map_err(err)?;
            let dead = broker.dead_letters().ok_or_else(|| {
                format!("broker {} has no dead-letter queue", broker.display_url())
            })?;
            match cmd {
                DeadLetterCommand::List { limit } => {
                    let letters = dead
                        .list_dead_letters(limit)
                        .await
                        .map_err(|e| e.to_string())?;
                    if letters.is_empty() {
                        println!("No dead letters.");
                    }
                    for d in letters {
                        println!(
                            "{}  {}  queue={}  task={} id={}  reason: {}",
                            d.id,
                            celeriac::core::time::to_display(d.at),
                            d.queue,
                            d.message.task_name().unwrap_or("?"),
                            d.message.task_id().unwrap_or("?"),
                            d.reason
                        );
                    }
                    Ok(())
                }
                DeadLetterCommand::Requeue { ids, all } => {
                    if ids.is_empty() && !all {
                        return Err("name the dead letters to requeue, or pass --all".into());
                    }
                    let n = dead
                        .requeue_dead_letters(&ids)
                        .await
                        .map_err(|e| e.to_string())?;
                    println!("Requeued {n} message{}.", if n == 1 { "" } else { "s" });
                    Ok(())
                }
            }
        }
    }
}

fn parse_json(text: &str, flag: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{flag} is not valid JSON ({e}): {text}"))
}

fn seconds(s: f64, flag: &str) -> Result<Duration, String> {
    if s.is_finite() && s >= 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!(
            "{flag} must be a non-negative number of seconds, got {s}"
        ))
    }
}

async fn run_worker(app: &App, args: WorkerArgs) -> Result<(), String> {
    let mut config: WorkerConfig = app.worker_config();
    if !args.queues.is_empty() {
        config.queues = args.queues.into_iter().filter(|q| !q.is_empty()).collect();
    }
    if let Some(c) = args.concurrency {
        if c == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        config.concurrency = c;
    }
    if let Some(m) = args.prefetch_multiplier {
        config.prefetch_multiplier = m.max(1);
    }
    if let Some(n) = args.hostname {
        config.hostname = expand_node_name(&n, &celeriac::core::message::hostname());
    }
    if let Some(t) = args.shutdown_timeout {
        config.shutdown_timeout = seconds(t, "--shutdown-timeout")?;
    }
    let worker = app.worker(config).await.map_err(|e| e.to_string())?;
    println!("{}", worker.banner(app.name()));
    let shutdown = worker.shutdown_handle();
    tokio::spawn(forward_signals(shutdown));
    worker.run().await.map_err(|e| e.to_string())
}

/// Celery's node-name variables: `%h` the host name, `%n` its first label, `%d` the rest.
fn expand_node_name(name: &str, host: &str) -> String {
    let (short, domain) = host.split_once('.').unwrap_or((host, ""));
    name.replace("%h", host)
        .replace("%n", short)
        .replace("%d", domain)
}

/// First SIGTERM/SIGINT: warm shutdown; the second: stop now.
#[cfg(unix)]
async fn forward_signals(shutdown: celeriac::ShutdownHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!("{name} received: warm shutdown (send again to stop now)");
        shutdown.escalate();
    }
}

#[cfg(not(unix))]
async fn forward_signals(shutdown: celeriac::ShutdownHandle) {
    while tokio::signal::ctrl_c().await.is_ok() {
        shutdown.escalate();
    }
}

#[cfg(test)]
mod tests {
    use super::expand_node_name;

    #[test]
    fn node_names_expand_like_celery() {
        assert_eq!(
            expand_node_name("w1@%h", "box.example.org"),
            "w1@box.example.org"
        );
        assert_eq!(
            expand_node_name("%n-worker@%d", "box.example.org"),
            "box-worker@example.org"
        );
        assert_eq!(expand_node_name("plain@name", "box"), "plain@name");
    }
}
