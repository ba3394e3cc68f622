//! Celery's `%x` abbreviations in node names and file names (`celery.utils.nodenames`):
//! `host_format` for a node name, `node_format` for a worker's `--pidfile`/`--logfile`.
//!
//! As in Celery, `%` followed by a letter, digit or `_` must be a known key (else an error
//! naming it); `%` followed by anything else is left as it is.

use std::path::{Path, PathBuf};

use crate::args::WorkerArgs;

/// Celery's name for a worker given no `-n`: `celery@<host>`.
pub(crate) const DEFAULT_NAME: &str = "celery";

/// Replaces every `%k` of `s` by the value of key `k` (Celery's `simple_format`).
pub(crate) fn simple_format(s: &str, keys: &[(char, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let key = match chars.peek() {
            Some(&k) if c == '%' && (k.is_alphanumeric() || k == '_') => k,
            _ => {
                out.push(c);
                continue;
            }
        };
        chars.next();
        // The last binding of a key wins, as Celery's `dict(keys, **extra)`.
        match keys.iter().rev().find(|(k, _)| *k == key) {
            Some((_, value)) => out.push_str(value),
            None => {
                let known: Vec<String> = keys.iter().map(|(k, _)| format!("%{k}")).collect();
                return Err(format!(
                    "unknown abbreviation %{key} in {s:?} (known: {})",
                    known.join(" ")
                ));
            }
        }
    }
    Ok(out)
}

/// `(name, host)` of `name@host`; no `@` means no name (Celery's `nodesplit`).
pub(crate) fn nodesplit(nodename: &str) -> (Option<&str>, &str) {
    match nodename.split_once('@') {
        Some((name, host)) => (Some(name), host),
        None => (None, nodename),
    }
}

/// Celery's `host_format`: `%h` the host, `%n` the name (default: the host's first label),
/// `%d` the host's domain, `%i`/`%I` the process index (the main process: `0` / empty),
/// then `extra` over them.
pub(crate) fn host_format(
    s: &str,
    host: Option<&str>,
    name: Option<&str>,
    extra: &[(char, &str)],
) -> Result<String, String> {
    let machine;
    let host = match host.filter(|h| !h.is_empty()) {
        Some(h) => h,
        None => {
            machine = celeriac::core::message::hostname();
            &machine
        }
    };
    let (first_label, domain) = host.split_once('.').unwrap_or((host, ""));
    let name = name.filter(|n| !n.is_empty()).unwrap_or(first_label);
    let mut keys = vec![
        ('h', host),
        ('n', name),
        ('d', domain),
        ('i', MAIN_PROCESS_INDEX),
        ('I', MAIN_PROCESS_INDEX_WITH_PREFIX),
    ];
    keys.extend_from_slice(extra);
    simple_format(s, &keys)
}

/// `%i` in the worker's main process (Celery's `_fmt_process_index` with no pool index).
const MAIN_PROCESS_INDEX: &str = "0";
/// `%I` in the worker's main process: empty, so `%n%I.log` is `%n.log`.
const MAIN_PROCESS_INDEX_WITH_PREFIX: &str = "";

/// Celery's `node_format`: a file name for the node `nodename` (`%n` its name, `%h` its host,
/// `%d` the host's domain, `%p` the whole node name, `%i`/`%I` the process index).
pub(crate) fn node_format(s: &str, nodename: &str) -> Result<String, String> {
    node_format_with(s, nodename, &[])
}

/// [`node_format`] with `extra` keys over the others.
fn node_format_with(s: &str, nodename: &str, extra: &[(char, &str)]) -> Result<String, String> {
    let (name, host) = nodesplit(nodename);
    let mut keys = vec![('p', nodename)];
    keys.extend_from_slice(extra);
    host_format(s, Some(host), Some(name.unwrap_or(DEFAULT_NAME)), &keys)
}

/// [`node_format`] on a path (a path that is not UTF-8 is taken as it is).
pub(crate) fn node_format_path(path: &Path, nodename: &str) -> Result<PathBuf, String> {
    format_path(path, |s| node_format(s, nodename))
}

fn format_path(
    path: &Path,
    format: impl FnOnce(&str) -> Result<String, String>,
) -> Result<PathBuf, String> {
    match path.to_str() {
        Some(s) => format(s).map(PathBuf::from),
        None => Ok(path.to_path_buf()),
    }
}

/// The node name a `worker` with these flags runs as (as `worker::run` resolves `-n`).
pub(crate) fn worker_nodename(args: &WorkerArgs) -> String {
    let host = celeriac::core::message::hostname();
    match &args.hostname {
        Some(n) => crate::worker::expand_node_name(n, &host),
        None => format!("{DEFAULT_NAME}@{host}"),
    }
}

/// The worker's `--logfile` with its `%n`/`%i`... expanded for its node name.
pub(crate) fn worker_logfile(args: &WorkerArgs) -> Result<Option<PathBuf>, String> {
    let nodename = worker_nodename(args);
    args.logfile
        .as_deref()
        .map(|p| node_format_path(p, &nodename).map_err(|e| format!("--logfile: {e}")))
        .transpose()
}

/// The worker's `--logfile` for its process-pool children: the node's abbreviations expanded,
/// `%i`/`%I` kept for each child to expand with its own index ([`pool_child_logfile`]).
pub(crate) fn pool_logfile_pattern(args: &WorkerArgs) -> Result<Option<PathBuf>, String> {
    let nodename = worker_nodename(args);
    let keep_index = [('i', "%i"), ('I', "%I")];
    args.logfile
        .as_deref()
        .map(|p| {
            format_path(p, |s| node_format_with(s, &nodename, &keep_index))
                .map_err(|e| format!("--logfile: {e}"))
        })
        .transpose()
}

/// The logfile of pool child `index` (from 0): Celery numbers pool processes from 1, so `%i`
/// is `index + 1` and `%I` `-<index + 1>` (`%n%I.log`: `w1-1.log`, `w1-2.log`...).
pub(crate) fn pool_child_logfile(pattern: &Path, index: usize) -> Result<PathBuf, String> {
    let i = (index + 1).to_string();
    let dashed = format!("-{i}");
    format_path(pattern, |s| simple_format(s, &[('i', &i), ('I', &dashed)]))
}

/// The worker's `--pidfile` with its `%n`/`%i`... expanded for node `nodename`.
pub(crate) fn worker_pidfile(
    args_pidfile: Option<&Path>,
    nodename: &str,
) -> Result<Option<PathBuf>, String> {
    args_pidfile
        .map(|p| node_format_path(p, nodename).map_err(|e| format!("--pidfile: {e}")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn node_format_expands_like_celery_in_the_main_process() {
        let node = "w1@box.example.org";
        assert_eq!(node_format("%n.pid", node).unwrap(), "w1.pid");
        assert_eq!(node_format("%n%I.log", node).unwrap(), "w1.log");
        assert_eq!(node_format("%n-%i.log", node).unwrap(), "w1-0.log");
        assert_eq!(
            node_format("/run/%h/%d/%p", node).unwrap(),
            "/run/box.example.org/example.org/w1@box.example.org"
        );
        // No `@`: the whole string is the host and the name is Celery's default.
        assert_eq!(node_format("%n@%h", "box").unwrap(), "celery@box");
    }

    #[test]
    fn pool_children_number_their_logfiles_from_1() {
        let args =
            crate::args::Cli::try_parse_from(["x", "worker", "-n", "w1@box", "-f", "%n%I.log"]);
        let Ok(crate::args::Cli {
            command: crate::args::Command::Worker(w),
            ..
        }) = args
        else {
            panic!("not a worker command line");
        };
        let pattern = pool_logfile_pattern(&w).unwrap().unwrap();
        assert_eq!(pattern, PathBuf::from("w1%I.log"));
        assert_eq!(
            pool_child_logfile(&pattern, 0).unwrap(),
            PathBuf::from("w1-1.log")
        );
        let pattern = PathBuf::from("w1-%i.log");
        assert_eq!(
            pool_child_logfile(&pattern, 2).unwrap(),
            PathBuf::from("w1-3.log")
        );
    }

    #[test]
    fn unknown_keys_fail_and_other_percent_signs_stay() {
        let err = node_format("%x.log", "w1@box").unwrap_err();
        assert!(err.contains("%x") && err.contains("%n"), "{err}");
        assert_eq!(node_format("100%.log", "w1@box").unwrap(), "100%.log");
        assert_eq!(node_format("%%-%", "w1@box").unwrap(), "%%-%");
    }

    #[test]
    fn extra_keys_override_the_defaults() {
        let s = host_format("%h %n %d", Some("a.b"), None, &[('h', "w@a.b")]).unwrap();
        assert_eq!(s, "w@a.b a b");
    }
}
