//! Celery's canvas as data (protocol §2.6, §6): the signature dict every canvas travels as,
//! and the canvas kinds built on it, each with the wire form Celery 5.7's `canvas.py` gives
//! it. Chains, groups and chords are told by `subtask_type`; `xmap`, `xstarmap` and `chunks`
//! keep `subtask_type` null (their classes never set it) and are told by their task name.

mod apply;
mod leaf;

pub use apply::{chunks_as_group, freeze, normalize_chain, Applier, ChordStart, Frozen, Plan};
pub use leaf::{call_args, list_option, merge_options, task_publish, FixedQueue, Router};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};

use crate::error::ProtocolError;

/// A serialized task call: Celery's `Signature`, a dict on the wire. Unknown keys (Celery
/// 5.0's `chord_size`) are accepted and dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub task: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub args: Vec<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub kwargs: Map<String, Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub options: Map<String, Value>,
    #[serde(default)]
    pub subtask_type: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub immutable: bool,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Signature {
    /// A plain task call of `task`.
    pub fn new(task: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        Signature {
            task: task.into(),
            args,
            kwargs,
            options: Map::new(),
            subtask_type: None,
            immutable: false,
        }
    }

    /// Reads a signature dict (as found in a message's `embed` or a canvas's kwargs).
    pub fn from_value(value: &Value) -> Result<Signature, ProtocolError> {
        serde_json::from_value(value.clone())
            .map_err(|e| ProtocolError::BadCanvas(format!("not a Celery signature ({e}): {value}")))
    }

    /// The dict as Celery writes it: `task`, `args`, `kwargs`, `options`, `subtask_type`,
    /// `immutable`, in that order.
    pub fn to_value(&self) -> Value {
        json!({
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "subtask_type": self.subtask_type,
            "immutable": self.immutable,
        })
    }

    /// A canvas primitive's signature: Celery builds them with no args.
    fn primitive(
        task: &str,
        kwargs: Map<String, Value>,
        subtask_type: Option<&str>,
        immutable: bool,
    ) -> Signature {
        Signature {
            task: task.to_string(),
            args: Vec::new(),
            kwargs,
            options: Map::new(),
            subtask_type: subtask_type.map(str::to_string),
            immutable,
        }
    }
}

/// A canvas: what a signature dict stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Canvas {
    /// One task call.
    Task(Signature),
    /// Each step's result goes to the next (`celery.chain`).
    Chain(Vec<Canvas>, Map<String, Value>),
    /// Run together; results in member order (`celery.group`).
    Group(Vec<Canvas>, Map<String, Value>),
    /// A group whose results go, as one list, to `body` (`celery.chord`).
    Chord {
        header: Vec<Canvas>,
        body: Box<Canvas>,
        options: Map<String, Value>,
    },
    /// `task(x) for x in it`, in one task (`celery.map`).
    Map {
        task: Signature,
        it: Vec<Value>,
        options: Map<String, Value>,
    },
    /// `task(*x) for x in it`, in one task (`celery.starmap`).
    Starmap {
        task: Signature,
        it: Vec<Value>,
        options: Map<String, Value>,
    },
    /// `it` split into tasks of `n` calls each (`celery.chunks`).
    Chunks {
        task: Signature,
        it: Vec<Value>,
        n: u64,
        options: Map<String, Value>,
    },
}

pub const CHAIN_TASK: &str = "celery.chain";
pub const GROUP_TASK: &str = "celery.group";
pub const CHORD_TASK: &str = "celery.chord";
pub const MAP_TASK: &str = "celery.map";
pub const STARMAP_TASK: &str = "celery.starmap";
pub const CHUNKS_TASK: &str = "celery.chunks";
/// Celery's built-in that passes its arguments on: `accumulate(*args, index=None)`; the
/// body of the chord a replaced group becomes.
pub const ACCUMULATE_TASK: &str = "celery.accumulate";

fn invalid(what: &str, sig: &Signature) -> ProtocolError {
    ProtocolError::BadCanvas(format!("{what}: {}", sig.to_value()))
}

/// The signatures of a `tasks` list (a group's or a chain's).
fn members(value: Option<&Value>, sig: &Signature) -> Result<Vec<Canvas>, ProtocolError> {
    let Some(Value::Array(items)) = value else {
        return Err(invalid("a canvas without a list of tasks", sig));
    };
    items.iter().map(Canvas::from_value).collect()
}

fn list(value: Option<&Value>, what: &str, sig: &Signature) -> Result<Vec<Value>, ProtocolError> {
    match value {
        Some(Value::Array(items)) => Ok(items.clone()),
        _ => Err(invalid(&format!("{what} without a list `it`"), sig)),
    }
}

