//! `multi`: several detached workers from one command line, as Celery's `celery multi`
//! (`docs/multi.md`).
//!
//! `my-app multi start 3 -c 4 -Q:1 images --pidfile=/run/app/%n.pid --logfile=/log/%n%I.log`
//! starts `celery1@<host>` .. `celery3@<host>`, each `my-app worker --detach ...`; `stop`,
//! `stopwait`, `kill` and `restart` with the same names and `--pidfile` find them again.
//! Nothing is stored between two commands: as with Celery, give the same arguments.

mod nodes;
mod options;
mod output;
mod show;
mod signals;
mod start;
mod stop;

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::args::GlobalArgs;
use nodes::Node;
use output::Output;

#[derive(Args, Debug)]
pub(crate) struct MultiArgs {
    /// What to do with the nodes.
    #[arg(value_enum)]
    pub verb: Verb,
    /// Node names (`w1 w2`) or a number of nodes (`3`), and worker options for all nodes
    /// (`-c 4`, `--queues=a,b`) or some (`-c:1-2 8`, `-Q:w1 images`); `expand` and `get`
    /// take their template or node name first; `stop`, `stopwait` and `restart` a signal
    /// (`-KILL`, `-9`; default SIGTERM).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "NODES AND OPTIONS"
    )]
    pub args: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    /// Start the nodes, each a detached worker.
    Start,
    /// Send each node SIGTERM (or the signal given) and return.
    Stop,
    /// Send each node SIGTERM (or the signal given) and wait until it has exited.
    #[value(alias = "stop_verify")]
    Stopwait,
    /// One node at a time: stop it, wait for it to exit, start it again.
    Restart,
    /// Send each node SIGKILL; remove their pidfiles once they are gone.
    Kill,
    /// Print each node's worker command line.
    Show,
    /// Print the node names.
    Names,
    /// `expand TEMPLATE NODES...`: the template with each node's `%n`, `%h`, `%d`.
    Expand,
    /// `get NODENAME NODES...`: that node's worker arguments.
    Get,
}

/// Runs `multi`; `has_tasks` is false for a binary without task code (it can still stop and
/// show workers, and start those of `--executable=PATH`).
pub(crate) fn run(
    args: &MultiArgs,
    global: &GlobalArgs,
    has_tasks: bool,
) -> Result<ExitCode, String> {
    let verb = args.verb;
    let mut raw = args.args.clone();
    let out = Output::take_from(&mut raw);
    let sig = match verb {
        Verb::Stop | Verb::Stopwait | Verb::Restart => signals::take(&mut raw),
        _ => signals::TERM,
    };
    let first = match verb {
        Verb::Expand | Verb::Get => Some(take_first(&mut raw, verb)?),
        _ => None,
    };
    let nodes = cluster(&raw, global)?;
    let starts = matches!(verb, Verb::Start | Verb::Restart);
    if starts && !has_tasks && nodes.iter().any(|n| n.executable.is_none()) {
        return Err(
            "this program has no task code to run as workers: run `multi` from your \
                    app's binary, or name it with --executable=PATH"
                .into(),
        );
    }
    if starts || matches!(verb, Verb::Stop | Verb::Stopwait | Verb::Kill) {
        out.splash();
    }
    let first = first.unwrap_or_default();
    Ok(match verb {
        Verb::Start => start::start(&nodes, &out),
        Verb::Stop => stop::stop(&nodes, sig, false, &out),
        Verb::Stopwait => stop::stop(&nodes, sig, true, &out),
        Verb::Restart => stop::restart(&nodes, sig, &out),
        Verb::Kill => stop::kill(&nodes, &out),
        Verb::Show => show::show(&nodes, &out)?,
        Verb::Names => show::names(&nodes, &out),
        Verb::Expand => show::expand(&first, &nodes, &out)?,
        Verb::Get => show::get(&first, &nodes, &out),
    })
}

fn take_first(raw: &mut Vec<String>, verb: Verb) -> Result<String, String> {
    if raw.is_empty() {
        let (verb, what) = if verb == Verb::Get {
            ("get", "NODENAME")
        } else {
            ("expand", "TEMPLATE")
        };
        return Err(format!("multi {verb} {what} NODES...: {what} is missing"));
    }
    Ok(raw.remove(0))
}

/// The nodes `raw` describes, with the global flags given before `multi` passed to every
/// worker (as Celery does with its own).
fn cluster(raw: &[String], global: &GlobalArgs) -> Result<Vec<Node>, String> {
    let mut parsed = options::parse(raw);
    let config = global.config.as_ref().map(|p| p.display().to_string());
    for (flag, value) in [
        ("--config", config),
        ("--broker", global.broker.clone()),
        ("--result-backend", global.result_backend.clone()),
        ("--loglevel", global.loglevel.clone()),
    ] {
        if value.is_some() {
            parsed.options.set(flag, value);
        }
    }
    nodes::nodes(parsed)
}
