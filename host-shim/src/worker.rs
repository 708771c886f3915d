//! A worker: one VM instance in its own `Store`, like one Envoy worker
//! thread. It starts the VM in Envoy's order, calls into the guest with a
//! trap contained, and delivers ticks, http call responses and queue
//! notifications.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use wasmtime::{Instance, Store, WasmParams, WasmResults};

use crate::abi::LogLevel;
use crate::headers::Headers;
use crate::host::{FailurePolicy, Host};
use crate::logs::LogSource;
use crate::state::{CallResponse, Context, HostState, RootContext};
use crate::stream::HttpStream;

/// Why a worker's VM could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot instantiate the module")]
    Instantiate(#[source] crate::BoxError),
    #[error("the guest trapped in {callback}: {message}")]
    Trap { callback: String, message: String },
    #[error("plugin {plugin}: proxy_on_vm_start returned false")]
    VmStart { plugin: String },
    #[error("plugin {plugin}: proxy_on_configure returned false (the configuration is rejected)")]
    Configure { plugin: String },
}

/// Why a stream cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("no plugin named {0}")]
    UnknownPlugin(String),
    #[error("plugin {0} is a singleton: it serves no streams")]
    Singleton(String),
}

/// An http call the guest made, waiting for a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallRequest {
    pub token: u32,
    pub cluster: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout: Duration,
}

/// A response to deliver to an http call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    /// Headers including `:status`.
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

impl HttpCallResponse {
    /// A response with this status and body.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        HttpCallResponse {
            headers: Headers::from_pairs([(":status", status.to_string())]),
            body: body.into(),
            trailers: Headers::new(),
        }
    }

    /// What Envoy's router answers a call that reached its timeout with.
    pub fn timed_out() -> Self {
        const BODY: &str = "upstream request timeout";
        HttpCallResponse {
            headers: Headers::from_pairs([
                (":status", "504".to_owned()),
                ("content-length", BODY.len().to_string()),
                ("content-type", "text/plain".to_owned()),
            ]),
            body: BODY.into(),
            trailers: Headers::new(),
        }
    }
}

/// A gRPC call the guest made (unary), waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCallRequest {
    pub token: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub initial_metadata: Headers,
    pub message: Vec<u8>,
    pub timeout: Duration,
}

/// How a gRPC call ended, as Envoy reports it to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcCallResponse {
    /// The response message (status OK): `proxy_on_grpc_receive`.
    Message(Vec<u8>),
    /// A failure: `proxy_on_grpc_close` with the status code, the message
    /// readable through `proxy_get_status`.
    Closed { status: u32, message: String },
}

impl GrpcCallResponse {
    /// gRPC's DEADLINE_EXCEEDED.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// gRPC's UNAVAILABLE.
    pub const UNAVAILABLE: u32 = 14;

    /// What a call past its timeout gets: as in Envoy, the router's 504
    /// mapped to UNAVAILABLE.
    pub fn timed_out() -> Self {
        GrpcCallResponse::Closed {
            status: Self::UNAVAILABLE,
            message: "upstream request timeout{response_timeout}".to_owned(),
        }
    }
}

/// A gRPC stream the guest opened (`proxy_grpc_stream`), still open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStreamRequest {
    pub token: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub initial_metadata: Headers,
}

/// What the guest did on its side of a gRPC stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcStreamSend {
    /// `proxy_grpc_send`: a message, ending the guest's side if
    /// `end_stream`.
    Message { message: Vec<u8>, end_stream: bool },
    /// `proxy_grpc_close`: the guest's side ends (Envoy sends an empty
    /// end of stream).
    Close,
}

/// What the remote side of a gRPC stream did, delivered to the guest as
/// Envoy's gRPC client delivers it (each is one callback).
///
/// Envoy's order: the initial metadata (empty for a trailers-only answer
/// or an HTTP error), each message, then the trailing metadata (empty when
/// the stream broke off) and the close with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcStreamEvent {
    /// `proxy_on_grpc_receive_initial_metadata`; the map is readable as
    /// the gRPC initial metadata.
    InitialMetadata(Headers),
    /// `proxy_on_grpc_receive`; readable as the gRPC receive buffer.
    Message(Vec<u8>),
    /// `proxy_on_grpc_receive_trailing_metadata`.
    TrailingMetadata(Headers),
    /// `proxy_on_grpc_close` with the status, the message readable through
    /// `proxy_get_status`. The remote side is done.
    Close { status: u32, message: String },
}

