//! Which API a request speaks, and how the plugin answers in that API's
//! terms: its drain 503, its early 504 and the ending of a stream that
//! outlives its deadline or the drain's grace period.
//!
//! The dialect is decided per request from what the filter reads anyway
//! (the request headers, already copied into the VM in one piece), so
//! deciding costs no host call:
//!
//! | Order | Rule | Dialect |
//! |---|---|---|
//! | 1 | `upgrade: websocket` | [`Dialect::WebSocket`] |
//! | 2 | `content-type: application/grpc` or `application/grpc+*` | [`Dialect::Grpc`] |
//! | 3 | the longest configured path prefix (`dialects`) | as configured |
//! | 4 | an `anthropic-version` header, or a path ending `/v1/messages` | [`Dialect::Anthropic`] |
//! | 5 | a path ending `/responses` | [`Dialect::OpenAiResponses`] |
//! | 6 | a path ending `/chat/completions`, `/completions` or `/embeddings` | [`Dialect::OpenAi`] |
//! | 7 | anything else | [`Dialect::Plain`] |

use crate::headers::Headers;
use crate::json::Object;
use crate::reply::LocalReply;
use crate::sse::Limit;

/// The API a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// OpenAI Chat Completions, Completions, Embeddings.
    OpenAi,
    /// The OpenAI Responses API (its own stream events).
    OpenAiResponses,
    /// The Anthropic Messages API.
    Anthropic,
    /// gRPC (`application/grpc`, `+proto`, `+json`...; not `grpc-web`).
    Grpc,
    /// A WebSocket upgrade.
    WebSocket,
    /// Anything else: answered with the OpenAI error object, the most
    /// widely parsed JSON error shape.
    #[default]
    Plain,
}

/// gRPC status `UNAVAILABLE`: clients retry it.
pub const GRPC_UNAVAILABLE: u32 = 14;
/// gRPC status `DEADLINE_EXCEEDED`: clients do not retry it.
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;
/// The WebSocket close code sent at the end: 1012, service restart (the
/// realtime SDKs reconnect on it; 1000 and 1001 read as a normal end).
pub const WS_CLOSE_SERVICE_RESTART: u16 = 1012;

const DRAIN_MESSAGE: &str = "This server is draining for shutdown and accepts no new requests; retry, another instance will serve it.";

impl Dialect {
    /// Every dialect, in the order of [`Dialect::name`]'s table.
    pub const ALL: [Dialect; 6] = [
        Dialect::OpenAi,
        Dialect::OpenAiResponses,
        Dialect::Anthropic,
        Dialect::Grpc,
        Dialect::WebSocket,
        Dialect::Plain,
    ];

    /// The name used in the configuration and the documentation.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::OpenAiResponses => "openai_responses",
            Dialect::Anthropic => "anthropic",
            Dialect::Grpc => "grpc",
            Dialect::WebSocket => "websocket",
            Dialect::Plain => "plain",
        }
    }

    /// A dialect by name. `websocket` is not one a path can be given: a
    /// WebSocket is told by its upgrade.
    pub fn by_name(name: &str) -> Option<Dialect> {
        Dialect::ALL
            .into_iter()
            .find(|d| d.name() == name && *d != Dialect::WebSocket)
    }

    /// Whether the dialect's response streams are server-sent events the
    /// plugin can end with a final event.
    pub fn has_final_event(self) -> bool {
        !matches!(self, Dialect::Grpc | Dialect::WebSocket)
    }
}

/// A configured path prefix and the dialect its requests speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathDialect {
    pub prefix: String,
    pub dialect: Dialect,
}

/// Decides the dialect of a request (the rules in the module's table).
/// `overrides` is the configuration's `dialects`, longest prefix first.
pub fn detect(overrides: &[PathDialect], headers: &dyn Headers) -> Dialect {
    if headers
        .get("upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"))
    {
        return Dialect::WebSocket;
    }
    // As Envoy tells gRPC (and so answers a gRPC status trailers-only):
    // `application/grpc` or `application/grpc+...`, not `grpc-web`.
    if headers
        .get("content-type")
        .is_some_and(|ct| ct == b"application/grpc" || ct.starts_with(b"application/grpc+"))
    {
        return Dialect::Grpc;
    }
    let path = crate::traffic::path_of(headers);
    if let Some(o) = overrides
        .iter()
        .find(|o| path.starts_with(o.prefix.as_bytes()))
    {
        return o.dialect;
    }
    if path.ends_with(b"/v1/messages") || headers.get("anthropic-version").is_some() {
        return Dialect::Anthropic;
    }
    if path.ends_with(b"/responses") {
        return Dialect::OpenAiResponses;
    }
    if [&b"/chat/completions"[..], b"/completions", b"/embeddings"]
        .iter()
        .any(|end| path.ends_with(end))
    {
        return Dialect::OpenAi;
    }
    Dialect::Plain
}

