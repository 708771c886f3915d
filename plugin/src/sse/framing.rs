//! Recognising an event stream by its framing (the WHATWG server-sent
//! events format), from a body's first bytes or from a chunk inside it.

/// Whether a chunk from inside a body shows SSE framing: it starts like an
/// event ([`looks_like_events`]), or a blank line in it is followed by one.
pub fn shows_events(chunk: &[u8]) -> bool {
    if looks_like_events(chunk) == Some(true) {
        return true;
    }
    (0..chunk.len()).filter_map(|i| chunk.get(i..)).any(|rest| {
        let after = rest
            .strip_prefix(b"\n\n")
            .or_else(|| rest.strip_prefix(b"\n\r\n"));
        after.is_some_and(|after| looks_like_events(after) == Some(true))
    })
}

/// Whether a body starting with `head` is an event stream: after an
/// optional byte order mark and blank lines, a comment (`:`) or one of the
/// fields `data`, `event`, `id`, `retry` ended by `:` or a line end (the
/// framing of the WHATWG server-sent events format). A head cut short
/// inside a field name counts as one. `None` when the bytes are too few to
/// classify (no bytes, or only the mark and line ends).
pub fn looks_like_events(head: &[u8]) -> Option<bool> {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = head.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let line = head.get(start..)?;
    if line.starts_with(b":") {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_from_inside_a_body_are_classified_by_the_framing_they_show() {
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
    fn event_streams_are_recognised_by_their_framing() {
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
            // Too few bytes to classify.
            (b"", None),
            (b"\n\r\n", None),
            (b"\xEF\xBB\xBF", None),
        ];
        for (head, want) in cases {
            assert_eq!(looks_like_events(head), want, "{head:?}");
        }
    }
}