/// A guest trap, with what the guest printed before it (a Rust panic
/// message, for instance).
#[derive(Debug, Clone)]
pub(crate) struct Trap {
    pub(crate) message: String,
    /// The line Envoy logs for it (`Function: ... failed: ...`).
    pub(crate) envoy: String,
}

/// One worker. Cloning shares it; a stream holds a clone.
#[derive(Clone)]
pub struct Worker {
    pub(crate) inner: Arc<Mutex<WorkerInner>>,
}

pub(crate) struct WorkerInner {
    pub(crate) host: Host,
    pub(crate) id: u32,
    pub(crate) vm: Vm,
    /// Set when the guest trapped: the VM serves no more callbacks.
    pub(crate) failed: Option<String>,
    pub(crate) next_connection: u64,
}

pub(crate) struct Vm {
    pub(crate) store: Store<HostState>,
    instance: Instance,
    /// Whether the module has a `name` section (for a trap's backtrace).
    names: bool,
    /// Root context id of each plugin, by plugin index.
    pub(crate) roots: Vec<u32>,
}

impl Worker {
    pub(crate) fn start(host: Host, id: u32) -> Result<Worker, StartError> {
        let vm = Vm::start(&host, id)?;
        Ok(Worker {
            inner: Arc::new(Mutex::new(WorkerInner {
                host,
                id,
                vm,
                failed: None,
                next_connection: 1,
            })),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, WorkerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This worker's id (0, 1, ... in start order).
    pub fn id(&self) -> u32 {
        self.lock().id
    }

    /// The host this worker belongs to.
    pub fn host(&self) -> Host {
        self.lock().host.clone()
    }

    /// Starts an HTTP stream through `plugin` (`proxy_on_context_create`).
    pub fn http_stream(&self, plugin: &str) -> Result<HttpStream, StreamError> {
        HttpStream::start(self.clone(), plugin)
    }

    /// The trap that failed this worker's VM, if any.
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// The root context id of `plugin`.
    pub fn root_context_id(&self, plugin: &str) -> Option<u32> {
        let inner = self.lock();
        let index = inner.plugin_index(plugin)?;
        inner.vm.roots.get(index).copied().filter(|&root| root != 0)
    }

    /// Delivers `proxy_on_tick` to every root context with a tick period,
    /// whether due or not. Returns how many ticks were delivered.
    pub fn tick(&self) -> usize {
        let mut inner = self.lock();
        let roots = inner.roots_with_ticks(false);
        inner.deliver_ticks(&roots)
    }

    /// Runs what is due on the clock: ticks whose period has elapsed (once
    /// each, as Envoy's timers do not catch up) and http calls past their
    /// timeout, which get Envoy's 504. Returns how many callbacks were
    /// delivered.
    pub fn run_timers(&self) -> usize {
        let mut inner = self.lock();
        let roots = inner.roots_with_ticks(true);
        let mut delivered = inner.deliver_ticks(&roots);
        let now = inner.host.clock().monotonic_nanos();
        let state = inner.vm.store.data();
        let http = expired(&state.http_calls, now, |c| c.deadline);
        let grpc = expired(&state.grpc_calls, now, |c| c.deadline);
        for token in http {
            if inner.deliver_http_call(token, Some(HttpCallResponse::timed_out())) {
                delivered += 1;
            }
        }
        for token in grpc {
            if inner.deliver_grpc_call(token, GrpcCallResponse::timed_out()) {
                delivered += 1;
            }
        }
        delivered += inner.deliver_queue_ready();
        delivered
    }

    /// Delivers pending `proxy_on_queue_ready` notifications for this worker.
    pub fn deliver_queue_ready(&self) -> usize {
        self.lock().deliver_queue_ready()
    }

    /// The http calls waiting for a response, oldest first.
    pub fn http_calls(&self) -> Vec<HttpCallRequest> {
        let inner = self.lock();
        inner
            .vm
            .store
            .data()
            .http_calls
            .iter()
            .map(|(&token, c)| HttpCallRequest {
                token,
                cluster: c.cluster.clone(),
                headers: c.headers.clone(),
                body: c.body.clone(),
                trailers: c.trailers.clone(),
                timeout: Duration::from_millis(u64::from(c.timeout_ms)),
            })
            .collect()
    }

    /// Delivers a response to the http call `token`; false if no such call
    /// is pending.
    pub fn respond_http_call(&self, token: u32, response: HttpCallResponse) -> bool {
        self.lock().deliver_http_call(token, Some(response))
    }

    /// The gRPC calls waiting for an answer, oldest first.
    pub fn grpc_calls(&self) -> Vec<GrpcCallRequest> {
        let inner = self.lock();
        inner
            .vm
            .store
            .data()
            .grpc_calls
            .iter()
            .map(|(&token, c)| GrpcCallRequest {
                token,
                cluster: c.cluster.clone(),
                service: c.service.clone(),
                method: c.method.clone(),
                initial_metadata: c.metadata.clone(),
                message: c.message.clone(),
                timeout: Duration::from_millis(u64::from(c.timeout_ms)),
            })
            .collect()
    }

    /// Delivers the answer to the gRPC call `token`; false if no such call
    /// is pending.
    pub fn respond_grpc_call(&self, token: u32, response: GrpcCallResponse) -> bool {
        self.lock().deliver_grpc_call(token, response)
    }

    /// The gRPC streams to carry out, oldest first: opened, not cancelled,
    /// and not ended by the remote side.
    pub fn grpc_streams(&self) -> Vec<GrpcStreamRequest> {
        let inner = self.lock();
        inner
            .vm
            .store
            .data()
            .grpc_streams
            .iter()
            .filter(|(_, s)| !s.remote_closed)
            .map(|(&token, s)| GrpcStreamRequest {
                token,
                cluster: s.cluster.clone(),
                service: s.service.clone(),
                method: s.method.clone(),
                initial_metadata: s.metadata.clone(),
            })
            .collect()
    }

    /// Takes what the guest sent on the gRPC stream `token` since the last
    /// take, in order (empty for a stream that is not open).
    pub fn take_grpc_stream_sends(&self, token: u32) -> Vec<GrpcStreamSend> {
        let mut inner = self.lock();
        match inner.vm.store.data_mut().grpc_streams.get_mut(&token) {
            Some(stream) => std::mem::take(&mut stream.outbox),
            None => Vec::new(),
        }
    }

    /// Delivers what the remote side of the gRPC stream `token` did; false
    /// if no such stream is open, or its remote side has ended already.
    pub fn deliver_grpc_stream(&self, token: u32, event: GrpcStreamEvent) -> bool {
        self.lock().deliver_grpc_stream(token, event)
    }

    /// Fails the http call `token`: no answer at all, as Envoy delivers a
    /// call whose stream was reset (its answer broke off). An upstream that
    /// cannot be reached is an answer in Envoy (its own 503: respond with
    /// that), and so is a timeout (504, which [`Worker::run_timers`]
    /// delivers). False if no such call is pending.
    pub fn fail_http_call(&self, token: u32) -> bool {
        self.lock().deliver_http_call(token, None)
    }

    /// Ends every root context: `proxy_on_done`, then `proxy_on_delete`.
    /// Returns the plugins whose root context had not finished (returned
    /// false from `on_done` without calling `proxy_done`).
    pub fn shutdown(&self) -> Vec<String> {
        let mut inner = self.lock();
        let mut pending = Vec::new();
        for (index, root) in inner.vm.roots.clone().into_iter().enumerate() {
            if root == 0 {
                continue;
            }
            let done: Option<i32> = inner
                .call(root, "proxy_on_done", root as i32)
                .ok()
                .flatten();
            let called_done = matches!(
                inner.vm.store.data().contexts.get(&root),
                Some(Context::Root(RootContext { done: true, .. }))
            );
            if done == Some(0) && !called_done {
                pending.push(inner.host.inner.vm.plugins[index].name.clone());
            }
            let _ = inner.call::<i32, ()>(root, "proxy_on_delete", root as i32);
        }
        pending
    }
}

impl Vm {
    fn start(host: &Host, worker: u32) -> Result<Vm, StartError> {
        let mut store = host.new_store(worker);
        let instance = host
            .inner
            .linker
            .instantiate(&mut store, &host.inner.wasm.module)
            .map_err(|e| StartError::Instantiate(e.into()))?;
        let mut vm = Vm {
            store,
            instance,
            names: host.inner.wasm.names,
            roots: Vec::new(),
        };
        vm.initialize()?;
        let vm_config_len = host.inner.vm.vm_configuration.len() as i32;
        for (index, plugin) in host.inner.vm.plugins.iter().enumerate() {
            if plugin.singleton && worker != 0 {
                // No root context here: 0 is never a context id.
                vm.roots.push(0);
                continue;
            }
            let state = vm.store.data_mut();
            let root = state.next_context_id;
            state.next_context_id += 1;
            state.contexts.insert(
                root,
                Context::Root(RootContext {
                    plugin: index,
                    tick_period_ms: 0,
                    next_tick: None,
                    done: false,
                }),
            );
            vm.roots.push(root);
            let trap = |callback: &str, t: Trap| StartError::Trap {
                callback: callback.to_owned(),
                message: t.message,
            };
            vm.call::<(i32, i32), ()>(root, "proxy_on_context_create", (root as i32, 0))
                .map_err(|t| trap("proxy_on_context_create", t))?;
            let started: Option<i32> = vm
                .call(root, "proxy_on_vm_start", (root as i32, vm_config_len))
                .map_err(|t| trap("proxy_on_vm_start", t))?;
            if started == Some(0) {
                return Err(StartError::VmStart {
                    plugin: plugin.name.clone(),
                });
            }
            vm.store.data_mut().configuring = Some(index);
            let configured: Result<Option<i32>, Trap> = vm.call(
                root,
                "proxy_on_configure",
                (root as i32, plugin.configuration.len() as i32),
            );
            vm.store.data_mut().configuring = None;
            if configured.map_err(|t| trap("proxy_on_configure", t))? == Some(0) {
                return Err(StartError::Configure {
                    plugin: plugin.name.clone(),
                });
            }
        }
        Ok(vm)
    }

    /// Runs the module's initialization: `_initialize` for a reactor (what
    /// the SDK's `main!` exports), else `_start` for a command.
    fn initialize(&mut self) -> Result<(), StartError> {
        for name in ["_initialize", "_start"] {
            let Ok(func) = self
                .instance
                .get_typed_func::<(), ()>(&mut self.store, name)
            else {
                continue;
            };
            return match func.call(&mut self.store, ()) {
                Ok(()) => Ok(()),
                Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    Some(exit) if exit.0 == 0 => Ok(()),
                    _ => Err(StartError::Trap {
                        callback: name.to_owned(),
                        message: self.describe_trap(name, &e, 0).message,
                    }),
                },
            };
        }
        Ok(())
    }

    /// Calls the guest export `name` as context `context_id`. A missing
    /// export is a no-op (`Ok(None)`), as Envoy treats an absent callback.
    pub(crate) fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        context_id: u32,
        name: &str,
        params: P,
    ) -> Result<Option<R>, Trap> {
        let Ok(func) = self.instance.get_typed_func::<P, R>(&mut self.store, name) else {
            return Ok(None);
        };
        let log_mark = self.store.data().shared.log.len();
        let previous = std::mem::replace(&mut self.store.data_mut().current, context_id);
        let result = func.call(&mut self.store, params);
        self.store.data_mut().current = previous;
        match result {
            Ok(r) => Ok(Some(r)),
            Err(e) => Err(self.describe_trap(name, &e, log_mark)),
        }
    }

    /// A trap's message, with what the guest wrote to stderr or logged as
    /// critical since `mark` (where a Rust guest's panic message lands).
    fn describe_trap(&self, callback: &str, error: &wasmtime::Error, mark: usize) -> Trap {
        let state = self.store.data();
        let worker = state.worker;
        let said: Vec<String> = state
            .shared
            .log
            .records_since(mark)
            .into_iter()
            .filter(|r| r.worker == worker)
            .filter(|r| match r.source {
                LogSource::Stderr => true,
                // The SDK's panic hook logs the panic at critical level.
                LogSource::Plugin(_) => r.level == LogLevel::Critical,
                _ => false,
            })
            .map(|r| r.message)
            .collect();
        let reason = match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{error:#}"),
        };
        let message = if said.is_empty() {
            reason
        } else {
            format!("{reason}; the guest wrote: {}", said.join(" | "))
        };
        Trap {
            message,
            envoy: crate::traps::envoy_failure(callback, error, self.names),
        }
    }
}

impl WorkerInner {
    pub(crate) fn plugin_index(&self, plugin: &str) -> Option<usize> {
        self.host
            .inner
            .vm
            .plugins
            .iter()
            .position(|p| p.name == plugin)
    }

