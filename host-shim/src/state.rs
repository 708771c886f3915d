//! What one worker's Wasmtime `Store` holds: WASI, the VM's contexts, its
//! metric ids, pending http calls. Everything shared between workers sits
//! behind [`Shared`], passed in by the host; nothing lives in globals.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use wasmtime_wasi::p1::WasiP1Ctx;

use crate::abi::{LogLevel, Status};
use crate::clock::Clock;
use crate::headers::Headers;
use crate::host::VmConfig;
use crate::logs::{LogRecord, LogSink, LogSource};
use crate::memory::HostResult;
use crate::metrics::{MetricIds, Metrics};
use crate::shared_data::SharedData;
use crate::stream::LocalResponse;

/// State shared by every worker of one host, like Envoy's process-wide
/// shared data and stats store.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) clock: Clock,
    pub(crate) log: LogSink,
    pub(crate) data: SharedData,
    pub(crate) metrics: Metrics,
    pub(crate) next_worker: AtomicU32,
    /// Woken when a guest makes an http call (or a gRPC call), for a server
    /// that carries calls out.
    pub(crate) calls_waiting: Arc<tokio::sync::Notify>,
}

/// The data of one worker's `Store`.
pub(crate) struct HostState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) shared: Arc<Shared>,
    pub(crate) vm: Arc<VmConfig>,
    pub(crate) worker: u32,
    pub(crate) contexts: BTreeMap<u32, Context>,
    /// The context host calls act on (`proxy_set_effective_context` moves it).
    pub(crate) current: u32,
    pub(crate) next_context_id: u32,
    pub(crate) metric_ids: MetricIds,
    pub(crate) http_calls: BTreeMap<u32, PendingHttpCall>,
    /// The next http call's token (0 modulo 4, as in Envoy).
    pub(crate) next_http_call: u32,
    /// The response being delivered by `proxy_on_http_call_response`.
    pub(crate) call_response: Option<CallResponse>,
    pub(crate) grpc_calls: BTreeMap<u32, PendingGrpcCall>,
    /// The next gRPC call's token (1 modulo 4, as in Envoy).
    pub(crate) next_grpc_call: u32,
    /// The message being delivered by `proxy_on_grpc_receive` (a call's
    /// answer or a stream's message).
    pub(crate) grpc_receive: Option<Vec<u8>>,
    /// The status `proxy_get_status` reports (set for `proxy_on_grpc_close`).
    pub(crate) grpc_status: (u32, String),
    pub(crate) grpc_streams: BTreeMap<u32, GrpcStream>,
    /// The next gRPC stream's token (2 modulo 4, as in Envoy).
    pub(crate) next_grpc_stream: u32,
    /// The metadata being delivered by `proxy_on_grpc_receive_initial_metadata`
    /// and `proxy_on_grpc_receive_trailing_metadata`.
    pub(crate) grpc_initial_metadata: Option<Headers>,
    pub(crate) grpc_trailing_metadata: Option<Headers>,
    /// The plugin whose configuration `proxy_on_configure` may read.
    pub(crate) configuring: Option<usize>,
}

/// A context of the VM.
#[derive(Debug)]
pub(crate) enum Context {
    Root(RootContext),
    Http(Box<HttpContext>),
}

/// A plugin's root context.
#[derive(Debug)]
pub(crate) struct RootContext {
    pub(crate) plugin: usize,
    pub(crate) tick_period_ms: u32,
    /// Monotonic time (ns) of the next tick, when a period is set.
    pub(crate) next_tick: Option<u64>,
    /// Whether the guest called `proxy_done` for this context.
    pub(crate) done: bool,
}

/// An HTTP stream's context: the maps and buffers Envoy would expose.
#[derive(Debug, Default)]
pub(crate) struct HttpContext {
    pub(crate) root: u32,
    pub(crate) plugin: usize,
    pub(crate) request_headers: Option<Headers>,
    pub(crate) request_trailers: Option<Headers>,
    pub(crate) response_headers: Option<Headers>,
    pub(crate) response_trailers: Option<Headers>,
    /// How the guest may reach each of the four maps above now.
    pub(crate) reach: [Reach; 4],
    pub(crate) request_body: Option<Vec<u8>>,
    pub(crate) response_body: Option<Vec<u8>>,
    pub(crate) local_response: Option<LocalResponse>,
    /// Envoy's reading of the request as it came in: a gRPC request gets
    /// its local replies as trailers-only responses ([`crate::grpc_reply`]),
    /// without `grpc-message` for a HEAD request.
    pub(crate) grpc_request: bool,
    pub(crate) head_request: bool,
    /// A local response went out: later ones are dropped.
    pub(crate) local_sent: bool,
    pub(crate) request_resumed: bool,
    pub(crate) response_resumed: bool,
    pub(crate) reset: bool,
    pub(crate) start_unix_nanos: u64,
    pub(crate) connection_id: u64,
    pub(crate) downstream: Option<std::net::SocketAddr>,
    /// Values the guest stored with `proxy_set_property`.
    pub(crate) properties: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A stream's own header maps, in the order of [`HttpContext::reach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamMap {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
}

