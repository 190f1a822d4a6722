//! The pool's figures through the [`metrics`](https://docs.rs/metrics)
//! facade (cargo feature `metrics`), so that whatever recorder the
//! application installed (metrics-exporter-prometheus, an OpenTelemetry
//! bridge) shows them. Without the feature every type here is empty, every
//! method does nothing, and no `metrics` code is compiled.
//!
//! Two kinds of figures leave by two ways:
//!
//! - **Counters and gauges** already live in the pool's atomics
//!   ([`Metrics`](crate::stats::Metrics); hits and leases in striped
//!   counters). They are *published*: every `metrics_interval` a task reads
//!   them once and moves each exported series by the difference since the
//!   last publication. So a hit costs nothing more with the feature on (no
//!   recorder is called per hit), and the exported values lag by up to one
//!   interval; [`Pool::publish_metrics`](crate::Pool::publish_metrics)
//!   publishes at once.
//! - **Durations** (a build attempt, a dispose, a bus message's lag) are
//!   events: each is recorded as it happens into a histogram whose handle
//!   was registered once, when the pool was built.
//!
//! Labels: `pool` (the name given to
//! [`PoolBuilder::name`](crate::PoolBuilder::name), absent for an unnamed
//! pool), and for some series `cause`, `outcome`; never a key, so the number
//! of series does not grow with the number of tenants.

use std::time::Duration;

#[cfg(feature = "metrics")]
mod export;

#[cfg(feature = "metrics")]
pub(crate) use export::{Instruments, MetricsOptions, start_publisher};

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
    fn elapsed(self) -> Duration {
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

/// Without the feature: there is nothing to publish.
#[cfg(not(feature = "metrics"))]
pub(crate) fn start_publisher<T: Send + Sync + 'static>(_pool: &crate::Pool<T>, _options: &MetricsOptions) {}