    pub(crate) fn policy(&self, plugin: usize) -> FailurePolicy {
        self.host.inner.vm.plugins[plugin].failure_policy
    }

    /// Calls into the guest; a trap fails the VM and is logged.
    pub(crate) fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        context_id: u32,
        name: &str,
        params: P,
    ) -> Result<Option<R>, Trap> {
        if let Some(failed) = &self.failed {
            // Envoy says nothing more about a failed VM.
            let message = format!("the VM failed earlier: {failed}");
            return Err(Trap {
                envoy: message.clone(),
                message,
            });
        }
        let result = self.vm.call(context_id, name, params);
        if let Err(trap) = &result {
            // Envoy's line, at Envoy's level (the guest's panic message, if
            // any, was its own critical line before).
            self.vm
                .store
                .data()
                .log(LogLevel::Error, LogSource::Host, trap.envoy.clone());
            self.failed = Some(trap.message.clone());
        }
        result
    }

    /// Starts a fresh VM in place of a failed one.
    pub(crate) fn reload(&mut self) -> Result<(), StartError> {
        let vm = Vm::start(&self.host, self.id)?;
        self.vm = vm;
        self.failed = None;
        self.vm.store.data().log(
            LogLevel::Warn,
            LogSource::Host,
            "the VM was reloaded after a failure".to_owned(),
        );
        Ok(())
    }

