//! The instance: the bottom of the house's upper floors. [`Instance`]
//! owns one built value, disposes of it on its last drop (by sending it to
//! the disposer), and carries [`Published`], what a hit checks and records
//! (the hit rule, `Published::refusal`). Leases hold instances; the read
//! view maps keys to them; actors own them.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ractor::ActorRef;
use tokio::time::Instant;

use crate::disposal::DisposerMsg;
use crate::hash::CredentialsHash;
use crate::ids::{InstanceId, RetireCause, RetireSeq};
use crate::telemetry::Metrics;

/// Hand-outs within this long of the recorded last use do not write it.
const TOUCH_GRANULARITY_NS: u64 = 1_000_000;

/// A deadline past the end of the view's clock.
const NEVER: u64 = u64::MAX;

/// The read view's clock: nanoseconds since the pool started, on tokio's
/// clock (so a paused test clock drives expiry). Instances record their
/// deadlines and uses on it; the supervisor orders keys by it.
#[derive(Debug)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock { origin: Instant::now() }
    }

    /// `at`, in nanoseconds since the origin.
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One built instance and what is needed to dispose of it.
///
/// The key actor holds one `Arc<Instance<T>>` while the instance is resident;
/// each [`Lease`] holds another, and a read-view lookup holds one for the
/// moment it checks the hit rule. Dropping the last of them (retired AND no
/// lease left, in whichever order) runs `Drop`, which hands the value to the
/// disposer: so disposal happens exactly once, never while leased, and no
/// caller can forget to "release" anything.
///
/// `repr(C)` keeps the fields a hit reads first, right after the reference
/// counts that its `Weak` upgrade writes: mostly one cache line.
#[repr(C)]
pub(crate) struct Instance<T: Send + Sync + 'static> {
    /// What a hit through the read view checks and records.
    pub(crate) published: Published,
    /// The read view's retirement number at which its key's actor (or a
    /// prefix invalidation) retired it; 0 while it is current. Set as it
    /// leaves the view, before anyone is told it left, and read by a hit
    /// after it takes its reference (see `view.rs`). A call waiting on another call's answer uses the number
    /// to tell an instance retired before it joined (never to be handed to
    /// it) from one retired after (see `inflight.rs`).
    retired_at: AtomicU64,
    pub(crate) metrics: Arc<Metrics>,
    /// `Some` until `Drop` moves the value out to the disposer.
    value: Option<T>,
    pub(crate) id: InstanceId,
    pub(crate) key: Arc<str>,
    /// When the factory returned it (or it was inserted).
    pub(crate) created_at: Instant,
    /// The configuration version it was built for (see `Pool::refresh_version`).
    pub(crate) version: u64,
    /// When its freshness was last checked, in nanoseconds after
    /// `created_at` (a build counts as a check). Claimed by the caller that
    /// runs the probe, when it starts (see `claim_probe`).
    probed_at: AtomicU64,
    /// Set by the first hit that finds it due for refresh-ahead, so that one
    /// background rebuild starts, not one per hit; cleared by its key actor
    /// when a failed rebuild's backoff has passed.
    pub(crate) refresh_claimed: AtomicBool,
    disposer: ActorRef<DisposerMsg<T>>,
}

impl<T: Send + Sync + 'static> Instance<T> {
    /// Wraps a freshly built value and registers it with the disposer, so a
    /// shutdown report can name it until it is disposed.
    pub(crate) fn new(
        value: T,
        key: Arc<str>,
        version: u64,
        disposer: ActorRef<DisposerMsg<T>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let id = InstanceId::new(metrics.next_instance_id.fetch_add(1, Relaxed));
        // If the disposer is gone the pool is gone; the value is then simply
        // dropped by `Drop` below, so the send error needs no handling.
        let _ = disposer.send_message(DisposerMsg::Track { id, key: key.clone() });
        Arc::new(Instance {
            published: Published::unstamped(),
            retired_at: AtomicU64::new(0),
            metrics,
            value: Some(value),
            id,
            key,
            created_at: Instant::now(),
            version,
            probed_at: AtomicU64::new(0),
            refresh_claimed: AtomicBool::new(false),
            disposer,
        })
    }

    fn nanos_since_created(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.created_at).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether its freshness was last checked more than `interval` before
    /// `now`; if so, records `now` as its last check and returns true, for
    /// exactly one caller: every other caller sees it checked and is served.
    ///
    /// A zero `interval` makes every hand-out due, also one at the same
    /// clock reading as the last check, and every caller claims it.
    pub(crate) fn claim_probe(&self, now: Instant, interval: Duration) -> bool {
        let now = self.nanos_since_created(now);
        let last = self.probed_at.load(Relaxed);
        Self::due(now, last, interval) && self.probed_at.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
    }

    /// Whether the probe would be due at `now` (without claiming it).
    pub(crate) fn probe_due(&self, now: Instant, interval: Duration) -> bool {
        Self::due(self.nanos_since_created(now), self.probed_at.load(Relaxed), interval)
    }

    /// The probe's rule: due once more than `interval` has passed since
    /// the last check, and always for a zero interval.
    fn due(now: u64, last: u64, interval: Duration) -> bool {
        let interval = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        interval == 0 || now.saturating_sub(last) > interval
    }

    /// Whether it is older than `after` at `now` and no hit has asked for
    /// its refresh yet; if so, marks the refresh asked for (one caller).
    pub(crate) fn claim_refresh(&self, now: Instant, after: Duration) -> bool {
        !self.refresh_claimed.load(Relaxed)
            && now.saturating_duration_since(self.created_at) > after
            && !self.refresh_claimed.swap(true, Relaxed)
    }

    /// Records that it was retired at the read view's retirement number
    /// `number` (the first record stands).
    pub(crate) fn mark_retired(&self, number: RetireSeq) {
        let _ = self.retired_at.compare_exchange(0, number.get(), SeqCst, SeqCst);
    }

    /// Whether it was retired from the read view.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired_at.load(SeqCst) != 0
    }

    /// Whether it was retired at or before retirement number `number`.
    pub(crate) fn retired_by(&self, number: RetireSeq) -> bool {
        let at = self.retired_at.load(SeqCst);
        at != 0 && at <= number.get()
    }

    pub(crate) fn value(&self) -> &T {
        self.value
            .as_ref()
            .expect("an instance's value is present until it is dropped")
    }
}

impl<T: Send + Sync + 'static> Drop for Instance<T> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            let msg = DisposerMsg::Dispose {
                id: self.id,
                key: self.key.clone(),
                value,
            };
            // After the disposer has stopped (the pool is gone and the
            // runtime may be too) the message comes back and is dropped here,
            // which drops the value without a hook.
            let _ = self.disposer.send_message(msg);
        }
    }
}

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
    pub(crate) fn stamp(&self, hash: CredentialsHash, expires_at: Option<Instant>, now: Instant, clock: &Clock) {
        self.hash.store(hash.as_u64(), Ordering::Relaxed);
        self.expires_at
            .store(expires_at.map_or(NEVER, |at| clock.nanos(at)), Ordering::Relaxed);
        self.last_used.store(clock.nanos(now), Ordering::Relaxed);
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
    pub(crate) fn touch(&self, now: u64) {
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
