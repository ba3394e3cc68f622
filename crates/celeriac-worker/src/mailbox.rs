//! The worker's mailbox: receives Celery's remote-control requests (`celery inspect`,
//! `celery control`, Flower) from the broker's [`Mailbox`](celeriac_core::control::Mailbox)
//! capability, runs the ones addressed to this worker (`remote_control.rs`) and replies to
//! those that want a reply. A malformed request is dropped by the engine; a failing command
//! replies `{"error": ...}`; nothing here stops the worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::worker::Shared;

pub(crate) async fn run(shared: Arc<Shared>) {
    if !shared.config.remote_control {
        info!("remote control is off (worker_enable_remote_control = false)");
        return;
    }
    let Some(mailbox) = shared.broker.mailbox() else {
        debug!("this broker has no remote control: the worker has no mailbox");
        return;
    };
    let hostname = shared.config.hostname.clone();
    let mut inbox = match mailbox.listen(&hostname).await {
        Ok(inbox) => inbox,
        Err(e) => {
            warn!("remote control is off for this worker: {e}");
            return;
        }
    };
    info!("remote control: listening");
    while let Some(request) = inbox.next().await {
        shared.observe_clock(request.clock);
        if !request.is_for(&hostname) {
            continue;
        }
        debug!(method = %request.method, "remote control request");
        let Some(payload) = shared.control(&request).await else {
            continue;
        };
        let (Some(ticket), Some(to)) = (&request.ticket, &request.reply_to) else {
            continue;
        };
        let clock = shared.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let body = json!({ hostname.as_str(): payload });
        if let Err(e) = mailbox.reply(to, ticket, clock, &body).await {
            warn!(method = %request.method, "could not reply to a remote-control request: {e}");
        }
    }
}

impl Shared {
    /// Lamport clock: past every clock seen.
    fn observe_clock(&self, seen: u64) {
        self.clock.fetch_max(seen, Ordering::Relaxed);
        self.clock.fetch_add(1, Ordering::Relaxed);
    }
}

/// `{"ok": text}`, Celery's success reply.
pub(crate) fn ok(text: impl Into<String>) -> Value {
    json!({ "ok": text.into() })
}

/// `{"error": text}`, Celery's failure reply.
pub(crate) fn error(text: impl Into<String>) -> Value {
    json!({ "error": text.into() })
}
