//! Invariants of the plugin's decision logic, checked on arbitrary input.
//!
//! Each public function takes raw bytes, decodes them into calls to the
//! plugin (see [`Reader`]) and panics if an invariant breaks. The same
//! functions run under `cargo fuzz` (`fuzz_targets/`) and, natively, as
//! ordinary tests over the seed corpus and a fixed-seed sweep
//! (`plugin/tests/fuzz_invariants.rs`), so CI checks every invariant on every
//! `cargo test`.

use drainpipe::admin::{self, Action};
use drainpipe::config::{UpstreamHeaders, MAX_DURATION_MS};
use drainpipe::deadline::{self, Incoming};
use drainpipe::dialect;
use drainpipe::drain::{Admit, Drain, Windows};
use drainpipe::headers::{self as wire_headers, Headers, Wire};
use drainpipe::sse::{self, ChunkAction, Cutter, Limit};
use drainpipe::traffic::{self, Verdict};
use drainpipe::{Config, Role};

/// Decodes fuzz input: fixed-width integers and length-prefixed byte
/// strings. Missing bytes read as zero, so every input decodes.
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader(data)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// Little-endian, zero-padded.
    pub fn u64(&mut self) -> u64 {
        let n = self.0.len().min(8);
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        u64::from_le_bytes(buf)
    }

    /// One length byte, then up to that many bytes.
    pub fn bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8()).min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

/// The reference reading of a millisecond value: optional ASCII whitespace
/// around decimal digits that fit in a u64.
fn reference_ms(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The reference reading of `grpc-timeout`, in ms.
fn reference_grpc(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => n * 3_600_000,
        b'M' => n * 60_000,
        b'S' => n * 1_000,
        b'm' => n,
        b'u' => n / 1_000,
        b'n' => n / 1_000_000,
        _ => return None,
    })
}

const DEADLINE_HEADERS: [&str; 4] = [
    deadline::REQUEST_DEADLINE,
    deadline::REQUEST_TIMEOUT,
    deadline::GRPC_TIMEOUT,
    deadline::ENVOY_EXPECTED,
];

/// Deadline parsers. Input: `now: u64`, a presence mask, four values.
///
/// - `parse_ms` and `parse_grpc_timeout` agree with the reference readings
///   on every value (and on the whole input);
/// - `incoming` takes the first well-formed header in the documented order
///   and counts exactly the malformed ones before it;
/// - the shared-data records decode without panicking and round-trip.
pub fn deadline(data: &[u8]) {
    for v in [data, data.trim_ascii()] {
        assert_eq!(deadline::parse_ms(v), reference_ms(v), "parse_ms {v:?}");
        assert_eq!(
            deadline::parse_grpc_timeout(v),
            reference_grpc(v),
            "parse_grpc_timeout {v:?}"
        );
    }
    let mut r = Reader::new(data);
    let now = r.u64();
    let mask = r.u8();
    let values = [r.bytes(), r.bytes(), r.bytes(), r.bytes()];
    let present = |i: usize| mask & (1 << i) != 0;
    let got = deadline::incoming(
        |name| {
            let i = DEADLINE_HEADERS.iter().position(|n| *n == name)?;
            present(i).then_some(values[i])
        },
        now,
    );
    let mut want = Incoming::default();
    for (i, value) in values.iter().enumerate().filter(|(i, _)| present(*i)) {
        let budget = match i {
            0 => reference_ms(value).map(|at| at.saturating_sub(now)),
            2 => reference_grpc(value),
            _ => reference_ms(value),
        };
        if budget.is_some() {
            want.budget_ms = budget;
            break;
        }
        want.malformed += 1;
    }
    assert_eq!(got, want, "incoming {values:?} mask {mask:#x} now {now}");

    for value in values {
        // A budget written as grpc-timeout reads back rounded down to the
        // unit chosen (exact up to 99,999,999 ms, within 1 s up to 8 digits of
        // seconds), never above the budget.
        if let Some(ms) = deadline::parse_ms(value) {
            let text = deadline::format_grpc_timeout(ms);
            let back = deadline::parse_grpc_timeout(text.as_bytes())
                .unwrap_or_else(|| panic!("formatted grpc-timeout {text:?} does not parse"));
            let unit_ms = match text.as_bytes().last() {
                Some(b'm') => 1,
                Some(b'S') => 1_000,
                Some(b'M') => 60_000,
                _ => 3_600_000,
            };
            assert!(back <= ms, "{ms} -> {text}");
            assert!(ms - back < unit_ms || text == "99999999H", "{ms} -> {text}");
            assert!(ms > 99_999_999 || back == ms, "{ms} -> {text}");
        }
        if let Ok(d) = Drain::decode(Some(value)) {
            assert_eq!(Drain::decode(Some(&d.encode())), Ok(d));
        }
        if let Some(w) = Windows::decode(value) {
            assert_eq!(Windows::decode(&w.encode()), Some(w));
        }
    }
}

