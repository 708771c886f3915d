//! What Envoy does when a wasm filter traps, per `failure_policy`, shown with
//! a test-only filter that panics on `x-trap` (`tests/trap-filter`), placed
//! after drainpipe on the traffic listener, in its own VM. drainpipe's counts
//! stay exact whatever happens to a filter after it. See HARDENING.md.

use std::time::Duration;

use drainpipe_tests::envoy::{plugin_wasm, EnvoyConfig};
use drainpipe_tests::guests::TRAP_FILTER;
use drainpipe_tests::http1::{raw_request, RawResponse};
use drainpipe_tests::stats::{stat_value, wait_stat};
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm, Ports};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(10);

/// Envoy on the repository's config, one worker (one VM per filter), with
/// the trap filter after drainpipe under `policy`.
async fn setup(policy: &str) -> (FakeLlm, Envoy) {
    let up = FakeLlm::start().await.unwrap();
    let ports = Ports::fresh(up.port());
    let trap = TRAP_FILTER.build().expect("trap filter builds");
    let mut cfg = EnvoyConfig::repo()
        .unwrap()
        .localize(ports, &plugin_wasm().unwrap());
    let filters = cfg
        .doc_mut()
        .pointer_mut(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters",
        )
        .and_then(Value::as_array_mut)
        .expect("the traffic listener's HTTP filters");
    assert_eq!(filters[0]["typed_config"]["config"]["name"], "drainpipe");
    filters.insert(
        1,
        json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "trap",
                    "root_id": "trap",
                    "failure_policy": policy,
                    "vm_config": {
                        "vm_id": "trap",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": trap.display().to_string()}}
                    }
                }
            }
        }),
    );
    let opts = EnvoyOptions {
        concurrency: 1,
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::start(&cfg, ports, opts).expect("Envoy starts with the trap filter");
    (up, envoy)
}

async fn get(envoy: &Envoy, trap: bool) -> RawResponse {
    let extra = if trap { "x-trap: 1\r\n" } else { "" };
    let req = format!("GET /echo/t HTTP/1.1\r\nhost: llm\r\nconnection: close\r\n{extra}\r\n");
    match raw_request(envoy.ports.traffic, req.as_bytes(), LIMIT).await {
        Ok(resp) => resp,
        // A connection closed without any response: status 0.
        Err(_) => RawResponse {
            status: 0,
            head: String::new(),
            body: Vec::new(),
        },
    }
}

fn ran(resp: &RawResponse) -> bool {
    resp.head.contains("x-trap-filter: ran")
}

async fn counts_exact(envoy: &Envoy) {
    wait_stat(envoy, "drainpipe_inflight", 0, LIMIT)
        .await
        .unwrap();
    envoy.counts_settled().await;
    let admitted = envoy.stat("drainpipe_admitted").await.unwrap();
    assert_eq!(envoy.stat("drainpipe_completed").await.unwrap(), admitted);
}

/// The first request passes through the filter; the trapping one gets
/// Envoy's bare 503 (no body, connection closed) and the VM is dead.
async fn trap_once(envoy: &Envoy) {
    let ok = get(envoy, false).await;
    assert_eq!(ok.status, 200);
    assert!(ran(&ok), "the trap filter runs before the trap");
    let trapped = get(envoy, true).await;
    assert_eq!(trapped.status, 503, "{trapped:?}");
    assert!(trapped.body.is_empty() && !ran(&trapped), "{trapped:?}");
    let log = envoy.log();
    assert!(
        log.contains("x-trap: trapping on purpose")
            && log.contains("proxy_on_request_headers failed"),
        "{}",
        envoy.log_tail(10)
    );
}

/// drainpipe, in its own VM before the failed filter, is untouched.
async fn drainpipe_unharmed(envoy: &Envoy) {
    counts_exact(envoy).await;
    assert_eq!(
        stat_value(envoy, "wasm.drainpipe.vm_reload").await.unwrap(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_closed_trapped_filter_answers_503_to_every_later_request() {
    let (_up, envoy) = setup("FAIL_CLOSED").await;
    trap_once(&envoy).await;
    for _ in 0..3 {
        let resp = get(&envoy, false).await;
        assert_eq!(resp.status, 503, "{resp:?}");
        assert!(!ran(&resp));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        stat_value(&envoy, "wasm.trap.vm_reload").await.unwrap(),
        Some(0)
    );
    drainpipe_unharmed(&envoy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_open_trapped_filter_is_skipped_and_traffic_flows() {
    let (_up, envoy) = setup("FAIL_OPEN").await;
    trap_once(&envoy).await;
    for trap in [false, true, false] {
        let resp = get(&envoy, trap).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert!(!ran(&resp), "the dead filter is skipped, never reloaded");
        // drainpipe still set the deadline: the router tells the upstream
        // the plugin's default budget (60 s), not the route's 600 s.
        let body = resp.body_text();
        assert!(
            body.contains("x-envoy-expected-rq-timeout-ms") && body.contains("60000"),
            "{body}"
        );
    }
    drainpipe_unharmed(&envoy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_reload_trapped_filter_comes_back_in_a_new_vm() {
    let (_up, envoy) = setup("FAIL_RELOAD").await;
    for round in 1..=2 {
        trap_once(&envoy).await;
        // Requests get 503 during the reload back-off, then a new VM runs.
        let mut waited = Duration::ZERO;
        loop {
            let resp = get(&envoy, false).await;
            if resp.status == 200 && ran(&resp) {
                break;
            }
            assert_eq!(resp.status, 503, "{resp:?}");
            assert!(waited < LIMIT, "the filter never came back");
            tokio::time::sleep(Duration::from_millis(200)).await;
            waited += Duration::from_millis(200);
        }
        assert_eq!(
            stat_value(&envoy, "wasm.trap.vm_reload_success")
                .await
                .unwrap(),
            Some(round)
        );
    }
    drainpipe_unharmed(&envoy).await;
}
