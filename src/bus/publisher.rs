//! The publishing side every transport shares: a [`Publisher`] stamps each
//! message and hands it to its transport's [`Outbox`], in one order.
//!
//! # Why one sending task per publisher
//!
//! Listeners read an origin's sequence numbers as the order of its messages:
//! a number not above the last one seen is a replay, one further above is a
//! gap (a recovery, by default a flush of the whole pool). So the numbers
//! must be handed out in the order the transport receives the messages,
//! whatever the number of tasks publishing at once. Taking a number first
//! and sending afterwards lets two tasks reach the transport in the other
//! order (issue 20, 1: up to 9% of 20,000 invalidations from 16 tasks were
//! lost that way).
//!
//! A lock held across stamping and sending would keep the order, but each
//! message would then wait for the previous one's round trip. Instead,
//! callers queue their scopes, and one task per publisher takes everything
//! queued so far (up to [`MAX_BATCH`]), stamps it in queue order and hands
//! it to the outbox as one batch: one pipelined round trip on Redis, one
//! flush on NATS, the acknowledgements awaited together on JetStream. Each
//! caller then gets its own message's result. A batch is sent only after the
//! previous one's results are in, so no transport can reorder two batches;
//! under load the batches grow, so concurrent callers share round trips
//! instead of queueing behind each other's.

use std::fmt;
use std::future::Future;
use std::sync::{Mutex, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::bus::listener::apply;
use crate::bus::{BusError, Scope, Stamper};
use crate::pool::Pool;

/// The most messages one batch hands to the outbox: enough to amortise a
/// round trip, small enough that a Redis pipeline or a burst of NATS
/// publishes stays modest.
pub(crate) const MAX_BATCH: usize = 256;

/// The sending half of a transport: hands encoded messages to the server.
/// Implement it to publish over a transport of your own with a
/// [`Publisher`].
pub trait Outbox: Send + Sync + 'static {
    /// Sends one encoded message; returns once the transport has taken it
    /// (for the server-backed transports: the server has it).
    fn send(&self, payload: Vec<u8>) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Sends `payloads` (up to 256) in this order and returns one result per
    /// payload, in the same order, once the transport has taken them all. A
    /// later payload must never reach the server before an earlier one.
    ///
    /// Defaults to [`send`](Self::send) for each payload in turn, each
    /// awaited before the next: in order for any transport, but one round
    /// trip per message. The built-in outboxes pipeline the batch instead.
    fn send_batch(&self, payloads: Vec<Vec<u8>>) -> impl Future<Output = Vec<Result<(), BusError>>> + Send {
        async move {
            let mut results = Vec::with_capacity(payloads.len());
            for payload in payloads {
                results.push(self.send(payload).await);
            }
            results
        }
    }
}

/// Publishes invalidations from one origin over one transport: stamps,
/// signs, and hands the bytes to the transport's [`Outbox`]. Every
/// transport's publisher is this type, so they all have one shape.
///
/// # Concurrent publishing
///
/// A publisher is shared by reference (or in an `Arc`) between any number
/// of tasks. Messages are stamped in the order their calls reach the
/// publisher and reach the transport in that same order, so listeners see
/// every accepted invalidation: none is taken for a replay and no false gap
/// is counted. Concurrent calls are sent together (see the module docs of
/// `publisher.rs`): no extra round trip per message, fewer under load.
///
/// Sending happens in a task of the publisher's own, started by its first
/// call on the runtime of that call, and ending when the publisher is
/// dropped (after sending what was queued). A call whose future is dropped
/// once it was queued is still sent; only its result is lost.
pub struct Publisher<O> {
    /// Kept apart from the stamper, which the sending task owns.
    origin: String,
    /// Where calls queue their messages for the sending task. Unbounded
    /// because every caller waits for its own result: what is queued is at
    /// most one message per waiting (or abandoned) call.
    queue: mpsc::UnboundedSender<Queued>,
    /// The sending task, until the first call starts it: a publisher can be
    /// made outside a runtime (`LocalBus::publisher` is not async).
    idle: Mutex<Option<Sender<O>>>,
    /// Set once the sending task is started.
    started: OnceLock<()>,
}

