//! The `drainpipe-shim` binary's command line: errors are one clear line on
//! stderr with a non-zero exit.

use std::process::Command;

fn shim(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drainpipe-shim"))
        .args(args)
        .output()
        .expect("run drainpipe-shim");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn serve_with_a_missing_wasm_file_fails_with_one_line_naming_it() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let (ok, stderr) = shim(&[
        "serve",
        "--wasm",
        "no-such-filter.wasm",
        "--config",
        config,
        "--upstream",
        "http://127.0.0.1:9",
    ]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no-such-filter.wasm"), "{stderr}");
}

#[test]
fn serve_with_invalid_wasm_fails_with_a_load_error() {
    let not_wasm = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let (ok, stderr) = shim(&[
        "serve",
        "--wasm",
        not_wasm,
        "--config",
        not_wasm,
        "--upstream",
        "http://127.0.0.1:9",
    ]);
    assert!(!ok);
    assert!(stderr.contains("not a valid wasm module"), "{stderr}");
}

#[test]
fn drain_rejects_a_bad_timeout() {
    let (ok, stderr) = shim(&[
        "drain",
        "--admin",
        "http://127.0.0.1:9",
        "--timeout",
        "soon",
    ]);
    assert!(!ok);
    assert!(stderr.contains("not a duration"), "{stderr}");
}
