//! Retiring keys in bulk and one at a time: the sweep, invalidation, and
//! eviction over capacity. Mass retirements go through a pacing queue so
//! that they do not stall every other caller (see `SupervisorState::paced`).

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};
use tokio::time::Instant;

use super::{SupervisorState, View};
use crate::messages::{KeyMsg, SupervisorInternal, SupervisorMsg};
use crate::restart::Deadline;
use crate::stats::RetireCause;

/// Most pending `Retire`s sent at once (see `SupervisorState::paced`).
const RETIRE_BATCH: usize = 16;
/// How often the next batch of pending `Retire`s is sent.
const RETIRE_PACE: Duration = Duration::from_millis(1);

impl<T: Send + Sync + 'static> SupervisorState<T> {
    /// Retires the key's instance through the pacing queue (see `paced`).
    /// `generation: None` is an invalidation: it also discards a build in
    /// flight, so it is sent at once to a key that is building.
    pub(super) fn retire_paced(&mut self, key: &Arc<str>, cause: RetireCause, generation: Option<u64>) {
        let Some(entry) = self.entries.peek_mut(key) else {
            return;
        };
        if generation.is_none() && matches!(entry.view, View::Busy) {
            entry.pending = None;
            let _ = entry.send(KeyMsg::Retire {
                cause,
                generation,
                reply: None,
            });
            return;
        }
        let newly = entry.pending.is_none();
        // The first cause found stands (a sweep checks TTL before idle time,
        // as a call does), except that an invalidation overrides an expiry:
        // it also discards a build.
        if newly || generation.is_none() {
            entry.pending = Some((cause, generation));
        }
        if generation.is_none() && !entry.retiring {
            entry.retiring = true;
            self.resident -= 1;
        }
        if newly {
            self.paced.push_back(key.clone());
        }
    }

    /// Sends up to `RETIRE_BATCH` pending `Retire`s and schedules the rest.
    pub(super) fn send_paced(&mut self, myself: &ActorRef<SupervisorMsg<T>>) {
        let mut budget = RETIRE_BATCH;
        while budget > 0
            && let Some(key) = self.paced.pop_front()
        {
            if let Some(entry) = self.entries.peek_mut(&key)
                && entry.pending.is_some()
            {
                entry.flush_pending();
                budget -= 1;
            }
        }
        if !self.paced.is_empty() && !self.tick_scheduled {
            self.tick_scheduled = true;
            myself.send_after(RETIRE_PACE, || SupervisorInternal::RetireTick.into());
        }
    }

    /// Retires the least recently used key that has no lease and no build
    /// in flight. Returns false when there is none.
    pub(super) fn evict_one(&mut self) -> bool {
        let victim = self
            .entries
            .iter()
            .rev()
            .find(|(_, entry)| entry.evictable())
            .map(|(key, _)| key.clone());
        let Some(key) = victim else { return false };
        let entry = self.entries.peek_mut(&key).expect("just found");
        entry.retiring = true;
        let generation = match entry.view {
            View::Ready { generation, .. } => Some(generation),
            _ => Some(u64::MAX), // nothing resident: only asks the actor to report idle
        };
        let _ = entry.send(KeyMsg::Retire {
            cause: RetireCause::Capacity,
            generation,
            reply: None,
        });
        self.resident -= 1;
        true
    }

    pub(super) fn enforce_capacity(&mut self) {
        while self.resident > self.shared.settings.max_entries && self.evict_one() {}
    }

    pub(super) fn sweep(&mut self, myself: &ActorRef<SupervisorMsg<T>>) {
        let now = Instant::now();
        while let Some((at, generation, key)) = self.deadlines.first().cloned() {
            // Served at the very deadline, expired after it (as a call sees it).
            if at >= now {
                break;
            }
            self.deadlines.pop_first();
            self.retire_paced(&key, RetireCause::Ttl, Some(generation));
        }
        if let Some(idle) = self.shared.settings.time_to_idle {
            let mut due = Vec::new();
            for (key, entry) in self.entries.iter().rev() {
                if !Deadline::after(entry.last_used, idle).has_passed(now) {
                    break;
                }
                if let View::Ready { generation, .. } = entry.view {
                    due.push((key.clone(), generation));
                }
            }
            for (key, generation) in due {
                self.retire_paced(&key, RetireCause::Idle, Some(generation));
            }
        }
        let policy = &self.shared.settings.restart_policy;
        self.dormant.retain(|_, restart| !restart.is_clear(now, policy));
        self.send_paced(myself);
        self.enforce_capacity();
    }

    pub(super) fn invalidate(&mut self, key: &str, reply: RpcReplyPort<bool>) {
        self.dormant.remove(key);
        match self.entries.peek_mut(key) {
            // The key actor answers, after it has retired: once the caller
            // has the answer, no one can get the old instance.
            Some(entry) => {
                // This retire supersedes a pending one.
                entry.pending = None;
                let msg = KeyMsg::Retire {
                    cause: RetireCause::Invalidated,
                    generation: None,
                    reply: Some(reply),
                };
                if let Err(KeyMsg::Retire { reply: Some(reply), .. }) = entry.send(msg) {
                    let _ = reply.send(false);
                }
            }
            None => {
                let _ = reply.send(false);
            }
        }
    }

    pub(super) fn invalidate_by_prefix(
        &mut self,
        myself: &ActorRef<SupervisorMsg<T>>,
        prefix: &str,
        reply: RpcReplyPort<usize>,
    ) {
        let keys: Vec<Arc<str>> = self
            .ordered
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        let dormant: Vec<Arc<str>> = self
            .dormant
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .map(|(k, _)| k.clone())
            .take_while(|k| k.starts_with(prefix))
            .collect();
        for key in dormant {
            self.dormant.remove(&key);
        }
        for key in &keys {
            self.retire_paced(key, RetireCause::Invalidated, None);
        }
        self.send_paced(myself);
        // The answer need not wait for the key actors: every later message
        // to these keys passes through this mailbox, which sends each pending
        // `Retire` before anything else reaches its actor.
        let _ = reply.send(keys.len());
    }
}
