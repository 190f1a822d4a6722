//! Where each origin's messages stand, for one listener: which message is
//! the next of its stream, which is a copy (a replay), and which shows that
//! something was missed (a gap, a restarted publisher).
//!
//! A publisher's messages are numbered 1, 2, 3, … within its run, and a
//! larger epoch under a known origin is a restarted publisher whose numbers
//! start again at 1. A number not above the last one heard, or an epoch
//! below it, is a copy.
//!
//! # One loss, one recovery
//!
//! A recovery (a flush) covers whatever was published before it. So once
//! the listener has applied one, a gap in the numbers of an origin last
//! heard of before it, or a restart of such an origin, is what that
//! recovery already covered: the next message re-bases the origin's
//! numbers, with no second recovery. Each origin remembers how many
//! recoveries had run when it was last heard of ([`Marks`]).
//!
//! A message lost after the recovery and before the next one arrives is
//! then taken as covered too. Over an at-most-once transport a listener
//! cannot tell it from one lost before, except for a publish that failed:
//! its publisher got the error.

use std::collections::HashMap;

/// How many recoveries a listener had applied at some point: an origin
/// whose mark is below the listener's count was last heard of before a
/// recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Marks(u64);

/// An origin's run, as last heard.
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
    /// Not above the last number heard (`last`), or from an earlier run: a
    /// copy.
    Replay { last: u64 },
    /// Numbers after `last` were missed, and no recovery since covers them.
    Gap { last: u64 },
    /// A later run of a known origin: a restarted publisher. `covered`: a
    /// recovery ran since the origin was last heard of, so whatever its
    /// earlier run published meanwhile is covered.
    Restart { covered: bool },
}

/// The latest run heard of each origin.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    runs: HashMap<String, Run>,
    /// Recoveries applied by the listener so far.
    recoveries: Marks,
}

impl Origins {
    /// What message `seq` of run `epoch` of `origin` is. Changes nothing:
    /// [`heard`](Self::heard) records it once it is accepted.
    pub(crate) fn step(&self, origin: &str, epoch: u64, seq: u64) -> Step {
        let Some(run) = self.runs.get(origin) else {
            return Step::First;
        };
        let covered = run.heard < self.recoveries;
        match (epoch, seq) {
            (epoch, seq) if epoch < run.epoch || (epoch == run.epoch && seq <= run.seq) => {
                Step::Replay { last: run.seq }
            }
            (epoch, _) if epoch > run.epoch => Step::Restart { covered },
            (_, seq) if seq == run.seq + 1 || covered => Step::Next,
            _ => Step::Gap { last: run.seq },
        }
    }

    /// Records message `seq` of run `epoch` of `origin` as heard now (after
    /// any recovery it caused).
    pub(crate) fn heard(&mut self, origin: &str, epoch: u64, seq: u64) {
        let heard = self.recoveries;
        self.runs.insert(origin.to_string(), Run { epoch, seq, heard });
    }

    /// Counts a recovery: it covers whatever every origin published until now.
    pub(crate) fn recovered(&mut self) {
        self.recoveries.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Next, replay, gap and restart.
    #[test]
    fn steps() {
        let mut o = Origins::default();
        assert_eq!(o.step("a", 10, 1), Step::First);
        o.heard("a", 10, 1);
        assert_eq!(o.step("a", 10, 2), Step::Next);
        assert_eq!(o.step("a", 10, 1), Step::Replay { last: 1 });
        assert_eq!(o.step("a", 10, 3), Step::Gap { last: 1 });
        assert_eq!(o.step("a", 20, 1), Step::Restart { covered: false });
    }

    /// After a recovery, a gap or a restart of an origin last heard of
    /// before it is covered; an origin heard of after it is not.
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
}