/// The host's wire form of a header map (`headers::Wire`), on arbitrary
/// bytes and on generated headers:
///
/// - `Wire::parse` never panics; what it accepts is exactly the wire form
///   of the pairs it yields (or the empty buffer), so nothing is read out
///   of bounds and nothing is skipped;
/// - a lookup gives the first value of that name, as the decoded pairs do;
/// - generated pairs survive the round trip, lookups and all.
pub fn header_wire(data: &[u8]) {
    if let Ok(wire) = Wire::parse(data) {
        let pairs: Vec<(&[u8], &[u8])> = wire.iter().collect();
        if data.is_empty() {
            assert!(pairs.is_empty());
        } else {
            assert_eq!(wire_headers::to_wire(&pairs), data, "{pairs:?}");
        }
        for (name, _) in &pairs {
            if let Ok(name) = std::str::from_utf8(name) {
                let first = pairs.iter().find(|(n, _)| *n == name.as_bytes());
                assert_eq!(wire.get(name), first.map(|(_, v)| *v));
            }
        }
    }
    let mut r = Reader::new(data);
    let h = headers(&mut r);
    let bytes = wire_headers::to_wire(&h);
    let wire = Wire::parse(&bytes).expect("the wire form of pairs parses");
    assert_eq!(wire.iter().count(), h.len());
    for name in NAMES
        .iter()
        .copied()
        .chain(h.iter().map(|(n, _)| n.as_str()))
    {
        assert_eq!(wire.get(name), Headers::get(&h, name), "{name} in {h:?}");
    }
}

/// `Config::parse` on arbitrary bytes: never panics; whatever it accepts
/// satisfies the documented relations.
pub fn config(data: &[u8]) {
    let Ok(cfg) = Config::parse(data) else {
        return;
    };
    assert_eq!(cfg.validate(), Ok(()));
    let d = &cfg.deadline;
    for ms in [
        cfg.admit_window_ms,
        cfg.grace_ms,
        d.default_timeout_ms,
        d.max_timeout_ms,
        d.min_budget_ms,
    ] {
        assert!(ms <= MAX_DURATION_MS, "{cfg:?}");
    }
    assert!(cfg.admit_window_ms <= cfg.grace_ms, "{cfg:?}");
    assert!(d.max_timeout_ms > 0, "{cfg:?}");
    assert!(d.min_budget_ms <= d.default_timeout_ms, "{cfg:?}");
    assert!(d.default_timeout_ms <= d.max_timeout_ms, "{cfg:?}");
    let ws = d.websocket_default_timeout_ms;
    assert!(
        ws == traffic::NO_DEADLINE || (d.min_budget_ms..=d.max_timeout_ms).contains(&ws),
        "{cfg:?}"
    );
    assert!(cfg.retry_after_s <= 86_400, "{cfg:?}");
    assert!(cfg.health_path.starts_with('/') && !cfg.health_path.contains('?'));
    if cfg.admin_token.is_some() || cfg.envoy_admin_cluster.is_some() {
        assert_eq!(cfg.role, Role::Admin, "{cfg:?}");
    }
}

