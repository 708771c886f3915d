//! `envoy/observability/`: the alerting rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), and the dashboard and the
//! rules use only stats a real Envoy with the plugin exports on
//! `/stats/prometheus`, under those names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use drainpipe_tests::envoy::{repo_root, upstream_and_envoy, Scratch};
use drainpipe_tests::EnvoyOptions;
use serde_json::Value;

fn dir() -> PathBuf {
    repo_root().join("envoy/observability")
}

/// Runs promtool, failing with its output (or how to install it).
fn promtool(args: &[&str], cwd: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): run `cargo xtask setup` (Debian package prometheus)")
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Every `expr` of the dashboard's panels.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(dir().join("drainpipe-dashboard.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = doc["panels"].as_array().expect("panels");
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(queries.len() >= panels.len(), "a panel without a query");
    queries
}

/// Every `expr` of the alerting rules, and every series of their tests.
fn rule_queries() -> (Vec<String>, Vec<String>) {
    let read = |f: &str| -> Value {
        serde_yaml::from_str(&std::fs::read_to_string(dir().join(f)).unwrap()).unwrap()
    };
    let rules = read("drainpipe-alerts.yaml");
    let exprs = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    let tests = read("drainpipe-alerts.test.yaml");
    let series = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["input_series"].as_array().cloned().unwrap_or_default())
        .map(|s| s["series"].as_str().unwrap().to_string())
        .collect();
    (exprs, series)
}

/// The metric names a PromQL expression reads: its identifiers, less
/// functions (followed by `(`), operators and aggregations, label names (inside `{}` and the
/// lists of `by`, `without`, `on`, `ignoring`, `group_left`,
/// `group_right`), strings and durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Operators, and the aggregations (which may be followed by `by (..)`
    // before their `(`).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |from: usize, close: char| {
        let mut j = from;
        let mut quoted = None;
        while j < chars.len() {
            match (quoted, chars[j]) {
                (Some(q), c) if c == q => quoted = None,
                (None, '"' | '\'' | '`') => quoted = Some(chars[j]),
                (None, c) if c == close => return j + 1,
                _ => {}
            }
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c);
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if LISTS.contains(&word.as_str()) && call {
                i = skip_to(next + 1, ')');
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_told_from_functions_labels_and_durations() {
    let names = metric_names(
        r#"sum by (instance, pod) (rate(a_total{job=~"x|y", le="0.5"}[5m] offset 1m)) / on(instance) group_left(pod) b > bool 2e3 and c"#,
    );
    let expected: BTreeSet<String> = ["a_total", "b", "c"].map(String::from).into();
    assert_eq!(names, expected);
}

#[test]
fn promtool_accepts_the_alerting_rules_and_their_tests_pass() {
    let out = promtool(&["check", "rules", "drainpipe-alerts.yaml"], &dir());
    assert!(out.contains("SUCCESS: 3 rules found"), "{out}");
    let out = promtool(&["test", "rules", "drainpipe-alerts.test.yaml"], &dir());
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool parses a rule file's expressions: the dashboard's queries
    // as recording rules, Grafana's variable set to match anything.
    let scratch = Scratch::new("dashboard-promql").unwrap();
    let rules: Vec<Value> = dashboard_queries()
        .iter()
        .enumerate()
        .map(|(i, q)| {
            serde_json::json!({"record": format!("dashboard:query_{i}"),
                               "expr": q.replace("$instance", ".*")})
        })
        .collect();
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(
        scratch.path().join("dashboard.yaml"),
        serde_yaml::to_string(&doc).unwrap(),
    )
    .unwrap();
    promtool(&["check", "rules", "dashboard.yaml"], scratch.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_rules_read_only_stats_envoy_exports_for_the_plugin() {
    let (_up, envoy) =
        upstream_and_envoy(Value::Object(Default::default()), EnvoyOptions::default()).await;
    let text = envoy.prometheus().await.unwrap();
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|n| n.starts_with("drainpipe_"))
        .map(String::from)
        .collect();
    // Each of the plugin's stats, under the name it defines.
    let defined: BTreeSet<String> = [
        drainpipe::metrics::INFLIGHT,
        drainpipe::metrics::STATE,
        drainpipe::metrics::ADMITTED,
        drainpipe::metrics::REJECTED_DRAINING,
        drainpipe::metrics::REJECTED_DEADLINE,
        drainpipe::metrics::STREAMS_ENDED,
        drainpipe::metrics::DRAIN_STARTED_UNIX_MS,
        drainpipe::metrics::DRAIN_DURATION_MS,
        drainpipe::metrics::DRAIN_RESETS,
        drainpipe::metrics::GRACE_MS,
    ]
    .map(String::from)
    .into();
    assert!(
        defined.is_subset(&exported),
        "not in /stats/prometheus: {:?}",
        defined.difference(&exported).collect::<Vec<_>>()
    );

    let (rules, series) = rule_queries();
    let mut used = BTreeSet::new();
    for (what, q) in dashboard_queries()
        .iter()
        .map(|q| ("dashboard", q))
        .chain(rules.iter().map(|q| ("alerting rule", q)))
    {
        let names = metric_names(q);
        assert!(!names.is_empty(), "{what} query reads no stat: {q}");
        for name in names {
            assert!(
                exported.contains(&name),
                "{what} query reads {name}, which Envoy does not export: {q}\nexported: {exported:?}"
            );
            used.insert(name);
        }
    }
    for s in &series {
        let name = s.split('{').next().unwrap();
        assert!(
            exported.contains(name),
            "rule test series {s} is not exported"
        );
    }
    // The dashboard shows what the issue asks for.
    for name in [
        "drainpipe_inflight",
        "drainpipe_state",
        "drainpipe_admitted",
        "drainpipe_rejected_draining",
        "drainpipe_drain_duration_ms",
        "drainpipe_streams_ended",
        "drainpipe_drain_resets",
    ] {
        assert!(used.contains(name), "nothing shows {name}");
    }
}
