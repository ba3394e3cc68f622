//! After a success: callbacks and the next chain step (Celery's
//! `_dispatch_callbacks_and_chain`).

use celeriac_core::canvas::Canvas;
use serde_json::{Map, Value};

use super::lineage;
use crate::request::Request;
use crate::worker::Shared;

impl Shared {
    /// Sends the callbacks and the next chain step of a task that returned `value`; returns
    /// them as the result's `children`. `Err` says why one could not be sent (it is logged).
    pub(crate) async fn send_success_followups(
        &self,
        req: &Request<'_>,
        value: &Value,
    ) -> Result<Vec<Value>, String> {
        let h = req.headers();
        let embed = &req.msg.embed;
        let mut children = Vec::new();
        let prepend = std::slice::from_ref(value);
        let options = lineage(&h.id, h.root_id.as_deref());
        for callbacks in callback_batches(embed.callbacks.as_deref().unwrap_or_default()) {
            let sent = match callbacks {
                Ok(canvas) => self.apply_followup(&canvas, prepend, options.clone()).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(frozen) => children.push(frozen.as_tuple()),
                Err(e) => {
                    self.followup_failed(&h.id, "callbacks", &e);
                    return Err(e);
                }
            }
        }
        let Some((next, rest)) = embed.chain.as_deref().and_then(<[Value]>::split_last) else {
            return Ok(children);
        };
        let mut options = options;
        options.insert("chain".into(), Value::Array(rest.to_vec()));
        let sent = match Canvas::from_value(next) {
            Ok(canvas) => self.apply_followup(&canvas, prepend, options).await,
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(frozen) => children.push(frozen.as_tuple()),
            Err(e) => {
                self.followup_failed(&h.id, "next chain step", &e);
                return Err(e);
            }
        }
        Ok(children)
    }
}

/// How Celery sends a task's callbacks: one alone; several as one group of the plain ones,
/// each group among them on its own.
fn callback_batches(callbacks: &[Value]) -> Vec<Result<Canvas, String>> {
    let parsed: Vec<Result<Canvas, String>> = callbacks
        .iter()
        .map(|c| Canvas::from_value(c).map_err(|e| e.to_string()))
        .collect();
    if parsed.len() <= 1 {
        return parsed;
    }
    let mut batches = Vec::new();
    let mut plain = Vec::new();
    for callback in parsed {
        match callback {
            Ok(group @ Canvas::Group(..)) => batches.push(Ok(group)),
            Ok(other) => plain.push(other),
            Err(e) => batches.push(Err(e)),
        }
    }
    if !plain.is_empty() {
        batches.push(Ok(Canvas::Group(plain, Map::new())));
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn several_callbacks_go_as_one_group_and_one_goes_alone() {
        let echo = json!({"task": "tasks.echo"});
        let one = callback_batches(std::slice::from_ref(&echo));
        assert!(matches!(one.as_slice(), [Ok(Canvas::Task(_))]));
        let group =
            json!({"task": "celery.group", "subtask_type": "group", "kwargs": {"tasks": [echo]}});
        let many = callback_batches(&[echo.clone(), echo.clone(), group]);
        assert_eq!(many.len(), 2);
        assert!(matches!(&many[1], Ok(Canvas::Group(members, _)) if members.len() == 2));
    }
}
