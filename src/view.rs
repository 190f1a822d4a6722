//! The read view: the instances callers may be served without asking any
//! actor.
//!
//! A lock-free map (papaya) from key to a weak reference to the key's
//! instance; what a hit checks ([`Published`]) lives in the instance.
//! Only actors write it, each in its own mailbox: a key actor publishes its
//! instance once built (or inserted) and unpublishes it before it
//! acknowledges any retirement; the supervisor unpublishes the entries a
//! prefix invalidation names before it answers. Callers only read: a hit is
//! a map lookup, a `Weak` upgrade into a [`Lease`], the hit rule and a coarse
//! timestamp write, with no message, no allocation and no lock.
//!
//! Unpublishing is "mark, then remove": the key actor marks the instance
//! retired (`Instance::mark_retired`) before it removes it from the map, and
//! a reader checks the mark after taking its reference, so a reader that
//! found the instance just before it was removed drops it and asks the key
//! actor instead. (The supervisor's `fence_key` and `remove_orphan` swap the
//! slot out first and mark right after, before they answer anyone.) So once
//! an unpublish is done, no call that starts afterwards is served the old
//! instance.
//!
//! A prefix invalidation answers before the key actors have retired
//! anything (their retirements are paced), so the supervisor replaces each
//! named key's entry with a *fence* carrying the invalidation's number. A
//! key actor publishes with one atomic step that refuses to replace a fence
//! newer than the request its instance was built for: a build that was in
//! flight when the invalidation answered can never become visible, however
//! the two actors interleave. The key actor clears the fence when the
//! retirement reaches it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::hash::CredentialsHash;
use crate::lease::{Instance, Lease};
use crate::stats::RetireCause;

/// What a hit checks and records on an instance, kept in the instance's
/// own allocation (`Instance::published`), right after its reference counts:
/// a hit upgrades the map's `Weak` and reads these in the cache line the
/// upgrade has just brought in. (A separate entry behind its own pointer
/// cost a hit one more dependent cache miss.)
///
/// Written once by the key actor before it publishes the instance (hash and
/// TTL deadline, see [`stamp`](Self::stamp)), and then only the use times,
/// by hits and by the key actor. Times are nanoseconds since the view's
/// origin.
pub(crate) struct Published {
    /// The credentials hash the instance was built for.
    hash: AtomicU64,
    /// Its TTL deadline; `NEVER` does not expire by age.
    expires_at: AtomicU64,
    /// Last hand-out. Written at most once per millisecond per instance, so
    /// that hits on one hot key from many cores do not fight over its
    /// cache line.
    last_used: AtomicU64,
    /// Last hit through the read view since the supervisor last looked
    /// (`ReadView::take_use`, which resets it to 0 = none; as the key actor
    /// retires the instance it takes it over, see `carry_use`), in the units
    /// and granularity of `last_used`. Kept apart from `last_used` because
    /// LRU order counts a call when it starts: a waiter the key actor serves
    /// when a build ends called earlier, and its hand-out (which does count
    /// for idle time) must not make the key look more recently used.
    touched_at: AtomicU64,
}

/// Hand-outs within this long of the recorded last use do not write it.
const TOUCH_GRANULARITY_NS: u64 = 1_000_000;

/// How many times a hit looks up a key again when the instance it found
/// was retired meanwhile (a swap in progress; see `ReadView::hit_if`).
/// Bounded, so that a key swapped without pause cannot keep a reader
/// looping; past it the caller asks the key actor.
const SWAP_LOOKS: usize = 2;

/// A deadline past the end of the view's clock.
const NEVER: u64 = u64::MAX;

impl Published {
    /// Not yet stamped. No hit reads it before the key actor stamps it:
    /// the instance is not in the view before then.
    pub(crate) fn unstamped() -> Self {
        Published {
            hash: AtomicU64::new(0),
            expires_at: AtomicU64::new(NEVER),
            last_used: AtomicU64::new(0),
            touched_at: AtomicU64::new(0),
        }
    }

