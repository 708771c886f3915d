//! A test filter for the shim, independent of drainpipe:
//! - adds `x-hello: hello <x-name>` to requests and `x-served-by` to responses;
//! - answers `/local` with a local 418;
//! - on `/call`, asks cluster `auth` and continues with `x-auth-status`, or
//!   answers 403 when `auth` says 403;
//! - on `/panic`, panics (the VM traps);
//! - on `/cas`, reads shared data `hits` in the request and writes it back
//!   with that CAS in the response, reporting `x-cas: ok|mismatch`;
//! - with `x-probe-maps` on the request, reports in the response body which
//!   header maps it can still reach from the later callbacks (the request
//!   headers from the response headers callback; both header maps from the
//!   response body callback), as the host's status codes, and logs what
//!   `on_log` can reach;
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
        self.greeting = if config.is_empty() {
            "hello".into()
        } else {
            config
        };
        self.requests =
            hostcalls::define_metric(MetricType::Counter, "test_filter_requests").unwrap_or(0);
        self.ticks =
            hostcalls::define_metric(MetricType::Counter, "test_filter_ticks").unwrap_or(0);
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
            probe: None,
            probing: false,
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
    /// With `x-probe-maps`: what the later callbacks found, in order.
    probe: Option<Vec<String>>,
    /// The request asked for the probe (`on_log` reports to the log).
    probing: bool,
}

/// The raw imports, for their status codes: the SDK's wrappers panic on a
/// status they do not expect.
mod raw {
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
    }

    pub const REQUEST_HEADERS: u32 = 0;
    pub const RESPONSE_HEADERS: u32 = 2;

    fn name(status: u32) -> String {
        match status {
            0 => "ok".into(),
            1 => "not_found".into(),
            2 => "bad_argument".into(),
            other => other.to_string(),
        }
    }

    /// The status of reading `key` from `map`.
    pub fn get(map: u32, key: &str) -> String {
        let mut data = std::ptr::null_mut();
        let mut size = 0;
        // SAFETY: the host writes a pointer it allocated with the module's
        // allocator (or null) and its size into the two slots.
        let status = unsafe {
            proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut data, &mut size)
        };
        if !data.is_null() {
            // SAFETY: allocated by `proxy_on_memory_allocate` for `size` bytes.
            drop(unsafe { Vec::from_raw_parts(data, size, size) });
        }
        name(status)
    }

    /// The status of replacing `key` in `map` with `value`.
    pub fn replace(map: u32, key: &str, value: &str) -> String {
        // SAFETY: both slices outlive the call.
        let status = unsafe {
            proxy_replace_header_map_value(
                map,
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
            )
        };
        name(status)
    }
}

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
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
                    vec![
                        (":method", "GET"),
                        (":path", "/check"),
                        (":authority", "auth"),
                    ],
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
        if self.get_http_request_header("x-probe-maps").is_some() {
            self.probe = Some(Vec::new());
            self.probing = true;
        }
        if let Some(name) = self.get_http_request_header("x-name") {
            let hello = format!("{} {name}", self.greeting);
            self.add_http_request_header("x-hello", &hello);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        self.set_http_response_header("x-served-by", Some("test-filter"));
        if self.probe.is_some() {
            let line = format!(
                "response headers: request header {}",
                raw::get(raw::REQUEST_HEADERS, ":path")
            );
            self.probe.get_or_insert_with(Vec::new).push(line);
            // The body is replaced by the report: its length changes.
            self.set_http_response_header("content-length", None);
        }
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

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.probe.is_none() {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let pairs = self.get_http_response_headers().len();
        let line = format!(
            "response body: request header {}, response header {}, response header pairs {pairs}, \
             response header replace {}",
            raw::get(raw::REQUEST_HEADERS, ":path"),
            raw::get(raw::RESPONSE_HEADERS, ":status"),
            raw::replace(raw::RESPONSE_HEADERS, "x-late", "1"),
        );
        let mut lines = self.probe.take().unwrap_or_default();
        lines.push(line);
        let report = lines.join("\n") + "\n";
        self.set_http_response_body(0, body_size, report.as_bytes());
        Action::Continue
    }

    fn on_log(&mut self) {
        log::info!("test filter: on_log {}", self.id);
        if self.probing {
            log::info!(
                "test filter: on_log maps: request header {}, response header {}, \
                 request header replace {}",
                raw::get(raw::REQUEST_HEADERS, ":path"),
                raw::get(raw::RESPONSE_HEADERS, ":status"),
                raw::replace(raw::REQUEST_HEADERS, "x-late", "1"),
            );
        }
    }
}
