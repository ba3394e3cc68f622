//! `multi show`, `names`, `expand` and `get`: what the other verbs would do, printed.

use std::process::ExitCode;

use super::nodes::Node;
use super::output::Output;

/// Each node's worker command line.
pub(crate) fn show(nodes: &[Node], out: &Output) -> Result<ExitCode, String> {
    for node in nodes {
        out.say(&node.command_line()?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Each node's name.
pub(crate) fn names(nodes: &[Node], out: &Output) -> ExitCode {
    for node in nodes {
        out.say(&node.name);
    }
    ExitCode::SUCCESS
}

/// `template` expanded for each node (`%n`, `%h`, `%d`...).
pub(crate) fn expand(template: &str, nodes: &[Node], out: &Output) -> Result<ExitCode, String> {
    for node in nodes {
        out.say(&node.expand(template)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The worker arguments of the node named `wanted`; failure when there is none.
pub(crate) fn get(wanted: &str, nodes: &[Node], out: &Output) -> ExitCode {
    match nodes.iter().find(|n| n.name == wanted) {
        Some(node) => {
            out.say(&node.argv.join(" "));
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}
