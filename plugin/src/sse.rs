//! Ending a server-sent-events stream explicitly instead of cutting it.
//!
//! A stream still running near its deadline, or near the end of the drain's
//! grace period, would be reset by Envoy (router timeout, or Envoy exiting):
//! the client sees a truncated body and cannot tell why. Instead, a little
//! before that limit the plugin ends the stream with a final event carrying
//! the OpenAI error object, and sends nothing after it (no `[DONE]`), so SDKs
//! raise a clear error and clients can tell truncation from completion.
//!
//! The event is only inserted at an event boundary (after a blank line), so
//! the client never sees a torn event.

use crate::json::Value;
use crate::json_object;

use crate::drain::{Drain, Windows};

/// Why a stream is ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The request's own deadline.
    Deadline,
    /// The end of the drain's grace period.
    Drain,
}

impl Limit {
    fn code(self) -> &'static str {
        match self {
            Limit::Deadline => "deadline_exceeded",
            Limit::Drain => "service_draining",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Limit::Deadline => "The stream reached its deadline and was ended before completion.",
            Limit::Drain => "This server is shutting down; the stream was ended before completion. Retry the request.",
        }
    }
}

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

/// The final event: `data: {"error":{...}}` and a blank line.
pub fn final_event(limit: Limit) -> Vec<u8> {
    let error = json_object! {"error": json_object! {"message": limit.message(), "type": "server_error", "param": Value::Null, "code": limit.code()}};
    format!("data: {error}\n\n").into_bytes()
}

/// What to do with one response body chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkAction {
    /// Pass it unchanged.
    Forward,
    /// Replace it with these bytes (a prefix of it and the final event).
    Replace(Vec<u8>),
    /// The final event has gone: drop the chunk and end the stream.
    Drop,
}

/// The bytes the cutter keeps of what it forwarded: enough to see a blank
/// line (`\n\n` or `\n\r\n`) that spans two chunks.
pub const TAIL: usize = 3;

/// The part of a `body_size`-byte chunk that [`Cutter::on_chunk`] needs when
/// no cut is due (`start`, `len`): its last [`TAIL`] bytes.
pub fn tail_range(body_size: usize) -> (usize, usize) {
    let len = body_size.min(TAIL);
    (body_size - len, len)
}

/// Follows an SSE stream's framing and ends it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cutter {
    /// The last bytes forwarded (a stream starts at a boundary).
    tail: Vec<u8>,
    ended: bool,
}

impl Default for Cutter {
    fn default() -> Self {
        Cutter {
            tail: b"\n\n".to_vec(),
            ended: false,
        }
    }
}

impl Cutter {
    /// Whether the final event has been sent.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Decides for `chunk`; `cut` is `Some` once the stream must end. If no
    /// event boundary is available yet, the chunk passes and the cut waits
    /// for the next one.
    pub fn on_chunk(&mut self, chunk: &[u8], cut: Option<Limit>) -> ChunkAction {
        if self.ended {
            return ChunkAction::Drop;
        }
        if let Some(limit) = cut {
            if let Some(at) = self.last_boundary(chunk) {
                self.ended = true;
                let mut out = chunk[..at].to_vec();
                out.extend_from_slice(&final_event(limit));
                return ChunkAction::Replace(out);
            }
        }
        self.remember(chunk);
        ChunkAction::Forward
    }

    /// The largest `p` such that forwarded bytes + `chunk[..p]` end with a
    /// blank line.
    fn last_boundary(&self, chunk: &[u8]) -> Option<usize> {
        let mut window = self.tail.clone();
        window.extend_from_slice(chunk);
        let offset = self.tail.len();
        (0..=chunk.len()).rev().find(|&p| {
            let w = &window[..offset + p];
            w.ends_with(b"\n\n") || w.ends_with(b"\n\r\n")
        })
    }

