//! Capacity (`max_entries`): a new key, built or inserted, retires the
//! least recently used unleased key; leased keys are skipped, so the pool
//! overshoots and is trimmed later (by the next insert or sweep tick); a
//! credentials rotation at capacity admits no new key. Paused clock;
//! builds and disposals are counted exactly, disposals by key.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use warmpool::{Lease, Pool};

fn strings(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

fn disposed_keys(c: &Counters) -> Vec<String> {
    c.disposed_keys.lock().unwrap().clone()
}

/// A pool with `max_entries` and the sweep off, so only inserts enforce capacity.
async fn pool(c: &Arc<Counters>, max_entries: usize) -> Pool<Client> {
    builder(c)
        .max_entries(max_entries)
        .sweep_interval(Duration::ZERO)
        .spawn()
        .await
        .unwrap()
}

/// At the exact cap (3), inserting a 4th key retires exactly the LRU key (2, since 1 was touched) and nothing else.
#[tokio::test(start_paused = true)]
async fn exact_cap_inserting_one_more_retires_exactly_the_lru_key() {
    let c = Counters::new();
    let pool = pool(&c, 3).await;

    for key in ["1", "2", "3"] {
        drop(get(&pool, &c, key).await);
    }
    let s = pool.stats().await.unwrap();
    assert_eq!((s.size, s.retirements.total()), (3, 0), "at the cap nothing is retired");
    let one = get(&pool, &c, "1").await; // touch: 2 is now least recently used
    assert_eq!(one.serial, 1, "a hit");
    drop(one);

    drop(get(&pool, &c, "4").await);
    eventually("the LRU key is disposed", async || c.disposed() == 1).await;
    eventually("the evicted key leaves the pool", async || {
        pool.stats().await.unwrap().keys == strings(&["1", "3", "4"])
    })
    .await;
    settle().await;

    assert_eq!(c.disposed(), 1, "exactly one disposal");
    assert_eq!(disposed_keys(&c), ["2"]);
    assert_eq!(c.builds(), 4);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.capacity, 1);
    assert_eq!(s.retirements.total(), 1, "nothing else retired");
    assert_eq!(s.capacity_overshoot, 0);
    assert_eq!(s.size, 3);
    assert_eq!(s.keys, strings(&["1", "3", "4"]));

    // The survivors are still warm.
    for (key, serial) in [("1", 1), ("3", 3), ("4", 4)] {
        assert_eq!(get(&pool, &c, key).await.serial, serial, "{key} is a hit");
    }
    assert_eq!(c.builds(), 4);
}

/// A leased LRU key is skipped: the next unleased LRU key is evicted instead.
#[tokio::test(start_paused = true)]
async fn leased_lru_key_is_skipped() {
    let c = Counters::new();
    let pool = pool(&c, 3).await;

    let held = get(&pool, &c, "1").await; // LRU, and leased
    drop(get(&pool, &c, "2").await);
    drop(get(&pool, &c, "3").await);

    drop(get(&pool, &c, "4").await);
    eventually("the next unleased LRU key is disposed", async || c.disposed() == 1).await;
    eventually("the evicted key leaves the pool", async || {
        pool.stats().await.unwrap().keys == strings(&["1", "3", "4"])
    })
    .await;
    settle().await;

    assert_eq!(disposed_keys(&c), ["2"]);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.capacity, 1);
    assert_eq!(s.retirements.total(), 1);
    assert_eq!(s.capacity_overshoot, 0);
    assert_eq!(s.size, 3);

    // The leased key kept its instance and is still served from it.
    let again = get(&pool, &c, "1").await;
    assert!(Lease::ptr_eq(&held, &again));
    assert_eq!(c.builds(), 4);
}

/// With every key leased, one more key overshoots (size N+1, overshoot counted, nothing retired); once unleased, the next sweep tick brings size back to N.
#[tokio::test(start_paused = true)]
async fn all_leased_overshoots_then_sweep_restores_cap() {
    let c = Counters::new();
    let pool = builder(&c)
        .max_entries(3)
        .sweep_interval(Duration::from_secs(1))
        .spawn()
        .await
        .unwrap();

    let mut leases = Vec::new();
    for key in ["1", "2", "3", "4"] {
        leases.push(get(&pool, &c, key).await);
    }
    settle().await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.size, 4, "every key leased: admitted over the cap");
    assert_eq!(s.capacity_overshoot, 1);
    assert_eq!(s.retirements.total(), 0, "a leased key is never evicted");
    assert_eq!(s.keys, strings(&["1", "2", "3", "4"]));
    assert_eq!(c.disposed(), 0);

    drop(leases);
    tokio::time::advance(Duration::from_secs(1)).await; // one sweep tick
    eventually("the sweep brings size back to the cap", async || {
        pool.stats().await.unwrap().size == 3
    })
    .await;
    eventually("the LRU key is disposed", async || c.disposed() == 1).await;
    settle().await;

    assert_eq!(disposed_keys(&c), ["1"]);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.size, 3);
    assert_eq!(s.keys, strings(&["2", "3", "4"]));
    assert_eq!(s.retirements.capacity, 1);
    assert_eq!(s.retirements.total(), 1);
    assert_eq!(s.capacity_overshoot, 1);
    assert_eq!(c.builds(), 4);
}

