//! The traffic path: every request passes through the filter as in Envoy
//! (request headers, the request body chunk by chunk, response headers, the
//! response body chunk by chunk) and goes to the upstream unless the filter
//! answers locally.
//!
//! As in Envoy's filter chain, data the filter pauses on is buffered, not
//! forwarded: a paused body chunk stays in the stream's buffer and the next
//! body callback sees all of it; what goes on is the buffer as the filter
//! left it once a callback lets iteration continue (or the filter resumes
//! the stream). Headers a callback pauses wait likewise, with the body
//! behind them. The headers the filter sees are Envoy's: `:authority`,
//! `:path`, `:method`, `:scheme` (over HTTP/2 `:method`, `:scheme`,
//! `:authority`, `:path`), the client's headers in their order, then
//! `x-forwarded-proto` and `x-request-id` (request) and
//! `x-envoy-upstream-service-time` (response); the client gets `date` and
//! `server: envoy` after the filter's headers.
//!
//! Clients speak HTTP/1.1 or HTTP/2 (h2c); the upstream is HTTP/1.1, or
//! HTTP/2 with `--upstream h2c://...`. Trailers received over HTTP/2 go
//! through the filter's trailer callbacks (the body callback before them
//! has `end_of_stream` false), and what the filter leaves goes on; over
//! HTTP/1.1 they are dropped on receipt and none are sent, as Envoy's
//! HTTP/1.1 codec does without `enable_trailers`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use drainpipe_shim::{Decision, Headers, HttpStream, LocalResponse, Outcome, Worker};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;
type Chunks = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>;
type UpstreamResponse = Result<Response<Incoming>, BoxError>;
pub(crate) type H2Connection =
    Arc<tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<Body>>>>;

/// How often a stream the filter paused at its end looks for the resume.
const RESUME_POLL: Duration = Duration::from_millis(5);

/// What the traffic path needs, shared by every connection.
pub(crate) struct Proxy {
    pub(crate) workers: Vec<Worker>,
    pub(crate) next: AtomicUsize,
    pub(crate) plugin: String,
    pub(crate) upstream: hyper::Uri,
    /// The upstream speaks HTTP/2 (h2c), else HTTP/1.1.
    pub(crate) upstream_h2: bool,
    /// The HTTP/2 connection to the upstream, shared by the requests (as
    /// Envoy's connection pool multiplexes them); opened on first use and
    /// again once closed.
    pub(crate) h2: H2Connection,
    pub(crate) client: Client<HttpConnector, Body>,
}

/// The request on its way upstream: its body's sender (until the end of
/// the body went) and the response to come.
struct Upstream {
    chunks: Option<Chunks>,
    response: JoinHandle<UpstreamResponse>,
    started: Instant,
    /// Trailers can go (HTTP/2); over HTTP/1.1 they are dropped.
    trailers: bool,
}

impl Drop for Upstream {
    /// A request given up before its end (the filter answered locally, the
    /// client went away) is reset upstream, as Envoy resets it, rather than
    /// ended as if whole.
    fn drop(&mut self) {
        if let Some(chunks) = self.chunks.take() {
            let _ = chunks.try_send(Err("the request was reset".into()));
        }
        self.response.abort();
    }
}

impl Upstream {
    /// Sends body data on; with the end, the trailers (if any) and the end.
    async fn send(&mut self, data: Vec<u8>, end: bool, trailers: &mut Option<hyper::HeaderMap>) {
        if let Some(chunks) = &mut self.chunks {
            if !data.is_empty() {
                let _ = chunks.send(Ok(Frame::data(Bytes::from(data)))).await;
            }
            if let Some(t) = trailers.take().filter(|_| end && self.trailers) {
                let _ = chunks.send(Ok(Frame::trailers(t))).await;
            }
        }
        if end {
            self.chunks = None;
        }
    }
}

/// Which way a paused stream waits to be resumed.
#[derive(Clone, Copy)]
enum Direction {
    Request,
    Response,
}

