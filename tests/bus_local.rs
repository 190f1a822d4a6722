//! The embedded event bus and the listener logic every transport shares:
//! two pools in one process, echoes, malformed, forged, stale and replayed
//! messages, gaps, restarted publishers, lag recovery, and listeners that
//! end with their pool. Paused clock: no real waiting.

mod common;
use common::bus::{key, options, shutdown_and_join, wait_stats, warm};
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use warmpool::bus::{
    BusError, BusEvent, Invalidation, ListenOptions, LocalBus, Recovery, Scope, SigningKey, Stamper, new_origin,
};

fn signed(origin: &str, key: &SigningKey) -> ListenOptions {
    ListenOptions {
        signing_key: Some(key.clone()),
        ..ListenOptions::new(origin)
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
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
    publisher.publish(Scope::Key("acme:openai".into())).await.unwrap();
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

/// `Publisher::invalidate` retires the key in the publisher's own pool (whose
/// listener ignores the echo) and in the other instance, in one call.
#[tokio::test(start_paused = true)]
async fn invalidate_retires_here_and_everywhere() {
    let bus = LocalBus::new(64);
    let (ca, cb) = (Counters::new(), Counters::new());
    let a = builder(&ca).spawn().await.unwrap();
    let b = builder(&cb).spawn().await.unwrap();
    let (oa, ob) = (new_origin("a"), new_origin("b"));
    bus.attach(&a, options(&oa));
    bus.attach(&b, options(&ob));
    warm(&a, &ca, "acme:openai").await;
    warm(&b, &cb, "acme:openai").await;
    let retired = bus
        .publisher(&oa, None)
        .invalidate(&a, Scope::Key("acme:openai".into()))
        .await
        .unwrap();
    assert_eq!(retired, 1, "retired in A by the call itself");
    assert!(a.stats().await.unwrap().keys.is_empty());
    eventually("b applied it", async || b.stats().await.unwrap().keys.is_empty()).await;
    eventually("a ignored its echo", async || {
        a.stats().await.unwrap().bus.echoes_ignored == 1
    })
    .await;
}

/// Malformed, unsigned and badly signed messages are counted, never applied,
/// and the listener keeps applying good ones.
#[tokio::test(start_paused = true)]
async fn bad_messages_are_counted_not_applied() {
    let bus = LocalBus::new(64);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    bus.attach(&pool, signed("me", &key(1)));
    warm(&pool, &c, "k").await;
    bus.publish_raw(b"not json".to_vec());
    bus.publish_raw(br#"{"v":2,"origin":"x","epoch":1,"seq":1,"ts_us":0,"scope":"shard","target":"k"}"#.to_vec());
    bus.publish_raw(br#"{"v":3,"origin":"x","epoch":1,"seq":1,"ts_us":0,"scope":"all"}"#.to_vec());
    bus.publish_raw(br#"{"v":2,"origin":"x","seq":1,"ts_us":0,"scope":"all"}"#.to_vec());
    bus.publisher("unsigned", None)
        .publish(Scope::Key("k".into()))
        .await
        .unwrap();
    bus.publisher("forger", Some(key(2))).publish(Scope::All).await.unwrap();
    bus.publisher("friend", Some(key(1)))
        .publish(Scope::Key("other".into()))
        .await
        .unwrap();
    eventually("good message applied", async || {
        pool.stats().await.unwrap().bus.applied == 1
    })
    .await;
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.bus.malformed, 4);
    assert_eq!(stats.bus.rejected, 2);
    assert_eq!(stats.keys, vec!["k".to_string()], "no bad message retired anything");
    assert_eq!(stats.retirements.invalidated, 0);
}

/// Issue 13, 1a: a legitimately signed key invalidation whose key holds
/// newlines, re-cut along the version-1 separators into a flush-all from a
/// made-up origin, is not applied (version 1 is refused with a key set), and
/// the same trick on a version-2 message breaks its signature.
#[tokio::test(start_paused = true)]
async fn forged_flush_all_from_a_recut_signature_is_rejected() {
    let bus = LocalBus::new(64);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let k = key(1);
    bus.attach(&pool, signed("me", &k));
    warm(&pool, &c, "tenant:a").await;
    let ts = now_us();
    let legit = Invalidation {
        origin: "billing-1".into(),
        epoch: 1,
        seq: 1,
        ts_us: ts,
        scope: Scope::Key("x\n1\n2\nall\n".into()),
    };
    // Version 1: "v1\nbilling-1\n1\n{ts}\nkey\nx\n1\n2\nall\n" reads back as
    // origin "billing-1\n1\n{ts}\nkey\nx", seq 1, ts 2, scope all, no target.
    let v1: serde_json::Value = serde_json::from_slice(&legit.encode_v1(Some(&k))).unwrap();
    let forged_v1 = serde_json::json!({
        "v": 1, "origin": format!("billing-1\n1\n{ts}\nkey\nx"), "seq": 1, "ts_us": 2,
        "scope": "all", "sig": v1["sig"],
    });
    let v2: serde_json::Value = serde_json::from_slice(&legit.encode(Some(&k))).unwrap();
    let forged_v2 = serde_json::json!({
        "v": 2, "origin": format!("billing-1\n1\n1\n{ts}\nkey\nx"), "epoch": 1, "seq": 1, "ts_us": ts,
        "scope": "all", "sig": v2["sig"],
    });
    // What a version-1 listener did (no window then): it verifies and applies
    // the forgery as a flush-all. This is the hole the test guards.
    let old_style = builder(&c).spawn().await.unwrap();
    let old_options = ListenOptions {
        accept_signed_v1: true,
        max_age: Duration::ZERO,
        ..signed("old", &k)
    };
    old_style
        .listen(
            futures::stream::iter(vec![BusEvent::Message {
                payload: forged_v1.to_string().into_bytes(),
                stored_at_us: None,
            }]),
            old_options,
        )
        .await
        .unwrap();
    assert_eq!(
        old_style.stats().await.unwrap().bus.applied,
        1,
        "v1 signatures are forgeable"
    );
    for forged in [&forged_v1, &forged_v2] {
        assert!(Invalidation::decode(forged.to_string().as_bytes(), Some(&k)).is_err());
        bus.publish_raw(forged.to_string().into_bytes());
    }
    eventually("both forgeries rejected", async || {
        pool.stats().await.unwrap().bus.rejected == 2
    })
    .await;
    settle().await;
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.bus.applied, 0);
    assert_eq!(stats.keys, vec!["tenant:a".to_string()], "nothing was flushed");
}

/// The migration switch: with `accept_signed_v1`, a properly signed
/// version-1 message is applied; without it, it is rejected.
#[tokio::test(start_paused = true)]
async fn signed_v1_is_accepted_only_during_a_migration() {
    let bus = LocalBus::new(64);
    let c = Counters::new();
    let strict = builder(&c).spawn().await.unwrap();
    let migrating = builder(&c).spawn().await.unwrap();
    let k = key(1);
    bus.attach(&strict, signed("s", &k));
    bus.attach(
        &migrating,
        ListenOptions {
            accept_signed_v1: true,
            ..signed("m", &k)
        },
    );
    let message = Invalidation {
        origin: "old-publisher".into(),
        epoch: 0,
        seq: 1,
        ts_us: now_us(),
        scope: Scope::Key("k".into()),
    };
    bus.publish_raw(message.encode_v1(Some(&k)));
    eventually("applied while migrating", async || {
        migrating.stats().await.unwrap().bus.applied == 1
    })
    .await;
    eventually("rejected when strict", async || {
        strict.stats().await.unwrap().bus.rejected == 1
    })
    .await;
    assert!(matches!(
        Invalidation::decode(&message.encode_v1(Some(&k)), Some(&k)),
        Err(BusError::Legacy(_))
    ));
}

/// Issue 13, 1b: a captured, validly signed flush-all stamped an hour ago is
/// rejected by a fresh listener (counted as rejected); one stamped now is applied.
#[tokio::test(start_paused = true)]
async fn signed_message_outside_the_window_is_rejected() {
    let bus = LocalBus::new(64);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let k = key(1);
    bus.attach(&pool, signed("me", &k));
    warm(&pool, &c, "tenant:a").await;
    let hour = 3_600_000_000;
    for ts_us in [now_us() - hour, now_us() + hour] {
        let captured = Invalidation {
            origin: new_origin("billing"),
            epoch: 1,
            seq: 1,
            ts_us,
            scope: Scope::All,
        };
        bus.publish_raw(captured.encode(Some(&k)));
    }
    eventually("both rejected", async || pool.stats().await.unwrap().bus.rejected == 2).await;
    assert_eq!(pool.stats().await.unwrap().keys, vec!["tenant:a".to_string()]);
    bus.publisher(new_origin("billing"), Some(k))
        .publish(Scope::All)
        .await
        .unwrap();
    eventually("a fresh one applied", async || {
        pool.stats().await.unwrap().bus.applied == 1
    })
    .await;
}

/// Issue 13, 1c: an empty or short signing key is refused with an error that says why.
#[test]
fn short_signing_keys_are_refused() {
    for bytes in [Vec::new(), b"secret".to_vec(), vec![1u8; 31]] {
        let len = bytes.len();
        let err = SigningKey::new(bytes).unwrap_err();
        assert!(matches!(err, BusError::WeakKey { len: l } if l == len), "{err:?}");
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    }
}

/// Issue 13, 1d: a publisher restarted under the same origin (its sequence
/// starts again at 1) is recognised as a new run: its invalidation is
/// applied, the restart counted, and the recovery applied. Afterwards a copy
/// of a message from the old run is a replay (issue 20, 7e: its next message,
/// should it still be running, is applied).
#[tokio::test(start_paused = true)]
async fn restarted_publisher_reusing_its_origin_is_not_a_replay() {
    let bus = LocalBus::new(64);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    bus.attach(
        &pool,
        ListenOptions {
            recovery: Recovery::FlushPrefix("stale:".into()),
            ..options("me")
        },
    );
    for key in ["rotated", "stale:x", "other"] {
        warm(&pool, &c, key).await;
    }
    let mut before = Stamper::new("billing-1", None);
    let first = before.stamp(Scope::Key("n0".into()));
    bus.publish_raw(first.clone());
    for i in 1..5 {
        bus.publish_raw(before.stamp(Scope::Key(format!("n{i}"))));
    }
    eventually("first run applied", async || {
        pool.stats().await.unwrap().bus.applied == 5
    })
    .await;
    let after = bus.publisher("billing-1", None); // same origin, sequence from 1
    after.publish(Scope::Key("rotated".into())).await.unwrap();
    eventually("the rotation applied", async || {
        pool.stats().await.unwrap().bus.applied == 6
    })
    .await;
    let stats = pool.stats().await.unwrap();
    assert_eq!(
        (stats.bus.replayed, stats.bus.publisher_restarts, stats.bus.recoveries),
        (0, 1, 1)
    );
    assert_eq!(
        stats.keys,
        vec!["other".to_string()],
        "rotated by message, stale:x by recovery"
    );
    // A copy of the old run's first message arriving now is a replay.
    bus.publish_raw(first);
    eventually("old run's message ignored", async || {
        pool.stats().await.unwrap().bus.replayed == 1
    })
    .await;
    bus.publish_raw(before.stamp(Scope::Key("other".into())));
    eventually("the old run's next message applied", async || {
        pool.stats().await.unwrap().bus.applied == 7
    })
    .await;
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.bus.publisher_restarts, stats.bus.recoveries), (1, 1));
}

/// A replayed message is ignored; a gap in an origin's sequence triggers the
/// recovery flush (here of one prefix).
#[tokio::test(start_paused = true)]
async fn replays_ignored_and_gaps_recover() {
    let bus = LocalBus::new(64);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let opts = ListenOptions {
        recovery: Recovery::FlushPrefix("acme:".into()),
        ..options("me")
    };
    bus.attach(&pool, opts);
    for key in ["acme:a", "acme:b", "globex:a", "x"] {
        warm(&pool, &c, key).await;
    }
    let mut stamper = Stamper::new("peer", None);
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

/// A listener that falls behind the bus's buffer counts the loss and
/// recovers by flushing everything.
#[tokio::test(start_paused = true)]
async fn lagging_listener_flushes() {
    let bus = LocalBus::new(2);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    bus.attach(&pool, options("me"));
    warm(&pool, &c, "keep-me?").await;
    // No await in between: the listener cannot run, so it misses some.
    for i in 0..10 {
        let bytes = Stamper::new(new_origin("peer"), None).stamp(Scope::Key(format!("k{i}")));
        bus.publish_raw(bytes);
    }
    eventually("recovered", async || pool.stats().await.unwrap().bus.recoveries == 1).await;
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.bus.lost, stats.bus.reconnects), (1, 0));
    assert!(stats.keys.is_empty(), "the recovery flushed the warm key");
}

