//! The rollout harness: a rolling update of drainpipe replicas behind an
//! Envoy front proxy, under continuous load. Prints the report; exits 0
//! when the run passes (nothing failed at the client, every old replica
//! drained and exited inside its grace period).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use drainpipe_tests::rollout::{self, Plan};

/// Roll drainpipe replicas behind an Envoy front under load and count what
/// every request got.
#[derive(Parser, Debug)]
#[command(name = "rollout")]
struct Args {
    /// Replicas of the Deployment (each replaced once: maxSurge 1,
    /// maxUnavailable 0).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    replicas: u64,
    /// At least this many requests (the load also lasts until the rollout
    /// is over); 200000 for the long run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    requests: u64,
    /// Connections sending plain completions and model listings.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4_096))]
    concurrency: u64,
    /// Connections sending streams (1 to 10 s each; two in three OpenAI
    /// chat completions, one in three Anthropic Messages).
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u64).range(1..=4_096))]
    stream_concurrency: u64,
    /// Connections running WebSocket sessions (1 to 4 s each), 0 for none.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=4_096))]
    session_concurrency: u64,
    /// From a readiness change to the front's endpoints, ms (the endpoint
    /// controller's and the mesh's propagation).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    propagation_ms: u64,
    /// The plugin's admit window, ms.
    #[arg(long, default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    admit_window_ms: u64,
    /// The plugin's grace period, ms.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1_000..=600_000))]
    grace_ms: u64,
    /// Load before the rollout starts, ms.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    warmup_ms: u64,
    /// Envoy worker threads per replica.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    envoy_concurrency: u32,
    /// Run each replica's Envoy under `drainpipe run` and stop it with
    /// SIGTERM (as `docker stop` does), instead of the preStop hook.
    #[arg(long)]
    supervisor: bool,
    /// Run a real Prometheus (`prometheus` on PATH) scraping every replica,
    /// and check its figures, read back with PromQL, against the harness's.
    #[arg(long)]
    prometheus: bool,
    /// Where the CSV, SVG and report go.
    #[arg(long, default_value = "target/rollout")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let plan = Plan {
        replicas: args.replicas as usize,
        requests: args.requests,
        concurrency: args.concurrency as usize,
        stream_concurrency: args.stream_concurrency as usize,
        session_concurrency: args.session_concurrency as usize,
        propagation_ms: args.propagation_ms,
        admit_window_ms: args.admit_window_ms,
        grace_ms: args.grace_ms,
        warmup_ms: args.warmup_ms,
        envoy_concurrency: args.envoy_concurrency,
        supervisor: args.supervisor,
        prometheus: args.prometheus,
        out_dir: Some(args.out.clone()),
        ..Plan::default()
    };
    if let Err(e) = plan.validate() {
        eprintln!("rollout: {e}");
        return ExitCode::from(2);
    }
    match rollout::run(&plan).await {
        Ok(report) => {
            print!("{}", report.summary());
            match rollout::write_report(&report, &args.out) {
                Ok(path) => println!("wrote {}", path.display()),
                Err(e) => eprintln!("rollout: cannot write the report: {e}"),
            }
            if report.verdict().is_ok() {
                ExitCode::SUCCESS
            } else {
                for r in report.replicas.iter().filter(|r| r.drain_ms.is_some()) {
                    print!("{}: prestop.sh said:\n{}", r.name, r.prestop_output);
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("rollout: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