impl Proxy {
    /// The next worker, round robin (Envoy balances connections likewise).
    pub(crate) fn worker(&self) -> Worker {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        self.workers[i].clone()
    }

    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        Ok(match self.forward(req).await {
            Ok(r) => r,
            Err(e) => text(StatusCode::BAD_GATEWAY, &format!("upstream error: {e}")),
        })
    }

    async fn forward(&self, req: Request<Incoming>) -> anyhow::Result<Response<Body>> {
        let worker = self.worker();
        let mut stream = worker.http_stream(&self.plugin)?;
        let (parts, mut body) = req.into_parts();
        let h2 = parts.version == hyper::Version::HTTP_2;
        let mut ended = hyper::body::Body::is_end_stream(&body);
        let out = stream.request_headers(request_headers(&parts), ended);
        if let Some(r) = answered(&out) {
            return Ok(local(r));
        }
        let mut paused = !out.is_continue();
        let mut upstream = match paused {
            true => None,
            false => Some(self.send_upstream(out.headers(), ended)?),
        };
        let mut trailers = None;
        while !ended {
            let (data, end) = match next_frame(&mut body, h2).await? {
                Next::Data(data, end) => (data, end),
                Next::Trailers(t) => {
                    // The trailers end the request; with them goes what
                    // the filter buffered.
                    match filter_trailers(&mut stream, t, Direction::Request).await {
                        Ok(t) => trailers = Some(t),
                        Err(r) => return Ok(local(r)),
                    }
                    paused = false;
                    let buffered = stream.take_request_body().unwrap_or_default();
                    let up = match &mut upstream {
                        Some(up) => up,
                        None => {
                            let headers = stream.request_headers_sent().unwrap_or_default();
                            upstream.insert(self.send_upstream(&headers, false)?)
                        }
                    };
                    up.send(buffered, true, &mut trailers).await;
                    break;
                }
            };
            ended = end;
            let out = stream.request_body(data.to_vec(), end);
            if let Some(r) = answered(&out) {
                return Ok(local(r));
            }
            paused = !out.is_continue();
            if paused {
                continue;
            }
            let up = match &mut upstream {
                Some(up) => up,
                None => {
                    let headers = stream.request_headers_sent().unwrap_or_default();
                    upstream.insert(self.send_upstream(&headers, false)?)
                }
            };
            up.send(out.body.unwrap_or_default(), end, &mut trailers)
                .await;
        }
        if paused {
            // The filter holds the request at its end (an http call, say):
            // it goes on, with what the filter buffered, once resumed.
            if let Some(r) = resumed(&mut stream, Direction::Request).await {
                return Ok(local(r));
            }
            let buffered = stream.take_request_body().unwrap_or_default();
            let up = match &mut upstream {
                Some(up) => up,
                None => {
                    let headers = stream.request_headers_sent().unwrap_or_default();
                    upstream.insert(self.send_upstream(&headers, buffered.is_empty())?)
                }
            };
            up.send(buffered, true, &mut trailers).await;
        }
        let Some(upstream) = upstream else {
            anyhow::bail!("the request never went upstream");
        };
        self.respond(stream, upstream, h2).await
    }

    /// Starts the request upstream with the filter's headers (`host` from
    /// `:authority` first, as Envoy's HTTP/1.1 codec writes it; over HTTP/2
    /// `:authority` as it is); its body follows through [`Upstream::send`]
    /// unless `end`.
    fn send_upstream(&self, sent: &Headers, end: bool) -> anyhow::Result<Upstream> {
        let path = sent.get(":path").unwrap_or("/");
        let base = self.upstream.to_string();
        let base = base.trim_end_matches('/');
        let authority = sent
            .get_bytes(":authority")
            .or_else(|| self.upstream.authority().map(|a| a.as_str().as_bytes()));
        let uri = match (self.upstream_h2, authority) {
            (true, Some(authority)) => {
                format!("http://{}{path}", String::from_utf8_lossy(authority))
            }
            _ => format!("{base}{path}"),
        };
        let mut builder = Request::builder()
            .method(sent.get(":method").unwrap_or("GET"))
            .uri(uri);
        if let (false, Some(authority)) = (self.upstream_h2, authority) {
            builder = builder.header(hyper::header::HOST, authority);
        }
        for (k, v) in sent.iter().filter(|(k, _)| !hop_by_hop(k)) {
            builder = builder.header(k, v);
        }
        let (chunks, body) = match end {
            true => (
                None,
                Empty::new().map_err(|never| match never {}).boxed_unsync(),
            ),
            false => {
                let (tx, body) = channel_body();
                (Some(tx), body)
            }
        };
        let request = builder.body(body)?;
        let response = match self.upstream_h2 {
            true => {
                let address = self
                    .upstream
                    .authority()
                    .map_or_else(String::new, |a| a.to_string());
                tokio::spawn(h2_send(address, self.h2.clone(), request))
            }
            false => {
                let client = self.client.clone();
                tokio::spawn(async move { Ok(client.request(request).await?) })
            }
        };
        Ok(Upstream {
            chunks,
            response,
            started: Instant::now(),
            trailers: self.upstream_h2,
        })
    }

    /// The upstream's response through the filter: headers (waiting, with
    /// the body buffered, while the filter pauses them), then the body.
    async fn respond(
        &self,
        mut stream: HttpStream,
        mut upstream: Upstream,
        downstream_h2: bool,
    ) -> anyhow::Result<Response<Body>> {
        let response = (&mut upstream.response)
            .await?
            .map_err(|e| anyhow::anyhow!(e))?;
        let upstream_h2 = response.version() == hyper::Version::HTTP_2;
        let service_time = upstream.started.elapsed().as_millis().to_string();
        let (parts, mut body) = response.into_parts();
        let mut headers = vec![(
            ":status".to_owned(),
            parts.status.as_str().as_bytes().to_vec(),
        )];
        for (k, v) in &parts.headers {
            headers.push((k.as_str().to_owned(), v.as_bytes().to_vec()));
        }
        headers.push((
            "x-envoy-upstream-service-time".to_owned(),
            service_time.into_bytes(),
        ));
        let mut ended = hyper::body::Body::is_end_stream(&body);
        let out = stream.response_headers(headers, ended);
        if let Some(r) = answered(&out) {
            return Ok(local(r));
        }
        let mut paused = !out.is_continue();
        let mut first = Vec::new();
        let mut trailers = None;
        while paused && !ended {
            let (data, end) = match next_frame(&mut body, upstream_h2).await? {
                Next::Data(data, end) => (data, end),
                Next::Trailers(t) => {
                    match filter_trailers(&mut stream, t, Direction::Response).await {
                        Ok(t) => trailers = Some(t),
                        Err(r) => return Ok(local(r)),
                    }
                    (ended, paused) = (true, false);
                    first = stream.take_response_body().unwrap_or_default();
                    break;
                }
            };
            ended = end;
            let out = stream.response_body(data.to_vec(), end);
            if let Some(r) = answered(&out) {
                return Ok(local(r));
            }
            paused = !out.is_continue();
            if !paused {
                first = out.body.unwrap_or_default();
            }
        }
        if paused {
            if let Some(r) = resumed(&mut stream, Direction::Response).await {
                return Ok(local(r));
            }
            first = stream.take_response_body().unwrap_or_default();
        }
        let edited = stream.response_headers_sent().unwrap_or_default();
        let status = edited
            .get(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(parts.status.as_u16());
        let mut response = Response::builder().status(status);
        for (k, v) in edited.iter().filter(|(k, _)| !hop_by_hop(k)) {
            response = response.header(k, v);
        }
        let response = envoy_response_headers(response, &edited);
        let (tx, client_body) = channel_body();
        let ends = BodyEnds {
            upstream_h2,
            downstream_h2,
        };
        tokio::spawn(stream_body(stream, body, ended, first, trailers, ends, tx));
        Ok(response.body(client_body)?)
    }
}

