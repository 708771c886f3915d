//! Time and ticks: `proxy_get_current_time_nanoseconds` reads the shim's
//! clock; `proxy_set_tick_period_milliseconds` arms the root context's tick,
//! first due one period from now (0 disarms it).

use wasmtime::{Caller, Linker};

use crate::abi::Status;
use crate::memory::{self, status, HostResult};
use crate::state::{Context, HostState};

pub(super) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, HostState>, ret: i32| {
            let now = c.data().shared.clock.unix_nanos();
            status(memory::write_u64(&mut c, ret, now))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_, HostState>, period: i32| status(set_tick(&mut c, period as u32)),
    )?;
    Ok(())
}

fn set_tick(c: &mut Caller<'_, HostState>, period_ms: u32) -> HostResult {
    let state = c.data_mut();
    let now = state.shared.clock.monotonic_nanos();
    let root = state.current_root().ok_or(Status::BadArgument)?;
    let Some(Context::Root(root)) = state.contexts.get_mut(&root) else {
        return Err(Status::BadArgument.into());
    };
    root.tick_period_ms = period_ms;
    root.next_tick = (period_ms > 0).then(|| now + u64::from(period_ms) * 1_000_000);
    Ok(())
}
