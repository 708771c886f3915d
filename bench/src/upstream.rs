//! The benchmark's upstream: a small OpenAI-shaped server on hyper, fast
//! enough that the proxies, not it, are what is measured.
//!
//! `POST /v1/chat/completions` answers a fixed `chat.completion` JSON body,
//! or, when the request body asks for `"stream":true`, an SSE stream of
//! [`STREAM_CHUNKS`] `chat.completion.chunk` events and `data: [DONE]`, each
//! event written separately. A request with [`EVENTS_HEADER`] (and
//! [`INTERVAL_HEADER`]) gets that many events instead, one every so many
//! milliseconds, as an LLM writes tokens. Sockets use `TCP_NODELAY`, so small
//! writes are not held back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::load::{EVENTS_HEADER, INTERVAL_HEADER, STREAM_CHUNKS};

pub const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"drainpipe-demo-1","choices":[{"index":0,"message":{"role":"assistant","content":"token0 token1 token2 token3 token4 token5 token6 token7 "},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":8,"total_tokens":9}}"#;

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Listens on a free loopback port.
    pub async fn start() -> anyhow::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(handle))
                        .await;
                });
            }
        });
        Ok(Upstream { addr, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
    let number = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
    };
    let events = number(EVENTS_HEADER).unwrap_or(STREAM_CHUNKS);
    let interval = Duration::from_millis(number(INTERVAL_HEADER).unwrap_or(0).into());
    let body = req.into_body().collect().await?.to_bytes();
    let streamed = body.windows(13).any(|w| w == b"\"stream\":true");
    let response = if streamed {
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(sse(events, interval).boxed_unsync())
    } else {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(COMPLETION.as_bytes())).boxed_unsync())
    };
    Ok(response.expect("static response parts are valid"))
}

/// The SSE body: `events` events and the last one with `[DONE]`, each its
/// own frame, with a yield (or `interval`) in between so each one is written
/// by itself.
fn sse(
    events: u32,
    interval: Duration,
) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    let events = futures::stream::unfold(0u32, move |i| async move {
        if i > events {
            return None;
        }
        match interval.is_zero() || i == 0 {
            true => tokio::task::yield_now().await,
            false => tokio::time::sleep(interval).await,
        }
        let event = if i < events {
            format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"drainpipe-demo-1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}]}}\n\n"
            )
        } else {
            "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"drainpipe-demo-1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".to_string()
        };
        Some((Ok(Frame::data(Bytes::from(event))), i + 1))
    });
    StreamBody::new(events)
}
