//! A real Prometheus server (the Debian package's `prometheus`, as
//! operators run it) scraping every replica's Envoy `/stats/prometheus`
//! during a rollout, so the harness can read its figures back with PromQL.
//!
//! The replicas come and go: the targets are a `file_sd_configs` file the
//! harness rewrites (whole, by renaming) as it starts replicas, each target
//! labelled with its replica's name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::envoy::{free_port, Scratch};
use crate::process::ChildGuard;

/// How often Prometheus scrapes each replica.
pub const SCRAPE_INTERVAL_MS: u64 = 500;
const TARGETS_FILE: &str = "replicas.json";

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    child: ChildGuard,
    dir: Scratch,
    port: u16,
    log: PathBuf,
}

/// Prometheus's configuration: one job scraping the replicas' Envoy admin
/// at `/stats/prometheus` (only the plugin's stats), its targets from
/// `targets`.
pub fn config(targets: &Path) -> String {
    let interval = format!("{SCRAPE_INTERVAL_MS}ms");
    let doc = json!({
        "global": {"scrape_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [{
            "job_name": "drainpipe",
            "metrics_path": "/stats/prometheus",
            "params": {"filter": ["drainpipe_"]},
            "file_sd_configs": [{"files": [targets.display().to_string()], "refresh_interval": "1s"}]
        }]
    });
    // JSON is YAML.
    doc.to_string()
}

impl Prometheus {
    /// Starts `prometheus` on a free loopback port, with no targets yet,
    /// and waits until it is ready.
    pub fn start() -> anyhow::Result<Prometheus> {
        let dir = Scratch::new("prometheus")?;
        let targets = dir.path().join(TARGETS_FILE);
        write_targets(&targets, &BTreeMap::new())?;
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config(&targets))?;
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context(
                "cannot start prometheus (Debian package `prometheus`, installed by `cargo xtask setup`)",
            )?;
        let mut p = Prometheus {
            child: ChildGuard::new(child),
            dir,
            port,
            log,
        };
        p.wait_ready()?;
        Ok(p)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let limit = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "prometheus exited ({status}) at start-up:\n{}",
                    crate::process::tail(&self.log, 20)
                );
            }
            let ready = crate::http1::request(
                ("127.0.0.1", self.port),
                "GET",
                "/-/ready",
                "",
                Duration::from_secs(1),
            );
            if ready.is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < limit,
                "prometheus not ready after 30 s:\n{}",
                crate::process::tail(&self.log, 20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Scrapes `targets` from now on: replica name → Envoy admin port.
    pub fn set_targets(&self, targets: &BTreeMap<String, u16>) -> anyhow::Result<()> {
        write_targets(&self.dir.path().join(TARGETS_FILE), targets)
    }

    /// Evaluates an instant `query` now: each series' `replica` label and
    /// value.
    pub async fn query(&self, query: &str) -> anyhow::Result<BTreeMap<String, f64>> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let doc: Value = reqwest::Client::new()
            .get(url)
            .query(&[("query", query)])
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(doc["status"] == "success", "PromQL {query}: {doc}");
        let series = doc
            .pointer("/data/result")
            .and_then(Value::as_array)
            .with_context(|| format!("PromQL {query}: no result: {doc}"))?;
        Ok(series
            .iter()
            .filter_map(|s| {
                let name = s.pointer("/metric/replica")?.as_str()?.to_string();
                let value = s.pointer("/value/1")?.as_str()?.parse().ok()?;
                Some((name, value))
            })
            .collect())
    }
}

/// The `file_sd_configs` file: one target group per replica, written whole
/// by renaming (Prometheus would read a file written in place half-written).
fn write_targets(path: &Path, targets: &BTreeMap<String, u16>) -> anyhow::Result<()> {
    let groups: Vec<Value> = targets
        .iter()
        .map(|(name, port)| json!({"targets": [format!("127.0.0.1:{port}")], "labels": {"replica": name}}))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&groups)?)?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_labelled_with_the_replica_name() {
        let dir = Scratch::new("prom-targets").unwrap();
        let path = dir.path().join(TARGETS_FILE);
        write_targets(&path, &BTreeMap::from([("old-0".to_string(), 9901)])).unwrap();
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            doc,
            json!([{"targets": ["127.0.0.1:9901"], "labels": {"replica": "old-0"}}])
        );
        let cfg: Value = serde_json::from_str(&config(&path)).unwrap();
        assert_eq!(
            cfg.pointer("/scrape_configs/0/metrics_path"),
            Some(&json!("/stats/prometheus"))
        );
    }
}
