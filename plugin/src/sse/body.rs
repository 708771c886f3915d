//! A forwarded response's body, chunk by chunk: classified as an event
//! stream (and handed to a [`Cutter`]) or not, only once it must end.

use super::framing::{looks_like_events, shows_events};
use super::{ChunkAction, Cutter, Limit};
use crate::dialect::Dialect;

/// A forwarded response's body, chunk by chunk.
///
/// Each look at a chunk is a host call (and the host calling back into the
/// VM for memory), so a chunk is looked at only once the stream must end
/// anyway: a body that arrives in one piece never is (its only chunk
/// completes it, there is nothing to end early), and until its cut neither
/// is any chunk of a longer body. The body is classified as an event stream
/// or not then, from the chunk read ([`shows_events`]), rather than from its
/// `content-type`: reading a response header would cost every response a
/// callback and a host call.
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
    /// A forwarded response not classified yet; `started` once a chunk with
    /// bytes passed (the next chunk may then start inside an event);
    /// `looked`: chunks read that showed no framing.
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

    /// Decides for the next chunk of `len` bytes. `cut` says whether the
    /// stream must end now and why, `read` gives the chunk; each is called
    /// only when needed.
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
                    // Too few bytes to classify, or a chunk from inside the
                    // body with no framing in it: the next chunk may show
                    // it, up to a few (a body past its cut is not copied
                    // chunk after chunk for as long as it lasts).
                    _ => {
                        *started |= !chunk.is_empty();
                        *looked += u8::from(!chunk.is_empty());
                        if *looked >= UNCLASSIFIED_CHUNKS {
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
pub const UNCLASSIFIED_CHUNKS: u8 = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::final_event;

    /// Runs `chunks` (bytes, end of stream, must end now) through the
    /// [`Body`] of a forwarded response; returns the actions and how often
    /// each lookup ran (cut, chunk).
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
    fn no_chunk_is_read_until_the_stream_must_end() {
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
    fn a_first_chunk_too_short_to_classify_leaves_it_to_the_next() {
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
            // Must end, but shows no framing: passes, read.
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
            usize::from(UNCLASSIFIED_CHUNKS) + 3,
        ));
        let (actions, calls) = run_body(&chunks);
        assert!(actions.iter().all(|a| *a == ChunkAction::Forward));
        let n = u32::from(UNCLASSIFIED_CHUNKS);
        assert_eq!(calls, [n + 1, n], "read {n} chunks, then no more");
    }

    #[test]
    fn a_cut_at_the_first_chunk_uses_the_stream_start() {
        let (actions, _) = run_body(&[(b"data: 1", false, true)]);
        assert_eq!(actions, [ChunkAction::Replace(final_event(Limit::Drain))]);
    }
}
