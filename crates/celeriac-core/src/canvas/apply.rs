//! Applying a canvas: what Celery 5.7's `apply_async` sends for each kind (§6), as a plan
//! of messages the caller publishes. Clients apply what users build; workers apply what they
//! find in a message (the next chain step, callbacks, errbacks, a chord's body), with the
//! same rules, so a chain started in Python goes on the same way through a celeriac step.
//!
//! The rules, from `canvas.py`:
//! * every task gets its id before anything is sent (`freeze`), so a chain's remaining steps
//!   and a chord's body travel with the ids the caller already waits on;
//! * a chain sends its first step only, carrying the others reversed in `embed.chain`; a
//!   group followed by another step is a chord; a chord whose body is a chain becomes a chord
//!   of the chain's first task followed by the rest (`_unroll_body`);
//! * a group's members carry `group` / `group_index`; a chord's header members also carry
//!   the body in `embed.chord`, and the chord's size is recorded before they are published;
//! * `chunks` is a group of `celery.starmap` calls, one per chunk.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::broker::Publish;
use crate::error::ProtocolError;
use crate::message::new_id;

use super::leaf::{merge_options, task_publish, Router};
use super::{Canvas, Signature, STARMAP_TASK};

/// A chord to record before its header is published: its group id and how many header
/// results complete it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChordStart {
    pub group_id: String,
    pub size: usize,
}

/// The ids a canvas's results will have once applied, shaped like the canvas's result:
/// Celery's `AsyncResult` / `GroupResult` with their parents.
#[derive(Debug, Clone, PartialEq)]
pub enum Frozen {
    Task {
        id: String,
        parent: Option<Box<Frozen>>,
    },
    Group {
        id: String,
        members: Vec<Frozen>,
        parent: Option<Box<Frozen>>,
    },
}

impl Frozen {
    pub fn id(&self) -> &str {
        match self {
            Frozen::Task { id, .. } | Frozen::Group { id, .. } => id,
        }
    }

    fn with_parent(self, parent: Option<Frozen>) -> Frozen {
        let parent = parent.map(Box::new);
        match self {
            Frozen::Task { id, .. } => Frozen::Task { id, parent },
            Frozen::Group { id, members, .. } => Frozen::Group {
                id,
                members,
                parent,
            },
        }
    }

    /// Celery's `as_tuple()`, the form results list their children in.
    pub fn as_tuple(&self) -> Value {
        match self {
            Frozen::Task { id, .. } => json!([[id, null], null]),
            Frozen::Group { id, members, .. } => {
                let members: Vec<Value> = members.iter().map(Frozen::as_tuple).collect();
                json!([[id, null], members])
            }
        }
    }
}

/// What applying a canvas sends: chords to record first, then the messages.
#[derive(Debug, Default)]
pub struct Plan {
    pub chords: Vec<ChordStart>,
    pub publishes: Vec<Publish>,
}

/// Applies canvases with one router and clock.
pub struct Applier<'a> {
    router: &'a dyn Router,
    now: DateTime<Utc>,
    /// Where results go for a sender that reads them from its reply queue (`rpc://`): every
    /// task of a canvas a client applies names it, as Celery's do.
    reply_to: Option<String>,
}

/// Options that belong to the step whose result is the canvas's result (a chain's last).
const TAIL_OPTIONS: [&str; 5] = ["task_id", "link", "group_id", "group_index", "chord"];

impl<'a> Applier<'a> {
    pub fn new(router: &'a dyn Router, now: DateTime<Utc>) -> Self {
        Applier {
            router,
            now,
            reply_to: None,
        }
    }

    pub fn reply_to(mut self, oid: impl Into<String>) -> Self {
        self.reply_to = Some(oid.into());
        self
    }

    /// Applies `canvas` with `prepend` before its arguments (a parent's result) and
    /// `options` added to its own (Celery's `apply_async(args, **options)`). Returns the plan
    /// and the ids of its result.
    pub fn apply(
        &self,
        canvas: &Canvas,
        prepend: &[Value],
        options: Map<String, Value>,
    ) -> Result<(Plan, Frozen), ProtocolError> {
        let mut canvas = canvas.clone();
        freeze(&mut canvas, self.reply_to.as_deref());
        let mut plan = Plan::default();
        let result = self.apply_frozen(&canvas, prepend, options, &mut plan)?;
        Ok((plan, result))
    }

