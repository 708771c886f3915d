//! drainpipe's drain in an Istio sidecar, reproduced without a cluster: a
//! real Envoy with what Istio gives a sidecar (the bootstrap's static
//! clusters `prometheus_stats` and `agent` and its Prometheus listener, an
//! inbound listener with `traffic_direction: INBOUND` carrying the plugin
//! with the WasmPlugin's `pluginConfig`, the cluster the EnvoyFilter adds,
//! `--drain-time-s 45` and `--drain-strategy immediate`), the drain
//! controller container as the recipe runs it (`--envoy-stats`), the LLM
//! server's preStop, and the Istio agent's shutdown steps, in both orders:
//!
//! - classic sidecars: the agent's SIGTERM comes with the controller's; it
//!   calls `POST /drain_listeners?inboundonly&graceful`, waits
//!   MINIMUM_DRAIN_DURATION, then polls Envoy's active downstream
//!   connections every second as EXIT_ON_ZERO_ACTIVE_CONNECTIONS does and
//!   kills Envoy at zero;
//! - native sidecars: Istio's preStop on istio-proxy drains at once
//!   (`drain_listeners?inboundonly&graceful&skip_exit`), the controller
//!   gets SIGTERM, and the sidecar's SIGTERM comes once the LLM server's
//!   preStop has returned and the controller has exited: the agent, already
//!   drained, kills Envoy at once.
//!
//! The shipped manifests' timing formula is checked for both orders, and
//! the reproduction runs it with a shorter grace period.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drainpipe::Config;
use drainpipe_tests::envoy::{free_port, plugin_wasm, repo_root, EnvoyConfig, Scratch};
use drainpipe_tests::fake_llm::sse_events;
use drainpipe_tests::load::{
    assert_whole_stream, check_across_drain, open_stream, read_to_end, DrainWindows, ShortRequests,
};
use drainpipe_tests::ops::drainpipe_bin;
use drainpipe_tests::process::ChildGuard;
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm, Ports};
use serde_json::{json, Value};

fn istio_file(name: &str) -> Vec<Value> {
    let path = repo_root().join("envoy/k8s/istio").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).expect("valid YAML"))
        .filter(|d| !d.is_null())
        .collect()
}

fn the(name: &str, kind: &str) -> Value {
    istio_file(name)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {name}"))
}

fn plugin_config_json() -> Value {
    the("wasmplugin.yaml", "WasmPlugin")["spec"]["pluginConfig"].clone()
}

/// What the LLM server gets after its preStop to exit (its SIGTERM), in
/// the recipe's terminationGracePeriodSeconds.
const APP_EXIT_S: u64 = 10;

/// The timing rule of the Istio recipe, from the plugin's configuration
/// (seconds). One set of values for both sidecar orders.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Timing {
    /// DRAIN_TIMEOUT_S: the LLM server's preStop bound and the
    /// controller's `--linger`.
    drain_timeout_s: u64,
    /// The agent's MINIMUM_DRAIN_DURATION (classic sidecars, with
    /// EXIT_ON_ZERO_ACTIVE_CONNECTIONS): the admit window and a poll.
    min_drain_s: u64,
    /// The agent's terminationDrainDuration (classic sidecars without
    /// EXIT_ON_ZERO_ACTIVE_CONNECTIONS).
    termination_drain_s: u64,
    termination_grace_s: u64,
}

impl Timing {
    fn from_plugin(grace_ms: u64, admit_window_ms: u64, poll_ms: u64) -> Timing {
        let drain_timeout_s = grace_ms.div_ceil(1000) + 5;
        Timing {
            drain_timeout_s,
            min_drain_s: (poll_ms + admit_window_ms).div_ceil(1000),
            termination_drain_s: drain_timeout_s,
            termination_grace_s: drain_timeout_s + APP_EXIT_S,
        }
    }
}

/// The two orders in which Kubernetes stops an Istio pod.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Order {
    /// istio-proxy a container: every container gets SIGTERM at once.
    Classic,
    /// istio-proxy an init container with restartPolicy Always: its preStop
    /// (Istio's drain) runs with the others', its SIGTERM comes once the
    /// app containers have exited.
    Native,
}

