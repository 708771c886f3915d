//! A drain's progress: polled statuses in, a verdict and at most one line a
//! second out, in the words of `envoy/prestop.sh`. Pure: the caller polls
//! and prints, so `run` and `drain --wait` behave alike and the rules are
//! tested without a proxy.

use std::time::{Duration, Instant};

use crate::api::{describe, ApiError, Status};

/// What the last status means for the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not drained yet, time left.
    Waiting,
    /// State `drained`: nothing in flight, new requests refused.
    Drained,
    /// The timeout passed first.
    TimedOut,
    /// The drain API stopped answering after a drain was seen: the proxy
    /// that served it has stopped, so nothing is in flight through it
    /// (only with [`Watch::done_when_gone`]).
    ProxyGone,
}

/// The wait for one drain.
#[derive(Debug)]
pub struct Watch {
    started: Instant,
    timeout: Duration,
    reported_s: Option<u64>,
    last: Option<Status>,
    seen_drain: bool,
    done_when_gone: bool,
}

impl Watch {
    /// A wait that started at `started` and gives up after `timeout`.
    pub fn new(started: Instant, timeout: Duration) -> Watch {
        Watch {
            started,
            timeout,
            reported_s: None,
            last: None,
            seen_drain: false,
            done_when_gone: false,
        }
    }

    /// Counts a drain API that stops answering, after it reported a drain,
    /// as the end of the wait (for a waiter that does not stop the proxy
    /// itself: whoever started the drain stopped it).
    pub fn done_when_gone(mut self) -> Watch {
        self.done_when_gone = true;
        self
    }

    /// Takes one poll's result at `now`: the verdict, and the line to
    /// print, if one is due.
    pub fn observe(
        &mut self,
        now: Instant,
        polled: Result<Status, ApiError>,
    ) -> (Verdict, Option<String>) {
        let waited = now.saturating_duration_since(self.started);
        let waited_s = waited.as_secs();
        match polled {
            Ok(status) if status.state == "drained" => {
                return (Verdict::Drained, Some(format!("drained after {waited_s}s")));
            }
            Ok(status) => {
                self.seen_drain |= status.draining();
                self.last = Some(status);
            }
            Err(ApiError::Unreachable { .. }) if self.done_when_gone && self.seen_drain => {
                return (
                    Verdict::ProxyGone,
                    Some(format!(
                        "the drain API stopped answering after {waited_s}s of drain: the proxy has stopped"
                    )),
                );
            }
            Err(_) => self.last = None,
        }
        if waited >= self.timeout {
            let line = format!(
                "timed out after {waited_s}s: {}",
                describe(self.last.as_ref())
            );
            return (Verdict::TimedOut, Some(line));
        }
        if self.reported_s == Some(waited_s) {
            return (Verdict::Waiting, None);
        }
        self.reported_s = Some(waited_s);
        let line = format!(
            "waiting: {} ({waited_s}s of {})",
            describe(self.last.as_ref()),
            seconds(self.timeout)
        );
        (Verdict::Waiting, Some(line))
    }
}

/// A duration in seconds, as `prestop.sh` prints its timeout: `90s` (not
/// humantime's `1m 30s`), `1.5s` for a fraction (to the millisecond).
pub fn seconds(d: Duration) -> String {
    // Integer arithmetic: float formatting would add its code to the binary.
    match d.subsec_millis() {
        0 => format!("{}s", d.as_secs()),
        ms => {
            let fraction = format!("{ms:03}");
            format!("{}.{}s", d.as_secs(), fraction.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, inflight: u64) -> Result<Status, ApiError> {
        Ok(Status {
            state: state.into(),
            inflight: Some(inflight),
        })
    }

    fn gone() -> Result<Status, ApiError> {
        Err(ApiError::Unreachable {
            url: "http://127.0.0.1:1/drain".into(),
            cause: "connection refused".into(),
        })
    }

    #[test]
    fn progress_is_one_line_a_second_in_prestop_words() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, Duration::from_secs(35));
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(
            w.observe(ms(0), status("draining", 6)),
            (
                Verdict::Waiting,
                Some("waiting: state=draining inflight=6 (0s of 35s)".into())
            )
        );
        assert_eq!(
            w.observe(ms(250), status("draining", 5)),
            (Verdict::Waiting, None)
        );
        assert_eq!(
            w.observe(ms(999), status("draining", 5)),
            (Verdict::Waiting, None)
        );
        assert_eq!(
            w.observe(ms(1000), status("rejecting", 2)).1.as_deref(),
            Some("waiting: state=rejecting inflight=2 (1s of 35s)")
        );
        assert_eq!(
            w.observe(ms(2100), status("drained", 0)),
            (Verdict::Drained, Some("drained after 2s".into()))
        );
    }

    #[test]
    fn the_timeout_is_shown_in_seconds_as_prestop_shows_it() {
        assert_eq!(seconds(Duration::from_secs(90)), "90s");
        assert_eq!(seconds(Duration::from_secs(3600)), "3600s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5s");
        assert_eq!(seconds(Duration::from_millis(250)), "0.25s");
        assert_eq!(seconds(Duration::from_millis(2005)), "2.005s");
        let t0 = Instant::now();
        let mut w = Watch::new(t0, Duration::from_secs(90));
        assert_eq!(
            w.observe(t0, status("draining", 1)).1.as_deref(),
            Some("waiting: state=draining inflight=1 (0s of 90s)")
        );
    }

    #[test]
    fn the_timeout_ends_the_wait_with_the_last_known_status() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, Duration::from_secs(2));
        w.observe(t0, status("rejecting", 1));
        assert_eq!(
            w.observe(t0 + Duration::from_secs(2), status("rejecting", 1)),
            (
                Verdict::TimedOut,
                Some("timed out after 2s: state=rejecting inflight=1".into())
            )
        );
    }

    #[test]
    fn an_unreachable_api_is_unknown_and_waits_on() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, Duration::from_secs(5));
        assert_eq!(
            w.observe(t0, gone()),
            (
                Verdict::Waiting,
                Some("waiting: state=unknown inflight=unknown (0s of 5s)".into())
            )
        );
        w.observe(t0 + Duration::from_secs(1), status("draining", 1));
        // Without done_when_gone, even after a drain was seen.
        assert_eq!(
            w.observe(t0 + Duration::from_secs(2), gone()).0,
            Verdict::Waiting
        );
    }

    #[test]
    fn a_waiter_that_saw_the_drain_is_done_when_the_proxy_is_gone() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, Duration::from_secs(5)).done_when_gone();
        // Not yet draining: a proxy that does not answer may be starting.
        assert_eq!(w.observe(t0, gone()).0, Verdict::Waiting);
        assert_eq!(w.observe(t0, status("serving", 0)).0, Verdict::Waiting);
        assert_eq!(w.observe(t0, gone()).0, Verdict::Waiting);
        w.observe(t0, status("rejecting", 1));
        assert_eq!(w.observe(t0, gone()).0, Verdict::ProxyGone);
    }

    #[test]
    fn a_refusal_is_not_the_proxy_gone() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, Duration::from_secs(5)).done_when_gone();
        w.observe(t0, status("rejecting", 1));
        let refused = Err(ApiError::Refused {
            url: "u".into(),
            status: 401,
            body: "{}".into(),
        });
        assert_eq!(w.observe(t0, refused).0, Verdict::Waiting);
    }
}