/// A body fed through a channel, chunk by chunk; it ends when the sender
/// is dropped.
fn channel_body() -> (Chunks, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    (tx, StreamBody::new(frames).boxed_unsync())
}

/// Whether a header is one the codec writes itself (the pseudo-headers,
/// `host`, `transfer-encoding`), not passed on as the filter left it.
fn hop_by_hop(name: &str) -> bool {
    name.starts_with(':') || name == "host" || name == "transfer-encoding"
}

/// The request headers as Envoy's filter chain sees them: the
/// pseudo-headers in its HTTP/1.1 codec's order, or over HTTP/2 in the
/// order most clients send them (hyper, tonic; Envoy keeps the client's
/// order, which hyper does not report), and without `transfer-encoding:
/// chunked`, which Envoy's HTTP/1.1 codec consumes.
fn request_headers(parts: &hyper::http::request::Parts) -> Vec<(String, Vec<u8>)> {
    let authority = parts
        .headers
        .get(hyper::header::HOST)
        .map(|h| h.as_bytes().to_vec())
        .or_else(|| {
            parts
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes().to_vec())
        })
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = (":authority".to_owned(), authority);
    let path = (":path".to_owned(), path.as_bytes().to_vec());
    let method = (
        ":method".to_owned(),
        parts.method.as_str().as_bytes().to_vec(),
    );
    let scheme = (":scheme".to_owned(), b"http".to_vec());
    let mut headers = match parts.version {
        hyper::Version::HTTP_2 => vec![method, scheme, authority, path],
        _ => vec![authority, path, method, scheme],
    };
    for (k, v) in &parts.headers {
        let chunked =
            k == hyper::header::TRANSFER_ENCODING && v.as_bytes().eq_ignore_ascii_case(b"chunked");
        if k != hyper::header::HOST && !chunked {
            headers.push((k.as_str().to_owned(), v.as_bytes().to_vec()));
        }
    }
    if !parts.headers.contains_key("x-forwarded-proto") {
        headers.push(("x-forwarded-proto".to_owned(), b"http".to_vec()));
    }
    if !parts.headers.contains_key("x-request-id") {
        headers.push(("x-request-id".to_owned(), request_id().into_bytes()));
    }
    headers
}

