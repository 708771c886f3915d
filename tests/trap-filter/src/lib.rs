//! A test-only proxy-wasm filter: a request carrying `x-trap` makes it
//! panic, which aborts (traps) its wasm VM, as a bug in a real filter would.
//! Every response it lets through carries `x-trap-filter: ran`, so a test can
//! tell whether the filter ran or Envoy skipped it.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Trap) });
}}

struct Trap;

impl Context for Trap {}

impl HttpContext for Trap {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-trap").is_some() {
            panic!("x-trap: trapping on purpose");
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-trap-filter", Some("ran"));
        Action::Continue
    }
}
