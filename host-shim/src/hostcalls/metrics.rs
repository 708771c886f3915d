//! Metrics: define, increment, record, get, with Envoy's rejections
//! (a counter incremented by 0 or less, a histogram read or incremented).

use wasmtime::{Caller, Linker};

use crate::abi::{MetricKind, Status};
use crate::memory::{self, status, HostResult};
use crate::state::HostState;

pub(super) fn add(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, HostState>, kind: i32, np: i32, ns: i32, ret: i32| {
            status(define(&mut c, kind, np, ns, ret))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: Caller<'_, HostState>, id: i32, offset: i64| {
            let state = c.data_mut();
            status(
                state
                    .metric_ids
                    .increment(&state.shared.metrics, id as u32, offset)
                    .map_err(Into::into),
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: Caller<'_, HostState>, id: i32, value: i64| {
            let state = c.data_mut();
            status(
                state
                    .metric_ids
                    .record(&state.shared.metrics, id as u32, value as u64)
                    .map_err(Into::into),
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Caller<'_, HostState>, id: i32, ret: i32| status(get(&mut c, id, ret)),
    )?;
    Ok(())
}

fn define(c: &mut Caller<'_, HostState>, kind: i32, np: i32, ns: i32, ret: i32) -> HostResult {
    let kind = MetricKind::from_raw(kind).ok_or(Status::BadArgument)?;
    let name = memory::read_str(c, np, ns)?;
    let state = c.data_mut();
    let id = state.metric_ids.define(&state.shared.metrics, kind, &name);
    memory::write_u32(c, ret, id)
}

fn get(c: &mut Caller<'_, HostState>, id: i32, ret: i32) -> HostResult {
    let state = c.data();
    let value = state.metric_ids.get(&state.shared.metrics, id as u32)?;
    memory::write_u64(c, ret, value)
}
