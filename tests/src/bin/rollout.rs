//! The rollout harness: load through real Envoys while one is drained and
//! stopped as Kubernetes would. Exits 0 when the run passes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use drainpipe_tests::rollout::{self, Plan};

/// Drain an Envoy under load and count what every request got.
#[derive(Parser, Debug)]
#[command(name = "rollout")]
struct Args {
    /// Requests in the run.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    requests: u64,
    /// Requests at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4_096))]
    concurrency: u64,
    /// 1: drain the only instance; 2: drain one of two behind a round-robin
    /// front, clients retrying as Retry-After says.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=2))]
    instances: u64,
    /// The plugin's grace period, ms.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1_000..=600_000))]
    grace_ms: u64,
    /// Envoy worker threads per instance.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    envoy_concurrency: u32,
    /// Where the CSV, SVG and report go.
    #[arg(long, default_value = "target/rollout")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let plan = Plan {
        requests: args.requests,
        concurrency: args.concurrency as usize,
        instances: args.instances as usize,
        grace_ms: args.grace_ms,
        envoy_concurrency: args.envoy_concurrency,
        out_dir: Some(args.out.clone()),
        ..Plan::default()
    };
    match rollout::run(&plan).await {
        Ok(report) => {
            print!("{}", report.summary());
            if let Err(e) = rollout::write_report(&report, &args.out) {
                eprintln!("rollout: cannot write the report: {e}");
            }
            if report.verdict().is_ok() {
                ExitCode::SUCCESS
            } else {
                print!("prestop.sh said:\n{}", report.prestop_output);
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("rollout: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
