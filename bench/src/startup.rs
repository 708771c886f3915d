//! Start-up (`--startup RUNS`): from spawning a proxy to the first request
//! it answers, for `drainpipe-shim serve` (its compilation cache empty, and
//! filled) and Envoy, each with drainpipe's plugin and with the shim's
//! fidelity filter (`host-shim/test-filters/fidelity`, its `body` filter),
//! RUNS times each, in alternation.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drainpipe_tests::envoy::{envoy_bin, free_port, repo_root, Scratch};
use drainpipe_tests::http1::get_status;
use drainpipe_tests::process::{tail, ChildGuard};
use drainpipe_tests::Ports;
use serde_json::{json, Value};

use crate::report::median;
use crate::variants::{envoy_config, Variant};

/// What is started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxy {
    /// The shim, its compilation cache empty.
    ShimCold,
    /// The shim, the module in its compilation cache.
    ShimCached,
    Envoy,
}

impl Proxy {
    fn label(self) -> &'static str {
        match self {
            Proxy::ShimCold => "shim, compile cache empty",
            Proxy::ShimCached => "shim, compile cache filled",
            Proxy::Envoy => "Envoy",
        }
    }
}

/// A module and the plugin configuration it starts with.
pub struct Module<'a> {
    pub label: &'a str,
    pub wasm: &'a Path,
    pub config: String,
}

/// The path asked for until an answer comes: drainpipe answers it itself,
/// another filter passes it to the upstream; any status counts.
const PROBE: &str = "/healthz/ready";

/// Gives up on a start-up after this long.
const LIMIT: Duration = Duration::from_secs(120);

/// Measures every proxy with every module `runs` times; the report in
/// Markdown.
pub fn measure(
    shim: &Path,
    modules: &[Module],
    runs: usize,
    workers: u32,
    upstream_port: u16,
) -> anyhow::Result<String> {
    let mut md = format!(
        "## Start-up: spawn to the first answered request\n\n\
         {workers} workers (`--workers`, Envoy's `--concurrency`), {runs} runs \
         each, median (min to max), seconds.\n\n\
         | module | shim, compile cache empty | shim, compile cache filled | Envoy |\n\
         |---|---|---|---|\n"
    );
    for module in modules {
        let warm = Scratch::new("startup-cache")?;
        // Fills the cache the "filled" runs use.
        start_shim(shim, module, warm.path(), workers, upstream_port)?;
        let mut times: Vec<(Proxy, Vec<f64>)> = [Proxy::ShimCold, Proxy::ShimCached, Proxy::Envoy]
            .into_iter()
            .map(|p| (p, Vec::new()))
            .collect();
        for _ in 0..runs {
            for (proxy, seen) in &mut times {
                let took = match proxy {
                    Proxy::ShimCold => {
                        let cold = Scratch::new("startup-cache")?;
                        start_shim(shim, module, cold.path(), workers, upstream_port)?
                    }
                    Proxy::ShimCached => {
                        start_shim(shim, module, warm.path(), workers, upstream_port)?
                    }
                    Proxy::Envoy => start_envoy(module, workers, upstream_port)?,
                };
                eprintln!(
                    "drainpipe-bench: start-up, {}, {}: {:.3} s",
                    module.label,
                    proxy.label(),
                    took.as_secs_f64()
                );
                seen.push(took.as_secs_f64());
            }
        }
        let cells: Vec<String> = times.iter().map(|(_, seen)| summary(seen)).collect();
        md += &format!("| {} | {} |\n", module.label, cells.join(" | "));
    }
    Ok(md)
}

fn summary(seen: &[f64]) -> String {
    let min = seen.iter().copied().fold(f64::INFINITY, f64::min);
    let max = seen.iter().copied().fold(0.0, f64::max);
    format!("{:.3} ({min:.3} to {max:.3})", median(seen))
}

/// Polls `addr` until a request is answered; the time since `spawned`.
fn first_answer(
    child: &mut ChildGuard,
    addr: SocketAddr,
    spawned: Instant,
    log: &Path,
) -> anyhow::Result<Duration> {
    loop {
        if get_status(addr, PROBE).is_some() {
            return Ok(spawned.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "exited during start-up ({status}); log tail:\n{}",
                tail(log, 30)
            );
        }
        if spawned.elapsed() > LIMIT {
            bail!("no answer within {LIMIT:?}; log tail:\n{}", tail(log, 30));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `drainpipe-shim serve` with `module`, its compilation cache in `cache`.
fn start_shim(
    bin: &Path,
    module: &Module,
    cache: &Path,
    workers: u32,
    upstream_port: u16,
) -> anyhow::Result<Duration> {
    let scratch = Scratch::new("startup-shim")?;
    let config = scratch.path().join("config.txt");
    std::fs::write(&config, &module.config)?;
    let log = scratch.path().join("shim.log");
    let out = std::fs::File::create(&log)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = Command::new(bin);
    command
        .arg("serve")
        .arg("--wasm")
        .arg(module.wasm)
        .arg("--config")
        .arg(&config)
        .args(["--listen", &addr.to_string()])
        .args(["--upstream", &format!("http://127.0.0.1:{upstream_port}")])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .args(["--workers", &workers.to_string()])
        .arg("--compile-cache")
        .arg(cache)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let spawned = Instant::now();
    let mut child = ChildGuard::new(
        command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    first_answer(&mut child, addr, spawned, &log).context("the shim")
}

/// Envoy with the shipped configuration and `module` in drainpipe's place
/// (for a module other than drainpipe: on the traffic listener only).
fn start_envoy(module: &Module, workers: u32, upstream_port: u16) -> anyhow::Result<Duration> {
    let ports = Ports::fresh(upstream_port);
    let config = if module.label == "drainpipe" {
        envoy_config(Variant::Drainpipe, ports, module.wasm, module.wasm)?
    } else {
        let mut cfg = envoy_config(Variant::Minimal, ports, module.wasm, module.wasm)?;
        configure(cfg.doc_mut(), &module.config);
        cfg
    };
    let scratch = Scratch::new("startup-envoy")?;
    let path = config.write(scratch.path())?;
    let log = scratch.path().join("envoy.log");
    let out = std::fs::File::create(&log)?;
    let mut command = Command::new(envoy_bin()?);
    command
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", &workers.to_string()])
        .args(["--disable-hot-restart", "--log-level", "warning"])
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let spawned = Instant::now();
    let mut child = ChildGuard::new(command.spawn().context("starting Envoy")?);
    let addr = SocketAddr::from(([127, 0, 0, 1], ports.traffic));
    first_answer(&mut child, addr, spawned, &log).context("Envoy")
}

/// Gives every wasm filter of `doc` the plugin configuration `text`.
fn configure(doc: &mut Value, text: &str) {
    match doc {
        Value::Object(map) => {
            if map.contains_key("vm_config") {
                map.insert(
                    "configuration".into(),
                    json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": text}),
                );
            }
            map.values_mut().for_each(|v| configure(v, text));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| configure(v, text)),
        _ => {}
    }
}
