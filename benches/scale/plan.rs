//! Settings: the `Plan` of a full or a quick (`WARMPOOL_BENCH_QUICK`) run,
//! and the runtime every section runs on.

use std::time::Duration;

#[derive(Clone)]
pub(crate) struct Plan {
    pub(crate) quick: bool,
    /// Measured rounds per hit configuration (systems interleaved per round).
    pub(crate) hit_rounds: usize,
    pub(crate) hit_ops_one: usize,
    pub(crate) hit_ops_per_caller_64: usize,
    pub(crate) storm_rounds: usize,
    pub(crate) resident: usize,
    pub(crate) rss_runs: usize,
    pub(crate) tick_rounds: usize,
    pub(crate) prefix_rounds: usize,
    pub(crate) sweep_interval: Duration,
    pub(crate) quiet_window: Duration,
    pub(crate) rotation_passes: usize,
}

impl Plan {
    pub(crate) fn new() -> Plan {
        let quick = std::env::var("WARMPOOL_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
        if quick {
            Plan {
                quick,
                hit_rounds: 2,
                hit_ops_one: 20_000,
                hit_ops_per_caller_64: 500,
                storm_rounds: 1,
                resident: 100_000,
                rss_runs: 1,
                tick_rounds: 2,
                prefix_rounds: 2,
                sweep_interval: Duration::from_millis(500),
                quiet_window: Duration::from_millis(150),
                rotation_passes: 1,
            }
        } else {
            Plan {
                quick,
                hit_rounds: 5,
                hit_ops_one: 200_000,
                hit_ops_per_caller_64: 5_000,
                storm_rounds: 3,
                resident: 100_000,
                rss_runs: 3,
                tick_rounds: 6,
                prefix_rounds: 6,
                sweep_interval: Duration::from_millis(1_000),
                quiet_window: Duration::from_millis(400),
                rotation_passes: 3,
            }
        }
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