/// The OpenAI error object, `type` `server_error`:
/// `{"error":{"code","message","param","type"}}`.
pub(crate) fn openai_error_object(message: &str, code: &str) -> String {
    error_object(message, "server_error", code)
}

/// The OpenAI error object of a `kind` (its `type`), members in
/// alphabetical order as the plugin has always written them.
pub(crate) fn error_object(message: &str, kind: &str, code: &str) -> String {
    Object::new()
        .object("error", openai_error(message, kind, code))
        .finish()
}

/// The inner object of the OpenAI error object.
fn openai_error(message: &str, kind: &str, code: &str) -> Object {
    Object::new()
        .str("code", code)
        .str("message", message)
        .null("param")
        .str("type", kind)
}

/// The Anthropic error object: `{"error":{"message","type"},"type":"error"}`.
fn anthropic_error_object(kind: &str, message: &str) -> String {
    Object::new()
        .object(
            "error",
            Object::new().str("message", message).str("type", kind),
        )
        .str("type", "error")
        .finish()
}

/// A gRPC trailers-only answer: HTTP 200, `grpc-status`, and the message
/// as plain text (Envoy sends it as `grpc-message`).
fn grpc_reply(status: u32, message: &str) -> LocalReply {
    LocalReply {
        status: 200,
        headers: Vec::new(),
        body: message.to_string(),
        grpc_status: Some(status),
    }
}

/// The drain rejection in `dialect`'s terms: 503 with `retry-after`,
/// `retry-after-ms` and `x-should-retry` (both official SDKs read
/// `retry-after-ms` first); gRPC: `UNAVAILABLE`.
pub fn draining(dialect: Dialect, retry_after_s: u64) -> LocalReply {
    let body = match dialect {
        Dialect::Grpc => return grpc_reply(GRPC_UNAVAILABLE, DRAIN_MESSAGE),
        Dialect::Anthropic => anthropic_error_object("overloaded_error", DRAIN_MESSAGE),
        _ => openai_error_object(DRAIN_MESSAGE, "service_draining"),
    };
    LocalReply::json(503, body)
        .with_header("retry-after", retry_after_s.to_string())
        .with_header("retry-after-ms", (retry_after_s * 1000).to_string())
        .with_header("x-should-retry", "true")
}

/// The early refusal of a request whose budget cannot do useful work, in
/// `dialect`'s terms: 504 (Anthropic: `timeout_error`); gRPC:
/// `DEADLINE_EXCEEDED`, which clients do not retry.
pub fn deadline_exceeded(dialect: Dialect, budget_ms: u64, min_budget_ms: u64) -> LocalReply {
    let message = format!(
        "The request's deadline leaves {budget_ms} ms, less than the {min_budget_ms} ms minimum this server needs; it was not started."
    );
    let body = match dialect {
        Dialect::Grpc => return grpc_reply(GRPC_DEADLINE_EXCEEDED, &message),
        Dialect::Anthropic => anthropic_error_object("timeout_error", &message),
        _ => openai_error_object(&message, "deadline_exceeded"),
    };
    LocalReply::json(504, body).with_header("x-should-retry", "false")
}

