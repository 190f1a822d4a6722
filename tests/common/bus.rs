//! The event-bus suite against real servers, once for every transport:
//! helpers (polling on the real clock with a bound, a listener ending after
//! shutdown, a TCP proxy that cuts a listener off its server), one fixture
//! per transport, the scenarios written once over [`Fixture`], and the
//! [`transport_suite!`] macro that instantiates them (`tests/bus_transports.rs`).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use warmpool::bus::{Invalidation, ListenOptions, Outbox, Publisher, Recovery, Scope, SigningKey, Stamper, new_origin};
use warmpool::{Pool, Stats};

use super::{Client, Counters, builder, factory, h};

/// The default bound for a condition to become true.
pub const WAIT: Duration = Duration::from_secs(10);

/// Redis on this machine.
pub const REDIS_ADDR: &str = "127.0.0.1:6379";
/// NATS with JetStream (`-js`) on this machine.
pub const NATS_ADDR: &str = "127.0.0.1:4222";

/// Listen options for an instance whose origin is `origin`.
pub fn options(origin: &str) -> ListenOptions {
    ListenOptions::new(origin)
}

/// A 32-byte signing key made of one repeated byte.
pub fn key(byte: u8) -> SigningKey {
    SigningKey::new(vec![byte; 32]).unwrap()
}

/// Builds (or hits) `key` and drops the lease at once.
pub async fn warm(pool: &Pool<Client>, c: &Arc<Counters>, key: &str) {
    let lease = pool
        .get_or_create(key, h(1), factory(c, key, h(1), Duration::ZERO))
        .await
        .unwrap();
    drop(lease);
}

