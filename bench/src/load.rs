//! The load generator: a fixed number of requests over a fixed number of
//! keep-alive HTTP/1.1 connections, each connection sending its next request
//! as soon as the previous response has been read to the end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What each request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// A chat completion answered in one JSON body, forwarded to the
    /// upstream.
    Unary,
    /// A streamed chat completion, forwarded: [`STREAM_CHUNKS`] SSE events,
    /// then `data: [DONE]`, as fast as the upstream writes them.
    Streamed,
    /// The JSON completion answered by Envoy itself to a GET (the
    /// direct-response route, [`crate::variants::DIRECT_PATH`]): no
    /// upstream.
    Direct,
    /// A long streamed completion, forwarded: `events` SSE events, one every
    /// `interval_ms`, as an LLM writes tokens; then `data: [DONE]`. Per
    /// response chunk, and the time to the first one.
    Tokens { events: u32, interval_ms: u32 },
}

/// Chunks (SSE events before the last) in each streamed response.
pub const STREAM_CHUNKS: u32 = 8;

/// Request headers that ask the upstream for a [`Workload::Tokens`] stream.
pub const EVENTS_HEADER: &str = "x-bench-events";
pub const INTERVAL_HEADER: &str = "x-bench-interval-ms";

impl Workload {
    pub fn title(self) -> String {
        match self {
            Workload::Unary => "unary (JSON response)".into(),
            Workload::Streamed => "streamed (SSE response)".into(),
            Workload::Direct => "direct response (JSON, answered by Envoy)".into(),
            Workload::Tokens {
                events,
                interval_ms,
            } => format!("token stream (SSE, {events} events, one every {interval_ms} ms)"),
        }
    }

    /// The first word of the title: `unary`, `streamed`, `direct`, `token`.
    pub fn short(self) -> &'static str {
        match self {
            Workload::Unary => "unary",
            Workload::Streamed => "streamed",
            Workload::Direct => "direct",
            Workload::Tokens { .. } => "token",
        }
    }

    fn request(self, addr: SocketAddr) -> anyhow::Result<Request<Full<Bytes>>> {
        const UNARY: &str =
            r#"{"model":"drainpipe-demo-1","messages":[{"role":"user","content":"hi"}]}"#;
        const STREAMED: &str = r#"{"model":"drainpipe-demo-1","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        // The direct response is a GET: Envoy answers on the request
        // headers, and an HTTP/1.1 request body still to come then closes
        // the connection.
        if self == Workload::Direct {
            return Ok(Request::get(crate::variants::DIRECT_PATH)
                .header("host", addr.to_string())
                .header("x-bench", "1")
                .body(Full::new(Bytes::new()))?);
        }
        let body = match self {
            Workload::Unary | Workload::Direct => UNARY,
            Workload::Streamed | Workload::Tokens { .. } => STREAMED,
        };
        let mut request = Request::post("/v1/chat/completions")
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .header("x-bench", "1");
        if let Workload::Tokens {
            events,
            interval_ms,
        } = self
        {
            request = request
                .header(EVENTS_HEADER, events)
                .header(INTERVAL_HEADER, interval_ms);
        }
        Ok(request.body(Full::new(Bytes::from_static(body.as_bytes())))?)
    }

    fn check(self, body: &[u8]) -> bool {
        let needle: &[u8] = match self {
            Workload::Unary | Workload::Direct => b"\"chat.completion\"",
            Workload::Streamed | Workload::Tokens { .. } => b"data: [DONE]",
        };
        let from = body.len().saturating_sub(4096);
        body[from..].windows(needle.len()).any(|w| w == needle)
    }
}

/// What one run of the load generator saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latency of every successful request, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Time to the first response body byte of every successful request,
    /// in microseconds (for a stream: its first token).
    pub first_byte_us: Vec<u32>,
    /// Response body chunks received, over all successful requests (as the
    /// proxy wrote them: each HTTP/1.1 chunk is one).
    pub chunks: u64,
    /// Requests that failed (status other than 200, unexpected body, I/O).
    pub errors: usize,
    /// The first failure, to report.
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// Sends `requests` requests of `workload` to `addr` over `connections`
/// keep-alive connections.
pub async fn drive(
    addr: SocketAddr,
    workload: Workload,
    requests: usize,
    connections: usize,
) -> anyhow::Result<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections.max(1))
        .map(|_| tokio::spawn(connection(addr, workload, requests, Arc::clone(&next))))
        .collect();
    let mut out = Outcome::default();
    for task in tasks {
        let part = task.await.context("a load connection panicked")??;
        out.latencies_us.extend(part.latencies_us);
        out.first_byte_us.extend(part.first_byte_us);
        out.chunks += part.chunks;
        out.errors += part.errors;
        if out.first_error.is_none() {
            out.first_error = part.first_error;
        }
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

/// One connection's share: takes request numbers until `requests` are taken.
/// A broken connection is replaced by a new one.
async fn connection(
    addr: SocketAddr,
    workload: Workload,
    requests: usize,
    next: Arc<AtomicUsize>,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let mut sender = None;
    while next.fetch_add(1, Ordering::Relaxed) < requests {
        if sender.is_none() {
            sender = Some(connect(addr).await?);
        }
        let conn = sender.as_mut().expect("connected above");
        let started = Instant::now();
        let result = async {
            conn.ready().await?;
            let resp = conn.send_request(workload.request(addr)?).await?;
            let status = resp.status();
            let mut incoming = resp.into_body();
            let mut body = Vec::new();
            let mut first_byte = None;
            let mut chunks = 0u64;
            while let Some(frame) = incoming.frame().await {
                if let Ok(data) = frame?.into_data() {
                    if !data.is_empty() {
                        first_byte.get_or_insert_with(|| started.elapsed());
                        chunks += 1;
                        body.extend_from_slice(&data);
                    }
                }
            }
            if status != 200 || !workload.check(&body) {
                bail!(
                    "status {status}, body {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                );
            }
            anyhow::Ok((first_byte.unwrap_or_else(|| started.elapsed()), chunks))
        }
        .await;
        let micros = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
        match result {
            Ok((first_byte, chunks)) => {
                out.latencies_us.push(micros(started.elapsed()));
                out.first_byte_us.push(micros(first_byte));
                out.chunks += chunks;
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
                sender = None;
            }
        }
    }
    Ok(out)
}

async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
