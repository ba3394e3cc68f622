//! Golden tests of applying canvases: what celeriac sends for the calls of vectors 10–13
//! (as a client, and as a worker going on with a chain or firing a chord's body) against
//! what Celery 5.7 sent, field by field; ids, origins and times aside.

use chrono::Utc;
use serde_json::{json, Map, Value};

use celeriac_core::canvas::{Applier, Canvas, ChordStart, FixedQueue, Frozen, Signature};
use celeriac_core::TaskMessage;

mod common;
use common::{at, vector};

const OID: &str = "5beee250-1ac7-320a-a0a4-96a9f6020816";

fn sig(task: &str, args: Value) -> Canvas {
    Canvas::Task(Signature::new(
        task,
        args.as_array().expect("args").clone(),
        Map::new(),
    ))
}

fn opts(v: Value) -> Map<String, Value> {
    v.as_object().expect("options").clone()
}

/// Ids are random on both sides: every UUID-shaped string becomes `<id>`.
fn masked(v: &Value) -> Value {
    match v {
        Value::String(s) if s.len() == 36 && s.matches('-').count() == 4 => json!("<id>"),
        Value::Array(items) => Value::Array(items.iter().map(masked).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), masked(v))).collect()),
        other => other.clone(),
    }
}

fn apply(
    canvas: &Canvas,
    prepend: &[Value],
    options: Value,
) -> (Vec<TaskMessage>, Vec<ChordStart>, Frozen) {
    let router = FixedQueue("celery".into());
    let (plan, frozen) = Applier::new(&router, Utc::now())
        .reply_to(OID)
        .apply(canvas, prepend, opts(options))
        .expect("applies");
    let messages = plan
        .publishes
        .iter()
        .map(|p| {
            assert_eq!(p.queue, "celery");
            TaskMessage::from_raw(&p.message).expect("decodes")
        })
        .collect();
    (messages, plan.chords, frozen)
}

fn embed_value(msg: &TaskMessage) -> Value {
    json!({"callbacks": msg.embed.callbacks, "errbacks": msg.embed.errbacks,
           "chain": msg.embed.chain, "chord": msg.embed.chord})
}

/// Python's message at the same `group_index` as ours.
fn same_index<'a>(wire: &'a [Value], msg: &TaskMessage) -> &'a Value {
    let index = msg
        .headers
        .group_index
        .expect("a group member has its index");
    wire.iter()
        .find(|m| m["headers"]["group_index"] == json!(index))
        .unwrap_or_else(|| panic!("no Python message at group_index {index}"))
}

/// The header fields the vectors fix (`id`, `root_id`, `origin` vary per run).
fn assert_headers_like(msg: &TaskMessage, wire: &Value) {
    let ours = msg.headers_map();
    for key in [
        "task",
        "group_index",
        "retries",
        "argsrepr",
        "kwargsrepr",
        "parent_id",
        "eta",
        "expires",
        "shadow",
        "ignore_result",
    ] {
        if let Some(theirs) = wire.get(key) {
            assert_eq!(masked(&ours[key]), masked(theirs), "header {key}");
        }
    }
    for key in ["group", "root_id"] {
        if let Some(theirs) = wire.get(key) {
            assert_eq!(
                ours[key].is_null(),
                theirs.is_null(),
                "header {key} present on both or neither"
            );
        }
    }
}

