//! The guests' http calls, carried out: `--cluster NAME=URL` declares a
//! cluster (`http://host:port` for HTTP/1.1, `h2c://host:port` for HTTP/2
//! without TLS, as a cluster with `http2_protocol_options`), and every call
//! a guest makes to it is sent there; the answer (or Envoy's 503 when the
//! cluster cannot be reached) is delivered to the calling context. A call
//! past its timeout gets the router's 504 from the worker's timers. gRPC
//! calls (unary) go to their cluster over HTTP/2 with Envoy's request
//! headers; the answer is the response message or the call's gRPC status
//! (an HTTP status mapped as Envoy maps it, UNAVAILABLE when the cluster
//! cannot be reached). gRPC streams are carried out by
//! [`crate::grpc_streams`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drainpipe_shim::{
    GrpcCallRequest, GrpcCallResponse, Headers, Host, HttpCallRequest, HttpCallResponse, Worker,
};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::grpc_streams::{unreachable_message, Streams, UNREACHABLE};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a cluster is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cluster {
    pub(crate) name: String,
    /// `http://host:port`, whatever the protocol.
    pub(crate) base: String,
    /// HTTP/2 with prior knowledge (h2c), else HTTP/1.1.
    pub(crate) h2: bool,
}

/// Parses `NAME=URL` (`--cluster`).
pub(crate) fn parse_cluster(text: &str) -> Result<Cluster, String> {
    let (name, url) = text
        .split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| format!("{text:?}: expected NAME=URL, e.g. auth=http://127.0.0.1:9000"))?;
    let (h2, rest) = match url.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("h2c", rest)) => (true, rest),
        _ => {
            return Err(format!(
                "{text:?}: the URL must start with http:// (HTTP/1.1) or h2c:// (HTTP/2)"
            ))
        }
    };
    let authority = rest.trim_end_matches('/');
    let base = format!("http://{authority}");
    let uri: hyper::Uri = base
        .parse()
        .map_err(|e| format!("{text:?}: not a URL: {e}"))?;
    if uri.authority().is_none() || authority.contains('/') {
        return Err(format!("{text:?}: expected a scheme, host and port only"));
    }
    Ok(Cluster {
        name: name.to_owned(),
        base,
        h2,
    })
}

/// The clusters and the clients that reach them.
pub(crate) struct Calls {
    clusters: BTreeMap<String, Cluster>,
    http1: Client<HttpConnector, Full<Bytes>>,
}

impl Calls {
    pub(crate) fn new(clusters: &[Cluster]) -> Calls {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Calls {
            clusters: clusters
                .iter()
                .map(|c| (c.name.clone(), c.clone()))
                .collect(),
            http1: Client::builder(TokioExecutor::new())
                .set_host(false)
                .build(connector),
        }
    }