    fn roots_with_ticks(&mut self, only_due: bool) -> Vec<u32> {
        let now = self.host.clock().monotonic_nanos();
        let mut due = Vec::new();
        for (&id, context) in self.vm.store.data_mut().contexts.iter_mut() {
            let Context::Root(root) = context else {
                continue;
            };
            let Some(next) = root.next_tick else { continue };
            if only_due && next > now {
                continue;
            }
            root.next_tick = Some(now + u64::from(root.tick_period_ms) * 1_000_000);
            due.push(id);
        }
        due
    }

    fn deliver_ticks(&mut self, roots: &[u32]) -> usize {
        let mut delivered = 0;
        for &root in roots {
            if self
                .call::<i32, ()>(root, "proxy_on_tick", root as i32)
                .is_ok()
            {
                delivered += 1;
            }
        }
        delivered
    }

    fn deliver_queue_ready(&mut self) -> usize {
        let ready = self.host.inner.shared.data.take_ready(self.id);
        let mut delivered = 0;
        for r in ready {
            let args = (r.owner.context_id as i32, r.token as i32);
            if self
                .call::<(i32, i32), ()>(r.owner.context_id, "proxy_on_queue_ready", args)
                .is_ok()
            {
                delivered += 1;
            }
        }
        delivered
    }