/// One call's message and where its result goes.
struct Queued {
    message: Outgoing,
    reply: oneshot::Sender<Result<(), BusError>>,
}

/// What a call asked to send.
enum Outgoing {
    /// An invalidation, stamped when its batch is sent.
    Scope(Scope),
    /// Bytes as given ([`Publisher::publish_raw`]).
    Raw(Vec<u8>),
}

/// The sending task's state: the only owner of the stamper, so numbers are
/// taken in the order messages are sent.
struct Sender<O> {
    stamper: Stamper,
    outbox: O,
    queue: mpsc::UnboundedReceiver<Queued>,
}

impl<O: Outbox> Sender<O> {
    /// Sends batches until every handle to the queue is gone.
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while self.queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let (payloads, replies): (Vec<_>, Vec<_>) = batch
                .drain(..)
                .map(|queued| {
                    let payload = match queued.message {
                        Outgoing::Scope(scope) => self.stamper.stamp(scope),
                        Outgoing::Raw(bytes) => bytes,
                    };
                    (payload, queued.reply)
                })
                .unzip();
            let results = self.outbox.send_batch(payloads).await;
            // A caller that went away does not want its result.
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
    }
}

impl<O: Outbox> Publisher<O> {
    /// A publisher stamping with `stamper` and sending through `outbox`.
    pub fn new(stamper: Stamper, outbox: O) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        Publisher {
            origin: stamper.origin().to_string(),
            queue,
            idle: Mutex::new(Some(Sender {
                stamper,
                outbox,
                queue: receiver,
            })),
            started: OnceLock::new(),
        }
    }

    /// The origin id stamped on every message.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Publishes an invalidation of `scope` to every other instance.
    ///
    /// This instance's own listener ignores it (an echo): to retire it here
    /// too, use [`invalidate`](Self::invalidate).
    ///
    /// # Errors
    ///
    /// [`BusError::Transport`] when the transport could not take it; the
    /// message's sequence number is then skipped, so listeners see a gap.
    pub async fn publish(&self, scope: Scope) -> Result<(), BusError> {
        self.send(Outgoing::Scope(scope)).await
    }

    /// Retires `scope` in `pool` (this instance) at once, then publishes it
    /// to every other instance. Returns how many keys it retired here.
    ///
    /// # Errors
    ///
    /// [`BusError::Pool`] if `pool` is shutting down (nothing is published
    /// then), [`BusError::Transport`] if publishing failed (the local
    /// retirement has happened).
    pub async fn invalidate<T: Send + Sync + 'static>(&self, pool: &Pool<T>, scope: Scope) -> Result<usize, BusError> {
        let retired = apply(pool, &scope).await?;
        self.publish(scope).await?;
        Ok(retired)
    }

    /// Publishes raw bytes, as any other (possibly foreign or hostile)
    /// publisher could, in turn with this publisher's other messages.
    pub async fn publish_raw(&self, bytes: Vec<u8>) -> Result<(), BusError> {
        self.send(Outgoing::Raw(bytes)).await
    }

    async fn send(&self, message: Outgoing) -> Result<(), BusError> {
        self.started.get_or_init(|| {
            let sender = self.idle.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(sender) = sender {
                tokio::spawn(sender.run());
            }
        });
        let (reply, result) = oneshot::channel();
        self.queue.send(Queued { message, reply }).map_err(|_| {
            BusError::transport(
                "publishing",
                "the publisher's sending task has ended (its outbox panicked)",
            )
        })?;
        result.await.unwrap_or_else(|_| {
            Err(BusError::transport(
                "publishing",
                "no result for this message: the outbox panicked, or returned fewer results than messages",
            ))
        })
    }
}

/// Shows the origin only: the outbox may hold a client with credentials.
impl<O> fmt::Debug for Publisher<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}
