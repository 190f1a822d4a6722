//! One bounded load run: `requests` calls spread over `tasks` concurrent
//! tasks, each call timed; the summary has p50, p99 and requests per second.

use std::future::Future;
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub p50: Duration,
    pub p99: Duration,
    pub per_second: f64,
    pub errors: usize,
}

/// Runs `call(i)` for `i` in `0..requests`, `tasks` at a time (task `t`
/// makes calls `t`, `t + tasks`, ...), and times each call.
pub async fn run<F, Fut, E>(requests: usize, tasks: usize, call: F) -> Summary
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Send + 'static,
{
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|t| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut timings = Vec::with_capacity(requests / tasks + 1);
                let mut errors = 0;
                for i in (t..requests).step_by(tasks) {
                    let begun = Instant::now();
                    let ok = call(i).await.is_ok();
                    timings.push(begun.elapsed());
                    errors += usize::from(!ok);
                }
                (timings, errors)
            })
        })
        .collect();
    let mut timings = Vec::with_capacity(requests);
    let mut errors = 0;
    for worker in workers {
        let (t, e) = worker.await.expect("a load task panicked");
        timings.extend(t);
        errors += e;
    }
    let elapsed = started.elapsed();
    timings.sort_unstable();
    let at = |q: f64| timings[((timings.len() as f64 * q) as usize).min(timings.len() - 1)];
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        per_second: requests as f64 / elapsed.as_secs_f64(),
        errors,
    }
}