/// `Pool::listen` applies a stream of events from a transport of one's own,
/// and the task ends with the stream; a reconnect there recovers.
#[tokio::test(start_paused = true)]
async fn listen_applies_a_stream() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    for key in ["t1:a", "t1:b", "t2:a"] {
        warm(&pool, &c, key).await;
    }
    let message = |origin: &str, scope| BusEvent::Message {
        payload: Stamper::new(origin, None).stamp(scope),
        stored_at_us: None,
    };
    let events = vec![
        message("p", Scope::Prefix("t1:".into())),
        message("me", Scope::All),
        BusEvent::Disconnected,
    ];
    let task = pool.listen(futures::stream::iter(events), options("me"));
    task.await.unwrap();
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.keys, vec!["t2:a".to_string()]);
    assert_eq!((stats.bus.applied, stats.bus.echoes_ignored), (1, 1));
    let task = pool.listen(futures::stream::iter(vec![BusEvent::Reconnected]), options("me"));
    task.await.unwrap();
    let stats = pool.stats().await.unwrap();
    assert_eq!((stats.bus.reconnects, stats.bus.recoveries), (1, 1));
    assert!(stats.keys.is_empty());
}

/// A bus listener ends once its pool has shut down, with no message needed.
#[tokio::test(start_paused = true)]
async fn listener_ends_when_the_pool_shuts_down() {
    let bus = LocalBus::new(8);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let task = bus.attach(&pool, options("me"));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("listener ended without a message")
        .unwrap();
}

