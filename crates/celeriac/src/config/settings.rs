//! The settings a file, the environment or a flag can set, under Celery's names, and how each
//! is written there: durations in seconds, routes and transport options as tables.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use celeriac_worker::PoolKind;

use super::Config;

/// What a setting's value looks like outside code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Text,
    Bool,
    Count,
    Seconds,
    Table,
}

impl Kind {
    /// How an error message describes a valid value.
    pub(super) fn expected(self) -> &'static str {
        match self {
            Kind::Text => "a string",
            Kind::Bool => "true or false",
            Kind::Count => "a whole number",
            Kind::Seconds => "a number of seconds",
            Kind::Table => "a table (a JSON object in the environment)",
        }
    }
}

/// Every known setting, in the order `config show` lists them.
pub(super) const SETTINGS: &[(&str, Kind)] = &[
    ("broker_url", Kind::Text),
    ("broker_transport_options", Kind::Table),
    ("result_backend", Kind::Text),
    ("result_expires", Kind::Seconds),
    ("result_extended", Kind::Bool),
    ("task_default_queue", Kind::Text),
    ("task_routes", Kind::Table),
    ("task_acks_late", Kind::Bool),
    ("task_ignore_result", Kind::Bool),
    ("task_time_limit", Kind::Seconds),
    ("task_soft_time_limit", Kind::Seconds),
    ("task_send_sent_event", Kind::Bool),
    ("timezone", Kind::Text),
    ("worker_concurrency", Kind::Count),
    ("worker_prefetch_multiplier", Kind::Count),
    ("worker_shutdown_timeout", Kind::Seconds),
    ("worker_pool", Kind::Text),
    ("worker_max_tasks_per_child", Kind::Count),
    ("worker_max_memory_per_child", Kind::Count),
    ("worker_send_task_events", Kind::Bool),
    ("worker_enable_remote_control", Kind::Bool),
];

/// The names of every setting a file or the environment may set.
pub fn setting_names() -> impl Iterator<Item = &'static str> {
    SETTINGS.iter().map(|(name, _)| *name)
}

