//! The proxies under test, all in front of the same upstream: Envoy without a
//! wasm filter, Envoy with the minimal filter, Envoy with drainpipe (all
//! three from the shipped `envoy/envoy.yaml`), and the shim's reverse proxy
//! with drainpipe.
//!
//! Every Envoy variant has, besides the shipped route to the upstream, one
//! route that Envoy answers itself ([`DIRECT_PATH`], a `direct_response`):
//! what a filter costs where Envoy does the least work of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use drainpipe_tests::envoy::{free_port, Scratch};
use drainpipe_tests::http1::get_status;
use drainpipe_tests::process::{tail, ChildGuard};
use drainpipe_tests::{Envoy, EnvoyConfig, EnvoyOptions, Ports};
use serde_json::Value;

/// One proxy setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Envoy, the shipped config without its wasm filters.
    NoFilter,
    /// Envoy, the shipped config with the minimal filter instead of drainpipe.
    Minimal,
    /// The same with the minimal filter's response body callback exported
    /// too (it does nothing there): the least any filter that looks at
    /// response bodies pays per chunk, Envoy entering its VM.
    MinimalBody,
    /// Envoy, the shipped config as is.
    Drainpipe,
    /// `drainpipe-shim serve` with drainpipe.
    Shim,
    /// Envoy, the shipped config with another build of drainpipe (to compare
    /// a change with the current build in one run): the n-th given, from 1.
    Candidate(usize),
}

impl Variant {
    pub fn label(self) -> String {
        match self {
            Variant::NoFilter => "Envoy, no filter".into(),
            Variant::Minimal => "Envoy, minimal filter".into(),
            Variant::MinimalBody => "Envoy, minimal filter + body callback".into(),
            Variant::Drainpipe => "Envoy, drainpipe".into(),
            Variant::Shim => "shim, drainpipe".into(),
            Variant::Candidate(n) => format!("Envoy, drainpipe candidate {n}"),
        }
    }
}

/// The path of the route Envoy answers itself, with [`DIRECT_BODY`].
pub const DIRECT_PATH: &str = "/bench/direct";
/// The direct response's body: the upstream's JSON completion.
pub const DIRECT_BODY: &str = crate::upstream::COMPLETION;

/// The shipped Envoy config for `variant`, on `ports`, with the direct
/// route added: for drainpipe as is; otherwise without the drain listener
/// (it exists only for drainpipe's admin role) and with the traffic
/// listener's wasm filter removed or replaced by the minimal filter.
/// Everything else (route, timeouts, retries, cluster, circuit breakers)
/// stays as shipped. `wasm` is the variant's own module: drainpipe's build,
/// or the minimal filter's build with its body callback
/// ([`Variant::MinimalBody`]).
pub fn envoy_config(
    variant: Variant,
    ports: Ports,
    minimal_wasm: &Path,
    wasm: &Path,
) -> anyhow::Result<EnvoyConfig> {
    let mut doc = EnvoyConfig::repo()?.doc().clone();
    add_direct_route(&mut doc)?;
    let wasm = match variant {
        Variant::Drainpipe | Variant::Candidate(_) => wasm,
        Variant::NoFilter | Variant::Minimal | Variant::MinimalBody => {
            let minimal_wasm = match variant {
                Variant::MinimalBody => wasm,
                _ => minimal_wasm,
            };
            drop_listener(&mut doc, "drain")?;
            let edited = edit_wasm_filters(&mut doc, &mut |filters| {
                let before = filters.len();
                match variant {
                    Variant::NoFilter => filters.retain(|f| !is_wasm_filter(f)),
                    _ => filters
                        .iter_mut()
                        .filter(|f| is_wasm_filter(f))
                        .for_each(|f| make_minimal(f, minimal_wasm)),
                }
                before
            });
            if edited != 1 {
                bail!("expected one wasm filter on the traffic listener of envoy/envoy.yaml, found {edited}");
            }
            minimal_wasm
        }
        Variant::Shim => bail!("the shim is not an Envoy configuration"),
    };
    // JSON is YAML: the edited document goes back through the same loader.
    let cfg = EnvoyConfig::from_yaml(&serde_json::to_string(&doc)?)?;
    Ok(cfg.localize(ports, wasm))
}