/// With every key leased and the sweep off, the next insert after the leases are dropped brings size back to N.
#[tokio::test(start_paused = true)]
async fn all_leased_overshoot_is_repaired_by_next_insert() {
    let c = Counters::new();
    let pool = pool(&c, 3).await;

    let mut leases = Vec::new();
    for key in ["1", "2", "3", "4"] {
        leases.push(get(&pool, &c, key).await);
    }
    settle().await;
    let s = pool.stats().await.unwrap();
    assert_eq!((s.size, s.capacity_overshoot, s.retirements.total()), (4, 1, 0));

    drop(leases);
    settle().await;
    assert_eq!(
        pool.stats().await.unwrap().size,
        4,
        "no sweep: nothing shrinks by itself"
    );

    drop(get(&pool, &c, "5").await);
    eventually("size back to the cap", async || pool.stats().await.unwrap().size == 3).await;
    eventually("the two LRU keys are disposed", async || c.disposed() == 2).await;
    settle().await;

    assert_eq!(disposed_keys(&c), ["1", "2"]);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.keys, strings(&["3", "4", "5"]));
    assert_eq!(s.retirements.capacity, 2);
    assert_eq!(s.retirements.total(), 2);
    assert_eq!(s.capacity_overshoot, 1, "the insert of 5 found an evictable key");
    assert_eq!(c.builds(), 5);
}

/// 1,000 distinct keys through a 100-entry pool: size settles at 100, exactly 900 disposals, 1,000 builds.
#[tokio::test(start_paused = true)]
async fn thousand_keys_through_a_hundred_entry_pool() {
    let c = Counters::new();
    let pool = pool(&c, 100).await;

    let key = |i: usize| format!("k{i:04}");
    for i in 0..1_000 {
        drop(get(&pool, &c, &key(i)).await);
    }
    eventually("size settles at the cap", async || {
        pool.stats().await.unwrap().size == 100
    })
    .await;
    eventually("every evicted instance is disposed", async || c.disposed() == 900).await;
    settle().await;

    assert_eq!(c.builds(), 1_000);
    assert_eq!(c.disposed(), 900, "exactly once each");
    let s = pool.stats().await.unwrap();
    assert_eq!(s.size, 100);
    assert_eq!(s.builds, 1_000);
    assert_eq!(s.retirements.capacity, 900);
    assert_eq!(s.retirements.total(), 900);
    assert_eq!(s.capacity_overshoot, 0);
    let expected: Vec<String> = (900..1_000).map(key).collect();
    assert_eq!(s.keys, expected, "the 100 most recently used keys remain");
    let mut gone = disposed_keys(&c);
    gone.sort();
    assert_eq!(
        gone,
        (0..900).map(key).collect::<Vec<_>>(),
        "each old key disposed once"
    );
}

/// An evicted key asked for again gets a fresh factory call and a working instance.
#[tokio::test(start_paused = true)]
async fn evicted_key_is_rebuilt_on_next_call() {
    let c = Counters::new();
    let pool = pool(&c, 2).await;

    let first_a = get(&pool, &c, "a").await;
    let first_a_id = first_a.instance_id();
    drop(first_a);
    drop(get(&pool, &c, "b").await);
    drop(get(&pool, &c, "c").await); // evicts a
    eventually("a is disposed", async || c.disposed() == 1).await;
    assert_eq!(disposed_keys(&c), ["a"]);

    let again = get(&pool, &c, "a").await; // evicts b
    assert_ne!(again.instance_id(), first_a_id, "a fresh instance");
    assert_eq!((again.key.as_str(), again.hash, again.serial), ("a", h(1), 4));
    assert_eq!(c.builds(), 4, "one fresh factory call");
    drop(again);

    let hit = get(&pool, &c, "a").await;
    assert_eq!(hit.serial, 4, "the rebuilt instance is warm");
    assert_eq!(c.builds(), 4);
    eventually("b is disposed", async || c.disposed() == 2).await;
    settle().await;
    assert_eq!(disposed_keys(&c), ["a", "b"]);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.capacity, 2);
    assert_eq!(s.keys, strings(&["a", "c"]));
    assert_eq!(s.size, 2);
}

