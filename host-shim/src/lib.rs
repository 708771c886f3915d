//! drainpipe-shim: a proxy-wasm host on Wasmtime that behaves like Envoy
//! wherever a filter can tell, so filters can be developed and tested
//! without Envoy.
//!
//! - [`Wasm`] compiles a module built for `wasm32-wasip1` and checks its
//!   proxy-wasm ABI marker (0.2.0 or 0.2.1); [`Host`] links it with WASI
//!   preview1 (through `wasmtime-wasi`) and the proxy-wasm host functions,
//!   one module per ABI area under `hostcalls`.
//! - A [`Worker`] is one VM instance in its own Wasmtime `Store`, like one
//!   Envoy worker thread; all workers of a host share shared data and
//!   metrics as Envoy's workers do.
//! - [`HttpStream`] drives one HTTP stream through a plugin and reports the
//!   filter's decision; [`Clock`] lets tests move time without sleeping.
//!
//! ```no_run
//! use drainpipe_shim::{Clock, Host, PluginConfig, Wasm};
//! use std::time::Duration;
//!
//! let clock = Clock::manual(1_700_000_000_000);
//! let host = Host::builder(Wasm::from_file("filter.wasm")?)
//!     .clock(clock.clone())
//!     .plugin(PluginConfig::new("traffic", "{}"))
//!     .build()?;
//! let worker = host.worker()?;
//! let mut stream = worker.http_stream("traffic")?;
//! stream
//!     .request_headers([(":method", "GET"), (":path", "/")], true)
//!     .expect_continue();
//! clock.advance(Duration::from_secs(5));
//! worker.run_timers();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod abi;
mod clock;
mod grpc_reply;
mod headers;
mod host;
mod hostcalls;
mod logs;
mod memory;
mod metrics;
mod shared_data;
mod state;
mod stream;
mod traps;
mod wasi;
mod worker;

/// The cause an error keeps as its source (Wasmtime's errors), for
/// `std::error::Error::source`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub use abi::{Action, LogLevel, MetricKind, Status};
pub use clock::Clock;
pub use grpc_reply::{http_to_grpc_status, percent_encode_grpc_message};
pub use headers::Headers;
pub use host::{FailurePolicy, Host, HostBuilder, LoadError, PluginConfig, Wasm, ABI_MARKERS};
pub use logs::{LogOutput, LogRecord, LogSink, LogSource};
pub use metrics::{MetricSnapshot, Metrics};
pub use shared_data::SharedData;
pub use stream::{Decision, HttpStream, LocalResponse, Outcome};
pub use worker::{
    GrpcCallRequest, GrpcCallResponse, GrpcStreamEvent, GrpcStreamRequest, GrpcStreamSend,
    HttpCallRequest, HttpCallResponse, StartError, StreamError, Worker,
};
