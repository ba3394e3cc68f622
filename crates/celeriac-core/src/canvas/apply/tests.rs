use super::*;
use crate::canvas::FixedQueue;
use crate::TaskMessage;

fn task(name: &str) -> Canvas {
    Canvas::Task(Signature::new(name, vec![], Map::new()))
}

fn sent(plan: &Plan) -> Vec<TaskMessage> {
    plan.publishes
        .iter()
        .map(|p| TaskMessage::from_raw(&p.message).unwrap())
        .collect()
}

#[test]
fn a_chain_inside_a_chord_header_carries_the_chord_on_its_last_step() {
    let router = FixedQueue("q".into());
    let member = Canvas::Chain(vec![task("a"), task("b")], Map::new());
    let chord = Canvas::Chord {
        header: vec![member, task("c")],
        body: Box::new(task("body")),
        options: Map::new(),
    };
    let (plan, _) = Applier::new(&router, Utc::now())
        .apply(&chord, &[], Map::new())
        .unwrap();
    assert_eq!(plan.chords[0].size, 2);
    let msgs = sent(&plan);
    let a = msgs.iter().find(|m| m.headers.task == "a").unwrap();
    assert!(a.embed.chord.is_none() && a.headers.group.is_none());
    let b = &a.embed.chain.as_ref().unwrap()[0];
    assert_eq!(b["options"]["group_index"], 0);
    assert_eq!(b["options"]["chord"]["task"], "body");
}

#[test]
fn link_error_on_a_chain_reaches_every_step_and_link_only_the_last() {
    let router = FixedQueue("q".into());
    let chain = Canvas::Chain(vec![task("a"), task("b")], Map::new());
    let mut options = Map::new();
    options.insert("link".into(), task("ok").to_signature().to_value());
    options.insert("link_error".into(), task("err").to_signature().to_value());
    let (plan, _) = Applier::new(&router, Utc::now())
        .apply(&chain, &[], options)
        .unwrap();
    let a = &sent(&plan)[0];
    assert!(a.embed.callbacks.is_none());
    assert_eq!(a.embed.errbacks.as_ref().unwrap()[0]["task"], "err");
    let b = &a.embed.chain.as_ref().unwrap()[0];
    assert_eq!(b["options"]["link"][0]["task"], "ok");
    assert_eq!(b["options"]["link_error"][0]["task"], "err");
}

#[test]
fn an_empty_chord_sends_its_body_with_no_results_and_a_group_in_a_header_is_refused() {
    let router = FixedQueue("q".into());
    let empty = Canvas::Chord {
        header: vec![],
        body: Box::new(task("body")),
        options: Map::new(),
    };
    let (plan, _) = Applier::new(&router, Utc::now())
        .apply(&empty, &[], Map::new())
        .unwrap();
    assert_eq!(sent(&plan)[0].args, vec![json!([])]);
    let nested = Canvas::Chord {
        header: vec![Canvas::Group(vec![task("a")], Map::new())],
        body: Box::new(task("body")),
        options: Map::new(),
    };
    let e = Applier::new(&router, Utc::now())
        .apply(&nested, &[], Map::new())
        .unwrap_err();
    assert!(e.to_string().contains("group inside a chord header"), "{e}");
}

#[test]
fn a_chord_in_a_chord_header_counts_its_body_in_the_outer_chord() {
    let router = FixedQueue("q".into());
    let inner = Canvas::Chain(
        vec![
            Canvas::Group(vec![task("a"), task("b")], Map::new()),
            task("inner_body"),
        ],
        Map::new(),
    );
    let outer = Canvas::Chord {
        header: vec![task("c"), inner],
        body: Box::new(task("outer_body")),
        options: Map::new(),
    };
    let (plan, _) = Applier::new(&router, Utc::now())
        .apply(&outer, &[], Map::new())
        .unwrap();
    let msgs = sent(&plan);
    let c = msgs.iter().find(|m| m.headers.task == "c").unwrap();
    let a = msgs.iter().find(|m| m.headers.task == "a").unwrap();
    let inner_body = a.embed.chord.as_ref().unwrap();
    assert_eq!(inner_body["task"], "inner_body");
    assert_eq!(
        inner_body["options"]["group_id"],
        json!(c.headers.group),
        "in the outer chord"
    );
    assert_eq!(inner_body["options"]["group_index"], 1);
    assert_eq!(inner_body["options"]["chord"]["task"], "outer_body");
    assert_ne!(
        a.headers.group, c.headers.group,
        "the inner header has a group of its own"
    );
    let sizes: Vec<usize> = plan.chords.iter().map(|c| c.size).collect();
    assert_eq!(sizes, [2, 2]);
}
