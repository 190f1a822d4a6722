//! Invalidation across service instances: the wire message, signing, and the
//! listener logic shared by every transport (the embedded [`LocalBus`], and
//! Redis pub/sub and NATS behind the `redis` and `nats` features).
//!
//! # Wire format (version 1)
//!
//! One JSON object per message, UTF-8, published as is:
//!
//! ```json
//! {"v":1,"origin":"billing-7f3c","seq":42,"ts_us":1763900000000000,
//!  "scope":"key","target":"acme:openai","sig":"9b1c…"}
//! ```
//!
//! - `v`: format version, `1`.
//! - `origin`: the publishing instance's id; unique per process start.
//! - `seq`: per-origin sequence number, starting at 1, +1 per message.
//! - `ts_us`: publish time, microseconds since the Unix epoch.
//! - `scope`: `"key"`, `"prefix"` or `"all"`; `target` is the key or prefix
//!   (absent for `"all"`).
//! - `sig` (only when a shared key is configured): lowercase hex
//!   HMAC-SHA256, with the shared key, of the UTF-8 text
//!   `"v1\n{origin}\n{seq}\n{ts_us}\n{scope}\n{target}"` (`target` empty for
//!   `"all"`).
//!
//! # Delivery
//!
//! Pub/sub is at-most-once. A listener therefore treats a reconnect, or a
//! gap in an origin's sequence numbers, as "something may have been missed"
//! and applies its [`Recovery`] (by default it flushes everything). It
//! ignores its own origin's echoes, and counts and logs (never applies)
//! malformed, unsigned or badly signed messages and replays (a sequence
//! number not above the last one seen from that origin).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use std::sync::Arc;

use crate::pool::{Pool, WeakPool};
use crate::stats::Metrics;

mod local;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;

pub use local::{LocalBus, LocalPublisher};

/// What an invalidation retires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One key.
    Key(String),
    /// Every key starting with this prefix.
    Prefix(String),
    /// Everything.
    All,
}

/// One invalidation, as published by one service instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The publishing instance.
    pub origin: String,
    /// Its sequence number, per origin, from 1.
    pub seq: u64,
    /// Publish time, microseconds since the Unix epoch.
    pub ts_us: u64,
    /// What to retire.
    pub scope: Scope,
}

/// The JSON shape on the wire.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u32,
    origin: String,
    seq: u64,
    ts_us: u64,
    scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<String>,
}

/// Why a bus message was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// Not a version-1 invalidation: bad JSON, unknown version or scope, or a
    /// key/prefix scope without a target.
    #[error("malformed invalidation message: {0}")]
    Malformed(String),
    /// A shared key is configured and the message has no signature.
    #[error("unsigned invalidation message from origin `{0}` rejected")]
    Unsigned(String),
    /// The signature does not match.
    #[error("badly signed invalidation message from origin `{0}` rejected")]
    BadSignature(String),
    /// The transport failed (connect, subscribe or publish).
    #[error("event bus transport error: {0}")]
    Transport(String),
}

