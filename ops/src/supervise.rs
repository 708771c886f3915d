//! `drainpipe run -- envoy ...`: Envoy's supervisor, fit to be PID 1.
//!
//! It starts Envoy as its child (in a process group of its own, so a
//! terminal's Ctrl-C reaches the supervisor only), reaps every child that
//! exits (as PID 1 it inherits orphans), passes SIGHUP, SIGUSR1 and SIGUSR2
//! to Envoy, and on the first SIGTERM or SIGINT:
//!
//! 1. starts the drain through the drain API (`POST`);
//! 2. polls it until `drained` or the timeout, one line of progress a
//!    second on stderr;
//! 3. stops Envoy through its admin (`POST /quitquitquit`), or with
//!    SIGTERM if the admin does not answer (SIGKILL if Envoy is still
//!    there [`STOP_LIMIT`] later);
//! 4. exits once Envoy has: 0 drained, 1 timed out, 2 the drain could not
//!    be started.
//!
//! The timeout runs from the signal, and Envoy is killed at the latest
//! `--timeout` + [`STOP_LIMIT`] after it (see [`kill_at`]), whatever the
//! HTTP calls took: the supervisor is done before a platform that allows
//! `--timeout + 10 s` (Compose's `stop_grace_period`, systemd's
//! `TimeoutStopSec`, Kubernetes' grace period) kills it.
//!
//! A second SIGTERM or SIGINT stops Envoy at once (SIGTERM: Envoy exits
//! without draining) and exits 3. If Envoy exits by itself, the supervisor
//! exits with Envoy's status (128 + the signal if a signal ended it).

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use libc::{c_int, pid_t};

use crate::api::{describe, quit_envoy, DrainApi};
use crate::say;
use crate::signals::{self, Signals};
use crate::watch::{Verdict, Watch};

/// Exit statuses of `run` (besides Envoy's own).
pub mod exit {
    pub const DRAINED: u8 = 0;
    pub const TIMED_OUT: u8 = 1;
    pub const NOT_STARTED: u8 = 2;
    pub const INTERRUPTED: u8 = 3;
}

/// How often the drain API is polled while draining.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long Envoy has to exit once asked before it is killed, and the
/// most the supervisor takes past `--timeout` (counted from the signal).
/// The platform's stop timeout is `--timeout` + 10 s: this leaves 5 s for
/// the kill to take effect and the supervisor to exit.
pub const STOP_LIMIT: Duration = Duration::from_secs(5);

/// What `run` needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub drain_url: String,
    pub token: Option<String>,
    pub timeout: Duration,
    pub envoy_admin: String,
    /// Envoy's command line: the program and its arguments.
    pub command: Vec<OsString>,
}

/// Why the supervisor could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot block signals: {0}")]
    Signals(std::io::Error),
    #[error("no command to run: give Envoy's command line after `--`")]
    NoCommand,
    #[error("cannot start {program}: {cause}")]
    Spawn {
        program: String,
        cause: std::io::Error,
    },
}

impl RunError {
    /// The exit status, as shells use them: 127 not found, 126 not
    /// executable, 125 the supervisor's own failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Spawn { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound => 127,
            RunError::Spawn { .. } => 126,
            RunError::Signals(_) | RunError::NoCommand => 125,
        }
    }
}

enum Phase {
    Serving,
    Draining {
        watch: Watch,
        next_poll: Instant,
        deadline: Instant,
    },
    Stopping {
        outcome: u8,
        kill_at: Instant,
        killed: bool,
    },
}

/// When to kill an Envoy asked to stop at `asked`: [`STOP_LIMIT`] later,
/// but never after `deadline`, the signal's time plus `--timeout` plus
/// [`STOP_LIMIT`] (an HTTP call that hung near the timeout does not push
/// the kill back).
pub fn kill_at(asked: Instant, deadline: Instant) -> Instant {
    (asked + STOP_LIMIT).min(deadline)
}

