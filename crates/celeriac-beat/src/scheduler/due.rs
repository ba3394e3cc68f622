//! Which entry runs next: each entry's next due time, kept in a heap so a wake costs
//! O(log n) per due entry whatever the schedule's size.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use celeriac_core::beat::LastRun;
use chrono::{DateTime, Utc};

use crate::{Entry, Tz};

/// What a new leader does with a tick that fell due while nobody led (or beat was down).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Missed {
    /// Send it once on takeover, however many periods were missed (Celery's behaviour).
    #[default]
    RunOnce,
    /// Drop it and wait for the next due time after now.
    Skip,
}

/// The text a run is recorded under: the schedule and the zone it is read in, so that
/// changing either starts the entry afresh and changing nothing else keeps its last run.
pub fn schedule_text(entry: &Entry, tz: Tz) -> String {
    format!("{} in {tz}", entry.schedule)
}

/// One entry's place in the schedule.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub entry: Arc<Entry>,
    pub schedule: String,
    pub total_run_count: u64,
}

/// The entries and when each is due next; each slot is in the heap once, except while
/// taken (being sent).
#[derive(Default)]
pub(crate) struct DueQueue {
    slots: Vec<Slot>,
    heap: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
}

impl DueQueue {
    /// Plans every entry from the recorded runs, as a new leader does.
    pub fn plan(
        entries: &[Arc<Entry>],
        recorded: &[LastRun],
        tz: Tz,
        now: DateTime<Utc>,
        missed: Missed,
    ) -> DueQueue {
        let recorded: HashMap<&str, &LastRun> =
            recorded.iter().map(|r| (r.entry.as_str(), r)).collect();
        let mut queue = DueQueue::default();
        for entry in entries {
            let schedule = schedule_text(entry, tz);
            let last = recorded
                .get(entry.name.as_str())
                .filter(|r| r.schedule == schedule);
            let next = match last {
                // New or changed: as Celery starts an entry, with its last run now.
                None => entry.schedule.next_after(now, now, tz),
                Some(run) => {
                    let due = entry.schedule.next_after(run.at, run.at, tz);
                    if due < now && missed == Missed::Skip {
                        entry.schedule.next_after(now, now, tz)
                    } else {
                        due.max(now)
                    }
                }
            };
            let total_run_count = last.map_or(0, |r| r.total_run_count);
            queue.push_slot(
                Slot {
                    entry: entry.clone(),
                    schedule,
                    total_run_count,
                },
                next,
            );
        }
        queue
    }

    fn push_slot(&mut self, slot: Slot, next: DateTime<Utc>) {
        let index = self.slots.len();
        self.slots.push(slot);
        self.heap.push(Reverse((next, index)));
    }

    /// The earliest due time, if any entry is scheduled.
    pub fn next_due(&mut self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes every entry due at `now`: (slot index, the due time).
    pub fn take_due(&mut self, now: DateTime<Utc>) -> Vec<(usize, DateTime<Utc>)> {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Reverse((at, index)) = self.heap.pop().expect("peeked");
            due.push((index, at));
        }
        due
    }

    /// Puts a taken entry back, due next after its run at `ran_at`.
    pub fn reschedule(&mut self, index: usize, ran_at: DateTime<Utc>, now: DateTime<Utc>, tz: Tz) {
        let next = self.slots[index].entry.schedule.next_after(ran_at, now, tz);
        self.heap.push(Reverse((next, index)));
    }

    /// Puts taken entries back unchanged, due at once (a send that must be tried again).
    pub fn retry(&mut self, taken: &[(usize, DateTime<Utc>)]) {
        self.heap
            .extend(taken.iter().map(|&(index, at)| Reverse((at, index))));
    }

    pub fn slot(&self, index: usize) -> &Slot {
        &self.slots[index]
    }

    pub fn slot_mut(&mut self, index: usize) -> &mut Slot {
        &mut self.slots[index]
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Replaces the entries (a reloaded schedule file): an entry whose schedule is
    /// unchanged keeps its next due time and count; new and changed ones start afresh.
    pub fn replace(&mut self, entries: &[Arc<Entry>], tz: Tz, now: DateTime<Utc>) {
        let mut kept: HashMap<String, (Slot, Option<DateTime<Utc>>)> = HashMap::new();
        let pending: HashMap<usize, DateTime<Utc>> = self
            .heap
            .iter()
            .map(|Reverse((at, index))| (*index, *at))
            .collect();
        for (index, slot) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            let at = pending.get(&index).copied();
            kept.insert(slot.entry.name.clone(), (slot, at));
        }
        *self = DueQueue::default();
        for entry in entries {
            let schedule = schedule_text(entry, tz);
            let (count, next) = match kept.remove(&entry.name) {
                Some((old, Some(at))) if old.schedule == schedule => (old.total_run_count, at),
                _ => (0, entry.schedule.next_after(now, now, tz)),
            };
            self.push_slot(
                Slot {
                    entry: entry.clone(),
                    schedule,
                    total_run_count: count,
                },
                next,
            );
        }
    }
}