    fn apply_frozen(
        &self,
        canvas: &Canvas,
        prepend: &[Value],
        added: Map<String, Value>,
        plan: &mut Plan,
    ) -> Result<Frozen, ProtocolError> {
        match canvas {
            Canvas::Task(sig) => self.task(sig, prepend, added, plan),
            Canvas::Map { .. } | Canvas::Starmap { .. } => {
                self.task(&canvas.to_signature(), prepend, added, plan)
            }
            Canvas::Chunks {
                task,
                it,
                n,
                options,
            } => {
                let group = chunks_group(task, it, *n, options);
                let mut group = Canvas::Group(group, options.clone());
                freeze(&mut group, self.reply_to.as_deref());
                self.apply_frozen(&group, prepend, added, plan)
            }
            Canvas::Group(members, options) => self.group(members, options, prepend, added, plan),
            Canvas::Chain(steps, options) => self.chain(steps, options, prepend, added, plan),
            Canvas::Chord {
                header,
                body,
                options,
            } => self.chord(header, body, options, prepend, added, plan),
        }
    }

    fn task(
        &self,
        sig: &Signature,
        prepend: &[Value],
        added: Map<String, Value>,
        plan: &mut Plan,
    ) -> Result<Frozen, ProtocolError> {
        let options = merge_options(&sig.options, added);
        let publish = task_publish(sig, prepend, options, self.router, self.now)?;
        let id = publish.message.task_id().unwrap_or_default().to_string();
        plan.publishes.push(publish);
        Ok(Frozen::Task { id, parent: None })
    }

    fn group(
        &self,
        members: &[Canvas],
        own: &Map<String, Value>,
        prepend: &[Value],
        added: Map<String, Value>,
        plan: &mut Plan,
    ) -> Result<Frozen, ProtocolError> {
        let mut options = merge_options(own, added);
        let id = take_str(&mut options, "task_id").unwrap_or_else(new_id);
        // A group's remaining chain has no single step to go to (Celery drops it too).
        options.remove("chain");
        let mut results = Vec::with_capacity(members.len());
        for (index, member) in members.iter().enumerate() {
            let mut member_options = options.clone();
            member_options.insert("group_id".into(), json!(id));
            member_options.insert("group_index".into(), json!(index));
            results.push(self.apply_frozen(member, prepend, member_options, plan)?);
        }
        Ok(Frozen::Group {
            id,
            members: results,
            parent: None,
        })
    }

    fn chain(
        &self,
        steps: &[Canvas],
        own: &Map<String, Value>,
        prepend: &[Value],
        added: Map<String, Value>,
        plan: &mut Plan,
    ) -> Result<Frozen, ProtocolError> {
        let steps = normalize_chain(steps);
        if steps.is_empty() {
            return Err(ProtocolError::BadCanvas("an empty chain".into()));
        }
        let last_index = steps.len() - 1;
        let mut first_options = merge_options(own, added);
        let mut tail = Map::new();
        for key in TAIL_OPTIONS {
            if let Some(value) = first_options.remove(key) {
                tail.insert(key.to_string(), value);
            }
        }
        let link_error = first_options.get("link_error").cloned();
        let mut steps = steps;
        for (i, step) in steps.iter_mut().enumerate() {
            if let Some(errbacks) = &link_error {
                add_option(step, "link_error", errbacks.clone());
            }
            if i == last_index {
                for (key, value) in &tail {
                    add_option(step, key, value.clone());
                }
            }
        }
        let frozen: Vec<Frozen> = steps.iter().map(frozen_of).collect();
        let rest: Vec<Value> = steps[1..]
            .iter()
            .rev()
            .map(|step| step.to_signature().to_value())
            .collect();
        if !rest.is_empty() {
            first_options.insert("chain".into(), Value::Array(rest));
        }
        let first = self.apply_frozen(&steps[0], prepend, first_options, plan)?;
        let mut parent = None;
        for (i, result) in frozen.into_iter().enumerate() {
            let result = if i == 0 { first.clone() } else { result };
            parent = Some(result.with_parent(parent));
        }
        Ok(parent.expect("a chain has a step"))
    }

