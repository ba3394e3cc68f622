//! Every conformance suite against the embedded SQLite engine: a temp file per case; the
//! second instance opens the same file again (what another process does). The beat suite
//! runs on the broker's `beat_store()` and on the backend's.

use std::sync::Arc;

use celeriac_core::backend::ResultBackend;
use celeriac_core::broker::Broker;
use celeriac_sqlite::{SqliteOptions, SqliteStore};
use celeriac_testkit::{FactoryOptions, Instance, Skip};

/// A fresh store in a temp dir, and how to open it again.
fn store(
    opts: &FactoryOptions,
) -> (
    tempfile::TempDir,
    impl Fn() -> Arc<SqliteStore> + Send + Sync,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("celeriac.db");
    let mut options = SqliteOptions::default();
    if let Some(t) = opts.visibility_timeout {
        options.visibility_timeout = t;
    }
    let open = move || SqliteStore::open(&path, options.clone()).expect("open sqlite store");
    (dir, open)
}

async fn sqlite_broker(opts: FactoryOptions) -> Result<Instance<dyn Broker>, Skip> {
    let (dir, open) = store(&opts);
    let first: Arc<dyn Broker> = open();
    Ok(Instance::new(first, move || {
        let again: Arc<dyn Broker> = open();
        std::future::ready(again)
    })
    .keep(dir))
}

async fn sqlite_backend(opts: FactoryOptions) -> Result<Instance<dyn ResultBackend>, Skip> {
    let (dir, open) = store(&opts);
    let first: Arc<dyn ResultBackend> = open();
    Ok(Instance::new(first, move || {
        let again: Arc<dyn ResultBackend> = open();
        std::future::ready(again)
    })
    .keep(dir))
}

celeriac_testkit::broker_tests!(sqlite_broker);
celeriac_testkit::backend_tests!(sqlite_backend);
celeriac_testkit::beat_tests!(celeriac_testkit::beat_suite::OnBroker(sqlite_broker));
celeriac_testkit::beat_tests!(
    celeriac_testkit::beat_suite::OnBackend(sqlite_backend),
    beat_conformance_backend
);
