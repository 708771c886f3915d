//! The rollout harness: a rolling update of drainpipe replicas behind a
//! real Envoy front proxy, under continuous load, counting what every
//! request got at the client.
//!
//! The topology users run: clients → front Envoy → replicas, each replica a
//! real Envoy with the plugin in front of its own fake model server
//! (OpenAI-compatible, with Anthropic Messages and WebSocket sessions). The
//! front's endpoints come from an EDS file the harness rewrites as
//! Kubernetes' endpoint controller does: it probes every replica's
//! readiness (the plugin's health path), and a replica whose probe fails is
//! removed, one that passes is added, after a propagation delay. The front
//! retries what drainpipe says is safe to retry, on another replica
//! ([`front::retry_policy`]), WebSocket upgrades included; the clients do
//! not retry (but for an upgrade refused with a 503 the front did not retry,
//! see `session`), so a failure anywhere shows at the client. With
//! [`Plan::prometheus`] a real Prometheus scrapes the replicas
//! ([`prom`]).
//!
//! The rolling update is a Deployment's with maxSurge 1 and maxUnavailable
//! 0: a new replica starts, and once it is ready and in the endpoints one
//! old replica is drained by its preStop hook (`envoy/prestop.sh`: drain,
//! wait for `drained`, stop Envoy), then gets SIGTERM; the next new replica
//! starts as the old one begins terminating.
//!
//! The load: streams of 1 to 10 s (a token every 100 ms; two in three
//! OpenAI chat completions, one in three Anthropic Messages) on
//! `stream_concurrency` connections, plain completions (70 %) and model
//! listings (30 %) on `concurrency` more, and WebSocket sessions of 1 to 4 s
//! (a message and its echo every 100 ms, then the close handshake) on
//! `session_concurrency` more, without a pause, from before the rollout
//! until it is over and at least `requests` have been sent.

pub mod front;
mod plot;
pub mod prom;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::envoy::{plugin_wasm, prometheus_value, repo_root, EnvoyConfig, Scratch};
use crate::fake_llm::{sse_events, sse_named_events};
use crate::{Envoy, EnvoyOptions, FakeLlm, Ports};

pub use front::Retries;

/// How far Prometheus's drain start may be from the harness's: the hook
/// (or the supervisor) starts the drain a moment after the harness ran it.
pub const PROM_DRAIN_START_TOLERANCE_MS: u64 = 1_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// At least this many requests; the load goes on until the rollout is
    /// over too.
    pub requests: u64,
    /// Connections sending plain completions and model listings.
    pub concurrency: usize,
    /// Connections sending streams (OpenAI and Anthropic).
    pub stream_concurrency: usize,
    /// Connections running WebSocket sessions one after another (0: none).
    pub session_concurrency: usize,
    pub replicas: usize,
    /// From a readiness change to the endpoints' change at the front.
    pub propagation_ms: u64,
    /// How often each replica's readiness is probed.
    pub probe_ms: u64,
    /// Load before the rollout starts.
    pub warmup_ms: u64,
    pub admit_window_ms: u64,
    pub grace_ms: u64,
    pub envoy_concurrency: u32,
    /// Each replica's Envoy runs under `drainpipe run` (the supervisor for
    /// containers) and is stopped by SIGTERM to it, as `docker stop` does,
    /// instead of by the preStop hook.
    pub supervisor: bool,
    /// A real Prometheus scrapes every replica during the run, and the
    /// report reads its figures back with PromQL ([`prom`]).
    pub prometheus: bool,
    /// Where the CSV, SVG and report go (none if `None`).
    pub out_dir: Option<PathBuf>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            requests: 20_000,
            concurrency: 32,
            stream_concurrency: 48,
            session_concurrency: 8,
            replicas: 3,
            propagation_ms: 2_000,
            probe_ms: 500,
            warmup_ms: 5_000,
            // Covers a probe period and the propagation delay with margin:
            // the front stops sending before the replica stops admitting.
            admit_window_ms: 4_000,
            // The longest stream (10 s) admitted at the end of the admit
            // window ends inside it, final-event margin included.
            grace_ms: 20_000,
            envoy_concurrency: 2,
            supervisor: false,
            prometheus: false,
            out_dir: None,
        }
    }
}

impl Plan {
    /// Refuses plans the rollout cannot run as described.
    pub fn validate(&self) -> Result<(), String> {
        if self.replicas == 0 || self.replicas > 20 {
            return Err(format!("replicas must be 1 to 20, got {}", self.replicas));
        }
        if self.concurrency == 0 || self.stream_concurrency == 0 {
            return Err("concurrency and stream concurrency must be at least 1".into());
        }
        if self.probe_ms == 0 {
            return Err("the probe period must be at least 1 ms".into());
        }
        if self.admit_window_ms > self.grace_ms {
            return Err(format!(
                "the admit window ({} ms) must not exceed the grace period ({} ms)",
                self.admit_window_ms, self.grace_ms
            ));
        }
        Ok(())
    }
}

/// What one request got at the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 200 and the whole body (OpenAI streams: every token and `[DONE]`;
    /// Anthropic streams: every token and `message_stop`); a WebSocket
    /// session: every message echoed, then the close handshake the client
    /// began.
    Completed,
    /// Ended by the plugin's own ending for what outlives the grace period:
    /// a stream's final error event, a session's close frame with code 1012.
    EndedByDrain,
    /// A body that broke off, a stream without its last event, a session
    /// that ended without a close frame (a reset, or the connection closed).
    Truncated,
    /// No response, a status other than 200 (101 for a session), or a
    /// session closed with another code before its messages were through.
    Failed,
}

/// A request of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An OpenAI chat completion stream.
    Stream {
        chunks: u64,
    },
    /// An Anthropic Messages stream.
    Anthropic {
        chunks: u64,
    },
    Plain,
    Models,
    /// A WebSocket session of `messages` exchanges.
    Session {
        messages: u64,
    },
}

impl Kind {
    fn class(self) -> Class {
        match self {
            Kind::Stream { .. } => Class::OpenAiStream,
            Kind::Anthropic { .. } => Class::AnthropicStream,
            Kind::Plain | Kind::Models => Class::Short,
            Kind::Session { .. } => Class::Session,
        }
    }
}

