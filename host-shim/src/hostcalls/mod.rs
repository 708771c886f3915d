//! Host functions, one module per area of the proxy-wasm ABI. Each module's
//! `add` links its functions into the `env` namespace.

mod buffers;
mod context;
mod grpc;
mod header_maps;
mod http_calls;
mod logging;
mod metrics;
mod properties;
mod shared_data;
mod stream;
mod timers;

use wasmtime::Linker;

use crate::state::HostState;

/// Links every proxy-wasm host function.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    logging::add(linker)?;
    header_maps::add(linker)?;
    buffers::add(linker)?;
    shared_data::add(linker)?;
    metrics::add(linker)?;
    timers::add(linker)?;
    http_calls::add(linker)?;
    grpc::add(linker)?;
    properties::add(linker)?;
    stream::add(linker)?;
    context::add(linker)?;
    Ok(())
}
