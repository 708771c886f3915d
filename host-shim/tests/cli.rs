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

fn plugin_wasm() -> String {
    std::env::var("DRAINPIPE_WASM").unwrap_or_else(|_| {
        format!(
            "{}/../target/wasm32-wasip1/release/drainpipe.wasm",
            env!("CARGO_MANIFEST_DIR")
        )
    })
}

#[test]
fn serve_with_a_bad_plugin_config_fails_with_the_plugin_error() {
    let dir = std::env::temp_dir().join(format!("drainpipe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bad.json");
    std::fs::write(&config, r#"{"grace_ms": "soon"}"#).unwrap();
    let (ok, stderr) = shim(&[
        "serve",
        "--wasm",
        &plugin_wasm(),
        "--config",
        config.to_str().unwrap(),
        "--upstream",
        "http://127.0.0.1:9",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert!(
        stderr.contains("grace_ms"),
        "the plugin's own error: {stderr}"
    );
}

#[test]
fn serve_on_a_port_in_use_fails_with_one_line() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("drainpipe-cli-port-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ok.json");
    std::fs::write(&config, "{}").unwrap();
    let (ok, stderr) = shim(&[
        "serve",
        "--wasm",
        &plugin_wasm(),
        "--config",
        config.to_str().unwrap(),
        "--upstream",
        "http://127.0.0.1:9",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin",
        "127.0.0.1:0",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    let last = stderr.trim().lines().last().unwrap_or_default().to_string();
    assert!(last.contains(&port.to_string()), "{stderr}");
}

#[test]
fn controller_on_a_port_in_use_fails_with_one_line() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let (ok, stderr) = shim(&["controller", "--listen", &addr]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}
