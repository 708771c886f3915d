//! The `drainpipe` binary's commands other than `run` under load: bad
//! arguments are one line and a non-zero exit; `drain --wait` (the preStop
//! client) and `drain --wait --no-start` (the LLM server's preStop) against
//! a real Envoy; the controller's errors; the static build images ship
//! (`cargo xtask dist`): linked statically, and draining a real Envoy.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use drainpipe_tests::envoy::upstream_and_envoy;
use drainpipe_tests::load::{assert_whole_stream, open_stream, read_to_end, supervised};
use drainpipe_tests::ops::{drainpipe_bin, static_drainpipe_bin};
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm};
use serde_json::json;

fn drainpipe(args: &[&str]) -> Output {
    Command::new(drainpipe_bin().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run drainpipe")
}

/// Fails with exactly one line on stderr and `code`; the line.
fn one_line_failure(args: &[&str], code: i32) -> String {
    let out = drainpipe(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("drainpipe: "), "{stderr}");
    stderr
}

#[test]
fn bad_arguments_are_one_line_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["run"], "<ENVOY_COMMAND>"),
        (&["run", "--timout", "5s", "--", "envoy"], "'--timeout'"),
        (&["run", "--timeout", "soon", "--", "envoy"], "--timeout"),
        (&["run", "--timeout", "0s", "--", "envoy"], "more than zero"),
        (
            &["run", "--drain-url", "ftp://x/drain", "--", "envoy"],
            "http://",
        ),
        (
            &["run", "--envoy-admin", "not a url", "--", "envoy"],
            "--envoy-admin",
        ),
        (&["drain", "--no-start"], "--wait"),
        (&["controller", "--listen", "nowhere"], "--listen"),
        (&["controller", "--linger", "1x"], "--linger"),
        (&["controller", "--envoy-stats", "ftp://x/stats"], "http://"),
        (&["bogus"], "'bogus'"),
    ];
    for (args, names) in cases {
        let line = one_line_failure(args, 2);
        assert!(line.contains(names), "{args:?}: {line}");
    }
}

#[test]
fn a_missing_envoy_binary_is_one_line_and_exit_127() {
    let line = one_line_failure(&["run", "--", "/nonexistent/envoy", "-c", "x.yaml"], 127);
    assert!(line.contains("cannot start /nonexistent/envoy"), "{line}");
    // A file without the execute bit.
    let not_executable = drainpipe_tests::envoy::repo_root().join("Cargo.toml");
    let not_executable = not_executable.to_str().unwrap();
    let line = one_line_failure(&["run", "--", not_executable], 126);
    assert!(line.contains("Permission denied"), "{line}");
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["drain", "--help"],
        &["controller", "--help"],
    ] {
        let out = drainpipe(args);
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Usage: drainpipe"), "{help}");
    }
    let run = String::from_utf8_lossy(&drainpipe(&["run", "--help"]).stdout).into_owned();
    for needle in [
        "--drain-url",
        "--token",
        "--timeout",
        "--envoy-admin",
        "Exit status",
        "[default: 35s]",
    ] {
        assert!(run.contains(needle), "{needle}: {run}");
    }
}

#[test]
fn drain_without_a_drain_api_is_one_line_and_exit_2() {
    let port = drainpipe_tests::envoy::free_port();
    let url = format!("http://127.0.0.1:{port}/drain");
    let line = one_line_failure(&["drain", "--drain-url", &url], 2);
    assert!(line.contains("the drain could not be started"), "{line}");
    assert!(line.contains(&url), "{line}");
}

#[test]
fn controller_on_a_port_in_use_fails_with_one_line() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let line = one_line_failure(&["controller", "--listen", &addr], 1);
    assert!(line.contains(&addr), "{line}");
}

