//! Local replies: readiness answers and JSON errors (each dialect's in
//! [`crate::dialect`]).

use crate::json::Object;

use crate::config::Config;
use crate::dialect::{self, Dialect};
use crate::drain::Phase;

/// A response the plugin sends itself instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    /// Empty for HEAD. With `grpc_status`, the `grpc-message` text.
    pub body: String,
    /// A gRPC status: the host sends a trailers-only gRPC response.
    pub grpc_status: Option<u32>,
}

impl LocalReply {
    /// A JSON reply.
    pub fn json(status: u32, body: String) -> LocalReply {
        LocalReply {
            status,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body,
            grpc_status: None,
        }
    }

    pub(crate) fn with_header(
        mut self,
        name: &'static str,
        value: impl Into<String>,
    ) -> LocalReply {
        self.headers.push((name, value.into()));
        self
    }

    /// A header's value, by name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The OpenAI error object: `{"error":{"message","type","param","code"}}`.
pub fn openai_error(status: u32, message: &str, code: &str) -> LocalReply {
    LocalReply::json(status, dialect::openai_error_object(message, code))
}

/// Readiness: 200 while serving, 503 with the state from drain start on.
pub fn health(phase: Phase, head: bool) -> LocalReply {
    let status = if phase == Phase::Serving { 200 } else { 503 };
    let mut reply = LocalReply::json(status, Object::new().str("status", phase.as_str()).finish());
    if head {
        reply.body.clear();
    }
    reply
}

/// The drain rejection in the plain dialect (see [`crate::dialect`]).
pub fn draining(cfg: &Config) -> LocalReply {
    dialect::draining(Dialect::Plain, cfg.retry_after_s)
}

/// The early deadline refusal in the plain dialect.
pub fn deadline_exceeded(budget_ms: u64, min_budget_ms: u64) -> LocalReply {
    dialect::deadline_exceeded(Dialect::Plain, budget_ms, min_budget_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_the_openai_error_object() {
        let r = deadline_exceeded(10, 5000);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let e = v["error"].as_object().unwrap();
        let mut keys: Vec<_> = e.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["code", "message", "param", "type"]);
        assert_eq!(r.status, 504);
        assert_eq!(r.header("content-type"), Some("application/json"));
    }

    #[test]
    fn head_health_reply_has_no_body() {
        assert_eq!(health(Phase::Draining, true).body, "");
        assert_eq!(health(Phase::Draining, true).status, 503);
    }
}
