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
//! `my-binary result <id> --wait 10`, `revoke`, `purge`, `queues`, `dead-letter list|requeue`,
//! `config show`; `my-binary worker -D --pidfile %n.pid --logfile %n.log` in the background
//! and `my-binary multi start 3 ...|stop|stopwait|restart|kill|show|names` for several
//! (`docs/multi.md`).
//!
//! Every verb runs with the app's configuration layered: flags > `CELERIAC_<SETTING>`
//! environment variables > the `--config` file (else `./celeriac.toml`) > the app's code >
//! defaults (`docs/configuration.md`).

mod args;
mod beat;
mod config;
mod detach;
mod events;
mod logging;
mod multi;
mod nodename;
mod pidfile;
mod queues;
mod remote;
mod tasks;
mod worker;

use std::process::ExitCode;

use celeriac::{App, LoadedConfig};
use clap::Parser;

use args::{Cli, Command};

/// Runs the command line for an app whose binary holds the tasks (`worker` included).
pub fn run(app: App) -> ExitCode {
    if let Some(code) = run_pool_child(&app) {
        return code;
    }
    run_command_line(app, std::env::args_os().collect(), true)
}

/// [`run`] with the command line given (its first item is the program name), e.g. to drive
/// the verbs from a test or a wrapper. (`worker --detach` and `multi` start this program,
/// `std::env::current_exe()`, again with these arguments.)
pub fn run_from<I, T>(app: App, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    if let Some(code) = run_pool_child(&app) {
        return code;
    }
    run_command_line(app, args.into_iter().map(Into::into).collect(), true)
}

/// In a process-pool child (the worker re-executed this binary): log where the worker
/// logs, then run jobs instead of parsing a command line.
fn run_pool_child(app: &App) -> Option<ExitCode> {
    let index = celeriac::pool_child_index()?;
    let (level, logfile) = worker::child_log_settings();
    let logfile = match logfile.map(|p| nodename::pool_child_logfile(&p, index)) {
        Some(Err(message)) => return Some(fail(&message)),
        other => other.and_then(Result::ok),
    };
    if let Err(message) = logging::init(level.as_deref(), logfile.as_deref()) {
        return Some(fail(&message));
    }
    app.run_pool_child()
}

/// Runs the command line without task code: every verb but `worker`.
pub fn run_without_tasks(app: App) -> ExitCode {
    run_command_line(app, std::env::args_os().collect(), false)
}

/// The verbs that manage processes (`worker --detach`, `multi`) run here, before any thread
/// or runtime exists; the others through [`dispatch`].
fn run_command_line(app: App, argv: Vec<std::ffi::OsString>, has_tasks: bool) -> ExitCode {
    let cli = Cli::parse_from(&argv);
    let outcome = match &cli.command {
        Command::Worker(w) if w.detach && has_tasks => {
            detach::spawn(&argv, w).map(|()| ExitCode::SUCCESS)
        }
        Command::Multi(args) => multi::run(args, &cli.global, has_tasks),
        _ => return dispatch(app, cli, has_tasks),
    };
    match outcome {
        Ok(code) => code,
        Err(message) => fail(&message),
    }
}

fn dispatch(app: App, cli: Cli, has_tasks: bool) -> ExitCode {
    let logfile = match &cli.command {
        Command::Worker(w) => match nodename::worker_logfile(w) {
            Ok(path) => path,
            Err(message) => return fail(&message),
        },
        _ => None,
    };
    if let Err(message) = logging::init(cli.global.loglevel.as_deref(), logfile.as_deref()) {
        return fail(&message);
    }
    let loaded = match config::load(&app, &cli.global) {
        Ok(loaded) => loaded,
        Err(message) => return fail(&message),
    };
    let app = app.reconfigured(|c| *c = loaded.config().clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let loglevel = cli.global.loglevel.clone();
    let outcome = runtime.block_on(async {
        let outcome = execute(app.clone(), &loaded, cli.command, has_tasks, loglevel).await;
        // What a verb published is flushed before the process ends (fire-and-forget
        // publishing, `confirm_publish=false`, would otherwise lose it).
        let closed = app.close().await.map_err(|e| e.to_string());
        outcome.and(closed)
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

async fn execute(
    app: App,
    loaded: &LoadedConfig,
    command: Command,
    has_tasks: bool,
    loglevel: Option<String>,
) -> Result<(), String> {
    match command {
        Command::Worker(args) => {
            if !has_tasks {
                return Err("`worker` needs your task code: build a binary whose main calls celeriac_cli::run(app)".into());
            }
            worker::run(&app, args, loglevel.as_deref()).await
        }
        Command::Call(args) => tasks::call(&app, args).await,
        Command::Result { task_id, wait } => tasks::result(&app, &task_id, wait).await,
        Command::Revoke {
            task_ids,
            terminate,
            signal,
        } => tasks::revoke(&app, task_ids, terminate, signal.as_deref()).await,
        Command::Purge { queues, force } => queues::purge(&app, queues, force).await,
        Command::Queues { queues } => queues::lengths(&app, queues).await,
        Command::DeadLetter(command) => queues::dead_letters(&app, command).await,
        Command::Config(command) => config::execute(loaded, command),
        Command::Inspect(args) => remote::inspect(&app, args).await,
        Command::Control(args) => remote::control(&app, args).await,
        Command::Status(args) => remote::status(&app, args).await,
        Command::Events(args) => events::watch(&app, args).await,
        Command::Beat(args) => beat::execute(&app, args).await,
        Command::Multi(_) => {
            unreachable!("multi runs before the runtime starts (see `run_command_line`)")
        }
    }
}