/// Header names worth choosing often; anything else comes from the input.
const NAMES: [&str; 13] = [
    ":method",
    ":path",
    ":authority",
    "authorization",
    "content-type",
    deadline::REQUEST_DEADLINE,
    deadline::REQUEST_TIMEOUT,
    deadline::GRPC_TIMEOUT,
    deadline::ENVOY_EXPECTED,
    deadline::ENVOY_UPSTREAM_TIMEOUT,
    "connection",
    "x-arbitrary",
    "upgrade",
];

/// Up to 15 headers: a name (one of [`NAMES`], or arbitrary bytes read
/// lossily, as a host would hand them over) and a value of arbitrary bytes.
fn headers(r: &mut Reader) -> Vec<(String, Vec<u8>)> {
    let n = r.u8() % 16;
    (0..n)
        .map(|_| {
            let pick = r.u8();
            let name = match NAMES.get(usize::from(pick % 16)) {
                Some(name) => name.to_string(),
                None => String::from_utf8_lossy(r.bytes()).into_owned(),
            };
            (name, r.bytes().to_vec())
        })
        .collect()
}

fn assert_json(body: &str) {
    let v: serde_json::Value = serde_json::from_str(body).expect("reply body is JSON");
    assert!(v["error"]["code"].is_string(), "{body}");
}

/// The admin route on arbitrary headers, with or without a token:
///
/// - with a token, nothing but `authorization: Bearer <token>` (the first
///   such header, scheme case-insensitive, spaces around) gets past 401;
/// - past that, only `/drain` (query ignored) routes, by method; everything
///   else is 404 or 405 with a JSON body;
/// - `constant_time_eq` is byte equality.
pub fn admin_route(data: &[u8]) {
    let mut r = Reader::new(data);
    let token = r.bytes();
    let mut cfg = Config {
        role: Role::Admin,
        ..Config::default()
    };
    if !token.is_empty() {
        cfg.admin_token = Some(String::from_utf8_lossy(token).into_owned());
    }
    let a = r.bytes();
    let b = r.bytes();
    assert_eq!(admin::constant_time_eq(a, b), a == b);
    assert!(admin::constant_time_eq(a, a));

    let h = headers(&mut r);
    let got = admin::route(&cfg, &h);
    let bytes = wire_headers::to_wire(&h);
    let wire = Wire::parse(&bytes).expect("the wire form of pairs parses");
    assert_eq!(admin::route(&cfg, &wire), got, "wire form of {h:?}");

    let authorized = match &cfg.admin_token {
        None => true,
        Some(token) => traffic::header(&h, "authorization").is_some_and(|v| {
            let v = v.trim_ascii();
            v.len() >= 7
                && v[..7].eq_ignore_ascii_case(b"bearer ")
                && v[7..].trim_ascii() == token.as_bytes()
        }),
    };
    let method = traffic::header(&h, ":method").unwrap_or_default();
    let on_drain = traffic::path_of(&h) == b"/drain";
    let want = match method {
        b"POST" => Some(Action::Start),
        b"DELETE" => Some(Action::Stop),
        b"GET" | b"HEAD" => Some(Action::Status),
        _ => None,
    };
    match got {
        Ok(action) => {
            assert!(authorized && on_drain, "{h:?} routed to {action:?}");
            assert_eq!(Some(action), want, "{h:?}");
        }
        Err(reply) => {
            let status = match (authorized, on_drain, want) {
                (false, _, _) => 401,
                (true, false, _) => 404,
                (true, true, None) => 405,
                (true, true, Some(action)) => panic!("{h:?} refused, expected {action:?}"),
            };
            assert_eq!(reply.status, status, "{h:?}: {}", reply.body);
            if status == 401 {
                assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
            }
            assert_json(&reply.body);
        }
    }
}

