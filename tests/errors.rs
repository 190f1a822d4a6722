//! `PoolError` as error-handling code sees it: `Display` says what the pool
//! saw and leaves the factory's error to `source()`, so chain printers print
//! each cause once; the factory's own error can be found by type whether the
//! factory returned a `std::io::Error`, its own error type or an
//! `anyhow::Error`; and no error shows a credential. Paused clock.

mod common;
use common::cool_at_once;

use std::error::Error;
use std::fmt;
use std::io;
use std::time::Duration;

use anyhow::Context;
use warmpool::{BoxError, Pool, PoolError, RestartPolicy, hash_credentials};

const KEY: &str = "acme:openai";

/// A provider's own error type, as an SDK would define it.
#[derive(Debug)]
struct QuotaExceeded {
    retry_in_s: u64,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quota exceeded; retry in {} s", self.retry_in_s)
    }
}

impl Error for QuotaExceeded {}

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused")
}

/// The `PoolError` a caller gets when every attempt of the factory returns
/// `error()`, with `max_retries` retries.
async fn failure<E>(max_retries: u32, error: impl Fn() -> E + Send + Sync + 'static) -> PoolError
where
    E: Into<BoxError> + Send + 'static,
{
    let pool: Pool<String> = Pool::builder()
        .restart_policy(RestartPolicy {
            max_retries,
            ..RestartPolicy::never()
        })
        .spawn()
        .await
        .unwrap();
    let hash = hash_credentials(&"creds").unwrap();
    let err = pool
        .get_or_create(KEY, hash, move || {
            let e = error();
            async move { Err::<String, E>(e) }
        })
        .await
        .expect_err("the factory always fails");
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    err
}

/// `Display` names the key and the attempts and does not repeat the factory's error, which `source()` returns.
#[tokio::test(start_paused = true)]
async fn display_leaves_the_cause_to_source() {
    let err = failure(2, refused).await;
    assert_eq!(err.to_string(), "factory for key `acme:openai` failed after 3 attempts");
    assert_eq!(
        err.source().map(ToString::to_string).as_deref(),
        Some("connection refused")
    );

    let once = failure(0, refused).await;
    assert_eq!(once.to_string(), "factory for key `acme:openai` failed after 1 attempt");
}

/// anyhow's chain printer (`{:#}`) and a hand-written source walk print the factory's error exactly once.
#[tokio::test(start_paused = true)]
async fn chain_printers_print_each_cause_once() {
    let err = failure(0, refused).await;
    let mut walked = vec![err.to_string()];
    let mut next = err.source();
    while let Some(cause) = next {
        walked.push(cause.to_string());
        next = cause.source();
    }
    assert_eq!(walked.join(": ").matches("connection refused").count(), 1, "{walked:?}");

    let report = format!("{:#}", anyhow::Error::new(err));
    assert_eq!(
        report,
        "factory for key `acme:openai` failed after 1 attempt: connection refused"
    );
}

/// A factory's `std::io::Error` downcasts from `source()`, through `factory_error`, and through an `anyhow::Error` made at the call site.
#[tokio::test(start_paused = true)]
async fn io_error_downcasts() {
    let err = failure(0, refused).await;
    let from_source = err.source().and_then(|s| s.downcast_ref::<io::Error>());
    assert_eq!(from_source.map(io::Error::kind), Some(io::ErrorKind::ConnectionRefused));
    assert_eq!(
        err.factory_error::<io::Error>().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionRefused)
    );
    assert!(
        err.factory_error::<QuotaExceeded>().is_none(),
        "only errors of the asked type"
    );

    // A caller that turned the pool's error into anyhow's finds both.
    let caller = anyhow::Error::new(err);
    assert!(caller.downcast_ref::<PoolError>().is_some());
    let io = caller.chain().find_map(|c| c.downcast_ref::<io::Error>());
    assert_eq!(io.map(io::Error::kind), Some(io::ErrorKind::ConnectionRefused));
}

/// A factory's own error type downcasts from `source()` and through `factory_error`.
#[tokio::test(start_paused = true)]
async fn custom_error_downcasts() {
    let err = failure(0, || QuotaExceeded { retry_in_s: 7 }).await;
    let from_source = err.source().and_then(|s| s.downcast_ref::<QuotaExceeded>());
    assert_eq!(from_source.map(|q| q.retry_in_s), Some(7));
    assert_eq!(err.factory_error::<QuotaExceeded>().map(|q| q.retry_in_s), Some(7));
    assert!(err.factory_error::<io::Error>().is_none());
}

/// A plain `anyhow::Error` keeps its text but not its type: anyhow's own
/// conversion into a box hides the wrapped error, so nothing downcasts (what
/// the README says; this fails if anyhow changes that).
#[tokio::test(start_paused = true)]
async fn anyhow_error_keeps_its_text_not_its_type() {
    let err = failure(0, || anyhow::Error::from(refused())).await;
    assert_eq!(
        err.source().map(ToString::to_string).as_deref(),
        Some("connection refused")
    );
    assert!(err.source().and_then(|s| s.downcast_ref::<io::Error>()).is_none());
    assert!(err.factory_error::<io::Error>().is_none());
}

