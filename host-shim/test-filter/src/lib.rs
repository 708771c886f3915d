//! A test filter for the shim, independent of drainpipe:
//! - adds `x-hello: hello <x-name>` to requests and `x-served-by` to responses;
//! - answers `/local` with a local 418;
//! - on `/call`, asks cluster `auth` and continues with `x-auth-status`, or
//!   answers 403 when `auth` says 403;
//! - on `/panic`, panics (the VM traps);
//! - on `/cas`, reads shared data `hits` in the request and writes it back
//!   with that CAS in the response, reporting `x-cas: ok|mismatch`;
//! - counts requests and ticks in metrics.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    greeting: String,
    requests: u32,
    ticks: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self
            .get_plugin_configuration()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default();
        if config == "reject" {
            log::error!("test filter: configuration rejected");
            return false;
        }
        self.greeting = if config.is_empty() { "hello".into() } else { config };
        self.requests = hostcalls::define_metric(MetricType::Counter, "test_filter_requests")
            .unwrap_or(0);
        self.ticks = hostcalls::define_metric(MetricType::Counter, "test_filter_ticks").unwrap_or(0);
        self.set_tick_period(Duration::from_secs(1));
        true
    }

    fn on_tick(&mut self) {
        let _ = hostcalls::increment_metric(self.ticks, 1);
        log::info!("test filter: tick");
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let _ = hostcalls::increment_metric(self.requests, 1);
        Some(Box::new(Stream {
            id: context_id,
            greeting: self.greeting.clone(),
            cas: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    greeting: String,
    cas: Option<Option<u32>>,
}

impl Context for Stream {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_else(|| "none".into());
        if status == "403" {
            self.send_http_response(403, vec![("x-denied-by", "auth")], Some(b"denied"));
            return;
        }
        self.set_http_request_header("x-auth-status", Some(&status));
        self.set_http_request_header("x-auth-body-size", Some(&body_size.to_string()));
        self.resume_http_request();
    }

    fn on_done(&mut self) -> bool {
        log::info!("test filter: on_done {}", self.id);
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        match path.as_str() {
            "/local" => {
                self.send_http_response(418, vec![("x-local", "yes")], Some(b"short and stout"));
                return Action::Pause;
            }
            "/panic" => panic!("test filter panicked on purpose"),
            "/call" => {
                let dispatched = self.dispatch_http_call(
                    "auth",
                    vec![(":method", "GET"), (":path", "/check"), (":authority", "auth")],
                    None,
                    vec![],
                    Duration::from_secs(2),
                );
                return match dispatched {
                    Ok(_) => Action::Pause,
                    Err(status) => {
                        let reason = format!("{status:?}");
                        self.send_http_response(500, vec![("x-call-error", &reason)], None);
                        Action::Pause
                    }
                };
            }
            "/cas" => {
                let (_, cas) = self.get_shared_data("hits");
                self.cas = Some(cas);
            }
            _ => {}
        }
        if let Some(name) = self.get_http_request_header("x-name") {
            let hello = format!("{} {name}", self.greeting);
            self.add_http_request_header("x-hello", &hello);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        self.set_http_response_header("x-served-by", Some("test-filter"));
        if let Some(cas) = self.cas.take() {
            let result = match self.set_shared_data("hits", Some(b"1"), cas) {
                Ok(()) => "ok",
                Err(Status::CasMismatch) => "mismatch",
                Err(_) => "error",
            };
            self.set_http_response_header("x-cas", Some(result));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        log::info!("test filter: on_log {}", self.id);
    }
}
