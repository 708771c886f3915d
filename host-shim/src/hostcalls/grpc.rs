//! gRPC calls (unary): `proxy_grpc_call` queues the call on the worker with
//! the calling context, as `proxy_http_call` does; the answer is delivered
//! as Envoy delivers it: the response message by `proxy_on_grpc_receive`
//! (readable as the gRPC receive buffer), a failure by
//! `proxy_on_grpc_close` with its status code (and message, through
//! `proxy_get_status`). `proxy_grpc_cancel` and `proxy_grpc_close` drop a
//! pending call: no callback follows. Tokens are odd, as in Envoy (its
//! streams take the even ones). gRPC streams are not implemented.

use wasmtime::{Caller, Linker};

use crate::abi::Status;
use crate::memory::{self, status, HostResult};
use crate::state::{HostState, PendingGrpcCall};

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
    for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
        linker.func_wrap("env", name, |mut c: Caller<'_, HostState>, token: i32| {
            status(drop_call(&mut c, token as u32))
        })?;
    }
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: Caller<'_, HostState>, code_ptr: i32, msg_ptr: i32, size_ptr: i32| {
            status(get_status(&mut c, code_ptr, msg_ptr, size_ptr))
        },
    )?;
    Ok(())
}

fn grpc_call(
    c: &mut Caller<'_, HostState>,
    [cluster, service, method, metadata, message]: [(i32, i32); 5],
    timeout_ms: u32,
    ret: i32,
) -> HostResult {
    let cluster = memory::read_str(c, cluster.0, cluster.1)?;
    let service = memory::read_str(c, service.0, service.1)?;
    let method = memory::read_str(c, method.0, method.1)?;
    let metadata = memory::read_header_map(c, metadata.0, metadata.1)?;
    let message = memory::read(c, message.0, message.1)?;
    let state = c.data_mut();
    if !state.vm.clusters.contains_key(&cluster) {
        // Envoy cannot build a gRPC client for a cluster it does not have.
        return Err(Status::ParseFailure.into());
    }
    let token = state.next_grpc_call;
    state.next_grpc_call += 2;
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

fn drop_call(c: &mut Caller<'_, HostState>, token: u32) -> HostResult {
    match c.data_mut().grpc_calls.remove(&token) {
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
