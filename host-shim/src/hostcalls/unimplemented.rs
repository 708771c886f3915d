//! ABI functions the shim does not implement (gRPC streams): linked with the signature the module imports them
//! with, they return UNIMPLEMENTED and are logged once per host.

use wasmtime::{ExternType, Linker, Module, Val, ValType};

use crate::abi::Status;
use crate::state::HostState;

/// Functions of proxy-wasm 0.2.x the shim answers with UNIMPLEMENTED.
pub(crate) const UNIMPLEMENTED: &[&str] = &["proxy_grpc_stream", "proxy_grpc_send"];

pub(super) fn add(linker: &mut Linker<HostState>, module: &Module) -> wasmtime::Result<()> {
    for import in module.imports() {
        if import.module() != "env" || !UNIMPLEMENTED.contains(&import.name()) {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let name = import.name().to_owned();
        let kinds: Vec<ValType> = ty.results().collect();
        linker.func_new("env", import.name(), ty, move |caller, _params, results| {
            caller.data().report_unimplemented(&name);
            for (slot, kind) in results.iter_mut().zip(&kinds) {
                *slot = match kind {
                    ValType::I64 => Val::I64(Status::Unimplemented.code().into()),
                    _ => Val::I32(Status::Unimplemented.code()),
                };
            }
            Ok(())
        })?;
    }
    Ok(())
}
