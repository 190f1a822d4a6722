#![cfg(feature = "redis")]
//! The Redis pub/sub adapter against a real Redis on 127.0.0.1:6379: two
//! pools as two service instances, echoes, malformed, forged and replayed
//! messages, gaps, a storm of invalidations, and a connection killed from the
//! server side. Every test takes `SERIAL` because the kill test kills every
//! pub/sub client on the server.
// The std mutex guard is held across awaits on purpose: it serializes whole
// tests (each on its own runtime), so no task ever waits on it.
#![allow(clippy::await_holding_lock)]

mod common;
use common::bus::*;
use common::*;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;
use warmpool::Pool;
use warmpool::bus::redis::{RedisBus, RedisPublisher};
use warmpool::bus::{ListenOptions, Recovery, Scope, SigningKey, Stamper, new_origin};

const ADDR: &str = "127.0.0.1:6379";
const URL: &str = "redis://127.0.0.1:6379";
const HOW_TO_START: &str = "start one with `redis-server --bind 127.0.0.1 --port 6379 --daemonize yes`";

static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes the tests of this file (`CLIENT KILL TYPE pubsub` hits every
/// subscriber on the server); survives a test that panicked holding it.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Panics loudly, naming the address, when Redis is not reachable.
fn require_redis() {
    let addr = ADDR.parse().expect("valid socket address");
    if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        panic!("Redis is not reachable at {ADDR} ({e}); these tests need it: {HOW_TO_START}");
    }
}

/// A fresh channel name, so tests never see each other's messages.
fn channel(test: &str) -> String {
    format!("warmpool-test:{test}:{:016x}", fastrand::u64(..))
}

fn bus(channel: &str) -> RedisBus {
    require_redis();
    RedisBus::new(URL, channel).unwrap_or_else(|e| panic!("bad Redis URL {URL}: {e}"))
}

async fn attach(bus: &RedisBus, pool: &Pool<Client>, options: ListenOptions) -> JoinHandle<()> {
    bus.attach(pool, options)
        .await
        .unwrap_or_else(|e| panic!("cannot subscribe on Redis at {ADDR} ({e}); {HOW_TO_START}"))
}

async fn publisher(bus: &RedisBus, origin: &str, key: Option<SigningKey>) -> RedisPublisher {
    bus.publisher(origin, key)
        .await
        .unwrap_or_else(|e| panic!("cannot connect a publisher to Redis at {ADDR} ({e}); {HOW_TO_START}"))
}

/// A key invalidation published by instance A retires that key (only) in instance B, which builds it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_invalidation_reaches_the_other_instance() {
    let _serial = serial();
    let channel = channel("key");
    let (bus_a, bus_b) = (bus(&channel), bus(&channel));
    let (ca, cb) = (Counters::new(), Counters::new());
    let a = builder(&ca).spawn().await.unwrap();
    let b = builder(&cb).spawn().await.unwrap();
    let (oa, ob) = (new_origin("a"), new_origin("b"));
    let la = attach(&bus_a, &a, options(&oa)).await;
    let lb = attach(&bus_b, &b, options(&ob)).await;
    warm(&b, &cb, "acme:openai").await;
    warm(&b, &cb, "globex:openai").await;
    assert_eq!(cb.builds(), 2);

    let pa = publisher(&bus_a, &oa, None).await;
    let delivered = pa.publish(Scope::Key("acme:openai".into())).await.unwrap();
    assert_eq!(delivered, 2, "both listeners are subscribed to the channel");

    wait_stats(&b, "B applied the invalidation; only globex:openai left", WAIT, |s| {
        s.bus.applied == 1 && s.keys == ["globex:openai"]
    })
    .await;
    assert_eq!(invalidated(&b, 1).await, 1);
    let stats_a = wait_stats(&a, "A ignored its own echo", WAIT, |s| s.bus.echoes_ignored == 1).await;
    assert_eq!(stats_a.bus.applied, 0);

    warm(&b, &cb, "acme:openai").await;
    assert_eq!(cb.builds(), 3, "the invalidated key is built again");
    warm(&b, &cb, "globex:openai").await;
    assert_eq!(cb.builds(), 3, "the other key is still warm");

    shutdown_and_join(&a, la).await;
    shutdown_and_join(&b, lb).await;
}

