//! `controller --listen ADDR`: a standalone drain controller.
//!
//! It holds one drain state, set by `POST /drain` and `DELETE /drain` and,
//! on SIGTERM or SIGINT, by itself. The plugin follows it when configured
//! with `drain_controller: {"cluster": .., "path": "/drain", "poll_ms": ..}`:
//! it polls `GET /drain` through Envoy on its tick. This is the drain API
//! for deployments where Envoy cannot get a listener of its own (Istio's
//! sidecar, for one).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Address to listen on, e.g. 127.0.0.1:10002
    #[arg(long)]
    listen: SocketAddr,
    /// After a signal starts the drain, keep answering this long so the
    /// plugins can see it, then exit.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    linger: Duration,
}

/// The drain start, if draining (unix ms).
type DrainState = Arc<Mutex<Option<u64>>>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn status(state: &DrainState) -> Value {
    let started = *state.lock().unwrap_or_else(|e| e.into_inner());
    json!({
        "state": if started.is_some() { "draining" } else { "serving" },
        "drain_started_unix_ms": started,
        "elapsed_ms": started.map(|s| now_ms().saturating_sub(s)),
    })
}

fn start(state: &DrainState) {
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    s.get_or_insert_with(now_ms);
}

/// The controller's routes.
pub(crate) fn router(state: DrainState) -> Router {
    Router::new()
        .route(
            "/drain",
            get(|State(s): State<DrainState>| async move { Json(status(&s)) })
                .post(|State(s): State<DrainState>| async move {
                    start(&s);
                    (StatusCode::ACCEPTED, Json(status(&s)))
                })
                .delete(|State(s): State<DrainState>| async move {
                    *s.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    Json(status(&s))
                })
                .fallback(|| async {
                    let mut r = error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "use GET, POST or DELETE on /drain",
                    );
                    r.headers_mut()
                        .insert(header::ALLOW, "GET, POST, DELETE".parse().expect("static"));
                    r
                }),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "unknown path; the drain API is /drain",
            )
        })
        .with_state(state)
}

fn error(code: StatusCode, message: &str) -> Response {
    (
        code,
        Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": null,
                              "code": if code == StatusCode::NOT_FOUND { "not_found" } else { "method_not_allowed" }}})),
    )
        .into_response()
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let state = DrainState::default();
    println!(
        "drainpipe-shim: drain controller on http://{}/drain",
        args.listen
    );
    let app = router(state.clone());
    let signalled = state.clone();
    let linger = args.linger;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            crate::serve::shutdown_signal().await;
            start(&signalled);
            eprintln!(
                "drainpipe-shim: signal received: draining; exiting in {} ms",
                linger.as_millis()
            );
            tokio::time::sleep(linger).await;
        })
        .await
        .context("controller server failed")?;
    Ok(ExitCode::SUCCESS)
}