/// A shared secret for HMAC-SHA256 signing. `Debug` does not print it.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// A key from raw bytes (use at least 32 random bytes).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SigningKey(bytes.into())
    }

    fn mac(&self, text: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(text.as_bytes());
        mac
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl Scope {
    fn parts(&self) -> (&'static str, Option<&str>) {
        match self {
            Scope::Key(key) => ("key", Some(key)),
            Scope::Prefix(prefix) => ("prefix", Some(prefix)),
            Scope::All => ("all", None),
        }
    }
}

impl Invalidation {
    fn signed_text(&self) -> String {
        let (scope, target) = self.scope.parts();
        format!(
            "v1\n{}\n{}\n{}\n{}\n{}",
            self.origin,
            self.seq,
            self.ts_us,
            scope,
            target.unwrap_or("")
        )
    }

    /// The message as wire JSON, signed when `key` is given.
    pub fn encode(&self, key: Option<&SigningKey>) -> Vec<u8> {
        let (scope, target) = self.scope.parts();
        let sig = key.map(|k| hex(&k.mac(&self.signed_text()).finalize().into_bytes()));
        let wire = Wire {
            v: 1,
            origin: self.origin.clone(),
            seq: self.seq,
            ts_us: self.ts_us,
            scope: scope.to_string(),
            target: target.map(str::to_string),
            sig,
        };
        serde_json::to_vec(&wire).expect("serializing plain strings and numbers cannot fail")
    }

    /// Parses wire JSON; when `key` is given the signature must be present
    /// and valid (checked in constant time).
    pub fn decode(bytes: &[u8], key: Option<&SigningKey>) -> Result<Invalidation, BusError> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| BusError::Malformed(e.to_string()))?;
        if wire.v != 1 {
            return Err(BusError::Malformed(format!("unsupported version {}", wire.v)));
        }
        let scope = match (wire.scope.as_str(), wire.target) {
            ("key", Some(target)) => Scope::Key(target),
            ("prefix", Some(target)) => Scope::Prefix(target),
            ("all", _) => Scope::All,
            (scope @ ("key" | "prefix"), None) => {
                return Err(BusError::Malformed(format!("scope `{scope}` needs a target")));
            }
            (other, _) => return Err(BusError::Malformed(format!("unknown scope `{other}`"))),
        };
        let message = Invalidation {
            origin: wire.origin,
            seq: wire.seq,
            ts_us: wire.ts_us,
            scope,
        };
        if let Some(key) = key {
            let Some(sig) = wire.sig else {
                return Err(BusError::Unsigned(message.origin));
            };
            let Some(sig) = unhex(&sig) else {
                return Err(BusError::BadSignature(message.origin));
            };
            if key.mac(&message.signed_text()).verify_slice(&sig).is_err() {
                return Err(BusError::BadSignature(message.origin));
            }
        }
        Ok(message)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A unique-enough origin id for this process: a prefix you choose and 64
/// random bits, so that a restarted instance never looks like a replay of
/// its former self.
pub fn new_origin(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

/// What a listener does when messages may have been missed (after a
/// reconnect, or a gap in an origin's sequence numbers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Retire everything. The safe default.
    #[default]
    FlushAll,
    /// Retire every key under this prefix (the part of the key space that
    /// other instances invalidate).
    FlushPrefix(String),
    /// Do nothing (only for pools whose instances can safely be stale).
    Nothing,
}

/// How a listener treats messages.
#[derive(Debug, Clone, Default)]
pub struct ListenOptions {
    /// This instance's origin id: messages from it (echoes of its own
    /// publications) are ignored. Use the same id for its publisher.
    pub origin: String,
    /// When set, only messages signed with this key are applied.
    pub signing_key: Option<SigningKey>,
    /// What to do when messages may have been missed.
    pub recovery: Recovery,
}

/// Bus counters, shown in [`Stats::bus`](crate::Stats::bus).
#[derive(Debug, Default)]
pub(crate) struct BusMetrics {
    pub(crate) applied: AtomicU64,
    pub(crate) echoes: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) recoveries: AtomicU64,
    /// Lag (publish to applied) histogram in µs, log-linear: four buckets per
    /// power of two (see `lag_bucket`), so a quantile is within 25%.
    pub(crate) lag_buckets: LagBuckets,
}

/// Buckets of the lag histogram: exact below 4 µs, then four per power of
/// two up to 2^40 µs (12 days); longer lags land in the last bucket.
const LAG_BUCKETS: usize = 160;

/// The histogram's counters.
#[derive(Debug)]
pub(crate) struct LagBuckets([AtomicU64; LAG_BUCKETS]);

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
    fn record_lag(&self, lag_us: u64) {
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
            lag_p50: self.lag_quantile(0.50),
            lag_p99: self.lag_quantile(0.99),
        }
    }
}

