//! A fake OpenAI-compatible LLM server, and an echo endpoint, on loopback.
//!
//! - `POST /v1/chat/completions`: `stream: false` gives a `chat.completion`;
//!   `stream: true` gives SSE `chat.completion.chunk` events and a final
//!   `data: [DONE]`. Test knobs, as request headers: `x-fake-chunks` (default
//!   5), `x-fake-chunk-delay-ms` (default 50), `x-fake-delay-ms` (before the
//!   response starts, default 0), `x-fake-reset-after-chunks` (streams only:
//!   after that many chunks the connection is aborted mid-body, as a crashing
//!   model server would; absent by default).
//! - `GET /v1/models`: one model.
//! - `POST /v1/messages`: Anthropic Messages, as [`crate::fake_dialects`]
//!   serves it (the event stream with `event:` lines, same knobs).
//! - `GET /v1/realtime` with `upgrade: websocket`: a WebSocket session, as
//!   [`crate::fake_ws`] serves it (echo, `ticks <n> <ms>`, the close
//!   handshake); without the upgrade, 400.
//! - any method on `/echo/...`: the request as JSON (`method`, `path`,
//!   `headers`, a repeated header's values joined with ", "), after
//!   `x-fake-delay-ms`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// The model name the fake serves.
pub const MODEL: &str = "drainpipe-demo-1";

/// A running fake upstream; stops when dropped.
pub struct FakeLlm {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FakeLlm {
    /// Starts on `127.0.0.1:0` (a free port).
    pub async fn start() -> anyhow::Result<FakeLlm> {
        FakeLlm::start_on("127.0.0.1:0".parse()?).await
    }

    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<FakeLlm> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("fake LLM upstream cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router()).await;
        });
        Ok(FakeLlm { addr, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server's routes.
pub fn router() -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/messages", post(crate::fake_dialects::messages))
        .route("/v1/realtime", get(realtime))
        .route("/echo", any(echo))
        .route("/echo/{*rest}", any(echo))
}

/// A test knob's value from a request header, `default` when absent or
/// not a number.
pub(crate) fn knob(headers: &HeaderMap, name: &str, default: u64) -> u64 {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "drainpipe"}]}),
    )
}

/// Accepts a WebSocket upgrade (RFC 6455's handshake) and runs the fake's
/// session on the upgraded connection.
async fn realtime(mut req: Request) -> Response {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (upgrade, key) else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    let upgraded = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(io) = upgraded.await {
            let io = hyper_util::rt::TokioIo::new(io);
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            let _ = crate::fake_ws::serve(ws).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(Body::empty())
        .expect("static response parts are valid")
}

async fn echo(req: Request) -> Json<Value> {
    let delay = knob(req.headers(), "x-fake-delay-ms", 0);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    // A repeated header shows all its values, joined with ", ".
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (n, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes());
        headers
            .entry(n.to_string())
            .and_modify(|all| {
                all.push_str(", ");
                all.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    Json(json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "headers": headers,
    }))
}

async fn chat_completions(headers: HeaderMap, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "body is not JSON", "type": "invalid_request_error", "param": null, "code": null}})),
        )
            .into_response();
    };
    let chunks = knob(&headers, "x-fake-chunks", 5);
    let chunk_delay = Duration::from_millis(knob(&headers, "x-fake-chunk-delay-ms", 50));
    tokio::time::sleep(Duration::from_millis(knob(&headers, "x-fake-delay-ms", 0))).await;
    let reset_after: Option<usize> = headers
        .get("x-fake-reset-after-chunks")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let model = request["model"].as_str().unwrap_or(MODEL).to_string();
    let words: Vec<String> = (0..chunks).map(|i| format!("token{i} ")).collect();

    if request["stream"].as_bool() != Some(true) {
        return Json(json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": chunks, "total_tokens": chunks + 1},
        }))
        .into_response();
    }

    let stream = async_stream::stream! {
        for (i, word) in words.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(chunk_delay).await;
            }
            if reset_after == Some(i) {
                // A body error makes the server abort the connection without
                // ending the chunked body.
                yield Err(std::io::Error::other("x-fake-reset-after-chunks"));
                return;
            }
            let chunk = json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}],
            });
            yield Ok::<_, std::io::Error>(Bytes::from(format!("data: {chunk}\n\n")));
        }
        let last = json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        });
        yield Ok(Bytes::from(format!("data: {last}\n\ndata: [DONE]\n\n")));
    };
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .expect("static response parts are valid")
}

/// A chat completion request body for [`MODEL`], streamed or not.
pub fn chat_body(stream: bool) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

/// Reads an SSE body with event names (Anthropic's): each event's `event:`
/// name, if it has one, and its `data:` payload, in order.
pub fn sse_named_events(body: &str) -> Vec<(Option<&str>, &str)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = "";
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n);
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d;
                }
            }
            (name, data)
        })
        .collect()
}

/// Reads an SSE body: the `data:` payloads in order.
pub fn sse_events(body: &str) -> Vec<&str> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .collect()
}
