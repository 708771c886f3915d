//! Request headers as the decisions read them, and the host's wire form of
//! a header map, read in place.
//!
//! `proxy_get_header_map_pairs` hands the whole map over in one buffer: the
//! number of pairs (u32, little-endian), each pair's name and value lengths
//! (two u32), then each name and each value followed by a NUL. The SDK
//! decodes that into a `Vec` of owned strings, two allocations per header,
//! for a filter that looks at four or five of them; [`Wire`] checks the
//! layout once, keeps the values of the names the traffic decision asks
//! for ([`KNOWN`]) on the way, and looks any other name up in the buffer
//! itself.

/// A request's headers, looked up by lowercase name (the host gives names
/// lowercase). With a repeated name, the first value.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&[u8]>;
}

impl Headers for [(String, Vec<u8>)] {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

impl Headers for Vec<(String, Vec<u8>)> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        Headers::get(self.as_slice(), name)
    }
}

/// A header map in the host's wire form, its layout checked.
#[derive(Debug, Clone, Copy)]
pub struct Wire<'a> {
    /// The pairs' lengths: name, value, name, value, ... (u32 each).
    lens: &'a [u8],
    /// Names and values, each followed by a NUL.
    data: &'a [u8],
    /// The values of the [`KNOWN`] names (the first of a repeated one),
    /// picked out while the layout is checked: the traffic decision's dozen
    /// lookups then cost no pass over the map each.
    known: [Option<&'a [u8]>; KNOWN.len()],
}

/// Why a buffer is not a header map in the wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than its count, its lengths or its strings say.
    Truncated,
    /// A name or value not followed by its NUL.
    MissingNul,
    /// Bytes after the last pair.
    TrailingBytes,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Malformed::Truncated => "shorter than its lengths say",
            Malformed::MissingNul => "a string without its NUL terminator",
            Malformed::TrailingBytes => "bytes after the last pair",
        })
    }
}

/// The u32 at `at` (callers have checked the length; 0 past the end).
fn u32_at(bytes: &[u8], at: usize) -> usize {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes) as usize
}

impl<'a> Wire<'a> {
    /// The map with no headers.
    pub const EMPTY: Wire<'static> = Wire {
        lens: &[],
        data: &[],
        known: [None; KNOWN.len()],
    };

    /// Checks `bytes` (an empty buffer is the empty map, as the host hands
    /// it over).
    pub fn parse(bytes: &'a [u8]) -> Result<Wire<'a>, Malformed> {
        if bytes.is_empty() {
            return Ok(Wire::EMPTY);
        }
        if bytes.len() < 4 {
            return Err(Malformed::Truncated);
        }
        let count = u32_at(bytes, 0);
        let lens_end = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(4))
            .filter(|&end| end <= bytes.len())
            .ok_or(Malformed::Truncated)?;
        let mut wire = Wire {
            lens: &bytes[4..lens_end],
            data: &bytes[lens_end..],
            known: [None; KNOWN.len()],
        };
        let mut at = 0usize;
        let mut slot = None;
        for i in 0..count * 2 {
            let len = u32_at(wire.lens, i * 4);
            let nul = at.checked_add(len).ok_or(Malformed::Truncated)?;
            match wire.data.get(nul) {
                None => return Err(Malformed::Truncated),
                Some(0) => {}
                Some(_) => return Err(Malformed::MissingNul),
            }
            let text = wire.data.get(at..nul).unwrap_or_default();
            if i % 2 == 0 {
                slot = known_slot(text);
            } else if let Some(value) = slot.and_then(|k| wire.known.get_mut(k)) {
                value.get_or_insert(text);
            }
            at = nul + 1;
        }
        if at != wire.data.len() {
            return Err(Malformed::TrailingBytes);
        }
        Ok(wire)
    }

    /// The pairs, in the host's order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let data = self.data;
        let mut at = 0usize;
        self.lens.chunks_exact(8).map(move |lens| {
            let name_len = u32_at(lens, 0);
            let value_len = u32_at(lens, 4);
            // The layout was checked: the ranges are in the buffer.
            let name = data.get(at..at + name_len).unwrap_or_default();
            let value_at = at + name_len + 1;
            let value = data.get(value_at..value_at + value_len).unwrap_or_default();
            at = value_at + value_len + 1;
            (name, value)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }
}

impl Headers for Wire<'_> {
    fn get(&self, name: &str) -> Option<&[u8]> {
        if let Some(known) = known_slot(name.as_bytes()).and_then(|k| self.known.get(k)) {
            return *known;
        }
        // The pairs walked as in `iter` (a plain loop is the smaller code).
        let mut at = 0usize;
        for lens in self.lens.chunks_exact(8) {
            let (name_len, value_len) = (u32_at(lens, 0), u32_at(lens, 4));
            let value_at = at + name_len + 1;
            if self.data.get(at..at + name_len) == Some(name.as_bytes()) {
                return self.data.get(value_at..value_at + value_len);
            }
            at = value_at + value_len + 1;
        }
        None
    }
}

