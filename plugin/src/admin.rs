//! Decisions for the admin role: the drain API on a loopback listener.
//!
//! | request | answer |
//! |---|---|
//! | `POST /drain` | 202 and the status (idempotent: the first start time stays) |
//! | `DELETE /drain` | 200 and the status, back to serving |
//! | `GET /drain` | 200 and the status |
//! | other method on `/drain` | 405 |
//! | anything else | 404 |
//! | missing or wrong token (when `admin_token` is set) | 401, before any routing |

use crate::json::Object;

use crate::config::Config;
use crate::drain::{Drain, Phase};
use crate::reply::LocalReply;
use crate::traffic::{header, path_of, Headers};

/// A drain API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Status,
}

/// Routes an admin request, or answers it with an error reply.
pub fn route(cfg: &Config, headers: &dyn Headers) -> Result<Action, LocalReply> {
    if let Some(token) = &cfg.admin_token {
        let presented = header(headers, "authorization").and_then(bearer_token);
        if !presented.is_some_and(|p| constant_time_eq(p, token.as_bytes())) {
            let mut reply = error(401, "missing or wrong bearer token", "unauthorized");
            reply
                .headers
                .push(("www-authenticate", "Bearer".to_string()));
            return Err(reply);
        }
    }
    if path_of(headers) != b"/drain" {
        return Err(error(
            404,
            "unknown admin path; the drain API is POST, DELETE and GET /drain",
            "not_found",
        ));
    }
    match header(headers, ":method").unwrap_or_default() {
        b"POST" => Ok(Action::Start),
        b"DELETE" => Ok(Action::Stop),
        b"GET" | b"HEAD" => Ok(Action::Status),
        _ => {
            let mut reply = error(
                405,
                "method not allowed on /drain; use POST, DELETE or GET",
                "method_not_allowed",
            );
            reply
                .headers
                .push(("allow", "GET, POST, DELETE".to_string()));
            Err(reply)
        }
    }
}

/// The drain as an admin sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub phase: Phase,
    pub drain: Drain,
    pub now_unix_ms: u64,
    pub inflight: u64,
    pub admitted: u64,
    pub rejected_draining: u64,
    pub rejected_deadline: u64,
}

impl Status {
    /// The reply to an action: 202 for a drain start, 200 otherwise.
    pub fn reply(&self, action: Action, warning: Option<&str>) -> LocalReply {
        // Keys in alphabetical order, as the status has always been written.
        let mut body = Object::new()
            .u64("admitted", self.admitted)
            .opt_u64("drain_started_unix_ms", self.drain.started_unix_ms)
            .opt_u64("elapsed_ms", self.drain.elapsed_ms(self.now_unix_ms))
            .u64("inflight", self.inflight)
            .u64("rejected_deadline", self.rejected_deadline)
            .u64("rejected_draining", self.rejected_draining)
            .str("state", self.phase.as_str());
        if let Some(w) = warning {
            body = body.str("warning", w);
        }
        let status = if action == Action::Start { 202 } else { 200 };
        LocalReply::json(status, body.finish())
    }
}

/// What a drain start stores, given what is stored: the first start stays.
pub fn start(current: Drain, now_unix_ms: u64) -> Drain {
    match current.started_unix_ms {
        Some(_) => current,
        None => Drain::started_at(now_unix_ms),
    }
}

fn error(status: u32, message: &str, code: &str) -> LocalReply {
    LocalReply::json(
        status,
        crate::dialect::error_object(message, "invalid_request_error", code),
    )
}

fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Compares without an early exit, so timing tells nothing about where the
/// first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, auth: Option<&str>) -> Vec<(String, Vec<u8>)> {
        let mut h = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
        ];
        if let Some(a) = auth {
            h.push(("authorization".to_string(), a.as_bytes().to_vec()));
        }
        h
    }

    fn admin(token: Option<&str>) -> Config {
        let mut c = Config::parse(br#"{"role":"admin"}"#).unwrap();
        c.admin_token = token.map(str::to_string);
        c
    }

    #[test]
    fn drain_api_routes_by_method() {
        let c = admin(None);
        assert_eq!(route(&c, &req("POST", "/drain", None)), Ok(Action::Start));
        assert_eq!(route(&c, &req("DELETE", "/drain", None)), Ok(Action::Stop));
        assert_eq!(route(&c, &req("GET", "/drain?x", None)), Ok(Action::Status));
        assert_eq!(
            route(&c, &req("PUT", "/drain", None)).unwrap_err().status,
            405
        );
        for path in ["/", "/drain/", "/drainx", "/stats", ""] {
            let r = route(&c, &req("GET", path, None)).unwrap_err();
            assert_eq!(r.status, 404, "{path}");
            assert!(r.body.contains(r#""code":"not_found""#));
        }
    }

    #[test]
    fn token_is_required_when_configured_even_for_unknown_paths() {
        let c = admin(Some("s3cret"));
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cre"),
            Some("Basic s3cret"),
            Some("s3cret"),
        ] {
            let r = route(&c, &req("POST", "/drain", auth)).unwrap_err();
            assert_eq!(r.status, 401, "{auth:?}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        assert_eq!(
            route(&c, &req("GET", "/nope", None)).unwrap_err().status,
            401
        );
        for ok in ["Bearer s3cret", "bearer s3cret", "  Bearer   s3cret "] {
            assert_eq!(
                route(&c, &req("POST", "/drain", Some(ok))),
                Ok(Action::Start),
                "{ok}"
            );
        }
    }

    #[test]
    fn second_drain_start_keeps_first_start_time() {
        let first = start(Drain::SERVING, 1_000);
        assert_eq!(first, Drain::started_at(1_000));
        assert_eq!(start(first, 9_000), Drain::started_at(1_000));
    }

    #[test]
    fn status_reply_has_every_documented_field() {
        let s = Status {
            phase: Phase::Rejecting,
            drain: Drain::started_at(1_000),
            now_unix_ms: 7_500,
            inflight: 2,
            admitted: 10,
            rejected_draining: 3,
            rejected_deadline: 1,
        };
        let r = s.reply(Action::Start, None);
        assert_eq!(r.status, 202);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"state":"rejecting","inflight":2,"drain_started_unix_ms":1000,"elapsed_ms":6500,
                   "admitted":10,"rejected_draining":3,"rejected_deadline":1})
        );
        let serving = Status {
            phase: Phase::Serving,
            drain: Drain::SERVING,
            ..s
        };
        let v: serde_json::Value =
            serde_json::from_str(&serving.reply(Action::Status, Some("x")).body).unwrap();
        assert!(v["drain_started_unix_ms"].is_null() && v["elapsed_ms"].is_null());
        assert_eq!(v["warning"], "x");
    }

    #[test]
    fn constant_time_eq_matches_only_equal_inputs() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        for (a, b) in [
            (&b"abc"[..], &b"abd"[..]),
            (b"abc", b"ab"),
            (b"ab", b"abc"),
            (b"", b"a"),
            (b"a\0", b"a"),
        ] {
            assert!(!constant_time_eq(a, b));
        }
    }
}
