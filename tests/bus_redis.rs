#![cfg(feature = "redis")]
//! What only the Redis transports have (the shared scenarios run in
//! `bus_transports.rs`): a pub/sub connection killed from the server side,
//! and transport errors that keep their cause. Needs Redis on 127.0.0.1:6379.
//! Real clock, every wait bounded.

mod common;
use common::bus::*;
use common::*;

use std::error::Error as _;

use warmpool::bus::redis::RedisBus;
use warmpool::bus::redis_streams::RedisStreamBus;
use warmpool::bus::{BusError, Scope, new_origin};

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