/// `insert` of a new key counts against capacity like a build: the LRU key is retired.
#[tokio::test(start_paused = true)]
async fn insert_of_a_new_key_evicts_the_lru_key() {
    let c = Counters::new();
    let pool = pool(&c, 2).await;

    drop(get(&pool, &c, "a").await);
    drop(get(&pool, &c, "b").await);
    let primed = Client {
        key: "z".to_string(),
        hash: h(1),
        serial: 99,
    };
    pool.insert("z", h(1), primed).await.unwrap();
    eventually("a is disposed", async || c.disposed() == 1).await;
    settle().await;

    assert_eq!(disposed_keys(&c), ["a"]);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.capacity, 1);
    assert_eq!(s.retirements.total(), 1);
    assert_eq!(s.keys, strings(&["b", "z"]));
    assert_eq!(s.size, 2);
    assert_eq!(get(&pool, &c, "z").await.serial, 99, "the inserted instance is served");
    assert_eq!(c.builds(), 2);
}

/// Contract 5 for `insert`: into a full pool whose keys are all leased, the
/// inserted key is admitted and served (overshoot counted once), not retired
/// at once; it is trimmed only later, as the LRU key without a lease, when
/// another key is admitted.
#[tokio::test(start_paused = true)]
async fn insert_into_a_full_leased_pool_is_admitted_and_served() {
    let c = Counters::new();
    let pool = pool(&c, 2).await;
    let a = get(&pool, &c, "a").await;
    let b = get(&pool, &c, "b").await;
    let primed = Client {
        key: "c".to_string(),
        hash: h(1),
        serial: 99,
    };
    pool.insert("c", h(1), primed).await.unwrap();
    settle().await;

    let s = pool.stats().await.unwrap();
    assert_eq!(s.keys, strings(&["a", "b", "c"]));
    assert_eq!(s.capacity_overshoot, 1);
    assert_eq!(s.retirements.total(), 0);
    assert_eq!(c.disposed(), 0, "the inserted instance is not disposed");
    assert_eq!(get(&pool, &c, "c").await.serial, 99, "the inserted instance is served");
    settle().await;
    assert_eq!(pool.stats().await.unwrap().capacity_overshoot, 1, "counted once");

    // Leases gone, one more key: the two least recently used keys go (a, b),
    // and the pool is back at its cap.
    drop((a, b));
    drop(get(&pool, &c, "d").await);
    eventually("a and b are disposed", async || c.disposed() == 2).await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.keys, strings(&["c", "d"]));
    assert_eq!(s.retirements.capacity, 2);
}

// A regression found by the model test (`tests/model.rs`) while the hit path
// learned to ask without the factory first (`Answer::NeedFactory`).
/// A credential rotation at capacity rebuilds in the same key actor: no second overshoot, no actor churn (the first ask once retired the old instance and let the supervisor stop the idle actor before the second ask).
#[tokio::test(start_paused = true)]
async fn rotation_at_capacity_counts_one_overshoot_and_keeps_the_actor() {
    let c = Counters::new();
    let pool = builder(&c).max_entries(1).spawn().await.unwrap();
    let b = pool
        .get_or_create("b:", h(3), factory(&c, "b:", h(3), Duration::ZERO))
        .await
        .unwrap();
    let a = pool
        .get_or_create("a:", h(1), factory(&c, "a:", h(1), Duration::ZERO))
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        pool.stats().await.unwrap().capacity_overshoot,
        1,
        "b is leased: a overshoots"
    );
    let ids = || {
        let mut ids: Vec<_> = key_actors(&pool).iter().map(|a| a.get_id()).collect();
        ids.sort();
        ids
    };
    let before = ids();
    let b2 = pool
        .get_or_create("b:", h(1), factory(&c, "b:", h(1), Duration::ZERO))
        .await
        .unwrap();
    settle().await;
    assert_eq!(b2.serial, 3);
    let s = pool.stats().await.unwrap();
    assert_eq!(s.capacity_overshoot, 1, "the rotation admitted no new key");
    assert_eq!(s.retirements.credentials, 1);
    assert_eq!(ids(), before, "b's actor served the rotation itself");
    drop((a, b, b2));
}

