//! The rollout harness: load through real Envoys while one is drained with
//! `envoy/prestop.sh` and stopped as Kubernetes would, counting what every
//! request got.
//!
//! The load is a deterministic mix over a fake OpenAI-compatible upstream:
//! 30 % streamed completions (1 to 10 s, a token every 50 ms), 50 % plain
//! completions, 20 % `GET /v1/models`. With one instance, the run shows the
//! drain itself: requests in flight finish whole, later ones get the 503
//! contract, and Envoy exits inside the grace period. With two instances
//! behind a round-robin front (a client-side picker that skips instances
//! that are gone, as a load balancer with health checks does) and clients
//! retrying as Retry-After says, no request fails at all.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::envoy::{plugin_wasm, prometheus_value, repo_root, EnvoyConfig};
use crate::fake_llm::sse_events;
use crate::{Envoy, EnvoyOptions, FakeLlm, Ports};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub requests: u64,
    pub concurrency: usize,
    /// 1: drain the only instance. 2: drain one of two, clients retry.
    pub instances: usize,
    /// The drain starts once this share of the requests has started.
    pub drain_after: f64,
    pub admit_window_ms: u64,
    pub grace_ms: u64,
    pub retry_after_s: u64,
    pub envoy_concurrency: u32,
    /// Where the CSV and SVG timeline go (none if `None`).
    pub out_dir: Option<PathBuf>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            requests: 2_000,
            concurrency: 64,
            instances: 1,
            drain_after: 0.4,
            admit_window_ms: 1_000,
            grace_ms: 15_000,
            retry_after_s: 1,
            envoy_concurrency: 2,
            out_dir: None,
        }
    }
}

/// What one request got in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 200 and the whole body (streams: every token and `[DONE]`).
    Completed,
    /// The 503 drain contract, exactly.
    Rejected,
    /// A stream ended by the plugin's final error event.
    EndedByEvent,
    /// A stream that ended without `[DONE]`, or a reset mid-body.
    Truncated,
    /// Anything else: another status, a reset before the response, a 503
    /// that is not the contract.
    Failed,
    /// Could not connect: the instance was gone before the request was sent.
    Unsent,
}

/// Counters shared by the load tasks and the sampler.
#[derive(Default)]
struct Counts {
    started: AtomicU64,
    inflight: AtomicU64,
    completed: AtomicU64,
    rejected: AtomicU64,
    ended_by_event: AtomicU64,
    truncated: AtomicU64,
    failed: AtomicU64,
    unsent: AtomicU64,
    retries: AtomicU64,
}

impl Counts {
    fn record(&self, outcome: Outcome) {
        let c = match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Rejected => &self.rejected,
            Outcome::EndedByEvent => &self.ended_by_event,
            Outcome::Truncated => &self.truncated,
            Outcome::Failed => &self.failed,
            Outcome::Unsent => &self.unsent,
        };
        c.fetch_add(1, SeqCst);
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub plan_requests: u64,
    pub instances: usize,
    pub started: u64,
    pub completed: u64,
    pub rejected_503: u64,
    pub ended_by_event: u64,
    pub truncated_or_reset: u64,
    pub failed_otherwise: u64,
    pub unsent_instance_gone: u64,
    pub retries: u64,
    /// Requests never started because every instance was gone.
    pub not_started: u64,
    pub drain_to_exit_ms: Option<u64>,
    pub grace_ms: u64,
    pub prestop_exit: Option<i32>,
    pub prestop_output: String,
    pub files: Vec<PathBuf>,
}

