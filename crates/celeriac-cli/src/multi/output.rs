//! What `multi` prints (Celery's `TermLogger`): its options `--nosplash`, `-q/--quiet`,
//! `--verbose` and `--no-color` (accepted: celeriac prints no colours) may appear anywhere
//! after the verb.

use std::io::Write;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Output {
    nosplash: bool,
    quiet: bool,
    verbose: bool,
}

impl Output {
    /// Takes `multi`'s own output options out of `args`.
    pub(crate) fn take_from(args: &mut Vec<String>) -> Output {
        let mut out = Output::default();
        args.retain(|arg| {
            match arg.as_str() {
                "--nosplash" => out.nosplash = true,
                "-q" | "--quiet" => out.quiet = true,
                "--verbose" => out.verbose = true,
                "--no-color" => {}
                _ => return true,
            }
            false
        });
        out
    }

    /// The program's output proper (`names`, `show`): always printed.
    pub(crate) fn say(&self, line: &str) {
        println!("{line}");
    }

    /// Progress, unless `--quiet`.
    pub(crate) fn note(&self, line: &str) {
        if !self.quiet {
            println!("{line}");
        }
    }

    /// Progress with the line left open (`\t> celery1@host: ` then `OK`).
    pub(crate) fn note_open(&self, text: &str) {
        if !self.quiet {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
    }

    /// Details, with `--verbose` only.
    pub(crate) fn info(&self, line: &str) {
        if self.verbose {
            self.note(line);
        }
    }

    /// `celeriac multi v<version>` before the verbs that act.
    pub(crate) fn splash(&self) {
        if !self.nosplash {
            self.note(&format!("celeriac multi v{}", env!("CARGO_PKG_VERSION")));
        }
    }
}
