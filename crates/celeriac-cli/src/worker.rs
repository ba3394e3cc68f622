//! `worker`: runs the app's tasks until SIGTERM/SIGINT.

use std::path::PathBuf;

use celeriac::{App, AutoscaleConfig, ChildCommand, Optimization, PoolKind, WorkerConfig};

use crate::args::{seconds, PoolArgs, WorkerArgs};

/// How the worker tells its process-pool children where and how much to log.
const CHILD_LOGLEVEL_ENV: &str = "CELERIAC_POOL_LOGLEVEL";
const CHILD_LOGFILE_ENV: &str = "CELERIAC_POOL_LOGFILE";

pub(crate) async fn run(app: &App, args: WorkerArgs, loglevel: Option<&str>) -> Result<(), String> {
    let mut config = worker_config(app, args.clone())?;
    apply_pool_args(&mut config, &args.pool)?;
    let child_logfile = crate::nodename::pool_logfile_pattern(&args)?;
    config.child_command = Some(child_command(loglevel, child_logfile.as_deref()));
    // Listening before the pidfile names this process: a SIGTERM sent to that pid is a warm
    // shutdown from then on (received while starting, it is acted on once the worker runs).
    let signals = listen_for_signals();
    let _pidlock = crate::pidfile::lock_for_worker(args.pidfile.as_deref(), &config.hostname)?;
    let node = config.hostname.clone();
    let worker = app.worker(config).await.map_err(|e| e.to_string())?;
    println!("{}", worker.banner(app.name()));
    let beat = match args.beat {
        true => Some(crate::beat::embedded(app, args.beat_schedule.as_deref(), &node).await?),
        false => None,
    };
    let shutdown = worker.shutdown_handle();
    tokio::spawn(forward_signals(signals, shutdown));
    let outcome = worker.run().await.map_err(|e| e.to_string());
    if let Some(beat) = beat {
        beat.stop().await;
    }
    outcome
}

/// The app's worker settings with the command line's flags over them.
fn worker_config(app: &App, args: WorkerArgs) -> Result<WorkerConfig, String> {
    let mut config = app.worker_config();
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
    Ok(config)
}

fn apply_pool_args(config: &mut WorkerConfig, args: &PoolArgs) -> Result<(), String> {
    if let Some(pool) = &args.pool {
        config.pool = PoolKind::parse(pool).ok_or_else(|| {
            format!("-P/--pool {pool:?} is not a pool: use async, threads, process or solo")
        })?;
    }
    if let Some(profile) = &args.optimization {
        config.optimization = Optimization::parse(profile)
            .ok_or_else(|| format!("-O {profile:?} is not a profile: use fair or fast"))?;
    }
    if args.max_tasks_per_child.is_some() {
        config.max_tasks_per_child = args.max_tasks_per_child;
    }
    if args.max_memory_per_child.is_some() {
        config.max_memory_per_child_kib = args.max_memory_per_child;
    }
    if let Some(spec) = &args.autoscale {
        let mut autoscale = AutoscaleConfig::parse(spec)?;
        autoscale.min_free_memory_mb = args.autoscale_min_free_memory;
        autoscale.max_load = args.autoscale_max_load;
        config.autoscale = Some(autoscale);
    } else if args.autoscale_min_free_memory.is_some() || args.autoscale_max_load.is_some() {
        return Err("--autoscale-min-free-memory and --autoscale-max-load guard --autoscale: give --autoscale MAX,MIN too".into());
    }
    config.disable_prefetch |= args.disable_prefetch;
    config.send_task_events |= args.task_events;
    config.heartbeats &= !args.without_heartbeat;
    if let Some(n) = args.max_child_losses {
        config.max_child_losses = n.max(1);
    }
    if let Some(t) = args.time_limit {
        config.time_limit = Some(seconds(t, "--time-limit")?).filter(|d| !d.is_zero());
    }
    if let Some(t) = args.soft_time_limit {
        config.soft_time_limit = Some(seconds(t, "--soft-time-limit")?).filter(|d| !d.is_zero());
    }
    let process_only =
        config.max_tasks_per_child.is_some() || config.max_memory_per_child_kib.is_some();
    if process_only && config.pool != PoolKind::Process {
        tracing::warn!("--max-tasks-per-child and --max-memory-per-child recycle process-pool children: they do nothing with -P {}", config.pool.name());
    }
    Ok(())
}

