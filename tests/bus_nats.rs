#![cfg(feature = "nats")]
// The std mutex guard is held across awaits on purpose: it serializes whole
// tests (each on its own runtime), so no task ever waits on it.
#![allow(clippy::await_holding_lock)]
//! What only the NATS transports have (the shared scenarios run in
//! `bus_transports.rs`): `attach` returning only once the server has the
//! subscription, slow-consumer drops, and credentials that never reach a
//! log. Needs NATS on 127.0.0.1:4222; the credentials test starts a private
//! `nats-server` with a password on a free port. Real clock, every wait
//! bounded.

mod common;
use common::bus::*;
use common::*;

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use warmpool::bus::nats::{NatsBus, NatsOptions};
use warmpool::bus::{BusError, Scope, Stamper, new_origin};

const URL: &str = "nats://127.0.0.1:4222";
const NATS_SERVER: &str = "/usr/sbin/nats-server";
const HOW_TO_START: &str = "start one with `/usr/sbin/nats-server -a 127.0.0.1 -p 4222 -js &`";

/// Serializes this file's tests: the slow-consumer flood would otherwise
/// starve the attach test's timing on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

async fn bus(subject: &str) -> NatsBus {
    require(NATS_ADDR, "NATS", HOW_TO_START);
    match tokio::time::timeout(WAIT, NatsBus::connect(URL, subject)).await {
        Ok(Ok(bus)) => bus,
        Ok(Err(e)) => panic!("cannot connect to NATS at {NATS_ADDR} ({e}); {HOW_TO_START}"),
        Err(_) => panic!("connecting to NATS at {NATS_ADDR} took over {WAIT:?}; {HOW_TO_START}"),
    }
}

/// A message published from another connection right after `attach` returns is never lost (300 tries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_returns_once_the_subscription_is_in_place() {
    let _serial = serial();
    const TRIES: usize = 300;
    let subject = fresh("attach");
    let (listen_bus, publish_bus) = (bus(&subject).await, bus(&subject).await);
    let mut lost = Vec::new();
    let mut listeners = Vec::new();
    for i in 0..TRIES {
        let c = Counters::new();
        let pool = builder(&c).spawn().await.unwrap();
        let listener = listen_bus.attach(&pool, options(&new_origin("me"))).await.unwrap();
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
        "{} of {TRIES} messages published right after `attach` returned were lost (tries {lost:?})",
        lost.len()
    );
    wait_until("every listener ended after its pool shut down", WAIT, || {
        listeners.iter().all(JoinHandle::is_finished)
    })
    .await;
}

/// Issue 13, 1e: 150,000 quick invalidations, each from a fresh origin (so
/// no sequence gap can reveal a loss), at a listener whose client buffers
/// little: whatever the client drops as a slow consumer is counted as lost
/// and recovered from, never silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_drops_are_recovered_not_silent() {
    let _serial = serial();
    const N: u64 = 150_000;
    require(NATS_ADDR, "NATS", HOW_TO_START);
    let subject = fresh("slow");
    let listen_bus = NatsBus::connect_with(URL, &subject, NatsOptions::new().subscription_capacity(64))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to NATS ({e}); {HOW_TO_START}"));
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = listen_bus.attach(&pool, options(&new_origin("me"))).await.unwrap();
    warm(&pool, &c, "warm").await;
    let raw = async_nats::connect(NATS_ADDR).await.unwrap();
    for i in 0..N {
        let bytes = Stamper::new(new_origin("fresh"), None).stamp(Scope::Key(format!("k{i}")));
        raw.publish(subject.clone(), bytes.into()).await.unwrap();
    }
    raw.flush().await.unwrap();
    // Wait until the listener is quiet: everything it will get, it has.
    let mut last = u64::MAX;
    let stats = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stats = pool.stats().await.unwrap();
        if stats.bus.applied == last || stats.bus.applied == N {
            break stats;
        }
        last = stats.bus.applied;
    };
    let missing = N - stats.bus.applied;
    println!(
        "slow consumer: {} applied, {missing} dropped by the client, lost={} recoveries={}",
        stats.bus.applied, stats.bus.lost, stats.bus.recoveries
    );
    if missing > 0 {
        assert!(stats.bus.lost >= 1, "{missing} messages dropped silently: {stats:#?}");
        assert!(stats.bus.recoveries >= 1, "{missing} messages dropped without recovery");
        assert!(stats.keys.is_empty(), "the recovery flushed the warm key");
    }
    shutdown_and_join(&pool, listener).await;
}

