//! Celery's `MultiParser` and `Node`: from the parsed arguments to each node's name, files and
//! `worker --detach` command line.
//!
//! Names: one number `N` gives `celery1@<host>` ... `celeryN@<host>` (`--range-prefix`
//! changes `celery`); other names get `--prefix` before them and `@<host>` after them unless
//! they hold an `@` (`--hostname`/`-n` or `--suffix` change the host; `%h` expands). Options
//! for some nodes (`-c:1-3 10`) are merged over the options for all, in command-line order:
//! the later wins. (Celery applies `1,2` lists only to numbered nodes and lets a range beat a
//! later single index; celeriac applies both to every node it names.)
//!
//! Files: `--pidfile` (default `/var/run/celery/%n.pid`) and `--logfile` (default
//! `/var/log/celery/%n%I.log`), Celery's defaults; in them and in every option value `%n` is
//! the node's short name, `%h` its whole name, `%d` its host, while `%i`/`%I` are left for the
//! worker (its process index).

use std::path::PathBuf;

use super::options::{Options, Parsed};
use crate::nodename::{host_format, nodesplit, DEFAULT_NAME};

pub(crate) const DEFAULT_PIDFILE: &str = "/var/run/celery/%n.pid";
pub(crate) const DEFAULT_LOGFILE: &str = "/var/log/celery/%n%I.log";

/// Options that go before the `worker` verb, as Celery moves its global options; their
/// values are not expanded.
const GLOBAL_OPTIONS: &[&str] = &["--broker", "--result-backend", "--config"];

/// One worker of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// `name@host`.
    pub name: String,
    pub pidfile: PathBuf,
    /// As the worker is given it (`%I` and `%i` not yet expanded).
    pub logfile: PathBuf,
    /// `--executable`: the program to run as the worker (default: this one).
    pub executable: Option<PathBuf>,
    /// The worker's arguments after the program: `[globals] worker --detach options...`.
    pub argv: Vec<String>,
}

/// How node names are made (`--hostname`, `--prefix`, `--suffix`, `--range-prefix`).
struct Naming {
    prefix: String,
    suffix: String,
    range_prefix: String,
}

impl Naming {
    /// Takes `multi`'s own naming options out of the options for all nodes.
    fn take_from(options: &mut Options) -> Naming {
        let mut take = |name: &str| options.remove(name).flatten().filter(|v| !v.is_empty());
        let hostname = take("--hostname").unwrap_or_else(celeriac::core::message::hostname);
        let prefix = take("--prefix").unwrap_or_default();
        let suffix = match take("--suffix") {
            Some(s) if s == "\"\"" || s == "''" => String::new(),
            Some(s) => s,
            None => hostname,
        };
        let range_prefix = take("--range-prefix").unwrap_or_else(|| DEFAULT_NAME.into());
        Naming {
            prefix,
            suffix,
            range_prefix,
        }
    }

    /// The names as given (`1`..`N` for a number), their prefix, and whether they are a range.
    fn names(&self, values: &[String]) -> (Vec<String>, &str, bool) {
        if let [only] = values {
            if let Ok(n) = only.parse::<usize>() {
                let names = (1..=n).map(|i| i.to_string()).collect();
                return (names, &self.range_prefix, true);
            }
        }
        (values.to_vec(), &self.prefix, false)
    }

    /// `(namespace, node name)` of a name as given (Celery's `build_nodename`).
    fn nodename(&self, given: &str, prefix: &str) -> Result<(String, String), String> {
        if given.contains('@') {
            let nodename = host_format(given, None, None, &[])?;
            let short = nodesplit(&nodename).0.unwrap_or_default().to_string();
            Ok((short, nodename))
        } else {
            let nodename =
                host_format(&format!("{prefix}{given}@{}", self.suffix), None, None, &[])?;
            Ok((given.to_string(), nodename))
        }
    }
}

/// The nodes `multi`'s arguments describe (Celery's `MultiParser.parse`).
pub(crate) fn nodes(mut parsed: Parsed) -> Result<Vec<Node>, String> {
    let naming = Naming::take_from(&mut parsed.options);
    let (names, prefix, ranges) = naming.names(&parsed.values);
    if names.is_empty() {
        return Err("name the nodes (`w1 w2`) or give their number (`3`)".into());
    }
    expand_namespace_lists(&mut parsed, ranges);
    map_namespace_indexes(&mut parsed, &names)?;
    names
        .iter()
        .map(|given| {
            let (namespace, nodename) = naming.nodename(given, prefix)?;
            let mut options = parsed.options.clone();
            for (ns, opts) in &parsed.namespaces {
                if *ns == *given || *ns == namespace || *ns == nodename {
                    options.update(opts);
                }
            }
            Node::new(nodename, options, &parsed.passthrough)
        })
        .collect()
}