/// A valid configuration with durations chosen by the input.
fn arbitrary_config(r: &mut Reader) -> Config {
    let mut cfg = Config::default();
    let d = &mut cfg.deadline;
    d.max_timeout_ms = 1 + r.u64() % MAX_DURATION_MS;
    d.default_timeout_ms = r.u64() % (d.max_timeout_ms + 1);
    d.min_budget_ms = r.u64() % (d.default_timeout_ms + 1);
    cfg.grace_ms = r.u64() % (MAX_DURATION_MS + 1);
    cfg.admit_window_ms = r.u64() % (cfg.grace_ms + 1);
    cfg.final_event_margin_ms = r.u64() % (cfg.deadline.min_budget_ms + 1);
    cfg.retry_after_s = r.u64() % 86_401;
    cfg.deadline.upstream_headers = match r.u8() % 2 {
        0 => UpstreamHeaders::Router,
        _ => UpstreamHeaders::All,
    };
    let d = &mut cfg.deadline;
    d.websocket_default_timeout_ms = match r.u8() % 2 {
        0 => traffic::NO_DEADLINE,
        _ => d.min_budget_ms + r.u64() % (d.max_timeout_ms - d.min_budget_ms + 1),
    };
    cfg.validate()
        .expect("the generated configuration is valid");
    cfg
}

