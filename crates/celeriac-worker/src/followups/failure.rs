//! After a failure: FAILURE for every remaining chain step, so whoever waits on the chain's
//! result is released (Celery's `_fail_chain`), and the errbacks (`_call_task_errbacks`):
//! one registered here that takes more than one argument is called in-process as
//! `(request, exc, traceback)`; the others are sent together as one group with the failed
//! task's id as their first argument.

use celeriac_core::canvas::{Canvas, Signature};
use celeriac_core::message::TaskMessage;
use celeriac_core::state::{ExceptionInfo, TaskMeta, TaskState};
use celeriac_core::task::TaskContext;
use serde_json::{json, Map, Value};
use tracing::error;

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
        let Some(errbacks) = msg.embed.errbacks.as_deref().filter(|e| !e.is_empty()) else {
            return;
        };
        let mut to_send = Vec::new();
        for errback in errbacks {
            match self.in_process_errback(errback) {
                Some(sig) => self.call_errback(&sig, msg, exc, traceback).await,
                None => to_send.push(errback.clone()),
            }
        }
        if !to_send.is_empty() {
            self.send_errbacks(&h.id, h.root_id.as_deref(), &to_send)
                .await;
        }
    }

    /// The errback's signature when it is called in-process: registered here and taking more
    /// arguments than the ones it already has plus one (Celery's arity check).
    fn in_process_errback(&self, errback: &Value) -> Option<Signature> {
        let sig = Signature::from_value(errback).ok()?;
        if sig.subtask_type.is_some() {
            return None;
        }
        let task = self.registry.get(&sig.task)?;
        let bound = if sig.immutable { 0 } else { sig.args.len() };
        task.takes_more_than(1 + bound).then_some(sig)
    }

    /// Calls a new-style errback here: `(request, exc, traceback)` and its own arguments.
    async fn call_errback(
        &self,
        sig: &Signature,
        msg: &TaskMessage,
        exc: &ExceptionInfo,
        traceback: Option<&str>,
    ) {
        let h = &msg.headers;
        let Some(task) = self.registry.get(&sig.task).cloned() else {
            return;
        };
        let request = json!({
            "id": h.id, "task": h.task, "args": msg.args, "kwargs": msg.kwargs,
            "root_id": h.root_id, "parent_id": h.parent_id, "group": h.group,
            "group_index": h.group_index, "retries": h.retries,
            "hostname": self.config.hostname,
        });
        let mut args = vec![request, exc.to_value(), json!(traceback)];
        args.extend(sig.args.iter().cloned());
        let ctx = TaskContext::new(
            h.id.clone(),
            sig.task.clone(),
            self.config.hostname.clone(),
            String::new(),
        );
        let ran = match task.call(args, sig.kwargs.clone(), ctx) {
            Ok(body) => crate::builtins::run_body(body)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = ran {
            error!(task_id = %h.id, "Errback {} of task {} raised an exception: {e}", sig.task, h.id);
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
