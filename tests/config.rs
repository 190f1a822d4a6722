//! Configuration: `PoolConfig` from variables (`from_lookup`, `from_env`)
//! and from JSON, caps and the warnings for clamped values, and its effect
//! on a pool built with it. (Credentials hashing: `hashing.rs`.) Plain
//! tests, and pool tests on the paused clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use serde_json::json;
use warmpool::{
    ConfigCaps, ConfigError, CredentialsHash, DEFAULT_ENV_PREFIX, Pool, PoolConfig, PoolError, RestartPolicy,
    hash_credentials,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A lookup backed by a map of full variable names to values, as
/// `PoolConfig::from_lookup` wants it.
fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<Result<String, String>> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| map.get(name).cloned().map(Ok)
}

/// `from_lookup` with the default prefix and caps over `pairs`.
fn read(pairs: &[(&str, &str)]) -> Result<PoolConfig, ConfigError> {
    PoolConfig::from_lookup(DEFAULT_ENV_PREFIX, &ConfigCaps::default(), vars(pairs))
}

/// Small caps for the clamping tests.
fn small_caps() -> ConfigCaps {
    ConfigCaps {
        max_ttl: Duration::from_secs(60),
        max_idle: Duration::from_secs(30),
        max_entries: 10,
        max_sweep: Duration::from_secs(5),
    }
}

/// A factory that counts its calls and builds the call's number.
fn counting(
    calls: &Arc<AtomicUsize>,
) -> impl Fn() -> futures::future::Ready<Result<usize, std::io::Error>> + Send + Sync + 'static {
    let calls = calls.clone();
    move || futures::future::ready(Ok(calls.fetch_add(1, SeqCst) + 1))
}

// ---------------------------------------------------------------------------
// from_lookup / from_env
// ---------------------------------------------------------------------------

/// With no variable set, every value is its documented default.
#[test]
fn defaults_when_unset() {
    let config = read(&[]).unwrap();
    assert_eq!(config, PoolConfig::default());
    assert_eq!(config.ttl_seconds, 300);
    assert_eq!(config.ttl_ms, None);
    assert_eq!(config.time_to_live(), Duration::from_secs(300));
    assert_eq!(config.idle_seconds, 0);
    assert_eq!(config.max_entries, 1_000);
    assert_eq!(config.sweep_seconds, 60);
    assert_eq!(config.create_timeout_ms, 30_000);
    assert_eq!(config.dispose_timeout_ms, 10_000);
}

/// `from_env` with a prefix nobody sets gives the defaults (the process environment is only read).
#[test]
fn from_env_with_unset_prefix_gives_defaults() {
    let config = PoolConfig::from_env("WARMPOOL_CONFIG_TEST_PREFIX_NOBODY_SETS").unwrap();
    assert_eq!(config, PoolConfig::default());
}

/// Exactly the seven documented variable names are looked up, under the given prefix.
#[test]
fn reads_the_documented_variable_names() {
    let asked = Mutex::new(Vec::new());
    PoolConfig::from_lookup(DEFAULT_ENV_PREFIX, &ConfigCaps::default(), |name| {
        asked.lock().unwrap().push(name.to_string());
        None
    })
    .unwrap();
    let mut asked = asked.into_inner().unwrap();
    asked.sort();
    let mut expected: Vec<String> = [
        "TTL_SECONDS",
        "TTL_MS",
        "IDLE_SECONDS",
        "MAX_ENTRIES",
        "SWEEP_SECONDS",
        "CREATE_TIMEOUT_MS",
        "DISPOSE_TIMEOUT_MS",
        "REFRESH_SECONDS",
    ]
    .iter()
    .map(|suffix| format!("PROVIDER_RUNTIME_CACHE_{suffix}"))
    .collect();
    expected.sort();
    assert_eq!(asked, expected);
}

/// `PROVIDER_RUNTIME_CACHE_TTL_SECONDS` sets the time to live.
#[test]
fn ttl_seconds_is_read() {
    let config = read(&[("PROVIDER_RUNTIME_CACHE_TTL_SECONDS", "42")]).unwrap();
    assert_eq!(config.ttl_seconds, 42);
    assert_eq!(config.ttl_ms, None);
    assert_eq!(config.time_to_live(), Duration::from_secs(42));
}

