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
    /// A chat completion answered in one JSON body.
    Unary,
    /// A streamed chat completion: SSE events, then `data: [DONE]`.
    Streamed,
}

/// Chunks (SSE events before the last) in each streamed response.
pub const STREAM_CHUNKS: u32 = 8;

impl Workload {
    pub fn title(self) -> &'static str {
        match self {
            Workload::Unary => "unary (JSON response)",
            Workload::Streamed => "streamed (SSE response)",
        }
    }

    fn request(self, addr: SocketAddr) -> anyhow::Result<Request<Full<Bytes>>> {
        const UNARY: &str =
            r#"{"model":"drainpipe-demo-1","messages":[{"role":"user","content":"hi"}]}"#;
        const STREAMED: &str = r#"{"model":"drainpipe-demo-1","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let body = match self {
            Workload::Unary => UNARY,
            Workload::Streamed => STREAMED,
        };
        Ok(Request::post("/v1/chat/completions")
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .header("x-bench", "1")
            .body(Full::new(Bytes::from_static(body.as_bytes())))?)
    }

    fn check(self, body: &[u8]) -> bool {
        let needle: &[u8] = match self {
            Workload::Unary => b"\"chat.completion\"",
            Workload::Streamed => b"data: [DONE]",
        };
        body.windows(needle.len()).any(|w| w == needle)
    }
}

/// What one run of the load generator saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latency of every successful request, in microseconds.
    pub latencies_us: Vec<u32>,
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
            let body = resp.into_body().collect().await?.to_bytes();
            if status != 200 || !workload.check(&body) {
                bail!(
                    "status {status}, body {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                );
            }
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => out
                .latencies_us
                .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32),
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
