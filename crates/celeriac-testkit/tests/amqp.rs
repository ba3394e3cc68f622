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

use std::process::Command;
use std::sync::{Arc, OnceLock};

use celeriac_amqp::AmqpBroker;
use celeriac_core::broker::Broker;
use celeriac_testkit::{FactoryOptions, Instance, Skip};

const URL_VAR: &str = "CELERIAC_TEST_AMQP_URL";
const VHOST: &str = "celeriac-conformance";

/// `base` moved to this run's own vhost, recreated once per test process (dropping what an
/// earlier run left there); `base` itself when `rabbitmqctl` is not usable here.
fn conformance_url(base: &str) -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let ctl = |args: &[&str]| {
            Command::new("rabbitmqctl")
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let Some((scheme, rest)) = base.split_once("://") else {
            return base.to_string();
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((r, q)) => (r, format!("?{q}")),
            None => (rest, String::new()),
        };
        let authority = before_query.split('/').next().unwrap_or(before_query);
        let user = match authority.rsplit_once('@') {
            Some((auth, _)) => auth.split(':').next().unwrap_or("guest"),
            None => "guest",
        };
        ctl(&["delete_vhost", VHOST]);
        if !(ctl(&["add_vhost", VHOST])
            && ctl(&["set_permissions", "-p", VHOST, user, ".*", ".*", ".*"]))
        {
            return base.to_string();
        }
        format!("{scheme}://{authority}/{VHOST}{query}")
    })
    .clone()
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
