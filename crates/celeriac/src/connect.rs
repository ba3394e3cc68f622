//! URL → engine. The one place that knows which schemes this build supports.

use std::sync::Arc;

use celeriac_amqp::AmqpBroker;
use celeriac_core::{Broker, ResultBackend};
use celeriac_redis::{RedisBackend, RedisBroker};
use celeriac_sqlite::SqliteStore;

use crate::error::Error;

pub struct Connections {
    pub broker: Arc<dyn Broker>,
    pub backend: Arc<dyn ResultBackend>,
}

pub const SUPPORTED: &str =
    "sqlite://PATH, redis://[:password@]host:port/db, rediss://..., amqp://user:pass@host:port/vhost, amqps://...";

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

/// Opens broker and backend; when both name the same SQLite file they share one store.
pub async fn open(broker_url: &str, backend_url: &str) -> Result<Connections, Error> {
    let mut sqlite = None;
    let broker: Arc<dyn Broker> = match scheme(broker_url)? {
        "sqlite" => {
            let store = SqliteStore::open_url(broker_url)?;
            sqlite = Some(store.clone());
            store
        }
        "redis" | "rediss" => RedisBroker::open(broker_url).await?,
        "amqp" | "amqps" | "pyamqp" => {
            AmqpBroker::open(&broker_url.replacen("pyamqp://", "amqp://", 1)).await?
        }
        other => return Err(unsupported("broker", broker_url, other)),
    };
    let backend: Arc<dyn ResultBackend> = match (scheme(backend_url)?, sqlite) {
        ("sqlite", Some(store)) if backend_url == broker_url => store,
        ("sqlite", _) => {
            SqliteStore::open_url(backend_url).map_err(|e| Error::Config(e.to_string()))?
        }
        ("redis" | "rediss", _) => RedisBackend::open(backend_url).await?,
        (other, _) => return Err(unsupported("result backend", backend_url, other)),
    };
    Ok(Connections { broker, backend })
}
