//! Every conformance suite against the Redis engine, on the server named by
//! `CELERIAC_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379/15`); every case is skipped, with
//! the reason printed, when it is unset. Each case gets its own `global_keyprefix`
//! (`t-<uuid>:`); a second instance opens the same URL again. The beat suite runs on the
//! broker's `beat_store()` and on the backend's.

use std::sync::Arc;

use celeriac_core::backend::ResultBackend;
use celeriac_core::broker::Broker;
use celeriac_redis::{RedisBackend, RedisBroker};
use celeriac_testkit::{FactoryOptions, Instance, Skip};

const URL_VAR: &str = "CELERIAC_TEST_REDIS_URL";

/// The server URL with a fresh key prefix and the requested visibility timeout.
fn isolated_url(opts: &FactoryOptions) -> Result<String, Skip> {
    let base = std::env::var(URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            Skip::new(format!(
                "{URL_VAR} is not set (e.g. redis://127.0.0.1:6379/15)"
            ))
        })?;
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut url = format!(
        "{base}{sep}global_keyprefix=t-{}:",
        uuid::Uuid::new_v4().simple()
    );
    if let Some(t) = opts.visibility_timeout {
        url.push_str(&format!("&visibility_timeout={}", t.as_secs_f64()));
    }
    Ok(url)
}

async fn redis_broker(opts: FactoryOptions) -> Result<Instance<dyn Broker>, Skip> {
    let url = isolated_url(&opts)?;
    let first: Arc<dyn Broker> = RedisBroker::open(&url).await.expect("open Redis broker");
    Ok(Instance::new(first, move || {
        let url = url.clone();
        async move {
            let again: Arc<dyn Broker> =
                RedisBroker::open(&url).await.expect("reopen Redis broker");
            again
        }
    }))
}

async fn redis_backend(opts: FactoryOptions) -> Result<Instance<dyn ResultBackend>, Skip> {
    let url = isolated_url(&opts)?;
    let first: Arc<dyn ResultBackend> = RedisBackend::open(&url).await.expect("open Redis backend");
    Ok(Instance::new(first, move || {
        let url = url.clone();
        async move {
            let again: Arc<dyn ResultBackend> = RedisBackend::open(&url)
                .await
                .expect("reopen Redis backend");
            again
        }
    }))
}

celeriac_testkit::broker_tests!(redis_broker);
celeriac_testkit::backend_tests!(redis_backend);
celeriac_testkit::beat_tests!(celeriac_testkit::beat_suite::OnBroker(redis_broker));
celeriac_testkit::beat_tests!(
    celeriac_testkit::beat_suite::OnBackend(redis_backend),
    beat_conformance_backend
);