/// Issue 13, 1f: a listener on a quiet bus ends promptly when its pool's last
/// handle is dropped (it used to wait for the next message, keeping a task and
/// the pool's counters alive).
#[tokio::test(start_paused = true)]
async fn listener_ends_when_the_pool_is_dropped_on_a_quiet_bus() {
    let bus = LocalBus::new(8);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let tasks: Vec<_> = (0..3).map(|_| bus.attach(&pool, options("me"))).collect();
    drop(pool);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("listener ended without a message")
            .unwrap();
    }
    assert_eq!(bus.publish_raw(b"x".to_vec()), 0, "no receiver left on the bus");
}

/// The bus's public types can be shared between tasks and threads.
#[test]
fn public_bus_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<LocalBus>();
    check::<warmpool::bus::LocalPublisher>();
    check::<ListenOptions>();
    check::<BusError>();
    check::<BusEvent>();
    check::<SigningKey>();
    check::<Stamper>();
    check::<warmpool::bus::BusStats>();
}

/// Issue 20, 1: 16 tasks sharing one publisher, 1,250 key invalidations each,
/// on real threads: all 20,000 are applied, none is taken for a replay, no
/// gap is counted and nothing is flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_tasks_sharing_one_publisher_lose_nothing() {
    const TASKS: usize = 16;
    const EACH: usize = 1_250;
    const N: u64 = (TASKS * EACH) as u64;
    // Room for every message: a listener falling behind the buffer would be
    // a loss of another kind (`lost`), not what this test is about.
    let bus = LocalBus::new(2 * N as usize);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = bus.attach(&pool, options("me"));
    warm(&pool, &c, "survivor").await;
    let publisher = Arc::new(bus.publisher(new_origin("peer"), None));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let publisher = publisher.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    publisher.publish(Scope::Key(format!("t{t}-{i}"))).await.unwrap();
                }
            })
        })
        .collect();
    bounded(Duration::from_secs(60), "16 publishing tasks", async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
    let published = started.elapsed();
    // Every message is either applied or dropped as a replay: wait for all.
    let stats = wait_stats(&pool, "all 20,000 handled", Duration::from_secs(60), |s| {
        s.bus.applied + s.bus.replayed == N
    })
    .await;
    println!(
        "LocalBus: 16 tasks x {EACH} through one publisher in {published:?} ({:.0}/s)",
        N as f64 / published.as_secs_f64()
    );
    let b = &stats.bus;
    assert_eq!((b.applied, b.replayed, b.gaps, b.recoveries, b.lost), (N, 0, 0, 0, 0));
    assert!(stats.keys.contains(&"survivor".to_string()), "nothing was flushed");
    shutdown_and_join(&pool, listener).await;
}

