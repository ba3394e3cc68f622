//! `worker`: runs the app's tasks until SIGTERM/SIGINT.

use celeriac::{App, WorkerConfig};

use crate::args::{seconds, WorkerArgs};

pub(crate) async fn run(app: &App, args: WorkerArgs) -> Result<(), String> {
    let config = worker_config(app, args)?;
    let worker = app.worker(config).await.map_err(|e| e.to_string())?;
    println!("{}", worker.banner(app.name()));
    let shutdown = worker.shutdown_handle();
    tokio::spawn(forward_signals(shutdown));
    worker.run().await.map_err(|e| e.to_string())
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