/// `TTL_MS` wins over `TTL_SECONDS` when both are set.
#[test]
fn ttl_ms_wins_over_ttl_seconds() {
    let config = read(&[
        ("PROVIDER_RUNTIME_CACHE_TTL_SECONDS", "42"),
        ("PROVIDER_RUNTIME_CACHE_TTL_MS", "1500"),
    ])
    .unwrap();
    assert_eq!(config.ttl_ms, Some(1500));
    assert_eq!(config.time_to_live(), Duration::from_millis(1500));
}

/// Every variable lands in its own field.
#[test]
fn every_variable_is_read() {
    let config = read(&[
        ("PROVIDER_RUNTIME_CACHE_TTL_SECONDS", "11"),
        ("PROVIDER_RUNTIME_CACHE_IDLE_SECONDS", "12"),
        ("PROVIDER_RUNTIME_CACHE_MAX_ENTRIES", "13"),
        ("PROVIDER_RUNTIME_CACHE_SWEEP_SECONDS", "14"),
        ("PROVIDER_RUNTIME_CACHE_CREATE_TIMEOUT_MS", "15"),
        ("PROVIDER_RUNTIME_CACHE_DISPOSE_TIMEOUT_MS", "16"),
        ("PROVIDER_RUNTIME_CACHE_REFRESH_SECONDS", "17"),
    ])
    .unwrap();
    let expected = PoolConfig {
        ttl_seconds: 11,
        ttl_ms: None,
        idle_seconds: 12,
        max_entries: 13,
        sweep_seconds: 14,
        create_timeout_ms: 15,
        dispose_timeout_ms: 16,
        refresh_seconds: 17,
    };
    assert_eq!(config, expected);
}

/// A custom prefix reads its own variables and ignores the default prefix's.
#[test]
fn custom_prefix_is_used() {
    let lookup = vars(&[("MYAPP_TTL_SECONDS", "7"), ("PROVIDER_RUNTIME_CACHE_TTL_SECONDS", "99")]);
    let config = PoolConfig::from_lookup("MYAPP", &ConfigCaps::default(), lookup).unwrap();
    assert_eq!(config.ttl_seconds, 7);
}

/// A value that is not a non-negative integer is an error naming the variable and the value.
#[test]
fn malformed_value_names_variable_and_value() {
    for bad in ["ten", "-5", "1.5", "", "300s"] {
        let error = read(&[("PROVIDER_RUNTIME_CACHE_TTL_SECONDS", bad)]).unwrap_err();
        let ConfigError::Malformed { variable, value, .. } = &error else {
            panic!("expected Malformed for {bad:?}, got {error:?}");
        };
        assert_eq!(variable, "PROVIDER_RUNTIME_CACHE_TTL_SECONDS");
        assert_eq!(value, bad);
        let text = error.to_string();
        assert!(text.contains("PROVIDER_RUNTIME_CACHE_TTL_SECONDS"), "{text}");
        assert!(text.contains(&format!("{bad:?}")), "{text}");
    }
}

/// A malformed value in another variable names that variable, not the first one read.
#[test]
fn malformed_value_names_the_right_variable() {
    let error = read(&[
        ("PROVIDER_RUNTIME_CACHE_TTL_SECONDS", "10"),
        ("PROVIDER_RUNTIME_CACHE_MAX_ENTRIES", "lots"),
    ])
    .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("PROVIDER_RUNTIME_CACHE_MAX_ENTRIES"), "{text}");
    assert!(text.contains("lots"), "{text}");
    assert!(!text.contains("TTL_SECONDS"), "{text}");
}

/// A value too large for a u64 is malformed, not silently wrapped or clamped.
#[test]
fn overflowing_value_is_malformed() {
    let error = read(&[("PROVIDER_RUNTIME_CACHE_TTL_MS", "18446744073709551616")]).unwrap_err();
    assert!(matches!(error, ConfigError::Malformed { .. }), "{error:?}");
}

