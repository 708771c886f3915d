//! gRPC streams driven through the library, as a test drives them without
//! a network: the fidelity filter's `stream` mode opens one from a request,
//! the test takes what the guest sent ([`Worker::take_grpc_stream_sends`])
//! and delivers the remote side's answer ([`Worker::deliver_grpc_stream`])
//! in Envoy's order. `tests/fidelity.rs` compares the same filter under
//! `serve` with a real Envoy.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use drainpipe_shim::{
    Clock, GrpcStreamEvent, GrpcStreamSend, Headers, Host, HttpStream, PluginConfig, Wasm, Worker,
};

/// The fidelity filter, compiled once for the whole binary.
fn fidelity_filter() -> Wasm {
    static WASM: OnceLock<Wasm> = OnceLock::new();
    WASM.get_or_init(|| {
        Wasm::from_file(support::fidelity_filter_path()).expect("load the fidelity filter")
    })
    .clone()
}

fn stream_host() -> (Host, Clock) {
    let clock = Clock::manual(support::T0_MS);
    let host = Host::builder(fidelity_filter())
        .vm_id("fidelity_vm")
        .clock(clock.clone())
        .cluster("grpc", None)
        .plugin(PluginConfig::new("fidelity", "stream"))
        .build()
        .expect("build the host");
    (host, clock)
}

/// A request through the `stream` filter, with extra request headers.
fn open(worker: &Worker, headers: &[(&str, &str)]) -> HttpStream {
    let mut s = worker.http_stream("fidelity").unwrap();
    let mut all = vec![(":method", "GET"), (":path", "/echo"), (":authority", "t")];
    all.extend_from_slice(headers);
    s.request_headers(all, true).expect_pause();
    s
}

fn message(text: &str) -> GrpcStreamSend {
    GrpcStreamSend::Message {
        message: text.into(),
        end_stream: false,
    }
}

fn initial() -> GrpcStreamEvent {
    GrpcStreamEvent::InitialMetadata(Headers::from_pairs([
        (":status", "200"),
        ("x-echo-initial", "hello"),
    ]))
}

#[test]
fn a_stream_carries_the_guests_messages_and_delivers_the_answer_in_envoys_order() {
    let (host, clock) = stream_host();
    let worker = host.worker().unwrap();
    let mut s = open(&worker, &[]);
    let streams = worker.grpc_streams();
    assert_eq!(streams.len(), 1);
    let stream = &streams[0];
    // Envoy's first stream token.
    assert_eq!(stream.token, 6);
    assert_eq!(
        (
            stream.cluster.as_str(),
            stream.service.as_str(),
            stream.method.as_str()
        ),
        ("grpc", "fidelity.Echo", "Chat")
    );
    assert_eq!(stream.initial_metadata.get("x-meta"), Some("1"));
    assert_eq!(
        worker.take_grpc_stream_sends(6),
        [message("one"), message("two")]
    );
    assert!(worker.take_grpc_stream_sends(6).is_empty());

    // A stream has no timeout: time passing changes nothing.
    clock.advance(Duration::from_secs(3600));
    worker.run_timers();
    assert_eq!(worker.grpc_streams().len(), 1);

    assert!(worker.deliver_grpc_stream(6, initial()));
    assert!(worker.deliver_grpc_stream(6, GrpcStreamEvent::Message("echo one".into())));
    assert!(worker.take_grpc_stream_sends(6).is_empty());
    assert!(worker.deliver_grpc_stream(6, GrpcStreamEvent::Message("echo two".into())));
    // Every message echoed: the guest closes its side.
    assert_eq!(worker.take_grpc_stream_sends(6), [GrpcStreamSend::Close]);
    let trailers = Headers::from_pairs([("grpc-status", "0")]);
    assert!(worker.deliver_grpc_stream(6, GrpcStreamEvent::TrailingMetadata(trailers)));
    assert!(s.take_local_response().is_none());
    let close = GrpcStreamEvent::Close {
        status: 0,
        message: "via_upstream".into(),
    };
    assert!(worker.deliver_grpc_stream(6, close.clone()));

    let reply = s
        .take_local_response()
        .expect("the filter answers on the close");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-stream-status"), Some("0"));
    assert_eq!(
        reply.body_text(),
        "opened 6\n\
         initial metadata (2): :status=200, x-echo-initial=hello\n\
         message echo one\n\
         message echo two\n\
         closed our side\n\
         trailing metadata (1): grpc-status=0\n\
         close 0 (0, Some(\"via_upstream\"))\n"
    );
    // Both sides ended: the stream is gone, and nothing more is delivered.
    assert!(worker.grpc_streams().is_empty());
    assert!(!worker.deliver_grpc_stream(6, close));

    // The next stream takes Envoy's next token.
    let _second = open(&worker, &[]);
    assert_eq!(worker.grpc_streams()[0].token, 10);
}

