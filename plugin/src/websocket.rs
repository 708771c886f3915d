//! Ending a WebSocket session with a close frame instead of cutting it.
//!
//! After Envoy upgrades a connection, the bytes from the upstream reach the
//! filter as response body chunks, split anywhere. [`Framing`] follows the
//! frames (RFC 6455, section 5.2) across chunks, so a close frame can be
//! inserted where one frame ends and the next begins; a control frame may
//! go between the fragments of a message (section 5.4), so every frame
//! boundary will do. [`Closer`] sends the client a close frame with code
//! 1012 (service restart) at the first boundary once the session's cut is
//! due, and drops everything after it.

use crate::sse::ChunkAction;

/// The close frame's code: 1012, service restart (see
/// [`crate::dialect::WS_CLOSE_SERVICE_RESTART`]).
pub use crate::dialect::WS_CLOSE_SERVICE_RESTART as CLOSE_CODE;

/// The close frame's reason (at most 123 bytes).
pub const CLOSE_REASON: &str = "server restarting; reconnect";

/// A server's close frame (unmasked): FIN and opcode 8, the code, the
/// reason.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// A byte stream that is not WebSocket framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A 64-bit payload length with its most significant bit set.
    LengthTooLarge,
    /// A control frame (opcode 8 and up) longer than 125 bytes or
    /// fragmented.
    BadControlFrame,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameError::LengthTooLarge => "WebSocket frame length over 2^63",
            FrameError::BadControlFrame => "WebSocket control frame fragmented or over 125 bytes",
        })
    }
}

/// Where a byte stream is among WebSocket frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Inside a frame header: the bytes of it seen so far (at most 14).
    Header(Vec<u8>),
    /// Inside a frame's payload: this many bytes left.
    Payload(u64),
    /// Not WebSocket framing: no boundary is known any more.
    Lost(FrameError),
}

impl Default for Framing {
    /// A stream's start: the first frame's header comes next.
    fn default() -> Self {
        Framing::Header(Vec::new())
    }
}

/// A frame header's length, if `head` (its first bytes) tells it: 2, plus
/// 2 or 8 for an extended length, plus 4 for a mask.
fn header_len(head: &[u8]) -> Option<usize> {
    let second = *head.get(1)?;
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    Some(2 + extended + mask)
}

/// A whole header's payload length.
fn payload_len(header: &[u8]) -> Result<u64, FrameError> {
    let (first, second) = (header[0], header[1]);
    let len = match second & 0x7F {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Err(FrameError::LengthTooLarge);
            }
            n
        }
        n => u64::from(n),
    };
    let control = first & 0x08 != 0;
    let fin = first & 0x80 != 0;
    if control && (len > 125 || !fin) {
        return Err(FrameError::BadControlFrame);
    }
    Ok(len)
}

impl Framing {
    /// Whether the stream so far ends exactly where a frame ends.
    pub fn at_boundary(&self) -> bool {
        matches!(self, Framing::Header(h) if h.is_empty())
    }

    /// Follows `chunk`; returns the offsets in it where a frame starts
    /// (the stream before them ends a frame), in order: `0` if the chunk
    /// starts at a boundary, `chunk.len()` if it ends at one.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = 0usize;
        loop {
            match self {
                Framing::Lost(_) => return out,
                Framing::Header(h) if h.is_empty() => {
                    out.push(at);
                    if at == chunk.len() {
                        return out;
                    }
                    h.push(chunk[at]);
                    at += 1;
                }
                Framing::Header(h) => {
                    let need = header_len(h).unwrap_or(2);
                    if h.len() < need {
                        let take = (need - h.len()).min(chunk.len() - at);
                        h.extend_from_slice(&chunk[at..at + take]);
                        at += take;
                        // The length may have grown with the second byte.
                        if header_len(h).is_some_and(|n| h.len() < n) || h.len() < 2 {
                            if at == chunk.len() {
                                return out;
                            }
                            continue;
                        }
                    }
                    *self = match payload_len(h) {
                        Ok(0) => Framing::Header(Vec::new()),
                        Ok(n) => Framing::Payload(n),
                        Err(e) => Framing::Lost(e),
                    };
                }
                Framing::Payload(left) => {
                    let avail = (chunk.len() - at) as u64;
                    if avail < *left {
                        *left -= avail;
                        return out;
                    }
                    at += *left as usize;
                    *self = Framing::Header(Vec::new());
                }
            }
        }
    }
}

