//! `multi start`: each node as `worker --detach` of this program (or `--executable`), one
//! after the other; each returns once its worker has written its pidfile.

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use super::nodes::Node;
use super::output::Output;

pub(crate) fn start(nodes: &[Node], out: &Output) -> ExitCode {
    out.note("> Starting nodes...");
    let mut failed = false;
    for node in nodes {
        out.note_open(&format!("\t> {}: ", node.name));
        failed |= !start_node(node, out);
    }
    exit_code(failed)
}

pub(crate) fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Starts one node and prints `OK` or `FAILED` with what the starting command said.
pub(crate) fn start_node(node: &Node, out: &Output) -> bool {
    let output = match run_detach(node, out) {
        Ok(output) => output,
        Err(message) => {
            out.note("FAILED");
            out.note(&format!("* {message}"));
            return false;
        }
    };
    let ok = output.status.success();
    out.note(if ok { "OK" } else { "FAILED" });
    let said = [output.stdout, output.stderr].concat();
    for line in String::from_utf8_lossy(&said).lines() {
        out.note(&format!("\t  {line}"));
    }
    match (output.status.code(), ok) {
        (_, true) => {}
        (Some(code), false) => out.note(&format!("* Child terminated with exit code {code}")),
        (None, false) => out.note(&format!("* Child was terminated: {}", output.status)),
    }
    ok
}

/// Runs the node's `worker --detach` to its end (the worker itself stays in the background).
fn run_detach(node: &Node, out: &Output) -> Result<std::process::Output, String> {
    create_parent(&node.pidfile, "pidfile")?;
    create_parent(&node.logfile, "logfile")?;
    out.info(&format!("\n  {}", node.command_line()?));
    let program = node.program()?;
    Command::new(&program)
        .args(&node.argv)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))
}

/// The directory of a node's file, created when missing (as Celery's multi does).
fn create_parent(file: &Path, what: &str) -> Result<(), String> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::create_dir_all(dir)
            .map_err(|e| {
                format!(
                    "cannot create {} for the {what} {}: {e} (choose another with --{what}=PATH)",
                    dir.display(),
                    file.display()
                )
            }),
        _ => Ok(()),
    }
}