/// The final event that ends an event stream in `dialect`'s terms, and a
/// blank line:
/// - OpenAI and plain: `data: {"error":{...}}` (the SDK raises on the
///   `error` key; no `[DONE]` follows);
/// - OpenAI Responses: `event: error` with the API's error event fields
///   (`type`, `code`, `message`, `param`, `sequence_number`) and the
///   `error` object the SDK raises on;
/// - Anthropic: `event: error` with the Anthropic error object
///   (`overloaded_error` for the drain, `timeout_error` for a deadline;
///   the SDK skips events without an `event:` line and raises on this one).
///
/// gRPC and WebSocket streams are not event streams: their endings are not
/// a body event (see the filter).
pub fn final_event(dialect: Dialect, limit: Limit) -> Vec<u8> {
    let (message, code) = (limit.message(), limit.code());
    match dialect {
        Dialect::Anthropic => {
            let kind = match limit {
                Limit::Drain => "overloaded_error",
                Limit::Deadline => "timeout_error",
            };
            format!(
                "event: error\ndata: {}\n\n",
                anthropic_error_object(kind, message)
            )
            .into_bytes()
        }
        Dialect::OpenAiResponses => {
            let event = Object::new()
                .str("code", code)
                .object("error", openai_error(message, "server_error", code))
                .str("message", message)
                .null("param")
                .u64("sequence_number", 0)
                .str("type", "error")
                .finish();
            format!("event: error\ndata: {event}\n\n").into_bytes()
        }
        _ => format!("data: {}\n\n", openai_error_object(message, code)).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Map = Vec<(String, Vec<u8>)>;

    fn headers(pairs: &[(&str, &str)]) -> Map {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn post(path: &str, extra: &[(&str, &str)]) -> Map {
        let mut h = headers(&[(":method", "POST"), (":path", path)]);
        h.extend(headers(extra));
        h
    }

    #[test]
    fn dialect_rules_in_order() {
        let o = vec![PathDialect {
            prefix: "/claude/".into(),
            dialect: Dialect::Anthropic,
        }];
        let cases: &[(Map, Dialect)] = &[
            (post("/v1/chat/completions", &[]), Dialect::OpenAi),
            (post("/v1/completions?x=1", &[]), Dialect::OpenAi),
            (post("/openai/v1/embeddings", &[]), Dialect::OpenAi),
            (post("/v1/responses", &[]), Dialect::OpenAiResponses),
            (post("/v1/messages", &[]), Dialect::Anthropic),
            (
                post("/proxy/chat", &[("anthropic-version", "2023-06-01")]),
                Dialect::Anthropic,
            ),
            (post("/claude/chat/completions", &[]), Dialect::Anthropic),
            (
                post("/pkg.Svc/Call", &[("content-type", "application/grpc")]),
                Dialect::Grpc,
            ),
            (
                post(
                    "/v1/messages",
                    &[("content-type", "application/grpc+proto")],
                ),
                Dialect::Grpc,
            ),
            (
                post("/v1/realtime", &[("upgrade", "WebSocket")]),
                Dialect::WebSocket,
            ),
            (
                post("/claude/x", &[("upgrade", "websocket")]),
                Dialect::WebSocket,
            ),
            (
                post("/pkg.Svc/Call", &[("content-type", "application/grpc-web")]),
                Dialect::Plain,
            ),
            (
                post("/v1/messages", &[("content-type", "application/grpc;x=1")]),
                Dialect::Anthropic,
            ),
            (post("/", &[]), Dialect::Plain),
            (post("/v1/messages/count_tokens", &[]), Dialect::Plain),
            (headers(&[]), Dialect::Plain),
        ];
        for (h, want) in cases {
            assert_eq!(detect(&o, h), *want, "{h:?}");
        }
    }

    #[test]
    fn names_round_trip_except_websocket() {
        for d in Dialect::ALL {
            match d {
                Dialect::WebSocket => assert_eq!(Dialect::by_name(d.name()), None),
                _ => assert_eq!(Dialect::by_name(d.name()), Some(d)),
            }
        }
        assert_eq!(Dialect::by_name("OpenAI"), None);
    }

    #[test]
    fn every_drain_503_carries_retry_after_and_retry_after_ms() {
        for d in Dialect::ALL.into_iter().filter(|d| *d != Dialect::Grpc) {
            let r = draining(d, 7);
            assert_eq!(r.status, 503, "{d:?}");
            assert_eq!(r.header("retry-after"), Some("7"));
            assert_eq!(r.header("retry-after-ms"), Some("7000"));
            assert_eq!(r.header("x-should-retry"), Some("true"));
            assert_eq!(r.grpc_status, None);
        }
    }

    #[test]
    fn anthropic_replies_are_the_anthropic_error_object() {
        let r = draining(Dialect::Anthropic, 1);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("draining"));
        let r = deadline_exceeded(Dialect::Anthropic, 10, 500);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            (r.status, &v["error"]["type"]),
            (504, &"timeout_error".into())
        );
    }

    #[test]
    fn grpc_refusals_are_trailers_only_with_a_grpc_status_and_plain_text() {
        let r = draining(Dialect::Grpc, 5);
        assert_eq!((r.status, r.grpc_status), (200, Some(GRPC_UNAVAILABLE)));
        assert!(r.body.starts_with("This server is draining"));
        let r = deadline_exceeded(Dialect::Grpc, 10, 500);
        assert_eq!(r.grpc_status, Some(GRPC_DEADLINE_EXCEEDED));
        assert!(r.body.contains("10 ms"), "{}", r.body);
        assert!(!r.body.contains('{'));
    }

    fn event(bytes: &[u8]) -> (Option<String>, serde_json::Value) {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let text = text.strip_suffix("\n\n").expect("ends with a blank line");
        let mut name = None;
        let mut data = None;
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(d).unwrap());
            } else {
                panic!("unexpected line {line:?}");
            }
        }
        (name, data.expect("a data line"))
    }

    #[test]
    fn final_events_speak_each_dialect() {
        let (name, v) = event(&final_event(Dialect::Anthropic, Limit::Drain));
        assert_eq!(name.as_deref(), Some("error"));
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        let (_, v) = event(&final_event(Dialect::Anthropic, Limit::Deadline));
        assert_eq!(v["error"]["type"], "timeout_error");

        let (name, v) = event(&final_event(Dialect::OpenAiResponses, Limit::Drain));
        assert_eq!(name.as_deref(), Some("error"));
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "service_draining");
        assert!(v["sequence_number"].is_u64());
        assert_eq!(v["error"]["code"], "service_draining");

        for d in [Dialect::OpenAi, Dialect::Plain] {
            let (name, v) = event(&final_event(d, Limit::Deadline));
            assert_eq!(name, None);
            assert_eq!(v["error"]["code"], "deadline_exceeded");
        }
        assert!(!Dialect::Grpc.has_final_event());
        assert!(!Dialect::WebSocket.has_final_event());
    }
}
