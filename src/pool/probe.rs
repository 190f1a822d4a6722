//! The freshness probe, run on the path of the call that finds an instance
//! due (see `PoolBuilder::probe`).

use crate::actors::supervisor::SupervisorInternal;
use crate::error::PoolError;
use crate::guard::{Guarded, guarded};
use crate::ids::RetireCause;
use crate::lease::Lease;
use crate::telemetry::Metrics;

use super::Pool;

impl<T: Send + Sync + 'static> Pool<T> {
    /// Runs the freshness probe on `lease`'s instance: `Some(lease)` when it
    /// may be served (fresh, or the probe failed, which counts as fresh),
    /// `None` when it was stale and has been retired; `ShutDown` when the
    /// pool's shutdown ended first.
    pub(super) async fn run_probe(&self, lease: Lease<T>) -> Result<Option<Lease<T>>, PoolError> {
        let shared = &self.inner.shared;
        let probe = shared.probe.clone().expect("called only with a probe");
        Metrics::bump(&shared.metrics.probes);
        let probed = lease.clone();
        let bounded = guarded(shared.settings.probe_timeout, move || probe(probed));
        // A shutdown does not wait for probes: once it is over, the probe's
        // future is dropped and the call answered `ShutDown`.
        let outcome = tokio::select! {
            outcome = bounded => outcome,
            () = shared.lifecycle.closed() => return Err(PoolError::ShutDown),
        };
        let failure = match outcome {
            Guarded::Returned(Ok(true)) => return Ok(Some(lease)),
            Guarded::Returned(Ok(false)) => {
                tracing::debug!(key = %lease.key(), instance = %lease.instance_id(), "freshness probe: stale");
                let instance = lease.instance_id();
                let key = lease.instance().key.clone();
                drop(lease);
                // Out of the read view before this returns, so the next call
                // (this one's included) goes to the key actor and builds.
                let _ = self
                    .call(None, |reply| {
                        SupervisorInternal::RetireInstance {
                            key,
                            instance,
                            cause: RetireCause::Stale,
                            reply,
                        }
                        .into()
                    })
                    .await;
                return Ok(None);
            }
            Guarded::Returned(Err(error)) => error.to_string(),
            Guarded::Panicked(message) => format!("panicked: {message}"),
            Guarded::TimedOut => "timed out".to_string(),
        };
        Metrics::bump(&shared.metrics.probe_failures);
        tracing::warn!(key = %lease.key(), failure = %failure, "freshness probe failed; the instance counts as fresh");
        Ok(Some(lease))
    }
}
