//! The restart bookkeeping of one key: recent failures and cool-downs.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RestartPolicy;
use crate::hash::CredentialsHash;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Try again after this delay; the callers keep waiting.
    Retry(Duration),
    /// Give the error to the callers.
    GiveUp,
    /// Give the error to the callers and refuse the key for this long.
    CoolDown(Duration),
}

/// A moment computed from "now + a duration the user chose". Every
/// duration a user can pass is valid: one too large for the clock makes a
/// deadline that never comes, rather than a panic in an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Deadline {
    /// At this instant.
    At(Instant),
    /// Past the end of the clock: never reached.
    Never,
}

impl Deadline {
    pub(crate) fn after(now: Instant, duration: Duration) -> Deadline {
        now.checked_add(duration).map_or(Deadline::Never, Deadline::At)
    }

    /// Whether `now` is past the deadline (at the very deadline it is not).
    pub(crate) fn has_passed(self, now: Instant) -> bool {
        matches!(self, Deadline::At(at) if now > at)
    }
}

/// Failures of one key, for the credentials they happened with. Lives in
/// its key actor; when the actor goes away it is kept by the supervisor
/// until it no longer matters, so that removing an idle key does not forget
/// that it was failing.
///
/// A cool-down belongs to the credentials that failed: the usual fix for a
/// factory that fails on a wrong API key is to rotate the key, so a caller
/// presenting another hash is not refused, and its first failure starts a
/// history of its own.
#[derive(Debug, Clone, Default)]
pub(crate) struct RestartState {
    /// The credentials the failures below happened with.
    hash: Option<CredentialsHash>,
    /// Times of failures within the policy window.
    failures: VecDeque<Instant>,
    /// Cool-downs so far since the last success (each doubles the next).
    level: u32,
    /// End of the current or last cool-down.
    cooling_until: Option<Deadline>,
}

impl RestartState {
    /// Time left in the cool-down, if the key is cooling for callers that
    /// present `hash`.
    pub(crate) fn cooling(&self, now: Instant, hash: CredentialsHash) -> Option<Duration> {
        if self.hash != Some(hash) {
            return None;
        }
        self.cooling_any(now)
    }

    /// Time left in the cool-down, whatever the credentials (for stats).
    pub(crate) fn cooling_any(&self, now: Instant) -> Option<Duration> {
        match self.cooling_until? {
            Deadline::At(until) if until > now => Some(until - now),
            Deadline::At(_) => None,
            Deadline::Never => Some(Duration::MAX),
        }
    }

    /// Records a failed attempt with `hash`; `retries_done` is how many
    /// retries this call has made already.
    pub(crate) fn failure(
        &mut self,
        now: Instant,
        policy: &RestartPolicy,
        retries_done: u32,
        hash: CredentialsHash,
    ) -> Verdict {
        if self.hash != Some(hash) {
            // Other credentials: the earlier failures say nothing about these.
            *self = RestartState {
                hash: Some(hash),
                ..RestartState::default()
            };
        }
        self.prune(now, policy);
        self.failures.push_back(now);
        // After a cool-down, one more failure cools the key again (twice as
        // long): the provider has not recovered.
        let on_probation = self.level > 0;
        if on_probation || self.failures.len() >= policy.intensity as usize {
            let cool = policy.cooldown(self.level);
            self.level = self.level.saturating_add(1);
            self.cooling_until = Some(Deadline::after(now, cool));
            self.failures.clear();
            return Verdict::CoolDown(cool);
        }
        if retries_done < policy.max_retries {
            let delay = policy.backoff(retries_done);
            // A retry the clock cannot reach would keep every waiter
            // forever: give them the error instead.
            if Deadline::after(now, delay) == Deadline::Never {
                return Verdict::GiveUp;
            }
            Verdict::Retry(delay)
        } else {
            Verdict::GiveUp
        }
    }

    /// A success forgets every failure.
    pub(crate) fn success(&mut self) {
        *self = RestartState::default();
    }

    /// Whether nothing is worth remembering any more.
    pub(crate) fn is_clear(&mut self, now: Instant, policy: &RestartPolicy) -> bool {
        self.prune(now, policy);
        let cooled_long_ago = match self.cooling_until {
            None => true,
            // Keep the level (for doubling) for one window after a cool-down.
            Some(Deadline::At(until)) => Deadline::after(until, policy.window).has_passed(now),
            Some(Deadline::Never) => false,
        };
        self.failures.is_empty() && cooled_long_ago
    }

    fn prune(&mut self, now: Instant, policy: &RestartPolicy) {
        while self
            .failures
            .front()
            .is_some_and(|t| Deadline::after(*t, policy.window) <= Deadline::At(now))
        {
            self.failures.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: CredentialsHash = CredentialsHash::from_u64(1);

    /// Retries until the budget is spent, cools at the intensity, doubles on probation.
    #[tokio::test(start_paused = true)]
    async fn verdicts_follow_the_policy() {
        let policy = RestartPolicy::default();
        let mut s = RestartState::default();
        let now = Instant::now();
        assert!(matches!(s.failure(now, &policy, 0, H), Verdict::Retry(_)));
        assert!(matches!(s.failure(now, &policy, 1, H), Verdict::Retry(_)));
        assert_eq!(s.failure(now, &policy, 2, H), Verdict::GiveUp);
        assert!(matches!(s.failure(now, &policy, 0, H), Verdict::Retry(_)));
        assert_eq!(
            s.failure(now, &policy, 1, H),
            Verdict::CoolDown(Duration::from_secs(10))
        );
        assert_eq!(s.cooling(now, H), Some(Duration::from_secs(10)));
        assert_eq!(
            s.cooling(now, CredentialsHash::from_u64(2)),
            None,
            "other credentials are not cooling"
        );
        let later = now + Duration::from_secs(11);
        assert_eq!(s.cooling(later, H), None);
        assert_eq!(
            s.failure(later, &policy, 0, H),
            Verdict::CoolDown(Duration::from_secs(20))
        );
        s.success();
        assert!(s.is_clear(later, &policy));
    }
}