/// Runs Envoy under supervision until it exits; the exit status.
pub fn run(opts: Options) -> Result<u8, RunError> {
    use libc::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let (program, args) = opts.command.split_first().ok_or(RunError::NoCommand)?;
    let signals = Signals::block(&[SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGCHLD])
        .map_err(RunError::Signals)?;
    let mut command = Command::new(program);
    command.args(args).process_group(0);
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        command.pre_exec(signals::unblock_all);
    }
    let child = command.spawn().map_err(|cause| RunError::Spawn {
        program: program.to_string_lossy().into_owned(),
        cause,
    })?;
    let envoy = child.id() as pid_t;
    // Reaped below with waitpid(-1), with every other child.
    drop(child);
    say(format!("started Envoy (pid {envoy})"));
    let api = DrainApi::new(&opts.drain_url, opts.token.clone());
    let mut phase = Phase::Serving;
    loop {
        let now = Instant::now();
        let wait = match &phase {
            Phase::Serving => Duration::from_secs(1),
            Phase::Draining { next_poll, .. } => next_poll.saturating_duration_since(now),
            Phase::Stopping { .. } => Duration::from_millis(100),
        };
        let signal = signals.wait(wait);
        if let Some(status) = reap(envoy) {
            return Ok(envoy_exited(&phase, status));
        }
        match signal {
            Some(sig @ (SIGTERM | SIGINT)) => {
                phase = match phase {
                    Phase::Serving => start_drain(&api, &opts, envoy, sig, Instant::now()),
                    Phase::Draining { deadline, .. } => stop_at_once(envoy, sig, deadline),
                    Phase::Stopping { kill_at, .. } => stop_at_once(envoy, sig, kill_at),
                }
            }
            Some(sig @ (SIGHUP | SIGUSR1 | SIGUSR2)) => {
                say(format!("passing {} to Envoy", signals::name(sig)));
                signals::send(envoy, sig);
            }
            _ => {}
        }
        match &mut phase {
            Phase::Draining {
                watch,
                next_poll,
                deadline,
            } if Instant::now() >= *next_poll => {
                let (verdict, line) = watch.observe(Instant::now(), api.status());
                if let Some(line) = line {
                    say(line);
                }
                *next_poll = Instant::now() + POLL_EVERY;
                let outcome = match verdict {
                    Verdict::Drained => exit::DRAINED,
                    Verdict::TimedOut => exit::TIMED_OUT,
                    Verdict::Waiting | Verdict::ProxyGone => continue,
                };
                let asked = Instant::now();
                stop_envoy(&opts.envoy_admin, envoy);
                phase = Phase::Stopping {
                    outcome,
                    kill_at: kill_at(asked, *deadline),
                    killed: false,
                };
            }
            Phase::Stopping {
                kill_at, killed, ..
            } if !*killed && Instant::now() >= *kill_at => {
                say("Envoy still running after it was asked to stop: killing it");
                signals::send(envoy, libc::SIGKILL);
                *killed = true;
            }
            _ => {}
        }
    }
}

/// The first SIGTERM or SIGINT, taken at `signaled`: the timeout runs from
/// there.
fn start_drain(
    api: &DrainApi,
    opts: &Options,
    envoy: pid_t,
    signal: c_int,
    signaled: Instant,
) -> Phase {
    say(format!(
        "{} received: starting the drain ({})",
        signals::name(signal),
        api.url
    ));
    let deadline = signaled + opts.timeout + STOP_LIMIT;
    match api.start() {
        Ok(status) => {
            say(format!("drain started: {}", describe(Some(&status))));
            Phase::Draining {
                watch: Watch::new(signaled, opts.timeout),
                next_poll: Instant::now(),
                deadline,
            }
        }
        Err(e) => {
            say(format!("the drain could not be started: {e}"));
            let asked = Instant::now();
            stop_envoy(&opts.envoy_admin, envoy);
            Phase::Stopping {
                outcome: exit::NOT_STARTED,
                kill_at: kill_at(asked, deadline),
                killed: false,
            }
        }
    }
}

