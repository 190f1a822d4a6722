//! Retiring keys in bulk and one at a time: the sweep, invalidation, and
//! eviction over capacity. Mass retirements go through a pacing queue so
//! that they do not stall every other caller (see `SupervisorState::paced`).

use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};
use tokio::time::Instant;

use super::{Retirement, Standing, SupervisorState, Used, View};
use crate::actors::key::{KeyMsg, RetireTarget};
use crate::actors::supervisor::{SupervisorInternal, SupervisorMsg};
use crate::ids::Fence;
use crate::ids::RetireCause;

/// Most pending `Retire`s sent at once (see `SupervisorState::paced`).
const RETIRE_BATCH: usize = 16;
/// How often the next batch of pending `Retire`s is sent.
const RETIRE_PACE: Duration = Duration::from_millis(1);

impl<T: Send + Sync + 'static> SupervisorState<T> {
    /// Retires the key's instance through the pacing queue (see `paced`).
    /// An invalidation (`RetireTarget::Everything`) also discards a build in
    /// flight, so it is sent at once to a key that is building.
    pub(super) fn retire_paced(
        &mut self,
        key: &Arc<str>,
        cause: RetireCause,
        target: RetireTarget,
        fence: Option<Fence>,
    ) {
        let invalidation = target == RetireTarget::Everything;
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if invalidation && matches!(entry.view, View::Busy) {
            let earlier = entry.pending.take().and_then(|p| p.fence);
            let _ = entry.send(KeyMsg::Retire {
                cause,
                target,
                fence: fence.max(earlier),
                reply: None,
            });
            return;
        }
        let newly = entry.pending.is_none();
        // The first cause found stands (a sweep checks TTL before idle time,
        // as a call does), except that an invalidation overrides an expiry:
        // it also discards a build.
        if newly || invalidation {
            let earlier = entry.pending.and_then(|p| p.fence);
            entry.pending = Some(Retirement {
                cause,
                target,
                fence: fence.max(earlier),
            });
        }
        if newly {
            self.paced.push_back(key.clone());
        }
        if invalidation {
            self.stand(key, Standing::Leaving);
        }
    }

    /// Sends up to `RETIRE_BATCH` pending `Retire`s and schedules the rest.
    pub(super) fn send_paced(&mut self, myself: &ActorRef<SupervisorMsg<T>>) {
        let mut budget = RETIRE_BATCH;
        while budget > 0
            && let Some(key) = self.paced.pop_front()
        {
            if let Some(entry) = self.entries.get_mut(&key)
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

    /// The key after `after` in recorded-use order (the first if `None`),
    /// with its recorded use brought up to date from the read view: a key
    /// hit through the view since it was recorded moves to its real place
    /// (later in the order) and the walk goes on past its old one. Returns
    /// the keys that did not move, so a walk meets keys in order of their
    /// true last use; the second element says whether the key moved.
    fn next_by_use(&mut self, after: Option<&(Used, Arc<str>)>) -> Option<((Used, Arc<str>), bool)> {
        let next = match after {
            None => self.recency.first().cloned(),
            Some(after) => self.recency.range((Excluded(after.clone()), Unbounded)).next().cloned(),
        }?;
        let (used, key) = &next;
        // Only a hit since the last look moves a key: building an instance
        // (which sets its last use) or a waiter served when a build ends is
        // not a use of the key.
        let Some(touched_at) = self.shared.view.take_use(key) else {
            return Some((next, false));
        };
        let fresh = self.record_use(touched_at.max(used.at));
        let entry = self.entries.get_mut(key).expect("every key in recency has an entry");
        self.recency.remove(&next);
        entry.used = fresh;
        self.recency.insert((fresh, key.clone()));
        Some((next, true))
    }

    /// Retires the least recently used key that has no lease and no build
    /// in flight, passing over no more than `scan` keys it may not retire
    /// (so that admitting a key stays cheap even when thousands are leased).
    /// Returns false when it found none.
    ///
    /// Least recently used means by last hand-out, hits through the read view
    /// included. A key hit since the supervisor last looked moves to its
    /// true place and is met again later in the walk; such a move does not
    /// count against `scan`: each one consumes a hit (`take_use` clears it),
    /// so the moves are paid for by the hits that caused them, and a pool
    /// whose every key was hit since still finds its least recently used
    /// key instead of overshooting. A hit that races the choice can still
    /// take a lease on the chosen instance: the skip of leased keys is best
    /// effort, and safe, because an instance is disposed only once its last
    /// lease is gone.
    pub(super) fn evict_one(&mut self, scan: usize, spare: Option<&Arc<str>>) -> bool {
        let mut cursor: Option<(Used, Arc<str>)> = None;
        let mut passed = 0;
        // A key hit again between two looks would move again: no walk moves
        // more keys than there are, so hits racing it cannot keep it going.
        let mut moves_left = self.entries.len();
        let victim = loop {
            if passed == scan {
                return false;
            }
            let Some((position, moved)) = self.next_by_use(cursor.as_ref()) else {
                return false;
            };
            let key = position.1.clone();
            cursor = Some(position);
            if moved {
                if moves_left == 0 {
                    return false;
                }
                moves_left -= 1;
                continue;
            }
            if spare != Some(&key) && self.entries.get(&key).is_some_and(|e| e.evictable()) {
                break key;
            }
            passed += 1;
        };
        self.stand(&victim, Standing::Leaving);
        let entry = self.entries.get_mut(&victim).expect("just found");
        let target = match entry.view {
            View::Ready { instance, .. } => RetireTarget::Instance(instance),
            _ => RetireTarget::Nothing,
        };
        let _ = entry.send(KeyMsg::Retire {
            cause: RetireCause::Capacity,
            target,
            fence: None,
            reply: None,
        });
        true
    }

    /// Retires least recently used keys until the pool is back at its cap,
    /// looking at no more than `scan` keys for each, never `spare`.
    pub(super) fn enforce_capacity(&mut self, scan: usize, spare: Option<&Arc<str>>) {
        while self.resident > self.shared.settings.max_entries && self.evict_one(scan, spare) {}
    }

    pub(super) fn sweep(&mut self, myself: &ActorRef<SupervisorMsg<T>>) {
        let now = Instant::now();
        while let Some((at, instance, key)) = self.deadlines.first().cloned() {
            // Served at the very deadline, expired after it (as a call sees it).
            if at >= now {
                break;
            }
            self.deadlines.pop_first();
            self.retire_paced(&key, RetireCause::Ttl, RetireTarget::Instance(instance), None);
        }
        if let Some(idle) = self.shared.settings.time_to_idle {
            let idle = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
            let now = self.shared.view.now_nanos();
            let mut due = Vec::new();
            let mut cursor = None;
            // Recorded uses are lower bounds of the true ones: once a recorded
            // use is within the idle time, so is every later one.
            while let Some(((used, key), moved)) = self.next_by_use(cursor.as_ref()) {
                if used.at.saturating_add(idle) >= now {
                    break;
                }
                if !moved && let Some(View::Ready { instance, .. }) = self.entries.get(&key).map(|e| &e.view) {
                    due.push((key.clone(), *instance));
                }
                cursor = Some((used, key));
            }
            for (key, instance) in due {
                self.retire_paced(&key, RetireCause::Idle, RetireTarget::Instance(instance), None);
            }
        }
        let policy = &self.shared.settings.restart_policy;
        self.dormant.retain(|_, restart| !restart.is_clear(now, policy));
        self.send_paced(myself);
        // A tick may look at every key: it runs once a period, not per call.
        self.enforce_capacity(usize::MAX, None);
    }

    pub(super) fn invalidate(&mut self, key: &str, reply: RpcReplyPort<bool>) {
        self.dormant.remove(key);
        match self.entries.get_mut(key) {
            // The key actor answers, after it has retired: once the caller
            // has the answer, no one can get the old instance.
            Some(entry) => {
                // This retire supersedes a pending one (and carries its fence).
                let fence = entry.pending.take().and_then(|p| p.fence);
                let msg = KeyMsg::Retire {
                    cause: RetireCause::Invalidated,
                    target: RetireTarget::Everything,
                    fence,
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
        // Out of the read view before the answer, and fenced: nothing built
        // for an earlier request can be published until the retirement has
        // reached the key actor (see `ReadView::fence_key`).
        // What the caller is told: the resident keys this retired. A key
        // already leaving (an earlier invalidation or an eviction whose
        // actor has not stopped yet) is retired again, to be safe, but not
        // counted twice.
        let resident = keys
            .iter()
            .filter(|key| self.entries.get(*key).is_some_and(|e| e.standing == Standing::Resident))
            .count();
        let fence = self.shared.view.next_fence(&self.shared.writer);
        for key in &keys {
            self.shared.view.fence_key(&self.shared.writer, key.clone(), fence);
            self.retire_paced(key, RetireCause::Invalidated, RetireTarget::Everything, Some(fence));
        }
        self.send_paced(myself);
        // The answer need not wait for the key actors: the old instances are
        // out of the read view, and every later message to these keys passes
        // through this mailbox, which sends each pending `Retire` before
        // anything else reaches its actor.
        let _ = reply.send(resident);
    }
}
