//! Configuration: the restart policy, a serde-deserializable [`PoolConfig`],
//! and reading it from environment variables.

use std::time::Duration;

use serde::Deserialize;

/// How the pool reacts when a key's factory keeps failing.
///
/// A failed attempt is retried (up to `max_retries` times per call, after an
/// exponential backoff with jitter between `backoff_initial` and
/// `backoff_max`) while the callers keep waiting. When `intensity` failures
/// fall within `window`, the key *cools down*: for the cool-down period every
/// call for it is answered at once with [`PoolError::CoolingDown`] carrying
/// `retry_after`, and no factory runs. The first call after the cool-down
/// tries once; if that fails too, the next cool-down is twice as long (up to
/// `cooldown_max`). A success resets everything.
///
/// [`PoolError::CoolingDown`]: crate::PoolError::CoolingDown
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Retries after a failed attempt, within one call. Defaults to 2.
    pub max_retries: u32,
    /// Delay before the first retry; doubles each retry. Defaults to 100 ms.
    pub backoff_initial: Duration,
    /// Upper bound of the retry delay. Defaults to 2 s.
    pub backoff_max: Duration,
    /// Failures within `window` that start a cool-down. Defaults to 5.
    pub intensity: u32,
    /// The window failures are counted in. Defaults to 30 s.
    pub window: Duration,
    /// The first cool-down. Defaults to 10 s.
    pub cooldown_initial: Duration,
    /// Upper bound of a cool-down, which doubles each time. Defaults to 5 min.
    pub cooldown_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_retries: 2,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            intensity: 5,
            window: Duration::from_secs(30),
            cooldown_initial: Duration::from_secs(10),
            cooldown_max: Duration::from_secs(300),
        }
    }
}

impl RestartPolicy {
    /// A policy that never retries and never cools down: every failure goes
    /// straight to the callers.
    pub fn never() -> Self {
        RestartPolicy {
            max_retries: 0,
            intensity: u32::MAX,
            ..RestartPolicy::default()
        }
    }

    /// The delay before retry number `retry` (0-based): exponential, capped,
    /// with "equal jitter" (uniform in the upper half) so that many keys
    /// failing together do not retry in lockstep.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let base = self
            .backoff_initial
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
            .min(self.backoff_max);
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// The cool-down after `level` earlier cool-downs.
    pub(crate) fn cooldown(&self, level: u32) -> Duration {
        self.cooldown_initial
            .saturating_mul(1u32.checked_shl(level).unwrap_or(u32::MAX))
            .min(self.cooldown_max)
    }
}

/// Pool settings in a form that serde can read from a file or that
/// [`PoolConfig::from_env`] reads from environment variables. Apply it with
/// [`PoolBuilder::config`](crate::PoolBuilder::config).
///
/// Every field has a default, so `{}` is a valid config; unknown fields are
/// rejected so that a typo does not silently fall back to a default. A value
/// of 0 for a TTL or idle time means "never".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Time to live of an instance, from its creation, in seconds. Defaults to 300.
    pub ttl_seconds: u64,
    /// Time to live in milliseconds; when set it wins over `ttl_seconds`. Defaults to unset.
    pub ttl_ms: Option<u64>,
    /// Time to idle (since the last hand-out), in seconds; 0 is off. Defaults to 0.
    pub idle_seconds: u64,
    /// Most keys resident at once; 0 means no limit. Defaults to 1,000.
    pub max_entries: usize,
    /// Period of the sweep that retires expired entries, in seconds. Defaults to 60.
    pub sweep_seconds: u64,
    /// Longest a factory may run, in milliseconds; 0 is unbounded. Defaults to 30,000.
    pub create_timeout_ms: u64,
    /// Longest a dispose hook may run, in milliseconds; 0 is unbounded. Defaults to 10,000.
    pub dispose_timeout_ms: u64,
    /// Refresh-ahead: an instance older than this many seconds is rebuilt in
    /// the background on its next hit, while it keeps being served; 0 is off.
    /// Defaults to 0.
    pub refresh_seconds: u64,
}

