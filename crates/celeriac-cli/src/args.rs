//! The command line's grammar: every verb, flag and argument.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "celeriac: Celery's task queue in Rust", version)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub(crate) struct GlobalArgs {
    /// Configuration file (TOML, Celery's setting names). Default: $CELERIAC_CONFIG, else
    /// ./celeriac.toml when it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Broker URL (beats broker_url from CELERIAC_BROKER_URL, the file and the code).
    #[arg(long, global = true)]
    pub broker: Option<String>,
    /// Result backend URL (beats result_backend from CELERIAC_RESULT_BACKEND, the file and
    /// the code).
    #[arg(long = "result-backend", global = true)]
    pub result_backend: Option<String>,
    /// Log level: error, warn, info, debug, trace, or a RUST_LOG-style filter. Beats
    /// RUST_LOG; default info.
    #[arg(short = 'l', long = "loglevel", global = true)]
    pub loglevel: Option<String>,
}

// Parsed once per process: boxing the worker's flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
        /// The signal --terminate sends to a process-pool child: TERM (default), KILL, ...
        #[arg(short = 's', long, requires = "terminate")]
        signal: Option<String>,
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
    /// The effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Start, stop, restart and show several detached workers (Celery's `celery multi`).
    Multi(crate::multi::MultiArgs),
    /// Ask workers (celeriac or Python) an inspect command: ping, stats, active, registered...
    Inspect(RemoteArgs),
    /// Send workers a control command: rate_limit, time_limit, pool_grow, shutdown...
    Control(RemoteArgs),
    /// Which workers are online (they answer ping).
    Status(StatusArgs),
    /// Watch the events workers send (start them with -E for task events).
    Events(EventsArgs),
    /// Periodic tasks: run beat (the app's schedule or --schedule FILE), or check a
    /// schedule file, list its entries and their next runs.
    Beat(BeatArgs),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BeatArgs {
    #[command(subcommand)]
    pub command: Option<BeatCommand>,
    #[command(flatten)]
    pub run: BeatRunArgs,
}

