//! Small proxy-wasm filters, independent of drainpipe, written the way an
//! ordinary proxy-wasm-rust-sdk user writes them. The plugin configuration
//! picks one:
//!
//! - `body`: rewrites whole bodies. It drops `content-length`, pauses every
//!   body chunk until the end of the stream, then replaces the buffered
//!   request body with `request <n> bytes: <BODY IN UPPER CASE>` and the
//!   buffered response body likewise (`response <n> bytes: ...`).
//! - `logs`: logs one line at each level from each stream callback; on
//!   `/trap` it panics (the VM traps).
//! - `headers`: replaces and adds request and response headers, and logs
//!   every header it sees in order; when the request has `x-repeat`, it
//!   adds `set-cookie: a=1`, `set-cookie: b=2`, `x-mid: 1` to the response
//!   (a repeated name; the shim sends a name's values together, so the
//!   values are not interleaved with other names here).
//! - `call`: asks cluster `auth` (or `x-auth-cluster`) `GET <x-auth-path>`
//!   and lets the request on with `x-auth-status` if it answers 200, else
//!   answers 403.
//! - `grpc`: a unary gRPC call to cluster `grpc` (or `x-grpc-cluster`),
//!   method `fidelity.Check/Check`, the message `x-grpc-message` (default
//!   `allow`), timeout `x-grpc-timeout-ms` (default 5000); lets the request
//!   on with `x-grpc-answer: ok` on status OK, else answers 403 with
//!   `x-grpc-status`.
//! - `tick`: a tick every 100 ms, logged with how many ticks this root
//!   context has had.
//! - `stream`: a gRPC stream (see [`Chat`]): opens `fidelity.Echo/<x-stream-method>`
//!   (default `Chat`) on cluster `x-stream-cluster` (default `grpc`), sends
//!   each message of `x-stream-messages` (comma-separated, default
//!   `one,two`), logs the metadata, messages and status it receives, closes
//!   its side once every message was echoed (or, with `x-stream-cancel: 1`,
//!   cancels the stream at the first one), and answers the request itself
//!   with what it saw.
//! - `reply`: answers every request locally with [`REPLY_TEXT`] and the
//!   header `x-extra: 1`: HTTP status `x-reply-status` (503 by default)
//!   with no gRPC status, plus `grpc-status: <x-reply-own-grpc-status>`
//!   when given; or, with `x-reply-grpc-status: 4`, a gRPC
//!   `DEADLINE_EXCEEDED` (`send_grpc_response`).
//! - `trailers`: logs the request and response headers, every body
//!   callback (size and `end_of_stream`) and the trailers it sees; in the
//!   request trailers it replaces `x-client-trailer` and adds
//!   `x-filter-request-trailer: added`, in the response trailers it sets
//!   `grpc-message: seen by the filter` and adds `x-filter-trailer: added`;
//!   when the request has `x-trailers-reply`, it answers 403 from the
//!   request trailers' callback instead.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel};

/// The body of `reply`'s local replies: plain characters, and what a
/// `grpc-message` must percent-encode (`%`, `~`, a tab, a newline, DEL,
/// UTF-8).
const REPLY_TEXT: &str = "50% done ~ caf\u{e9}\tline\nend\u{7f}!";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Body,
    Logs,
    Headers,
    Call,
    Grpc,
    Tick,
    Reply,
    Stream,
    Trailers,
}

