//! Configuration reload through Envoy's LDS (listeners from a watched file,
//! replaced atomically) while streams are in flight: the streams started
//! before a reload finish whole, the counts stay exact, and the drain state
//! is kept or reset as HARDENING.md documents:
//!
//! - new plugin configuration, same VM (same `vm_id`, code and VM
//!   configuration): the drain state is kept;
//! - a new VM under the same `vm_id` (VM configuration changed): kept, since
//!   Envoy keeps shared data per `vm_id` for the whole process;
//! - a different `vm_id`: a fresh drain state (serving).

use std::path::Path;
use std::time::{Duration, Instant};

use drainpipe_tests::envoy::{plugin_wasm, EnvoyConfig, Scratch};
use drainpipe_tests::fake_llm::chat_body;
use drainpipe_tests::http1::raw_request;
use drainpipe_tests::stats::{stat_value, wait_stat};
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm, Ports};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(10);

/// One version of the listeners: the plugin configuration patch for the
/// traffic filter, the `vm_id` of both filters, and the VM configuration.
struct Version {
    traffic: Value,
    vm_id: &'static str,
    vm_configuration: &'static str,
}

fn listeners(ports: Ports, v: &Version) -> Vec<Value> {
    let mut cfg = EnvoyConfig::repo()
        .unwrap()
        .localize(ports, &plugin_wasm().unwrap())
        .patch_plugin("drainpipe", v.traffic.clone())
        // No call to Envoy's admin: Envoy's own drain would also close the
        // connections this test keeps.
        .patch_plugin("drainpipe_admin", json!({"envoy_admin_cluster": null}));
    let doc = cfg.doc_mut();
    let listeners = doc["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners");
    for listener in listeners.iter_mut() {
        let vm = listener
            .pointer_mut("/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config/config/vm_config")
            .expect("a wasm filter first");
        vm["vm_id"] = json!(v.vm_id);
        vm["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": v.vm_configuration,
        });
    }
    listeners.clone()
}

