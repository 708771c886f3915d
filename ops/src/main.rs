//! `drainpipe`: the operations binary that goes into Envoy images.
//!
//! - `run -- envoy ...`: Envoy's supervisor (PID 1 in a container); SIGTERM
//!   drains, then stops Envoy.
//! - `drain [--wait] [--no-start]`: the preStop client.
//! - `controller`: a drain controller the plugin can follow.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use drainpipe_ops::api::{describe, DrainApi};
use drainpipe_ops::watch::{Verdict, Watch};
use drainpipe_ops::{controller, say, supervise, DEFAULT_DRAIN_URL, DEFAULT_ENVOY_ADMIN};

#[derive(Parser)]
#[command(
    name = "drainpipe",
    version,
    about = "Graceful shutdown for Envoy with the drainpipe plugin: a supervisor, the preStop client and a drain controller",
    long_about = None,
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Envoy under supervision: SIGTERM or SIGINT drains, then stops Envoy
    #[command(long_about = RUN_HELP, after_help = RUN_EXIT)]
    Run(RunArgs),
    /// Start a drain through the drain API and, with --wait, wait until it is drained
    #[command(after_help = DRAIN_EXIT)]
    Drain(DrainArgs),
    /// Serve a drain controller the plugin follows (`drain_controller`); SIGTERM drains it
    #[command(long_about = CONTROLLER_HELP, after_help = CONTROLLER_EXAMPLE)]
    Controller(ControllerArgs),
}

const RUN_HELP: &str = "\
Run Envoy as a child, ready to be a container's PID 1: reaps every child \
that exits, passes SIGHUP, SIGUSR1 and SIGUSR2 to Envoy. On SIGTERM or \
SIGINT (docker stop, Compose, Nomad, ECS, systemd, Cloud Run): start the \
drain through the drain API, print the state and in-flight count every \
second on stderr until `drained` or --timeout, then stop Envoy through its \
admin (POST /quitquitquit; SIGTERM if the admin does not answer; SIGKILL \
if Envoy is still running 5 s later, and at the latest --timeout + 5 s after \
the signal). A second SIGTERM or SIGINT stops Envoy at once. Give the \
platform's stop timeout (docker stop --time, Compose's stop_grace_period, \
systemd's TimeoutStopSec with KillMode=mixed) --timeout + 10 s.";

const RUN_EXIT: &str = "\
Exit status: 0 drained, 1 timed out (Envoy is stopped anyway), 2 the drain \
could not be started (Envoy is stopped anyway) or bad arguments, 3 stopped \
at once by a second signal, Envoy's own status if it exited by itself \
(128 + N if signal N ended it), 127 Envoy's program not found, 126 not \
executable.

Example:
  drainpipe run --timeout 35s -- envoy -c /etc/envoy/envoy.yaml --drain-strategy immediate";

const DRAIN_EXIT: &str = "\
Exit status: 0 drained (or, without --wait, started), 1 timed out, 2 the \
drain could not be started, or bad arguments.

