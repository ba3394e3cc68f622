//! Canvas follow-ups: what a finished task's message asks for next, sent as Celery 5.7's
//! worker sends it (protocol §6). They are effects of an outcome (`outcome.rs`):
//!
//! * success (`success.rs`): callbacks (`link`) and the next chain step, sent before the
//!   result is stored and recorded in its `children`;
//! * failure (`failure.rs`): FAILURE stored for the remaining chain steps, errbacks sent
//!   with the failed id first;
//! * a chord header task's final state, whatever it is (`chord.rs`): counted in its chord;
//!   the member that completes it fires the body (or fails it with `ChordError`).
//!
//! Every canvas is applied by core's planner ([`Applier`]) with the worker's router, the
//! same code clients use, so a chain built in Python goes on here exactly as it would there.

mod chord;
mod failure;
mod replace;
mod success;

use celeriac_core::canvas::{Applier, Canvas, Frozen, Plan};
use celeriac_core::state::TaskState;
use chrono::Utc;
use serde_json::{json, Map, Value};
use tracing::{error, warn};

use crate::request::Request;
use crate::worker::Shared;

/// The options every follow-up of task `id` gets: it is their parent, its root their root.
fn lineage(id: &str, root_id: Option<&str>) -> Map<String, Value> {
    let mut options = Map::new();
    options.insert("parent_id".into(), json!(id));
    options.insert("root_id".into(), json!(root_id.unwrap_or(id)));
    options
}

impl Shared {
    /// Applies a canvas found in a message and sends what it plans; returns its result's ids.
    pub(crate) async fn apply_followup(
        &self,
        canvas: &Canvas,
        prepend: &[Value],
        options: Map<String, Value>,
    ) -> Result<Frozen, String> {
        let (plan, frozen) = Applier::new(&*self.router, Utc::now())
            .apply(canvas, prepend, options)
            .map_err(|e| e.to_string())?;
        self.send_plan(plan).await?;
        Ok(frozen)
    }

    /// Records the plan's chords, then publishes its messages in one batch.
    async fn send_plan(&self, plan: Plan) -> Result<(), String> {
        if !plan.chords.is_empty() {
            let backend = self.completer.backend();
            let Some(joins) = backend.chords() else {
                return Err(format!(
                    "a chord needs a result backend that joins chords (redis:// or sqlite://); {} does not",
                    backend.display_url()
                ));
            };
            for chord in &plan.chords {
                joins
                    .start_chord(&chord.group_id, chord.size, self.completer.result_expires())
                    .await
                    .map_err(|e| format!("could not start chord {}: {e}", chord.group_id))?;
            }
        }
        let mut publishes = plan.publishes;
        let sent = match publishes.len() {
            0 => Ok(()),
            1 => self.broker.publish(publishes.remove(0)).await,
            _ => self.broker.publish_batch(publishes).await,
        };
        sent.map_err(|e| format!("could not publish: {e}"))
    }

    /// A redelivered message whose task already finished (its worker died after storing the
    /// result): what that run may not have done yet is done now. It is counted in its chord
    /// (once, however often stored), and its follow-ups are sent when its stored success
    /// names none, as Celery 5.7's worker does for a deduplicated task.
    pub(crate) async fn resume_followups(&self, req: &Request<'_>) {
        let msg = req.msg;
        let has_followups = msg.embed.callbacks.as_ref().is_some_and(|c| !c.is_empty())
            || msg.embed.chain.as_ref().is_some_and(|c| !c.is_empty());
        if msg.embed.chord.is_none() && !has_followups {
            return;
        }
        let meta = match self.completer.backend().get(&msg.headers.id).await {
            Ok(Some(meta)) if meta.status.is_ready() => meta,
            Ok(_) => return,
            Err(e) => {
                warn!(task_id = %msg.headers.id, "cannot read the stored result to resume its follow-ups: {e}");
                return;
            }
        };
        let no_children = meta.children.as_ref().is_none_or(Vec::is_empty);
        if has_followups && no_children && meta.status == TaskState::Success {
            // Errors are logged there; the stored result stays as it is.
            let _ = self.send_success_followups(req, &meta.result).await;
        }
        if let Some(body) = &msg.embed.chord {
            let h = &msg.headers;
            self.count_in_chord(&meta, body, h.group_index, h.root_id.as_deref())
                .await;
        }
    }

    /// Logs a follow-up that could not be sent, naming the task it follows.
    fn followup_failed(&self, id: &str, what: &str, why: &str) {
        error!(task_id = %id, "could not send the {what} of task {id}: {why}");
    }
}
