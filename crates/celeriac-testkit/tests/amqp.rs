//! The broker conformance suite against RabbitMQ, on the server named by
//! `CELERIAC_TEST_AMQP_URL` (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`); every case is
//! skipped, with the reason printed, when it is unset. Cases use fresh queue names, so they
//! share one vhost: `celeriac-conformance`, recreated by each run when `rabbitmqctl` works
//! here (so runs do not pile queues up in the server's vhosts), else the URL's own. Task
//! queues are declared with `max_priority=9` so priorities apply.
//!
//! RabbitMQ has no lease timeout (a delivery is held until its channel closes), so the cases
//! that ask for a short visibility timeout are skipped; celeriac-amqp's own tests cover
//! redelivery when a consumer's connection dies, is dropped or is closed.

use std::sync::{Arc, OnceLock};

use celeriac_amqp::AmqpBroker;
use celeriac_core::broker::Broker;
use celeriac_testkit::rabbitmq::TestVhost;
use celeriac_testkit::{FactoryOptions, Instance, Skip};

const URL_VAR: &str = "CELERIAC_TEST_AMQP_URL";
const VHOST: &str = "celeriac-conformance";

/// `base` moved to this run's own vhost, recreated once per test process (dropping what an
/// earlier run left there, and kept after it: a static is never dropped); `base` itself when
/// `rabbitmqctl` is not usable here.
fn conformance_url(base: &str) -> String {
    static VHOST_OF_RUN: OnceLock<Option<TestVhost>> = OnceLock::new();
    VHOST_OF_RUN
        .get_or_init(|| TestVhost::create(base, VHOST))
        .as_ref()
        .map_or_else(|| base.to_string(), |v| v.url.clone())
}

async fn amqp_broker(opts: FactoryOptions) -> Result<Instance<dyn Broker>, Skip> {
    let base = std::env::var(URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| {
            Skip::new(format!(
                "{URL_VAR} is not set (e.g. amqp://guest:guest@127.0.0.1:5672/%2f)"
            ))
        })?;
    if opts.visibility_timeout.is_some() {
        return Err(Skip::new(
            "RabbitMQ has no visibility timeout: a delivery is held until its channel closes \
             (celeriac-amqp's tests cover redelivery on a dead connection)",
        ));
    }
    let base = conformance_url(&base);
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}max_priority=9");
    let first: Arc<dyn Broker> = AmqpBroker::open(&url).await.expect("open AMQP broker");
    Ok(Instance::new(first, move || {
        let url = url.clone();
        async move {
            let again: Arc<dyn Broker> = AmqpBroker::open(&url).await.expect("reopen AMQP broker");
            again
        }
    }))
}

celeriac_testkit::broker_tests!(amqp_broker);