/// This binary, re-executed as a pool child, logging as this process does.
fn child_command(loglevel: Option<&str>, logfile: Option<&std::path::Path>) -> ChildCommand {
    let mut command = ChildCommand::current_exe();
    if let Some(level) = loglevel {
        command.env.push((CHILD_LOGLEVEL_ENV.into(), level.into()));
    }
    if let Some(path) = logfile {
        command
            .env
            .push((CHILD_LOGFILE_ENV.into(), path.display().to_string()));
    }
    command
}

/// The log settings a pool child got from its worker.
pub(crate) fn child_log_settings() -> (Option<String>, Option<PathBuf>) {
    (
        std::env::var(CHILD_LOGLEVEL_ENV).ok(),
        std::env::var_os(CHILD_LOGFILE_ENV).map(PathBuf::from),
    )
}

/// Celery's node-name variables: `%h` the host name, `%n` its first label, `%d` the rest.
pub(crate) fn expand_node_name(name: &str, host: &str) -> String {
    let (short, domain) = host.split_once('.').unwrap_or((host, ""));
    name.replace("%h", host)
        .replace("%n", short)
        .replace("%d", domain)
}

/// SIGTERM and SIGINT listeners, installed when this returns.
#[cfg(unix)]
type Signals = Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>;

#[cfg(unix)]
fn listen_for_signals() -> Signals {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => {
            tracing::error!("cannot listen for SIGTERM/SIGINT");
            None
        }
    }
}

/// First SIGTERM/SIGINT: warm shutdown; the second: stop now.
#[cfg(unix)]
async fn forward_signals(signals: Signals, shutdown: celeriac::ShutdownHandle) {
    let Some((mut term, mut int)) = signals else {
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
fn listen_for_signals() {}

#[cfg(not(unix))]
async fn forward_signals((): (), shutdown: celeriac::ShutdownHandle) {
    while tokio::signal::ctrl_c().await.is_ok() {
        shutdown.escalate();
    }
}

#[cfg(test)]
mod tests {
    use super::{apply_pool_args, expand_node_name};
    use crate::args::PoolArgs;
    use celeriac::{Optimization, PoolKind, WorkerConfig};
    use std::time::Duration;

    fn applied(args: PoolArgs) -> Result<WorkerConfig, String> {
        let mut config = WorkerConfig::default();
        apply_pool_args(&mut config, &args).map(|()| config)
    }

    #[test]
    fn pool_flags_reach_the_worker_config() {
        let c = applied(PoolArgs {
            pool: Some("prefork".into()),
            optimization: Some("fast".into()),
            max_tasks_per_child: Some(5),
            max_memory_per_child: Some(1024),
            autoscale: Some("6,2".into()),
            autoscale_min_free_memory: Some(256),
            time_limit: Some(2.5),
            soft_time_limit: Some(0.0),
            disable_prefetch: true,
            max_child_losses: Some(4),
            ..PoolArgs::default()
        })
        .unwrap();
        assert_eq!(c.pool, PoolKind::Process);
        assert_eq!(c.optimization, Optimization::Fast);
        assert_eq!(
            (c.max_tasks_per_child, c.max_memory_per_child_kib),
            (Some(5), Some(1024))
        );
        let a = c.autoscale.unwrap();
        assert_eq!((a.max, a.min, a.min_free_memory_mb), (6, 2, Some(256)));
        assert_eq!(c.time_limit, Some(Duration::from_millis(2500)));
        assert_eq!(c.soft_time_limit, None, "0 means no limit");
        assert!(c.disable_prefetch);
        assert_eq!(c.max_child_losses, 4);
    }

    #[test]
    fn bad_pool_flags_name_the_flag_and_the_choices() {
        let e = applied(PoolArgs {
            pool: Some("gevnet".into()),
            ..PoolArgs::default()
        })
        .unwrap_err();
        assert!(
            e.contains("-P/--pool \"gevnet\"") && e.contains("async, threads, process or solo"),
            "{e}"
        );
        let e = applied(PoolArgs {
            optimization: Some("quick".into()),
            ..PoolArgs::default()
        })
        .unwrap_err();
        assert!(e.contains("-O \"quick\""), "{e}");
        let e = applied(PoolArgs {
            autoscale_max_load: Some(2.0),
            ..PoolArgs::default()
        })
        .unwrap_err();
        assert!(e.contains("give --autoscale MAX,MIN too"), "{e}");
        let e = applied(PoolArgs {
            autoscale: Some("a,b".into()),
            ..PoolArgs::default()
        })
        .unwrap_err();
        assert!(e.contains("--autoscale \"a,b\" must be MAX,MIN"), "{e}");
    }

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