    /// Records what the instance serves and until when, and `now` as its
    /// last hand-out (the key actor, before it publishes it; the map's
    /// insert then makes these visible to every reader that finds it).
    pub(crate) fn stamp<T: Send + Sync + 'static>(
        &self,
        hash: CredentialsHash,
        expires_at: Option<Instant>,
        now: Instant,
        view: &ReadView<T>,
    ) {
        self.hash.store(hash.as_u64(), Ordering::Relaxed);
        self.expires_at
            .store(expires_at.map_or(NEVER, |at| view.nanos(at)), Ordering::Relaxed);
        self.last_used.store(view.nanos(now), Ordering::Relaxed);
    }

    /// The hit rule: why this instance may not be handed to a caller
    /// presenting `hash` at `now` (nanoseconds since the view's origin), if
    /// it may not. TTL (absolute, from creation), then idle time (since the
    /// last hand-out), then the credentials hash. At the very deadline it
    /// is still served.
    pub(crate) fn refusal(&self, hash: CredentialsHash, now: u64, idle: Option<Duration>) -> Option<RetireCause> {
        if now > self.expires_at.load(Ordering::Relaxed) {
            Some(RetireCause::Ttl)
        } else if idle.is_some_and(|idle| {
            // Past the end of the clock (an extreme idle limit): never.
            let idle = u64::try_from(idle.as_nanos()).unwrap_or(NEVER);
            now > self.last_used_nanos().checked_add(idle).unwrap_or(NEVER)
        }) {
            Some(RetireCause::Idle)
        } else if self.hash.load(Ordering::Relaxed) != hash.as_u64() {
            Some(RetireCause::Credentials)
        } else {
            None
        }
    }

    /// Records a hit through the read view at `now` (coarsely: see
    /// `last_used`): a use of the key the supervisor has not seen.
    fn touch(&self, now: u64) {
        self.record_hand_out(now);
        // At least 1: zero means "not touched".
        let now = now.max(1);
        // Read before written: a hot key's line is written at most once per
        // millisecond, not once per hit.
        let last = self.touched_at.load(Ordering::Relaxed);
        if last == 0 || now >= last.saturating_add(TOUCH_GRANULARITY_NS) {
            self.touched_at.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Records a hand-out by the key actor at `now`, for the idle time. Not
    /// a use for LRU order: the supervisor recorded the call as it routed it
    /// (a waiter served when a build ends called earlier).
    pub(crate) fn handed_out(&self, now: u64) {
        self.record_hand_out(now);
    }

    fn record_hand_out(&self, now_nanos: u64) {
        let last = self.last_used.load(Ordering::Relaxed);
        if now_nanos >= last.saturating_add(TOUCH_GRANULARITY_NS) {
            self.last_used.fetch_max(now_nanos, Ordering::Relaxed);
        }
    }

    /// Takes over the uses recorded on `old`, the instance this one
    /// replaces (a refresh): a hit on the old instance that the supervisor
    /// has not seen yet is still a use of the key.
    pub(crate) fn inherit_use(&self, old: &Published) {
        self.last_used.fetch_max(old.last_used_nanos(), Ordering::Relaxed);
        self.touched_at
            .fetch_max(old.touched_at.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The last hit through the read view since the supervisor last
    /// looked, if any (0 = none); clears it.
    pub(crate) fn take_use(&self) -> u64 {
        self.touched_at.swap(0, Ordering::Relaxed)
    }

    /// Records `at`, a use of the key made on an instance this one took
    /// over from, as not yet seen by the supervisor (0 = nothing to carry).
    pub(crate) fn carry_use(&self, at: u64) {
        if at != 0 {
            self.touched_at.fetch_max(at, Ordering::Relaxed);
        }
    }

    /// The last hand-out, in nanoseconds since the view's origin.
    pub(crate) fn last_used_nanos(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }
}

/// What the map holds for a key.
enum Slot<T: Send + Sync + 'static> {
    /// An instance that may be served. Weak: the map frees a removed slot
    /// only once no reader can hold it (papaya's epoch-based reclamation,
    /// which may wait for more removals to batch them), and disposal must
    /// not wait for that. The key actor holds the pool's strong reference;
    /// as it retires the instance it drops that reference, so the instance
    /// is disposed at once or at its last lease. A reader that still finds
    /// this slot either can no longer upgrade it or sees the instance
    /// marked retired.
    Live(Weak<Instance<T>>),
    /// Invalidated by prefix invalidation number `.0`, whose retirement has
    /// not reached the key actor yet: nothing may be served, and nothing
    /// built for an earlier request may be published.
    Fenced(u64),
}

impl<T: Send + Sync + 'static> Slot<T> {
    fn live(&self) -> Option<&Weak<Instance<T>>> {
        match self {
            Slot::Live(entry) => Some(entry),
            Slot::Fenced(_) => None,
        }
    }
}

/// The map every hit reads (see the module docs).
pub(crate) struct ReadView<T: Send + Sync + 'static> {
    /// Hashed with foldhash (seeded per map): keys are short strings, and
    /// SipHash, the standard hasher, was a tenth of a hit's cost. Resized
    /// in papaya's blocking mode: in its default, incremental mode a grown
    /// table stays half-copied until enough later writes finish the copy,
    /// and only actors write, so after a fill the lookups of a quiet pool
    /// searched both tables for good (a hit over 1,000 keys cost twice as
    /// much). Blocking makes the actor whose insert triggers a resize copy
    /// the table before it goes on; readers never wait.
    map: papaya::HashMap<Arc<str>, Slot<T>, foldhash::quality::RandomState>,
    /// Origin of the view's clock: instances' last-use times and TTL
    /// deadlines are nanoseconds after it.
    origin: Instant,
    /// The number of the last prefix invalidation (see `Slot::Fenced`). The
    /// supervisor stamps each request it forwards with it.
    fence: AtomicU64,
    /// How many instances have been retired from the view: each retirement
    /// takes the next number and marks its instance with it (see
    /// `Instance::mark_retired`).
    retirements: AtomicU64,
}

