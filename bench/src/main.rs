//! drainpipe's benchmark: what the plugin costs Envoy.
//!
//! In one run it starts, in front of one local upstream (a small
//! OpenAI-shaped server, [`upstream`]), Envoy three ways from the shipped
//! `envoy/envoy.yaml`: without a wasm filter, with a minimal proxy-wasm
//! filter (`bench/minimal-filter`: reads one header, adds one), and with
//! drainpipe; and, when given its binary, the shim's reverse proxy with
//! drainpipe. It drives the same fixed number of requests through each in
//! alternation, round after round (the order turning by one each round),
//! and reports per proxy the CPU time per
//! request (the process's own `utime + stime`), throughput and latency
//! percentiles, medians over rounds, and the ratios between them. Every
//! round starts the proxies afresh; with `--keep-processes` they live for the
//! whole run and their resident memory is reported at checkpoints. Once
//! with JSON responses, once with SSE streams.
//!
//! With `--startup RUNS` it measures start-up instead ([`startup`]).
//!
//! `cargo xtask bench [ARGS]` builds everything and runs it; see `--help`.

mod instructions;
mod load;
mod report;
mod startup;
mod upstream;
mod variants;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Parser;
use drainpipe_tests::guests::{FIDELITY_FILTER, MINIMAL_FILTER};
use drainpipe_tests::procfs;
use drainpipe_tests::EnvoyOptions;

use load::Workload;
use report::{Memory, Sample, SetResult};
use upstream::Upstream;
use variants::{Target, Variant};

