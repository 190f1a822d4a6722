//! Event-bus counters and their snapshot, [`BusStats`].
//!
//! Part of `telemetry/`, below both `counters.rs` (which embeds the
//! counters in the pool's `Metrics`) and `bus/` (which writes them).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// What a bus listener counts; one variant per counter of [`BusStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BusCount {
    Applied,
    Echo,
    Malformed,
    Rejected,
    Replayed,
    Gap,
    Reconnect,
    Recovery,
    Restart,
    Lost,
}

/// Bus counters, shown in [`Counters::bus`](crate::Counters::bus).
#[derive(Debug, Default)]
pub(crate) struct BusMetrics {
    applied: AtomicU64,
    echoes: AtomicU64,
    malformed: AtomicU64,
    rejected: AtomicU64,
    replayed: AtomicU64,
    gaps: AtomicU64,
    reconnects: AtomicU64,
    recoveries: AtomicU64,
    restarts: AtomicU64,
    lost: AtomicU64,
    /// Lag (publish to applied) histogram in µs, log-linear: four buckets per
    /// power of two (see `lag_bucket`), so a quantile is within 25%.
    lag_buckets: LagBuckets,
}

/// Buckets of the lag histogram: exact below 4 µs, then four per power of
/// two up to 2^40 µs (12 days); longer lags land in the last bucket.
const LAG_BUCKETS: usize = 160;

/// The histogram's counters.
#[derive(Debug)]
struct LagBuckets([AtomicU64; LAG_BUCKETS]);

impl Default for LagBuckets {
    fn default() -> Self {
        LagBuckets(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// The bucket of a lag of `us` microseconds.
fn lag_bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // floor(log2), at least 2
    let mantissa = (us >> (exp - 2)) & 3; // the two bits after the leading one
    (((exp - 1) * 4) as usize + mantissa as usize).min(LAG_BUCKETS - 1)
}

/// The smallest lag, in microseconds, above every lag in bucket `i`.
fn lag_bucket_upper(i: usize) -> u64 {
    if i < 4 {
        return i as u64 + 1;
    }
    let exp = (i / 4 + 1) as u32;
    let mantissa = (i % 4) as u64;
    (5 + mantissa) << (exp - 2)
}

impl BusMetrics {
    /// Counts one event of `kind`.
    pub(crate) fn record(&self, kind: BusCount) {
        let counter = match kind {
            BusCount::Applied => &self.applied,
            BusCount::Echo => &self.echoes,
            BusCount::Malformed => &self.malformed,
            BusCount::Rejected => &self.rejected,
            BusCount::Replayed => &self.replayed,
            BusCount::Gap => &self.gaps,
            BusCount::Reconnect => &self.reconnects,
            BusCount::Recovery => &self.recoveries,
            BusCount::Restart => &self.restarts,
            BusCount::Lost => &self.lost,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_lag(&self, lag_us: u64) {
        self.lag_buckets.0[lag_bucket(lag_us)].fetch_add(1, Relaxed);
    }

    /// The upper bound of the bucket holding quantile `q` of recorded lags.
    fn lag_quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.lag_buckets.0.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(lag_bucket_upper(i)));
            }
        }
        None
    }

    pub(crate) fn snapshot(&self) -> BusStats {
        BusStats {
            applied: self.applied.load(Relaxed),
            echoes_ignored: self.echoes.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            gaps: self.gaps.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            recoveries: self.recoveries.load(Relaxed),
            publisher_restarts: self.restarts.load(Relaxed),
            lost: self.lost.load(Relaxed),
            lag_p50: self.lag_quantile(0.50),
            lag_p99: self.lag_quantile(0.99),
        }
    }
}

