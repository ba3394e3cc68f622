//! The configuration the command line runs with, and `config show`.

use celeriac::serde_json::{self, Map, Value};
use celeriac::{App, ConfigEntry, ConfigSources, LoadedConfig};

use crate::args::{ConfigCommand, GlobalArgs};

/// The app's code configuration with `--config`/`celeriac.toml`, `CELERIAC_*` and the global
/// flags layered over it.
pub(crate) fn load(app: &App, global: &GlobalArgs) -> Result<LoadedConfig, String> {
    load_from(app, global, ConfigSources::from_process())
}

fn load_from(
    app: &App,
    global: &GlobalArgs,
    mut sources: ConfigSources,
) -> Result<LoadedConfig, String> {
    if let Some(path) = &global.config {
        sources = sources.file(path);
    }
    if let Some(url) = &global.broker {
        sources = sources.flag("broker_url", "--broker", url.as_str());
    }
    if let Some(url) = &global.result_backend {
        sources = sources.flag("result_backend", "--result-backend", url.as_str());
    }
    app.config().load(&sources).map_err(|e| e.to_string())
}

pub(crate) fn execute(loaded: &LoadedConfig, command: ConfigCommand) -> Result<(), String> {
    match command {
        ConfigCommand::Show { json } => {
            let entries = loaded.entries();
            if json {
                println!("{}", as_json(&entries));
            } else {
                print!("{}", as_text(&entries));
            }
            Ok(())
        }
    }
}

/// One setting a line, TOML-like, with its source as a comment:
/// `worker_concurrency = 4  # env CELERIAC_WORKER_CONCURRENCY`.
fn as_text(entries: &[ConfigEntry]) -> String {
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
    let values: Vec<String> = entries.iter().map(|e| e.value.to_string()).collect();
    let value_width = values.iter().map(String::len).max().unwrap_or(0).min(40);
    entries
        .iter()
        .zip(&values)
        .map(|(e, value)| {
            let note = e.note.map(|n| format!(" ({n})")).unwrap_or_default();
            format!(
                "{:<width$} = {value:<value_width$}  # {}{note}\n",
                e.name, e.origin
            )
        })
        .collect()
}

fn as_json(entries: &[ConfigEntry]) -> String {
    let settings: Map<String, Value> = entries
        .iter()
        .map(|e| {
            let mut entry = Map::new();
            entry.insert("value".into(), e.value.clone());
            entry.insert("source".into(), e.origin.to_string().into());
            if let Some(note) = e.note {
                entry.insert("note".into(), note.into());
            }
            (e.name.to_string(), Value::Object(entry))
        })
        .collect();
    serde_json::to_string_pretty(&Value::Object(settings)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(broker: Option<&str>) -> GlobalArgs {
        GlobalArgs {
            config: None,
            broker: broker.map(String::from),
            result_backend: None,
            loglevel: None,
        }
    }

    #[test]
    fn show_prints_values_and_sources_with_passwords_redacted() {
        let app = App::builder("t")
            .result_backend("redis://:pw@code:6379/1")
            .build();
        let env = ConfigSources::new().env([("CELERIAC_WORKER_CONCURRENCY", "3")]);
        let loaded = load_from(&app, &global(Some("redis://u:secret@flag:6379/0")), env).unwrap();
        let text = as_text(&loaded.entries());
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .to_string()
        };
        assert!(
            line("broker_url").contains("\"redis://u:***@flag:6379/0\""),
            "{text}"
        );
        assert!(line("broker_url").ends_with("# flag --broker"), "{text}");
        assert!(
            line("result_backend").contains("redis://:***@code:6379/1"),
            "{text}"
        );
        assert!(line("result_backend").ends_with("# code"), "{text}");
        assert!(
            line("worker_concurrency").ends_with("# env CELERIAC_WORKER_CONCURRENCY"),
            "{text}"
        );
        assert!(line("timezone").contains("\"UTC\""), "{text}");
        assert!(!text.contains("secret") && !text.contains(":pw@"), "{text}");

        let json: Value = serde_json::from_str(&as_json(&loaded.entries())).unwrap();
        assert_eq!(json["worker_concurrency"]["value"], 3);
        assert_eq!(json["broker_url"]["source"], "flag --broker");
    }
}
