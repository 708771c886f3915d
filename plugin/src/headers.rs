//! Request headers as the decisions read them, and the host's wire form of
//! a header map, read in place.
//!
//! `proxy_get_header_map_pairs` hands the whole map over in one buffer: the
//! number of pairs (u32, little-endian), each pair's name and value lengths
//! (two u32), then each name and each value followed by a NUL. The SDK
//! decodes that into a `Vec` of owned strings, two allocations per header,
//! for a filter that looks at four or five of them; [`Wire`] checks the
//! layout once and looks names up in the buffer itself.

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

fn u32_at(bytes: &[u8], at: usize) -> usize {
    let b: [u8; 4] = bytes[at..at + 4].try_into().expect("four bytes");
    u32::from_le_bytes(b) as usize
}

impl<'a> Wire<'a> {
    /// The map with no headers.
    pub const EMPTY: Wire<'static> = Wire {
        lens: &[],
        data: &[],
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
        let wire = Wire {
            lens: &bytes[4..lens_end],
            data: &bytes[lens_end..],
        };
        let mut at = 0usize;
        for i in 0..count * 2 {
            let len = u32_at(wire.lens, i * 4);
            let nul = at.checked_add(len).ok_or(Malformed::Truncated)?;
            match wire.data.get(nul) {
                None => return Err(Malformed::Truncated),
                Some(0) => at = nul + 1,
                Some(_) => return Err(Malformed::MissingNul),
            }
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
            let name = &data[at..at + name_len];
            let value_at = at + name_len + 1;
            let value = &data[value_at..value_at + value_len];
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
        self.iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }
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
