//! envoy/systemd/: the unit runs Envoy under `drainpipe run` with the
//! settings that let the drain happen under systemd (`KillMode=mixed`: the
//! stop's SIGTERM reaches drainpipe only, not Envoy), its `TimeoutStopSec`
//! follows the timing formula from the plugin's grace_ms, and
//! `systemd-analyze verify` accepts it. (systemd does not run in the tests:
//! supervisor.rs sends SIGTERM to drainpipe alone, as `KillMode=mixed`
//! does.)

use std::process::Command;
use std::time::Duration;

use drainpipe::Config;
use drainpipe_ops::supervise::STOP_LIMIT;
use drainpipe_tests::envoy::{envoy_bin, repo_root, EnvoyConfig};
use drainpipe_tests::ops::static_drainpipe_bin;

const UNIT: &str = "envoy/systemd/drainpipe-envoy.service";

fn unit_text() -> String {
    std::fs::read_to_string(repo_root().join(UNIT)).unwrap()
}

/// The unit's settings: (section, key, value), comments and blank lines
/// dropped.
fn settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a setting: {line}"));
        out.push((section.clone(), key.to_string(), value.to_string()));
    }
    out
}

fn service<'a>(settings: &'a [(String, String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .find(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
}

fn seconds(text: &str) -> u64 {
    text.strip_suffix('s')
        .unwrap_or(text)
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} is not whole seconds: {e}"))
}

fn shipped_grace_ms() -> u64 {
    let text = EnvoyConfig::repo()
        .unwrap()
        .plugin_configuration("drainpipe")
        .unwrap();
    Config::parse(text.as_bytes()).unwrap().grace_ms
}

#[test]
fn the_stop_reaches_drainpipe_only_and_its_timeout_follows_grace_ms() {
    let s = settings(&unit_text());
    // The stop's SIGTERM goes to the main process only: with the default
    // (control-group) Envoy would get it too and exit without draining.
    assert_eq!(service(&s, "KillMode"), Some("mixed"));
    assert_eq!(service(&s, "KillSignal"), Some("SIGTERM"));
    assert_eq!(
        service(&s, "ExecStop"),
        None,
        "ExecStop runs before the SIGTERM"
    );
    assert_ne!(service(&s, "SendSIGKILL"), Some("no"));

    let exec: Vec<&str> = service(&s, "ExecStart")
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(exec[0].ends_with("/drainpipe"), "{exec:?}");
    assert_eq!(exec[1], "run");
    let t = exec.iter().position(|a| *a == "--timeout").unwrap();
    let timeout = seconds(exec[t + 1]);
    assert_eq!(
        timeout,
        drainpipe_ops::drain_timeout_s(shipped_grace_ms()),
        "--timeout = ceil(grace_ms / 1000) + 5"
    );
    let envoy = &exec[exec.iter().position(|a| *a == "--").unwrap() + 1..];
    assert!(envoy[0].ends_with("/envoy"), "{envoy:?}");
    assert_eq!(
        envoy[1..],
        [
            "-c",
            "/etc/envoy/envoy.yaml",
            "--drain-strategy",
            "immediate"
        ]
    );
    // envoy.yaml's plugin path is relative to the working directory.
    assert!(service(&s, "WorkingDirectory").unwrap().starts_with('/'));

    let stop = seconds(service(&s, "TimeoutStopSec").unwrap());
    assert_eq!(stop, timeout + 10, "TimeoutStopSec = --timeout + 10");
    // drainpipe has killed Envoy and exited before systemd's SIGKILL.
    assert!(Duration::from_secs(timeout) + STOP_LIMIT < Duration::from_secs(stop));
}

/// `systemd-analyze verify` (setup installs it) on the unit, its programs
/// pointed at the static drainpipe and the project's Envoy: no unknown key,
/// no bad value, no missing program.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let drainpipe = static_drainpipe_bin().unwrap();
    let envoy = envoy_bin().unwrap();
    let text = unit_text()
        .replace("/usr/local/bin/drainpipe", drainpipe.to_str().unwrap())
        .replace("/usr/local/bin/envoy", envoy.to_str().unwrap());
    let dir = std::env::temp_dir().join(format!("drainpipe-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("drainpipe-envoy.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): `cargo xtask setup` installs it (systemd)")
        });
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze: {stderr}");
}
