//! Chord-join cases: the contract of [`ChordJoin`] (`celeriac_core::backend`).

use std::sync::Arc;

use celeriac_core::backend::{ChordJoin, ChordPart, PartReturn, ResultBackend};
use celeriac_core::state::{ExceptionInfo, TaskMeta, TaskState};
use serde_json::json;

use super::{open, BackendFactory};
use crate::{unique, CaseResult, Skip};

/// The backend's chord join; the chord cases are skipped on a backend without one.
fn joins(b: &Arc<dyn ResultBackend>) -> &dyn ChordJoin {
    b.chords().expect("checked by has_joins")
}

fn has_joins(b: &Arc<dyn ResultBackend>) -> Result<(), Skip> {
    match b.chords() {
        Some(_) => Ok(()),
        None => Err(Skip::new("the backend has no ChordJoin capability")),
    }
}

fn member(group: &str, index: i64, status: TaskState) -> TaskMeta {
    let mut m = TaskMeta::pending(format!("{group}-m{index}"));
    m.status = status;
    m.result = match status {
        TaskState::Success => json!(index * 10),
        _ => ExceptionInfo::new("ValueError", format!("member {index}")).to_value(),
    };
    m.group_id = Some(group.to_string());
    m.date_done = Some(chrono::Utc::now());
    m
}

async fn part(b: &Arc<dyn ResultBackend>, meta: &TaskMeta, index: i64) -> PartReturn {
    let group_id = meta.group_id.clone().expect("a member has its group");
    let part = ChordPart {
        group_id: &group_id,
        group_index: Some(index),
    };
    joins(b)
        .store_part(meta, None, part)
        .await
        .expect("store_part")
}

/// Members stored out of order: only the last completes the chord, with every result in
/// header order (failures included), each result also stored as any result; after
/// `finish_chord`, a late copy finds the chord done.
pub(super) async fn chord_completes_once_in_header_order(f: &dyn BackendFactory) -> CaseResult {
    let (_i, b) = open(f).await?;
    has_joins(&b)?;
    let g = unique("chord");
    joins(&b)
        .start_chord(&g, 3, None)
        .await
        .expect("start_chord");
    let metas = [
        member(&g, 0, TaskState::Success),
        member(&g, 1, TaskState::Failure),
        member(&g, 2, TaskState::Success),
    ];
    assert_eq!(part(&b, &metas[2], 2).await, PartReturn::Waiting);
    assert_eq!(part(&b, &metas[0], 0).await, PartReturn::Waiting);
    let PartReturn::Complete { claim, parts } = part(&b, &metas[1], 1).await else {
        panic!("the last member completes the chord");
    };
    let order: Vec<(&str, TaskState)> = parts
        .iter()
        .map(|p| (p.task_id.as_str(), p.state))
        .collect();
    let expected: Vec<(&str, TaskState)> = metas
        .iter()
        .map(|m| (m.task_id.as_str(), m.status))
        .collect();
    assert_eq!(order, expected, "header order");
    assert_eq!(parts[2].result, json!(20));
    assert_eq!(parts[1].result["exc_type"], "ValueError");
    let stored = b
        .get(&metas[1].task_id)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(
        stored.status,
        TaskState::Failure,
        "a member's result is stored too"
    );
    assert_eq!(
        part(&b, &metas[1], 1).await,
        PartReturn::ClaimedElsewhere,
        "while the claim is held"
    );
    assert!(joins(&b).finish_chord(&g, &claim).await.expect("finish"));
    assert_eq!(part(&b, &metas[0], 0).await, PartReturn::AlreadyDone);
    assert!(
        !joins(&b)
            .finish_chord(&g, "someone-else")
            .await
            .expect("finish"),
        "only the claim's holder finishes"
    );
    Ok(())
}

/// A member stored again (a redelivered message) counts once: the chord of two does not
/// complete on two copies of one member.
pub(super) async fn chord_counts_a_member_stored_twice_once(f: &dyn BackendFactory) -> CaseResult {
    let (_i, b) = open(f).await?;
    has_joins(&b)?;
    let g = unique("chord");
    joins(&b)
        .start_chord(&g, 2, None)
        .await
        .expect("start_chord");
    let first = member(&g, 0, TaskState::Success);
    assert_eq!(part(&b, &first, 0).await, PartReturn::Waiting);
    assert_eq!(
        part(&b, &first, 0).await,
        PartReturn::Waiting,
        "counted once"
    );
    let second = member(&g, 1, TaskState::Success);
    assert!(
        matches!(part(&b, &second, 1).await, PartReturn::Complete { ref parts, .. } if parts.len() == 2)
    );
    // A chord nobody started (a size never written) never completes.
    let unknown = member(&unique("unknown"), 0, TaskState::Success);
    assert_eq!(part(&b, &unknown, 0).await, PartReturn::Waiting);
    Ok(())
}

/// The last members stored at once, from two instances (two workers): exactly one is handed
/// the completed chord.
pub(super) async fn chord_race_has_one_winner(f: &dyn BackendFactory) -> CaseResult {
    let (instance, b) = open(f).await?;
    has_joins(&b)?;
    let other = instance.open_again().await;
    for round in 0..10 {
        let g = unique(&format!("race{round}"));
        joins(&b)
            .start_chord(&g, 4, None)
            .await
            .expect("start_chord");
        for i in 0..2 {
            part(&b, &member(&g, i, TaskState::Success), i).await;
        }
        let (m2, m3) = (
            member(&g, 2, TaskState::Success),
            member(&g, 3, TaskState::Success),
        );
        let (r2, r3) = tokio::join!(part(&b, &m2, 2), part(&other, &m3, 3));
        let winners = [&r2, &r3]
            .iter()
            .filter(|r| matches!(r, PartReturn::Complete { .. }))
            .count();
        assert_eq!(winners, 1, "round {round}: {r2:?} / {r3:?}");
    }
    Ok(())
}
