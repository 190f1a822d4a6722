//! The id of one instance within its pool, below every module that names
//! instances (leases, the disposer, messages), so none of them imports
//! another for it.

use std::fmt;

/// Identifies one instance within its pool: two leases with the same id
/// share one instance. Ids are given out in creation order; printed as a
/// number, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(u64);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl InstanceId {
    pub(crate) fn new(n: u64) -> Self {
        InstanceId(n)
    }
}