/// A second SIGTERM or SIGINT: SIGTERM to Envoy (it exits without
/// draining), SIGKILL [`STOP_LIMIT`] later or at `deadline`.
fn stop_at_once(envoy: pid_t, signal: c_int, deadline: Instant) -> Phase {
    say(format!(
        "{} received again: stopping Envoy at once",
        signals::name(signal)
    ));
    let asked = Instant::now();
    signals::send(envoy, libc::SIGTERM);
    Phase::Stopping {
        outcome: exit::INTERRUPTED,
        kill_at: kill_at(asked, deadline),
        killed: false,
    }
}

fn stop_envoy(admin: &str, envoy: pid_t) {
    say(format!(
        "stopping Envoy ({}/quitquitquit)",
        admin.trim_end_matches('/')
    ));
    if let Err(e) = quit_envoy(admin) {
        say(format!(
            "Envoy's admin did not answer ({e}): sending SIGTERM"
        ));
        signals::send(envoy, libc::SIGTERM);
    }
}

/// Reaps every child that has exited (as PID 1, orphans too); Envoy's wait
/// status if Envoy is among them.
fn reap(envoy: pid_t) -> Option<c_int> {
    let mut envoy_status = None;
    loop {
        let mut status: c_int = 0;
        // SAFETY: waitpid(2) writes only the status.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            // 0: children left, none exited; -1: no children at all.
            return envoy_status;
        }
        if pid == envoy {
            envoy_status = Some(status);
        }
    }
}

/// The supervisor's exit status once Envoy has exited with wait status
/// `status`.
fn envoy_exited(phase: &Phase, status: c_int) -> u8 {
    let code = exit_code(status);
    match phase {
        Phase::Stopping { outcome, .. } => {
            say(format!("Envoy exited ({})", describe_status(status)));
            *outcome
        }
        Phase::Draining { .. } => {
            say(format!(
                "Envoy exited during the drain ({})",
                describe_status(status)
            ));
            code
        }
        Phase::Serving => {
            say(format!("Envoy exited ({})", describe_status(status)));
            code
        }
    }
}

/// A wait status as a shell's exit status: the code, or 128 + the signal.
pub fn exit_code(status: c_int) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        128u8.saturating_add(libc::WTERMSIG(status) as u8)
    } else {
        1
    }
}

fn describe_status(status: c_int) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by {}", signals::name(libc::WTERMSIG(status)))
    } else {
        format!("status {}", exit_code(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_read_as_shell_exit_statuses() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(1 << 8), 1);
        assert_eq!(exit_code(42 << 8), 42);
        assert_eq!(exit_code(libc::SIGKILL), 137);
        assert_eq!(exit_code(libc::SIGTERM), 143);
        assert_eq!(describe_status(libc::SIGKILL), "killed by SIGKILL");
        assert_eq!(describe_status(3 << 8), "status 3");
    }

    #[test]
    fn envoy_is_killed_stop_limit_after_it_was_asked_but_never_past_the_deadline() {
        let signal = Instant::now();
        let timeout = Duration::from_secs(35);
        let deadline = signal + timeout + STOP_LIMIT;
        // Drained after 2 s: killed 5 s after the request to stop.
        let asked = signal + Duration::from_secs(2);
        assert_eq!(kill_at(asked, deadline), asked + STOP_LIMIT);
        // Timed out, the last poll and the admin's call hung for their 2 s
        // each: the deadline holds.
        let asked = signal + timeout + Duration::from_secs(4);
        assert_eq!(kill_at(asked, deadline), deadline);
        assert_eq!(deadline - signal, Duration::from_secs(40));
    }

    #[test]
    fn a_missing_program_is_127_and_says_which() {
        let e = RunError::Spawn {
            program: "/nope/envoy".into(),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(e.exit_code(), 127);
        assert!(e.to_string().starts_with("cannot start /nope/envoy: "));
    }
}
