//! When a stream must end, and why: a margin before the earlier of its
//! deadline and the end of the drain's grace period.

use super::Limit;
use crate::drain::{Drain, Seen, Windows};

/// When a stream must end, and why: `margin_ms` before the earlier of its
/// deadline and the grace end.
pub fn cutoff(
    deadline_unix_ms: u64,
    drain: Drain,
    windows: Windows,
    margin_ms: u64,
) -> (u64, Limit) {
    let grace_end = drain
        .started_unix_ms
        .map(|start| start.saturating_add(windows.grace_ms));
    match grace_end {
        Some(end) if end < deadline_unix_ms => (end.saturating_sub(margin_ms), Limit::Drain),
        _ => (deadline_unix_ms.saturating_sub(margin_ms), Limit::Deadline),
    }
}

/// How streams are cut, the same for every stream of a plugin instance.
///
/// The clock is a host call, so a stream's body callback reads it only near
/// a possible cut: the worker's drain reading ([`Seen`]) is refreshed with
/// every request the worker admits and on every tick, so its
/// `read_unix_ms` trails the clock by at most `clock_lag_ms`; while it is
/// further than that from the earliest cut the stream can have
/// ([`CutPolicy::may_be_due`] is false), the stream need not end and
/// neither the clock nor the drain state is read. Past that,
/// [`CutPolicy::due`] decides from the clock and the drain state then (the
/// worker's copy, checked against the change counter: [`Seen::refresh`]).
///
/// ```
/// use drainpipe::drain::{Drain, Seen, Windows};
/// use drainpipe::sse::{CutPolicy, Limit};
///
/// let policy = CutPolicy {
///     windows: Windows { admit_window_ms: 5_000, grace_ms: 30_000 },
///     margin_ms: 1_000,
///     clock_lag_ms: 2_000,
/// };
/// let seen = Seen { drain: Drain::SERVING, read_unix_ms: 10_000, changes: None };
/// // A deadline a minute on: far from any cut, the clock is not read.
/// assert!(!policy.may_be_due(70_000, seen));
/// // A drain that started at 10 s ends its grace period at 40 s.
/// assert_eq!(policy.due(70_000, 39_000, Drain::started_at(10_000)), Some(Limit::Drain));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutPolicy {
    /// The drain's timing (the traffic role's configuration).
    pub windows: Windows,
    /// How long before its limit a stream is ended.
    pub margin_ms: u64,
    /// How far the worker's drain reading may trail the clock.
    pub clock_lag_ms: u64,
}

impl CutPolicy {
    /// Whether a stream with this deadline may have to end now, by the
    /// worker's last drain reading alone; while it may not, neither the
    /// clock nor the drain state needs reading.
    pub fn may_be_due(&self, deadline_unix_ms: u64, seen: Seen) -> bool {
        seen.read_unix_ms.saturating_add(self.clock_lag_ms)
            >= earliest_cut(deadline_unix_ms, seen, self.windows, self.margin_ms)
    }

    /// Whether a stream with this deadline must end at `now_unix_ms`, given
    /// the drain state then, and why.
    pub fn due(&self, deadline_unix_ms: u64, now_unix_ms: u64, drain: Drain) -> Option<Limit> {
        let (at, limit) = cutoff(deadline_unix_ms, drain, self.windows, self.margin_ms);
        (now_unix_ms >= at).then_some(limit)
    }
}

