//! Loading modules: ABI markers, imports the shim lacks, the start sequence
//! and bad guest pointers.

mod support;

use drainpipe_shim::{Host, LoadError, LogSource, PluginConfig, StartError, Wasm};
use support::wat_module;

fn host(wat: Vec<u8>) -> Result<Host, LoadError> {
    Host::builder(Wasm::from_bytes(&wat)?)
        .plugin(PluginConfig::new("p", "cfg"))
        .build()
}

#[test]
fn module_without_abi_marker_is_rejected() {
    let wat = br#"(module (memory (export "memory") 1)
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0)))"#;
    let err = Wasm::from_bytes(wat).err().expect("no marker must fail");
    assert!(
        matches!(&err, LoadError::AbiVersion { found } if found.is_empty()),
        "{err}"
    );
    assert!(err.to_string().contains("proxy_abi_version_0_2_1"), "{err}");
}

#[test]
fn unsupported_abi_version_is_rejected_by_name() {
    let wat = br#"(module (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_1_0"))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0)))"#;
    let err = Wasm::from_bytes(wat).err().expect("0.1.0 must fail");
    assert!(err.to_string().contains("proxy_abi_version_0_1_0"), "{err}");
}

#[test]
fn invalid_wasm_is_a_compile_error() {
    let err = Wasm::from_bytes(b"\0asm garbage")
        .err()
        .expect("garbage must fail");
    assert!(matches!(err, LoadError::Compile(_)), "{err}");
    // Wasmtime's error is kept as the source, not flattened into the text.
    let source = std::error::Error::source(&err).expect("the compile error keeps its cause");
    assert!(!source.to_string().is_empty());
}

#[test]
fn module_importing_a_function_the_shim_lacks_is_a_load_error_naming_it() {
    let wat = wat_module(
        r#"(import "env" "proxy_teleport" (func (param i32) (result i32)))"#,
        "",
    );
    let err = host(wat).err().expect("unknown import must fail");
    match &err {
        LoadError::MissingImport { module, name } => {
            assert_eq!((module.as_str(), name.as_str()), ("env", "proxy_teleport"));
        }
        other => panic!("expected MissingImport, got {other}"),
    }
    assert_eq!(
        err.to_string(),
        "the module imports env.proxy_teleport, which the shim does not provide"
    );
}

#[test]
fn grpc_send_to_a_call_token_is_a_bad_argument_and_to_no_open_stream_not_found() {
    // As in Envoy: token 1 is of a unary call's kind (BadArgument, 2), token
    // 2 of a stream's, but none is open (NotFound, 1). on_vm_start succeeds
    // only if both calls answer so.
    let wat = wat_module(
        r#"(import "env" "proxy_grpc_send" (func $send (param i32 i32 i32 i32) (result i32)))"#,
        r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32)
              (i32.and
                (i32.eq (call $send (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 1)) (i32.const 2))
                (i32.eq (call $send (i32.const 2) (i32.const 0) (i32.const 0) (i32.const 1)) (i32.const 1))))"#,
    );
    let host = host(wat).expect("load");
    host.worker().expect("both calls answered as Envoy does");
}

#[test]
fn start_sequence_runs_initialize_then_context_create_vm_start_configure() {
    let wat = wat_module(
        r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
           (import "env" "proxy_get_buffer_bytes"
               (func $buf (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 100) "initialize")
           (data (i32.const 120) "context_create")
           (data (i32.const 140) "vm_start")
           (data (i32.const 160) "configure")
           (func (export "_initialize") (drop (call $log (i32.const 2) (i32.const 100) (i32.const 10))))
           (func (export "proxy_on_context_create") (param i32 i32)
               (drop (call $log (i32.const 2) (i32.const 120) (i32.const 14))))
           (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
               (drop (call $log (i32.const 2) (i32.const 140) (i32.const 8)))
               (i32.const 1))
           (func (export "proxy_on_configure") (param $ctx i32) (param $size i32) (result i32)
               (drop (call $log (i32.const 2) (i32.const 160) (i32.const 9)))
               ;; log the plugin configuration it reads back (size 3: "cfg")
               (drop (call $buf (i32.const 7) (i32.const 0) (local.get $size)
                               (i32.const 200) (i32.const 204)))
               (drop (call $log (i32.const 2) (i32.load (i32.const 200)) (i32.load (i32.const 204))))
               (i32.eq (local.get $size) (i32.const 3)))"#,
    );
    let host = host(wat).expect("load");
    host.worker().expect("start");
    let lines: Vec<String> = host
        .log()
        .records()
        .into_iter()
        .filter(|r| {
            r.source == LogSource::Plugin("p".into())
                || r.source == LogSource::Plugin(String::new())
        })
        .map(|r| r.message)
        .collect();
    assert_eq!(
        lines,
        [
            "initialize",
            "context_create",
            "vm_start",
            "configure",
            "cfg"
        ]
    );
}

#[test]
fn configure_returning_false_fails_the_worker_start() {
    let wat = wat_module(
        "",
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 0))"#,
    );
    let err = host(wat).expect("load").worker().err().expect("must fail");
    assert!(
        matches!(err, StartError::Configure { ref plugin } if plugin == "p"),
        "{err}"
    );
}

#[test]
fn bad_guest_pointer_returns_invalid_memory_access_not_a_host_panic() {
    // proxy_log reading past the end of memory, and a return pointer past
    // the end, both answer InvalidMemoryAccess (6).
    let wat = wat_module(
        r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
           (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))"#,
        r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32)
              (i32.and
                (i32.eq (call $log (i32.const 2) (i32.const 65530) (i32.const 100)) (i32.const 6))
                (i32.eq (call $now (i32.const -4)) (i32.const 6))))"#,
    );
    host(wat)
        .expect("load")
        .worker()
        .expect("both calls answered 6");
}