/// A non-UTF-8 value (the lookup gives its lossy text as `Err`) is an error carrying that text.
#[test]
fn non_utf8_value_is_an_error() {
    let lossy = "12\u{FFFD}".to_string();
    let sent = lossy.clone();
    let result = PoolConfig::from_lookup(DEFAULT_ENV_PREFIX, &ConfigCaps::default(), move |name| {
        (name == "PROVIDER_RUNTIME_CACHE_IDLE_SECONDS").then(|| Err(sent.clone()))
    });
    let error = result.unwrap_err();
    let ConfigError::Malformed { variable, value, .. } = &error else {
        panic!("expected Malformed, got {error:?}");
    };
    assert_eq!(variable, "PROVIDER_RUNTIME_CACHE_IDLE_SECONDS");
    assert_eq!(value, &lossy);
    assert!(error.to_string().contains("PROVIDER_RUNTIME_CACHE_IDLE_SECONDS"));
}

/// Values above their caps are clamped to the caps; values at or below are kept.
#[test]
fn values_above_caps_are_clamped() {
    let lookup = vars(&[
        ("PROVIDER_RUNTIME_CACHE_TTL_SECONDS", "3600"),
        ("PROVIDER_RUNTIME_CACHE_TTL_MS", "3600000"),
        ("PROVIDER_RUNTIME_CACHE_IDLE_SECONDS", "100"),
        ("PROVIDER_RUNTIME_CACHE_MAX_ENTRIES", "50"),
        ("PROVIDER_RUNTIME_CACHE_SWEEP_SECONDS", "10"),
    ]);
    let config = PoolConfig::from_lookup(DEFAULT_ENV_PREFIX, &small_caps(), lookup).unwrap();
    assert_eq!(config.ttl_seconds, 60);
    assert_eq!(config.ttl_ms, Some(60_000));
    assert_eq!(config.time_to_live(), Duration::from_secs(60));
    assert_eq!(config.idle_seconds, 30);
    assert_eq!(config.max_entries, 10);
    assert_eq!(config.sweep_seconds, 5);

    let lookup = vars(&[
        ("PROVIDER_RUNTIME_CACHE_TTL_SECONDS", "60"),
        ("PROVIDER_RUNTIME_CACHE_IDLE_SECONDS", "29"),
        ("PROVIDER_RUNTIME_CACHE_MAX_ENTRIES", "10"),
        ("PROVIDER_RUNTIME_CACHE_SWEEP_SECONDS", "1"),
    ]);
    let config = PoolConfig::from_lookup(DEFAULT_ENV_PREFIX, &small_caps(), lookup).unwrap();
    assert_eq!(
        (
            config.ttl_seconds,
            config.idle_seconds,
            config.max_entries,
            config.sweep_seconds
        ),
        (60, 29, 10, 1)
    );
}

/// `clamped` applies the same caps to a config that came from elsewhere (e.g. JSON).
#[test]
fn clamped_applies_caps_to_any_config() {
    let config = PoolConfig {
        ttl_seconds: 1_000_000,
        max_entries: usize::MAX,
        ..PoolConfig::default()
    }
    .clamped(&small_caps());
    assert_eq!(config.ttl_seconds, 60);
    assert_eq!(config.max_entries, 10);
    assert_eq!(config.sweep_seconds, 5, "the default 60 s sweep is above the 5 s cap");
}

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

/// `{}` is a valid config and gives the defaults.
#[test]
fn json_empty_object_gives_defaults() {
    let config: PoolConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(config, PoolConfig::default());
}

/// Fields present in JSON are taken; missing ones keep their defaults.
#[test]
fn json_missing_fields_take_defaults() {
    let config: PoolConfig = serde_json::from_value(json!({"ttl_ms": 500, "max_entries": 5})).unwrap();
    assert_eq!(
        config,
        PoolConfig {
            ttl_ms: Some(500),
            max_entries: 5,
            ..PoolConfig::default()
        }
    );
    assert_eq!(config.time_to_live(), Duration::from_millis(500));
}