/// The earliest instant a stream's cut can come, by the reading `seen`:
/// its deadline's, the known drain's, or that of a drain starting just
/// after the reading.
pub fn earliest_cut(deadline_unix_ms: u64, seen: Seen, windows: Windows, margin_ms: u64) -> u64 {
    let drain_start = seen.drain.started_unix_ms.unwrap_or(seen.read_unix_ms);
    let drain_cut = drain_start
        .saturating_add(windows.grace_ms)
        .saturating_sub(margin_ms);
    deadline_unix_ms.saturating_sub(margin_ms).min(drain_cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Windows = Windows {
        admit_window_ms: 5_000,
        grace_ms: 30_000,
    };

    #[test]
    fn cutoff_is_margin_before_the_earlier_limit() {
        assert_eq!(
            cutoff(100_000, Drain::SERVING, W, 1_000),
            (99_000, Limit::Deadline)
        );
        // Drain at 10 000: grace ends at 40 000, before the deadline.
        assert_eq!(
            cutoff(100_000, Drain::started_at(10_000), W, 1_000),
            (39_000, Limit::Drain)
        );
        // A deadline inside the grace period stays the limit.
        assert_eq!(
            cutoff(20_000, Drain::started_at(10_000), W, 1_000),
            (19_000, Limit::Deadline)
        );
        assert_eq!(cutoff(500, Drain::SERVING, W, 1_000), (0, Limit::Deadline));
    }

    /// The policy with a margin of 1 s and the given lag.
    fn policy(clock_lag_ms: u64) -> CutPolicy {
        CutPolicy {
            windows: W,
            margin_ms: 1_000,
            clock_lag_ms,
        }
    }

    /// What a body callback does: the clock (`now`) and the drain state
    /// (`current`) are read only while the cut may be due. Returns the
    /// decision and how often they were read.
    fn due_reading(
        policy: CutPolicy,
        now: u64,
        deadline: u64,
        seen: Seen,
        current: Drain,
    ) -> (Option<Limit>, u32) {
        if !policy.may_be_due(deadline, seen) {
            return (None, 0);
        }
        (policy.due(deadline, now, current), 1)
    }

    /// Past the clock gate (no lag bound), counting the state reads.
    fn due_counting(now: u64, deadline: u64, seen: Seen, current: Drain) -> (Option<Limit>, u32) {
        due_reading(policy(u64::MAX), now, deadline, seen, current)
    }

    #[test]
    fn past_the_clock_gate_the_current_drain_state_decides() {
        let seen = Seen {
            drain: Drain::SERVING,
            read_unix_ms: 10_000,
            changes: None,
        };
        assert_eq!(
            due_counting(38_999, 100_000, seen, Drain::SERVING),
            (None, 1)
        );
        assert_eq!(
            due_counting(99_000, 100_000, seen, Drain::SERVING),
            (Some(Limit::Deadline), 1)
        );
        // A drain the reading did not know of.
        assert_eq!(
            due_counting(39_000, 100_000, seen, Drain::started_at(10_000)),
            (Some(Limit::Drain), 1)
        );
        // A drain the reading knew of, and since cancelled: no cut.
        let draining = Seen {
            drain: Drain::started_at(10_000),
            read_unix_ms: 30_000,
            changes: None,
        };
        assert_eq!(
            due_counting(39_000, u64::MAX, draining, Drain::started_at(10_000)),
            (Some(Limit::Drain), 1)
        );
        assert_eq!(
            due_counting(39_000, u64::MAX, draining, Drain::SERVING),
            (None, 1)
        );
        assert_eq!(
            due_counting(38_999, u64::MAX, draining, Drain::started_at(10_000)),
            (None, 1)
        );
    }

    #[test]
    fn a_drain_started_after_the_reading_is_never_cut_late() {
        // Whenever the drain starts after the reading, while the reading is
        // still used, its cut is not due yet.
        let read_at = 10_000;
        let seen = Seen {
            drain: Drain::SERVING,
            read_unix_ms: read_at,
            changes: None,
        };
        for start in (read_at + 1..read_at + 40_000).step_by(997) {
            let drain = Drain::started_at(start);
            for now in (start..start + 40_000).step_by(331) {
                let (at, limit) = cutoff(u64::MAX, drain, W, 1_000);
                let want = (now >= at).then_some(limit);
                assert_eq!(
                    due_counting(now, u64::MAX, seen, drain).0,
                    want,
                    "start {start}, now {now}"
                );
            }
        }
    }

    #[test]
    fn the_clock_is_not_read_while_the_last_reading_is_far_from_any_cut() {
        let seen = Seen {
            drain: Drain::SERVING,
            read_unix_ms: 10_000,
            changes: None,
        };
        let lagged = policy(2_000);
        // Deadline 60 s on: its cut (59 s) is far beyond the reading + 2 s.
        assert!(!lagged.may_be_due(70_000, seen));
        assert_eq!(
            due_reading(lagged, 10_500, 70_000, seen, Drain::SERVING),
            (None, 0)
        );
        // Within the lag of the deadline's cut: the clock decides.
        let near = Seen {
            read_unix_ms: 67_500,
            ..seen
        };
        assert_eq!(
            due_reading(lagged, 68_500, 70_000, near, Drain::SERVING),
            (None, 1)
        );
        assert_eq!(
            due_reading(lagged, 69_000, 70_000, near, Drain::SERVING),
            (Some(Limit::Deadline), 1)
        );
        // A known drain brings the earliest cut forward.
        let draining = Seen {
            drain: Drain::started_at(9_000),
            ..seen
        };
        assert_eq!(earliest_cut(70_000, draining, W, 1_000), 38_000);
        assert_eq!(earliest_cut(70_000, seen, W, 1_000), 39_000);
    }

    #[test]
    fn a_cut_is_never_missed_while_the_reading_trails_the_clock_by_at_most_the_lag() {
        // Against the exact rule (every lookup made), for readings up to
        // `lag` behind the clock.
        let lag = 2_000;
        for deadline in [5_000, 31_000, 50_000, 90_000] {
            for start in [None, Some(1_000), Some(20_000)] {
                for now in (0..80_000).step_by(250) {
                    let drain = Drain {
                        started_unix_ms: start.filter(|&s| s <= now),
                    };
                    for behind in [0, 1_000, lag] {
                        let read_at = now.saturating_sub(behind);
                        let seen = Seen {
                            drain: Drain {
                                started_unix_ms: start.filter(|&s| s <= read_at),
                            },
                            read_unix_ms: read_at,
                            changes: None,
                        };
                        let (at, limit) = cutoff(deadline, drain, W, 1_000);
                        let exact = (now >= at).then_some(limit);
                        assert_eq!(
                            due_reading(policy(lag), now, deadline, seen, drain).0,
                            exact,
                            "deadline {deadline}, drain {start:?}, now {now}, reading {read_at}"
                        );
                    }
                }
            }
        }
    }
}
