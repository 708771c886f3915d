//! Upstream faults through a real Envoy: an upstream that resets mid-stream,
//! one that is down, one slower than the deadline. The client gets Envoy's
//! error (or a cut stream), and the plugin's counts stay exact:
//! `drainpipe_inflight` back to 0, `drainpipe_completed` equal to
//! `drainpipe_admitted`.

use std::time::{Duration, Instant};

use drainpipe_tests::envoy::free_port;
use drainpipe_tests::fake_llm::chat_body;
use drainpipe_tests::stats::{stat_value, wait_stat};
use drainpipe_tests::{Envoy, FakeLlm};
use futures::future::join_all;
use serde_json::json;

/// Concurrent requests per scenario.
const N: usize = 16;

async fn assert_counts_settle(envoy: &Envoy, admitted: u64) {
    wait_stat(envoy, "drainpipe_inflight", 0, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}; log tail:\n{}", envoy.log_tail(20)));
    envoy.counts_settled().await;
    assert_eq!(envoy.stat("drainpipe_admitted").await.unwrap(), admitted);
    assert_eq!(envoy.stat("drainpipe_completed").await.unwrap(), admitted);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_reset_mid_stream_cuts_the_stream_and_releases_the_count() {
    let up = FakeLlm::start().await.unwrap();
    let envoy = Envoy::start_repo(up.port(), None).expect("Envoy starts");
    let client = reqwest::Client::new();
    let one = || async {
        let mut resp = client
            .post(envoy.traffic("/v1/chat/completions"))
            .header("x-fake-chunks", "10")
            .header("x-fake-chunk-delay-ms", "100")
            .header("x-fake-reset-after-chunks", "3")
            .json(&chat_body(true))
            .send()
            .await
            .expect("response head arrives");
        assert_eq!(resp.status(), 200);
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => panic!(
                    "a reset stream must not end cleanly: {}",
                    String::from_utf8_lossy(&body)
                ),
                Err(_) => break,
            }
        }
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.matches("data: ").count(), 3, "{text}");
        assert!(!text.contains("[DONE]"));
    };
    let started = Instant::now();
    join_all((0..N).map(|_| one())).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_counts_settle(&envoy, N as u64).await;
    // Envoy saw the upstream go away with requests active, and did not retry
    // (the response had started).
    let destroyed = stat_value(
        &envoy,
        "cluster.llm_upstream.upstream_cx_destroy_remote_with_active_rq",
    )
    .await
    .unwrap();
    assert_eq!(destroyed, Some(N as u64));
    let retries = stat_value(&envoy, "cluster.llm_upstream.upstream_rq_retry")
        .await
        .unwrap();
    assert_eq!(retries.unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn down_upstream_gives_envoys_503_and_releases_the_count() {
    // Nothing listens on this port.
    let envoy = Envoy::start_repo(free_port(), None).expect("Envoy starts");
    let client = reqwest::Client::new();
    let one = || async {
        let resp = client
            .post(envoy.traffic("/v1/chat/completions"))
            .json(&chat_body(false))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, text)
    };
    let started = Instant::now();
    for (status, text) in join_all((0..N).map(|_| one())).await {
        assert_eq!(status, 503, "{text}");
        // Envoy's own local reply, not the plugin's drain contract.
        assert!(
            text.starts_with("upstream connect error") || text == "no healthy upstream",
            "{text}"
        );
        assert!(!text.contains("service_draining"), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_counts_settle(&envoy, N as u64).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_slower_than_the_deadline_gives_envoys_504_when_it_fires() {
    let up = FakeLlm::start().await.unwrap();
    let envoy = Envoy::start_repo(
        up.port(),
        Some(json!({"deadline": {"min_budget_ms": 1000}})),
    )
    .expect("Envoy starts");
    let client = reqwest::Client::new();
    let one = |stream: bool| {
        let client = &client;
        let envoy = &envoy;
        async move {
            let sent = Instant::now();
            let resp = client
                .post(envoy.traffic("/v1/chat/completions"))
                .header("x-request-timeout-ms", "1500")
                .header("x-fake-delay-ms", "5000")
                .json(&chat_body(stream))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (status, text, sent.elapsed())
        }
    };
    let started = Instant::now();
    let results = join_all((0..N).map(|i| one(i % 2 == 0))).await;
    for (status, text, took) in results {
        assert_eq!((status, text.as_str()), (504, "upstream request timeout"));
        assert!(
            took >= Duration::from_millis(1_400) && took < Duration::from_millis(4_000),
            "the deadline fired after {took:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_counts_settle(&envoy, N as u64).await;
    let timeouts = stat_value(&envoy, "cluster.llm_upstream.upstream_rq_timeout")
        .await
        .unwrap();
    assert_eq!(timeouts, Some(N as u64));
    // Not refused early: the plugin forwarded every one.
    assert_eq!(envoy.stat("drainpipe_rejected_deadline").await.unwrap(), 0);
}