/// How long a checked instance counts as fresh before it is probed again,
/// when `PoolBuilder::probe_interval` is not called.
pub(crate) const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Longest a freshness probe may run, when `PoolBuilder::probe_timeout` is
/// not called.
pub(crate) const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The deadline of the shutdown that dropping the last `Pool` handle starts
/// when `dispose_timeout` is zero (unbounded): that shutdown runs with no
/// one waiting for it, so it is never unbounded.
pub(crate) const DROP_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            ttl_seconds: 300,
            ttl_ms: None,
            idle_seconds: 0,
            max_entries: 1_000,
            sweep_seconds: 60,
            create_timeout_ms: 30_000,
            dispose_timeout_ms: 10_000,
            refresh_seconds: 0,
        }
    }
}

/// Upper bounds for configuration values. A value above its cap is clamped
/// to it with a `tracing` warning rather than rejected, so that a generous
/// setting in one environment does not stop a service from starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigCaps {
    /// Largest time to live. Defaults to 30 days.
    pub max_ttl: Duration,
    /// Largest time to idle. Defaults to 30 days.
    pub max_idle: Duration,
    /// Largest `max_entries`. Defaults to 10,000,000.
    pub max_entries: usize,
    /// Largest sweep interval. Defaults to 1 day.
    pub max_sweep: Duration,
}

impl Default for ConfigCaps {
    fn default() -> Self {
        ConfigCaps {
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            max_idle: Duration::from_secs(30 * 24 * 3600),
            max_entries: 10_000_000,
            max_sweep: Duration::from_secs(24 * 3600),
        }
    }
}

/// A configuration value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable holds something that is not what it should be.
    #[error("environment variable {variable} has the value {value:?}, which is not {expected}")]
    Malformed {
        /// The variable's full name, e.g. `PROVIDER_RUNTIME_CACHE_TTL_SECONDS`.
        variable: String,
        /// The value found (lossily decoded when it was not UTF-8).
        value: String,
        /// What the variable must hold.
        expected: &'static str,
    },
}

/// The default environment prefix, as in `PROVIDER_RUNTIME_CACHE_TTL_SECONDS`.
pub const DEFAULT_ENV_PREFIX: &str = "PROVIDER_RUNTIME_CACHE";

impl PoolConfig {
    /// The time to live this config asks for (`ttl_ms` wins over `ttl_seconds`).
    pub fn time_to_live(&self) -> Duration {
        match self.ttl_ms {
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs(self.ttl_seconds),
        }
    }

    /// Reads a config from the process environment, starting from the defaults.
    ///
    /// With prefix `P` (for example [`DEFAULT_ENV_PREFIX`]) it reads
    /// `P_TTL_SECONDS`, `P_TTL_MS` (wins over seconds), `P_IDLE_SECONDS`,
    /// `P_MAX_ENTRIES`, `P_SWEEP_SECONDS`, `P_CREATE_TIMEOUT_MS`,
    /// `P_DISPOSE_TIMEOUT_MS` and `P_REFRESH_SECONDS` (capped like the TTL); unset variables keep their default. A value that
    /// is not a non-negative integer is an error naming the variable and the
    /// value; a value above [`ConfigCaps::default`] is clamped with a warning.
    pub fn from_env(prefix: &str) -> Result<PoolConfig, ConfigError> {
        Self::from_lookup(prefix, &ConfigCaps::default(), |name| {
            std::env::var_os(name).map(|v| v.into_string().map_err(|v| v.to_string_lossy().into_owned()))
        })
    }

