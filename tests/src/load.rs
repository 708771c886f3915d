//! A drain through Envoy, as the end-to-end tests drive it: the drain API
//! calls; streamed completions of the fake upstream, opened and read to
//! their end with each chunk's arrival time; and a run of short requests on
//! fresh connections whose outcomes are checked against the drain's
//! windows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::contract::assert_drain_rejection;
use crate::envoy::{plugin_wasm, EnvoyConfig};
use crate::fake_llm::{chat_body, sse_events};
use crate::ops::Supervised;
use crate::{Envoy, FakeLlm, Ports};

/// Short windows so a drain test runs in seconds: admit 1 s, grace 10 s,
/// minimum budget 1 s (a patch of the traffic plugin's configuration).
pub fn fast_drain() -> Value {
    json!({"admit_window_ms": 1000, "grace_ms": 10000, "deadline": {"min_budget_ms": 1000}})
}

/// A fake LLM upstream, and the shipped Envoy configuration with
/// [`fast_drain`] under `drainpipe run ARGS --` (the `drainpipe` binary at
/// `bin`).
pub async fn supervised(bin: &std::path::Path, args: &[&str]) -> (FakeLlm, Supervised) {
    let upstream = FakeLlm::start().await.expect("fake upstream");
    let ports = Ports::fresh(upstream.port());
    let cfg = EnvoyConfig::repo()
        .expect("the shipped Envoy configuration")
        .localize(ports, &plugin_wasm().expect("the plugin's release wasm"))
        .patch_plugin("drainpipe", fast_drain());
    let sup =
        Supervised::start_with(bin, &cfg, ports, args).expect("Envoy starts under drainpipe run");
    (upstream, sup)
}

/// Calls the drain API (`GET`, `POST` or `DELETE /drain`): the status code
/// and the JSON status.
pub async fn drain_api(envoy: &Envoy, method: reqwest::Method) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, envoy.drain_api())
        .send()
        .await
        .expect("the drain listener answers");
    let code = resp.status().as_u16();
    (code, resp.json().await.expect("a JSON status"))
}

/// Starts a drain (`POST /drain`, answered 202); the status.
pub async fn start_drain(envoy: &Envoy) -> Value {
    let (code, status) = drain_api(envoy, reqwest::Method::POST).await;
    assert_eq!(code, 202, "POST /drain: {status}");
    status
}

/// Polls `GET /drain` every 50 ms until `done` holds for the status, and
/// returns it; fails after `limit` with the last status.
pub async fn wait_drain_status(
    envoy: &Envoy,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let (_, status) = drain_api(envoy, reqwest::Method::GET).await;
        if done(&status) {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "the drain status did not reach the expected value within {limit:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a drain status reads `drained`.
pub fn drained(status: &Value) -> bool {
    status["state"] == "drained"
}

/// A streamed chat completion of `tokens` tokens `every` apart from the
/// fake upstream behind `url`, on a client (so a connection) of its own;
/// add headers, then send.
pub fn stream_request(url: &str, tokens: u32, every: Duration) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(url)
        .header("x-fake-chunks", tokens.to_string())
        .header("x-fake-chunk-delay-ms", every.as_millis().to_string())
        .json(&chat_body(true))
}

/// Opens a stream of `tokens` tokens 100 ms apart through Envoy's traffic
/// listener; the response has begun with 200.
pub async fn open_stream(envoy: &Envoy, tokens: u32) -> reqwest::Response {
    let url = envoy.traffic("/v1/chat/completions");
    let resp = stream_request(&url, tokens, Duration::from_millis(100))
        .send()
        .await
        .expect("Envoy answers the stream");
    assert_eq!(resp.status(), 200, "the stream begins");
    resp
}

/// A response body read to its end.
#[derive(Debug)]
pub struct Read {
    /// The chunks as they arrived: when (since the reader's start), and
    /// their text.
    pub chunks: Vec<(Duration, String)>,
    /// The error that cut the body, if one did.
    pub cut: Option<String>,
    /// When the body ended or was cut, since the reader's start.
    pub ended_at: Duration,
}

impl Read {
    /// The body, as far as it arrived.
    pub fn body(&self) -> String {
        self.chunks.iter().map(|(_, text)| text.as_str()).collect()
    }

    /// The body, which must have ended without a cut.
    pub fn whole(&self) -> String {
        let body = self.body();
        assert!(
            self.cut.is_none(),
            "stream cut: {:?} after {body:?}",
            self.cut
        );
        body
    }

    /// When the first chunk containing `text` arrived.
    pub fn arrival_of(&self, text: &str) -> Option<Duration> {
        self.chunks
            .iter()
            .find(|(_, chunk)| chunk.contains(text))
            .map(|(at, _)| *at)
    }
}

/// Reads `resp` to its end, or to the error that cuts it, timing each
/// chunk from `t0`.
pub async fn read_to_end(mut resp: reqwest::Response, t0: Instant) -> Read {
    let mut chunks = Vec::new();
    let cut = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                chunks.push((t0.elapsed(), String::from_utf8_lossy(&chunk).into_owned()))
            }
            Ok(None) => break None,
            Err(e) => break Some(format!("{e:?}")),
        }
    };
    Read {
        chunks,
        cut,
        ended_at: t0.elapsed(),
    }
}

