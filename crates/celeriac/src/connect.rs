//! URL → engine. The one place that knows which schemes this build supports.

use std::sync::Arc;

use celeriac_core::{Broker, ResultBackend};
use celeriac_sqlite::SqliteStore;

use crate::error::Error;

pub struct Connections {
    pub broker: Arc<dyn Broker>,
    pub backend: Arc<dyn ResultBackend>,
}

fn scheme(url: &str) -> Result<&str, Error> {
    url.split_once("://")
        .map(|(s, _)| s)
        .ok_or_else(|| Error::Config(format!("{url:?} is not a URL (expected scheme://...)")))
}

fn unsupported(kind: &str, url: &str, scheme: &str) -> Error {
    Error::Config(format!(
        "unsupported {kind} URL scheme {scheme:?} in {url:?}: this build supports sqlite://PATH"
    ))
}

/// Opens broker and backend; when both name the same SQLite file they share one store.
pub fn open(broker_url: &str, backend_url: &str) -> Result<Connections, Error> {
    let broker_store = match scheme(broker_url)? {
        "sqlite" => SqliteStore::open_url(broker_url)?,
        other => return Err(unsupported("broker", broker_url, other)),
    };
    let backend: Arc<dyn ResultBackend> = match scheme(backend_url)? {
        "sqlite" if backend_url == broker_url => broker_store.clone(),
        "sqlite" => SqliteStore::open_url(backend_url).map_err(|e| Error::Config(e.to_string()))?,
        other => return Err(unsupported("result backend", backend_url, other)),
    };
    Ok(Connections {
        broker: broker_store,
        backend,
    })
}
