mod common;
use common::*;
use std::time::Duration;

/// A second call on a warm key is a hit on the same instance.
#[tokio::test(start_paused = true)]
async fn second_call_hits() {
    let c = Counters::new();
    let pool = builder(&c).spawn().await.unwrap();
    let a = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::from_millis(10)))
        .await
        .unwrap();
    let b = pool
        .get_or_create("t:a", h(1), factory(&c, "t:a", h(1), Duration::ZERO))
        .await
        .unwrap();
    assert!(warmpool::Lease::ptr_eq(&a, &b));
    assert_eq!(c.builds(), 1);
    let s = pool.stats().await.unwrap();
    assert_eq!((s.hits, s.misses, s.builds, s.live_leases), (1, 1, 1, 2));
    drop((a, b));
    let report = pool.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(report.retired, 1);
    assert_eq!(c.disposed(), 1);
    assert!(report.still_leased.is_empty());
}