/// A random UUID (version 4), as Envoy's `x-request-id`.
fn request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicUsize = AtomicUsize::new(0);
    let random = |salt: usize| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(N.fetch_add(1, Ordering::Relaxed) ^ salt);
        h.finish()
    };
    let (a, b) = (random(1), random(2));
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// `date` (unless the response has one) and `server: envoy` (in place of
/// the upstream's), after the filter's headers, as Envoy's connection
/// manager adds them.
fn envoy_response_headers(
    mut response: hyper::http::response::Builder,
    sent: &Headers,
) -> hyper::http::response::Builder {
    if !sent.contains("date") {
        response = response.header("date", httpdate::fmt_http_date(SystemTime::now()));
    }
    if let Some(headers) = response.headers_mut() {
        match headers.get_mut(hyper::header::SERVER) {
            Some(server) => *server = hyper::header::HeaderValue::from_static("envoy"),
            None => {
                headers.insert(
                    hyper::header::SERVER,
                    hyper::header::HeaderValue::from_static("envoy"),
                );
            }
        }
    }
    response
}

/// What comes next in a body.
enum Next {
    /// A chunk of data, and whether it is the last.
    Data(Bytes, bool),
    /// The trailers, which end the body.
    Trailers(hyper::HeaderMap),
}

/// The next chunk of a body; the end of a body without data is an empty
/// last chunk, as Envoy delivers it. Over HTTP/2 (`h2`) data ends the body
/// when its frame ends the stream, and trailers come as they are. Over
/// HTTP/1.1, as Envoy's codec delivers a message, the end is always an
/// empty last chunk (after a body framed by `content-length` too), and
/// trailers are dropped (Envoy without `enable_trailers`).
async fn next_frame(body: &mut Incoming, h2: bool) -> Result<Next, hyper::Error> {
    loop {
        match body.frame().await {
            None => return Ok(Next::Data(Bytes::new(), true)),
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = h2 && hyper::body::Body::is_end_stream(&*body);
                    return Ok(Next::Data(data, end));
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        return Ok(match h2 {
                            true => Next::Trailers(t),
                            false => Next::Data(Bytes::new(), true),
                        });
                    }
                }
            },
        }
    }
}