    /// Like [`from_env`](Self::from_env), with values looked up by `lookup`
    /// (a variable's full name to its value, `Err` holding the lossy text of a
    /// non-UTF-8 value) and clamped to `caps`. Useful for tests and for
    /// configuration sources other than the process environment.
    pub fn from_lookup(
        prefix: &str,
        caps: &ConfigCaps,
        lookup: impl Fn(&str) -> Option<Result<String, String>>,
    ) -> Result<PoolConfig, ConfigError> {
        let read = |suffix: &str| -> Result<Option<u64>, ConfigError> {
            let variable = format!("{prefix}_{suffix}");
            let malformed = |value: String| ConfigError::Malformed {
                variable: variable.clone(),
                value,
                expected: "a non-negative integer",
            };
            match lookup(&variable) {
                None => Ok(None),
                Some(Err(lossy)) => Err(malformed(lossy)),
                Some(Ok(text)) => text.trim().parse::<u64>().map(Some).map_err(|_| malformed(text)),
            }
        };
        // A value the user set and that exceeds its cap is clamped with a
        // warning; a default that exceeds a (lowered) cap is clamped quietly,
        // since nobody asked for it.
        let defaults = PoolConfig::default().clamped_quietly(caps);
        let ttl_cap = caps.max_ttl.as_secs();
        let ttl_ms_cap = u64::try_from(caps.max_ttl.as_millis()).unwrap_or(u64::MAX);
        let entries_cap = u64::try_from(caps.max_entries).unwrap_or(u64::MAX);
        let given = |suffix: &str, name: &str, cap: u64| -> Result<Option<u64>, ConfigError> {
            Ok(read(suffix)?.map(|v| clamp(name, v, cap, true)))
        };
        let config = PoolConfig {
            ttl_seconds: given("TTL_SECONDS", "ttl_seconds", ttl_cap)?.unwrap_or(defaults.ttl_seconds),
            ttl_ms: given("TTL_MS", "ttl_ms", ttl_ms_cap)?.or(defaults.ttl_ms),
            idle_seconds: given("IDLE_SECONDS", "idle_seconds", caps.max_idle.as_secs())?
                .unwrap_or(defaults.idle_seconds),
            max_entries: given("MAX_ENTRIES", "max_entries", entries_cap)?
                .map_or(defaults.max_entries, |v| usize::try_from(v).unwrap_or(usize::MAX)),
            sweep_seconds: given("SWEEP_SECONDS", "sweep_seconds", caps.max_sweep.as_secs())?
                .unwrap_or(defaults.sweep_seconds),
            create_timeout_ms: read("CREATE_TIMEOUT_MS")?.unwrap_or(defaults.create_timeout_ms),
            dispose_timeout_ms: read("DISPOSE_TIMEOUT_MS")?.unwrap_or(defaults.dispose_timeout_ms),
            refresh_seconds: given("REFRESH_SECONDS", "refresh_seconds", ttl_cap)?.unwrap_or(defaults.refresh_seconds),
        };
        Ok(config)
    }

    /// Returns this config with every value above its cap lowered to the cap,
    /// logging a warning for each value changed.
    #[must_use]
    pub fn clamped(self, caps: &ConfigCaps) -> PoolConfig {
        self.clamp_all(caps, true)
    }

    fn clamped_quietly(self, caps: &ConfigCaps) -> PoolConfig {
        self.clamp_all(caps, false)
    }

    fn clamp_all(mut self, caps: &ConfigCaps, warn: bool) -> PoolConfig {
        self.ttl_seconds = clamp("ttl_seconds", self.ttl_seconds, caps.max_ttl.as_secs(), warn);
        self.ttl_ms = self.ttl_ms.map(|ms| {
            let cap = u64::try_from(caps.max_ttl.as_millis()).unwrap_or(u64::MAX);
            clamp("ttl_ms", ms, cap, warn)
        });
        self.idle_seconds = clamp("idle_seconds", self.idle_seconds, caps.max_idle.as_secs(), warn);
        self.sweep_seconds = clamp("sweep_seconds", self.sweep_seconds, caps.max_sweep.as_secs(), warn);
        self.refresh_seconds = clamp("refresh_seconds", self.refresh_seconds, caps.max_ttl.as_secs(), warn);
        let entries_cap = u64::try_from(caps.max_entries).unwrap_or(u64::MAX);
        let entries = u64::try_from(self.max_entries).unwrap_or(u64::MAX);
        self.max_entries = usize::try_from(clamp("max_entries", entries, entries_cap, warn)).unwrap_or(usize::MAX);
        self
    }
}

/// `value`, lowered to `cap` if above it (with a warning when `warn`).
fn clamp(name: &str, value: u64, cap: u64, warn: bool) -> u64 {
    if value <= cap {
        return value;
    }
    if warn {
        tracing::warn!(setting = name, value, cap, "config value above its cap; clamped");
    }
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff grows, is capped, and stays within its jitter band.
    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let p = RestartPolicy::default();
        for _ in 0..100 {
            let d0 = p.backoff(0);
            assert!(
                d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100),
                "{d0:?}"
            );
            let d5 = p.backoff(5);
            assert!(d5 >= Duration::from_secs(1) && d5 <= Duration::from_secs(2), "{d5:?}");
        }
        assert_eq!(p.cooldown(0), Duration::from_secs(10));
        assert_eq!(p.cooldown(1), Duration::from_secs(20));
        assert_eq!(p.cooldown(40), Duration::from_secs(300));
    }
}
