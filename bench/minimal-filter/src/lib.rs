//! The benchmark's baseline proxy-wasm filter: on each request it reads one
//! header (`x-bench`) and adds one (`x-minimal-filter`), nothing else. What
//! Envoy spends on it is the fixed price of any wasm filter: the context
//! per stream, the callbacks, two host calls.
//!
//! `cargo xtask bench` builds it as the plugin is built (release profile,
//! exports pruned to the callbacks it handles, `wasm-opt -Oz`), and once
//! more with the response body callback exported too (the SDK's, which
//! does nothing): the least any filter that looks at response bodies pays
//! per chunk.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let seen = self.get_http_request_header("x-bench").is_some();
        self.add_http_request_header("x-minimal-filter", if seen { "1" } else { "0" });
        Action::Continue
    }
}