/// Polls the pool's stats every 10 ms until `cond` holds, for at most
/// `limit`; returns the stats that satisfied it, or panics with `what` and
/// the last stats seen.
///
/// `Stats::keys` still lists an invalidated key until its key actor has
/// reported idle to the supervisor, a moment after the instance was retired,
/// so conditions on `keys` are waited for here rather than asserted once.
pub async fn wait_stats(pool: &Pool<Client>, what: &str, limit: Duration, cond: impl Fn(&Stats) -> bool) -> Stats {
    let start = Instant::now();
    loop {
        let stats = pool.stats().await.expect("pool is running");
        if cond(&stats) {
            return stats;
        }
        if start.elapsed() > limit {
            panic!("within {limit:?}: {what} never held; last stats: {stats:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `cond` every 10 ms for at most `limit`, panicking with `what`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            panic!("within {limit:?}: {what} never held");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Shuts the pool down and checks that its listener task ends.
pub async fn shutdown_and_join(pool: &Pool<Client>, listener: JoinHandle<()>) {
    pool.shutdown(Duration::from_secs(5)).await.expect("shutdown");
    wait_until("the listener task ended after shutdown", WAIT, || {
        listener.is_finished()
    })
    .await;
    listener.await.expect("listener task did not panic");
}

/// Waits (up to `WAIT`) until at least `n` invalidated retirements are
/// counted, and returns that count. Prefix and flush-all invalidations are
/// paced: their keys leave `Stats::keys` at once, but each retirement is
/// counted when its key actor handles it, a moment later.
pub async fn invalidated(pool: &Pool<Client>, n: u64) -> u64 {
    let what = format!("{n} invalidated retirement(s) counted");
    wait_stats(pool, &what, WAIT, |s| s.retirements.invalidated >= n)
        .await
        .retirements
        .invalidated
}

/// Panics loudly, naming the address, when nothing listens at `addr`.
pub fn require(addr: &str, what: &str, how_to_start: &str) {
    let socket = addr.parse().expect("valid socket address");
    if let Err(e) = std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(2)) {
        panic!("{what} is not reachable at {addr} ({e}); these tests need it: {how_to_start}");
    }
}

/// A loopback TCP proxy in front of a server: [`cut`](Proxy::cut) drops
/// every connection and refuses new ones until [`restore`](Proxy::restore),
/// which is what a network partition looks like to a client.
pub struct Proxy {
    addr: String,
    state: Arc<Mutex<ProxyState>>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    down: bool,
    connections: Vec<tokio::task::AbortHandle>,
}

impl Proxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `target`.
    pub async fn start(target: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy port");
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let (target, shared) = (target.to_string(), state.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if shared.lock().unwrap().down {
                    drop(inbound); // refused while cut
                    continue;
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let task = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                shared.lock().unwrap().connections.push(task.abort_handle());
            }
        });
        Proxy { addr, state, accept }
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.down = true;
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.lock().unwrap().down = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// One transport under test: a fresh channel (subject, stream) per test.
pub trait Fixture: Sized + Send + Sync + 'static {
    /// The publishers' outbox.
    type Outbox: Outbox;
    /// The server's address on this machine.
    const ADDR: &'static str;
    /// Whether a reconnecting listener replays what it missed.
    const DURABLE: bool;
    /// A handle on channel `name` of the server at `addr` (the server's, or
    /// a proxy's in front of it), keeping about `cap` messages if durable.
    fn open(addr: &str, name: &str, cap: usize) -> impl Future<Output = Self> + Send;
    /// Attaches a listener to `pool`.
    fn attach(&self, pool: &Pool<Client>, options: ListenOptions) -> impl Future<Output = JoinHandle<()>> + Send;
    /// A publisher for `origin`.
    fn publisher(&self, origin: &str, key: Option<SigningKey>) -> impl Future<Output = Publisher<Self::Outbox>> + Send;
    /// Removes what the test left on the server.
    fn cleanup(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A fresh name for `test`, so tests never see each other's messages and
/// can run in parallel and again.
pub fn fresh(test: &str) -> String {
    format!("warmpool-test.{test}.{:016x}", fastrand::u64(..))
}

/// A pool with its counters, and a handle on a fresh channel of the shared server.
async fn setup<F: Fixture>(test: &str) -> (F, String) {
    let name = fresh(test);
    (F::open(F::ADDR, &name, 100_000).await, name)
}

/// One instance listening on a fresh channel: its pool, counters and listener.
struct Instance<F> {
    bus: F,
    c: Arc<Counters>,
    pool: Pool<Client>,
    listener: JoinHandle<()>,
}

/// A fresh channel for `test` and an instance listening on it with
/// `options`, with `keys` warm.
async fn instance<F: Fixture>(test: &str, options: ListenOptions, keys: &[&str]) -> Instance<F> {
    let (bus, _) = setup::<F>(test).await;
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = bus.attach(&pool, options).await;
    for key in keys {
        warm(&pool, &c, key).await;
    }
    Instance { bus, c, pool, listener }
}

impl<F: Fixture> Instance<F> {
    /// Waits until one message is applied and only `keep` is left, then
    /// checks the malformed and rejected counts and that `keep` is still warm.
    async fn only_keep_left(&self, malformed: u64, rejected: u64) {
        let stats = wait_stats(&self.pool, "one message applied; only `keep` left", WAIT, |s| {
            s.bus.applied == 1 && s.keys == ["keep"]
        })
        .await;
        assert_eq!((stats.bus.malformed, stats.bus.rejected), (malformed, rejected));
        let builds = self.c.builds();
        warm(&self.pool, &self.c, "keep").await;
        assert_eq!(self.c.builds(), builds, "no bad message retired `keep`");
    }

    /// Shuts the pool down, checks its listener ends, and cleans the server up.
    async fn finish(self) {
        shutdown_and_join(&self.pool, self.listener).await;
        self.bus.cleanup().await;
    }
}

/// Options with signing key `key(1)`.
fn signed() -> ListenOptions {
    ListenOptions {
        signing_key: Some(key(1)),
        ..options(&new_origin("me"))
    }
}

/// The scenarios, each generic over the transport.
pub mod scenarios {
    use super::*;

    /// A key invalidation published by instance A retires that key (only)
    /// in instance B, which builds it again; A ignores its own echo.
    pub async fn key_invalidation_reaches_the_other_instance<F: Fixture>() {
        let (bus_a, name) = setup::<F>("key").await;
        let bus_b = F::open(F::ADDR, &name, 100_000).await;
        let (ca, cb) = (Counters::new(), Counters::new());
        let a = builder(&ca).spawn().await.unwrap();
        let b = builder(&cb).spawn().await.unwrap();
        let (oa, ob) = (new_origin("a"), new_origin("b"));
        let la = bus_a.attach(&a, options(&oa)).await;
        let lb = bus_b.attach(&b, options(&ob)).await;
        warm(&b, &cb, "acme:openai").await;
        warm(&b, &cb, "globex:openai").await;
        bus_a
            .publisher(&oa, None)
            .await
            .publish(Scope::Key("acme:openai".into()))
            .await
            .unwrap();
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
        bus_a.cleanup().await;
    }

    /// `Publisher::invalidate` retires a prefix here at once and in the other
    /// instance: exactly the keys under the prefix.
    pub async fn invalidate_here_and_everywhere_by_prefix<F: Fixture>() {
        let (bus, _) = setup::<F>("prefix").await;
        let (ca, cb) = (Counters::new(), Counters::new());
        let a = builder(&ca).spawn().await.unwrap();
        let b = builder(&cb).spawn().await.unwrap();
        let oa = new_origin("a");
        let la = bus.attach(&a, options(&oa)).await;
        let lb = bus.attach(&b, options(&new_origin("b"))).await;
        let keys = ["acme:anthropic", "acme:openai", "acmex:openai", "globex:openai"];
        for key in keys {
            warm(&a, &ca, key).await;
            warm(&b, &cb, key).await;
        }
        let retired = bus
            .publisher(&oa, None)
            .await
            .invalidate(&a, Scope::Prefix("acme:".into()))
            .await
            .unwrap();
        assert_eq!(retired, 2);
        for pool in [&a, &b] {
            wait_stats(pool, "acmex:openai and globex:openai left", WAIT, |s| {
                s.keys == ["acmex:openai", "globex:openai"]
            })
            .await;
        }
        wait_stats(&a, "A ignored its echo", WAIT, |s| s.bus.echoes_ignored == 1).await;
        for key in keys {
            warm(&b, &cb, key).await;
        }
        assert_eq!(cb.builds(), 6, "exactly the two acme: keys are built again");
        shutdown_and_join(&a, la).await;
        shutdown_and_join(&b, lb).await;
        bus.cleanup().await;
    }

    /// Malformed messages are counted, never applied, and valid messages
    /// after them still are.
    pub async fn malformed_messages_are_counted_and_skipped<F: Fixture>() {
        let me = instance::<F>("malformed", options(&new_origin("me")), &["keep", "k"]).await;
        let peer = me.bus.publisher(&new_origin("peer"), None).await;
        for raw in [
            b"not json".as_slice(),
            br#"{"v":2,"origin":"x","epoch":1,"seq":1,"ts_us":0,"scope":"shard","target":"keep"}"#,
            br#"{"v":2,"origin":"x","epoch":1,"seq":2,"ts_us":0,"scope":"key"}"#,
        ] {
            peer.publish_raw(raw.to_vec()).await.unwrap();
        }
        peer.publish(Scope::Key("k".into())).await.unwrap();
        // One publisher's messages arrive in order: once the valid one is
        // applied, the malformed ones have been handled.
        me.only_keep_left(3, 0).await;
        me.finish().await;
    }

    /// With a signing key: unsigned, wrongly signed, version-1 and captured
    /// old messages (issue 13, 1b) are rejected; a properly signed one is applied.
    pub async fn unsigned_forged_legacy_and_stale_messages_are_rejected<F: Fixture>() {
        let me = instance::<F>("signing", signed(), &["keep", "k"]).await;
        let publish = async |origin: &str, key, scope| {
            let publisher = me.bus.publisher(&new_origin(origin), key).await;
            publisher.publish(scope).await.unwrap();
        };
        publish("unsigned", None, Scope::Key("keep".into())).await;
        publish("forger", Some(key(2)), Scope::All).await;
        let wire = me.bus.publisher(&new_origin("wire"), None).await;
        let now = Stamper::new("clock", None).next(Scope::All).ts_us;
        let old = |ts_us, epoch| Invalidation {
            origin: new_origin("billing"),
            epoch,
            seq: 1,
            ts_us,
            scope: Scope::All,
        };
        wire.publish_raw(old(now, 0).encode_v1(Some(&key(1)))).await.unwrap();
        wire.publish_raw(old(now - 3_600_000_000, 1).encode(Some(&key(1))))
            .await
            .unwrap();
        publish("friend", Some(key(1)), Scope::Key("k".into())).await;
        me.only_keep_left(0, 4).await;
        me.finish().await;
    }

    /// The same signed bytes published twice are applied once; the copy is a replay.
    pub async fn replayed_message_is_applied_once<F: Fixture>() {
        let me = instance::<F>("replay", signed(), &["acme:openai"]).await;
        let bytes = Stamper::new(new_origin("peer"), Some(key(1))).stamp(Scope::Key("acme:openai".into()));
        let raw = me.bus.publisher(&new_origin("wire"), None).await;
        raw.publish_raw(bytes.clone()).await.unwrap();
        raw.publish_raw(bytes).await.unwrap();
        let stats = wait_stats(&me.pool, "one applied, one replay", WAIT, |s| {
            s.bus.applied + s.bus.replayed == 2
        })
        .await;
        assert_eq!((stats.bus.applied, stats.bus.replayed, stats.bus.gaps), (1, 1, 0));
        me.finish().await;
    }

    /// A gap in an origin's sequence is counted and its recovery also
    /// retires an unrelated warm key.
    pub async fn sequence_gap_triggers_recovery<F: Fixture>() {
        let me = instance::<F>("gap", options(&new_origin("me")), &["gap:first", "unrelated"]).await;
        let mut stamper = Stamper::new(new_origin("peer"), None);
        let first = stamper.stamp(Scope::Key("gap:first".into()));
        let _lost = stamper.stamp(Scope::Key("gap:lost".into()));
        let third = stamper.stamp(Scope::Key("gap:third".into()));
        let raw = me.bus.publisher(&new_origin("wire"), None).await;
        raw.publish_raw(first).await.unwrap();
        raw.publish_raw(third).await.unwrap();
        let stats = wait_stats(&me.pool, "both messages applied; no key left", WAIT, |s| {
            s.bus.applied == 2 && s.keys.is_empty()
        })
        .await;
        assert_eq!((stats.bus.gaps, stats.bus.recoveries, stats.bus.reconnects), (1, 1, 0));
        assert_eq!(invalidated(&me.pool, 2).await, 2);
        me.finish().await;
    }

    /// Issue 13, 1d: a publisher restarted under the same origin is a new
    /// stream: its messages are applied (not dropped as replays), the
    /// restart is counted; over pub/sub it also recovers.
    pub async fn restarted_publisher_reusing_its_origin_is_applied<F: Fixture>() {
        let opts = ListenOptions {
            recovery: Recovery::FlushPrefix("stale:".into()),
            ..options(&new_origin("me"))
        };
        let me = instance::<F>("restart", opts, &["rotated", "stale:x", "other"]).await;
        let origin = new_origin("billing");
        let before = me.bus.publisher(&origin, None).await;
        for i in 0..5 {
            before.publish(Scope::Key(format!("n{i}"))).await.unwrap();
        }
        wait_stats(&me.pool, "first run applied", WAIT, |s| s.bus.applied == 5).await;
        let after = me.bus.publisher(&origin, None).await;
        after.publish(Scope::Key("rotated".into())).await.unwrap();
        let stats = wait_stats(&me.pool, "the restarted publisher's rotation applied", WAIT, |s| {
            s.bus.applied == 6 && !s.keys.iter().any(|k| k == "rotated")
        })
        .await;
        assert_eq!((stats.bus.replayed, stats.bus.publisher_restarts), (0, 1));
        let expected_recoveries = if F::DURABLE { 0 } else { 1 };
        assert_eq!(stats.bus.recoveries, expected_recoveries);
        me.finish().await;
    }

    /// 10,000 invalidations published back to back are all applied, with no
    /// gap, replay or recovery.
    pub async fn storm_of_10000_invalidations_all_applied<F: Fixture>() {
        const N: usize = 10_000;
        let (listen_bus, name) = setup::<F>("storm").await;
        let publish_bus = F::open(F::ADDR, &name, 100_000).await;
        let c = Counters::new();
        let pool = builder(&c).spawn().await.unwrap();
        let listener = listen_bus.attach(&pool, options(&new_origin("me"))).await;
        for key in ["k0", "k9999", "not-in-storm"] {
            warm(&pool, &c, key).await;
        }
        let peer = publish_bus.publisher(&new_origin("peer"), None).await;
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
        assert!(stats.bus.lag_p99.is_some(), "lag was recorded");
        shutdown_and_join(&pool, listener).await;
        listen_bus.cleanup().await;
    }

    /// A listener cut off its server for 2 s while 1,000 invalidations are
    /// published: a durable transport replays exactly those (0 lost, 0
    /// flushes, only the invalidated keys rebuilt); an at-most-once one
    /// reconnects and flushes.
    pub async fn listener_cut_off_for_two_seconds<F: Fixture>() {
        const KEYS: usize = 2_000;
        const SENT: usize = 1_000;
        let name = fresh("cut");
        let proxy = Proxy::start(F::ADDR).await;
        let listen_bus = F::open(proxy.addr(), &name, 100_000).await;
        let publish_bus = F::open(F::ADDR, &name, 100_000).await;
        let c = Counters::new();
        let pool = builder(&c).max_entries(10 * KEYS).spawn().await.unwrap();
        let listener = listen_bus.attach(&pool, options(&new_origin("me"))).await;
        let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i:04}")).collect();
        for key in &keys {
            warm(&pool, &c, key).await;
        }
        let publisher = publish_bus.publisher(&new_origin("peer"), None).await;

        proxy.cut();
        let cut_at = Instant::now();
        for i in 0..SENT {
            // Even keys only, spread over the two seconds.
            publisher.publish(Scope::Key(keys[2 * i].clone())).await.unwrap();
            let due = Duration::from_millis(2) * (i as u32 + 1);
            tokio::time::sleep(due.saturating_sub(cut_at.elapsed())).await;
        }
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(cut_at.elapsed())).await;
        assert_eq!(
            pool.stats().await.unwrap().bus.applied,
            0,
            "nothing arrived while cut off"
        );
        proxy.restore();
        let restored_at = Instant::now();

        if F::DURABLE {
            let stats = wait_stats(
                &pool,
                "the 1,000 missed invalidations replayed",
                Duration::from_secs(30),
                |s| s.bus.applied == SENT as u64 && s.keys.len() == KEYS - SENT,
            )
            .await;
            let caught_up = restored_at.elapsed();
            assert_eq!((stats.bus.lost, stats.bus.recoveries, stats.bus.gaps), (0, 0, 0));
            assert!(stats.bus.reconnects >= 1, "the listener noticed the cut");
            let odd: Vec<String> = keys.iter().skip(1).step_by(2).cloned().collect();
            assert_eq!(stats.keys, odd, "exactly the invalidated keys were retired");
            let before = c.builds();
            for key in &keys {
                warm(&pool, &c, key).await;
            }
            assert_eq!(c.builds() - before, SENT, "only the invalidated keys were rebuilt");
            println!(
                "{}: replay after a 2 s cut: {SENT} of {SENT} applied, 0 lost, 0 flushes, {SENT} of {KEYS} keys rebuilt; \
                 caught up {caught_up:?} after the proxy was restored (reconnect backoff included)",
                std::any::type_name::<F>().rsplit("::").next().unwrap_or("?")
            );
        } else {
            let stats = wait_stats(&pool, "reconnected and flushed", Duration::from_secs(30), |s| {
                s.bus.reconnects >= 1 && s.bus.recoveries >= 1 && s.keys.is_empty()
            })
            .await;
            assert_eq!(stats.bus.applied, 0, "pub/sub does not replay");
        }
        shutdown_and_join(&pool, listener).await;
        listen_bus.cleanup().await;
    }

    /// Issue 20, 1: 16 tasks sharing one publisher, 1,250 key invalidations
    /// each: all 20,000 are applied, none is taken for a replay, no gap is
    /// counted and nothing is flushed.
    pub async fn sixteen_tasks_sharing_one_publisher_lose_nothing<F: Fixture>() {
        const TASKS: usize = 16;
        const EACH: usize = 1_250;
        const N: u64 = (TASKS * EACH) as u64;
        let (listen_bus, name) = setup::<F>("sixteen").await;
        let publish_bus = F::open(F::ADDR, &name, 100_000).await;
        let c = Counters::new();
        let pool = builder(&c).spawn().await.unwrap();
        let listener = listen_bus.attach(&pool, options(&new_origin("me"))).await;
        warm(&pool, &c, "survivor").await;
        let publisher = Arc::new(publish_bus.publisher(&new_origin("peer"), None).await);
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
        let joined = tokio::time::timeout(Duration::from_secs(120), async {
            for task in tasks {
                task.await.unwrap();
            }
        });
        joined.await.expect("16 tasks published 20,000 within 120 s");
        let published = started.elapsed();
        // Every message is either applied or dropped as a replay: wait for all.
        let stats = wait_stats(&pool, "all 20,000 handled", Duration::from_secs(120), |s| {
            s.bus.applied + s.bus.replayed == N
        })
        .await;
        println!(
            "{}: 16 tasks x {EACH} through one publisher in {published:?} ({:.0}/s), all handled after {:?}",
            std::any::type_name::<F>().rsplit("::").next().unwrap_or("?"),
            N as f64 / published.as_secs_f64(),
            started.elapsed()
        );
        let b = &stats.bus;
        assert_eq!((b.applied, b.replayed, b.gaps, b.recoveries, b.lost), (N, 0, 0, 0, 0));
        assert!(stats.keys.contains(&"survivor".to_string()), "nothing was flushed");
        shutdown_and_join(&pool, listener).await;
        listen_bus.cleanup().await;
    }

    /// Issue 20, 3: one loss, one recovery. A listener cut off while its
    /// peer publishes, then a later message: an at-most-once transport
    /// recovers once at the reconnect and the later message re-bases the
    /// sequence (no gap, no second flush); a durable one replays what it
    /// missed and never recovers.
    pub async fn one_loss_one_recovery<F: Fixture>() {
        let name = fresh("once");
        let proxy = Proxy::start(F::ADDR).await;
        let listen_bus = F::open(proxy.addr(), &name, 100_000).await;
        let publish_bus = F::open(F::ADDR, &name, 100_000).await;
        let c = Counters::new();
        let pool = builder(&c).spawn().await.unwrap();
        let listener = listen_bus.attach(&pool, options(&new_origin("me"))).await;
        let publisher = publish_bus.publisher(&new_origin("peer"), None).await;
        publisher.publish(Scope::Key("before".into())).await.unwrap();
        wait_stats(&pool, "the first message applied", WAIT, |s| s.bus.applied == 1).await;
        proxy.cut();
        for i in 0..3 {
            publisher.publish(Scope::Key(format!("missed{i}"))).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.restore();
        // Durable: the three missed are replayed. At most once: they are
        // gone, and the reconnect recovers.
        let (applied, recoveries) = if F::DURABLE { (4, 0) } else { (1, 1) };
        wait_stats(&pool, "back, and replayed or recovered", Duration::from_secs(30), |s| {
            s.bus.reconnects >= 1 && s.bus.applied == applied && s.bus.recoveries == recoveries
        })
        .await;
        warm(&pool, &c, "survivor").await;
        publisher.publish(Scope::Key("after".into())).await.unwrap();
        // A gap's recovery would run before the message is applied, so its
        // counts are in by the time `applied` moves.
        let stats = wait_stats(&pool, "the later message applied", WAIT, |s| {
            s.bus.applied == applied + 1
        })
        .await;
        let b = &stats.bus;
        assert_eq!(
            (b.recoveries, b.gaps, b.replayed, b.lost),
            (recoveries, 0, 0, 0),
            "one loss, at most one recovery"
        );
        assert!(stats.keys.contains(&"survivor".to_string()), "no second flush");
        shutdown_and_join(&pool, listener).await;
        listen_bus.cleanup().await;
    }

    /// A durable listener away while more is published than the transport
    /// keeps: it cannot replay, so it flushes, and says so in `lost`.
    pub async fn missed_range_no_longer_retained_flushes<F: Fixture>() {
        const SENT: usize = 1_000;
        let name = fresh("trimmed");
        let proxy = Proxy::start(F::ADDR).await;
        let listen_bus = F::open(proxy.addr(), &name, 10).await;
        let publish_bus = F::open(F::ADDR, &name, 10).await;
        let c = Counters::new();
        let pool = builder(&c).spawn().await.unwrap();
        let listener = listen_bus.attach(&pool, options(&new_origin("me"))).await;
        warm(&pool, &c, "unrelated").await;
        let publisher = publish_bus.publisher(&new_origin("peer"), None).await;
        proxy.cut();
        for i in 0..SENT {
            publisher.publish(Scope::Key(format!("k{i}"))).await.unwrap();
        }
        proxy.restore();
        let stats = wait_stats(&pool, "the loss noticed and flushed", Duration::from_secs(30), |s| {
            s.bus.lost >= 1 && s.bus.recoveries >= 1 && s.keys.is_empty()
        })
        .await;
        assert!(
            stats.bus.applied < SENT as u64,
            "some were trimmed: {}",
            stats.bus.applied
        );
        shutdown_and_join(&pool, listener).await;
        listen_bus.cleanup().await;
    }
}

/// Instantiates the scenarios for fixture `$fixture` as `#[tokio::test]`s;
/// `durable` adds those that need replay.
#[allow(unused_macros)]
macro_rules! transport_suite {
    ($fixture:ty) => {
        $crate::common::bus::transport_suite!(@tests $fixture;
            key_invalidation_reaches_the_other_instance,
            invalidate_here_and_everywhere_by_prefix,
            malformed_messages_are_counted_and_skipped,
            unsigned_forged_legacy_and_stale_messages_are_rejected,
            replayed_message_is_applied_once,
            sequence_gap_triggers_recovery,
            restarted_publisher_reusing_its_origin_is_applied,
            storm_of_10000_invalidations_all_applied,
            listener_cut_off_for_two_seconds,
            sixteen_tasks_sharing_one_publisher_lose_nothing,
            one_loss_one_recovery);
    };
    ($fixture:ty, durable) => {
        $crate::common::bus::transport_suite!($fixture);
        $crate::common::bus::transport_suite!(@tests $fixture; missed_range_no_longer_retained_flushes);
    };
    (@tests $fixture:ty; $($name:ident),+) => {
        $(
            /// See the scenario of the same name in `tests/common/bus.rs`.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::common::bus::scenarios::$name::<$fixture>().await
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use transport_suite;

#[cfg(feature = "redis")]
pub mod redis_fixtures {
    //! Redis pub/sub and Redis Streams.
    use super::*;
    use warmpool::bus::redis::{RedisBus, RedisOutbox};
    use warmpool::bus::redis_streams::{RedisStreamBus, RedisStreamOutbox};

    const HOW_TO_START: &str = "start one with `redis-server --bind 127.0.0.1 --port 6379 --daemonize yes`";

    /// Redis pub/sub.
    pub struct PubSub(RedisBus);

    impl Fixture for PubSub {
        type Outbox = RedisOutbox;
        const ADDR: &'static str = REDIS_ADDR;
        const DURABLE: bool = false;
        async fn open(addr: &str, name: &str, _cap: usize) -> Self {
            require(REDIS_ADDR, "Redis", HOW_TO_START);
            PubSub(RedisBus::new(&format!("redis://{addr}"), name).expect("a valid Redis URL"))
        }
        async fn attach(&self, pool: &Pool<Client>, options: ListenOptions) -> JoinHandle<()> {
            self.0
                .attach(pool, options)
                .await
                .unwrap_or_else(|e| panic!("cannot subscribe on Redis ({e}); {HOW_TO_START}"))
        }
        async fn publisher(&self, origin: &str, key: Option<SigningKey>) -> Publisher<RedisOutbox> {
            self.0
                .publisher(origin, key)
                .await
                .unwrap_or_else(|e| panic!("cannot connect a publisher to Redis ({e}); {HOW_TO_START}"))
        }
    }

    /// Redis Streams.
    pub struct Streams {
        bus: RedisStreamBus,
        name: String,
    }

    impl Fixture for Streams {
        type Outbox = RedisStreamOutbox;
        const ADDR: &'static str = REDIS_ADDR;
        const DURABLE: bool = true;
        async fn open(addr: &str, name: &str, cap: usize) -> Self {
            require(REDIS_ADDR, "Redis", HOW_TO_START);
            let bus = RedisStreamBus::new(&format!("redis://{addr}"), name, cap).expect("a valid Redis URL");
            Streams {
                bus,
                name: name.to_string(),
            }
        }
        async fn attach(&self, pool: &Pool<Client>, options: ListenOptions) -> JoinHandle<()> {
            self.bus
                .attach(pool, options)
                .await
                .unwrap_or_else(|e| panic!("cannot read the stream on Redis ({e}); {HOW_TO_START}"))
        }
        async fn publisher(&self, origin: &str, key: Option<SigningKey>) -> Publisher<RedisStreamOutbox> {
            self.bus
                .publisher(origin, key)
                .await
                .unwrap_or_else(|e| panic!("cannot connect a publisher to Redis ({e}); {HOW_TO_START}"))
        }
        async fn cleanup(&self) {
            let client = redis::Client::open(format!("redis://{REDIS_ADDR}")).unwrap();
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            let _: i64 = redis::cmd("DEL")
                .arg(&self.name)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
    }
}

#[cfg(feature = "nats")]
pub mod nats_fixtures {
    //! Core NATS and NATS JetStream.
    use super::*;
    use warmpool::bus::jetstream::{JetStreamBus, JetStreamOutbox, Retention};
    use warmpool::bus::nats::{NatsBus, NatsOptions, NatsOutbox};

    const HOW_TO_START: &str = "start one with `nats-server -a 127.0.0.1 -p 4222 -js &`";

    /// Core NATS.
    pub struct Core(NatsBus);

    impl Fixture for Core {
        type Outbox = NatsOutbox;
        const ADDR: &'static str = NATS_ADDR;
        const DURABLE: bool = false;
        async fn open(addr: &str, name: &str, _cap: usize) -> Self {
            require(NATS_ADDR, "NATS", HOW_TO_START);
            match tokio::time::timeout(WAIT, NatsBus::connect(&format!("nats://{addr}"), name)).await {
                Ok(Ok(bus)) => Core(bus),
                Ok(Err(e)) => panic!("cannot connect to NATS at {addr} ({e}); {HOW_TO_START}"),
                Err(_) => panic!("connecting to NATS at {addr} took over {WAIT:?}; {HOW_TO_START}"),
            }
        }
        async fn attach(&self, pool: &Pool<Client>, options: ListenOptions) -> JoinHandle<()> {
            self.0
                .attach(pool, options)
                .await
                .unwrap_or_else(|e| panic!("cannot subscribe on NATS ({e}); {HOW_TO_START}"))
        }
        async fn publisher(&self, origin: &str, key: Option<SigningKey>) -> Publisher<NatsOutbox> {
            self.0.publisher(origin, key)
        }
    }

    /// NATS JetStream.
    pub struct JetStream {
        bus: JetStreamBus,
        stream: String,
    }

    /// A stream name from a test name: JetStream allows no dots in it.
    fn stream_name(name: &str) -> String {
        name.replace(['.', '-'], "_").to_uppercase()
    }

    impl Fixture for JetStream {
        type Outbox = JetStreamOutbox;
        const ADDR: &'static str = NATS_ADDR;
        const DURABLE: bool = true;
        async fn open(addr: &str, name: &str, cap: usize) -> Self {
            require(NATS_ADDR, "NATS", HOW_TO_START);
            let stream = stream_name(name);
            let retention = Retention {
                max_messages: cap as i64,
                max_age: Duration::from_secs(3600),
            };
            let url = format!("nats://{addr}");
            let connect = JetStreamBus::connect(&url, &stream, name, retention, NatsOptions::new());
            match tokio::time::timeout(WAIT, connect).await {
                Ok(Ok(bus)) => JetStream { bus, stream },
                Ok(Err(e)) => panic!("cannot open a JetStream stream on NATS at {addr} ({e}); {HOW_TO_START}"),
                Err(_) => panic!("connecting to NATS at {addr} took over {WAIT:?}; {HOW_TO_START}"),
            }
        }
        async fn attach(&self, pool: &Pool<Client>, options: ListenOptions) -> JoinHandle<()> {
            self.bus
                .attach(pool, options)
                .await
                .unwrap_or_else(|e| panic!("cannot read the JetStream stream ({e}); {HOW_TO_START}"))
        }
        async fn publisher(&self, origin: &str, key: Option<SigningKey>) -> Publisher<JetStreamOutbox> {
            self.bus.publisher(origin, key)
        }
        async fn cleanup(&self) {
            let client = async_nats::connect(NATS_ADDR).await.unwrap();
            let _ = async_nats::jetstream::new(client).delete_stream(&self.stream).await;
        }
    }
}