/// `-c:1,2` and (numbered nodes) `-c:1-3` become one namespace per item.
fn expand_namespace_lists(parsed: &mut Parsed, ranges: bool) {
    for (ns, opts) in std::mem::take(&mut parsed.namespaces) {
        let items: Vec<String> = if ns.contains(',') || (ranges && ns.contains('-')) {
            ns.split(',')
                .flat_map(|item| range_items(item, ranges))
                .collect()
        } else {
            vec![ns]
        };
        for item in items {
            parsed.namespace_mut(&item).update(&opts);
        }
    }
}

/// `3-5` as `3`, `4`, `5` (numbered nodes only); anything else as it is.
fn range_items(item: &str, ranges: bool) -> Vec<String> {
    let bounds = item
        .split_once('-')
        .filter(|_| ranges)
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    match bounds {
        Some((start, stop)) => (start..=stop).map(|i| i.to_string()).collect(),
        None => vec![item.to_string()],
    }
}

/// `-c:2` is for the second node, whatever its name (Celery's `_update_ns_opts`).
fn map_namespace_indexes(parsed: &mut Parsed, names: &[String]) -> Result<(), String> {
    let indexed: Vec<(usize, Options)> = parsed
        .namespaces
        .iter()
        .filter(|(ns, _)| !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_digit()))
        .map(|(ns, opts)| {
            let index = ns
                .parse::<usize>()
                .map_err(|e| format!("node index {ns}: {e}"))?;
            Ok((index, opts.clone()))
        })
        .collect::<Result<_, String>>()?;
    for (index, opts) in indexed {
        let name = match index.checked_sub(1) {
            None => return Err(format!("node indexes start at 1, got {index}")),
            Some(i) => names
                .get(i)
                .ok_or_else(|| format!("no node at index {index} (there are {})", names.len()))?,
        };
        if *name != index.to_string() {
            parsed.namespace_mut(name).update(&opts);
        }
    }
    Ok(())
}

impl Node {
    /// Celery's `Node`: `-n` set to the name, the file defaults filled in.
    fn new(name: String, mut options: Options, passthrough: &[String]) -> Result<Node, String> {
        // Every node is detached already; `--executable` is multi's, not the worker's.
        options.remove("--detach");
        let executable = options.remove("--executable").flatten().map(PathBuf::from);
        options.set("-n", Some(name.clone()));
        for (flag, default) in [
            ("--pidfile", DEFAULT_PIDFILE),
            ("--logfile", DEFAULT_LOGFILE),
        ] {
            match options.get(flag) {
                None => options.set(flag, Some(default.into())),
                Some(None) => return Err(format!("{flag} needs a value: {flag}=PATH")),
                Some(Some(_)) => {}
            }
        }
        let mut node = Node {
            name,
            pidfile: PathBuf::new(),
            logfile: PathBuf::new(),
            executable,
            argv: Vec::new(),
        };
        let file = |flag| node.expand(options.get(flag).flatten().unwrap_or_default());
        let (pidfile, logfile) = (file("--pidfile")?, file("--logfile")?);
        node.pidfile = pidfile.into();
        node.logfile = logfile.into();
        node.argv = node.worker_argv(&options, passthrough)?;
        Ok(node)
    }

    /// `[globals] worker --detach options... [-- passthrough]`, values expanded.
    fn worker_argv(
        &self,
        options: &Options,
        passthrough: &[String],
    ) -> Result<Vec<String>, String> {
        let (mut globals, mut rest) = (Vec::new(), Vec::new());
        for opt in options.iter() {
            // URLs are taken as they are: `%2f` is a vhost, not an abbreviation.
            if GLOBAL_OPTIONS.contains(&opt.name.as_str()) {
                globals.extend(format_opt(&opt.name, opt.value.clone()));
            } else {
                let value = opt.value.as_deref().map(|v| self.expand(v)).transpose()?;
                rest.extend(format_opt(&opt.name, value));
            }
        }
        globals.extend(["worker".to_string(), "--detach".to_string()]);
        globals.extend(rest);
        globals.extend(passthrough.iter().cloned());
        Ok(globals)
    }

    /// The node's `%` abbreviations in `s` (Celery's `build_expander`: `%n`/`%N` the short
    /// name, `%h`/`%p` the node name, `%d` the host; `%i`/`%I` stay for the worker).
    pub(crate) fn expand(&self, s: &str) -> Result<String, String> {
        let (short, host) = self
            .name
            .split_once('@')
            .unwrap_or((DEFAULT_NAME, &self.name));
        let extra = [
            ('p', self.name.as_str()),
            ('N', short),
            ('d', host),
            ('h', self.name.as_str()),
            ('i', "%i"),
            ('I', "%I"),
        ];
        host_format(s, Some(host), Some(short), &extra)
    }

    /// The program the node runs: `--executable`, else this one.
    pub(crate) fn program(&self) -> Result<PathBuf, String> {
        match &self.executable {
            Some(path) => Ok(path.clone()),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find this program to start workers: {e}")),
        }
    }

    /// The command line as a shell would take it (`show`).
    pub(crate) fn command_line(&self) -> Result<String, String> {
        let program = self.program()?.display().to_string();
        let words: Vec<String> = std::iter::once(&program)
            .chain(&self.argv)
            .map(|w| shell_quoted(w))
            .collect();
        Ok(words.join(" "))
    }
}