    /// Delivers a gRPC call's answer to the context that made the call, as
    /// Envoy does for a unary call: the message by `proxy_on_grpc_receive`,
    /// a failure by `proxy_on_grpc_close`.
    pub(crate) fn deliver_grpc_call(&mut self, token: u32, response: GrpcCallResponse) -> bool {
        let Some(call) = self.vm.store.data_mut().grpc_calls.remove(&token) else {
            return false;
        };
        if !self.vm.store.data().contexts.contains_key(&call.context_id) {
            return false;
        }
        let context = call.context_id;
        let result = match response {
            GrpcCallResponse::Message(message) => {
                let size = message.len() as i32;
                self.vm.store.data_mut().grpc_receive = Some(message);
                let args = (context as i32, token as i32, size);
                let result =
                    self.call::<(i32, i32, i32), ()>(context, "proxy_on_grpc_receive", args);
                self.vm.store.data_mut().grpc_receive = None;
                result
            }
            GrpcCallResponse::Closed { status, message } => {
                self.vm.store.data_mut().grpc_status = (status, message);
                let args = (context as i32, token as i32, status as i32);
                let result = self.call::<(i32, i32, i32), ()>(context, "proxy_on_grpc_close", args);
                self.vm.store.data_mut().grpc_status = (0, String::new());
                result
            }
        };
        result.is_ok()
    }

