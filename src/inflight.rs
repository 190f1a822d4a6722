//! Misses in flight: a call that misses while another call of the same key
//! and credentials hash is already asking the actors waits for that call's
//! answer instead of sending a message of its own.
//!
//! In a cold storm (many callers on keys nobody has built yet) every caller
//! used to send its request through the supervisor's one mailbox to the key
//! actor, which queued it as a waiter of the build: 10,000 messages and
//! replies for 1,000 builds. Now the first caller of a key and hash (the
//! *leader*) asks; callers that arrive meanwhile (the *followers*) register
//! nothing with any actor and wait here for the leader's answer.
//!
//! Followers are served as the key actor's waiters of a build are, at the
//! same moment and with the same outcome:
//!
//! - The leader was served: each follower gets a lease on the same
//!   instance, which was built for (or checked against) the same key and
//!   hash. Two exceptions keep contract point 7 exact: if that instance was
//!   retired before the follower joined (an invalidation that returned
//!   between the leader's answer and its leaving this map), or a prefix
//!   invalidation ran while the ask was in flight (see `Ask::fence`), the
//!   follower asks the actors itself. An instance retired after it joined is served,
//!   as it would be to a waiter answered just before the retirement: so a
//!   rotation that retires the instance as soon as it is built does not
//!   send its waiters to build it again.
//! - The leader got an error (the build failed, the key is cooling down,
//!   its actor stopped, the pool is ending): the follower gets the same
//!   shared error, as a waiter of that build would (contract point 8). The
//!   one error that belongs to the leader's call alone (its single-attempt
//!   init could not be run) and a leader that was cancelled send the
//!   follower to the actors itself.
//!
//! The map here holds no pool state, only who is asking. The key
//! actor still runs the one build per key (singleflight) and the read view
//! still has actors as its only writers.

use std::sync::{Arc, Weak};

use tokio::sync::SetOnce;

use crate::error::PoolError;
use crate::factory::InitDiscarded;
use crate::hash::CredentialsHash;
use crate::ids::{Fence, RetireSeq};
use crate::instance::Instance;
use crate::lease::Lease;

/// The misses being asked for, by key.
pub(crate) struct InFlight<T: Send + Sync + 'static> {
    map: papaya::HashMap<Arc<str>, Arc<Ask<T>>, foldhash::quality::RandomState>,
}

/// One leader's request, as its followers see it.
pub(crate) struct Ask<T: Send + Sync + 'static> {
    hash: CredentialsHash,
    /// The read view's prefix-invalidation number when the leader joined
    /// (see `ReadView::fence`). Its request is stamped with this number or
    /// a later one, so a follower that finds the number moved on cannot
    /// tell whether the instance the leader got was built before a prefix
    /// invalidation that returned before the follower started: it asks the
    /// actors itself (prefix invalidations are rare; this costs a round
    /// trip, never a wrong instance).
    fence: Fence,
    /// Set once, when the leader has its answer or is dropped.
    answer: SetOnce<Answer<T>>,
}

/// What the leader got, as far as its followers are concerned.
pub(crate) enum Answer<T: Send + Sync + 'static> {
    /// The instance it was served; each follower takes a lease on it if it
    /// is still alive. Weak: the map frees a removed ask only once no
    /// reader can hold it, which may be late, and that must not keep an
    /// instance from being disposed.
    Served(Weak<Instance<T>>),
    /// The build's error, shared with every caller that waited on it.
    Failed(PoolError),
    /// Nothing to share: each follower asks the actors itself.
    AskYourself,
}

/// What a missing call is to do.
pub(crate) enum Role<'a, T: Send + Sync + 'static> {
    /// Ask the actors, then [`Leader::finish`] with the answer.
    Lead(Leader<'a, T>),
    /// Wait for this ask's answer ([`Ask::wait`]).
    Follow(Arc<Ask<T>>),
    /// Another hash is being asked for this key: ask the actors, alone.
    Alone,
}

impl<T: Send + Sync + 'static> InFlight<T> {
    pub(crate) fn new() -> Self {
        InFlight {
            map: papaya::HashMap::builder()
                .hasher(foldhash::quality::RandomState::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
        }
    }

    /// Joins the ask in flight for `key` and `hash`, or starts one.
    pub(crate) fn join<'a>(&'a self, key: &'a str, hash: CredentialsHash, fence: Fence) -> Role<'a, T> {
        let map = self.map.pin();
        // Looked up first: a follower allocates nothing.
        let found = match map.get(key) {
            Some(ask) => Err(ask),
            None => map.try_insert_with(Arc::from(key), || {
                Arc::new(Ask {
                    hash,
                    fence,
                    answer: SetOnce::new(),
                })
            }),
        };
        match found {
            Ok(ask) => Role::Lead(Leader {
                in_flight: self,
                key,
                ask: ask.clone(),
            }),
            Err(ask) if ask.hash == hash => Role::Follow(ask.clone()),
            Err(_) => Role::Alone,
        }
    }
}

impl<T: Send + Sync + 'static> Ask<T> {
    /// The leader's answer. The caller races this with the pool's end.
    pub(crate) async fn wait(&self) -> &Answer<T> {
        self.answer.wait().await
    }

    /// The instance a follower may be handed from the leader's answer
    /// `instance`, given the read view's fence now and the retirement
    /// number when the follower joined (`ReadView::retire_seq`). `None`
    /// when it is gone (retired, no lease left), was retired before the
    /// follower joined (never to be handed to it), or may have been fenced
    /// by a prefix invalidation since the leader joined (see `fence`):
    /// then the follower asks the actors itself.
    pub(crate) fn for_follower(
        &self,
        instance: &Weak<Instance<T>>,
        fence_now: Fence,
        joined: RetireSeq,
    ) -> Option<Arc<Instance<T>>> {
        let fenced = fence_now != self.fence;
        instance.upgrade().filter(|i| !fenced && !i.retired_by(joined))
    }
}

/// The caller that asks the actors for a key while others wait. Dropping it
/// without [`finish`](Leader::finish) (the call was cancelled) sends its
/// followers to ask the actors themselves.
pub(crate) struct Leader<'a, T: Send + Sync + 'static> {
    in_flight: &'a InFlight<T>,
    key: &'a str,
    ask: Arc<Ask<T>>,
}

impl<T: Send + Sync + 'static> Leader<'_, T> {
    /// Hands the answer the leader got to its followers.
    pub(crate) fn finish(self, answer: &Result<Lease<T>, PoolError>) {
        let shared = match answer {
            Ok(lease) => Answer::Served(Arc::downgrade(lease.instance())),
            Err(error) if shared_with_followers(error) => Answer::Failed(error.clone()),
            Err(_) => Answer::AskYourself,
        };
        self.end(shared);
    }

    fn end(&self, answer: Answer<T>) {
        // Out of the map first: a call that misses from now on starts an
        // ask of its own rather than following one that has ended.
        let _ = self
            .in_flight
            .map
            .pin()
            .remove_if(self.key, |_, ask| Arc::ptr_eq(ask, &self.ask));
        // Only the first answer counts (`finish`, then the drop).
        let _ = self.ask.answer.set(answer);
    }
}

impl<T: Send + Sync + 'static> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        self.end(Answer::AskYourself);
    }
}

/// Whether `error` is the outcome of what the leader waited on, which every
/// caller waiting there shares (contract point 8: the build's failure; also
/// a cool-down, the key actor stopping, the pool's end), rather than
/// something about the leader's own call: only a single-attempt init the
/// key actor could not run is the leader's alone.
fn shared_with_followers(error: &PoolError) -> bool {
    error.factory_error::<InitDiscarded>().is_none()
}
