//! `worker -D/--detach`: the worker runs in the background, off the terminal.
//!
//! Celery forks; a process that may already hold threads cannot fork safely, so celeriac
//! re-executes its own binary (`std::env::current_exe()`) with the same arguments minus
//! `-D`/`--detach`, in a new session (`setsid`: no controlling terminal, no SIGHUP when it
//! closes), with standard input from `/dev/null` and standard output and error appended to the
//! `--logfile` (what Celery's `worker_redirect_stdouts` does: the banner and a panic's message
//! land there too) or sent to `/dev/null` without one (Celery then loses the log the same
//! way; a warning says so). It keeps the working directory, as Celery does.
//!
//! Before spawning, the checks Celery's `detached()` makes: the logfile can be opened, the
//! pidfile names no live process (a stale one is removed with a warning). With `--pidfile`,
//! the command returns once the worker has written its pid there, or fails with the worker's
//! exit status if it ends first; so `multi start` then `multi stop` never races the start.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::args::{Cli, Command as Verb, WorkerArgs};
use crate::logging::open_append;
use crate::nodename::{worker_logfile, worker_nodename, worker_pidfile};
use crate::pidfile::{Content, Pidfile};

/// How long the command waits for the detached worker to write its pidfile.
const PIDFILE_WAIT: Duration = Duration::from_secs(30);

/// Starts the worker described by `argv` (this program's command line, `argv[0]` the program
/// name) detached, and returns once it runs.
pub(crate) fn spawn(argv: &[OsString], args: &WorkerArgs) -> Result<(), String> {
    let child_args = without_detach(argv)?;
    let nodename = worker_nodename(args);
    let logfile = worker_logfile(args)?;
    let pidfile = worker_pidfile(args.pidfile.as_deref(), &nodename)?;
    let log = match &logfile {
        Some(path) => Some(open_append(path)?),
        None => {
            eprintln!("warning: detached without --logfile: the worker's log is discarded");
            None
        }
    };
    if let Some(path) = &pidfile {
        if let Some(stale) = Pidfile::new(path).remove_if_stale()? {
            eprintln!("warning: {stale}");
        }
    }
    let mut child = command(&child_args, log)?
        .spawn()
        .map_err(|e| format!("cannot start the detached worker: {e}"))?;
    match &pidfile {
        Some(path) => wait_for_pidfile(&mut child, path, logfile.as_deref()),
        None => Ok(()),
    }
}

/// `argv[1..]` without the `-D`/`--detach` arguments (as Celery removes them), checked to
/// parse as a worker that does not detach again (`-Dc 4` would).
fn without_detach(argv: &[OsString]) -> Result<Vec<OsString>, String> {
    let args: Vec<OsString> = argv
        .iter()
        .skip(1)
        .filter(|a| !is_detach_flag(a))
        .cloned()
        .collect();
    let program = std::iter::once(OsString::from("worker"));
    if let Ok(Cli {
        command: Verb::Worker(w),
        ..
    }) = Cli::try_parse_from(program.chain(args.iter().cloned()))
    {
        if w.detach {
            return Err(
                "write -D/--detach as an argument of its own (not combined with other flags)"
                    .into(),
            );
        }
    }
    Ok(args)
}

fn is_detach_flag(arg: &OsStr) -> bool {
    arg == "-D" || arg == "--detach"
}

/// The command line of the detached worker: this binary, a new session, no terminal.
fn command(args: &[OsString], log: Option<File>) -> Result<Command, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this program to run it detached: {e}"))?;
    let (stdout, stderr) = match log {
        Some(file) => {
            let copy = file
                .try_clone()
                .map_err(|e| format!("cannot share the logfile with the worker: {e}"))?;
            (Stdio::from(file), Stdio::from(copy))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    let mut command = Command::new(exe);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: setsid(2) is async-signal-safe, and the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    Ok(command)
}

/// Waits until the worker's pid is in `pidfile`; its exit before that is an error.
fn wait_for_pidfile(
    child: &mut Child,
    pidfile: &Path,
    logfile: Option<&Path>,
) -> Result<(), String> {
    let file = Pidfile::new(pidfile);
    let deadline = Instant::now() + PIDFILE_WAIT;
    loop {
        if file.read()? == Content::Pid(child.id()) {
            return Ok(());
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let see = logfile
                .map(|l| format!("; see {}", l.display()))
                .unwrap_or_default();
            return Err(format!(
                "the detached worker exited at start ({status}){see}"
            ));
        }
        if Instant::now() >= deadline {
            eprintln!(
                "warning: the detached worker (pid {}) has not written {} after {}s",
                child.id(),
                pidfile.display(),
                PIDFILE_WAIT.as_secs()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_detached_worker_gets_the_same_arguments_but_detach() {
        let argv = strings(&["my-app", "worker", "-D", "-c", "2", "--detach", "-Q", "a"]);
        assert_eq!(
            without_detach(&argv).unwrap(),
            strings(&["worker", "-c", "2", "-Q", "a"])
        );
    }

    #[test]
    fn a_combined_detach_flag_is_refused_rather_than_detaching_forever() {
        let err = without_detach(&strings(&["my-app", "worker", "-Dc", "2"])).unwrap_err();
        assert!(err.contains("-D/--detach"), "{err}");
    }
}
