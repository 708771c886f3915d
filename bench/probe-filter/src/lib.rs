//! The host-call probe: the minimal filter (reads `x-bench`, adds
//! `x-minimal-filter`) plus, per request, [`CALLS`] of one operation chosen
//! at build time with `PROBE_OP`:
//!
//! | `PROBE_OP` | each call |
//! |---|---|
//! | `none` | nothing (the probe's own loop) |
//! | `time` | `proxy_get_current_time_nanoseconds` |
//! | `shared` | `proxy_get_shared_data` of a 13-byte value |
//! | `get_metric` | `proxy_get_metric` |
//! | `increment_metric` | `proxy_increment_metric` |
//! | `set_header` | `proxy_replace_header_map_value` on the request |
//! | `get_header` | `proxy_get_header_map_value` of `:path` (present) |
//! | `get_header_absent` | `proxy_get_header_map_value` of an absent header |
//! | `get_headers` | `proxy_get_header_map_pairs` of the request |
//! | `u64_to_string` | `u64::to_string` inside the VM (no host call) |
//!
//! Run it as the benchmark's candidate (`--candidate-wasm`): its added CPU
//! minus the `none` probe's, divided by [`CALLS`], is one call's cost.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { metric: 0 }) });
}}

/// Calls per request.
const CALLS: u64 = 20;
const OP: &str = env!("PROBE_OP");
const KEY: &str = "bench_probe.value";

struct Root {
    metric: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let known = [
            "none",
            "time",
            "shared",
            "get_metric",
            "increment_metric",
            "set_header",
            "get_header",
            "get_header_absent",
            "get_headers",
            "u64_to_string",
        ];
        if !known.contains(&OP) {
            log::error!("unknown PROBE_OP {OP:?}; one of {known:?}");
            return false;
        }
        let stored = hostcalls::set_shared_data(KEY, Some(b"1764000000000"), None);
        match (
            stored,
            hostcalls::define_metric(MetricType::Counter, "bench_probe"),
        ) {
            (Ok(()), Ok(id)) => {
                self.metric = id;
                true
            }
            (stored, metric) => {
                log::error!("probe set-up failed: {stored:?} {metric:?}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            metric: self.metric,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    metric: u32,
}

impl Context for Stream {}

impl Stream {
    /// One call of the probed operation; returns something derived from its
    /// result, so that it is not optimised away.
    fn call(&self, i: u64) -> u64 {
        let len = |v: Option<Vec<u8>>| v.map_or(0, |v| v.len() as u64);
        match OP {
            "time" => self
                .get_current_time()
                .elapsed()
                .map_or(1, |d| d.subsec_nanos().into()),
            "shared" => hostcalls::get_shared_data(KEY).map_or(0, |(v, _)| len(v)),
            "get_metric" => hostcalls::get_metric(self.metric).unwrap_or(0),
            "increment_metric" => hostcalls::increment_metric(self.metric, 1).map_or(0, |()| 1),
            "set_header" => {
                let value = if i.is_multiple_of(2) {
                    "12345"
                } else {
                    "67890"
                };
                self.set_http_request_header("x-bench-probe", Some(value));
                1
            }
            "get_header" => len(self.get_http_request_header_bytes(":path")),
            "get_header_absent" => len(self.get_http_request_header_bytes("x-bench-absent")),
            "get_headers" => self.get_http_request_headers_bytes().len() as u64,
            "u64_to_string" => (1_764_000_000_000 + i).to_string().len() as u64,
            _ => 0,
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let seen = self.get_http_request_header("x-bench").is_some();
        self.add_http_request_header("x-minimal-filter", if seen { "1" } else { "0" });
        let total: u64 = (0..CALLS).map(|i| self.call(i)).sum();
        if total == u64::MAX {
            self.add_http_request_header("x-bench-probe-total", "max");
        }
        Action::Continue
    }
}
