//! envoy/prestop.sh against a real Envoy: it drains while a stream is in
//! flight, waits for it, and stops Envoy cleanly.

use std::process::Command;
use std::time::{Duration, Instant};

use drainpipe_tests::envoy::{repo_root, upstream_and_envoy};
use drainpipe_tests::fake_llm::sse_events;
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm};
use serde_json::json;

fn prestop(envoy: &Envoy, timeout_s: u32) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg(repo_root().join("envoy/prestop.sh"))
        .env("DRAIN_URL", envoy.drain_api())
        .env("ENVOY_ADMIN", envoy.admin(""))
        .env("DRAIN_TIMEOUT_S", timeout_s.to_string());
    cmd
}

async fn setup() -> (FakeLlm, Envoy) {
    let patch = json!({"admit_window_ms": 500, "grace_ms": 8000});
    upstream_and_envoy(patch, EnvoyOptions::default()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn prestop_waits_for_the_stream_then_stops_envoy_cleanly() {
    let (_up, mut envoy) = setup().await;
    let client = reqwest::Client::new();
    let mut resp = client
        .post(envoy.traffic("/v1/chat/completions"))
        .header("x-fake-chunks", "30")
        .header("x-fake-chunk-delay-ms", "100")
        .json(&json!({"model": "m", "messages": [], "stream": true}))
        .send()
        .await
        .unwrap();
    let mut body = String::from_utf8(resp.chunk().await.unwrap().unwrap().to_vec()).unwrap();

    let script = prestop(&envoy, 20).output().unwrap();
    // The script returned: the stream must already be complete and Envoy
    // stopping.
    while let Some(chunk) = resp.chunk().await.expect("stream not reset") {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let out = String::from_utf8_lossy(&script.stdout).into_owned();
    assert!(
        script.status.success(),
        "prestop failed:\n{out}{}",
        String::from_utf8_lossy(&script.stderr)
    );
    assert!(out.contains("drain started"), "{out}");
    assert!(
        out.contains("inflight=1"),
        "progress shows the stream: {out}"
    );
    assert!(out.contains("drained after"), "{out}");
    assert_eq!(sse_events(&body).len(), 32, "{body}");
    assert_eq!(sse_events(&body).last(), Some(&"[DONE]"));
    let status = envoy
        .wait_exit(Duration::from_secs(10))
        .expect("Envoy exits after prestop");
    assert!(
        status.success(),
        "Envoy exit status {status}:\n{}",
        envoy.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prestop_times_out_nonzero_but_still_stops_envoy() {
    let (_up, mut envoy) = setup().await;
    let client = reqwest::Client::new();
    // Admitted before the drain with a 60 s default budget: outlives the
    // 2 s timeout.
    let mut resp = client
        .post(envoy.traffic("/v1/chat/completions"))
        .header("x-fake-chunks", "600")
        .header("x-fake-chunk-delay-ms", "100")
        .json(&json!({"model": "m", "messages": [], "stream": true}))
        .send()
        .await
        .unwrap();
    resp.chunk().await.unwrap().unwrap();
    let started = Instant::now();
    let script = prestop(&envoy, 2).output().unwrap();
    let out = String::from_utf8_lossy(&script.stdout).into_owned();
    assert_eq!(script.status.code(), Some(1), "{out}");
    assert!(
        out.contains("timed out after 2s: state=rejecting inflight=1"),
        "{out}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    envoy
        .wait_exit(Duration::from_secs(10))
        .expect("Envoy stopped anyway");
}

#[tokio::test(flavor = "multi_thread")]
async fn prestop_fails_clearly_when_the_drain_api_is_unreachable() {
    let (_up, envoy) = setup().await;
    let out = prestop(&envoy, 2)
        .env("DRAIN_URL", "http://127.0.0.1:1/drain")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cannot reach the drain API"));
    let bad = prestop(&envoy, 2)
        .env("DRAIN_TIMEOUT_S", "soon")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("DRAIN_TIMEOUT_S must be whole seconds"));
}