/// What the plugin costs Envoy: CPU per request, throughput, latency and
/// memory, against Envoy without a filter and with a minimal filter.
#[derive(Parser, Debug)]
#[command(name = "drainpipe-bench")]
struct Args {
    /// Requests per proxy in the JSON-response set, split evenly over the rounds.
    #[arg(long, default_value_t = 480_000)]
    requests: usize,
    /// Requests per proxy in the SSE set (default: three tenths of --requests; 0 skips the set).
    #[arg(long)]
    stream_requests: Option<usize>,
    /// Requests per proxy in the direct-response set (Envoy answers itself,
    /// no upstream; default: as many as --requests; 0 skips the set).
    #[arg(long)]
    direct_requests: Option<usize>,
    /// Token streams per proxy (--token-events events each, one every
    /// --token-interval-ms): timed, the time to first token under that
    /// steady load of streams (default: --requests / 625, 768 at the
    /// default, split over the rounds); with --instructions, per batch, one
    /// at a time (default: REQUESTS / 250, at least 1). 0 skips the set.
    #[arg(long)]
    token_streams: Option<usize>,
    /// Events in each token stream.
    #[arg(long, default_value_t = 1_000)]
    token_events: u32,
    /// Milliseconds between a token stream's events.
    #[arg(long, default_value_t = 1)]
    token_interval_ms: u32,
    /// Rounds per set; each round drives every proxy once, in turn (the
    /// order turning by one each round).
    #[arg(long, default_value_t = 12)]
    rounds: usize,
    /// Concurrent keep-alive connections of the load generator.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests per proxy and set before measuring.
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,
    /// Envoy worker threads (--concurrency), and the shim's worker VMs.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// The drainpipe-shim binary: also measure its reverse proxy.
    #[arg(long)]
    shim: Option<PathBuf>,
    /// The plugin (default: DRAINPIPE_WASM, else target/wasm32-wasip1/release/drainpipe.wasm).
    #[arg(long)]
    drainpipe_wasm: Option<PathBuf>,
    /// Another build of the plugin, measured beside the current one in the
    /// same rounds ("Envoy, drainpipe candidate N", N counting from 1 in the
    /// order given): how a change is judged on a shared machine. Repeatable.
    #[arg(long)]
    candidate_wasm: Vec<PathBuf>,
    /// This build of the plugin with its traffic configuration patched (a
    /// JSON object merged into envoy/envoy.yaml's, e.g.
    /// '{"deadline":{"upstream_headers":"all"}}'), measured as a candidate
    /// after the --candidate-wasm ones: what a configuration choice costs.
    /// Repeatable.
    #[arg(long, value_parser = parse_json_object)]
    candidate_config: Vec<serde_json::Value>,
    /// The minimal filter (default: built from bench/minimal-filter).
    #[arg(long)]
    minimal_wasm: Option<PathBuf>,
    /// The minimal filter with its response body callback exported
    /// ("Envoy, minimal filter + body callback", counted with
    /// --instructions only; default: the --minimal-wasm module, which then
    /// must export it, as a plain cargo build of it does).
    #[arg(long)]
    minimal_body_wasm: Option<PathBuf>,
    /// Keep one process per proxy for the whole run, and report its memory
    /// at checkpoints (the memory run). Without it, every round starts the
    /// proxies afresh, so no one process's luck (code placement, when V8
    /// optimises the plugin) weighs on every round.
    #[arg(long)]
    keep_processes: bool,
    /// Do not pin. By default, on a machine with two CPUs or more, the
    /// benchmark's own threads (load generator and upstream) run on the
    /// first CPU it may use and the proxies on the others, so the proxies'
    /// CPU time is not spent sharing caches and cores with the load.
    #[arg(long)]
    no_pin: bool,
    /// Count instructions instead of timing: every Envoy variant under
    /// callgrind (valgrind), REQUESTS JSON requests per batch and proxy
    /// (streams: --stream-requests, default three tenths as many), two
    /// batches each after the warm-up. The same count for the same work
    /// whatever else the machine does; the shim is not run.
    #[arg(long, value_name = "REQUESTS")]
    instructions: Option<usize>,
    /// Measure start-up instead: from spawning to the first answered
    /// request, RUNS times each, for the shim (--shim; its compilation cache
    /// empty, and filled) and Envoy, with drainpipe and with the shim's
    /// fidelity filter (built from host-shim/test-filters/fidelity).
    #[arg(long, value_name = "RUNS")]
    startup: Option<usize>,
    /// Also write the report (Markdown) to this file.

    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drainpipe-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.rounds == 0 || args.requests < args.rounds {
        bail!("--requests must be at least --rounds, and --rounds at least 1");
    }
    let stream_requests = args.stream_requests.unwrap_or(args.requests * 3 / 10);
    // Before the runtime's threads exist, so they inherit it.
    let cpus = procfs::allowed_cpus()?;
    // Counted instructions do not depend on scheduling, and start-up is
    // measured with every worker's CPU: no pinning then (the Envoys would
    // inherit the load generator's CPU).
    let pin = !args.no_pin && args.instructions.is_none() && args.startup.is_none();
    let pinning = match (pin, cpus.split_first()) {
        (true, Some((&first, rest))) if !rest.is_empty() => {
            procfs::pin(0, &[first])?;
            Some((first, rest.to_vec()))
        }
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let drainpipe_wasm = match &args.drainpipe_wasm {
        Some(p) => p.clone(),
        None => drainpipe_tests::envoy::plugin_wasm()?,
    };
    if let Some(runs) = args.startup {
        let Some(shim) = &args.shim else {
            bail!("--startup needs --shim");
        };
        let drainpipe_config =
            drainpipe_tests::EnvoyConfig::repo()?.plugin_configuration("drainpipe")?;
        let fidelity_wasm = FIDELITY_FILTER.build()?;
        let modules = [
            startup::Module {
                label: "drainpipe",
                wasm: &drainpipe_wasm,
                config: drainpipe_config,
            },
            startup::Module {
                label: "fidelity filter (body)",
                wasm: &fidelity_wasm,
                config: "body".into(),
            },
        ];
        let upstream = rt.block_on(Upstream::start())?;
        let md = startup::measure(shim, &modules, runs, args.concurrency, upstream.port())?;
        return publish(&md, args.out.as_deref());
    }
    let minimal_wasm = match &args.minimal_wasm {
        Some(p) => p.clone(),
        None => MINIMAL_FILTER.build()?,
    };
    let load_before = loadavg();
    let upstream = rt.block_on(Upstream::start())?;
    let minimal_body_wasm = args
        .minimal_body_wasm
        .clone()
        .unwrap_or_else(|| minimal_wasm.clone());
    let mut proxies = Proxies {
        args: &args,
        upstream_port: upstream.port(),
        minimal_wasm: &minimal_wasm,
        minimal_body_wasm: &minimal_body_wasm,
        drainpipe_wasm: &drainpipe_wasm,
        shim: args.shim.clone(),
        cpus: pinning.as_ref().map(|(_, proxies)| proxies.clone()),
        shim_started: false,
    };
    if let Some(requests) = args.instructions {
        let md = count_instructions(&args, requests, &rt, &proxies)?;
        return publish(&md, args.out.as_deref());
    }
    let mut notes = Vec::new();
    if args.shim.is_none() {
        notes.push("The shim was not measured (no --shim given).".to_string());
    }

    let direct_requests = args.direct_requests.unwrap_or(args.requests);
    let token_streams = args.token_streams.unwrap_or(args.requests / 625);
    let mut workloads = vec![Workload::Unary];
    if stream_requests >= args.rounds {
        workloads.push(Workload::Streamed);
    }
    if direct_requests >= args.rounds {
        workloads.push(Workload::Direct);
    }
    if token_streams >= args.rounds {
        workloads.push(tokens(&args));
    }
    // With --keep-processes, one process per proxy for the whole run (the
    // memory table follows it); otherwise every round starts them afresh.
    let kept = match args.keep_processes {
        true => Some(proxies.start(&rt, &workloads, &mut notes)?),
        false => None,
    };
    let mut memory = kept.as_ref().map(|targets| Memory {
        checkpoints: vec!["after warm-up".into()],
        rows: targets.iter().map(|t| (t.variant, Vec::new())).collect(),
    });
    if let (Some(targets), Some(memory)) = (&kept, &mut memory) {
        record_rss(targets, memory)?;
    }

    let mut sets = Vec::new();
    for &workload in &workloads {
        let total = match workload {
            Workload::Unary => args.requests,
            Workload::Streamed => stream_requests,
            Workload::Direct => direct_requests,
            Workload::Tokens { .. } => token_streams,
        };
        let per_round = total / args.rounds;
        let mut samples: Vec<Vec<Sample>> = Vec::new();
        let mut variants = Vec::new();
        for round in 0..args.rounds {
            let fresh;
            let targets = match &kept {
                Some(targets) => targets,
                None => {
                    fresh = proxies.start(&rt, &[workload], &mut notes)?;
                    &fresh
                }
            };
            // Every round has the same proxies: a proxy that fails to start
            // after the first round is an error (`Proxies::start`).
            if round == 0 {
                variants = targets.iter().map(|t| t.variant).collect();
                samples = vec![Vec::new(); targets.len()];
            }
            // The order turns by one each round (A B C, B C A, C A B, ...),
            // so no proxy always follows the same one.
            for k in 0..targets.len() {
                let i = (k + round) % targets.len();
                let t = &targets[i];
                let cpu_before = procfs::cpu_us(t.pid())?;
                let out =
                    rt.block_on(load::drive(t.addr, workload, per_round, args.connections))?;
                let cpu = procfs::cpu_us(t.pid())?.saturating_sub(cpu_before);
                check(t, &out)?;
                samples[i].push(Sample::new(cpu, &out));
            }
            let cpu: Vec<String> = targets
                .iter()
                .zip(&samples)
                .map(|(t, s)| format!("{} {:.1}", t.variant.label(), s[round].cpu_us_per_request))
                .collect();
            eprintln!(
                "drainpipe-bench: {} round {}/{}: CPU µs/request: {}",
                workload.title(),
                round + 1,
                args.rounds,
                cpu.join(", ")
            );
        }
        if let (Some(targets), Some(memory)) = (&kept, &mut memory) {
            memory
                .checkpoints
                .push(format!("after {}", workload.short()));
            record_rss(targets, memory)?;
        }
        sets.push(SetResult {
            workload,
            requests_per_round: per_round,
            variants,
            samples,
        });
    }

    let per_proxy: usize = sets
        .iter()
        .map(|set| warmup(&args, set.workload) + set.requests_per_round * args.rounds)
        .sum();
    let mut md = String::from("# drainpipe benchmark report\n\n");
    md.push_str(&setup_lines(
        &args,
        pinning.as_ref(),
        &drainpipe_wasm,
        &minimal_wasm,
        &load_before,
    ));
    for set in &sets {
        set.markdown(&mut md);
    }
    match &memory {
        Some(memory) => memory.markdown(per_proxy, &mut md),
        None => md.push_str(
            "## Memory\n\nNot measured: every round started the proxies afresh \
             (`--keep-processes` keeps one process per proxy for the whole run and \
             reports its memory).\n\n",
        ),
    }
    for n in &notes {
        md.push_str(n);
        md.push('\n');
    }
    publish(&md, args.out.as_deref())?;
    drop(kept);
    drop(upstream);
    Ok(())
}

/// Prints the report, and writes it to `out` when given (`--out`).
fn publish(md: &str, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    print!("{md}");
    if let Some(out) = out {
        std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// What it takes to start the proxies under test.
struct Proxies<'a> {
    args: &'a Args,
    upstream_port: u16,
    minimal_wasm: &'a std::path::Path,
    minimal_body_wasm: &'a std::path::Path,
    drainpipe_wasm: &'a std::path::Path,
    /// The shim's binary, until it fails to start (then it is left out).
    shim: Option<PathBuf>,
    /// The CPUs the proxies are pinned to (`None`: not pinned).
    cpus: Option<Vec<usize>>,
    /// Whether the shim has been started once (it is then in every round).
    shim_started: bool,
}

/// Starts a proxy, and once more (on fresh ports) if that fails: with a new
/// process per round, a port taken between choosing and binding it must not
/// end the run. The second failure is the error.
fn start_twice(start: impl Fn() -> anyhow::Result<Target>) -> anyhow::Result<Target> {
    start().or_else(|first| {
        eprintln!("drainpipe-bench: start failed, trying once more: {first:#}");
        start()
    })
}

impl Proxies<'_> {
    /// The Envoy variants, in round order, each with the plugin it runs.
    /// Counting instructions adds the minimal filter with its body callback
    /// (what a filter that looks at bodies pays per chunk at the least).
    fn envoy_variants(&self) -> Vec<variants::Setup<'_>> {
        let setup = |variant, wasm| variants::Setup {
            variant,
            wasm,
            patch: None,
        };
        let mut variants = vec![
            setup(Variant::NoFilter, self.drainpipe_wasm),
            setup(Variant::Minimal, self.drainpipe_wasm),
        ];
        if self.args.instructions.is_some() {
            variants.push(setup(Variant::MinimalBody, self.minimal_body_wasm));
        }
        variants.push(setup(Variant::Drainpipe, self.drainpipe_wasm));
        let wasms = self.args.candidate_wasm.iter().map(|w| (w.as_path(), None));
        let configs = self
            .args
            .candidate_config
            .iter()
            .map(|patch| (self.drainpipe_wasm, Some(patch)));
        for (i, (wasm, patch)) in wasms.chain(configs).enumerate() {
            variants.push(variants::Setup {
                variant: Variant::Candidate(i + 1),
                wasm,
                patch,
            });
        }
        variants
    }