#[derive(Default)]
struct Root {
    mode: Mode,
    ticks: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self
            .get_plugin_configuration()
            .map(|c| String::from_utf8_lossy(&c).trim().to_owned())
            .unwrap_or_default();
        self.mode = match config.as_str() {
            "body" => Mode::Body,
            "logs" => Mode::Logs,
            "headers" => Mode::Headers,
            "call" => Mode::Call,
            "grpc" => Mode::Grpc,
            "tick" => Mode::Tick,
            "reply" => Mode::Reply,
            "stream" => Mode::Stream,
            "trailers" => Mode::Trailers,
            other => {
                log::error!("fidelity filter: unknown mode {other:?}");
                return false;
            }
        };
        if self.mode == Mode::Tick {
            self.set_tick_period(Duration::from_millis(100));
        }
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        if self.ticks <= 3 {
            log::info!("tick: {}", self.ticks);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            mode: self.mode,
            chat: Chat::default(),
            repeat: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    mode: Mode,
    chat: Chat,
    /// `headers`: the request asked for repeated response headers;
    /// `trailers`: for a reply from the request trailers' callback.
    repeat: bool,
}

/// Every header pair as `name=value`, in the map's order.
fn listing(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn log_every_level(callback: &str) {
    log::trace!("logs: trace from {callback}");
    log::debug!("logs: debug from {callback}");
    log::info!("logs: info from {callback}");
    log::warn!("logs: warn from {callback}");
    log::error!("logs: error from {callback}");
}

impl Context for Stream {
    fn on_grpc_stream_initial_metadata(&mut self, _token: u32, count: u32) {
        let metadata = metadata_listing(&self.get_grpc_stream_initial_metadata());
        self.chat_saw(format!("initial metadata ({count}): {metadata}"));
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let message = self.get_grpc_stream_message(0, size).unwrap_or_default();
        self.chat_saw(format!("message {}", String::from_utf8_lossy(&message)));
        self.chat.received += 1;
        if self.chat.cancel {
            self.cancel_grpc_stream(token);
            self.chat_saw("cancelled".to_owned());
            self.chat_answer("cancelled");
        } else if self.chat.received == self.chat.sent {
            self.close_grpc_stream(token);
            self.chat_saw("closed our side".to_owned());
        }
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token: u32, count: u32) {
        let metadata = metadata_listing(&self.get_grpc_stream_trailing_metadata());
        self.chat_saw(format!("trailing metadata ({count}): {metadata}"));
    }

    fn on_grpc_stream_close(&mut self, _token: u32, status_code: u32) {
        let (code, message) = self.get_grpc_status();
        self.chat_saw(format!("close {status_code} ({code}, {message:?})"));
        self.chat_answer(&status_code.to_string());
    }

    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        if status_code == 0 {
            let body = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            log::info!("grpc: OK: {}", String::from_utf8_lossy(&body));
            self.set_http_request_header("x-grpc-answer", Some("ok"));
            self.resume_http_request();
        } else {
            let (code, message) = self.get_grpc_status();
            log::info!("grpc: status {status_code} ({code}, {message:?})");
            let status = status_code.to_string();
            self.send_http_response(403, vec![("x-grpc-status", &status)], Some(b"refused\n"));
        }
    }

    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body: usize, _tr: usize) {
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_else(|| "none".into());
        let body = self
            .get_http_call_response_body(0, body)
            .unwrap_or_default();
        log::info!(
            "call: auth answered {status}: {}\n{}",
            listing(&self.get_http_call_response_headers()),
            String::from_utf8_lossy(&body)
        );
        if status == "200" {
            self.set_http_request_header("x-auth-status", Some(&status));
            self.resume_http_request();
        } else {
            self.send_http_response(403, vec![("x-denied-by", "auth")], Some(b"denied\n"));
        }
    }
}

impl Stream {
    fn grpc_call(&mut self) -> Action {
        let header = |name: &str, default: &str| {
            self.get_http_request_header(name)
                .unwrap_or_else(|| default.to_owned())
        };
        let (cluster, message) = (
            header("x-grpc-cluster", "grpc"),
            header("x-grpc-message", "allow"),
        );
        let timeout = header("x-grpc-timeout-ms", "5000").parse().unwrap_or(5000);
        let dispatched = self.dispatch_grpc_call(
            &cluster,
            "fidelity.Check",
            "Check",
            vec![("x-meta", b"1")],
            Some(message.as_bytes()),
            Duration::from_millis(timeout),
        );
        if let Err(status) = dispatched {
            log::error!("grpc: dispatch failed: {status:?}");
            self.send_http_response(500, vec![], Some(b"dispatch failed\n"));
        }
        Action::Pause
    }
}

