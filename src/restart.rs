//! The restart bookkeeping of one key: recent failures and cool-downs.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RestartPolicy;

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

/// Failures of one key. Lives in its key actor; when the actor goes away it
/// is kept by the supervisor until it no longer matters, so that removing an
/// idle key does not forget that it was failing.
#[derive(Debug, Clone, Default)]
pub(crate) struct RestartState {
    /// Times of failures within the policy window.
    failures: VecDeque<Instant>,
    /// Cool-downs so far since the last success (each doubles the next).
    level: u32,
    /// End of the current or last cool-down.
    cooling_until: Option<Instant>,
}

impl RestartState {
    /// Time left in the cool-down, if the key is cooling.
    pub(crate) fn cooling(&self, now: Instant) -> Option<Duration> {
        self.cooling_until.filter(|until| *until > now).map(|until| until - now)
    }

    /// Records a failed attempt; `retries_done` is how many retries this call
    /// has made already.
    pub(crate) fn failure(&mut self, now: Instant, policy: &RestartPolicy, retries_done: u32) -> Verdict {
        self.prune(now, policy);
        self.failures.push_back(now);
        // After a cool-down, one more failure cools the key again (twice as
        // long): the provider has not recovered.
        let on_probation = self.level > 0;
        if on_probation || self.failures.len() >= policy.intensity as usize {
            let cool = policy.cooldown(self.level);
            self.level = self.level.saturating_add(1);
            self.cooling_until = Some(now + cool);
            self.failures.clear();
            return Verdict::CoolDown(cool);
        }
        if retries_done < policy.max_retries {
            Verdict::Retry(policy.backoff(retries_done))
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
            Some(until) => until + policy.window <= now,
        };
        self.failures.is_empty() && cooled_long_ago
    }

    fn prune(&mut self, now: Instant, policy: &RestartPolicy) {
        while self.failures.front().is_some_and(|t| *t + policy.window <= now) {
            self.failures.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retries until the budget is spent, cools at the intensity, doubles on probation.
    #[tokio::test(start_paused = true)]
    async fn verdicts_follow_the_policy() {
        let policy = RestartPolicy::default();
        let mut s = RestartState::default();
        let now = Instant::now();
        assert!(matches!(s.failure(now, &policy, 0), Verdict::Retry(_)));
        assert!(matches!(s.failure(now, &policy, 1), Verdict::Retry(_)));
        assert_eq!(s.failure(now, &policy, 2), Verdict::GiveUp);
        assert!(matches!(s.failure(now, &policy, 0), Verdict::Retry(_)));
        assert_eq!(s.failure(now, &policy, 1), Verdict::CoolDown(Duration::from_secs(10)));
        assert_eq!(s.cooling(now), Some(Duration::from_secs(10)));
        let later = now + Duration::from_secs(11);
        assert_eq!(s.cooling(later), None);
        assert_eq!(s.failure(later, &policy, 0), Verdict::CoolDown(Duration::from_secs(20)));
        s.success();
        assert!(s.is_clear(later, &policy));
    }
}
