//! Configuration, with Celery's setting names.
//!
//! [`Config`] is a plain struct that code fills in. Deployments add layers on top of it with
//! [`Config::load`]: a TOML file (`celeriac.toml`), the environment (`CELERIAC_<SETTING>`) and
//! command-line flags. Precedence: flags > environment > file > code > defaults. The
//! `celeriac_cli::run` command line does this for every verb; see `docs/configuration.md`.

mod load;
mod settings;
mod show;

use std::time::Duration;

use celeriac_worker::PoolKind;

pub use load::{ConfigError, ConfigSources, LoadedConfig, Origin};
pub use settings::setting_names;
pub use show::ConfigEntry;

/// The embedded store, used when no broker is configured.
pub const DEFAULT_URL: &str = "sqlite://celeriac.db";
/// The `result_backend` value that means "store no results".
pub const DISABLED_BACKEND: &str = "disabled";
/// Where results go when the broker is RabbitMQ and no result backend is configured.
pub const RPC_BACKEND: &str = "rpc://";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `broker_url`; `None` means the embedded default, [`DEFAULT_URL`].
    pub broker_url: Option<String>,
    /// `broker_transport_options`: engine-specific options, as in Celery
    /// (`visibility_timeout`, ...). Stored and shown, not yet handed to the engines, which
    /// take their options from the URL's query (`redis://h/0?visibility_timeout=30`).
    pub broker_transport_options: serde_json::Map<String, serde_json::Value>,
    /// `result_backend`; `None` means the broker's own server when it can hold results (the
    /// embedded store and Redis can), `rpc://` for RabbitMQ. `disabled` stores no results.
    pub result_backend: Option<String>,
    /// `task_default_queue`.
    pub task_default_queue: String,
    /// `task_routes`: (task name pattern with `*` wildcards, queue), first match wins.
    pub task_routes: Vec<(String, String)>,
    /// `task_acks_late`: with `true`, every task acks late (after its result is stored),
    /// whatever its own [`TaskOptions::acks_late`] says; with `false`, each task's own option
    /// decides.
    ///
    /// [`TaskOptions::acks_late`]: celeriac_core::task::TaskOptions::acks_late
    pub task_acks_late: bool,
    /// `task_ignore_result`: no task stores its result unless its call or definition says
    /// otherwise.
    pub task_ignore_result: bool,
    /// `result_expires`: how long ready results are kept (`None`: forever).
    pub result_expires: Option<Duration>,
    /// `result_extended`: store name, args, kwargs, worker, retries and queue with results.
    pub result_extended: bool,
    /// `timezone`: the IANA name Celery uses for crontab schedules and displayed times.
    /// Stored for the schedulers to come; nothing reads it yet.
    pub timezone: String,
    /// `worker_concurrency` (default: number of CPUs).
    pub worker_concurrency: Option<usize>,
    /// `worker_prefetch_multiplier`.
    pub worker_prefetch_multiplier: usize,
    /// `worker_shutdown_timeout` (a celeriac setting): how long a graceful shutdown waits
    /// for running tasks.
    pub worker_shutdown_timeout: Duration,
    /// `worker_pool` (`-P`): async, threads, process (Celery's `prefork`) or solo.
    pub worker_pool: PoolKind,
    /// `worker_max_tasks_per_child`: a process-pool child is replaced after this many.
    pub worker_max_tasks_per_child: Option<u64>,
    /// `worker_max_memory_per_child` (KiB resident, Celery's unit).
    pub worker_max_memory_per_child: Option<u64>,
    /// `task_time_limit`: the hard limit of tasks that set none.
    pub task_time_limit: Option<Duration>,
    /// `task_soft_time_limit`.
    pub task_soft_time_limit: Option<Duration>,
    /// `worker_send_task_events` (`-E`): workers send task events for monitors (Flower).
    pub worker_send_task_events: bool,
    /// `task_send_sent_event`: clients send a `task-sent` event for every task they send.
    pub task_send_sent_event: bool,
    /// `worker_enable_remote_control`: workers answer `inspect` / `control` (on by default).
    pub worker_enable_remote_control: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker_url: None,
            broker_transport_options: serde_json::Map::new(),
            result_backend: None,
            task_default_queue: "celery".into(),
            task_routes: Vec::new(),
            task_acks_late: false,
            task_ignore_result: false,
            result_expires: Some(Duration::from_secs(86_400)),
            result_extended: false,
            timezone: "UTC".into(),
            worker_concurrency: None,
            worker_prefetch_multiplier: 4,
            worker_shutdown_timeout: Duration::from_secs(30),
            worker_pool: PoolKind::Async,
            worker_max_tasks_per_child: None,
            worker_max_memory_per_child: None,
            task_time_limit: None,
            task_soft_time_limit: None,
            worker_send_task_events: false,
            task_send_sent_event: false,
            worker_enable_remote_control: true,
        }
    }
}

impl Config {
    /// This configuration with a file, the environment and flags layered over it.
    ///
    /// ```
    /// use celeriac::{Config, ConfigSources};
    ///
    /// let sources = ConfigSources::new().env([("CELERIAC_WORKER_CONCURRENCY", "8")]);
    /// let loaded = Config::default().load(&sources)?;
    /// assert_eq!(loaded.config().worker_concurrency, Some(8));
    /// let origin = loaded.origin("worker_concurrency").unwrap();
    /// assert_eq!(origin.to_string(), "env CELERIAC_WORKER_CONCURRENCY");
    /// # Ok::<(), celeriac::ConfigError>(())
    /// ```
    pub fn load(&self, sources: &ConfigSources) -> Result<LoadedConfig, ConfigError> {
        load::load(self, sources)
    }

