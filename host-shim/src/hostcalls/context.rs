//! Context functions: `proxy_set_effective_context`, `proxy_done`, and
//! `proxy_call_foreign_function` (the shim registers no foreign function, so
//! every name is NOT_FOUND, as Envoy answers for an unknown one).

use wasmtime::{Caller, Linker};

use crate::abi::Status;
use crate::memory::{status, HostResult};
use crate::state::{Context, HostState};

pub(super) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Caller<'_, HostState>, id: i32| status(set_effective(&mut c, id as u32)),
    )?;
    linker.func_wrap("env", "proxy_done", |mut c: Caller<'_, HostState>| {
        status(done(&mut c))
    })?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_c: Caller<'_, HostState>, _np: i32, _ns: i32, _ap: i32, _as: i32, _rp: i32, _rs: i32| {
            Ok(Status::NotFound.code())
        },
    )?;
    Ok(())
}

fn set_effective(c: &mut Caller<'_, HostState>, id: u32) -> HostResult {
    let state = c.data_mut();
    if !state.contexts.contains_key(&id) {
        return Err(Status::BadArgument.into());
    }
    state.current = id;
    Ok(())
}

fn done(c: &mut Caller<'_, HostState>) -> HostResult {
    let state = c.data_mut();
    let root = state.current_root().ok_or(Status::NotFound)?;
    match state.contexts.get_mut(&root) {
        Some(Context::Root(r)) => {
            r.done = true;
            Ok(())
        }
        _ => Err(Status::NotFound.into()),
    }
}
