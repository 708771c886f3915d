//! `drainpipe controller` with a real Envoy: the plugin in
//! `envoy/envoy-controller.yaml` follows the controller's drain state, within
//! one poll interval, on every worker.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drainpipe_tests::envoy::{plugin_wasm, EnvoyConfig};
use drainpipe_tests::load::assert_drain_rejected;
use drainpipe_tests::process::ChildGuard;
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm, Ports};
use serde_json::{json, Value};

/// The controller process, killed on drop.
type Controller = ChildGuard;

async fn start_controller(port: u16) -> Controller {
    // Guarded at once, so every path below kills and reaps it.
    let controller = ChildGuard::new(
        Command::new(drainpipe_tests::ops::drainpipe_bin().expect("the drainpipe binary"))
            .args([
                "controller",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--linger",
                "20s",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("drainpipe controller starts"),
    );
    let url = format!("http://127.0.0.1:{port}/drain");
    for _ in 0..200 {
        if reqwest::get(&url).await.is_ok() {
            return controller;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("controller never answered on {url}");
}

async fn setup() -> (FakeLlm, Controller, Envoy) {
    let upstream = FakeLlm::start().await.unwrap();
    let ports = Ports::fresh(upstream.port());
    let controller = start_controller(ports.controller).await;
    let cfg = EnvoyConfig::repo_controller()
        .unwrap()
        .localize(ports, &plugin_wasm().unwrap())
        .patch_plugin(
            "drainpipe",
            json!({"admit_window_ms": 1000, "drain_controller": {"poll_ms": 200}}),
        );
    let opts = EnvoyOptions {
        concurrency: 4,
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::start(&cfg, ports, opts).expect("Envoy starts");
    (upstream, controller, envoy)
}

async fn readiness(envoy: &Envoy) -> String {
    let v: Value = reqwest::get(envoy.traffic("/healthz/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["status"].as_str().unwrap().to_string()
}

/// Waits until readiness reports `state` on several fresh connections (so
/// several workers), returning how long it took.
async fn until_state(envoy: &Envoy, state: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for _ in 0..8 {
            all &= readiness(envoy).await == state;
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "never reached {state}:\n{}",
            envoy.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_follows_the_controller_drain_within_one_poll_interval() {
    let (_up, ctl, envoy) = setup().await;
    let api = format!("http://127.0.0.1:{}/drain", envoy.ports.controller);
    until_state(&envoy, "serving", Duration::from_secs(5)).await;

    let resp = reqwest::Client::new().post(&api).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["state"], "draining");
    // poll_ms 200: every worker sees it within a poll interval and a tick.
    let took = until_state(&envoy, "draining", Duration::from_secs(3)).await;
    assert!(took < Duration::from_millis(1_000), "took {took:?}");

    // The traffic listener then behaves as with a local drain.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = reqwest::get(envoy.traffic("/v1/models")).await.unwrap();
    assert_drain_rejected(r, 5).await;
    until_state(&envoy, "drained", Duration::from_secs(3)).await;

    let r = reqwest::Client::new().delete(&api).send().await.unwrap();
    assert_eq!(r.status(), 200);
    until_state(&envoy, "serving", Duration::from_secs(3)).await;
    assert!(envoy
        .log()
        .contains("drain started by the drain controller"));
    assert!(envoy.log().contains("drain ended by the drain controller"));
    drop(ctl);
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_unreachable_keeps_the_current_state_and_says_so_once() {
    let (_up, ctl, envoy) = setup().await;
    let api = format!("http://127.0.0.1:{}/drain", envoy.ports.controller);
    reqwest::Client::new().post(&api).send().await.unwrap();
    until_state(&envoy, "draining", Duration::from_secs(3)).await;
    drop(ctl);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_ne!(
        readiness(&envoy).await,
        "serving",
        "a lost controller must not end the drain"
    );
    let log = envoy.log();
    let warnings = log.matches("keeping the current drain state").count();
    assert!(warnings >= 1, "{}", envoy.log_tail(20));
    // One root context per worker (4) and Envoy's main thread: once each,
    // not once per poll (7 polls went by).
    assert!(
        warnings <= 5,
        "logged once per root context, not once per poll: {warnings}"
    );
}

/// A controller on `port` that misbehaves: it reads each request, writes
/// `answer` (if any), then breaks the connection off after `hold`.
fn broken_controller(
    listener: std::net::TcpListener,
    answer: &'static [u8],
    hold: Duration,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let _ = conn.write_all(answer).await;
                tokio::time::sleep(hold).await;
            });
        }
    })
}

/// Envoy, polling a broken controller every 200 ms; waits until the plugin
/// logged `warning`, checks every worker's VM still serves, and returns
/// Envoy's log.
async fn poll_a_broken_controller(answer: &'static [u8], hold: Duration, warning: &str) -> String {
    let upstream = FakeLlm::start().await.unwrap();
    let ports = Ports::fresh(upstream.port());
    let listener = std::net::TcpListener::bind(("127.0.0.1", ports.controller)).unwrap();
    let broken = broken_controller(listener, answer, hold);
    let cfg = EnvoyConfig::repo_controller()
        .unwrap()
        .localize(ports, &plugin_wasm().unwrap())
        .patch_plugin("drainpipe", json!({"drain_controller": {"poll_ms": 200}}));
    let envoy = Envoy::start(&cfg, ports, EnvoyOptions::default()).expect("Envoy starts");
    let started = Instant::now();
    while !envoy.log().contains(warning) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no warning {warning:?}; log tail:\n{}",
            envoy.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // More polls go by; every worker's VM still serves.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    until_state(&envoy, "serving", Duration::from_secs(3)).await;
    let r = reqwest::get(envoy.traffic("/v1/models")).await.unwrap();
    assert_eq!(r.status(), 200);
    let log = envoy.log();
    assert!(
        !log.contains("panicked") && !log.contains("unexpected status"),
        "the plugin trapped:\n{}",
        envoy.log_tail(30)
    );
    broken.abort();
    log
}

/// A controller that sends its answer's head and breaks off the body: Envoy
/// then fails the call (no answer at all, not a 5xx of its own) and
/// refuses a header read in that callback. The plugin must log it and go
/// on, not trap and take the worker's VM with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_controller_that_breaks_off_its_answer_is_logged_not_a_trap() {
    poll_a_broken_controller(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
          content-length: 4096\r\n\r\n{\"state\"",
        Duration::ZERO,
        "the drain controller did not answer",
    )
    .await;
}

/// A controller that never answers: Envoy ends the call at its timeout
/// (the poll interval) with a 504 of its own, as the shim does.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_controller_is_a_504_from_envoy_at_the_poll_timeout() {
    poll_a_broken_controller(
        b"",
        Duration::from_secs(10),
        "the drain controller answered 504",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_makes_the_controller_drain_by_itself() {
    let (_up, ctl, envoy) = setup().await;
    until_state(&envoy, "serving", Duration::from_secs(5)).await;
    ctl.signal(libc::SIGTERM);
    until_state(&envoy, "draining", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_answers_unknown_paths_and_methods_with_json_errors() {
    let port = drainpipe_tests::envoy::free_port();
    let _ctl = start_controller(port).await;
    let base = format!("http://127.0.0.1:{port}");
    let r = reqwest::get(format!("{base}/nope")).await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    let r = reqwest::Client::new()
        .put(format!("{base}/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST, DELETE");
    // POST is idempotent: the first start time stays.
    let start = || async {
        let r = reqwest::Client::new()
            .post(format!("{base}/drain"))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    };
    let (a, b) = (start().await, start().await);
    assert_eq!(a["drain_started_unix_ms"], b["drain_started_unix_ms"]);
}
