//! Decisions for the traffic role: answer readiness, admit and set a
//! deadline, or refuse with a local reply.

use crate::config::{Config, UpstreamHeaders};
use crate::deadline::{self, Incoming};
use crate::dialect::{self, Dialect};
use crate::drain::{Admit, Drain};
use crate::reply::{self, LocalReply};

pub use crate::headers::Headers;

/// Finds a header's value by lowercase name.
pub fn header<'h>(headers: &'h dyn Headers, name: &str) -> Option<&'h [u8]> {
    headers.get(name)
}

/// `:path` without its query string.
pub fn path_of(headers: &dyn Headers) -> &[u8] {
    let full = header(headers, ":path").unwrap_or_default();
    full.split(|&b| b == b'?').next().unwrap_or_default()
}

/// The budget and deadline of a request that has none: a WebSocket session
/// whose upgrade carries no deadline, when
/// `deadline.websocket_default_timeout_ms` is not set.
pub use crate::config::NO_DEADLINE;

/// A request the plugin lets through, with the headers to set on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// [`NO_DEADLINE`] for none.
    pub budget_ms: u64,
    /// [`NO_DEADLINE`] for none.
    pub deadline_unix_ms: u64,
    /// Headers to set (replacing any present) toward the upstream.
    pub set_headers: Vec<(&'static str, String)>,
}

/// What to do with a request on the traffic listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A readiness probe, answered locally; never forwarded nor counted.
    Health(LocalReply),
    /// Forward and count in flight.
    Forward(Forward),
    /// Draining past the admit window (or too little grace left): the 503 contract.
    RejectDraining(LocalReply),
    /// Budget below `min_budget_ms`: 504.
    RejectDeadline(LocalReply),
}

/// A verdict plus what was noticed on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The API the request speaks (see [`crate::dialect`]).
    pub dialect: Dialect,
    /// Malformed deadline headers seen (skipped).
    pub malformed_deadlines: u32,
}

