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

use crate::dialect::{self, Dialect};
use crate::drain::{Drain, Seen, Windows};

/// Why a stream is ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The request's own deadline.
    Deadline,
    /// The end of the drain's grace period.
    Drain,
}

impl Limit {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Limit::Deadline => "deadline_exceeded",
            Limit::Drain => "service_draining",
        }
    }

    pub(crate) fn message(self) -> &'static str {
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

/// The final event in the plain dialect: `data: {"error":{...}}` and a
/// blank line (each dialect's: [`dialect::final_event`]).
pub fn final_event(limit: Limit) -> Vec<u8> {
    dialect::final_event(Dialect::Plain, limit)
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

/// The bytes the cutter keeps of what it has read: enough to see a blank
/// line (`\n\n` or `\n\r\n`) that spans two chunks.
const TAIL: usize = 3;

/// Follows an SSE stream's framing and ends it once.
///
/// Until a cut is due the chunks pass unread (copying each out of the proxy
/// would cost every stream a host call per chunk): the framing before a due
/// cut is then unknown, so the cut goes after the last blank line *inside*
/// the chunks read from then on, never after bytes it has not seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cutter {
    /// The last bytes of the stream, as far as they are known: the stream
    /// starts at a boundary; a chunk passed unread empties it.
    tail: Vec<u8>,
    ended: bool,
    /// Whose final event ends the stream.
    dialect: Dialect,
}

impl Default for Cutter {
    fn default() -> Self {
        Cutter::new(Dialect::Plain)
    }
}

impl Cutter {
    /// A cutter taking over a stream whose earlier chunks passed unread:
    /// whether they ended at a boundary is unknown.
    pub fn mid_stream() -> Cutter {
        Cutter::mid_stream_as(Dialect::Plain)
    }

    /// A cutter from the start of a stream that ends it in `dialect`'s terms.
    pub fn new(dialect: Dialect) -> Cutter {
        Cutter {
            tail: b"\n\n".to_vec(),
            ended: false,
            dialect,
        }
    }

    /// [`Cutter::mid_stream`] in `dialect`'s terms.
    pub fn mid_stream_as(dialect: Dialect) -> Cutter {
        Cutter {
            tail: Vec::new(),
            ended: false,
            dialect,
        }
    }

    /// Whether the final event has been sent.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Decides for the next chunk; `cut` is `Some` once the stream must end.
    /// `read` gives the chunk's bytes and is called only when they are
    /// needed (a cut is due and the stream has not ended). If no event
    /// boundary is available yet, the chunk passes and the cut waits for the
    /// next one.
    pub fn on_chunk(&mut self, cut: Option<Limit>, read: impl FnOnce() -> Vec<u8>) -> ChunkAction {
        if self.ended {
            return ChunkAction::Drop;
        }
        let Some(limit) = cut else {
            self.tail.clear();
            return ChunkAction::Forward;
        };
        let chunk = read();
        if let Some(at) = self.last_boundary(&chunk) {
            self.ended = true;
            let mut out = chunk[..at].to_vec();
            out.extend_from_slice(&dialect::final_event(self.dialect, limit));
            return ChunkAction::Replace(out);
        }
        self.remember(&chunk);
        ChunkAction::Forward
    }

    /// The largest `p` such that the known tail + `chunk[..p]` ends with a
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

/// A forwarded response's body, chunk by chunk.
///
/// Each look at a chunk is a host call (and the host calling back into the
/// VM for memory), so a chunk is looked at only once a cut is due, when the
/// stream must end anyway: a body that arrives in one piece never is (its
/// only chunk completes it, there is nothing to end early), and until its
/// cut neither is any chunk of a longer body. Whether a body is an event
/// stream is told then, from the chunk read ([`shows_events`]), rather than
/// from its `content-type`: reading a response header would cost every
/// response a callback and a host call.
///
/// A response taken for an event stream wrongly would get the final event
/// before being cut by the router's timeout or Envoy's exit anyway; an event
/// stream not recognised (no framing in the chunks read before it ends) is
/// cut as before.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Body {
    /// Not an event stream (a local reply, or a forwarded body whose first
    /// bytes are not SSE framing): passes untouched.
    #[default]
    Other,
    /// A forwarded response not told yet; `started` once a chunk with bytes
    /// passed (the next chunk may then start inside an event); `looked`:
    /// chunks read that showed no framing.
    Unknown {
        started: bool,
        looked: u8,
        dialect: Dialect,
    },
    /// An event stream.
    Events(Cutter),
}