/// The pod's shutdown under `order` with the recipe's values, in seconds
/// from the pod's deletion, at the latest: when the sidecar's Envoy stops,
/// and when the last container has exited.
struct Shutdown {
    sidecar_stops_s: u64,
    pod_stopped_s: u64,
}

/// The recipe as shipped, read from the manifests.
#[derive(Debug)]
struct Shipped {
    prestop_timeout_s: u64,
    linger_s: u64,
    exit_on_zero_connections: bool,
    min_drain_s: u64,
    termination_drain_s: u64,
    termination_grace_s: u64,
}

impl Shipped {
    fn shutdown(&self, order: Order) -> Shutdown {
        // The app containers: the LLM server's preStop, then its exit; the
        // controller's linger.
        let apps_done = (self.prestop_timeout_s + APP_EXIT_S).max(self.linger_s);
        let sidecar_stops_s = match order {
            // The agent drains at SIGTERM; with EXIT_ON_ZERO_ACTIVE_CONNECTIONS
            // it stops Envoy after the minimum, once no connection is left
            // (at the latest when the drain has ended every request: its
            // preStop bound); else after terminationDrainDuration.
            Order::Classic if self.exit_on_zero_connections => {
                self.min_drain_s.max(self.prestop_timeout_s)
            }
            Order::Classic => self.termination_drain_s,
            // Drained by Istio's preStop; stopped at once at its SIGTERM,
            // which comes when the app containers have exited.
            Order::Native => apps_done,
        };
        Shutdown {
            sidecar_stops_s,
            pod_stopped_s: apps_done.max(sidecar_stops_s),
        }
    }
}

fn seconds(text: &str) -> u64 {
    text.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text:?} is not whole seconds"))
}

fn flag(args: &[String], name: &str) -> String {
    let at = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("no {name} in {args:?}"));
    args[at + 1].clone()
}

