//! Stats for machines: durations serialize as whole milliseconds
//! (`retry_after_ms`) or microseconds (`lag_*_us`), never as
//! `{secs, nanos}`; `counters()` reports what `stats()` reports, without
//! the key lists. Paused clock.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use warmpool::bus::{ListenOptions, LocalBus, Scope, new_origin};

/// Whether any object in `v` looks like a serialized `Duration`.
fn has_secs_nanos(v: &Value) -> bool {
    match v {
        Value::Object(o) => (o.contains_key("secs") && o.contains_key("nanos")) || o.values().any(has_secs_nanos),
        Value::Array(a) => a.iter().any(has_secs_nanos),
        _ => false,
    }
}

/// A cooling key's time left serializes as `retry_after_ms`, whole
/// milliseconds rounded up.
#[tokio::test(start_paused = true)]
async fn retry_after_serializes_as_whole_milliseconds() {
    let c = Counters::new();
    let pool = builder(&c).restart_policy(cool_at_once()).spawn().await.unwrap();
    pool.get_or_create("down", h(1), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    // The cool-down is 10 s; 1,234.5 ms later, 8,765.5 ms are left.
    tokio::time::advance(Duration::from_micros(1_234_500)).await;
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.cooling_keys[0].retry_after, Duration::from_micros(8_765_500));
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(
        json["cooling_keys"],
        serde_json::json!([{"key": "down", "retry_after_ms": 8766}])
    );
    assert!(!has_secs_nanos(&json), "{json}");
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Bus lags serialize as whole microseconds, `null` before any message.
#[tokio::test(start_paused = true)]
async fn bus_lag_serializes_as_whole_microseconds() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let json = serde_json::to_value(pool.stats().await.unwrap()).unwrap();
    assert_eq!(
        (&json["bus"]["lag_p50_us"], &json["bus"]["lag_p99_us"]),
        (&Value::Null, &Value::Null)
    );
    assert!(json["bus"].get("lag_p50").is_none(), "{json}");

    let bus = LocalBus::new(16);
    bus.attach(&pool, ListenOptions::new(new_origin("here")));
    bus.publisher(new_origin("there"), None)
        .publish(Scope::Key("a".into()))
        .await
        .unwrap();
    eventually("applied", async || pool.counters().await.unwrap().bus.applied == 1).await;
    let stats = pool.stats().await.unwrap();
    let json = serde_json::to_value(&stats).unwrap();
    let p50 = stats.bus.lag_p50.unwrap();
    assert_eq!(json["bus"]["lag_p50_us"], Value::from(p50.as_micros() as u64));
    assert!(json["bus"]["lag_p99_us"].is_u64(), "{json}");
    assert!(!has_secs_nanos(&json), "{json}");
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// `counters()` has every figure of `stats()` with the same value, lists no
/// keys, and counts the cooling keys `stats()` lists.
#[tokio::test(start_paused = true)]
async fn counters_agree_with_stats_without_the_key_lists() {
    let c = Counters::new();
    let pool = builder(&c).restart_policy(cool_at_once()).spawn().await.unwrap();
    for key in ["a", "b", "c"] {
        drop(
            pool.get_or_create(key, h(1), factory(&c, key, h(1), Duration::ZERO))
                .await
                .unwrap(),
        );
    }
    let _lease = pool
        .get_or_create("a", h(1), factory(&c, "a", h(1), Duration::ZERO))
        .await
        .unwrap();
    pool.invalidate("b").await.unwrap();
    pool.get_or_create("down", h(1), failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    eventually("the cooling key is listed", async || {
        pool.stats().await.unwrap().cooling_keys.len() == 1
    })
    .await;

    let stats = serde_json::to_value(pool.stats().await.unwrap()).unwrap();
    let counters = serde_json::to_value(pool.counters().await.unwrap()).unwrap();
    let (stats, counters) = (stats.as_object().unwrap(), counters.as_object().unwrap());
    for (field, value) in stats {
        match field.as_str() {
            "keys" => assert!(!counters.contains_key("keys")),
            "cooling_keys" => assert_eq!(counters["cooling"], Value::from(value.as_array().unwrap().len())),
            _ => assert_eq!(counters.get(field), Some(value), "field {field}"),
        }
    }
    assert_eq!(counters["size"], Value::from(2));
    assert_eq!(counters["hits"], Value::from(1));
    assert_eq!(counters["cooling"], Value::from(1));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// `Counters` is a plain value to hand to another thread or task (checked
/// at compile time).
#[test]
fn counters_are_send_sync_clone() {
    fn assert_value<X: Send + Sync + Clone + serde::Serialize + 'static>() {}
    assert_value::<warmpool::Counters>();
    assert_value::<warmpool::Stats>();
}

/// An instance whose drop blocks its thread for a while: keeps the
/// disposer (which drops instances that have no dispose hook) busy.
struct SlowDrop(Duration);

impl Drop for SlowDrop {
    fn drop(&mut self) {
        std::thread::sleep(self.0);
    }
}

/// `builds_in_flight` counts factory calls under way, exactly: once a
/// caller got the instance its build made, the gauge is back at 0, even
/// while the disposer is busy with something else. Real threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_in_flight_is_zero_once_the_build_answered_while_the_disposer_is_busy() {
    let limit = Duration::from_secs(10);
    let pool: warmpool::Pool<SlowDrop> = warmpool::Pool::builder().spawn().await.unwrap();
    for round in 0..5 {
        let slow = format!("slow{round}");
        let lease = bounded(
            limit,
            "build",
            pool.get_or_create(&slow, h(1), || async {
                Ok::<_, std::io::Error>(SlowDrop(Duration::from_millis(300)))
            }),
        )
        .await
        .unwrap();
        drop(lease);
        // The disposer now drops it, blocking for 300 ms.
        assert!(bounded(limit, "invalidate", pool.invalidate(&slow)).await.unwrap());
        let fast = format!("fast{round}");
        let lease = bounded(
            limit,
            "build",
            pool.get_or_create(&fast, h(1), || async {
                Ok::<_, std::io::Error>(SlowDrop(Duration::ZERO))
            }),
        )
        .await
        .unwrap();
        let counters = bounded(limit, "counters", pool.counters()).await.unwrap();
        assert_eq!(
            counters.builds_in_flight, 0,
            "round {round}: no factory call is under way"
        );
        drop(lease);
    }
    bounded(limit, "shutdown", pool.shutdown(limit)).await.unwrap();
}
