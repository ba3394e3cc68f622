//! `beat` runs the scheduler ([`run`]); `beat check FILE` and `beat list FILE` validate a
//! schedule file or list its entries with their next runs (in the file's time zone and in
//! UTC), without a broker.

mod run;

pub(crate) use run::{embedded, run};

use std::path::Path;

use celeriac_beat::ScheduleFile;
use chrono::Utc;

use celeriac::App;

use crate::args::{BeatArgs, BeatCommand};

pub(crate) async fn execute(app: &App, args: BeatArgs) -> Result<(), String> {
    let Some(command) = args.command else {
        return run(app, args.run).await;
    };
    match command {
        BeatCommand::Check { file } => {
            let schedule = read(&file)?;
            println!(
                "{}: {} entries, time zone {}",
                file.display(),
                schedule.entries.len(),
                schedule.timezone
            );
            Ok(())
        }
        BeatCommand::List { file } => {
            let schedule = read(&file)?;
            print!("{}", listing(&schedule));
            Ok(())
        }
    }
}

pub(crate) fn read(path: &Path) -> Result<ScheduleFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.parse().map_err(|e| format!("{}: {e}", path.display()))
}

/// One line per entry: name, task, schedule, next run (as beat would start now, with no
/// run recorded yet).
fn listing(schedule: &ScheduleFile) -> String {
    let now = Utc::now();
    let tz = schedule.timezone;
    let mut out = String::new();
    for entry in &schedule.entries {
        let next = entry.schedule.next_after(now, now, tz);
        out.push_str(&format!(
            "{}  {}  {}  next {} ({})\n",
            entry.name,
            entry.task,
            entry.schedule,
            next.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z"),
            next.format("%Y-%m-%dT%H:%M:%SZ"),
        ));
    }
    out
}
