//! Header maps: request and response headers and trailers of the current
//! stream, the headers and trailers of an http call's response, and a gRPC
//! stream's initial and trailing metadata (read-only, in their callbacks).
//!
//! As in Envoy, a stream's map is there only for the callback that delivers
//! it (and while that direction is paused), read-only in `proxy_on_log`
//! ([`Reach`]); a map that is not there (response headers while the request
//! is decoded, request headers once they went upstream, any stream map in a
//! root context) is a bad argument, but a read of all its pairs gives an
//! empty map; a missing key is NOT_FOUND; keys are lowercased.

use wasmtime::{Caller, Linker};

use crate::abi::{MapType, Status};
use crate::headers::Headers;
use crate::memory::{self, status, HostError, HostResult};
use crate::state::{HostState, Reach, StreamMap};

pub(super) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, HostState>, map: i32, ptr_ptr: i32, size_ptr: i32| {
            status(get_pairs(&mut c, map, ptr_ptr, size_ptr))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, HostState>, map: i32, ptr: i32, size: i32| {
            status(set_pairs(&mut c, map, ptr, size))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: Caller<'_, HostState>, map: i32, ret: i32| status(get_size(&mut c, map, ret)),
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>,
         map: i32,
         key_ptr: i32,
         key_size: i32,
         ptr_ptr: i32,
         size_ptr: i32| {
            status(get_value(&mut c, map, key_ptr, key_size, ptr_ptr, size_ptr))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, kp: i32, ks: i32, vp: i32, vs: i32| {
            status(edit(&mut c, map, kp, ks, Some((vp, vs)), Edit::Add))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, kp: i32, ks: i32, vp: i32, vs: i32| {
            status(edit(&mut c, map, kp, ks, Some((vp, vs)), Edit::Replace))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, HostState>, map: i32, kp: i32, ks: i32| {
            status(edit(&mut c, map, kp, ks, None, Edit::Remove))
        },
    )?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Edit {
    Add,
    Replace,
    Remove,
}

/// What a host call does with a map.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Read,
    Edit,
}

/// The map `raw` names, for reading or editing: a bad argument when it is
/// not there in this callback (see [`Reach`]).
fn map_mut(state: &mut HostState, raw: i32, usage: Use) -> HostResult<&mut Headers> {
    let map = MapType::from_raw(raw).ok_or(Status::BadArgument)?;
    let stream_map = match map {
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => {
            let response = state.call_response.as_mut().ok_or(Status::BadArgument)?;
            return Ok(if map == MapType::HttpCallResponseHeaders {
                &mut response.headers
            } else {
                &mut response.trailers
            });
        }
        // A gRPC stream's metadata, readable only, and only in the callback
        // that delivers it (Envoy has no editable map of that type).
        MapType::GrpcInitialMetadata | MapType::GrpcTrailingMetadata => {
            let metadata = match map {
                MapType::GrpcInitialMetadata => &mut state.grpc_initial_metadata,
                _ => &mut state.grpc_trailing_metadata,
            };
            return match (metadata.as_mut(), usage) {
                (Some(metadata), Use::Read) => Ok(metadata),
                _ => Err(Status::BadArgument.into()),
            };
        }
        MapType::RequestHeaders => StreamMap::RequestHeaders,
        MapType::RequestTrailers => StreamMap::RequestTrailers,
        MapType::ResponseHeaders => StreamMap::ResponseHeaders,
        MapType::ResponseTrailers => StreamMap::ResponseTrailers,
    };
    let http = state.http()?;
    match (http.reach(stream_map), usage) {
        (Reach::Open, _) | (Reach::ReadOnly, Use::Read) => {}
        _ => return Err(Status::BadArgument.into()),
    }
    let slot = match stream_map {
        StreamMap::RequestHeaders => &mut http.request_headers,
        StreamMap::RequestTrailers => &mut http.request_trailers,
        StreamMap::ResponseHeaders => &mut http.response_headers,
        StreamMap::ResponseTrailers => &mut http.response_trailers,
    };
    slot.as_mut().ok_or_else(|| Status::BadArgument.into())
}

fn get_pairs(c: &mut Caller<'_, HostState>, map: i32, ptr_ptr: i32, size_ptr: i32) -> HostResult {
    // Envoy answers a read of all pairs of a map that is not there (of a
    // known type) with an empty map, and an empty map with no bytes at all.
    let data = match map_mut(c.data_mut(), map, Use::Read) {
        Ok(headers) if !headers.is_empty() => headers.serialize(),
        Ok(_) => Vec::new(),
        Err(HostError::Status(Status::BadArgument)) if MapType::from_raw(map).is_some() => {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    memory::return_bytes(c, &data, ptr_ptr, size_ptr)
}

fn set_pairs(c: &mut Caller<'_, HostState>, map: i32, ptr: i32, size: i32) -> HostResult {
    let headers = memory::read_header_map(c, ptr, size)?;
    *map_mut(c.data_mut(), map, Use::Edit)? = headers;
    Ok(())
}

fn get_size(c: &mut Caller<'_, HostState>, map: i32, ret: i32) -> HostResult {
    // Envoy looks the map up as for an edit here.
    let size = map_mut(c.data_mut(), map, Use::Edit)?.serialize().len();
    memory::write_u32(c, ret, size as u32)
}

fn get_value(
    c: &mut Caller<'_, HostState>,
    map: i32,
    key_ptr: i32,
    key_size: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HostResult {
    let key = memory::read(c, key_ptr, key_size)?;
    let key = String::from_utf8_lossy(&key);
    let value = map_mut(c.data_mut(), map, Use::Read)?
        .get_bytes(&key)
        .map(<[u8]>::to_vec)
        .ok_or(Status::NotFound)?;
    memory::return_bytes(c, &value, ptr_ptr, size_ptr)
}

fn edit(
    c: &mut Caller<'_, HostState>,
    map: i32,
    key_ptr: i32,
    key_size: i32,
    value: Option<(i32, i32)>,
    op: Edit,
) -> HostResult {
    let key = memory::read(c, key_ptr, key_size)?;
    let key = String::from_utf8_lossy(&key).into_owned();
    let value = match value {
        Some((ptr, size)) => memory::read(c, ptr, size)?,
        None => Vec::new(),
    };
    let headers = map_mut(c.data_mut(), map, Use::Edit)?;
    match op {
        // Where Envoy's header map puts them: a replaced key moves to the end.
        Edit::Add => headers.add_in_place(&key, value),
        Edit::Replace => headers.replace_moving(&key, value),
        Edit::Remove => headers.remove(&key),
    }
    Ok(())
}