    /// Starts every proxy, in round order, and warms each up with
    /// `workloads`.
    fn start(
        &mut self,
        rt: &tokio::runtime::Runtime,
        workloads: &[Workload],
        notes: &mut Vec<String>,
    ) -> anyhow::Result<Vec<Target>> {
        let args = self.args;
        let mut targets = Vec::new();
        for setup in self.envoy_variants() {
            targets.push(start_twice(|| {
                let opts = EnvoyOptions {
                    concurrency: args.concurrency,
                    ..EnvoyOptions::default()
                };
                Target::envoy(&setup, self.upstream_port, self.minimal_wasm, opts)
            })?);
        }
        if let Some(bin) = &self.shim {
            let started = start_twice(|| {
                Target::shim(
                    bin,
                    self.upstream_port,
                    args.concurrency,
                    self.drainpipe_wasm,
                )
            });
            match started {
                Ok(t) => {
                    targets.push(t);
                    self.shim_started = true;
                }
                // Once measured, the shim stays in every round.
                Err(e) if self.shim_started => return Err(e),
                Err(e) => {
                    notes.push(format!("The shim was not measured: {e:#}"));
                    self.shim = None;
                }
            }
        }
        if let Some(cpus) = &self.cpus {
            for t in &targets {
                procfs::pin(t.pid(), cpus)?;
            }
        }
        for t in &targets {
            for &w in workloads {
                let out = rt.block_on(load::drive(t.addr, w, warmup(args, w), args.connections))?;
                check(t, &out)?;
            }
        }
        Ok(targets)
    }
}