impl Canvas {
    /// The canvas's `apply_async` options (a task's signature options, a primitive's own).
    pub fn options(&self) -> &Map<String, Value> {
        match self {
            Canvas::Task(sig) => &sig.options,
            Canvas::Chain(_, o) | Canvas::Group(_, o) => o,
            Canvas::Chord { options, .. }
            | Canvas::Map { options, .. }
            | Canvas::Starmap { options, .. }
            | Canvas::Chunks { options, .. } => options,
        }
    }

    pub fn options_mut(&mut self) -> &mut Map<String, Value> {
        match self {
            Canvas::Task(sig) => &mut sig.options,
            Canvas::Chain(_, o) | Canvas::Group(_, o) => o,
            Canvas::Chord { options, .. }
            | Canvas::Map { options, .. }
            | Canvas::Starmap { options, .. }
            | Canvas::Chunks { options, .. } => options,
        }
    }

    pub fn from_value(value: &Value) -> Result<Canvas, ProtocolError> {
        Canvas::from_signature(&Signature::from_value(value)?)
    }

    /// What a signature stands for; its parts are read recursively.
    pub fn from_signature(sig: &Signature) -> Result<Canvas, ProtocolError> {
        let kw = &sig.kwargs;
        let options = sig.options.clone();
        match (sig.subtask_type.as_deref(), sig.task.as_str()) {
            (Some("chain"), _) => Ok(Canvas::Chain(members(kw.get("tasks"), sig)?, options)),
            (Some("group"), _) => Ok(Canvas::Group(members(kw.get("tasks"), sig)?, options)),
            (Some("chord"), _) => {
                let header = match kw.get("header") {
                    Some(Value::Array(_)) => members(kw.get("header"), sig)?,
                    Some(group @ Value::Object(_)) => match Canvas::from_value(group)? {
                        Canvas::Group(tasks, _) => tasks,
                        one => vec![one],
                    },
                    _ => return Err(invalid("a chord without a header", sig)),
                };
                let body = kw
                    .get("body")
                    .filter(|b| !b.is_null())
                    .ok_or_else(|| invalid("a chord without a body", sig))?;
                Ok(Canvas::Chord {
                    header,
                    body: Box::new(Canvas::from_value(body)?),
                    options,
                })
            }
            (_, MAP_TASK | STARMAP_TASK | CHUNKS_TASK) => Canvas::mapping(sig, options),
            _ => Ok(Canvas::Task(sig.clone())),
        }
    }

