//! The guests' gRPC streams, carried out. Each stream a guest opens
//! (`proxy_grpc_stream`) to a declared cluster becomes one HTTP/2 stream (on
//! a connection of its own) with Envoy's request headers; what the guest
//! sends goes out as gRPC frames as it sends it, and what comes back is
//! delivered as Envoy's gRPC client delivers it: the initial metadata, each
//! message, the trailing metadata, then the close with the stream's status
//! (an HTTP error status mapped as Envoy maps it, a body that ends without
//! trailers UNKNOWN, a reset or a bad frame INTERNAL). A stream the guest
//! cancels is reset.

use std::collections::HashMap;

use bytes::Bytes;
use drainpipe_shim::{
    GrpcCallResponse, GrpcStreamEvent, GrpcStreamRequest, GrpcStreamSend, Headers, Worker,
};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{HeaderMap, Request, StatusCode};
use tokio::sync::mpsc;

use crate::calls::{grpc_frame, send_on, with_details, Cluster};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// gRPC's UNKNOWN and INTERNAL.
const UNKNOWN: u32 = 2;
const INTERNAL: u32 = 13;

/// One worker's streams under way, by token.
#[derive(Default)]
pub(crate) struct Streams {
    running: HashMap<u32, Running>,
}

struct Running {
    sends: mpsc::UnboundedSender<GrpcStreamSend>,
    task: tokio::task::JoinHandle<()>,
}

impl Streams {
    /// Starts the worker's streams not started yet, passes on what the
    /// guests sent, and resets the streams no longer open (cancelled, or
    /// ended on both sides).
    pub(crate) fn update(&mut self, worker: &Worker, cluster: impl Fn(&str) -> Option<Cluster>) {
        let open = worker.grpc_streams();
        self.running.retain(|token, running| {
            let keep = open.iter().any(|s| s.token == *token);
            if !keep {
                running.task.abort();
            }
            keep
        });
        for stream in open {
            let token = stream.token;
            let running = self.running.entry(token).or_insert_with(|| {
                let (sends, received) = mpsc::unbounded_channel();
                let cluster = cluster(&stream.cluster);
                let task = tokio::spawn(run(worker.clone(), stream, cluster, received));
                Running { sends, task }
            });
            for send in worker.take_grpc_stream_sends(token) {
                // A stream whose remote side ended takes nothing more.
                let _ = running.sends.send(send);
            }
        }
    }
}

/// Carries out one stream until its remote side ends (or the guest
/// cancels it, which aborts this task).
async fn run(
    worker: Worker,
    stream: GrpcStreamRequest,
    cluster: Option<Cluster>,
    sends: mpsc::UnboundedReceiver<GrpcStreamSend>,
) {
    let token = stream.token;
    let deliver = |event| worker.deliver_grpc_stream(token, event);
    let Some(cluster) = cluster else {
        return unreachable_cluster(&deliver, None);
    };
    let address = cluster.base.trim_start_matches("http://");
    let tcp = match tokio::net::TcpStream::connect(address).await {
        Ok(tcp) => tcp,
        Err(e) => return unreachable_cluster(&deliver, Some(&e)),
    };
    let response = match open(tcp, &cluster, &stream, sends).await {
        Ok(response) => response,
        Err(_) => return unreachable_cluster(&deliver, None),
    };
    let (parts, body) = response.into_parts();
    let mut headers = Headers::from_pairs([(":status", parts.status.as_str())]);
    // As Envoy's gRPC client reads the answer: without the router's
    // `x-envoy-upstream-service-time`.
    add_all(&mut headers, &parts.headers);
    let trailers_only = body.is_end_stream();
    if parts.status != StatusCode::OK {
        deliver(GrpcStreamEvent::InitialMetadata(Headers::new()));
        match grpc_status(&parts.headers) {
            Some(_) if trailers_only => close_with_trailers(&deliver, headers, &parts.headers),
            _ => {
                let status = drainpipe_shim::http_to_grpc_status(u32::from(parts.status.as_u16()));
                stream_error(&deliver, status);
            }
        }
        return;
    }
    if trailers_only {
        deliver(GrpcStreamEvent::InitialMetadata(Headers::new()));
        close_with_trailers(&deliver, headers, &parts.headers);
        return;
    }
    if deliver(GrpcStreamEvent::InitialMetadata(headers)) {
        receive(body, &deliver).await;
    }
}

/// Sends the request headers and, as the guest sends them, its messages;
/// returns the response once its headers arrive.
async fn open(
    tcp: tokio::net::TcpStream,
    cluster: &Cluster,
    stream: &GrpcStreamRequest,
    mut sends: mpsc::UnboundedReceiver<GrpcStreamSend>,
) -> Result<hyper::Response<Incoming>, BoxError> {
    tcp.set_nodelay(true)?;
    // Envoy's gRPC client's headers, in its order (a stream has no timeout).
    let mut request = Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/{}/{}",
            stream.cluster, stream.service, stream.method
        ))
        .header("te", "trailers")
        .header("content-type", "application/grpc");
    for (k, v) in stream.initial_metadata.iter() {
        request = request.header(k, v);
    }
    request = request.header("x-envoy-internal", "true");
    let (frames, mut body) = mpsc::unbounded_channel::<Frame<Bytes>>();
    tokio::spawn(async move {
        while let Some(send) = sends.recv().await {
            match send {
                GrpcStreamSend::Message {
                    message,
                    end_stream,
                } => {
                    if frames.send(Frame::data(grpc_frame(&message))).is_err() || end_stream {
                        return;
                    }
                }
                // Ending the body ends the guest's side (an empty DATA
                // frame with END_STREAM).
                GrpcStreamSend::Close => return,
            }
        }
    });
    let body = StreamBody::new(futures::stream::poll_fn(move |cx| {
        body.poll_recv(cx)
            .map(|frame| frame.map(Ok::<_, std::convert::Infallible>))
    }));
    let request = request.body(body)?;
    send_on(cluster, tcp, request).await
}