/// The kinds of request the report counts apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    OpenAiStream,
    AnthropicStream,
    Session,
    /// Plain completions and model listings.
    Short,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::OpenAiStream,
        Class::AnthropicStream,
        Class::Session,
        Class::Short,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Class::OpenAiStream => "OpenAI streams",
            Class::AnthropicStream => "Anthropic streams",
            Class::Session => "WebSocket sessions",
            Class::Short => "completions, listings",
        }
    }
}

/// What the clients of one kind got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub sent: u64,
    pub completed: u64,
    /// Ended by the plugin's final event or close frame 1012.
    pub ended_by_drain: u64,
    pub truncated_or_reset: u64,
    pub failed: u64,
    /// Refused with the drain's 503 that the front had not retried, and
    /// sent again by the client (sessions only; counted once in `sent`).
    pub retried_by_client: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.sent += o.sent;
        self.completed += o.completed;
        self.ended_by_drain += o.ended_by_drain;
        self.truncated_or_reset += o.truncated_or_reset;
        self.failed += o.failed;
        self.retried_by_client += o.retried_by_client;
    }
}

/// splitmix64: a fixed, well-spread sequence.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`-th streamed request: 10 to 100 tokens 100 ms apart (1 to 10 s);
/// one in three an Anthropic stream, the others OpenAI streams.
fn stream_kind(i: u64) -> Kind {
    let m = mix(i);
    let chunks = 10 + m % 91;
    match (m >> 32) % 3 {
        0 => Kind::Anthropic { chunks },
        _ => Kind::Stream { chunks },
    }
}

/// The `i`-th WebSocket session: 10 to 40 messages 100 ms apart (1 to 4 s).
fn session_kind(i: u64) -> Kind {
    Kind::Session {
        messages: 10 + mix(i) % 31,
    }
}

/// The `i`-th short request: 70 % plain completions, 30 % model listings.
fn short_kind(i: u64) -> Kind {
    match mix(i) % 10 {
        0..=6 => Kind::Plain,
        _ => Kind::Models,
    }
}

/// What the clients saw, by kind, and how many requests are in flight.
#[derive(Default)]
struct Counts {
    inflight: AtomicU64,
    /// Indexed by the position in [`Class::ALL`].
    by_class: Mutex<[Tally; 4]>,
}

impl Counts {
    fn record(&self, class: Class, outcome: Outcome, client_retries: u64) {
        let i = Class::ALL.iter().position(|&c| c == class).unwrap_or(0);
        let t = &mut self.by_class.lock().unwrap()[i];
        t.sent += 1;
        t.retried_by_client += client_retries;
        *match outcome {
            Outcome::Completed => &mut t.completed,
            Outcome::EndedByDrain => &mut t.ended_by_drain,
            Outcome::Truncated => &mut t.truncated_or_reset,
            Outcome::Failed => &mut t.failed,
        } += 1;
    }
}

/// One finished request: when it started (ms since the load began), its
/// time to the response headers, and what it got.
#[derive(Debug, Clone, Copy)]
struct Done {
    start_ms: u64,
    headers_ms: u64,
    outcome: Outcome,
}

/// A replica's life, in ms since the load began.
#[derive(Debug, Clone, Default)]
pub struct ReplicaLife {
    pub name: String,
    pub traffic_port: u16,
    pub admin_port: u16,
    pub started_ms: u64,
    pub ready_ms: Option<u64>,
    pub added_ms: Option<u64>,
    pub drain_ms: Option<u64>,
    pub removed_ms: Option<u64>,
    pub exited_ms: Option<u64>,
    /// `drainpipe_drain_duration_ms`, the last value read.
    pub drain_duration_ms: Option<u64>,
    /// `drainpipe_streams_ended` and `drainpipe_drain_resets`, last read.
    pub streams_ended: u64,
    pub drain_resets: u64,
    pub prestop_exit: Option<i32>,
    pub prestop_output: String,
    /// Read back from Prometheus (`--prometheus`): the largest
    /// `drainpipe_inflight` it scraped, and `drainpipe_drain_started_unix_ms`.
    pub prom_max_inflight: Option<u64>,
    pub prom_drain_started_unix_ms: Option<u64>,
    /// Gone (exited): no more probes or samples.
    gone: bool,
    /// The last probe passed.
    probe_ok: bool,
    /// In the front's endpoints.
    in_endpoints: bool,
    /// A change of the endpoints waiting for the propagation delay.
    pending: Option<(bool, u64)>,
}

/// One sample of the timeline: each replica's in-flight count (by index
/// into the replicas; absent when it could not be read).
#[derive(Debug, Clone)]
pub struct Sample {
    pub t_ms: u64,
    pub client_inflight: u64,
    pub replica_inflight: Vec<Option<u64>>,
}