/// The sending end of a hand-fed listener: events pushed here reach
/// `Pool::listen` in order, so a test can act on the pool between them.
fn hand_fed(pool: &warmpool::Pool<Client>, options: ListenOptions) -> tokio::sync::mpsc::UnboundedSender<BusEvent> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|event| (event, rx)) });
    pool.listen(events, options);
    tx
}

fn message(payload: Vec<u8>) -> BusEvent {
    BusEvent::Message {
        payload,
        stored_at_us: None,
    }
}

/// Issue 20, 3: one loss, one recovery. After a reconnect's flush, the next
/// message of each origin that published while the listener was away
/// re-bases its sequence (no gap, no second flush); a copy of a message seen
/// before the reconnect is still a replay.
#[tokio::test(start_paused = true)]
async fn a_reconnect_recovers_once_not_again_at_the_next_message() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let events = hand_fed(&pool, options("me"));
    let (mut peer, mut other) = (Stamper::new("peer", None), Stamper::new("other", None));
    let first = peer.stamp(Scope::Key("a".into()));
    events.send(message(first.clone())).unwrap();
    events.send(message(other.stamp(Scope::Key("b".into())))).unwrap();
    eventually("both applied", async || pool.stats().await.unwrap().bus.applied == 2).await;
    events.send(BusEvent::Disconnected).unwrap();
    // Published while the listener was away: never delivered.
    let _lost = (peer.stamp(Scope::Key("x".into())), peer.stamp(Scope::Key("y".into())));
    let _lost = other.stamp(Scope::Key("z".into()));
    events.send(BusEvent::Reconnected).unwrap();
    eventually("the reconnect recovered", async || {
        pool.stats().await.unwrap().bus.recoveries == 1
    })
    .await;
    warm(&pool, &c, "survivor").await;
    events.send(message(peer.stamp(Scope::Key("c".into())))).unwrap();
    events.send(message(other.stamp(Scope::Key("d".into())))).unwrap();
    events.send(message(first)).unwrap();
    eventually("two more applied, one replay", async || {
        let b = pool.stats().await.unwrap().counters.bus;
        b.applied + b.replayed == 5
    })
    .await;
    settle().await;
    let stats = pool.stats().await.unwrap();
    let b = &stats.bus;
    assert_eq!((b.applied, b.replayed, b.reconnects), (4, 1, 1));
    assert_eq!((b.gaps, b.recoveries), (0, 1), "the one loss was recovered from once");
    assert_eq!(stats.keys, vec!["survivor".to_string()], "no second flush");
}