#[test]
fn istio_manifests_follow_the_timing_formula_from_grace_ms() {
    let text = serde_json::to_string(&plugin_config_json()).unwrap();
    let cfg = Config::parse(text.as_bytes()).expect("the WasmPlugin's pluginConfig parses");
    let controller = cfg
        .drain_controller
        .clone()
        .expect("drain_controller is set");
    let t = Timing::from_plugin(cfg.grace_ms, cfg.admit_window_ms, controller.poll_ms);

    let deployment = the("deployment.yaml", "Deployment");
    let pod = &deployment["spec"]["template"];
    let annotations = &pod["metadata"]["annotations"];
    // The recipe claims both orders: it pins neither.
    assert!(
        annotations.get("sidecar.istio.io/nativeSidecar").is_none(),
        "the values hold for both orders; the pod follows the mesh's choice"
    );
    let proxy_config: Value = serde_yaml::from_str(
        annotations["proxy.istio.io/config"]
            .as_str()
            .expect("a proxy.istio.io/config annotation"),
    )
    .unwrap();
    assert_eq!(
        proxy_config["proxyStatsMatcher"]["inclusionPrefixes"],
        json!(["wasmcustom.drainpipe_"]),
        "the plugin's stats exist in the sidecar (the preStop and the controller read them)"
    );
    let metadata = &proxy_config["proxyMetadata"];
    let containers = pod["spec"]["containers"].as_array().unwrap();
    let find = |name: &str| containers.iter().find(|c| c["name"] == name).unwrap();
    let args = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let ctl = args(&find("drainpipe-controller")["command"]);
    let prestop = args(&find("llm-server")["lifecycle"]["preStop"]["exec"]["command"]);
    let shipped = Shipped {
        prestop_timeout_s: seconds(&flag(&prestop, "--timeout")),
        linger_s: seconds(&flag(&ctl, "--linger")),
        exit_on_zero_connections: metadata["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"] == "true",
        min_drain_s: seconds(metadata["MINIMUM_DRAIN_DURATION"].as_str().unwrap_or("5s")),
        termination_drain_s: seconds(proxy_config["terminationDrainDuration"].as_str().unwrap()),
        termination_grace_s: pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds"),
    };

    // Each value follows the formula.
    assert_eq!(
        (shipped.prestop_timeout_s, shipped.linger_s),
        (t.drain_timeout_s, t.drain_timeout_s),
        "the LLM server's preStop --timeout and the controller's --linger: DRAIN_TIMEOUT_S = ceil(grace_ms / 1000) + 5"
    );
    assert!(shipped.exit_on_zero_connections, "{proxy_config:?}");
    assert_eq!(
        shipped.min_drain_s, t.min_drain_s,
        "MINIMUM_DRAIN_DURATION = ceil((poll_ms + admit_window_ms) / 1000)"
    );
    assert_eq!(
        shipped.termination_drain_s, t.termination_drain_s,
        "terminationDrainDuration = DRAIN_TIMEOUT_S"
    );
    assert_eq!(
        shipped.termination_grace_s, t.termination_grace_s,
        "terminationGracePeriodSeconds = DRAIN_TIMEOUT_S + 10"
    );

    // Under both orders: the sidecar serves the whole drain (the LLM
    // server's wait for drained, at most DRAIN_TIMEOUT_S; and, classic,
    // the admit window), and the pod stops within its grace period.
    for order in [Order::Classic, Order::Native] {
        let s = shipped.shutdown(order);
        assert!(
            s.sidecar_stops_s >= t.drain_timeout_s && s.sidecar_stops_s >= t.min_drain_s,
            "{order:?}: the sidecar stops at {}s, before the drain may end",
            s.sidecar_stops_s
        );
        assert!(
            s.pod_stopped_s <= shipped.termination_grace_s,
            "{order:?}: the pod needs {}s, more than terminationGracePeriodSeconds {}",
            s.pod_stopped_s,
            shipped.termination_grace_s
        );
    }
    // Without EXIT_ON_ZERO_ACTIVE_CONNECTIONS (a mesh that drops it), the
    // classic agent's terminationDrainDuration holds the same bounds.
    let without = Shipped {
        exit_on_zero_connections: false,
        ..shipped
    };
    let s = without.shutdown(Order::Classic);
    assert!(s.sidecar_stops_s >= t.drain_timeout_s);
    assert!(s.pod_stopped_s <= without.termination_grace_s);

    // The controller listens where the EnvoyFilter's cluster points and
    // exits once the plugin reports drained in the sidecar's stats, which
    // the LLM server's preStop reads too.
    let cluster =
        &the("envoyfilter.yaml", "EnvoyFilter")["spec"]["configPatches"][0]["patch"]["value"];
    assert_eq!(cluster["name"], controller.cluster.as_str());
    let sock = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    let listen = format!(
        "{}:{}",
        sock["address"].as_str().unwrap(),
        sock["port_value"]
    );
    let stats = "http://127.0.0.1:15090/stats/prometheus";
    assert_eq!(
        ctl,
        [
            "/drainpipe",
            "controller",
            "--listen",
            &listen,
            "--linger",
            &format!("{}s", t.drain_timeout_s),
            "--envoy-stats",
            stats,
        ]
    );
    assert_eq!(
        prestop[1..],
        [
            "drain",
            "--wait",
            "--no-start",
            "--envoy-stats",
            stats,
            "--timeout",
            &format!("{}s", t.drain_timeout_s)
        ]
    );
    // The EnvoyFilter and the WasmPlugin select the same pods, the
    // Deployment's.
    let labels = &pod["metadata"]["labels"];
    let wasm = the("wasmplugin.yaml", "WasmPlugin");
    for (k, v) in wasm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v);
    }
    let filter = the("envoyfilter.yaml", "EnvoyFilter");
    assert_eq!(
        filter["spec"]["workloadSelector"]["labels"],
        wasm["spec"]["selector"]["matchLabels"]
    );
}

/// Short timings for the reproduction: grace 6 s, admit 1 s, poll 200 ms.
const GRACE_MS: u64 = 6_000;
const ADMIT_WINDOW_MS: u64 = 1_000;
const POLL_MS: u64 = 200;

struct Pod {
    _upstream: FakeLlm,
    _scratch: Scratch,
    envoy: Envoy,
    controller: ChildGuard,
    controller_log: PathBuf,
    /// Istio's Prometheus endpoint (15090 in a pod): a listener routing
    /// `/stats/prometheus` to the bootstrap's `prometheus_stats` cluster.
    prometheus: String,
    /// Its listener's stat name, which the agent leaves out of its count.
    prometheus_listener: String,
    /// The plugin's `retry_after_s`, which its drain rejection carries.
    retry_after_s: u64,
}