Examples:
  drainpipe drain --wait                 the preStop of Envoy's container
  drainpipe drain --wait --no-start      the preStop of the LLM server's container: \
wait until the drain someone else started is over
  drainpipe drain --wait --no-start --envoy-stats http://127.0.0.1:15090/stats/prometheus
                                         the same in an Istio pod (the sidecar's Prometheus endpoint)";

const CONTROLLER_HELP: &str = "\
A standalone drain controller: GET, POST and DELETE /drain, the state the \
plugin follows when configured with drain_controller. On SIGTERM or SIGINT \
it starts the drain itself and keeps answering so every plugin sees it: \
for --linger, or with --envoy-stats until the plugin reports `drained` in \
Envoy's Prometheus stats (or Envoy stops answering after reporting the \
drain), at most --linger. Then it exits 0; a second SIGTERM or SIGINT \
exits at once.";

const CONTROLLER_EXAMPLE: &str = "\
Example (an Istio pod: the sidecar's Prometheus endpoint):
  drainpipe controller --listen 127.0.0.1:10002 --linger 35s \\
    --envoy-stats http://127.0.0.1:15090/stats/prometheus";

/// A duration: 500ms, 35s, 2m, 1m30s.
fn duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{e} (a duration such as 500ms, 35s, 2m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// An http:// URL (the drain API and Envoy's admin listen on loopback:
/// no TLS).
fn http_url(text: &str) -> Result<String, String> {
    let uri: ureq::http::Uri = text
        .parse()
        .map_err(|e| format!("not a URL ({e}), e.g. {DEFAULT_DRAIN_URL}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!("must be an http:// URL, e.g. {DEFAULT_DRAIN_URL}"));
    }
    Ok(text.to_string())
}

#[derive(clap::Args)]
struct DrainApiArgs {
    /// The drain API: the plugin's drain listener, or a drain controller
    #[arg(long, value_name = "URL", default_value = DEFAULT_DRAIN_URL, value_parser = http_url)]
    drain_url: String,
    /// Bearer token for the drain API (the plugin's admin_token)
    #[arg(long)]
    token: Option<String>,
    /// Give up waiting for `drained` after this long; default: ceil(grace_ms / 1000) + 5 with grace_ms 30000
    #[arg(long, value_name = "DURATION", default_value = drainpipe_ops::DEFAULT_TIMEOUT, value_parser = duration)]
    timeout: Duration,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    api: DrainApiArgs,
    /// Envoy's admin, to stop Envoy after the drain
    #[arg(long, value_name = "URL", default_value = DEFAULT_ENVOY_ADMIN, value_parser = http_url)]
    envoy_admin: String,
    /// Envoy's command line (after `--`)
    #[arg(value_name = "ENVOY_COMMAND", required = true, num_args = 1.., trailing_var_arg = true)]
    command: Vec<OsString>,
}

#[derive(clap::Args)]
struct DrainArgs {
    #[command(flatten)]
    api: DrainApiArgs,
    /// Wait until the state is `drained`, printing progress every second
    #[arg(long)]
    wait: bool,
    /// Do not start the drain, only wait for it (someone else starts it);
    /// also done when the drain API stops answering after a drain was seen
    /// (the proxy has stopped)
    #[arg(long, requires = "wait")]
    no_start: bool,
    /// Instead of a drain API, read the plugin's drainpipe_state and
    /// drainpipe_inflight from Envoy's Prometheus stats at this URL (with
    /// --no-start), e.g. http://127.0.0.1:15090/stats/prometheus in an
    /// Istio pod, whose sidecar has no drain listener
    #[arg(long, value_name = "URL", value_parser = http_url, requires = "no_start", conflicts_with_all = ["drain_url", "token"])]
    envoy_stats: Option<String>,
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10002")]
    listen: SocketAddr,
    /// After a signal starts the drain, keep answering this long so the
    /// plugins see it, then exit (with --envoy-stats: at most this long)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    linger: Duration,
    /// Exit as soon as the plugin's drainpipe_state says `drained` in
    /// Envoy's Prometheus stats at this URL, e.g.
    /// http://127.0.0.1:15090/stats/prometheus in an Istio pod
    #[arg(long, value_name = "URL", value_parser = http_url)]
    envoy_stats: Option<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match cli.command {
        Command::Run(args) => {
            let opts = supervise::Options {
                drain_url: args.api.drain_url,
                token: args.api.token,
                timeout: args.api.timeout,
                envoy_admin: args.envoy_admin,
                command: args.command,
            };
            match supervise::run(opts) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    say(&e);
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Drain(args) => ExitCode::from(drain(args)),
        Command::Controller(args) => {
            match controller::run(args.listen, args.linger, args.envoy_stats.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    say(&e);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Help and version as clap prints them; any other error as one line
/// (and clap's tip, if it has one), exit status 2.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("bad arguments");
    let mut first = first.strip_prefix("error: ").unwrap_or(first).to_string();
    // "the following required arguments were not provided:" names them on
    // the next line.
    if first.ends_with(':') {
        first = format!("{first} {}", lines.next().unwrap_or_default());
    }
    match lines.find_map(|l| l.strip_prefix("tip: ")) {
        Some(tip) => say(format!("{first} ({tip}; see drainpipe --help)")),
        None => say(format!("{first} (see drainpipe --help)")),
    }
    ExitCode::from(2)
}

/// `drain`: 0 drained (or started), 1 timed out, 2 not started.
fn drain(args: DrainArgs) -> u8 {
    let api = match &args.envoy_stats {
        Some(url) => DrainApi::envoy_stats(url),
        None => DrainApi::new(&args.api.drain_url, args.api.token),
    };
    if !args.no_start {
        match api.start() {
            Ok(status) => say(format!("drain started: {}", describe(Some(&status)))),
            Err(e) => {
                say(format!("the drain could not be started: {e}"));
                return 2;
            }
        }
    }
    if !args.wait {
        return 0;
    }
    let mut watch = Watch::new(Instant::now(), args.api.timeout);
    if args.no_start {
        watch = watch.done_when_gone();
    }
    loop {
        let (verdict, line) = watch.observe(Instant::now(), api.status());
        if let Some(line) = line {
            say(line);
        }
        match verdict {
            Verdict::Drained | Verdict::ProxyGone => return 0,
            Verdict::TimedOut => return 1,
            Verdict::Waiting => std::thread::sleep(supervise::POLL_EVERY),
        }
    }
}
