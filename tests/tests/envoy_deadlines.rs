//! Deadlines through a real Envoy: what the upstream receives, early 504s,
//! and the router enforcing the budget the plugin sets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drainpipe_tests::envoy::upstream_and_envoy;
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm};
use serde_json::{json, Value};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn setup(patch: Option<Value>) -> (FakeLlm, Envoy) {
    let patch = patch.unwrap_or_else(|| json!({}));
    upstream_and_envoy(patch, EnvoyOptions::default()).await
}

/// Sends a request through Envoy to the echo upstream; returns the status
/// and what the upstream saw (or the local reply's body).
async fn echo(envoy: &Envoy, headers: &[(&str, &str)]) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.post(envoy.traffic("/echo/chat")).body("{}");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.expect("Envoy answers");
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, json)
}

fn seen<'v>(v: &'v Value, header: &str) -> Option<&'v str> {
    v["headers"][header].as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_the_upstream_receives_the_routers_timeout_and_its_own_deadline_header_only() {
    let (_up, envoy) = setup(None).await;
    let (status, got) = echo(&envoy, &[("x-request-timeout-ms", "12000")]).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(seen(&got, "x-request-timeout-ms"), Some("12000"));
    assert_eq!(seen(&got, "x-request-deadline-ms"), None, "{got}");
    assert_eq!(seen(&got, "x-envoy-expected-rq-timeout-ms"), Some("12000"));
    assert_eq!(seen(&got, "x-envoy-upstream-rq-timeout-ms"), None);
    let (status, got) = echo(&envoy, &[]).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(seen(&got, "x-request-timeout-ms"), None, "{got}");
    assert_eq!(seen(&got, "x-request-deadline-ms"), None, "{got}");
    assert_eq!(seen(&got, "x-envoy-expected-rq-timeout-ms"), Some("60000"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_receives_all_deadline_headers_for_the_requested_budget_when_configured() {
    let (_up, envoy) = setup(Some(json!({"deadline": {"upstream_headers": "all"}}))).await;
    let before = now_ms();
    let (status, got) = echo(&envoy, &[("x-request-timeout-ms", "12000")]).await;
    let after = now_ms();
    assert_eq!(status, 200, "{got}");
    assert_eq!(seen(&got, "x-request-timeout-ms"), Some("12000"));
    let deadline: u64 = seen(&got, "x-request-deadline-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (before + 12_000..=after + 12_000).contains(&deadline),
        "{deadline}"
    );
    // Envoy's router consumed x-envoy-upstream-rq-timeout-ms and tells the
    // upstream the timeout it enforces.
    assert_eq!(seen(&got, "x-envoy-expected-rq-timeout-ms"), Some("12000"));
    assert_eq!(seen(&got, "x-envoy-upstream-rq-timeout-ms"), None);
    let (_, got) = echo(&envoy, &[]).await;
    assert_eq!(seen(&got, "x-request-timeout-ms"), Some("60000"), "{got}");
    assert!(seen(&got, "x-request-deadline-ms").is_some(), "{got}");
}

#[tokio::test(flavor = "multi_thread")]
async fn budget_defaults_without_header_and_is_capped_by_max() {
    let (_up, envoy) = setup(None).await;
    let (_, got) = echo(&envoy, &[]).await;
    assert_eq!(seen(&got, "x-envoy-expected-rq-timeout-ms"), Some("60000"));
    for (name, value) in [
        ("x-request-timeout-ms", "86400000"),
        ("x-envoy-upstream-rq-timeout-ms", "86400000"),
    ] {
        let (_, got) = echo(&envoy, &[(name, value)]).await;
        let expected = if name == "x-request-timeout-ms" {
            "600000"
        } else {
            "60000"
        };
        // The request's own x-request-timeout-ms is rewritten, never passed
        // on above the cap; none is added.
        let own = (name == "x-request-timeout-ms").then_some(expected);
        assert_eq!(seen(&got, "x-request-timeout-ms"), own, "{name}");
        assert_eq!(
            seen(&got, "x-envoy-expected-rq-timeout-ms"),
            Some(expected),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deadline_headers_the_client_sent_are_replaced_not_repeated() {
    let (_up, envoy) = setup(None).await;
    // Each header the plugin sets, sent by the client too: the upstream sees
    // one value, the plugin's (the echo joins a repeated header's values).
    let deadline = (now_ms() + 20_000).to_string();
    let (status, got) = echo(
        &envoy,
        &[
            ("x-request-deadline-ms", &deadline),
            ("x-request-timeout-ms", "15000"),
            ("content-type", "application/grpc"),
            ("grpc-timeout", "15S"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{got}");
    let budget: u64 = seen(&got, "x-request-timeout-ms")
        .unwrap_or_else(|| panic!("no x-request-timeout-ms upstream: {got}"))
        .parse()
        .unwrap_or_else(|e| panic!("x-request-timeout-ms not one number ({e}): {got}"));
    assert!((19_000..=20_000).contains(&budget), "{budget}");
    let sent_deadline: u64 = seen(&got, "x-request-deadline-ms")
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("x-request-deadline-ms not one number ({e}): {got}"));
    assert!(sent_deadline <= deadline.parse::<u64>().unwrap(), "{got}");
    assert_eq!(
        seen(&got, "grpc-timeout"),
        Some(format!("{budget}m").as_str()),
        "{got}"
    );
    let (_, got) = echo(&envoy, &[("x-envoy-upstream-rq-timeout-ms", "86400000")]).await;
    assert_eq!(
        seen(&got, "x-envoy-expected-rq-timeout-ms"),
        Some("60000"),
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn absolute_deadline_and_grpc_timeout_are_honoured() {
    let (_up, envoy) = setup(None).await;
    let deadline = (now_ms() + 20_000).to_string();
    let (_, got) = echo(&envoy, &[("x-request-deadline-ms", &deadline)]).await;
    let budget: u64 = seen(&got, "x-envoy-expected-rq-timeout-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!((19_000..=20_000).contains(&budget), "{budget}");
    let sent: u64 = seen(&got, "x-request-deadline-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent <= deadline.parse::<u64>().unwrap(), "{got}");

    let (_, got) = echo(
        &envoy,
        &[
            ("content-type", "application/grpc"),
            ("grpc-timeout", "15S"),
        ],
    )
    .await;
    assert_eq!(seen(&got, "x-envoy-expected-rq-timeout-ms"), Some("15000"));
    assert_eq!(seen(&got, "grpc-timeout"), Some("15000m"));
}

#[tokio::test(flavor = "multi_thread")]
async fn too_small_budget_is_refused_early_with_504_json() {
    let (_up, envoy) = setup(None).await;
    let (status, got) = echo(&envoy, &[("x-request-timeout-ms", "1200")]).await;
    assert_eq!(status, 504);
    assert_eq!(got["error"]["code"], "deadline_exceeded");
    assert_eq!(got["error"]["type"], "server_error");
    assert!(got["error"]["param"].is_null());
    assert!(
        got.get("headers").is_none(),
        "request must not reach the upstream"
    );
    let past = (now_ms() - 1).to_string();
    let (status, _) = echo(&envoy, &[("x-request-deadline-ms", &past)]).await;
    assert_eq!(status, 504);
    assert_eq!(envoy.stat("drainpipe_rejected_deadline").await.unwrap(), 2);
    assert_eq!(envoy.stat("drainpipe_inflight").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_deadline_is_ignored_and_counted() {
    let (_up, envoy) = setup(None).await;
    let (status, got) = echo(
        &envoy,
        &[("x-request-timeout-ms", "-5"), ("grpc-timeout", "soon")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seen(&got, "x-request-timeout-ms"), Some("60000"));
    assert_eq!(envoy.stat("drainpipe_malformed_deadline").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn router_enforces_the_budget_with_504() {
    let (_up, envoy) = setup(Some(
        json!({"deadline": {"min_budget_ms": 100}, "final_event_margin_ms": 50}),
    ))
    .await;
    let started = std::time::Instant::now();
    let (status, got) = echo(
        &envoy,
        &[("x-request-timeout-ms", "300"), ("x-fake-delay-ms", "3000")],
    )
    .await;
    assert_eq!(status, 504, "{got}");
    assert_eq!(got, Value::String("upstream request timeout".into()));
    assert!(started.elapsed() < Duration::from_millis(2_500));
    // The stream ended by timeout still leaves the in-flight count.
    assert_eq!(envoy.stat("drainpipe_inflight").await.unwrap(), 0);
    envoy.counts_settled().await;
    assert_eq!(envoy.stat("drainpipe_completed").await.unwrap(), 1);
}
