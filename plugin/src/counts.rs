//! The admitted and completed counters, batched per worker.
//!
//! Every forwarded request moves three stats: the in-flight gauge (up, then
//! down), `drainpipe_admitted` and `drainpipe_completed`. Each update is a
//! host call, and host calls are most of what the plugin costs Envoy per
//! request (BENCHMARKS.md). The gauge must be exact at every instant (the
//! drain waits on it), so it is updated per request; the two counters are
//! counted in the worker and added to the Envoy stats at most
//! [`FLUSH_EVERY_MS`] later (on the plugin's tick, or with the next request
//! after that), which no scrape can tell from immediate.

/// The longest a count waits in a worker before it reaches the Envoy stat.
pub const FLUSH_EVERY_MS: u64 = 1_000;

/// Counts not yet added to the Envoy stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pending {
    pub admitted: u64,
    pub completed: u64,
    /// When the counts were last handed over.
    pub flushed_unix_ms: u64,
}

impl Pending {
    pub fn admit(&mut self) {
        self.admitted += 1;
    }

    pub fn complete(&mut self) {
        self.completed += 1;
    }

    /// Whether the counts are due to be handed over at `now_unix_ms`.
    pub fn due(&self, now_unix_ms: u64) -> bool {
        (self.admitted > 0 || self.completed > 0)
            && now_unix_ms.saturating_sub(self.flushed_unix_ms) >= FLUSH_EVERY_MS
    }

    /// Hands the counts over (admitted, completed) and starts again.
    pub fn take(&mut self, now_unix_ms: u64) -> (u64, u64) {
        let counts = (self.admitted, self.completed);
        *self = Pending {
            flushed_unix_ms: now_unix_ms,
            ..Pending::default()
        };
        counts
    }
}

/// A worker's traffic streams counted in flight, by context id, and
/// whether the plugin has reset them. A stream is added when admitted and
/// removed when Envoy deletes its context, so the list holds the worker's
/// concurrent streams only: a linear scan of a short vector, and no
/// allocation per request once it has grown (a `BTreeMap` cost more per
/// request, BENCHMARKS.md).
#[derive(Debug, Default)]
pub struct InFlight {
    streams: Vec<(u32, bool)>,
}

impl InFlight {
    /// A stream admitted, not reset.
    pub fn admit(&mut self, id: u32) {
        match self.streams.iter_mut().find(|(s, _)| *s == id) {
            Some(entry) => entry.1 = false,
            None => self.streams.push((id, false)),
        }
    }

    /// A stream the plugin has reset (the tick will not end it again).
    pub fn mark_reset(&mut self, id: u32) {
        match self.streams.iter_mut().find(|(s, _)| *s == id) {
            Some(entry) => entry.1 = true,
            None => self.streams.push((id, true)),
        }
    }

    /// A stream gone (its context deleted).
    pub fn remove(&mut self, id: u32) {
        if let Some(at) = self.streams.iter().position(|(s, _)| *s == id) {
            self.streams.swap_remove(at);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The streams not reset yet, each marked reset: the tick ends them
    /// once each.
    pub fn take_unreset(&mut self) -> Vec<u32> {
        self.streams
            .iter_mut()
            .filter(|(_, reset)| !*reset)
            .map(|(id, reset)| {
                *reset = true;
                *id
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_due_a_flush_interval_after_the_last_handover() {
        let mut p = Pending::default();
        assert!(!p.due(10_000), "nothing to hand over");
        p.admit();
        p.admit();
        p.complete();
        assert!(p.due(10_000));
        assert_eq!(p.take(10_000), (2, 1));
        p.complete();
        assert!(!p.due(10_999));
        assert!(p.due(11_000));
        assert_eq!(p.take(11_000), (0, 1));
        assert_eq!(p.take(11_000), (0, 0));
    }

    #[test]
    fn in_flight_streams_are_ended_once_each_and_leave_when_deleted() {
        let mut f = InFlight::default();
        assert!(f.is_empty());
        for id in [3, 7, 5] {
            f.admit(id);
        }
        f.mark_reset(7);
        let mut ended = f.take_unreset();
        ended.sort_unstable();
        assert_eq!(ended, [3, 5]);
        assert!(f.take_unreset().is_empty(), "each stream is ended once");
        f.remove(3);
        f.remove(3);
        f.remove(7);
        assert!(!f.is_empty());
        f.remove(5);
        assert!(f.is_empty());
        f.admit(9);
        f.admit(9);
        assert_eq!(f.take_unreset(), [9], "admitted twice is one stream");
    }
}