/// Passes trailers through the filter's trailer callback (and, if it
/// pauses, waits for the resume): what the filter left goes on; a local
/// response (or a reset) ends the stream instead.
async fn filter_trailers(
    stream: &mut HttpStream,
    trailers: hyper::HeaderMap,
    direction: Direction,
) -> Result<hyper::HeaderMap, LocalResponse> {
    let pairs = trailers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()));
    let out = match direction {
        Direction::Request => stream.request_trailers(pairs),
        Direction::Response => stream.response_trailers(pairs),
    };
    if let Some(r) = answered(&out) {
        return Err(r);
    }
    let mut left = out.headers.clone().unwrap_or_default();
    if !out.is_continue() {
        if let Some(r) = resumed(stream, direction).await {
            return Err(r);
        }
        left = match direction {
            Direction::Request => stream.request_trailers_sent(),
            Direction::Response => stream.response_trailers_sent(),
        }
        .unwrap_or_default();
    }
    let mut map = hyper::HeaderMap::new();
    for (k, v) in left.iter() {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_bytes(v),
        ) {
            map.append(k, v);
        }
    }
    Ok(map)
}

/// A request over HTTP/2 (h2c) to the upstream at `address`, on the
/// shared connection (opened first if there is none open).
async fn h2_send(
    address: String,
    connection: H2Connection,
    request: Request<Body>,
) -> UpstreamResponse {
    let mut sender = {
        let mut open = connection.lock().await;
        match open.as_ref().filter(|s| !s.is_closed()) {
            Some(sender) => sender.clone(),
            None => {
                let tcp = tokio::net::TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                let (sender, driver) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await?;
                tokio::spawn(driver);
                open.insert(sender).clone()
            }
        }
    };
    sender.ready().await?;
    Ok(sender.send_request(request).await?)
}

/// Waits until the filter resumes a stream it paused at its end, or ends it
/// (local response, reset); the stream ends too if the client goes away
/// (this future is then dropped).
async fn resumed(stream: &mut HttpStream, direction: Direction) -> Option<LocalResponse> {
    loop {
        if let Some(r) = stream.take_local_response() {
            return Some(r);
        }
        if stream.is_reset() {
            return Some(reset());
        }
        let resumed = match direction {
            Direction::Request => stream.request_resumed(),
            Direction::Response => stream.response_resumed(),
        };
        if resumed {
            return None;
        }
        tokio::time::sleep(RESUME_POLL).await;
    }
}

/// Which protocol each end of a response body speaks: trailers come
/// (through the filter) only from an HTTP/2 upstream and go only to an
/// HTTP/2 client.
#[derive(Clone, Copy)]
struct BodyEnds {
    upstream_h2: bool,
    downstream_h2: bool,
}