/// `traffic::decide` on arbitrary headers, clock, drain and configuration:
///
/// - readiness probes (and only they) are answered locally, and only they
///   read the in-flight count;
/// - a forwarded budget is within `[min_budget_ms, max_timeout_ms]`, never
///   above what the request asked, and while draining ends inside the grace
///   period; the headers set toward the upstream all carry it; only a
///   WebSocket upgrade asking for none, with no WebSocket default
///   configured, outside a drain, is forwarded with no deadline and no
///   header;
/// - refusals are the 503 contract or the 504.
pub fn traffic_decide(data: &[u8]) {
    let mut r = Reader::new(data);
    let cfg = arbitrary_config(&mut r);
    let now = r.u64();
    let drain = match r.u8() % 4 {
        0 => Drain::SERVING,
        1 => Drain::started_at(now.saturating_sub(r.u64() % (cfg.grace_ms + 2))),
        2 => Drain::started_at(now.saturating_sub(r.u64() % 2_000)),
        _ => Drain::started_at(r.u64()),
    };
    let inflight = r.u64();
    let h = headers(&mut r);
    let read = std::cell::Cell::new(false);
    let decision = traffic::decide(&cfg, drain, now, &h, || {
        read.set(true);
        inflight
    });
    // The filter reads the host's wire form in place: the same decision.
    let bytes = wire_headers::to_wire(&h);
    let wire = Wire::parse(&bytes).expect("the wire form of pairs parses");
    assert_eq!(
        traffic::decide(&cfg, drain, now, &wire, || inflight),
        decision,
        "wire form of {h:?}"
    );

    let method = traffic::header(&h, ":method").unwrap_or_default();
    let health =
        matches!(method, b"GET" | b"HEAD") && traffic::path_of(&h) == cfg.health_path.as_bytes();
    let asked = deadline::incoming(|n| traffic::header(&h, n), now);
    let d = &cfg.deadline;
    assert_eq!(read.get(), health, "in-flight read: {h:?}");
    if !health {
        assert_eq!(decision.malformed_deadlines, asked.malformed);
    }
    match decision.verdict {
        Verdict::Health(reply) => {
            assert!(health, "{h:?}");
            let phase = drain.phase(now, inflight, cfg.windows());
            assert_eq!(
                reply.status,
                if drain.started_unix_ms.is_none() {
                    200
                } else {
                    503
                }
            );
            if method == b"HEAD" {
                assert!(reply.body.is_empty());
            } else {
                assert_eq!(reply.body, format!("{{\"status\":\"{}\"}}", phase.as_str()));
            }
        }
        Verdict::Forward(f) if f.budget_ms == traffic::NO_DEADLINE => {
            // Only a WebSocket session asking for no deadline, with none
            // configured for it, outside a drain.
            assert!(!health);
            assert_eq!(decision.dialect, dialect::Dialect::WebSocket, "{h:?}");
            assert_eq!(asked.budget_ms, None, "{h:?}");
            assert_eq!(d.websocket_default_timeout_ms, traffic::NO_DEADLINE);
            assert_eq!(drain.admit(now, cfg.windows()), Admit::Unlimited);
            assert_eq!(f.deadline_unix_ms, traffic::NO_DEADLINE);
            assert!(f.set_headers.is_empty(), "{f:?}");
        }
        Verdict::Forward(f) => {
            assert!(!health);
            assert!(f.budget_ms <= d.max_timeout_ms, "{f:?} > max {cfg:?}");
            assert!(f.budget_ms >= d.min_budget_ms, "{f:?} < min {cfg:?}");
            if let Some(asked) = asked.budget_ms {
                assert!(f.budget_ms <= asked, "{f:?} above the asked {asked}");
            }
            assert_eq!(f.deadline_unix_ms, now.saturating_add(f.budget_ms));
            if let Some(start) = drain.started_unix_ms {
                assert!(
                    f.deadline_unix_ms <= start.saturating_add(cfg.grace_ms),
                    "{f:?} ends after the grace period {drain:?} {cfg:?}"
                );
            }
            let set = |name: &str| {
                f.set_headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.as_str())
            };
            let budget = f.budget_ms.to_string();
            assert_eq!(set(deadline::ENVOY_UPSTREAM_TIMEOUT), Some(budget.as_str()));
            // `x-request-*`: on every request when configured, else only
            // where the request carries its own, always the deadline given.
            let all = d.upstream_headers == UpstreamHeaders::All;
            let expect = |name: &str, value: String| {
                let carried = traffic::header(&h, name).is_some();
                assert_eq!(
                    set(name),
                    (all || carried).then_some(value.as_str()),
                    "{name} {h:?} {cfg:?}"
                );
            };
            expect(deadline::REQUEST_TIMEOUT, budget.clone());
            expect(deadline::REQUEST_DEADLINE, f.deadline_unix_ms.to_string());
            let grpc = grpc_request(&cfg, &h);
            match set(deadline::GRPC_TIMEOUT) {
                Some(v) => {
                    assert!(grpc);
                    let ms = deadline::parse_grpc_timeout(v.as_bytes()).expect("valid");
                    assert!(ms <= f.budget_ms && f.budget_ms - ms < 1_000);
                }
                None => assert!(!grpc),
            }
        }
        Verdict::RejectDraining(reply) => {
            assert!(drain.started_unix_ms.is_some(), "503 while serving: {h:?}");
            if grpc_request(&cfg, &h) {
                // A trailers-only gRPC answer: UNAVAILABLE, plain text.
                assert_eq!(reply.grpc_status, Some(dialect::GRPC_UNAVAILABLE));
                assert!(!reply.body.is_empty());
                return;
            }
            assert_eq!(reply.status, 503);
            assert_eq!(
                reply.header("retry-after"),
                Some(cfg.retry_after_s.to_string().as_str())
            );
            assert_eq!(
                reply.header("retry-after-ms"),
                Some((cfg.retry_after_s * 1000).to_string().as_str())
            );
            assert_eq!(reply.header("x-should-retry"), Some("true"));
            assert_json(&reply.body);
        }
        Verdict::RejectDeadline(reply) => {
            let budget = asked
                .budget_ms
                .unwrap_or(d.default_timeout_ms)
                .min(d.max_timeout_ms);
            assert!(budget < d.min_budget_ms, "504 for a budget of {budget}");
            if grpc_request(&cfg, &h) {
                assert_eq!(reply.grpc_status, Some(dialect::GRPC_DEADLINE_EXCEEDED));
                return;
            }
            assert_eq!(reply.status, 504);
            assert_eq!(reply.header("x-should-retry"), Some("false"));
            assert_json(&reply.body);
        }
    }
}

