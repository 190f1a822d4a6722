//! Leases: what callers hold. A lease is shared ownership of an
//! [`Instance`]; the instance disposes of itself on its last drop.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use tokio::time::Instant;

pub use crate::ids::InstanceId;
use crate::instance::Instance;

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
