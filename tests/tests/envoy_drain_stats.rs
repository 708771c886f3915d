//! The drain's stats an operator watches, read from a real Envoy's
//! `/stats/prometheus`: the drain's start, its duration to `drained`, the
//! configured grace period, and the responses a drain saw cut.

use std::time::{Duration, Instant};

use drainpipe::metrics;
use drainpipe_tests::envoy::upstream_and_envoy;
use drainpipe_tests::load::{
    drain_api, drained, fast_drain, open_stream, start_drain, wait_drain_status,
};
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm};

/// Admit 1 s, grace 10 s.
async fn setup() -> (FakeLlm, Envoy) {
    upstream_and_envoy(fast_drain(), EnvoyOptions::default()).await
}

async fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy
        .stat(name)
        .await
        .unwrap_or_else(|e| panic!("{e}; Envoy log:\n{}", envoy.log_tail(20)))
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_shows_the_drain_start_its_duration_to_drained_and_the_cut_responses() {
    let (_up, envoy) = setup().await;
    let text = envoy.prometheus().await.unwrap();
    for (name, kind) in [
        (metrics::DRAIN_STARTED_UNIX_MS, "gauge"),
        (metrics::DRAIN_DURATION_MS, "gauge"),
        (metrics::GRACE_MS, "gauge"),
        (metrics::DRAIN_RESETS, "counter"),
        (metrics::STREAMS_ENDED, "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} is not a {kind} in /stats/prometheus:\n{text}"
        );
    }
    assert_eq!(stat(&envoy, metrics::GRACE_MS).await, 10_000);
    assert_eq!(stat(&envoy, metrics::DRAIN_STARTED_UNIX_MS).await, 0);
    assert_eq!(stat(&envoy, metrics::DRAIN_DURATION_MS).await, 0);

    // Two streams in flight: one runs to its end (3 s), the client walks
    // away from the other mid-body during the drain.
    let mut whole = open_stream(&envoy, 30).await;
    let mut cut = open_stream(&envoy, 100).await;
    whole.chunk().await.unwrap();
    cut.chunk().await.unwrap();
    let posted = Instant::now();
    let status = start_drain(&envoy).await;
    let started = status["drain_started_unix_ms"].as_u64().expect("draining");
    assert_eq!(stat(&envoy, metrics::DRAIN_STARTED_UNIX_MS).await, started);
    drop(cut);
    while whole.chunk().await.unwrap().is_some() {}
    let ended = posted.elapsed().as_millis() as u64;

    wait_drain_status(&envoy, Duration::from_secs(10), drained).await;
    let duration = stat(&envoy, metrics::DRAIN_DURATION_MS).await;
    // The last stream's end made it drained: what the client saw, give or
    // take the time a response takes to cross loopback.
    assert!(
        duration + 300 >= ended && duration <= ended + 300,
        "drain duration {duration} ms, the last stream ended {ended} ms after the drain call"
    );
    assert_eq!(stat(&envoy, metrics::DRAIN_RESETS).await, 1);
    assert_eq!(stat(&envoy, metrics::STREAMS_ENDED).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_with_nothing_in_flight_takes_the_admit_window_and_serving_keeps_its_duration() {
    let (_up, envoy) = setup().await;
    // A request served whole before the drain is no reset.
    let resp = reqwest::get(envoy.traffic("/v1/models")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();

    start_drain(&envoy).await;
    wait_drain_status(&envoy, Duration::from_secs(5), drained).await;
    // The worker ticks record it within a second.
    let limit = Instant::now() + Duration::from_secs(3);
    while stat(&envoy, metrics::DRAIN_DURATION_MS).await == 0 && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stat(&envoy, metrics::DRAIN_DURATION_MS).await, 1_000);

    drain_api(&envoy, reqwest::Method::DELETE).await;
    assert_eq!(stat(&envoy, metrics::DRAIN_STARTED_UNIX_MS).await, 0);
    assert_eq!(stat(&envoy, metrics::DRAIN_DURATION_MS).await, 1_000);
    assert_eq!(stat(&envoy, metrics::DRAIN_RESETS).await, 0);
}
