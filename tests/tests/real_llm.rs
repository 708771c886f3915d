//! The real-LLM harness (`cargo xtask real-llm`), at a small size with the
//! fake upstream as the server: behind drainpipe the openai SDK's streams
//! end whole and requests after the admit window get the 503 contract; the
//! same server alone on SIGTERM cuts its streams.

use std::ffi::OsString;
use std::time::Duration;

use drainpipe_tests::real_llm::{self, Plan};

#[tokio::test(flavor = "multi_thread")]
async fn harness_counts_whole_streams_behind_drainpipe_and_cuts_of_the_server_alone() {
    // Cargo builds the package's binaries for its integration tests.
    let fake = std::path::PathBuf::from(env!("CARGO_BIN_EXE_fake-llm"));
    let plan = Plan {
        server: vec![fake.into(), OsString::from("127.0.0.1:{port}")],
        model: "drainpipe-demo-1".into(),
        streams: 4,
        long: 0,
        tokens: 8,
        long_tokens: 8,
        admit_window_ms: 500,
        grace_ms: 5_000,
        server_start: Duration::from_secs(30),
    };
    let behind = real_llm::behind_drainpipe(&plan)
        .await
        .expect("phase behind drainpipe");
    assert_eq!(behind.count("whole"), 4, "{}", behind.client);
    assert_eq!(behind.late("rejected"), 4, "{}", behind.client);
    let alone = real_llm::alone_on_sigterm(&plan)
        .await
        .expect("phase alone");
    assert_eq!(
        alone.count("whole") + alone.count("cut"),
        4,
        "{}",
        alone.client
    );
    assert!(alone.count("cut") > 0, "{}", alone.client);
    assert!(
        alone.server_exit_ms.is_some(),
        "the server did not exit on SIGTERM"
    );
    let text = real_llm::summary(&plan, &[behind, alone]);
    assert!(
        text.contains("| behind Envoy and drainpipe | 4 | 0 | 0 | 0 | 4 / 0 |"),
        "{text}"
    );
}