/// Decides a request's fate. `inflight` is only called for readiness probes
/// (it costs a host call).
pub fn decide(
    cfg: &Config,
    drain: Drain,
    now_unix_ms: u64,
    headers: &dyn Headers,
    inflight: impl FnOnce() -> u64,
) -> Decision {
    let method = header(headers, ":method").unwrap_or_default();
    if (method == b"GET" || method == b"HEAD") && path_of(headers) == cfg.health_path.as_bytes() {
        let phase = drain.phase(now_unix_ms, inflight(), cfg.windows());
        return Decision {
            verdict: Verdict::Health(reply::health(phase, method == b"HEAD")),
            dialect: Dialect::Plain,
            malformed_deadlines: 0,
        };
    }

    let Incoming {
        budget_ms: asked,
        malformed,
    } = deadline::incoming(|name| header(headers, name), now_unix_ms);
    let dialect = dialect::detect(&cfg.dialects, headers);
    let decision = |verdict| Decision {
        verdict,
        dialect,
        malformed_deadlines: malformed,
    };
    let draining = || Verdict::RejectDraining(dialect::draining(dialect, cfg.retry_after_s));
    let d = &cfg.deadline;
    let grace_left_ms = match drain.admit(now_unix_ms, cfg.windows()) {
        Admit::Unlimited => None,
        Admit::Within { grace_left_ms } => Some(grace_left_ms),
        Admit::Reject => return decision(draining()),
    };
    // A WebSocket session (a realtime session lasts many minutes) takes no
    // default meant for requests: only its own or one configured for it.
    let default = match dialect {
        Dialect::WebSocket => d.websocket_default_timeout_ms,
        _ => d.default_timeout_ms,
    };
    // Both defaults are at most `max_timeout_ms`, or none.
    let budget = asked.map_or(default, |b| b.min(d.max_timeout_ms));
    if budget < d.min_budget_ms {
        return decision(Verdict::RejectDeadline(dialect::deadline_exceeded(
            dialect,
            budget,
            d.min_budget_ms,
        )));
    }
    let budget = match grace_left_ms {
        None => budget,
        // Too little grace left to do useful work: the drain is the cause, so
        // the client gets the retryable 503, not a 504.
        Some(left) if left < d.min_budget_ms => return decision(draining()),
        Some(left) => budget.min(left),
    };
    if budget == NO_DEADLINE {
        return decision(Verdict::Forward(Forward {
            budget_ms: NO_DEADLINE,
            deadline_unix_ms: NO_DEADLINE,
            set_headers: Vec::new(),
        }));
    }

    let deadline_unix_ms = now_unix_ms.saturating_add(budget);
    let budget_text = deadline::decimal(budget);
    // Every header set is a write in Envoy: `x-request-*` only where the
    // configuration asks for them on every request, or where the request
    // carries them itself (so no other deadline than the one given reaches
    // the upstream).
    let all = d.upstream_headers == UpstreamHeaders::All;
    let mut set_headers = Vec::with_capacity(4);
    if all || header(headers, deadline::REQUEST_DEADLINE).is_some() {
        set_headers.push((
            deadline::REQUEST_DEADLINE,
            deadline::decimal(deadline_unix_ms),
        ));
    }
    if all || header(headers, deadline::REQUEST_TIMEOUT).is_some() {
        set_headers.push((deadline::REQUEST_TIMEOUT, budget_text.clone()));
    }
    set_headers.push((deadline::ENVOY_UPSTREAM_TIMEOUT, budget_text));
    if dialect == Dialect::Grpc {
        set_headers.push((
            deadline::GRPC_TIMEOUT,
            deadline::format_grpc_timeout(budget),
        ));
    }
    decision(Verdict::Forward(Forward {
        budget_ms: budget,
        deadline_unix_ms,
        set_headers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::Phase;

    const NOW: u64 = 1_764_000_000_000;

    fn req(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        let mut h = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
            (":authority".to_string(), b"llm".to_vec()),
        ];
        h.extend(
            extra
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
        );
        h
    }

    fn cfg() -> Config {
        Config::default()
    }

    fn cfg_all() -> Config {
        Config::parse(br#"{"deadline":{"upstream_headers":"all"}}"#).unwrap()
    }

    fn forward(d: Decision) -> Forward {
        match d.verdict {
            Verdict::Forward(f) => f,
            other => panic!("expected forward, got {other:?}"),
        }
    }

    /// What the default configuration forwards, serving, `headers`.
    fn serving(headers: &dyn Headers) -> Forward {
        forward(decide(&cfg(), Drain::SERVING, NOW, headers, || 0))
    }

    fn set<'a>(f: &'a Forward, name: &str) -> Option<&'a str> {
        f.set_headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn forwarded_request_gets_all_deadline_headers_when_configured() {
        let h = req(
            "POST",
            "/v1/chat/completions",
            &[("x-request-timeout-ms", "12000")],
        );
        let f = forward(decide(&cfg_all(), Drain::SERVING, NOW, &h, || 0));
        assert_eq!(f.budget_ms, 12_000);
        assert_eq!(set(&f, "x-request-deadline-ms"), Some("1764000012000"));
        assert_eq!(set(&f, "x-request-timeout-ms"), Some("12000"));
        assert_eq!(set(&f, "x-envoy-upstream-rq-timeout-ms"), Some("12000"));
        assert_eq!(set(&f, "grpc-timeout"), None);
        let f = forward(decide(
            &cfg_all(),
            Drain::SERVING,
            NOW,
            &req("POST", "/", &[]),
            || 0,
        ));
        assert_eq!(f.set_headers.len(), 3);
        assert_eq!(set(&f, "x-request-timeout-ms"), Some("60000"));
    }

    #[test]
    fn by_default_only_the_router_header_and_the_requests_own_deadline_headers_are_set() {
        // Nothing asked: only what Envoy's router enforces.
        let f = serving(&req("POST", "/", &[]));
        assert_eq!(
            f.set_headers,
            [("x-envoy-upstream-rq-timeout-ms", "60000".to_string())]
        );
        // A deadline header the request carries is rewritten to the
        // deadline given (capped here), the other is not added.
        let h = req("POST", "/", &[("x-request-timeout-ms", "99999999")]);
        let f = serving(&h);
        assert_eq!(
            f.set_headers,
            [
                ("x-request-timeout-ms", "600000".to_string()),
                ("x-envoy-upstream-rq-timeout-ms", "600000".to_string())
            ]
        );
        let h = req("POST", "/", &[("x-request-deadline-ms", "1764000020000")]);
        let f = serving(&h);
        assert_eq!(
            f.set_headers,
            [
                ("x-request-deadline-ms", "1764000020000".to_string()),
                ("x-envoy-upstream-rq-timeout-ms", "20000".to_string())
            ]
        );
        // A malformed one is replaced too.
        let h = req("POST", "/", &[("x-request-timeout-ms", "soon")]);
        let f = serving(&h);
        assert_eq!(set(&f, "x-request-timeout-ms"), Some("60000"));
    }

    #[test]
    fn budget_is_default_without_header_and_capped_at_max() {
        let f = serving(&req("GET", "/", &[]));
        assert_eq!(f.budget_ms, 60_000);
        let h = req("GET", "/", &[("x-request-timeout-ms", "99999999")]);
        let f = serving(&h);
        assert_eq!(f.budget_ms, 600_000);
        // A client cannot raise the router timeout by sending it itself.
        let h = req(
            "GET",
            "/",
            &[("x-envoy-upstream-rq-timeout-ms", "99999999")],
        );
        let f = serving(&h);
        assert_eq!(set(&f, "x-envoy-upstream-rq-timeout-ms"), Some("60000"));
    }

    #[test]
    fn grpc_request_gets_rewritten_grpc_timeout() {
        let h = req(
            "POST",
            "/svc/Method",
            &[
                ("content-type", "application/grpc+proto"),
                ("grpc-timeout", "20S"),
            ],
        );
        let f = serving(&h);
        assert_eq!(f.budget_ms, 20_000);
        assert_eq!(set(&f, "grpc-timeout"), Some("20000m"));
    }

    #[test]
    fn budget_below_minimum_is_refused_early_with_504() {
        let h = req(
            "POST",
            "/v1/chat/completions",
            &[("x-request-timeout-ms", "4999")],
        );
        let d = decide(&cfg(), Drain::SERVING, NOW, &h, || 0);
        let Verdict::RejectDeadline(r) = d.verdict else {
            panic!("{d:?}")
        };
        assert_eq!(r.status, 504);
        assert!(
            r.body.contains(r#""code":"deadline_exceeded""#),
            "{}",
            r.body
        );
        // An absolute deadline already in the past, too.
        let past = (NOW - 1).to_string();
        let h = req("POST", "/", &[("x-request-deadline-ms", &past)]);
        assert!(matches!(
            decide(&cfg(), Drain::SERVING, NOW, &h, || 0).verdict,
            Verdict::RejectDeadline(_)
        ));
    }

    #[test]
    fn malformed_deadline_is_counted_and_default_applies() {
        let h = req(
            "POST",
            "/",
            &[("x-request-timeout-ms", "-3"), ("grpc-timeout", "1x")],
        );
        let d = decide(&cfg(), Drain::SERVING, NOW, &h, || 0);
        assert_eq!(d.malformed_deadlines, 2);
        assert_eq!(forward(d).budget_ms, 60_000);
    }

    #[test]
    fn readiness_answers_locally_with_state() {
        let c = cfg();
        let cases = [
            (Drain::SERVING, 0, 200, "serving"),
            (Drain::started_at(NOW - 1_000), 4, 503, "draining"),
            (Drain::started_at(NOW - 6_000), 4, 503, "rejecting"),
            (Drain::started_at(NOW - 6_000), 0, 503, "drained"),
        ];
        for (drain, inflight, status, state) in cases {
            let d = decide(
                &c,
                drain,
                NOW,
                &req("GET", "/healthz/ready?probe=1", &[]),
                || inflight,
            );
            let Verdict::Health(r) = d.verdict else {
                panic!("{d:?}")
            };
            assert_eq!(r.status, status);
            assert_eq!(r.body, format!("{{\"status\":\"{state}\"}}"));
        }
        // Other methods on the health path are ordinary traffic.
        let d = decide(
            &c,
            Drain::SERVING,
            NOW,
            &req("POST", "/healthz/ready", &[]),
            || 0,
        );
        assert!(matches!(d.verdict, Verdict::Forward(_)));
    }

    #[test]
    fn admitted_during_drain_deadline_ends_inside_grace() {
        let c = cfg(); // admit 5 s, grace 30 s
        let drain = Drain::started_at(NOW - 2_000);
        let f = forward(decide(&c, drain, NOW, &req("POST", "/", &[]), || 0));
        assert_eq!(f.budget_ms, 28_000);
        assert_eq!(f.deadline_unix_ms, NOW - 2_000 + 30_000);
        // A shorter client budget is kept.
        let h = req("POST", "/", &[("x-request-timeout-ms", "9000")]);
        assert_eq!(forward(decide(&c, drain, NOW, &h, || 0)).budget_ms, 9_000);
    }

    #[test]
    fn new_request_after_admit_window_gets_503_contract() {
        let d = decide(
            &cfg(),
            Drain::started_at(NOW - 5_000),
            NOW,
            &req("POST", "/", &[]),
            || 3,
        );
        let Verdict::RejectDraining(r) = d.verdict else {
            panic!("{d:?}")
        };
        crate::contract::assert_drain_rejection(
            r.status,
            &|name| r.header(name).map(str::to_owned),
            r.body.as_bytes(),
            5,
        );
    }

    #[test]
    fn refusals_speak_the_request_dialect() {
        let c = cfg();
        let late = Drain::started_at(NOW - 5_000);
        let anthropic = req("POST", "/v1/messages", &[]);
        let d = decide(&c, late, NOW, &anthropic, || 0);
        assert_eq!(d.dialect, Dialect::Anthropic);
        let Verdict::RejectDraining(r) = d.verdict else {
            panic!("{d:?}")
        };
        assert!(
            r.body.contains(r#""type":"overloaded_error""#),
            "{}",
            r.body
        );
        let grpc = req(
            "POST",
            "/pkg.Svc/Call",
            &[
                ("content-type", "application/grpc"),
                ("grpc-timeout", "10m"),
            ],
        );
        let d = decide(&c, Drain::SERVING, NOW, &grpc, || 0);
        let Verdict::RejectDeadline(r) = d.verdict else {
            panic!("{d:?}")
        };
        assert_eq!(r.grpc_status, Some(dialect::GRPC_DEADLINE_EXCEEDED));
        let d = decide(&c, late, NOW, &grpc, || 0);
        let Verdict::RejectDraining(r) = d.verdict else {
            panic!("{d:?}")
        };
        assert_eq!(r.grpc_status, Some(dialect::GRPC_UNAVAILABLE));
    }

    #[test]
    fn websocket_sessions_take_no_default_deadline_unless_configured() {
        let upgrade = |extra: &[(&str, &str)]| {
            let mut h = req("GET", "/v1/realtime", &[("upgrade", "websocket")]);
            h.extend(req("GET", "/", extra).into_iter().skip(3));
            h
        };
        // No deadline, no deadline header: the session lives until it ends.
        let f = serving(&upgrade(&[]));
        assert_eq!(f.budget_ms, NO_DEADLINE);
        assert_eq!(f.deadline_unix_ms, NO_DEADLINE);
        assert_eq!(f.set_headers, []);
        // Ordinary requests keep the default.
        let f = serving(&req("GET", "/", &[]));
        assert_eq!(f.budget_ms, 60_000);
        // A deadline the client sends applies, capped, and is refused below
        // the minimum budget.
        let h = upgrade(&[("x-request-timeout-ms", "900000")]);
        let f = serving(&h);
        assert_eq!(f.budget_ms, 600_000);
        assert_eq!(set(&f, "x-envoy-upstream-rq-timeout-ms"), Some("600000"));
        let h = upgrade(&[("x-request-timeout-ms", "100")]);
        let d = decide(&cfg(), Drain::SERVING, NOW, &h, || 0);
        assert!(matches!(d.verdict, Verdict::RejectDeadline(_)), "{d:?}");
        // A configured WebSocket default applies.
        let c = Config::parse(
            br#"{"deadline":{"websocket_default_timeout_ms":1800000,"max_timeout_ms":3600000}}"#,
        )
        .unwrap();
        let f = forward(decide(&c, Drain::SERVING, NOW, &upgrade(&[]), || 0));
        assert_eq!(f.budget_ms, 1_800_000);
        assert_eq!(f.deadline_unix_ms, NOW + 1_800_000);
        // Admitted during a drain: the deadline ends inside the grace.
        let drain = Drain::started_at(NOW - 2_000);
        let f = forward(decide(&cfg(), drain, NOW, &upgrade(&[]), || 0));
        assert_eq!(f.budget_ms, 28_000);
        assert_eq!(f.deadline_unix_ms, NOW - 2_000 + 30_000);
    }

    #[test]
    fn too_little_grace_left_is_a_drain_rejection_not_a_deadline_one() {
        let c = Config::parse(br#"{"admit_window_ms":10000,"grace_ms":12000}"#).unwrap();
        let d = decide(
            &c,
            Drain::started_at(NOW - 8_000),
            NOW,
            &req("POST", "/", &[]),
            || 0,
        );
        assert!(matches!(d.verdict, Verdict::RejectDraining(_)), "{d:?}");
    }

    #[test]
    fn phase_for_health_uses_inflight_only_when_needed() {
        let d = decide(&cfg(), Drain::SERVING, NOW, &req("POST", "/", &[]), || {
            panic!("inflight read for a plain request")
        });
        assert!(matches!(d.verdict, Verdict::Forward(_)));
        assert_eq!(Phase::Drained.as_str(), "drained");
    }

    /// Records every name looked up.
    struct Asked<'a>(&'a [(String, Vec<u8>)], std::cell::RefCell<Vec<String>>);

    impl Headers for Asked<'_> {
        fn get(&self, name: &str) -> Option<&[u8]> {
            self.1.borrow_mut().push(name.to_string());
            Headers::get(self.0, name)
        }
    }

    #[test]
    fn a_forwarded_request_looks_up_only_names_read_in_the_one_pass() {
        // `headers::Wire` keeps these as it checks the layout: no pass over
        // the map for each.
        for h in [
            req("POST", "/v1/chat/completions", &[]),
            req(
                "POST",
                "/v1/messages",
                &[("anthropic-version", "2023-06-01")],
            ),
            req("POST", "/svc/M", &[("content-type", "application/grpc")]),
            req("GET", "/ws", &[("upgrade", "websocket")]),
            req("POST", "/", &[("x-envoy-expected-rq-timeout-ms", "9000")]),
            req("GET", "/healthz", &[]),
        ] {
            for c in [cfg(), cfg_all()] {
                let asked = Asked(&h, Default::default());
                let d = decide(&c, Drain::SERVING, NOW, &asked, || 0);
                let mut names = asked.1.take();
                if let Verdict::Forward(f) = d.verdict {
                    names.extend(f.set_headers.iter().map(|(n, _)| n.to_string()));
                }
                for name in names {
                    assert!(crate::headers::KNOWN.contains(&name.as_str()), "{name}");
                }
            }
        }
    }
}
