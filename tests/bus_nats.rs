#![cfg(feature = "nats")]
//! The NATS adapter against a real NATS on 127.0.0.1:4222 (and, for the
//! restart test, a private `nats-server` child on a free port): two pools as
//! two service instances, echoes, malformed, forged and replayed messages,
//! gaps, a storm of invalidations, and a server restart.

mod common;
use common::bus::*;
use common::*;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use warmpool::Pool;
use warmpool::bus::nats::NatsBus;
use warmpool::bus::{ListenOptions, Recovery, Scope, SigningKey, Stamper, new_origin};

const ADDR: &str = "127.0.0.1:4222";
const URL: &str = "nats://127.0.0.1:4222";
const NATS_SERVER: &str = "/usr/sbin/nats-server";
const HOW_TO_START: &str = "start one with `/usr/sbin/nats-server -a 127.0.0.1 -p 4222 &`";

/// A fresh subject, so tests never see each other's messages.
fn subject(test: &str) -> String {
    format!("warmpool.test.{test}.{:016x}", fastrand::u64(..))
}

/// Connects to the shared NATS server, panicking loudly if it is not there.
async fn bus(subject: &str) -> NatsBus {
    connect(URL, ADDR, subject).await
}

async fn connect(url: &str, addr: &str, subject: &str) -> NatsBus {
    let socket = addr.parse().expect("valid socket address");
    if let Err(e) = std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(2)) {
        panic!("NATS is not reachable at {addr} ({e}); these tests need it: {HOW_TO_START}");
    }
    match tokio::time::timeout(WAIT, NatsBus::connect(url, subject)).await {
        Ok(Ok(bus)) => bus,
        Ok(Err(e)) => panic!("cannot connect to NATS at {addr} ({e}); {HOW_TO_START}"),
        Err(_) => panic!("connecting to NATS at {addr} took over {WAIT:?}; {HOW_TO_START}"),
    }
}

async fn attach(bus: &NatsBus, pool: &Pool<Client>, options: ListenOptions) -> JoinHandle<()> {
    bus.attach(pool, options)
        .await
        .unwrap_or_else(|e| panic!("cannot subscribe on NATS ({e}); {HOW_TO_START}"))
}

