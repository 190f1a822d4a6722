//! Where each origin's messages stand, for one listener: which message is
//! the next of its run, which is a copy (a replay), and which shows that
//! something was missed (a gap, a restarted publisher).
//!
//! # Runs
//!
//! A publisher's messages are numbered 1, 2, 3, … within its run, and a run
//! is named by its origin and its epoch (the time its stamper was made).
//! Every run is a stream of its own. A message of a run not heard of before
//! from a known origin is a restarted publisher, whether its epoch is above
//! the ones heard before or below them: an epoch goes backwards when a
//! publisher with a stable origin restarts on a clock stepped back, or runs
//! for less time than the clocks of two hosts differ. Within a run, a
//! number not above the last one heard is a copy.
//!
//! The last [`RUNS_KEPT`] runs heard of each origin are remembered, so a
//! copy of a message from any of them is refused however old its epoch; the
//! runs before those, and runs this listener never heard, cannot be told
//! from a new run. A signed message is also refused outside the listener's
//! time window, so such a copy is applied only within `max_age` of its
//! stamp: the exposure a listener started after a message was captured has
//! anyway. Unsigned messages are not protected against copies at all
//! (anyone can write any message), so there this only drops duplicates.
//!
//! # One loss, one recovery
//!
//! A recovery (a flush) covers whatever was published before it. So once
//! the listener has applied one, a gap in a run last heard of before it, or
//! a new run of an origin last heard of before it, is what that recovery
//! already covered: the next message re-bases the run's numbers, with no
//! second recovery. Each run remembers how many recoveries had run when it
//! was last heard of ([`Marks`]).
//!
//! A message lost after the recovery and before the next one arrives is
//! then taken as covered too. Over an at-most-once transport a listener
//! cannot tell it from one lost before, except for a publish that failed:
//! its publisher got the error.

use std::collections::HashMap;

/// Runs remembered per origin: enough for a publisher restarting several
/// times within the time window, few enough that a long-lived origin costs
/// little.
pub(crate) const RUNS_KEPT: usize = 8;

/// How many recoveries a listener had applied at some point: a run whose
/// mark is below the listener's count was last heard of before a recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Marks(u64);

/// One run of an origin, as last heard.
#[derive(Debug, Clone, Copy)]
struct Run {
    epoch: u64,
    /// The highest sequence number heard.
    seq: u64,
    /// The listener's recoveries when this run was last heard of.
    heard: Marks,
}

/// What a message is, given what was heard before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The first message heard from its origin.
    First,
    /// The next message of its run, or the first after a recovery that
    /// covered whatever came between.
    Next,
    /// Not above the last number heard in its run (`last`): a copy.
    Replay { last: u64 },
    /// Numbers after `last` in its run were missed, and no recovery since
    /// covers them.
    Gap { last: u64 },
    /// A run not heard of before from a known origin: a restarted
    /// publisher. `covered`: a recovery ran since the origin was last heard
    /// of, so whatever its earlier run published meanwhile is covered.
    Restart { covered: bool },
}

/// The runs heard of each origin, most recently heard first.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    runs: HashMap<String, Vec<Run>>,
    /// Recoveries applied by the listener so far.
    recoveries: Marks,
}

impl Origins {
    /// What message `seq` of run `epoch` of `origin` is. Changes nothing:
    /// [`heard`](Self::heard) records it once it is accepted.
    pub(crate) fn step(&self, origin: &str, epoch: u64, seq: u64) -> Step {
        let Some(runs) = self.runs.get(origin) else {
            return Step::First;
        };
        let Some(run) = runs.iter().find(|run| run.epoch == epoch) else {
            let last_heard = runs.iter().map(|run| run.heard).max().unwrap_or_default();
            return Step::Restart {
                covered: last_heard < self.recoveries,
            };
        };
        match seq {
            seq if seq <= run.seq => Step::Replay { last: run.seq },
            seq if seq == run.seq + 1 || run.heard < self.recoveries => Step::Next,
            _ => Step::Gap { last: run.seq },
        }
    }

    /// Records message `seq` of run `epoch` of `origin` as heard now (after
    /// any recovery it caused).
    pub(crate) fn heard(&mut self, origin: &str, epoch: u64, seq: u64) {
        let heard = self.recoveries;
        let runs = self.runs.entry(origin.to_string()).or_default();
        let run = match runs.iter().position(|run| run.epoch == epoch) {
            Some(i) => runs.remove(i),
            None => Run { epoch, seq: 0, heard },
        };
        runs.insert(
            0,
            Run {
                seq: run.seq.max(seq),
                heard,
                ..run
            },
        );
        runs.truncate(RUNS_KEPT);
    }

    /// Counts a recovery: it covers whatever every run published until now.
    pub(crate) fn recovered(&mut self) {
        self.recoveries.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Next, replay and gap within a run; a new run, above or below the
    /// epochs heard, is a restart; copies from an earlier run still replay.
    #[test]
    fn steps_within_and_across_runs() {
        let mut o = Origins::default();
        assert_eq!(o.step("a", 10, 1), Step::First);
        o.heard("a", 10, 1);
        assert_eq!(o.step("a", 10, 2), Step::Next);
        assert_eq!(o.step("a", 10, 1), Step::Replay { last: 1 });
        assert_eq!(o.step("a", 10, 3), Step::Gap { last: 1 });
        assert_eq!(
            o.step("a", 5, 1),
            Step::Restart { covered: false },
            "an epoch gone backwards"
        );
        o.heard("a", 5, 1);
        assert_eq!(
            o.step("a", 10, 1),
            Step::Replay { last: 1 },
            "the earlier run is remembered"
        );
        assert_eq!(o.step("a", 10, 2), Step::Next, "and may still send its next");
        assert_eq!(o.step("a", 20, 1), Step::Restart { covered: false });
    }

    /// After a recovery, a gap or a new run of an origin last heard of
    /// before it is covered; a run heard of after it is not.
    #[test]
    fn a_recovery_covers_what_came_before_it() {
        let mut o = Origins::default();
        o.heard("a", 1, 1);
        o.heard("b", 1, 1);
        o.recovered();
        assert_eq!(o.step("a", 1, 5), Step::Next, "re-based");
        assert_eq!(o.step("a", 1, 1), Step::Replay { last: 1 }, "copies still refused");
        assert_eq!(o.step("b", 2, 3), Step::Restart { covered: true });
        o.heard("a", 1, 5);
        assert_eq!(o.step("a", 1, 7), Step::Gap { last: 5 }, "a loss after the recovery");
    }

    /// Only the last `RUNS_KEPT` runs of an origin are remembered.
    #[test]
    fn runs_kept_per_origin() {
        let mut o = Origins::default();
        for epoch in 1..=RUNS_KEPT as u64 + 1 {
            o.heard("a", epoch, 1);
        }
        assert_eq!(o.step("a", 2, 1), Step::Replay { last: 1 }, "the eighth latest is kept");
        assert_eq!(
            o.step("a", 1, 1),
            Step::Restart { covered: false },
            "the ninth is forgotten"
        );
        assert_eq!(o.runs["a"].len(), RUNS_KEPT);
    }
}
