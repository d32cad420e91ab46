//! The slot table: which slot is fresh, bound to a conversation, or busy,
//! and which slot a claimed conversation goes to. Pure bookkeeping, so the
//! choice rules are unit-tested apart from processes and Redis.

use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::domain::ConversationId;
use crate::queue::{Owner, WorkerId};

/// Where a slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Its process is being started (or restarted); not usable yet.
    Starting,
    /// Started and ready, holding no conversation.
    Fresh,
    /// Holding a conversation's live session, idle.
    Bound,
    /// Running a turn.
    Busy,
    /// Could not be started; retried by maintenance.
    Failed,
    /// Being stopped because the pool shrank (its conversation handed back).
    Stopping,
    /// Stopped: beyond the pool's current size.
    Retired,
}

/// What is known of one slot.
#[derive(Debug, Clone)]
pub struct SlotMeta {
    pub index: u32,
    /// Bumped each time the slot's process is replaced.
    pub generation: u64,
    pub state: SlotState,
    pub conversation: Option<ConversationId>,
    pub last_used: Instant,
    /// Turns run by the current process.
    pub turns: u32,
    pub pid: Option<u32>,
    pub rss_bytes: Option<u64>,
    /// When the current process was started (wall clock, for status).
    pub started_at: Option<SystemTime>,
    /// When the current process was started (monotonic).
    pub started: Option<Instant>,
    /// The pool shrank past this slot: it takes no new conversation and is
    /// stopped as soon as it is idle.
    pub retiring: bool,
    /// What this slot last stored of a session's transcript (in Redis), so
    /// the next commit sends only what the agent appended since.
    pub stored: Option<crate::agent::transcript::Stored>,
}

impl SlotMeta {
    pub fn new(index: u32) -> Self {
        Self {
            index,
            generation: 0,
            state: SlotState::Starting,
            conversation: None,
            last_used: Instant::now(),
            turns: 0,
            pid: None,
            rss_bytes: None,
            started_at: None,
            started: None,
            retiring: false,
            stored: None,
        }
    }

    /// Can take a claimed conversation (possibly after eviction).
    pub fn available(&self) -> bool {
        matches!(self.state, SlotState::Fresh | SlotState::Bound) && !self.retiring
    }

    /// Idle with its conversation (a warm follow-up or an eviction target).
    fn bound(&self) -> bool {
        self.state == SlotState::Bound && !self.retiring
    }
}

/// How a claimed conversation gets its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Its live session is still in this slot's process (affinity hit).
    Warm { slot: u32 },
    /// A new conversation on a pre-started fresh process.
    Fresh { slot: u32 },
    /// The slot's process must be replaced: to resume a stored session, or
    /// because no fresh slot was left and an idle conversation is evicted.
    Restart {
        slot: u32,
        evicted: Option<(ConversationId, Owner)>,
    },
}

impl Assignment {
    pub fn slot(&self) -> u32 {
        match self {
            Assignment::Warm { slot }
            | Assignment::Fresh { slot }
            | Assignment::Restart { slot, .. } => *slot,
        }
    }

    /// A label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Assignment::Warm { .. } => "warm",
            Assignment::Fresh { .. } => "fresh",
            Assignment::Restart { evicted: None, .. } => "resume",
            Assignment::Restart {
                evicted: Some(_), ..
            } => "evict",
        }
    }
}

