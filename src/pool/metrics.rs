//! The task that publishes the pool's counters and gauges to the `metrics`
//! recorder on an interval (feature `metrics`). It asks the supervisor, so
//! it lives with the handle, not in `telemetry/`, which is a leaf.

#[cfg(feature = "metrics")]
use ractor::ActorStatus;
#[cfg(feature = "metrics")]
use ractor::rpc::CallResult;

use super::Pool;
#[cfg(feature = "metrics")]
use crate::actors::supervisor::SupervisorMsg;
use crate::telemetry::MetricsOptions;

/// Starts the task that publishes the pool's counters and gauges every
/// `options.interval`, until the pool has stopped; then it publishes once
/// more from the counters (nothing resident) and takes the pool's share of
/// the gauges back to zero.
///
/// It holds the supervisor's address, not a `Pool`, so it never keeps the
/// pool alive; each round asks the supervisor for `Counters` (for the
/// resident and cooling keys, which only it knows).
#[cfg(feature = "metrics")]
pub(crate) fn start_publisher<T: Send + Sync + 'static>(pool: &Pool<T>, options: &MetricsOptions) {
    let Some(period) = options.interval else { return };
    let supervisor = pool.actor();
    let metrics = pool.metrics().clone();
    tokio::spawn(async move {
        loop {
            // `sleep`, not `interval`: a period too long for the clock
            // sleeps forever instead of panicking.
            tokio::time::sleep(period).await;
            let asked = supervisor
                .call(|reply| SupervisorMsg::Counters { reply }, Some(period))
                .await;
            match asked {
                Ok(CallResult::Success(counters)) => metrics.export.publish(&counters),
                // A busy supervisor: the next round will do.
                Ok(CallResult::Timeout)
                    if !matches!(supervisor.get_status(), ActorStatus::Stopping | ActorStatus::Stopped) => {}
                // Not sent, or the reply was dropped: the pool has stopped.
                _ => break,
            }
        }
        metrics.export.end(&metrics.counters());
    });
}

/// Without the feature: there is nothing to publish.
#[cfg(not(feature = "metrics"))]
pub(crate) fn start_publisher<T: Send + Sync + 'static>(_pool: &Pool<T>, _options: &MetricsOptions) {}
