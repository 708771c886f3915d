//! The drain stats an operator watches: when the drain started, how long it
//! took to reach `drained`, and how many responses it saw cut.
//!
//! Every worker keeps the same two gauges (one Envoy stat each, global
//! across workers), so the rules here only ever move them forward: a new
//! drain start, or the first (or a later) moment the drain was seen drained.
//!
//! - [`observed`] runs wherever the phase is computed (each worker's tick,
//!   every drain API call): it records a new drain's start (and clears the
//!   previous drain's duration), and, for a drain found already drained
//!   without a recorded duration, the earliest it can have become so: the
//!   end of the admit window.
//! - [`request_ended`] runs when a forwarded request ends during a drain:
//!   when that leaves nothing in flight past the admit window, the drain
//!   became `drained` at that instant.
//! - [`cut`] says whether a request that ended counts in
//!   `drainpipe_drain_resets`; [`end_matters`] whether a request's end
//!   needs the drain state read at all.

use crate::drain::{Drain, Phase, Windows};

/// The drain gauges, as the stats hold them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gauges {
    /// `drainpipe_drain_started_unix_ms`: the drain under way, unix ms; 0
    /// while serving.
    pub started_unix_ms: u64,
    /// `drainpipe_drain_duration_ms`: from the drain's start to `drained`;
    /// 0 until then.
    pub duration_ms: u64,
}

/// The gauges after an observation of `drain` in `phase`; `None`: leave
/// them as they are.
pub fn observed(now: Gauges, drain: Drain, phase: Phase, windows: Windows) -> Option<Gauges> {
    let next = match drain.started_unix_ms {
        None => Gauges {
            started_unix_ms: 0,
            ..now
        },
        Some(start) => {
            let same = now.started_unix_ms == start;
            let duration_ms = match (phase, same) {
                // Drained, and no request ending has recorded when: it was
                // so at the end of the admit window (a request ending later
                // records its own instant, see `request_ended`).
                (Phase::Drained, true) if now.duration_ms > 0 => now.duration_ms,
                (Phase::Drained, _) => windows.admit_window_ms.max(1),
                (_, true) => now.duration_ms,
                (_, false) => 0,
            };
            Gauges {
                started_unix_ms: start,
                duration_ms,
            }
        }
    };
    (next != now).then_some(next)
}

/// The gauges after a forwarded request ended at `now_unix_ms`, leaving
/// `inflight` requests in flight; `None`: leave them. A request ending after
/// the admit window with nothing left in flight makes the drain `drained`
/// at that instant; when several end at once, the latest instant stays.
pub fn request_ended(
    now: Gauges,
    drain: Drain,
    now_unix_ms: u64,
    inflight: u64,
    windows: Windows,
) -> Option<Gauges> {
    let start = drain.started_unix_ms?;
    if drain.phase(now_unix_ms, inflight, windows) != Phase::Drained {
        return None;
    }
    let duration_ms = now_unix_ms.saturating_sub(start).max(1);
    let recorded = now.started_unix_ms == start && now.duration_ms >= duration_ms;
    (!recorded).then_some(Gauges {
        started_unix_ms: start,
        duration_ms,
    })
}

/// How a forwarded request's response went, as the filter saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Response {
    /// A body chunk went by.
    pub body_started: bool,
    /// The response ended: its last body chunk or its trailers went by.
    pub whole: bool,
    /// The plugin ended it with the final event.
    pub final_event: bool,
}

/// Whether a request that ended while `drain` was on counts as cut: its
/// response had started and did not end, and not by the plugin's final
/// event (counted in `drainpipe_streams_ended`). Whoever reset it (the
/// client, the upstream, the router's timeout at the end of the grace
/// period) counts; a response without a body is never counted (the plugin
/// does not read response headers).
pub fn cut(response: Response, drain: Drain) -> bool {
    drain.started_unix_ms.is_some() && response.maybe_cut()
}

impl Response {
    /// Whether the response may have been cut: it had started and did not
    /// end, and not by the plugin's final event.
    pub fn maybe_cut(self) -> bool {
        self.body_started && !self.whole && !self.final_event
    }
}