/// An `anyhow::Error` boxed in the factory with `reallocate_into_boxed_dyn_error_without_backtrace` downcasts to the error it wraps, std or custom.
#[tokio::test(start_paused = true)]
async fn anyhow_error_reboxed_in_the_factory_downcasts() {
    let err = failure(0, || {
        anyhow::Error::from(refused()).reallocate_into_boxed_dyn_error_without_backtrace()
    })
    .await;
    let from_source = err.source().and_then(|s| s.downcast_ref::<io::Error>());
    assert_eq!(from_source.map(io::Error::kind), Some(io::ErrorKind::ConnectionRefused));
    assert!(err.factory_error::<io::Error>().is_some());

    let err = failure(0, || {
        anyhow::Error::new(QuotaExceeded { retry_in_s: 3 }).reallocate_into_boxed_dyn_error_without_backtrace()
    })
    .await;
    assert_eq!(err.factory_error::<QuotaExceeded>().map(|q| q.retry_in_s), Some(3));
}

/// An error given `.context(..)` by anyhow: `source()` is the context, the wrapped error is one step down, and `factory_error` finds it.
#[tokio::test(start_paused = true)]
async fn anyhow_context_is_found_down_the_chain() {
    let err = failure(0, || {
        Err::<(), _>(refused())
            .context("connecting to the provider")
            .unwrap_err()
    })
    .await;
    let source = err.source().expect("the factory's error");
    assert_eq!(source.to_string(), "connecting to the provider");
    assert!(
        source.downcast_ref::<io::Error>().is_none(),
        "the top of the chain is anyhow's context, as the README says"
    );
    assert_eq!(
        err.factory_error::<io::Error>().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionRefused)
    );
    assert_eq!(
        format!("{:#}", anyhow::Error::new(err)),
        "factory for key `acme:openai` failed after 1 attempt: connecting to the provider: connection refused"
    );
}

/// An `anyhow!("..")` message has no type to find: its text is in `source()`, and `factory_error` finds nothing.
#[tokio::test(start_paused = true)]
async fn anyhow_message_is_text_only() {
    let err = failure(0, || anyhow::anyhow!("tenant suspended")).await;
    assert_eq!(
        err.source().map(ToString::to_string).as_deref(),
        Some("tenant suspended")
    );
    assert!(err.factory_error::<io::Error>().is_none());
}

/// No error a caller can get (factory error, panic, timeout, cool-down, shut down) shows the credentials or their hash in `Display`, `Debug` or a chain.
#[tokio::test(start_paused = true)]
async fn no_error_shows_a_credential() {
    let secret = "sk-live-0123456789abcdef";
    let hash = hash_credentials(&serde_json::json!({ "api_key": secret })).unwrap();
    let pool: Pool<String> = Pool::builder()
        .restart_policy(cool_at_once())
        .create_timeout(Duration::from_secs(1))
        .spawn()
        .await
        .unwrap();

    let mut errors = Vec::new();
    let fail = || async { Err::<String, _>(refused()) };
    errors.push(pool.get_or_create("t:down", hash, fail).await.unwrap_err());
    errors.push(pool.get_or_create("t:down", hash, fail).await.unwrap_err());
    let panics = || async { panic!("provider exploded") };
    errors.push(
        pool.get_or_create::<_, _, io::Error>("t:panics", hash, panics)
            .await
            .unwrap_err(),
    );
    let hangs = || futures::future::pending::<Result<String, io::Error>>();
    errors.push(pool.get_or_create("t:hangs", hash, hangs).await.unwrap_err());
    pool.shutdown(Duration::from_secs(1)).await.unwrap();
    errors.push(pool.get_or_create("t:late", hash, fail).await.unwrap_err());

    let kinds: Vec<_> = errors
        .iter()
        .map(|e| format!("{e:?}").split([' ', '{']).next().map(str::to_owned))
        .collect();
    assert_eq!(
        kinds.iter().flatten().map(String::as_str).collect::<Vec<_>>(),
        ["Factory", "CoolingDown", "FactoryPanicked", "Timeout", "ShutDown"],
        "one error of each kind"
    );
    for err in errors {
        let shown = format!("{err} | {err:?} | {:#}", anyhow::Error::new(err.clone()));
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains(&hash.to_string()), "{shown}");
        assert!(!shown.contains("api_key"), "{shown}");
    }
}

/// `spawn` fails with warmpool's own error, which names what was wrong: a
/// registry name already taken is `NameTaken` with the name; the pool that
/// holds the name keeps working.
#[tokio::test(start_paused = true)]
async fn a_taken_actor_name_is_a_spawn_error_that_names_it() {
    let first: warmpool::Pool<u32> = warmpool::Pool::builder().name("pool-a").spawn().await.unwrap();
    let second = warmpool::Pool::<u32>::builder().name("pool-a").spawn().await;
    match second {
        Err(warmpool::SpawnError::NameTaken { name }) => assert_eq!(name, "pool-a"),
        other => panic!("expected NameTaken, got {other:?}"),
    }
    let error = warmpool::Pool::<u32>::builder()
        .name("pool-a")
        .spawn()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("`pool-a`"), "{error}");
    let lease = first
        .get_or_create("k", warmpool::CredentialsHash::from_u64(1), || async {
            Ok::<_, std::io::Error>(7)
        })
        .await
        .unwrap();
    assert_eq!(*lease, 7);
}
