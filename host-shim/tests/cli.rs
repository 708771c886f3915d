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

/// `serve` with `wasm`, the plugin configuration file `config` and
/// `upstream`, and `extra` arguments.
fn serve(wasm: &str, config: &str, upstream: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "serve",
        "--wasm",
        wasm,
        "--config",
        config,
        "--upstream",
        upstream,
    ];
    args.extend_from_slice(extra);
    shim(&args)
}

#[test]
fn serve_with_a_missing_wasm_file_fails_with_one_line_naming_it() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let (ok, stderr) = serve("no-such-filter.wasm", config, "http://127.0.0.1:9", &[]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no-such-filter.wasm"), "{stderr}");
}

#[test]
fn serve_with_invalid_wasm_fails_with_a_load_error() {
    let not_wasm = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let (ok, stderr) = serve(not_wasm, not_wasm, "http://127.0.0.1:9", &[]);
    assert!(!ok);
    assert!(stderr.contains("not a valid wasm module"), "{stderr}");
}

#[test]
fn serve_with_an_upstream_not_http_or_h2c_fails_with_one_line_naming_it() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    for upstream in ["h2c://", "ftp://127.0.0.1:9", "127.0.0.1:9"] {
        let (ok, stderr) = serve("no-such-filter.wasm", config, upstream, &[]);
        assert!(!ok, "{upstream}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&format!("{upstream:?}")), "{stderr}");
        assert!(stderr.contains("h2c://HOST:PORT"), "{stderr}");
    }
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

/// `serve` with the plugin, a traffic configuration of `config`, and
/// `extra` arguments; the configuration lives in a scratch directory.
fn serve_with(config: &str, extra: &[&str]) -> (bool, String) {
    let dir = drainpipe_tests::envoy::Scratch::new("cli").unwrap();
    let path = dir.path().join("traffic.json");
    std::fs::write(&path, config).unwrap();
    serve(
        &plugin_wasm(),
        path.to_str().unwrap(),
        "http://127.0.0.1:9",
        extra,
    )
}

#[test]
fn serve_with_a_bad_plugin_config_fails_with_the_plugin_error() {
    let (ok, stderr) = serve_with(r#"{"grace_ms": "soon"}"#, &[]);
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
    let listen = format!("127.0.0.1:{port}");
    let (ok, stderr) = serve_with("{}", &["--listen", &listen, "--admin", "127.0.0.1:0"]);
    assert!(!ok);
    let last = stderr.trim().lines().last().unwrap_or_default().to_string();
    assert!(last.contains(&port.to_string()), "{stderr}");
}

#[test]
fn serve_keeps_the_compiled_module_in_its_compile_cache() {
    let dir = drainpipe_tests::envoy::Scratch::new("compile-cache").unwrap();
    let cache = dir.path().join("cache");
    // The port is taken: serve compiles the module, then fails to listen.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let cache_arg = cache.to_str().unwrap();
    let args = ["--listen", &listen, "--compile-cache", cache_arg];
    let (ok, stderr) = serve_with("{}", &args);
    assert!(!ok, "{stderr}");
    fn files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| match e.path().is_dir() {
                    true => files(&e.path()),
                    false => 1,
                })
                .sum()
        })
    }
    assert!(files(&cache) > 0, "nothing cached in {}", cache.display());
    let (ok, stderr) = serve_with(
        "{}",
        &["--compile-cache", "/dev/null/cache", "--no-compile-cache"],
    );
    assert!(!ok);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
