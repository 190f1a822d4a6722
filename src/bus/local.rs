//! The embedded bus: in-process, over a tokio broadcast channel. Needs no
//! server; useful for several pools in one process, for tests, and as the
//! model of what the Redis and NATS adapters do.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::bus::{ListenOptions, Listener, Scope, SigningKey, Stamper};
use crate::pool::Pool;

/// An in-process event bus. Cloning gives another handle to the same bus.
///
/// Messages travel as the same wire bytes as over Redis or NATS, so signing,
/// echo, replay and gap handling behave the same. A listener that falls more
/// than `capacity` messages behind loses messages; it then applies its
/// [`Recovery`](crate::bus::Recovery), as after a reconnect.
#[derive(Debug, Clone)]
pub struct LocalBus {
    tx: broadcast::Sender<Arc<[u8]>>,
}

/// Publishes invalidations on a [`LocalBus`].
#[derive(Debug)]
pub struct LocalPublisher {
    stamper: Stamper,
    tx: broadcast::Sender<Arc<[u8]>>,
}

impl LocalBus {
    /// A bus that buffers up to `capacity` messages per listener.
    pub fn new(capacity: usize) -> Self {
        LocalBus {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// A publisher for `origin` (see [`new_origin`](crate::bus::new_origin)),
    /// signing with `signing_key` if given.
    pub fn publisher(&self, origin: impl Into<String>, signing_key: Option<SigningKey>) -> LocalPublisher {
        LocalPublisher {
            stamper: Stamper::new(origin, signing_key),
            tx: self.tx.clone(),
        }
    }

    /// Sends raw bytes, as another (possibly foreign or hostile) publisher
    /// would. Returns how many listeners received them.
    pub fn publish_raw(&self, bytes: impl Into<Arc<[u8]>>) -> usize {
        self.tx.send(bytes.into()).unwrap_or(0)
    }

    /// Starts a task that applies this bus's messages to `pool`. It ends when
    /// the pool is gone or shut down.
    pub fn attach<T: Send + Sync + 'static>(&self, pool: &Pool<T>, options: ListenOptions) -> JoinHandle<()> {
        let mut rx = self.tx.subscribe();
        let mut listener = Listener::new(pool, options);
        tokio::spawn(async move {
            loop {
                let received = rx.recv().await;
                if listener.is_closed() {
                    break;
                }
                match received {
                    Ok(bytes) => {
                        listener.handle(&bytes).await;
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "local bus listener fell behind; recovering");
                        listener.reconnected().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }
}

impl LocalPublisher {
    /// The origin id stamped on every message.
    pub fn origin(&self) -> &str {
        self.stamper.origin()
    }

    /// Publishes an invalidation of `scope`. Returns how many listeners got it.
    pub fn publish(&self, scope: Scope) -> usize {
        self.tx.send(self.stamper.stamp(scope).into()).unwrap_or(0)
    }
}
