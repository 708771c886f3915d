//! drainpipe: a proxy-wasm HTTP filter that makes Envoy's shutdown graceful
//! and request deadlines explicit for LLM traffic.
//!
//! The decision logic is plain Rust and tests natively:
//! - [`config`]: the plugin configuration, parsed and validated once;
//! - [`counts`]: the admitted/completed counters, batched per worker;
//! - [`drain`]: the drain state machine (serving, draining, rejecting, drained);
//! - [`drain_stats`]: the drain's start, duration and cut responses, as stats;
//! - [`deadline`]: deadline header parsing and formatting;
//! - [`headers`]: request headers as the decisions read them, and the
//!   host's wire form of a header map, read in place;
//! - [`traffic`]: readiness, admission and deadline decisions;
//! - [`admin`]: the drain API;
//! - [`dialect`]: which API a request speaks, and its refusals and endings;
//! - [`reply`]: local replies;
//! - [`schedule`]: when a worker ticks and polls its drain controller;
//! - [`store`]: changing the stored drain state (compare-and-swap, retried);
//! - [`sse`]: ending SSE streams with a final error event before a limit;
//! - [`websocket`]: ending WebSocket sessions with a close frame at a frame boundary;
//! - [`json`]: the small JSON reader and writer all of them use;
//! - `contract` (tests and the `contract` feature): the drain rejection as
//!   clients see it, asserted by one function.
//!
//! The proxy-wasm glue (`filter`, wasm builds only) gathers what the host
//! gives, calls the logic and applies its decision.

pub mod admin;
pub mod config;
#[cfg(any(test, feature = "contract"))]
pub mod contract;
pub mod counts;
pub mod deadline;
pub mod dialect;
pub mod drain;
pub mod drain_stats;
pub mod headers;
pub mod json;
pub mod reply;
pub mod schedule;
pub mod sse;
pub mod store;
pub mod traffic;
pub mod websocket;

#[cfg(target_arch = "wasm32")]
mod filter;

pub use config::{Config, ConfigError, Role};
pub use drain::{Drain, Phase};

/// The proxy-wasm callbacks the plugin handles. The release build (`cargo
/// xtask build`) removes the SDK's exports of every other `proxy_on_*`
/// callback, so Envoy does not enter the VM for events the plugin ignores:
/// request bodies and trailers, response headers (a body is classified as
/// an event stream by its own bytes, see [`sse::Body`]), `proxy_on_done` (the SDK's answer is
/// the ABI's default, done) and `proxy_on_log` (a stream's in-flight count
/// is released when its context is deleted). Response trailers are handled
/// (only responses that have them, gRPC's, enter the VM for them): they end
/// a response whole, for [`drain_stats::cut`]. A callback
/// added to the filter must be added here, or the release build never runs
/// it; `tests/callbacks.rs` checks the list against the filter's trait
/// implementations.
pub const CALLBACKS: &[&str] = &[
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_tick",
    "proxy_on_http_call_response",
    "proxy_on_request_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_delete",
];

/// Names of the Envoy stats the plugin defines.
pub mod metrics {
    pub const INFLIGHT: &str = "drainpipe_inflight";
    pub const STATE: &str = "drainpipe_state";
    pub const ADMITTED: &str = "drainpipe_admitted";
    pub const COMPLETED: &str = "drainpipe_completed";
    pub const REJECTED_DRAINING: &str = "drainpipe_rejected_draining";
    pub const REJECTED_DEADLINE: &str = "drainpipe_rejected_deadline";
    pub const MALFORMED_DEADLINE: &str = "drainpipe_malformed_deadline";
    pub const STREAMS_ENDED: &str = "drainpipe_streams_ended";
    /// Streams the plugin reset at the end of the grace period (no ending
    /// of their dialect could go out in time, or they were silent).
    pub const ENDED_AT_GRACE: &str = "drainpipe_ended_at_grace";
    /// Incremented after every change of the stored drain state (see
    /// [`crate::drain::Seen`]).
    pub const DRAIN_CHANGES: &str = "drainpipe_drain_changes";
    /// Gauge: the start of the drain under way, unix ms; 0 while serving
    /// (see [`crate::drain_stats`]).
    pub const DRAIN_STARTED_UNIX_MS: &str = "drainpipe_drain_started_unix_ms";
    /// Gauge: the last drain's time from its start to `drained`, ms; 0
    /// while a drain has not reached it.
    pub const DRAIN_DURATION_MS: &str = "drainpipe_drain_duration_ms";
    /// Counter: responses cut mid-body while a drain was on, other than by
    /// the final event ([`STREAMS_ENDED`]).
    pub const DRAIN_RESETS: &str = "drainpipe_drain_resets";
    /// Gauge: the traffic role's `grace_ms`, for alerts on drains that
    /// outlast it.
    pub const GRACE_MS: &str = "drainpipe_grace_ms";
}
