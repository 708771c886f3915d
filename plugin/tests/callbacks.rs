//! `drainpipe::CALLBACKS` against the filter's source: the release build
//! exports only the callbacks in that list (`cargo xtask build`), so a
//! proxy-wasm trait method the filter implements but whose callback the list
//! lacks would never run, silently. This test reads the trait
//! implementations in `src/filter.rs` and fails if one's callback is
//! missing, or if the list names a callback nothing implements.

use std::collections::BTreeSet;

/// The proxy-wasm SDK's trait methods and the ABI callback through which
/// the host reaches each (proxy-wasm 0.2, `src/dispatcher.rs`).
const METHODS: &[(&str, &str)] = &[
    // Context
    ("on_http_call_response", "proxy_on_http_call_response"),
    ("on_grpc_call_response", "proxy_on_grpc_close"),
    (
        "on_grpc_stream_initial_metadata",
        "proxy_on_grpc_receive_initial_metadata",
    ),
    ("on_grpc_stream_message", "proxy_on_grpc_receive"),
    (
        "on_grpc_stream_trailing_metadata",
        "proxy_on_grpc_receive_trailing_metadata",
    ),
    ("on_grpc_stream_close", "proxy_on_grpc_close"),
    ("on_done", "proxy_on_done"),
    // RootContext
    ("on_vm_start", "proxy_on_vm_start"),
    ("on_configure", "proxy_on_configure"),
    ("on_tick", "proxy_on_tick"),
    ("on_queue_ready", "proxy_on_queue_ready"),
    ("on_log", "proxy_on_log"),
    ("create_http_context", "proxy_on_context_create"),
    ("create_stream_context", "proxy_on_context_create"),
    ("get_type", "proxy_on_context_create"),
    // StreamContext
    ("on_new_connection", "proxy_on_new_connection"),
    ("on_downstream_data", "proxy_on_downstream_data"),
    (
        "on_downstream_close",
        "proxy_on_downstream_connection_close",
    ),
    ("on_upstream_data", "proxy_on_upstream_data"),
    ("on_upstream_close", "proxy_on_upstream_connection_close"),
    // HttpContext
    ("on_http_request_headers", "proxy_on_request_headers"),
    ("on_http_request_body", "proxy_on_request_body"),
    ("on_http_request_trailers", "proxy_on_request_trailers"),
    ("on_http_response_headers", "proxy_on_response_headers"),
    ("on_http_response_body", "proxy_on_response_body"),
    ("on_http_response_trailers", "proxy_on_response_trailers"),
];

/// Exported whatever the filter implements: the root context is created
/// and started through them, and every context's end (`Drop`, where a
/// stream's in-flight count is released) comes through `proxy_on_delete`.
const ALWAYS: &[&str] = &[
    "proxy_on_vm_start",
    "proxy_on_context_create",
    "proxy_on_delete",
];

const TRAITS: &[&str] = &["Context", "RootContext", "HttpContext", "StreamContext"];

/// The names of the functions defined in each `impl <trait> for <type>`
/// block of `source`, for the proxy-wasm traits.
fn implemented_methods(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("\nimpl ") {
        rest = &rest[at + 1..];
        let header = &rest[..rest.find('{').unwrap_or(rest.len())];
        let implements = header
            .strip_prefix("impl ")
            .and_then(|h| h.split_once(" for "))
            .is_some_and(|(t, _)| TRAITS.contains(&t.trim()));
        if !implements {
            continue;
        }
        // The block, by brace depth, from its opening brace.
        let open = header.len();
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        // Methods sit at one level of indentation in the block.
        for line in rest[open..end].lines() {
            if let Some(name) = line
                .strip_prefix("    fn ")
                .and_then(|l| l.split(['(', '<']).next())
            {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

#[test]
fn every_callback_the_filter_implements_is_in_callbacks_and_no_other() {
    let source = include_str!("../src/filter.rs");
    let methods = implemented_methods(source);
    assert!(
        methods.iter().any(|m| m == "on_http_request_headers"),
        "the filter's trait implementations were not found in src/filter.rs: {methods:?}"
    );
    let mut needed: BTreeSet<&str> = ALWAYS.iter().copied().collect();
    for method in &methods {
        let callback = METHODS
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| {
                panic!(
                    "{method} is not a proxy-wasm trait method this test knows: add it to METHODS"
                )
            });
        needed.insert(callback);
    }
    let listed: BTreeSet<&str> = drainpipe::CALLBACKS.iter().copied().collect();
    let missing: Vec<&&str> = needed.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "the filter implements callbacks missing from drainpipe::CALLBACKS (the release build \
         would never run them): {missing:?}"
    );
    let unused: Vec<&&str> = listed.difference(&needed).collect();
    assert!(
        unused.is_empty(),
        "drainpipe::CALLBACKS names callbacks the filter does not implement: {unused:?}"
    );
}

#[test]
fn methods_are_read_from_trait_implementations_only() {
    let source = "
impl Root {
    fn helper(&self) {}
}

impl RootContext for Root {
    fn on_tick(&mut self) {
        if x { y() }
    }
    fn get_type(&self) -> Option<ContextType> {
        None
    }
}

impl HttpContext for Traffic {
    fn on_http_response_body(&mut self, n: usize) -> Action {
        inner(|| { fn nested() {} });
        Action::Continue
    }
}
";
    assert_eq!(
        implemented_methods(source),
        ["on_tick", "get_type", "on_http_response_body"]
    );
}
