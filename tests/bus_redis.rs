#![cfg(feature = "redis")]
//! What only the Redis transports have (the shared scenarios run in
//! `bus_transports.rs`): a pub/sub connection killed from the server side,
//! transport errors that keep their cause, and stream entry ids, which
//! whoever writes an entry may choose (so they are no clock). Needs Redis on 127.0.0.1:6379.
//! Real clock, every wait bounded.

mod common;
use common::bus::*;
use common::*;

use std::error::Error as _;
use std::time::{Duration, Instant};

use warmpool::bus::redis::RedisBus;
use warmpool::bus::redis_streams::RedisStreamBus;
use warmpool::bus::{BusError, DEFAULT_MAX_AGE, Invalidation, ListenOptions, Scope, Stamper, new_origin};

const URL: &str = "redis://127.0.0.1:6379";
const HOW_TO_START: &str = "start one with `redis-server --bind 127.0.0.1 --port 6379 --daemonize yes`";

/// After Redis kills the listener's pub/sub connection it reconnects once,
/// flushes, and applies later messages. (`CLIENT KILL TYPE pubsub` hits every
/// subscriber on the server, which is why this is the only test here that
/// subscribes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_kill_reconnects_and_recovers() {
    require(REDIS_ADDR, "Redis", HOW_TO_START);
    let bus = RedisBus::new(URL, fresh("kill")).unwrap();
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = bus.attach(&pool, options(&new_origin("me"))).await.unwrap();
    let peer = bus.publisher(new_origin("peer"), None).await.unwrap();
    warm(&pool, &c, "warm:before").await;

    let admin = redis::Client::open(URL).unwrap();
    let mut admin = admin
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to Redis at {REDIS_ADDR} ({e}); {HOW_TO_START}"));
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
    peer.publish(Scope::Key("warm:after".into())).await.unwrap();
    wait_stats(&pool, "message after the kill applied; no key left", WAIT, |s| {
        s.bus.applied == 1 && s.keys.is_empty()
    })
    .await;
    assert_eq!(c.builds(), 2);
    shutdown_and_join(&pool, listener).await;
}

/// Issue 13, 3: a Redis transport error keeps the client's error as its
/// `source()` (it used to keep only its text).
#[tokio::test]
async fn transport_errors_keep_their_source() {
    // Nothing listens on port 1 of loopback.
    for result in [
        RedisBus::new("redis://127.0.0.1:1", "c")
            .unwrap()
            .publisher("o", None)
            .await
            .map(drop),
        RedisStreamBus::new("redis://127.0.0.1:1", "s", 10)
            .unwrap()
            .publisher("o", None)
            .await
            .map(drop),
    ] {
        let error = result.expect_err("no Redis on port 1");
        assert!(matches!(error, BusError::Transport { .. }), "{error:?}");
        let source = error.source().expect("the client's error is kept");
        assert!(source.downcast_ref::<redis::RedisError>().is_some(), "{source:?}");
    }
    let error = RedisBus::new("not a url", "c").unwrap_err();
    assert!(error.source().is_some(), "{error:?}");
}

/// A plain connection to the Redis under test, for writing what a writer
/// without the signing key could write.
async fn admin() -> redis::aio::MultiplexedConnection {
    require(REDIS_ADDR, "Redis", HOW_TO_START);
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to Redis at {REDIS_ADDR} ({e}); {HOW_TO_START}"))
}

/// `XADD stream id m payload`, as any writer of the stream can.
async fn xadd(admin: &mut redis::aio::MultiplexedConnection, stream: &str, id: &str, payload: &[u8]) {
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg(id)
        .arg("m")
        .arg(payload)
        .query_async(admin)
        .await
        .unwrap_or_else(|e| panic!("XADD {stream} {id}: {e}"));
}

async fn delete(admin: &mut redis::aio::MultiplexedConnection, stream: &str) {
    let _: i64 = redis::cmd("DEL").arg(stream).query_async(admin).await.unwrap();
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Listen options signing with `key(1)`, with a window of `max_age`.
fn signed_within(max_age: Duration) -> ListenOptions {
    ListenOptions {
        signing_key: Some(key(1)),
        max_age,
        ..options(&new_origin("me"))
    }
}

/// Issue 20, 2: a writer without the key adds one entry whose id is a day
/// ahead, so Redis numbers every later entry after it: the 100 signed
/// invalidations published afterwards are all applied (entry ids are not
/// taken for time), and the junk entry is counted as malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_id_forged_a_day_ahead_does_not_silence_signed_invalidations() {
    let mut admin = admin().await;
    let stream = fresh("ahead");
    let bus = RedisStreamBus::new(URL, &stream, 10_000).unwrap();
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = bus.attach(&pool, signed_within(DEFAULT_MAX_AGE)).await.unwrap();
    let a_day_ahead_ms = now_us() / 1_000 + 86_400_000;
    xadd(&mut admin, &stream, &format!("{a_day_ahead_ms}-0"), b"junk").await;
    let publisher = bus.publisher(new_origin("peer"), Some(key(1))).await.unwrap();
    for i in 0..100 {
        publisher.publish(Scope::Key(format!("k{i}"))).await.unwrap();
    }
    let stats = wait_stats(&pool, "the 100 signed invalidations handled", WAIT, |s| {
        s.bus.applied + s.bus.rejected == 100
    })
    .await;
    assert_eq!(
        (stats.bus.applied, stats.bus.rejected, stats.bus.malformed),
        (100, 0, 1)
    );
    shutdown_and_join(&pool, listener).await;
    delete(&mut admin, &stream).await;
}

