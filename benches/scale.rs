//! Scale harness: prints Markdown tables of hit-latency distributions,
//! cold-key storms, 100,000 resident keys, and rotation under load; writes
//! `benches/hit_latency.svg` (full runs only).
//!
//! `cargo bench --bench scale` (about 3-4 minutes on 2 cores);
//! `WARMPOOL_BENCH_QUICK=1 cargo bench --bench scale` for a short run;
//! `WARMPOOL_BENCH_ONLY=hits,storms,memory,resident,rotation` (any subset)
//! runs only those sections (the chart is written by full runs only).
//!
//! Everything runs on one tokio multi-thread runtime with 2 workers; callers
//! are tasks on it. Memory per entry is measured in child processes (this
//! same binary re-run with `WARMPOOL_BENCH_CHILD` set), so that one
//! measurement's freed memory cannot hide the next one's growth.

#[path = "scale/chart.rs"]
mod chart;
#[path = "common/floor.rs"]
mod floor;
#[path = "scale/hits.rs"]
mod hits;
#[path = "scale/instances.rs"]
mod instances;
#[path = "scale/memory.rs"]
mod memory;
#[path = "scale/plan.rs"]
mod plan;
#[path = "scale/resident.rs"]
mod resident;
#[path = "scale/rotation.rs"]
mod rotation;
#[path = "scale/stats.rs"]
mod stats;
#[path = "scale/storms.rs"]
mod storms;

use std::time::Instant;

use crate::chart::write_svg;
use crate::hits::section_hits;
use crate::memory::{child, section_memory};
use crate::plan::{Plan, runtime};
use crate::resident::section_resident;
use crate::rotation::section_rotation;
use crate::stats::now_ns;
use crate::storms::section_storms;

fn main() {
    if let Ok(mode) = std::env::var("WARMPOOL_BENCH_CHILD") {
        child(&mode);
        return;
    }
    let plan = Plan::new();
    now_ns();
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let started = Instant::now();
    println!(
        "# warmpool scale benchmarks{}\n",
        if plan.quick {
            " (QUICK run: fewer rounds and samples)"
        } else {
            ""
        }
    );
    println!(
        "{} CPUs available; load average at start: {}\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        loadavg()
    );
    // WARMPOOL_BENCH_ONLY=hits,storms,memory,resident,rotation runs only those sections.
    let only = std::env::var("WARMPOOL_BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|s| s.trim() == name);
    let rt = runtime();
    // Every section runs as a task on the runtime's workers (never on the
    // thread blocked in `block_on`), like request handlers in a service.
    let on_workers = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
        rt.block_on(async { tokio::spawn(f).await.unwrap() })
    };
    if run("hits") {
        let p = plan.clone();
        let figures = rt.block_on(async { tokio::spawn(async move { section_hits(&p).await }).await.unwrap() });
        if !plan.quick && only.is_empty() {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/hit_latency.svg");
            match write_svg(&figures, &path) {
                Ok(()) => println!("Chart written to `benches/hit_latency.svg`.\n"),
                Err(e) => println!("Could not write the chart: {e}\n"),
            }
        }
    }
    if run("storms") {
        let p = plan.clone();
        on_workers(Box::pin(async move { section_storms(&p).await }));
    }
    if run("memory") {
        section_memory(&plan);
    }
    if run("resident") {
        let p = plan.clone();
        on_workers(Box::pin(async move { section_resident(&p).await }));
    }
    if run("rotation") {
        let p = plan.clone();
        on_workers(Box::pin(async move { section_rotation(&p).await }));
    }
    println!(
        "Total run time {:.0} s; load average at end: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
