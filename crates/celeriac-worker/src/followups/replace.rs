//! `Task.replace` (protocol §6.5): a task body returned [`TaskError::Replace`]; the canvas
//! it names runs in the task's place. It takes the task's id (so whoever waits on the task
//! gets the replacement's result), its group and index, its chord (the chord still counts one
//! result for that slot), its root, its callbacks and errbacks, and the rest of its chain.
//! A group is first made a chord whose body is `celery.accumulate`, so its list of results
//! is one result. The task itself then ends as Ignore: nothing stored for it.
//!
//! [`TaskError::Replace`]: celeriac_core::task::TaskError::Replace

use celeriac_core::canvas::{chunks_as_group, Canvas, Signature, ACCUMULATE_TASK};
use serde_json::{json, Map, Value};
use tracing::info;

use crate::request::Request;
use crate::worker::Shared;

/// The replacement as Celery builds it: a group (chunks are one) gets `celery.accumulate`
/// as its chord body, and the replaced task's remaining chain follows it.
fn replacement(canvas: Canvas, chain: Option<&[Value]>) -> Result<Canvas, String> {
    let canvas = match chunks_as_group(canvas) {
        Canvas::Group(members, options) => {
            let mut kwargs = Map::new();
            kwargs.insert("index".into(), json!(0));
            let accumulate = Signature::new(ACCUMULATE_TASK, vec![], kwargs);
            Canvas::Chord {
                header: members,
                body: Box::new(Canvas::Task(accumulate)),
                options,
            }
        }
        other => other,
    };
    let Some(rest) = chain.filter(|c| !c.is_empty()) else {
        return Ok(canvas);
    };
    let mut steps = vec![canvas];
    for step in rest.iter().rev() {
        steps.push(Canvas::from_value(step).map_err(|e| e.to_string())?);
    }
    Ok(Canvas::Chain(steps, Map::new()))
}

impl Shared {
    /// Sends the replacement of the request's task. `Err` names why it could not be sent.
    pub(crate) async fn replace_task(
        &self,
        req: &Request<'_>,
        signature: &Value,
    ) -> Result<(), String> {
        let h = req.headers();
        let embed = &req.msg.embed;
        let canvas = Canvas::from_value(signature).map_err(|e| e.to_string())?;
        let canvas = replacement(canvas, embed.chain.as_deref())?;
        let mut options = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value.filter(|v| !v.is_null()) {
                options.insert(key.to_string(), value);
            }
        };
        put("task_id", Some(json!(h.id)));
        put(
            "root_id",
            Some(json!(h.root_id.as_deref().unwrap_or(&h.id))),
        );
        put("parent_id", h.parent_id.as_ref().map(|p| json!(p)));
        put("group_id", h.group.as_ref().map(|g| json!(g)));
        put("group_index", h.group_index.map(|i| json!(i)));
        put("chord", embed.chord.clone());
        put("link", embed.callbacks.clone().map(Value::Array));
        put("link_error", embed.errbacks.clone().map(Value::Array));
        let frozen = self.apply_followup(&canvas, &[], options).await?;
        info!(task_id = %h.id, "Task {}[{}] replaced by {}", h.task, h.id, frozen.id());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_replacement_is_a_chord_into_accumulate_followed_by_the_chain() {
        let group = Canvas::Group(
            vec![Canvas::Task(Signature::new("a", vec![], Map::new()))],
            Map::new(),
        );
        let rest = [json!({"task": "c"}), json!({"task": "b"})];
        let Canvas::Chain(steps, _) = replacement(group, Some(&rest)).unwrap() else {
            panic!("a chain");
        };
        assert!(
            matches!(&steps[0], Canvas::Chord { body, .. } if body.to_signature().task == ACCUMULATE_TASK)
        );
        let names: Vec<String> = steps[1..].iter().map(|s| s.to_signature().task).collect();
        assert_eq!(names, ["b", "c"], "the remaining chain runs next-first");
    }
}