/// Asserts that a stream of the fake upstream arrived whole: `tokens` token
/// events, the stop chunk and `[DONE]`.
pub fn assert_whole_stream(body: &str, tokens: u32) {
    let events = sse_events(body);
    assert_eq!(
        events.len(),
        tokens as usize + 2,
        "{tokens} tokens, the stop chunk and [DONE]: {body}"
    );
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
}

/// One short request's outcome: when it was sent (since the run's `t0`),
/// and its status, headers and body, or the error that ended it.
#[derive(Debug)]
pub struct Short {
    pub sent: Duration,
    pub outcome: Result<(u16, HeaderMap, Bytes), String>,
}

/// Short chat completions, each on a fresh connection, one every 100 ms
/// until stopped.
pub struct ShortRequests {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<Short>>,
}

impl ShortRequests {
    /// Starts sending to `url` now; `sent` times count from `t0`.
    pub fn start(url: String, t0: Instant) -> ShortRequests {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let sent = t0.elapsed();
                let outcome = match reqwest::Client::new()
                    .post(&url)
                    .json(&chat_body(false))
                    .send()
                    .await
                {
                    Ok(r) => {
                        let (status, headers) = (r.status().as_u16(), r.headers().clone());
                        match r.bytes().await {
                            Ok(body) => Ok((status, headers, body)),
                            Err(e) => Err(format!("{status}: body {e:?}")),
                        }
                    }
                    Err(e) => Err(format!("{e:?}")),
                };
                out.push(Short { sent, outcome });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            out
        });
        ShortRequests { stop, task }
    }

    /// Stops sending; every request's outcome, in order.
    pub async fn stop(self) -> Vec<Short> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the short requests' task")
    }
}

/// Reads `resp` whole and asserts that it is the drain rejection with
/// `retry_after_s` (the one check, [`assert_drain_rejection`]); its headers,
/// for more checks.
pub async fn assert_drain_rejected(resp: reqwest::Response, retry_after_s: u64) -> HeaderMap {
    let status = resp.status().as_u16().into();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("the rejection's body");
    assert_drain_rejection(status, &|name| header(&headers, name), &body, retry_after_s);
    headers
}

/// A response header's value, if it is text.
pub fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// When each answer may come to a short request sent across a drain, since
/// the run's `t0`.
#[derive(Debug, Clone, Copy)]
pub struct DrainWindows {
    /// Whole answers (200, a `chat.completion`) only to requests sent
    /// before this: the admit window.
    pub admitted_before: Duration,
    /// The drain rejection only to requests sent from this.
    pub rejected_from: Duration,
    /// A failure only for requests sent from this (Envoy stopping).
    pub failing_from: Duration,
    /// The plugin's `retry_after_s`, which the rejection carries.
    pub retry_after_s: u64,
}

/// Checks every short request against `windows`, the rejections with the
/// one drain-rejection check ([`assert_drain_rejection`]); returns how many
/// got the rejection.
pub fn check_across_drain(shorts: &[Short], windows: DrainWindows) -> usize {
    let mut rejected = 0;
    for short in shorts {
        match &short.outcome {
            Ok((200, _, body)) => {
                assert!(
                    short.sent < windows.admitted_before,
                    "admitted after the admit window: {short:?}"
                );
                let body: Value = serde_json::from_slice(body)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {short:?}"));
                assert_eq!(body["object"], "chat.completion", "{short:?}");
            }
            Ok((status, headers, body)) => {
                let header = |name: &str| header(headers, name);
                assert_drain_rejection((*status).into(), &header, body, windows.retry_after_s);
                assert!(
                    short.sent >= windows.rejected_from,
                    "rejected inside the admit window: {short:?}"
                );
                rejected += 1;
            }
            Err(e) => assert!(
                short.sent >= windows.failing_from,
                "a short request failed before {:?}: {e} ({short:?})",
                windows.failing_from
            ),
        }
    }
    rejected
}