/// An unknown field (a typo) is rejected with an error that names it.
#[test]
fn json_unknown_field_is_rejected_by_name() {
    let error = serde_json::from_str::<PoolConfig>(r#"{"ttl_second": 5}"#).unwrap_err();
    assert!(error.to_string().contains("ttl_second"), "{error}");
}

/// Values of the wrong type or sign are rejected, not defaulted.
#[test]
fn json_wrong_types_are_rejected() {
    assert!(serde_json::from_str::<PoolConfig>(r#"{"ttl_seconds": "300"}"#).is_err());
    assert!(serde_json::from_str::<PoolConfig>(r#"{"max_entries": -1}"#).is_err());
    assert!(serde_json::from_str::<PoolConfig>(r#"{"sweep_seconds": 1.5}"#).is_err());
}

// ---------------------------------------------------------------------------
// PoolBuilder::config
// ---------------------------------------------------------------------------

/// A config's `ttl_ms` of 500 is the pool's TTL: a hit at 500 ms, a rebuild at 501 ms.
#[tokio::test(start_paused = true)]
async fn builder_config_ttl_is_applied() {
    let config: PoolConfig = serde_json::from_value(json!({"ttl_ms": 500})).unwrap();
    let pool: Pool<usize> = Pool::builder().config(&config).spawn().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let h = CredentialsHash::from_u64(1);

    assert_eq!(*pool.get_or_create("t:a", h, counting(&calls)).await.unwrap(), 1);
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(*pool.get_or_create("t:a", h, counting(&calls)).await.unwrap(), 1);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(*pool.get_or_create("t:a", h, counting(&calls)).await.unwrap(), 2);
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(pool.stats().await.unwrap().retirements.ttl, 1);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A setter called after `config` overrides the config's value.
#[tokio::test(start_paused = true)]
async fn setter_after_config_overrides_it() {
    let config = PoolConfig {
        ttl_ms: Some(500),
        ..PoolConfig::default()
    };
    let pool: Pool<usize> = Pool::builder()
        .config(&config)
        .time_to_live(Duration::from_secs(2))
        .spawn()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let h = CredentialsHash::from_u64(1);

    pool.get_or_create("t:a", h, counting(&calls)).await.unwrap();
    tokio::time::advance(Duration::from_millis(1_500)).await;
    assert_eq!(*pool.get_or_create("t:a", h, counting(&calls)).await.unwrap(), 1);
    tokio::time::advance(Duration::from_millis(501)).await;
    assert_eq!(*pool.get_or_create("t:a", h, counting(&calls)).await.unwrap(), 2);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A config's `idle_seconds` retires an instance nobody took for that long.
#[tokio::test(start_paused = true)]
async fn builder_config_idle_is_applied() {
    let config = PoolConfig {
        idle_seconds: 2,
        ..PoolConfig::default()
    };
    let pool: Pool<usize> = Pool::builder().config(&config).spawn().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let h = CredentialsHash::from_u64(1);

    pool.get_or_create("t:a", h, counting(&calls)).await.unwrap();
    tokio::time::advance(Duration::from_millis(1_900)).await;
    // A hand-out resets the idle clock.
    assert_eq!(*pool.get_or_create("t:a", h, counting(&calls)).await.unwrap(), 1);
    tokio::time::advance(Duration::from_millis(1_900)).await;
    assert_eq!(*pool.get_or_create("t:a", h, counting(&calls)).await.unwrap(), 1);
    tokio::time::advance(Duration::from_millis(2_001)).await;
    assert_eq!(*pool.get_or_create("t:a", h, counting(&calls)).await.unwrap(), 2);
    assert_eq!(pool.stats().await.unwrap().retirements.idle, 1);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A config's `create_timeout_ms` bounds a hanging factory.
#[tokio::test(start_paused = true)]
async fn builder_config_create_timeout_is_applied() {
    let config = PoolConfig {
        create_timeout_ms: 100,
        ..PoolConfig::default()
    };
    let pool: Pool<usize> = Pool::builder()
        .config(&config)
        .restart_policy(RestartPolicy::never())
        .spawn()
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = pool
        .get_or_create("t:hang", CredentialsHash::from_u64(1), || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<usize, std::io::Error>(0)
        })
        .await
        .unwrap_err();
    match error {
        PoolError::Timeout { ref key, after } => {
            assert_eq!(key, "t:hang");
            assert_eq!(after, Duration::from_millis(100));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

// ---------------------------------------------------------------------------
// Warnings for clamped values; zero `max_entries`
// ---------------------------------------------------------------------------

/// Records the `setting` field of every warning emitted while it is the
/// default subscriber (a minimal subscriber: the crate logs through
/// `tracing` and no subscriber crate is a dependency).
#[derive(Default)]
struct WarnedSettings(Mutex<Vec<String>>);

impl tracing::Subscriber for WarnedSettings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Setting(Option<String>);
        impl tracing::field::Visit for Setting {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "setting" {
                    self.0 = Some(value.to_string());
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "setting" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut setting = Setting(None);
            event.record(&mut setting);
            self.0.lock().unwrap().push(setting.0.unwrap_or_default());
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Caps below the built-in defaults clamp the defaults quietly: only values the
/// user gave are warned about (here `IDLE_SECONDS`), and only when clamped.
#[test]
fn only_given_values_above_their_caps_are_warned_about() {
    let caps = ConfigCaps {
        max_ttl: Duration::from_secs(60),  // below the default 300 s
        max_entries: 10,                   // below the default 1,000
        max_sweep: Duration::from_secs(5), // below the default 60 s
        max_idle: Duration::from_secs(30),
    };
    let subscriber = Arc::new(WarnedSettings::default());
    let config = tracing::subscriber::with_default(subscriber.clone(), || {
        PoolConfig::from_lookup(
            DEFAULT_ENV_PREFIX,
            &caps,
            vars(&[("PROVIDER_RUNTIME_CACHE_IDLE_SECONDS", "100")]),
        )
        .unwrap()
    });
    assert_eq!(*subscriber.0.lock().unwrap(), ["idle_seconds"]);
    assert_eq!(
        (
            config.ttl_seconds,
            config.max_entries,
            config.sweep_seconds,
            config.idle_seconds
        ),
        (60, 10, 5, 30),
        "defaults above the caps are still lowered to them"
    );

    // A value at or below its cap: no warning at all.
    let subscriber = Arc::new(WarnedSettings::default());
    tracing::subscriber::with_default(subscriber.clone(), || {
        PoolConfig::from_lookup(
            DEFAULT_ENV_PREFIX,
            &caps,
            vars(&[("PROVIDER_RUNTIME_CACHE_TTL_SECONDS", "60")]),
        )
        .unwrap()
    });
    assert!(
        subscriber.0.lock().unwrap().is_empty(),
        "{:?}",
        subscriber.0.lock().unwrap()
    );
}

/// `max_entries(0)`, and `MAX_ENTRIES=0` in the environment, mean no limit (as zero
/// means "never" for durations), not "cache nothing": 50 keys stay resident and
/// each is built once.
#[tokio::test(start_paused = true)]
async fn zero_max_entries_means_unbounded() {
    let from_env = read(&[("PROVIDER_RUNTIME_CACHE_MAX_ENTRIES", "0")]).unwrap();
    assert_eq!(from_env.max_entries, 0);
    for builder in [
        Pool::<usize>::builder().max_entries(0),
        Pool::<usize>::builder().config(&from_env),
    ] {
        let pool = builder.sweep_interval(Duration::ZERO).spawn().await.unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        for round in 0..2 {
            for i in 0..50 {
                let key = format!("k{i}");
                let lease = pool
                    .get_or_create(&key, hash_credentials(&"c").unwrap(), counting(&calls))
                    .await
                    .unwrap();
                if round == 1 {
                    assert!(*lease <= 50, "{key} was rebuilt");
                }
            }
        }
        assert_eq!(calls.load(SeqCst), 50, "each key built once");
        let stats = pool.stats().await.unwrap();
        assert_eq!(stats.size, 50);
        assert_eq!(stats.retirements.capacity, 0);
    }
}
