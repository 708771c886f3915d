//! A guest trap is contained: the stream fails as Envoy fails it, the trap
//! is logged with the guest's panic message, and other workers go on.

mod support;

use drainpipe_shim::{Clock, FailurePolicy, Host, PluginConfig};
use support::{test_filter, T0_MS};

fn host(policy: FailurePolicy) -> Host {
    Host::builder(test_filter())
        .clock(Clock::manual(T0_MS))
        .plugin(PluginConfig::new("test", "").failure_policy(policy))
        .build()
        .unwrap()
}

fn get(path: &str) -> [(&str, &str); 2] {
    [(":method", "GET"), (":path", path)]
}

#[test]
fn trap_fails_the_stream_closed_with_503_and_logs_the_panic_message() {
    let host = host(FailurePolicy::FailClosed);
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    let out = s.request_headers(get("/panic"), true);
    let reply = out.expect_local_response(503);
    assert_eq!(reply.details, "wasm_fail_stream");
    let trap = out.trap.as_deref().expect("the trap is reported");
    assert!(trap.contains("test filter panicked on purpose"), "{trap}");
    assert!(
        host.log().contains(
            "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"
        ),
        "{}",
        host.log().dump()
    );
    assert!(host.log().contains("test filter panicked on purpose"));
}

#[test]
fn after_a_trap_the_worker_fails_closed_and_other_workers_keep_working() {
    let host = host(FailurePolicy::FailClosed);
    let (bad, good) = (host.worker().unwrap(), host.worker().unwrap());
    bad.http_stream("test")
        .unwrap()
        .request_headers(get("/panic"), true);
    assert!(bad.failure().is_some());
    bad.http_stream("test")
        .unwrap()
        .request_headers(get("/"), true)
        .expect_local_response(503);
    good.http_stream("test")
        .unwrap()
        .request_headers(get("/"), true)
        .expect_continue();
}

#[test]
fn fail_open_lets_the_failing_and_later_streams_through_without_the_filter() {
    let host = host(FailurePolicy::FailOpen);
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    s.request_headers(get("/panic"), true).expect_continue();
    let mut next = worker.http_stream("test").unwrap();
    let out = next.request_headers([(":method", "GET"), (":path", "/"), ("x-name", "a")], true);
    assert_eq!(
        out.expect_continue().headers().get("x-hello"),
        None,
        "the filter is bypassed"
    );
}

#[test]
fn reload_policy_starts_a_fresh_vm_for_the_next_stream() {
    let host = host(FailurePolicy::Reload);
    let worker = host.worker().unwrap();
    worker
        .http_stream("test")
        .unwrap()
        .request_headers(get("/panic"), true)
        .expect_local_response(503);
    let mut next = worker.http_stream("test").unwrap();
    let out = next.request_headers([(":method", "GET"), (":path", "/"), ("x-name", "a")], true);
    assert_eq!(
        out.expect_continue().headers().get("x-hello"),
        Some("hello a")
    );
    assert!(worker.failure().is_none());
}
