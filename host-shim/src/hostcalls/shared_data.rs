//! Shared data (`proxy_get_shared_data`, `proxy_set_shared_data`) and shared
//! queues, keyed by the VM's vm_id; see [`crate::SharedData`] for the CAS
//! rules.

use wasmtime::{Caller, Linker};

use crate::abi::Status;
use crate::memory::{self, status, HostResult};
use crate::shared_data::QueueOwner;
use crate::state::HostState;

pub(super) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, HostState>, kp: i32, ks: i32, pp: i32, sp: i32, cas_ptr: i32| {
            status(get(&mut c, kp, ks, pp, sp, cas_ptr))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, HostState>, kp: i32, ks: i32, vp: i32, vs: i32, cas: i32| {
            status(set(&mut c, kp, ks, vp, vs, cas))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Caller<'_, HostState>, np: i32, ns: i32, ret: i32| {
            status(register(&mut c, np, ns, ret))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Caller<'_, HostState>, vp: i32, vs: i32, np: i32, ns: i32, ret: i32| {
            status(resolve(&mut c, vp, vs, np, ns, ret))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Caller<'_, HostState>, token: i32, vp: i32, vs: i32| {
            status(enqueue(&mut c, token, vp, vs))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Caller<'_, HostState>, token: i32, pp: i32, sp: i32| {
            status(dequeue(&mut c, token, pp, sp))
        },
    )?;
    Ok(())
}

fn get(
    c: &mut Caller<'_, HostState>,
    kp: i32,
    ks: i32,
    pp: i32,
    sp: i32,
    cas_ptr: i32,
) -> HostResult {
    let key = memory::read(c, kp, ks)?;
    let state = c.data();
    let (value, cas) = state
        .shared
        .data
        .get(&state.vm.vm_id, &key)
        .ok_or(Status::NotFound)?;
    memory::write_u32(c, cas_ptr, cas)?;
    memory::return_bytes(c, &value, pp, sp)
}

fn set(c: &mut Caller<'_, HostState>, kp: i32, ks: i32, vp: i32, vs: i32, cas: i32) -> HostResult {
    let key = memory::read(c, kp, ks)?;
    let value = memory::read(c, vp, vs)?;
    let state = c.data();
    state
        .shared
        .data
        .set(&state.vm.vm_id, &key, &value, cas as u32)?;
    Ok(())
}

fn register(c: &mut Caller<'_, HostState>, np: i32, ns: i32, ret: i32) -> HostResult {
    let name = memory::read(c, np, ns)?;
    let state = c.data();
    let owner = QueueOwner {
        worker: state.worker,
        context_id: state.current_root().ok_or(Status::BadArgument)?,
    };
    let token = state
        .shared
        .data
        .register_queue(&state.vm.vm_id, &name, owner);
    memory::write_u32(c, ret, token)
}

fn resolve(
    c: &mut Caller<'_, HostState>,
    vp: i32,
    vs: i32,
    np: i32,
    ns: i32,
    ret: i32,
) -> HostResult {
    let vm_id = memory::read_str(c, vp, vs)?;
    let name = memory::read(c, np, ns)?;
    let token = c.data().shared.data.resolve_queue(&vm_id, &name)?;
    memory::write_u32(c, ret, token)
}

fn enqueue(c: &mut Caller<'_, HostState>, token: i32, vp: i32, vs: i32) -> HostResult {
    let value = memory::read(c, vp, vs)?;
    c.data().shared.data.enqueue(token as u32, &value)?;
    Ok(())
}

fn dequeue(c: &mut Caller<'_, HostState>, token: i32, pp: i32, sp: i32) -> HostResult {
    let value = c.data().shared.data.dequeue(token as u32)?;
    memory::return_bytes(c, &value, pp, sp)
}