    fn mapping(sig: &Signature, options: Map<String, Value>) -> Result<Canvas, ProtocolError> {
        let kw = &sig.kwargs;
        let task = kw
            .get("task")
            .ok_or_else(|| invalid("a map without its task", sig))
            .and_then(Signature::from_value)?;
        let it = list(kw.get("it"), &sig.task, sig)?;
        Ok(match sig.task.as_str() {
            MAP_TASK => Canvas::Map { task, it, options },
            STARMAP_TASK => Canvas::Starmap { task, it, options },
            _ => Canvas::Chunks {
                task,
                it,
                n: kw
                    .get("n")
                    .and_then(Value::as_u64)
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid("chunks without a size `n` of 1 or more", sig))?,
                options,
            },
        })
    }

    /// The signature dict Celery 5.7 writes for this canvas.
    pub fn to_signature(&self) -> Signature {
        let values = |items: &[Canvas]| -> Value {
            Value::Array(items.iter().map(|c| c.to_signature().to_value()).collect())
        };
        let mut kwargs = Map::new();
        let (mut sig, options) = match self {
            Canvas::Task(sig) => return sig.clone(),
            Canvas::Chain(tasks, options) => {
                kwargs.insert("tasks".into(), values(tasks));
                (
                    Signature::primitive(CHAIN_TASK, kwargs, Some("chain"), false),
                    options,
                )
            }
            Canvas::Group(tasks, options) => {
                kwargs.insert("tasks".into(), values(tasks));
                (
                    Signature::primitive(GROUP_TASK, kwargs, Some("group"), false),
                    options,
                )
            }
            Canvas::Chord {
                header,
                body,
                options,
            } => {
                // `chord.__init__`: `{'kwargs': {}}` first, then the header as a group.
                kwargs.insert("kwargs".into(), json!({}));
                let group = Canvas::Group(header.clone(), Map::new());
                kwargs.insert("header".into(), group.to_signature().to_value());
                kwargs.insert("body".into(), body.to_signature().to_value());
                (
                    Signature::primitive(CHORD_TASK, kwargs, Some("chord"), false),
                    options,
                )
            }
            Canvas::Map { task, it, options } | Canvas::Starmap { task, it, options } => {
                let name = if matches!(self, Canvas::Map { .. }) {
                    MAP_TASK
                } else {
                    STARMAP_TASK
                };
                kwargs.insert("task".into(), task.to_value());
                kwargs.insert("it".into(), Value::Array(it.clone()));
                (Signature::primitive(name, kwargs, None, true), options)
            }
            Canvas::Chunks {
                task,
                it,
                n,
                options,
            } => {
                kwargs.insert("task".into(), task.to_value());
                kwargs.insert("it".into(), Value::Array(it.clone()));
                kwargs.insert("n".into(), json!(n));
                (
                    Signature::primitive(CHUNKS_TASK, kwargs, None, true),
                    options,
                )
            }
        };
        sig.options = options.clone();
        sig
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(args: Value) -> Signature {
        Signature::new("tasks.add", args.as_array().unwrap().clone(), Map::new())
    }

    #[test]
    fn signatures_read_celerys_dict_and_write_it_back_in_order() {
        let wire = json!({"task": "tasks.add", "args": [100], "kwargs": {},
                          "options": {"task_id": "0f1b", "reply_to": "5bee"},
                          "subtask_type": null, "immutable": false});
        let sig = Signature::from_value(&wire).unwrap();
        assert_eq!(sig.options["task_id"], "0f1b");
        assert_eq!(
            crate::json::to_python_json(&sig.to_value()),
            crate::json::to_python_json(&wire)
        );
        // Celery 5.0's `chord_size` and nulls where Python had empty values.
        let old = json!({"task": "t", "args": null, "kwargs": null, "options": null,
                         "subtask_type": null, "immutable": null, "chord_size": 2});
        assert_eq!(
            Signature::from_value(&old).unwrap(),
            Signature::new("t", vec![], Map::new())
        );
        assert!(
            Signature::from_value(&json!({"args": []})).is_err(),
            "a task name is needed"
        );
    }

    #[test]
    fn each_canvas_has_celerys_wire_form_and_reads_back() {
        let chain = Canvas::Chain(
            vec![
                Canvas::Task(add(json!([1, 2]))),
                Canvas::Task(add(json!([10]))),
            ],
            Map::new(),
        );
        let v = chain.to_signature().to_value();
        assert_eq!(
            (
                v["task"].clone(),
                v["subtask_type"].clone(),
                v["immutable"].clone()
            ),
            (json!("celery.chain"), json!("chain"), json!(false))
        );
        assert_eq!(v["kwargs"]["tasks"][1]["args"], json!([10]));
        let chord = Canvas::Chord {
            header: vec![Canvas::Task(add(json!([1])))],
            body: Box::new(Canvas::Task(Signature::new(
                "tasks.tsum",
                vec![],
                Map::new(),
            ))),
            options: Map::new(),
        };
        let v = chord.to_signature().to_value();
        assert_eq!(v["kwargs"]["header"]["subtask_type"], "group");
        assert_eq!(v["kwargs"]["body"]["task"], "tasks.tsum");
        assert_eq!(v["kwargs"]["kwargs"], json!({}));
        let chunks = Canvas::Chunks {
            task: add(json!([])),
            it: vec![json!([1, 2]), json!([3, 4])],
            n: 1,
            options: Map::new(),
        };
        let v = chunks.to_signature().to_value();
        assert_eq!(
            (v["task"].clone(), v["subtask_type"].clone()),
            (json!("celery.chunks"), Value::Null)
        );
        assert_eq!(v["immutable"], json!(true));
        for canvas in [
            chain,
            chord,
            chunks,
            Canvas::Group(vec![Canvas::Task(add(json!([2])))], Map::new()),
            Canvas::Map {
                task: add(json!([])),
                it: vec![json!(1)],
                options: Map::new(),
            },
            Canvas::Starmap {
                task: add(json!([])),
                it: vec![json!([1, 2])],
                options: Map::new(),
            },
        ] {
            let back = Canvas::from_value(&canvas.to_signature().to_value()).unwrap();
            assert_eq!(back, canvas);
        }
    }

    #[test]
    fn malformed_canvases_say_what_is_missing() {
        let no_tasks = json!({"task": "celery.group", "kwargs": {}, "subtask_type": "group"});
        let e = Canvas::from_value(&no_tasks).unwrap_err().to_string();
        assert!(e.contains("list of tasks"), "{e}");
        let no_n = json!({"task": "celery.chunks", "kwargs": {"task": {"task": "t"}, "it": []}});
        let e = Canvas::from_value(&no_n).unwrap_err().to_string();
        assert!(e.contains("size `n`"), "{e}");
    }
}
