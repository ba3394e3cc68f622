//! The consumer: fills the prefetch window from the broker, hands each delivery to its own
//! handler, and settles messages (acks batched on one task; requeues and dead letters
//! one by one).
//!
//! The window is pool size × `prefetch_multiplier` places (× 1 with `--disable-prefetch`)
//! and follows the pool when autoscale resizes it. A place is held until the message is
//! acknowledged, as AMQP's prefetch count does: at start with early ack (so the window
//! counts reserved messages, as Celery's), after the result is stored with late ack or
//! `--disable-prefetch` (so a message is fetched only for a free slot). A
//! second, wider bound ([`IN_FLIGHT_PER_PLACE`]) caps the deliveries in hand, results being
//! stored included, so a slow backend cannot make the worker take messages without limit.

use std::sync::Arc;
use std::time::Duration;

use celeriac_core::{BrokerError, Consumer, Delivery, DeliveryTag, ErrorKind};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tracing::{error, info};

use crate::shutdown::Phase;
use crate::worker::Shared;

/// What became of one message, decided once and then carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Requeue,
    /// Already acknowledged (early ack) or handed to the dead-letter queue.
    Done,
}

/// Deliveries in hand (reserved, running, or storing their result) per window place.
pub(crate) const IN_FLIGHT_PER_PLACE: usize = 2;

/// How long one fetch waits for messages before the loop checks its phase again.
const FETCH_WAIT: Duration = Duration::from_secs(2);

pub(crate) async fn fetch_loop(shared: &Arc<Shared>, handlers: &mut JoinSet<()>) {
    let mut phase = shared.phase.clone();
    let mut failures = 0u32;
    loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        while handlers.try_join_next().is_some() {}
        let first = tokio::select! {
            places = take_places(shared) => match places { Some(p) => p, None => return },
            _ = phase.changed() => continue,
        };
        let mut places = vec![first];
        while let Some(p) = try_take_places(shared) {
            places.push(p);
        }
        shared.sync_revocations().await;
        let fetched = tokio::select! {
            r = shared.consumer.fetch(places.len(), FETCH_WAIT) => r,
            _ = phase.changed() => continue,
        };
        match fetched {
            Ok(deliveries) => {
                if failures > 0 {
                    info!("broker reachable again: consuming");
                    failures = 0;
                }
                for delivery in deliveries {
                    let Some((window, in_flight)) = places.pop() else {
                        break;
                    };
                    let shared = shared.clone();
                    handlers.spawn(async move {
                        shared.handle(delivery, window).await;
                        drop(in_flight);
                    });
                }
            }
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                error!("cannot fetch from the broker ({e}); retrying in {pause:?}");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = phase.changed() => {}
                }
            }
        }
    }
}

type Places = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// A window place and an in-flight place, waiting for both.
async fn take_places(shared: &Shared) -> Option<Places> {
    let in_flight = shared.in_flight.take().await?;
    let window = shared.window.take().await?;
    Some((window, in_flight))
}

fn try_take_places(shared: &Shared) -> Option<Places> {
    let in_flight = shared.in_flight.try_take()?;
    let window = shared.window.try_take()?;
    Some((window, in_flight))
}

/// Acks in batches: whatever accumulated while the previous batch was in flight.
pub(crate) async fn ack_loop(
    consumer: Arc<dyn Consumer>,
    mut rx: mpsc::UnboundedReceiver<DeliveryTag>,
) {
    let mut batch = Vec::with_capacity(256);
    while let Some(tag) = rx.recv().await {
        batch.push(tag);
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(tag) => batch.push(tag),
                Err(_) => break,
            }
        }
        if let Err(e) = consumer.ack(&batch).await {
            error!(
                "could not ack {} messages (they will be delivered again): {e}",
                batch.len()
            );
        }
        batch.clear();
    }
}

impl Shared {
    pub(crate) async fn settle(&self, tag: &DeliveryTag, settle: Settle) {
        let result = match settle {
            Settle::Ack => self
                .acks
                .send(tag.clone())
                .map_err(|_| BrokerError::new(ErrorKind::Closed, "acker stopped")),
            Settle::Requeue => self.consumer.requeue(std::slice::from_ref(tag)).await,
            Settle::Done => Ok(()),
        };
        if let Err(e) = result {
            error!("could not settle message {}: {e}", tag.0);
        }
    }

    pub(crate) async fn dead_letter(&self, delivery: &Delivery, reason: &str) {
        self.counters
            .dead_lettered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.consumer.dead_letter(&delivery.tag, reason).await {
            error!(
                "could not move message {} to the dead-letter queue ({reason}): {e}",
                delivery.tag.0
            );
        }
    }
}