/// How the guest may reach one of its stream's header maps. Envoy hands a
/// filter each map for the callback that delivers it and takes it back when
/// that callback lets iteration continue (a paused request keeps its maps
/// until `proxy_continue_stream`); `proxy_on_log` sees the access log's
/// read-only view of the request headers and the response headers and
/// trailers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Not there: a read or an edit is a bad argument, a read of all pairs
    /// gives an empty map.
    #[default]
    Gone,
    /// Readable and editable.
    Open,
    /// Readable only.
    ReadOnly,
}

impl HttpContext {
    /// Sets how the guest may reach `map` from now on.
    pub(crate) fn set_reach(&mut self, map: StreamMap, reach: Reach) {
        self.reach[map as usize] = reach;
    }

    /// How the guest may reach `map` now.
    pub(crate) fn reach(&self, map: StreamMap) -> Reach {
        self.reach[map as usize]
    }
}

/// An http call waiting for its response.
#[derive(Debug, Clone)]
pub(crate) struct PendingHttpCall {
    pub(crate) context_id: u32,
    pub(crate) cluster: String,
    pub(crate) headers: Headers,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Headers,
    pub(crate) timeout_ms: u32,
    /// Monotonic time (ns) after which the call fails.
    pub(crate) deadline: u64,
}

/// A gRPC call waiting for its answer.
#[derive(Debug, Clone)]
pub(crate) struct PendingGrpcCall {
    pub(crate) context_id: u32,
    pub(crate) cluster: String,
    pub(crate) service: String,
    pub(crate) method: String,
    pub(crate) metadata: Headers,
    pub(crate) message: Vec<u8>,
    pub(crate) timeout_ms: u32,
    /// Monotonic time (ns) after which the call fails.
    pub(crate) deadline: u64,
}

/// An open gRPC stream (`proxy_grpc_stream`). As in Envoy, it belongs to
/// the root context of the context that opened it, and it is forgotten once
/// both sides have ended (or the guest cancels it).
#[derive(Debug, Clone)]
pub(crate) struct GrpcStream {
    /// The root context its callbacks go to.
    pub(crate) root: u32,
    pub(crate) cluster: String,
    pub(crate) service: String,
    pub(crate) method: String,
    pub(crate) metadata: Headers,
    /// What the guest sent that the driver has not taken yet.
    pub(crate) outbox: Vec<crate::worker::GrpcStreamSend>,
    /// The guest closed its side (`proxy_grpc_close`).
    pub(crate) local_closed: bool,
    /// The remote side ended (`proxy_on_grpc_close` was delivered).
    pub(crate) remote_closed: bool,
}

/// The response an http call callback may read; `None` maps for a failure.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallResponse {
    pub(crate) headers: Headers,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: Headers,
}

impl HostState {
    pub(crate) fn log(&self, level: LogLevel, source: LogSource, message: String) {
        self.shared.log.push(LogRecord {
            worker: self.worker,
            level,
            source,
            message,
            from_root: matches!(self.contexts.get(&self.current), Some(Context::Root(_))),
        });
    }

    /// The HTTP context host calls currently act on.
    pub(crate) fn http(&mut self) -> HostResult<&mut HttpContext> {
        match self.contexts.get_mut(&self.current) {
            Some(Context::Http(h)) => Ok(h),
            _ => Err(Status::BadArgument.into()),
        }
    }

    /// The plugin index of the current context.
    pub(crate) fn current_plugin(&self) -> Option<usize> {
        match self.contexts.get(&self.current)? {
            Context::Root(r) => Some(r.plugin),
            Context::Http(h) => Some(h.plugin),
        }
    }

    /// The root context id of the current context.
    pub(crate) fn current_root(&self) -> Option<u32> {
        match self.contexts.get(&self.current)? {
            Context::Root(_) => Some(self.current),
            Context::Http(h) => Some(h.root),
        }
    }
}
