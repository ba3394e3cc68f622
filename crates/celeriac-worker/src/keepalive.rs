//! Background duties on a timer: renewing the leases of held messages (so a long task is
//! never redelivered while its worker lives) and picking up revocations.

use std::sync::Arc;

use tokio::time::MissedTickBehavior;
use tracing::error;

use crate::worker::Shared;

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut keepalive = tokio::time::interval(shared.consumer.keepalive_interval());
    let mut revokes = tokio::time::interval(shared.config.revoke_poll_interval);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    revokes.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = keepalive.tick() => {
                if let Err(e) = shared.consumer.keepalive().await {
                    error!("could not renew message leases: {e}");
                }
            }
            _ = revokes.tick() => shared.sync_revocations().await,
        }
    }
}
