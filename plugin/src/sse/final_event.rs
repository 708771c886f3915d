//! The final event that ends a stream before a limit: why the stream is
//! ended ([`Limit`]) and the event in the plain dialect.

use crate::dialect::{self, Dialect};

/// Why a stream is ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The request's own deadline.
    Deadline,
    /// The end of the drain's grace period.
    Drain,
}

impl Limit {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Limit::Deadline => "deadline_exceeded",
            Limit::Drain => "service_draining",
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            Limit::Deadline => "The stream reached its deadline and was ended before completion.",
            Limit::Drain => "This server is shutting down; the stream was ended before completion. Retry the request.",
        }
    }
}

/// The final event in the plain dialect: `data: {"error":{...}}` and a
/// blank line (each dialect's: [`dialect::final_event`]).
pub fn final_event(limit: Limit) -> Vec<u8> {
    dialect::final_event(Dialect::Plain, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_event_is_an_sse_data_line_with_the_openai_error() {
        let event = String::from_utf8(final_event(Limit::Drain)).unwrap();
        let json = event
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["error"]["code"], "service_draining");
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["param"].is_null());
        assert!(!json.contains('\n'));
    }
}