/// How `beat` (with no verb) runs: any number of copies may run; one sends.
#[derive(Args, Debug, Clone)]
pub(crate) struct BeatRunArgs {
    /// Schedule file (TOML, `docs/beat.md`); default: the schedule in the app's code.
    /// Edits are picked up while beat runs.
    #[arg(short = 's', long, value_name = "FILE")]
    pub schedule: Option<PathBuf>,
    /// Seconds the leader lease lasts unless renewed: a dead leader is replaced within this
    /// plus a second.
    #[arg(long = "lease-ttl", value_name = "SECONDS", default_value_t = 10.0)]
    pub lease_ttl: f64,
    /// The longest beat sleeps between looks at its schedule (Celery's
    /// beat_max_loop_interval).
    #[arg(long = "max-interval", value_name = "SECONDS", default_value_t = 300.0)]
    pub max_interval: f64,
    /// Drop a tick that fell due while no beat ran (default: send it once on start).
    #[arg(long = "skip-missed")]
    pub skip_missed: bool,
    /// Beats with the same name on one broker share one schedule and one lease.
    #[arg(
        long = "schedule-name",
        value_name = "NAME",
        default_value = "celeriac.beat"
    )]
    pub schedule_name: String,
    /// This beat's name in the lease and in logs (default beat@HOST:PID).
    #[arg(short = 'n', long)]
    pub hostname: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum BeatCommand {
    /// Validate a schedule file: every mistake is one line naming the entry and the field.
    Check { file: PathBuf },
    /// Each entry of a schedule file with its schedule and next run time.
    List { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub(crate) enum DeadLetterCommand {
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

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Every setting with its value in force and where it came from (passwords redacted).
    Show {
        /// One JSON object: setting -> {value, source}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub(crate) struct WorkerArgs {
    /// Queues to consume, comma-separated (default: task_default_queue).
    #[arg(short = 'Q', long = "queues", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Number of tasks run at once (default: worker_concurrency, else the number of CPUs).
    #[arg(short = 'c', long)]
    pub concurrency: Option<usize>,
    /// Messages reserved ahead per execution slot (default: worker_prefetch_multiplier).
    #[arg(long = "prefetch-multiplier")]
    pub prefetch_multiplier: Option<usize>,
    /// Node name (default: celery@<host>); `%h`, `%n`, `%d` expand as in Celery.
    #[arg(short = 'n', long)]
    pub hostname: Option<String>,
    /// Seconds a graceful shutdown waits for running tasks (default:
    /// worker_shutdown_timeout).
    #[arg(long = "shutdown-timeout")]
    pub shutdown_timeout: Option<f64>,
    /// Append the log to this file instead of standard error (no colours).
    #[arg(short = 'f', long, value_name = "PATH")]
    pub logfile: Option<PathBuf>,
    #[command(flatten)]
    pub pool: PoolArgs,
    /// Write the worker's pid to this file, refuse to start while it names a live process,
    /// remove it at exit; `%n`, `%h`, `%i`, `%I` expand as in Celery (see docs/multi.md).
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
    /// Run in the background, off the terminal (logs go to --logfile).
    #[arg(short = 'D', long)]
    pub detach: bool,
    /// Also run beat in this process, under the same leader lease as every other beat
    /// (Celery's -B; safe on every worker).
    #[arg(short = 'B', long)]
    pub beat: bool,
    /// The schedule file of the embedded beat (default: the schedule in the app's code).
    #[arg(long = "beat-schedule", value_name = "FILE", requires = "beat")]
    pub beat_schedule: Option<PathBuf>,
}

/// How the worker runs task bodies: pool, limits, recycling, autoscale (`docs/pools.md`).
#[derive(Args, Debug, Default, Clone)]
pub(crate) struct PoolArgs {
    /// Pool: async (default), threads, process (Celery's prefork), solo.
    #[arg(short = 'P', long = "pool", value_name = "POOL")]
    pub pool: Option<String>,
    /// Scheduling: fair (default, Celery's default) gives a job only to an idle child;
    /// fast also queues it behind a busy one.
    #[arg(short = 'O', value_name = "PROFILE")]
    pub optimization: Option<String>,
    /// Replace a process-pool child after this many tasks.
    #[arg(long = "max-tasks-per-child", value_name = "N")]
    pub max_tasks_per_child: Option<u64>,
    /// Replace a process-pool child left above this resident memory after a task (KiB).
    #[arg(long = "max-memory-per-child", value_name = "KIB")]
    pub max_memory_per_child: Option<u64>,
    /// Grow the pool up to MAX under backlog, shrink to MIN when idle: MAX,MIN.
    #[arg(long, value_name = "MAX,MIN")]
    pub autoscale: Option<String>,
    /// Autoscale never grows while free memory is under this many MB.
    #[arg(long = "autoscale-min-free-memory", value_name = "MB")]
    pub autoscale_min_free_memory: Option<u64>,
    /// Autoscale never grows while the 1-minute load average per CPU is over this.
    #[arg(long = "autoscale-max-load", value_name = "L")]
    pub autoscale_max_load: Option<f64>,
    /// Fetch a message only when a slot is free to run it.
    #[arg(long = "disable-prefetch")]
    pub disable_prefetch: bool,
    /// Hard time limit in seconds for tasks that set none (task_time_limit).
    #[arg(long = "time-limit", value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds for tasks that set none (task_soft_time_limit).
    #[arg(long = "soft-time-limit", value_name = "SECONDS")]
    pub soft_time_limit: Option<f64>,
    /// Deliveries of one task that may each lose their pool child before it goes to the
    /// dead-letter queue as a poison pill (default 3).
    #[arg(long = "max-child-losses", value_name = "N")]
    pub max_child_losses: Option<u32>,
    /// Accepted for Celery compatibility: celeriac workers do not gossip (remote control
    /// and events are separate channels).
    #[arg(long = "without-gossip")]
    pub without_gossip: bool,
    /// Accepted for Celery compatibility: celeriac workers do not mingle; revocations come
    /// from the broker's durable record instead.
    #[arg(long = "without-mingle")]
    pub without_mingle: bool,
    /// Send no worker-heartbeat events (monitors then see the worker only when it starts
    /// and stops).
    #[arg(long = "without-heartbeat")]
    pub without_heartbeat: bool,
    /// Send task events (task-received, task-started, task-succeeded, ...) for monitors
    /// such as Flower (worker_send_task_events).
    #[arg(short = 'E', long = "task-events")]
    pub task_events: bool,
}

#[derive(Args, Debug)]
pub(crate) struct CallArgs {
    /// Task name, e.g. tasks.add.
    pub name: String,
    /// Positional arguments as a JSON array.
    #[arg(long, default_value = "[]")]
    pub args: String,
    /// Keyword arguments as a JSON object.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// Seconds to wait before the task may run.
    #[arg(long)]
    pub countdown: Option<f64>,
    /// Seconds after which the task expires unless started.
    #[arg(long)]
    pub expires: Option<f64>,
    /// Queue to send to (default: routes, then the default queue).
    #[arg(long)]
    pub queue: Option<String>,
    /// Priority 0..=9 (9 most urgent).
    #[arg(long)]
    pub priority: Option<u8>,
}

/// A flag's number of seconds as a duration.
pub(crate) fn seconds(s: f64, flag: &str) -> Result<Duration, String> {
    if s.is_finite() && s >= 0.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!(
            "{flag} must be a non-negative number of seconds, got {s}"
        ))
    }
}

/// `inspect` / `control` as Celery's: the command, its arguments, and where to send it.
#[derive(Args, Debug)]
pub(crate) struct RemoteArgs {
    /// The command (e.g. ping, stats, rate_limit).
    pub command: String,
    /// The command's arguments, by position (e.g. `rate_limit tasks.add 10/m`).
    pub args: Vec<String>,
    #[command(flatten)]
    pub to: ReplyOptions,
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub to: ReplyOptions,
}

/// Where a remote-control request goes and how its replies are shown (Celery's options).
#[derive(Args, Debug)]
pub(crate) struct ReplyOptions {
    /// Seconds to wait for replies.
    #[arg(short = 't', long, default_value_t = 1.0)]
    pub timeout: f64,
    /// Only these nodes (comma-separated names, e.g. w1@host).
    #[arg(short = 'd', long, value_delimiter = ',')]
    pub destination: Vec<String>,
    /// Print the replies as JSON.
    #[arg(short = 'j', long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct EventsArgs {
    /// One JSON object per event and line, as sent.
    #[arg(long)]
    pub dump: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
}