impl Body {
    /// The body of a response to a forwarded request.
    pub fn forwarded() -> Body {
        Body::forwarded_as(Dialect::Plain)
    }

    /// The body of a response to a forwarded request in `dialect`: an event
    /// stream is ended with that dialect's final event.
    pub fn forwarded_as(dialect: Dialect) -> Body {
        Body::Unknown {
            started: false,
            looked: 0,
            dialect,
        }
    }

    /// Decides for the next chunk of `len` bytes. `cut` says whether a cut
    /// is due and why, `read` gives the chunk; each is called only when
    /// needed.
    pub fn on_chunk(
        &mut self,
        len: usize,
        end_of_stream: bool,
        cut: impl FnOnce() -> Option<Limit>,
        read: impl FnOnce() -> Vec<u8>,
    ) -> ChunkAction {
        if let Body::Events(c) = self {
            if c.ended() {
                return ChunkAction::Drop;
            }
        }
        if end_of_stream {
            return ChunkAction::Forward;
        }
        match self {
            Body::Other => ChunkAction::Forward,
            Body::Events(c) => c.on_chunk(cut(), read),
            Body::Unknown {
                started,
                looked,
                dialect,
            } => {
                let Some(limit) = cut() else {
                    *started |= len > 0;
                    return ChunkAction::Forward;
                };
                let chunk = read();
                let from_start = !*started;
                let events = match from_start {
                    // The body's first bytes.
                    true => looks_like_events(&chunk),
                    false => Some(shows_events(&chunk)),
                };
                match events {
                    Some(true) => {
                        let mut cutter = match from_start {
                            true => Cutter::new(*dialect),
                            false => Cutter::mid_stream_as(*dialect),
                        };
                        let action = cutter.on_chunk(Some(limit), || chunk);
                        *self = Body::Events(cutter);
                        action
                    }
                    Some(false) if from_start => {
                        *self = Body::Other;
                        ChunkAction::Forward
                    }
                    // Nothing to tell yet, or a chunk from inside the body
                    // with no framing in it: the next chunk may tell, up to
                    // a few (a body past its cut is not copied chunk after
                    // chunk for as long as it lasts).
                    _ => {
                        *started |= !chunk.is_empty();
                        *looked += u8::from(!chunk.is_empty());
                        if *looked >= UNTOLD_CHUNKS {
                            *self = Body::Other;
                        }
                        ChunkAction::Forward
                    }
                }
            }
        }
    }
}

/// How many chunks read from inside a body may show no SSE framing before
/// it is taken for something else (an event that long is then cut as
/// before, without the final event).
pub const UNTOLD_CHUNKS: u8 = 8;

/// Whether a chunk from inside a body shows SSE framing: it starts like an
/// event ([`looks_like_events`]), or a blank line in it is followed by one.
pub fn shows_events(chunk: &[u8]) -> bool {
    if looks_like_events(chunk) == Some(true) {
        return true;
    }
    (0..chunk.len()).any(|i| {
        let rest = &chunk[i..];
        let after = if rest.starts_with(b"\n\n") {
            &rest[2..]
        } else if rest.starts_with(b"\n\r\n") {
            &rest[3..]
        } else {
            return false;
        };
        looks_like_events(after) == Some(true)
    })
}

