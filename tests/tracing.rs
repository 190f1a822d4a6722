//! The pool's tracing spans: a factory runs in a `build` span whose parent
//! is the span of the call that started the build (so request context
//! reaches it), one per attempt; dispose hooks run in a root `dispose` span;
//! retirements have a `retire` span with their cause; no span field holds a
//! credentials hash. A subscriber of our own (the registry plus a layer that
//! records each span's name, parent and fields), set per test thread.
//! Paused clock.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Instrument, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};
use warmpool::{Pool, RestartPolicy};

/// What was recorded about one span.
#[derive(Debug, Clone, PartialEq)]
struct SpanInfo {
    name: &'static str,
    parent: Option<&'static str>,
    fields: Vec<(String, String)>,
}

impl SpanInfo {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A layer that records every span ever made, in creation order, with the
/// fields recorded later too; open spans by id (ids are reused once closed).
#[derive(Debug, Clone, Default)]
struct Spans {
    all: Arc<Mutex<Vec<SpanInfo>>>,
    /// An open span's place in `all`.
    open: Arc<Mutex<HashMap<u64, usize>>>,
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_string(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = ctx.span(id).and_then(|s| s.parent()).map(|p| p.name());
        let mut fields = Vec::new();
        attrs.record(&mut Fields(&mut fields));
        let info = SpanInfo {
            name: attrs.metadata().name(),
            parent,
            fields,
        };
        let mut all = self.all.lock().unwrap();
        all.push(info);
        self.open.lock().unwrap().insert(id.into_u64(), all.len() - 1);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some(&i) = self.open.lock().unwrap().get(&id.into_u64()) {
            values.record(&mut Fields(&mut self.all.lock().unwrap()[i].fields));
        }
    }
}

impl Spans {
    /// Sets a subscriber recording into a new `Spans` as this thread's default.
    fn install() -> (Spans, tracing::subscriber::DefaultGuard) {
        let spans = Spans::default();
        let guard = tracing::subscriber::set_default(Registry::default().with(spans.clone()));
        (spans, guard)
    }

    /// The span current where this is called.
    fn current(&self) -> Option<SpanInfo> {
        let id = tracing::Span::current().id()?;
        let i = *self.open.lock().unwrap().get(&id.into_u64())?;
        Some(self.all.lock().unwrap()[i].clone())
    }

