//! The `metrics` export's handles as every layer records into them
//! ([`Instruments`], [`Timer`]); with the feature off, empty types whose
//! methods do nothing. The export itself is in `export.rs`.

use std::time::Duration;

#[cfg(feature = "metrics")]
pub(crate) use super::export::{Instruments, MetricsOptions};

/// Measures an event's duration for a histogram (nothing without the feature).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timer {
    #[cfg(feature = "metrics")]
    started: tokio::time::Instant,
}

impl Timer {
    pub(crate) fn start() -> Self {
        Timer {
            #[cfg(feature = "metrics")]
            started: tokio::time::Instant::now(),
        }
    }

    /// Time since `start`. The pool's clock (`tokio::time`), so a paused
    /// clock in tests gives exact figures.
    #[cfg(feature = "metrics")]
    pub(crate) fn elapsed(self) -> Duration {
        self.started.elapsed()
    }
}

/// Without the feature: the export's handles, none.
#[cfg(not(feature = "metrics"))]
#[derive(Debug, Default)]
pub(crate) struct Instruments;

#[cfg(not(feature = "metrics"))]
impl Instruments {
    pub(crate) fn register(_pool: Option<&str>) -> Self {
        Instruments
    }

    pub(crate) fn build_took(&self, _timer: Timer, _ok: bool) {}

    pub(crate) fn dispose_took(&self, _timer: Timer) {}

    pub(crate) fn bus_lag(&self, _lag: Duration) {}
}

/// Without the feature: the export's settings, none. (Braces, so that
/// building one reads the same with and without the feature.)
#[cfg(not(feature = "metrics"))]
#[derive(Debug, Default)]
pub(crate) struct MetricsOptions {}