/// Follows a WebSocket session's upstream-to-client bytes and ends it once
/// with a close frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Closer {
    framing: Framing,
    closed: bool,
    upstream_closed: bool,
}

impl Closer {
    /// Whether the close frame has gone.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Whether the upstream's own close frame has gone by: the session
    /// ended with the closing handshake, whatever happens to the
    /// connection afterwards.
    pub fn upstream_closed(&self) -> bool {
        self.upstream_closed
    }

    /// Decides for the next chunk; `cut` says whether the session must end.
    /// Every chunk is followed (the framing cannot be picked up mid-stream).
    /// Once the session must end, the close frame goes at the chunk's first frame
    /// boundary and the rest of the chunk is dropped; with no boundary in
    /// it, the chunk passes and the next one is tried.
    pub fn on_chunk(&mut self, cut: bool, chunk: &[u8]) -> ChunkAction {
        if self.closed {
            return ChunkAction::Drop;
        }
        let boundaries = self.framing.feed(chunk);
        // A frame starts at each boundary inside the chunk; opcode 8 is a
        // close frame.
        self.upstream_closed |= boundaries
            .iter()
            .any(|&at| chunk.get(at).is_some_and(|b| b & 0x0f == 8));
        if !cut {
            return ChunkAction::Forward;
        }
        let Some(&at) = boundaries.first() else {
            return ChunkAction::Forward;
        };
        self.closed = true;
        let mut out = chunk[..at].to_vec();
        out.extend_from_slice(&close_frame(CLOSE_CODE, CLOSE_REASON));
        ChunkAction::Replace(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame: FIN, `opcode`, `payload`, masked with `mask` if given.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n <= 0xFFFF => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                f.extend_from_slice(&key);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => f.extend_from_slice(payload),
        }
        f
    }

    /// Feeds `stream` in pieces split at `cuts`; the boundaries found, as
    /// offsets in the whole stream.
    fn boundaries(stream: &[u8], cuts: &[usize]) -> Vec<usize> {
        let mut framing = Framing::default();
        let mut found = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([&stream.len()]) {
            for b in framing.feed(&stream[start..end]) {
                found.push(start + b);
            }
            start = end;
        }
        found.dedup();
        found
    }

    #[test]
    fn boundaries_of_whole_frames_in_one_chunk() {
        let a = frame(true, 1, b"hello", None);
        let b = frame(true, 2, &[7; 300], None);
        let c = frame(true, 9, b"", None);
        let stream = [a.clone(), b.clone(), c.clone()].concat();
        let want = vec![0, a.len(), a.len() + b.len(), stream.len()];
        assert_eq!(boundaries(&stream, &[]), want);
    }

    #[test]
    fn boundaries_survive_every_split() {
        let stream = [
            frame(true, 1, b"hi", None),
            frame(false, 1, &[1; 200], Some([1, 2, 3, 4])),
            frame(true, 10, b"pong", Some([9, 9, 9, 9])),
            frame(true, 0, &[2; 70_000], None),
            frame(true, 8, &[3, 232], None),
        ]
        .concat();
        let whole = boundaries(&stream, &[]);
        assert_eq!(whole.len(), 6);
        // Every split into two pieces, and byte by byte.
        for cut in 0..=stream.len() {
            if cut % 97 == 0 || cut < 300 {
                assert_eq!(boundaries(&stream, &[cut]), whole, "split at {cut}");
            }
        }
        let bytewise: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(boundaries(&stream, &bytewise), whole);
    }