/// Whether a body starting with `head` is an event stream: after an
/// optional byte order mark and blank lines, a comment (`:`) or one of the
/// fields `data`, `event`, `id`, `retry` ended by `:` or a line end (the
/// framing of the WHATWG server-sent events format). A head cut short
/// inside a field name counts as one. `None` when there is nothing to tell
/// yet (no bytes, or only the mark and line ends).
pub fn looks_like_events(head: &[u8]) -> Option<bool> {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = head.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let line = &head[start..];
    if line[0] == b':' {
        return Some(true);
    }
    Some(
        [&b"data"[..], b"event", b"id", b"retry"]
            .iter()
            .any(|field| match line.strip_prefix(*field) {
                Some(rest) => matches!(rest.first(), None | Some(b':' | b'\r' | b'\n')),
                None => field.starts_with(line),
            }),
    )
}

/// Whether a stream's cut is due now, and why.
///
/// The clock is a host call, so it is read only near a possible cut:
/// `seen.read_unix_ms` is refreshed with every request the worker admits and
/// on every tick, so it trails the clock by at most `lag_ms`; while it is
/// further than that from the earliest cut this stream can have, no cut is
/// due and neither `now` nor `read` is called. Past that, `read` gives the
/// drain state at the time given (the worker's copy, checked against the
/// change counter: [`Seen::refresh`]).
pub fn due(
    now: impl FnOnce() -> u64,
    deadline_unix_ms: u64,
    seen: Seen,
    windows: Windows,
    margin_ms: u64,
    lag_ms: u64,
    read: impl FnOnce(u64) -> Drain,
) -> Option<Limit> {
    if seen.read_unix_ms.saturating_add(lag_ms)
        < earliest_cut(deadline_unix_ms, seen, windows, margin_ms)
    {
        return None;
    }
    let now_unix_ms = now();
    let (at, limit) = cutoff(deadline_unix_ms, read(now_unix_ms), windows, margin_ms);
    (now_unix_ms >= at).then_some(limit)
}

