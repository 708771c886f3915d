//! The drain state machine.
//!
//! The only stored fact is when the drain started (in Envoy's shared data, so
//! every worker and every filter instance under one vm_id sees it); the phase
//! follows from that instant, the clock and the in-flight count:
//!
//! ```text
//! serving --POST /drain--> draining --admit window over--> rejecting --0 in flight--> drained
//!    ^                                                                                   |
//!    +------------------------------ DELETE /drain (from any state) --------------------+
//! ```

/// The shared-data key holding the drain start.
pub const SHARED_KEY: &str = "drainpipe.drain_started_unix_ms";
/// The shared-data key where traffic listeners publish their [`Windows`], so
/// the admin role reports the phase the traffic listeners act on.
pub const WINDOWS_KEY: &str = "drainpipe.windows";

/// A drain's timing, from the traffic role's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// New requests are still admitted this long after the drain starts.
    pub admit_window_ms: u64,
    /// Requests admitted while draining must end this long after the start.
    pub grace_ms: u64,
}

impl Windows {
    /// `admit_window_ms,grace_ms`, for shared data.
    pub fn encode(&self) -> Vec<u8> {
        format!("{},{}", self.admit_window_ms, self.grace_ms).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Windows> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (admit, grace) = text.split_once(',')?;
        Some(Windows {
            admit_window_ms: crate::deadline::parse_ms(admit.as_bytes())?,
            grace_ms: crate::deadline::parse_ms(grace.as_bytes())?,
        })
    }
}

/// Where an instance is in its drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not draining: readiness 200, everything admitted.
    Serving,
    /// Drain started, inside the admit window: readiness 503, requests still
    /// admitted with deadlines inside the grace period.
    Draining,
    /// Admit window over: new requests get the 503 contract; some in flight.
    Rejecting,
    /// Rejecting, and nothing in flight.
    Drained,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Rejecting => "rejecting",
            Phase::Drained => "drained",
        }
    }

    /// Value of the `drainpipe_state` gauge.
    pub fn gauge(self) -> u64 {
        match self {
            Phase::Serving => 0,
            Phase::Draining => 1,
            Phase::Rejecting => 2,
            Phase::Drained => 3,
        }
    }
}

/// The stored drain state: serving, or draining since an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drain {
    pub started_unix_ms: Option<u64>,
}

/// What a new request may do, by the drain alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Serving: no drain limit.
    Unlimited,
    /// Draining: admitted, but must finish within this many ms.
    Within { grace_left_ms: u64 },
    /// Past the admit window.
    Reject,
}

impl Drain {
    pub const SERVING: Drain = Drain {
        started_unix_ms: None,
    };

    pub fn started_at(unix_ms: u64) -> Drain {
        Drain {
            started_unix_ms: Some(unix_ms),
        }
    }

    /// Decodes the shared-data value (absent or empty means serving).
    pub fn decode(bytes: Option<&[u8]>) -> Result<Drain, String> {
        match bytes {
            None | Some(b"") => Ok(Drain::SERVING),
            Some(b) => crate::deadline::parse_ms(b)
                .map(Drain::started_at)
                .ok_or_else(|| {
                    let record = crate::json::quote(&String::from_utf8_lossy(b));
                    format!("bad drain record {record}")
                }),
        }
    }

    /// Encodes for shared data.
    pub fn encode(&self) -> Vec<u8> {
        self.started_unix_ms
            .map(|t| t.to_string().into_bytes())
            .unwrap_or_default()
    }

    /// The milliseconds since the drain started, if draining.
    pub fn elapsed_ms(&self, now_unix_ms: u64) -> Option<u64> {
        self.started_unix_ms
            .map(|start| now_unix_ms.saturating_sub(start))
    }

    /// The phase, given the global in-flight count.
    pub fn phase(&self, now_unix_ms: u64, inflight: u64, windows: Windows) -> Phase {
        match self.admit(now_unix_ms, windows) {
            Admit::Unlimited => Phase::Serving,
            Admit::Within { .. } => Phase::Draining,
            Admit::Reject if inflight == 0 => Phase::Drained,
            Admit::Reject => Phase::Rejecting,
        }
    }

    /// Whether and how long a new request may run.
    pub fn admit(&self, now_unix_ms: u64, windows: Windows) -> Admit {
        match self.elapsed_ms(now_unix_ms) {
            None => Admit::Unlimited,
            Some(elapsed) if elapsed < windows.admit_window_ms => Admit::Within {
                grace_left_ms: windows.grace_ms.saturating_sub(elapsed),
            },
            Some(_) => Admit::Reject,
        }
    }
}

/// The drain state as one worker last read it.
///
/// Reading shared data costs a copy into the VM; reading a stat does not. So
/// every write of the drain state is followed by an increment of the
/// `drainpipe_drain_changes` counter (one Envoy stat for all workers), and a
/// worker reads the state again only when that counter has moved since its
/// last reading. A write seen between the two steps counts as not yet made:
/// the next request sees the counter move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    pub drain: Drain,
    pub read_unix_ms: u64,
    /// The change counter at the reading (`None`: no reading yet).
    pub changes: Option<u64>,
}

