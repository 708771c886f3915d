//! The drainpipe plugin's contract, run against the shim with a manual
//! clock: readiness, drain states over time, the 503 contract, deadline
//! headers and the admin role. Needs the release plugin (`cargo xtask
//! build`).

use std::sync::OnceLock;
use std::time::Duration;

use drainpipe::contract::assert_drain_rejection;
use drainpipe_shim::{Clock, Host, LocalResponse, PluginConfig, StartError, Wasm, Worker};
use drainpipe_tests::guests::plugin_wasm;
use serde_json::Value;

/// A fixed start time for the manual clock: 2023-11-14T22:13:20Z.
const T0_MS: u64 = 1_700_000_000_000;

/// The release plugin, compiled once per test binary.
fn drainpipe() -> Wasm {
    static WASM: OnceLock<Wasm> = OnceLock::new();
    WASM.get_or_init(|| {
        let path = plugin_wasm().unwrap_or_else(|e| panic!("{e:#}"));
        Wasm::from_file(&path).unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()))
    })
    .clone()
}

const TRAFFIC: &str = r#"{"role":"traffic","admit_window_ms":5000,"grace_ms":30000}"#;
const ADMIN: &str = r#"{"role":"admin"}"#;

fn host_with(traffic: &str, admin: &str) -> (Host, Clock) {
    let clock = Clock::manual(T0_MS);
    let host = Host::builder(drainpipe())
        .vm_id("drainpipe")
        .clock(clock.clone())
        .plugin(PluginConfig::new("traffic", traffic))
        .plugin(PluginConfig::new("admin", admin))
        .build()
        .expect("build the host");
    (host, clock)
}

fn host() -> (Host, Clock) {
    host_with(TRAFFIC, ADMIN)
}

fn json(reply: &LocalResponse) -> Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", reply.body_text()))
}

fn admin(worker: &Worker, method: &str, path: &str, extra: &[(&str, &str)]) -> LocalResponse {
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", "localhost"),
    ];
    headers.extend_from_slice(extra);
    let mut s = worker.http_stream("admin").unwrap();
    let out = s.request_headers(headers, true);
    let reply = out.local_response().cloned();
    reply.unwrap_or_else(|| panic!("admin {method} {path}: expected a local reply, got {out:#?}"))
}

fn get(path: &str) -> Vec<(&str, &str)> {
    vec![(":method", "GET"), (":path", path), (":authority", "api")]
}

#[test]
fn readiness_is_200_serving_then_503_from_drain_start_on() {
    let (host, _) = host();
    let w = host.worker().unwrap();
    let mut s = w.http_stream("traffic").unwrap();
    let ready = s.request_headers(get("/healthz/ready"), true);
    let reply = ready.expect_local_response(200);
    assert_eq!(json(reply)["status"], "serving");
    assert_eq!(admin(&w, "POST", "/drain", &[]).status, 202);
    assert_eq!(readiness(&w, 503), "draining");
}