/// Every tracing event and span field, from every thread, as text.
static LOG: Mutex<String> = Mutex::new(String::new());

struct Capture;

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        span.record(&mut Fields(&mut LOG.lock().unwrap()));
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut LOG.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut log = LOG.lock().unwrap();
        let _ = write!(log, "\n{} {}: ", event.metadata().level(), event.metadata().target());
        event.record(&mut Fields(&mut log));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A private `nats-server` requiring a user and password; killed when dropped.
struct PasswordNats {
    port: u16,
    child: Child,
}

impl PasswordNats {
    async fn start(user: &str, password: &str) -> PasswordNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(NATS_SERVER)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--user",
                user,
                "--pass",
                password,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NATS_SERVER} ({e})"));
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{NATS_SERVER} on port {port} exited at start: {status}");
            }
            assert!(
                start.elapsed() < WAIT,
                "{NATS_SERVER} did not accept TCP on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        PasswordNats { port, child }
    }
}

impl Drop for PasswordNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 13, 1g: credentials given in `NatsOptions` authenticate, and the
/// password appears in no log line (at any level), `Debug` or error; a URL
/// that carries one is refused. Control: the raw client given such a URL
/// does log the password, so the capture would have caught a leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_password_never_reaches_a_log() {
    let _serial = serial();
    const SECRET: &str = "hunter2-d41d8cd98f00b204e9800998ecf8427e";
    static INSTALL: OnceLock<()> = OnceLock::new();
    INSTALL.get_or_init(|| tracing::subscriber::set_global_default(Capture).expect("one subscriber"));
    let server = PasswordNats::start("warmpool", SECRET).await;
    let url = format!("nats://127.0.0.1:{}", server.port);
    let subject = fresh("auth");

    let options = NatsOptions::new().user_and_password("warmpool", SECRET);
    assert!(!format!("{options:?}").contains(SECRET));
    let bus = tokio::time::timeout(WAIT, NatsBus::connect_with(&url, &subject, options))
        .await
        .expect("connect within WAIT")
        .expect("the password in the options authenticates");
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let listener = bus.attach(&pool, options_for_me()).await.unwrap();
    warm(&pool, &c, "k").await;
    bus.publisher(new_origin("peer"), None)
        .publish(Scope::Key("k".into()))
        .await
        .unwrap();
    wait_stats(&pool, "applied over the authenticated connection", WAIT, |s| {
        s.bus.applied == 1
    })
    .await;
    assert!(!format!("{bus:?}").contains(SECRET));

    let with_password = format!("nats://warmpool:{SECRET}@127.0.0.1:{}", server.port);
    let refused = NatsBus::connect(&with_password, &subject).await.unwrap_err();
    assert!(matches!(refused, BusError::CredentialsInUrl), "{refused:?}");
    assert!(!format!("{refused} {refused:?}").contains(SECRET));
    let wrong = NatsBus::connect_with(
        &url,
        &subject,
        NatsOptions::new().user_and_password("warmpool", "wrong"),
    )
    .await
    .unwrap_err();
    assert!(!format!("{wrong} {wrong:?}").contains("wrong-"), "{wrong:?}");
    shutdown_and_join(&pool, listener).await;

    let log = LOG.lock().unwrap().clone();
    assert!(
        log.contains(&server.port.to_string()),
        "the capture saw the client's connection log lines: {log}"
    );
    assert!(!log.contains(SECRET), "the password was logged:\n{log}");

    // Control: handing the raw client a URL with the password logs it.
    // (Whether it authenticates does not matter: the URL is logged first.)
    let _ = tokio::time::timeout(WAIT, async_nats::connect(&with_password)).await;
    assert!(
        LOG.lock().unwrap().contains(SECRET),
        "async-nats logs the URL it is given (if this fails, the hazard is gone upstream)"
    );
}

fn options_for_me() -> warmpool::bus::ListenOptions {
    options(&new_origin("me"))
}
