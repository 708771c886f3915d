//! Each API's clients through Envoy and drainpipe, with the official
//! clients from PyPI: the `anthropic` SDK (Anthropic Messages), the `openai`
//! SDK (the Responses API) and `grpcio` (gRPC). Requests pass through;
//! during a drain each client gets its own API's refusal and, for a stream
//! that outlives the grace period, an ending it raises as an API error.

use std::time::Duration;

use drainpipe_tests::envoy::plugin_wasm;
use drainpipe_tests::fake_dialects::FakeDialects;
use drainpipe_tests::load::{drained, start_drain, wait_drain_status};
use drainpipe_tests::python::run_client;
use drainpipe_tests::stats::wait_stat;
use drainpipe_tests::{Envoy, EnvoyConfig, EnvoyOptions, Ports};
use serde_json::{json, Value};

/// Grace 3 s, admit window 300 ms, minimum budget 1 s, margin 500 ms; a
/// gRPC route to the same upstream over HTTP/2.
async fn setup() -> (FakeDialects, Envoy) {
    let upstream = FakeDialects::start().await.expect("fake upstream");
    let ports = Ports::fresh(upstream.port());
    let patch = json!({"admit_window_ms": 300, "grace_ms": 3000, "retry_after_s": 1,
                       "final_event_margin_ms": 500, "deadline": {"min_budget_ms": 1000}});
    let mut cfg = EnvoyConfig::repo()
        .expect("envoy/envoy.yaml")
        .localize(ports, &plugin_wasm().expect("plugin built"))
        .patch_plugin("drainpipe", patch);
    with_grpc_route(&mut cfg, ports.upstream);
    let envoy = Envoy::start(&cfg, ports, EnvoyOptions::default()).expect("Envoy starts");
    (upstream, envoy)
}

/// Routes `application/grpc` requests to `port` over HTTP/2.
fn with_grpc_route(cfg: &mut EnvoyConfig, port: u16) {
    let doc = cfg.doc_mut();
    let listeners = doc["static_resources"]["listeners"].as_array_mut().unwrap();
    let traffic = listeners
        .iter_mut()
        .find(|l| l["name"] == "traffic")
        .unwrap();
    let routes = traffic
        .pointer_mut("/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes")
        .and_then(Value::as_array_mut)
        .expect("the traffic listener's routes");
    routes.insert(
        0,
        json!({"match": {"prefix": "/", "grpc": {}},
               "route": {"cluster": "grpc_upstream", "timeout": "600s"}}),
    );
    doc["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "grpc_upstream",
            "type": "STATIC",
            "connect_timeout": "2s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": {"cluster_name": "grpc_upstream", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
            ]}]}
        }));
}

/// Runs a scenario of tests/python/dialects_client.py against `target`.
async fn client(scenario: &str, target: String) -> Value {
    let args = vec![scenario.to_string(), target];
    run_client("dialects_client.py", args).await.unwrap()
}

fn unix_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn base(envoy: &Envoy) -> String {
    envoy.traffic("")
}

fn grpc_target(envoy: &Envoy) -> String {
    format!("127.0.0.1:{}", envoy.ports.traffic)
}