/// A hit on an instance that its key then retires while the key stays (here:
/// rotated to another hash by a request queued earlier) is still a use of
/// the key for LRU order: the next instance carries it. Found by the model
/// test: the hit's use went with the retired instance, so the key looked
/// unused since its first call and was evicted before a key used later.
#[tokio::test(start_paused = true)]
async fn a_hit_on_an_instance_retired_while_its_key_stays_still_counts_for_lru() {
    let c = Counters::new();
    let pool = pool(&c, 2).await;

    // t = 0: "k" asked with hash 3, its build taking 1 s.
    let asked = spawn_get(&pool, &c, "k", 3, Duration::from_secs(1));
    settle().await;
    tokio::time::advance(Duration::from_millis(1)).await;
    // t = 1 ms: an insert with hash 1 replaces it (the build goes stale;
    // its caller's request is handled again when it ends).
    pool.insert("k", h(1), client("k", 1, 100)).await.unwrap();
    tokio::time::advance(Duration::from_millis(1)).await;
    // t = 2 ms: "other" is used.
    drop(get(&pool, &c, "other").await);
    tokio::time::advance(Duration::from_millis(1)).await;
    // t = 3 ms: a hit on "k"'s inserted instance, through the read view.
    let hit = pool.get("k", h(1)).expect("the inserted instance is served");
    assert_eq!(hit.serial, 100);
    drop(hit);

    // The stale build ends; the queued hash-3 request retires the inserted
    // instance (credentials) and builds again, which takes another second.
    tokio::time::advance(Duration::from_millis(2_100)).await;
    let lease = bounded(Duration::from_secs(5), "the hash-3 call", asked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.hash, h(3));
    drop(lease);
    settle().await;

    // A third key at the cap of 2: "other" (last used at 2 ms) is the least
    // recently used, not "k" (3 ms).
    drop(get(&pool, &c, "third").await);
    eventually("the LRU key is disposed", async || {
        disposed_keys(&c).iter().any(|k| k == "other")
    })
    .await;
    settle().await;
    let s = pool.stats().await.unwrap();
    assert_eq!(s.retirements.capacity, 1, "one eviction");
    assert_eq!(s.keys, strings(&["k", "third"]), "\"k\" stays");
}

/// With no lease held, a new key in a full pool whose keys were all hit
/// since the supervisor last looked evicts the least recently used one at
/// once: no overshoot, nothing left for a sweep tick.
#[tokio::test(start_paused = true)]
async fn a_full_pool_whose_keys_were_all_hit_since_evicts_at_once() {
    let c = Counters::new();
    let pool = pool(&c, 1_000).await;
    let keys: Vec<String> = (0..1_000).map(|i| format!("k{i:04}")).collect();
    for key in &keys {
        drop(get(&pool, &c, key).await);
    }
    // A hit on each, in order, through the read view: k0000 is still the
    // least recently used key, and every key was touched since it was
    // recorded.
    tokio::time::advance(Duration::from_millis(5)).await;
    for key in &keys {
        drop(get(&pool, &c, key).await);
    }
    assert_eq!(c.builds(), 1_000, "the second round only hit");

    drop(get(&pool, &c, "new").await);
    eventually("the LRU key is disposed", async || c.disposed() == 1).await;
    settle().await;
    let s = pool.stats().await.unwrap();
    assert_eq!(
        (s.size, s.retirements.capacity, s.capacity_overshoot),
        (1_000, 1, 0),
        "back at the cap at once, with no overshoot"
    );
    assert_eq!(disposed_keys(&c), ["k0000"], "the least recently used key goes");
}

/// Under steady traffic (every resident key hit between two admissions)
/// and no lease held, each admission evicts one key: the pool never
/// exceeds its cap and never counts an overshoot.
#[tokio::test(start_paused = true)]
async fn steady_traffic_to_every_key_never_exceeds_the_cap() {
    let c = Counters::new();
    let cap = 100;
    let pool = pool(&c, cap).await;
    let mut resident: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for i in 0..400 {
        // Hit every resident key, oldest first, then admit a new one.
        tokio::time::advance(Duration::from_millis(2)).await;
        for key in &resident {
            drop(get(&pool, &c, key).await);
        }
        let key = format!("k{i:04}");
        drop(get(&pool, &c, &key).await);
        resident.push_back(key);
        if resident.len() > cap {
            let oldest = resident.pop_front().unwrap();
            eventually("the oldest key is evicted", async || {
                disposed_keys(&c).last() == Some(&oldest)
            })
            .await;
        }
        let s = pool.stats().await.unwrap();
        assert!(s.size <= cap, "round {i}: {} resident over a cap of {cap}", s.size);
        assert_eq!(s.capacity_overshoot, 0, "round {i}: no key is leased, so no overshoot");
    }
    assert_eq!(c.builds(), 400, "every hit was a hit");
    assert_eq!(c.disposed(), 300, "one eviction per admission past the cap");
}