#[test]
fn link_and_link_error_go_in_the_embed_as_celery_puts_them() {
    let v = vector("10_");
    let wire = at(&v, "sent_message_with_callbacks");
    let echo = sig("tasks.echo", json!([])).to_signature().to_value();
    let on_error = sig("tasks.on_error", json!([])).to_signature().to_value();
    let (msgs, _, _) = apply(
        &sig("tasks.add", json!([1, 2])),
        &[],
        json!({"link": echo, "link_error": on_error}),
    );
    assert_headers_like(&msgs[0], at(wire, "headers"));
    assert_eq!(embed_value(&msgs[0]), *at(wire, "body_decoded/2"));
    // Applied by a worker after `add` returned 3: the callback with 3 prepended.
    let run = at(&v, "all_task_messages_LPUSHed_during_worker_run_in_order");
    let callback = Canvas::from_value(&msgs[0].embed.callbacks.as_ref().unwrap()[0]).unwrap();
    let (sent, _, _) = apply(
        &callback,
        &[json!(3)],
        json!({"parent_id": msgs[0].headers.id, "root_id": msgs[0].headers.id}),
    );
    assert_headers_like(&sent[0], at(run, "1/headers"));
    assert_eq!(
        sent[0].headers.parent_id.as_deref(),
        Some(msgs[0].headers.id.as_str())
    );
    assert_eq!(embed_value(&sent[0]), *at(run, "1/body_decoded/2"));
}

#[test]
fn a_chain_sends_its_first_step_with_the_rest_reversed_and_goes_on_as_celerys_worker() {
    let v = vector("11_");
    let chain = Canvas::Chain(
        vec![
            sig("tasks.add", json!([1, 2])),
            sig("tasks.add", json!([10])),
            sig("tasks.add", json!([100])),
        ],
        Map::new(),
    );
    let (msgs, chords, frozen) = apply(&chain, &[], json!({}));
    assert!(chords.is_empty());
    assert_eq!(msgs.len(), 1, "only the first step is sent");
    let first = &msgs[0];
    let wire = at(&v, "first_message_no_worker");
    assert_headers_like(first, at(wire, "headers"));
    assert_eq!(
        first.headers.root_id.as_deref(),
        Some(first.headers.id.as_str())
    );
    assert_eq!(
        masked(&embed_value(first)),
        masked(at(wire, "body_decoded/2"))
    );
    // The chain's result is its last step's, whose parents walk back to the first.
    let rest = first.embed.chain.clone().unwrap();
    assert_eq!(frozen.id(), rest[0]["options"]["task_id"]);
    let Frozen::Task {
        parent: Some(middle),
        ..
    } = &frozen
    else {
        panic!("{frozen:?}")
    };
    let Frozen::Task {
        parent: Some(start),
        ..
    } = &**middle
    else {
        panic!("{middle:?}")
    };
    assert_eq!(start.id(), first.headers.id);

    // What the worker sends when the first step returns 3: the last element, 3 prepended,
    // the remaining chain, parent the finished step, root inherited.
    let run = at(&v, "messages_during_worker_run_in_order");
    let next = Canvas::from_value(rest.last().unwrap()).unwrap();
    let options =
        json!({"chain": rest[..1], "parent_id": first.headers.id, "root_id": first.headers.id});
    let (sent, _, _) = apply(&next, &[json!(3)], options);
    assert_headers_like(&sent[0], at(run, "1/headers"));
    assert_eq!(
        sent[0].headers.id, rest[1]["options"]["task_id"],
        "the pre-assigned id"
    );
    assert_eq!(sent[0].headers.root_id, first.headers.root_id);
    assert_eq!(masked(&embed_value(&sent[0])), masked(at(run, "1/embed")));
}

#[test]
fn a_group_gives_each_member_the_group_and_its_index() {
    let v = vector("12_");
    let group = Canvas::Group(
        vec![
            sig("tasks.add", json!([1, 1])),
            sig("tasks.add", json!([2, 2])),
            sig("tasks.add", json!([3, 3])),
        ],
        Map::new(),
    );
    let (msgs, _, frozen) = apply(&group, &[], json!({}));
    let wire = at(&v, "messages_no_worker").as_array().unwrap();
    for msg in &msgs {
        let theirs = same_index(wire, msg);
        assert_headers_like(msg, &theirs["headers"]);
        assert_eq!(msg.headers.group.as_deref(), Some(frozen.id()));
        assert_eq!(
            msg.headers.root_id.as_deref(),
            Some(msg.headers.id.as_str())
        );
        assert_eq!(embed_value(msg), theirs["embed"]);
    }
    let Frozen::Group { members, .. } = &frozen else {
        panic!("{frozen:?}")
    };
    let ids: Vec<&str> = members.iter().map(Frozen::id).collect();
    let sent: Vec<&str> = msgs.iter().map(|m| m.headers.id.as_str()).collect();
    assert_eq!(ids, sent, "member order");
}