/// The request headers the traffic role's decision and its header writes
/// look up: [`Wire`] keeps their values as it checks the layout.
pub const KNOWN: [&str; 10] = [
    ":method",
    ":path",
    "upgrade",
    "content-type",
    "anthropic-version",
    "x-request-deadline-ms",
    "x-request-timeout-ms",
    "grpc-timeout",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-upstream-rq-timeout-ms",
];

/// The slot of a name in [`KNOWN`].
fn known_slot(name: &[u8]) -> Option<usize> {
    KNOWN.iter().position(|k| k.as_bytes() == name)
}

/// `pairs` in the wire form (what the host hands over).
pub fn to_wire<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs() -> Vec<(String, Vec<u8>)> {
        vec![
            (":method".into(), b"POST".to_vec()),
            (":path".into(), b"/v1/chat/completions".to_vec()),
            ("x-empty".into(), Vec::new()),
            ("x-dup".into(), b"first".to_vec()),
            ("x-dup".into(), b"second".to_vec()),
            ("x-bin".into(), vec![0xff, b'a', 0x80]),
        ]
    }

    #[test]
    fn wire_form_gives_the_pairs_back_in_order() {
        let p = pairs();
        let bytes = to_wire(&p);
        let wire = Wire::parse(&bytes).unwrap();
        let back: Vec<(&[u8], &[u8])> = wire.iter().collect();
        let want: Vec<(&[u8], &[u8])> = p
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_slice()))
            .collect();
        assert_eq!(back, want);
    }

    #[test]
    fn lookups_agree_with_the_decoded_pairs() {
        let p = pairs();
        let bytes = to_wire(&p);
        let wire = Wire::parse(&bytes).unwrap();
        for name in [
            ":method", ":path", "x-empty", "x-dup", "x-bin", "absent", "",
        ] {
            assert_eq!(wire.get(name), Headers::get(&p, name), "{name}");
        }
        assert_eq!(wire.get("x-dup"), Some(&b"first"[..]));
        assert_eq!(wire.get("x-empty"), Some(&b""[..]));
    }

    #[test]
    fn known_names_read_in_the_layout_check_agree_with_the_pairs() {
        let mut p = pairs();
        p.extend([
            ("content-type".to_string(), b"application/json".to_vec()),
            ("grpc-timeout".to_string(), b"1S".to_vec()),
            ("x-request-timeout-ms".to_string(), b"5".to_vec()),
            ("x-request-timeout-ms".to_string(), b"6".to_vec()),
            ("x-envoy-upstream-rq-timeout-ms".to_string(), b"7".to_vec()),
            ("x-envoy-expected-rq-timeout-ms".to_string(), b"8".to_vec()),
            ("x-request-deadline-ms".to_string(), b"9".to_vec()),
            ("anthropic-version".to_string(), b"2023-06-01".to_vec()),
            ("upgrade".to_string(), b"websocket".to_vec()),
            (":methoe".to_string(), b"x".to_vec()),
        ]);
        let bytes = to_wire(&p);
        let known = Wire::parse(&bytes).unwrap();
        let others = [
            ":path", ":methoe", "x-dup", "x-bin", "x-empty", "absent", "",
        ];
        for name in KNOWN.iter().chain(others.iter()) {
            assert_eq!(known.get(name), Headers::get(&p, name), "{name}");
        }
        assert_eq!(known.get("x-request-timeout-ms"), Some(&b"5"[..]));
        let empty = Wire::EMPTY;
        for name in KNOWN.iter().chain(others.iter()) {
            assert_eq!(empty.get(name), None, "{name}");
        }
    }

    #[test]
    fn every_known_name_has_its_own_slot() {
        for (i, name) in KNOWN.iter().enumerate() {
            assert_eq!(known_slot(name.as_bytes()), Some(i), "{name}");
        }
    }

    #[test]
    fn empty_buffer_and_zero_count_are_the_empty_map() {
        for bytes in [Vec::new(), 0u32.to_le_bytes().to_vec()] {
            let wire = Wire::parse(&bytes).unwrap();
            assert!(wire.is_empty());
            assert_eq!(wire.get(":path"), None);
        }
    }

    #[test]
    fn a_short_buffer_is_truncated() {
        let bytes = to_wire(&pairs());
        for cut in [1, 3, 4, 10, 4 + 6 * 8, bytes.len() - 1] {
            assert_eq!(
                Wire::parse(&bytes[..cut]).unwrap_err(),
                Malformed::Truncated,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_count_past_the_buffer_is_truncated_without_overflow() {
        let mut bytes = to_wire(&pairs());
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Wire::parse(&bytes).unwrap_err(), Malformed::Truncated);
        let mut bytes = to_wire(&[("a", "b")]);
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Wire::parse(&bytes).unwrap_err(), Malformed::Truncated);
    }

    #[test]
    fn a_missing_nul_or_trailing_bytes_are_refused() {
        let mut bytes = to_wire(&[("a", "bc")]);
        let name_nul = 4 + 8 + 1;
        bytes[name_nul] = b'x';
        assert_eq!(Wire::parse(&bytes).unwrap_err(), Malformed::MissingNul);
        let mut bytes = to_wire(&[("a", "bc")]);
        bytes.push(0);
        assert_eq!(Wire::parse(&bytes).unwrap_err(), Malformed::TrailingBytes);
    }
}
