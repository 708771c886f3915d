//! Instructions per request, counted by callgrind: the repeatable measure.
//!
//! CPU time on a shared virtual machine moves from run to run by more than
//! a filter's cost, and these machines expose no hardware counters.
//! `valgrind --tool=callgrind` counts the instructions a process executes
//! (all its threads: Envoy, V8's compiled code, the plugin), the same count
//! for the same work whatever else the machine is doing. Every Envoy runs
//! under it; before each batch of requests its counters are zeroed
//! (`callgrind_control -z`), after it they are dumped (`callgrind_control
//! -d`) and the dump's total is divided by the batch's requests.
//!
//! Instructions are not time: a cache miss costs no instruction, and
//! callgrind runs a process's threads one at a time. They measure the work,
//! which is what a filter adds.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use drainpipe_tests::envoy::Scratch;
use drainpipe_tests::EnvoyOptions;

use crate::load::{self, Workload};
use crate::variants::{Setup, Target, Variant};

/// How long an Envoy under callgrind may take to be live (V8 compiles the
/// plugin under the instrumentation: a minute or two on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Where callgrind writes one process's dumps.
pub struct Callgrind {
    dir: Scratch,
}

impl Callgrind {
    /// Checks that valgrind and callgrind_control are there, and makes the
    /// directory for the dumps.
    pub fn new() -> anyhow::Result<Callgrind> {
        for tool in ["valgrind", "callgrind_control"] {
            let found = std::process::Command::new(tool)
                .arg("--version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !found {
                bail!(
                    "{tool} not found: --instructions needs valgrind \
                     (Debian and Ubuntu: apt-get install valgrind)"
                );
            }
        }
        Ok(Callgrind {
            dir: Scratch::new("callgrind")?,
        })
    }

    /// Envoy's options to run it under callgrind. `--trace-children` follows
    /// the virtualenv's launcher into the Envoy binary it executes (same
    /// pid); the JIT's code is rewritten in place, hence the full
    /// self-modifying-code check.
    pub fn envoy_options(&self, concurrency: u32) -> EnvoyOptions {
        let mut out = OsString::from("--callgrind-out-file=");
        out.push(self.dir.path().join("callgrind.out.%p"));
        EnvoyOptions {
            concurrency,
            wrapper: vec![
                "valgrind".into(),
                "--tool=callgrind".into(),
                "--trace-children=yes".into(),
                "--smc-check=all-non-file".into(),
                out,
            ],
            start_timeout: START_TIMEOUT,
            ..EnvoyOptions::default()
        }
    }

    /// Zeroes the counters of process `pid`.
    pub async fn zero(&self, pid: u32) -> anyhow::Result<()> {
        control(pid, "-z").await
    }

    /// Dumps the counters of process `pid` and returns the instructions
    /// counted since they were last zeroed.
    pub async fn dump(&self, pid: u32) -> anyhow::Result<u64> {
        control(pid, "-d").await?;
        let path = newest_dump(self.dir.path(), pid)?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        summary(&text).with_context(|| format!("no `summary:` line in {}", path.display()))
    }
}

async fn control(pid: u32, command: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("callgrind_control")
        .arg(command)
        .arg(pid.to_string())
        .output()
        .await
        .context("running callgrind_control")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {command} {pid} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The dump of `pid` with the highest part number (`callgrind.out.<pid>.<n>`).
fn newest_dump(dir: &Path, pid: u32) -> anyhow::Result<PathBuf> {
    let prefix = format!("callgrind.out.{pid}.");
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(part) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|(n, _)| part > *n) {
            newest = Some((part, entry.path()));
        }
    }
    newest
        .map(|(_, p)| p)
        .with_context(|| format!("callgrind wrote no dump for pid {pid} in {}", dir.display()))
}

/// The total of the first event (instructions) in a callgrind dump: its
/// `summary:` line.
pub fn summary(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Instructions per request of one proxy, per workload and batch.
pub struct Counted {
    pub variant: Variant,
    pub sets: Vec<Set>,
}

/// One proxy's batches of one workload.
pub struct Set {
    pub workload: Workload,
    /// Instructions per request, each batch.
    pub per_request: Vec<f64>,
    /// Response body chunks per request the client received, each batch.
    pub chunks: Vec<f64>,
}

/// One workload to count: requests per batch, warm-up requests, and the
/// load generator's connections.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub workload: Workload,
    pub requests: usize,
    pub warmup: usize,
    pub connections: usize,
}

/// What to count: the workloads, and how many batches of each.
pub struct Plan {
    pub workloads: Vec<Load>,
    pub batches: usize,
    pub concurrency: u32,
}

