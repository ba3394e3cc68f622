//! This process's view of the leader lease: whether it leads, with which token, and until
//! when it may trust that without asking the store again.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// A lease this process holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub token: u64,
    /// Renew from here on: a third of the TTL after it was last confirmed, so two renewals
    /// can fail before it lapses.
    pub renew_at: DateTime<Utc>,
    /// Stop sending from here on unless renewed: the TTL after the request that confirmed
    /// it was *sent*, less a tenth for clocks that disagree, so this process gives up
    /// before the store hands the lease to anyone else.
    pub trusted_until: DateTime<Utc>,
}

impl Held {
    pub fn confirmed(token: u64, asked_at: DateTime<Utc>, ttl: Duration) -> Held {
        let ttl = TimeDelta::from_std(ttl).unwrap_or(TimeDelta::MAX);
        Held {
            token,
            renew_at: asked_at + ttl / 3,
            trusted_until: asked_at + ttl - ttl / 10,
        }
    }

    pub fn trusted(&self, now: DateTime<Utc>) -> bool {
        now < self.trusted_until
    }
}