/// What the `stream` filter did and saw on its gRPC stream.
#[derive(Default)]
struct Chat {
    sent: usize,
    received: usize,
    cancel: bool,
    seen: Vec<String>,
}

/// Metadata pairs as `name=value`, in order; a `date` (the server's clock)
/// shown as `<date>`.
fn metadata_listing(pairs: &[(String, Vec<u8>)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| match k.as_str() {
            "date" => format!("{k}=<date>"),
            _ => format!("{k}={}", String::from_utf8_lossy(v)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Stream {
    fn open_stream(&mut self) -> Action {
        let header = |name: &str, default: &str| {
            self.get_http_request_header(name)
                .unwrap_or_else(|| default.to_owned())
        };
        let (cluster, method) = (
            header("x-stream-cluster", "grpc"),
            header("x-stream-method", "Chat"),
        );
        let messages = header("x-stream-messages", "one,two");
        self.chat.cancel = header("x-stream-cancel", "0") == "1";
        let opened =
            self.open_grpc_stream(&cluster, "fidelity.Echo", &method, vec![("x-meta", b"1")]);
        let token = match opened {
            Ok(token) => token,
            Err(status) => {
                self.chat_saw(format!("open failed: {status:?}"));
                self.chat_answer("none");
                return Action::Pause;
            }
        };
        self.chat_saw(format!("opened {token}"));
        for message in messages.split(',').filter(|m| !m.is_empty()) {
            self.send_grpc_stream_message(token, Some(message.as_bytes()), false);
            self.chat.sent += 1;
        }
        Action::Pause
    }

    fn chat_saw(&mut self, line: String) {
        log::info!("stream: {line}");
        self.chat.seen.push(line);
    }

    /// Answers the request with everything seen, one line each.
    fn chat_answer(&mut self, status: &str) {
        let mut body = self.chat.seen.join("\n");
        body.push('\n');
        self.send_http_response(
            200,
            vec![("x-stream-status", status)],
            Some(body.as_bytes()),
        );
    }
}

impl Stream {
    fn reply(&mut self) -> Action {
        let header = |name: &str| self.get_http_request_header(name);
        let status: u32 = header("x-reply-status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(503);
        if header("x-reply-grpc-status").as_deref() == Some("4") {
            log::info!("reply: gRPC DEADLINE_EXCEEDED");
            let sent = hostcalls::send_grpc_response(
                GrpcStatusCode::DeadlineExceeded,
                Some(REPLY_TEXT),
                vec![("x-extra", b"1")],
            );
            if let Err(status) = sent {
                log::error!("reply: failed: {status:?}");
            }
            return Action::Pause;
        }
        let own = header("x-reply-own-grpc-status");
        let mut headers = vec![("x-extra", "1")];
        if let Some(own) = &own {
            headers.push(("grpc-status", own));
        }
        log::info!("reply: HTTP {status}");
        self.send_http_response(status, headers, Some(REPLY_TEXT.as_bytes()));
        Action::Pause
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        match self.mode {
            Mode::Body => {
                self.set_http_request_header("content-length", None);
                Action::Continue
            }
            Mode::Logs => {
                log_every_level("request headers");
                if self.get_http_request_header(":path").as_deref() == Some("/trap") {
                    panic!("logs: trapping on purpose");
                }
                Action::Continue
            }
            Mode::Headers => {
                log::info!(
                    "headers: request {}",
                    listing(&self.get_http_request_headers())
                );
                self.repeat = self.get_http_request_header("x-repeat").is_some();
                self.set_http_request_header("x-b", Some("replaced"));
                self.add_http_request_header("x-added", "added");
                log::info!(
                    "headers: request after {}",
                    listing(&self.get_http_request_headers())
                );
                Action::Continue
            }
            Mode::Call => {
                let path = self
                    .get_http_request_header("x-auth-path")
                    .unwrap_or_else(|| "/allow".into());
                let cluster = self
                    .get_http_request_header("x-auth-cluster")
                    .unwrap_or_else(|| "auth".into());
                let dispatched = self.dispatch_http_call(
                    &cluster,
                    vec![(":method", "GET"), (":path", &path), (":authority", "auth")],
                    None,
                    vec![],
                    Duration::from_secs(5),
                );
                match dispatched {
                    Ok(_) => Action::Pause,
                    Err(status) => {
                        log::error!("call: dispatch failed: {status:?}");
                        self.send_http_response(500, vec![], Some(b"dispatch failed\n"));
                        Action::Pause
                    }
                }
            }
            Mode::Grpc => self.grpc_call(),
            Mode::Reply => self.reply(),
            Mode::Stream => self.open_stream(),
            Mode::Trailers => {
                log::info!(
                    "trailers: request headers {}",
                    listing(&self.get_http_request_headers())
                );
                self.repeat = self.get_http_request_header("x-trailers-reply").is_some();
                Action::Continue
            }
            Mode::Tick => Action::Continue,
        }
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        if self.mode == Mode::Trailers {
            log::info!(
                "trailers: request trailers {}",
                listing(&self.get_http_request_trailers())
            );
            self.set_http_request_trailer("x-client-trailer", Some("replaced"));
            self.add_http_request_trailer("x-filter-request-trailer", "added");
            log::info!(
                "trailers: request trailers after {}",
                listing(&self.get_http_request_trailers())
            );
            if self.repeat {
                let headers = vec![("x-by", "trailers")];
                self.send_http_response(403, headers, Some(b"refused in the trailers\n"));
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if self.mode == Mode::Trailers {
            log::info!(
                "trailers: response trailers {}",
                listing(&self.get_http_response_trailers())
            );
            self.set_http_response_trailer("grpc-message", Some("seen by the filter"));
            self.add_http_response_trailer("x-filter-trailer", "added");
            log::info!(
                "trailers: response trailers after {}",
                listing(&self.get_http_response_trailers())
            );
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.mode {
            Mode::Body => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let body = self.get_http_request_body(0, body_size).unwrap_or_default();
                let text = String::from_utf8_lossy(&body).to_uppercase();
                let new = format!("request {} bytes: {text}", body.len());
                self.set_http_request_body(0, body_size, new.as_bytes());
                log::info!("body: request body of {} bytes replaced", body.len());
                Action::Continue
            }
            Mode::Logs => {
                if end_of_stream {
                    log_every_level("request body");
                }
                Action::Continue
            }
            Mode::Trailers => {
                log::info!(
                    "trailers: request body {body_size} bytes, end_of_stream {end_of_stream}"
                );
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        match self.mode {
            Mode::Body => {
                self.set_http_response_header("content-length", None);
            }
            Mode::Logs => log_every_level("response headers"),
            Mode::Headers => {
                log::info!(
                    "headers: response {}",
                    listing(&self.get_http_response_headers())
                );
                self.set_http_response_header("x-up-b", Some("replaced"));
                self.add_http_response_header("x-added", "added");
                if self.repeat {
                    self.add_http_response_header("set-cookie", "a=1");
                    self.add_http_response_header("set-cookie", "b=2");
                    self.add_http_response_header("x-mid", "1");
                }
                log::info!(
                    "headers: response after {}",
                    listing(&self.get_http_response_headers())
                );
            }
            Mode::Trailers => log::info!(
                "trailers: response headers {}",
                listing(&self.get_http_response_headers())
            ),
            Mode::Call | Mode::Grpc | Mode::Tick | Mode::Reply | Mode::Stream => {}
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.mode == Mode::Trailers {
            log::info!("trailers: response body {body_size} bytes, end_of_stream {end_of_stream}");
        }
        if self.mode != Mode::Body {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).to_uppercase();
        let new = format!("response {} bytes: {text}", body.len());
        self.set_http_response_body(0, body_size, new.as_bytes());
        log::info!("body: response body of {} bytes replaced", body.len());
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.mode == Mode::Logs {
            log_every_level("log");
        }
    }
}