async fn setup() -> (FakeLlm, Envoy) {
    let patch = json!({"admit_window_ms": 500, "grace_ms": 8000});
    upstream_and_envoy(patch, EnvoyOptions::default()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_wait_returns_0_as_soon_as_drained_with_prestop_progress() {
    let (_up, envoy) = setup().await;
    let mut resp = open_stream(&envoy, 20).await;
    let url = envoy.drain_api();
    let t0 = Instant::now();
    let client =
        tokio::task::spawn_blocking(move || drainpipe(&["drain", "--wait", "--drain-url", &url]));
    while resp.chunk().await.expect("stream not reset").is_some() {}
    let stream_end = t0.elapsed();
    let out = client.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("drain started: state=draining inflight=1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("waiting: state=rejecting inflight=1"),
        "{stderr}"
    );
    assert!(stderr.contains("drained after"), "{stderr}");
    assert!(
        t0.elapsed() < stream_end + Duration::from_secs(2),
        "returned {:?} after the start, the stream ended at {stream_end:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_wait_times_out_with_1() {
    let (_up, envoy) = setup().await;
    let _resp = open_stream(&envoy, 100).await;
    let url = envoy.drain_api();
    let out = tokio::task::spawn_blocking(move || {
        drainpipe(&[
            "drain",
            "--wait",
            "--timeout",
            "1500ms",
            "--drain-url",
            &url,
        ])
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("timed out after 1s: state=rejecting inflight=1"),
        "{stderr}"
    );
}

/// `drainpipe drain --wait --no-start` against `url`, as the LLM server's
/// preStop runs it, in the background.
fn llm_server_prestop(url: String) -> tokio::task::JoinHandle<Output> {
    tokio::task::spawn_blocking(move || {
        drainpipe(&[
            "drain",
            "--wait",
            "--no-start",
            "--timeout",
            "20s",
            "--drain-url",
            &url,
        ])
    })
}

/// The LLM server's preStop: it does not start the drain, it waits for the
/// one Envoy's preStop starts, and returns when drained, or when Envoy has
/// stopped after draining.
#[tokio::test(flavor = "multi_thread")]
async fn drain_wait_no_start_waits_for_the_drain_someone_else_starts() {
    let (_up, mut envoy) = setup().await;
    let url = envoy.drain_api();
    let waiter = llm_server_prestop(url.clone());
    // Serving for a while: the waiter waits and starts nothing.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = reqwest::get(envoy.traffic("/healthz/ready")).await.unwrap();
    assert_eq!(r.status(), 200, "the waiter must not start the drain");
    let mut resp = open_stream(&envoy, 15).await;
    reqwest::Client::new().post(&url).send().await.unwrap();
    while resp.chunk().await.expect("stream not reset").is_some() {}
    let out = waiter.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("waiting: state=serving"), "{stderr}");
    assert!(stderr.contains("drained after"), "{stderr}");
    assert!(!stderr.contains("drain started"), "{stderr}");

    // A waiter that sees Envoy stop in the middle of a drain (its preStop
    // timed out and stopped it) is done too: nothing is in flight through
    // a stopped Envoy.
    reqwest::Client::new().delete(&url).send().await.unwrap();
    let _long = open_stream(&envoy, 100).await;
    reqwest::Client::new().post(&url).send().await.unwrap();
    let waiter = llm_server_prestop(url);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    reqwest::Client::new()
        .post(envoy.admin("/quitquitquit"))
        .send()
        .await
        .unwrap();
    let _ = tokio::task::block_in_place(|| envoy.wait_exit(Duration::from_secs(10)));
    let out = waiter.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("waiting: state=rejecting inflight=1"),
        "{stderr}"
    );
    assert!(stderr.contains("the proxy has stopped"), "{stderr}");
}

/// The binary goes into Envoy images: no Wasmtime, no async runtime.
#[test]
fn the_drainpipe_binary_links_no_wasmtime_and_no_async_runtime() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--package",
            "drainpipe-ops",
            "--edges",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(drainpipe_tests::envoy::repo_root())
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("drainpipe-ops"), "{tree}");
    for banned in ["wasmtime", "tokio ", "hyper ", "reqwest"] {
        assert!(
            !tree.contains(banned),
            "drainpipe-ops depends on {banned}:\n{tree}"
        );
    }
}

/// What makes an ELF executable depend on the machine it runs on: its
/// program interpreter (the dynamic loader) and the shared libraries it
/// needs (`DT_NEEDED`). Empty for a static executable (static-pie keeps a
/// dynamic segment for its own relocations, with no library in it).
fn dynamic_dependencies(bytes: &[u8]) -> Vec<String> {
    use object::elf::{FileHeader64, DT_NEEDED};
    use object::read::elf::{Dyn as _, FileHeader as _, ProgramHeader as _};
    use object::Endianness;

    let header = FileHeader64::<Endianness>::parse(bytes).expect("an ELF64 file");
    let endian = header.endian().expect("a known byte order");
    let mut found = Vec::new();
    for segment in header
        .program_headers(endian, bytes)
        .expect("program headers")
    {
        if let Some(interp) = segment.interpreter(endian, bytes).expect("PT_INTERP") {
            found.push(format!("interpreter {}", String::from_utf8_lossy(interp)));
        }
        for entry in segment
            .dynamic(endian, bytes)
            .expect("PT_DYNAMIC")
            .unwrap_or(&[])
        {
            if entry.d_tag(endian) == DT_NEEDED {
                found.push("a needed shared library (DT_NEEDED)".to_string());
            }
        }
    }
    found
}

#[test]
fn dynamic_dependencies_are_found_in_a_dynamically_linked_binary() {
    // The debug build for the host's default (glibc) target.
    let bytes = std::fs::read(drainpipe_bin().unwrap()).unwrap();
    let found = dynamic_dependencies(&bytes);
    assert!(
        found.iter().any(|f| f.starts_with("interpreter /")),
        "{found:?}"
    );
    assert!(found.iter().any(|f| f.contains("DT_NEEDED")), "{found:?}");
}

/// The binary images ship (`cargo xtask dist`, musl): no loader, no shared
/// library, and it runs `drainpipe run` as a container's entrypoint does:
/// SIGTERM drains a real Envoy while a stream runs, the stream arrives
/// whole, exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn the_static_binary_is_static_and_drains_a_real_envoy_under_run() {
    let bin = static_drainpipe_bin().unwrap();
    let bytes = std::fs::read(&bin).unwrap();
    let found = dynamic_dependencies(&bytes);
    assert!(
        found.is_empty(),
        "{} is not static: {found:?}",
        bin.display()
    );
    println!(
        "static drainpipe: {} bytes ({})",
        bytes.len(),
        bin.display()
    );

    let help = Command::new(&bin).arg("--help").output().unwrap();
    assert!(help.status.success(), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: drainpipe"));

    let (_upstream, mut sup) = supervised(&bin, &["--timeout", "20s"]).await;
    let resp = open_stream(&sup.envoy, 20).await;
    let t0 = Instant::now();
    sup.signal(libc::SIGTERM);
    let read = read_to_end(resp, t0).await;
    assert_whole_stream(&read.whole(), 20);
    let status = tokio::task::block_in_place(|| sup.envoy.wait_exit(Duration::from_secs(15)))
        .expect("the supervisor exits once drained");
    let lines = sup.lines().join("\n");
    assert_eq!(status.code(), Some(0), "{lines}");
    assert!(lines.contains("drained after"), "{lines}");
    assert!(!sup.envoy_alive(), "Envoy is still running");
}
