//! When a worker's timer ticks, and when it polls its drain controller.
//!
//! Each worker's tick refreshes the state gauge and the worker's drain
//! reading, hands over its batched counts, polls the drain controller if
//! one is configured, and near a grace end comes often enough to end the
//! streams still in flight on time ([`crate::drain::at_tick`]).

use crate::drain::{self, Drain, Windows};

/// How often each worker ticks away from a grace end.
pub const TICK_MS: u64 = 1_000;

/// A worker's tick period (zero until configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ticks {
    /// The period away from a grace end: [`TICK_MS`], or the drain
    /// controller's poll interval if that is shorter (a poll goes out on a
    /// tick).
    pub normal_ms: u64,
    /// The period set now.
    pub period_ms: u64,
}

/// What a tick does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickPlan {
    /// The tick period to set, when it changes.
    pub set_period_ms: Option<u64>,
    /// End every stream still in flight on this worker (the grace period is
    /// over).
    pub end_in_flight: bool,
}

impl Ticks {
    /// The ticks of a worker that polls a drain controller every
    /// `poll_ms`, if it does.
    pub fn new(poll_ms: Option<u64>) -> Ticks {
        let normal_ms = match poll_ms {
            Some(poll_ms) => TICK_MS.min(poll_ms),
            None => TICK_MS,
        };
        Ticks {
            normal_ms,
            period_ms: normal_ms,
        }
    }

    /// How far a reading refreshed on every tick may trail the clock: two
    /// periods, for a late tick.
    pub fn clock_lag_ms(&self) -> u64 {
        2 * self.normal_ms
    }

    /// The plan of a tick at `now_unix_ms` ([`drain::at_tick`]), and the
    /// period from then on.
    pub fn at_tick(
        &mut self,
        drain: Drain,
        now_unix_ms: u64,
        windows: Windows,
        in_flight_here: bool,
    ) -> TickPlan {
        let plan = drain::at_tick(drain, now_unix_ms, windows, self.normal_ms, in_flight_here);
        let changed = plan.period_ms != self.period_ms;
        self.period_ms = plan.period_ms;
        TickPlan {
            set_period_ms: changed.then_some(plan.period_ms),
            end_in_flight: plan.end_in_flight,
        }
    }
}

/// A worker's polls of its drain controller: one every poll interval, and
/// never a second while one is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Polls {
    /// When the next poll may go out.
    next_unix_ms: u64,
    /// A poll's call is out, not answered yet.
    pending: bool,
    /// Whether the last poll worked (`None`: no poll yet).
    ok: Option<bool>,
}

impl Polls {
    /// Whether a poll goes out at `now_unix_ms`; if it does, the next may
    /// go `every_ms` later (whether or not its call could be made).
    pub fn start(&mut self, now_unix_ms: u64, every_ms: u64) -> bool {
        if self.pending || now_unix_ms < self.next_unix_ms {
            return false;
        }
        self.next_unix_ms = now_unix_ms.saturating_add(every_ms);
        true
    }

    /// The poll's call went out: no other until it is answered.
    pub fn sent(&mut self) {
        self.pending = true;
    }

    /// The poll's call was answered (or failed).
    pub fn answered(&mut self) {
        self.pending = false;
    }

    /// Records whether the last poll worked; `true` when that differs from
    /// the poll before (or it is the first), which is when it is logged.
    pub fn worked(&mut self, ok: bool) -> bool {
        let changed = self.ok != Some(ok);
        self.ok = Some(ok);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_come_every_second_or_every_poll_interval_if_shorter() {
        assert_eq!(Ticks::new(None).normal_ms, 1_000);
        assert_eq!(Ticks::new(Some(200)).normal_ms, 200);
        assert_eq!(Ticks::new(Some(5_000)).normal_ms, 1_000);
        let t = Ticks::new(Some(200));
        assert_eq!(t.period_ms, t.normal_ms);
    }

    #[test]
    fn the_clock_lag_is_two_tick_periods() {
        assert_eq!(Ticks::new(None).clock_lag_ms(), 2_000);
        assert_eq!(Ticks::new(Some(300)).clock_lag_ms(), 600);
    }

    #[test]
    fn the_tick_period_is_set_only_when_it_changes() {
        let w = Windows {
            admit_window_ms: 1_000,
            grace_ms: 10_000,
        };
        let d = Drain::started_at(100_000);
        let mut t = Ticks::new(None);
        let plan = |set_period_ms, end_in_flight| TickPlan {
            set_period_ms,
            end_in_flight,
        };
        assert_eq!(t.at_tick(Drain::SERVING, 5_000, w, true), plan(None, false));
        assert_eq!(t.at_tick(d, 108_999, w, true), plan(None, false));
        // Near the grace end, with streams here: fast ticks, set once.
        assert_eq!(
            t.at_tick(d, 109_000, w, true),
            plan(Some(drain::FAST_TICK_MS), false)
        );
        assert_eq!(t.at_tick(d, 109_100, w, true), plan(None, false));
        assert_eq!(t.at_tick(d, 110_000, w, true), plan(None, true));
        // Nothing left here: back to the normal period.
        assert_eq!(t.at_tick(d, 110_100, w, false), plan(Some(1_000), false));
        assert_eq!(t.at_tick(d, 111_100, w, false), plan(None, false));
        assert_eq!(t.period_ms, 1_000);
    }

    #[test]
    fn a_poll_goes_out_once_per_interval_and_never_while_one_is_out() {
        let mut p = Polls::default();
        assert!(p.start(10_000, 200));
        p.sent();
        // Answer still out, interval over: no second call.
        assert!(!p.start(10_500, 200));
        p.answered();
        assert!(p.start(10_500, 200));
        p.sent();
        p.answered();
        assert!(!p.start(10_699, 200));
        assert!(p.start(10_700, 200));
    }

    #[test]
    fn a_poll_whose_call_could_not_be_made_waits_for_the_next_interval() {
        let mut p = Polls::default();
        assert!(p.start(10_000, 1_000));
        // Not sent: the next poll still waits its interval.
        assert!(!p.start(10_001, 1_000));
        assert!(p.start(11_000, 1_000));
    }

    #[test]
    fn a_poll_result_is_logged_only_when_it_changes() {
        let mut p = Polls::default();
        assert!(p.worked(false), "the first result is logged");
        assert!(!p.worked(false));
        assert!(p.worked(true));
        assert!(!p.worked(true));
        assert!(p.worked(false));
    }
}