pub(super) fn kind_of(name: &str) -> Option<Kind> {
    SETTINGS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// The known setting closest to a misspelt `name`, if one is close enough to be meant.
pub(super) fn closest_setting(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    setting_names()
        .map(|known| (edit_distance(&name, known), known))
        .filter(|(distance, known)| *distance <= (known.len() / 4).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// A configuration as settings, the way a file writes them. Unset optional settings are
/// left out, so a lower layer cannot mistake them for values.
pub(super) fn settings_of(config: &Config) -> Map<String, Value> {
    let mut s = Map::new();
    let mut put = |name: &str, value: Value| {
        s.insert(name.to_string(), value);
    };
    if let Some(url) = &config.broker_url {
        put("broker_url", url.clone().into());
    }
    put(
        "broker_transport_options",
        config.broker_transport_options.clone().into(),
    );
    if let Some(url) = &config.result_backend {
        put("result_backend", url.clone().into());
    }
    // Celery's convention: 0 means results never expire.
    put(
        "result_expires",
        seconds_value(config.result_expires.unwrap_or(Duration::ZERO)),
    );
    put("result_extended", config.result_extended.into());
    put(
        "task_default_queue",
        config.task_default_queue.clone().into(),
    );
    let routes = config
        .task_routes
        .iter()
        .map(|(pattern, queue)| (pattern.clone(), Value::from(queue.clone())))
        .collect::<Map<_, _>>();
    put("task_routes", routes.into());
    put("task_acks_late", config.task_acks_late.into());
    put("task_ignore_result", config.task_ignore_result.into());
    if let Some(d) = config.task_time_limit {
        put("task_time_limit", seconds_value(d));
    }
    if let Some(d) = config.task_soft_time_limit {
        put("task_soft_time_limit", seconds_value(d));
    }
    put("task_send_sent_event", config.task_send_sent_event.into());
    put("timezone", config.timezone.clone().into());
    if let Some(n) = config.worker_concurrency {
        put("worker_concurrency", n.into());
    }
    put(
        "worker_prefetch_multiplier",
        config.worker_prefetch_multiplier.into(),
    );
    put(
        "worker_shutdown_timeout",
        seconds_value(config.worker_shutdown_timeout),
    );
    put("worker_pool", config.worker_pool.name().into());
    if let Some(n) = config.worker_max_tasks_per_child {
        put("worker_max_tasks_per_child", n.into());
    }
    if let Some(n) = config.worker_max_memory_per_child {
        put("worker_max_memory_per_child", n.into());
    }
    put(
        "worker_send_task_events",
        config.worker_send_task_events.into(),
    );
    put(
        "worker_enable_remote_control",
        config.worker_enable_remote_control.into(),
    );
    s
}

/// Whole seconds as an integer, so `config show` prints `30`, not `30.0`.
fn seconds_value(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        d.as_secs().into()
    } else {
        d.as_secs_f64().into()
    }
}

/// The merged layers as figment hands them back. Tables arrive as `[key, value]` pairs,
/// the form they are given to figment in (see `load::to_figment`).
#[derive(Deserialize)]
pub(super) struct Extracted {
    pub broker_url: Option<String>,
    pub broker_transport_options: Vec<(String, Value)>,
    pub result_backend: Option<String>,
    pub result_expires: f64,
    pub result_extended: bool,
    pub task_default_queue: String,
    pub task_routes: Vec<(String, Value)>,
    pub task_acks_late: bool,
    pub task_ignore_result: bool,
    pub timezone: String,
    pub worker_concurrency: Option<usize>,
    pub worker_prefetch_multiplier: usize,
    pub worker_shutdown_timeout: f64,
    pub task_time_limit: Option<f64>,
    pub task_soft_time_limit: Option<f64>,
    pub worker_pool: String,
    pub worker_max_tasks_per_child: Option<u64>,
    pub worker_max_memory_per_child: Option<u64>,
    pub worker_send_task_events: bool,
    pub task_send_sent_event: bool,
    pub worker_enable_remote_control: bool,
}

/// A value that deserialized but means nothing.
#[derive(Debug)]
pub(super) struct Invalid {
    pub setting: &'static str,
    pub expected: String,
    pub found: String,
}

impl Extracted {
    pub(super) fn into_config(self) -> Result<Config, Invalid> {
        let result_expires = duration("result_expires", self.result_expires)?;
        if self.worker_prefetch_multiplier == 0 {
            return Err(Invalid {
                setting: "worker_prefetch_multiplier",
                expected: "at least 1 (celeriac always bounds the prefetch window)".into(),
                found: "0".into(),
            });
        }
        Ok(Config {
            broker_url: self.broker_url,
            broker_transport_options: self.broker_transport_options.into_iter().collect(),
            result_backend: self.result_backend,
            task_default_queue: self.task_default_queue,
            task_routes: routes(self.task_routes)?,
            task_acks_late: self.task_acks_late,
            task_ignore_result: self.task_ignore_result,
            result_expires: Some(result_expires).filter(|d| !d.is_zero()),
            result_extended: self.result_extended,
            timezone: self.timezone,
            // As in Celery, 0 means one slot per CPU.
            worker_concurrency: self.worker_concurrency.filter(|n| *n > 0),
            worker_prefetch_multiplier: self.worker_prefetch_multiplier,
            worker_shutdown_timeout: duration(
                "worker_shutdown_timeout",
                self.worker_shutdown_timeout,
            )?,
            worker_pool: PoolKind::parse(&self.worker_pool).ok_or_else(|| Invalid {
                setting: "worker_pool",
                expected: "async, threads, process (or prefork) or solo".into(),
                found: format!("{:?}", self.worker_pool),
            })?,
            // As in Celery, 0 means no limit.
            worker_max_tasks_per_child: self.worker_max_tasks_per_child.filter(|n| *n > 0),
            worker_max_memory_per_child: self.worker_max_memory_per_child.filter(|n| *n > 0),
            task_time_limit: limit("task_time_limit", self.task_time_limit)?,
            task_soft_time_limit: limit("task_soft_time_limit", self.task_soft_time_limit)?,
            worker_send_task_events: self.worker_send_task_events,
            task_send_sent_event: self.task_send_sent_event,
            worker_enable_remote_control: self.worker_enable_remote_control,
        })
    }
}

/// An optional limit in seconds; 0 means none.
fn limit(setting: &'static str, seconds: Option<f64>) -> Result<Option<Duration>, Invalid> {
    match seconds {
        Some(s) => Ok(Some(duration(setting, s)?).filter(|d| !d.is_zero())),
        None => Ok(None),
    }
}

fn duration(setting: &'static str, seconds: f64) -> Result<Duration, Invalid> {
    Duration::try_from_secs_f64(seconds).map_err(|_| Invalid {
        setting,
        expected: format!("{} (0 or more)", Kind::Seconds.expected()),
        found: seconds.to_string(),
    })
}

/// Celery's `task_routes` shape: pattern → queue name, or pattern → `{"queue": name}`.
fn routes(pairs: Vec<(String, Value)>) -> Result<Vec<(String, String)>, Invalid> {
    pairs
        .into_iter()
        .map(|(pattern, target)| match route_queue(&target) {
            Some(queue) => Ok((pattern, queue.to_string())),
            None => Err(Invalid {
                setting: "task_routes",
                expected: "a queue name or {\"queue\": name} (celeriac routes by queue only)"
                    .into(),
                found: format!("\"{pattern}\" = {target}"),
            }),
        })
        .collect()
}

fn route_queue(target: &Value) -> Option<&str> {
    match target {
        Value::String(queue) => Some(queue),
        Value::Object(options) if options.len() == 1 => options.get("queue")?.as_str(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_exactly_what_a_config_has() {
        let full = Config {
            broker_url: Some("redis://h".into()),
            result_backend: Some("redis://h".into()),
            worker_concurrency: Some(2),
            worker_max_tasks_per_child: Some(10),
            worker_max_memory_per_child: Some(1 << 20),
            task_time_limit: Some(Duration::from_secs(60)),
            task_soft_time_limit: Some(Duration::from_secs(50)),
            ..Config::default()
        };
        let written: Vec<_> = settings_of(&full).keys().cloned().collect();
        let known: Vec<_> = setting_names().map(String::from).collect();
        assert_eq!(written, known);
    }

    #[test]
    fn misspellings_suggest_the_setting_meant() {
        assert_eq!(
            closest_setting("worker_concurency"),
            Some("worker_concurrency")
        );
        assert_eq!(closest_setting("BROKER_URI"), Some("broker_url"));
        assert_eq!(closest_setting("task_route"), Some("task_routes"));
        assert_eq!(closest_setting("completely_different"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn routes_accept_celery_shapes_and_refuse_others() {
        let pairs = vec![
            (
                "tasks.add".to_string(),
                serde_json::json!({"queue": "fast"}),
            ),
            ("tasks.*".to_string(), serde_json::json!("slow")),
        ];
        assert_eq!(
            routes(pairs).unwrap(),
            vec![
                ("tasks.add".to_string(), "fast".to_string()),
                ("tasks.*".to_string(), "slow".to_string())
            ]
        );
        let exchange = vec![(
            "tasks.add".to_string(),
            serde_json::json!({"queue": "q", "exchange": "x"}),
        )];
        let invalid = routes(exchange).unwrap_err();
        assert_eq!(invalid.setting, "task_routes");
        assert!(invalid.found.starts_with("\"tasks.add\" = "), "{invalid:?}");
    }
}