impl Seen {
    /// The state at `now_unix_ms`, given the change counter (`None` if it
    /// could not be read): this reading while the counter has not moved,
    /// else a fresh `read`.
    pub fn refresh(
        self,
        now_unix_ms: u64,
        changes: Option<u64>,
        read: impl FnOnce() -> Drain,
    ) -> Seen {
        let drain = match changes {
            Some(c) if self.changes == Some(c) => self.drain,
            _ => read(),
        };
        Seen {
            drain,
            read_unix_ms: now_unix_ms,
            changes,
        }
    }
}

/// Reads a drain controller's status (`GET /drain` of the admin role or of
/// `drainpipe controller`): the `drain_started_unix_ms` field, a number
/// while draining and `null` while serving.
pub fn parse_controller_status(body: &[u8]) -> Result<Drain, String> {
    let doc =
        crate::json::parse(body).map_err(|e| format!("controller status is not JSON: {e}"))?;
    match doc.get("drain_started_unix_ms") {
        Some(crate::json::Value::Null) => Ok(Drain::SERVING),
        Some(v) => v
            .as_u64()
            .map(Drain::started_at)
            .ok_or_else(|| format!("controller status: drain_started_unix_ms is {v}, not a time")),
        None => Err("controller status lacks drain_started_unix_ms".to_string()),
    }
}

/// What to store when following a controller: `None` keeps the local state.
/// The controller is the authority: its drain start is adopted unless a
/// drain is already on locally (which keeps its own, earlier start), and its
/// `serving` ends a local drain.
pub fn follow(controller: Drain, local: Drain) -> Option<Drain> {
    match (controller.started_unix_ms, local.started_unix_ms) {
        (Some(_), Some(_)) | (None, None) => None,
        (Some(_), None) | (None, Some(_)) => Some(controller),
    }
}

/// What a worker's tick does: whether it ends the streams still in flight
/// on this worker, and how soon it comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtTick {
    /// The grace period is over: every stream still in flight is ended
    /// now (nothing holds the drain past the grace).
    pub end_in_flight: bool,
    /// Milliseconds to the next tick.
    pub period_ms: u64,
}

/// The tick's period near a grace end, so streams still in flight are
/// ended within this long after it.
pub const FAST_TICK_MS: u64 = 100;