    /// Carries out every call the workers' guests make, until the process
    /// ends.
    pub(crate) async fn run(self: Arc<Self>, host: Host, workers: Vec<Worker>) {
        let waiting = host.calls_waiting();
        // Per worker, the tokens of the http and the gRPC calls under way.
        let mut started = vec![(HashSet::new(), HashSet::new()); workers.len()];
        let mut streams: Vec<_> = workers.iter().map(|_| Streams::default()).collect();
        loop {
            tokio::select! {
                _ = waiting.notified() => {}
                // A VM reloaded under a call, say: look again now and then.
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            for (worker, (http, grpc)) in workers.iter().zip(started.iter_mut()) {
                for call in not_started(http, worker.http_calls(), |c| c.token) {
                    let (calls, worker) = (self.clone(), worker.clone());
                    tokio::spawn(async move {
                        let token = call.token;
                        worker.respond_http_call(token, calls.send(call).await);
                    });
                }
                for call in not_started(grpc, worker.grpc_calls(), |c| c.token) {
                    let (calls, worker) = (self.clone(), worker.clone());
                    tokio::spawn(async move {
                        let token = call.token;
                        worker.respond_grpc_call(token, calls.send_grpc(call).await);
                    });
                }
            }
            for (worker, streams) in workers.iter().zip(streams.iter_mut()) {
                streams.update(worker, |name| self.clusters.get(name).cloned());
            }
        }
    }

    async fn send(&self, call: HttpCallRequest) -> HttpCallResponse {
        let Some(cluster) = self.clusters.get(&call.cluster) else {
            return unreachable_cluster();
        };
        let path = call.headers.get(":path").unwrap_or("/");
        // Over HTTP/2 the call's `:authority` goes as it is (the connection
        // goes to the cluster); over HTTP/1.1 as `host`.
        let uri = match (cluster.h2, call.headers.get(":authority")) {
            (true, Some(authority)) => format!("http://{authority}{path}"),
            _ => format!("{}{path}", cluster.base),
        };
        let mut builder = Request::builder()
            .method(call.headers.get(":method").unwrap_or("GET"))
            .uri(uri);
        if !cluster.h2 {
            if let Some(authority) = call.headers.get_bytes(":authority") {
                builder = builder.header(hyper::header::HOST, authority);
            }
        }
        for (k, v) in call.headers.iter().filter(|(k, _)| !k.starts_with(':')) {
            builder = builder.header(k, v);
        }
        // A guest's own `x-envoy-internal` is kept, not repeated.
        let add_internal = !call.headers.contains("x-envoy-internal");
        builder = envoy_added(builder, add_internal, call.timeout);
        let Ok(request) = builder.body(Full::new(Bytes::from(call.body))) else {
            return unreachable_cluster();
        };
        let started = std::time::Instant::now();
        let sent = tokio::time::timeout(call.timeout, async {
            let response = match cluster.h2 {
                true => h2_request(cluster, request).await.ok()?,
                false => self.http1.request(request).await.ok()?,
            };
            let (parts, body) = response.into_parts();
            let collected = body.collect().await.ok()?;
            Some((parts, collected))
        })
        .await;
        let Ok(Some((parts, collected))) = sent else {
            // A timeout is answered by the worker's timers (504).
            return unreachable_cluster();
        };
        let mut headers = Headers::from_pairs([(":status", parts.status.as_str())]);
        for (k, v) in &parts.headers {
            headers.add(k.as_str(), v.as_bytes());
        }
        headers.add(
            "x-envoy-upstream-service-time",
            started.elapsed().as_millis().to_string(),
        );
        let mut trailers = Headers::new();
        for (k, v) in collected.trailers().into_iter().flatten() {
            trailers.add(k.as_str(), v.as_bytes());
        }
        HttpCallResponse {
            headers,
            body: collected.to_bytes().to_vec(),
            trailers,
        }
    }
}

impl Calls {
    async fn send_grpc(&self, call: GrpcCallRequest) -> GrpcCallResponse {
        // As Envoy reports a cluster it cannot reach (a failed connect is
        // the exchange's only I/O error).
        let unavailable = |connect_error: Option<&std::io::Error>| GrpcCallResponse::Closed {
            status: GrpcCallResponse::UNAVAILABLE,
            message: unreachable_message(connect_error),
        };
        let Some(cluster) = self.clusters.get(&call.cluster) else {
            return unavailable(None);
        };
        let timeout = call.timeout;
        match tokio::time::timeout(timeout, grpc_exchange(cluster, call)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => unavailable(e.downcast_ref()),
            // The worker's timers answered it already.
            Err(_) => GrpcCallResponse::timed_out(),
        }
    }
}

/// The calls of `pending` not started yet; `started` holds the tokens of
/// those under way, and forgets the ones no longer pending (answered,
/// cancelled, or their VM reloaded).
fn not_started<C>(started: &mut HashSet<u32>, pending: Vec<C>, token: fn(&C) -> u32) -> Vec<C> {
    started.retain(|t| pending.iter().any(|c| token(c) == *t));
    pending
        .into_iter()
        .filter(|c| started.insert(token(c)))
        .collect()
}

/// What Envoy's async client and router add last to a call's request:
/// `x-envoy-internal` (if `add_internal`), and the call's timeout as
/// `x-envoy-expected-rq-timeout-ms` (none without a timeout).
fn envoy_added(
    mut request: hyper::http::request::Builder,
    add_internal: bool,
    timeout: Duration,
) -> hyper::http::request::Builder {
    if add_internal {
        request = request.header("x-envoy-internal", "true");
    }
    if !timeout.is_zero() {
        let timeout_ms = timeout.as_millis().to_string();
        request = request.header("x-envoy-expected-rq-timeout-ms", timeout_ms);
    }
    request
}

/// An http call's request over HTTP/2 (h2c), on a connection of its own
/// to the cluster, whatever the request's authority.
async fn h2_request(
    cluster: &Cluster,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, BoxError> {
    let address = cluster.base.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

/// Sends a gRPC request on `tcp` over the cluster's protocol, as Envoy's
/// gRPC client uses it (gRPC wants HTTP/2; over HTTP/1.1 the request gets
/// `host: <the cluster's name>`, and the answer is seldom a gRPC one); the
/// connection is driven in the background.
pub(crate) async fn send_on<B>(
    cluster: &Cluster,
    tcp: tokio::net::TcpStream,
    request: Request<B>,
) -> Result<hyper::Response<hyper::body::Incoming>, BoxError>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    if cluster.h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(sender.send_request(request).await?)
    } else {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        let (mut parts, body) = request.into_parts();
        parts.headers.insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_str(&cluster.name)?,
        );
        Ok(sender
            .send_request(Request::from_parts(parts, body))
            .await?)
    }
}

