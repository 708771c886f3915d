//! Several workers, like Envoy's `--concurrency`: one VM each, sharing
//! shared data and metrics.

mod support;

use std::thread;

use drainpipe_shim::{Host, PluginConfig};
use support::{test_filter, test_filter_host};

const CAS: [(&str, &str); 2] = [(":method", "GET"), (":path", "/cas")];

#[test]
fn cas_conflict_across_workers_reports_mismatch_to_the_stale_writer() {
    let (host, _) = test_filter_host("");
    let (a, b) = (host.worker().unwrap(), host.worker().unwrap());
    host.shared_data().set("tests", b"hits", b"0", 0).unwrap();
    let mut sa = a.http_stream("test").unwrap();
    let mut sb = b.http_stream("test").unwrap();
    // Both read the same CAS; b writes first, so a's write is stale.
    sa.request_headers(CAS, true).expect_continue();
    sb.request_headers(CAS, true).expect_continue();
    let out_b = sb.response_headers([(":status", "200")], true);
    let out_a = sa.response_headers([(":status", "200")], true);
    assert_eq!(out_b.headers().get("x-cas"), Some("ok"));
    assert_eq!(out_a.headers().get("x-cas"), Some("mismatch"));
}

#[test]
fn cas_of_a_missing_key_lets_every_writer_through() {
    let (host, _) = test_filter_host("");
    let (a, b) = (host.worker().unwrap(), host.worker().unwrap());
    let mut sa = a.http_stream("test").unwrap();
    let mut sb = b.http_stream("test").unwrap();
    sa.request_headers(CAS, true);
    sb.request_headers(CAS, true);
    // Both read "no value" (cas 0): writes with cas 0 overwrite.
    let out_b = sb.response_headers([(":status", "200")], true);
    let out_a = sa.response_headers([(":status", "200")], true);
    assert_eq!(out_b.headers().get("x-cas"), Some("ok"));
    assert_eq!(out_a.headers().get("x-cas"), Some("ok"));
}

#[test]
fn metrics_are_aggregated_across_workers_on_their_threads() {
    let (host, _) = test_filter_host("");
    let workers: Vec<_> = (0..4).map(|_| host.worker().unwrap()).collect();
    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| {
            thread::spawn(move || {
                for _ in 0..25 {
                    let mut s = w.http_stream("test").unwrap();
                    s.request_headers([(":method", "GET"), (":path", "/")], true)
                        .expect_continue();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(host.metrics().value("test_filter_requests"), Some(100));
    let text = host.metrics().render_prometheus();
    assert!(
        text.contains("# TYPE test_filter_requests counter\ntest_filter_requests{} 100"),
        "{text}"
    );
}

#[test]
fn shared_data_is_keyed_by_vm_id() {
    let wasm = test_filter();
    let host = Host::builder(wasm)
        .vm_id("one")
        .plugin(PluginConfig::new("test", ""))
        .build()
        .unwrap();
    host.shared_data().set("other", b"hits", b"9", 0).unwrap();
    let worker = host.worker().unwrap();
    let mut s = worker.http_stream("test").unwrap();
    s.request_headers(CAS, true);
    s.response_headers([(":status", "200")], true);
    assert_eq!(host.shared_data().get("one", b"hits").unwrap().0, b"1");
    assert_eq!(host.shared_data().get("other", b"hits").unwrap().0, b"9");
}

#[test]
fn each_worker_has_its_own_root_context_per_plugin() {
    let host = Host::builder(test_filter())
        .plugin(PluginConfig::new("first", ""))
        .plugin(PluginConfig::new("second", "hey"))
        .build()
        .unwrap();
    let (a, b) = (host.worker().unwrap(), host.worker().unwrap());
    assert_eq!(a.root_context_id("first"), Some(1));
    assert_eq!(a.root_context_id("second"), Some(2));
    assert_eq!(b.root_context_id("second"), Some(2));
    let mut s = b.http_stream("second").unwrap();
    let out = s.request_headers([(":method", "GET"), (":path", "/"), ("x-name", "x")], true);
    assert_eq!(out.headers().get("x-hello"), Some("hey x"));
    assert!(b.http_stream("third").is_err());
}
