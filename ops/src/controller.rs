//! `drainpipe controller --listen ADDR`: a standalone drain controller.
//!
//! It holds one drain state, set by `POST /drain` and `DELETE /drain` and,
//! on SIGTERM or SIGINT, by itself: it then keeps answering so the plugins
//! polling it see the drain, and exits 0 after `--linger`, or, with
//! `--envoy-stats`, as soon as the plugin reports `drained` in Envoy's
//! Prometheus stats (or Envoy stops answering after reporting the drain),
//! with `--linger` as the bound. A second signal ends the wait. The plugin
//! follows it when configured with
//! `drain_controller: {"cluster": .., "path": "/drain", "poll_ms": ..}`.
//! This is the drain API for Envoys that cannot get a listener of their
//! own (Istio's sidecar, for one).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::api::DrainApi;
use crate::say;
use crate::signals::{self, Signals};
use crate::supervise::POLL_EVERY;
use crate::watch::{self, Verdict, Watch};

/// Why the controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("cannot block signals: {0}")]
    Signals(std::io::Error),
    #[error("cannot listen on {addr}: {cause}")]
    Listen { addr: SocketAddr, cause: String },
}

/// The drain start, if draining (unix ms).
#[derive(Debug, Clone, Default)]
pub struct DrainState(Arc<Mutex<Option<u64>>>);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl DrainState {
    fn get(&self) -> Option<u64> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the drain; a second start keeps the first start time.
    pub fn start(&self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(now_ms);
    }

    /// Back to serving.
    pub fn end(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The status the plugin reads: `state`, `drain_started_unix_ms`
    /// (null while serving), `elapsed_ms`.
    pub fn status(&self) -> Value {
        let started = self.get();
        json!({
            "state": if started.is_some() { "draining" } else { "serving" },
            "drain_started_unix_ms": started,
            "elapsed_ms": started.map(|s| now_ms().saturating_sub(s)),
        })
    }
}

/// An answer: status, JSON body, and an `allow` header for 405.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub allow: Option<&'static str>,
}

/// The controller's routes, without the server.
pub fn route(state: &DrainState, method: &str, path: &str) -> Answer {
    let answer = |status, body| Answer {
        status,
        body,
        allow: None,
    };
    let path = path.split('?').next().unwrap_or(path);
    if path != "/drain" {
        return answer(
            404,
            error("not_found", "unknown path; the drain API is /drain"),
        );
    }
    match method {
        "GET" => answer(200, state.status()),
        "POST" => {
            state.start();
            answer(202, state.status())
        }
        "DELETE" => {
            state.end();
            answer(200, state.status())
        }
        _ => Answer {
            status: 405,
            body: error("method_not_allowed", "use GET, POST or DELETE on /drain"),
            allow: Some("GET, POST, DELETE"),
        },
    }
}

fn error(code: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}})
}

fn respond(state: &DrainState, request: Request) {
    let method = match request.method() {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Delete => "DELETE",
        _ => "OTHER",
    };
    let answer = route(state, method, request.url());
    let mut response = Response::from_string(answer.body.to_string())
        .with_status_code(answer.status)
        .with_header(Header::from_bytes("content-type", "application/json").expect("static"));
    if let Some(allow) = answer.allow {
        response = response.with_header(Header::from_bytes("allow", allow).expect("static"));
    }
    // A client that went away is no concern of the controller's.
    let _ = request.respond(response);
}

/// Serves the drain API on `listen` until a signal has started the drain
/// and the drain is over: `linger` has passed or, with `envoy_stats`
/// (Envoy's `/stats/prometheus`), the plugin reports `drained` there, or
/// Envoy stopped answering after reporting the drain, whichever comes
/// first.
pub fn run(
    listen: SocketAddr,
    linger: Duration,
    envoy_stats: Option<&str>,
) -> Result<(), ControllerError> {
    use libc::{SIGINT, SIGTERM};
    // Before the server's threads start, so they inherit the mask.
    let signals = Signals::block(&[SIGTERM, SIGINT]).map_err(ControllerError::Signals)?;
    let server = Server::http(listen).map_err(|cause| ControllerError::Listen {
        addr: listen,
        cause: cause.to_string(),
    })?;
    let state = DrainState::default();
    let served = state.clone();
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            respond(&served, request);
        }
    });
    say(format!("drain controller on http://{listen}/drain"));
    let signal = loop {
        if let Some(signal) = signals.wait(Duration::from_secs(3600)) {
            break signal;
        }
    };
    state.start();
    let started = Instant::now();
    let Some(url) = envoy_stats else {
        say(format!(
            "{} received: draining; exiting in {}",
            signals::name(signal),
            watch::seconds(linger)
        ));
        let until = started + linger;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if let Some(signal) = signals.wait(left) {
                say(format!("{} received again: exiting", signals::name(signal)));
                break;
            }
        }
        return Ok(());
    };
    say(format!(
        "{} received: draining; exiting once the plugin reports drained ({url}), at most in {}",
        signals::name(signal),
        watch::seconds(linger)
    ));
    // The plugins keep polling this controller until it exits; the drain
    // they adopted stays when it no longer answers.
    let stats = DrainApi::envoy_stats(url);
    let mut watch = Watch::new(started, linger).done_when_gone();
    loop {
        let (verdict, line) = watch.observe(Instant::now(), stats.status());
        if let Some(line) = line {
            say(line);
        }
        if verdict != Verdict::Waiting {
            return Ok(());
        }
        let left = (started + linger).saturating_duration_since(Instant::now());
        if let Some(signal) = signals.wait(left.min(POLL_EVERY)) {
            say(format!("{} received again: exiting", signals::name(signal)));
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_starts_once_and_delete_ends() {
        let s = DrainState::default();
        assert_eq!(route(&s, "GET", "/drain").body["state"], "serving");
        let a = route(&s, "POST", "/drain");
        assert_eq!(a.status, 202);
        assert_eq!(a.body["state"], "draining");
        let b = route(&s, "POST", "/drain");
        assert_eq!(
            a.body["drain_started_unix_ms"],
            b.body["drain_started_unix_ms"]
        );
        let c = route(&s, "DELETE", "/drain?x=1");
        assert_eq!((c.status, c.body["state"].as_str()), (200, Some("serving")));
        assert!(c.body["drain_started_unix_ms"].is_null());
    }

    #[test]
    fn unknown_paths_and_methods_get_json_errors() {
        let s = DrainState::default();
        let a = route(&s, "GET", "/nope");
        assert_eq!(
            (a.status, &a.body["error"]["code"]),
            (404, &json!("not_found"))
        );
        let b = route(&s, "OTHER", "/drain");
        assert_eq!(b.status, 405);
        assert_eq!(b.allow, Some("GET, POST, DELETE"));
        assert_eq!(b.body["error"]["code"], "method_not_allowed");
    }
}
