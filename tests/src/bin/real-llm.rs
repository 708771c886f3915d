//! A real OpenAI-compatible server drained behind Envoy and drainpipe, and
//! the same server alone on SIGTERM (see `drainpipe_tests::real_llm`).
//!
//! Usage: `real-llm [OPTIONS] -- SERVER_COMMAND...` (`{port}` in the
//! command is replaced by the server's port). `cargo xtask real-llm` runs
//! it with llama.cpp's server and a small real model.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use drainpipe_tests::real_llm::{self, Plan};

/// Drain a real inference server behind Envoy and drainpipe, then SIGTERM
/// it alone, and count what the openai SDK's streams got.
#[derive(Parser, Debug)]
#[command(name = "real-llm")]
struct Args {
    /// The model name the server answers to.
    #[arg(long, default_value = "model")]
    model: String,
    /// Streams at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    streams: u32,
    /// Of them, streams asked for more tokens than the grace period allows.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=256))]
    long: u32,
    /// max_tokens of the short streams.
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    tokens: u32,
    /// max_tokens of the long streams.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    long_tokens: u32,
    /// The plugin's admit window, ms.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    admit_window_ms: u64,
    /// The plugin's grace period, ms.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(2_000..=600_000))]
    grace_ms: u64,
    /// How long the server may take to start, s.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    server_start_s: u64,
    /// The server's command.
    #[arg(last = true, required = true)]
    server: Vec<OsString>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = Args::parse();
    if a.long > a.streams {
        eprintln!(
            "real-llm: --long ({}) exceeds --streams ({})",
            a.long, a.streams
        );
        return ExitCode::from(2);
    }
    let plan = Plan {
        server: a.server,
        model: a.model,
        streams: a.streams,
        long: a.long,
        tokens: a.tokens,
        long_tokens: a.long_tokens,
        admit_window_ms: a.admit_window_ms,
        grace_ms: a.grace_ms,
        server_start: Duration::from_secs(a.server_start_s),
    };
    let mut phases = Vec::new();
    for phase in [
        real_llm::behind_drainpipe(&plan).await,
        real_llm::alone_on_sigterm(&plan).await,
    ] {
        match phase {
            Ok(p) => {
                println!("{}: {}", p.name, p.client);
                phases.push(p);
            }
            Err(e) => {
                eprintln!("real-llm: error: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    print!("{}", real_llm::summary(&plan, &phases));
    let behind = &phases[0];
    if behind.count("cut") + behind.count("error") > 0 {
        println!("real-llm: FAIL: streams cut behind drainpipe");
        return ExitCode::FAILURE;
    }
    println!("real-llm: PASS (nothing cut behind drainpipe)");
    ExitCode::SUCCESS
}