/// Waits until the client script's request is in flight (a script takes a
/// while to start).
async fn wait_in_flight(envoy: &Envoy) {
    wait_stat(envoy, "drainpipe_inflight", 1, Duration::from_secs(20))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_sdk_messages_and_short_streams_arrive_whole() {
    let (_up, envoy) = setup().await;
    let plain = client("anthropic-plain", base(&envoy)).await;
    assert_eq!(plain["ok"], true, "{plain}");
    assert_eq!(plain["content"], "token0 token1 token2 token3 token4 ");
    let stream = client("anthropic-stream", base(&envoy)).await;
    assert_eq!(stream["ok"], true, "{stream}");
    assert_eq!(stream["content"], plain["content"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_sdk_stream_longer_than_the_grace_raises_api_error_with_the_plugins_message() {
    let (_up, envoy) = setup().await;
    let stream = tokio::spawn(client("anthropic-long-stream", base(&envoy)));
    wait_in_flight(&envoy).await;
    let started = unix_s();
    start_drain(&envoy).await;
    let r = stream.await.unwrap();
    let took = r["ended_unix_s"].as_f64().unwrap() - started;
    assert_eq!(r["ok"], false, "{r}");
    // An API error from the final event (the SDK raises `APIStatusError`,
    // a subclass of `APIError`, with the stream's 200), never a transport
    // error.
    assert_eq!(r["error"], "APIStatusError", "{r}");
    assert_eq!(r["api_error"], true, "{r}");
    assert_eq!(r["body"]["type"], "error", "{r}");
    assert_eq!(r["body"]["error"]["type"], "overloaded_error", "{r}");
    assert!(
        r["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{r}"
    );
    let tokens = r["tokens"].as_u64().unwrap();
    assert!(tokens > 10 && tokens < 200, "{r}");
    // Ended 500 ms before the 3 s grace end.
    assert!(took < 3.0, "{took} s after the drain started");
    assert_eq!(envoy.stat("drainpipe_streams_ended").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_sdk_gets_its_503_with_the_anthropic_body_after_the_admit_window() {
    let (up, envoy) = setup().await;
    start_drain(&envoy).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = client("anthropic-plain", base(&envoy)).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"], "ServiceUnavailableError", "{r}");
    assert_eq!(r["status"], 503);
    assert_eq!(r["body"]["type"], "error", "{r}");
    assert_eq!(r["body"]["error"]["type"], "overloaded_error", "{r}");
    // The SDK retried twice, each after retry-after-ms (1 s).
    assert_eq!(envoy.stat("drainpipe_rejected_draining").await.unwrap(), 3);
    assert!(r["elapsed_s"].as_f64().unwrap() >= 2.0, "{r}");
    assert_eq!(up.received(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_sdk_gets_the_early_504_as_a_timeout_error_without_retrying() {
    let (up, envoy) = setup().await;
    let r = client("anthropic-short-deadline", base(&envoy)).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["status"], 504, "{r}");
    assert_eq!(r["body"]["error"]["type"], "timeout_error", "{r}");
    assert_eq!(envoy.stat("drainpipe_rejected_deadline").await.unwrap(), 1);
    assert_eq!(up.received(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_sdk_responses_stream_ended_by_the_drain_raises_api_error() {
    let (_up, envoy) = setup().await;
    let stream = tokio::spawn(client("responses-long-stream", base(&envoy)));
    wait_in_flight(&envoy).await;
    start_drain(&envoy).await;
    let r = stream.await.unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"], "APIError", "{r}");
    assert_eq!(r["body"]["code"], "service_draining", "{r}");
    let tokens = r["tokens"].as_u64().unwrap();
    assert!(tokens > 10 && tokens < 200, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_unary_call_passes_through() {
    let (up, envoy) = setup().await;
    let r = client("grpc-unary", grpc_target(&envoy)).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["reply"], "hello");
    assert_eq!(up.received(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_call_below_the_minimum_budget_gets_deadline_exceeded_at_once_never_forwarded() {
    let (up, envoy) = setup().await;
    let r = client("grpc-short-deadline", grpc_target(&envoy)).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    // The plugin's message, before the client's own 500 ms deadline.
    assert!(
        r["details"]
            .as_str()
            .unwrap()
            .contains("minimum this server needs"),
        "{r}"
    );
    assert!(r["call_s"].as_f64().unwrap() < 0.4, "{r}");
    assert_eq!(envoy.stat("drainpipe_rejected_deadline").await.unwrap(), 1);
    assert_eq!(up.received(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_call_after_the_admit_window_gets_unavailable() {
    let (up, envoy) = setup().await;
    start_drain(&envoy).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = client("grpc-unary", grpc_target(&envoy)).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
    assert!(r["details"].as_str().unwrap().contains("draining"), "{r}");
    assert_eq!(up.received(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_stream_running_at_the_grace_end_is_reset_before_it_and_the_drain_completes() {
    let (_up, envoy) = setup().await;
    let stream = tokio::spawn(client("grpc-long-stream", grpc_target(&envoy)));
    wait_in_flight(&envoy).await;
    let started = std::time::Instant::now();
    start_drain(&envoy).await;
    let drain_unix_s = unix_s() - started.elapsed().as_secs_f64();
    let r = stream.await.unwrap();
    assert_eq!(r["ok"], false, "{r}");
    // Envoy lets a filter add response trailers only with the last chunk,
    // so a running gRPC stream cannot be ended with grpc-status 14: it is
    // reset within the grace period, which grpcio reports as INTERNAL
    // (RST_STREAM with INTERNAL_ERROR), never as a normal end.
    assert_eq!(r["code"], "INTERNAL", "{r}");
    assert!(r["details"].as_str().unwrap().contains("RST_STREAM"), "{r}");
    let took = r["ended_unix_s"].as_f64().unwrap() - drain_unix_s;
    assert!(took < 3.0, "{took} s after the drain started: {r}");
    assert_eq!(envoy.stat("drainpipe_ended_at_grace").await.unwrap(), 1);
    let tokens = r["tokens"].as_u64().unwrap();
    assert!(tokens > 10 && tokens < 200, "{r}");
    wait_drain_status(&envoy, Duration::from_secs(5), drained).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(3_000 + 1_500), "{took:?}");
    assert_eq!(envoy.stat("drainpipe_inflight").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_stream_at_the_grace_end_is_ended_and_the_drain_completes_within_the_margin() {
    let (_up, envoy) = setup().await;
    // Admitted before the drain with a 60 s deadline; silent for 20 s after
    // its first events, so no body callback comes near the grace end.
    let resp = reqwest::Client::new()
        .post(envoy.traffic("/v1/messages"))
        .header("x-fake-chunks", "3")
        .header("x-fake-chunk-delay-ms", "20000")
        .json(&json!({"model": "m", "max_tokens": 8, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::spawn(resp.bytes());
    let started = std::time::Instant::now();
    start_drain(&envoy).await;
    wait_drain_status(&envoy, Duration::from_secs(10), drained).await;
    let took = started.elapsed();
    // Grace 3 s; ended by the next tick after it (100 ms apart near the
    // grace end) and gone once Envoy deletes the stream.
    assert!(
        took >= Duration::from_millis(2_900) && took < Duration::from_millis(3_600),
        "drained {took:?} after the drain started"
    );
    assert!(
        body.await.unwrap().is_err(),
        "the silent stream was reset, not completed"
    );
    assert_eq!(envoy.stat("drainpipe_ended_at_grace").await.unwrap(), 1);
    assert_eq!(envoy.stat("drainpipe_inflight").await.unwrap(), 0);
}