/// Issue 20, 2: a signed flush-all captured an hour ago, written back into
/// the stream by a writer without the key under an id chosen to match its
/// time, is refused by a listener started after the capture; a fresh signed
/// invalidation after it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_message_under_a_chosen_old_id_is_refused() {
    let mut admin = admin().await;
    let stream = fresh("chosen-id");
    let bus = RedisStreamBus::new(URL, &stream, 10_000).unwrap();
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = bus.attach(&pool, signed_within(DEFAULT_MAX_AGE)).await.unwrap();
    warm(&pool, &c, "survivor").await;
    let an_hour_ago = now_us() - 3_600_000_000;
    let captured = Invalidation {
        origin: new_origin("billing"),
        epoch: an_hour_ago - 1_000_000,
        seq: 1,
        ts_us: an_hour_ago,
        scope: Scope::All,
    }
    .encode(Some(&key(1)));
    xadd(&mut admin, &stream, &format!("{}-1", an_hour_ago / 1_000), &captured).await;
    let publisher = bus.publisher(new_origin("peer"), Some(key(1))).await.unwrap();
    publisher.publish(Scope::Key("k".into())).await.unwrap();
    let stats = wait_stats(&pool, "both entries handled", WAIT, |s| {
        s.bus.applied + s.bus.rejected == 2
    })
    .await;
    assert_eq!((stats.bus.applied, stats.bus.rejected), (1, 1), "the copy refused");
    assert_eq!(stats.keys, ["survivor"], "nothing was flushed");
    shutdown_and_join(&pool, listener).await;
    delete(&mut admin, &stream).await;
}

/// Issue 20, 2: a signed listener with a 500 ms window, cut off for 2 s.
/// Catching up after its own disconnect it applies every invalidation
/// written meanwhile (older than the window by then, not older than the
/// outage plus the window), but refuses an hour-old capture written during
/// the outage; once caught up it judges by its own clock again and refuses a
/// message stamped during the outage but written only now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_after_an_outage_accepts_only_the_outage() {
    const SENT: u64 = 200;
    let mut admin = admin().await;
    let stream = fresh("catch-up");
    let proxy = Proxy::start(REDIS_ADDR).await;
    let listen_bus = RedisStreamBus::new(&format!("redis://{}", proxy.addr()), &stream, 10_000).unwrap();
    let bus = RedisStreamBus::new(URL, &stream, 10_000).unwrap();
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = listen_bus
        .attach(&pool, signed_within(Duration::from_millis(500)))
        .await
        .unwrap();
    warm(&pool, &c, "survivor").await;
    let publisher = bus.publisher(new_origin("peer"), Some(key(1))).await.unwrap();
    publisher.publish(Scope::Key("before".into())).await.unwrap();
    wait_stats(&pool, "the first message applied", WAIT, |s| s.bus.applied == 1).await;

    proxy.cut();
    let cut_at = Instant::now();
    let mut witness = Stamper::new(new_origin("witness"), Some(key(1)));
    let captured = Invalidation {
        origin: new_origin("billing"),
        epoch: 1,
        seq: 1,
        ts_us: now_us() - 3_600_000_000,
        scope: Scope::All,
    }
    .encode(Some(&key(1)));
    let mut withheld = Vec::new();
    for i in 0..SENT {
        publisher.publish(Scope::Key(format!("k{i}"))).await.unwrap();
        if i == SENT / 2 {
            xadd(&mut admin, &stream, "*", &witness.stamp(Scope::Key("w1".into()))).await;
            xadd(&mut admin, &stream, "*", &captured).await;
            // Stamped a second after the cut, withheld, written once the
            // listener is back.
            withheld = witness.stamp(Scope::Key("w2".into()));
        }
        let due = Duration::from_millis(10) * (i as u32 + 1);
        tokio::time::sleep(due.saturating_sub(cut_at.elapsed())).await;
    }
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(cut_at.elapsed())).await;
    assert_eq!(
        pool.stats().await.unwrap().bus.applied,
        1,
        "nothing arrived while cut off"
    );
    proxy.restore();

    let caught_up = 1 + SENT + 1;
    let stats = wait_stats(&pool, "the outage replayed", Duration::from_secs(30), |s| {
        s.bus.applied + s.bus.rejected == caught_up + 1
    })
    .await;
    assert_eq!(
        (stats.bus.applied, stats.bus.rejected),
        (caught_up, 1),
        "all but the capture"
    );
    xadd(&mut admin, &stream, "*", &withheld).await;
    publisher.publish(Scope::Key("after".into())).await.unwrap();
    let stats = wait_stats(&pool, "the withheld message and a fresh one handled", WAIT, |s| {
        s.bus.applied + s.bus.rejected == caught_up + 3
    })
    .await;
    let b = &stats.bus;
    assert_eq!((b.applied, b.rejected), (caught_up + 1, 2), "the withheld one refused");
    assert_eq!((b.lost, b.recoveries, b.replayed), (0, 0, 0));
    assert!(stats.keys.contains(&"survivor".to_string()), "nothing was flushed");
    shutdown_and_join(&pool, listener).await;
    delete(&mut admin, &stream).await;
}
