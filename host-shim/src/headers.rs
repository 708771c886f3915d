//! An ordered header map with Envoy's rules: keys are lowercased, one key
//! may appear several times, and order is kept.

/// Ordered HTTP headers (or trailers), keys lowercased.
///
/// ```
/// use drainpipe_shim::Headers;
///
/// let mut h = Headers::from_pairs([(":path", "/"), ("X-Id", "1")]);
/// h.add("x-id", "2");
/// assert_eq!(h.get("x-id"), Some("1"));
/// assert_eq!(h.get_all("X-ID"), vec!["1", "2"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pairs: Vec<(String, Vec<u8>)>,
}

impl Headers {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// A map from `(key, value)` pairs, in order.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.add(k.as_ref(), v);
        }
        h
    }

    /// Number of entries (a repeated key counts each time).
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The first value of `key` as text, if present and valid UTF-8.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_bytes(key)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `key`.
    pub fn get_bytes(&self, key: &str) -> Option<&[u8]> {
        let key = key.to_ascii_lowercase();
        self.pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of `key`, in order (values that are not UTF-8 are skipped).
    pub fn get_all(&self, key: &str) -> Vec<&str> {
        let key = key.to_ascii_lowercase();
        self.pairs
            .iter()
            .filter(|(k, _)| *k == key)
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .collect()
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get_bytes(key).is_some()
    }

    /// Appends a value.
    pub fn add(&mut self, key: &str, value: impl AsRef<[u8]>) {
        self.pairs
            .push((key.to_ascii_lowercase(), value.as_ref().to_vec()));
    }

    /// Replaces every value of `key` with one value, or appends it.
    pub fn replace(&mut self, key: &str, value: impl AsRef<[u8]>) {
        let key = key.to_ascii_lowercase();
        match self.pairs.iter().position(|(k, _)| *k == key) {
            Some(first) => {
                self.pairs[first].1 = value.as_ref().to_vec();
                let mut i = 0;
                self.pairs.retain(|(k, _)| {
                    i += 1;
                    i - 1 == first || *k != key
                });
            }
            None => self.pairs.push((key, value.as_ref().to_vec())),
        }
    }

    /// Adds a value where Envoy's header map puts it: a pseudo-header after
    /// the other pseudo-headers (they always come first), any other key at
    /// the end.
    pub(crate) fn add_in_place(&mut self, key: &str, value: impl AsRef<[u8]>) {
        let key = key.to_ascii_lowercase();
        let at = match key.starts_with(':') {
            true => self
                .pairs
                .iter()
                .take_while(|(k, _)| k.starts_with(':'))
                .count(),
            false => self.pairs.len(),
        };
        self.pairs.insert(at, (key, value.as_ref().to_vec()));
    }

    /// Replaces every value of `key` as a filter's replace does in Envoy:
    /// the old values are removed and the new one is added
    /// ([`Headers::add_in_place`]), so it moves to the end.
    pub(crate) fn replace_moving(&mut self, key: &str, value: impl AsRef<[u8]>) {
        self.remove(key);
        self.add_in_place(key, value);
    }

    /// Removes every value of `key`.
    pub fn remove(&mut self, key: &str) {
        let key = key.to_ascii_lowercase();
        self.pairs.retain(|(k, _)| *k != key);
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub(crate) fn serialize(&self) -> Vec<u8> {
        crate::abi::serialize_pairs(&self.pairs)
    }

    pub(crate) fn from_raw_pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.add(&String::from_utf8_lossy(&k), v);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filters_replace_moves_the_key_to_the_end_and_pseudo_headers_stay_first() {
        let mut h =
            Headers::from_pairs([(":path", "/"), (":method", "GET"), ("a", "1"), ("b", "2")]);
        h.replace_moving("a", "9");
        h.replace_moving(":path", "/x");
        h.add_in_place(":scheme", "http");
        let keys: Vec<_> = h.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [":method", ":path", ":scheme", "b", "a"]);
        assert_eq!(h.get("a"), Some("9"));
    }

    #[test]
    fn replace_keeps_position_and_drops_duplicates() {
        let mut h = Headers::from_pairs([("a", "1"), ("b", "2"), ("a", "3")]);
        h.replace("A", "9");
        let pairs: Vec<_> = h.iter().collect();
        assert_eq!(pairs, vec![("a", &b"9"[..]), ("b", &b"2"[..])]);
    }
}