/// Writes the LDS file atomically: a new file renamed over the watched one.
fn publish(dir: &Path, version: u32, listeners: Vec<Value>) {
    let resources: Vec<Value> = listeners
        .into_iter()
        .map(|mut l| {
            l["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
            l
        })
        .collect();
    let doc = json!({"version_info": version.to_string(), "resources": resources});
    let staging = dir.join(format!(".lds-{version}.json"));
    std::fs::write(&staging, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    std::fs::rename(&staging, dir.join("lds.json")).unwrap();
}

/// Waits until Envoy has applied `count` LDS updates and warmed them.
async fn wait_lds(envoy: &Envoy, count: u64) {
    let started = Instant::now();
    loop {
        let ok = stat_value(envoy, "listener_manager.lds.update_success")
            .await
            .unwrap()
            .unwrap_or(0);
        let warming = stat_value(envoy, "listener_manager.total_listeners_warming")
            .await
            .unwrap()
            .unwrap_or(0);
        if ok >= count && warming == 0 {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "LDS update {count} not applied; log tail:\n{}",
            envoy.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn drain_status(envoy: &Envoy) -> Value {
    let req = b"GET /drain HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n";
    let resp = raw_request(envoy.ports.drain, req, LIMIT).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    serde_json::from_slice(&resp.body).unwrap()
}

async fn health(envoy: &Envoy, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nhost: llm\r\nconnection: close\r\n\r\n");
    let resp = raw_request(envoy.ports.traffic, req.as_bytes(), LIMIT)
        .await
        .unwrap();
    (resp.status, resp.body_text())
}

/// A stream of `chunks` tokens 100 ms apart, on its own connection, read to
/// its end in the background; resolves to the body.
async fn stream(envoy: &Envoy, chunks: u32) -> tokio::task::JoinHandle<String> {
    let mut resp = reqwest::Client::new()
        .post(envoy.traffic("/v1/chat/completions"))
        .header("x-fake-chunks", chunks.to_string())
        .header("x-fake-chunk-delay-ms", "100")
        .json(&chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().expect("first token");
    tokio::spawn(async move {
        let mut body = String::from_utf8(first.to_vec()).unwrap();
        while let Some(chunk) = resp.chunk().await.expect("the stream is not cut") {
            body.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        body
    })
}

fn assert_whole(body: &str, chunks: usize) {
    let events = drainpipe_tests::fake_llm::sse_events(body);
    assert_eq!(events.len(), chunks + 2, "{body}");
    assert_eq!(events.last(), Some(&"[DONE]"));
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_reload_keeps_counts_exact_and_drain_state_per_vm_id() {
    let up = FakeLlm::start().await.unwrap();
    let ports = Ports::fresh(up.port());
    let lds = Scratch::new("lds").unwrap();
    // Long windows: the drain stays in its admit window for the whole test.
    let windows = json!({"admit_window_ms": 60000, "grace_ms": 120000});
    let v1 = Version {
        traffic: windows.clone(),
        vm_id: "drainpipe",
        vm_configuration: "v1",
    };
    publish(lds.path(), 1, listeners(ports, &v1));

    let mut bootstrap = EnvoyConfig::repo()
        .unwrap()
        .localize(ports, &plugin_wasm().unwrap());
    let doc = bootstrap.doc_mut();
    doc["static_resources"]
        .as_object_mut()
        .unwrap()
        .remove("listeners");
    // Envoy requires a node identity for any xDS, file-based included.
    doc["node"] = json!({"id": "drainpipe-test", "cluster": "drainpipe-test"});
    doc["dynamic_resources"] = json!({
        "lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": lds.path().join("lds.json").display().to_string(),
                "watched_directory": {"path": lds.path().display().to_string()}
            }
        }
    });
    let envoy = Envoy::start(&bootstrap, ports, EnvoyOptions::default()).expect("Envoy starts");
    wait_lds(&envoy, 1).await;
    let started = Instant::now();

    // v1: a stream in flight, then a drain.
    let s1 = stream(&envoy, 150).await;
    let drain = raw_request(
        envoy.ports.drain,
        b"POST /drain HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(drain.status, 202, "{}", drain.body_text());
    let before = drain_status(&envoy).await;
    assert_eq!(before["state"], "draining");
    let drain_started = before["drain_started_unix_ms"].as_u64().unwrap();

    let vms_v1 = stat_value(&envoy, "wasm.envoy.wasm.runtime.v8.created")
        .await
        .unwrap()
        .unwrap();

    // v2: new plugin configuration (another health path), same VM.
    let v2 = Version {
        traffic: json!({"admit_window_ms": 60000, "grace_ms": 120000, "health_path": "/healthz/v2"}),
        vm_id: "drainpipe",
        vm_configuration: "v1",
    };
    publish(lds.path(), 2, listeners(ports, &v2));
    wait_lds(&envoy, 2).await;
    // New connections reach the new configuration...
    assert_eq!(
        health(&envoy, "/healthz/v2").await,
        (503, r#"{"status":"draining"}"#.to_string())
    );
    // ...which kept the drain: same start time, and the stream still counted.
    let after = drain_status(&envoy).await;
    assert_eq!(after["drain_started_unix_ms"].as_u64(), Some(drain_started));
    assert_eq!(after["inflight"], 1);
    let s2 = stream(&envoy, 100).await;
    assert_eq!(envoy.stat("drainpipe_inflight").await.unwrap(), 2);
    let vms_v2 = stat_value(&envoy, "wasm.envoy.wasm.runtime.v8.created")
        .await
        .unwrap()
        .unwrap();

    // v3: a new VM under the same vm_id (its VM configuration changed).
    let v3 = Version {
        traffic: windows.clone(),
        vm_id: "drainpipe",
        vm_configuration: "v3",
    };
    publish(lds.path(), 3, listeners(ports, &v3));
    wait_lds(&envoy, 3).await;
    assert_eq!(health(&envoy, "/healthz/ready").await.0, 503);
    let vms_v3 = stat_value(&envoy, "wasm.envoy.wasm.runtime.v8.created")
        .await
        .unwrap()
        .unwrap();
    assert!(
        vms_v3 >= vms_v2 + 2,
        "a new VM per worker was created ({vms_v2} -> {vms_v3})"
    );
    eprintln!("V8 VMs created: {vms_v1} at start, {vms_v2} after v2, {vms_v3} after v3");
    let after = drain_status(&envoy).await;
    assert_eq!(after["state"], "draining", "{after}");
    assert_eq!(after["drain_started_unix_ms"].as_u64(), Some(drain_started));
    assert_eq!(after["inflight"], 2);

    // v4: another vm_id: another shared-data namespace, so serving again.
    let v4 = Version {
        traffic: windows.clone(),
        vm_id: "drainpipe-v4",
        vm_configuration: "v3",
    };
    publish(lds.path(), 4, listeners(ports, &v4));
    wait_lds(&envoy, 4).await;
    assert_eq!(
        health(&envoy, "/healthz/ready").await,
        (200, r#"{"status":"serving"}"#.to_string())
    );
    let after = drain_status(&envoy).await;
    assert_eq!(after["state"], "serving", "{after}");
    assert!(after["drain_started_unix_ms"].is_null());
    // The counts are Envoy stats, by name: the same across every VM.
    assert_eq!(after["inflight"], 2);

    // The streams started before the reloads finish whole, on their old
    // listeners, and release their counts.
    assert_whole(&s1.await.unwrap(), 150);
    assert_whole(&s2.await.unwrap(), 100);
    wait_stat(&envoy, "drainpipe_inflight", 0, LIMIT)
        .await
        .unwrap();
    envoy.counts_settled().await;
    let admitted = envoy.stat("drainpipe_admitted").await.unwrap();
    assert_eq!(admitted, 2);
    assert_eq!(envoy.stat("drainpipe_completed").await.unwrap(), admitted);
    assert!(started.elapsed() < Duration::from_secs(30));
}
