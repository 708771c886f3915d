//! The traffic path: every request passes through the filter as in Envoy
//! (request headers and body, then response headers and a streamed body),
//! and goes to the upstream unless the filter answers locally.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use drainpipe_shim::{Decision, HttpStream, LocalResponse, Outcome, Worker};
use futures::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};

pub(crate) type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// What the traffic path needs, shared by every connection.
pub(crate) struct Proxy {
    pub(crate) workers: Vec<Worker>,
    pub(crate) next: AtomicUsize,
    pub(crate) plugin: String,
    pub(crate) upstream: hyper::Uri,
    pub(crate) client: Client<HttpConnector, Full<Bytes>>,
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
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        let mut headers = vec![
            (
                ":method".to_owned(),
                parts.method.as_str().as_bytes().to_vec(),
            ),
            (
                ":path".to_owned(),
                parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .as_bytes()
                    .to_vec(),
            ),
            (":scheme".to_owned(), b"http".to_vec()),
        ];
        let authority = parts
            .headers
            .get(hyper::header::HOST)
            .map(|h| h.as_bytes().to_vec());
        headers.push((":authority".to_owned(), authority.unwrap_or_default()));
        for (k, v) in &parts.headers {
            if k != hyper::header::HOST {
                headers.push((k.as_str().to_owned(), v.as_bytes().to_vec()));
            }
        }
        let out = stream.request_headers(headers, body.is_empty());
        if let Some(r) = answered(&out) {
            return Ok(local(r));
        }
        let mut sent = out.headers.clone().unwrap_or_default();
        let mut upstream_body = body.clone();
        if !body.is_empty() {
            let out = stream.request_body(body.to_vec(), true);
            if let Some(r) = answered(&out) {
                return Ok(local(r));
            }
            upstream_body = out.body.map(Bytes::from).unwrap_or_default();
            sent = stream.request_headers_sent().unwrap_or(sent);
        }
        let path = sent.get(":path").unwrap_or("/").to_owned();
        let uri = format!(
            "{}{}",
            self.upstream.to_string().trim_end_matches('/'),
            path
        );
        let mut builder = Request::builder()
            .method(sent.get(":method").unwrap_or("GET"))
            .uri(uri);
        for (k, v) in sent.iter().filter(|(k, _)| !k.starts_with(':')) {
            builder = builder.header(k, v);
        }
        let response = self
            .client
            .request(builder.body(Full::new(upstream_body))?)
            .await?;
        let (parts, body) = response.into_parts();
        let mut headers = vec![(
            ":status".to_owned(),
            parts.status.as_str().as_bytes().to_vec(),
        )];
        for (k, v) in &parts.headers {
            headers.push((k.as_str().to_owned(), v.as_bytes().to_vec()));
        }
        let empty = hyper::body::Body::is_end_stream(&body);
        let out = stream.response_headers(headers, empty);
        if let Some(r) = answered(&out) {
            return Ok(local(r));
        }
        let edited = out.headers.clone().unwrap_or_default();
        let mut response = Response::builder().status(
            edited
                .get(":status")
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(parts.status.as_u16()),
        );
        for (k, v) in edited.iter().filter(|(k, _)| !k.starts_with(':')) {
            response = response.header(k, v);
        }
        Ok(response.body(stream_through(stream, body, empty))?)
    }
}

fn answered(out: &Outcome) -> Option<LocalResponse> {
    match &out.decision {
        Decision::LocalResponse(r) => Some(r.clone()),
        Decision::Reset => Some(LocalResponse {
            status: 503,
            headers: Default::default(),
            body: b"stream reset by the filter".to_vec(),
            details: "reset".into(),
            grpc_status: None,
        }),
        _ => None,
    }
}

/// Passes each upstream body chunk through `proxy_on_response_body` as it
/// arrives (no buffering); the stream ends (lifecycle callbacks) with the
/// last chunk or when the client goes away.
fn stream_through(stream: HttpStream, body: Incoming, ended: bool) -> Body {
    let frames = futures::stream::unfold(Some((stream, body, ended)), |state| async move {
        let (mut stream, mut body, ended) = state?;
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = hyper::body::Body::is_end_stream(&body);
                    let out = stream.response_body(data.to_vec(), end);
                    let data = out.body.map(Bytes::from).unwrap_or(data);
                    Some((Ok(Frame::data(data)), Some((stream, body, end))))
                }
                Err(frame) => Some((Ok(frame), Some((stream, body, ended)))),
            },
            Some(Err(e)) => {
                stream.abort();
                Some((Err(e), None))
            }
            None => {
                if !ended {
                    // The end of stream came without data: Envoy reports it
                    // as an empty last chunk.
                    stream.response_body(Vec::new(), true);
                }
                stream.finish();
                None
            }
        }
    });
    StreamBody::new(frames.boxed()).boxed_unsync()
}

pub(crate) fn local(r: LocalResponse) -> Response<Body> {
    let mut builder = Response::builder().status(r.status as u16);
    for (k, v) in r.headers.iter() {
        builder = builder.header(k, v);
    }
    builder
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