/// Whether a request is gRPC by the dialect rules.
fn grpc_request(cfg: &Config, h: &dyn traffic::Headers) -> bool {
    dialect::detect(&cfg.dialects, h) == dialect::Dialect::Grpc
}

/// Whether `stream` stops at an SSE event boundary, by the SSE
/// specification's line rules (CRLF, LF or CR end a line; an empty line ends
/// an event). A lone trailing CR counts as a line end.
pub fn at_event_boundary(stream: &[u8]) -> bool {
    let mut line_len = 0usize;
    let mut last_line_empty = true;
    let mut after_cr = false;
    for &b in stream {
        match b {
            b'\n' if after_cr => after_cr = false,
            b'\r' | b'\n' => {
                last_line_empty = line_len == 0;
                line_len = 0;
                after_cr = b == b'\r';
            }
            _ => {
                after_cr = false;
                line_len += 1;
            }
        }
    }
    line_len == 0 && last_line_empty
}

/// The cutter's own boundary rule (documented: a blank line, LF or CRLF):
/// whether `known` + `more` ends at one, judged only from those bytes. Only
/// the last bytes matter, so long streams cost nothing.
fn blank_line_end(known: &[u8], more: &[u8]) -> bool {
    let mut w = known[known.len().saturating_sub(3)..].to_vec();
    w.extend_from_slice(&more[more.len().saturating_sub(3)..]);
    w.ends_with(b"\n\n") || w.ends_with(b"\n\r\n")
}

/// The same rule over a whole stream, which starts at a boundary.
fn stream_blank_line_end(stream: &[u8], more: &[u8]) -> bool {
    let mut known = b"\n\n".to_vec();
    known.extend_from_slice(&stream[stream.len().saturating_sub(3)..]);
    blank_line_end(&known, more)
}

/// Checks a chunk's replacement by the final event for `limit`: a prefix of
/// `chunk`, then the event; with that prefix the client's bytes end at an
/// event boundary, the stream's start counting as one (never a torn event).
/// Appends the prefix to `client` and returns its length.
fn keep_before_final_event(
    client: &mut Vec<u8>,
    chunk: &[u8],
    replacement: &[u8],
    limit: Limit,
) -> usize {
    let event = sse::final_event(limit);
    let kept = replacement
        .strip_suffix(event.as_slice())
        .expect("the replacement ends with the final event");
    assert!(chunk.starts_with(kept), "replacement is not a prefix");
    client.extend_from_slice(kept);
    assert!(stream_blank_line_end(client, b""), "torn event: {client:?}");
    assert!(at_event_boundary(client), "torn event: {client:?}");
    kept.len()
}