/// Puts the direct-response route ([`DIRECT_PATH`]) first in the traffic
/// listener's virtual host; the shipped routes follow unchanged.
fn add_direct_route(doc: &mut Value) -> anyhow::Result<()> {
    let listeners = doc
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
        .context("envoy/envoy.yaml has no static_resources.listeners")?;
    let traffic = listeners
        .iter_mut()
        .find(|l| l.get("name").and_then(Value::as_str) == Some("traffic"))
        .context("envoy/envoy.yaml has no listener named traffic")?;
    let routes = traffic
        .pointer_mut("/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes")
        .and_then(Value::as_array_mut)
        .context("the traffic listener has no route list in its first virtual host")?;
    routes.insert(
        0,
        serde_json::json!({
            "match": {"path": DIRECT_PATH},
            "direct_response": {"status": 200, "body": {"inline_string": DIRECT_BODY}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
        }),
    );
    Ok(())
}

fn is_wasm_filter(f: &Value) -> bool {
    f.get("name").and_then(Value::as_str) == Some("envoy.filters.http.wasm")
}

fn drop_listener(doc: &mut Value, name: &str) -> anyhow::Result<()> {
    let listeners = doc
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
        .context("envoy/envoy.yaml has no static_resources.listeners")?;
    let before = listeners.len();
    listeners.retain(|l| l.get("name").and_then(Value::as_str) != Some(name));
    if listeners.len() == before {
        bail!("envoy/envoy.yaml has no listener named {name}");
    }
    Ok(())
}

/// Applies `edit` to every `http_filters` list that holds a wasm filter;
/// returns how many wasm filters there were.
fn edit_wasm_filters(v: &mut Value, edit: &mut dyn FnMut(&mut Vec<Value>) -> usize) -> usize {
    match v {
        Value::Object(map) => {
            let mut found = 0;
            for (key, value) in map.iter_mut() {
                match value {
                    Value::Array(filters)
                        if key == "http_filters" && filters.iter().any(is_wasm_filter) =>
                    {
                        found += filters.iter().filter(|f| is_wasm_filter(f)).count();
                        edit(filters);
                    }
                    other => found += edit_wasm_filters(other, edit),
                }
            }
            found
        }
        Value::Array(items) => items.iter_mut().map(|v| edit_wasm_filters(v, edit)).sum(),
        _ => 0,
    }
}

/// Turns drainpipe's wasm filter entry into the minimal filter's: same
/// runtime, its own VM, no plugin configuration.
fn make_minimal(filter: &mut Value, wasm: &Path) {
    let Some(config) = filter.pointer_mut("/typed_config/config") else {
        return;
    };
    config["name"] = "bench_minimal".into();
    config["root_id"] = "bench_minimal".into();
    config["vm_config"]["vm_id"] = "bench_minimal".into();
    config["vm_config"]["code"] =
        serde_json::json!({"local": {"filename": wasm.display().to_string()}});
    if let Value::Object(map) = config {
        map.remove("configuration");
    }
}

/// What an Envoy variant runs: its filter's module and, for a candidate,
/// a patch to drainpipe's traffic configuration.
pub struct Setup<'a> {
    pub variant: Variant,
    pub wasm: &'a Path,
    pub patch: Option<&'a Value>,
}

/// A running proxy under test.
pub struct Target {
    pub variant: Variant,
    pub addr: SocketAddr,
    process: Process,
}

enum Process {
    Envoy(Envoy),
    Shim(Shim),
}

impl Target {
    /// Envoy for `variant` in front of `upstream_port`, live.
    pub fn envoy(
        setup: &Setup,
        upstream_port: u16,
        minimal_wasm: &Path,
        opts: EnvoyOptions,
    ) -> anyhow::Result<Target> {
        let variant = setup.variant;
        let ports = Ports::fresh(upstream_port);
        let mut cfg = envoy_config(variant, ports, minimal_wasm, setup.wasm)?;
        if let Some(patch) = setup.patch {
            cfg = cfg.patch_plugin("drainpipe", patch.clone());
        }
        let envoy = Envoy::start(&cfg, ports, opts)
            .with_context(|| format!("starting {}", variant.label()))?;
        Ok(Target {
            variant,
            addr: SocketAddr::from(([127, 0, 0, 1], ports.traffic)),
            process: Process::Envoy(envoy),
        })
    }

