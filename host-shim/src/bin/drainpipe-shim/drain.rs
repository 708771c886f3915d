//! `drain --admin URL [--wait] [--timeout DURATION]`: starts a drain and,
//! with `--wait`, prints the state and in-flight count until drained.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Base URL of the admin endpoint, e.g. http://127.0.0.1:10001
    #[arg(long)]
    admin: String,
    /// Wait until the state is `drained`.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (exit status 2).
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    timeout: Duration,
    /// Bearer token for the admin API.
    #[arg(long)]
    token: Option<String>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = format!("{}/drain", args.admin.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let with_token = |r: reqwest::RequestBuilder| match &args.token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let started = with_token(client.post(&url))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = started.status();
    let body: Value = started
        .json()
        .await
        .context("the admin answer is not JSON")?;
    if !status.is_success() {
        bail!("{url} answered {status}: {body}");
    }
    println!("drain started: {}", summary(&body));
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + args.timeout;
    loop {
        let body: Value = with_token(client.get(&url))
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?
            .json()
            .await
            .context("the admin answer is not JSON")?;
        println!("{}", summary(&body));
        if body["state"] == "drained" {
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            eprintln!("drainpipe-shim: not drained after {:?}", args.timeout);
            return Ok(ExitCode::from(2));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn summary(body: &Value) -> String {
    format!("state={} inflight={}", body["state"], body["inflight"])
}