/// `sse::Cutter` over arbitrary chunk sequences. Input: repeated
/// (flag, chunk); the flag's low bits ask for a cut (deadline, drain) or not.
///
/// - a chunk is read only when a cut is due and the stream has not ended;
/// - once ended, every chunk is dropped; before, nothing is dropped;
/// - what reaches the client is a prefix of the upstream bytes, then the
///   final event exactly once, placed at an event boundary (never torn);
/// - a cut asked for with a boundary available in the bytes the cutter has
///   read (since the stream's start or the last chunk passed unread) happens
///   at the last one.
pub fn sse_cutter(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut cutter = Cutter::default();
    let mut upstream = Vec::new();
    let mut client = Vec::new();
    // What the cutter has read since it last passed a chunk unread; the
    // stream's start is a boundary.
    let mut read = b"\n\n".to_vec();
    let mut events = 0;
    while !r.is_empty() {
        let flag = r.u8();
        let chunk = r.bytes();
        let cut = match flag % 4 {
            0 => Some(Limit::Deadline),
            1 => Some(Limit::Drain),
            _ => None,
        };
        let was_ended = cutter.ended();
        let mut was_read = false;
        let action = cutter.on_chunk(cut, || {
            was_read = true;
            chunk.to_vec()
        });
        assert_eq!(
            was_read,
            cut.is_some() && !was_ended,
            "read without a due cut, or after the end"
        );
        if was_ended {
            assert_eq!(action, ChunkAction::Drop, "forwarded after the end");
            continue;
        }
        match action {
            ChunkAction::Forward => {
                if cut.is_some() {
                    for p in 0..=chunk.len() {
                        assert!(
                            !blank_line_end(&read, &chunk[..p]),
                            "cut missed a boundary at {p}"
                        );
                    }
                    read.extend_from_slice(chunk);
                } else {
                    read.clear();
                }
                client.extend_from_slice(chunk);
            }
            ChunkAction::Replace(bytes) => {
                let limit = cut.expect("a cut only when asked");
                let kept = keep_before_final_event(&mut client, chunk, &bytes, limit);
                for p in kept + 1..=chunk.len() {
                    assert!(
                        !blank_line_end(&read, &chunk[..p]),
                        "a later boundary at {p} was skipped"
                    );
                }
                client.extend_from_slice(&sse::final_event(limit));
                events += 1;
            }
            ChunkAction::Drop => panic!("dropped before the end"),
        }
        upstream.extend_from_slice(chunk);
        assert_eq!(cutter.ended(), events == 1);
        if events == 0 {
            assert_eq!(client, upstream);
        }
    }
    assert!(events <= 1);
}

/// `sse::Body`, a forwarded response's body, over arbitrary chunk
/// sequences: whether it is an event stream is told only at a cut, from the
/// chunk read then. Input: repeated (flag, chunk); the flag's low bits ask
/// for a cut (deadline, drain) or not, bit 2 marks the chunk that ends the
/// stream (the input stops there).
///
/// - a chunk is read only when a cut is due, never the last one, never
///   after the end;
/// - the last chunk, and every chunk while no cut is due and the stream has
///   not ended, passes untouched;
/// - what reaches the client is a prefix of the upstream bytes, then the
///   final event at most once, after which every chunk is dropped; the
///   bytes before the final event end at an event boundary, the stream's
///   start counting as one (never a torn event).
pub fn sse_body(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut body = sse::Body::forwarded();
    let mut upstream = Vec::new();
    let mut client = Vec::new();
    let mut ended = false;
    while !r.is_empty() {
        let flag = r.u8();
        let chunk = r.bytes();
        let end_of_stream = flag & 4 != 0;
        let cut = match flag % 4 {
            0 => Some(Limit::Deadline),
            1 => Some(Limit::Drain),
            _ => None,
        };
        let asked = std::cell::Cell::new(false);
        let read = std::cell::Cell::new(false);
        let action = body.on_chunk(
            chunk.len(),
            end_of_stream,
            || {
                asked.set(true);
                cut
            },
            || {
                read.set(true);
                chunk.to_vec()
            },
        );
        if read.get() {
            assert!(asked.get() && cut.is_some(), "read without a due cut");
            assert!(
                !end_of_stream && !ended,
                "read the last chunk, or after the end"
            );
        }
        if ended {
            assert_eq!(action, ChunkAction::Drop, "forwarded after the end");
        } else {
            if cut.is_none() || end_of_stream {
                assert_eq!(action, ChunkAction::Forward, "touched without a due cut");
            }
            match action {
                ChunkAction::Forward => client.extend_from_slice(chunk),
                ChunkAction::Replace(bytes) => {
                    let limit = cut.expect("a cut only when asked");
                    assert!(!end_of_stream, "the last chunk replaced");
                    keep_before_final_event(&mut client, chunk, &bytes, limit);
                    ended = true;
                }
                ChunkAction::Drop => panic!("dropped before the end"),
            }
        }
        upstream.extend_from_slice(chunk);
        if !ended {
            assert_eq!(client, upstream);
        }
        if end_of_stream {
            break;
        }
    }
}

