//! Celery rate-limit strings: `"10/s"`, `"100/m"`, `"1000/h"`, or a bare number per second.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tasks allowed per `per`.
    pub count: f64,
    pub per: Duration,
}

impl RateLimit {
    pub fn parse(s: &str) -> Result<RateLimit, String> {
        let s = s.trim();
        let (num, unit) = match s.split_once('/') {
            Some((n, u)) => (n.trim(), u.trim()),
            None => (s, "s"),
        };
        let count: f64 = num
            .parse()
            .map_err(|_| format!("rate limit {s:?}: {num:?} is not a number"))?;
        if count.is_nan() || count <= 0.0 || !count.is_finite() {
            return Err(format!("rate limit {s:?}: the count must be positive"));
        }
        let per = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => return Err(format!("rate limit {s:?}: unit {other:?} is not s, m or h")),
        };
        Ok(RateLimit { count, per })
    }

    /// The steady spacing between two tasks.
    pub fn interval(&self) -> Duration {
        self.per.div_f64(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_celery_forms() {
        assert_eq!(
            RateLimit::parse("10/s").unwrap().interval(),
            Duration::from_millis(100)
        );
        assert_eq!(
            RateLimit::parse("60/m").unwrap().interval(),
            Duration::from_secs(1)
        );
        assert_eq!(
            RateLimit::parse("2/h").unwrap().interval(),
            Duration::from_secs(1800)
        );
        assert_eq!(
            RateLimit::parse("4").unwrap().interval(),
            Duration::from_millis(250)
        );
        assert!(RateLimit::parse("10/d").is_err());
        assert!(RateLimit::parse("x/s").is_err());
        assert!(RateLimit::parse("0/s").is_err());
    }
}
