//! drainpipe's drain in an Istio sidecar, reproduced without a cluster: a
//! real Envoy with what Istio gives a sidecar (the bootstrap's static
//! clusters `prometheus_stats` and `agent`, an inbound listener with
//! `traffic_direction: INBOUND` carrying the plugin with the WasmPlugin's
//! `pluginConfig`, the cluster the EnvoyFilter adds, `--drain-time-s 45`
//! and `--drain-strategy immediate`), the drain controller container, the
//! LLM server's preStop, and the Istio agent's shutdown steps on SIGTERM:
//! `POST /drain_listeners?inboundonly&graceful`, then terminationDrainDuration,
//! then Envoy is killed. The controller gets its SIGTERM at the same moment
//! (classic sidecars) or first, the sidecar only once the app containers
//! have exited (native sidecars). The shipped manifests' timing formula is
//! checked, and the reproduction runs it with a shorter grace period.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drainpipe::Config;
use drainpipe_tests::envoy::{plugin_wasm, repo_root, EnvoyConfig};
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

/// The timing rule of the Istio recipe, from the plugin's grace_ms (all in
/// seconds): the LLM server's preStop bound and the controller's linger
/// (DRAIN_TIMEOUT_S), terminationDrainDuration, terminationGracePeriodSeconds.
struct Timing {
    drain_timeout_s: u64,
    termination_drain_s: u64,
    termination_grace_s: u64,
}

impl Timing {
    /// Classic sidecars: the agent's terminationDrainDuration runs from the
    /// same SIGTERM as the drain, so it covers the whole drain.
    fn classic(grace_ms: u64) -> Timing {
        let drain_timeout_s = grace_ms.div_ceil(1000) + 5;
        Timing {
            drain_timeout_s,
            termination_drain_s: drain_timeout_s,
            termination_grace_s: drain_timeout_s + 10,
        }
    }

    /// Native sidecars: the sidecar's SIGTERM comes after the app
    /// containers exit (at most DRAIN_TIMEOUT_S), then the agent's
    /// terminationDrainDuration (`termination_drain_s`, Istio's default 5 s).
    fn native(grace_ms: u64, termination_drain_s: u64) -> Timing {
        let drain_timeout_s = grace_ms.div_ceil(1000) + 5;
        Timing {
            drain_timeout_s,
            termination_drain_s,
            termination_grace_s: drain_timeout_s + termination_drain_s + 10,
        }
    }
}

fn seconds(text: &str) -> u64 {
    text.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text:?} is not whole seconds"))
}

