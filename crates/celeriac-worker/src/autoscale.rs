//! `--autoscale MAX,MIN`: the pool grows toward MAX while tasks wait (running, waiting in
//! the prefetch window, or ready in the consumed queues), and shrinks toward MIN once it
//! has had more slots than work for `keepalive`. The guard never grows the pool while free
//! memory is under `min_free_memory_mb` or the 1-minute load average per CPU is over
//! `max_load`. Every decision to resize or to refuse is one log line with its reason.
//!
//! [`Autoscaler::decide`] is pure (readings and the time in, a decision out), so tests drive
//! it with planted readings and a clock of their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Readings of the machine the guard looks at.
pub trait LoadSensors: Send + Sync + std::fmt::Debug {
    /// Memory available to new work, in MB (`None`: unknown, no guard).
    fn free_memory_mb(&self) -> Option<u64>;
    /// The 1-minute load average divided by the number of CPUs.
    fn load_per_cpu(&self) -> Option<f64>;
}

/// The host's `/proc/meminfo` (`MemAvailable`) and `/proc/loadavg`.
#[derive(Debug, Default)]
pub struct SystemSensors;

impl LoadSensors for SystemSensors {
    fn free_memory_mb(&self) -> Option<u64> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024)
    }

    fn load_per_cpu(&self) -> Option<f64> {
        let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
        let one_minute: f64 = loadavg.split_whitespace().next()?.parse().ok()?;
        let cpus = std::thread::available_parallelism().ok()?.get() as f64;
        Some(one_minute / cpus)
    }
}

#[derive(Debug, Clone)]
pub struct AutoscaleConfig {
    pub max: usize,
    pub min: usize,
    /// `--autoscale-min-free-memory MB`.
    pub min_free_memory_mb: Option<u64>,
    /// `--autoscale-max-load L`.
    pub max_load: Option<f64>,
    /// How long the pool must have had spare slots before it shrinks (Celery's 30 s).
    pub keepalive: Duration,
    /// How often the autoscaler looks.
    pub interval: Duration,
    pub sensors: Arc<dyn LoadSensors>,
}

impl AutoscaleConfig {
    /// `MAX,MIN` with Celery's defaults for the rest.
    pub fn new(max: usize, min: usize) -> AutoscaleConfig {
        AutoscaleConfig {
            max: max.max(1),
            min: min.min(max).max(1),
            min_free_memory_mb: None,
            max_load: None,
            keepalive: Duration::from_secs(30),
            interval: Duration::from_secs(1),
            sensors: Arc::new(SystemSensors),
        }
    }

    /// Parses `--autoscale`'s `MAX,MIN` (or `MAX`, min 0 → 1), as Celery.
    pub fn parse(spec: &str) -> Result<AutoscaleConfig, String> {
        let bad = || format!("--autoscale {spec:?} must be MAX,MIN (e.g. 10,3)");
        let mut parts = spec.split(',').map(str::trim);
        let max: usize = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let min: usize = match parts.next() {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => 0,
        };
        if parts.next().is_some() || max == 0 {
            return Err(bad());
        }
        // Celery accepts either order and sorts them.
        let (max, min) = (max.max(min), max.min(min));
        Ok(AutoscaleConfig::new(max, min))
    }
}

/// What the autoscaler sees at one look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Readings {
    /// The pool's current size.
    pub size: usize,
    /// Tasks running, waiting for a slot, or ready in the consumed queues.
    pub demand: usize,
    pub free_memory_mb: Option<u64>,
    pub load_per_cpu: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Hold,
    Grow {
        to: usize,
        reason: String,
    },
    Shrink {
        to: usize,
        reason: String,
    },
    /// Growth was called for and the guard said no.
    Refuse {
        wanted: usize,
        reason: String,
    },
}

#[derive(Debug)]
pub struct Autoscaler {
    config: AutoscaleConfig,
    /// Since when the pool has had more slots than demand.
    spare_since: Option<Instant>,
    /// The last refusal logged, so a standing refusal is one line, not one per look.
    refusing: bool,
}

impl Autoscaler {
    pub fn new(config: AutoscaleConfig) -> Autoscaler {
        Autoscaler {
            config,
            spare_since: None,
            refusing: false,
        }
    }

    pub fn config(&self) -> &AutoscaleConfig {
        &self.config
    }

    /// New MAX and MIN (remote control's `autoscale`).
    pub fn set_bounds(&mut self, max: usize, min: usize) {
        self.config.max = max.max(1);
        self.config.min = min.min(max).max(1);
    }

    /// The decision for these readings at time `now`.
    pub fn decide(&mut self, r: Readings, now: Instant) -> Decision {
        let c = &self.config;
        let wanted = r.demand.clamp(c.min, c.max);
        if wanted > r.size {
            self.spare_since = None;
            if let Some(reason) = self.guard(r) {
                let first = !std::mem::replace(&mut self.refusing, true);
                return if first {
                    Decision::Refuse { wanted, reason }
                } else {
                    Decision::Hold
                };
            }
            self.refusing = false;
            return Decision::Grow {
                to: wanted,
                reason: format!("{} tasks waiting or running for {} slots", r.demand, r.size),
            };
        }
        self.refusing = false;
        if wanted == r.size {
            self.spare_since = None;
            return Decision::Hold;
        }
        let since = *self.spare_since.get_or_insert(now);
        if now.duration_since(since) < c.keepalive {
            return Decision::Hold;
        }
        self.spare_since = None;
        Decision::Shrink {
            to: wanted,
            reason: format!(
                "{} tasks for {} slots for {:?}",
                r.demand, r.size, c.keepalive
            ),
        }
    }

