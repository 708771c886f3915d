//! An independent proxy-wasm filter (built from `test-filter/` with the
//! proxy-wasm Rust SDK) runs unchanged in the shim: headers, local replies,
//! http calls, ticks, lifecycle callbacks.

mod support;

use std::time::Duration;

use drainpipe_shim::{Decision, HttpCallResponse};
use support::test_filter_host;

const GET: (&str, &str) = (":method", "GET");

#[test]
fn filter_reads_a_request_header_and_adds_one() {
    let (host, _) = test_filter_host("");
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    let out = s.request_headers([GET, (":path", "/"), ("X-Name", "ada")], true);
    out.expect_continue();
    assert_eq!(out.headers().get("x-hello"), Some("hello ada"));
    let out = s.response_headers([(":status", "200")], true);
    assert_eq!(
        out.expect_continue().headers().get("x-served-by"),
        Some("test-filter")
    );
}

#[test]
fn plugin_configuration_reaches_the_filter() {
    let (host, _) = test_filter_host("howdy");
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    let out = s.request_headers([GET, (":path", "/"), ("x-name", "bob")], true);
    assert_eq!(out.headers().get("x-hello"), Some("howdy bob"));
}

#[test]
fn local_reply_passes_through_the_filters_own_response_callbacks() {
    let (host, _) = test_filter_host("");
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    let out = s.request_headers([GET, (":path", "/local")], true);
    let reply = out.expect_local_response(418);
    assert_eq!(reply.body_text(), "short and stout");
    assert_eq!(reply.header("x-local"), Some("yes"));
    assert_eq!(reply.header("content-length"), Some("15"));
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    // Envoy runs the local reply through the filter's encode path.
    assert_eq!(reply.header("x-served-by"), Some("test-filter"));
    // Later steps report the same end without calling the filter.
    assert!(matches!(
        s.request_body("x", true).decision,
        Decision::LocalResponse(_)
    ));
}

#[test]
fn http_call_response_is_delivered_to_the_calling_stream_which_resumes() {
    let (host, _) = test_filter_host("");
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    s.request_headers([GET, (":path", "/call")], true)
        .expect_pause();
    let calls = worker.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "auth");
    assert_eq!(calls[0].headers.get(":path"), Some("/check"));
    assert_eq!(calls[0].timeout, Duration::from_secs(2));
    assert!(!s.request_resumed());
    assert!(worker.respond_http_call(calls[0].token, HttpCallResponse::new(200, "fine")));
    assert!(s.request_resumed());
    let sent = s.request_headers_sent().unwrap();
    assert_eq!(sent.get("x-auth-status"), Some("200"));
    assert_eq!(sent.get("x-auth-body-size"), Some("4"));
    assert!(worker.http_calls().is_empty());
}

#[test]
fn local_reply_from_an_http_call_callback_ends_the_stream() {
    let (host, _) = test_filter_host("");
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    s.request_headers([GET, (":path", "/call")], true)
        .expect_pause();
    let token = worker.http_calls()[0].token;
    worker.respond_http_call(token, HttpCallResponse::new(403, ""));
    let reply = s.take_local_response().expect("a local reply");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body_text(), "denied");
    assert_eq!(reply.header("x-denied-by"), Some("auth"));
}

#[test]
fn http_call_past_its_timeout_gets_envoys_504() {
    let (host, clock) = test_filter_host("");
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    s.request_headers([GET, (":path", "/call")], true)
        .expect_pause();
    clock.advance(Duration::from_millis(1999));
    worker.run_timers();
    assert!(!s.request_resumed());
    clock.advance(Duration::from_millis(1));
    worker.run_timers();
    assert!(s.request_resumed());
    let sent = s.request_headers_sent().unwrap();
    assert_eq!(sent.get("x-auth-status"), Some("504"));
    // "upstream request timeout"
    assert_eq!(sent.get("x-auth-body-size"), Some("24"));
}

#[test]
fn http_call_to_an_unknown_cluster_is_a_bad_argument() {
    let host = drainpipe_shim::Host::builder(support::test_filter())
        .plugin(drainpipe_shim::PluginConfig::new("test", ""))
        .build()
        .unwrap();
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    let out = s.request_headers([GET, (":path", "/call")], true);
    assert_eq!(
        out.expect_local_response(500).header("x-call-error"),
        Some("BadArgument")
    );
}

#[test]
fn finished_stream_cancels_its_pending_http_calls() {
    let (host, _) = test_filter_host("");
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    s.request_headers([GET, (":path", "/call")], true)
        .expect_pause();
    s.abort();
    assert!(worker.http_calls().is_empty());
}

#[test]
fn ticks_fire_explicitly_or_when_the_clock_reaches_the_period() {
    let (host, clock) = test_filter_host("");
    let worker = host.worker().unwrap();
    assert_eq!(worker.tick(), 1);
    assert_eq!(host.metrics().value("test_filter_ticks"), Some(1));
    assert_eq!(worker.run_timers(), 0, "the next tick is a period away");
    clock.advance(Duration::from_millis(999));
    assert_eq!(worker.run_timers(), 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(worker.run_timers(), 1);
    // A long jump fires once: timers do not catch up.
    clock.advance(Duration::from_secs(10));
    assert_eq!(worker.run_timers(), 1);
    assert_eq!(host.metrics().value("test_filter_ticks"), Some(3));
    assert!(host.log().contains("test filter: tick"));
}

#[test]
fn lifecycle_runs_on_log_then_on_done() {
    let (host, _) = test_filter_host("");
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    let id = s.context_id();
    s.request_headers([GET, (":path", "/")], true)
        .expect_continue();
    s.response_headers([(":status", "200")], true)
        .expect_continue();
    s.finish();
    let lines: Vec<String> = host
        .log()
        .records()
        .into_iter()
        .map(|r| r.message)
        .filter(|m| m.contains(&format!(" {id}")))
        .collect();
    assert_eq!(
        lines,
        [
            format!("test filter: on_log {id}"),
            format!("test filter: on_done {id}")
        ]
    );
}

#[test]
fn dropping_a_stream_runs_its_lifecycle() {
    let (host, _) = test_filter_host("");
    let worker = host.worker().unwrap();
    {
        let mut s = worker.http_stream("test").unwrap();
        s.request_headers([GET, (":path", "/")], true)
            .expect_continue();
    }
    assert!(host.log().contains("test filter: on_done"));
}

#[test]
fn paused_body_is_buffered_until_the_filter_continues() {
    let (host, _) = test_filter_host("");
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    s.request_headers([GET, (":path", "/")], false)
        .expect_continue();
    let out = s.request_body("hello ", false);
    assert_eq!(out.expect_continue().body.as_deref(), Some(&b"hello "[..]));
    let out = s.request_body("world", true);
    assert_eq!(out.body.as_deref(), Some(&b"world"[..]));
}