    /// Delivers one event of a gRPC stream to its root context, as Envoy's
    /// stream handler does. After the close, a stream whose guest side has
    /// ended too is forgotten.
    pub(crate) fn deliver_grpc_stream(&mut self, token: u32, event: GrpcStreamEvent) -> bool {
        let state = self.vm.store.data_mut();
        let Some(stream) = state.grpc_streams.get_mut(&token) else {
            return false;
        };
        if stream.remote_closed {
            return false;
        }
        let root = stream.root;
        let result = match event {
            GrpcStreamEvent::InitialMetadata(metadata) => {
                let count = metadata.len() as i32;
                state.grpc_initial_metadata = Some(metadata);
                let args = (root as i32, token as i32, count);
                let result = self.call::<(i32, i32, i32), ()>(
                    root,
                    "proxy_on_grpc_receive_initial_metadata",
                    args,
                );
                self.vm.store.data_mut().grpc_initial_metadata = None;
                result
            }
            GrpcStreamEvent::Message(message) => {
                let size = message.len() as i32;
                state.grpc_receive = Some(message);
                let args = (root as i32, token as i32, size);
                let result = self.call::<(i32, i32, i32), ()>(root, "proxy_on_grpc_receive", args);
                self.vm.store.data_mut().grpc_receive = None;
                result
            }
            GrpcStreamEvent::TrailingMetadata(metadata) => {
                let count = metadata.len() as i32;
                state.grpc_trailing_metadata = Some(metadata);
                let args = (root as i32, token as i32, count);
                let result = self.call::<(i32, i32, i32), ()>(
                    root,
                    "proxy_on_grpc_receive_trailing_metadata",
                    args,
                );
                self.vm.store.data_mut().grpc_trailing_metadata = None;
                result
            }
            GrpcStreamEvent::Close { status, message } => {
                stream.remote_closed = true;
                // What the guest had not sent yet goes nowhere now.
                stream.outbox.clear();
                state.grpc_status = (status, message);
                let args = (root as i32, token as i32, status as i32);
                let result = self.call::<(i32, i32, i32), ()>(root, "proxy_on_grpc_close", args);
                let state = self.vm.store.data_mut();
                state.grpc_status = (0, String::new());
                if state
                    .grpc_streams
                    .get(&token)
                    .is_some_and(|s| s.local_closed)
                {
                    state.grpc_streams.remove(&token);
                }
                result
            }
        };
        result.is_ok()
    }

    /// Delivers an http call's response to the context that made the call;
    /// `None`, a failure: as in Envoy, no headers, body or trailers are
    /// counted and none of the response's maps or buffers is there.
    pub(crate) fn deliver_http_call(
        &mut self,
        token: u32,
        response: Option<HttpCallResponse>,
    ) -> bool {
        let Some(call) = self.vm.store.data_mut().http_calls.remove(&token) else {
            return false;
        };
        if !self.vm.store.data().contexts.contains_key(&call.context_id) {
            return false;
        }
        let counts = response.as_ref().map_or((0, 0, 0), |r| {
            (
                r.headers.len() as i32,
                r.body.len() as i32,
                r.trailers.len() as i32,
            )
        });
        let args = (
            call.context_id as i32,
            token as i32,
            counts.0,
            counts.1,
            counts.2,
        );
        self.vm.store.data_mut().call_response = response.map(|r| CallResponse {
            headers: r.headers,
            body: r.body,
            trailers: r.trailers,
        });
        let result = self.call::<(i32, i32, i32, i32, i32), ()>(
            call.context_id,
            "proxy_on_http_call_response",
            args,
        );
        self.vm.store.data_mut().call_response = None;
        result.is_ok()
    }
}

/// The tokens of the pending calls whose deadline (monotonic nanoseconds)
/// is past `now`.
fn expired<C>(calls: &BTreeMap<u32, C>, now: u64, deadline: fn(&C) -> u64) -> Vec<u32> {
    calls
        .iter()
        .filter(|(_, c)| deadline(c) <= now)
        .map(|(&token, _)| token)
        .collect()
}