/// The sidecar's Envoy as Istio would configure it, and the controller as
/// the recipe runs it.
async fn pod(timing: Timing) -> Pod {
    let upstream = FakeLlm::start().await.unwrap();
    let ports = Ports::fresh(upstream.port());
    let mut plugin = plugin_config_json();
    plugin["admit_window_ms"] = json!(ADMIT_WINDOW_MS);
    plugin["grace_ms"] = json!(GRACE_MS);
    plugin["deadline"]["min_budget_ms"] = json!(1000);
    plugin["drain_controller"]["poll_ms"] = json!(POLL_MS);
    let filter_cluster = the("envoyfilter.yaml", "EnvoyFilter")["spec"]["configPatches"][0]
        ["patch"]["value"]
        .clone();
    let prometheus_port = free_port();
    let mut cfg = EnvoyConfig::repo_controller().unwrap();
    {
        let doc = cfg.doc_mut();
        let listeners = doc["static_resources"]["listeners"].as_array_mut().unwrap();
        listeners[0]["traffic_direction"] = json!("INBOUND");
        // Istio's bootstrap: the Prometheus listener (15090).
        listeners.push(json!({
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": prometheus_port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "codec_type": "AUTO",
                    "stat_prefix": "stats",
                    "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/stats/prometheus"}, "route": {"cluster": "prometheus_stats"}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        }));
        let clusters = doc["static_resources"]["clusters"].as_array_mut().unwrap();
        clusters.retain(|c| c["name"] != "drain_controller");
        clusters.push(filter_cluster);
        // Istio's bootstrap: Envoy's admin and the agent's status port.
        for (name, port) in [("prometheus_stats", 9901), ("agent", 15020)] {
            clusters.push(json!({
                "name": name, "type": "STATIC", "connect_timeout": "0.25s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
            }));
        }
    }
    let cfg = cfg
        .localize(ports, &plugin_wasm().unwrap())
        .raw_plugin_config("drainpipe", &plugin.to_string());
    let retry_after_s = plugin["retry_after_s"].as_u64().unwrap_or(5);
    let prometheus = format!("http://127.0.0.1:{prometheus_port}/stats/prometheus");
    let scratch = Scratch::new("istio-pod").unwrap();
    let controller_log = scratch.path().join("controller.log");
    let controller = Command::new(drainpipe_bin().unwrap())
        .args([
            "controller",
            "--listen",
            &format!("127.0.0.1:{}", ports.controller),
        ])
        .args(["--linger", &format!("{}s", timing.drain_timeout_s)])
        .args(["--envoy-stats", &prometheus])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&controller_log).unwrap())
        .spawn()
        .map(ChildGuard::new)
        .expect("drainpipe controller starts");
    // Istio starts Envoy with its drainDuration (45 s) as --drain-time-s.
    let opts = EnvoyOptions {
        extra_args: vec!["--drain-time-s".into(), "45".into()],
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::start(&cfg, ports, opts).expect("Envoy starts as a sidecar would");
    let pod = Pod {
        _upstream: upstream,
        _scratch: scratch,
        envoy,
        controller,
        controller_log,
        prometheus,
        prometheus_listener: format!("listener.127.0.0.1_{prometheus_port}.downstream_cx_active"),
        retry_after_s,
    };
    // Serving, the controller reached, the stats served where the recipe
    // reads them.
    let started = Instant::now();
    loop {
        let r = reqwest::get(pod.envoy.traffic("/healthz/ready"))
            .await
            .unwrap();
        let stats = reqwest::get(&pod.prometheus).await.unwrap().text().await;
        if r.status() == 200 && stats.is_ok_and(|s| s.contains("drainpipe_state")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pod
}

/// Envoy's downstream connections as the Istio agent counts them with
/// EXIT_ON_ZERO_ACTIVE_CONNECTIONS (`activeProxyConnections` in
/// `pkg/envoy/agent.go`): every listener's `downstream_cx_active` but the
/// per-worker ones, the admin's and Istio's own listeners' (here the
/// Prometheus one); None when no listener reports it.
async fn active_connections(envoy: &Envoy, prometheus_listener: &str) -> Option<u64> {
    let text = reqwest::get(envoy.admin("/stats?usedonly&filter=downstream_cx_active$"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut seen = false;
    let mut total = 0;
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.starts_with("listener.")
            || name.contains("worker_")
            || name.starts_with("listener.admin.")
            || name == prometheus_listener
        {
            continue;
        }
        seen = true;
        total += value.trim().parse::<u64>().unwrap_or(0);
    }
    seen.then_some(total)
}

/// The Istio agent drains the inbound listeners (`Proxy.Drain` in
/// `pkg/envoy/proxy.go`); `skip_exit` when Istio's preStop asks for it
/// (native sidecars: `DrainNow`).
async fn agent_drain(envoy: &Envoy, skip_exit: bool) {
    let path = if skip_exit {
        "/drain_listeners?inboundonly&graceful&skip_exit"
    } else {
        "/drain_listeners?inboundonly&graceful"
    };
    let r = reqwest::Client::new()
        .post(envoy.admin(path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
}

/// The agent stops Envoy (its abort kills it).
fn agent_stop(envoy: &Envoy) {
    // SAFETY: kill(2) on Envoy, our child, not yet reaped.
    unsafe {
        libc::kill(envoy.pid() as libc::pid_t, libc::SIGKILL);
    }
}

/// Runs the pod's shutdown under load in `order`, with the recipe's
/// values for the reproduction's plugin configuration.
async fn shutdown_under_load(order: Order) {
    let timing = Timing::from_plugin(GRACE_MS, ADMIT_WINDOW_MS, POLL_MS);
    let mut pod = pod(timing).await;
    // Four streams of 2.5 to 4 s, one of 15 s (longer than the grace).
    let mut whole = Vec::new();
    for i in 0..4u32 {
        let chunks = 25 + 5 * i;
        whole.push((chunks, open_stream(&pod.envoy, chunks).await));
    }
    let long = open_stream(&pod.envoy, 150).await;
    let t0 = Instant::now();

    // The pod's deletion. Every preStop starts: the LLM server's...
    let waiter = {
        let stats = pod.prometheus.clone();
        let bound = format!("{}s", timing.drain_timeout_s);
        tokio::task::spawn_blocking(move || {
            let out = Command::new(drainpipe_bin().unwrap())
                .args([
                    "drain",
                    "--wait",
                    "--no-start",
                    "--envoy-stats",
                    &stats,
                    "--timeout",
                    &bound,
                ])
                .output()
                .unwrap();
            (out, t0.elapsed())
        })
    };
    // ... and, native, istio-proxy's (`pilot-agent request POST drain`).
    if order == Order::Native {
        agent_drain(&pod.envoy, true).await;
    }
    // The controller has no preStop: its SIGTERM comes at once.
    pod.controller.signal(libc::SIGTERM);

    // Short requests every 100 ms, each on a fresh connection.
    let shorts = ShortRequests::start(pod.envoy.traffic("/v1/chat/completions"), t0);
    let readers: Vec<_> = whole
        .into_iter()
        .map(|(n, r)| tokio::spawn(async move { (n, read_to_end(r, t0).await) }))
        .collect();
    let long_reader = tokio::spawn(read_to_end(long, t0));

    // The kubelet's bound for the whole pod.
    let grace = Duration::from_secs(timing.termination_grace_s);
    let mut controller = pod.controller;
    let controller_exit = tokio::task::spawn_blocking(move || {
        let status = controller.wait_exit(grace);
        (status, t0.elapsed(), controller)
    });
    let (waited, waiter_done, controller_exit, killed_at) = match order {
        Order::Classic => {
            // The agent's SIGTERM comes at once: drain, then with
            // EXIT_ON_ZERO_ACTIVE_CONNECTIONS sleep MINIMUM_DRAIN_DURATION
            // and check the connections every second.
            agent_drain(&pod.envoy, false).await;
            tokio::time::sleep(Duration::from_secs(timing.min_drain_s)).await;
            while active_connections(&pod.envoy, &pod.prometheus_listener)
                .await
                .is_some_and(|n| n > 0)
                && t0.elapsed() < grace
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            agent_stop(&pod.envoy);
            let killed_at = t0.elapsed();
            let (out, done) = waiter.await.unwrap();
            (out, done, controller_exit.await.unwrap(), killed_at)
        }
        Order::Native => {
            // The sidecar's SIGTERM comes once the app containers (the LLM
            // server after its preStop, the controller) have exited; the
            // agent, already drained, stops Envoy at once.
            let (out, done) = waiter.await.unwrap();
            let controller_exit = controller_exit.await.unwrap();
            agent_stop(&pod.envoy);
            (out, done, controller_exit, t0.elapsed())
        }
    };
    let (status, controller_done, _controller) = controller_exit;
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "the controller exits 0"
    );
    let shorts = shorts.stop().await;
    let _ = tokio::task::block_in_place(|| pod.envoy.wait_exit(Duration::from_secs(5)));

    // Every stream shorter than the grace period arrived whole.
    let mut last_end = Duration::ZERO;
    for reader in readers {
        let (chunks, read) = reader.await.unwrap();
        assert_whole_stream(&read.whole(), chunks);
        last_end = last_end.max(read.ended_at);
    }
    // The long one ended with the final event, not a silent cut.
    let long = long_reader.await.unwrap();
    last_end = last_end.max(long.ended_at);
    let body = long.body();
    let events = sse_events(&body);
    assert!(!events.contains(&"[DONE]"), "{body}");
    let last: Value = serde_json::from_str(events.last().unwrap()).expect("the last event is JSON");
    assert_eq!(last["error"]["code"], "service_draining", "{body}");

    // New requests: admitted in the admit window (plus a poll interval),
    // then the 503 contract; nothing failed while Envoy ran.
    let windows = DrainWindows {
        admitted_before: Duration::from_millis(ADMIT_WINDOW_MS + 3 * POLL_MS),
        rejected_from: Duration::from_millis(ADMIT_WINDOW_MS - 100),
        failing_from: killed_at.saturating_sub(Duration::from_millis(500)),
        retry_after_s: pod.retry_after_s,
    };
    let contract = check_across_drain(&shorts, windows);
    assert!(
        contract >= 10,
        "the 503 contract after the admit window: {}",
        contract
    );

    // The LLM server's preStop returned once drained, before Envoy went.
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert_eq!(waited.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("drained after"), "{stderr}");
    assert!(waiter_done <= killed_at, "{waiter_done:?} {killed_at:?}");
    assert!(
        waiter_done < Duration::from_millis(GRACE_MS + 2_000),
        "drained within the grace period: {waiter_done:?}"
    );
    // The controller exited because the plugin reported drained, not at
    // its --linger bound.
    let log = std::fs::read_to_string(&pod.controller_log).unwrap_or_default();
    assert!(log.contains("drained after"), "{log}");
    // The pod's containers finish soon after the last stream ends (the
    // agent's 1 s ticker, a poll), well before the fixed bound.
    let soon = last_end + Duration::from_secs(3);
    let bound = Duration::from_secs(timing.drain_timeout_s);
    eprintln!(
        "{order:?}: last stream ended at {last_end:.1?}, the LLM server's preStop returned at \
         {waiter_done:.1?}, the controller exited at {controller_done:.1?}, Envoy stopped at \
         {killed_at:.1?} (fixed bound {bound:?})"
    );
    assert!(
        controller_done <= soon && killed_at <= soon && killed_at < bound,
        "last stream ended at {last_end:?}; controller done at {controller_done:?}, \
         Envoy stopped at {killed_at:?}; the fixed bound is {bound:?}"
    );
    assert!(pod
        .envoy
        .log()
        .contains("drain started by the drain controller"));
}

#[tokio::test(flavor = "multi_thread")]
async fn classic_sidecar_controller_and_agent_sigterm_together_pod_stops_when_drained() {
    shutdown_under_load(Order::Classic).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn native_sidecar_app_containers_first_pod_stops_when_drained() {
    shutdown_under_load(Order::Native).await;
}

#[test]
fn istio_deployment_validates_against_the_kubernetes_schemas() {
    let validator = repo_root().join(".venv/bin/kubernetes-validate");
    assert!(
        validator.exists(),
        "run `cargo xtask setup` (kubernetes-validate)"
    );
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", "1.35.0"])
        .arg(repo_root().join("envoy/k8s/istio/deployment.yaml"))
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");
    assert_eq!(log.matches(" passed for resource ").count(), 2, "{log}");
}
