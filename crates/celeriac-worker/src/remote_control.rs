//! The remote-control commands a worker answers, with Celery 5.7's reply shapes (protocol
//! §8.4, vector 22). `None`: no reply at all (as Celery's `shutdown`).

use std::sync::atomic::Ordering;

use celeriac_core::control::ControlRequest;
use serde_json::{json, Value};
use tracing::warn;

use crate::mailbox::{error, ok};
use crate::tracking::{scheduled_entry, Stage};
use crate::worker::Shared;

impl Shared {
    pub(crate) async fn control(&self, request: &ControlRequest) -> Option<Value> {
        let payload = match request.method.as_str() {
            "ping" => ok("pong"),
            "clock" => json!({ "clock": self.clock.load(Ordering::Relaxed) }),
            "registered" => self.registered(request),
            "active" => self.requests_in(request, |s| matches!(s, Stage::Active { .. })),
            "reserved" => self.requests_in(request, |s| matches!(s, Stage::Reserved)),
            "scheduled" => self.scheduled(),
            "query_task" => self.query_task(request),
            "rate_limit" => self.rate_limit(request),
            "time_limit" => self.time_limit(request),
            "pool_grow" => self.pool_grow(request, true),
            "pool_shrink" => self.pool_grow(request, false),
            "autoscale" => self.autoscale(request),
            "revoked" => json!(self.revoked_ids()),
            "stats" => self.stats_reply(),
            "active_queues" => self.active_queues(),
            "conf" => self.conf(),
            "report" => ok(format!(
                "software -> celeriac:{} (Rust) os:{}\nhostname -> {}\npool -> {}",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                self.config.hostname,
                self.config.pool.name()
            )),
            "hello" => self.hello(request)?,
            "heartbeat" => {
                // As Celery: an immediate heartbeat with `freq` 5, and a null reply.
                self.worker_event("worker-heartbeat", 5.0);
                Value::Null
            }
            "add_consumer" => self.add_consumer(request).await,
            "cancel_consumer" => self.cancel_consumer(request).await,
            "revoke" => self.remote_revoke(request, false).await,
            "terminate" => self.remote_revoke(request, true).await,
            // Celery's default (`worker_pool_restarts = False`): a Rust worker has no modules
            // to reload, so there is nothing a restart would change.
            "pool_restart" => error("ValueError('Pool restarts not enabled')"),
            "enable_events" => self.set_task_events(true),
            "disable_events" => self.set_task_events(false),
            "shutdown" => {
                warn!("remote control: shutdown requested");
                self.request_shutdown();
                return None;
            }
            other => error(format!("KeyError('{other}')")),
        };
        Some(payload)
    }

    /// Request infos of the requests in a stage (`safe`: args and kwargs as repr strings).
    fn requests_in(&self, request: &ControlRequest, keep: impl Fn(&Stage) -> bool) -> Value {
        let safe = request.arguments.get("safe").and_then(Value::as_bool) == Some(true);
        let infos = self.tracked.infos(keep, &self.config.hostname, safe);
        json!(infos.into_iter().map(|(_, info)| info).collect::<Vec<_>>())
    }

    fn scheduled(&self) -> Value {
        let infos = self.tracked.infos(
            |s| matches!(s, Stage::Scheduled(_)),
            &self.config.hostname,
            false,
        );
        json!(infos
            .into_iter()
            .map(|(stage, info)| scheduled_entry(stage, info))
            .collect::<Vec<_>>())
    }

