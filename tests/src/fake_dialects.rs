//! A fake upstream for the APIs besides OpenAI Chat Completions, on
//! loopback, speaking HTTP/1.1 and HTTP/2 without TLS (h2c, for gRPC) on
//! one port:
//!
//! - `POST /v1/messages` (Anthropic Messages): `stream: false` gives a
//!   `message`; `stream: true` the Messages event stream (`message_start`,
//!   `content_block_start`, `content_block_delta` per token,
//!   `content_block_stop`, `message_delta`, `message_stop`, each with its
//!   `event:` line);
//! - `POST /v1/responses` (OpenAI Responses, `stream: true`):
//!   `response.created`, `response.output_text.delta` per token,
//!   `response.completed`;
//! - gRPC (`application/grpc`) `/drainpipe.test.Echo/Unary` echoes the
//!   request message; `/drainpipe.test.Echo/Stream` answers with one message
//!   per token, then `grpc-status: 0`.
//!
//! Knobs, as request headers (gRPC metadata alike), as in
//! [`crate::fake_llm`]: `x-fake-chunks` (default 5), `x-fake-chunk-delay-ms`
//! (default 50).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::fake_llm::knob;

/// The model name the fake serves, as [`crate::fake_llm`].
pub use crate::fake_llm::MODEL;

/// A running fake upstream; stops when dropped.
pub struct FakeDialects {
    pub addr: SocketAddr,
    received: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FakeDialects {
    /// Starts on a free loopback port.
    pub async fn start() -> anyhow::Result<FakeDialects> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| anyhow::anyhow!("fake upstream cannot listen on loopback: {e}"))?;
        let addr = listener.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let app = router(Arc::clone(&received));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FakeDialects {
            addr,
            received,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many requests reached this upstream.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for FakeDialects {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router(received: Arc<AtomicU64>) -> Router {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/responses", post(responses))
        .route("/drainpipe.test.Echo/Unary", post(grpc_unary))
        .route("/drainpipe.test.Echo/Stream", post(grpc_stream))
        .layer(axum::middleware::from_fn_with_state(received, count))
}

async fn count(
    State(received): State<Arc<AtomicU64>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    received.fetch_add(1, Ordering::SeqCst);
    next.run(req).await
}

fn tokens(headers: &HeaderMap) -> (Vec<String>, Duration) {
    let n = knob(headers, "x-fake-chunks", 5);
    let delay = Duration::from_millis(knob(headers, "x-fake-chunk-delay-ms", 50));
    ((0..n).map(|i| format!("token{i} ")).collect(), delay)
}

fn sse(stream: impl futures::Stream<Item = String> + Send + 'static) -> Response {
    use futures::StreamExt;
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(
            stream.map(|s| Ok::<_, Infallible>(Bytes::from(s))),
        ))
        .expect("static response parts are valid")
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// `POST /v1/messages`: a `message`, or the Messages event stream (also
/// served by the fake LLM).
pub async fn messages(headers: HeaderMap, Json(request): Json<Value>) -> Response {
    let (words, delay) = tokens(&headers);
    let usage = json!({"input_tokens": 1, "output_tokens": words.len()});
    let message = |content: Value, stop: Value| {
        json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": MODEL,
               "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage})
    };
    if request["stream"].as_bool() != Some(true) {
        return Json(message(
            json!([{"type": "text", "text": words.concat()}]),
            json!("end_turn"),
        ))
        .into_response();
    }
    let start = message(json!([]), Value::Null);
    let n = words.len();
    sse(async_stream::stream! {
        yield event("message_start", json!({"type": "message_start", "message": start}));
        yield event("content_block_start", json!({"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "text", "text": ""}}));
        for (i, word) in words.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(delay).await;
            }
            yield event("content_block_delta", json!({"type": "content_block_delta", "index": 0,
                                                      "delta": {"type": "text_delta", "text": word}}));
        }
        yield event("content_block_stop", json!({"type": "content_block_stop", "index": 0}));
        yield event("message_delta", json!({"type": "message_delta",
                                            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                                            "usage": {"output_tokens": n}}));
        yield event("message_stop", json!({"type": "message_stop"}));
    })
}

async fn responses(headers: HeaderMap, Json(_request): Json<Value>) -> Response {
    let (words, delay) = tokens(&headers);
    let response = |status: &str, output: Value| {
        json!({"id": "resp_fake", "object": "response", "created_at": 0, "model": MODEL,
               "status": status, "output": output, "parallel_tool_calls": false,
               "tool_choice": "auto", "tools": []})
    };
    let created = response("in_progress", json!([]));
    let text = words.concat();
    let done = response(
        "completed",
        json!([{"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}]),
    );
    sse(async_stream::stream! {
        let mut seq = 0u64;
        yield event("response.created", json!({"type": "response.created", "sequence_number": seq, "response": created}));
        for (i, word) in words.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(delay).await;
            }
            seq += 1;
            yield event("response.output_text.delta", json!({"type": "response.output_text.delta",
                "sequence_number": seq, "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                "delta": word, "logprobs": []}));
        }
        seq += 1;
        yield event("response.completed", json!({"type": "response.completed", "sequence_number": seq, "response": done}));
    })
}

/// One gRPC message: uncompressed, length-prefixed.
fn grpc_message(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

fn grpc_response(
    frames: impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + 'static,
) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/grpc")
        .body(Body::new(StreamBody::new(frames)))
        .expect("static response parts are valid")
}

fn grpc_ok() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

async fn grpc_unary(body: Bytes) -> Response {
    // The request's message, echoed: the payload after the 5-byte prefix.
    let payload = body.get(5..).unwrap_or_default().to_vec();
    grpc_response(async_stream::stream! {
        yield Ok(Frame::data(grpc_message(&payload)));
        yield Ok(Frame::trailers(grpc_ok()));
    })
}

async fn grpc_stream(headers: HeaderMap) -> Response {
    let (words, delay) = tokens(&headers);
    grpc_response(async_stream::stream! {
        for (i, word) in words.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(delay).await;
            }
            yield Ok(Frame::data(grpc_message(word.as_bytes())));
        }
        yield Ok(Frame::trailers(grpc_ok()));
    })
}
