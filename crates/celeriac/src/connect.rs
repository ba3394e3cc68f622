//! URL → engine. The one place that knows which schemes this build supports.

use std::sync::Arc;
use std::time::Duration;

use celeriac_amqp::AmqpBroker;
use celeriac_core::backend::DisabledBackend;
use celeriac_core::{Broker, ResultBackend};
use celeriac_redis::{RedisBackend, RedisBroker};
use celeriac_sqlite::SqliteStore;

use crate::error::Error;

pub struct Connections {
    pub broker: Arc<dyn Broker>,
    pub backend: Arc<dyn ResultBackend>,
}

pub const SUPPORTED: &str =
    "sqlite://PATH, redis://[:password@]host:port/db, rediss://..., amqp://user:pass@host:port/vhost, amqps://... (result backends also: rpc:// with an amqp:// broker, disabled)";

/// The result backend value that turns results off.
pub const DISABLED: &str = "disabled";

/// What a result backend learns from the app that opens it.
pub struct BackendContext<'a> {
    /// The `reply_to` of the tasks this app sends: rpc:// listens on a queue of that name.
    pub reply_queue: &'a str,
    pub result_expires: Option<Duration>,
}

fn scheme(url: &str) -> Result<&str, Error> {
    url.split_once("://")
        .map(|(s, _)| s)
        .ok_or_else(|| Error::Config(format!("{url:?} is not a URL (expected scheme://...)")))
}

fn unsupported(kind: &str, url: &str, scheme: &str) -> Error {
    Error::Config(format!(
        "unsupported {kind} URL scheme {scheme:?} in {}: this build supports {SUPPORTED}",
        celeriac_redis::redact(url)
    ))
}

/// Opens broker and backend; when both name the same SQLite file they share one store, and
/// `rpc://` shares the AMQP broker's connection.
pub async fn open(
    broker_url: &str,
    backend_url: &str,
    context: BackendContext<'_>,
) -> Result<Connections, Error> {
    let mut sqlite = None;
    let mut amqp = None;
    let broker: Arc<dyn Broker> = match scheme(broker_url)? {
        "sqlite" => {
            let store = SqliteStore::open_url(broker_url)?;
            sqlite = Some(store.clone());
            store
        }
        "redis" | "rediss" => RedisBroker::open(broker_url).await?,
        "amqp" | "amqps" | "pyamqp" => {
            let b = AmqpBroker::open(&broker_url.replacen("pyamqp://", "amqp://", 1)).await?;
            amqp = Some(b.clone());
            b
        }
        other => return Err(unsupported("broker", broker_url, other)),
    };
    if backend_url.trim() == DISABLED {
        return Ok(Connections {
            broker,
            backend: Arc::new(DisabledBackend),
        });
    }
    let backend: Arc<dyn ResultBackend> = match (scheme(backend_url)?, sqlite) {
        ("sqlite", Some(store)) if backend_url == broker_url => store,
        ("sqlite", _) => {
            SqliteStore::open_url(backend_url).map_err(|e| Error::Config(e.to_string()))?
        }
        ("redis" | "rediss", _) => RedisBackend::open(backend_url).await?,
        ("rpc", _) => match amqp {
            Some(b) => b.rpc_backend(context.reply_queue, context.result_expires),
            None => {
                return Err(Error::Config(format!(
                    "result backend rpc:// sends results as messages over the broker, which \
                     must be RabbitMQ (amqp://); the broker is {}",
                    broker.display_url()
                )))
            }
        },
        (other, _) => return Err(unsupported("result backend", backend_url, other)),
    };
    Ok(Connections { broker, backend })
}