/// Whether a request's end can move the drain's stats, by the drain state
/// as the worker last read it (`seen`): only while a drain is on, or if the
/// response may have been cut (a drain may have started since the
/// reading). A request served whole costs nothing more.
pub fn end_matters(response: Response, seen: Drain) -> bool {
    seen.started_unix_ms.is_some() || response.maybe_cut()
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Windows = Windows {
        admit_window_ms: 1_000,
        grace_ms: 10_000,
    };
    const START: u64 = 1_000_000;

    fn gauges(started_unix_ms: u64, duration_ms: u64) -> Gauges {
        Gauges {
            started_unix_ms,
            duration_ms,
        }
    }

    #[test]
    fn a_new_drain_records_its_start_and_clears_the_last_duration() {
        let last = gauges(500, 4_200);
        let drain = Drain::started_at(START);
        assert_eq!(
            observed(last, drain, Phase::Draining, W),
            Some(gauges(START, 0))
        );
        assert_eq!(observed(gauges(START, 0), drain, Phase::Rejecting, W), None);
    }

    #[test]
    fn serving_clears_the_start_and_keeps_the_last_duration() {
        assert_eq!(
            observed(gauges(START, 4_200), Drain::SERVING, Phase::Serving, W),
            Some(gauges(0, 4_200))
        );
        assert_eq!(
            observed(gauges(0, 4_200), Drain::SERVING, Phase::Serving, W),
            None
        );
    }

    #[test]
    fn a_drain_found_drained_without_a_duration_took_the_admit_window() {
        let drain = Drain::started_at(START);
        assert_eq!(
            observed(gauges(START, 0), drain, Phase::Drained, W),
            Some(gauges(START, 1_000))
        );
        // First seen when already drained (no tick in between).
        assert_eq!(
            observed(gauges(0, 0), drain, Phase::Drained, W),
            Some(gauges(START, 1_000))
        );
        // A duration a request ending recorded stays.
        assert_eq!(
            observed(gauges(START, 7_300), drain, Phase::Drained, W),
            None
        );
    }

    #[test]
    fn the_last_request_ending_after_the_admit_window_records_the_drain_duration() {
        let drain = Drain::started_at(START);
        let g = gauges(START, 0);
        // Others still in flight: not drained yet.
        assert_eq!(request_ended(g, drain, START + 7_300, 2, W), None);
        assert_eq!(
            request_ended(g, drain, START + 7_300, 0, W),
            Some(gauges(START, 7_300))
        );
        // Inside the admit window nothing is drained yet: the window's end
        // is (see `observed`).
        assert_eq!(request_ended(g, drain, START + 400, 0, W), None);
        // Not draining: nothing.
        assert_eq!(request_ended(g, Drain::SERVING, START, 0, W), None);
    }

    #[test]
    fn of_requests_ending_together_the_latest_instant_stays() {
        let drain = Drain::started_at(START);
        assert_eq!(
            request_ended(gauges(START, 7_300), drain, START + 7_301, 0, W),
            Some(gauges(START, 7_301))
        );
        assert_eq!(
            request_ended(gauges(START, 7_301), drain, START + 7_300, 0, W),
            None
        );
        // A tick that saw it drained first recorded the admit window.
        assert_eq!(
            request_ended(gauges(START, 1_000), drain, START + 7_300, 0, W),
            Some(gauges(START, 7_300))
        );
    }

    #[test]
    fn a_drain_with_no_admit_window_and_nothing_in_flight_records_a_nonzero_duration() {
        let w = Windows {
            admit_window_ms: 0,
            grace_ms: 10_000,
        };
        let drain = Drain::started_at(START);
        assert_eq!(
            observed(gauges(0, 0), drain, Phase::Drained, w),
            Some(gauges(START, 1))
        );
    }

    #[test]
    fn only_a_response_cut_mid_body_during_a_drain_counts_as_reset() {
        let drain = Drain::started_at(START);
        let mid_body = Response {
            body_started: true,
            ..Response::default()
        };
        assert!(cut(mid_body, drain));
        assert!(!cut(mid_body, Drain::SERVING), "no drain on");
        let whole = Response {
            whole: true,
            ..mid_body
        };
        assert!(!cut(whole, drain));
        let ended = Response {
            final_event: true,
            ..mid_body
        };
        assert!(!cut(ended, drain), "counted in drainpipe_streams_ended");
        assert!(!cut(Response::default(), drain), "no body seen");
    }

    #[test]
    fn a_request_end_matters_only_during_a_drain_or_when_its_response_may_be_cut() {
        let whole = Response {
            body_started: true,
            whole: true,
            final_event: false,
        };
        let mid_body = Response {
            whole: false,
            ..whole
        };
        let ended = Response {
            final_event: true,
            ..mid_body
        };
        let draining = Drain::started_at(START);
        for r in [whole, mid_body, ended, Response::default()] {
            assert!(end_matters(r, draining), "{r:?} during a drain");
        }
        assert!(
            end_matters(mid_body, Drain::SERVING),
            "a drain may have started"
        );
        assert!(!end_matters(whole, Drain::SERVING));
        assert!(!end_matters(ended, Drain::SERVING));
        assert!(!end_matters(Response::default(), Drain::SERVING));
    }
}
