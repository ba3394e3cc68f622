//! `amqp://[user[:password]@]host[:port][/vhost][?options]` and `amqps://` (TLS), as Celery
//! reads them. Options celeriac understands:
//!
//! - `max_priority=N`: task queues are declared with `x-max-priority: N` (Celery's
//!   `task_queue_max_priority`; every process sharing a queue must agree on it).
//! - `queue_type=quorum|classic`: task queues are declared with `x-queue-type: quorum`
//!   (Celery's `task_default_queue_type`); `classic` (default) declares no argument.
//! - `heartbeat=SECONDS`: passed to the server as the AMQP heartbeat.
//! - `confirm_publish=true|false` (kombu's transport option): with `false`, publishes are
//!   fire-and-forget as Celery's by default: no publisher confirms, so a publish returns once
//!   its frames are written and a message lost in the broker's crash goes unnoticed. The
//!   default (`true`) waits for RabbitMQ's confirm of every publish.
//!
//! Other query options (lapin's `frame_max`, `channel_max`, ...) are passed through.

use celeriac_core::{BrokerError, ErrorKind};

#[derive(Debug, Clone, PartialEq)]
pub struct AmqpUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Decoded vhost name (`/` by default).
    pub vhost: String,
    pub max_priority: Option<u8>,
    pub quorum: bool,
    /// Wait for publisher confirms (`confirm_publish`, default true).
    pub confirm_publish: bool,
    /// What lapin connects to: the URL without celeriac's own options.
    pub(crate) connect_uri: String,
    /// The URL with the password hidden.
    pub display: String,
}

fn invalid(url: &str, why: impl std::fmt::Display) -> BrokerError {
    BrokerError::new(
        ErrorKind::InvalidConfig,
        format!("invalid AMQP URL {}: {why}", redact(url)),
    )
}

use celeriac_core::url::percent_decode;
pub use celeriac_core::url::redact;

impl AmqpUrl {
    pub fn parse(url: &str) -> Result<AmqpUrl, BrokerError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid(url, "expected amqp://user:pass@host:port/vhost"))?;
        let tls = match scheme {
            "amqp" | "pyamqp" | "librabbitmq" => false,
            "amqps" => true,
            other => {
                return Err(invalid(
                    url,
                    format!("scheme {other:?} is not amqp or amqps"),
                ))
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (hostport, vhost_raw) = match hostpart.split_once('/') {
            Some((h, v)) => (h, Some(v)),
            None => (hostpart, None),
        };
        // Celery: no path or an empty path means the default vhost "/".
        let vhost = match vhost_raw {
            None | Some("") => "/".to_string(),
            Some(v) => percent_decode(v),
        };
        let default_port = if tls { 5671 } else { 5672 };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| invalid(url, "unclosed [ in host"))?;
            let port = match p.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| invalid(url, "bad port"))?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .map_err(|_| invalid(url, format!("bad port {p:?}")))?,
                ),
                None => (hostport.to_string(), default_port),
            }
        };
        let host = if host.is_empty() {
            "localhost".to_string()
        } else {
            host
        };
        let (user, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (u.to_string(), Some(p.to_string())),
                None => (a.to_string(), None),
            },
            None => ("guest".to_string(), Some("guest".to_string())),
        };
        let UrlOptions {
            max_priority,
            quorum,
            confirm_publish,
            passthrough,
        } = UrlOptions::parse(url, query.unwrap_or(""))?;
        if quorum && max_priority.is_some() {
            return Err(invalid(
                url,
                "quorum queues do not support max_priority on this server version",
            ));
        }
        let auth_s = match &password {
            Some(p) => format!("{user}:{p}@"),
            None => format!("{user}@"),
        };
        let host_s = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let vhost_enc = vhost.replace('%', "%25").replace('/', "%2f");
        let mut connect_uri = format!(
            "{}://{auth_s}{host_s}:{port}/{vhost_enc}",
            if tls { "amqps" } else { "amqp" }
        );
        if !passthrough.is_empty() {
            connect_uri.push('?');
            connect_uri.push_str(&passthrough.join("&"));
        }
        Ok(AmqpUrl {
            tls,
            host,
            port,
            vhost,
            max_priority,
            quorum,
            confirm_publish,
            connect_uri,
            display: redact(url),
        })
    }

    /// `host:port/vhost`, for error messages (never the password).
    pub fn place(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.vhost)
    }
}

/// celeriac's own options in an AMQP URL's query; the rest goes to lapin.
struct UrlOptions {
    max_priority: Option<u8>,
    quorum: bool,
    confirm_publish: bool,
    passthrough: Vec<String>,
}

impl UrlOptions {
    fn parse(url: &str, query: &str) -> Result<UrlOptions, BrokerError> {
        let mut max_priority = None;
        let mut quorum = false;
        let mut confirm_publish = true;
        let mut passthrough = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "max_priority" | "x-max-priority" => {
                    let n: u8 = v
                        .parse()
                        .map_err(|_| invalid(url, format!("max_priority={v:?} is not 0..=255")))?;
                    max_priority = (n > 0).then_some(n);
                }
                "queue_type" => {
                    quorum = match v {
                        "quorum" => true,
                        "classic" | "" => false,
                        other => {
                            return Err(invalid(
                                url,
                                format!("queue_type={other:?} is not quorum or classic"),
                            ))
                        }
                    }
                }
                "confirm_publish" => {
                    confirm_publish = match v.to_ascii_lowercase().as_str() {
                        "true" | "1" | "yes" | "on" | "" => true,
                        "false" | "0" | "no" | "off" => false,
                        other => {
                            return Err(invalid(
                                url,
                                format!("confirm_publish={other:?} is not true or false"),
                            ))
                        }
                    }
                }
                _ => passthrough.push(pair.to_string()),
            }
        }
        Ok(UrlOptions {
            max_priority,
            quorum,
            confirm_publish,
            passthrough,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_celery_urls() {
        let u = AmqpUrl::parse("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.vhost.as_str()),
            ("127.0.0.1", 5672, "/")
        );
        assert!(!u.display.contains("secret"));
        assert_eq!(u.connect_uri, "amqp://guest:secret@127.0.0.1:5672/%2f");
        let u = AmqpUrl::parse("amqps://u:p@rabbit/prod?max_priority=10&heartbeat=30").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.port, u.vhost.as_str(), u.max_priority),
            (5671, "prod", Some(10))
        );
        assert_eq!(u.connect_uri, "amqps://u:p@rabbit:5671/prod?heartbeat=30");
        let u = AmqpUrl::parse("amqp://localhost").unwrap();
        assert_eq!(u.vhost, "/");
        let u = AmqpUrl::parse("amqp://h/v?queue_type=quorum").unwrap();
        assert!(u.quorum);
        assert!(u.confirm_publish, "confirms are the default");
        let u = AmqpUrl::parse("amqp://h/v?confirm_publish=false&heartbeat=5").unwrap();
        assert!(!u.confirm_publish);
        assert_eq!(u.connect_uri, "amqp://guest:guest@h:5672/v?heartbeat=5");
        assert!(AmqpUrl::parse("amqp://h/v?confirm_publish=maybe").is_err());
        assert!(AmqpUrl::parse("redis://h").is_err());
        let e = AmqpUrl::parse("amqp://u:hunter2@h:x/v").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }
}
