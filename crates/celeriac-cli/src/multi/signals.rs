//! The signal `stop`, `stopwait` and `restart` send: SIGTERM unless an argument names another,
//! as `-KILL`, `-SIGINT` or `-9` (Celery's `_find_sig_argument`; the last one wins).

/// A signal with the name Celery prints for it (`TERM`, `KILL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Signal {
    pub number: i32,
    pub name: &'static str,
}

pub(crate) const TERM: Signal = Signal {
    number: libc::SIGTERM,
    name: "TERM",
};
pub(crate) const KILL: Signal = Signal {
    number: libc::SIGKILL,
    name: "KILL",
};

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ABRT", libc::SIGABRT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("WINCH", libc::SIGWINCH),
];

/// The signal an argument names (`-TERM`, `-SIGTERM`, `-15`), if it names one of `SIGNALS`.
fn named(arg: &str) -> Option<Signal> {
    let name = arg.strip_prefix('-')?;
    let name = name.strip_prefix("SIG").unwrap_or(name);
    let number = name.parse::<i32>().ok();
    SIGNALS
        .iter()
        .find(|&&(n, num)| n == name || Some(num) == number)
        .map(|&(name, number)| Signal { number, name })
}

/// Takes the signal arguments out of `args`: the last names the signal, default SIGTERM.
pub(crate) fn take(args: &mut Vec<String>) -> Signal {
    let mut signal = TERM;
    args.retain(|arg| match named(arg) {
        Some(s) => {
            signal = s;
            false
        }
        None => true,
    });
    signal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_arguments_are_taken_out_and_the_last_wins() {
        let mut args: Vec<String> = ["3", "-KILL", "-c", "2", "-SIGINT"]
            .map(String::from)
            .to_vec();
        assert_eq!(take(&mut args).number, libc::SIGINT);
        assert_eq!(args, ["3", "-c", "2"]);
        let mut args = vec!["w1".to_string(), "-9".to_string()];
        assert_eq!(take(&mut args), KILL);
        let mut args = vec!["w1".to_string(), "-Q".to_string(), "a".to_string()];
        assert_eq!(take(&mut args), TERM);
        assert_eq!(args.len(), 3);
    }
}
