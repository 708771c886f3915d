//! gRPC calls and streams.
//!
//! Unary calls: `proxy_grpc_call` queues the call on the worker with the
//! calling context, as `proxy_http_call` does; the answer is delivered as
//! Envoy delivers it: the response message by `proxy_on_grpc_receive`
//! (readable as the gRPC receive buffer), a failure by
//! `proxy_on_grpc_close` with its status code (and message, through
//! `proxy_get_status`). `proxy_grpc_cancel` and `proxy_grpc_close` drop a
//! pending call: no callback follows. Tokens are 1 modulo 4 (5, 9, ...), as
//! Envoy's `nextGrpcCallId` gives them.
//!
//! Streams: `proxy_grpc_stream` opens one (tokens 2 modulo 4, as Envoy's
//! `nextGrpcStreamId`: 6, 10, ...), owned by the caller's root context as
//! in Envoy; `proxy_grpc_send` queues a message for the driver
//! ([`crate::Worker::take_grpc_stream_sends`]), `proxy_grpc_close` ends the
//! guest's side, `proxy_grpc_cancel` resets the stream (no callback
//! follows). What the remote side does comes back through
//! [`crate::Worker::deliver_grpc_stream`]. A token of the wrong kind is a
//! bad argument, an unknown one NOT_FOUND, as in Envoy.

use wasmtime::{Caller, Linker};

use crate::abi::Status;
use crate::headers::Headers;
use crate::memory::{self, status, HostResult};
use crate::state::{GrpcStream, HostState, PendingGrpcCall};
use crate::worker::GrpcStreamSend;

/// Envoy's callout ids (`nextGrpcCallId`, `nextGrpcStreamId`): the low two
/// bits tell a unary call (1) from a stream (2).
fn is_stream_token(token: u32) -> bool {
    token & 3 == 2
}

fn is_call_token(token: u32) -> bool {
    token & 3 == 1
}

