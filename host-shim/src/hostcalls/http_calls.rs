//! `proxy_http_call`: the call is queued on the worker with the calling
//! context; the response (or failure) is delivered to that context by
//! `proxy_on_http_call_response`. As in Envoy, an unknown cluster or a
//! request without `:method`, `:path` and `:authority` is a bad argument.

use wasmtime::{Caller, Linker};

use crate::abi::Status;
use crate::memory::{self, status, HostResult};
use crate::state::{HostState, PendingHttpCall};

pub(super) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, HostState>,
         up: i32,
         us: i32,
         hp: i32,
         hs: i32,
         bp: i32,
         bs: i32,
         tp: i32,
         ts: i32,
         timeout: i32,
         ret: i32| {
            status(http_call(
                &mut c,
                [(up, us), (hp, hs), (bp, bs), (tp, ts)],
                timeout as u32,
                ret,
            ))
        },
    )?;
    Ok(())
}

fn http_call(
    c: &mut Caller<'_, HostState>,
    [upstream, headers, body, trailers]: [(i32, i32); 4],
    timeout_ms: u32,
    ret: i32,
) -> HostResult {
    let cluster = memory::read_str(c, upstream.0, upstream.1)?;
    let headers = memory::read_header_map(c, headers.0, headers.1)?;
    let body = memory::read(c, body.0, body.1)?;
    let trailers = memory::read_header_map(c, trailers.0, trailers.1)?;
    let state = c.data_mut();
    if !state.vm.clusters.contains_key(&cluster) {
        return Err(Status::BadArgument.into());
    }
    if [":method", ":path", ":authority"]
        .iter()
        .any(|k| !headers.contains(k))
    {
        return Err(Status::BadArgument.into());
    }
    // Envoy's `nextHttpCallId`: 4, 8, 12, ...
    let token = state.next_http_call;
    state.next_http_call = state.next_http_call.wrapping_add(4);
    let deadline = state.shared.clock.monotonic_nanos() + u64::from(timeout_ms) * 1_000_000;
    let context_id = state.current;
    state.http_calls.insert(
        token,
        PendingHttpCall {
            context_id,
            cluster,
            headers,
            body,
            trailers,
            timeout_ms,
            deadline,
        },
    );
    state.shared.calls_waiting.notify_one();
    memory::write_u32(c, ret, token)
}