impl Report {
    /// The pass criteria: nothing in flight is truncated or reset, nothing
    /// fails otherwise, Envoy exits inside the grace period; with two
    /// instances, every request completes.
    pub fn verdict(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.truncated_or_reset > 0 {
            problems.push(format!("{} truncated or reset", self.truncated_or_reset));
        }
        if self.failed_otherwise > 0 {
            problems.push(format!("{} failed otherwise", self.failed_otherwise));
        }
        match self.drain_to_exit_ms {
            Some(ms) if ms <= self.grace_ms => {}
            Some(ms) => problems.push(format!(
                "Envoy exited {ms} ms after the drain start, past the {} ms grace period",
                self.grace_ms
            )),
            None => problems.push("Envoy did not exit".into()),
        }
        if self.prestop_exit != Some(0) {
            problems.push(format!("prestop.sh exited {:?}", self.prestop_exit));
        }
        if self.instances > 1 && self.completed != self.plan_requests {
            problems.push(format!(
                "{} of {} requests completed end to end",
                self.completed, self.plan_requests
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "rollout: {} instance(s), {} requests planned\n\
             \x20 started              {}\n\
             \x20 completed whole      {}\n\
             \x20 rejected (503)       {}\n\
             \x20 ended by final event {}\n\
             \x20 truncated or reset   {}\n\
             \x20 failed otherwise     {}\n\
             \x20 unsent (instance gone, retried where another exists) {}\n\
             \x20 retries              {}\n\
             \x20 not started (no instance left) {}\n\
             \x20 drain start to Envoy exit: {} (grace {} ms)\n",
            self.instances,
            self.plan_requests,
            self.started,
            self.completed,
            self.rejected_503,
            self.ended_by_event,
            self.truncated_or_reset,
            self.failed_otherwise,
            self.unsent_instance_gone,
            self.retries,
            self.not_started,
            self.drain_to_exit_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "no exit".into()),
            self.grace_ms,
        );
        for f in &self.files {
            s.push_str(&format!("  wrote {}\n", f.display()));
        }
        s.push_str(&match self.verdict() {
            Ok(()) => "rollout: PASS\n".to_string(),
            Err(e) => format!("rollout: FAIL: {e}\n"),
        });
        s
    }
}

/// One sample of the timeline.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t_ms: u64,
    inflight: u64,
    completed: u64,
    rejected: u64,
    failed: u64,
    envoy_inflight: Option<u64>,
}

/// A request of the mix, by index (deterministic).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Stream { chunks: u64 },
    Plain,
    Models,
}

fn kind(i: u64) -> Kind {
    // splitmix64: a fixed, well-spread sequence.
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    match z % 10 {
        0..=2 => Kind::Stream {
            chunks: 20 + (z >> 8) % 181,
        },
        3..=7 => Kind::Plain,
        _ => Kind::Models,
    }
}

/// The instances behind the round-robin front. Like a load balancer with
/// health checks, it routes to instances whose readiness probe passes
/// (checked every 100 ms), and to any live one if none passes.
struct Front {
    urls: Vec<String>,
    alive: Vec<AtomicBool>,
    ready: Vec<AtomicBool>,
    next: AtomicUsize,
}

impl Front {
    fn any_alive(&self) -> bool {
        self.alive.iter().any(|a| a.load(SeqCst))
    }

    /// The next ready instance, round robin; else the next live one.
    fn pick(&self) -> Option<usize> {
        let n = self.urls.len();
        let start = self.next.fetch_add(1, SeqCst);
        let live = |i: &usize| self.alive[*i].load(SeqCst);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| live(i) && self.ready[*i].load(SeqCst))
            .or_else(|| (0..n).map(|k| (start + k) % n).find(live))
    }
}

