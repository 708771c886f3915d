//! The stream driver: feeds one HTTP stream through a plugin as Envoy's
//! filter chain would, and reports what the filter decided.
//!
//! ```no_run
//! # fn demo(worker: drainpipe_shim::Worker) -> Result<(), Box<dyn std::error::Error>> {
//! let mut stream = worker.http_stream("traffic")?;
//! let reply = stream
//!     .request_headers([(":method", "GET"), (":path", "/healthz/ready")], true)
//!     .expect_local_response(200)
//!     .clone();
//! assert_eq!(reply.body_text(), r#"{"status":"serving"}"#);
//! stream.finish(); // on_log, on_done, on_delete
//! # Ok(()) }
//! ```

use crate::abi::Action;
use crate::headers::Headers;
use crate::host::FailurePolicy;
use crate::state::{Context, HttpContext, Reach, StreamMap};
use crate::worker::{StreamError, Worker, WorkerInner};

/// A response the filter (or the host, for a failed VM) sent locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    /// Headers as sent, after the filter's own response callbacks.
    pub headers: Headers,
    pub body: Vec<u8>,
    /// Envoy's response code details (`proxy_send_local_response`'s details).
    pub details: String,
    pub grpc_status: Option<i32>,
}

impl LocalResponse {
    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// What happened to the stream at one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Iteration continues: the data goes on (upstream, or to the client).
    Continue,
    /// The filter stopped iteration; it may resume the stream later.
    Pause,
    /// The stream ended with a local response.
    LocalResponse(LocalResponse),
    /// The stream was reset (`proxy_close_stream`, or a trap mid-response).
    Reset,
}

/// The result of one step of a stream.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: Decision,
    /// The headers (or trailers) as the filter left them.
    pub headers: Option<Headers>,
    /// The body data that went on, as the filter left it.
    pub body: Option<Vec<u8>>,
    /// The guest's trap, if this step trapped.
    pub trap: Option<String>,
}

impl Outcome {
    fn new(decision: Decision) -> Self {
        Outcome {
            decision,
            headers: None,
            body: None,
            trap: None,
        }
    }

    /// Whether the filter let the data through.
    pub fn is_continue(&self) -> bool {
        self.decision == Decision::Continue
    }

    /// The local response, if the stream ended with one.
    pub fn local_response(&self) -> Option<&LocalResponse> {
        match &self.decision {
            Decision::LocalResponse(r) => Some(r),
            _ => None,
        }
    }

    /// Asserts the data went on; returns the outcome for more checks.
    #[track_caller]
    pub fn expect_continue(&self) -> &Self {
        assert_eq!(
            self.decision,
            Decision::Continue,
            "expected Continue, got {self:#?}"
        );
        self
    }

    /// Asserts the filter paused the stream.
    #[track_caller]
    pub fn expect_pause(&self) -> &Self {
        assert_eq!(
            self.decision,
            Decision::Pause,
            "expected Pause, got {self:#?}"
        );
        self
    }

    /// Asserts the stream was reset.
    #[track_caller]
    pub fn expect_reset(&self) -> &Self {
        assert_eq!(
            self.decision,
            Decision::Reset,
            "expected Reset, got {self:#?}"
        );
        self
    }

    /// Asserts a local response with `status`, and returns it.
    #[track_caller]
    pub fn expect_local_response(&self, status: u32) -> &LocalResponse {
        match &self.decision {
            Decision::LocalResponse(r) if r.status == status => r,
            _ => panic!("expected a local response {status}, got {self:#?}"),
        }
    }

    /// The headers as the filter left them; panics if the step had none.
    #[track_caller]
    pub fn headers(&self) -> &Headers {
        self.headers.as_ref().expect("this step carried no headers")
    }
}

/// Which part of the stream a step feeds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