    /// `query_task`: `ids` is a list (or one id).
    fn query_task(&self, request: &ControlRequest) -> Value {
        let ids: Vec<String> = match request.arguments.get("ids") {
            Some(Value::Array(ids)) => ids
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(id)) => vec![id.clone()],
            _ => Vec::new(),
        };
        Value::Object(self.tracked.query(&ids, &self.config.hostname))
    }

    fn set_task_events(&self, on: bool) -> Value {
        let was = self.events.set_task_events(on);
        match (on, was) {
            (true, true) => ok("task events already enabled"),
            (true, false) => ok("task events enabled"),
            (false, false) => ok("task events already disabled"),
            (false, true) => ok("task events disabled"),
        }
    }

    /// Task names, sorted; with `taskinfoitems`, Celery's `name [attr=value ...]` strings.
    fn registered(&self, request: &ControlRequest) -> Value {
        let items: Vec<String> = match request.arguments.get("taskinfoitems") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let names = self.registry.names();
        let described = names.iter().map(|name| {
            let attributes: Vec<String> = items
                .iter()
                .filter_map(|item| {
                    self.task_attribute(name, item)
                        .map(|v| format!("{item}={v}"))
                })
                .collect();
            if attributes.is_empty() {
                name.to_string()
            } else {
                format!("{name} [{}]", attributes.join(" "))
            }
        });
        json!(described.collect::<Vec<_>>())
    }

    /// A task attribute as Python prints it, for the attributes Celery's `registered` knows.
    fn task_attribute(&self, name: &str, item: &str) -> Option<String> {
        let options = self.registry.get(name)?.options();
        let python_bool = |b: bool| if b { "True" } else { "False" }.to_string();
        match item {
            "acks_late" => Some(python_bool(options.acks_late)),
            "ignore_result" => Some(python_bool(options.ignore_result)),
            "max_retries" => options.max_retries.map(|n| n.to_string()),
            "rate_limit" => options.rate_limit.map(|r| {
                let unit = match r.per.as_secs() {
                    60 => "m",
                    3600 => "h",
                    _ => "s",
                };
                format!("{}/{unit}", r.count)
            }),
            "time_limit" => options.time_limit.map(|d| d.as_secs_f64().to_string()),
            "soft_time_limit" => options.soft_time_limit.map(|d| d.as_secs_f64().to_string()),
            _ => None,
        }
    }

    /// Celery's `stats`: the fields Flower reads (`total`, `pid`, `clock` as a string,
    /// `uptime`, `pool`, `broker`, `prefetch_count`, `rusage`).
    fn stats_reply(&self) -> Value {
        let pool = self.pool.stats();
        let timeouts = [self.config.soft_time_limit, self.config.time_limit]
            .map(|d| d.map_or(0.0, |d| d.as_secs_f64()));
        json!({
            "total": self.accepted_by_name(),
            "pid": std::process::id(),
            "clock": self.clock.load(Ordering::Relaxed).to_string(),
            "uptime": self.started.elapsed().as_secs(),
            "pool": {
                "implementation": format!("celeriac:{}", pool.kind),
                "max-concurrency": pool.size,
                "processes": pool.pids,
                "max-tasks-per-child": self.config.max_tasks_per_child.map_or(json!("N/A"), |n| json!(n)),
                "put-guarded-by-semaphore": false,
                "timeouts": timeouts,
            },
            "broker": self.broker_stats(),
            "prefetch_count": pool.size * self.config.reserved_per_slot(),
            "rusage": {},
        })
    }

    fn broker_stats(&self) -> Value {
        let url = self.broker.display_url();
        let transport = url.split("://").next().unwrap_or("").to_string();
        json!({
            "transport": transport,
            "hostname": url,
            "virtual_host": "/",
            "insist": false,
            "ssl": url.starts_with("rediss") || url.starts_with("amqps"),
            "transport_options": {},
            "login_method": null,
            "uri_prefix": null,
            "heartbeat": null,
            "failover_strategy": "round-robin",
            "alternates": [],
        })
    }

    /// `conf`: the worker's settings under Celery's names.
    fn conf(&self) -> Value {
        let c = &self.config;
        json!({
            "broker_url": self.broker.display_url(),
            "worker_concurrency": c.concurrency,
            "worker_pool": c.pool.name(),
            "worker_prefetch_multiplier": c.prefetch_multiplier,
            "worker_max_tasks_per_child": c.max_tasks_per_child,
            "worker_max_memory_per_child": c.max_memory_per_child_kib,
            "worker_send_task_events": self.events.task_events_on(),
            "task_acks_late": c.task_acks_late,
            "task_ignore_result": c.task_ignore_result,
            "task_time_limit": c.time_limit.map(|d| d.as_secs_f64()),
            "task_soft_time_limit": c.soft_time_limit.map(|d| d.as_secs_f64()),
            "result_expires": c.result_expires.map(|d| d.as_secs_f64()),
            "result_extended": c.result_extended,
        })
    }

    /// Mingle (protocol §8.5): another node's hello gets this worker's revoked ids and clock;
    /// its own gets no reply.
    fn hello(&self, request: &ControlRequest) -> Option<Value> {
        let from = request.arguments.get("from_node").and_then(Value::as_str);
        if from == Some(self.config.hostname.as_str()) {
            return None;
        }
        Some(json!({
            "revoked": self.revoked_ids(),
            "clock": self.clock.load(Ordering::Relaxed),
        }))
    }
}
