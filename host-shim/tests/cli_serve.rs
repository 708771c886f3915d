//! `drainpipe-shim serve` and `drainpipe-shim drain` as users run them: the
//! reverse proxy with the plugin in front of the fake LLM upstream, the
//! drain API on its admin endpoint, the preStop client, and a graceful exit
//! on SIGTERM with a stream in flight.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drainpipe_tests::envoy::{free_port, Scratch};
use drainpipe_tests::fake_llm::sse_events;
use drainpipe_tests::FakeLlm;
use serde_json::{json, Value};

struct Shim {
    child: Child,
    traffic: u16,
    admin: u16,
    _dir: Scratch,
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(upstream: u16) -> Shim {
    let dir = Scratch::new("shim-serve").unwrap();
    let config = dir.path().join("traffic.json");
    std::fs::write(
        &config,
        json!({"admit_window_ms": 500, "grace_ms": 8000, "deadline": {"min_budget_ms": 1000}})
            .to_string(),
    )
    .unwrap();
    let admin_config = dir.path().join("admin.json");
    std::fs::write(&admin_config, json!({"role": "admin"}).to_string()).unwrap();
    let (traffic, admin) = (free_port(), free_port());
    let wasm = std::env::var("DRAINPIPE_WASM").unwrap_or_else(|_| {
        format!(
            "{}/../target/wasm32-wasip1/release/drainpipe.wasm",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let mut shim = Shim {
        child: Command::new(env!("CARGO_BIN_EXE_drainpipe-shim"))
            .arg("serve")
            .args(["--wasm", &wasm])
            .arg("--config")
            .arg(&config)
            .arg("--admin-config")
            .arg(&admin_config)
            .args(["--listen", &format!("127.0.0.1:{traffic}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--upstream", &format!("http://127.0.0.1:{upstream}")])
            .args(["--workers", "2", "--grace", "10s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("drainpipe-shim serve starts"),
        traffic,
        admin,
        _dir: dir,
    };
    let ready = format!("http://127.0.0.1:{traffic}/healthz/ready");
    for _ in 0..600 {
        if let Some(status) = shim.child.try_wait().unwrap() {
            panic!("drainpipe-shim serve exited at start-up: {status}");
        }
        if reqwest::get(&ready).await.is_ok() {
            return shim;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("drainpipe-shim serve never listened on {ready}");
}

fn chat(stream: bool) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_proxies_through_the_plugin_and_drains_with_the_503_contract() {
    let up = FakeLlm::start().await.unwrap();
    let shim = serve(up.port()).await;
    let base = format!("http://127.0.0.1:{}", shim.traffic);
    let admin = format!("http://127.0.0.1:{}", shim.admin);
    let client = reqwest::Client::new();

    let r = client
        .post(format!("{base}/echo/x"))
        .header("x-request-timeout-ms", "12000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-timeout-ms"], "12000");
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat(true))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert_eq!(sse_events(&body).last(), Some(&"[DONE]"));

    let r = client.post(format!("{admin}/drain")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let ready = client
        .get(format!("{base}/healthz/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    drainpipe_tests::load::assert_drain_rejected(r, 5).await;

    // The admitted count reaches the stats on the workers' next tick.
    tokio::time::sleep(drainpipe_tests::envoy::COUNTS_SETTLE).await;
    let stats = client
        .get(format!("{admin}/stats/prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        drainpipe_tests::envoy::prometheus_value(&stats, "drainpipe_rejected_draining"),
        Some(1)
    );
    assert_eq!(
        drainpipe_tests::envoy::prometheus_value(&stats, "drainpipe_admitted"),
        Some(2)
    );

    // The preStop client against the shim's admin endpoint.
    let out = Command::new(env!("CARGO_BIN_EXE_drainpipe-shim"))
        .args(["drain", "--admin", &admin, "--wait", "--timeout", "5s"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("drained"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_waits_for_the_stream_in_flight_then_exits_zero() {
    let up = FakeLlm::start().await.unwrap();
    let mut shim = serve(up.port()).await;
    let base = format!("http://127.0.0.1:{}", shim.traffic);
    let mut resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("x-fake-chunks", "20")
        .header("x-fake-chunk-delay-ms", "100")
        .json(&chat(true))
        .send()
        .await
        .unwrap();
    let mut body = String::from_utf8(resp.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(shim.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let signalled = Instant::now();
    while let Some(chunk) = resp.chunk().await.expect("stream not cut by the shutdown") {
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(sse_events(&body).len(), 22, "{body}");
    let status = loop {
        if let Some(s) = shim.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "shim did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn drain_client_fails_clearly_when_the_admin_endpoint_is_unreachable() {
    let out = Command::new(env!("CARGO_BIN_EXE_drainpipe-shim"))
        .args(["drain", "--admin", "http://127.0.0.1:1", "--timeout", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
}