impl Part {
    fn callback(self) -> &'static str {
        match self {
            Part::RequestHeaders => "proxy_on_request_headers",
            Part::RequestBody => "proxy_on_request_body",
            Part::RequestTrailers => "proxy_on_request_trailers",
            Part::ResponseHeaders => "proxy_on_response_headers",
            Part::ResponseBody => "proxy_on_response_body",
            Part::ResponseTrailers => "proxy_on_response_trailers",
        }
    }

    /// The header map this part delivers.
    fn map(self) -> Option<StreamMap> {
        match self {
            Part::RequestHeaders => Some(StreamMap::RequestHeaders),
            Part::RequestTrailers => Some(StreamMap::RequestTrailers),
            Part::ResponseHeaders => Some(StreamMap::ResponseHeaders),
            Part::ResponseTrailers => Some(StreamMap::ResponseTrailers),
            Part::RequestBody | Part::ResponseBody => None,
        }
    }

    fn is_request(self) -> bool {
        matches!(
            self,
            Part::RequestHeaders | Part::RequestBody | Part::RequestTrailers
        )
    }
}

/// How the stream runs when the VM has failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Through the filter.
    Filtered,
    /// Around the filter (fail-open).
    Bypassed,
}

/// One HTTP stream through a plugin. Dropping an unfinished stream finishes
/// it (the lifecycle callbacks run).
pub struct HttpStream {
    worker: Worker,
    context_id: u32,
    mode: Mode,
    /// Set once the stream ended with a local response or a reset: every
    /// later step reports it again without calling the filter.
    ended: Option<Decision>,
    finished: bool,
}

impl HttpStream {
    pub(crate) fn start(worker: Worker, plugin: &str) -> Result<HttpStream, StreamError> {
        let mut inner = worker.lock();
        let index = inner
            .plugin_index(plugin)
            .ok_or_else(|| StreamError::UnknownPlugin(plugin.to_owned()))?;
        if inner.host.inner.vm.plugins[index].singleton {
            return Err(StreamError::Singleton(plugin.to_owned()));
        }
        let mut stream = HttpStream {
            worker: worker.clone(),
            context_id: 0,
            mode: Mode::Filtered,
            ended: None,
            finished: false,
        };
        if inner.failed.is_some() {
            match inner.policy(index) {
                FailurePolicy::FailOpen => stream.mode = Mode::Bypassed,
                FailurePolicy::FailClosed => stream.ended = Some(fail_closed()),
                FailurePolicy::Reload => {
                    if inner.reload().is_err() {
                        stream.ended = Some(fail_closed());
                    }
                }
            }
        }
        if stream.mode == Mode::Filtered && stream.ended.is_none() {
            stream.context_id = create_context(&mut inner, index);
            let root = inner.vm.roots[index];
            let created = inner.call::<(i32, i32), ()>(
                stream.context_id,
                "proxy_on_context_create",
                (stream.context_id as i32, root as i32),
            );
            if created.is_err() {
                stream.fail(&inner, index);
            }
        }
        drop(inner);
        Ok(stream)
    }

    /// The stream's context id (0 when the filter is bypassed).
    pub fn context_id(&self) -> u32 {
        self.context_id
    }

    /// Sets the downstream address seen by the `source.*` properties.
    pub fn set_downstream(&mut self, addr: std::net::SocketAddr) -> &mut Self {
        let mut inner = self.worker.lock();
        if let Some(Context::Http(h)) = inner.vm.store.data_mut().contexts.get_mut(&self.context_id)
        {
            h.downstream = Some(addr);
        }
        drop(inner);
        self
    }

