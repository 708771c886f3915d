//! HTTP/1.1 written by hand over TCP: a blocking client for the task
//! runner and the readiness waits (no runtime needed), and, with the
//! `async` feature, [`raw_request`] for the tests' requests a well-behaved
//! client library refuses to send or to abort.
//!
//! Both read a response until its body is complete, not until the server
//! closes: a draining Envoy keeps the connection open for its drain timeout
//! after `connection: close`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context as _;

/// A response read from a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// The response head, lowercased.
    pub head: String,
    /// The body as received (a chunked body keeps its chunk framing).
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Splits a response as read into head and body.
    pub fn parse(buf: &[u8]) -> anyhow::Result<RawResponse> {
        let split = head_end(buf)
            .with_context(|| format!("no response head in {:?}", String::from_utf8_lossy(buf)))?;
        let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        Ok(RawResponse {
            status,
            head,
            body: buf[split + 4..].to_vec(),
        })
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The `content-length` of a response read so far, once its head is whole:
/// `(where the body starts, its length)`.
fn content_length(buf: &[u8]) -> Option<(usize, usize)> {
    let split = head_end(buf)?;
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())?;
    Some((split + 4, len))
}

/// Whether `buf` holds a whole response framed by `content-length`.
pub fn complete_by_length(buf: &[u8]) -> bool {
    content_length(buf).is_some_and(|(start, len)| buf.len() >= start + len)
}

/// Whether `buf` holds a whole response: framed by `content-length`, or
/// chunked up to its last chunk.
pub fn complete(buf: &[u8]) -> bool {
    if content_length(buf).is_some() {
        return complete_by_length(buf);
    }
    let Some(split) = head_end(buf) else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    head.contains("transfer-encoding: chunked") && buf.ends_with(b"0\r\n\r\n")
}

/// One request on a new connection (`connection: close`), blocking: sends
/// `body` as JSON when it is not empty, reads the response until it is
/// complete or the server closes, each read within `timeout`.
pub fn request(
    addr: impl ToSocketAddrs,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<RawResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    let content_type = if body.is_empty() {
        ""
    } else {
        "content-type: application/json\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n{content_type}content-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while !complete(&out) {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    RawResponse::parse(&out)
}

/// A GET's status, or `None` if nothing answered within 2 s: for polling a
/// readiness endpoint.
pub fn get_status(addr: impl ToSocketAddrs, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Sends `request` (complete bytes, which should ask for `connection:
/// close`) and reads the response: up to its `content-length`, or until
/// the server closes, within `limit`.
#[cfg(feature = "async")]
pub async fn raw_request(
    port: u16,
    request: &[u8],
    limit: Duration,
) -> anyhow::Result<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(request).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        // Stop once a response with a content-length is complete (Envoy
        // waits up to its delayed-close timeout for the client to close);
        // otherwise read to the end. A reset after a complete response is
        // still a response.
        while !complete_by_length(&buf) {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(limit, exchange)
        .await
        .context("raw request timed out")??;
    RawResponse::parse(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_complete_at_its_length_or_its_last_chunk() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        assert!(!complete(head));
        assert!(complete(&[&head[..], b"hello"].concat()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        assert!(!complete(chunked));
        assert!(complete(&[&chunked[..], b"0\r\n\r\n"].concat()));
        assert!(!complete_by_length(&[&chunked[..], b"0\r\n\r\n"].concat()));
        assert!(!complete(b"HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn parse_splits_status_head_and_body() {
        let r = RawResponse::parse(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\r\n{}")
            .unwrap();
        assert_eq!(r.status, 503);
        assert!(r.head.contains("retry-after: 5"));
        assert_eq!(r.body_text(), "{}");
        assert!(RawResponse::parse(b"garbage").is_err());
    }
}
