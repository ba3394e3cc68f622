//! The store that lets any number of beat processes share one schedule: a leader lease with a
//! fencing token, and each entry's last run.
//!
//! Celery's beat keeps its state in a local file and trusts the operator to run one copy.
//! celeriac's beat keeps both in the broker's store (or the result backend's, where the broker
//! has none), so every node may run beat: one holds the lease and sends, the others wait to
//! take over, and a new leader goes on from the last runs the old one recorded.
//!
//! The contract every engine keeps:
//!
//! * [`BeatStore::acquire_lease`] is atomic: at any instant at most one holder has a lease
//!   that has not lapsed. The holder renews by acquiring again before the TTL runs out.
//! * Each time the lease changes hands its **token** grows; a holder keeps its token while it
//!   renews. A lease taken again after it lapsed or was released has changed hands, even
//!   when the same holder name takes it (a restarted beat may reuse its name while the old
//!   process is paused). A holder that paused past its TTL finds a larger token in the store.
//! * [`BeatStore::record_runs`] writes only while the caller's token is the current one and
//!   the lease has not lapsed, in the same atomic step as that check; otherwise it writes
//!   nothing and answers `false`. Beat records a tick before it sends it, so a stale leader
//!   never sends.
//! * Times are the store's own where it has a clock (Redis); on the embedded store they are
//!   the machine's, which every process sharing the file also uses.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::BrokerError;

/// One entry's state as the leader last recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastRun {
    pub entry: String,
    /// The schedule the run was made under (its canonical text). A schedule whose entry
    /// changed starts afresh; unchanged entries keep their last run.
    pub schedule: String,
    /// When the tick was due (not when it went out, so intervals do not drift).
    pub at: DateTime<Utc>,
    /// Ticks sent so far, Celery's `total_run_count`.
    pub total_run_count: u64,
}

/// Who holds a schedule's lease, for `beat status` and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: String,
    pub token: u64,
    /// Time left before the lease lapses unless renewed.
    pub remaining: Duration,
}

#[async_trait]
pub trait BeatStore: Send + Sync {
    /// Takes the lease of `schedule` for `holder` when it is free or lapsed, or renews it when
    /// `holder` has it; either way it then lasts `ttl`. Returns the token when `holder` holds
    /// it after the call, `None` when another holder does.
    async fn acquire_lease(
        &self,
        schedule: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError>;

    /// Gives the lease up at once (a clean shutdown), when `holder` still holds it with
    /// `token`; otherwise does nothing.
    async fn release_lease(
        &self,
        schedule: &str,
        holder: &str,
        token: u64,
    ) -> Result<(), BrokerError>;

    /// The current holder, when the lease has not lapsed.
    async fn lease_holder(&self, schedule: &str) -> Result<Option<LeaseHolder>, BrokerError>;

    /// Every entry's last run (in no particular order).
    async fn last_runs(&self, schedule: &str) -> Result<Vec<LastRun>, BrokerError>;

    /// Writes `runs` (replacing those entries' earlier state) when `holder` holds the lease
    /// with `token` and it has not lapsed; returns whether it did. Check and write are one
    /// atomic step.
    async fn record_runs(
        &self,
        schedule: &str,
        holder: &str,
        token: u64,
        runs: &[LastRun],
    ) -> Result<bool, BrokerError>;
}
