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
use crate::ids::{Fence, RetireSeq};
use crate::instance::{Clock, Instance};
use crate::lease::Lease;

/// How many times a hit looks up a key again when the instance it found
/// was retired meanwhile (a swap in progress; see `ReadView::hit_if`).
/// Bounded, so that a key swapped without pause cannot keep a reader
/// looping; past it the caller asks the key actor.
const SWAP_LOOKS: usize = 2;

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
    Fenced(Fence),
}

impl<T: Send + Sync + 'static> Slot<T> {
    fn live(&self) -> Option<&Weak<Instance<T>>> {
        match self {
            Slot::Live(entry) => Some(entry),
            Slot::Fenced(_) => None,
        }
    }
}

/// Leave to write a read view: every method that changes what hits see
/// takes one. It is made with its view ([`ReadView::new`]) and kept in a
/// field of `actors::Shared` that only the actors' modules can reach, so
/// "only actors write the view" is a rule the compiler keeps.
#[derive(Debug)]
pub(crate) struct ViewWriter {
    _only_with_a_view: (),
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
    /// The view's clock: instances' last-use times and TTL deadlines are
    /// nanoseconds on it.
    clock: Clock,
    /// The number of the last prefix invalidation (see `Slot::Fenced`). The
    /// supervisor stamps each request it forwards with it.
    fence: AtomicU64,
    /// The number of the last retirement from the view: each retirement
    /// takes the next number and marks its instance with it (see
    /// `Instance::mark_retired`).
    retire_seq: AtomicU64,
}

impl<T: Send + Sync + 'static> ReadView<T> {
    /// A view, and the one writer for it (see [`ViewWriter`]).
    pub(crate) fn new() -> (Self, ViewWriter) {
        let view = ReadView {
            map: papaya::HashMap::builder()
                .hasher(foldhash::quality::RandomState::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            clock: Clock::new(),
            fence: AtomicU64::new(0),
            retire_seq: AtomicU64::new(0),
        };
        (view, ViewWriter { _only_with_a_view: () })
    }

    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        self.clock.nanos(at)
    }

    /// The clock instances are stamped with (see `Published::stamp`).
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
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
    pub(crate) fn publish(
        &self,
        _writer: &ViewWriter,
        key: Arc<str>,
        instance: &Arc<Instance<T>>,
        fence: Fence,
    ) -> bool {
        let map = self.map.pin();
        let outcome = map.compute(key, |existing| match existing {
            Some((_, Slot::Fenced(number))) if *number > fence => papaya::Operation::Abort(()),
            _ => papaya::Operation::Insert(Slot::Live(Arc::downgrade(instance))),
        });
        !matches!(outcome, papaya::Compute::Aborted(()))
    }

    /// Flags `instance` retired and removes it, unless another instance has
    /// taken its place meanwhile.
    pub(crate) fn unpublish(&self, _writer: &ViewWriter, key: &str, instance: &Arc<Instance<T>>) {
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
    pub(crate) fn fence_key(&self, _writer: &ViewWriter, key: Arc<str>, number: Fence) {
        if let Some(Slot::Live(instance)) = self.map.pin().insert(key, Slot::Fenced(number))
            && let Some(instance) = instance.upgrade()
        {
            self.flag(&instance);
        }
    }

    /// Clears a fence of `key` up to number `number` (its key actor, as the
    /// retirement of that invalidation reaches it).
    pub(crate) fn clear_fence(&self, _writer: &ViewWriter, key: &str, number: Fence) {
        let _ = self
            .map
            .pin()
            .remove_if(key, |_, v| matches!(v, Slot::Fenced(n) if *n <= number));
    }

    /// Flags `instance` retired by marking it with the next retirement
    /// number. (An instance that nobody holds any more, and that a reader
    /// can therefore no longer upgrade, needs no flag.)
    fn flag(&self, instance: &Instance<T>) {
        instance.mark_retired(RetireSeq::new(self.retire_seq.fetch_add(1, Ordering::SeqCst) + 1));
    }

    /// The number of the last retirement from the view.
    pub(crate) fn retire_seq(&self) -> RetireSeq {
        RetireSeq::new(self.retire_seq.load(Ordering::SeqCst))
    }

    /// Unpublishes `key`'s entry: its key actor is gone and cannot do it
    /// (the supervisor, when a key actor died). The instance went with the
    /// actor's state, which held the pool's reference.
    pub(crate) fn remove_orphan(&self, _writer: &ViewWriter, key: &str) {
        let map = self.map.pin();
        if let Some(Slot::Live(instance)) = map.remove(key)
            && let Some(instance) = instance.upgrade()
        {
            self.flag(&instance);
        }
    }

    /// Unpublishes everything (the supervisor, as the pool ends: key actors
    /// killed with it could not).
    pub(crate) fn clear(&self, _writer: &ViewWriter) {
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

    pub(crate) fn fence(&self) -> Fence {
        Fence::new(self.fence.load(Ordering::SeqCst))
    }

    /// A new prefix invalidation number (the supervisor, before it fences
    /// the keys the invalidation names).
    pub(crate) fn next_fence(&self, _writer: &ViewWriter) -> Fence {
        Fence::new(self.fence.fetch_add(1, Ordering::SeqCst) + 1)
    }
}