/// The tick's plan: every `normal_ms` while serving and far from the grace
/// end; every [`FAST_TICK_MS`] from one normal period before the grace end
/// for as long as streams are in flight on this worker (`in_flight_here`),
/// which are all ended once the grace end has passed.
pub fn at_tick(
    drain: Drain,
    now_unix_ms: u64,
    windows: Windows,
    normal_ms: u64,
    in_flight_here: bool,
) -> AtTick {
    let normal = AtTick {
        end_in_flight: false,
        period_ms: normal_ms,
    };
    let Some(start) = drain.started_unix_ms else {
        return normal;
    };
    let grace_end = start.saturating_add(windows.grace_ms);
    if now_unix_ms >= grace_end {
        return AtTick {
            end_in_flight: in_flight_here,
            period_ms: if in_flight_here {
                FAST_TICK_MS
            } else {
                normal_ms
            },
        };
    }
    if in_flight_here && now_unix_ms.saturating_add(normal_ms) >= grace_end {
        return AtTick {
            end_in_flight: false,
            period_ms: FAST_TICK_MS.min(normal_ms),
        };
    }
    normal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Windows {
        Windows {
            admit_window_ms: 5_000,
            grace_ms: 30_000,
        }
    }

    #[test]
    fn state_moves_over_time_from_serving_to_drained() {
        let cfg = cfg();
        let t0 = 1_000_000;
        let drain = Drain::started_at(t0);
        // (ms after start, in flight, phase, admission)
        let timeline = [
            (
                0,
                3,
                Phase::Draining,
                Admit::Within {
                    grace_left_ms: 30_000,
                },
            ),
            (
                4_999,
                3,
                Phase::Draining,
                Admit::Within {
                    grace_left_ms: 25_001,
                },
            ),
            (
                4_999,
                0,
                Phase::Draining,
                Admit::Within {
                    grace_left_ms: 25_001,
                },
            ),
            (5_000, 2, Phase::Rejecting, Admit::Reject),
            (29_000, 1, Phase::Rejecting, Admit::Reject),
            (31_000, 0, Phase::Drained, Admit::Reject),
        ];
        for (after, inflight, phase, admit) in timeline {
            assert_eq!(drain.phase(t0 + after, inflight, cfg), phase, "at +{after}");
            assert_eq!(drain.admit(t0 + after, cfg), admit, "at +{after}");
        }
        assert_eq!(Drain::SERVING.phase(t0, 7, cfg), Phase::Serving);
        assert_eq!(Drain::SERVING.admit(t0, cfg), Admit::Unlimited);
    }

    #[test]
    fn zero_admit_window_rejects_from_drain_start() {
        let windows = Windows {
            admit_window_ms: 0,
            ..cfg()
        };
        assert_eq!(Drain::started_at(10).admit(10, windows), Admit::Reject);
    }

    #[test]
    fn clock_behind_drain_start_counts_as_just_started() {
        let drain = Drain::started_at(10_000);
        assert_eq!(drain.elapsed_ms(9_000), Some(0));
        assert_eq!(drain.phase(9_000, 0, cfg()), Phase::Draining);
    }

    #[test]
    fn shared_record_round_trips_and_rejects_garbage() {
        for d in [Drain::SERVING, Drain::started_at(1_764_000_000_123)] {
            assert_eq!(Drain::decode(Some(&d.encode())), Ok(d));
        }
        assert_eq!(Drain::decode(None), Ok(Drain::SERVING));
        assert!(Drain::decode(Some(b"yesterday")).is_err());
        assert_eq!(Windows::decode(&cfg().encode()), Some(cfg()));
        for bad in [&b""[..], b"5", b"5,", b"a,b", b"1,2,3"] {
            assert_eq!(Windows::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn controller_status_is_read_from_drain_started_unix_ms() {
        let cases: &[(&str, Result<Drain, &str>)] = &[
            (
                r#"{"state":"serving","drain_started_unix_ms":null}"#,
                Ok(Drain::SERVING),
            ),
            (
                r#"{"drain_started_unix_ms":1700}"#,
                Ok(Drain::started_at(1700)),
            ),
            (r#"{"state":"draining"}"#, Err("lacks")),
            (r#"{"drain_started_unix_ms":"soon"}"#, Err("not a time")),
            (r#"{"drain_started_unix_ms":-5}"#, Err("not a time")),
            ("<html>", Err("not JSON")),
        ];
        for (body, want) in cases {
            match (parse_controller_status(body.as_bytes()), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{body}"),
                (Err(e), Err(needle)) => assert!(e.contains(needle), "{body}: {e}"),
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn following_a_controller_adopts_its_changes_only() {
        let (on, off) = (Drain::started_at(100), Drain::SERVING);
        assert_eq!(follow(on, off), Some(on));
        assert_eq!(follow(off, on), Some(off));
        assert_eq!(follow(off, off), None);
        // A drain already on keeps its own start time.
        assert_eq!(follow(Drain::started_at(200), on), None);
    }

    #[test]
    fn phase_names_and_gauge_values_are_stable() {
        let all = [
            Phase::Serving,
            Phase::Draining,
            Phase::Rejecting,
            Phase::Drained,
        ];
        let names: Vec<_> = all.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["serving", "draining", "rejecting", "drained"]);
        let gauges: Vec<_> = all.iter().map(|p| p.gauge()).collect();
        assert_eq!(gauges, [0, 1, 2, 3]);
    }

    #[test]
    fn a_reading_is_reused_until_the_change_counter_moves() {
        let mut reads = 0;
        let mut read = |d: Drain| {
            reads += 1;
            d
        };
        let first = Seen::default().refresh(1_000, Some(7), || read(Drain::SERVING));
        assert_eq!(first.changes, Some(7));
        // Same counter: the copy stands (even if shared data says otherwise,
        // which only happens between a write and its increment).
        let again = first.refresh(2_000, Some(7), || read(Drain::started_at(1_500)));
        assert_eq!(again.drain, Drain::SERVING);
        assert_eq!(again.read_unix_ms, 2_000);
        // The counter moved: read again.
        let moved = again.refresh(3_000, Some(8), || read(Drain::started_at(1_500)));
        assert_eq!(moved.drain, Drain::started_at(1_500));
        // No counter: always read.
        let blind = moved.refresh(4_000, None, || read(Drain::SERVING));
        assert_eq!(blind.drain, Drain::SERVING);
        let blind = blind.refresh(5_000, None, || read(Drain::started_at(4_500)));
        assert_eq!(blind.drain, Drain::started_at(4_500));
        assert_eq!(reads, 4);
    }

    #[test]
    fn ticks_come_fast_near_the_grace_end_and_end_what_is_left_after_it() {
        let w = Windows {
            admit_window_ms: 1_000,
            grace_ms: 10_000,
        };
        let tick = |drain, now, here| at_tick(drain, now, w, 1_000, here);
        let normal = AtTick {
            end_in_flight: false,
            period_ms: 1_000,
        };
        assert_eq!(tick(Drain::SERVING, 5_000, true), normal);
        let d = Drain::started_at(100_000);
        assert_eq!(tick(d, 100_500, true), normal);
        assert_eq!(tick(d, 108_999, true), normal);
        let fast = AtTick {
            end_in_flight: false,
            period_ms: FAST_TICK_MS,
        };
        assert_eq!(tick(d, 109_000, true), fast);
        assert_eq!(tick(d, 109_000, false), normal);
        let end = AtTick {
            end_in_flight: true,
            period_ms: FAST_TICK_MS,
        };
        assert_eq!(tick(d, 110_000, true), end);
        assert_eq!(tick(d, 250_000, true), end);
        assert_eq!(tick(d, 110_000, false), normal);
    }
}
