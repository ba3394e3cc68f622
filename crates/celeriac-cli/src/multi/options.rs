//! Celery's `NamespacedOptionParser`: `multi`'s raw arguments as node names, options for
//! every node, options for some nodes (`-c:1-3 10`, `--queues:w1=images`) and what follows
//! `--`.
//!
//! The grammar is Celery's: a short option takes the next argument as its value unless that
//! starts with `-`; a long option has its value after `=` (`--concurrency=4`: in
//! `--concurrency 4` the `4` is a node name); `-opt:NS value` sets `-opt` for the nodes `NS`
//! names (an index from 1, a node name, `a,b` lists, `1-3` ranges).

/// Options in the order first given; setting one again replaces its value in place (a
/// Python dict's order, which Celery's command lines follow). Short and long spellings of
/// one worker flag (`-c`, `--concurrency`) are the same option: the last spelling is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Options {
    entries: Vec<Opt>,
}

/// One option as written (`-c`, `--queues`) with its value (`None`: a flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Opt {
    pub name: String,
    pub value: Option<String>,
}

impl Options {
    pub(crate) fn set(&mut self, name: &str, value: Option<String>) {
        let opt = Opt {
            name: name.to_string(),
            value,
        };
        match self.position(name) {
            Some(i) => self.entries[i] = opt,
            None => self.entries.push(opt),
        }
    }

    /// The value of option `name` (`Some(None)`: a flag without a value).
    pub(crate) fn get(&self, name: &str) -> Option<Option<&str>> {
        self.position(name)
            .map(|i| self.entries[i].value.as_deref())
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<Option<String>> {
        self.position(name).map(|i| self.entries.remove(i).value)
    }

    /// Sets every option of `other` over these (Python's `dict.update`).
    pub(crate) fn update(&mut self, other: &Options) {
        for opt in &other.entries {
            self.set(&opt.name, opt.value.clone());
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Opt> {
        self.entries.iter()
    }

    fn position(&self, name: &str) -> Option<usize> {
        let wanted = canonical(name);
        self.entries
            .iter()
            .position(|o| canonical(&o.name) == wanted)
    }
}

/// The long spelling of a `worker` flag given short (`-c` -> `--concurrency`), from the
/// command line's own grammar; anything else as it is.
fn canonical(name: &str) -> String {
    let short = name
        .strip_prefix('-')
        .filter(|s| !s.starts_with('-') && s.chars().count() == 1)
        .and_then(|s| s.chars().next());
    short
        .and_then(|c| short_flags().iter().find(|(s, _)| *s == c))
        .map(|(_, long)| format!("--{long}"))
        .unwrap_or_else(|| name.to_string())
}

/// `(short, long)` of every flag `worker` takes, global ones included.
fn short_flags() -> &'static [(char, String)] {
    static FLAGS: std::sync::OnceLock<Vec<(char, String)>> = std::sync::OnceLock::new();
    FLAGS.get_or_init(|| {
        use clap::CommandFactory;
        let cli = crate::args::Cli::command();
        let worker = cli.find_subcommand("worker");
        cli.get_arguments()
            .chain(worker.into_iter().flat_map(|w| w.get_arguments()))
            .filter_map(|a| Some((a.get_short()?, a.get_long()?.to_string())))
            .collect()
    })
}

/// `multi`'s arguments taken apart.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// Options for every node.
    pub options: Options,
    /// Node names, or one number of nodes.
    pub values: Vec<String>,
    /// `--` and what follows, appended to every worker's command line.
    pub passthrough: Vec<String>,
    /// `(namespace, options)` in the order first given: `-c:1-3 10` is `("1-3", -c 10)`.
    pub namespaces: Vec<(String, Options)>,
}

impl Parsed {
    pub(crate) fn namespace_mut(&mut self, ns: &str) -> &mut Options {
        let i = match self.namespaces.iter().position(|(n, _)| n == ns) {
            Some(i) => i,
            None => {
                self.namespaces.push((ns.to_string(), Options::default()));
                self.namespaces.len() - 1
            }
        };
        &mut self.namespaces[i].1
    }