    /// Why growing is refused now, if it is.
    fn guard(&self, r: Readings) -> Option<String> {
        let c = &self.config;
        if let (Some(min), Some(free)) = (c.min_free_memory_mb, r.free_memory_mb) {
            if free < min {
                return Some(format!(
                    "free memory {free} MB is under --autoscale-min-free-memory {min} MB"
                ));
            }
        }
        if let (Some(max), Some(load)) = (c.max_load, r.load_per_cpu) {
            if load > max {
                return Some(format!(
                    "load {load:.2} per CPU is over --autoscale-max-load {max}"
                ));
            }
        }
        None
    }
}

/// The autoscaler as a worker component: looks every `interval`, resizes the pool (and the
/// prefetch window with it).
pub(crate) async fn follow(shared: Arc<crate::worker::Shared>, mut scaler: Autoscaler) {
    let mut ticks = tokio::time::interval(scaler.config().interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let bounds = *shared
            .autoscale_bounds
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((max, min)) = bounds {
            scaler.set_bounds(max, min);
        }
        let sensors = scaler.config().sensors.clone();
        let readings = Readings {
            size: shared.pool.size(),
            demand: shared.demand().await,
            free_memory_mb: sensors.free_memory_mb(),
            load_per_cpu: sensors.load_per_cpu(),
        };
        match scaler.decide(readings, Instant::now()) {
            Decision::Hold => {}
            Decision::Grow { to, reason } => {
                tracing::info!(
                    "autoscale: growing the pool from {} to {to}: {reason}",
                    readings.size
                );
                shared.resize_pool(to);
            }
            Decision::Shrink { to, reason } => {
                tracing::info!(
                    "autoscale: shrinking the pool from {} to {to}: {reason}",
                    readings.size
                );
                shared.resize_pool(to);
            }
            Decision::Refuse { wanted, reason } => {
                tracing::warn!(
                    "autoscale: not growing the pool from {} to {wanted}: {reason}",
                    readings.size
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler(min_free: Option<u64>, max_load: Option<f64>) -> Autoscaler {
        let mut c = AutoscaleConfig::new(6, 2);
        c.min_free_memory_mb = min_free;
        c.max_load = max_load;
        c.keepalive = Duration::from_secs(30);
        Autoscaler::new(c)
    }

    fn at(size: usize, demand: usize) -> Readings {
        Readings {
            size,
            demand,
            free_memory_mb: Some(4096),
            load_per_cpu: Some(0.2),
        }
    }

    #[test]
    fn grows_with_demand_up_to_max() {
        let mut s = scaler(None, None);
        let t0 = Instant::now();
        assert!(matches!(
            s.decide(at(2, 4), t0),
            Decision::Grow { to: 4, .. }
        ));
        assert!(matches!(
            s.decide(at(4, 50), t0),
            Decision::Grow { to: 6, .. }
        ));
        assert_eq!(s.decide(at(6, 50), t0), Decision::Hold);
    }

    #[test]
    fn shrinks_to_min_only_after_the_keepalive() {
        let mut s = scaler(None, None);
        let t0 = Instant::now();
        assert_eq!(s.decide(at(6, 0), t0), Decision::Hold);
        assert_eq!(
            s.decide(at(6, 0), t0 + Duration::from_secs(29)),
            Decision::Hold
        );
        assert!(matches!(
            s.decide(at(6, 0), t0 + Duration::from_secs(30)),
            Decision::Shrink { to: 2, .. }
        ));
        // Demand in between restarts the idle clock.
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(s.decide(at(6, 1), t1), Decision::Hold);
        assert_eq!(
            s.decide(at(6, 6), t1 + Duration::from_secs(10)),
            Decision::Hold
        );
        assert_eq!(
            s.decide(at(6, 1), t1 + Duration::from_secs(35)),
            Decision::Hold
        );
    }

    #[test]
    fn the_guard_refuses_growth_once_and_then_holds() {
        let mut s = scaler(Some(512), Some(1.5));
        let t0 = Instant::now();
        let low_memory = Readings {
            free_memory_mb: Some(100),
            ..at(2, 6)
        };
        match s.decide(low_memory, t0) {
            Decision::Refuse { wanted: 6, reason } => {
                assert!(reason.contains("free memory 100 MB"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.decide(low_memory, t0), Decision::Hold);
        let high_load = Readings {
            load_per_cpu: Some(3.0),
            ..at(2, 6)
        };
        assert_eq!(s.decide(high_load, t0), Decision::Hold);
        assert!(matches!(
            s.decide(at(2, 6), t0),
            Decision::Grow { to: 6, .. }
        ));
        match s.decide(
            Readings {
                load_per_cpu: Some(3.0),
                ..at(6, 9)
            },
            t0,
        ) {
            Decision::Hold => {}
            other => panic!("at max nothing is refused: {other:?}"),
        }
    }

    #[test]
    fn the_spec_parses_as_celery() {
        let c = AutoscaleConfig::parse("10,3").unwrap();
        assert_eq!((c.max, c.min), (10, 3));
        let c = AutoscaleConfig::parse("3,10").unwrap();
        assert_eq!((c.max, c.min), (10, 3));
        let c = AutoscaleConfig::parse("4").unwrap();
        assert_eq!((c.max, c.min), (4, 1));
        assert!(AutoscaleConfig::parse("x,1").is_err());
        assert!(AutoscaleConfig::parse("0").is_err());
    }
}