#[test]
fn a_stream_the_remote_side_ends_with_a_status_reports_it_through_get_status() {
    let (host, _) = stream_host();
    let worker = host.worker().unwrap();
    let mut s = open(&worker, &[("x-stream-messages", "one,fail")]);
    assert_eq!(
        worker.take_grpc_stream_sends(6),
        [message("one"), message("fail")]
    );
    worker.deliver_grpc_stream(6, initial());
    worker.deliver_grpc_stream(6, GrpcStreamEvent::Message("echo one".into()));
    worker.deliver_grpc_stream(6, GrpcStreamEvent::TrailingMetadata(Headers::new()));
    worker.deliver_grpc_stream(
        6,
        GrpcStreamEvent::Close {
            status: 9,
            message: "failing on purpose{via_upstream}".into(),
        },
    );
    let reply = s.take_local_response().expect("a reply");
    assert_eq!(reply.header("x-stream-status"), Some("9"));
    assert!(
        reply
            .body_text()
            .ends_with("close 9 (9, Some(\"failing on purpose{via_upstream}\"))\n"),
        "{}",
        reply.body_text()
    );
    // The remote side ended: nothing more to carry out.
    assert!(worker.grpc_streams().is_empty());
}

#[test]
fn a_cancelled_stream_is_reset_and_gets_no_more_callbacks() {
    let (host, _) = stream_host();
    let worker = host.worker().unwrap();
    let mut s = open(&worker, &[("x-stream-cancel", "1")]);
    worker.deliver_grpc_stream(6, initial());
    assert!(worker.deliver_grpc_stream(6, GrpcStreamEvent::Message("echo one".into())));
    let reply = s
        .take_local_response()
        .expect("the filter answers on cancelling");
    assert_eq!(reply.header("x-stream-status"), Some("cancelled"));
    // Gone: the driver resets it; what comes later is not delivered.
    assert!(worker.grpc_streams().is_empty());
    assert!(!worker.deliver_grpc_stream(6, GrpcStreamEvent::Message("echo two".into())));
}

#[test]
fn a_stream_to_an_undeclared_cluster_is_a_parse_failure_as_in_envoy() {
    let (host, _) = stream_host();
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("fidelity").unwrap();
    let out = s.request_headers(
        [
            (":method", "GET"),
            (":path", "/echo"),
            (":authority", "t"),
            ("x-stream-cluster", "nowhere"),
        ],
        true,
    );
    let reply = out.expect_local_response(200);
    assert_eq!(reply.body_text(), "open failed: ParseFailure\n");
    assert!(worker.grpc_streams().is_empty());
}

#[test]
fn a_stream_outlives_the_request_that_opened_it_as_in_envoy() {
    // Envoy keeps a stream on the root context: the end of the HTTP stream
    // does not reset it, and its callbacks still come (the SDK finds no
    // context for them and drops them).
    let (host, _) = stream_host();
    let worker = host.worker().unwrap();
    let mut s = open(&worker, &[]);
    s.finish();
    assert_eq!(worker.grpc_streams().len(), 1);
    assert!(worker.deliver_grpc_stream(6, initial()));
    assert!(worker.deliver_grpc_stream(6, GrpcStreamEvent::Message("echo one".into())));
    assert_eq!(worker.failure(), None, "{}", host.log().dump());
}