/// The earliest instant a stream's cut can come, from what `seen` tells:
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

    /// Feeds `chunk` with or without a cut.
    fn feed(c: &mut Cutter, chunk: &[u8], cut: Option<Limit>) -> ChunkAction {
        c.on_chunk(cut, || chunk.to_vec())
    }

    #[test]
    fn chunks_are_read_only_once_a_cut_is_due_and_not_after_the_end() {
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            b"data: 1\n\n".to_vec()
        };
        let mut c = Cutter::default();
        assert_eq!(c.on_chunk(None, read), ChunkAction::Forward);
        assert_eq!(reads.get(), 0);
        assert!(matches!(
            c.on_chunk(Some(Limit::Drain), read),
            ChunkAction::Replace(_)
        ));
        assert_eq!(reads.get(), 1);
        assert_eq!(c.on_chunk(Some(Limit::Drain), read), ChunkAction::Drop);
        assert_eq!(c.on_chunk(None, read), ChunkAction::Drop);
        assert_eq!(reads.get(), 1);
    }

    #[test]
    fn after_unread_chunks_only_boundaries_inside_read_bytes_count() {
        // "}\n" passed unread: the "\n" that completes the blank line in the
        // next chunk cannot be trusted, so the cut waits for a boundary it
        // has seen whole.
        let mut c = Cutter::default();
        assert_eq!(feed(&mut c, b"data: {}\n", None), ChunkAction::Forward);
        assert_eq!(
            feed(&mut c, b"\ndata: x", Some(Limit::Drain)),
            ChunkAction::Forward
        );
        let ChunkAction::Replace(out) = feed(&mut c, b"data: y\n\n", Some(Limit::Drain)) else {
            panic!("expected the cut")
        };
        assert!(out.starts_with(b"data: y\n\ndata: {\"error\""));
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
        assert_eq!(feed(&mut c, b"data: 1\n\n", None), ChunkAction::Forward);
        let event = final_event(Limit::Drain);
        // The whole chunk is complete events: it is kept, the event follows.
        let mut want = b"data: 2\n\n".to_vec();
        want.extend_from_slice(&event);
        assert_eq!(
            feed(&mut c, b"data: 2\n\n", Some(Limit::Drain)),
            ChunkAction::Replace(want)
        );
        assert!(c.ended());
        assert_eq!(feed(&mut c, b"data: [DONE]\n\n", None), ChunkAction::Drop);
    }

    #[test]
    fn a_torn_event_is_never_followed_by_the_final_event() {
        let mut c = Cutter::default();
        // The previous chunk ended mid-event: the tail of this chunk that
        // finishes it is kept; a new partial event after it is dropped.
        assert_eq!(feed(&mut c, b"data: {\"a\":", None), ChunkAction::Forward);
        let mut want = b"1}\n\n".to_vec();
        want.extend_from_slice(&final_event(Limit::Deadline));
        assert_eq!(
            feed(&mut c, b"1}\n\ndata: {\"b\"", Some(Limit::Deadline)),
            ChunkAction::Replace(want)
        );
    }

    #[test]
    fn without_a_boundary_the_cut_waits_for_the_next_chunk() {
        let mut c = Cutter::default();
        assert_eq!(feed(&mut c, b"data: {\"a\":", None), ChunkAction::Forward);
        assert_eq!(
            feed(&mut c, b"\"still going\"", Some(Limit::Drain)),
            ChunkAction::Forward
        );
        assert!(!c.ended());
        // Chunks read while the cut waits: a blank line split across them
        // ("\n" then "\n") is found.
        assert_eq!(
            feed(&mut c, b"}\n", Some(Limit::Drain)),
            ChunkAction::Forward
        );
        let ChunkAction::Replace(out) = feed(&mut c, b"\ndata: x", Some(Limit::Drain)) else {
            panic!("expected the cut")
        };
        assert!(out.starts_with(b"\ndata: {\"error\""));
    }

    #[test]
    fn crlf_framing_counts_as_a_boundary() {
        let mut c = Cutter::default();
        assert_eq!(
            feed(&mut c, b"data: 1\r\n\r\ndata: 2", None),
            ChunkAction::Forward
        );
        let ChunkAction::Replace(out) = feed(&mut c, b"\r\n\r\n", Some(Limit::Drain)) else {
            panic!("expected the cut")
        };
        assert!(out.starts_with(b"\r\n\r\ndata: {"));
    }

    #[test]
    fn cut_at_the_very_start_sends_only_the_event() {
        let mut c = Cutter::default();
        assert_eq!(
            feed(&mut c, b"data: 1\n", Some(Limit::Drain)),
            ChunkAction::Replace(final_event(Limit::Drain))
        );
    }

    /// `due` past the clock gate (no lag bound), counting the state reads.
    fn due_counting(now: u64, deadline: u64, seen: Seen, current: Drain) -> (Option<Limit>, u32) {
        let mut reads = 0;
        let limit = due(
            || now,
            deadline,
            seen,
            W,
            1_000,
            u64::MAX,
            |_| {
                reads += 1;
                current
            },
        );
        (limit, reads)
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

    /// Runs `chunks` (bytes, end of stream, cut due) through the [`Body`] of
    /// a forwarded response; returns the actions and how often each lookup
    /// ran (cut, chunk).
    fn run_body(chunks: &[(&[u8], bool, bool)]) -> (Vec<ChunkAction>, [u32; 2]) {
        let mut body = Body::forwarded();
        let calls = std::cell::Cell::new([0; 2]);
        let bump = |i: usize| {
            let mut c = calls.get();
            c[i] += 1;
            calls.set(c);
        };
        let actions = chunks
            .iter()
            .map(|&(bytes, eos, due)| {
                body.on_chunk(
                    bytes.len(),
                    eos,
                    || {
                        bump(0);
                        due.then_some(Limit::Drain)
                    },
                    || {
                        bump(1);
                        bytes.to_vec()
                    },
                )
            })
            .collect();
        (actions, calls.get())
    }

    fn kept_then_final(kept: &[u8]) -> ChunkAction {
        let mut out = kept.to_vec();
        out.extend_from_slice(&final_event(Limit::Drain));
        ChunkAction::Replace(out)
    }

    #[test]
    fn a_body_in_one_piece_is_never_looked_at() {
        for body in [&b"{\"id\":1}"[..], b"data: [DONE]\n\n"] {
            let (actions, calls) = run_body(&[(body, true, true)]);
            assert_eq!(actions, [ChunkAction::Forward]);
            assert_eq!(calls, [0, 0]);
        }
    }

    #[test]
    fn no_chunk_is_read_until_a_cut_is_due() {
        let (actions, calls) = run_body(&[
            (b"data: 1\n\n", false, false),
            (b"data: 2\n\n", false, false),
            (b"data: [DONE]\n\n", true, false),
        ]);
        assert_eq!(actions, vec![ChunkAction::Forward; 3]);
        assert_eq!(calls, [2, 0]);
    }

    #[test]
    fn a_body_whose_first_bytes_are_not_events_passes_untouched() {
        let (actions, calls) = run_body(&[
            (b"{\"a\":", false, true),
            (b"\n\ndata: 1\n\n", false, true),
            (b"1}", true, true),
        ]);
        assert_eq!(actions, vec![ChunkAction::Forward; 3]);
        // Told once, from its first chunk.
        assert_eq!(calls, [1, 1]);
    }

    #[test]
    fn chunks_from_inside_a_body_are_told_by_a_framing_they_show() {
        let cases: [(&[u8], bool); 9] = [
            (b"data: 1\n\n", true),
            (b"\ndata: 2\n\n", true),
            (b"ta: 1\n\ndata: 2\n\n", true),
            (b"x\n\r\n: ping\n\n", true),
            (b"ng one\n\n", false),
            (b"}\n\n", false),
            (b"{\"a\":1}", false),
            (b"a\n\nb", false),
            (b"", false),
        ];
        for (chunk, want) in cases {
            assert_eq!(shows_events(chunk), want, "{chunk:?}");
        }
    }

    #[test]
    fn event_streams_are_told_by_their_framing() {
        let yes = Some(true);
        let no = Some(false);
        let cases: [(&[u8], Option<bool>); 20] = [
            (b"data: {\"id\":1}", yes),
            (b"data:x", yes),
            (b"data\n\n", yes),
            (b"event: message\n", yes),
            (b"id: 7\r\n", yes),
            (b"retry: 100\n", yes),
            (b": keep-alive\n\n", yes),
            (b"\xEF\xBB\xBFdata: 1", yes),
            (b"\r\n\ndata: 1", yes),
            // Cut short inside a field name.
            (b"da", yes),
            (b"{\"id\":1}", no),
            (b"[1,2]", no),
            (b"  {}", no),
            (b"database", no),
            (b"identity: x", no),
            (b"ID3\x04", no),
            (b"hello", no),
            // Nothing to tell yet.
            (b"", None),
            (b"\n\r\n", None),
            (b"\xEF\xBB\xBF", None),
        ];
        for (head, want) in cases {
            assert_eq!(looks_like_events(head), want, "{head:?}");
        }
    }

    #[test]
    fn a_first_chunk_with_nothing_to_tell_leaves_it_to_the_next() {
        let (actions, calls) = run_body(&[
            (b"", false, false),
            (b"data: 1\n\n", false, true),
            (b"data: 2\n\n", false, true),
        ]);
        assert_eq!(
            actions,
            [
                ChunkAction::Forward,
                kept_then_final(b"data: 1\n\n"),
                ChunkAction::Drop
            ]
        );
        assert_eq!(calls, [2, 1]);
    }

    #[test]
    fn an_event_stream_is_ended_after_a_boundary_it_has_read() {
        let (actions, calls) = run_body(&[
            (b"data: 1\n", false, false),
            // The blank line its first byte completes (after an unread
            // "\n") is not seen; the one at its end is.
            (b"\ndata: 2\n\n", false, true),
            (b"data: 3\n\n", false, true),
            (b"data: [DONE]\n\n", true, true),
        ]);
        assert_eq!(
            actions,
            [
                ChunkAction::Forward,
                kept_then_final(b"\ndata: 2\n\n"),
                ChunkAction::Drop,
                ChunkAction::Drop,
            ]
        );
        assert_eq!(calls, [2, 1]);
    }

    #[test]
    fn a_chunk_inside_an_event_waits_for_one_that_shows_the_framing() {
        let (actions, calls) = run_body(&[
            (b"data: 1\n\ndata: lo", false, false),
            // Due, but no framing to tell by: passes, read.
            (b"ng one\n\n", false, true),
            (b"data: 3\n", false, true),
            (b"\n", false, true),
            (b"data: 4\n\n", false, true),
        ]);
        assert_eq!(
            actions,
            [
                ChunkAction::Forward,
                ChunkAction::Forward,
                // An event stream, but no boundary read yet.
                ChunkAction::Forward,
                kept_then_final(b"\n"),
                ChunkAction::Drop,
            ]
        );
        assert_eq!(calls, [4, 3]);
    }

    #[test]
    fn a_body_that_shows_no_framing_is_given_up_after_a_few_chunks() {
        let mut chunks: Vec<(&[u8], bool, bool)> = vec![(b"{\"a\":[", false, false)];
        chunks.extend(std::iter::repeat_n(
            (&b"1,2,3,"[..], false, true),
            usize::from(UNTOLD_CHUNKS) + 3,
        ));
        let (actions, calls) = run_body(&chunks);
        assert!(actions.iter().all(|a| *a == ChunkAction::Forward));
        let n = u32::from(UNTOLD_CHUNKS);
        assert_eq!(calls, [n + 1, n], "read {n} chunks, then no more");
    }

    #[test]
    fn a_cut_due_at_the_first_chunk_uses_the_stream_start() {
        let (actions, _) = run_body(&[(b"data: 1", false, true)]);
        assert_eq!(actions, [ChunkAction::Replace(final_event(Limit::Drain))]);
    }

    #[test]
    fn the_clock_is_not_read_while_the_last_reading_is_far_from_any_cut() {
        let seen = Seen {
            drain: Drain::SERVING,
            read_unix_ms: 10_000,
            changes: None,
        };
        let calls = std::cell::Cell::new(0);
        let calls = &calls;
        let clock = |now: u64| {
            move || {
                calls.set(calls.get() + 1);
                now
            }
        };
        // Deadline 60 s on: its cut (59 s) is far beyond the reading + 2 s.
        assert_eq!(
            due(clock(10_500), 70_000, seen, W, 1_000, 2_000, |_| {
                Drain::SERVING
            }),
            None
        );
        assert_eq!(calls.get(), 0);
        // Within the lag of the deadline's cut: the clock decides.
        let near = Seen {
            read_unix_ms: 67_500,
            ..seen
        };
        assert_eq!(
            due(clock(68_500), 70_000, near, W, 1_000, 2_000, |_| {
                Drain::SERVING
            }),
            None
        );
        assert_eq!(
            due(clock(69_000), 70_000, near, W, 1_000, 2_000, |_| {
                Drain::SERVING
            }),
            Some(Limit::Deadline)
        );
        assert_eq!(calls.get(), 2);
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
                            due(|| now, deadline, seen, W, 1_000, lag, |_| drain),
                            exact,
                            "deadline {deadline}, drain {start:?}, now {now}, reading {read_at}"
                        );
                    }
                }
            }
        }
    }
}
