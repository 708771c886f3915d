//! Every Envoy configuration in the repository passes `envoy --mode
//! validate`, and a bad plugin configuration stops Envoy at start-up with
//! the plugin's own error in its log.

use std::process::Command;

use drainpipe_tests::envoy::{envoy_bin, free_port, plugin_wasm, repo_root, EnvoyConfig, Scratch};
use drainpipe_tests::{Envoy, EnvoyOptions, Ports};

/// The Envoy bootstrap files shipped under envoy/.
fn shipped_envoy_configs() -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(repo_root().join("envoy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("envoy") && name.ends_with(".yaml")
        })
        .collect();
    found.sort();
    found
}

#[test]
fn every_shipped_envoy_config_passes_envoy_validate() {
    let configs = shipped_envoy_configs();
    assert!(!configs.is_empty(), "no Envoy configs found under envoy/");
    plugin_wasm().expect("the configs load the built plugin");
    for config in configs {
        let out = Command::new(envoy_bin().unwrap())
            .args(["--mode", "validate", "-c"])
            .arg(&config)
            .current_dir(repo_root())
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} fails validation:\n{log}",
            config.display()
        );
        assert!(log.contains("OK"), "{log}");
    }
}

fn refusal(plugin: &str, config: &str) -> (std::process::ExitStatus, String) {
    let ports = Ports::fresh(1);
    let cfg = EnvoyConfig::repo()
        .unwrap()
        .localize(ports, &plugin_wasm().unwrap())
        .raw_plugin_config(plugin, config);
    Envoy::expect_refusal(&cfg).unwrap()
}

#[test]
fn bad_plugin_config_makes_envoy_refuse_to_start_with_the_plugin_error_in_its_log() {
    let cases = [
        (
            "drainpipe",
            r#"{"grace_ms": "thirty seconds"}"#,
            "invalid plugin configuration: grace_ms: expected an integer",
        ),
        (
            "drainpipe",
            r#"{"grace_period": 30000}"#,
            "invalid plugin configuration: grace_period: unknown key",
        ),
        (
            "drainpipe",
            r#"{"deadline": {"min_budget_ms": 999999, "default_timeout_ms": 60000}}"#,
            "invalid plugin configuration: deadline.min_budget_ms",
        ),
        (
            "drainpipe",
            "not json",
            "invalid plugin configuration: <root>: not valid JSON",
        ),
        (
            "drainpipe_admin",
            r#"{"role": "admin", "admin_token": ""}"#,
            "invalid plugin configuration: admin_token",
        ),
    ];
    for (plugin, config, expected) in cases {
        let (status, log) = refusal(plugin, config);
        assert_eq!(
            status.code(),
            Some(1),
            "{config}: Envoy should exit 1:\n{log}"
        );
        assert!(
            log.contains(expected),
            "{config}: log lacks {expected:?}:\n{log}"
        );
    }
}

#[test]
fn a_single_key_whose_value_another_keys_default_would_contradict_starts_envoy() {
    // Each would conflict with another key's fixed default (grace 30 s,
    // admit window 5 s, default timeout 60 s, minimum budget 5 s, maximum
    // 600 s); those defaults follow the key instead.
    for config in [
        r#"{"grace_ms": 3000}"#,
        r#"{"admit_window_ms": 40000}"#,
        r#"{"deadline": {"default_timeout_ms": 1000}}"#,
        r#"{"deadline": {"max_timeout_ms": 30000}}"#,
        r#"{"deadline": {"min_budget_ms": 70000}}"#,
        r#"{"deadline": {"websocket_default_timeout_ms": 3600000}}"#,
    ] {
        let ports = Ports::fresh(free_port());
        let cfg = EnvoyConfig::repo()
            .unwrap()
            .localize(ports, &plugin_wasm().unwrap())
            .raw_plugin_config("drainpipe", config);
        let envoy = Envoy::start(&cfg, ports, EnvoyOptions::default());
        assert!(envoy.is_ok(), "{config}: {:#}", envoy.err().unwrap());
    }
}

#[test]
fn scratch_dirs_are_removed() {
    let path = {
        let s = Scratch::new("check").unwrap();
        s.path().to_path_buf()
    };
    assert!(!path.exists());
}