/// Runs the plan: starts the upstream and the Envoys, drives the load,
/// drains instance 0 mid-load, writes the timeline, and reports.
pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let upstream = FakeLlm::start().await?;
    let wasm = plugin_wasm()?;
    let mut envoys = Vec::new();
    for _ in 0..plan.instances {
        let ports = Ports::fresh(upstream.port());
        let cfg = EnvoyConfig::repo()?.localize(ports, &wasm).patch_plugin(
            "drainpipe",
            json!({"admit_window_ms": plan.admit_window_ms, "grace_ms": plan.grace_ms,
                   "retry_after_s": plan.retry_after_s}),
        );
        let opts = EnvoyOptions {
            concurrency: plan.envoy_concurrency,
            ..EnvoyOptions::default()
        };
        envoys.push(Envoy::start(&cfg, ports, opts).context("starting Envoy")?);
    }
    let front = Arc::new(Front {
        urls: envoys.iter().map(|e| e.traffic("")).collect(),
        alive: envoys.iter().map(|_| AtomicBool::new(true)).collect(),
        ready: envoys.iter().map(|_| AtomicBool::new(true)).collect(),
        next: AtomicUsize::new(0),
    });
    let admin0 = envoys[0].admin("/stats/prometheus");
    let counts = Arc::new(Counts::default());
    let epoch = Instant::now();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency)
        .build()?;

    // The sampler: every 100 ms until the load is done.
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (counts, samples, done, client) = (
            counts.clone(),
            samples.clone(),
            done.clone(),
            client.clone(),
        );
        let front = front.clone();
        tokio::spawn(async move {
            while !done.load(SeqCst) {
                let envoy_inflight = if front.alive[0].load(SeqCst) {
                    match client
                        .get(&admin0)
                        .timeout(Duration::from_millis(500))
                        .send()
                        .await
                    {
                        Ok(r) => r
                            .text()
                            .await
                            .ok()
                            .and_then(|t| prometheus_value(&t, "drainpipe_inflight")),
                        Err(_) => None,
                    }
                } else {
                    None
                };
                for (i, url) in front.urls.iter().enumerate() {
                    let probe = client
                        .get(format!("{url}/healthz/ready"))
                        .timeout(Duration::from_millis(500))
                        .send()
                        .await;
                    let ok = probe.is_ok_and(|r| r.status() == 200);
                    front.ready[i].store(ok, SeqCst);
                }
                samples.lock().unwrap().push(Sample {
                    t_ms: epoch.elapsed().as_millis() as u64,
                    inflight: counts.inflight.load(SeqCst),
                    completed: counts.completed.load(SeqCst),
                    rejected: counts.rejected.load(SeqCst),
                    failed: counts.failed.load(SeqCst) + counts.truncated.load(SeqCst),
                    envoy_inflight,
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The drain of instance 0, once enough load has started.
    let drain_at = (plan.requests as f64 * plan.drain_after) as u64;
    let first = envoys.remove(0);
    let drain = {
        let (counts, front) = (counts.clone(), front.clone());
        let timeout_s = plan.grace_ms.div_ceil(1000) + 5;
        tokio::spawn(async move {
            while counts.started.load(SeqCst) < drain_at {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let drain_start = epoch.elapsed();
            let mut envoy = first;
            let (prestop, envoy, exited) = tokio::task::spawn_blocking(move || {
                let out = Command::new("sh")
                    .arg(repo_root().join("envoy/prestop.sh"))
                    .env("DRAIN_URL", envoy.drain_api())
                    .env("ENVOY_ADMIN", envoy.admin(""))
                    .env("DRAIN_TIMEOUT_S", timeout_s.to_string())
                    .output();
                // Kubernetes sends SIGTERM once preStop returns.
                envoy.sigterm();
                let exited = envoy
                    .wait_exit(Duration::from_secs(10))
                    .map(|_| epoch.elapsed());
                (out, envoy, exited)
            })
            .await
            .expect("drain task");
            front.alive[0].store(false, SeqCst);
            (drain_start, prestop, exited, envoy)
        })
    };

    // The load.
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..plan.concurrency {
        let (client, front, counts, next) =
            (client.clone(), front.clone(), counts.clone(), next.clone());
        let (total, retry) = (plan.requests, plan.instances > 1);
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, SeqCst);
                if i >= total {
                    return;
                }
                if !front.any_alive() {
                    next.fetch_sub(1, SeqCst);
                    return;
                }
                counts.started.fetch_add(1, SeqCst);
                counts.inflight.fetch_add(1, SeqCst);
                let outcome = request_with_retries(&client, &front, &counts, kind(i), retry).await;
                counts.inflight.fetch_sub(1, SeqCst);
                counts.record(outcome);
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let (drain_start, prestop, exited, _envoy0) = drain.await?;
    done.store(true, SeqCst);
    sampler.await?;
    drop(envoys);
    drop(upstream);

    let prestop = prestop.context("running envoy/prestop.sh")?;
    let samples = samples.lock().unwrap().clone();
    let exit_at = exited.map(|t| t.as_millis() as u64);
    let drain_ms = drain_start.as_millis() as u64;
    let mut files = Vec::new();
    if let Some(dir) = &plan.out_dir {
        std::fs::create_dir_all(dir)?;
        let csv = dir.join(format!("rollout-{}.csv", plan.instances));
        std::fs::write(&csv, timeline_csv(&samples))?;
        let svg = dir.join(format!("rollout-{}.svg", plan.instances));
        std::fs::write(&svg, timeline_svg(&samples, drain_ms, exit_at, plan))?;
        files.extend([csv, svg]);
    }
    let c = &counts;
    let started = c.started.load(SeqCst);
    Ok(Report {
        plan_requests: plan.requests,
        instances: plan.instances,
        started,
        completed: c.completed.load(SeqCst),
        rejected_503: c.rejected.load(SeqCst),
        ended_by_event: c.ended_by_event.load(SeqCst),
        truncated_or_reset: c.truncated.load(SeqCst),
        failed_otherwise: c.failed.load(SeqCst),
        unsent_instance_gone: c.unsent.load(SeqCst),
        retries: c.retries.load(SeqCst),
        not_started: plan.requests - started,
        drain_to_exit_ms: exit_at.map(|t| t.saturating_sub(drain_ms)),
        grace_ms: plan.grace_ms,
        prestop_exit: prestop.status.code(),
        prestop_output: String::from_utf8_lossy(&prestop.stdout).into_owned(),
        files,
    })
}

/// One request; with `retry`, a 503 contract is retried after Retry-After and
/// a refused connection at once, on the next instance.
async fn request_with_retries(
    client: &reqwest::Client,
    front: &Front,
    counts: &Counts,
    kind: Kind,
    retry: bool,
) -> Outcome {
    for attempt in 0..6 {
        let Some(instance) = front.pick() else {
            return Outcome::Unsent;
        };
        if attempt > 0 {
            counts.retries.fetch_add(1, SeqCst);
        }
        let (outcome, retry_after) = request(client, &front.urls[instance], kind).await;
        if outcome == Outcome::Unsent {
            front.alive[instance].store(false, SeqCst);
        }
        match outcome {
            Outcome::Rejected | Outcome::Unsent if retry => {
                tokio::time::sleep(retry_after).await;
            }
            other => return other,
        }
    }
    Outcome::Failed
}

/// Sends one request and classifies what came back.
async fn request(client: &reqwest::Client, base: &str, kind: Kind) -> (Outcome, Duration) {
    let req = match kind {
        Kind::Models => client.get(format!("{base}/v1/models")),
        Kind::Plain => client
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})),
        Kind::Stream { chunks } => client
            .post(format!("{base}/v1/chat/completions"))
            .header("x-fake-chunks", chunks.to_string())
            .header("x-fake-chunk-delay-ms", "50")
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true})),
    };
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return (Outcome::Unsent, Duration::ZERO),
        Err(_) => return (Outcome::Failed, Duration::ZERO),
    };
    let status = resp.status().as_u16();
    if status == 503 {
        return match drain_contract(resp).await {
            Some(after) => (Outcome::Rejected, after),
            None => (Outcome::Failed, Duration::ZERO),
        };
    }
    if status != 200 {
        return (Outcome::Failed, Duration::ZERO);
    }
    let body = match resp.bytes().await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => return (Outcome::Truncated, Duration::ZERO),
    };
    let outcome = match kind {
        Kind::Stream { chunks } => {
            let events = sse_events(&body);
            if events.last() == Some(&"[DONE]") && events.len() as u64 == chunks + 2 {
                Outcome::Completed
            } else if events.last().is_some_and(|e| e.starts_with("{\"error\"")) {
                Outcome::EndedByEvent
            } else {
                Outcome::Truncated
            }
        }
        Kind::Plain | Kind::Models => match serde_json::from_str::<Value>(&body) {
            Ok(_) => Outcome::Completed,
            Err(_) => Outcome::Truncated,
        },
    };
    (outcome, Duration::ZERO)
}