/// Pick a slot for `cid` and mark it busy. `owner` is where the claim says
/// the live session was; `has_session` whether a stored session exists.
pub fn assign(
    table: &mut [SlotMeta],
    me: &WorkerId,
    cid: &ConversationId,
    owner: Option<&Owner>,
    has_session: bool,
) -> Option<Assignment> {
    let warm = owner
        .filter(|o| &o.worker == me)
        .and_then(|o| {
            table
                .iter()
                .find(|s| s.index == o.slot && s.generation == o.generation)
        })
        .filter(|s| s.bound() && s.conversation.as_ref() == Some(cid))
        .map(|s| s.index);
    let assignment = if let Some(slot) = warm {
        Assignment::Warm { slot }
    } else if let Some(fresh) = table
        .iter()
        .find(|s| s.state == SlotState::Fresh && !s.retiring)
    {
        if has_session {
            Assignment::Restart {
                slot: fresh.index,
                evicted: None,
            }
        } else {
            Assignment::Fresh { slot: fresh.index }
        }
    } else {
        let lru = table
            .iter()
            .filter(|s| s.bound())
            .min_by_key(|s| s.last_used)?;
        let evicted = lru.conversation.clone().map(|c| {
            (
                c,
                Owner {
                    worker: me.clone(),
                    slot: lru.index,
                    generation: lru.generation,
                },
            )
        });
        Assignment::Restart {
            slot: lru.index,
            evicted,
        }
    };
    let slot = &mut table[assignment.slot() as usize];
    slot.state = SlotState::Busy;
    slot.conversation = Some(cid.clone());
    slot.last_used = Instant::now();
    Some(assignment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(states: &[SlotState]) -> Vec<SlotMeta> {
        states
            .iter()
            .enumerate()
            .map(|(i, &state)| {
                let mut s = SlotMeta::new(i as u32);
                s.state = state;
                s.generation = 1;
                if state == SlotState::Bound {
                    s.conversation = Some(ConversationId::new(format!("c{i}")));
                }
                s
            })
            .collect()
    }

    fn me() -> WorkerId {
        WorkerId::new("w").expect("id")
    }

    fn owner(slot: u32, generation: u64) -> Owner {
        Owner {
            worker: me(),
            slot,
            generation,
        }
    }

    #[test]
    fn a_follow_up_goes_back_to_its_warm_slot() {
        let mut t = table(&[SlotState::Fresh, SlotState::Bound]);
        let got = assign(
            &mut t,
            &me(),
            &ConversationId::new("c1"),
            Some(&owner(1, 1)),
            true,
        );
        assert_eq!(got, Some(Assignment::Warm { slot: 1 }));
        assert_eq!(t[1].state, SlotState::Busy);
    }

    #[test]
    fn a_stale_generation_is_not_warm() {
        let mut t = table(&[SlotState::Fresh, SlotState::Bound]);
        let got = assign(
            &mut t,
            &me(),
            &ConversationId::new("c1"),
            Some(&owner(1, 0)),
            true,
        );
        assert_eq!(
            got,
            Some(Assignment::Restart {
                slot: 0,
                evicted: None
            })
        );
    }

    #[test]
    fn another_workers_owner_is_not_warm_here() {
        let mut t = table(&[SlotState::Bound, SlotState::Bound]);
        let other = Owner {
            worker: WorkerId::new("x").expect("id"),
            slot: 1,
            generation: 1,
        };
        let got = assign(
            &mut t,
            &me(),
            &ConversationId::new("c1"),
            Some(&other),
            true,
        );
        assert!(matches!(
            got,
            Some(Assignment::Restart {
                evicted: Some(_),
                ..
            })
        ));
    }

    #[test]
    fn a_new_conversation_takes_a_fresh_slot() {
        let mut t = table(&[SlotState::Busy, SlotState::Fresh]);
        let got = assign(&mut t, &me(), &ConversationId::new("new"), None, false);
        assert_eq!(got, Some(Assignment::Fresh { slot: 1 }));
    }

    #[test]
    fn without_fresh_slots_the_least_recently_used_is_evicted() {
        let mut t = table(&[SlotState::Bound, SlotState::Bound, SlotState::Busy]);
        t[0].last_used = Instant::now();
        t[1].last_used = t[0].last_used - std::time::Duration::from_secs(5);
        let got = assign(&mut t, &me(), &ConversationId::new("new"), None, false);
        assert_eq!(
            got,
            Some(Assignment::Restart {
                slot: 1,
                evicted: Some((ConversationId::new("c1"), owner(1, 1)))
            })
        );
        assert_eq!(t[1].conversation, Some(ConversationId::new("new")));
    }

    #[test]
    fn nothing_available_gives_none() {
        let mut t = table(&[SlotState::Busy, SlotState::Starting]);
        assert_eq!(
            assign(&mut t, &me(), &ConversationId::new("c"), None, false),
            None
        );
    }

    #[test]
    fn retiring_slots_take_nothing_not_even_their_own_follow_up() {
        let mut t = table(&[SlotState::Fresh, SlotState::Bound, SlotState::Fresh]);
        t[0].retiring = true;
        t[1].retiring = true;
        // c1's warm slot is retiring: the follow-up resumes on slot 2.
        let got = assign(
            &mut t,
            &me(),
            &ConversationId::new("c1"),
            Some(&owner(1, 1)),
            true,
        );
        assert_eq!(
            got,
            Some(Assignment::Restart {
                slot: 2,
                evicted: None
            })
        );
        // Nothing else is left: retiring slots are neither fresh nor evictable.
        assert_eq!(
            assign(&mut t, &me(), &ConversationId::new("n"), None, false),
            None
        );
    }
}