/// The frame starts of a whole WebSocket byte stream, by a direct reading
/// of RFC 6455 section 5.2 (the oracle for [`ws_frames`]): every offset
/// where a frame starts, and the stream's end if it ends a frame; it stops
/// at a frame that is not valid framing.
pub fn ws_frame_starts(stream: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut p = 0usize;
    loop {
        out.push(p);
        let Some(&[b0, b1]) = stream
            .get(p..p + 2)
            .map(|s| <&[u8; 2]>::try_from(s).unwrap())
        else {
            return out;
        };
        let ext = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        let Some(ext_bytes) = stream.get(p + 2..p + 2 + ext) else {
            return out;
        };
        let len: u128 = match ext {
            0 => u128::from(b1 & 0x7F),
            _ => ext_bytes.iter().fold(0u128, |n, &b| n << 8 | u128::from(b)),
        };
        let control = b0 & 0x08 != 0;
        if len >= 1 << 63 || (control && (len > 125 || b0 & 0x80 == 0)) {
            return out;
        }
        let end = (p + 2 + ext + mask) as u128 + len;
        if end > stream.len() as u128 {
            return out;
        }
        p = end as usize;
    }
}

/// Input: a count byte `n` (mod 8), `n` split bytes, then the stream; and
/// the chunk (by index) at which the close is due.
/// Invariants: the frame boundaries found do not depend on how the stream
/// is split, are the oracle's ([`ws_frame_starts`]); once due, the close
/// frame follows exactly a boundary and nothing of the stream follows it.
pub fn ws_frames(data: &[u8]) {
    use drainpipe::websocket::{close_frame, Closer, Framing, CLOSE_CODE, CLOSE_REASON};
    let mut r = Reader::new(data);
    let n = usize::from(r.u8() % 8);
    let due_at = usize::from(r.u8());
    let mut splits: Vec<u8> = (0..n).map(|_| r.u8()).collect();
    let stream = r.0;
    let mut cuts: Vec<usize> = splits
        .drain(..)
        .map(|b| usize::from(b) * stream.len() / 256)
        .collect();
    cuts.sort_unstable();
    cuts.push(stream.len());

    let oracle = ws_frame_starts(stream);
    let mut framing = Framing::default();
    let mut found = Vec::new();
    let mut start = 0;
    for &end in &cuts {
        for b in framing.feed(&stream[start..end]) {
            assert!(b <= end - start);
            found.push(start + b);
        }
        start = end;
    }
    found.dedup();
    assert!(found.windows(2).all(|w| w[0] < w[1]), "{found:?}");
    assert_eq!(found, oracle, "boundaries of {stream:?} split at {cuts:?}");

    let mut closer = Closer::default();
    let mut client = Vec::new();
    let mut start = 0;
    let close = close_frame(CLOSE_CODE, CLOSE_REASON);
    for (i, &end) in cuts.iter().enumerate() {
        let chunk = &stream[start..end];
        match closer.on_chunk(i >= due_at % cuts.len(), chunk) {
            ChunkAction::Forward => client.extend_from_slice(chunk),
            ChunkAction::Replace(bytes) => {
                assert!(bytes.ends_with(&close));
                let kept = &bytes[..bytes.len() - close.len()];
                assert_eq!(kept, &chunk[..kept.len()]);
                client.extend_from_slice(kept);
                assert!(
                    oracle.contains(&client.len()),
                    "close after {} bytes, not a boundary",
                    client.len()
                );
                client.extend_from_slice(&close);
            }
            ChunkAction::Drop => assert!(closer.closed()),
        }
        start = end;
    }
    if closer.closed() {
        assert!(client.ends_with(&close));
    } else {
        assert_eq!(client, stream);
    }
}