#[test]
fn a_chord_records_its_size_and_carries_its_body_as_celery_does() {
    let v = vector("13_");
    let chord = Canvas::Chord {
        header: vec![
            sig("tasks.add", json!([1, 1])),
            sig("tasks.add", json!([2, 2])),
        ],
        body: Box::new(sig("tasks.tsum", json!([]))),
        options: Map::new(),
    };
    let (msgs, chords, frozen) = apply(&chord, &[], json!({}));
    let wire = at(&v, "no_worker_capture/header_messages")
        .as_array()
        .unwrap();
    let group_id = msgs[0].headers.group.clone().unwrap();
    assert_eq!(
        chords,
        vec![ChordStart {
            group_id: group_id.clone(),
            size: 2
        }]
    );
    for msg in &msgs {
        let theirs = same_index(wire, msg);
        assert_headers_like(msg, &theirs["headers"]);
        assert_eq!(masked(&embed_value(msg)), masked(&theirs["embed"]));
        let body = msg.embed.chord.as_ref().unwrap();
        assert_eq!(body["options"]["group_id"], json!(group_id));
        assert_eq!(body["options"]["task_id"], json!(frozen.id()));
    }
    // The body as the worker that completed the chord sends it.
    let run = at(&v, "worker_run/body_message_sent_by_worker");
    let body = Canvas::from_value(msgs[0].embed.chord.as_ref().unwrap()).unwrap();
    let last = &msgs[1].headers.id;
    let (sent, _, _) = apply(
        &body,
        &[json!([0.2, 3])],
        json!({"parent_id": last, "root_id": last}),
    );
    assert_headers_like(&sent[0], at(run, "headers"));
    assert_eq!(sent[0].headers.group.as_deref(), Some(group_id.as_str()));
    assert_eq!(sent[0].headers.id, frozen.id());
    assert_eq!(embed_value(&sent[0]), *at(run, "body_decoded/2"));
    assert_eq!(sent[0].args, vec![json!([0.2, 3])]);
}

#[test]
fn a_group_followed_by_a_step_is_a_chord_and_a_chain_body_is_unrolled() {
    let group = Canvas::Group(
        vec![
            sig("tasks.add", json!([1, 1])),
            sig("tasks.add", json!([2, 2])),
        ],
        Map::new(),
    );
    let chain = Canvas::Chain(
        vec![
            group,
            sig("tasks.tsum", json!([])),
            sig("tasks.echo", json!([])),
        ],
        Map::new(),
    );
    let (msgs, chords, frozen) = apply(&chain, &[], json!({}));
    assert_eq!((msgs.len(), chords[0].size), (2, 2));
    let body = msgs[0].embed.chord.as_ref().unwrap();
    assert_eq!(body["task"], "tasks.tsum");
    assert_eq!(
        body["options"]["chain"][0]["task"], "tasks.echo",
        "the rest rides on the body"
    );
    assert_eq!(
        frozen.id(),
        body["options"]["chain"][0]["options"]["task_id"]
    );
}

#[test]
fn chunks_are_a_group_of_starmaps() {
    let chunks = Canvas::Chunks {
        task: Signature::new("tasks.add", vec![], Map::new()),
        it: (0..5).map(|i| json!([i, i])).collect(),
        n: 2,
        options: Map::new(),
    };
    let (msgs, _, frozen) = apply(&chunks, &[], json!({}));
    assert_eq!(msgs.len(), 3);
    assert!(msgs.iter().all(|m| m.headers.task == "celery.starmap"));
    assert_eq!(msgs[2].kwargs["it"], json!([[4, 4]]));
    assert!(matches!(frozen, Frozen::Group { ref members, .. } if members.len() == 3));
}