/// Issue 20, 7e: a publisher with a stable origin that restarts with a lower
/// epoch (its clock stepped back) is a new run: its signed messages are
/// applied, the restart is counted and recovered from once; copies of
/// messages from either run are still replays, and a captured message from
/// an unseen earlier run is refused when it is outside the time window.
#[tokio::test(start_paused = true)]
async fn a_publisher_whose_epoch_goes_backwards_is_a_new_run() {
    let bus = LocalBus::new(64);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let k = key(1);
    bus.attach(
        &pool,
        ListenOptions {
            recovery: Recovery::FlushPrefix("stale:".into()),
            ..signed("me", &k)
        },
    );
    for key in ["stale:x", "survivor"] {
        warm(&pool, &c, key).await;
    }
    let now = now_us();
    let at = |epoch: u64, seq: u64, ts_us: u64| {
        Invalidation {
            origin: "billing".into(),
            epoch,
            seq,
            ts_us,
            scope: Scope::Key(format!("e{epoch}-{seq}")),
        }
        .encode(Some(&k))
    };
    let (first_run, second_run) = (now, now - 60_000_000); // the clock stepped back a minute
    for seq in 1..=2 {
        bus.publish_raw(at(first_run, seq, now));
    }
    eventually("the first run applied", async || {
        pool.stats().await.unwrap().bus.applied == 2
    })
    .await;
    for seq in 1..=2 {
        bus.publish_raw(at(second_run, seq, now));
    }
    eventually("the second run applied", async || {
        pool.stats().await.unwrap().bus.applied == 4
    })
    .await;
    // Copies from both runs, then a capture from an earlier run an hour old.
    bus.publish_raw(at(first_run, 2, now));
    bus.publish_raw(at(second_run, 1, now));
    bus.publish_raw(at(second_run - 1, 1, now - 3_600_000_000));
    bus.publish_raw(at(second_run, 3, now));
    eventually("the second run's third applied", async || {
        pool.stats().await.unwrap().bus.applied == 5
    })
    .await;
    settle().await;
    let stats = pool.stats().await.unwrap();
    let b = &stats.bus;
    assert_eq!((b.applied, b.replayed, b.rejected), (5, 2, 1));
    assert_eq!((b.publisher_restarts, b.recoveries, b.gaps), (1, 1, 0));
    assert_eq!(stats.keys, vec!["survivor".to_string()], "stale:x by the one recovery");
}
