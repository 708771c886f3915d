//! Hostile headers through a real Envoy: very long, non-ASCII, negative and
//! overflowing values never trap the VM. Every such request gets an answer
//! that is not a VM failure, normal requests still work afterwards, Envoy's
//! wasm stats show no failed VM, and no header raises a budget above
//! `deadline.max_timeout_ms`.

use std::time::Duration;

use drainpipe_tests::envoy::{plugin_wasm, EnvoyConfig};
use drainpipe_tests::fake_llm::chat_body;
use drainpipe_tests::http1::raw_request;
use drainpipe_tests::stats::{stats, wait_stat};
use drainpipe_tests::{Envoy, EnvoyOptions, FakeLlm, Ports};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(10);

/// Request headers as raw bytes.
type Headers<'a> = Vec<(&'a str, &'a [u8])>;

/// A header list for failure messages, long values cut short.
fn show(headers: &[(&str, &[u8])]) -> String {
    let cut: Vec<_> = headers
        .iter()
        .map(|(n, v)| {
            format!(
                "{n}: {:?} ({} bytes)",
                String::from_utf8_lossy(&v[..v.len().min(24)]),
                v.len()
            )
        })
        .collect();
    cut.join(", ")
}

fn request(method: &str, path: &[u8], headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = format!("{method} ").into_bytes();
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: llm\r\nconnection: close\r\ncontent-length: 0\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Envoy's wasm stats that move when a VM fails: the VMs created and alive
/// (a trap kills a VM; a reload policy creates more) and the reload counts.
async fn vm_stats(envoy: &Envoy) -> String {
    let text = stats(envoy, "^wasm\\.").await.unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("vm_reload") || l.contains(".runtime."))
        .collect();
    kept.join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_headers_never_trap_the_vm_and_never_raise_the_budget() {
    let up = FakeLlm::start().await.unwrap();
    let ports = Ports::fresh(up.port());
    let cfg = EnvoyConfig::repo()
        .unwrap()
        .localize(ports, &plugin_wasm().unwrap())
        .patch_plugin("drainpipe_admin", json!({"admin_token": "s3cret"}));
    let envoy = Envoy::start(&cfg, ports, EnvoyOptions::default()).expect("Envoy starts");
    let vms_at_start = vm_stats(&envoy).await;
    assert!(
        vms_at_start.contains("vm_reload_failure: 0"),
        "{vms_at_start}"
    );

    let nines = vec![b'9'; 40_000];
    let zeros = [&[b'0'; 30_000][..], b"10000"].concat();
    let long_path = [&b"/echo/"[..], &[b'a'; 40_000]].concat();
    // (headers, malformed deadline headers among them)
    let cases: Vec<(Headers, u64)> = vec![
        (vec![("x-request-timeout-ms", &nines)], 1),
        (vec![("x-request-timeout-ms", b"-1")], 1),
        (vec![("x-request-timeout-ms", b"18446744073709551616")], 1),
        (vec![("x-request-timeout-ms", b"\xff\xfe\x80")], 1),
        (vec![("x-request-timeout-ms", "١٢٣".as_bytes())], 1),
        (vec![("x-request-deadline-ms", b"-1700000000000")], 1),
        (vec![("grpc-timeout", b"99999999\xc3")], 1),
        (vec![("grpc-timeout", b"-5S")], 1),
        // Envoy sanitizes x-envoy-* headers from external clients before any
        // filter runs: the plugin never sees this one, so it is not counted.
        (vec![("x-envoy-expected-rq-timeout-ms", b"1e9")], 0),
        (vec![("x-envoy-upstream-rq-timeout-ms", b"-5")], 0),
        (vec![("x-envoy-upstream-rq-timeout-ms", b"\xff")], 0),
        (vec![("authorization", &nines)], 0),
        (vec![("content-type", b"application/grpc\xff")], 0),
        (vec![("x-request-timeout-ms", &zeros)], 0),
        // Overflowing but well-formed: capped at max_timeout_ms.
        (vec![("x-request-deadline-ms", b"18446744073709551615")], 0),
        (vec![("grpc-timeout", b"99999999H")], 0),
        (
            vec![("x-envoy-expected-rq-timeout-ms", b"18446744073709551615")],
            0,
        ),
        (
            vec![
                ("x-request-timeout-ms", b"99999999999"),
                ("x-envoy-upstream-rq-timeout-ms", b"99999999999"),
            ],
            0,
        ),
    ];
    let mut malformed = 0;
    for (headers, bad) in &cases {
        let resp = raw_request(
            envoy.ports.traffic,
            &request("GET", b"/echo/h", headers),
            LIMIT,
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}; log tail:\n{}", show(headers), envoy.log_tail(20)));
        assert_eq!(resp.status, 200, "{}: {}", show(headers), resp.body_text());
        malformed += bad;
        let seen: Value = serde_json::from_slice(&resp.body).unwrap();
        // The budget Envoy's router enforces and tells the upstream.
        let budget: u64 = seen["headers"]["x-envoy-expected-rq-timeout-ms"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no budget upstream: {seen}"));
        assert!(
            budget <= 600_000,
            "{} raised the budget to {budget}",
            show(headers)
        );
        // A deadline header of the request's own reaches the upstream
        // rewritten to that budget, never as sent.
        if headers.iter().any(|(n, _)| *n == "x-request-timeout-ms") {
            assert_eq!(
                seen["headers"]["x-request-timeout-ms"],
                budget.to_string(),
                "{}",
                show(headers)
            );
        }
    }
    assert_eq!(
        envoy.stat("drainpipe_malformed_deadline").await.unwrap(),
        malformed
    );

    // Requests with odd paths and methods: any answer but a VM failure.
    let odd: Vec<(&str, Vec<u8>)> = vec![
        ("GET", long_path.clone()),
        ("GET", b"/echo/\xc3\xa9\xff".to_vec()),
        ("GET", b"/healthz/ready?\xff=\xff".to_vec()),
        ("HEAD", b"/healthz/ready".to_vec()),
        ("OPTIONS", b"*".to_vec()),
        ("GET", b"/echo/%00%ff".to_vec()),
    ];
    for (method, path) in &odd {
        let resp = raw_request(envoy.ports.traffic, &request(method, path, &[]), LIMIT)
            .await
            .unwrap();
        assert!(
            resp.status < 500,
            "{method} {:?}: {} {}",
            String::from_utf8_lossy(&path[..path.len().min(40)]),
            resp.status,
            resp.body_text()
        );
    }
    // Past Envoy's header limit (60 KiB): Envoy refuses it before any filter.
    let huge = vec![b'1'; 70_000];
    let resp = raw_request(
        envoy.ports.traffic,
        &request("GET", b"/echo/h", &[("x-request-timeout-ms", &huge)]),
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 431);

    // The drain listener, with a token: hostile authorization values are 401.
    for auth in [
        &nines[..],
        b"Bearer \xff\xfe",
        b"Bearer s3cret\xc3",
        b"bearer",
    ] {
        let resp = raw_request(
            envoy.ports.drain,
            &request("POST", b"/drain", &[("authorization", auth)]),
            LIMIT,
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 401, "{}", resp.body_text());
    }
    let resp = raw_request(
        envoy.ports.drain,
        &request("GET", b"/drain", &[("authorization", b"Bearer s3cret")]),
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.body_text().contains(r#""state":"serving""#));

    // Everything still works, and no VM failed.
    let resp = reqwest::Client::new()
        .post(envoy.traffic("/v1/chat/completions"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    wait_stat(&envoy, "drainpipe_inflight", 0, LIMIT)
        .await
        .unwrap();
    envoy.counts_settled().await;
    let admitted = envoy.stat("drainpipe_admitted").await.unwrap();
    assert_eq!(envoy.stat("drainpipe_completed").await.unwrap(), admitted);
    assert_eq!(
        vm_stats(&envoy).await,
        vms_at_start,
        "a VM failed or was replaced"
    );
    assert!(
        !envoy.log().contains("panicked"),
        "the plugin panicked:\n{}",
        envoy.log_tail(30)
    );
}
