//! The runner itself: skips are reported as skips, failures fail the run.

use celeriac_core::backend::ResultBackend;
use celeriac_core::broker::Broker;
use celeriac_testkit::{
    backend_suite, beat_suite, broker_suite, FactoryOptions, Instance, Outcome, Skip,
};

async fn no_broker(_: FactoryOptions) -> Result<Instance<dyn Broker>, Skip> {
    Err(Skip::new("no store here"))
}

async fn no_backend(_: FactoryOptions) -> Result<Instance<dyn ResultBackend>, Skip> {
    Err(Skip::new("no store here"))
}

async fn broken_backend(_: FactoryOptions) -> Result<Instance<dyn ResultBackend>, Skip> {
    panic!("cannot open the store")
}

#[tokio::test]
async fn a_factory_skip_skips_every_case_visibly() {
    let report = broker_suite::run_all(&no_broker, None).await;
    assert_eq!(report.skipped(), broker_suite::cases().len());
    assert!(report
        .outcomes
        .iter()
        .all(|(_, o)| *o == Outcome::Skipped("no store here".into())));
    let report = beat_suite::run_all(&beat_suite::OnBroker(no_broker), None).await;
    assert_eq!(report.skipped(), beat_suite::cases().len());
    let report = backend_suite::run_all(&no_backend, Some("wait")).await;
    assert_eq!(report.outcomes.len(), 3, "the filter selects by name");
    assert_eq!(report.skipped(), 3);
}

#[tokio::test]
#[should_panic(expected = "backend conformance failed")]
async fn a_failed_case_fails_the_run() {
    backend_suite::run_all(&broken_backend, Some("unknown_is_none")).await;
}

#[test]
fn case_names_are_unique_per_suite() {
    let broker: Vec<_> = broker_suite::cases().iter().map(|c| c.name).collect();
    let backend: Vec<_> = backend_suite::cases().iter().map(|c| c.name).collect();
    let beat: Vec<_> = beat_suite::cases().iter().map(|c| c.name).collect();
    for mut names in [broker, backend, beat] {
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), before);
    }
}