    /// `drainpipe-shim serve` with drainpipe and the traffic configuration of
    /// `envoy/envoy.yaml`, in front of `upstream_port`, ready.
    pub fn shim(
        bin: &Path,
        upstream_port: u16,
        workers: u32,
        drainpipe_wasm: &Path,
    ) -> anyhow::Result<Target> {
        let config = EnvoyConfig::repo()?.plugin_configuration("drainpipe")?;
        let scratch = Scratch::new("bench-shim")?;
        let config_path = scratch.path().join("traffic.json");
        std::fs::write(&config_path, config)?;
        let log = scratch.path().join("shim.log");
        let out = std::fs::File::create(&log)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(bin)
            .arg("serve")
            .arg("--wasm")
            .arg(drainpipe_wasm)
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", &addr.to_string()])
            .args(["--upstream", &format!("http://127.0.0.1:{upstream_port}")])
            .args(["--admin", &format!("127.0.0.1:{}", free_port())])
            .args(["--workers", &workers.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut shim = Shim {
            child: ChildGuard::new(child),
            log,
            _scratch: scratch,
        };
        shim.wait_ready(addr)?;
        Ok(Target {
            variant: Variant::Shim,
            addr,
            process: Process::Shim(shim),
        })
    }

    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Envoy(e) => e.pid(),
            Process::Shim(s) => s.child.id(),
        }
    }

    /// The end of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        match &self.process {
            Process::Envoy(e) => e.log_tail(30),
            Process::Shim(s) => tail(&s.log, 30),
        }
    }
}

/// The shim's process, killed and reaped on drop.
struct Shim {
    child: ChildGuard,
    log: PathBuf,
    _scratch: Scratch,
}

impl Shim {
    fn wait_ready(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the shim exited during start-up ({status}); log tail:\n{}",
                    tail(&self.log, 30)
                );
            }
            if get_status(addr, "/healthz/ready") == Some(200) {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the shim was not ready within 30 s; log tail:\n{}",
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> Ports {
        Ports::fresh(20003)
    }

    fn wasm_filters(cfg: &EnvoyConfig) -> Vec<Value> {
        fn walk(v: &Value, out: &mut Vec<Value>) {
            match v {
                Value::Object(m) => {
                    if is_wasm_filter(v) {
                        out.push(v.clone());
                    }
                    m.values().for_each(|v| walk(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(cfg.doc(), &mut out);
        out
    }

    fn listeners(cfg: &EnvoyConfig) -> Vec<String> {
        cfg.doc()["static_resources"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn drainpipe_variant_is_the_shipped_config_with_the_direct_route() {
        let ports = ports();
        let cfg = envoy_config(
            Variant::Drainpipe,
            ports,
            Path::new("min.wasm"),
            Path::new("dp.wasm"),
        )
        .unwrap();
        let shipped = EnvoyConfig::repo()
            .unwrap()
            .localize(ports, Path::new("dp.wasm"))
            .doc()
            .clone();
        let routes = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes";
        let mut ours = cfg.doc().clone();
        let direct = ours
            .pointer_mut(routes)
            .unwrap()
            .as_array_mut()
            .unwrap()
            .remove(0);
        assert_eq!(direct["match"]["path"], DIRECT_PATH);
        assert_eq!(direct["direct_response"]["status"], 200);
        assert_eq!(ours, shipped);
        // Every variant has it.
        for variant in [Variant::NoFilter, Variant::Minimal] {
            let cfg =
                envoy_config(variant, ports, Path::new("min.wasm"), Path::new("dp.wasm")).unwrap();
            assert_eq!(cfg.doc().pointer(routes).unwrap()[0], direct);
        }
    }

    #[test]
    fn no_filter_variant_has_no_wasm_and_keeps_the_route() {
        let cfg = envoy_config(
            Variant::NoFilter,
            ports(),
            Path::new("min.wasm"),
            Path::new("dp.wasm"),
        )
        .unwrap();
        assert!(wasm_filters(&cfg).is_empty());
        assert_eq!(listeners(&cfg), ["traffic"]);
        let text = cfg.doc().to_string();
        assert!(text.contains("envoy.filters.http.router"));
        assert!(text.contains("retry_policy"));
    }

    #[test]
    fn minimal_variant_swaps_the_filter_only() {
        let cfg = envoy_config(
            Variant::Minimal,
            ports(),
            Path::new("min.wasm"),
            Path::new("dp.wasm"),
        )
        .unwrap();
        let filters = wasm_filters(&cfg);
        assert_eq!(filters.len(), 1);
        let config = &filters[0]["typed_config"]["config"];
        assert_eq!(config["root_id"], "bench_minimal");
        assert_eq!(config["vm_config"]["code"]["local"]["filename"], "min.wasm");
        assert_eq!(config["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert!(config.get("configuration").is_none());
        assert_eq!(listeners(&cfg), ["traffic"]);
    }
}