/// A prefix invalidation retires exactly the keys that start with the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_invalidation_retires_only_keys_under_it() {
    let _serial = serial();
    let channel = channel("prefix");
    let bus = bus(&channel);
    let c = Counters::new();
    let b = builder(&c).spawn().await.unwrap();
    let lb = attach(&bus, &b, options(&new_origin("b"))).await;
    for key in ["acme:anthropic", "acme:openai", "acmex:openai", "globex:openai"] {
        warm(&b, &c, key).await;
    }
    let pa = publisher(&bus, &new_origin("a"), None).await;
    pa.publish(Scope::Prefix("acme:".into())).await.unwrap();
    wait_stats(&b, "prefix applied; acmex:openai and globex:openai left", WAIT, |s| {
        s.bus.applied == 1 && s.keys == ["acmex:openai", "globex:openai"]
    })
    .await;
    assert_eq!(invalidated(&b, 2).await, 2);
    for key in ["acme:anthropic", "acme:openai", "acmex:openai", "globex:openai"] {
        warm(&b, &c, key).await;
    }
    assert_eq!(c.builds(), 6, "exactly the two acme: keys are built again");
    shutdown_and_join(&b, lb).await;
}

/// A pool's own publications come back as echoes and are ignored, not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_echoes_are_ignored() {
    let _serial = serial();
    let channel = channel("echo");
    let bus = bus(&channel);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let origin = new_origin("self");
    let listener = attach(&bus, &pool, options(&origin)).await;
    warm(&pool, &c, "acme:openai").await;
    let own = publisher(&bus, &origin, None).await;
    assert_eq!(own.publish(Scope::Key("acme:openai".into())).await.unwrap(), 1);
    assert_eq!(own.publish(Scope::All).await.unwrap(), 1);
    let stats = wait_stats(&pool, "two echoes ignored", WAIT, |s| s.bus.echoes_ignored == 2).await;
    assert_eq!(stats.bus.applied, 0);
    assert_eq!(stats.retirements.invalidated, 0);
    assert_eq!(stats.keys, vec!["acme:openai".to_string()]);
    warm(&pool, &c, "acme:openai").await;
    assert_eq!(c.builds(), 1, "the key is still warm");
    shutdown_and_join(&pool, listener).await;
}