/// A message in gRPC's length-prefixed framing (not compressed).
pub(crate) fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

/// One unary gRPC exchange over a connection of its own.
async fn grpc_exchange(
    cluster: &Cluster,
    call: GrpcCallRequest,
) -> Result<GrpcCallResponse, BoxError> {
    let address = cluster.base.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    // Envoy's gRPC client's headers, in its order.
    let timeout_ms = call.timeout.as_millis().to_string();
    let mut request = Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/{}/{}",
            call.cluster, call.service, call.method
        ))
        .header("te", "trailers");
    if !call.timeout.is_zero() {
        request = request.header("grpc-timeout", format!("{timeout_ms}m"));
    }
    request = request.header("content-type", "application/grpc");
    for (k, v) in call.initial_metadata.iter() {
        request = request.header(k, v);
    }
    request = envoy_added(request, true, call.timeout);
    // Streamed as Envoy sends it: no content-length.
    let frames = futures::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
        grpc_frame(&call.message),
    ))]);
    let request = request.body(StreamBody::new(frames))?;
    let response = send_on(cluster, tcp, request).await?;
    let (parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        return Ok(GrpcCallResponse::Closed {
            status: http_to_grpc(parts.status),
            message: with_details(""),
        });
    }
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    // A trailers-only answer carries its status in the headers.
    let (status, message) = grpc_status(&trailers)
        .or_else(|| grpc_status(&parts.headers))
        .unwrap_or((13, String::new()));
    if status != 0 {
        return Ok(GrpcCallResponse::Closed {
            status,
            message: with_details(&message),
        });
    }
    let body = collected.to_bytes();
    let length = body
        .get(1..5)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    match length.and_then(|n| body.get(5..5 + n)) {
        Some(message) => Ok(GrpcCallResponse::Message(message.to_vec())),
        None => Ok(GrpcCallResponse::Closed {
            status: 13,
            message: "the response has no whole message".to_owned(),
        }),
    }
}

/// The status message as Envoy reports an upstream's answer: the
/// `grpc-message` with the response's details (`via_upstream`) in braces.
pub(crate) fn with_details(message: &str) -> String {
    match message {
        "" => "via_upstream".to_owned(),
        _ => format!("{message}{{via_upstream}}"),
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<(u32, String)> {
    let status = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((status, message))
}

/// Envoy's mapping of an HTTP status to a gRPC status (as gRPC's spec).
fn http_to_grpc(status: StatusCode) -> u32 {
    drainpipe_shim::http_to_grpc_status(u32::from(status.as_u16()))
}

/// What Envoy answers a call whose cluster it cannot reach.
fn unreachable_cluster() -> HttpCallResponse {
    const BODY: &str = UNREACHABLE;
    HttpCallResponse {
        headers: Headers::from_pairs([
            (":status", "503".to_owned()),
            ("content-length", BODY.len().to_string()),
            ("content-type", "text/plain".to_owned()),
        ]),
        body: BODY.into(),
        trailers: Headers::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_http1_or_h2c_urls() {
        assert_eq!(
            parse_cluster("auth=http://127.0.0.1:9000/"),
            Ok(Cluster {
                name: "auth".into(),
                base: "http://127.0.0.1:9000".into(),
                h2: false
            })
        );
        assert!(parse_cluster("grpc=h2c://127.0.0.1:9001").unwrap().h2);
        for bad in [
            "auth",
            "=http://a:1",
            "auth=https://a:1",
            "auth=http://a:1/x",
        ] {
            assert!(parse_cluster(bad).is_err(), "{bad}");
        }
    }
}
