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
//! `:path`, `:method`, `:scheme`, the client's headers in their order, then
//! `x-forwarded-proto` and `x-request-id` (request) and
//! `x-envoy-upstream-service-time` (response); the client gets `date` and
//! `server: envoy` after the filter's headers.
//! Trailers pass on after the body without the filter (its trailer
//! callbacks are not called; they end the body it sees).

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
use tokio::task::JoinHandle;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;
type Chunks = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>;
type UpstreamResponse = Result<Response<Incoming>, hyper_util::client::legacy::Error>;

/// How often a stream the filter paused at its end looks for the resume.
const RESUME_POLL: Duration = Duration::from_millis(5);

/// What the traffic path needs, shared by every connection.
pub(crate) struct Proxy {
    pub(crate) workers: Vec<Worker>,
    pub(crate) next: AtomicUsize,
    pub(crate) plugin: String,
    pub(crate) upstream: hyper::Uri,
    pub(crate) client: Client<HttpConnector, Body>,
}

/// The request on its way upstream: its body's sender (until the end of
/// the body went) and the response to come.
struct Upstream {
    chunks: Option<Chunks>,
    response: JoinHandle<UpstreamResponse>,
    started: Instant,
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
            if let Some(t) = trailers.take().filter(|_| end) {
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
            let (data, end) = next_data(&mut body, &mut trailers).await?;
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
        self.respond(stream, upstream).await
    }

    /// Starts the request upstream with the filter's headers (`host` from
    /// `:authority` first, as Envoy's codec writes it); its body follows
    /// through [`Upstream::send`] unless `end`.
    fn send_upstream(&self, sent: &Headers, end: bool) -> anyhow::Result<Upstream> {
        let path = sent.get(":path").unwrap_or("/");
        let uri = format!("{}{path}", self.upstream.to_string().trim_end_matches('/'));
        let mut builder = Request::builder()
            .method(sent.get(":method").unwrap_or("GET"))
            .uri(uri);
        let authority = sent
            .get_bytes(":authority")
            .or_else(|| self.upstream.authority().map(|a| a.as_str().as_bytes()));
        if let Some(authority) = authority {
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
        let client = self.client.clone();
        Ok(Upstream {
            chunks,
            response: tokio::spawn(async move { client.request(request).await }),
            started: Instant::now(),
        })
    }

    /// The upstream's response through the filter: headers (waiting, with
    /// the body buffered, while the filter pauses them), then the body.
    async fn respond(
        &self,
        mut stream: HttpStream,
        mut upstream: Upstream,
    ) -> anyhow::Result<Response<Body>> {
        let response = (&mut upstream.response).await??;
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
            let (data, end) = next_data(&mut body, &mut trailers).await?;
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
        tokio::spawn(stream_body(stream, body, ended, first, trailers, tx));
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

/// The request headers as Envoy's filter chain sees them.
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
    let mut headers = vec![
        (":authority".to_owned(), authority),
        (":path".to_owned(), path.as_bytes().to_vec()),
        (
            ":method".to_owned(),
            parts.method.as_str().as_bytes().to_vec(),
        ),
        (":scheme".to_owned(), b"http".to_vec()),
    ];
    for (k, v) in &parts.headers {
        if k != hyper::header::HOST {
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

/// The next chunk of a body and whether it is the last; the end of a body
/// without data is an empty last chunk, as Envoy delivers it. Trailers end
/// the body for the filter (its trailer callbacks are not called) and are
/// kept in `trailers`, to be passed on after the body.
async fn next_data(
    body: &mut Incoming,
    trailers: &mut Option<hyper::HeaderMap>,
) -> Result<(Bytes, bool), hyper::Error> {
    loop {
        match body.frame().await {
            None => return Ok((Bytes::new(), true)),
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => return Ok((data, hyper::body::Body::is_end_stream(&*body))),
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        *trailers = Some(t);
                        return Ok((Bytes::new(), true));
                    }
                }
            },
        }
    }
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

/// Passes the upstream's body through `proxy_on_response_body` chunk by
/// chunk: what the filter lets go on is sent, what it pauses on stays in
/// the stream's buffer. The stream ends (lifecycle callbacks) with the last
/// chunk or when the client goes away.
async fn stream_body(
    mut stream: HttpStream,
    mut body: Incoming,
    mut ended: bool,
    first: Vec<u8>,
    mut trailers: Option<hyper::HeaderMap>,
    tx: Chunks,
) {
    let mut pending = Some(first);
    let mut paused = false;
    loop {
        if ended && !paused {
            return complete(stream, pending, trailers, &tx).await;
        }
        if let Some(data) = pending.take().filter(|d| !d.is_empty()) {
            if tx.send(Ok(Frame::data(Bytes::from(data)))).await.is_err() {
                stream.abort();
                return;
            }
        }
        if ended {
            break;
        }
        let (data, end) = match next_data(&mut body, &mut trailers).await {
            Ok(next) => next,
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
    if paused {
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
        let rest = stream.take_response_body();
        complete(stream, rest, trailers, &tx).await;
    }
}

/// Ends a response whose last chunk the filter has let go: the stream's end
/// callbacks (`proxy_on_log` ...) run before its last bytes go to the
/// client, as Envoy completes a stream when it encodes its end, so a client
/// that sends its next request at once never finds them still to come.
async fn complete(
    mut stream: HttpStream,
    last: Option<Vec<u8>>,
    trailers: Option<hyper::HeaderMap>,
    tx: &Chunks,
) {
    stream.finish();
    if let Some(data) = last.filter(|d| !d.is_empty()) {
        let _ = tx.send(Ok(Frame::data(Bytes::from(data)))).await;
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