/// A private `nats-server` child process; killed when dropped, so a failing
/// test does not leave it behind.
struct PrivateNats {
    port: u16,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts a server on a free port of 127.0.0.1 and waits until it accepts TCP.
    async fn start() -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free local port")
            .port();
        let mut server = PrivateNats { port, child: None };
        server.spawn().await;
        server
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NATS_SERVER} on port {} ({e})", self.port));
        self.child = Some(child);
        let addr = self.addr().parse().expect("valid socket address");
        let start = Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{NATS_SERVER} on {} exited at start: {status}", self.addr());
            }
            if start.elapsed() > WAIT {
                panic!("{NATS_SERVER} did not accept TCP on {} within {WAIT:?}", self.addr());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port.
    async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A key invalidation published by instance A retires that key (only) in instance B, which builds it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_invalidation_reaches_the_other_instance() {
    let subject = subject("key");
    let (bus_a, bus_b) = (bus(&subject).await, bus(&subject).await);
    let (ca, cb) = (Counters::new(), Counters::new());
    let a = builder(&ca).spawn().await.unwrap();
    let b = builder(&cb).spawn().await.unwrap();
    let (oa, ob) = (new_origin("a"), new_origin("b"));
    let la = attach(&bus_a, &a, options(&oa)).await;
    let lb = attach(&bus_b, &b, options(&ob)).await;
    warm(&b, &cb, "acme:openai").await;
    warm(&b, &cb, "globex:openai").await;
    assert_eq!(cb.builds(), 2);

    let pa = bus_a.publisher(&oa, None);
    pa.publish(Scope::Key("acme:openai".into())).await.unwrap();

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
    let subject = subject("prefix");
    let bus = bus(&subject).await;
    let c = Counters::new();
    let b = builder(&c).spawn().await.unwrap();
    let lb = attach(&bus, &b, options(&new_origin("b"))).await;
    for key in ["acme:anthropic", "acme:openai", "acmex:openai", "globex:openai"] {
        warm(&b, &c, key).await;
    }
    bus.publisher(new_origin("a"), None)
        .publish(Scope::Prefix("acme:".into()))
        .await
        .unwrap();
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
    let subject = subject("echo");
    let bus = bus(&subject).await;
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let origin = new_origin("self");
    let listener = attach(&bus, &pool, options(&origin)).await;
    warm(&pool, &c, "acme:openai").await;
    let own = bus.publisher(&origin, None);
    own.publish(Scope::Key("acme:openai".into())).await.unwrap();
    own.publish(Scope::All).await.unwrap();
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
    let subject = subject("malformed");
    let bus = bus(&subject).await;
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = attach(&bus, &pool, options(&new_origin("me"))).await;
    warm(&pool, &c, "keep").await;
    warm(&pool, &c, "k").await;
    let peer = bus.publisher(new_origin("peer"), None);
    peer.publish_raw(b"not json".to_vec()).await.unwrap();
    peer.publish_raw(br#"{"v":1,"origin":"x","seq":1,"ts_us":0,"scope":"shard","target":"keep"}"#.to_vec())
        .await
        .unwrap();
    peer.publish_raw(br#"{"v":1,"origin":"x","seq":2,"ts_us":0,"scope":"key"}"#.to_vec())
        .await
        .unwrap();
    peer.publish(Scope::Key("k".into())).await.unwrap();
    // NATS delivers one publisher's messages in order: once the valid one is
    // applied, the malformed ones have been handled.
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
    let subject = subject("signing");
    let bus = bus(&subject).await;
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
    let unsigned = bus.publisher(new_origin("unsigned"), None);
    let forger = bus.publisher(new_origin("forger"), Some(SigningKey::new(b"other".to_vec())));
    let friend = bus.publisher(new_origin("friend"), Some(SigningKey::new(b"k".to_vec())));
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
    let subject = subject("replay");
    let bus = bus(&subject).await;
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
    let raw = bus.publisher(new_origin("wire"), None);
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
    let subject = subject("gap");
    let bus = bus(&subject).await;
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
    let raw = bus.publisher(new_origin("wire"), None);
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
    let subject = subject("storm");
    let (listen_bus, publish_bus) = (bus(&subject).await, bus(&subject).await);
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = attach(&listen_bus, &pool, options(&new_origin("me"))).await;
    warm(&pool, &c, "k0").await;
    warm(&pool, &c, "k9999").await;
    warm(&pool, &c, "not-in-storm").await;
    let peer = publish_bus.publisher(new_origin("peer"), None);
    for i in 0..N {
        peer.publish(Scope::Key(format!("k{i}"))).await.unwrap();
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

/// After a NATS server restart the listener records a reconnect, flushes, and applies later messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_reconnects_and_recovers() {
    let mut server = PrivateNats::start().await;
    let subject = subject("restart");
    let listen_bus = connect(&server.url(), &server.addr(), &subject).await;
    let publish_bus = connect(&server.url(), &server.addr(), &subject).await;
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = attach(&listen_bus, &pool, options(&new_origin("me"))).await;
    let peer = publish_bus.publisher(new_origin("peer"), None);
    warm(&pool, &c, "warm:before").await;
    peer.publish(Scope::Key("not-resident".into())).await.unwrap();
    let stats = wait_stats(&pool, "a message before the restart applied", WAIT, |s| {
        s.bus.applied == 1
    })
    .await;
    assert_eq!(stats.keys, vec!["warm:before".to_string()]);

    server.restart().await;

    wait_stats(&pool, "reconnected and recovered", WAIT, |s| {
        s.bus.reconnects >= 1 && s.bus.recoveries >= 1 && s.keys.is_empty()
    })
    .await;
    assert_eq!(
        invalidated(&pool, 1).await,
        1,
        "the FlushAll recovery retired the warm key"
    );

    warm(&pool, &c, "warm:after").await;
    tokio::time::timeout(WAIT, peer.publish(Scope::Key("warm:after".into())))
        .await
        .expect("publish after the restart finished")
        .expect("publish after the restart succeeded");
    let stats = wait_stats(&pool, "message after the restart applied; no key left", WAIT, |s| {
        s.bus.applied == 2 && s.keys.is_empty()
    })
    .await;
    assert_eq!(invalidated(&pool, 2).await, 2);
    assert_eq!(c.builds(), 2);
    assert_eq!(stats.bus.gaps, 0);
    shutdown_and_join(&pool, listener).await;
    drop(server);
}

/// A message published from another connection right after `attach` returns is never lost (300 tries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_returns_once_the_subscription_is_in_place() {
    const TRIES: usize = 300;
    let subject = subject("attach");
    let (listen_bus, publish_bus) = (bus(&subject).await, bus(&subject).await);
    let mut lost = Vec::new();
    let mut listeners = Vec::new();
    for i in 0..TRIES {
        let c = Counters::new();
        let pool = builder(&c).spawn().await.unwrap();
        let listener = attach(&listen_bus, &pool, options(&new_origin("me"))).await;
        publish_bus
            .publisher(new_origin("peer"), None)
            .publish(Scope::Key("anything".into()))
            .await
            .unwrap();
        let start = Instant::now();
        let mut applied = 0;
        while applied == 0 && start.elapsed() < Duration::from_secs(2) {
            applied = pool.stats().await.unwrap().bus.applied;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if applied == 0 {
            lost.push(i);
        }
        pool.shutdown(Duration::from_secs(5)).await.unwrap();
        listeners.push(listener);
    }
    assert!(
        lost.is_empty(),
        "{} of {TRIES} messages published right after `attach` returned were lost (tries {lost:?}): \
         the subscription was not yet in place on the server",
        lost.len()
    );
    wait_until("every listener ended after its pool shut down", WAIT, || {
        listeners.iter().all(JoinHandle::is_finished)
    })
    .await;
}