    #[cfg(test)]
    pub(crate) fn namespace(&self, ns: &str) -> Option<&Options> {
        self.namespaces
            .iter()
            .find(|(n, _)| n == ns)
            .map(|(_, o)| o)
    }

    fn add_option(&mut self, name: &str, value: Option<String>, prefix: &str) {
        match name.split_once(':') {
            Some((name, ns)) => self
                .namespace_mut(ns)
                .set(&format!("{prefix}{name}"), value),
            None => self.options.set(&format!("{prefix}{name}"), value),
        }
    }
}

/// Celery's `NamespacedOptionParser.parse`.
pub(crate) fn parse(args: &[String]) -> Parsed {
    let args: Vec<&String> = args.iter().filter(|a| !a.is_empty()).collect();
    let mut parsed = Parsed::default();
    let mut pos = 0;
    while pos < args.len() {
        let arg = args[pos].as_str();
        if arg == "--" {
            parsed.passthrough = args[pos..].iter().map(|a| a.to_string()).collect();
            break;
        } else if let Some(long) = arg.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (long, None),
            };
            parsed.add_option(name, value, "--");
        } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            let value = args
                .get(pos + 1)
                .filter(|next| !next.starts_with('-'))
                .map(|next| next.to_string());
            pos += usize::from(value.is_some());
            parsed.add_option(short, value, "-");
        } else {
            parsed.values.push(arg.to_string());
        }
        pos += 1;
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Parsed {
        let args: Vec<String> = line.split(' ').map(String::from).collect();
        parse(&args)
    }

    fn shown(options: &Options) -> Vec<(String, Option<String>)> {
        options
            .iter()
            .map(|o| (o.name.clone(), o.value.clone()))
            .collect()
    }

    fn opt(name: &str, value: Option<&str>) -> (String, Option<String>) {
        (name.to_string(), value.map(String::from))
    }

    #[test]
    fn names_options_namespaces_and_passthrough() {
        let p = parsed("w1 w2 -c 3 -c:1 10 --queues:w2=images -D --logfile=%n.log w3 -- -x y");
        assert_eq!(p.values, ["w1", "w2", "w3"]);
        assert_eq!(
            shown(&p.options),
            [
                opt("-c", Some("3")),
                opt("-D", None),
                opt("--logfile", Some("%n.log"))
            ]
        );
        assert_eq!(shown(p.namespace("1").unwrap()), [opt("-c", Some("10"))]);
        assert_eq!(
            shown(p.namespace("w2").unwrap()),
            [opt("--queues", Some("images"))]
        );
        assert_eq!(p.passthrough, ["--", "-x", "y"]);
    }

    #[test]
    fn a_long_option_takes_its_value_after_the_equals_sign_only() {
        let p = parsed("3 --concurrency 4");
        assert_eq!(p.values, ["3", "4"]);
        assert_eq!(shown(&p.options), [opt("--concurrency", None)]);
    }

    #[test]
    fn short_and_long_spellings_of_a_worker_flag_are_one_option() {
        let mut o = Options::default();
        o.set("-Q", Some("a".into()));
        o.set("-c", Some("1".into()));
        o.set("--queues", Some("b".into()));
        o.set("-l", Some("info".into()));
        o.set("--loglevel", Some("debug".into()));
        assert_eq!(
            shown(&o),
            [
                opt("--queues", Some("b")),
                opt("-c", Some("1")),
                opt("--loglevel", Some("debug"))
            ]
        );
        assert_eq!(o.get("--concurrency"), Some(Some("1")));
        assert_eq!(o.remove("-Q"), Some(Some("b".into())));
        assert_eq!(o.get("--queues"), None);
    }
}