/// Passes the upstream's body through `proxy_on_response_body` chunk by
/// chunk (and its trailers through `proxy_on_response_trailers`): what the
/// filter lets go on is sent, what it pauses on stays in the stream's
/// buffer. The stream ends (lifecycle callbacks) with the last chunk or
/// when the client goes away.
async fn stream_body(
    mut stream: HttpStream,
    mut body: Incoming,
    mut ended: bool,
    first: Vec<u8>,
    mut trailers: Option<hyper::HeaderMap>,
    ends: BodyEnds,
    tx: Chunks,
) {
    let mut pending = Some(first);
    let mut paused = false;
    // What the filter let go when the body was known to end with its next
    // frame (all of its content-length had come): as in Envoy, where the
    // end's callback runs before those bytes leave, they wait for it.
    let mut held = Vec::new();
    loop {
        if ended && !paused {
            held.extend(pending.unwrap_or_default());
            let trailers = trailers.filter(|_| ends.downstream_h2);
            return complete(stream, held, trailers, &tx).await;
        }
        if let Some(data) = pending.take().filter(|d| !d.is_empty()) {
            if !ended && hyper::body::Body::is_end_stream(&body) {
                held.extend(data);
            } else if tx.send(Ok(Frame::data(Bytes::from(data)))).await.is_err() {
                stream.abort();
                return;
            }
        }
        if ended {
            // Paused on the last chunk: what goes on waits for the resume.
            tokio::select! {
                ended = resumed(&mut stream, Direction::Response) => {
                    if ended.is_some() {
                        stream.abort();
                        let _ = tx.send(Err("stream reset by the filter".into())).await;
                        return;
                    }
                }
                _ = tx.closed() => {
                    stream.abort();
                    return;
                }
            }
            (pending, paused) = (stream.take_response_body(), false);
            continue;
        }
        let (data, end) = match next_frame(&mut body, ends.upstream_h2).await {
            Ok(Next::Data(data, end)) => (data, end),
            Ok(Next::Trailers(t)) => {
                match filter_trailers(&mut stream, t, Direction::Response).await {
                    Ok(t) => trailers = Some(t),
                    Err(_) => {
                        // Too late for a reply: the client sees the stream reset.
                        stream.abort();
                        let _ = tx.send(Err("stream reset by the filter".into())).await;
                        return;
                    }
                }
                // With the trailers goes what the filter buffered.
                (ended, paused) = (true, false);
                pending = stream.take_response_body();
                continue;
            }
            Err(e) => {
                stream.abort();
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        ended = end;
        let out = stream.response_body(data.to_vec(), end);
        match out.decision {
            Decision::Continue => pending = out.body,
            Decision::Pause => paused = end,
            Decision::LocalResponse(_) | Decision::Reset => {
                // Too late for a reply: the client sees the stream reset.
                stream.abort();
                let _ = tx.send(Err("stream reset by the filter".into())).await;
                return;
            }
        }
    }
}

/// Ends a response whose last chunk the filter has let go: the stream's end
/// callbacks (`proxy_on_log` ...) run before its last bytes go to the
/// client, as Envoy completes a stream when it encodes its end, so a client
/// that sends its next request at once never finds them still to come.
async fn complete(
    mut stream: HttpStream,
    last: Vec<u8>,
    trailers: Option<hyper::HeaderMap>,
    tx: &Chunks,
) {
    stream.finish();
    if !last.is_empty() {
        let _ = tx.send(Ok(Frame::data(Bytes::from(last)))).await;
    }
    if let Some(t) = trailers {
        let _ = tx.send(Ok(Frame::trailers(t))).await;
    }
}

fn answered(out: &Outcome) -> Option<LocalResponse> {
    match &out.decision {
        Decision::LocalResponse(r) => Some(r.clone()),
        Decision::Reset => Some(reset()),
        _ => None,
    }
}

fn reset() -> LocalResponse {
    LocalResponse {
        status: 503,
        headers: Default::default(),
        body: b"stream reset by the filter".to_vec(),
        details: "reset".into(),
        grpc_status: None,
    }
}

/// A local reply as Envoy sends it: the filter's headers, then `date` and
/// `server`.
pub(crate) fn local(r: LocalResponse) -> Response<Body> {
    let mut builder = Response::builder().status(r.status as u16);
    for (k, v) in r.headers.iter().filter(|(k, _)| !hop_by_hop(k)) {
        builder = builder.header(k, v);
    }
    envoy_response_headers(builder, &r.headers)
        .body(full(r.body))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad local response"))
}

pub(crate) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_owned()));
    *r.status_mut() = status;
    r
}