/// Malformed messages are counted, never applied, and valid messages after them still are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_counted_and_skipped() {
    let _serial = serial();
    let channel = channel("malformed");
    let bus = bus(&channel);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = attach(&bus, &pool, options(&new_origin("me"))).await;
    warm(&pool, &c, "keep").await;
    warm(&pool, &c, "k").await;
    let peer = publisher(&bus, &new_origin("peer"), None).await;
    peer.publish_raw(b"not json".to_vec()).await.unwrap();
    peer.publish_raw(br#"{"v":1,"origin":"x","seq":1,"ts_us":0,"scope":"shard","target":"keep"}"#.to_vec())
        .await
        .unwrap();
    peer.publish_raw(br#"{"v":1,"origin":"x","seq":2,"ts_us":0,"scope":"key"}"#.to_vec())
        .await
        .unwrap();
    peer.publish(Scope::Key("k".into())).await.unwrap();
    // Redis delivers in publish order: once the valid one is applied, the
    // malformed ones have been handled.
    let stats = wait_stats(&pool, "the valid message applied; only `keep` left", WAIT, |s| {
        s.bus.applied == 1 && s.keys == ["keep"]
    })
    .await;
    assert_eq!(stats.bus.malformed, 3);
    assert_eq!(stats.bus.rejected, 0);
    assert_eq!(invalidated(&pool, 1).await, 1);
    warm(&pool, &c, "keep").await;
    assert_eq!(c.builds(), 2, "no malformed message retired `keep`");
    shutdown_and_join(&pool, listener).await;
}

/// With a signing key, unsigned and wrongly signed messages are rejected; a properly signed one is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_badly_signed_messages_are_rejected() {
    let _serial = serial();
    let channel = channel("signing");
    let bus = bus(&channel);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let opts = ListenOptions {
        origin: new_origin("me"),
        signing_key: Some(SigningKey::new(b"k".to_vec())),
        ..Default::default()
    };
    let listener = attach(&bus, &pool, opts).await;
    warm(&pool, &c, "keep").await;
    warm(&pool, &c, "k").await;
    let unsigned = publisher(&bus, &new_origin("unsigned"), None).await;
    let forger = publisher(&bus, &new_origin("forger"), Some(SigningKey::new(b"other".to_vec()))).await;
    let friend = publisher(&bus, &new_origin("friend"), Some(SigningKey::new(b"k".to_vec()))).await;
    unsigned.publish(Scope::Key("keep".into())).await.unwrap();
    forger.publish(Scope::All).await.unwrap();
    friend.publish(Scope::Key("k".into())).await.unwrap();
    let stats = wait_stats(&pool, "the signed message applied; only `keep` left", WAIT, |s| {
        s.bus.applied == 1 && s.keys == ["keep"]
    })
    .await;
    assert_eq!(stats.bus.rejected, 2);
    assert_eq!(stats.bus.malformed, 0);
    assert_eq!(invalidated(&pool, 1).await, 1);
    warm(&pool, &c, "keep").await;
    assert_eq!(c.builds(), 2, "no rejected message retired `keep`");
    shutdown_and_join(&pool, listener).await;
}

/// The same signed bytes published twice are applied once; the copy counts as a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_message_is_applied_once() {
    let _serial = serial();
    let channel = channel("replay");
    let bus = bus(&channel);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let key = SigningKey::new(b"k".to_vec());
    let opts = ListenOptions {
        origin: new_origin("me"),
        signing_key: Some(key.clone()),
        ..Default::default()
    };
    let listener = attach(&bus, &pool, opts).await;
    warm(&pool, &c, "acme:openai").await;
    let stamper = Stamper::new(new_origin("peer"), Some(key));
    let bytes = stamper.stamp(Scope::Key("acme:openai".into()));
    let raw = publisher(&bus, &new_origin("wire"), None).await;
    raw.publish_raw(bytes.clone()).await.unwrap();
    raw.publish_raw(bytes).await.unwrap();
    let stats = wait_stats(&pool, "one applied, one replay", WAIT, |s| {
        s.bus.applied + s.bus.replayed == 2
    })
    .await;
    assert_eq!((stats.bus.applied, stats.bus.replayed), (1, 1));
    assert_eq!(stats.bus.gaps, 0);
    assert_eq!(invalidated(&pool, 1).await, 1);
    shutdown_and_join(&pool, listener).await;
}

