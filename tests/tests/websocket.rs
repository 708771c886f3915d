//! WebSocket sessions through Envoy's upgrade and drainpipe, with a real
//! client (tokio-tungstenite): messages flow; a session still open near the
//! grace end gets a close frame with code 1012 before it, and the drain
//! then completes; an upgrade after the admit window gets the 503; sessions
//! aborted anywhere leave nothing in flight; a session takes no request
//! default deadline, only its own or `deadline.websocket_default_timeout_ms`.

use std::time::{Duration, Instant};

use drainpipe_tests::envoy::COUNTS_SETTLE;
use drainpipe_tests::fake_ws::FakeWs;
use drainpipe_tests::load::{drain_api, drained, start_drain, wait_drain_status};
use drainpipe_tests::stats::wait_stat;
use drainpipe_tests::{Envoy, EnvoyOptions};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Grace 3 s, admit window 300 ms, margin 500 ms.
async fn setup() -> (FakeWs, Envoy) {
    setup_with(json!({})).await
}

/// [`setup`] with more `deadline` settings.
async fn setup_with(deadline: Value) -> (FakeWs, Envoy) {
    let upstream = FakeWs::start().await.expect("fake WebSocket upstream");
    let mut patch = json!({"admit_window_ms": 300, "grace_ms": 3000, "retry_after_s": 1,
                           "final_event_margin_ms": 500, "deadline": {"min_budget_ms": 1000}});
    for (k, v) in deadline.as_object().unwrap() {
        patch["deadline"][k] = v.clone();
    }
    let envoy = Envoy::start_repo_with(upstream.port(), patch, EnvoyOptions::default())
        .expect("Envoy starts with the plugin");
    (upstream, envoy)
}

fn url(envoy: &Envoy) -> String {
    format!("ws://127.0.0.1:{}/v1/realtime", envoy.ports.traffic)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(envoy: &Envoy) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(url(envoy))
        .await
        .expect("the upgrade through Envoy");
    assert_eq!(resp.status(), 101);
    ws
}

/// Connects with `x-request-timeout-ms` on the upgrade request.
async fn connect_with_timeout(envoy: &Envoy, timeout_ms: u64) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url(envoy).into_client_request().unwrap();
    req.headers_mut()
        .insert("x-request-timeout-ms", timeout_ms.into());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the upgrade through Envoy");
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads text messages until a close frame; returns how many came and
/// the close code.
async fn until_close(ws: &mut Ws) -> (u32, u16) {
    let mut texts = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => texts += 1,
            Ok(Some(Ok(Message::Close(Some(frame))))) => return (texts, u16::from(frame.code)),
            other => panic!("after {texts} messages: expected a close frame, got {other:?}"),
        }
    }
}

