//! The time window of signed messages: which clock a message's age is
//! judged by, and what a durable listener may accept while it catches up
//! after its own disconnect.
//!
//! A signed message carries its publisher's time (`ts_us`). A listener with
//! a signing key refuses it when that time is further than `max_age` from a
//! clock it trusts, so a captured message cannot be re-published later:
//!
//! - a time the server stored the message at, set by the server itself
//!   ([`BusEvent::Message::stored_at_us`](crate::bus::BusEvent::Message)):
//!   JetStream's;
//! - otherwise the listener's own clock at receipt. Redis Stream entry ids
//!   look like times but are chosen by whoever writes the entry (`XADD
//!   <id>`): an id a day ahead would put every later entry a day ahead, and
//!   an old id would make a captured message look stored long ago. So they
//!   are no clock.
//!
//! Judged at receipt alone, a durable listener could not replay an outage
//! longer than `max_age`. So while it reads what it missed after its own
//! disconnect it also accepts older messages, but none stamped more than
//! `max_age` before it lost its connection: the exposure is bounded by the
//! outage, and the stream position (which only moves forward) keeps it to
//! entries after the last one it read.
//!
//! | link | event | becomes |
//! |---|---|---|
//! | `Live` | `Disconnected` | `Down` since now |
//! | `Down` or `CatchingUp` since `t` | `Disconnected` | `Down` since `t` (the outage began at the first loss) |
//! | `Down` since `t` | `Resumed` | `CatchingUp` since `t` |
//! | `CatchingUp` | `CaughtUp` | `Live` |
//! | any | `Reconnected` (at most once: nothing is read back) | `Live` |
//!
//! Other events leave the link as it is.

use std::time::Duration;

use crate::bus::{BusError, BusEvent, Invalidation};

/// Where a listener stands with its transport's connection, for the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Receiving messages as they are published.
    Live,
    /// The connection was lost at `since_us` (this host's clock, µs since
    /// the Unix epoch).
    Down { since_us: u64 },
    /// A durable transport reading what it missed since it lost its
    /// connection at `since_us`.
    CatchingUp { since_us: u64 },
}

impl Link {
    /// The link after `event`, seen at `now_us` (see the table in the module docs).
    pub(crate) fn after(self, event: &BusEvent, now_us: u64) -> Link {
        match (self, event) {
            (Link::Live, BusEvent::Disconnected) => Link::Down { since_us: now_us },
            (Link::Down { since_us } | Link::CatchingUp { since_us }, BusEvent::Disconnected) => {
                Link::Down { since_us }
            }
            (Link::Down { since_us }, BusEvent::Resumed) => Link::CatchingUp { since_us },
            (Link::CatchingUp { .. }, BusEvent::CaughtUp) | (_, BusEvent::Reconnected) => Link::Live,
            (link, _) => link,
        }
    }

    /// Refuses a signed `message` whose time is outside the window: more
    /// than `max_age` from `stored_at_us` when the server gave one, else
    /// from `now_us`, with the catch-up allowance for old messages (see the
    /// module docs). A zero `max_age` turns the check off.
    pub(crate) fn check(
        self,
        message: Invalidation,
        stored_at_us: Option<u64>,
        now_us: u64,
        max_age: Duration,
    ) -> Result<Invalidation, BusError> {
        let max_age_us = u64::try_from(max_age.as_micros()).unwrap_or(u64::MAX);
        if max_age_us == 0 {
            return Ok(message);
        }
        let reference = stored_at_us.unwrap_or(now_us);
        let skew = message.ts_us.abs_diff(reference);
        if skew <= max_age_us {
            return Ok(message);
        }
        if let (None, Link::CatchingUp { since_us }) = (stored_at_us, self) {
            // Older than the window, but stamped at most `max_age` before
            // this listener lost its connection: part of what it missed.
            if message.ts_us < now_us && message.ts_us >= since_us.saturating_sub(max_age_us) {
                return Ok(message);
            }
        }
        Err(BusError::Stale {
            origin: message.origin,
            skew: Duration::from_micros(skew - max_age_us),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Scope;

    const S: u64 = 1_000_000;

    fn at(ts_us: u64) -> Invalidation {
        Invalidation {
            origin: "o".into(),
            epoch: 1,
            seq: 1,
            ts_us,
            scope: Scope::All,
        }
    }

    /// The transitions of the module docs' table.
    #[test]
    fn link_transitions() {
        let down = Link::Live.after(&BusEvent::Disconnected, 100);
        assert_eq!(down, Link::Down { since_us: 100 });
        assert_eq!(
            down.after(&BusEvent::Disconnected, 200),
            down,
            "the outage began at the first loss"
        );
        let catching_up = down.after(&BusEvent::Resumed, 300);
        assert_eq!(catching_up, Link::CatchingUp { since_us: 100 });
        assert_eq!(catching_up.after(&BusEvent::Disconnected, 400), down);
        assert_eq!(catching_up.after(&BusEvent::CaughtUp, 500), Link::Live);
        assert_eq!(down.after(&BusEvent::Reconnected, 500), Link::Live);
        assert_eq!(Link::Live.after(&BusEvent::Resumed, 500), Link::Live);
        assert_eq!(down.after(&BusEvent::CaughtUp, 500), down);
    }

    /// Live, a message is judged by the server's time when given, else by
    /// the time of receipt; catching up, a message older than the window
    /// passes only if stamped at most `max_age` before the disconnect.
    #[test]
    fn window_by_clock_and_link() {
        let max_age = Duration::from_secs(5);
        let now = 1_000 * S;
        let ok = |link: Link, ts, stored| link.check(at(ts), stored, now, max_age).is_ok();
        assert!(ok(Link::Live, now - 5 * S, None));
        assert!(!ok(Link::Live, now - 6 * S, None));
        assert!(!ok(Link::Live, now + 6 * S, None));
        assert!(ok(Link::Live, now - 60 * S, Some(now - 58 * S)), "the server's time");
        let catching_up = Link::CatchingUp { since_us: now - 60 * S };
        assert!(ok(catching_up, now - 30 * S, None), "published during the outage");
        assert!(ok(catching_up, now - 65 * S, None), "up to max_age before it");
        assert!(
            !ok(catching_up, now - 66 * S, None),
            "older than the outage and the window"
        );
        assert!(!ok(catching_up, now + 6 * S, None), "from the future");
        let err = Link::Live.check(at(now - 7 * S), None, now, max_age).unwrap_err();
        assert!(
            matches!(err, BusError::Stale { skew, .. } if skew == Duration::from_secs(2)),
            "{err:?}"
        );
        assert!(
            Link::Live.check(at(0), None, now, Duration::ZERO).is_ok(),
            "zero turns it off"
        );
    }
}
