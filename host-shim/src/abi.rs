//! The proxy-wasm 0.2.x ABI's numbers: status codes, enums and the
//! serialization of header maps, as Envoy reads and writes them.

/// A status code returned by a host function (`WasmResult` in Envoy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// The call succeeded.
    Ok = 0,
    /// The key, context, queue or metric does not exist.
    NotFound = 1,
    /// An argument is out of range or not valid in this callback.
    BadArgument = 2,
    /// A value could not be serialized.
    SerializationFailure = 3,
    /// A value could not be parsed.
    ParseFailure = 4,
    /// A guest pointer or length lies outside linear memory.
    InvalidMemoryAccess = 6,
    /// The queue is empty.
    Empty = 7,
    /// The compare-and-swap value does not match.
    CasMismatch = 8,
    /// The host failed for a reason of its own.
    InternalFailure = 10,
    /// The host does not implement this function.
    Unimplemented = 12,
}

impl Status {
    /// The value handed back to the guest.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Result type of a host function body: `Err` carries the status to return.
pub(crate) type AbiResult<T = ()> = Result<T, Status>;

/// What a stream callback asked the host to do with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Continue iteration: the data goes on to the next filter.
    Continue,
    /// Stop iteration until the filter resumes the stream.
    Pause,
}

impl Action {
    pub(crate) fn from_raw(raw: i32) -> Self {
        // 0.2.x defines Continue = 0 and Pause = 1; Envoy treats every other
        // value as a form of stopping iteration.
        if raw == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

/// Log levels of `proxy_log` and `proxy_get_log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// Which header map a header-map function addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
}

impl MapType {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcInitialMetadata,
            5 => MapType::GrpcTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Which buffer a buffer function addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BufferType {
    RequestBody,
    ResponseBody,
    DownstreamData,
    UpstreamData,
    HttpCallResponseBody,
    GrpcReceiveBuffer,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

/// Stream addressed by `proxy_continue_stream` and `proxy_close_stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamType {
    Request,
    Response,
    Downstream,
    Upstream,
}

impl StreamType {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => StreamType::Request,
            1 => StreamType::Response,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => return None,
        })
    }
}

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        Some(match raw {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return None,
        })
    }
}

/// Serializes pairs the way the ABI passes header maps: a little-endian
/// `u32` count, then a `u32` key size and value size per pair, then every key
/// and value each followed by a NUL byte.
pub(crate) fn serialize_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let data: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Parses the serialization written by [`serialize_pairs`]; `None` when the
/// data is truncated or its sizes do not add up.
pub(crate) fn deserialize_pairs(data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if data.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let bytes = data.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    let count = read_u32(0)?;
    let sizes_end = count.checked_mul(8)?.checked_add(4)?;
    if sizes_end > data.len() {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    let mut at = sizes_end;
    for i in 0..count {
        let key_len = read_u32(4 + i * 8)?;
        let value_len = read_u32(8 + i * 8)?;
        let key = data.get(at..at.checked_add(key_len)?)?.to_vec();
        at = at.checked_add(key_len)?.checked_add(1)?;
        let value = data.get(at..at.checked_add(value_len)?)?.to_vec();
        at = at.checked_add(value_len)?.checked_add(1)?;
        pairs.push((key, value));
    }
    if at > data.len() {
        return None;
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs = vec![
            (b":path".to_vec(), b"/".to_vec()),
            (b"a".to_vec(), b"".to_vec()),
        ];
        let data = serialize_pairs(&pairs);
        assert_eq!(deserialize_pairs(&data), Some(pairs));
    }

    #[test]
    fn truncated_pairs_are_rejected() {
        let data = serialize_pairs(&[("key", "value")]);
        assert_eq!(deserialize_pairs(&data[..data.len() - 3]), None);
        assert_eq!(deserialize_pairs(&[5, 0, 0, 0]), None);
    }
}
