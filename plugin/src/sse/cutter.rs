//! The cutter: follows an event stream's framing and ends it once, with
//! the final event at an event boundary.

use super::ChunkAction;
use crate::dialect::{self, Dialect};
use crate::sse::Limit;

/// The bytes the cutter keeps of what it has read: enough to see a blank
/// line (`\n\n` or `\n\r\n`) that spans two chunks.
const TAIL: usize = 3;

/// Follows an SSE stream's framing and ends it once.
///
/// Until the stream must end the chunks pass unread (copying each out of
/// the proxy would cost every stream a host call per chunk): the framing
/// before the cut is then unknown, so the cut goes after the last blank
/// line *inside* the chunks read from then on, never after bytes it has not
/// seen.
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
    /// needed (the stream must end and has not ended yet). If no event
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
            let mut out = chunk;
            out.truncate(at);
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
            window
                .get(..offset + p)
                .is_some_and(|w| w.ends_with(b"\n\n") || w.ends_with(b"\n\r\n"))
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
    use crate::sse::final_event;

    /// Feeds `chunk` with or without a cut.
    fn feed(c: &mut Cutter, chunk: &[u8], cut: Option<Limit>) -> ChunkAction {
        c.on_chunk(cut, || chunk.to_vec())
    }

    #[test]
    fn chunks_are_read_only_once_the_stream_must_end_and_not_after_the_end() {
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
}
