//! A stream's header maps are there for the callback that delivers them,
//! as in Envoy: once a map has gone on (its callback let iteration
//! continue) a read or an edit of it is a bad argument, a read of all its
//! pairs an empty map, and `proxy_on_log` reads the access log's view. The
//! test filter reports what it can reach from the later callbacks; the shim
//! and a real Envoy must report the same.

mod support;

use drainpipe_tests::envoy::EnvoyConfig;
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm, Ports};
use support::{test_filter_host, test_filter_path};

/// What the test filter finds from the response callbacks, once the
/// request headers (and then the response headers) went on.
const REPORT: &str = "response headers: request header bad_argument\n\
    response body: request header bad_argument, response header bad_argument, \
    response header pairs 0, response header replace bad_argument\n";

/// What it finds in `proxy_on_log`: both header maps readable, none editable.
const ON_LOG: &str = "test filter: on_log maps: request header ok, response header ok, \
    request header replace bad_argument";

/// Runs one probing stream through the shim: the body the client gets, and
/// the filter's log.
fn through_the_shim() -> (String, String) {
    let (host, _) = test_filter_host("");
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    s.request_headers(
        [
            (":method", "GET"),
            (":path", "/v1/models"),
            ("x-probe-maps", "1"),
        ],
        true,
    )
    .expect_continue();
    let out = s.response_headers([(":status", "200"), ("content-length", "2")], false);
    assert_eq!(out.expect_continue().headers().get("content-length"), None);
    let out = s.response_body("ok", true);
    let body = String::from_utf8(out.expect_continue().body.clone().unwrap()).unwrap();
    s.finish();
    (body, host.log().dump())
}

#[test]
fn maps_are_gone_once_their_callback_lets_them_go_on() {
    let (body, log) = through_the_shim();
    assert_eq!(body, REPORT);
    assert!(log.contains(ON_LOG), "no on_log report in:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_reaches_the_same_maps_as_the_shim() {
    let (shim_body, _) = through_the_shim();
    let upstream = FakeLlm::start().await.expect("fake upstream");
    let ports = Ports::fresh(upstream.port());
    let cfg = EnvoyConfig::repo()
        .unwrap()
        .localize(ports, &test_filter_path())
        .raw_plugin_config("drainpipe", "")
        .raw_plugin_config("drainpipe_admin", "");
    let envoy = Envoy::start(&cfg, ports, EnvoyOptions::default())
        .expect("Envoy starts with the test filter");
    let response = reqwest::Client::new()
        .get(envoy.traffic("/v1/models"))
        .header("x-probe-maps", "1")
        .send()
        .await
        .expect("request through Envoy");
    assert_eq!(response.status(), 200, "log tail:\n{}", envoy.log_tail(30));
    assert_eq!(
        response.headers().get("x-served-by").map(|v| v.as_bytes()),
        Some(&b"test-filter"[..])
    );
    let body = response.text().await.unwrap();
    assert_eq!(body, shim_body, "Envoy and the shim differ");
    assert_eq!(body, REPORT);
    // The access log callback runs once the stream is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !envoy.log().contains(ON_LOG) {
        assert!(
            std::time::Instant::now() < deadline,
            "no on_log report from Envoy; log tail:\n{}",
            envoy.log_tail(30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