/// Checks the 503 drain contract; returns the Retry-After wait if it holds.
async fn drain_contract(resp: reqwest::Response) -> Option<Duration> {
    let h = resp.headers().clone();
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let after: u64 = header("retry-after")?.parse().ok()?;
    if header("x-should-retry").as_deref() != Some("true")
        || header("content-type").as_deref() != Some("application/json")
    {
        return None;
    }
    let body: Value = resp.json().await.ok()?;
    (body["error"]["code"] == "service_draining" && body["error"]["type"] == "server_error")
        .then(|| Duration::from_secs(after))
}

fn timeline_csv(samples: &[Sample]) -> String {
    let mut out =
        String::from("t_ms,client_inflight,envoy_inflight,completed,rejected_503,failed\n");
    for s in samples {
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            s.t_ms,
            s.inflight,
            s.envoy_inflight.map(|v| v.to_string()).unwrap_or_default(),
            s.completed,
            s.rejected,
            s.failed
        ));
    }
    out
}

/// A plotted line: label, colour, panel, value.
type Series = (
    &'static str,
    &'static str,
    usize,
    fn(&Sample) -> Option<u64>,
);

/// Two panels: requests in flight (client side and Envoy's gauge), and the
/// cumulative completed / rejected / failed; drain start and Envoy's exit
/// marked.
fn timeline_svg(samples: &[Sample], drain_ms: u64, exit_ms: Option<u64>, plan: &Plan) -> String {
    let (w, h, left, top, panel, gap) = (900.0, 560.0, 70.0, 40.0, 200.0, 60.0);
    let t_max = samples.last().map(|s| s.t_ms).unwrap_or(1).max(1) as f64;
    let x = |t: u64| left + (t as f64 / t_max) * (w - left - 60.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"15\">drainpipe rollout: {} requests, concurrency {}, {} instance(s), grace {} ms</text>\n",
        plan.requests, plan.concurrency, plan.instances, plan.grace_ms
    );
    let series: [Series; 5] = [
        ("in flight (clients)", "#1f77b4", 0, |s| Some(s.inflight)),
        (
            "in flight (drainpipe_inflight, instance 0)",
            "#ff7f0e",
            0,
            |s| s.envoy_inflight,
        ),
        ("completed (cumulative)", "#2ca02c", 1, |s| {
            Some(s.completed)
        }),
        ("rejected 503 (cumulative)", "#d62728", 1, |s| {
            Some(s.rejected)
        }),
        ("failed or truncated (cumulative)", "#000000", 1, |s| {
            Some(s.failed)
        }),
    ];
    for p in 0..2 {
        let y0 = top + p as f64 * (panel + gap);
        let max = series
            .iter()
            .filter(|s| s.2 == p)
            .flat_map(|s| samples.iter().filter_map(s.3))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        svg.push_str(&format!(
            "<rect x=\"{left}\" y=\"{y0}\" width=\"{}\" height=\"{panel}\" fill=\"none\" stroke=\"#999\"/>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\n",
            w - left - 60.0,
            left - 6.0,
            y0 + 12.0,
            left - 6.0,
            y0 + panel
        ));
        for (n, (label, color, _, get)) in series.iter().filter(|s| s.2 == p).enumerate() {
            let points: Vec<String> = samples
                .iter()
                .filter_map(|s| {
                    get(s).map(|v| {
                        format!(
                            "{:.1},{:.1}",
                            x(s.t_ms),
                            y0 + panel - v as f64 / max * panel
                        )
                    })
                })
                .collect();
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n\
                 <text x=\"{}\" y=\"{}\" fill=\"{color}\">{label}</text>\n",
                points.join(" "),
                left + 8.0,
                y0 + 16.0 + 15.0 * n as f64
            ));
        }
    }
    let bottom = top + 2.0 * panel + gap;
    let mut mark = |t: u64, label: &str, color: &str| {
        svg.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"{color}\" stroke-dasharray=\"5,4\"/>\n\
             <text x=\"{0:.1}\" y=\"{1}\" fill=\"{color}\" text-anchor=\"middle\">{label}</text>\n",
            x(t),
            bottom + 16.0
        ));
    };
    mark(drain_ms, "drain start", "#9467bd");
    if let Some(e) = exit_ms {
        mark(e, "Envoy exit", "#8c564b");
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">time (s), 0 to {:.1}</text>\n</svg>\n",
        w / 2.0,
        h - 10.0,
        t_max / 1000.0
    ));
    svg
}

/// Writes the report next to the timeline.
pub fn write_report(report: &Report, dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("rollout-{}.txt", report.instances));
    std::fs::write(
        &path,
        report.summary() + "\nprestop.sh:\n" + &report.prestop_output,
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_deterministic_and_about_30_50_20() {
        let (mut s, mut p, mut m) = (0, 0, 0);
        for i in 0..10_000 {
            match kind(i) {
                Kind::Stream { chunks } => {
                    assert!((20..=200).contains(&chunks));
                    s += 1
                }
                Kind::Plain => p += 1,
                Kind::Models => m += 1,
            }
        }
        assert!((2_700..3_300).contains(&s), "{s}");
        assert!((4_500..5_500).contains(&p), "{p}");
        assert!((1_700..2_300).contains(&m), "{m}");
        assert!(matches!(
            (kind(7), kind(7)),
            (Kind::Plain, Kind::Plain)
                | (Kind::Models, Kind::Models)
                | (Kind::Stream { .. }, Kind::Stream { .. })
        ));
    }
}
