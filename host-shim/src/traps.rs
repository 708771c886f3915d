//! A guest trap as Envoy (V8) reports it: `Function: <callback> failed:
//! Uncaught RuntimeError: unreachable`, then, when the module has a `name`
//! section, `Proxy-Wasm plugin in-VM backtrace:` and one line per frame
//! (`  0:  0x18104 - abort`, the module offset and the frame's name, a
//! C++-mangled name (`_ZN...E`, Rust's legacy mangling) demangled as V8's
//! host does, others as they are).

use std::fmt::Write as _;

/// Whether a module's binary has a `name` section (Envoy prints the in-VM
/// backtrace only then).
pub(crate) fn has_name_section(bytes: &[u8]) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(bytes)
        .map_while(Result::ok)
        .any(|payload| {
            matches!(payload, wasmparser::Payload::CustomSection(c) if c.name() == "name")
        })
}

/// V8's words for a trap Wasmtime reports (V8's `WasmTrap*` messages), with
/// its error class. Wasmtime does not tell a remainder by zero from a
/// division by zero (both read as V8's division), nor an out-of-range
/// float-to-integer conversion from a division overflow (both read as the
/// division's).
fn v8_words(trap: wasmtime::Trap) -> (&'static str, &'static str) {
    use wasmtime::Trap as T;
    let runtime = |words| ("RuntimeError", words);
    match trap {
        T::UnreachableCodeReached => runtime("unreachable"),
        T::MemoryOutOfBounds => runtime("memory access out of bounds"),
        T::HeapMisaligned => runtime("operation does not support unaligned accesses"),
        T::TableOutOfBounds => runtime("table index is out of bounds"),
        T::IndirectCallToNull | T::BadSignature => {
            runtime("null function or function signature mismatch")
        }
        T::IntegerOverflow => runtime("divide result unrepresentable"),
        T::IntegerDivisionByZero => runtime("divide by zero"),
        T::BadConversionToInteger => runtime("float unrepresentable in integer range"),
        T::NullReference => runtime("dereferencing a null pointer"),
        T::ArrayOutOfBounds => runtime("array element access out of bounds"),
        T::CastFailure => runtime("illegal cast"),
        T::StackOverflow => ("RangeError", "Maximum call stack size exceeded"),
        _ => runtime("unknown trap"),
    }
}

/// The line Envoy logs (at error) when a call into the guest fails.
pub(crate) fn envoy_failure(callback: &str, error: &wasmtime::Error, names: bool) -> String {
    let mut line = format!("Function: {callback} failed: ");
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(&trap) => {
            let (class, words) = v8_words(trap);
            let _ = write!(line, "Uncaught {class}: {words}");
        }
        // A host function's error or a WASI exit: Wasmtime's own words.
        None => {
            let _ = write!(line, "{error}");
        }
    }
    let frames = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|b| b.frames())
        .unwrap_or_default();
    if names && !frames.is_empty() {
        line.push_str("\nProxy-Wasm plugin in-VM backtrace:");
        for (i, frame) in frames.iter().enumerate() {
            let offset = frame.module_offset().unwrap_or_default();
            let name = demangled(frame.func_name().unwrap_or_default());
            let _ = write!(line, "\n{i:>3}:  {offset:#x} - {name}");
        }
    }
    line
}

/// An Itanium-mangled name demangled (`_ZN3std5panic17h0123E` reads
/// `std::panic::h0123`); any other name as it is.
fn demangled(name: &str) -> String {
    name.strip_prefix("_Z")
        .and_then(|_| cpp_demangle::Symbol::new(name).ok())
        .and_then(|symbol| symbol.demangle().ok())
        .unwrap_or_else(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Engine, Instance, Module, Store};

    const TRAPPING: &str = r#"(module $m
        (func $inner (export "go") unreachable)
        (func $outer (export "outer") call $inner)
        (func (export "div") (result i32) (i32.div_s (i32.const 1) (i32.const 0))))"#;

    fn failure(export: &str, names: bool) -> String {
        let engine = Engine::default();
        let module = Module::new(&engine, TRAPPING).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        let func = instance.get_func(&mut store, export).unwrap();
        let mut results = vec![wasmtime::Val::I32(0); func.ty(&store).results().len()];
        let error = func.call(&mut store, &[], &mut results).unwrap_err();
        envoy_failure("proxy_on_request_headers", &error, names)
    }

    #[test]
    fn a_trap_reads_as_v8s_uncaught_runtime_error() {
        assert_eq!(
            failure("go", false),
            "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"
        );
        assert!(failure("div", false).ends_with("Uncaught RuntimeError: divide by zero"));
    }

    #[test]
    fn with_a_name_section_the_backtrace_lists_frames_youngest_first() {
        let text = failure("outer", true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "Proxy-Wasm plugin in-VM backtrace:");
        assert!(lines[2].starts_with("  0:  0x") && lines[2].ends_with(" - inner"));
        assert!(lines[3].starts_with("  1:  0x") && lines[3].ends_with(" - outer"));
        assert_eq!(lines.len(), 4, "{text}");
    }

    #[test]
    fn only_itanium_names_are_demangled() {
        assert_eq!(
            demangled("_ZN10proxy_wasm10dispatcher10Dispatcher23on_http_request_headers17hc65a1c1d35ebc97fE"),
            "proxy_wasm::dispatcher::Dispatcher::on_http_request_headers::hc65a1c1d35ebc97f"
        );
        let v0 = "_RNvNtCset5xJoy1xWQ_3std7process5abort";
        assert_eq!(demangled(v0), v0);
        assert_eq!(demangled("abort"), "abort");
    }

    #[test]
    fn only_a_module_with_a_name_section_has_one() {
        let empty = b"\0asm\x01\0\0\0".to_vec();
        // A custom section (id 0, 5 bytes) named `name`, empty.
        let named = [&empty[..], b"\0\x05\x04name"].concat();
        assert!(has_name_section(&named));
        assert!(!has_name_section(&empty));
    }
}