/// The token-stream workload the arguments ask for.
fn tokens(args: &Args) -> Workload {
    Workload::Tokens {
        events: args.token_events,
        interval_ms: args.token_interval_ms,
    }
}

/// Warm-up requests of `workload` per proxy: --warmup, but for token
/// streams one per connection (each is a thousand chunks).
fn warmup(args: &Args, workload: Workload) -> usize {
    match workload {
        Workload::Tokens { .. } => args.connections.min(args.warmup),
        _ => args.warmup,
    }
}

/// `--instructions`: every Envoy variant under callgrind; the report.
fn count_instructions(
    args: &Args,
    requests: usize,
    rt: &tokio::runtime::Runtime,
    proxies: &Proxies,
) -> anyhow::Result<String> {
    if requests == 0 {
        bail!("--instructions must be at least 1");
    }
    let load = |workload, requests| instructions::Load {
        workload,
        requests,
        warmup: args.warmup,
        connections: args.connections,
    };
    let streams = args.stream_requests.unwrap_or(requests * 3 / 10);
    let direct = args.direct_requests.unwrap_or(requests);
    let token_streams = args.token_streams.unwrap_or((requests / 250).max(1));
    let mut workloads = vec![load(Workload::Unary, requests)];
    if streams > 0 {
        workloads.push(load(Workload::Streamed, streams));
    }
    if direct > 0 {
        workloads.push(load(Workload::Direct, direct));
    }
    if token_streams > 0 {
        // One stream at a time, after one to warm up: a proxy slowed down
        // by callgrind then still gets most events as chunks of their own.
        workloads.push(instructions::Load {
            warmup: 1,
            connections: 1,
            ..load(tokens(args), token_streams)
        });
    }
    let plan = instructions::Plan {
        workloads,
        batches: 2,
        concurrency: args.concurrency,
    };
    let counted = instructions::run(
        rt,
        &plan,
        &proxies.envoy_variants(),
        proxies.upstream_port,
        proxies.minimal_wasm,
    )?;
    let mut md = String::from("# drainpipe benchmark report: instructions\n\n");
    md.push_str(&machine_lines(
        args,
        proxies.drainpipe_wasm,
        proxies.minimal_wasm,
    ));
    md.push('\n');
    instructions::markdown(&counted, &plan, &mut md);
    Ok(md)
}

