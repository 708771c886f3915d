//! The drain rejection as clients see it, checked by one function: the
//! plugin's unit tests, the shim's tests and the end-to-end tests against
//! Envoy all assert it with [`assert_drain_rejection`], so the contract is
//! written once.
//!
//! Built for tests (`cfg(test)`) and with the `contract` feature, which the
//! test crates enable; the release plugin does not contain it.

/// Asserts that a response is the drain rejection: status 503,
/// `retry-after: <retry_after_s>`, `retry-after-ms` the same in
/// milliseconds, `x-should-retry: true`, a JSON body that
/// is an OpenAI error object with code `service_draining`, type
/// `server_error`, a null `param` and a message that says the server is
/// draining. `header` gives a response header's value by (lowercase) name.
///
/// Panics with what differs, like `assert_eq!`.
pub fn assert_drain_rejection(
    status: u32,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    retry_after_s: u64,
) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, 503, "drain rejection status; body: {text}");
    let retry_after = retry_after_s.to_string();
    assert_eq!(
        header("retry-after").as_deref(),
        Some(retry_after.as_str()),
        "retry-after"
    );
    let retry_after_ms = (retry_after_s * 1000).to_string();
    assert_eq!(
        header("retry-after-ms").as_deref(),
        Some(retry_after_ms.as_str()),
        "retry-after-ms"
    );
    assert_eq!(
        header("x-should-retry").as_deref(),
        Some("true"),
        "x-should-retry"
    );
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/json"),
        "content-type"
    );
    let body: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("drain rejection body is not JSON ({e}): {text}"));
    let error = &body["error"];
    assert_eq!(error["code"], "service_draining", "error.code in {text}");
    assert_eq!(error["type"], "server_error", "error.type in {text}");
    assert!(
        error["param"].is_null(),
        "error.param is not null in {text}"
    );
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("draining")),
        "error.message does not say draining in {text}"
    );
}
