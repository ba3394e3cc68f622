//! `multi stop`, `stopwait`, `kill` and `restart`: signals to the pids in the nodes'
//! pidfiles.
//!
//! A pidfile is never trusted blindly: its pid must name a live process (not a zombie)
//! before it is signalled; otherwise the node is reported DOWN and the stale file removed.
//! A pidfile left by a worker that could not remove it (killed) is removed once its process
//! is gone.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::nodes::Node;
use super::output::Output;
use super::signals::{Signal, KILL};
use super::start::{exit_code, start_node};
use crate::pidfile::{self, Content, Pidfile};

/// How often a wait checks the processes.
const POLL: Duration = Duration::from_millis(50);
/// How long `kill` waits for killed processes to be gone before removing their pidfiles.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// `stop` (`wait` false: signal and return) and `stopwait` (wait for each to exit).
pub(crate) fn stop(nodes: &[Node], sig: Signal, wait: bool, out: &Output) -> ExitCode {
    let live = live_nodes(nodes, out);
    if live.is_empty() {
        return ExitCode::SUCCESS;
    }
    out.note("> Stopping nodes...");
    let mut signalled = Vec::new();
    for (node, pid) in live {
        out.note(&format!("\t> {}: {} -> {pid}", node.name, sig.name));
        if send(node, pid, sig, out) {
            signalled.push((node, pid));
        }
    }
    if wait && !signalled.is_empty() {
        let pids: Vec<String> = signalled.iter().map(|(_, pid)| pid.to_string()).collect();
        let s = if pids.len() == 1 { "" } else { "s" };
        out.note(&format!(
            "> Waiting for {} node{s} -> {}...",
            pids.len(),
            pids.join(", ")
        ));
        wait_gone(signalled, None, |node, pid| {
            out.note(&format!("\t> {}: OK", node.name));
            clear_pidfile(node, pid);
        });
    }
    ExitCode::SUCCESS
}

/// `kill`: SIGKILL to every live node, then their pidfiles removed once they are gone.
pub(crate) fn kill(nodes: &[Node], out: &Output) -> ExitCode {
    let mut killed = Vec::new();
    for (node, pid) in live_nodes(nodes, out) {
        out.note(&format!(
            "Sending {} to node {} ({pid})",
            KILL.name, node.name
        ));
        if send(node, pid, KILL, out) {
            killed.push((node, pid));
        }
    }
    let left = wait_gone(killed, Some(KILL_WAIT), clear_pidfile);
    for (node, pid) in &left {
        out.note(&format!(
            "> {}: pid {pid} still running after SIGKILL",
            node.name
        ));
    }
    exit_code(!left.is_empty())
}

/// `restart`, one node at a time: signal it, wait for it to exit, start it again (a node
/// that is down is just started).
pub(crate) fn restart(nodes: &[Node], sig: Signal, out: &Output) -> ExitCode {
    let mut failed = false;
    for node in nodes {
        if let Some(pid) = live_pid(node, out) {
            out.note(&format!("\t> {}: {} -> {pid}", node.name, sig.name));
            if send(node, pid, sig, out) {
                out.note_open(&format!("> Waiting for {} -> {pid}...", node.name));
                wait_gone(vec![(node, pid)], None, clear_pidfile);
                out.note(" OK");
            }
        }
        out.note_open(&format!("> Restarting node {}: ", node.name));
        failed |= !start_node(node, out);
    }
    exit_code(failed)
}

/// The nodes whose pidfile names a live process, with that pid.
fn live_nodes<'a>(nodes: &'a [Node], out: &Output) -> Vec<(&'a Node, u32)> {
    nodes
        .iter()
        .filter_map(|node| Some((node, live_pid(node, out)?)))
        .collect()
}

/// The live pid in the node's pidfile; else the node is reported DOWN (a stale pidfile is
/// removed and said so).
fn live_pid(node: &Node, out: &Output) -> Option<u32> {
    let file = Pidfile::new(&node.pidfile);
    let why = match file.read() {
        Ok(Content::Pid(pid)) if pidfile::process_alive(pid) => return Some(pid),
        Ok(Content::Missing) => String::new(),
        Ok(_) => match file.remove_if_stale() {
            Ok(Some(stale)) => format!(" ({stale})"),
            Ok(None) => String::new(),
            Err(e) => format!(" ({e})"),
        },
        Err(e) => format!(" ({e})"),
    };
    out.note(&format!("> {}: DOWN{why}", node.name));
    None
}

/// Sends `sig`; a process gone meanwhile is said so and its pidfile removed.
fn send(node: &Node, pid: u32, sig: Signal, out: &Output) -> bool {
    if pidfile::signal(pid, sig.number) {
        return true;
    }
    out.note(&format!(
        "Could not signal {} ({pid}): No such process",
        node.name
    ));
    clear_pidfile(node, pid);
    false
}

/// Removes the node's pidfile if it still holds `pid` (a worker that was killed).
fn clear_pidfile(node: &Node, pid: u32) {
    let file = Pidfile::new(&node.pidfile);
    if file.read() == Ok(Content::Pid(pid)) && !pidfile::process_alive(pid) {
        let _ = file.remove();
    }
}

/// Waits until every process is gone (or `limit` passes), calling `gone` for each as it
/// goes; returns those still running.
fn wait_gone(
    mut pending: Vec<(&Node, u32)>,
    limit: Option<Duration>,
    mut gone: impl FnMut(&Node, u32),
) -> Vec<(&Node, u32)> {
    let deadline = limit.map(|l| Instant::now() + l);
    loop {
        pending.retain(|&(node, pid)| {
            let alive = pidfile::process_alive(pid);
            if !alive {
                gone(node, pid);
            }
            alive
        });
        if pending.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
            return pending;
        }
        std::thread::sleep(POLL);
    }
}
