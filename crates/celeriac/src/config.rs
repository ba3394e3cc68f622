//! Configuration, with Celery's setting names. Precedence: command-line flags, then the
//! environment (`CELERIAC_BROKER_URL`, `CELERIAC_RESULT_BACKEND`), then what the app's code
//! set, then defaults (`sqlite://celeriac.db` for both).

use std::time::Duration;

pub const DEFAULT_URL: &str = "sqlite://celeriac.db";
pub const BROKER_ENV: &str = "CELERIAC_BROKER_URL";
pub const BACKEND_ENV: &str = "CELERIAC_RESULT_BACKEND";

#[derive(Debug, Clone)]
pub struct Config {
    /// `broker_url`; `None` means the environment or the embedded default.
    pub broker_url: Option<String>,
    /// `result_backend`; `None` means the environment, else the broker's own server when it
    /// can hold results (the embedded store and Redis can), else the embedded default.
    pub result_backend: Option<String>,
    /// `task_default_queue`.
    pub task_default_queue: String,
    /// `task_routes`: (task name pattern with `*` wildcards, queue), first match wins.
    pub task_routes: Vec<(String, String)>,
    /// `result_expires`: how long ready results are kept (`None`: forever).
    pub result_expires: Option<Duration>,
    /// `result_extended`: store name, args, kwargs, worker, retries and queue with results.
    pub result_extended: bool,
    /// `task_ignore_result`: store no results unless a task or call says otherwise.
    pub task_ignore_result: bool,
    /// `worker_concurrency` (default: number of CPUs).
    pub worker_concurrency: Option<usize>,
    /// `worker_prefetch_multiplier`.
    pub worker_prefetch_multiplier: usize,
    /// How long a graceful shutdown waits for running tasks.
    pub worker_shutdown_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker_url: None,
            result_backend: None,
            task_default_queue: "celery".into(),
            task_routes: Vec::new(),
            result_expires: Some(Duration::from_secs(86_400)),
            result_extended: false,
            task_ignore_result: false,
            worker_concurrency: None,
            worker_prefetch_multiplier: 4,
            worker_shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The broker URL in force.
    pub fn resolved_broker_url(&self) -> String {
        env_value(BROKER_ENV)
            .or_else(|| self.broker_url.clone())
            .unwrap_or_else(|| DEFAULT_URL.to_string())
    }

    /// The result backend URL in force.
    pub fn resolved_backend_url(&self) -> String {
        env_value(BACKEND_ENV)
            .or_else(|| self.result_backend.clone())
            .unwrap_or_else(|| {
                // Engines that can hold results hold them by default: the embedded store, Redis.
                let broker = self.resolved_broker_url();
                if ["sqlite:", "redis:", "rediss:"]
                    .iter()
                    .any(|p| broker.starts_with(p))
                {
                    broker
                } else {
                    DEFAULT_URL.to_string()
                }
            })
    }

    /// The queue `task_routes` sends `task_name` to, if any route matches.
    pub fn route(&self, task_name: &str) -> Option<&str> {
        self.task_routes
            .iter()
            .find(|(pattern, _)| glob_match(pattern, task_name))
            .map(|(_, q)| q.as_str())
    }
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
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
}
