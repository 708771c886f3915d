//! `proxy_log` and `proxy_get_log_level`.

use wasmtime::{Caller, Linker};

use crate::abi::{LogLevel, Status};
use crate::logs::LogSource;
use crate::memory::{self, status, HostResult};
use crate::state::HostState;

pub(super) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
            status(log(&mut c, level, ptr, len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Caller<'_, HostState>, ret: i32| {
            let level = c.data().vm.log_level as u32;
            status(memory::write_u32(&mut c, ret, level))
        },
    )?;
    Ok(())
}

fn log(c: &mut Caller<'_, HostState>, level: i32, ptr: i32, len: i32) -> HostResult {
    let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
    let message = String::from_utf8_lossy(&memory::read(c, ptr, len)?).into_owned();
    let state = c.data();
    if level < state.vm.log_level {
        return Ok(());
    }
    let plugin = state
        .current_plugin()
        .map(|p| state.vm.plugins[p].name.clone())
        .unwrap_or_default();
    state.log(level, LogSource::Plugin(plugin), message);
    Ok(())
}