    /// Feeds the request headers (`proxy_on_request_headers`).
    pub fn request_headers<K: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        headers: impl IntoIterator<Item = (K, V)>,
        end_of_stream: bool,
    ) -> Outcome {
        self.step(
            Part::RequestHeaders,
            Data::Headers(Headers::from_pairs(headers)),
            end_of_stream,
        )
    }

    /// Feeds a chunk of the request body (`proxy_on_request_body`).
    pub fn request_body(&mut self, data: impl Into<Vec<u8>>, end_of_stream: bool) -> Outcome {
        self.step(Part::RequestBody, Data::Body(data.into()), end_of_stream)
    }

    /// Feeds the request trailers (`proxy_on_request_trailers`).
    pub fn request_trailers<K: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        trailers: impl IntoIterator<Item = (K, V)>,
    ) -> Outcome {
        self.step(
            Part::RequestTrailers,
            Data::Headers(Headers::from_pairs(trailers)),
            true,
        )
    }

    /// Feeds the response headers (`proxy_on_response_headers`).
    pub fn response_headers<K: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        headers: impl IntoIterator<Item = (K, V)>,
        end_of_stream: bool,
    ) -> Outcome {
        self.step(
            Part::ResponseHeaders,
            Data::Headers(Headers::from_pairs(headers)),
            end_of_stream,
        )
    }

    /// Feeds a chunk of the response body (`proxy_on_response_body`).
    pub fn response_body(&mut self, data: impl Into<Vec<u8>>, end_of_stream: bool) -> Outcome {
        self.step(Part::ResponseBody, Data::Body(data.into()), end_of_stream)
    }

    /// Feeds the response trailers (`proxy_on_response_trailers`).
    pub fn response_trailers<K: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        trailers: impl IntoIterator<Item = (K, V)>,
    ) -> Outcome {
        self.step(
            Part::ResponseTrailers,
            Data::Headers(Headers::from_pairs(trailers)),
            true,
        )
    }

    /// Whether the filter resumed the request (`proxy_continue_stream`)
    /// since the request last paused (or since the stream started).
    pub fn request_resumed(&self) -> bool {
        self.with_context(|h| h.request_resumed).unwrap_or(false)
    }

    /// Whether the filter resumed the response since it last paused.
    pub fn response_resumed(&self) -> bool {
        self.with_context(|h| h.response_resumed).unwrap_or(false)
    }

    /// Whether the filter reset the stream.
    pub fn is_reset(&self) -> bool {
        self.ended == Some(Decision::Reset) || self.with_context(|h| h.reset).unwrap_or(false)
    }

    /// The local response the filter sent outside a stream step (for
    /// instance from an http call callback), once delivered.
    pub fn take_local_response(&mut self) -> Option<LocalResponse> {
        if let Some(Decision::LocalResponse(r)) = &self.ended {
            return Some(r.clone());
        }
        let mut inner = self.worker.lock();
        let pending = match inner.vm.store.data_mut().contexts.get_mut(&self.context_id) {
            Some(Context::Http(h)) if !h.local_sent => h.local_response.take(),
            _ => None,
        };
        let response = pending.map(|r| send_local_response(&mut inner, self.context_id, r));
        drop(inner);
        let response = response?;
        self.ended = Some(response.decision.clone());
        response.local_response().cloned()
    }

    /// The request headers as the filter left them.
    pub fn request_headers_sent(&self) -> Option<Headers> {
        self.with_context(|h| h.request_headers.clone()).flatten()
    }

    /// The response headers as the filter left them.
    pub fn response_headers_sent(&self) -> Option<Headers> {
        self.with_context(|h| h.response_headers.clone()).flatten()
    }

    /// The request trailers as the filter left them.
    pub fn request_trailers_sent(&self) -> Option<Headers> {
        self.with_context(|h| h.request_trailers.clone()).flatten()
    }

    /// The response trailers as the filter left them.
    pub fn response_trailers_sent(&self) -> Option<Headers> {
        self.with_context(|h| h.response_trailers.clone()).flatten()
    }

    /// Takes the request body the filter buffered (paused) so far, as the
    /// filter left it: what goes on when the filter resumes the request.
    pub fn take_request_body(&mut self) -> Option<Vec<u8>> {
        let mut inner = self.worker.lock();
        match inner.vm.store.data_mut().contexts.get_mut(&self.context_id) {
            Some(Context::Http(h)) => h.request_body.take(),
            _ => None,
        }
    }

    /// Takes the response body the filter buffered (paused) so far.
    pub fn take_response_body(&mut self) -> Option<Vec<u8>> {
        let mut inner = self.worker.lock();
        match inner.vm.store.data_mut().contexts.get_mut(&self.context_id) {
            Some(Context::Http(h)) => h.response_body.take(),
            _ => None,
        }
    }

    /// Ends the stream normally: `proxy_on_log`, `proxy_on_done`,
    /// `proxy_on_delete`, in Envoy's order. Pending http calls of the stream
    /// are cancelled.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.context_id == 0 {
            return;
        }
        let mut inner = self.worker.lock();
        let id = self.context_id;
        if let Some(Context::Http(http)) = inner.vm.store.data_mut().contexts.get_mut(&id) {
            // The access log's view: what the stream carried, read-only.
            http.reach = [Reach::Gone; 4];
            for map in [
                StreamMap::RequestHeaders,
                StreamMap::ResponseHeaders,
                StreamMap::ResponseTrailers,
            ] {
                http.set_reach(map, Reach::ReadOnly);
            }
        }
        if inner.vm.store.data().contexts.contains_key(&id) {
            let _ = inner.call::<i32, ()>(id, "proxy_on_log", id as i32);
            if let Some(Context::Http(http)) = inner.vm.store.data_mut().contexts.get_mut(&id) {
                http.reach = [Reach::Gone; 4];
            }
            let _ = inner.call::<i32, i32>(id, "proxy_on_done", id as i32);
            let _ = inner.call::<i32, ()>(id, "proxy_on_delete", id as i32);
            let state = inner.vm.store.data_mut();
            state.contexts.remove(&id);
            state.http_calls.retain(|_, c| c.context_id != id);
            state.grpc_calls.retain(|_, c| c.context_id != id);
        }
    }

    /// The client went away: no more data callbacks, then the lifecycle
    /// callbacks as for a finished stream.
    pub fn abort(&mut self) {
        self.finish();
    }

    fn with_context<T>(&self, f: impl FnOnce(&HttpContext) -> T) -> Option<T> {
        let inner = self.worker.lock();
        match inner.vm.store.data().contexts.get(&self.context_id) {
            Some(Context::Http(h)) => Some(f(h)),
            _ => None,
        }
    }

    fn fail(&mut self, inner: &WorkerInner, plugin: usize) -> Outcome {
        let decision = match inner.policy(plugin) {
            FailurePolicy::FailOpen => {
                self.mode = Mode::Bypassed;
                Decision::Continue
            }
            FailurePolicy::FailClosed | FailurePolicy::Reload => fail_closed(),
        };
        if decision != Decision::Continue {
            self.ended = Some(decision.clone());
        }
        let mut outcome = Outcome::new(decision);
        outcome.trap = inner.failed.clone();
        outcome
    }

    fn step(&mut self, part: Part, data: Data, end_of_stream: bool) -> Outcome {
        if let Some(ended) = &self.ended {
            return Outcome::new(ended.clone());
        }
        assert!(!self.finished, "a step on a finished stream");
        if self.mode == Mode::Bypassed {
            let mut outcome = Outcome::new(Decision::Continue);
            match data {
                Data::Headers(h) => outcome.headers = Some(h),
                Data::Body(b) => outcome.body = Some(b),
            }
            return outcome;
        }
        let worker = self.worker.clone();
        let mut inner = worker.lock();
        let id = self.context_id;
        let now = inner.host.clock().unix_nanos();
        let Some(Context::Http(http)) = inner.vm.store.data_mut().contexts.get_mut(&id) else {
            // The VM was reloaded under this stream: its context is gone.
            self.ended = Some(Decision::Reset);
            return Outcome::new(Decision::Reset);
        };
        let plugin = http.plugin;
        if http.start_unix_nanos == 0 {
            http.start_unix_nanos = now;
        }
        let args = feed(http, part, data, end_of_stream);
        let result: Result<Option<i32>, _> = match args {
            Args::Two(a, b) => inner.call(id, part.callback(), (id as i32, a, b)),
            Args::One(a) => inner.call(id, part.callback(), (id as i32, a)),
        };
        let action = match result {
            Ok(raw) => Action::from_raw(raw.unwrap_or(0)),
            Err(_) => {
                let outcome = self.fail(&inner, plugin);
                return outcome;
            }
        };
        let Some(Context::Http(http)) = inner.vm.store.data_mut().contexts.get_mut(&id) else {
            return Outcome::new(Decision::Reset);
        };
        if http.reset {
            self.ended = Some(Decision::Reset);
            return Outcome::new(Decision::Reset);
        }
        if let Some(local) = http.local_response.take() {
            let outcome = if part.is_request() {
                send_local_response(&mut inner, id, local)
            } else {
                // Sent in place of the upstream response.
                http.local_sent = true;
                Outcome::new(Decision::LocalResponse(local))
            };
            self.ended = Some(outcome.decision.clone());
            return outcome;
        }
        let mut outcome = Outcome::new(match action {
            Action::Continue => Decision::Continue,
            Action::Pause => Decision::Pause,
        });
        let http = match inner.vm.store.data_mut().contexts.get_mut(&id) {
            Some(Context::Http(h)) => h,
            _ => return outcome,
        };
        if action == Action::Pause {
            // From here on, a resume is one of this pause.
            match part.is_request() {
                true => http.request_resumed = false,
                false => http.response_resumed = false,
            }
        }
        if let (Some(map), Action::Continue) = (part.map(), action) {
            // The map went on: the guest cannot reach it any more.
            http.set_reach(map, Reach::Gone);
        }
        match part {
            Part::RequestHeaders => outcome.headers = http.request_headers.clone(),
            Part::RequestTrailers => outcome.headers = http.request_trailers.clone(),
            Part::ResponseHeaders => outcome.headers = http.response_headers.clone(),
            Part::ResponseTrailers => outcome.headers = http.response_trailers.clone(),
            Part::RequestBody if action == Action::Continue => {
                outcome.body = http.request_body.take();
            }
            Part::ResponseBody if action == Action::Continue => {
                outcome.body = http.response_body.take();
            }
            Part::RequestBody | Part::ResponseBody => {}
        }
        outcome
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        self.finish();
    }
}