/// Event-bus figures of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusStats {
    /// Invalidations applied.
    pub applied: u64,
    /// Messages from this instance's own origin, ignored.
    pub echoes_ignored: u64,
    /// Messages that were not valid invalidations.
    pub malformed: u64,
    /// Unsigned or badly signed messages (when a signing key is set).
    pub rejected: u64,
    /// Messages whose sequence number was not above the last seen from their origin.
    pub replayed: u64,
    /// Gaps seen in an origin's sequence numbers.
    pub gaps: u64,
    /// Reconnections of a transport after a lost connection.
    pub reconnects: u64,
    /// Recovery flushes applied (after a reconnect or a gap).
    pub recoveries: u64,
    /// Median publish-to-apply lag (the upper bound of its histogram bucket,
    /// at most 25% above the true value; from
    /// wall clocks, so only meaningful between hosts with synced clocks).
    pub lag_p50: Option<Duration>,
    /// 99th percentile of the same.
    pub lag_p99: Option<Duration>,
}

/// Publishes invalidations from one origin: stamps the sequence number and
/// time, signs, and hands the bytes to a transport.
#[derive(Debug)]
pub struct Stamper {
    origin: String,
    seq: AtomicU64,
    signing_key: Option<SigningKey>,
}

impl Stamper {
    /// A stamper for `origin` (see [`new_origin`]), signing with `key` if given.
    pub fn new(origin: impl Into<String>, signing_key: Option<SigningKey>) -> Self {
        Stamper {
            origin: origin.into(),
            seq: AtomicU64::new(0),
            signing_key,
        }
    }

    /// The origin id.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The next message for `scope`, as wire bytes.
    pub fn stamp(&self, scope: Scope) -> Vec<u8> {
        let message = Invalidation {
            origin: self.origin.clone(),
            seq: self.seq.fetch_add(1, Relaxed) + 1,
            ts_us: now_us(),
            scope,
        };
        message.encode(self.signing_key.as_ref())
    }
}

/// Applies bus messages to one pool: the logic every transport shares.
///
/// Owned by one listener task, so its per-origin sequence table needs no
/// lock. It holds the pool weakly: a listener never keeps a pool alive, and
/// [`is_closed`](Self::is_closed) tells its transport loop to end once the
/// pool is gone.
#[derive(Debug)]
pub struct Listener<T: Send + Sync + 'static> {
    pool: WeakPool<T>,
    metrics: Arc<Metrics>,
    options: ListenOptions,
    /// Last sequence number seen per origin.
    last_seq: HashMap<String, u64>,
}

impl<T: Send + Sync + 'static> Listener<T> {
    /// A listener applying to `pool`.
    pub fn new(pool: &Pool<T>, options: ListenOptions) -> Self {
        Listener {
            pool: pool.downgrade(),
            metrics: pool.metrics().clone(),
            options,
            last_seq: HashMap::new(),
        }
    }

    fn metrics(&self) -> &BusMetrics {
        &self.metrics.bus
    }

    /// Whether the pool is gone (its last handle dropped) or shut down.
    pub fn is_closed(&self) -> bool {
        self.pool.upgrade().is_none_or(|pool| pool.is_shut_down())
    }

    /// Handles one raw message from a transport. Returns the message when it
    /// was applied. Never fails: bad messages are counted and logged.
    pub async fn handle(&mut self, bytes: &[u8]) -> Option<Invalidation> {
        match Invalidation::decode(bytes, self.options.signing_key.as_ref()) {
            Ok(message) => self.handle_message(message).await,
            Err(error) => {
                let counter = match &error {
                    BusError::Malformed(_) => &self.metrics().malformed,
                    _ => &self.metrics().rejected,
                };
                Metrics::bump(counter);
                tracing::warn!(error = %error, "invalidation message not applied");
                None
            }
        }
    }

    /// Handles one decoded message: ignores echoes and replays, recovers
    /// after a gap, applies it. Returns the message when it was applied.
    pub async fn handle_message(&mut self, message: Invalidation) -> Option<Invalidation> {
        if message.origin == self.options.origin {
            Metrics::bump(&self.metrics().echoes);
            return None;
        }
        let last = self.last_seq.get(&message.origin).copied();
        if last.is_some_and(|last| message.seq <= last) {
            Metrics::bump(&self.metrics().replayed);
            tracing::warn!(origin = %message.origin, seq = message.seq, "replayed invalidation message ignored");
            return None;
        }
        self.last_seq.insert(message.origin.clone(), message.seq);
        if last.is_some_and(|last| message.seq > last + 1) {
            Metrics::bump(&self.metrics().gaps);
            tracing::warn!(origin = %message.origin, seq = message.seq, last = ?last, "gap in invalidation sequence");
            self.recover().await;
        }
        let pool = self.pool.upgrade()?;
        apply(&pool, &message.scope).await;
        Metrics::bump(&self.metrics().applied);
        self.metrics().record_lag(now_us().saturating_sub(message.ts_us));
        Some(message)
    }

    /// The transport lost its connection (or dropped messages) and is
    /// receiving again: messages may have been missed, so apply the recovery.
    pub async fn reconnected(&mut self) {
        Metrics::bump(&self.metrics().reconnects);
        self.recover().await;
    }

    async fn recover(&mut self) {
        let scope = match &self.options.recovery {
            Recovery::FlushAll => Scope::All,
            Recovery::FlushPrefix(prefix) => Scope::Prefix(prefix.clone()),
            Recovery::Nothing => return,
        };
        let Some(pool) = self.pool.upgrade() else { return };
        Metrics::bump(&self.metrics().recoveries);
        let retired = apply(&pool, &scope).await;
        tracing::warn!(scope = ?scope, retired, "invalidation recovery: flushed what may be stale");
    }
}

