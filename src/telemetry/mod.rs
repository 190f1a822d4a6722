//! The one home of the pool's figures, a leaf (it imports only ids):
//!
//! - `counters.rs`: the live counters every layer writes ([`Metrics`]);
//! - `snapshot.rs`: the public snapshots built from them ([`Counters`],
//!   [`Stats`], [`Retirements`], [`CoolingKey`], [`ShutdownReport`]);
//! - `bus.rs`: the event bus's counters and lag histogram ([`BusStats`]);
//! - `spans.rs`: the `tracing` spans, names and fields in one place;
//! - `instruments.rs` and `export.rs`: the export through the `metrics`
//!   facade. (The task that publishes counters on an interval asks the
//!   supervisor, so it lives with the handle, in `pool/metrics.rs`.)
//!
//! The export: the pool's figures through the [`metrics`](https://docs.rs/metrics)
//! facade (cargo feature `metrics`), so that whatever recorder the
//! application installed (metrics-exporter-prometheus, an OpenTelemetry
//! bridge) shows them. Without the feature every type here is empty, every
//! method does nothing, and no `metrics` code is compiled.
//!
//! Two kinds of figures leave by two ways:
//!
//! - **Counters and gauges** already live in the pool's atomics
//!   ([`Metrics`]; hits and leases in striped
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

mod bus;
mod counters;
#[cfg(feature = "metrics")]
mod export;
mod instruments;
mod snapshot;
pub(crate) mod spans;

pub use bus::BusStats;
pub(crate) use bus::{BusCount, BusMetrics};
pub(crate) use counters::Metrics;
pub(crate) use instruments::{MetricsOptions, Timer};
pub use snapshot::{CoolingKey, Counters, Retirements, ShutdownReport, Stats};