/// Event-bus figures of a pool (all listeners attached to it together).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BusStats {
    /// Invalidations applied.
    pub applied: u64,
    /// Messages from this instance's own origin, ignored.
    pub echoes_ignored: u64,
    /// Messages that were not valid invalidations.
    pub malformed: u64,
    /// Messages refused when a signing key is set: unsigned, badly signed,
    /// version 1 (unless accepted for a migration), or with a timestamp
    /// outside the listener's window (`ListenOptions::max_age`).
    pub rejected: u64,
    /// Messages whose sequence number was not above the last seen in their
    /// run (their origin and epoch): copies.
    pub replayed: u64,
    /// Gaps seen in an origin's sequence numbers (those a recovery had not
    /// already covered).
    pub gaps: u64,
    /// Reconnections of a transport after a lost connection.
    pub reconnects: u64,
    /// Recovery flushes applied (after a reconnect of an at-most-once
    /// transport, a gap, a publisher restart, or lost messages; one per
    /// loss).
    pub recoveries: u64,
    /// Publishers seen restarting under an origin already known (an `epoch`
    /// not heard before, above or below those heard): treated as a new run,
    /// with a recovery unless the transport is durable and the run starts
    /// at 1, or a recovery since covered it.
    pub publisher_restarts: u64,
    /// Times the transport reported messages lost: a NATS slow consumer, an
    /// embedded listener that fell behind, or a durable stream that no longer
    /// retained what a listener had missed. Each applies the recovery.
    pub lost: u64,
    /// Median publish-to-apply lag (the upper bound of its histogram bucket,
    /// at most 25% above the true value; from wall clocks, so only
    /// meaningful between hosts with synced clocks). `None` until a message
    /// is applied. Serialized as `lag_p50_us`, whole microseconds: on
    /// loopback the lag is well under a millisecond.
    #[serde(rename = "lag_p50_us", serialize_with = "micros")]
    pub lag_p50: Option<Duration>,
    /// 99th percentile of the same; serialized as `lag_p99_us`.
    #[serde(rename = "lag_p99_us", serialize_with = "micros")]
    pub lag_p99: Option<Duration>,
}

/// Serializes a lag as whole microseconds (the histogram's unit, so nothing
/// is rounded), or `null`.
fn micros<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every lag falls in a bucket whose upper bound is above it and at most 25% (or 1 µs) more.
    #[test]
    fn lag_buckets_are_within_a_quarter() {
        let mut lags: Vec<u64> = (0..5_000).collect();
        lags.extend((0..40).map(|e| 1u64 << e));
        lags.extend((2..40).map(|e| (1u64 << e) - 1));
        lags.extend([12_345, 999_999, 3_600_000_000]);
        for lag in lags {
            let i = lag_bucket(lag);
            let upper = lag_bucket_upper(i);
            assert!(upper > lag, "lag {lag} us: bucket {i} ends at {upper}");
            assert!(
                upper <= (lag + lag / 4).max(lag + 1),
                "lag {lag} us: bucket {i} ends at {upper}, more than 25% above"
            );
            assert!(
                i == 0 || lag >= lag_bucket_upper(i - 1),
                "lag {lag} us is below bucket {i}"
            );
        }
    }

    /// The quantiles of recorded lags come from the right buckets.
    #[test]
    fn lag_quantiles() {
        let m = BusMetrics::default();
        assert_eq!(m.lag_quantile(0.5), None);
        for _ in 0..98 {
            m.record_lag(1_000);
        }
        m.record_lag(50_000);
        m.record_lag(50_000);
        let p50 = m.lag_quantile(0.5).unwrap().as_micros() as u64;
        assert!((1_001..=1_250).contains(&p50), "p50 {p50}");
        let p99 = m.lag_quantile(0.99).unwrap().as_micros() as u64;
        assert!((50_001..=62_500).contains(&p99), "p99 {p99}");
    }

    /// Each kind bumps its own counter and no other.
    #[test]
    fn record_bumps_one_counter() {
        let m = BusMetrics::default();
        m.record(BusCount::Lost);
        m.record(BusCount::Restart);
        m.record(BusCount::Restart);
        let s = m.snapshot();
        assert_eq!((s.lost, s.publisher_restarts, s.applied, s.recoveries), (1, 2, 0, 0));
    }
}
