//! The drain through a real Envoy: readiness, the admit window, the 503
//! contract, streams that finish whole, exact in-flight counts across
//! workers, and the return to serving.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drainpipe_tests::envoy::upstream_and_envoy;
use drainpipe_tests::fake_llm::{chat_body, sse_events};
use drainpipe_tests::load::{
    assert_drain_rejected, assert_whole_stream, drain_api, drained, fast_drain, open_stream,
    read_to_end, wait_drain_status,
};
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm};
use futures::future::join_all;
use serde_json::{json, Value};

async fn setup(concurrency: u32) -> (FakeLlm, Envoy) {
    let opts = EnvoyOptions {
        concurrency,
        ..EnvoyOptions::default()
    };
    upstream_and_envoy(fast_drain(), opts).await
}

async fn ready(envoy: &Envoy) -> (u16, Value) {
    let resp = reqwest::get(envoy.traffic("/healthz/ready")).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_flips_readiness_then_rejects_with_the_503_contract_and_delete_restores_serving() {
    let (_up, envoy) = setup(2).await;
    assert_eq!(ready(&envoy).await, (200, json!({"status": "serving"})));

    let (code, status) = drain_api(&envoy, reqwest::Method::POST).await;
    assert_eq!(code, 202);
    assert_eq!(status["state"], "draining");
    let started = status["drain_started_unix_ms"].as_u64().unwrap();
    let (code, body) = ready(&envoy).await;
    assert_eq!((code, body), (503, json!({"status": "draining"})));

    // Inside the admit window: forwarded, deadline inside the grace period,
    // and Envoy's own drain closes the keep-alive connection.
    let client = reqwest::Client::new();
    let sent_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let resp = client
        .post(envoy.traffic("/echo/admitted"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["connection"], "close");
    let seen: Value = resp.json().await.unwrap();
    // The budget Envoy's router enforces (and tells the upstream).
    let budget: u64 = seen["headers"]["x-envoy-expected-rq-timeout-ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let deadline = sent_unix_ms + budget;
    assert!(
        deadline <= started + 10_000,
        "deadline {deadline} past the grace end"
    );

    // A second POST keeps the first start time.
    let (code, again) = drain_api(&envoy, reqwest::Method::POST).await;
    assert_eq!(code, 202);
    assert_eq!(again["drain_started_unix_ms"].as_u64(), Some(started));

    // After the admit window: the exact 503 contract.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let resp = client
        .post(envoy.traffic("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    let h = assert_drain_rejected(resp, 5).await;
    // Envoy adds it after the drain (`--drain-strategy immediate`).
    assert_eq!(h["connection"], "close");

    let status = wait_drain_status(&envoy, Duration::from_secs(5), drained).await;
    assert_eq!(status["inflight"], 0);
    assert_eq!(status["rejected_draining"], 1);
    assert!(status["elapsed_ms"].as_u64().unwrap() >= 1_000);
    assert_eq!(ready(&envoy).await, (503, json!({"status": "drained"})));
    assert_eq!(envoy.stat("drainpipe_rejected_draining").await.unwrap(), 1);
    assert_eq!(envoy.stat("drainpipe_state").await.unwrap(), 3);

    let (code, status) = drain_api(&envoy, reqwest::Method::DELETE).await;
    assert_eq!(code, 200);
    assert_eq!(status["state"], "serving");
    assert!(status["drain_started_unix_ms"].is_null());
    assert_eq!(ready(&envoy).await, (200, json!({"status": "serving"})));
    let resp = client
        .post(envoy.traffic("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("connection").is_none(),
        "keep-alive is back"
    );
    assert!(envoy.log().contains("drain started"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_started_before_the_drain_arrives_whole() {
    let (_up, envoy) = setup(2).await;
    // 40 tokens, 100 ms apart: about 4 s, well past the 1 s admit window.
    let mut resp = open_stream(&envoy, 40).await;
    let mut body = String::from_utf8(resp.chunk().await.unwrap().unwrap().to_vec()).unwrap();

    let (code, _) = drain_api(&envoy, reqwest::Method::POST).await;
    assert_eq!(code, 202);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // The stream is still in flight: rejecting, not drained.
    let (_, status) = drain_api(&envoy, reqwest::Method::GET).await;
    assert_eq!(status["state"], "rejecting", "{status}");
    assert_eq!(status["inflight"], 1);
    let rejected = reqwest::get(envoy.traffic("/v1/models")).await.unwrap();
    assert_eq!(rejected.status(), 503);

    body.push_str(&read_to_end(resp, Instant::now()).await.whole());
    assert_whole_stream(&body, 40);
    let events = sse_events(&body);
    for (i, event) in events[..40].iter().enumerate() {
        let v: Value = serde_json::from_str(event).unwrap();
        assert_eq!(v["choices"][0]["delta"]["content"], format!("token{i} "));
    }
    let status = wait_drain_status(&envoy, Duration::from_secs(5), drained).await;
    assert_eq!(status["inflight"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn inflight_is_exact_across_four_workers() {
    let (_up, envoy) = setup(4).await;
    const STREAMS: usize = 12;
    // A client per stream: separate connections, spread over the workers.
    // Opened together, and 5 s long, so that none has ended by the time the
    // count is read, even on a loaded machine.
    let open = join_all((0..STREAMS).map(|_| async {
        let mut resp = open_stream(&envoy, 50).await;
        resp.chunk().await.unwrap().expect("first token");
        resp
    }))
    .await;
    assert_eq!(
        envoy.stat("drainpipe_inflight").await.unwrap(),
        STREAMS as u64
    );
    let (_, status) = drain_api(&envoy, reqwest::Method::GET).await;
    assert_eq!(status["inflight"], STREAMS as u64);
    // The streams really are spread over several workers.
    let filter = format!(
        "/stats?filter=listener.127.0.0.1_{}.worker_.*downstream_cx_total",
        envoy.ports.traffic
    );
    let per_worker = reqwest::get(envoy.admin(&filter))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let busy = per_worker.lines().filter(|l| !l.ends_with(": 0")).count();
    assert!(busy >= 2, "streams all landed on one worker:\n{per_worker}");

    let (code, _) = drain_api(&envoy, reqwest::Method::POST).await;
    assert_eq!(code, 202);
    for resp in open {
        let body = read_to_end(resp, Instant::now()).await.whole();
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    }
    let status = wait_drain_status(&envoy, Duration::from_secs(5), drained).await;
    assert_eq!(status["inflight"], 0);
    envoy.counts_settled().await;
    let status = wait_drain_status(&envoy, Duration::from_secs(5), drained).await;
    assert_eq!(status["admitted"], STREAMS as u64);
    assert_eq!(
        envoy.stat("drainpipe_completed").await.unwrap(),
        STREAMS as u64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_abort_mid_stream_releases_the_inflight_count() {
    let (_up, envoy) = setup(2).await;
    let mut resp = open_stream(&envoy, 100).await;
    resp.chunk().await.unwrap().expect("first token");
    assert_eq!(envoy.stat("drainpipe_inflight").await.unwrap(), 1);
    drop(resp);
    let status = wait_drain_status(&envoy, Duration::from_secs(5), |s| s["inflight"] == 0).await;
    envoy.counts_settled().await;
    assert_eq!(status["state"], "serving");
    assert_eq!(envoy.stat("drainpipe_completed").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_probe_is_never_forwarded_nor_counted() {
    let (_up, envoy) = setup(2).await;
    for _ in 0..3 {
        assert_eq!(ready(&envoy).await.0, 200);
    }
    assert_eq!(envoy.stat("drainpipe_admitted").await.unwrap(), 0);
    // The drain API is not reachable from the traffic listener: forwarded
    // like any path (the fake upstream has no /drain).
    let resp = reqwest::Client::new()
        .post(envoy.traffic("/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(ready(&envoy).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_api_answers_unknown_paths_and_methods_with_json_errors() {
    let (_up, envoy) = setup(2).await;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", envoy.ports.drain);
    let resp = client.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let resp = client.put(format!("{base}/drain")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, POST, DELETE");
    assert_eq!(ready(&envoy).await.0, 200, "no drain was started");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_connection_gets_goaway_once_the_drain_starts() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (_up, envoy) = setup(2).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", envoy.ports.traffic))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c prior-knowledge handshake with Envoy");
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let get = |path: &str| {
        hyper::Request::get(format!("http://127.0.0.1{path}"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let resp = sender.send_request(get("/echo/before")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // While serving, the connection stays open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!closed.is_finished(), "connection closed before any drain");
    let resp = sender
        .send_request(get("/echo/still-serving"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    assert!(!closed.is_finished());

    let (code, _) = drain_api(&envoy, reqwest::Method::POST).await;
    assert_eq!(code, 202);
    let drain_started = Instant::now();
    // Inside the admit window the request is served, and Envoy's drain
    // answers it by starting the HTTP/2 drain sequence: GOAWAY, then close.
    let resp = sender.send_request(get("/echo/during")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let closed_at = tokio::time::timeout(Duration::from_secs(15), closed)
        .await
        .expect("Envoy closes the HTTP/2 connection after GOAWAY")
        .unwrap();
    assert!(closed_at.duration_since(drain_started) < Duration::from_secs(12));
    assert!(
        sender.send_request(get("/echo/after")).await.is_err(),
        "no new stream on a connection that got GOAWAY"
    );
}