enum Data {
    Headers(Headers),
    Body(Vec<u8>),
}

enum Args {
    One(i32),
    Two(i32, i32),
}

/// Stores the step's data where host calls will find it; returns the
/// callback's arguments after the context id.
fn feed(http: &mut HttpContext, part: Part, data: Data, end_of_stream: bool) -> Args {
    let eos = i32::from(end_of_stream);
    match (part, data) {
        (Part::RequestHeaders, Data::Headers(h)) => {
            let n = h.len() as i32;
            http.grpc_request = crate::grpc_reply::is_grpc_request(&h);
            http.head_request = h.get(":method") == Some("HEAD");
            http.request_headers = Some(h);
            http.set_reach(StreamMap::RequestHeaders, Reach::Open);
            Args::Two(n, eos)
        }
        (Part::ResponseHeaders, Data::Headers(h)) => {
            let n = h.len() as i32;
            http.response_headers = Some(h);
            http.set_reach(StreamMap::ResponseHeaders, Reach::Open);
            Args::Two(n, eos)
        }
        (Part::RequestTrailers, Data::Headers(h)) => {
            let n = h.len() as i32;
            http.request_trailers = Some(h);
            http.set_reach(StreamMap::RequestTrailers, Reach::Open);
            Args::One(n)
        }
        (Part::ResponseTrailers, Data::Headers(h)) => {
            let n = h.len() as i32;
            http.response_trailers = Some(h);
            http.set_reach(StreamMap::ResponseTrailers, Reach::Open);
            Args::One(n)
        }
        (Part::RequestBody, Data::Body(b)) => {
            // A paused body is buffered: the next callback sees all of it.
            let body = http.request_body.get_or_insert_with(Vec::new);
            body.extend_from_slice(&b);
            Args::Two(body.len() as i32, eos)
        }
        (Part::ResponseBody, Data::Body(b)) => {
            let body = http.response_body.get_or_insert_with(Vec::new);
            body.extend_from_slice(&b);
            Args::Two(body.len() as i32, eos)
        }
        _ => unreachable!("each part is fed its own kind of data"),
    }
}

