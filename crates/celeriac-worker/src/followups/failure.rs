//! After a failure: FAILURE for every remaining chain step, so whoever waits on the chain's
//! result is released (Celery's `_fail_chain`), and the errbacks, sent together as one group
//! with the failed task's id as their first argument (`_call_task_errbacks`, old style: a
//! Rust worker has no `(request, exc, traceback)` errbacks to call in-process).

use celeriac_core::canvas::{Canvas, Signature};
use celeriac_core::message::TaskMessage;
use celeriac_core::state::{ExceptionInfo, TaskMeta, TaskState};
use serde_json::{json, Map, Value};

use super::lineage;
use crate::worker::Shared;

/// The final state stored for a step that never ran because an earlier one failed.
fn failed_step_meta(
    sig: &Signature,
    id: &str,
    exc: &ExceptionInfo,
    traceback: Option<&str>,
) -> TaskMeta {
    let mut meta = TaskMeta::pending(id.to_string());
    meta.status = TaskState::Failure;
    meta.result = exc.to_value();
    meta.traceback = traceback.map(str::to_string);
    meta.children = Some(Vec::new());
    meta.date_done = Some(chrono::Utc::now());
    meta.group_id = sig
        .options
        .get("group_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    meta
}

impl Shared {
    /// What a failed task's message asks for: its remaining chain failed, its errbacks sent.
    pub(crate) async fn send_failure_followups(
        &self,
        msg: &TaskMessage,
        exc: &ExceptionInfo,
        traceback: Option<&str>,
    ) {
        let h = &msg.headers;
        if let Some(chain) = &msg.embed.chain {
            self.fail_chain(chain.clone(), exc, traceback).await;
        }
        if let Some(errbacks) = msg.embed.errbacks.as_deref().filter(|e| !e.is_empty()) {
            self.send_errbacks(&h.id, h.root_id.as_deref(), errbacks)
                .await;
        }
    }

    /// Sends `errbacks` of failed task `id` as one group, `id` prepended to each.
    pub(crate) async fn send_errbacks(&self, id: &str, root_id: Option<&str>, errbacks: &[Value]) {
        let members: Result<Vec<Canvas>, _> = errbacks.iter().map(Canvas::from_value).collect();
        let sent = match members {
            Ok(members) => {
                let group = Canvas::Group(members, Map::new());
                let options = lineage(id, root_id);
                self.apply_followup(&group, &[json!(id)], options)
                    .await
                    .map(drop)
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            self.followup_failed(id, "errbacks", &e);
        }
    }

    /// Stores FAILURE for each step of `chain` that has an id; a step in a chord is counted
    /// in it (its chord must not wait forever), and a chord step's body fails too.
    pub(crate) async fn fail_chain(
        &self,
        chain: Vec<Value>,
        exc: &ExceptionInfo,
        traceback: Option<&str>,
    ) {
        let mut steps: std::collections::VecDeque<Value> = chain.into();
        while let Some(step) = steps.pop_front() {
            let Ok(sig) = Signature::from_value(&step) else {
                continue;
            };
            if sig.subtask_type.as_deref() == Some("chord") {
                if let Some(body) = sig.kwargs.get("body") {
                    steps.push_back(body.clone());
                }
                continue;
            }
            let Some(id) = sig.options.get("task_id").and_then(Value::as_str) else {
                continue;
            };
            let meta = failed_step_meta(&sig, id, exc, traceback);
            match sig.options.get("chord").filter(|c| !c.is_null()) {
                Some(body) => {
                    let index = sig.options.get("group_index").and_then(Value::as_i64);
                    self.count_in_chord(&meta, body, index, None).await;
                }
                None => {
                    self.store_meta(&meta).await;
                }
            }
        }
    }
}
