//! A chord header task's final state: stored and counted in its chord in one backend call
//! (`ChordJoin::store_part`). The call that completes the chord holds its claim and fires the
//! body with the header's results in header order, or, when a member failed, fails the body
//! with Celery's `ChordError` (its errbacks sent, its chain failed). Then the claim is
//! released and the chord marked done, so late copies of members change nothing.

use std::time::Duration;

use celeriac_core::backend::{ChordPart, PartResult, PartReturn};
use celeriac_core::canvas::{list_option, Signature};
use celeriac_core::state::{ExceptionInfo, TaskMeta, TaskState};
use serde_json::Value;
use tracing::{error, info, warn};

use super::lineage;
use crate::completer::Stored;
use crate::worker::Shared;

/// While another worker holds a completed chord's claim (it may have died holding it), the
/// member is stored again after this pause, until the claim lapses or the chord is done.
const CLAIM_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Longer than any claim's TTL (10 s here, 6 s in Celery 5.7).
const CLAIM_RETRIES: u32 = 15;

/// The task that completed a chord: the body's parent, and the root it inherits.
pub(crate) struct Completing<'a> {
    pub id: &'a str,
    pub root_id: Option<&'a str>,
}

impl Shared {
    /// Stores `meta`, a final state of a member of the chord whose body is `body`, and counts
    /// it; fires the body when it completes the chord.
    pub(crate) async fn count_in_chord(
        &self,
        meta: &TaskMeta,
        body: &Value,
        group_index: Option<i64>,
        root_id: Option<&str>,
    ) -> Stored {
        let Some(group_id) = meta.group_id.clone() else {
            warn!(task_id = %meta.task_id, "chord member without a group id: stored, not counted");
            return self.store_meta(meta).await;
        };
        let backend = self.completer.backend().clone();
        let Some(joins) = backend.chords() else {
            error!(task_id = %meta.task_id, "task {} is in chord {group_id}, but the result backend {} cannot join chords (use redis:// or sqlite://): its body will not run", meta.task_id, backend.display_url());
            return self.store_meta(meta).await;
        };
        let part = ChordPart {
            group_id: &group_id,
            group_index,
        };
        for _ in 0..CLAIM_RETRIES {
            let Some(counted) = self.completer.store_part(joins, meta, part).await else {
                return Stored::No;
            };
            match counted {
                PartReturn::Waiting | PartReturn::AlreadyDone => return Stored::Yes,
                PartReturn::ClaimedElsewhere => tokio::time::sleep(CLAIM_RETRY_PAUSE).await,
                PartReturn::Complete { claim, parts } => {
                    let by = Completing {
                        id: &meta.task_id,
                        root_id,
                    };
                    self.fire_chord_body(&group_id, body, parts, &by).await;
                    if !joins.finish_chord(&group_id, &claim).await.unwrap_or(false) {
                        warn!(task_id = %meta.task_id, "chord {group_id}: the claim lapsed before it was released");
                    }
                    return Stored::Yes;
                }
            }
        }
        warn!(task_id = %meta.task_id, "chord {group_id} is complete but another worker still holds its claim");
        Stored::Yes
    }

    async fn fire_chord_body(
        &self,
        group_id: &str,
        body: &Value,
        parts: Vec<PartResult>,
        by: &Completing<'_>,
    ) {
        let failed = parts
            .iter()
            .find(|p| matches!(p.state, TaskState::Failure | TaskState::Revoked));
        if let Some(failed) = failed {
            let raised = ExceptionInfo::from_value(&failed.result)
                .map(|e| e.repr())
                .unwrap_or_else(|| celeriac_core::repr::repr(&failed.result));
            let reason = format!("Dependency {} raised {raised}", failed.task_id);
            return self.fail_chord_body(group_id, body, &reason, by).await;
        }
        let results: Vec<Value> = parts.into_iter().map(|p| p.result).collect();
        let canvas = celeriac_core::canvas::Canvas::from_value(body);
        let sent = match canvas {
            Ok(canvas) => {
                let options = lineage(by.id, by.root_id);
                self.apply_followup(&canvas, &[Value::Array(results)], options)
                    .await
            }
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(frozen) => {
                info!(task_id = %by.id, "chord {group_id} complete: body {} sent", frozen.id())
            }
            Err(e) => {
                let reason = format!("Callback error: {e}");
                self.fail_chord_body(group_id, body, &reason, by).await;
            }
        }
    }

    /// Celery's `chord_error_from_stack`: FAILURE `ChordError(reason)` for the body (counted
    /// in its own chord when the body is a member of an enclosing one) and for its chain,
    /// and the body's errbacks sent.
    async fn fail_chord_body(
        &self,
        group_id: &str,
        body: &Value,
        reason: &str,
        by: &Completing<'_>,
    ) {
        error!(task_id = %by.id, "chord {group_id} failed: {reason}");
        let exc = ExceptionInfo::new("ChordError", reason).with_module("celery.exceptions");
        let Ok(sig) = Signature::from_value(body) else {
            return;
        };
        let mut failed = vec![body.clone()];
        failed.extend(list_option(&sig.options, "chain").unwrap_or_default());
        Box::pin(self.fail_chain(failed, &exc, None)).await;
        let id = sig.options.get("task_id").and_then(Value::as_str);
        let errbacks = list_option(&sig.options, "link_error").filter(|e| !e.is_empty());
        if let (Some(id), Some(errbacks)) = (id, errbacks) {
            self.send_errbacks(id, by.root_id, &errbacks).await;
        }
    }

    /// Stores a meta that no message of this worker carries (no reply queue to route by).
    pub(crate) async fn store_meta(&self, meta: &TaskMeta) -> Stored {
        self.completer.store_meta(meta).await
    }
}
