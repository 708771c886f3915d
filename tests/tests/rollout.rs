//! A rolling update loses nothing behind the load balancer users run: three
//! drainpipe replicas behind a real Envoy front proxy (endpoints from EDS,
//! retries of what drainpipe says is safe), replaced one by one (maxSurge
//! 1, maxUnavailable 0) by their preStop hook under continuous mixed load of
//! at least 20,000 requests; the clients never retry. The same with each
//! replica under `drainpipe run`, stopped by SIGTERM as containers are.

use drainpipe_tests::envoy::Scratch;
use drainpipe_tests::rollout::{self, Plan, Report};

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
    let plan = Plan {
        out_dir: Some(out.path().to_path_buf()),
        ..Plan::default()
    };
    let report = rollout::run(&plan).await.expect("rollout runs");
    passed(&report);
    assert!(report.sent >= 20_000, "{}", report.summary());
    // The load ran through the whole rollout, and the drains really
    // happened under it.
    assert!(report.before.requests > 100 && report.during.requests > 1_000);
    assert!(report.streams > 100, "{}", report.summary());
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