async fn next_text(ws: &mut Ws) -> String {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Starts a drain; when it was started.
async fn drain_started(envoy: &Envoy) -> Instant {
    start_drain(envoy).await;
    Instant::now()
}

/// Waits until `n` sessions are in flight.
async fn wait_inflight(envoy: &Envoy, n: u64) {
    wait_stat(envoy, "drainpipe_inflight", n, Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_messages_flow_through_the_upgrade_and_the_session_counts_in_flight() {
    let (up, envoy) = setup().await;
    let mut ws = connect(&envoy).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hello");
    ws.send(Message::text("ticks 3 10")).await.unwrap();
    for i in 0..3 {
        assert_eq!(next_text(&mut ws).await, format!("tick {i}"));
    }
    wait_inflight(&envoy, 1).await;
    ws.close(None).await.unwrap();
    drop(ws);
    wait_inflight(&envoy, 0).await;
    assert_eq!(up.sessions(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_session_open_at_the_grace_end_gets_close_1012_before_it_then_drained() {
    let (_up, envoy) = setup().await;
    let mut ws = connect(&envoy).await;
    // 20 s of messages, 50 ms apart: far longer than the grace period.
    ws.send(Message::text("ticks 400 50")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "tick 0");
    let started = drain_started(&envoy).await;
    let mut ticks = 1;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => ticks += 1,
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            other => panic!("after {ticks} messages: expected a close frame, got {other:?}"),
        }
    };
    let closed_after = started.elapsed();
    let frame = close.expect("the close frame has a code");
    assert_eq!(frame.code, CloseCode::Restart, "{frame:?}");
    assert_eq!(u16::from(frame.code), 1012);
    // final_event_margin_ms (500 ms) before the 3 s grace end.
    assert!(
        closed_after < Duration::from_millis(3_000),
        "close frame {closed_after:?} after the drain started"
    );
    assert!(ticks > 20, "{ticks} messages before the close");
    drop(ws);
    wait_drain_status(&envoy, Duration::from_secs(10), drained).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3_600),
        "drained after {took:?}"
    );
    assert_eq!(envoy.stat("drainpipe_inflight").await.unwrap(), 0);
    assert_eq!(envoy.stat("drainpipe_streams_ended").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_session_closed_by_its_handshake_during_a_drain_is_not_counted_as_cut() {
    let (_up, envoy) = setup().await;
    let mut ws = connect(&envoy).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hello");
    start_drain(&envoy).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "still here");
    // The client starts the closing handshake; the upstream answers it.
    ws.close(None).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(WsError::ConnectionClosed))) => {}
        other => panic!("expected the upstream's close frame, got {other:?}"),
    }
    drop(ws);
    wait_drain_status(&envoy, Duration::from_secs(10), drained).await;
    assert_eq!(envoy.stat("drainpipe_inflight").await.unwrap(), 0);
    assert_eq!(envoy.stat("drainpipe_streams_ended").await.unwrap(), 0);
    assert_eq!(envoy.stat("drainpipe_drain_resets").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_session_outlives_the_request_default_deadline_and_still_gets_1012_at_the_grace_end(
) {
    // A 2 s default for requests: a session must not take it (it would be
    // closed 1.5 s in).
    let (_up, envoy) = setup_with(json!({"default_timeout_ms": 2000})).await;
    let mut ws = connect(&envoy).await;
    let opened = Instant::now();
    // 10 s of messages, 25 ms apart.
    ws.send(Message::text("ticks 400 25")).await.unwrap();
    let mut ticks = 0;
    while opened.elapsed() < Duration::from_millis(3_500) {
        let text = next_text(&mut ws).await;
        assert_eq!(text, format!("tick {ticks}"));
        ticks += 1;
    }
    assert!(ticks > 60, "{ticks} messages in 3.5 s");
    assert_eq!(envoy.stat("drainpipe_streams_ended").await.unwrap(), 0);
    // A drain still ends it, with 1012 before the grace end.
    let started = drain_started(&envoy).await;
    let (more, code) = until_close(&mut ws).await;
    let closed_after = started.elapsed();
    assert_eq!(code, 1012);
    assert!(
        closed_after < Duration::from_millis(3_000),
        "close frame {closed_after:?} after the drain started"
    );
    assert!(more > 20, "{more} messages during the drain");
    drop(ws);
    wait_drain_status(&envoy, Duration::from_secs(10), drained).await;
    assert_eq!(envoy.stat("drainpipe_streams_ended").await.unwrap(), 1);
    assert_eq!(envoy.stat("drainpipe_inflight").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_session_takes_its_own_deadline_or_the_configured_websocket_default() {
    let (_up, envoy) = setup_with(json!({"websocket_default_timeout_ms": 2500})).await;
    let mut own = connect_with_timeout(&envoy, 1500).await;
    let mut defaulted = connect(&envoy).await;
    let opened = Instant::now();
    own.send(Message::text("ticks 400 25")).await.unwrap();
    defaulted.send(Message::text("ticks 400 25")).await.unwrap();
    // Each closed with 1012 final_event_margin_ms (500 ms) before its
    // deadline: 1 s and 2 s in.
    let (_, code) = until_close(&mut own).await;
    let own_closed = opened.elapsed();
    assert_eq!(code, 1012);
    let (_, code) = until_close(&mut defaulted).await;
    let defaulted_closed = opened.elapsed();
    assert_eq!(code, 1012);
    assert!(
        own_closed >= Duration::from_millis(900) && own_closed < Duration::from_millis(1_500),
        "the session asking 1.5 s closed after {own_closed:?}"
    );
    assert!(
        defaulted_closed >= Duration::from_millis(1_900)
            && defaulted_closed < Duration::from_millis(2_500),
        "the session on the 2.5 s default closed after {defaulted_closed:?}"
    );
    drop((own, defaulted));
    wait_inflight(&envoy, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_websocket_session_at_the_grace_end_is_ended_and_the_drain_completes() {
    let (_up, envoy) = setup().await;
    let mut ws = connect(&envoy).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hello");
    let started = drain_started(&envoy).await;
    // Nothing comes from the upstream, so no close frame can be placed:
    // the session is reset once the grace period is over; Envoy then
    // closes the client's connection after its delayed_close_timeout (1 s
    // by default), and deletes the stream.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    assert!(
        matches!(end, Ok(None | Some(Err(_)))),
        "the session ended: {end:?}"
    );
    let ended = started.elapsed();
    wait_drain_status(&envoy, Duration::from_secs(10), drained).await;
    let took = started.elapsed();
    // At the grace end (3 s) plus Envoy's delayed close (1 s), with room
    // for a loaded machine; a session that is never ended keeps the drain
    // open past the client's 10 s.
    assert!(
        took >= Duration::from_millis(2_900) && took < Duration::from_millis(7_000),
        "drained after {took:?} (the client saw the end after {ended:?}); log:\n{}",
        envoy.log_tail(30)
    );
    assert_eq!(envoy.stat("drainpipe_ended_at_grace").await.unwrap(), 1);
    assert_eq!(envoy.stat("drainpipe_inflight").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_after_the_admit_window_gets_503() {
    let (up, envoy) = setup().await;
    start_drain(&envoy).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    match tokio_tungstenite::connect_async(url(&envoy)).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()["retry-after-ms"], "1000");
        }
        other => panic!("expected a 503, got {:?}", other.map(|(_, r)| r)),
    }
    assert_eq!(up.sessions(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_sessions_aborted_at_random_points_leave_nothing_in_flight() {
    let (_up, envoy) = setup().await;
    // A fixed linear congruential sequence: the same points every run.
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut sessions = Vec::new();
    for _ in 0..24 {
        let point = next(4);
        let reads = next(10);
        let url = url(&envoy);
        sessions.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            if point >= 1 {
                ws.send(Message::text("ticks 100 5")).await.unwrap();
            }
            if point >= 2 {
                for _ in 0..reads {
                    let _ = ws.next().await;
                }
            }
            if point == 3 {
                // Mid-frame, from the client: half a text frame's header.
                let mut inner = ws.into_inner();
                use tokio::io::AsyncWriteExt;
                let _ = inner.write_all(&[0x81]).await;
                return;
            }
            // Abort: the connection dropped without a close frame.
            drop(ws);
        }));
    }
    for s in sessions {
        s.await.unwrap();
    }
    tokio::time::sleep(COUNTS_SETTLE).await;
    wait_inflight(&envoy, 0).await;
    let (_, s) = drain_api(&envoy, reqwest::Method::GET).await;
    assert_eq!(s["inflight"], 0, "{s}");
}
