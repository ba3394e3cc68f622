//! Where the log goes and how much of it: `-l/--loglevel` beats `RUST_LOG`, which beats
//! `info`; colours only on a terminal; `worker --logfile` appends to a file instead.

use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Installs the process's log subscriber.
pub(crate) fn init(loglevel: Option<&str>, logfile: Option<&Path>) -> Result<(), String> {
    let filter = filter(loglevel, std::env::var("RUST_LOG").ok().as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // `try_init` fails only when a subscriber is already set (a test harness, an embedding
    // program): theirs stays in force.
    let _ = match logfile {
        Some(path) => builder
            .with_ansi(false)
            .with_writer(Mutex::new(open_append(path)?))
            .try_init(),
        None => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init(),
    };
    Ok(())
}

/// The filter in force: the flag, else a valid `RUST_LOG`, else `info`.
fn filter(loglevel: Option<&str>, rust_log: Option<&str>) -> Result<EnvFilter, String> {
    if let Some(level) = loglevel {
        return EnvFilter::try_new(level.to_ascii_lowercase())
            .map_err(|e| format!("--loglevel {level:?} is not a log level or filter: {e}"));
    }
    // A malformed RUST_LOG is ignored rather than fatal, as before: it may be set for
    // another program.
    Ok(rust_log
        .filter(|f| !f.trim().is_empty())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info")))
}

/// Opens `path` for appending, as `--logfile` is (the detached worker's output too).
pub(crate) fn open_append(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open --logfile {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::filter;

    fn shown(loglevel: Option<&str>, rust_log: Option<&str>) -> String {
        filter(loglevel, rust_log).unwrap().to_string()
    }

    #[test]
    fn the_flag_beats_rust_log_which_beats_info() {
        assert_eq!(shown(Some("WARN"), Some("debug")), "warn");
        assert_eq!(shown(None, Some("debug")), "debug");
        assert_eq!(shown(None, None), "info");
        assert_eq!(shown(None, Some("  ")), "info");
        assert!(filter(Some("loud=[bad"), None).is_err());
    }
}