/// Starts every Envoy variant under callgrind (in parallel: each takes a
/// while), warms each up, then counts each workload's batches in every
/// proxy at once (the counts do not depend on what else runs).
pub fn run(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    variants: &[Setup],
    upstream_port: u16,
    minimal_wasm: &Path,
) -> anyhow::Result<Vec<Counted>> {
    let callgrind = Callgrind::new()?;
    // As many starts at a time as there are CPUs: more only share them, and
    // each start is long.
    let at_once = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut targets: Vec<Target> = Vec::new();
    for chunk in variants.chunks(at_once) {
        let started = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|setup| {
                    let callgrind = &callgrind;
                    s.spawn(move || {
                        crate::start_twice(|| {
                            Target::envoy(
                                setup,
                                upstream_port,
                                minimal_wasm,
                                callgrind.envoy_options(plan.concurrency),
                            )
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a start thread panicked"))
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        targets.extend(started);
    }
    eprintln!(
        "drainpipe-bench: {} Envoys live under callgrind",
        targets.len()
    );
    rt.block_on(async {
        let warm = targets.iter().map(|t| async move {
            for l in &plan.workloads {
                let out = load::drive(t.addr, l.workload, l.warmup, l.connections).await?;
                crate::check(t, &out)?;
            }
            anyhow::Ok(())
        });
        futures::future::try_join_all(warm).await
    })?;
    let mut counted: Vec<Counted> = targets
        .iter()
        .map(|t| Counted {
            variant: t.variant,
            sets: Vec::new(),
        })
        .collect();
    for l in &plan.workloads {
        let (workload, requests) = (l.workload, l.requests);
        for c in counted.iter_mut() {
            c.sets.push(Set {
                workload,
                per_request: Vec::new(),
                chunks: Vec::new(),
            });
        }
        for batch in 0..plan.batches {
            let per_request = rt.block_on(async {
                let batches = targets.iter().map(|t| {
                    let callgrind = &callgrind;
                    async move {
                        callgrind.zero(t.pid()).await?;
                        let out = load::drive(t.addr, workload, requests, l.connections).await?;
                        let instructions = callgrind.dump(t.pid()).await?;
                        crate::check(t, &out)?;
                        let n = requests as f64;
                        anyhow::Ok((instructions as f64 / n, out.chunks as f64 / n))
                    }
                });
                futures::future::try_join_all(batches).await
            })?;
            let line: Vec<String> = counted
                .iter_mut()
                .zip(&per_request)
                .map(|(c, &(n, chunks))| {
                    let set = c.sets.last_mut().expect("pushed above");
                    set.per_request.push(n);
                    set.chunks.push(chunks);
                    format!("{} {:.0} ({:.1} chunks)", c.variant.label(), n, chunks)
                })
                .collect();
            eprintln!(
                "drainpipe-bench: {} batch {}/{}: instructions/request: {}",
                workload.title(),
                batch + 1,
                plan.batches,
                line.join(", ")
            );
        }
    }
    Ok(counted)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

impl Counted {
    fn set(&self, workload: Workload) -> Option<&Set> {
        self.sets.iter().find(|s| s.workload == workload)
    }

    /// Instructions per request of `workload`, mean of the batches.
    fn per_request(&self, workload: Workload) -> Option<f64> {
        self.set(workload).map(|s| mean(&s.per_request))
    }

    /// Instructions per response chunk: what a long stream costs beyond a
    /// plain request, over the chunks it has beyond the plain response's
    /// (each from this proxy's own batches: a slower proxy may get the
    /// upstream's events in fewer, larger reads). `None` without both sets
    /// or without more chunks in the stream.
    pub fn per_chunk(&self) -> Option<f64> {
        let stream = self
            .sets
            .iter()
            .find(|s| matches!(s.workload, Workload::Tokens { .. }))?;
        let plain = self.set(Workload::Unary)?;
        let extra_chunks = mean(&stream.chunks) - mean(&plain.chunks);
        (extra_chunks >= 1.0)
            .then(|| (mean(&stream.per_request) - mean(&plain.per_request)) / extra_chunks)
    }
}

/// The report's section: a summary (what each filter adds, per request on
/// both routes and per response chunk, and the ratio to the minimal
/// filter's), then instructions per request of each proxy and batch.
pub fn markdown(counted: &[Counted], plan: &Plan, out: &mut String) {
    use std::fmt::Write as _;
    let find = |variant: Variant| counted.iter().find(|c| c.variant == variant);
    let added = |c: &Counted, w: Workload| -> Option<f64> {
        Some(c.per_request(w)? - find(Variant::NoFilter)?.per_request(w)?)
    };
    let added_per_chunk = |c: &Counted| -> Option<f64> {
        Some(c.per_chunk()? - find(Variant::NoFilter)?.per_chunk()?)
    };
    let ratio = |a: Option<f64>, m: Option<f64>| match (a, m) {
        (Some(a), Some(m)) if m > 0.0 => format!("{:.2}", a / m),
        _ => String::new(),
    };
    let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.0}"));

    out.push_str("## Instructions (callgrind)\n\n");
    let _ = writeln!(
        out,
        "Every Envoy under `valgrind --tool=callgrind` (`--concurrency {}`), \
         warmed up, then {} batches per set, counters zeroed before each batch; \
         instructions of the whole process (every thread) divided by the batch's \
         requests.\n",
        plan.concurrency, plan.batches
    );
    out.push_str("### Summary: instructions added over Envoy without a filter\n\n");
    out.push_str(
        "Per request (mean of the batches) on each route, and per response chunk; \
         in brackets, the ratio to the minimal filter's. Per chunk: (a token stream's \
         instructions − a plain request's) / (its response chunks − the plain \
         response's), for each proxy; what it adds over the minimal filter (and \
         over the minimal filter with a response body callback that does nothing) \
         is in the last columns.\n\n",
    );
    let sets: Vec<Workload> = plan
        .workloads
        .iter()
        .map(|l| l.workload)
        .filter(|w| !matches!(w, Workload::Tokens { .. }))
        .collect();
    let tokens = plan
        .workloads
        .iter()
        .any(|l| matches!(l.workload, Workload::Tokens { .. }));
    out.push_str("| variant |");
    for w in &sets {
        let _ = write!(
            out,
            " {}: per request | {}: / minimal |",
            w.short(),
            w.short()
        );
    }
    let minimal_body = find(Variant::MinimalBody);
    if tokens {
        out.push_str(" per chunk | per chunk, over the minimal filter |");
        if minimal_body.is_some() {
            out.push_str(" per chunk, over the minimal filter + body callback |");
        }
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|---:|".repeat(sets.len()));
    if tokens {
        out.push_str("---:|---:|");
        if minimal_body.is_some() {
            out.push_str("---:|");
        }
    }
    out.push('\n');
    let minimal = find(Variant::Minimal);
    for c in counted.iter().filter(|c| c.variant != Variant::NoFilter) {
        let _ = write!(out, "| {} |", c.variant.label());
        for &w in &sets {
            let a = added(c, w);
            let m = minimal.and_then(|m| added(m, w));
            let _ = write!(out, " {} | {} |", num(a), ratio(a, m));
        }
        if tokens {
            let over =
                |base: Option<&Counted>| match (c.per_chunk(), base.and_then(Counted::per_chunk)) {
                    (Some(a), Some(m)) => Some(a - m),
                    _ => None,
                };
            let _ = write!(
                out,
                " {} | {} |",
                num(added_per_chunk(c)),
                num(over(minimal))
            );
            if minimal_body.is_some() {
                let _ = write!(out, " {} |", num(over(minimal_body)));
            }
        }
        out.push('\n');
    }
    out.push('\n');

    for l in &plan.workloads {
        let _ = writeln!(
            out,
            "### {} ({} requests per batch, after {} to warm up; {} connections)\n",
            l.workload.title(),
            l.requests,
            l.warmup,
            l.connections
        );
        let batches: String = (1..=plan.batches)
            .map(|b| format!(" batch {b} |"))
            .collect();
        let _ = writeln!(
            out,
            "| variant |{batches} spread | chunks per response | added over no filter | added / minimal filter's |"
        );
        let _ = writeln!(
            out,
            "|---|{}---:|---:|---:|---:|",
            "---:|".repeat(plan.batches)
        );
        for c in counted {
            let Some(set) = c.set(l.workload) else {
                continue;
            };
            let v = &set.per_request;
            let cells: String = v.iter().map(|n| format!(" {n:.0} |")).collect();
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let spread = format!("{:.2} %", (hi - lo) / mean(v) * 100.0);
            let chunks = format!("{:.1}", mean(&set.chunks));
            let (added_cell, ratio_cell) = match c.variant {
                Variant::NoFilter => (String::new(), String::new()),
                _ => {
                    let a = added(c, l.workload);
                    let m = minimal.and_then(|m| added(m, l.workload));
                    (num(a), ratio(a, m))
                }
            };
            let _ = writeln!(
                out,
                "| {} |{cells} {spread} | {chunks} | {added_cell} | {ratio_cell} |",
                c.variant.label()
            );
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_the_instruction_total_of_a_dump() {
        let dump = "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\n\
                    pid: 21110\ncmd: envoy -c x.yaml\npart: 2\n\nevents: Ir\n\
                    summary: 99076275\n\nfl=(1)\nfn=(1)\n0 5\ntotals: 99239543\n";
        assert_eq!(summary(dump), Some(99_076_275));
    }

    #[test]
    fn summary_of_a_file_without_one_is_none() {
        assert_eq!(summary("events: Ir\ntotals: 5\n"), None);
        assert_eq!(summary("summary: lots\n"), None);
    }

    #[test]
    fn newest_dump_is_the_highest_part_of_that_pid() {
        let dir = Scratch::new("callgrind-test").unwrap();
        for name in [
            "callgrind.out.7",
            "callgrind.out.7.2",
            "callgrind.out.7.10",
            "callgrind.out.8.11",
            "callgrind.out.7.x",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let newest = newest_dump(dir.path(), 7).unwrap();
        assert_eq!(newest.file_name().unwrap(), "callgrind.out.7.10");
        assert!(newest_dump(dir.path(), 9).is_err());
    }
}