impl<T: Send + Sync + 'static> Pool<T> {
    /// Applies one invalidation to this pool at once (no origin, replay or
    /// signature checks: use a [`Listener`] for messages from a bus). Returns
    /// how many keys were retired.
    pub async fn apply(&self, scope: &Scope) -> usize {
        apply(self, scope).await
    }

    /// Applies every invalidation from `stream` in a background task, with a
    /// [`Listener`]'s echo, replay and gap handling. The task ends when the
    /// stream ends or the pool is gone; it does not keep the pool alive.
    pub fn listen<S>(&self, stream: S, options: ListenOptions) -> tokio::task::JoinHandle<()>
    where
        S: futures::Stream<Item = Invalidation> + Send + 'static,
    {
        let mut listener = Listener::new(self, options);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(message) = futures::StreamExt::next(&mut stream).await {
                if listener.is_closed() {
                    break;
                }
                listener.handle_message(message).await;
            }
        })
    }
}

/// Applies one scope to the pool; returns how many keys it retired.
pub(crate) async fn apply<T: Send + Sync + 'static>(pool: &Pool<T>, scope: &Scope) -> usize {
    let result = match scope {
        Scope::Key(key) => pool.invalidate(key).await.map(usize::from),
        Scope::Prefix(prefix) => pool.invalidate_by_prefix(prefix).await,
        Scope::All => pool.invalidate_by_prefix("").await,
    };
    result.unwrap_or(0)
}

/// Exponential backoff with jitter for reconnects: 100 ms doubling to 10 s.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn reconnect_delay(attempt: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(Duration::from_secs(10));
    base / 2 + (base / 2).mul_f64(fastrand::f64())
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

    /// Encoding then decoding gives the same message, signed or not, and a
    /// tampered signature is rejected.
    #[test]
    fn round_trip_and_signature() {
        let key = SigningKey::new(b"secret".to_vec());
        let m = Invalidation {
            origin: "a".into(),
            seq: 7,
            ts_us: 1,
            scope: Scope::Prefix("acme:".into()),
        };
        assert_eq!(Invalidation::decode(&m.encode(None), None).unwrap(), m);
        let signed = m.encode(Some(&key));
        assert_eq!(Invalidation::decode(&signed, Some(&key)).unwrap(), m);
        assert!(matches!(
            Invalidation::decode(&m.encode(None), Some(&key)),
            Err(BusError::Unsigned(_))
        ));
        let other = SigningKey::new(b"other".to_vec());
        assert!(matches!(
            Invalidation::decode(&signed, Some(&other)),
            Err(BusError::BadSignature(_))
        ));
    }
}
