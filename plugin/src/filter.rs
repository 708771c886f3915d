//! The proxy-wasm glue: gathers what the host gives (headers, time, shared
//! data, stats), calls the decision logic, and applies its decision. No
//! decision is made here.
//!
//! Cross-worker state lives in the host, not in this VM: the drain start in
//! shared data (one value per vm_id, seen by every worker and by both the
//! traffic and the admin filter instances) and the counts in Envoy stats (a
//! gauge defined under one name by every worker is one stat).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{
    Action, ContextType, GrpcStatusCode, LogLevel, MapType, MetricType, Status,
};

use crate::admin::{self, Action as AdminAction};
use crate::config::{Config, Role};
use crate::counts;
use crate::dialect::{self, Dialect};
use crate::drain::{self, Drain, Phase, Windows, SHARED_KEY, WINDOWS_KEY};
use crate::drain_stats;
use crate::headers::{Headers as _, Wire};
use crate::metrics;
use crate::reply::LocalReply;
use crate::schedule::{Polls, Ticks};
use crate::sse::{self, ChunkAction};
use crate::store::{self, Change, Refused, SharedValue, Updated};
use crate::traffic::{self, Verdict};
use crate::websocket;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root {
            context_id,
            ..Root::default()
        })
    });
}}

/// Timeout of the call to Envoy's admin when a drain starts or ends.
const ENVOY_ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Stat ids, defined once per root context.
#[derive(Clone, Copy)]
struct Metrics {
    inflight: u32,
    state: u32,
    admitted: u32,
    completed: u32,
    rejected_draining: u32,
    rejected_deadline: u32,
    malformed_deadline: u32,
    streams_ended: u32,
    ended_at_grace: u32,
    drain_changes: u32,
    drain_started: u32,
    drain_duration: u32,
    drain_resets: u32,
    grace: u32,
}

impl Metrics {
    fn define() -> Result<Metrics, Status> {
        let gauge = |name| hostcalls::define_metric(MetricType::Gauge, name);
        let counter = |name| hostcalls::define_metric(MetricType::Counter, name);
        Ok(Metrics {
            inflight: gauge(metrics::INFLIGHT)?,
            state: gauge(metrics::STATE)?,
            admitted: counter(metrics::ADMITTED)?,
            completed: counter(metrics::COMPLETED)?,
            rejected_draining: counter(metrics::REJECTED_DRAINING)?,
            rejected_deadline: counter(metrics::REJECTED_DEADLINE)?,
            malformed_deadline: counter(metrics::MALFORMED_DEADLINE)?,
            streams_ended: counter(metrics::STREAMS_ENDED)?,
            ended_at_grace: counter(metrics::ENDED_AT_GRACE)?,
            drain_changes: counter(metrics::DRAIN_CHANGES)?,
            drain_started: gauge(metrics::DRAIN_STARTED_UNIX_MS)?,
            drain_duration: gauge(metrics::DRAIN_DURATION_MS)?,
            drain_resets: counter(metrics::DRAIN_RESETS)?,
            grace: gauge(metrics::GRACE_MS)?,
        })
    }

    fn add(id: u32, delta: i64) {
        if let Err(status) = hostcalls::increment_metric(id, delta) {
            log::warn!("stat update failed: {status:?}");
        }
    }

    fn get(id: u32) -> u64 {
        hostcalls::get_metric(id).unwrap_or(0)
    }

    fn set(id: u32, value: u64) {
        if let Err(status) = hostcalls::record_metric(id, value) {
            log::warn!("stat update failed: {status:?}");
        }
    }

    fn drain_gauges(&self) -> drain_stats::Gauges {
        drain_stats::Gauges {
            started_unix_ms: Metrics::get(self.drain_started),
            duration_ms: Metrics::get(self.drain_duration),
        }
    }

    fn set_drain_gauges(&self, update: Option<drain_stats::Gauges>) {
        if let Some(g) = update {
            Metrics::set(self.drain_started, g.started_unix_ms);
            Metrics::set(self.drain_duration, g.duration_ms);
        }
    }
}

/// What every context of one plugin instance shares.
struct Shared {
    cfg: Config,
    metrics: Metrics,
    /// The drain state as this worker last read it (see [`drain::Seen`]).
    seen: Cell<drain::Seen>,
    /// Admitted and completed counts not yet in the stats (see [`counts`]).
    pending: Cell<counts::Pending>,
    /// How streams are cut; its `clock_lag_ms` is how far
    /// `seen.read_unix_ms` may trail the clock: it is refreshed on every
    /// tick (two periods, for a late tick).
    cut: sse::CutPolicy,
    /// This worker's traffic streams counted in flight, by context id, and
    /// whether the plugin has reset them: the tick ends those still running
    /// at the grace end (once each), and keeps coming often until Envoy has
    /// deleted them.
    streams: RefCell<counts::InFlight>,
}

