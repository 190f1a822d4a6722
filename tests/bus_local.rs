//! The embedded event bus and the listener logic every transport shares:
//! two pools in one process, echoes, malformed, forged and replayed
//! messages, gaps and lag recovery.

mod common;
use common::*;
use std::time::Duration;
use warmpool::bus::{Invalidation, ListenOptions, LocalBus, Recovery, Scope, SigningKey, Stamper, new_origin};

async fn warm(pool: &warmpool::Pool<Client>, c: &std::sync::Arc<Counters>, key: &str) {
    let lease = pool
        .get_or_create(key, h(1), factory(c, key, h(1), Duration::ZERO))
        .await
        .unwrap();
    drop(lease);
}

fn options(origin: &str) -> ListenOptions {
    ListenOptions {
        origin: origin.to_string(),
        ..Default::default()
    }
}

/// A rotation published by one instance invalidates the key in the other.
#[tokio::test(start_paused = true)]
async fn publish_invalidates_other_instance() {
    let bus = LocalBus::new(64);
    let (ca, cb) = (Counters::new(), Counters::new());
    let a = builder(&ca).spawn().await.unwrap();
    let b = builder(&cb).spawn().await.unwrap();
    let (oa, ob) = (new_origin("a"), new_origin("b"));
    bus.attach(&a, options(&oa));
    bus.attach(&b, options(&ob));
    warm(&b, &cb, "acme:openai").await;
    warm(&b, &cb, "globex:openai").await;
    let publisher = bus.publisher(&oa, None);
    assert_eq!(publisher.publish(Scope::Key("acme:openai".into())), 2);
    eventually("b applied the invalidation", async || {
        b.stats().await.unwrap().bus.applied == 1
    })
    .await;
    let stats = b.stats().await.unwrap();
    assert_eq!(stats.retirements.invalidated, 1);
    assert_eq!(stats.keys, vec!["globex:openai".to_string()]);
    // A's own listener saw its echo and ignored it.
    eventually("a ignored its echo", async || {
        a.stats().await.unwrap().bus.echoes_ignored == 1
    })
    .await;
    assert_eq!(a.stats().await.unwrap().bus.applied, 0);
    warm(&b, &cb, "acme:openai").await;
    assert_eq!(cb.builds(), 3, "the invalidated key was built again");
}

/// Malformed, unsigned and badly signed messages are counted, never applied,
/// and the listener keeps applying good ones.
#[tokio::test(start_paused = true)]
async fn bad_messages_are_counted_not_applied() {
    let bus = LocalBus::new(64);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let key = SigningKey::new(b"shared secret".to_vec());
    let opts = ListenOptions {
        origin: "me".into(),
        signing_key: Some(key.clone()),
        ..Default::default()
    };
    bus.attach(&pool, opts);
    warm(&pool, &c, "k").await;
    bus.publish_raw(b"not json".to_vec());
    bus.publish_raw(br#"{"v":1,"origin":"x","seq":1,"ts_us":0,"scope":"shard","target":"k"}"#.to_vec());
    bus.publish_raw(br#"{"v":2,"origin":"x","seq":1,"ts_us":0,"scope":"all"}"#.to_vec());
    bus.publisher("unsigned", None).publish(Scope::Key("k".into()));
    bus.publisher("forger", Some(SigningKey::new(b"guess".to_vec())))
        .publish(Scope::All);
    bus.publisher("friend", Some(key)).publish(Scope::Key("other".into()));
    eventually("good message applied", async || {
        pool.stats().await.unwrap().bus.applied == 1
    })
    .await;
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.bus.malformed, 3);
    assert_eq!(stats.bus.rejected, 2);
    assert_eq!(stats.keys, vec!["k".to_string()], "no bad message retired anything");
    assert_eq!(stats.retirements.invalidated, 0);
}

/// A replayed message is ignored; a gap in an origin's sequence triggers the
/// recovery flush (here of one prefix).
#[tokio::test(start_paused = true)]
async fn replays_ignored_and_gaps_recover() {
    let bus = LocalBus::new(64);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let opts = ListenOptions {
        origin: "me".into(),
        recovery: Recovery::FlushPrefix("acme:".into()),
        ..Default::default()
    };
    bus.attach(&pool, opts);
    for key in ["acme:a", "acme:b", "globex:a", "x"] {
        warm(&pool, &c, key).await;
    }
    let stamper = Stamper::new("peer", None);
    let first = stamper.stamp(Scope::Key("x".into()));
    let _lost = stamper.stamp(Scope::Key("nothing".into()));
    let third = stamper.stamp(Scope::Key("nothing-either".into()));
    bus.publish_raw(first.clone());
    bus.publish_raw(first);
    bus.publish_raw(third);
    eventually("two applied", async || pool.stats().await.unwrap().bus.applied == 2).await;
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.bus.replayed, 1);
    assert_eq!(stats.bus.gaps, 1);
    assert_eq!(stats.bus.recoveries, 1);
    assert_eq!(
        stats.keys,
        vec!["globex:a".to_string()],
        "x by message, acme:* by recovery"
    );
}

/// A listener that falls behind the bus's buffer recovers by flushing everything.
#[tokio::test(start_paused = true)]
async fn lagging_listener_flushes() {
    let bus = LocalBus::new(2);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    bus.attach(&pool, options("me"));
    warm(&pool, &c, "keep-me?").await;
    let publisher = bus.publisher("peer", None);
    // No await in between: the listener cannot run, so it misses some.
    for i in 0..10 {
        publisher.publish(Scope::Key(format!("k{i}")));
    }
    eventually("recovered", async || pool.stats().await.unwrap().bus.recoveries == 1).await;
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.bus.reconnects, 1);
    assert!(stats.keys.is_empty(), "the recovery flushed the warm key");
}

/// `Pool::listen` applies a stream of decoded invalidations, and the task
/// ends with the stream; it does not keep the pool alive.
#[tokio::test(start_paused = true)]
async fn listen_applies_a_stream() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    for key in ["t1:a", "t1:b", "t2:a"] {
        warm(&pool, &c, key).await;
    }
    let messages = vec![
        Invalidation {
            origin: "p".into(),
            seq: 1,
            ts_us: 0,
            scope: Scope::Prefix("t1:".into()),
        },
        Invalidation {
            origin: "me".into(),
            seq: 1,
            ts_us: 0,
            scope: Scope::All,
        },
    ];
    let task = pool.listen(futures::stream::iter(messages), options("me"));
    task.await.unwrap();
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.keys, vec!["t2:a".to_string()]);
    assert_eq!((stats.bus.applied, stats.bus.echoes_ignored), (1, 1));
}

/// A bus listener ends once its pool has shut down.
#[tokio::test(start_paused = true)]
async fn listener_ends_with_the_pool() {
    let bus = LocalBus::new(8);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let task = bus.attach(&pool, options("me"));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    bus.publisher("peer", None).publish(Scope::All);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("listener ended")
        .unwrap();
}