#[test]
fn istio_manifests_follow_the_timing_formula_from_grace_ms() {
    let text = serde_json::to_string(&plugin_config_json()).unwrap();
    let cfg = Config::parse(text.as_bytes()).expect("the WasmPlugin's pluginConfig parses");
    let controller = cfg
        .drain_controller
        .clone()
        .expect("drain_controller is set");
    let t = Timing::classic(cfg.grace_ms);

    let deployment = the("deployment.yaml", "Deployment");
    let pod = &deployment["spec"]["template"];
    let proxy_config: Value = serde_yaml::from_str(
        pod["metadata"]["annotations"]["proxy.istio.io/config"]
            .as_str()
            .expect("a proxy.istio.io/config annotation"),
    )
    .unwrap();
    assert_eq!(
        seconds(proxy_config["terminationDrainDuration"].as_str().unwrap()),
        t.termination_drain_s,
        "terminationDrainDuration = DRAIN_TIMEOUT_S = ceil(grace_ms / 1000) + 5"
    );
    assert_eq!(
        proxy_config["proxyStatsMatcher"]["inclusionPrefixes"],
        json!(["wasmcustom.drainpipe_"]),
        "the plugin's stats exist in the sidecar (the preStop reads them)"
    );
    assert_eq!(
        pod["spec"]["terminationGracePeriodSeconds"].as_u64(),
        Some(t.termination_grace_s),
        "terminationGracePeriodSeconds = terminationDrainDuration + 10"
    );
    let containers = pod["spec"]["containers"].as_array().unwrap();
    let find = |name: &str| containers.iter().find(|c| c["name"] == name).unwrap();
    let args = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    // The controller listens where the EnvoyFilter's cluster points, and
    // lingers as long as the drain may last.
    let ctl = args(&find("drainpipe-controller")["command"]);
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
    assert_eq!(
        ctl,
        [
            "/drainpipe",
            "controller",
            "--listen",
            &listen,
            "--linger",
            &format!("{}s", t.drain_timeout_s)
        ]
    );
    // The LLM server's preStop waits for drained, at most DRAIN_TIMEOUT_S.
    let prestop = args(&find("llm-server")["lifecycle"]["preStop"]["exec"]["command"]);
    assert_eq!(
        prestop[1..],
        [
            "drain",
            "--wait",
            "--no-start",
            "--envoy-stats",
            "http://127.0.0.1:15000/stats/prometheus",
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
    // With native sidecars and Istio's default terminationDrainDuration.
    let native = Timing::native(cfg.grace_ms, 5);
    assert_eq!(native.termination_grace_s, 50);
}

/// Short timings for the reproduction: grace 6 s, admit 1 s, poll 200 ms.
const GRACE_MS: u64 = 6_000;

struct Pod {
    _upstream: FakeLlm,
    envoy: Envoy,
    controller: ChildGuard,
    /// The plugin's `retry_after_s`, which its drain rejection carries.
    retry_after_s: u64,
}

/// The sidecar's Envoy as Istio would configure it, and the controller.
async fn pod(linger_s: u64) -> Pod {
    let upstream = FakeLlm::start().await.unwrap();
    let ports = Ports::fresh(upstream.port());
    let mut plugin = plugin_config_json();
    plugin["admit_window_ms"] = json!(1000);
    plugin["grace_ms"] = json!(GRACE_MS);
    plugin["deadline"]["min_budget_ms"] = json!(1000);
    plugin["drain_controller"]["poll_ms"] = json!(200);
    let filter_cluster = the("envoyfilter.yaml", "EnvoyFilter")["spec"]["configPatches"][0]
        ["patch"]["value"]
        .clone();
    let mut cfg = EnvoyConfig::repo_controller().unwrap();
    {
        let doc = cfg.doc_mut();
        doc["static_resources"]["listeners"][0]["traffic_direction"] = json!("INBOUND");
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
    let controller = Command::new(drainpipe_bin().unwrap())
        .args([
            "controller",
            "--listen",
            &format!("127.0.0.1:{}", ports.controller),
        ])
        .args(["--linger", &format!("{linger_s}s")])
        .stdout(Stdio::null())
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
        envoy,
        controller,
        retry_after_s,
    };
    // Serving, the controller reached.
    let started = Instant::now();
    loop {
        let r = reqwest::get(pod.envoy.traffic("/healthz/ready"))
            .await
            .unwrap();
        if r.status() == 200 && pod.envoy.stat("drainpipe_state").await.is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pod
}

/// The Istio agent's shutdown on SIGTERM: drain the inbound listeners
/// gracefully, wait terminationDrainDuration, then kill Envoy.
async fn agent_shutdown(envoy: &Envoy, termination_drain: Duration) {
    let r = reqwest::Client::new()
        .post(envoy.admin("/drain_listeners?inboundonly&graceful"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(termination_drain).await;
    // SAFETY: kill(2) on Envoy, our child (the agent's abort kills it).
    unsafe {
        libc::kill(envoy.pid() as libc::pid_t, libc::SIGKILL);
    }
}

/// Runs the pod's shutdown under load; `native` chooses the order.
async fn shutdown_under_load(native: bool) {
    let timing = if native {
        Timing::native(GRACE_MS, 2)
    } else {
        Timing::classic(GRACE_MS)
    };
    let mut pod = pod(timing.drain_timeout_s).await;
    // Four streams of 2.5 to 4 s, one of 15 s (longer than the grace).
    let mut whole = Vec::new();
    for i in 0..4u32 {
        let chunks = 25 + 5 * i;
        whole.push((chunks, open_stream(&pod.envoy, chunks).await));
    }
    let long = open_stream(&pod.envoy, 150).await;
    let t0 = Instant::now();

    // The LLM server's preStop, started by the kubelet with the SIGTERMs.
    let waiter = {
        let stats = pod.envoy.admin("/stats/prometheus");
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
    pod.controller.signal(libc::SIGTERM);

    // Short requests every 100 ms, each on a fresh connection.
    let shorts = ShortRequests::start(pod.envoy.traffic("/v1/chat/completions"), t0);
    let readers: Vec<_> = whole
        .into_iter()
        .map(|(n, r)| tokio::spawn(async move { (n, read_to_end(r, t0).await) }))
        .collect();
    let long_reader = tokio::spawn(read_to_end(long, t0));

    // The sidecar's SIGTERM: at once (classic), or once the app containers
    // (the LLM server after its preStop, the controller after its linger)
    // have exited (native).
    let (waited, waiter_done) = if native {
        let (out, done) = waiter.await.unwrap();
        let linger_end = Duration::from_secs(timing.drain_timeout_s);
        tokio::time::sleep(linger_end.saturating_sub(t0.elapsed())).await;
        let _ = pod.controller.wait_exit(Duration::from_secs(10));
        agent_shutdown(&pod.envoy, Duration::from_secs(timing.termination_drain_s)).await;
        (out, done)
    } else {
        agent_shutdown(&pod.envoy, Duration::from_secs(timing.termination_drain_s)).await;
        waiter.await.unwrap()
    };
    let killed_at = t0.elapsed();
    let shorts = shorts.stop().await;
    let _ = tokio::task::block_in_place(|| pod.envoy.wait_exit(Duration::from_secs(5)));

    // Every stream shorter than the grace period arrived whole.
    for reader in readers {
        let (chunks, read) = reader.await.unwrap();
        assert_whole_stream(&read.whole(), chunks);
    }
    // The long one ended with the final event, not a silent cut.
    let body = long_reader.await.unwrap().body();
    let events = sse_events(&body);
    assert!(!events.contains(&"[DONE]"), "{body}");
    let last: Value = serde_json::from_str(events.last().unwrap()).expect("the last event is JSON");
    assert_eq!(last["error"]["code"], "service_draining", "{body}");

    // New requests: admitted in the admit window (plus a poll interval),
    // then the 503 contract; nothing failed while Envoy ran.
    let windows = DrainWindows {
        admitted_before: Duration::from_millis(1_600),
        rejected_from: Duration::from_millis(900),
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
    assert!(waiter_done < killed_at, "{waiter_done:?} {killed_at:?}");
    assert!(
        waiter_done < Duration::from_millis(GRACE_MS + 2_000),
        "drained within the grace period: {waiter_done:?}"
    );
    assert!(pod
        .envoy
        .log()
        .contains("drain started by the drain controller"));
}

#[tokio::test(flavor = "multi_thread")]
async fn classic_sidecar_controller_and_agent_sigterm_together_nothing_truncated() {
    shutdown_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn native_sidecar_app_containers_first_nothing_truncated() {
    shutdown_under_load(true).await;
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
