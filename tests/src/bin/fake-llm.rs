//! The demo upstream: a fake OpenAI-compatible server.
//!
//! Usage: `fake-llm [ADDR]` (default 127.0.0.1:8000).

use std::net::SocketAddr;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".to_string());
    let addr: SocketAddr = match arg.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("fake-llm: {arg:?} is not an address like 127.0.0.1:8000");
            std::process::exit(2);
        }
    };
    let server = match drainpipe_tests::FakeLlm::start_on(addr).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-llm: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "fake-llm: OpenAI-compatible upstream on http://{}",
        server.addr
    );
    let _ = tokio::signal::ctrl_c().await;
}