fn create_context(inner: &mut WorkerInner, plugin: usize) -> u32 {
    let root = inner.vm.roots[plugin];
    let connection_id = inner.next_connection;
    inner.next_connection += 1;
    let state = inner.vm.store.data_mut();
    let id = state.next_context_id;
    state.next_context_id += 1;
    state.contexts.insert(
        id,
        Context::Http(Box::new(HttpContext {
            root,
            plugin,
            connection_id,
            ..HttpContext::default()
        })),
    );
    id
}

/// The 503 Envoy sends when a Wasm VM fails a stream closed.
fn fail_closed() -> Decision {
    Decision::LocalResponse(LocalResponse {
        status: 503,
        headers: Headers::new(),
        body: Vec::new(),
        details: "wasm_fail_stream".to_owned(),
        grpc_status: None,
    })
}

/// Sends a local response the way Envoy does once the callback that asked
/// for it returns: the response headers (`:status`, the filter's headers,
/// `content-length` and a default `content-type` for a body) and body pass
/// through the filter's own response callbacks, which may edit them. A
/// gRPC request gets a trailers-only response instead
/// ([`crate::grpc_reply`]): its headers end the stream.
fn send_local_response(inner: &mut WorkerInner, id: u32, mut local: LocalResponse) -> Outcome {
    let mut headers = Headers::from_pairs([(":status", local.status.to_string())]);
    for (k, v) in local.headers.iter() {
        headers.add(k, v);
    }
    let (grpc, head) = match inner.vm.store.data().contexts.get(&id) {
        Some(Context::Http(http)) => (http.grpc_request, http.head_request),
        _ => (false, false),
    };
    if grpc {
        crate::grpc_reply::trailers_only(
            &mut headers,
            local.status,
            local.grpc_status,
            &local.body,
            head,
        );
        local.body.clear();
    } else if !local.body.is_empty() {
        headers.replace("content-length", local.body.len().to_string());
        if !headers.contains("content-type") {
            headers.add("content-type", "text/plain");
        }
    }
    let n = headers.len() as i32;
    let body_len = local.body.len() as i32;
    let plugin = {
        let Some(Context::Http(http)) = inner.vm.store.data_mut().contexts.get_mut(&id) else {
            return Outcome::new(Decision::Reset);
        };
        http.local_sent = true;
        http.response_headers = Some(headers);
        http.set_reach(StreamMap::ResponseHeaders, Reach::Open);
        http.response_body = None;
        http.plugin
    };
    let eos = i32::from(local.body.is_empty());
    let mut trapped = inner
        .call::<(i32, i32, i32), i32>(id, "proxy_on_response_headers", (id as i32, n, eos))
        .is_err();
    if let Some(Context::Http(http)) = inner.vm.store.data_mut().contexts.get_mut(&id) {
        // A local reply's headers go on whatever the callback answers.
        http.set_reach(StreamMap::ResponseHeaders, Reach::Gone);
    }
    if !trapped && body_len > 0 {
        if let Some(Context::Http(http)) = inner.vm.store.data_mut().contexts.get_mut(&id) {
            http.response_body = Some(local.body.clone());
        }
        trapped = inner
            .call::<(i32, i32, i32), i32>(id, "proxy_on_response_body", (id as i32, body_len, 1))
            .is_err();
    }
    if trapped {
        let mut outcome = Outcome::new(match inner.policy(plugin) {
            FailurePolicy::FailOpen => Decision::LocalResponse(local),
            _ => Decision::Reset,
        });
        outcome.trap = inner.failed.clone();
        return outcome;
    }
    let Some(Context::Http(http)) = inner.vm.store.data().contexts.get(&id) else {
        return Outcome::new(Decision::Reset);
    };
    let mut sent = http.response_headers.clone().unwrap_or_default();
    let status = sent
        .get(":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(local.status);
    sent.remove(":status");
    Outcome::new(Decision::LocalResponse(LocalResponse {
        status,
        headers: sent,
        body: http.response_body.clone().unwrap_or_default(),
        details: local.details,
        grpc_status: local.grpc_status,
    }))
}