    fn named(&self, name: &str) -> Vec<SpanInfo> {
        self.all
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }
}

/// A factory that records the span it runs in, then builds after `delay`
/// (or fails, if `fail`).
fn observing(
    spans: &Spans,
    seen: &Arc<Mutex<Vec<Option<SpanInfo>>>>,
    key: &str,
    delay: Duration,
    fail: bool,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<Client, std::io::Error>> + Send + Sync + 'static {
    let (spans, seen, key) = (spans.clone(), seen.clone(), key.to_string());
    move || {
        let (spans, seen, key) = (spans.clone(), seen.clone(), key.clone());
        Box::pin(async move {
            // In the factory's future, as the user's code would look.
            seen.lock().unwrap().push(spans.current());
            tokio::time::sleep(delay).await;
            if fail {
                return Err(std::io::Error::other("provider down"));
            }
            Ok(Client {
                key,
                hash: h(1),
                serial: 0,
            })
        })
    }
}

/// The factory runs in a `build` span (key, attempt 1) whose parent is the
/// caller's span.
#[tokio::test(start_paused = true)]
async fn the_factory_runs_in_a_build_span_under_the_callers_span() {
    let (spans, _guard) = Spans::install();
    let pool: Pool<Client> = Pool::builder().spawn().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let request = tracing::info_span!("request", tenant = "acme");
    let lease = pool
        .get_or_create(
            "acme:openai",
            h(1),
            observing(&spans, &seen, "acme:openai", Duration::ZERO, false),
        )
        .instrument(request)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let build = seen[0].clone().expect("the factory ran inside a span");
    assert_eq!((build.name, build.parent), ("build", Some("request")));
    assert_eq!(build.field("key"), Some("acme:openai"));
    assert_eq!(build.field("attempt"), Some("1"));
    drop(lease);
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Each retry runs in its own `build` span, numbered, all under the caller's span.
#[tokio::test(start_paused = true)]
async fn each_attempt_has_its_own_build_span() {
    let (spans, _guard) = Spans::install();
    let pool: Pool<Client> = Pool::builder()
        .restart_policy(RestartPolicy {
            max_retries: 2,
            intensity: 100,
            ..RestartPolicy::default()
        })
        .spawn()
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    pool.get_or_create("k", h(1), observing(&spans, &seen, "k", Duration::ZERO, true))
        .instrument(tracing::info_span!("request"))
        .await
        .unwrap_err();
    let seen: Vec<SpanInfo> = seen.lock().unwrap().iter().map(|s| s.clone().unwrap()).collect();
    let attempts: Vec<_> = seen.iter().map(|s| (s.name, s.parent, s.field("attempt"))).collect();
    assert_eq!(
        attempts,
        [
            ("build", Some("request"), Some("1")),
            ("build", Some("request"), Some("2")),
            ("build", Some("request"), Some("3")),
        ]
    );
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Callers that share a build share its span, whose parent is the span of
/// the first caller, the one that started it.
#[tokio::test(start_paused = true)]
async fn a_shared_build_is_under_the_first_callers_span() {
    let (spans, _guard) = Spans::install();
    let pool: Pool<Client> = Pool::builder().spawn().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let call = |name: &'static str| {
        let (pool, f) = (
            pool.clone(),
            observing(&spans, &seen, "k", Duration::from_secs(1), false),
        );
        let span = tracing::info_span!("caller", name);
        tokio::spawn(async move { pool.get_or_create("k", h(1), f).await.map(drop) }.instrument(span))
    };
    let first = call("first");
    settle().await;
    let second = call("second");
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(spans.named("build").len(), 1, "one build for both callers");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let build = seen[0].clone().unwrap();
    assert_eq!(build.parent, Some("caller"));
    let callers = spans.named("caller");
    assert_eq!(callers[0].field("name"), Some("first"));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// Without a span at the call, the build span is a root.
#[tokio::test(start_paused = true)]
async fn without_a_callers_span_the_build_span_is_a_root() {
    let (spans, _guard) = Spans::install();
    let pool: Pool<Client> = Pool::builder().spawn().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    drop(
        pool.get_or_create("k", h(1), observing(&spans, &seen, "k", Duration::ZERO, false))
            .await
            .unwrap(),
    );
    let build = seen.lock().unwrap()[0].clone().unwrap();
    assert_eq!((build.name, build.parent), ("build", None));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// A dispose hook runs in a root `dispose` span naming the key; a
/// retirement has a `retire` span with its cause.
#[tokio::test(start_paused = true)]
async fn dispose_and_retire_spans() {
    let (spans, _guard) = Spans::install();
    let in_hook = Arc::new(Mutex::new(None));
    let pool: Pool<Client> = Pool::builder()
        .on_dispose({
            let (spans, in_hook) = (spans.clone(), in_hook.clone());
            move |_key, _client: Client| {
                let (spans, in_hook) = (spans.clone(), in_hook.clone());
                async move {
                    *in_hook.lock().unwrap() = spans.current();
                }
            }
        })
        .spawn()
        .await
        .unwrap();
    let c = Counters::new();
    let lease = pool
        .get_or_create("acme:openai", h(1), factory(&c, "acme:openai", h(1), Duration::ZERO))
        .instrument(tracing::info_span!("request"))
        .await
        .unwrap();
    assert!(pool.invalidate("acme:openai").await.unwrap());
    drop(lease);
    eventually("the hook ran", async || in_hook.lock().unwrap().is_some()).await;
    let dispose = in_hook.lock().unwrap().clone().unwrap();
    assert_eq!((dispose.name, dispose.parent), ("dispose", None));
    assert_eq!(dispose.field("key"), Some("acme:openai"));
    let retire = spans.named("retire");
    assert_eq!(retire.len(), 1, "{retire:?}");
    assert_eq!(retire[0].field("cause"), Some("invalidated"));
    assert_eq!(retire[0].field("key"), Some("acme:openai"));
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// No span the pool makes has a field holding the credentials hash.
#[tokio::test(start_paused = true)]
async fn no_span_field_holds_the_credentials_hash() {
    let (spans, _guard) = Spans::install();
    let c = Counters::new();
    let pool = builder(&c)
        .restart_policy(RestartPolicy {
            max_retries: 1,
            ..RestartPolicy::default()
        })
        .spawn()
        .await
        .unwrap();
    let hash = h(0x5ec7e7);
    let secret = hash.to_string();
    drop(
        pool.get_or_create("a", hash, factory(&c, "a", hash, Duration::ZERO))
            .await
            .unwrap(),
    );
    drop(
        pool.get_or_create("a", h(2), factory(&c, "a", h(2), Duration::ZERO))
            .await
            .unwrap(),
    );
    pool.get_or_create("b", hash, failing(&c, Duration::ZERO))
        .await
        .unwrap_err();
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    let all = spans.all.lock().unwrap().clone();
    for name in ["build", "retire", "dispose"] {
        assert!(all.iter().any(|s| s.name == name), "no {name} span in {all:?}");
    }
    for span in &all {
        for (field, value) in &span.fields {
            assert!(!value.contains(&secret), "span {} field {field} = {value}", span.name);
        }
    }
}