pub(super) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: Caller<'_, HostState>,
         up: i32,
         us: i32,
         sp: i32,
         ss: i32,
         mp: i32,
         ms: i32,
         hp: i32,
         hs: i32,
         bp: i32,
         bs: i32,
         timeout: i32,
         ret: i32| {
            status(grpc_call(
                &mut c,
                [(up, us), (sp, ss), (mp, ms), (hp, hs), (bp, bs)],
                timeout as u32,
                ret,
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: Caller<'_, HostState>,
         up: i32,
         us: i32,
         sp: i32,
         ss: i32,
         mp: i32,
         ms: i32,
         hp: i32,
         hs: i32,
         ret: i32| {
            status(grpc_stream(
                &mut c,
                [(up, us), (sp, ss), (mp, ms), (hp, hs)],
                ret,
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut c: Caller<'_, HostState>, token: i32, ptr: i32, size: i32, end_stream: i32| {
            status(grpc_send(&mut c, token as u32, ptr, size, end_stream != 0))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |mut c: Caller<'_, HostState>, token: i32| status(cancel(&mut c, token as u32)),
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_close",
        |mut c: Caller<'_, HostState>, token: i32| status(close(&mut c, token as u32)),
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: Caller<'_, HostState>, code_ptr: i32, msg_ptr: i32, size_ptr: i32| {
            status(get_status(&mut c, code_ptr, msg_ptr, size_ptr))
        },
    )?;
    Ok(())
}

/// What a gRPC call or stream names: its cluster, service, method and
/// initial metadata.
struct Target {
    cluster: String,
    service: String,
    method: String,
    metadata: Headers,
}

/// Reads a call's or a stream's [`Target`] (all of it, as Envoy reads its
/// arguments first); an unknown cluster is then a parse failure, as Envoy
/// cannot build a gRPC client for a cluster it lacks.
fn target(
    c: &mut Caller<'_, HostState>,
    [cluster, service, method, metadata]: [(i32, i32); 4],
) -> HostResult<Target> {
    let target = Target {
        cluster: memory::read_str(c, cluster.0, cluster.1)?,
        service: memory::read_str(c, service.0, service.1)?,
        method: memory::read_str(c, method.0, method.1)?,
        metadata: memory::read_header_map(c, metadata.0, metadata.1)?,
    };
    if !c.data().vm.clusters.contains_key(&target.cluster) {
        return Err(Status::ParseFailure.into());
    }
    Ok(target)
}

fn grpc_call(
    c: &mut Caller<'_, HostState>,
    [cluster, service, method, metadata, message]: [(i32, i32); 5],
    timeout_ms: u32,
    ret: i32,
) -> HostResult {
    let Target {
        cluster,
        service,
        method,
        metadata,
    } = target(c, [cluster, service, method, metadata])?;
    let message = memory::read(c, message.0, message.1)?;
    let state = c.data_mut();
    let token = state.next_grpc_call;
    state.next_grpc_call = state.next_grpc_call.wrapping_add(4);
    let deadline = state.shared.clock.monotonic_nanos() + u64::from(timeout_ms) * 1_000_000;
    let context_id = state.current;
    state.grpc_calls.insert(
        token,
        PendingGrpcCall {
            context_id,
            cluster,
            service,
            method,
            metadata,
            message,
            timeout_ms,
            deadline,
        },
    );
    state.shared.calls_waiting.notify_one();
    memory::write_u32(c, ret, token)
}

fn grpc_stream(
    c: &mut Caller<'_, HostState>,
    [cluster, service, method, metadata]: [(i32, i32); 4],
    ret: i32,
) -> HostResult {
    let Target {
        cluster,
        service,
        method,
        metadata,
    } = target(c, [cluster, service, method, metadata])?;
    let state = c.data_mut();
    let root = state.current_root().ok_or(Status::BadArgument)?;
    let token = state.next_grpc_stream;
    state.next_grpc_stream = state.next_grpc_stream.wrapping_add(4);
    state.grpc_streams.insert(
        token,
        GrpcStream {
            root,
            cluster,
            service,
            method,
            metadata,
            outbox: Vec::new(),
            local_closed: false,
            remote_closed: false,
        },
    );
    state.shared.calls_waiting.notify_one();
    memory::write_u32(c, ret, token)
}

/// The open stream `token`: a bad argument for a token that is not a
/// stream's, NOT_FOUND for one that is not open.
fn stream(state: &mut HostState, token: u32) -> HostResult<&mut GrpcStream> {
    if !is_stream_token(token) {
        return Err(Status::BadArgument.into());
    }
    state
        .grpc_streams
        .get_mut(&token)
        .ok_or_else(|| Status::NotFound.into())
}

fn grpc_send(
    c: &mut Caller<'_, HostState>,
    token: u32,
    ptr: i32,
    size: i32,
    end_stream: bool,
) -> HostResult {
    let message = memory::read(c, ptr, size)?;
    let state = c.data_mut();
    let stream = stream(state, token)?;
    // Once the remote side has ended, Envoy's stream is gone: a send goes
    // nowhere, without an error.
    if !stream.remote_closed {
        stream.outbox.push(GrpcStreamSend::Message {
            message,
            end_stream,
        });
        state.shared.calls_waiting.notify_one();
    }
    Ok(())
}

fn cancel(c: &mut Caller<'_, HostState>, token: u32) -> HostResult {
    let state = c.data_mut();
    if is_stream_token(token) {
        stream(state, token)?;
        // Forgotten: the driver resets it, and no callback follows.
        state.grpc_streams.remove(&token);
        state.shared.calls_waiting.notify_one();
        return Ok(());
    }
    drop_call(state, token)
}

fn close(c: &mut Caller<'_, HostState>, token: u32) -> HostResult {
    let state = c.data_mut();
    if !is_stream_token(token) {
        return drop_call(state, token);
    }
    let stream = stream(state, token)?;
    if stream.remote_closed {
        state.grpc_streams.remove(&token);
    } else {
        stream.local_closed = true;
        stream.outbox.push(GrpcStreamSend::Close);
        state.shared.calls_waiting.notify_one();
    }
    Ok(())
}

/// `proxy_grpc_cancel` or `proxy_grpc_close` on a unary call: dropped, no
/// callback follows.
fn drop_call(state: &mut HostState, token: u32) -> HostResult {
    if !is_call_token(token) {
        return Err(Status::BadArgument.into());
    }
    match state.grpc_calls.remove(&token) {
        Some(_) => Ok(()),
        None => Err(Status::NotFound.into()),
    }
}

fn get_status(
    c: &mut Caller<'_, HostState>,
    code_ptr: i32,
    msg_ptr: i32,
    size_ptr: i32,
) -> HostResult {
    let (code, message) = c.data().grpc_status.clone();
    memory::write_u32(c, code_ptr, code)?;
    memory::return_bytes(c, message.as_bytes(), msg_ptr, size_ptr)
}
