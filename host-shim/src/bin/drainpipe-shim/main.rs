//! `drainpipe-shim`: run a proxy-wasm filter without Envoy.
//!
//! - `serve`: a reverse proxy (HTTP/1.1 and h2c) whose requests pass
//!   through the filter, with an admin endpoint serving the drain API through the
//!   plugin's admin role;
//! - `drain`: the preStop client that starts a drain and waits for it.
//!
//! The drain controller is `drainpipe controller` (crate `drainpipe-ops`).

mod admin;
mod calls;
mod drain;
mod grpc_streams;
mod logging;
mod proxy;
mod serve;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "drainpipe-shim",
    version,
    about = "Run a proxy-wasm filter without Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reverse proxy with the filter in the request path, and its admin endpoint.
    Serve(Box<serve::Args>),
    /// Start a drain through an admin endpoint and optionally wait for it.
    Drain(drain::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drainpipe-shim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(*args)),
        Command::Drain(args) => runtime.block_on(drain::run(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drainpipe-shim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `500ms`, `30s`, `2m` or a plain number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 500ms, 30s, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}