/// `--candidate-config`'s value: a JSON object.
fn parse_json_object(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err("expected a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// Every request must have succeeded: a benchmark with failures measures
/// something else.
fn check(t: &Target, out: &load::Outcome) -> anyhow::Result<()> {
    if out.errors > 0 {
        bail!(
            "{}: {} of {} requests failed, first: {}\nlog tail:\n{}",
            t.variant.label(),
            out.errors,
            out.errors + out.latencies_us.len(),
            out.first_error.as_deref().unwrap_or("?"),
            t.log_tail()
        );
    }
    Ok(())
}

fn record_rss(targets: &[Target], memory: &mut Memory) -> anyhow::Result<()> {
    for (t, (_, row)) in targets.iter().zip(memory.rows.iter_mut()) {
        row.push(procfs::rss_kib(t.pid())?);
    }
    Ok(())
}

fn setup_lines(
    args: &Args,
    pinning: Option<&(usize, Vec<usize>)>,
    drainpipe_wasm: &std::path::Path,
    minimal_wasm: &std::path::Path,
    load_before: &str,
) -> String {
    let pinning = match pinning {
        Some((own, proxies)) => format!(
            "load generator and upstream pinned to CPU {own}, the proxies to CPUs {proxies:?}"
        ),
        None => "not pinned".to_string(),
    };
    format!(
        "{}\
         - load average before: {load_before}, after: {}\n\
         - CPUs: {pinning}\n\
         - load: {} keep-alive HTTP/1.1 connections, {} warm-up requests per proxy and set{}\n\
         - CPU is the proxy process's `utime + stime` (/proc/<pid>/stat) over the round, divided by its requests\n\n",
        machine_lines(args, drainpipe_wasm, minimal_wasm),
        loadavg(),
        args.connections,
        args.warmup,
        match args.keep_processes {
            true => "; one process per proxy for the whole run",
            false => ", after starting every proxy afresh for each round",
        },
    )
}

/// The machine, Envoy's version and the filters' sizes.
fn machine_lines(
    args: &Args,
    drainpipe_wasm: &std::path::Path,
    minimal_wasm: &std::path::Path,
) -> String {
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let envoy_version = drainpipe_tests::envoy::envoy_bin()
        .ok()
        .and_then(|bin| {
            std::process::Command::new(bin)
                .arg("--version")
                .output()
                .ok()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(str::trim)
        .unwrap_or("unknown");
    // Counted from /proc/cpuinfo: this process's own CPU set is pinned.
    let nproc = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let wasms = args
        .candidate_wasm
        .iter()
        .map(|p| format!("{} ({} bytes)", p.display(), size(p)));
    let configs = args
        .candidate_config
        .iter()
        .map(|patch| format!("this drainpipe.wasm, its configuration patched with `{patch}`"));
    let candidates: String = wasms
        .chain(configs)
        .enumerate()
        .map(|(i, what)| format!("- drainpipe candidate {}: {what}\n", i + 1))
        .collect();
    format!(
        "- machine: {nproc} CPUs ({cpu_model}), {mem_total} memory\n\
         - Envoy: {envoy_version}, `--concurrency {}`\n\
         - drainpipe.wasm: {} bytes; minimal filter: {} bytes\n\
         {candidates}",
        args.concurrency,
        size(drainpipe_wasm),
        size(minimal_wasm),
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
