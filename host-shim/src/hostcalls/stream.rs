//! Stream control: `proxy_send_local_response`, `proxy_continue_stream`,
//! `proxy_close_stream` (and the 0.2.0 names `proxy_continue_request`,
//! `proxy_continue_response`, `proxy_clear_route_cache`).
//!
//! As in Envoy, a local response is deferred: it is sent once the current
//! callback returns, and then passes through the filter's own response
//! callbacks.

use wasmtime::{Caller, Linker};

use crate::abi::{Status, StreamType};
use crate::memory::{self, status, HostResult};
use crate::state::{HostState, Reach, StreamMap};
use crate::stream::LocalResponse;

pub(super) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, HostState>,
         code: i32,
         dp: i32,
         ds: i32,
         bp: i32,
         bs: i32,
         hp: i32,
         hs: i32,
         grpc: i32| {
            status(send_local_response(
                &mut c,
                code,
                (dp, ds),
                (bp, bs),
                (hp, hs),
                grpc,
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Caller<'_, HostState>, ty: i32| status(continue_stream(&mut c, ty)),
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: Caller<'_, HostState>, ty: i32| status(close_stream(&mut c, ty)),
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_request",
        |mut c: Caller<'_, HostState>| status(continue_stream(&mut c, 0)),
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_response",
        |mut c: Caller<'_, HostState>| status(continue_stream(&mut c, 1)),
    )?;
    linker.func_wrap(
        "env",
        "proxy_clear_route_cache",
        |mut c: Caller<'_, HostState>| status(c.data_mut().http().map(|_| ())),
    )?;
    Ok(())
}

fn send_local_response(
    c: &mut Caller<'_, HostState>,
    code: i32,
    details: (i32, i32),
    body: (i32, i32),
    headers: (i32, i32),
    grpc_status: i32,
) -> HostResult {
    let details = memory::read(c, details.0, details.1)?;
    let body = memory::read(c, body.0, body.1)?;
    let headers = memory::read_header_map(c, headers.0, headers.1)?;
    let http = c.data_mut().http()?;
    if http.local_sent || http.local_response.is_some() {
        // Envoy sends one local reply per stream; later ones are dropped.
        return Ok(());
    }
    http.local_response = Some(LocalResponse {
        status: code as u32,
        headers,
        body,
        details: String::from_utf8_lossy(&details).into_owned(),
        grpc_status: crate::grpc_reply::passed_grpc_status(grpc_status),
    });
    Ok(())
}

fn continue_stream(c: &mut Caller<'_, HostState>, ty: i32) -> HostResult {
    let ty = StreamType::from_raw(ty).ok_or(Status::BadArgument)?;
    let http = c.data_mut().http()?;
    match ty {
        StreamType::Request => http.request_resumed = true,
        StreamType::Response => http.response_resumed = true,
        StreamType::Downstream | StreamType::Upstream => return Err(Status::BadArgument.into()),
    }
    // Envoy takes the request's maps back on either resumption (the request
    // goes on upstream); the response's stay.
    http.set_reach(StreamMap::RequestHeaders, Reach::Gone);
    http.set_reach(StreamMap::RequestTrailers, Reach::Gone);
    Ok(())
}

fn close_stream(c: &mut Caller<'_, HostState>, ty: i32) -> HostResult {
    let ty = StreamType::from_raw(ty).ok_or(Status::BadArgument)?;
    let http = c.data_mut().http()?;
    match ty {
        StreamType::Request | StreamType::Response => http.reset = true,
        StreamType::Downstream | StreamType::Upstream => return Err(Status::BadArgument.into()),
    }
    Ok(())
}
