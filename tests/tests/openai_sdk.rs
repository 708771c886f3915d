//! The official OpenAI Python SDK (from PyPI) through Envoy and drainpipe:
//! completions pass through; during a drain the SDK sees the 503 contract and
//! retries by its own rules; a stream cut at the grace end raises a clear
//! error in the SDK.

use std::time::Duration;

use drainpipe_tests::envoy::upstream_and_envoy;
use drainpipe_tests::load::start_drain;
use drainpipe_tests::python::run_client;
use drainpipe_tests::stats::wait_stat;
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm};
use serde_json::{json, Value};

async fn setup() -> (FakeLlm, Envoy) {
    let patch = json!({"admit_window_ms": 300, "grace_ms": 3000, "retry_after_s": 1,
                       "final_event_margin_ms": 500, "deadline": {"min_budget_ms": 1000}});
    upstream_and_envoy(patch, EnvoyOptions::default()).await
}

/// Runs a scenario of tests/python/openai_client.py against Envoy.
async fn sdk(envoy: &Envoy, scenario: &str) -> Value {
    let args = vec![scenario.to_string(), envoy.traffic("/v1")];
    run_client("openai_client.py", args).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_plain_and_streamed_completions_pass_through() {
    let (_up, envoy) = setup().await;
    let plain = sdk(&envoy, "plain").await;
    assert_eq!(plain["ok"], true, "{plain}");
    assert_eq!(plain["content"], "token0 token1 token2 token3 token4 ");
    let stream = sdk(&envoy, "stream").await;
    assert_eq!(stream["ok"], true, "{stream}");
    assert_eq!(stream["content"], plain["content"]);
    envoy.counts_settled().await;
    assert_eq!(envoy.stat("drainpipe_admitted").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_retries_the_drain_503_after_retry_after_then_raises_it() {
    let (_up, envoy) = setup().await;
    start_drain(&envoy).await;
    tokio::time::sleep(Duration::from_millis(400)).await; // past the admit window
    let r = sdk(&envoy, "plain").await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"], "InternalServerError");
    assert_eq!(r["status"], 503);
    assert_eq!(r["body"]["code"], "service_draining", "{r}");
    // One attempt and max_retries=2 retries, each after Retry-After (1 s).
    assert_eq!(envoy.stat("drainpipe_rejected_draining").await.unwrap(), 3);
    let elapsed = r["elapsed_s"].as_f64().unwrap();
    assert!(elapsed >= 2.0, "the SDK honoured retry-after: {elapsed}s");
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_raises_a_clear_error_when_a_stream_is_ended_at_the_grace_end() {
    let (_up, envoy) = setup().await;
    // Start the drain once the SDK's stream is in flight.
    let args = vec!["long-stream".to_string(), envoy.traffic("/v1")];
    let stream = tokio::spawn(run_client("openai_client.py", args));
    wait_stat(&envoy, "drainpipe_inflight", 1, Duration::from_secs(10))
        .await
        .expect("the SDK's stream starts");
    start_drain(&envoy).await;
    let r = stream.await.unwrap().unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"], "APIError", "{r}");
    assert_eq!(r["body"]["code"], "service_draining", "{r}");
    let tokens = r["tokens"].as_u64().unwrap();
    assert!(
        (20..200).contains(&tokens),
        "tokens before the cut: {tokens}"
    );
}
