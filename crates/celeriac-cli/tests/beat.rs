//! `celeriac beat check` and `beat list` on schedule files: a good file is summarised and
//! listed with next run times; a bad one is one error line naming the entry and the field,
//! and a non-zero exit.

use std::process::{Command, Output};

const CELERIAC: &str = env!("CARGO_BIN_EXE_celeriac");

const GOOD: &str = r#"
timezone = "Europe/Stockholm"

[[entry]]
name = "tick"
task = "pytasks.record"
args = ["tick"]
every = "1s"
queue = "py"

[[entry]]
name = "nightly"
task = "reports.build"
cron = "30 2 * * *"
"#;

fn beat(verb: &str, text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schedule.toml");
    std::fs::write(&path, text).unwrap();
    Command::new(CELERIAC)
        .args(["beat", verb])
        .arg(&path)
        .current_dir(dir.path())
        .env_clear()
        .output()
        .expect("celeriac runs")
}

#[test]
fn a_good_file_is_checked_and_listed_with_next_runs() {
    let checked = beat("check", GOOD);
    assert!(checked.status.success(), "{checked:?}");
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(
        out.contains("2 entries, time zone Europe/Stockholm"),
        "{out}"
    );
    let listed = beat("list", GOOD);
    assert!(listed.status.success(), "{listed:?}");
    let out = String::from_utf8_lossy(&listed.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("tick  pytasks.record  every 1s  next "),
        "{out}"
    );
    assert!(
        lines[1].starts_with("nightly  reports.build  cron 30 2 * * *  next "),
        "{out}"
    );
    // 02:30 in Stockholm, with its UTC instant (01:30 or 00:30 UTC, by season).
    assert!(lines[1].contains(" 02:30:00 CE"), "{out}");
    assert!(lines[1].contains(":30:00Z)"), "{out}");
}

#[test]
fn a_bad_file_is_one_line_naming_the_entry_and_the_field_and_fails() {
    let bad = GOOD.replace(r#"cron = "30 2 * * *""#, r#"cron = "30 25 * * *""#);
    let checked = beat("check", &bad);
    assert!(!checked.status.success());
    let err = String::from_utf8_lossy(&checked.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        lines[0].contains(r#"entry "nightly": cron: hour: "#),
        "{err}"
    );
    let duplicate = GOOD.replace(r#"name = "nightly""#, r#"name = "tick""#);
    let err = String::from_utf8_lossy(&beat("list", &duplicate).stderr).to_string();
    assert!(
        err.contains(r#"duplicate entry name "tick" (entries 1 and 2)"#),
        "{err}"
    );
}
