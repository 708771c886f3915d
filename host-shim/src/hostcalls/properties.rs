//! Properties: a subset of Envoy's attributes, with its binary encodings
//! (strings as bytes, integers as 8-byte little-endian, maps in the header
//! map serialization). A path is its segments joined by NUL bytes. Values
//! the guest sets are readable back from the same context.

use wasmtime::{Caller, Linker};

use crate::abi::Status;
use crate::memory::{self, status, HostResult};
use crate::state::{Context, HostState};

pub(super) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, HostState>, pp: i32, ps: i32, rp: i32, rs: i32| {
            status(get(&mut c, pp, ps, rp, rs))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Caller<'_, HostState>, pp: i32, ps: i32, vp: i32, vs: i32| {
            status(set(&mut c, pp, ps, vp, vs))
        },
    )?;
    Ok(())
}

fn get(c: &mut Caller<'_, HostState>, pp: i32, ps: i32, rp: i32, rs: i32) -> HostResult {
    let path = memory::read(c, pp, ps)?;
    let value = lookup(c.data(), &path).ok_or(Status::NotFound)?;
    memory::return_bytes(c, &value, rp, rs)
}

fn set(c: &mut Caller<'_, HostState>, pp: i32, ps: i32, vp: i32, vs: i32) -> HostResult {
    let path = memory::read(c, pp, ps)?;
    let value = memory::read(c, vp, vs)?;
    let state = c.data_mut();
    let current = state.current;
    match state.contexts.get_mut(&current) {
        Some(Context::Http(h)) => {
            h.properties.insert(path, value);
            Ok(())
        }
        _ => Err(Status::BadArgument.into()),
    }
}

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// The value of the property at `path`, or `None` when it does not exist.
pub(crate) fn lookup(state: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    let segments: Vec<&str> = path
        .split(|&b| b == 0)
        .map(|s| std::str::from_utf8(s).unwrap_or(""))
        .collect();
    let plugin = &state.vm.plugins[state.current_plugin()?];
    match segments.as_slice() {
        ["plugin_name"] => return Some(plugin.name.clone().into_bytes()),
        ["plugin_root_id"] => return Some(plugin.root_id.clone().into_bytes()),
        ["plugin_vm_id"] => return Some(state.vm.vm_id.clone().into_bytes()),
        _ => {}
    }
    let Some(Context::Http(h)) = state.contexts.get(&state.current) else {
        return None;
    };
    if let Some(v) = h.properties.get(path) {
        return Some(v.clone());
    }
    let req = h.request_headers.as_ref();
    let header = |name: &str| req.and_then(|r| r.get_bytes(name)).map(<[u8]>::to_vec);
    match segments.as_slice() {
        ["request", "path"] => header(":path"),
        ["request", "url_path"] => {
            header(":path").map(|p| p.split(|&b| b == b'?').next().unwrap_or(&[]).to_vec())
        }
        ["request", "host"] => header(":authority"),
        ["request", "method"] => header(":method"),
        ["request", "scheme"] => header(":scheme"),
        ["request", "id"] => header("x-request-id"),
        ["request", "protocol"] => Some(b"HTTP/1.1".to_vec()),
        ["request", "time"] => Some(int(h.start_unix_nanos as i64)),
        ["request", "duration"] => {
            let now = state.shared.clock.unix_nanos();
            Some(int(now.saturating_sub(h.start_unix_nanos) as i64))
        }
        ["request", "headers"] => req.map(|r| r.serialize()),
        ["request", "headers", name] => header(name),
        ["response", "code"] => h
            .response_headers
            .as_ref()?
            .get(":status")?
            .parse::<i64>()
            .ok()
            .map(int),
        ["response", "headers"] => h.response_headers.as_ref().map(|r| r.serialize()),
        ["response", "headers", name] => h
            .response_headers
            .as_ref()?
            .get_bytes(name)
            .map(<[u8]>::to_vec),
        ["connection", "id"] => Some(h.connection_id.to_le_bytes().to_vec()),
        ["source", "address"] => h.downstream.map(|a| a.to_string().into_bytes()),
        ["source", "port"] => h.downstream.map(|a| int(i64::from(a.port()))),
        _ => None,
    }
}