/// Celery's `format_opt`: `--long=value`, `-s value`, or the flag alone.
fn format_opt(name: &str, value: Option<String>) -> Vec<String> {
    match value.filter(|v| !v.is_empty()) {
        None => vec![name.to_string()],
        Some(v) if name.starts_with("--") => vec![format!("{name}={v}")],
        Some(v) => vec![name.to_string(), v],
    }
}

fn shell_quoted(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::options::parse;
    use super::*;

    fn cluster(line: &str) -> Vec<Node> {
        let args: Vec<String> = line.split(' ').map(String::from).collect();
        nodes(parse(&args)).unwrap()
    }

    fn names(nodes: &[Node]) -> Vec<&str> {
        nodes.iter().map(|n| n.name.as_str()).collect()
    }

    fn argv(node: &Node) -> String {
        node.argv.join(" ")
    }

    #[test]
    fn a_number_gives_celerys_numbered_names() {
        let host = celeriac::core::message::hostname();
        let n = cluster("3");
        assert_eq!(names(&n), [1, 2, 3].map(|i| format!("celery{i}@{host}")));
        let n = cluster("2 --hostname=box.example.com --range-prefix=w");
        assert_eq!(names(&n), ["w1@box.example.com", "w2@box.example.com"]);
        let n = cluster("image video@%h full@other.host --prefix=x- --suffix=h");
        assert_eq!(
            names(&n),
            [
                "x-image@h".to_string(),
                format!("video@{host}"),
                "full@other.host".into()
            ]
        );
    }

    #[test]
    fn options_for_some_nodes_by_index_range_list_and_name() {
        let n = cluster("5 -c 3 -c:1-2 10 -Q:3,5 images -c:4 7 --hostname=h");
        let c = |i: usize| {
            n[i].argv
                .iter()
                .position(|a| a == "-c")
                .map(|p| n[i].argv[p + 1].clone())
        };
        assert_eq!(
            (0..5).map(c).collect::<Vec<_>>(),
            ["10", "10", "3", "7", "3"].map(|s| Some(s.to_string()))
        );
        assert!(argv(&n[2]).contains("-Q images") && argv(&n[4]).contains("-Q images"));
        assert!(!argv(&n[3]).contains("-Q"));

        let n = cluster("a b c -c 3 -c:b 4 -c:1,3 5 -Q:2 q --hostname=h");
        assert!(
            argv(&n[0]).contains("-c 5") && argv(&n[2]).contains("-c 5"),
            "{n:?}"
        );
        assert!(argv(&n[1]).contains("-c 4 ") && argv(&n[1]).contains("-Q q"));
        // The later of two settings for one node wins, whichever names it.
        let n = cluster("3 -c:1-2 10 -c:1 5 --hostname=h");
        assert!(argv(&n[0]).contains("-c 5") && argv(&n[1]).contains("-c 10"));
    }

    #[test]
    fn the_worker_command_line_as_celery_builds_it() {
        let n = cluster("2 -l info --queues=a,%n --broker=amqp://h/%2f -D -c:2 4 --hostname=h");
        assert_eq!(
            argv(&n[1]),
            "--broker=amqp://h/%2f worker --detach -l info --queues=a,celery2 -c 4 \
             -n celery2@h --pidfile=/var/run/celery/celery2.pid \
             --logfile=/var/log/celery/celery2%I.log"
        );
        let n = cluster("w1 --pidfile=/run/%h/%n.pid -f /log/%d-%N-%i.log --hostname=h -- -x");
        assert_eq!(n[0].pidfile, PathBuf::from("/run/w1@h/w1.pid"));
        assert_eq!(n[0].logfile, PathBuf::from("/log/h-w1-%i.log"));
        assert!(
            argv(&n[0]).contains(" -f /log/h-w1-%i.log "),
            "{}",
            argv(&n[0])
        );
        assert!(argv(&n[0]).ends_with(" -- -x"), "{}", argv(&n[0]));
        assert!(!argv(&n[0]).contains("--logfile"));
    }

    #[test]
    fn bad_indexes_and_missing_values_are_errors() {
        let err = |line: &str| {
            let args: Vec<String> = line.split(' ').map(String::from).collect();
            nodes(parse(&args)).unwrap_err()
        };
        assert!(err("2 -c:0 3").contains("start at 1"));
        assert!(err("a b -c:3 3").contains("no node at index 3"));
        assert!(err("2 --pidfile").contains("--pidfile=PATH"));
        assert!(err("-c 3").contains("name the nodes"));
        assert!(err("2 --logfile=%x.log").contains("%x"));
    }

    #[test]
    fn show_quotes_for_a_shell() {
        assert_eq!(shell_quoted("a,b@h"), "a,b@h");
        assert_eq!(shell_quoted("it's"), r"'it'\''s'");
        assert_eq!(shell_quoted(""), "''");
    }
}