/// A readiness probe on a new stream: its reply must have `status`; gives
/// the state it reports.
fn readiness(w: &Worker, status: u32) -> String {
    let mut s = w.http_stream("traffic").unwrap();
    let reply = s
        .request_headers(get("/healthz/ready"), true)
        .expect_local_response(status)
        .clone();
    json(&reply)["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn new_request_within_admit_window_is_forwarded_with_deadline_clamped_to_grace() {
    let (host, clock) = host();
    let w = host.worker().unwrap();
    admin(&w, "POST", "/drain", &[]);
    clock.advance(Duration::from_secs(4));
    let mut s = w.http_stream("traffic").unwrap();
    let out = s.request_headers(get("/v1/chat/completions"), true);
    let h = out.expect_continue().headers();
    // Default budget 60 s, clamped to what is left of the 30 s grace.
    assert_eq!(h.get("x-envoy-upstream-rq-timeout-ms"), Some("26000"));
}

#[test]
fn new_request_during_drain_gets_503_with_retry_after() {
    let (host, clock) = host();
    let w = host.worker().unwrap();
    admin(&w, "POST", "/drain", &[]);
    clock.advance(Duration::from_millis(5001));
    let mut s = w.http_stream("traffic").unwrap();
    let out = s.request_headers(get("/v1/chat/completions"), true);
    let reply = out.expect_local_response(503);
    assert_drain_rejection(
        reply.status,
        &|name| reply.header(name).map(str::to_owned),
        &reply.body,
        5,
    );
    assert_eq!(host.metrics().value("drainpipe_rejected_draining"), Some(1));
}

#[test]
fn by_default_the_router_timeout_is_set_and_only_the_requests_own_deadline_header_rewritten() {
    let (host, _) = host();
    let w = host.worker().unwrap();
    let mut s = w.http_stream("traffic").unwrap();
    let mut headers = get("/v1/completions");
    headers.push(("x-request-timeout-ms", "12000"));
    let out = s.request_headers(headers, true);
    let h = out.expect_continue().headers();
    assert_eq!(h.get("x-request-timeout-ms"), Some("12000"));
    assert_eq!(h.get("x-request-deadline-ms"), None);
    assert_eq!(h.get("x-envoy-upstream-rq-timeout-ms"), Some("12000"));
    let mut s = w.http_stream("traffic").unwrap();
    let h = s.request_headers(get("/v1/completions"), true);
    let h = h.expect_continue().headers();
    assert_eq!(h.get("x-request-timeout-ms"), None);
    assert_eq!(h.get("x-envoy-upstream-rq-timeout-ms"), Some("60000"));
}

#[test]
fn deadline_headers_reach_the_upstream_from_x_request_timeout_ms_with_upstream_headers_all() {
    let traffic = r#"{"role":"traffic","deadline":{"upstream_headers":"all"}}"#;
    let (host, _) = host_with(traffic, ADMIN);
    let w = host.worker().unwrap();
    let mut s = w.http_stream("traffic").unwrap();
    let mut headers = get("/v1/completions");
    headers.push(("x-request-timeout-ms", "12000"));
    let out = s.request_headers(headers, true);
    let h = out.expect_continue().headers();
    assert_eq!(h.get("x-request-timeout-ms"), Some("12000"));
    let deadline = (T0_MS + 12_000).to_string();
    assert_eq!(h.get("x-request-deadline-ms"), Some(deadline.as_str()));
    assert_eq!(h.get("x-envoy-upstream-rq-timeout-ms"), Some("12000"));
}

#[test]
fn budget_below_the_minimum_is_refused_early_with_504() {
    let (host, _) = host();
    let w = host.worker().unwrap();
    let mut s = w.http_stream("traffic").unwrap();
    let mut headers = get("/v1/completions");
    headers.push(("x-request-timeout-ms", "100"));
    let reply = s
        .request_headers(headers, true)
        .expect_local_response(504)
        .clone();
    assert_eq!(json(&reply)["error"]["code"], "deadline_exceeded");
    assert_eq!(host.metrics().value("drainpipe_rejected_deadline"), Some(1));
}

#[test]
fn malformed_deadline_is_ignored_and_counted() {
    let (host, _) = host();
    let w = host.worker().unwrap();
    let mut s = w.http_stream("traffic").unwrap();
    let mut headers = get("/v1/completions");
    headers.push(("x-request-timeout-ms", "soon"));
    let out = s.request_headers(headers, true);
    assert_eq!(
        out.expect_continue().headers().get("x-request-timeout-ms"),
        Some("60000")
    );
    assert_eq!(
        host.metrics().value("drainpipe_malformed_deadline"),
        Some(1)
    );
}

#[test]
fn inflight_is_exact_across_workers_and_drain_reaches_drained() {
    let (host, clock) = host();
    let workers: Vec<Worker> = (0..3).map(|_| host.worker().unwrap()).collect();
    let mut streams = Vec::new();
    for w in &workers {
        for _ in 0..2 {
            let mut s = w.http_stream("traffic").unwrap();
            s.request_headers(get("/v1/chat/completions"), true)
                .expect_continue();
            streams.push(s);
        }
    }
    let status = json(&admin(&workers[0], "GET", "/drain", &[]));
    assert_eq!(status["state"], "serving");
    assert_eq!(status["inflight"], 6);
    assert_eq!(admin(&workers[1], "POST", "/drain", &[]).status, 202);
    clock.advance(Duration::from_secs(6));
    let status = json(&admin(&workers[2], "GET", "/drain", &[]));
    assert_eq!(status["state"], "rejecting");
    assert_eq!(status["inflight"], 6);
    for mut s in streams {
        s.response_headers([(":status", "200")], false)
            .expect_continue();
        s.response_body("data: [DONE]\n\n", true).expect_continue();
        s.finish();
    }
    // Each worker hands its admitted/completed counts to the stats on its tick.
    for w in &workers {
        w.tick();
    }
    let status = json(&admin(&workers[0], "GET", "/drain", &[]));
    assert_eq!(status["state"], "drained");
    assert_eq!(status["inflight"], 0);
    assert_eq!(status["admitted"], 6);
    assert_eq!(host.metrics().value("drainpipe_completed"), Some(6));
}

#[test]
fn client_abort_releases_the_inflight_count() {
    let (host, _) = host();
    let w = host.worker().unwrap();
    let mut s = w.http_stream("traffic").unwrap();
    s.request_headers(get("/v1/chat/completions"), true)
        .expect_continue();
    assert_eq!(host.metrics().value("drainpipe_inflight"), Some(1));
    s.abort();
    assert_eq!(host.metrics().value("drainpipe_inflight"), Some(0));
}

#[test]
fn second_drain_start_keeps_the_first_start_time_and_delete_restores_serving() {
    let (host, clock) = host();
    let w = host.worker().unwrap();
    let first = json(&admin(&w, "POST", "/drain", &[]));
    clock.advance(Duration::from_secs(2));
    let second = admin(&w, "POST", "/drain", &[]);
    assert_eq!(second.status, 202);
    let second = json(&second);
    assert_eq!(first["drain_started_unix_ms"], T0_MS);
    assert_eq!(second["drain_started_unix_ms"], T0_MS);
    assert_eq!(second["elapsed_ms"], 2000);
    let deleted = admin(&w, "DELETE", "/drain", &[]);
    assert_eq!(deleted.status, 200);
    assert_eq!(json(&deleted)["state"], "serving");
    let mut s = w.http_stream("traffic").unwrap();
    s.request_headers(get("/healthz/ready"), true)
        .expect_local_response(200);
}

#[test]
fn admin_unknown_path_is_404_json_and_wrong_token_is_401() {
    let (host, _) = host_with(TRAFFIC, r#"{"role":"admin","admin_token":"s3cret"}"#);
    let w = host.worker().unwrap();
    let bearer = [("authorization", "Bearer s3cret")];
    let reply = admin(&w, "GET", "/nope", &bearer);
    assert_eq!(reply.status, 404);
    assert_eq!(json(&reply)["error"]["code"], "not_found");
    assert_eq!(admin(&w, "GET", "/drain", &[]).status, 401);
    assert_eq!(
        admin(&w, "GET", "/drain", &[("authorization", "Bearer nope")]).status,
        401
    );
    assert_eq!(admin(&w, "GET", "/drain", &bearer).status, 200);
}

#[test]
fn drain_started_on_one_worker_is_seen_by_every_worker() {
    let (host, clock) = host();
    let (a, b) = (host.worker().unwrap(), host.worker().unwrap());
    admin(&a, "POST", "/drain", &[]);
    clock.advance(Duration::from_secs(6));
    let mut s = b.http_stream("traffic").unwrap();
    s.request_headers(get("/v1/chat/completions"), true)
        .expect_local_response(503);
}

#[test]
fn state_gauge_follows_the_drain_on_ticks() {
    let (host, clock) = host();
    let w = host.worker().unwrap();
    w.tick();
    let serving = host.metrics().value("drainpipe_state");
    admin(&w, "POST", "/drain", &[]);
    clock.advance(Duration::from_secs(6));
    w.run_timers();
    let drained = host.metrics().value("drainpipe_state");
    assert_ne!(serving, drained, "the state gauge moves on tick");
    let text = host.metrics().render_prometheus();
    for name in [
        "drainpipe_inflight",
        "drainpipe_state",
        "drainpipe_admitted",
        "drainpipe_completed",
        "drainpipe_rejected_draining",
        "drainpipe_rejected_deadline",
        "drainpipe_malformed_deadline",
    ] {
        assert!(
            text.contains(&format!("\n{name}{{}} ")) || text.starts_with(&format!("# TYPE {name}")),
            "{name} missing:\n{text}"
        );
    }
}

#[test]
fn unknown_configuration_key_is_refused_with_a_log_line_naming_it() {
    let (host, _) = host_with(r#"{"role":"traffic","grace":1}"#, ADMIN);
    let err = host
        .worker()
        .err()
        .expect("a bad config must refuse to start");
    assert!(
        matches!(err, StartError::Configure { ref plugin } if plugin == "traffic"),
        "{err}"
    );
    assert!(host.log().contains("grace"), "{}", host.log().dump());
}

/// A host whose traffic plugin polls a drain controller through cluster
/// `ctl` every 200 ms; the first poll is out.
fn polling_host() -> (Host, Clock, Worker, u32) {
    let clock = Clock::manual(T0_MS);
    let host = Host::builder(drainpipe())
        .vm_id("drainpipe")
        .clock(clock.clone())
        .cluster("ctl", None)
        .plugin(PluginConfig::new(
            "traffic",
            r#"{"role":"traffic","drain_controller":{"cluster":"ctl","poll_ms":200}}"#,
        ))
        .build()
        .expect("build the host");
    let w = host.worker().unwrap();
    clock.advance(Duration::from_millis(200));
    w.run_timers();
    let calls = w.http_calls();
    assert_eq!(calls.len(), 1, "one poll out: {calls:?}");
    assert_eq!(calls[0].cluster, "ctl");
    (host, clock, w, calls[0].token)
}

fn still_serving(w: &Worker) {
    assert_eq!(readiness(w, 200), "serving");
}

#[test]
fn a_failed_controller_poll_is_a_warning_and_the_vm_keeps_serving() {
    let (host, _, w, token) = polling_host();
    assert!(w.fail_http_call(token));
    assert!(
        host.log().contains("the drain controller did not answer"),
        "{}",
        host.log().dump()
    );
    still_serving(&w);
}

#[test]
fn a_controller_poll_past_its_timeout_gets_envoys_504() {
    let (host, clock, w, _) = polling_host();
    clock.advance(Duration::from_millis(200));
    w.run_timers();
    assert!(
        host.log().contains("the drain controller answered 504"),
        "{}",
        host.log().dump()
    );
    still_serving(&w);
}
