//! Buffers: request and response bodies of the current stream, the VM and
//! plugin configuration, and an http call's response body.
//!
//! Writes follow Envoy's body rules: `start == 0` replaces the first `size`
//! bytes (prepends when `size == 0`), `start >= len` appends, anything else
//! is a bad argument. Configuration and call responses are read-only.

use wasmtime::{Caller, Linker};

use crate::abi::{BufferType, Status};
use crate::memory::{self, status, HostResult};
use crate::state::HostState;

pub(super) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>, ty: i32, start: i32, max: i32, pp: i32, sp: i32| {
            status(get_bytes(&mut c, ty, start, max, pp, sp))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, HostState>, ty: i32, start: i32, size: i32, ptr: i32, len: i32| {
            status(set_bytes(&mut c, ty, start, size, ptr, len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: Caller<'_, HostState>, ty: i32, len_ptr: i32, flags_ptr: i32| {
            status(get_status(&mut c, ty, len_ptr, flags_ptr))
        },
    )?;
    Ok(())
}

/// A copy of the buffer `raw` names.
fn buffer(state: &mut HostState, raw: i32) -> HostResult<Vec<u8>> {
    let ty = BufferType::from_raw(raw).ok_or(Status::BadArgument)?;
    let found = match ty {
        BufferType::VmConfiguration => Some(state.vm.vm_configuration.clone()),
        BufferType::PluginConfiguration => state
            .configuring
            .map(|p| state.vm.plugins[p].configuration.clone()),
        BufferType::HttpCallResponseBody => state.call_response.as_ref().map(|r| r.body.clone()),
        BufferType::RequestBody => state.http()?.request_body.clone(),
        BufferType::ResponseBody => state.http()?.response_body.clone(),
        BufferType::GrpcReceiveBuffer => state.grpc_receive.clone(),
        BufferType::DownstreamData | BufferType::UpstreamData | BufferType::CallData => None,
    };
    found.ok_or_else(|| Status::NotFound.into())
}

fn get_bytes(
    c: &mut Caller<'_, HostState>,
    ty: i32,
    start: i32,
    max: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult {
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    start.checked_add(max).ok_or(Status::BadArgument)?;
    let data = buffer(c.data_mut(), ty)?;
    if start > data.len() {
        return Err(Status::BadArgument.into());
    }
    let end = data.len().min(start + max);
    memory::return_bytes(c, &data[start..end], ptr_ptr, size_ptr)
}

fn set_bytes(
    c: &mut Caller<'_, HostState>,
    ty: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> HostResult {
    let value = memory::read(c, ptr, len)?;
    let ty = BufferType::from_raw(ty).ok_or(Status::BadArgument)?;
    let state = c.data_mut();
    let body = match ty {
        BufferType::RequestBody => &mut state.http()?.request_body,
        BufferType::ResponseBody => &mut state.http()?.response_body,
        BufferType::VmConfiguration
        | BufferType::PluginConfiguration
        | BufferType::HttpCallResponseBody
        | BufferType::GrpcReceiveBuffer => return Err(Status::BadArgument.into()),
        _ => return Err(Status::NotFound.into()),
    };
    let body = body.as_mut().ok_or(Status::NotFound)?;
    let (start, size) = (start as u32 as usize, size as u32 as usize);
    if start == 0 {
        body.drain(..size.min(body.len()));
        body.splice(0..0, value);
    } else if start >= body.len() {
        body.extend_from_slice(&value);
    } else {
        return Err(Status::BadArgument.into());
    }
    Ok(())
}

fn get_status(c: &mut Caller<'_, HostState>, ty: i32, len_ptr: i32, flags_ptr: i32) -> HostResult {
    let len = buffer(c.data_mut(), ty)?.len();
    memory::write_u32(c, len_ptr, len as u32)?;
    memory::write_u32(c, flags_ptr, 0)
}