    fn chord(
        &self,
        header: &[Canvas],
        body: &Canvas,
        own: &Map<String, Value>,
        prepend: &[Value],
        added: Map<String, Value>,
        plan: &mut Plan,
    ) -> Result<Frozen, ProtocolError> {
        if let Canvas::Chain(steps, chain_options) = body {
            return self.chain(
                &unroll_body(header, steps, chain_options, own),
                &Map::new(),
                prepend,
                added,
                plan,
            );
        }
        let mut options = merge_options(own, added);
        let group_id = new_id();
        let mut body = body.clone();
        // The chord's id is its body's: that is where its result will be.
        if let Some(id) = options.remove("task_id") {
            body.options_mut().insert("task_id".into(), id);
        }
        // The body is the chord's result: it takes the chord's place in an enclosing group
        // or chord (its `group_id`, `group_index`, `chord`), else it is in this chord's group.
        for (key, value) in &options {
            if !matches!(key.as_str(), "parent_id" | "countdown" | "eta") {
                add_option(&mut body, key, value.clone());
            }
        }
        if !body.options().contains_key("group_id") {
            body.options_mut()
                .insert("group_id".into(), json!(group_id));
        }
        let body_result = frozen_of(&body);
        if header.is_empty() {
            let result = self.apply_frozen(&body, &[json!([])], Map::new(), plan)?;
            return Ok(result.with_parent(Some(empty_group(group_id))));
        }
        let body_sig = body.to_signature().to_value();
        // The header gets the chord's options but those of its result: the body has them.
        for key in [
            "chain",
            "chord",
            "link",
            "link_error",
            "group_id",
            "group_index",
        ] {
            options.remove(key);
        }
        let mut size = 0;
        let mut members = Vec::with_capacity(header.len());
        for (index, member) in header.iter().enumerate() {
            size += leaves(member)?;
            let mut member_options = options.clone();
            member_options.insert("group_id".into(), json!(group_id));
            member_options.insert("group_index".into(), json!(index));
            member_options.insert("chord".into(), body_sig.clone());
            members.push(self.apply_frozen(member, prepend, member_options, plan)?);
        }
        plan.chords.push(ChordStart {
            group_id: group_id.clone(),
            size,
        });
        Ok(body_result.with_parent(Some(Frozen::Group {
            id: group_id,
            members,
            parent: None,
        })))
    }
}

fn empty_group(id: String) -> Frozen {
    Frozen::Group {
        id,
        members: Vec::new(),
        parent: None,
    }
}

