//! The admin endpoint (axum): the drain API passed through a plugin
//! instance in admin role, the plugin's metrics, and readiness.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use drainpipe_shim::{Host, LocalResponse, Worker};
use serde_json::Value;

/// The admin endpoint's state.
pub(crate) struct Admin {
    pub(crate) host: Host,
    pub(crate) worker: Worker,
    /// The admin-role plugin, when `--admin-config` loaded one.
    pub(crate) plugin: Option<String>,
}

impl Admin {
    /// Sends one request through the admin-role plugin.
    pub(crate) fn call(&self, method: &str, path: &str, headers: &HeaderMap) -> LocalResponse {
        let mut pairs: Vec<(String, Vec<u8>)> = vec![
            (":method".into(), method.as_bytes().to_vec()),
            (":path".into(), path.as_bytes().to_vec()),
            (":authority".into(), b"admin".to_vec()),
        ];
        for (k, v) in headers {
            pairs.push((k.as_str().to_owned(), v.as_bytes().to_vec()));
        }
        let Some(plugin) = &self.plugin else {
            return error(
                404,
                "no admin plugin: start drainpipe-shim serve with --admin-config",
            );
        };
        let outcome = match self.worker.http_stream(plugin) {
            Ok(mut s) => s.request_headers(pairs, true),
            Err(e) => return error(500, &e.to_string()),
        };
        outcome
            .local_response()
            .cloned()
            .unwrap_or_else(|| error(502, "the admin plugin did not answer"))
    }

    /// The drain state as the plugin reports it.
    pub(crate) fn state(&self) -> Option<Value> {
        let reply = self.call("GET", "/drain", &HeaderMap::new());
        serde_json::from_slice(&reply.body).ok()
    }
}

fn error(status: u32, message: &str) -> LocalResponse {
    LocalResponse {
        status,
        headers: drainpipe_shim::Headers::from_pairs([("content-type", "text/plain")]),
        body: message.as_bytes().to_vec(),
        details: String::new(),
        grpc_status: None,
    }
}

pub(crate) fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/drain", any(drain))
        .route("/stats/prometheus", get(prometheus))
        .route("/ready", get(ready))
        .with_state(admin)
}

async fn drain(State(admin): State<Arc<Admin>>, method: Method, headers: HeaderMap) -> Response {
    to_response(admin.call(method.as_str(), "/drain", &headers))
}

async fn prometheus(State(admin): State<Arc<Admin>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        admin.host.metrics().render_prometheus(),
    )
        .into_response()
}

async fn ready(State(admin): State<Arc<Admin>>) -> Response {
    if admin.plugin.is_none() {
        // As Envoy's admin `/ready` while live.
        return (StatusCode::OK, "LIVE\n").into_response();
    }
    match admin.state() {
        Some(state) if state["state"] == "serving" => (StatusCode::OK, "serving\n").into_response(),
        Some(state) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", state["state"]),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "unknown\n").into_response(),
    }
}

fn to_response(reply: LocalResponse) -> Response {
    let status = StatusCode::from_u16(reply.status as u16).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, reply.body).into_response();
    for (k, v) in reply.headers.iter() {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            axum::http::HeaderValue::from_bytes(v),
        ) {
            response.headers_mut().insert(k, v);
        }
    }
    response
}