/// Delivers each message of the answer's body, then its end.
async fn receive(mut body: Incoming, deliver: &impl Fn(GrpcStreamEvent) -> bool) {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let frame = match body.frame().await {
            // The body ended without trailers.
            None => return stream_error(deliver, UNKNOWN),
            // Reset.
            Some(Err(_)) => return stream_error(deliver, INTERNAL),
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                let trailers = frame.into_trailers().unwrap_or_default();
                let mut metadata = Headers::new();
                add_all(&mut metadata, &trailers);
                return close_with_trailers(deliver, metadata, &trailers);
            }
        };
        pending.extend_from_slice(&frame);
        loop {
            match next_message(&mut pending) {
                Ok(Some(message)) => {
                    if !deliver(GrpcStreamEvent::Message(message)) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(()) => return stream_error(deliver, INTERNAL),
            }
        }
    }
}

/// The next whole gRPC message of `pending`, taken out of it; an error for
/// a compressed message (Envoy's client does not decompress).
fn next_message(pending: &mut Vec<u8>) -> Result<Option<Vec<u8>>, ()> {
    let Some(header) = pending.get(..5) else {
        return Ok(None);
    };
    let (flags, length) = (
        header[0],
        u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize,
    );
    if pending.len() < 5 + length {
        return Ok(None);
    }
    if flags != 0 && length > 0 {
        return Err(());
    }
    let message = pending[5..5 + length].to_vec();
    pending.drain(..5 + length);
    Ok(Some(message))
}

fn add_all(headers: &mut Headers, map: &HeaderMap) {
    for (k, v) in map {
        headers.add(k.as_str(), v.as_bytes());
    }
}

fn grpc_status(map: &HeaderMap) -> Option<u32> {
    map.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The end Envoy gives a stream with trailers (or a trailers-only answer):
/// the trailers as trailing metadata, then the close with their status
/// (UNKNOWN if none) and message.
fn close_with_trailers(
    deliver: &impl Fn(GrpcStreamEvent) -> bool,
    metadata: Headers,
    trailers: &HeaderMap,
) {
    let status = grpc_status(trailers).unwrap_or(UNKNOWN);
    let message = trailers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default();
    if deliver(GrpcStreamEvent::TrailingMetadata(metadata)) {
        deliver(GrpcStreamEvent::Close {
            status,
            message: with_details(message),
        });
    }
}

/// Envoy's `streamError`: empty trailing metadata, then the close.
fn stream_error(deliver: &impl Fn(GrpcStreamEvent) -> bool, status: u32) {
    if deliver(GrpcStreamEvent::TrailingMetadata(Headers::new())) {
        deliver(GrpcStreamEvent::Close {
            status,
            message: with_details(""),
        });
    }
}

/// What a stream to a cluster that cannot be reached gets, as Envoy's
/// router answers it: a trailers-only UNAVAILABLE, and a close whose
/// message carries the reset's details ([`unreachable_message`]).
fn unreachable_cluster(deliver: &impl Fn(GrpcStreamEvent) -> bool, error: Option<&std::io::Error>) {
    if !deliver(GrpcStreamEvent::InitialMetadata(Headers::new())) {
        return;
    }
    let trailers = Headers::from_pairs([
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "14"),
        ("grpc-message", UNREACHABLE),
    ]);
    if deliver(GrpcStreamEvent::TrailingMetadata(trailers)) {
        deliver(GrpcStreamEvent::Close {
            status: GrpcCallResponse::UNAVAILABLE,
            message: unreachable_message(error),
        });
    }
}

/// The router's answer to a request whose cluster cannot be reached.
pub(crate) const UNREACHABLE: &str = "upstream connect error or disconnect/reset before headers. \
                           reset reason: remote connection failure";

/// The message Envoy's gRPC client reports for a cluster that cannot be
/// reached: the router's answer, then the reset's details, with the socket
/// error of a failed connect in Envoy's words.
pub(crate) fn unreachable_message(connect_error: Option<&std::io::Error>) -> String {
    let cause = match connect_error {
        Some(e) => format!("|delayed_connect_error:_{}", strerror(e).replace(' ', "_")),
        None => String::new(),
    };
    format!("{UNREACHABLE}{{upstream_reset_before_response_started{{remote_connection_failure{cause}}}}}")
}

/// The C library's words for a socket error (`Connection refused`), without
/// Rust's ` (os error N)`.
fn strerror(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_taken_whole_from_frames_split_anywhere() {
        let mut wire = grpc_frame(b"one").to_vec();
        wire.extend_from_slice(&grpc_frame(b""));
        wire.extend_from_slice(&grpc_frame(b"three"));
        let mut pending = Vec::new();
        let mut messages = Vec::new();
        for byte in wire {
            pending.push(byte);
            while let Some(m) = next_message(&mut pending).unwrap() {
                messages.push(m);
            }
        }
        assert_eq!(messages, [b"one".to_vec(), Vec::new(), b"three".to_vec()]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_socket_error_is_worded_as_the_c_library_words_it() {
        // ECONNREFUSED on Linux.
        let refused = std::io::Error::from_raw_os_error(111);
        assert_eq!(strerror(&refused), "Connection refused");
    }

    #[test]
    fn a_compressed_message_is_an_error() {
        let mut wire = grpc_frame(b"x").to_vec();
        wire[0] = 1;
        assert_eq!(next_message(&mut wire), Err(()));
    }
}