    /// The broker URL in force.
    pub fn resolved_broker_url(&self) -> String {
        non_empty(self.broker_url.as_deref())
            .unwrap_or(DEFAULT_URL)
            .to_string()
    }

    /// The broker URL to connect to: [`Config::resolved_broker_url`] with each
    /// `broker_transport_options` entry added as a URL option (`visibility_timeout`,
    /// `confirm_publish`, `global_keyprefix`, `max_priority`, `queue_type`, ...), unless
    /// the URL names that option itself (the URL is the more specific). Values must be
    /// strings, numbers or booleans; the engine reports options it does not know.
    pub fn broker_connect_url(&self) -> Result<String, String> {
        let mut url = self.resolved_broker_url();
        let named: Vec<String> = url
            .split_once('?')
            .map(|(_, q)| {
                q.split('&')
                    .map(|p| p.split('=').next().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        for (key, value) in &self.broker_transport_options {
            if named.iter().any(|n| n == key) {
                continue;
            }
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "broker_transport_options.{key} = {other}: celeriac passes transport \
                         options to the broker URL, so each must be a string, number or boolean"
                    ))
                }
            };
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("{key}={}", percent_encode(&text)));
        }
        Ok(url)
    }

    /// The result backend URL in force: `result_backend` when set (`disabled` included),
    /// else where the broker can keep results: the embedded store and Redis keep them in
    /// the broker's own file or server, RabbitMQ sends them back as messages (`rpc://`).
    pub fn resolved_backend_url(&self) -> String {
        if let Some(backend) = non_empty(self.result_backend.as_deref()) {
            return backend.to_string();
        }
        let broker = self.resolved_broker_url();
        let scheme = broker.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "amqp" | "amqps" | "pyamqp" => RPC_BACKEND.to_string(),
            _ => broker,
        }
    }

    /// Whether results are stored at all (`result_backend = "disabled"` turns them off).
    pub fn results_disabled(&self) -> bool {
        self.resolved_backend_url() == DISABLED_BACKEND
    }

    /// `task_ignore_result`: whether calls default to storing no result.
    pub fn task_ignore_result(&self) -> bool {
        self.task_ignore_result
    }

    /// The queue `task_routes` sends `task_name` to, if any route matches.
    pub fn route(&self, task_name: &str) -> Option<&str> {
        self.task_routes
            .iter()
            .find(|(pattern, _)| glob_match(pattern, task_name))
            .map(|(_, q)| q.as_str())
    }
}

/// Escapes what would end a URL option's value early.
fn percent_encode(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '%' | '&' | '=' | '#' | '?' | ' ' | '+' => format!("%{:02X}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// `*` matches any run of characters, as in Celery's glob routes.
fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            if tail.is_empty() {
                return true;
            }
            (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| glob_match(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_options_become_url_options_the_url_wins() {
        let mut c = Config {
            broker_url: Some("redis://h:6379/0?visibility_timeout=10".into()),
            ..Config::default()
        };
        c.broker_transport_options
            .insert("visibility_timeout".into(), 99.into());
        c.broker_transport_options
            .insert("global_keyprefix".into(), "a&b".into());
        assert_eq!(
            c.broker_connect_url().unwrap(),
            "redis://h:6379/0?visibility_timeout=10&global_keyprefix=a%26b"
        );
        c.broker_transport_options
            .insert("priority_steps".into(), serde_json::json!([0, 3]));
        let e = c.broker_connect_url().unwrap_err();
        assert!(e.contains("broker_transport_options.priority_steps"), "{e}");
    }

    #[test]
    fn routes_match_globs_first_wins() {
        let c = Config {
            task_routes: vec![
                ("tasks.sl*".into(), "slow".into()),
                ("tasks.*".into(), "fast".into()),
            ],
            ..Config::default()
        };
        assert_eq!(c.route("tasks.sleep"), Some("slow"));
        assert_eq!(c.route("tasks.add"), Some("fast"));
        assert_eq!(c.route("other.add"), None);
        assert!(glob_match("a*b*c", "aXXbYc"));
        assert!(!glob_match("a*b*c", "aXXbY"));
    }

    fn backend_for(broker: Option<&str>, backend: Option<&str>) -> String {
        Config {
            broker_url: broker.map(String::from),
            result_backend: backend.map(String::from),
            ..Config::default()
        }
        .resolved_backend_url()
    }

    #[test]
    fn result_backend_defaults_follow_the_broker() {
        assert_eq!(backend_for(None, None), DEFAULT_URL);
        assert_eq!(
            backend_for(Some("sqlite:///tmp/x.db"), None),
            "sqlite:///tmp/x.db"
        );
        assert_eq!(
            backend_for(Some("redis://h:6379/2"), None),
            "redis://h:6379/2"
        );
        assert_eq!(backend_for(Some("rediss://h/0"), None), "rediss://h/0");
        for amqp in ["amqp://guest@h//", "amqps://h//", "pyamqp://h//"] {
            assert_eq!(backend_for(Some(amqp), None), RPC_BACKEND, "{amqp}");
        }
        assert_eq!(backend_for(Some("  "), Some("")), DEFAULT_URL);
    }

    #[test]
    fn an_explicit_result_backend_wins_and_disabled_is_a_value() {
        assert_eq!(
            backend_for(Some("amqp://h//"), Some("redis://h/1")),
            "redis://h/1"
        );
        assert_eq!(
            backend_for(Some("redis://h/0"), Some("disabled")),
            "disabled"
        );
        let disabled = Config {
            result_backend: Some(DISABLED_BACKEND.into()),
            ..Config::default()
        };
        assert!(disabled.results_disabled());
        assert!(!Config::default().results_disabled());
    }
}
