//! Pooled instances: the instance every section pools, the ledger that
//! counts its builds and disposals, and the factories that build it.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warmpool::{CredentialsHash, Pool};

use crate::stats::now_ns;

/// What the pool holds in these benchmarks: small, so the pool's own cost is
/// what is measured. `serial` is unique per build.
#[derive(Debug)]
pub(crate) struct Inst {
    pub(crate) key: u32,
    pub(crate) hash: CredentialsHash,
    pub(crate) serial: u64,
}

pub(crate) const HASH: CredentialsHash = CredentialsHash::from_u64(0x5eed);

pub(crate) async fn ready() -> Result<Inst, std::io::Error> {
    Ok(Inst {
        key: 0,
        hash: HASH,
        serial: 0,
    })
}

/// Counts builds and disposals per build serial, with dispose timestamps.
pub(crate) struct Ledger {
    pub(crate) next_serial: AtomicU64,
    pub(crate) disposed: AtomicU64,
    pub(crate) per_serial: Vec<AtomicU8>,
    pub(crate) overflow: AtomicU64,
    pub(crate) stamps: Mutex<Vec<u64>>,
    pub(crate) stamping: AtomicBool,
}

impl Ledger {
    pub(crate) fn new(capacity: usize) -> Arc<Ledger> {
        Arc::new(Ledger {
            next_serial: AtomicU64::new(0),
            disposed: AtomicU64::new(0),
            per_serial: (0..capacity).map(|_| AtomicU8::new(0)).collect(),
            overflow: AtomicU64::new(0),
            stamps: Mutex::new(Vec::new()),
            stamping: AtomicBool::new(false),
        })
    }

    pub(crate) fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, SeqCst)
    }

    pub(crate) fn on_dispose(&self, inst: &Inst) {
        match self.per_serial.get(inst.serial as usize) {
            Some(c) => {
                c.fetch_add(1, SeqCst);
            }
            None => {
                self.overflow.fetch_add(1, SeqCst);
            }
        }
        if self.stamping.load(Relaxed) {
            self.stamps.lock().unwrap().push(now_ns());
        }
        self.disposed.fetch_add(1, SeqCst);
    }

    pub(crate) fn take_stamps(&self) -> Vec<u64> {
        std::mem::take(&mut *self.stamps.lock().unwrap())
    }

    /// (built, disposed exactly once, never disposed, disposed more than once)
    pub(crate) fn audit(&self) -> (u64, u64, u64, u64) {
        let built = self.next_serial.load(SeqCst);
        let (mut once, mut never, mut twice) = (0, 0, 0);
        for c in self.per_serial.iter().take(built as usize) {
            match c.load(SeqCst) {
                0 => never += 1,
                1 => once += 1,
                _ => twice += 1,
            }
        }
        (built, once, never, twice + self.overflow.load(SeqCst))
    }
}

pub(crate) fn counting_pool(ledger: &Arc<Ledger>) -> warmpool::PoolBuilder<Inst> {
    let ledger = ledger.clone();
    Pool::builder().on_dispose(move |_key, inst: Inst| {
        ledger.on_dispose(&inst);
        async {}
    })
}

/// A factory that builds an `Inst` for `key`/`hash` after `delay`, with a
/// fresh serial from `ledger`.
pub(crate) fn factory(
    ledger: &Arc<Ledger>,
    key: u32,
    hash: CredentialsHash,
    delay: Duration,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<Inst, std::io::Error>> + Send + Sync + 'static {
    let ledger = ledger.clone();
    move || {
        let serial = ledger.serial();
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(Inst { key, hash, serial })
        })
    }
}

pub(crate) fn tenant_key(tenant: usize, k: usize) -> String {
    format!("t{tenant:02}:{k:04}")
}