impl<T: Send + Sync + 'static> ReadView<T> {
    pub(crate) fn new() -> Self {
        ReadView {
            map: papaya::HashMap::builder()
                .hasher(foldhash::quality::RandomState::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            origin: Instant::now(),
            fence: AtomicU64::new(0),
            retirements: AtomicU64::new(0),
        }
    }

    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A lease on `key`'s published instance, if it may be served to a
    /// caller presenting `hash` now; `None` sends the caller to the actors.
    pub(crate) fn hit(&self, key: &str, hash: CredentialsHash, idle: Option<Duration>) -> Option<Lease<T>> {
        self.hit_if(key, hash, idle, |_, _| true)
    }

    /// [`hit`](Self::hit), refused also when `admit` says no. `admit` runs
    /// before the hit is recorded as a use of the instance (LRU order, idle
    /// time), so a refused lookup leaves no trace.
    #[inline]
    pub(crate) fn hit_if(
        &self,
        key: &str,
        hash: CredentialsHash,
        idle: Option<Duration>,
        admit: impl FnOnce(&Instance<T>, Instant) -> bool,
    ) -> Option<Lease<T>> {
        let map = self.map.pin();
        // The lease is taken first: the checks below then read the line the
        // upgrade brought in. One that fails drops it again; if the key
        // actor let go of the instance meanwhile, that disposes it.
        //
        // The retirement flag is checked after taking the lease: a
        // retirement that flagged the instance before this point is seen
        // here (see the module docs). A swap (a refresh) publishes the new
        // instance before it flags the old one and lets go of it, so a
        // reader that found the old slot just before the swap, and then
        // sees its instance flagged or gone, finds the new one by looking
        // once more; it looks again only while the slot keeps changing.
        let mut found = map.get(key)?.live()?;
        let mut looks = 0;
        let instance = loop {
            match found.upgrade() {
                Some(instance) if !instance.is_retired() => break instance,
                _ if looks == SWAP_LOOKS => return None,
                _ => {}
            }
            looks += 1;
            let again = map.get(key)?.live()?;
            if std::ptr::eq(again.as_ptr(), found.as_ptr()) {
                return None;
            }
            found = again;
        };
        let at = Instant::now();
        let now = self.nanos(at);
        if instance.published.refusal(hash, now, idle).is_some() || !admit(&instance, at) {
            return None;
        }
        instance.published.touch(now);
        Some(Lease::from_arc(instance))
    }

    /// Makes `instance` the key's published instance, unless a prefix
    /// invalidation newer than `fence` (the number the supervisor stamped on
    /// the request it was built for) fenced the key. Returns whether it did.
    /// The key actor stamps the instance first (`Published::stamp`).
    pub(crate) fn publish(&self, key: Arc<str>, instance: &Arc<Instance<T>>, fence: u64) -> bool {
        let map = self.map.pin();
        let outcome = map.compute(key, |existing| match existing {
            Some((_, Slot::Fenced(number))) if *number > fence => papaya::Operation::Abort(()),
            _ => papaya::Operation::Insert(Slot::Live(Arc::downgrade(instance))),
        });
        !matches!(outcome, papaya::Compute::Aborted(()))
    }

    /// Flags `instance` retired and removes it, unless another instance has
    /// taken its place meanwhile.
    pub(crate) fn unpublish(&self, key: &str, instance: &Arc<Instance<T>>) {
        self.flag(instance);
        let _ = self.map.pin().remove_if(key, |_, v| {
            v.live()
                .is_some_and(|v| std::ptr::eq(v.as_ptr(), Arc::as_ptr(instance)))
        });
    }

    /// Fences `key` for prefix invalidation number `number` (the
    /// supervisor, before it answers): whatever is published is flagged and
    /// replaced. The instance stays with its key actor until the
    /// retirement reaches it.
    pub(crate) fn fence_key(&self, key: Arc<str>, number: u64) {
        if let Some(Slot::Live(instance)) = self.map.pin().insert(key, Slot::Fenced(number))
            && let Some(instance) = instance.upgrade()
        {
            self.flag(&instance);
        }
    }

    /// Clears a fence of `key` up to number `number` (its key actor, as the
    /// retirement of that invalidation reaches it).
    pub(crate) fn clear_fence(&self, key: &str, number: u64) {
        let _ = self
            .map
            .pin()
            .remove_if(key, |_, v| matches!(v, Slot::Fenced(n) if *n <= number));
    }

    /// Flags `instance` retired by marking it with the next retirement
    /// number. (An instance that nobody holds any more, and that a reader
    /// can therefore no longer upgrade, needs no flag.)
    fn flag(&self, instance: &Instance<T>) {
        instance.mark_retired(self.retirements.fetch_add(1, Ordering::SeqCst) + 1);
    }

    /// The number of the last retirement from the view.
    pub(crate) fn retirements(&self) -> u64 {
        self.retirements.load(Ordering::SeqCst)
    }

    /// Unpublishes `key`'s entry: its key actor is gone and cannot do it
    /// (the supervisor, when a key actor died). The instance went with the
    /// actor's state, which held the pool's reference.
    pub(crate) fn remove_orphan(&self, key: &str) {
        let map = self.map.pin();
        if let Some(Slot::Live(instance)) = map.remove(key)
            && let Some(instance) = instance.upgrade()
        {
            self.flag(&instance);
        }
    }

    /// Unpublishes everything (the supervisor, as the pool ends: key actors
    /// killed with it could not).
    pub(crate) fn clear(&self) {
        let map = self.map.pin();
        for (_, slot) in map.iter() {
            if let Some(instance) = slot.live().and_then(Weak::upgrade) {
                self.flag(&instance);
            }
        }
        map.clear();
    }

    /// The last hit through the read view on `key`'s published instance
    /// since the last time this was asked (which clears it), if there was
    /// one. Only the supervisor asks.
    pub(crate) fn take_use(&self, key: &str) -> Option<u64> {
        self.map
            .pin()
            .get(key)
            .and_then(Slot::live)
            .and_then(Weak::upgrade)
            .map(|instance| instance.published.take_use())
            .filter(|at| *at != 0)
    }

    /// Now, in the units of `last_used`.
    pub(crate) fn now_nanos(&self) -> u64 {
        self.nanos(Instant::now())
    }

    pub(crate) fn fence(&self) -> u64 {
        self.fence.load(Ordering::SeqCst)
    }

    /// A new prefix invalidation number (the supervisor, before it fences
    /// the keys the invalidation names).
    pub(crate) fn next_fence(&self) -> u64 {
        self.fence.fetch_add(1, Ordering::SeqCst) + 1
    }
}
