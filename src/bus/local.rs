//! The embedded bus: in-process, over a tokio broadcast channel. Needs no
//! server; useful for several pools in one process, for tests, and as the
//! model of what the server-backed transports do.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::bus::listener::{self, BusEvent};
use crate::bus::{BusError, ListenOptions, Outbox, Publisher, SigningKey, Stamper};
use crate::pool::Pool;

/// An in-process event bus. Cloning gives another handle to the same bus.
///
/// Messages travel as the same wire bytes as over the servers, so signing,
/// echo, replay and gap handling behave the same. A listener that falls
/// more than `capacity` messages behind loses messages; it then applies its
/// [`Recovery`](crate::bus::Recovery) (counted in `BusStats::lost`).
#[derive(Debug, Clone)]
pub struct LocalBus {
    tx: broadcast::Sender<Arc<[u8]>>,
}

/// The sending half of a [`LocalBus`].
#[derive(Debug, Clone)]
pub struct LocalOutbox {
    tx: broadcast::Sender<Arc<[u8]>>,
}

/// Publishes invalidations on a [`LocalBus`].
pub type LocalPublisher = Publisher<LocalOutbox>;

impl Outbox for LocalOutbox {
    /// Never fails: with no listener attached there is nobody to tell.
    async fn send(&self, payload: Vec<u8>) -> Result<(), BusError> {
        let _ = self.tx.send(payload.into());
        Ok(())
    }

    /// Every message in turn; none can fail.
    async fn send_batch(&self, payloads: Vec<Vec<u8>>) -> Vec<Result<(), BusError>> {
        payloads
            .into_iter()
            .map(|payload| {
                let _ = self.tx.send(payload.into());
                Ok(())
            })
            .collect()
    }
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
        Publisher::new(Stamper::new(origin, signing_key), LocalOutbox { tx: self.tx.clone() })
    }

    /// Sends raw bytes, as another (possibly foreign or hostile) publisher
    /// would. Returns how many listeners received them.
    pub fn publish_raw(&self, bytes: impl Into<Arc<[u8]>>) -> usize {
        self.tx.send(bytes.into()).unwrap_or(0)
    }

    /// Starts a task that applies this bus's messages to `pool`. It ends as
    /// soon as the pool shuts down or is dropped, even if no message comes.
    pub fn attach<T: Send + Sync + 'static>(&self, pool: &Pool<T>, options: ListenOptions) -> JoinHandle<()> {
        // A plain stream: no client to drive, so no pump and no channel hop.
        let events = futures::stream::unfold(self.tx.subscribe(), |mut rx| async move {
            let event = match rx.recv().await {
                Ok(bytes) => BusEvent::Message {
                    payload: bytes.to_vec(),
                    stored_at_us: None,
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => BusEvent::Lost {
                    reason: format!("the listener fell {missed} messages behind the embedded bus"),
                },
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((event, rx))
        });
        listener::spawn_stream(pool, options, false, events)
    }
}