    fn remember(&mut self, chunk: &[u8]) {
        self.tail.extend_from_slice(chunk);
        let keep = self.tail.len().saturating_sub(TAIL);
        self.tail.drain(..keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a cut, a chunk's tail stands for the whole chunk: the cutter
    /// ends up in the same state and later cuts at the same place.
    #[test]
    fn chunk_tails_are_enough_until_a_cut_is_due() {
        let chunks: [&[u8]; 7] = [
            b"data: a\n",
            b"\n",
            b"data: b\n\r",
            b"\ndata: c",
            b"",
            b"\n\n",
            b"x",
        ];
        for split in 0..chunks.len() {
            let mut whole = Cutter::default();
            let mut tails = Cutter::default();
            for chunk in &chunks[..split] {
                let (start, len) = tail_range(chunk.len());
                assert_eq!(whole.on_chunk(chunk, None), ChunkAction::Forward);
                assert_eq!(
                    tails.on_chunk(&chunk[start..start + len], None),
                    ChunkAction::Forward
                );
            }
            assert_eq!(whole, tails, "after {split} chunks");
            let next = b"data: d\n\ndata: e";
            assert_eq!(
                whole.on_chunk(next, Some(Limit::Drain)),
                tails.on_chunk(next, Some(Limit::Drain))
            );
        }
        assert_eq!(tail_range(0), (0, 0));
        assert_eq!(tail_range(2), (0, 2));
        assert_eq!(tail_range(10), (7, 3));
    }

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

    #[test]
    fn final_event_is_an_sse_data_line_with_the_openai_error() {
        let event = String::from_utf8(final_event(Limit::Drain)).unwrap();
        let json = event
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["error"]["code"], "service_draining");
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["param"].is_null());
        assert!(!json.contains('\n'));
    }

    #[test]
    fn stream_ends_with_the_event_at_a_boundary_and_nothing_after() {
        let mut c = Cutter::default();
        assert_eq!(c.on_chunk(b"data: 1\n\n", None), ChunkAction::Forward);
        let event = final_event(Limit::Drain);
        // The whole chunk is complete events: it is kept, the event follows.
        let mut want = b"data: 2\n\n".to_vec();
        want.extend_from_slice(&event);
        assert_eq!(
            c.on_chunk(b"data: 2\n\n", Some(Limit::Drain)),
            ChunkAction::Replace(want)
        );
        assert!(c.ended());
        assert_eq!(c.on_chunk(b"data: [DONE]\n\n", None), ChunkAction::Drop);
    }

    #[test]
    fn a_torn_event_is_never_followed_by_the_final_event() {
        let mut c = Cutter::default();
        // The previous chunk ended mid-event: the tail of this chunk that
        // finishes it is kept; a new partial event after it is dropped.
        assert_eq!(c.on_chunk(b"data: {\"a\":", None), ChunkAction::Forward);
        let mut want = b"1}\n\n".to_vec();
        want.extend_from_slice(&final_event(Limit::Deadline));
        assert_eq!(
            c.on_chunk(b"1}\n\ndata: {\"b\"", Some(Limit::Deadline)),
            ChunkAction::Replace(want)
        );
    }

    #[test]
    fn without_a_boundary_the_cut_waits_for_the_next_chunk() {
        let mut c = Cutter::default();
        assert_eq!(c.on_chunk(b"data: {\"a\":", None), ChunkAction::Forward);
        assert_eq!(
            c.on_chunk(b"\"still going\"", Some(Limit::Drain)),
            ChunkAction::Forward
        );
        assert!(!c.ended());
        // A boundary split across chunks ("\n" then "\n") is found.
        assert_eq!(c.on_chunk(b"}\n", None), ChunkAction::Forward);
        let ChunkAction::Replace(out) = c.on_chunk(b"\ndata: x", Some(Limit::Drain)) else {
            panic!("expected the cut")
        };
        assert!(out.starts_with(b"\ndata: {\"error\""));
    }

    #[test]
    fn crlf_framing_counts_as_a_boundary() {
        let mut c = Cutter::default();
        assert_eq!(
            c.on_chunk(b"data: 1\r\n\r\ndata: 2", None),
            ChunkAction::Forward
        );
        let ChunkAction::Replace(out) = c.on_chunk(b"\r\n\r\n", Some(Limit::Drain)) else {
            panic!("expected the cut")
        };
        assert!(out.starts_with(b"\r\n\r\ndata: {"));
    }

    #[test]
    fn cut_at_the_very_start_sends_only_the_event() {
        let mut c = Cutter::default();
        assert_eq!(
            c.on_chunk(b"data: 1\n", Some(Limit::Drain)),
            ChunkAction::Replace(final_event(Limit::Drain))
        );
    }
}
