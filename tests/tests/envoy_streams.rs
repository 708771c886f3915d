//! SSE streams that outlive their deadline or the drain's grace period end
//! with a final error event, never silently.

use std::time::{Duration, Instant};

use drainpipe_tests::envoy::upstream_and_envoy;
use drainpipe_tests::fake_llm::sse_events;
use drainpipe_tests::load::{
    assert_whole_stream, drained, read_to_end, start_drain, stream_request, wait_drain_status,
};
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm};
use serde_json::{json, Value};

async fn setup() -> (FakeLlm, Envoy) {
    let patch = json!({"admit_window_ms": 500, "grace_ms": 3000, "final_event_margin_ms": 500,
                       "deadline": {"min_budget_ms": 1000}});
    upstream_and_envoy(patch, EnvoyOptions::default()).await
}

/// 200 tokens 50 ms apart (10 s), with a budget of `timeout_ms` if given.
async fn long_stream(envoy: &Envoy, timeout_ms: Option<&str>) -> reqwest::Response {
    let url = envoy.traffic("/v1/chat/completions");
    let mut req = stream_request(&url, 200, Duration::from_millis(50));
    if let Some(t) = timeout_ms {
        req = req.header("x-request-timeout-ms", t);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

fn last_error(body: &str) -> Value {
    let events = sse_events(body);
    assert!(
        !events.contains(&"[DONE]"),
        "a cut stream must not claim completion: {body}"
    );
    let last = events.last().expect("some events");
    serde_json::from_str(last).unwrap_or_else(|_| panic!("last event is not JSON: {last:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_running_at_grace_end_gets_a_final_service_draining_event() {
    let (_up, envoy) = setup().await;
    let resp = long_stream(&envoy, None).await; // 10 s of tokens
    let started = Instant::now();
    start_drain(&envoy).await;
    let read = read_to_end(resp, started).await;
    let body = read.body();
    let error = last_error(&body);
    assert_eq!(error["error"]["code"], "service_draining", "{body}");
    assert_eq!(error["error"]["type"], "server_error");
    // Every event before it is a whole token chunk.
    let events = sse_events(&body);
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
    }
    assert!(
        events.len() > 20,
        "tokens flowed until the cut: {}",
        events.len()
    );
    // Grace 3 s, margin 0.5 s: the event goes out about 2.5 s after the
    // drain start, then the stream ends (Envoy closes the connection after
    // its 1 s delayed-close timeout).
    let event_at = read.arrival_of("\"error\"").unwrap();
    assert!(
        event_at >= Duration::from_millis(2_400) && event_at < Duration::from_millis(4_000),
        "event {event_at:?} after the drain start"
    );
    assert!(
        read.ended_at < Duration::from_millis(6_000),
        "ended {:?}",
        read.ended_at
    );
    assert_eq!(envoy.stat("drainpipe_streams_ended").await.unwrap(), 1);
    // The stream is over: nothing in flight, the drain completes.
    let status = wait_drain_status(&envoy, Duration::from_secs(5), drained).await;
    assert_eq!(status["inflight"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_reaching_its_deadline_gets_a_final_deadline_event() {
    let (_up, envoy) = setup().await;
    let started = Instant::now();
    let resp = long_stream(&envoy, Some("2000")).await;
    let read = read_to_end(resp, started).await;
    let body = read.body();
    let error = last_error(&body);
    assert_eq!(error["error"]["code"], "deadline_exceeded", "{body}");
    // Deadline 2 s, margin 0.5 s.
    let event_at = read.arrival_of("\"error\"").unwrap();
    assert!(
        event_at >= Duration::from_millis(1_400) && event_at < Duration::from_millis(2_000),
        "event at {event_at:?}"
    );
    assert!(
        read.ended_at < Duration::from_millis(3_500),
        "ended {:?}",
        read.ended_at
    );
    assert_eq!(envoy.stat("drainpipe_inflight").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_finishing_in_time_is_untouched() {
    let (_up, envoy) = setup().await;
    let url = envoy.traffic("/v1/chat/completions");
    let resp = stream_request(&url, 10, Duration::from_millis(20))
        .send()
        .await
        .unwrap();
    let body = read_to_end(resp, Instant::now()).await.whole();
    assert_whole_stream(&body, 10);
    assert_eq!(envoy.stat("drainpipe_streams_ended").await.unwrap(), 0);
}