fn take_str(options: &mut Map<String, Value>, key: &str) -> Option<String> {
    match options.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Adds an option to a canvas, where Celery's `set()` would put it; list options (`link`,
/// `link_error`) are appended to, others left as the canvas has them.
fn add_option(canvas: &mut Canvas, key: &str, value: Value) {
    let options = canvas.options_mut();
    if matches!(key, "link" | "link_error") {
        let mut list = super::leaf::list_option(options, key).unwrap_or_default();
        match value {
            Value::Array(items) => list.extend(items),
            one => list.push(one),
        }
        options.insert(key.into(), Value::Array(list));
    } else if !options.contains_key(key) || key != "group_id" {
        options.insert(key.into(), value);
    }
}

/// Gives every task and group of a canvas its id (`options.task_id`), as Celery's `freeze`,
/// and each task the sender's reply queue when it has one.
pub fn freeze(canvas: &mut Canvas, reply_to: Option<&str>) {
    let mark = |options: &mut Map<String, Value>| {
        ensure_id(options);
        if let Some(oid) = reply_to {
            options.entry("reply_to").or_insert_with(|| json!(oid));
        }
    };
    match canvas {
        Canvas::Task(sig) => mark(&mut sig.options),
        Canvas::Map { options, .. }
        | Canvas::Starmap { options, .. }
        | Canvas::Chunks { options, .. } => mark(options),
        Canvas::Group(members, options) => {
            ensure_id(options);
            members.iter_mut().for_each(|m| freeze(m, reply_to));
        }
        Canvas::Chain(steps, _) => steps.iter_mut().for_each(|s| freeze(s, reply_to)),
        Canvas::Chord { header, body, .. } => {
            header.iter_mut().for_each(|m| freeze(m, reply_to));
            freeze(body, reply_to);
        }
    }
}

fn ensure_id(options: &mut Map<String, Value>) {
    if !options.get("task_id").is_some_and(Value::is_string) {
        options.insert("task_id".into(), json!(new_id()));
    }
}

/// The ids of a frozen canvas's result.
fn frozen_of(canvas: &Canvas) -> Frozen {
    let id_of = |options: &Map<String, Value>| {
        options
            .get("task_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match canvas {
        Canvas::Task(sig) => Frozen::Task {
            id: id_of(&sig.options),
            parent: None,
        },
        Canvas::Map { options, .. }
        | Canvas::Starmap { options, .. }
        | Canvas::Chunks { options, .. } => Frozen::Task {
            id: id_of(options),
            parent: None,
        },
        Canvas::Group(members, options) => Frozen::Group {
            id: id_of(options),
            members: members.iter().map(frozen_of).collect(),
            parent: None,
        },
        Canvas::Chain(steps, _) => steps
            .iter()
            .map(frozen_of)
            .fold(None, |parent, step| Some(step.with_parent(parent)))
            .unwrap_or_else(|| empty_group(String::new())),
        Canvas::Chord { body, .. } => frozen_of(body),
    }
}

/// How many results a chord header member adds: one per task; a chain, its last step's.
fn leaves(member: &Canvas) -> Result<usize, ProtocolError> {
    match member {
        Canvas::Task(_) | Canvas::Map { .. } | Canvas::Starmap { .. } => Ok(1),
        Canvas::Chain(steps, _) => match normalize_chain(steps).last() {
            Some(last) => leaves(last),
            None => Err(ProtocolError::BadCanvas(
                "an empty chain in a chord header".into(),
            )),
        },
        Canvas::Chord { body, .. } => leaves(body),
        Canvas::Group(..) | Canvas::Chunks { .. } => Err(ProtocolError::BadCanvas(
            "a group inside a chord header is not supported: put its members in the header \
             itself"
                .into(),
        )),
    }
}

/// A chain's steps flattened, with each group that has a step after it made the header of a
/// chord whose body is that step (Celery's `_merge_chain_step`).
pub fn normalize_chain(steps: &[Canvas]) -> Vec<Canvas> {
    let mut flat: Vec<Canvas> = Vec::with_capacity(steps.len());
    for step in steps {
        match step {
            Canvas::Chain(inner, options) if options.is_empty() => {
                flat.extend(normalize_chain(inner))
            }
            other => flat.push(other.clone()),
        }
    }
    let mut out: Vec<Canvas> = Vec::with_capacity(flat.len());
    for step in flat {
        match out.pop() {
            Some(Canvas::Group(header, mut options)) => {
                // The group's id is not the chord's: a chord's id is its body's.
                options.remove("task_id");
                out.push(Canvas::Chord {
                    header,
                    body: Box::new(step),
                    options,
                })
            }
            Some(previous) => {
                out.push(previous);
                out.push(step);
            }
            None => out.push(step),
        }
    }
    out
}

/// `chord(header, chain(a, b, c))` as `chain(chord(header, a), b, c)`.
fn unroll_body(
    header: &[Canvas],
    steps: &[Canvas],
    chain_options: &Map<String, Value>,
    chord_options: &Map<String, Value>,
) -> Vec<Canvas> {
    let mut steps = normalize_chain(steps);
    if steps.is_empty() {
        return steps;
    }
    let first = steps.remove(0);
    let mut options = chord_options.clone();
    for (key, value) in chain_options {
        options.entry(key.clone()).or_insert(value.clone());
    }
    let mut out = vec![Canvas::Chord {
        header: header.to_vec(),
        body: Box::new(first),
        options,
    }];
    out.extend(steps);
    out
}

/// A `chunks` canvas as the group Celery sends for it; any other canvas as it is.
pub fn chunks_as_group(canvas: Canvas) -> Canvas {
    match canvas {
        Canvas::Chunks {
            task,
            it,
            n,
            options,
        } => Canvas::Group(chunks_group(&task, &it, n, &options), options),
        other => other,
    }
}

/// `chunks(task, it, n)` as Celery sends it: a group of `celery.starmap` calls.
fn chunks_group(
    task: &Signature,
    it: &[Value],
    n: u64,
    options: &Map<String, Value>,
) -> Vec<Canvas> {
    let size = usize::try_from(n).unwrap_or(usize::MAX).max(1);
    it.chunks(size)
        .map(|part| {
            let mut starmap = Canvas::Starmap {
                task: task.clone(),
                it: part.to_vec(),
                options: Map::new(),
            };
            if let Some(queue) = options.get("queue") {
                starmap.options_mut().insert("queue".into(), queue.clone());
            }
            debug_assert_eq!(starmap.to_signature().task, STARMAP_TASK);
            starmap
        })
        .collect()
}

#[cfg(test)]
mod tests;