/// A gap in an origin's sequence is counted and its FlushAll recovery also retires an unrelated warm key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_gap_triggers_flush_all_recovery() {
    let _serial = serial();
    let channel = channel("gap");
    let bus = bus(&channel);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let opts = ListenOptions {
        origin: new_origin("me"),
        recovery: Recovery::FlushAll,
        ..Default::default()
    };
    let listener = attach(&bus, &pool, opts).await;
    warm(&pool, &c, "gap:first").await;
    warm(&pool, &c, "unrelated").await;
    let stamper = Stamper::new(new_origin("peer"), None);
    let first = stamper.stamp(Scope::Key("gap:first".into()));
    let _lost = stamper.stamp(Scope::Key("gap:lost".into()));
    let third = stamper.stamp(Scope::Key("gap:third".into()));
    let raw = publisher(&bus, &new_origin("wire"), None).await;
    raw.publish_raw(first).await.unwrap();
    raw.publish_raw(third).await.unwrap();
    let stats = wait_stats(&pool, "both messages applied; no key left", WAIT, |s| {
        s.bus.applied == 2 && s.keys.is_empty()
    })
    .await;
    assert_eq!(stats.bus.gaps, 1);
    assert!(stats.bus.recoveries >= 1, "recoveries: {}", stats.bus.recoveries);
    assert_eq!(stats.bus.reconnects, 0);
    // `gap:first` by the first message, `unrelated` by the recovery.
    assert_eq!(invalidated(&pool, 2).await, 2);
    warm(&pool, &c, "unrelated").await;
    assert_eq!(c.builds(), 3, "the flushed key is built again");
    shutdown_and_join(&pool, listener).await;
}

/// 10,000 invalidations published back to back are all applied, with no gap, replay or recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_10000_invalidations_all_applied() {
    const N: usize = 10_000;
    let _serial = serial();
    let channel = channel("storm");
    let bus = bus(&channel);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = attach(&bus, &pool, options(&new_origin("me"))).await;
    warm(&pool, &c, "k0").await;
    warm(&pool, &c, "k9999").await;
    warm(&pool, &c, "not-in-storm").await;
    let peer = publisher(&bus, &new_origin("peer"), None).await;
    for i in 0..N {
        let delivered = peer.publish(Scope::Key(format!("k{i}"))).await.unwrap();
        assert_eq!(delivered, 1, "message {i} reached the listener's subscription");
    }
    let stats = wait_stats(
        &pool,
        "all 10,000 applied; only not-in-storm left",
        Duration::from_secs(60),
        |s| s.bus.applied == N as u64 && s.keys == ["not-in-storm"],
    )
    .await;
    assert_eq!((stats.bus.gaps, stats.bus.replayed, stats.bus.recoveries), (0, 0, 0));
    assert_eq!(invalidated(&pool, 2).await, 2);
    assert!(stats.bus.lag_p99.is_some(), "lag was recorded");
    shutdown_and_join(&pool, listener).await;
}

/// After Redis kills the listener's connection it reconnects once, flushes, and applies later messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_kill_reconnects_and_recovers() {
    let _serial = serial();
    let channel = channel("kill");
    let bus = bus(&channel);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = attach(&bus, &pool, options(&new_origin("me"))).await;
    let peer = publisher(&bus, &new_origin("peer"), None).await;
    warm(&pool, &c, "warm:before").await;

    let admin = redis::Client::open(URL).unwrap_or_else(|e| panic!("bad Redis URL {URL}: {e}"));
    let mut admin = admin
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to Redis at {ADDR} ({e}); {HOW_TO_START}"));
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL TYPE pubsub");
    assert!(killed >= 1, "the listener's pub/sub connection was killed");

    let stats = wait_stats(&pool, "reconnected and recovered", WAIT, |s| {
        s.bus.reconnects >= 1 && s.bus.recoveries >= 1 && s.keys.is_empty()
    })
    .await;
    assert_eq!(stats.bus.reconnects, 1);
    assert_eq!(
        invalidated(&pool, 1).await,
        1,
        "the FlushAll recovery retired the warm key"
    );

    warm(&pool, &c, "warm:after").await;
    let delivered = peer.publish(Scope::Key("warm:after".into())).await.unwrap();
    assert_eq!(delivered, 1, "the listener is subscribed again");
    let stats = wait_stats(&pool, "message after the kill applied; no key left", WAIT, |s| {
        s.bus.applied == 1 && s.keys.is_empty()
    })
    .await;
    assert_eq!(invalidated(&pool, 2).await, 2);
    assert_eq!(c.builds(), 2);
    assert_eq!(stats.bus.reconnects, 1);
    shutdown_and_join(&pool, listener).await;
}