/// Latency percentiles of the time to response headers, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Latency {
    fn of(mut ms: Vec<u64>) -> Latency {
        ms.sort_unstable();
        let at = |q: f64| match ms.len() {
            0 => 0.0,
            n => ms[((n as f64 * q).ceil() as usize).clamp(1, n) - 1] as f64,
        };
        Latency {
            requests: ms.len() as u64,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub plan: Plan,
    /// All kinds together.
    pub sent: u64,
    /// SSE streams, OpenAI and Anthropic.
    pub streams: u64,
    pub completed: u64,
    pub ended_by_drain: u64,
    pub truncated_or_reset: u64,
    pub failed: u64,
    /// By kind, in the order of [`Class::ALL`].
    pub by_class: Vec<(Class, Tally)>,
    pub before: Latency,
    pub during: Latency,
    pub rollout_start_ms: u64,
    pub rollout_end_ms: u64,
    pub load_ms: u64,
    pub front: Retries,
    pub replicas: Vec<ReplicaLife>,
    pub samples: Vec<Sample>,
    pub files: Vec<PathBuf>,
    /// The start of the load, unix ms (the replicas' clock).
    pub epoch_unix_ms: u64,
}

impl Report {
    /// The pass criteria: every request completed whole at the client
    /// (nothing failed, truncated, reset or ended early), every old replica
    /// drained and exited inside its grace period.
    pub fn verdict(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for (n, what) in [
            (self.failed, "failed"),
            (self.truncated_or_reset, "truncated or reset"),
            (
                self.ended_by_drain,
                "ended by the drain (final event, close 1012)",
            ),
        ] {
            if n > 0 {
                problems.push(format!("{n} {what} at the client"));
            }
        }
        if self.completed != self.sent {
            problems.push(format!("{} of {} completed", self.completed, self.sent));
        }
        for r in self.replicas.iter().filter(|r| r.drain_ms.is_some()) {
            match (r.drain_ms, r.exited_ms) {
                (Some(d), Some(e)) if e - d <= self.plan.grace_ms => {}
                (Some(d), Some(e)) => problems.push(format!(
                    "{} exited {} ms after its drain started, past the {} ms grace period",
                    r.name,
                    e - d,
                    self.plan.grace_ms
                )),
                _ => problems.push(format!("{} did not exit", r.name)),
            }
            if r.prestop_exit != Some(0) {
                problems.push(format!(
                    "{}: {} exited {:?}",
                    r.name,
                    match self.plan.supervisor {
                        true => "drainpipe run",
                        false => "prestop.sh",
                    },
                    r.prestop_exit
                ));
            }
        }
        if self.plan.prometheus {
            problems.extend(self.prometheus_problems());
        }
        let drained = self
            .replicas
            .iter()
            .filter(|r| r.exited_ms.is_some())
            .count();
        if drained != self.plan.replicas {
            problems.push(format!(
                "{drained} of {} old replicas replaced",
                self.plan.replicas
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Prometheus's figures against the harness's own: every replica
    /// scraped, and each drain's start as Prometheus recorded it within
    /// [`PROM_DRAIN_START_TOLERANCE_MS`] of when the harness began it.
    fn prometheus_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for r in &self.replicas {
            if r.prom_max_inflight.is_none() {
                problems.push(format!(
                    "Prometheus has no {} for {}",
                    drainpipe::metrics::INFLIGHT,
                    r.name
                ));
            }
            let Some(drain_ms) = r.drain_ms else { continue };
            let ours = self.epoch_unix_ms + drain_ms;
            match r.prom_drain_started_unix_ms {
                Some(theirs) if theirs.abs_diff(ours) <= PROM_DRAIN_START_TOLERANCE_MS => {}
                other => problems.push(format!(
                    "{}: Prometheus's {} is {other:?}, the harness began the drain at {ours}",
                    r.name,
                    drainpipe::metrics::DRAIN_STARTED_UNIX_MS
                )),
            }
        }
        problems
    }

    /// The largest in-flight count the harness's own samples read from
    /// replica `index`.
    fn sampled_max_inflight(&self, index: usize) -> Option<u64> {
        self.samples
            .iter()
            .filter_map(|s| s.replica_inflight.get(index).copied().flatten())
            .max()
    }

    /// What Prometheus scraped, against the harness's own figures.
    fn prometheus_table(&self) -> String {
        let mut s = format!(
            "Prometheus (scraping each replica's /stats/prometheus every {} ms), read back with PromQL:\n\n\
             | replica | max in flight: harness (every 200 ms) | max in flight: `max_over_time({})` | drain start: harness | drain start: `{}`, off by |\n\
             |---|---:|---:|---:|---:|\n",
            prom::SCRAPE_INTERVAL_MS,
            drainpipe::metrics::INFLIGHT,
            drainpipe::metrics::DRAIN_STARTED_UNIX_MS,
        );
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        for (i, r) in self.replicas.iter().enumerate() {
            let ours = r.drain_ms.map(|d| self.epoch_unix_ms + d);
            let off = ours
                .zip(r.prom_drain_started_unix_ms)
                .map(|(o, t)| format!("{:+} ms", t as i64 - o as i64))
                .unwrap_or_else(|| "-".into());
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.name,
                opt(self.sampled_max_inflight(i)),
                opt(r.prom_max_inflight),
                r.drain_ms
                    .map(|d| format!("{:.1} s", d as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                off,
            ));
        }
        s.push('\n');
        s
    }

    /// What the clients of kind `c` got.
    pub fn class(&self, c: Class) -> Tally {
        self.by_class
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, t)| *t)
            .unwrap_or_default()
    }

    /// What the clients got, by kind, as a Markdown table.
    fn client_table(&self) -> String {
        let mut total = Tally::default();
        for (_, t) in &self.by_class {
            total.add(t);
        }
        let mut s = String::from("| at the client |");
        for (c, _) in &self.by_class {
            s.push_str(&format!(" {} |", c.label()));
        }
        s.push_str(" all |\n|---|");
        s.push_str(&"---:|".repeat(self.by_class.len() + 1));
        s.push('\n');
        type Row = (&'static str, fn(&Tally) -> u64);
        let rows: [Row; 6] = [
            ("sent", |t| t.sent),
            ("completed whole", |t| t.completed),
            ("failed", |t| t.failed),
            ("truncated or reset", |t| t.truncated_or_reset),
            ("ended by the drain (final event, close 1012)", |t| {
                t.ended_by_drain
            }),
            (
                "retried by the client (503 not retried by the front)",
                |t| t.retried_by_client,
            ),
        ];
        for (name, get) in rows {
            s.push_str(&format!("| {name} |"));
            for (_, t) in &self.by_class {
                s.push_str(&format!(" {} |", get(t)));
            }
            s.push_str(&format!(" {} |\n", get(&total)));
        }
        s
    }

    /// The report, as text (Markdown tables).
    pub fn summary(&self) -> String {
        let p = &self.plan;
        let mut s = format!(
            "rollout: {} replicas, maxSurge 1, maxUnavailable 0, behind an Envoy front (EDS, \
             propagation {} ms); admit window {} ms, grace {} ms\n\
             load: {} requests in {:.1} s ({} OpenAI and Anthropic streams of 1-10 s on {} \
             connections, {} WebSocket sessions of 1-4 s on {}, plain completions and model \
             listings on {}); rollout from {:.1} s to {:.1} s\n\n{}\n\
             | time to response headers (sessions: to the 101) | requests | p50 | p99 |\n|---|---:|---:|---:|\n\
             | before the rollout | {} | {:.0} ms | {:.0} ms |\n\
             | during the rollout | {} | {:.0} ms | {:.0} ms |\n\n\
             front Envoy: {} requests to replicas, {} retried ({} of them succeeded), {} retries refused\n\n\
             | replica | added | drain start | drained after | removed | exited | drain start to exit | final events | cut mid-body |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            p.replicas,
            p.propagation_ms,
            p.admit_window_ms,
            p.grace_ms,
            self.sent,
            self.load_ms as f64 / 1000.0,
            self.streams,
            p.stream_concurrency,
            self.class(Class::Session).sent,
            p.session_concurrency,
            p.concurrency,
            self.rollout_start_ms as f64 / 1000.0,
            self.rollout_end_ms as f64 / 1000.0,
            self.client_table(),
            self.before.requests,
            self.before.p50_ms,
            self.before.p99_ms,
            self.during.requests,
            self.during.p50_ms,
            self.during.p99_ms,
            self.front.upstream_requests,
            self.front.retried,
            self.front.succeeded,
            self.front.refused,
        );
        let secs = |v: Option<u64>| {
            v.map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "-".into())
        };
        for r in &self.replicas {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.name,
                secs(r.added_ms),
                secs(r.drain_ms),
                secs(r.drain_duration_ms.filter(|_| r.drain_ms.is_some())),
                secs(r.removed_ms),
                secs(r.exited_ms),
                secs(r.drain_ms.zip(r.exited_ms).map(|(d, e)| e - d)),
                r.streams_ended,
                r.drain_resets,
            ));
        }
        s.push_str(
            "\nfinal events: the replica's drainpipe_streams_ended; cut mid-body: its \
             drainpipe_drain_resets (a WebSocket session that ended by its close handshake \
             is whole)\n\n",
        );
        if self.plan.prometheus {
            s.push_str(&self.prometheus_table());
        }
        for f in &self.files {
            s.push_str(&format!("wrote {}\n", f.display()));
        }
        s.push_str(&match self.verdict() {
            Ok(()) => "rollout: PASS\n".to_string(),
            Err(e) => format!("rollout: FAIL: {e}\n"),
        });
        s
    }
}

