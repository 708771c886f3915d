//! The dialects and the grace end in the shim, with a controlled clock:
//! gRPC refusals are trailers-only with their gRPC status, a WebSocket session gets its close
//! frame at a frame boundary, and a stream still in flight at the grace end
//! is reset by the tick.

mod support;

use std::time::Duration;

use drainpipe_shim::{Clock, Host, PluginConfig, Worker};
use support::{drainpipe, T0_MS};

const TRAFFIC: &str = r#"{"role":"traffic","admit_window_ms":1000,"grace_ms":10000,
    "final_event_margin_ms":500,"deadline":{"min_budget_ms":1000}}"#;
const ADMIN: &str = r#"{"role":"admin"}"#;

fn host() -> (Host, Clock) {
    let clock = Clock::manual(T0_MS);
    let host = Host::builder(drainpipe())
        .vm_id("drainpipe")
        .clock(clock.clone())
        .plugin(PluginConfig::new("traffic", TRAFFIC))
        .plugin(PluginConfig::new("admin", ADMIN))
        .build()
        .expect("build the host");
    (host, clock)
}

fn start_drain(worker: &Worker) {
    let mut s = worker.http_stream("admin").unwrap();
    let out = s.request_headers(
        vec![
            (":method", "POST"),
            (":path", "/drain"),
            (":authority", "localhost"),
        ],
        true,
    );
    assert_eq!(out.local_response().map(|r| r.status), Some(202));
}

#[test]
fn grpc_refusals_carry_deadline_exceeded_and_unavailable() {
    let (host, clock) = host();
    let w = host.worker().unwrap();
    let grpc = |timeout: &'static str| {
        vec![
            (":method", "POST"),
            (":path", "/pkg.Svc/Call"),
            (":authority", "api"),
            ("content-type", "application/grpc"),
            ("grpc-timeout", timeout),
        ]
    };
    let mut s = w.http_stream("traffic").unwrap();
    let out = s.request_headers(grpc("100m"), true);
    // As Envoy sends it: trailers-only, the message as grpc-message.
    let r = out.local_response().expect("refused");
    assert_eq!((r.status, r.grpc_status), (200, Some(4)));
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.header("grpc-status"), Some("4"));
    assert!(r
        .header("grpc-message")
        .unwrap()
        .contains("minimum this server needs"));
    assert_eq!(r.body_text(), "");
    start_drain(&w);
    clock.advance(Duration::from_millis(1_500));
    let mut s = w.http_stream("traffic").unwrap();
    let out = s.request_headers(grpc("20S"), true);
    let r = out.local_response().expect("refused");
    assert_eq!(r.grpc_status, Some(14));
    assert_eq!(r.header("grpc-status"), Some("14"));
    assert!(r.header("grpc-message").unwrap().contains("draining"));
}

#[test]
fn a_stream_still_in_flight_at_the_grace_end_is_reset_by_the_tick() {
    let (host, clock) = host();
    let w = host.worker().unwrap();
    let mut s = w.http_stream("traffic").unwrap();
    s.request_headers(
        vec![
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "api"),
        ],
        true,
    )
    .expect_continue();
    s.response_headers([(":status", "200")], false)
        .expect_continue();
    s.response_body("data: {}\n\n", false).expect_continue();
    start_drain(&w);
    clock.advance(Duration::from_millis(9_950));
    w.tick();
    assert!(!s.is_reset(), "reset before the grace end");
    clock.advance(Duration::from_millis(100));
    w.tick();
    assert!(s.is_reset(), "still running after the grace end");
    assert_eq!(host.metrics().value("drainpipe_ended_at_grace"), Some(1));
    s.finish();
    assert_eq!(host.metrics().value("drainpipe_inflight"), Some(0));
}

#[test]
fn a_websocket_session_gets_close_1012_at_a_frame_boundary_before_the_grace_end() {
    let (host, clock) = host();
    let w = host.worker().unwrap();
    let mut s = w.http_stream("traffic").unwrap();
    s.request_headers(
        vec![
            (":method", "GET"),
            (":path", "/v1/realtime"),
            (":authority", "api"),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
        ],
        false,
    )
    .expect_continue();
    s.response_headers([(":status", "101"), ("upgrade", "websocket")], false)
        .expect_continue();
    // A text frame "hello", split inside its header.
    let frame = [&[0x81u8, 5][..], b"hello"].concat();
    s.response_body(frame[..1].to_vec(), false)
        .expect_continue();
    start_drain(&w);
    clock.advance(Duration::from_millis(9_600));
    // The worker's tick, as Envoy gives one every second: a chunk near its
    // cut reads the clock only then (see `sse::CutPolicy`).
    w.tick();
    let out = s.response_body(frame[1..].to_vec(), false);
    let body = out.body.clone().expect("the chunk went on");
    // The rest of the frame, then the close frame: 1012 and the reason.
    assert_eq!(&body[..6], &frame[1..]);
    assert_eq!(&body[6..8], &[0x88, 30]);
    assert_eq!(u16::from_be_bytes([body[8], body[9]]), 1012);
    assert_eq!(host.metrics().value("drainpipe_streams_ended"), Some(1));
}
