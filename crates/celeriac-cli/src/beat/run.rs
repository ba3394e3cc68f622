//! `beat`: the scheduler until SIGTERM/SIGINT, following edits of its schedule file; and
//! the beat a worker runs beside itself with `-B`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use celeriac::beat::{BeatConfig, BeatHandle, Entry, Missed, Tz};
use celeriac::App;

use crate::args::{seconds, BeatRunArgs};

/// How often beat looks at its schedule file's modification time.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(2);

pub(crate) async fn run(app: &App, args: BeatRunArgs) -> Result<(), String> {
    let mut source = Source::load(app, args.schedule.as_deref())?;
    let holder = args.hostname.clone().unwrap_or_else(default_holder);
    let mut config = app.beat_config(holder).map_err(|e| e.to_string())?;
    config.lease_ttl = seconds(args.lease_ttl, "--lease-ttl")?;
    config.max_interval = seconds(args.max_interval, "--max-interval")?;
    if config.max_interval.is_zero() {
        return Err("--max-interval must be more than 0 seconds".into());
    }
    config.missed = if args.skip_missed {
        Missed::Skip
    } else {
        Missed::RunOnce
    };
    config.schedule_name = args.schedule_name.clone();
    if let Some(tz) = source.timezone {
        config.timezone = tz;
    }
    let from = source.describe();
    let running = start(app, std::mem::take(&mut source.entries), config, &from).await?;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(FILE_CHECK_EVERY) => source.reload_if_changed(&running),
        }
    }
    tracing::info!("beat: stopping");
    running.stop().await;
    Ok(())
}

/// The beat of `worker -B`: started before the worker, stopped after it.
pub(crate) async fn embedded(
    app: &App,
    schedule: Option<&Path>,
    node: &str,
) -> Result<BeatHandle, String> {
    let source = Source::load(app, schedule)?;
    let mut config = app
        .beat_config(format!("beat-{node}:{}", std::process::id()))
        .map_err(|e| e.to_string())?;
    if let Some(tz) = source.timezone {
        config.timezone = tz;
    }
    let from = source.describe();
    start(app, source.entries, config, &from).await
}

async fn start(
    app: &App,
    entries: Vec<Entry>,
    config: BeatConfig,
    from: &str,
) -> Result<BeatHandle, String> {
    let broker = app.broker().await.map_err(|e| e.to_string())?;
    let banner = format!(
        "celeriac beat {}: {} entries from {from}, time zone {}; broker {}; schedule {:?} under a {:?} lease as {}",
        env!("CARGO_PKG_VERSION"),
        entries.len(),
        config.timezone,
        broker.display_url(),
        config.schedule_name,
        config.lease_ttl,
        config.holder,
    );
    let beat = app.beat(entries, config).await.map_err(|e| e.to_string())?;
    println!("{banner}");
    Ok(beat.start())
}

fn default_holder() -> String {
    format!(
        "beat@{}:{}",
        celeriac::core::message::hostname(),
        std::process::id()
    )
}

/// Where the entries come from: a file (followed while beat runs) or the app's code.
struct Source {
    file: Option<(PathBuf, Option<SystemTime>)>,
    entries: Vec<Entry>,
    timezone: Option<Tz>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Source {
    fn load(app: &App, path: Option<&Path>) -> Result<Source, String> {
        let Some(path) = path else {
            let entries = app.beat_schedule().to_vec();
            if entries.is_empty() {
                return Err("no beat schedule: pass --schedule FILE, or add entries in code with AppBuilder::beat".into());
            }
            return Ok(Source {
                file: None,
                entries,
                timezone: None,
            });
        };
        let stamp = modified(path);
        let schedule = super::read(path)?;
        Ok(Source {
            file: Some((path.to_path_buf(), stamp)),
            entries: schedule.entries,
            timezone: Some(schedule.timezone),
        })
    }

    fn describe(&self) -> String {
        match &self.file {
            Some((path, _)) => path.display().to_string(),
            None => "the app's code".to_string(),
        }
    }

    /// Hands an edited file to the running beat: unchanged entries keep their times. A
    /// file that no longer parses is reported and the running schedule kept.
    fn reload_if_changed(&mut self, running: &BeatHandle) {
        let Some((path, stamp)) = &mut self.file else {
            return;
        };
        let now = modified(path);
        if now == *stamp {
            return;
        }
        *stamp = now;
        match super::read(path) {
            Ok(schedule) => {
                if Some(schedule.timezone) != self.timezone {
                    tracing::warn!(
                        "beat: {}: a new time zone takes effect on restart",
                        path.display()
                    );
                }
                running.reload(schedule.entries);
            }
            Err(message) => tracing::error!("beat: keeping the running schedule: {message}"),
        }
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
