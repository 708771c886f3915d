//! Envoy's local reply to a gRPC request: a trailers-only response.
//!
//! Envoy 1.40 (`Http::Utility::prepareLocalReply` with `is_grpc`) answers a
//! request it reads as gRPC with HTTP 200, `content-type:
//! application/grpc`, `grpc-status` (the one the filter passed, else the
//! HTTP status mapped by `Grpc::Utility::httpToGrpcStatus`) and, for a
//! non-empty body and not a HEAD request, the body as `grpc-message`,
//! percent-encoded; no body and no `content-length`: the headers end the
//! stream. `tests/scenarios/contract.json` compares this with a real Envoy.

use crate::headers::Headers;

/// Whether Envoy reads a request as gRPC (`Grpc::Common::isGrpcRequestHeaders`):
/// it has a `:path`, and its `content-type` is `application/grpc` or
/// starts with `application/grpc+` (`application/grpc-web` and
/// `application/grpc;...` are not gRPC).
pub(crate) fn is_grpc_request(headers: &Headers) -> bool {
    let Some(rest) = headers
        .get_bytes("content-type")
        .and_then(|ct| ct.strip_prefix(b"application/grpc"))
    else {
        return false;
    };
    headers.contains(":path") && (rest.is_empty() || rest[0] == b'+')
}

/// Envoy's mapping of an HTTP status to a gRPC status
/// (`Grpc::Utility::httpToGrpcStatus`, after gRPC's
/// `http-grpc-status-mapping.md`): 400 INTERNAL, 401 UNAUTHENTICATED, 403
/// PERMISSION_DENIED, 404 UNIMPLEMENTED, 429, 502, 503 and 504 UNAVAILABLE,
/// anything else UNKNOWN.
pub fn http_to_grpc_status(http_status: u32) -> u32 {
    match http_status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// The gRPC status a filter passes with `proxy_send_local_response`, as
/// Envoy takes it: 0 (OK) to 16 (UNAUTHENTICATED); anything else (the SDKs
/// pass -1 for none) is none.
pub(crate) fn passed_grpc_status(raw: i32) -> Option<i32> {
    (0..=16).contains(&raw).then_some(raw)
}

/// `grpc-message` as Envoy writes it (`PercentEncoding::encode` with `%`
/// reserved): bytes below a space, from `~` (0x7E) up, and `%` become
/// `%XX` in upper-case hex; the rest is kept.
pub fn percent_encode_grpc_message(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if !(b' '..b'~').contains(&b) || b == b'%' {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// Turns a local reply's headers (`:status` and the filter's headers) into
/// Envoy's trailers-only gRPC reply, in Envoy's order: `:status` becomes
/// 200 in place, `content-type` is set (in place if the filter gave one),
/// then `grpc-status` unless the filter gave one, then `grpc-message`;
/// `content-length` goes. The reply carries no body.
pub(crate) fn trailers_only(
    headers: &mut Headers,
    http_status: u32,
    grpc_status: Option<i32>,
    body: &[u8],
    head_request: bool,
) {
    headers.replace(":status", "200");
    headers.replace("content-type", "application/grpc");
    if headers
        .get_bytes("grpc-status")
        .is_none_or(<[u8]>::is_empty)
    {
        let status = grpc_status
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or_else(|| http_to_grpc_status(http_status));
        headers.replace("grpc-status", status.to_string());
    }
    if !body.is_empty() && !head_request {
        headers.replace("grpc-message", percent_encode_grpc_message(body));
    }
    headers.remove("content-length");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content_type: &str) -> Headers {
        Headers::from_pairs([
            (":method", "POST"),
            (":path", "/pkg.Svc/Call"),
            ("content-type", content_type),
        ])
    }

    #[test]
    fn grpc_requests_are_told_as_envoy_tells_them() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
        ] {
            assert!(is_grpc_request(&request(ct)), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc;charset=utf-8",
            "application/json",
            "Application/grpc",
            "",
        ] {
            assert!(!is_grpc_request(&request(ct)), "{ct}");
        }
        let no_path = Headers::from_pairs([("content-type", "application/grpc")]);
        assert!(!is_grpc_request(&no_path));
    }

    #[test]
    fn http_statuses_map_to_grpc_statuses_as_in_envoy() {
        let cases = [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (200, 2),
            (500, 2),
            (501, 2),
        ];
        for (http, grpc) in cases {
            assert_eq!(http_to_grpc_status(http), grpc, "{http}");
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded_as_envoy_does() {
        assert_eq!(
            percent_encode_grpc_message(b"The request's deadline; not started."),
            "The request's deadline; not started."
        );
        assert_eq!(
            percent_encode_grpc_message("50% ~ caf\u{e9}\n\t\x7f".as_bytes()),
            "50%25 %7E caf%C3%A9%0A%09%7F"
        );
        assert_eq!(percent_encode_grpc_message(b"}|{ `^"), "}|{ `^");
    }

    #[test]
    fn passed_statuses_outside_the_known_range_are_none() {
        assert_eq!(passed_grpc_status(-1), None);
        assert_eq!(passed_grpc_status(17), None);
        assert_eq!(passed_grpc_status(0), Some(0));
        assert_eq!(passed_grpc_status(16), Some(16));
    }

    fn pairs(h: &Headers) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    #[test]
    fn a_local_reply_becomes_trailers_only() {
        let mut h = Headers::from_pairs([(":status", "200"), ("x-extra", "1")]);
        trailers_only(&mut h, 200, Some(4), b"too late: 10%", false);
        assert_eq!(
            pairs(&h),
            [
                (":status", "200"),
                ("x-extra", "1"),
                ("content-type", "application/grpc"),
                ("grpc-status", "4"),
                ("grpc-message", "too late: 10%25"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        // No status passed: the HTTP status is mapped; a HEAD request and an
        // empty body get no grpc-message; a filter's content-type and
        // grpc-status are kept in place (the type rewritten).
        let mut h = Headers::from_pairs([
            (":status", "503"),
            ("content-type", "text/plain"),
            ("grpc-status", "8"),
            ("content-length", "5"),
        ]);
        trailers_only(&mut h, 503, None, b"hello", true);
        assert_eq!(
            pairs(&h),
            [
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "8")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let mut h = Headers::from_pairs([(":status", "504")]);
        trailers_only(&mut h, 504, None, b"", false);
        assert_eq!(h.get("grpc-status"), Some("14"));
        assert_eq!(h.get("grpc-message"), None);
    }
}
