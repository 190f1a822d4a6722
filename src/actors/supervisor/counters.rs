//! The counters-only snapshot (`Pool::counters`): what `stats` reports,
//! without copying the key list.

use tokio::time::Instant;

use super::SupervisorState;
use crate::telemetry::Counters;

impl<T: Send + Sync + 'static> SupervisorState<T> {
    /// The counters, with the figures only this mailbox knows: resident
    /// keys (as `stats().size`) and how many keys are cooling down (as
    /// `stats().cooling_keys`, counted, not listed). O(cooling keys).
    pub(super) fn counters(&self) -> Counters {
        let now = Instant::now();
        let mut counters = self.metrics().counters();
        counters.size = self.resident;
        counters.cooling = self
            .dormant
            .values()
            .filter(|restart| restart.cooling_any(now).is_some())
            .count();
        counters
    }
}