impl Shared {
    /// The drain state now: this worker's copy unless the change counter
    /// moved since it was read.
    fn drain(&self, now: u64) -> Drain {
        let changes = hostcalls::get_metric(self.metrics.drain_changes).ok();
        let seen = self.seen.get().refresh(now, changes, || self.read_drain());
        self.seen.set(seen);
        seen.drain
    }

    /// Adds this worker's pending counts to the stats.
    fn flush(&self, now: u64) {
        let mut pending = self.pending.get();
        let (admitted, completed) = pending.take(now);
        self.pending.set(pending);
        for (id, n) in [
            (self.metrics.admitted, admitted),
            (self.metrics.completed, completed),
        ] {
            if n > 0 {
                Metrics::add(id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    fn count(&self, now: Option<u64>, update: fn(&mut counts::Pending)) {
        let mut pending = self.pending.get();
        update(&mut pending);
        self.pending.set(pending);
        if let Some(now) = now.filter(|&now| pending.due(now)) {
            self.flush(now);
        }
    }

    /// Tells every worker the stored drain state changed.
    fn changed(&self) {
        Metrics::add(self.metrics.drain_changes, 1);
    }

    fn read_drain(&self) -> Drain {
        match hostcalls::get_shared_data(SHARED_KEY) {
            Ok((bytes, _)) => Drain::decode(bytes.as_deref()).unwrap_or_else(|e| {
                log::error!("{e}; treating as serving");
                Drain::SERVING
            }),
            Err(status) => {
                log::error!("reading drain state failed: {status:?}");
                Drain::SERVING
            }
        }
    }

    /// The drain timing the traffic listeners act on: the traffic role's own;
    /// for the admin role, what the traffic listeners published (its own
    /// configuration if none did).
    fn windows(&self) -> Windows {
        if self.cfg.role == Role::Traffic {
            return self.cfg.windows();
        }
        hostcalls::get_shared_data(WINDOWS_KEY)
            .ok()
            .and_then(|(bytes, _)| Windows::decode(&bytes?))
            .unwrap_or_else(|| self.cfg.windows())
    }

    /// The current phase; also refreshes the state gauge.
    fn observe(&self, now: u64) -> (Drain, Phase, u64) {
        let drain = self.drain(now);
        let inflight = Metrics::get(self.metrics.inflight);
        let windows = self.windows();
        let phase = drain.phase(now, inflight, windows);
        Metrics::set(self.metrics.state, phase.gauge());
        let m = &self.metrics;
        m.set_drain_gauges(drain_stats::observed(
            m.drain_gauges(),
            drain,
            phase,
            windows,
        ));
        (drain, phase, inflight)
    }

    /// Starts the drain unless one is on (the first start time stays).
    fn start_drain(&self, now: u64) {
        match store::update(&mut DrainRecord, Change::Start { now_unix_ms: now }) {
            Updated::Stored(_) => {
                self.changed();
                log::info!("drain started");
            }
            Updated::Unchanged => {}
            Updated::ReadFailed(status) => log::error!("reading drain state failed: {status:?}"),
            Updated::WriteFailed(status) => log::error!("storing drain state failed: {status:?}"),
            Updated::KeptChanging => log::error!("drain state kept changing; drain not started"),
        }
    }

    /// Adopts a drain controller's state (see [`crate::drain::follow`]);
    /// if another worker changed it meanwhile, the next poll looks again.
    fn follow(&self, controller: Drain) {
        if let Updated::Stored(next) = store::update(&mut DrainRecord, Change::Follow(controller)) {
            self.changed();
            match next.started_unix_ms {
                Some(_) => log::info!("drain started by the drain controller"),
                None => log::info!("drain ended by the drain controller, serving"),
            }
        }
    }

    fn stop_drain(&self) {
        match hostcalls::set_shared_data(SHARED_KEY, Some(&Drain::SERVING.encode()), None) {
            Ok(()) => {
                self.changed();
                log::info!("drain cancelled, serving");
            }
            Err(status) => log::error!("storing drain state failed: {status:?}"),
        }
    }
}

/// The drain record in the host's shared data.
struct DrainRecord;

impl SharedValue for DrainRecord {
    type Error = Status;

    fn read(&mut self) -> Result<store::Versioned, Status> {
        hostcalls::get_shared_data(SHARED_KEY)
    }

    fn write(&mut self, value: &[u8], version: Option<u32>) -> Result<(), Refused<Status>> {
        hostcalls::set_shared_data(SHARED_KEY, Some(value), version).map_err(
            |status| match status {
                Status::CasMismatch => Refused::Mismatch,
                status => Refused::Failed(status),
            },
        )
    }
}

impl Drop for Shared {
    /// The plugin instance is going away: what is still counted here goes
    /// to the stats.
    fn drop(&mut self) {
        self.flush(0);
    }
}

/// The request headers in the host's wire form: one copy into the VM, no
/// allocation per header (the SDK's `get_http_request_headers_bytes`
/// decodes every pair into owned strings). Read with [`request_headers`].
/// `None` when the host refuses the read.
fn request_header_bytes() -> Option<Vec<u8>> {
    // The SDK's own import, with its signature.
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> Status;
    }
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: the host writes a pointer it got from this module's allocator
    // (the SDK's `proxy_on_memory_allocate`, a `Vec<u8>` of capacity `size`
    // forgotten) and its size; the buffer is ours to free, as the SDK does.
    unsafe {
        match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Some(Vec::from_raw_parts(data, size, size)),
            Status::Ok => Some(Vec::new()),
            status => {
                log::warn!("request headers unreadable: {status:?}");
                None
            }
        }
    }
}

/// `bytes` (from [`request_header_bytes`]) as a header map; `None` when
/// they could not be read or are malformed (which no host should hand
/// over): the decisions then see no headers.
fn request_headers(bytes: Option<&[u8]>) -> Option<Wire<'_>> {
    Wire::parse(bytes?)
        .map_err(|e| log::warn!("request headers malformed ({e}): read as none"))
        .ok()
}

fn now_unix_ms(ctx: &dyn Context) -> u64 {
    ctx.get_current_time()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `:status` of the http call answer being delivered, `None` when the
/// call failed. Envoy delivers a failed call (the answer broke off, the
/// stream was reset) with no headers and refuses a header read then, on
/// which the SDK panics: so no read is made without headers.
fn call_status(ctx: &dyn Context, num_headers: usize) -> Option<String> {
    if num_headers == 0 {
        return None;
    }
    ctx.get_http_call_response_header(":status")
}

fn send(ctx: &dyn HttpContext, reply: &LocalReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    if let Some(status) = reply.grpc_status {
        // A trailers-only gRPC answer: Envoy sends the status given (not
        // one mapped from the HTTP status) and the body as `grpc-message`.
        if let Err(e) = hostcalls::send_grpc_response(grpc_code(status), Some(&reply.body), vec![])
        {
            log::warn!("gRPC local reply failed: {e:?}");
        }
        return;
    }
    let body = (!reply.body.is_empty()).then_some(reply.body.as_bytes());
    ctx.send_http_response(reply.status, headers, body);
}

fn grpc_code(status: u32) -> GrpcStatusCode {
    match status {
        dialect::GRPC_DEADLINE_EXCEEDED => GrpcStatusCode::DeadlineExceeded,
        _ => GrpcStatusCode::Unavailable,
    }
}

/// One per plugin configuration and worker.
#[derive(Default)]
struct Root {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    /// The tick period.
    ticks: Ticks,
    /// Drain controller polling.
    polls: Polls,
}

impl Root {
    fn poll_controller(&mut self, now: u64) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(ctl) = &shared.cfg.drain_controller else {
            return;
        };
        if !self.polls.start(now, ctl.poll_ms) {
            return;
        }
        let call = self.dispatch_http_call(
            &ctl.cluster,
            vec![
                (":method", "GET"),
                (":path", &ctl.path),
                (":authority", &ctl.cluster),
            ],
            None,
            vec![],
            Duration::from_millis(ctl.poll_ms),
        );
        match call {
            Ok(_) => self.polls.sent(),
            Err(status) => self.controller_health(Err(format!(
                "cannot call the drain controller through cluster {}: {status:?}",
                crate::json::quote(&ctl.cluster)
            ))),
        }
    }

    fn controller_health(&mut self, result: Result<(), String>) {
        if self.polls.worked(result.is_ok()) {
            match result {
                Ok(()) => log::info!("following the drain controller"),
                Err(e) => log::warn!("{e}; keeping the current drain state"),
            }
        }
    }
}

impl Root {
    /// The grace period is over: ends every stream still in flight on this
    /// worker (a silent stream never gets a body callback that could end it
    /// in its dialect's terms, so this is a reset). Each leaves the
    /// in-flight count when Envoy deletes its context.
    fn end_in_flight(&self, shared: &Shared) {
        let ids = shared.streams.borrow_mut().take_unreset();
        for id in &ids {
            let ended = hostcalls::set_effective_context(*id)
                .and_then(|()| hostcalls::reset_http_response());
            match ended {
                Ok(()) => Metrics::add(shared.metrics.ended_at_grace, 1),
                Err(status) => log::warn!("cannot end stream {id} at the grace end: {status:?}"),
            }
        }
        if !ids.is_empty() {
            log::info!(
                "grace period over: {} stream(s) still in flight ended",
                ids.len()
            );
            if let Err(status) = hostcalls::set_effective_context(self.context_id) {
                log::warn!("cannot return to the root context: {status:?}");
            }
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        self.polls.answered();
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let status = call_status(self, num_headers);
        let result = match status.as_deref() {
            Some("200") => {
                let body = self
                    .get_http_call_response_body(0, body_size)
                    .unwrap_or_default();
                drain::parse_controller_status(&body).map(|controller| shared.follow(controller))
            }
            Some(code) => Err(format!("the drain controller answered {code}")),
            None => Err("the drain controller did not answer".to_string()),
        };
        self.controller_health(result);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let cfg = match Config::parse(&bytes) {
            Ok(cfg) => cfg,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        let metrics = match Metrics::define() {
            Ok(m) => m,
            Err(status) => {
                log::error!("cannot define stats: {status:?}");
                return false;
            }
        };
        if cfg.role == Role::Traffic {
            Metrics::set(metrics.grace, cfg.grace_ms);
            let windows = cfg.windows().encode();
            if let Err(status) = hostcalls::set_shared_data(WINDOWS_KEY, Some(&windows), None) {
                log::error!("cannot publish the drain windows: {status:?}");
                return false;
            }
        }
        let ticks = Ticks::new(cfg.drain_controller.as_ref().map(|ctl| ctl.poll_ms));
        let cut = sse::CutPolicy {
            windows: cfg.windows(),
            margin_ms: cfg.final_event_margin_ms,
            clock_lag_ms: ticks.clock_lag_ms(),
        };
        self.shared = Some(Rc::new(Shared {
            cfg,
            metrics,
            seen: Cell::default(),
            pending: Cell::default(),
            cut,
            streams: RefCell::default(),
        }));
        self.ticks = ticks;
        self.set_tick_period(Duration::from_millis(ticks.period_ms));
        true
    }

    fn on_tick(&mut self) {
        let now = now_unix_ms(self);
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let (drain, _, _) = shared.observe(now);
        shared.flush(now);
        self.poll_controller(now);
        let here = !shared.streams.borrow().is_empty();
        let plan = self.ticks.at_tick(drain, now, shared.windows(), here);
        if let Some(period_ms) = plan.set_period_ms {
            self.set_tick_period(Duration::from_millis(period_ms));
        }
        if plan.end_in_flight {
            self.end_in_flight(&shared);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(match shared.cfg.role {
            Role::Traffic => Box::new(Traffic {
                shared,
                context_id,
                dialect: Dialect::Plain,
                counted: false,
                ws: websocket::Closer::default(),
                deadline_unix_ms: 0,
                body: sse::Body::default(),
                response: drain_stats::Response::default(),
            }),
            Role::Admin => Box::new(Admin {
                shared,
                pending: None,
            }),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A stream on the traffic listener.
struct Traffic {
    shared: Rc<Shared>,
    context_id: u32,
    /// The API the request speaks.
    dialect: Dialect,
    /// Counted in flight, not yet released.
    counted: bool,
    /// A WebSocket session's upstream bytes: ended with a close frame.
    ws: websocket::Closer,
    /// The deadline given to the forwarded request.
    deadline_unix_ms: u64,
    /// The response body: an event stream is ended with a final event
    /// before a limit.
    body: sse::Body,
    /// How the response went, for the drain's stats.
    response: drain_stats::Response,
}

impl Context for Traffic {}

impl HttpContext for Traffic {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let m = &shared.metrics;
        let now = now_unix_ms(self);
        let bytes = request_header_bytes();
        let read = request_headers(bytes.as_deref());
        let headers = read.unwrap_or(Wire::EMPTY);
        let decision = traffic::decide(&shared.cfg, shared.drain(now), now, &headers, || {
            Metrics::get(m.inflight)
        });
        if decision.malformed_deadlines > 0 {
            Metrics::add(
                m.malformed_deadline,
                i64::from(decision.malformed_deadlines),
            );
        }
        match decision.verdict {
            Verdict::Health(reply) => send(self, &reply),
            Verdict::RejectDraining(reply) => {
                Metrics::add(m.rejected_draining, 1);
                send(self, &reply);
            }
            Verdict::RejectDeadline(reply) => {
                Metrics::add(m.rejected_deadline, 1);
                send(self, &reply);
            }
            Verdict::Forward(forward) => {
                for (name, value) in &forward.set_headers {
                    // Adding costs Envoy less than replacing (no lookup, no
                    // removal); the request's own headers were all read
                    // above, so a header absent there is absent now.
                    if read.is_none() || headers.get(name).is_some() {
                        self.set_http_request_header(name, Some(value));
                    } else {
                        self.add_http_request_header(name, value);
                    }
                }
                Metrics::add(m.inflight, 1);
                shared.count(Some(now), counts::Pending::admit);
                self.counted = true;
                shared.streams.borrow_mut().admit(self.context_id);
                self.dialect = decision.dialect;
                self.deadline_unix_ms = forward.deadline_unix_ms;
                self.body = sse::Body::forwarded_as(decision.dialect);
                return Action::Continue;
            }
        }
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        self.response.body_started = true;
        self.response.whole |= end_of_stream;
        match self.dialect {
            Dialect::WebSocket => return self.on_websocket_body(&shared, body_size, end_of_stream),
            Dialect::Grpc => return self.on_other_body(&shared, end_of_stream),
            _ => {}
        }
        let mut body = std::mem::take(&mut self.body);
        let action = body.on_chunk(
            body_size,
            end_of_stream,
            || self.due(&shared),
            || self.response_chunk(body_size),
        );
        self.body = body;
        self.apply_chunk(&shared, action, body_size, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.response.whole = true;
        Action::Continue
    }
}

impl Traffic {
    /// Whether this stream must end now, and why: the clock and the drain
    /// state are read only when the cut policy says it may.
    fn due(&self, shared: &Shared) -> Option<sse::Limit> {
        let cut = &shared.cut;
        if !cut.may_be_due(self.deadline_unix_ms, shared.seen.get()) {
            return None;
        }
        let now = now_unix_ms(self);
        cut.due(self.deadline_unix_ms, now, shared.drain(now))
    }

    /// The response chunk of `body_size` bytes this body callback is for.
    fn response_chunk(&self, body_size: usize) -> Vec<u8> {
        match body_size {
            0 => Vec::new(),
            n => self.get_http_response_body(0, n).unwrap_or_default(),
        }
    }

    /// An upgraded WebSocket session's bytes from the upstream: every chunk
    /// is followed (the frame boundaries cannot be found mid-stream), and
    /// once the session must end the client gets a close frame (1012) at
    /// the next boundary; what comes after it is dropped and the stream
    /// ended.
    fn on_websocket_body(
        &mut self,
        shared: &Shared,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let chunk = self.response_chunk(body_size);
        let cut = !self.ws.closed() && self.counted && self.due(shared).is_some();
        let action = self.ws.on_chunk(cut, &chunk);
        // A session ended by the closing handshake is whole, even if the
        // connection is then reset rather than ended.
        self.response.whole |= self.ws.upstream_closed();
        self.apply_chunk(shared, action, body_size, end_of_stream)
    }

    /// Applies what the stream's ender decided for a response chunk: pass
    /// it on, replace it with the ending (the final event or the close
    /// frame), or drop it; after the ending has gone out, the stream is
    /// ended now rather than held open until the upstream finishes.
    fn apply_chunk(
        &mut self,
        shared: &Shared,
        action: ChunkAction,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        match action {
            ChunkAction::Forward => {}
            ChunkAction::Replace(bytes) => {
                self.set_http_response_body(0, body_size, &bytes);
                Metrics::add(shared.metrics.streams_ended, 1);
                self.response.final_event = true;
            }
            ChunkAction::Drop => {
                self.set_http_response_body(0, body_size, &[]);
                if !end_of_stream {
                    shared.streams.borrow_mut().mark_reset(self.context_id);
                    self.reset_http_response();
                }
            }
        }
        Action::Continue
    }

    /// A response with no final event (gRPC): at its drain cut it is reset,
    /// within the grace period (the client sees the stream fail, not end
    /// silently: a proxy-wasm filter cannot end a running response with
    /// trailers); at its own deadline the router ends it.
    fn on_other_body(&mut self, shared: &Shared, end_of_stream: bool) -> Action {
        if end_of_stream || !self.counted {
            return Action::Continue;
        }
        if self.due(shared) == Some(sse::Limit::Drain) {
            shared.streams.borrow_mut().mark_reset(self.context_id);
            Metrics::add(shared.metrics.ended_at_grace, 1);
            self.reset_http_response();
        }
        Action::Continue
    }
}

impl Drop for Traffic {
    /// Envoy deletes a stream's context once the stream has ended for any
    /// reason (complete, reset, aborted, timed out): the last byte has gone
    /// by then. (Not in `on_log`: that export is left out of the release
    /// build, see [`crate::CALLBACKS`].)
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let shared = &self.shared;
        let m = &shared.metrics;
        shared.streams.borrow_mut().remove(self.context_id);
        Metrics::add(m.inflight, -1);
        shared.count(None, counts::Pending::complete);
        if !drain_stats::end_matters(self.response, shared.seen.get().drain) {
            return;
        }
        let now = now_unix_ms(self);
        let drain = shared.drain(now);
        if drain_stats::cut(self.response, drain) {
            Metrics::add(m.drain_resets, 1);
        }
        if drain.started_unix_ms.is_some() {
            let inflight = Metrics::get(m.inflight);
            m.set_drain_gauges(drain_stats::request_ended(
                m.drain_gauges(),
                drain,
                now,
                inflight,
                shared.cfg.windows(),
            ));
        }
    }
}

/// A stream on the admin (drain) listener.
struct Admin {
    shared: Rc<Shared>,
    /// The action waiting for Envoy's admin to answer.
    pending: Option<AdminAction>,
}

impl Admin {
    fn respond(&self, action: AdminAction, warning: Option<&str>) {
        let now = now_unix_ms(self);
        let (drain, phase, inflight) = self.shared.observe(now);
        let m = &self.shared.metrics;
        let status = admin::Status {
            phase,
            drain,
            now_unix_ms: now,
            inflight,
            admitted: Metrics::get(m.admitted),
            rejected_draining: Metrics::get(m.rejected_draining),
            rejected_deadline: Metrics::get(m.rejected_deadline),
        };
        send(self, &status.reply(action, warning));
    }
}

impl Context for Admin {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        let Some(action) = self.pending.take() else {
            return;
        };
        let answer = call_status(self, num_headers);
        let warning = match answer.as_deref() {
            Some("200") => None,
            Some(code) => Some(format!("Envoy's admin answered {code}")),
            None => Some("Envoy's admin did not answer".to_string()),
        };
        if let Some(w) = &warning {
            log::warn!("{w}");
        }
        self.respond(action, warning.as_deref());
    }
}

impl HttpContext for Admin {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let bytes = request_header_bytes();
        let headers = request_headers(bytes.as_deref()).unwrap_or(Wire::EMPTY);
        let action = match admin::route(&self.shared.cfg, &headers) {
            Ok(action) => action,
            Err(reply) => {
                send(self, &reply);
                return Action::Pause;
            }
        };
        let envoy_path = match action {
            AdminAction::Start => {
                self.shared.start_drain(now_unix_ms(self));
                Some("/healthcheck/fail")
            }
            AdminAction::Stop => {
                self.shared.stop_drain();
                Some("/healthcheck/ok")
            }
            AdminAction::Status => None,
        };
        let mut warning = None;
        if let (Some(path), Some(cluster)) = (envoy_path, &self.shared.cfg.envoy_admin_cluster) {
            let call = self.dispatch_http_call(
                cluster,
                vec![
                    (":method", "POST"),
                    (":path", path),
                    (":authority", "envoy-admin"),
                ],
                None,
                vec![],
                ENVOY_ADMIN_TIMEOUT,
            );
            match call {
                Ok(_) => {
                    self.pending = Some(action);
                    return Action::Pause;
                }
                Err(status) => {
                    let w = format!(
                        "cannot call Envoy's admin through cluster {}: {status:?}",
                        crate::json::quote(cluster)
                    );
                    log::warn!("{w}");
                    warning = Some(w);
                }
            }
        }
        self.respond(action, warning.as_deref());
        Action::Pause
    }
}