/// A running replica: its Envoy (taken by the drain) and its model server.
struct Replica {
    envoy: Option<Envoy>,
    /// Envoy's own pid under `drainpipe run` (`--supervisor`): the guard
    /// kills the supervisor, and a replica still running at the end takes
    /// its Envoy with it (see [`Drop`]).
    supervised_envoy: Option<i32>,
    _upstream: FakeLlm,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(pid) = self.supervised_envoy {
            if crate::ops::process_alive(pid) {
                // SAFETY: kill(2) on the supervisor's child, still running.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Everything the harness's tasks share.
struct World {
    epoch: Instant,
    lives: Mutex<Vec<ReplicaLife>>,
    eds_dir: PathBuf,
    eds_version: AtomicU64,
    plan: Plan,
}

impl World {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The replicas not yet exited, by index, with the port `port` picks
    /// (the traffic port for the probe, the admin port for the stats).
    fn live_ports(&self, port: fn(&ReplicaLife) -> u16) -> Vec<(usize, u16)> {
        self.lives
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.gone)
            .map(|(i, l)| (i, port(l)))
            .collect()
    }

    /// Writes the endpoints: every replica marked in them.
    fn publish(&self, lives: &[ReplicaLife]) -> anyhow::Result<()> {
        let ports: Vec<u16> = lives
            .iter()
            .filter(|l| l.in_endpoints)
            .map(|l| l.traffic_port)
            .collect();
        let version = self.eds_version.fetch_add(1, SeqCst) + 1;
        front::write_endpoints(&self.eds_dir, version, &ports).map(drop)
    }
}

/// Starts a replica: a model server and an Envoy with the plugin.
fn start_replica(plan: &Plan, upstream: FakeLlm, wasm: &Path) -> anyhow::Result<Replica> {
    let ports = Ports::fresh(upstream.port());
    let cfg = EnvoyConfig::repo()?.localize(ports, wasm).patch_plugin(
        "drainpipe",
        json!({"admit_window_ms": plan.admit_window_ms, "grace_ms": plan.grace_ms}),
    );
    let timeout = format!("{}s", stop_timeout_s(plan));
    let opts = EnvoyOptions {
        concurrency: plan.envoy_concurrency,
        wrapper: match plan.supervisor {
            true => crate::ops::run_wrapper(ports, &["--timeout", &timeout]),
            false => Vec::new(),
        },
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::start(&cfg, ports, opts).context("starting a replica's Envoy")?;
    let supervised_envoy = match plan.supervisor {
        true => Some(crate::ops::started_envoy_pid(&envoy)?),
        false => None,
    };
    Ok(Replica {
        envoy: Some(envoy),
        supervised_envoy,
        _upstream: upstream,
    })
}

/// Runs the plan: replicas, the front, the load and the rolling update;
/// writes the timeline and reports.
pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    plan.validate().map_err(anyhow::Error::msg)?;
    let wasm = plugin_wasm()?;
    let eds = Scratch::new("rollout-eds")?;

    // The old replicas, ready and in the endpoints before the front starts.
    let mut replicas = Vec::new();
    let mut lives = Vec::new();
    for i in 0..plan.replicas {
        let r = start_replica(plan, FakeLlm::start().await?, &wasm)?;
        let envoy = r.envoy.as_ref().expect("just started");
        lives.push(ReplicaLife {
            name: format!("old-{i}"),
            traffic_port: envoy.ports.traffic,
            admin_port: envoy.ports.admin,
            started_ms: 0,
            ready_ms: Some(0),
            added_ms: Some(0),
            probe_ok: true,
            in_endpoints: true,
            ..ReplicaLife::default()
        });
        replicas.push(r);
    }
    let ports: Vec<u16> = lives.iter().map(|l| l.traffic_port).collect();
    front::write_endpoints(eds.path(), 1, &ports)?;
    let prometheus = match plan.prometheus {
        true => {
            let p = tokio::task::spawn_blocking(prom::Prometheus::start).await??;
            p.set_targets(&scrape_targets(&lives))?;
            Some(p)
        }
        false => None,
    };
    let front_ports = Ports::fresh(0);
    let front_cfg = front::config(front_ports.traffic, front_ports.admin, eds.path());
    let front = Envoy::start(
        &EnvoyConfig::from_yaml(&front_cfg.to_string())?,
        front_ports,
        EnvoyOptions::default(),
    )
    .context("starting the front Envoy")?;
    let base = front.traffic("");
    front::wait_for_endpoints(&front, plan.replicas).await?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency + plan.stream_concurrency)
        .build()?;
    let ws_base = format!("ws://127.0.0.1:{}", front_ports.traffic);
    // Everything is timed from the start of the load.
    let epoch = Instant::now();
    let epoch_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let world = Arc::new(World {
        epoch,
        lives: Mutex::new(lives),
        eds_dir: eds.path().to_path_buf(),
        eds_version: AtomicU64::new(1),
        plan: plan.clone(),
    });
    let counts = Arc::new(Counts::default());
    let done_log = Arc::new(Mutex::new(Vec::<Done>::new()));
    let rollout_over = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));

    let controller = tokio::spawn(endpoint_controller(
        world.clone(),
        client.clone(),
        stop.clone(),
    ));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampler = tokio::spawn(sampler(
        world.clone(),
        client.clone(),
        counts.clone(),
        samples.clone(),
        stop.clone(),
    ));

    // The load.
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    let (shorts, streams) = (plan.concurrency, plan.stream_concurrency);
    for w in 0..shorts + streams + plan.session_concurrency {
        let kind_of: fn(u64) -> Kind = match w {
            w if w < shorts => short_kind,
            w if w < shorts + streams => stream_kind,
            _ => session_kind,
        };
        let (client, counts, log, next, over, base, ws_base) = (
            client.clone(),
            counts.clone(),
            done_log.clone(),
            next.clone(),
            rollout_over.clone(),
            base.clone(),
            ws_base.clone(),
        );
        let total = plan.requests;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, SeqCst);
                if i >= total && over.load(SeqCst) {
                    return;
                }
                let kind = kind_of(i);
                counts.inflight.fetch_add(1, SeqCst);
                let start = epoch.elapsed();
                let (outcome, headers, retries) = match kind {
                    Kind::Session { messages } => session(&ws_base, messages).await,
                    _ => {
                        let (o, h) = request(&client, &base, kind).await;
                        (o, h, 0)
                    }
                };
                counts.inflight.fetch_sub(1, SeqCst);
                counts.record(kind.class(), outcome, retries);
                log.lock().unwrap().push(Done {
                    start_ms: start.as_millis() as u64,
                    headers_ms: headers.as_millis() as u64,
                    outcome,
                });
            }
        }));
    }

    // The rolling update.
    tokio::time::sleep(Duration::from_millis(plan.warmup_ms)).await;
    let rollout_start_ms = world.now_ms();
    let mut drains = Vec::new();
    for k in 0..plan.replicas {
        let upstream = FakeLlm::start().await?;
        let (p, w) = (plan.clone(), wasm.clone());
        let started_ms = world.now_ms();
        let replica =
            tokio::task::spawn_blocking(move || start_replica(&p, upstream, &w)).await??;
        let envoy = replica.envoy.as_ref().expect("just started");
        let index = {
            let mut lives = world.lives.lock().unwrap();
            lives.push(ReplicaLife {
                name: format!("new-{k}"),
                traffic_port: envoy.ports.traffic,
                admin_port: envoy.ports.admin,
                started_ms,
                ..ReplicaLife::default()
            });
            if let Some(p) = &prometheus {
                p.set_targets(&scrape_targets(&lives))?;
            }
            lives.len() - 1
        };
        replicas.push(replica);
        // maxUnavailable 0: an old replica goes only once its replacement
        // is ready and in the front's endpoints.
        let limit = Instant::now() + Duration::from_secs(60);
        while world.lives.lock().unwrap()[index].added_ms.is_none() {
            anyhow::ensure!(
                Instant::now() < limit,
                "new-{k} was not in the endpoints within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let old = replicas[k]
            .envoy
            .take()
            .expect("an old replica drains once");
        drains.push(tokio::spawn(terminate(world.clone(), k, old)));
    }
    for d in drains {
        d.await?;
    }
    let rollout_end_ms = world.now_ms();
    rollout_over.store(true, SeqCst);
    for w in workers {
        w.await?;
    }
    let load_ms = world.now_ms();
    stop.store(true, SeqCst);
    controller.await??;
    sampler.await?;

    let stats = reqwest::get(front.admin("/stats?filter=^cluster\\.replicas\\.upstream_rq_"))
        .await?
        .text()
        .await?;
    let front_retries = Retries::parse(&stats);
    drop(front);
    drop(replicas);
    if let Some(p) = &prometheus {
        read_back(p, &world).await?;
    }
    drop(prometheus);

    let log = done_log.lock().unwrap().clone();
    let latency = |from: u64, to: u64| {
        Latency::of(
            log.iter()
                .filter(|d| {
                    d.start_ms >= from && d.start_ms < to && d.outcome == Outcome::Completed
                })
                .map(|d| d.headers_ms)
                .collect(),
        )
    };
    let by_class: Vec<(Class, Tally)> = Class::ALL
        .into_iter()
        .zip(*counts.by_class.lock().unwrap())
        .collect();
    let mut total = Tally::default();
    for (_, t) in &by_class {
        total.add(t);
    }
    let streams = by_class
        .iter()
        .filter(|(c, _)| matches!(c, Class::OpenAiStream | Class::AnthropicStream))
        .map(|(_, t)| t.sent)
        .sum();
    let mut report = Report {
        plan: plan.clone(),
        sent: total.sent,
        streams,
        completed: total.completed,
        ended_by_drain: total.ended_by_drain,
        truncated_or_reset: total.truncated_or_reset,
        failed: total.failed,
        by_class,
        before: latency(0, rollout_start_ms),
        during: latency(rollout_start_ms, rollout_end_ms),
        rollout_start_ms,
        rollout_end_ms,
        load_ms,
        front: front_retries,
        replicas: world.lives.lock().unwrap().clone(),
        samples: samples.lock().unwrap().clone(),
        files: Vec::new(),
        epoch_unix_ms,
    };
    if let Some(dir) = &plan.out_dir {
        std::fs::create_dir_all(dir)?;
        let name = format!("rollout-{}", plan.replicas);
        let csv = dir.join(format!("{name}.csv"));
        std::fs::write(&csv, timeline_csv(&report))?;
        let svg = dir.join(format!("{name}.svg"));
        plot::timeline(&report, &svg)?;
        report.files.extend([csv, svg]);
    }
    Ok(report)
}

/// What Prometheus scrapes: every replica started so far, by name (one
/// that has exited stays listed; its scrapes fail and its series go stale).
fn scrape_targets(lives: &[ReplicaLife]) -> BTreeMap<String, u16> {
    lives
        .iter()
        .map(|l| (l.name.clone(), l.admin_port))
        .collect()
}

/// Reads each replica's figures back from Prometheus with PromQL, over the
/// whole run: its largest in-flight count and its drain's start.
async fn read_back(p: &prom::Prometheus, world: &World) -> anyhow::Result<()> {
    let range = format!("{}s", world.now_ms() / 1000 + 60);
    let inflight = p
        .query(&format!(
            "max_over_time({}[{range}])",
            drainpipe::metrics::INFLIGHT
        ))
        .await?;
    let started = p
        .query(&format!(
            "max_over_time({}[{range}]) > 0",
            drainpipe::metrics::DRAIN_STARTED_UNIX_MS
        ))
        .await?;
    for l in world.lives.lock().unwrap().iter_mut() {
        l.prom_max_inflight = inflight.get(&l.name).map(|&v| v as u64);
        l.prom_drain_started_unix_ms = started.get(&l.name).map(|&v| v as u64);
    }
    Ok(())
}

/// Kubernetes' endpoint controller and the mesh's propagation: probes each
/// replica's readiness every `probe_ms`; a change of it reaches the front's
/// endpoints `propagation_ms` later.
async fn endpoint_controller(
    world: Arc<World>,
    client: reqwest::Client,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let plan = &world.plan;
    let mut next_probe = 0u64;
    while !stop.load(SeqCst) {
        let now = world.now_ms();
        if now >= next_probe {
            next_probe = now + plan.probe_ms;
            for (i, port) in world.live_ports(|l| l.traffic_port) {
                let ok = client
                    .get(format!("http://127.0.0.1:{port}/healthz/ready"))
                    .timeout(Duration::from_millis(400))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                let at = world.now_ms();
                let mut lives = world.lives.lock().unwrap();
                let l = &mut lives[i];
                if ok && l.ready_ms.is_none() {
                    l.ready_ms = Some(at);
                }
                if ok != l.probe_ok {
                    l.probe_ok = ok;
                    l.pending = Some((ok, at + plan.propagation_ms));
                }
            }
        }
        world.apply_due(world.now_ms())?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

impl World {
    /// Applies the endpoint changes whose propagation delay is over.
    fn apply_due(&self, now: u64) -> anyhow::Result<()> {
        let mut lives = self.lives.lock().unwrap();
        let mut changed = false;
        for l in lives.iter_mut() {
            if let Some((add, due)) = l.pending {
                if now >= due {
                    l.pending = None;
                    if l.in_endpoints != add {
                        l.in_endpoints = add;
                        changed = true;
                        match add {
                            true => l.added_ms = Some(now),
                            false => l.removed_ms = Some(now),
                        }
                    }
                }
            }
        }
        if changed {
            self.publish(&lives)?;
        }
        Ok(())
    }
}

/// Every 200 ms: each live replica's plugin stats, and the client's count
/// in flight.
async fn sampler(
    world: Arc<World>,
    client: reqwest::Client,
    counts: Arc<Counts>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(SeqCst) {
        let targets = world.live_ports(|l| l.admin_port);
        let t_ms = world.now_ms();
        let mut inflight = vec![None; world.lives.lock().unwrap().len()];
        for (i, port) in targets {
            let text = match client
                .get(format!("http://127.0.0.1:{port}/stats/prometheus"))
                .timeout(Duration::from_millis(500))
                .send()
                .await
            {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => continue,
            };
            let stat = |name| prometheus_value(&text, name);
            inflight[i] = stat(drainpipe::metrics::INFLIGHT);
            let mut lives = world.lives.lock().unwrap();
            let l = &mut lives[i];
            if let Some(d) = stat(drainpipe::metrics::DRAIN_DURATION_MS).filter(|&d| d > 0) {
                l.drain_duration_ms = Some(d);
            }
            l.streams_ended = stat(drainpipe::metrics::STREAMS_ENDED).unwrap_or(l.streams_ended);
            l.drain_resets = stat(drainpipe::metrics::DRAIN_RESETS).unwrap_or(l.drain_resets);
        }
        samples.lock().unwrap().push(Sample {
            t_ms,
            client_inflight: counts.inflight.load(SeqCst),
            replica_inflight: inflight,
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Terminates old replica `index` as Kubernetes does: its preStop hook
/// (`envoy/prestop.sh`), then SIGTERM. The hook runs with `ENVOY_STOP=0` and
/// the harness stops Envoy through its admin right after it, as the hook
/// would: in between it reads the drain's stats once more, so the drain's
/// duration is known even when the hook stops Envoy before a sample.
async fn terminate(world: Arc<World>, index: usize, envoy: Envoy) {
    world.lives.lock().unwrap()[index].drain_ms = Some(world.now_ms());
    if world.plan.supervisor {
        return terminate_supervised(world, index, envoy).await;
    }
    let mut envoy = envoy;
    let timeout_s = stop_timeout_s(&world.plan);
    let w = world.clone();
    let (out, duration, exited) = tokio::task::spawn_blocking(move || {
        let out = Command::new("sh")
            .arg(repo_root().join("envoy/prestop.sh"))
            .env("DRAIN_URL", envoy.drain_api())
            .env("ENVOY_ADMIN", envoy.admin(""))
            .env("DRAIN_TIMEOUT_S", timeout_s.to_string())
            .env("ENVOY_STOP", "0")
            .output();
        let admin = ("127.0.0.1", envoy.ports.admin);
        let duration = crate::http1::request(
            admin,
            "GET",
            "/stats/prometheus",
            "",
            Duration::from_secs(5),
        )
        .ok()
        .and_then(|r| prometheus_value(&r.body_text(), drainpipe::metrics::DRAIN_DURATION_MS))
        .filter(|&d| d > 0);
        let _ = crate::http1::request(admin, "POST", "/quitquitquit", "", Duration::from_secs(5));
        envoy.sigterm();
        let exited = envoy.wait_exit(Duration::from_secs(10)).map(|_| w.now_ms());
        (out, duration, exited)
    })
    .await
    .unwrap_or_else(|e| (Err(std::io::Error::other(e.to_string())), None, None));
    let mut lives = world.lives.lock().unwrap();
    let l = &mut lives[index];
    l.exited_ms = exited;
    if duration.is_some() {
        l.drain_duration_ms = duration;
    }
    l.gone = true;
    match out {
        Ok(o) => {
            l.prestop_exit = o.status.code();
            l.prestop_output = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
        }
        Err(e) => l.prestop_output = format!("cannot run envoy/prestop.sh: {e}"),
    }
}

/// How long a replica's stop may wait for `drained`: `DRAIN_TIMEOUT_S` of
/// the manifests, `ceil(grace_ms / 1000) + 5`.
fn stop_timeout_s(plan: &Plan) -> u64 {
    plan.grace_ms.div_ceil(1000) + 5
}

/// Terminates old replica `index` as `docker stop` stops a container whose
/// PID 1 is `drainpipe run`: SIGTERM to the supervisor, which drains Envoy
/// and stops it. Its exit status stands where the preStop hook's does, and
/// the drain's duration is its own `drained after Ns` line when no stats
/// sample caught the gauge before Envoy stopped.
async fn terminate_supervised(world: Arc<World>, index: usize, mut envoy: Envoy) {
    let w = world.clone();
    let limit = Duration::from_secs(stop_timeout_s(&world.plan) + 15);
    let (status, exited, log) = tokio::task::spawn_blocking(move || {
        envoy.sigterm();
        let status = envoy.wait_exit(limit);
        let exited = status.map(|_| w.now_ms());
        let log: String = envoy
            .log()
            .lines()
            .filter(|l| l.starts_with("drainpipe: "))
            .map(|l| format!("{l}\n"))
            .collect();
        (status, exited, log)
    })
    .await
    .unwrap_or((None, None, String::new()));
    let mut lives = world.lives.lock().unwrap();
    let l = &mut lives[index];
    l.exited_ms = exited;
    l.gone = true;
    l.prestop_exit = status.and_then(|s| s.code());
    if l.drain_duration_ms.is_none() {
        l.drain_duration_ms = log.lines().find_map(|line| {
            let s = line.split("drained after ").nth(1)?.strip_suffix('s')?;
            s.parse::<u64>().ok().map(|s| s * 1000)
        });
    }
    l.prestop_output = log;
}

/// Sends one request through the front and classifies what came back;
/// also returns the time to the response headers.
async fn request(client: &reqwest::Client, base: &str, kind: Kind) -> (Outcome, Duration) {
    let req = match kind {
        Kind::Models => client.get(format!("{base}/v1/models")),
        Kind::Plain => client
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})),
        Kind::Stream { chunks } => client
            .post(format!("{base}/v1/chat/completions"))
            .header("x-fake-chunks", chunks.to_string())
            .header("x-fake-chunk-delay-ms", "100")
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true})),
        Kind::Anthropic { chunks } => client
            .post(format!("{base}/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .header("x-fake-chunks", chunks.to_string())
            .header("x-fake-chunk-delay-ms", "100")
            .json(&json!({"model": "m", "max_tokens": 1024, "stream": true,
                          "messages": [{"role": "user", "content": "hi"}]})),
        Kind::Session { .. } => unreachable!("sessions go through `session`"),
    };
    let started = Instant::now();
    let resp = match req.send().await {
        Ok(r) => r,
        Err(_) => return (Outcome::Failed, started.elapsed()),
    };
    let headers = started.elapsed();
    if resp.status() != 200 {
        return (Outcome::Failed, headers);
    }
    let body = match resp.bytes().await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => return (Outcome::Truncated, headers),
    };
    let outcome = match kind {
        Kind::Stream { chunks } => {
            let events = sse_events(&body);
            if events.last() == Some(&"[DONE]") && events.len() as u64 == chunks + 2 {
                Outcome::Completed
            } else if events.last().is_some_and(|e| e.starts_with("{\"error\"")) {
                Outcome::EndedByDrain
            } else {
                Outcome::Truncated
            }
        }
        Kind::Anthropic { chunks } => anthropic_outcome(&body, chunks),
        Kind::Plain | Kind::Models | Kind::Session { .. } => {
            match serde_json::from_str::<Value>(&body) {
                Ok(_) => Outcome::Completed,
                Err(_) => Outcome::Truncated,
            }
        }
    };
    (outcome, headers)
}

/// An Anthropic Messages stream of `chunks` tokens is whole when its last
/// event is `message_stop` after every token; the plugin's ending is an
/// `event: error` of type `overloaded_error`.
fn anthropic_outcome(body: &str, chunks: u64) -> Outcome {
    let events = sse_named_events(body);
    let tokens = events
        .iter()
        .filter(|(name, _)| *name == Some("content_block_delta"))
        .count() as u64;
    match events.last() {
        Some((Some("message_stop"), _)) if tokens == chunks => Outcome::Completed,
        Some((Some("error"), data)) if data.contains("\"overloaded_error\"") => {
            Outcome::EndedByDrain
        }
        _ => Outcome::Truncated,
    }
}

/// How long a session waits for its next frame.
const SESSION_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs one WebSocket session through the front: the upgrade, `messages`
/// text messages 100 ms apart each answered by its echo, then the close
/// handshake begun by the client. Returns what it got, the time to the
/// 101 and how many times the client sent the upgrade again.
///
/// An upgrade refused with 503 is sent again (after its `retry-after-ms`,
/// at most twice) only when the front did not retry it itself: its
/// `x-envoy-attempt-count` is 1. Nothing else is retried.
async fn session(ws_base: &str, messages: u64) -> (Outcome, Duration, u64) {
    let url = format!("{ws_base}/v1/realtime");
    let started = Instant::now();
    let mut retries = 0;
    let mut ws = loop {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => break ws,
            Err(WsError::Http(resp)) if resp.status() == 503 && retries < 2 => {
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                };
                if header("x-envoy-attempt-count").unwrap_or(1) > 1 {
                    return (Outcome::Failed, started.elapsed(), retries);
                }
                retries += 1;
                let wait = header("retry-after-ms").unwrap_or(1_000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            Err(_) => return (Outcome::Failed, started.elapsed(), retries),
        }
    };
    let upgraded = started.elapsed();
    let outcome = exchange(&mut ws, messages).await;
    (outcome, upgraded, retries)
}

type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A session's messages and its close handshake, classified.
async fn exchange(ws: &mut WsClient, messages: u64) -> Outcome {
    for k in 0..messages {
        if k > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = format!("message {k}");
        if ws.send(Message::text(text.clone())).await.is_err() {
            // A close frame may be waiting behind the broken write.
            return ended(ws).await;
        }
        match tokio::time::timeout(SESSION_READ_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => {}
            Ok(Some(Ok(Message::Close(frame)))) => return closed_early(frame),
            Ok(Some(Ok(_))) => return Outcome::Failed,
            _ => return Outcome::Truncated,
        }
    }
    if ws.close(None).await.is_err() {
        return ended(ws).await;
    }
    // The server's close frame answers the client's, then the end.
    loop {
        match tokio::time::timeout(SESSION_READ_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) => return Outcome::Completed,
            Ok(Some(Ok(_))) => continue,
            _ => return Outcome::Truncated,
        }
    }
}

/// After a broken write: a close frame already received ends the session
/// as that frame says; anything else is a cut.
async fn ended(ws: &mut WsClient) -> Outcome {
    loop {
        match tokio::time::timeout(SESSION_READ_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return closed_early(frame),
            Ok(Some(Ok(_))) => continue,
            _ => return Outcome::Truncated,
        }
    }
}

/// A close frame before the client's messages were through: code 1012 is
/// the plugin's ending at the grace end, any other a failure.
fn closed_early(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> Outcome {
    match frame {
        Some(f) if f.code == CloseCode::Restart => Outcome::EndedByDrain,
        _ => Outcome::Failed,
    }
}

fn timeline_csv(report: &Report) -> String {
    let mut out = String::from("t_ms,client_inflight");
    for r in &report.replicas {
        out.push_str(&format!(",{}_inflight", r.name));
    }
    out.push('\n');
    for s in &report.samples {
        out.push_str(&format!("{},{}", s.t_ms, s.client_inflight));
        for i in 0..report.replicas.len() {
            out.push(',');
            if let Some(v) = s.replica_inflight.get(i).copied().flatten() {
                out.push_str(&v.to_string());
            }
        }
        out.push('\n');
    }
    out
}

/// Writes the report next to the timeline.
pub fn write_report(report: &Report, dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("rollout-{}.md", report.plan.replicas));
    let mut text = report.summary();
    let prestops: BTreeMap<&str, &str> = report
        .replicas
        .iter()
        .filter(|r| r.drain_ms.is_some())
        .map(|r| (r.name.as_str(), r.prestop_output.as_str()))
        .collect();
    for (name, out) in prestops {
        text.push_str(&format!("\n{name}: prestop.sh said:\n```\n{out}```\n"));
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_last_1_to_10_s_a_third_anthropic_and_short_requests_are_about_70_30() {
        let (mut plain, mut models, mut anthropic) = (0, 0, 0);
        for i in 0..10_000 {
            match stream_kind(i) {
                Kind::Stream { chunks } => assert!((10..=100).contains(&chunks)),
                Kind::Anthropic { chunks } => {
                    assert!((10..=100).contains(&chunks));
                    anthropic += 1;
                }
                other => panic!("{other:?}"),
            }
            match short_kind(i) {
                Kind::Plain => plain += 1,
                Kind::Models => models += 1,
                other => panic!("{other:?}"),
            }
            match session_kind(i) {
                Kind::Session { messages } => assert!((10..=40).contains(&messages)),
                other => panic!("{other:?}"),
            }
        }
        assert!((6_500..7_500).contains(&plain), "{plain}");
        assert!((2_500..3_500).contains(&models), "{models}");
        assert!((2_900..3_800).contains(&anthropic), "{anthropic}");
    }

    #[test]
    fn an_anthropic_stream_is_whole_with_message_stop_after_every_token() {
        let event = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
        let start = event("message_start", "{}") + &event("content_block_start", "{}");
        let tokens = |n: usize| event("content_block_delta", "{}").repeat(n);
        let end = event("content_block_stop", "{}")
            + &event("message_delta", "{}")
            + &event("message_stop", "{\"type\":\"message_stop\"}");
        let whole = format!("{start}{}{end}", tokens(3));
        assert_eq!(anthropic_outcome(&whole, 3), Outcome::Completed);
        assert_eq!(anthropic_outcome(&whole, 4), Outcome::Truncated);
        let cut = format!("{start}{}", tokens(2));
        assert_eq!(anthropic_outcome(&cut, 3), Outcome::Truncated);
        let ended = cut.clone()
            + &event(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"m"}}"#,
            );
        assert_eq!(anthropic_outcome(&ended, 3), Outcome::EndedByDrain);
        // An event without its name (what the SDK skips) is not an ending.
        let unnamed = cut + "data: {\"type\":\"error\"}\n\n";
        assert_eq!(anthropic_outcome(&unnamed, 3), Outcome::Truncated);
    }

    #[test]
    fn the_client_table_counts_each_kind_and_all() {
        let mut counts = Counts::default();
        counts.record(Class::Session, Outcome::Completed, 1);
        counts.record(Class::Session, Outcome::EndedByDrain, 0);
        counts.record(Class::AnthropicStream, Outcome::Truncated, 0);
        let t = counts.by_class.get_mut().unwrap();
        assert_eq!(
            t[2],
            Tally {
                sent: 2,
                completed: 1,
                ended_by_drain: 1,
                retried_by_client: 1,
                ..Tally::default()
            }
        );
        assert_eq!(t[1].truncated_or_reset, 1);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latency::of((1..=100).collect());
        assert_eq!((l.requests, l.p50_ms, l.p99_ms), (100, 50.0, 99.0));
        assert_eq!(Latency::of(vec![]).p99_ms, 0.0);
        assert_eq!(Latency::of(vec![7]).p50_ms, 7.0);
    }

    #[test]
    fn plans_the_rollout_cannot_run_are_refused() {
        assert!(Plan::default().validate().is_ok());
        let bad = Plan {
            replicas: 0,
            ..Plan::default()
        };
        assert!(bad.validate().unwrap_err().contains("replicas"));
        let bad = Plan {
            admit_window_ms: 30_000,
            ..Plan::default()
        };
        assert!(bad.validate().unwrap_err().contains("admit window"));
    }
}
