//! `redis://[[user]:password@]host[:port][/db][?options]` and `rediss://` (TLS), as Celery
//! reads them. Options celeriac understands (kombu's transport option names):
//! `global_keyprefix` (prefix for every key and channel) and `visibility_timeout` (seconds).

use std::time::Duration;

use celeriac_core::{BrokerError, ErrorKind};

#[derive(Debug, Clone, PartialEq)]
pub struct RedisUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    /// kombu's `global_keyprefix`, prepended exactly as given.
    pub global_keyprefix: String,
    /// kombu's `visibility_timeout` (default 1 hour).
    pub visibility_timeout: Duration,
}

fn invalid(url: &str, why: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(
        ErrorKind::InvalidConfig,
        format!("invalid Redis URL {}: {why}", redact(url)),
    )
}

use celeriac_core::url::percent_decode;
pub use celeriac_core::url::redact;

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, BrokerError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid(url, "expected redis://host:port/db"))?;
        let tls = match scheme {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(invalid(
                    url,
                    format!("scheme {other:?} is not redis or rediss"),
                ))
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (auth, hostport) = match authority.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, authority),
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| percent_decode(u)),
                    Some(percent_decode(p)),
                ),
                None => (None, Some(percent_decode(a))),
            },
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| invalid(url, format!("port {p:?} is not a number")))?;
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    port,
                )
            }
            _ => (
                hostport
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                6379,
            ),
        };
        let host = if host.is_empty() {
            "localhost".to_string()
        } else {
            host
        };
        let db = match path.trim_matches('/') {
            "" => 0,
            d => d
                .parse::<i64>()
                .map_err(|_| invalid(url, format!("database {d:?} is not a number")))?,
        };
        let mut parsed = RedisUrl {
            tls,
            host,
            port,
            db,
            username,
            password,
            global_keyprefix: String::new(),
            visibility_timeout: Duration::from_secs(3600),
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "global_keyprefix" => parsed.global_keyprefix = v,
                "visibility_timeout" => {
                    let secs: f64 = v.parse().map_err(|_| {
                        invalid(url, format!("visibility_timeout {v:?} is not a number"))
                    })?;
                    if !(secs.is_finite() && secs > 0.0) {
                        return Err(invalid(url, "visibility_timeout must be positive"));
                    }
                    parsed.visibility_timeout = Duration::from_secs_f64(secs);
                }
                // Celery accepts these in the URL; they do not change celeriac's behaviour.
                "ssl_cert_reqs" | "ssl_ca_certs" | "ssl_certfile" | "ssl_keyfile"
                | "socket_timeout" => {}
                other => {
                    return Err(invalid(
                        url,
                        format!(
                        "unknown option {other:?} (known: global_keyprefix, visibility_timeout)"
                    ),
                    ))
                }
            }
        }
        Ok(parsed)
    }

    /// Connection settings for the client library.
    pub fn connection_info(&self) -> redis::RedisResult<redis::ConnectionInfo> {
        use redis::IntoConnectionInfo;
        let addr = if self.tls {
            redis::ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            redis::ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let mut redis_info = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            redis_info = redis_info.set_username(u.clone());
        }
        if let Some(p) = &self.password {
            redis_info = redis_info.set_password(p.clone());
        }
        Ok(addr.into_connection_info()?.set_redis_settings(redis_info))
    }

    /// For banners and logs: no password.
    pub fn display(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (None, Some(_)) => ":***@".to_string(),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        };
        format!("{scheme}://{auth}{}:{}/{}", self.host, self.port, self.db)
    }
}

/// Opens a self-reconnecting connection; errors name the server (never the password).
pub async fn connect(url: &RedisUrl) -> Result<redis::aio::ConnectionManager, BrokerError> {
    let client = url
        .connection_info()
        .and_then(redis::Client::open)
        .map_err(|e| {
            BrokerError::with_source(
                ErrorKind::InvalidConfig,
                format!("cannot use {}", url.display()),
                e,
            )
        })?;
    redis::aio::ConnectionManager::new(client)
        .await
        .map_err(|e| {
            BrokerError::with_source(
                ErrorKind::Unreachable,
                format!("cannot connect to {}", url.display()),
                e,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_celery_urls() {
        let u = RedisUrl::parse(
            "redis://:s3cret@127.0.0.1:6380/5?global_keyprefix=app:&visibility_timeout=2.5",
        )
        .unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 6380, 5));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert_eq!(u.username, None);
        assert_eq!(u.global_keyprefix, "app:");
        assert_eq!(u.visibility_timeout, Duration::from_millis(2500));
        assert_eq!(u.display(), "redis://:***@127.0.0.1:6380/5");
        let d = RedisUrl::parse("rediss://user:p%40ss@example.org").unwrap();
        assert!(d.tls);
        assert_eq!(
            (d.port, d.db, d.username.as_deref(), d.password.as_deref()),
            (6379, 0, Some("user"), Some("p@ss"))
        );
        assert_eq!(RedisUrl::parse("redis://localhost/").unwrap().db, 0);
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("http://x", "not redis or rediss"),
            ("redis://h:port/0", "port"),
            ("redis://h/db", "database"),
            ("redis://h/0?nope=1", "unknown option"),
        ] {
            let e = RedisUrl::parse(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(why), "{url}: {e}");
        }
        assert!(!RedisUrl::parse("redis://:pw@h/x")
            .unwrap_err()
            .to_string()
            .contains("pw"));
    }
}
