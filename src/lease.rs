//! Leases: shared ownership of an instance, with disposal on the last drop.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use ractor::ActorRef;
use tokio::time::Instant;

use crate::actors::disposer::DisposerMsg;
pub use crate::instance_id::InstanceId;
use crate::stats::Metrics;
use crate::view::Published;

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
    pub(crate) fn mark_retired(&self, number: u64) {
        let _ = self.retired_at.compare_exchange(0, number, SeqCst, SeqCst);
    }

    /// Whether it was retired from the read view.
    pub(crate) fn is_retired(&self) -> bool {
        self.retired_at.load(SeqCst) != 0
    }

    /// Whether it was retired at or before retirement number `number`.
    pub(crate) fn retired_by(&self, number: u64) -> bool {
        let at = self.retired_at.load(SeqCst);
        at != 0 && at <= number
    }

    fn value(&self) -> &T {
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

/// A hand-out of a pooled instance. Derefs to `T`.
///
/// A lease keeps its instance alive: a retired instance (expired, rotated,
/// invalidated, evicted, shut down) is disposed only after its last lease is
/// dropped. Cloning a lease is cheap (an `Arc` clone) and counts as another
/// lease. There is nothing to release by hand: dropping the lease, including
/// during a panic, is the release.
///
/// Hold a lease for the duration of one unit of work, not forever: a leased
/// key is skipped when the pool is over capacity, and its instance stays alive
/// past retirement.
pub struct Lease<T: Send + Sync + 'static> {
    instance: Arc<Instance<T>>,
}

impl<T: Send + Sync + 'static> Lease<T> {
    pub(crate) fn new(instance: &Arc<Instance<T>>) -> Self {
        Lease::from_arc(instance.clone())
    }

    pub(crate) fn instance(&self) -> &Arc<Instance<T>> {
        &self.instance
    }

    pub(crate) fn from_arc(instance: Arc<Instance<T>>) -> Self {
        instance.metrics.live_leases.add(1);
        Lease { instance }
    }

    /// The key this instance was built for.
    pub fn key(&self) -> &str {
        &self.instance.key
    }

    /// Whether two leases are of the very same instance.
    pub fn ptr_eq(a: &Lease<T>, b: &Lease<T>) -> bool {
        Arc::ptr_eq(&a.instance, &b.instance)
    }

    /// The instance's id within its pool; two leases with the same id share
    /// one instance. Useful in logs.
    pub fn instance_id(&self) -> InstanceId {
        self.instance.id
    }

    /// When this instance was built: when its factory returned it, or when
    /// it was put in with [`insert`](crate::Pool::insert). Its TTL and
    /// refresh-ahead age count from here. A tokio `Instant`, so that it
    /// follows a paused test clock; `.into_std()` converts it.
    pub fn created_at(&self) -> Instant {
        self.instance.created_at
    }

    /// The configuration version this instance was built for: the version
    /// of the last [`refresh_version`](crate::Pool::refresh_version) the
    /// key went through while resident, 0 if none. A key that leaves the
    /// pool (invalidated, evicted, expired) starts again at 0.
    pub fn version(&self) -> u64 {
        self.instance.version
    }
}

impl<T: Send + Sync + 'static> Clone for Lease<T> {
    fn clone(&self) -> Self {
        Lease::new(&self.instance)
    }
}

impl<T: Send + Sync + 'static> Drop for Lease<T> {
    fn drop(&mut self) {
        self.instance.metrics.live_leases.sub(1);
    }
}

impl<T: Send + Sync + 'static> Deref for Lease<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.instance.value()
    }
}

impl<T: Send + Sync + 'static> AsRef<T> for Lease<T> {
    fn as_ref(&self) -> &T {
        self.instance.value()
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for Lease<T> {
    // The instance itself is not printed: it may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.instance.key)
            .field("instance_id", &self.instance.id)
            .field("version", &self.instance.version)
            .finish()
    }
}
