//! The snapshots the supervisor answers: `Pool::counters` (the figures,
//! without copying the key list) and `Pool::stats` (the figures and the
//! key lists).

use std::sync::Arc;

use tokio::time::Instant;

use super::{Standing, SupervisorState};
use crate::telemetry::{CoolingKey, Counters, Stats};

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

    /// A snapshot without its key list, and the resident keys (taken in this
    /// mailbox, so they agree with `size`; turned into `String`s elsewhere).
    pub(super) fn stats(&self) -> (Stats, Vec<Arc<str>>) {
        let now = Instant::now();
        let keys = self
            .ordered
            .iter()
            .filter(|k| self.entries.get(*k).is_some_and(|e| e.standing == Standing::Resident))
            .cloned()
            .collect();
        let cooling_keys = self
            .dormant
            .iter()
            .filter_map(|(key, restart)| {
                restart.cooling_any(now).map(|retry_after| CoolingKey {
                    key: key.to_string(),
                    retry_after,
                })
            })
            .collect();
        (Stats::new(self.counters(), Vec::new(), cooling_keys), keys)
    }
}
