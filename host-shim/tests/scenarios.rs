//! The contract as data (`tests/scenarios/contract.json`), run against the
//! shim and against a real Envoy with the same plugin and the same
//! configuration: both must meet every expectation, and every local reply
//! must be the same in both, status, plugin headers and body byte for byte.
//! The shim's faithfulness is measured here, not assumed.

mod support;

use std::collections::BTreeMap;

use drainpipe_shim::{Clock, Decision, Host, PluginConfig, Worker};
use drainpipe_tests::envoy::{plugin_wasm, repo_root, EnvoyConfig};
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm, Ports};
use serde_json::{json, Value};

/// What one step gave.
#[derive(Debug, Clone, PartialEq)]
enum Observed {
    /// A local reply: status, headers, body.
    Reply {
        status: u16,
        headers: BTreeMap<String, String>,
        body: String,
    },
    /// Forwarded; the headers the upstream received (or would receive).
    Forwarded { upstream: BTreeMap<String, String> },
    /// A `settle` step: the workers' batched counts have reached the stats.
    Settled,
}

fn scenarios() -> Vec<Value> {
    let path = repo_root().join("tests/scenarios/contract.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    doc["scenarios"].as_array().unwrap().clone()
}

/// The shipped plugin configurations, patched as the scenario says (and
/// without the Envoy admin call, which only Envoy has a cluster for).
fn configs(scenario: &Value) -> (Value, Value) {
    let shipped: BTreeMap<String, Value> = EnvoyConfig::repo()
        .unwrap()
        .plugin_configurations()
        .into_iter()
        .map(|(name, text)| (name, serde_json::from_str(&text).unwrap()))
        .collect();
    let mut traffic = shipped["drainpipe"].clone();
    let mut admin = shipped["drainpipe_admin"].clone();
    merge(&mut traffic, &scenario["traffic"]);
    merge(&mut admin, &scenario["admin"]);
    admin.as_object_mut().unwrap().remove("envoy_admin_cluster");
    (traffic, admin)
}

fn merge(target: &mut Value, patch: &Value) {
    for (k, v) in patch.as_object().into_iter().flatten() {
        target[k] = v.clone();
    }
}

fn step_headers(step: &Value) -> Vec<(String, String)> {
    step["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

fn run_shim(scenario: &Value) -> Vec<Observed> {
    let (traffic, admin) = configs(scenario);
    let clock = Clock::manual(support::T0_MS);
    let host = Host::builder(support::drainpipe())
        .vm_id("drainpipe")
        .clock(clock.clone())
        .plugin(PluginConfig::new("drainpipe", traffic.to_string()))
        .plugin(PluginConfig::new("drainpipe_admin", admin.to_string()))
        .build()
        .expect("shim host");
    let worker = host.worker().expect("shim worker");
    scenario["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| shim_step(&worker, &clock, step))
        .collect()
}

fn shim_step(worker: &Worker, clock: &Clock, step: &Value) -> Observed {
    if step.get("settle").is_some() {
        // A worker's tick hands its counts over; the tick comes with time.
        clock.advance(drainpipe_tests::envoy::COUNTS_SETTLE);
        worker.tick();
        return Observed::Settled;
    }
    let plugin = match step["listener"].as_str().unwrap() {
        "traffic" => "drainpipe",
        _ => "drainpipe_admin",
    };
    let mut headers = vec![
        (
            ":method".to_string(),
            step["method"].as_str().unwrap().to_string(),
        ),
        (
            ":path".to_string(),
            step["path"].as_str().unwrap().to_string(),
        ),
        (":authority".to_string(), "localhost".to_string()),
    ];
    headers.extend(step_headers(step));
    let mut stream = worker.http_stream(plugin).unwrap();
    let out = stream.request_headers(headers, true);
    let observed = match &out.decision {
        Decision::LocalResponse(r) => Observed::Reply {
            status: r.status as u16,
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            body: r.body_text(),
        },
        Decision::Continue => {
            let upstream = out
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            stream.response_headers(vec![(":status", "200")], true);
            Observed::Forwarded { upstream }
        }
        other => panic!("shim: unexpected decision {other:?}"),
    };
    stream.finish();
    observed
}

async fn run_envoy(scenario: &Value) -> Vec<Observed> {
    let (traffic, admin) = configs(scenario);
    let upstream = FakeLlm::start().await.unwrap();
    let ports = Ports::fresh(upstream.port());
    let cfg = EnvoyConfig::repo()
        .unwrap()
        .localize(ports, &plugin_wasm().unwrap())
        .raw_plugin_config("drainpipe", &traffic.to_string())
        .raw_plugin_config("drainpipe_admin", &admin.to_string());
    let envoy = Envoy::start(&cfg, ports, EnvoyOptions::default()).expect("Envoy starts");
    let client = reqwest::Client::new();
    let mut observed = Vec::new();
    for step in scenario["steps"].as_array().unwrap() {
        if step.get("settle").is_some() {
            envoy.counts_settled().await;
            observed.push(Observed::Settled);
            continue;
        }
        let port = match step["listener"].as_str().unwrap() {
            "traffic" => envoy.ports.traffic,
            _ => envoy.ports.drain,
        };
        let method =
            reqwest::Method::from_bytes(step["method"].as_str().unwrap().as_bytes()).unwrap();
        let url = format!("http://127.0.0.1:{port}{}", step["path"].as_str().unwrap());
        let mut req = client.request(method, url);
        for (k, v) in step_headers(step) {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers: BTreeMap<String, String> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = resp.text().await.unwrap();
        let forwarded = headers.contains_key("x-envoy-upstream-service-time");
        observed.push(if forwarded && status == 200 {
            let echo: Value = serde_json::from_str(&body).unwrap();
            Observed::Forwarded {
                upstream: echo["headers"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
            }
        } else {
            Observed::Reply {
                status,
                headers,
                body,
            }
        });
    }
    observed
}

/// `want` is a subset of `got` (objects: every key of `want`, recursively).
fn subset(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| subset(v, gv))),
        _ => want == got,
    }
}

fn check(host: &str, step: &Value, observed: &Observed) {
    let expect = &step["expect"];
    let what = format!(
        "{host}: {} {} {}",
        step["listener"], step["method"], step["path"]
    );
    match observed {
        Observed::Settled => assert!(step.get("settle").is_some(), "{what}: settled"),
        Observed::Forwarded { upstream } => {
            assert_eq!(
                expect["forwarded"], true,
                "{what}: forwarded, expected {expect}"
            );
            for (k, v) in expect["upstream_headers"].as_object().unwrap() {
                if v.is_null() {
                    assert!(
                        upstream.get(k).is_none(),
                        "{what}: upstream has {k}, expected none: {upstream:?}"
                    );
                    continue;
                }
                let got = upstream
                    .get(k)
                    .unwrap_or_else(|| panic!("{what}: upstream lacks {k}: {upstream:?}"));
                assert!(
                    v == "*" || v == got,
                    "{what}: upstream {k} = {got}, expected {v}"
                );
            }
        }
        Observed::Reply {
            status,
            headers,
            body,
        } => {
            assert_eq!(
                json!(status),
                expect["status"],
                "{what}: status; body {body}"
            );
            for (k, v) in expect["headers"].as_object().into_iter().flatten() {
                let got = headers
                    .get(k)
                    .unwrap_or_else(|| panic!("{what}: reply lacks {k}: {headers:?}"));
                assert!(v == "*" || v == got, "{what}: {k} = {got}, expected {v}");
            }
            for k in expect["absent_headers"].as_array().into_iter().flatten() {
                let k = k.as_str().unwrap();
                assert!(
                    !headers.contains_key(k),
                    "{what}: reply has {k}, expected none: {headers:?}"
                );
            }
            if let Some(text) = expect["body_text"].as_str() {
                assert_eq!(body, text, "{what}: body");
            }
            if !expect["body"].is_null() {
                let got: Value = serde_json::from_str(body)
                    .unwrap_or_else(|_| panic!("{what}: body not JSON: {body}"));
                assert!(
                    subset(&expect["body"], &got),
                    "{what}: body {got}, expected {}",
                    expect["body"]
                );
            }
        }
    }
}

/// The shim's reply must be Envoy's: same status and body, and every header
/// the plugin set (all the shim's headers) with the same value in Envoy's.
fn same_reply(step: &Value, shim: &Observed, envoy: &Observed) {
    let what = format!("{} {} {}", step["listener"], step["method"], step["path"]);
    match (shim, envoy) {
        (
            Observed::Reply {
                status: s1,
                headers: h1,
                body: b1,
            },
            Observed::Reply {
                status: s2,
                headers: h2,
                body: b2,
            },
        ) => {
            assert_eq!(s1, s2, "{what}: status shim {s1}, Envoy {s2}");
            for (k, v) in h1 {
                assert_eq!(
                    h2.get(k),
                    Some(v),
                    "{what}: header {k}: shim {v:?}, Envoy {:?}",
                    h2.get(k)
                );
            }
            // Bodies with times in them (drain status) differ only there.
            let strip = |b: &str| -> Value {
                let mut v: Value = serde_json::from_str(b).unwrap_or(Value::String(b.to_string()));
                if let Some(o) = v.as_object_mut() {
                    for k in ["drain_started_unix_ms", "elapsed_ms"] {
                        if o.get(k).is_some_and(|x| !x.is_null()) {
                            o.insert(k.into(), json!("<time>"));
                        }
                    }
                }
                v
            };
            assert_eq!(strip(b1), strip(b2), "{what}: body differs");
        }
        (Observed::Forwarded { .. }, Observed::Forwarded { .. })
        | (Observed::Settled, Observed::Settled) => {}
        _ => panic!("{what}: shim {shim:?} but Envoy {envoy:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_scenarios_give_the_same_answers_in_the_shim_and_in_envoy() {
    let all = scenarios();
    assert!(all.len() >= 2);
    let mut compared = 0;
    for scenario in &all {
        let shim = run_shim(scenario);
        let envoy = run_envoy(scenario).await;
        for (i, step) in scenario["steps"].as_array().unwrap().iter().enumerate() {
            check("shim", step, &shim[i]);
            check("Envoy", step, &envoy[i]);
            same_reply(step, &shim[i], &envoy[i]);
            compared += 1;
        }
    }
    println!("{compared} steps gave the same answers in the shim and in Envoy");
}