    #[test]
    fn extended_lengths_are_read() {
        let f16 = frame(true, 2, &[0; 126], None);
        assert_eq!(&f16[1..4], &[126, 0, 126]);
        let f64 = frame(true, 2, &[0; 65_536], None);
        assert_eq!(f64[1], 127);
        let stream = [f16.clone(), f64.clone()].concat();
        assert_eq!(
            boundaries(&stream, &[3, 5, 200]),
            [0, f16.len(), stream.len()]
        );
    }

    #[test]
    fn bad_framing_loses_the_boundaries_without_a_panic() {
        let mut f = Framing::default();
        assert_eq!(f.feed(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1]), [0]);
        assert_eq!(f, Framing::Lost(FrameError::LengthTooLarge));
        assert_eq!(f.feed(&[0x81, 0]), Vec::<usize>::new());
        let mut f = Framing::default();
        f.feed(&[0x89, 126, 0, 200]);
        assert_eq!(f, Framing::Lost(FrameError::BadControlFrame));
        let mut f = Framing::default();
        f.feed(&[0x09, 0]);
        assert_eq!(f, Framing::Lost(FrameError::BadControlFrame));
    }

    #[test]
    fn close_frame_is_1012_with_the_reason() {
        let c = close_frame(1012, "bye");
        assert_eq!(c, [0x88, 5, 0x03, 0xF4, b'b', b'y', b'e']);
        assert_eq!(boundaries(&c, &[]), [0, c.len()]);
        assert_eq!(close_frame(1012, &"x".repeat(200)).len(), 2 + 125);
    }

    #[test]
    fn the_close_goes_at_the_first_boundary_once_due_and_nothing_after() {
        let a = frame(true, 1, b"one", None);
        let b = frame(true, 1, b"two", None);
        let mut c = Closer::default();
        assert_eq!(c.on_chunk(false, &a), ChunkAction::Forward);
        // Due mid-frame: the rest of the frame passes first.
        let stream = [b.clone(), a.clone()].concat();
        assert_eq!(c.on_chunk(false, &stream[..2]), ChunkAction::Forward);
        let ChunkAction::Replace(out) = c.on_chunk(true, &stream[2..]) else {
            panic!("expected the close")
        };
        let close = close_frame(CLOSE_CODE, CLOSE_REASON);
        assert_eq!(out, [&b[2..], &close[..]].concat());
        assert!(c.closed());
        assert_eq!(c.on_chunk(false, &a), ChunkAction::Drop);
        // Due at a chunk that starts at a boundary: only the close.
        let mut c = Closer::default();
        assert_eq!(c.on_chunk(true, &a), ChunkAction::Replace(close));
    }

    #[test]
    fn the_upstreams_close_frame_is_seen_wherever_it_starts() {
        let text = frame(true, 1, &[b'x'; 130], None);
        let close = frame(true, 8, &[3, 232], None);
        let stream = [&text[..], &close[..]].concat();
        for split in 0..stream.len() {
            let mut c = Closer::default();
            c.on_chunk(false, &stream[..split]);
            c.on_chunk(false, &stream[split..]);
            assert!(c.upstream_closed(), "split at {split}");
        }
        // A payload byte that looks like a close opcode is not one.
        let mut c = Closer::default();
        c.on_chunk(false, &frame(true, 2, &[0x88; 10], None));
        assert!(!c.upstream_closed());
    }

    #[test]
    fn a_frame_that_spans_chunks_delays_the_close_to_its_end() {
        let big = frame(true, 2, &[5; 1000], None);
        let mut c = Closer::default();
        assert_eq!(c.on_chunk(false, &big[..10]), ChunkAction::Forward);
        assert_eq!(c.on_chunk(true, &big[10..500]), ChunkAction::Forward);
        let ChunkAction::Replace(out) = c.on_chunk(true, &big[500..]) else {
            panic!("expected the close")
        };
        assert!(out.starts_with(&big[500..]));
        assert_eq!(out.len(), big.len() - 500 + 2 + 2 + CLOSE_REASON.len());
    }
}
