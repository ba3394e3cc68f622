//! The effective configuration as `config show` prints it: every setting, its value in
//! force (defaults resolved, secrets redacted) and where it came from.

use celeriac_core::url::redact;
use serde_json::Value;

use super::load::{LoadedConfig, Origin};
use super::settings::{setting_names, settings_of};

/// One setting of an effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigEntry {
    pub name: &'static str,
    /// The value in force, as a file would write it; passwords replaced by `***`.
    pub value: Value,
    pub origin: Origin,
    /// What an unset setting falls back to, when that is not obvious from the value.
    pub note: Option<&'static str>,
}

/// Keys of `broker_transport_options` (at any depth) whose values are secrets.
const SECRET_KEYS: &[&str] = &["password", "passwd", "secret", "token"];

impl LoadedConfig {
    /// Every setting in `docs/configuration.md`'s order, ready to print.
    pub fn entries(&self) -> Vec<ConfigEntry> {
        let config = self.config();
        let settings = settings_of(config);
        setting_names()
            .map(|name| {
                let (value, note) = match name {
                    "broker_url" => (
                        redact(&config.resolved_broker_url()).into(),
                        config.broker_url.is_none().then_some("the embedded store"),
                    ),
                    "result_backend" => (
                        redact(&config.resolved_backend_url()).into(),
                        config
                            .result_backend
                            .is_none()
                            .then_some("follows the broker"),
                    ),
                    "worker_concurrency" if config.worker_concurrency.is_none() => {
                        (cpu_count().into(), Some("number of CPUs"))
                    }
                    "result_expires" if config.result_expires.is_none() => {
                        (0.into(), Some("never expire"))
                    }
                    "task_time_limit"
                    | "task_soft_time_limit"
                    | "worker_max_tasks_per_child"
                    | "worker_max_memory_per_child"
                        if !settings.contains_key(name) =>
                    {
                        (0.into(), Some("no limit"))
                    }
                    _ => (redact_secrets(settings[name].clone()), None),
                };
                ConfigEntry {
                    name,
                    value,
                    origin: self.origin(name).cloned().unwrap_or(Origin::Default),
                    note,
                }
            })
            .collect()
    }
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn redact_secrets(value: Value) -> Value {
    match value {
        Value::Object(table) => Value::Object(
            table
                .into_iter()
                .map(|(key, v)| {
                    let lower = key.to_ascii_lowercase();
                    let v = if SECRET_KEYS.iter().any(|s| lower.contains(s)) {
                        "***".into()
                    } else if let Value::String(url) = &v {
                        redact(url).into()
                    } else {
                        redact_secrets(v)
                    };
                    (key, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact_secrets).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{Config, ConfigSources};

    fn entry(entries: &[ConfigEntry], name: &str) -> ConfigEntry {
        entries.iter().find(|e| e.name == name).unwrap().clone()
    }

    #[test]
    fn entries_resolve_defaults_and_redact_passwords() {
        let sources = ConfigSources::new()
            .env([
                ("CELERIAC_BROKER_URL", "amqp://user:s3cret@rabbit:5672//"),
                (
                    "CELERIAC_BROKER_TRANSPORT_OPTIONS",
                    r#"{"sentinel_kwargs": {"password": "hunter2"}, "region": "eu"}"#,
                ),
            ])
            .flag("result_backend", "--result-backend", "redis://:pw@r:6379/1");
        let entries = Config::default().load(&sources).unwrap().entries();
        let names: Vec<_> = entries.iter().map(|e| e.name).collect();
        assert_eq!(names, setting_names().collect::<Vec<_>>());

        let broker = entry(&entries, "broker_url");
        assert_eq!(broker.value, "amqp://user:***@rabbit:5672//");
        assert_eq!(broker.origin, Origin::Env("CELERIAC_BROKER_URL".into()));
        let backend = entry(&entries, "result_backend");
        assert_eq!(backend.value, "redis://:***@r:6379/1");
        assert_eq!(backend.origin, Origin::Flag("--result-backend".into()));
        assert_eq!(
            entry(&entries, "broker_transport_options").value,
            json!({"sentinel_kwargs": {"password": "***"}, "region": "eu"})
        );
        let rendered = format!("{entries:?}");
        assert!(!rendered.contains("s3cret") && !rendered.contains("hunter2"));
    }

    #[test]
    fn unset_settings_show_what_they_fall_back_to() {
        let amqp = Config {
            broker_url: Some("amqp://rabbit//".into()),
            ..Config::default()
        };
        let entries = amqp.load(&ConfigSources::new()).unwrap().entries();
        let backend = entry(&entries, "result_backend");
        assert_eq!(backend.value, "rpc://");
        assert_eq!(backend.origin, Origin::Default);
        assert!(backend.note.is_some());
        assert_eq!(entry(&entries, "broker_url").origin, Origin::Code);
        assert_eq!(
            entry(&entries, "worker_concurrency").note,
            Some("number of CPUs")
        );
        assert_eq!(entry(&entries, "result_expires").value, 86_400);
    }
}
