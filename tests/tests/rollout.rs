//! A rolling update loses nothing behind the load balancer users run: three
//! drainpipe replicas behind a real Envoy front proxy (endpoints from EDS,
//! retries of what drainpipe says is safe), replaced one by one (maxSurge
//! 1, maxUnavailable 0) by their preStop hook under continuous mixed load of
//! at least 20,000 requests (OpenAI and Anthropic streams, WebSocket
//! sessions, completions, model listings); the clients never retry. The
//! same with each replica under `drainpipe run`, stopped by SIGTERM as
//! containers are. And what the front does with a WebSocket upgrade a
//! draining replica refuses. A real Prometheus scrapes the first run.

use drainpipe_tests::envoy::Scratch;
use drainpipe_tests::rollout::{self, front, Class, Plan, Report};
use drainpipe_tests::{Envoy, EnvoyConfig, EnvoyOptions, FakeLlm, Ports};
use serde_json::json;
use tokio_tungstenite::tungstenite::Error as WsError;

/// The two runs load the same two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fails with the report and every preStop hook's output unless the run
/// passed.
fn passed(report: &Report) {
    println!("{}", report.summary());
    let prestops: Vec<String> = report
        .replicas
        .iter()
        .map(|r| format!("{}: {}", r.name, r.prestop_output))
        .collect();
    report
        .verdict()
        .unwrap_or_else(|e| panic!("{e}\n{}", prestops.join("\n")));
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_update_of_three_replicas_behind_an_envoy_front_fails_no_request() {
    let _one = SERIAL.lock().await;
    let out = Scratch::new("rollout").unwrap();
    // A real Prometheus scrapes the replicas; the verdict checks its
    // figures, read back with PromQL, against the harness's.
    let plan = Plan {
        out_dir: Some(out.path().to_path_buf()),
        prometheus: true,
        ..Plan::default()
    };
    let report = rollout::run(&plan).await.expect("rollout runs");
    passed(&report);
    assert!(report.sent >= 20_000, "{}", report.summary());
    // The load ran through the whole rollout, and the drains really
    // happened under it.
    assert!(report.before.requests > 100 && report.during.requests > 1_000);
    assert!(report.streams > 100, "{}", report.summary());
    // Every kind of the mix ran through the rollout, and came through whole.
    for (class, at_least) in [
        (Class::OpenAiStream, 50),
        (Class::AnthropicStream, 30),
        (Class::Session, 30),
        (Class::Short, 10_000),
    ] {
        let t = report.class(class);
        assert!(t.sent >= at_least, "{}: {t:?}", class.label());
        assert_eq!(t.completed, t.sent, "{}: {t:?}", class.label());
    }
    for r in report
        .replicas
        .iter()
        .filter(|r| r.name.starts_with("old-"))
    {
        let duration = r
            .drain_duration_ms
            .expect("drainpipe_drain_duration_ms read");
        assert!(
            duration >= plan.admit_window_ms,
            "{}: {duration} ms",
            r.name
        );
        assert!(
            r.removed_ms.is_some(),
            "{} never left the endpoints",
            r.name
        );
        assert!(
            r.prom_drain_started_unix_ms.is_some() && r.prom_max_inflight > Some(0),
            "{}: Prometheus saw no drain or no request: {}",
            r.name,
            report.summary()
        );
    }
    for r in report
        .replicas
        .iter()
        .filter(|r| r.name.starts_with("new-"))
    {
        assert!(
            r.added_ms.is_some(),
            "{} never joined the endpoints",
            r.name
        );
    }
    let svg = std::fs::read_to_string(out.path().join("rollout-3.svg")).unwrap();
    for text in [
        "old-0",
        "new-2",
        "drain started (preStop)",
        "exited",
        "time since the load started (s)",
    ] {
        assert!(svg.contains(text), "{text} not in the plot");
    }
    let csv = std::fs::read_to_string(out.path().join("rollout-3.csv")).unwrap();
    assert!(csv.starts_with("t_ms,client_inflight,old-0_inflight"));
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_lagging_past_the_admit_window_are_covered_by_the_fronts_retries() {
    let _one = SERIAL.lock().await;
    // The front keeps sending to a draining replica 6 s after its readiness
    // failed, 2 s past its admit window: those requests get the drain's 503,
    // and the front retries them on another replica.
    let plan = Plan {
        requests: 5_000,
        propagation_ms: 6_000,
        ..Plan::default()
    };
    let report = rollout::run(&plan).await.expect("rollout runs");
    passed(&report);
    assert!(report.front.retried > 0, "{}", report.summary());
    assert_eq!(report.front.refused, 0, "{}", report.summary());
    // The front retries refused upgrades too: the clients never had to.
    assert!(report.class(Class::Session).sent > 0);
    assert_eq!(report.class(Class::Session).retried_by_client, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_stopped_by_sigterm_to_drainpipe_run_fail_no_request() {
    let _one = SERIAL.lock().await;
    // The container path: each replica's Envoy runs under `drainpipe run`
    // and gets no preStop hook, only SIGTERM to its PID 1 (`docker stop`).
    let out = Scratch::new("rollout-supervisor").unwrap();
    let plan = Plan {
        requests: 5_000,
        supervisor: true,
        out_dir: Some(out.path().to_path_buf()),
        ..Plan::default()
    };
    let report = rollout::run(&plan).await.expect("rollout runs");
    passed(&report);
    for r in report
        .replicas
        .iter()
        .filter(|r| r.name.starts_with("old-"))
    {
        assert_eq!(r.prestop_exit, Some(0), "{}: drainpipe run's exit", r.name);
        assert!(
            r.prestop_output.contains("drainpipe: "),
            "{}: no supervisor lines: {}",
            r.name,
            r.prestop_output
        );
        let duration = r.drain_duration_ms.expect("the drain's duration");
        assert!(duration >= 1_000, "{}: {duration} ms", r.name);
    }
    let svg = std::fs::read_to_string(out.path().join("rollout-3.svg")).unwrap();
    assert!(svg.contains("drain started (SIGTERM)"), "the plot's legend");
}

#[tokio::test(flavor = "multi_thread")]
async fn front_envoy_retries_a_websocket_upgrade_a_draining_replica_refused_on_another() {
    let _one = SERIAL.lock().await;
    // Two replicas behind the front; one is draining with its admit window
    // over, so it refuses every upgrade with the drain's 503.
    let patch = json!({"admit_window_ms": 0, "grace_ms": 5_000});
    let (up_a, up_b) = (
        FakeLlm::start().await.unwrap(),
        FakeLlm::start().await.unwrap(),
    );
    let draining = Envoy::start_repo_with(up_a.port(), patch.clone(), EnvoyOptions::default())
        .expect("replica Envoy");
    let serving =
        Envoy::start_repo_with(up_b.port(), patch, EnvoyOptions::default()).expect("replica Envoy");
    let resp = reqwest::Client::new()
        .post(draining.drain_api())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let eds = Scratch::new("front-eds").unwrap();
    front::write_endpoints(
        eds.path(),
        1,
        &[draining.ports.traffic, serving.ports.traffic],
    )
    .unwrap();
    let ports = Ports::fresh(0);
    let cfg = front::config(ports.traffic, ports.admin, eds.path());
    let front_envoy = Envoy::start(
        &EnvoyConfig::from_yaml(&cfg.to_string()).unwrap(),
        ports,
        EnvoyOptions::default(),
    )
    .expect("front Envoy");
    front::wait_for_endpoints(&front_envoy, 2).await.unwrap();

    let url = format!("ws://127.0.0.1:{}/v1/realtime", ports.traffic);
    let mut attempts = Vec::new();
    for _ in 0..12 {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((mut ws, resp)) => {
                assert_eq!(resp.status(), 101);
                let n: u32 = resp.headers()["x-envoy-attempt-count"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                attempts.push(n);
                ws.close(None).await.unwrap();
            }
            Err(WsError::Http(r)) => panic!(
                "the client got the upgrade's {} ({:?}): the front did not retry it",
                r.status(),
                r.headers().get("x-envoy-attempt-count")
            ),
            Err(e) => panic!("upgrade: {e}"),
        }
    }
    draining.counts_settled().await;
    let refused = draining.stat("drainpipe_rejected_draining").await.unwrap();
    assert!(refused > 0, "no upgrade reached the draining replica");
    // Every refusal was one more attempt of an upgrade that then got its
    // 101 (the previous-hosts predicate may still pick the draining replica
    // again when its choices run out: that is one more refusal and attempt).
    let retries: u64 = attempts.iter().map(|&n| u64::from(n - 1)).sum();
    assert_eq!(
        retries, refused,
        "each refused upgrade was sent again: {attempts:?}"
    );
    let stats = reqwest::get(front_envoy.admin("/stats?filter=^cluster\\.replicas\\.upstream_rq_"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(front::Retries::parse(&stats).retried, refused, "{stats}");
}
