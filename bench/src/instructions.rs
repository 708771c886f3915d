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
use crate::variants::{Target, Variant};

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
    /// `(workload, per-request counts of each batch)`.
    pub sets: Vec<(Workload, Vec<f64>)>,
}

/// What to count: the workloads with their requests per batch, and how many
/// batches.
pub struct Plan {
    pub workloads: Vec<(Workload, usize)>,
    pub batches: usize,
    pub warmup: usize,
    pub connections: usize,
    pub concurrency: u32,
}

/// Starts every Envoy variant under callgrind (in parallel: each takes a
/// while), warms each up, then counts each workload's batches in every
/// proxy at once (the counts do not depend on what else runs).
pub fn run(
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    variants: &[(Variant, &Path)],
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
                .map(|&(variant, wasm)| {
                    let callgrind = &callgrind;
                    s.spawn(move || {
                        crate::start_twice(|| {
                            Target::envoy(
                                variant,
                                upstream_port,
                                minimal_wasm,
                                wasm,
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
            for &(w, _) in &plan.workloads {
                let out = load::drive(t.addr, w, plan.warmup, plan.connections).await?;
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
    for &(workload, requests) in &plan.workloads {
        for c in counted.iter_mut() {
            c.sets.push((workload, Vec::new()));
        }
        for batch in 0..plan.batches {
            let per_request = rt.block_on(async {
                let batches = targets.iter().map(|t| {
                    let callgrind = &callgrind;
                    async move {
                        callgrind.zero(t.pid()).await?;
                        let out = load::drive(t.addr, workload, requests, plan.connections).await?;
                        let instructions = callgrind.dump(t.pid()).await?;
                        crate::check(t, &out)?;
                        anyhow::Ok(instructions as f64 / requests as f64)
                    }
                });
                futures::future::try_join_all(batches).await
            })?;
            let line: Vec<String> = counted
                .iter_mut()
                .zip(&per_request)
                .map(|(c, &n)| {
                    c.sets.last_mut().expect("pushed above").1.push(n);
                    format!("{} {:.0}", c.variant.label(), n)
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

/// The report's section: instructions per request of each proxy and batch,
/// what each filter adds over Envoy without one, and the ratios.
pub fn markdown(counted: &[Counted], plan: &Plan, out: &mut String) {
    use std::fmt::Write as _;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let of = |variant: Variant, set: usize| -> Option<f64> {
        counted
            .iter()
            .find(|c| c.variant == variant)
            .and_then(|c| c.sets.get(set))
            .map(|(_, v)| mean(v))
    };
    out.push_str("## Instructions per request (callgrind)\n\n");
    let _ = writeln!(
        out,
        "Every Envoy under `valgrind --tool=callgrind` (`--concurrency {}`), \
         {} warm-up requests per proxy and set, then {} batches per set, \
         counters zeroed before each batch; instructions of the whole \
         process (every thread) divided by the batch's requests.\n",
        plan.concurrency, plan.warmup, plan.batches
    );
    for (set, &(workload, requests)) in plan.workloads.iter().enumerate() {
        let _ = writeln!(
            out,
            "### {} ({requests} requests per batch)\n",
            workload.title()
        );
        let batches: String = (1..=plan.batches)
            .map(|b| format!(" batch {b} |"))
            .collect();
        let _ = writeln!(
            out,
            "| variant |{batches} spread | added over no filter | added / minimal filter's |"
        );
        let _ = writeln!(out, "|---|{}---:|---:|---:|", "---:|".repeat(plan.batches));
        let base = of(Variant::NoFilter, set);
        let minimal_added = match (of(Variant::Minimal, set), base) {
            (Some(m), Some(b)) => Some(m - b),
            _ => None,
        };
        for c in counted {
            let Some((_, v)) = c.sets.get(set) else {
                continue;
            };
            let cells: String = v.iter().map(|n| format!(" {n:.0} |")).collect();
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let spread = format!("{:.2} %", (hi - lo) / mean(v) * 100.0);
            let added = base.map(|b| mean(v) - b);
            let added_cell = match (c.variant, added) {
                (Variant::NoFilter, _) | (_, None) => String::new(),
                (_, Some(a)) => format!("{a:.0}"),
            };
            let ratio_cell = match (c.variant, added, minimal_added) {
                (Variant::NoFilter, _, _) => String::new(),
                (_, Some(a), Some(m)) if m > 0.0 => format!("{:.2}", a / m),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} |{cells} {spread} | {added_cell} | {ratio_cell} |",
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
