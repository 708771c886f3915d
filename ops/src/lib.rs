//! drainpipe's operations binary, `drainpipe`: what an Envoy image needs
//! around the plugin, with no Wasmtime and no async runtime in it.
//!
//! - [`supervise`]: `drainpipe run -- envoy ...`, a supervisor fit to be a
//!   container's PID 1. It starts Envoy, reaps zombies, passes SIGHUP,
//!   SIGUSR1 and SIGUSR2 on, and turns SIGTERM or SIGINT into a drain
//!   through the plugin's drain API, then stops Envoy through its admin.
//! - [`watch`]: the drain's progress, shared by `run` and `drain --wait`
//!   (the preStop client): when it is drained, when it timed out, and the
//!   one-line-a-second report.
//! - [`api`]: the blocking HTTP calls to the drain API and Envoy's admin.
//! - [`controller`]: a standalone drain controller the plugin follows
//!   (`drain_controller`), for Envoys without a drain listener (Istio's
//!   sidecar).
//! - [`signals`]: signals blocked and waited for synchronously, the way
//!   tini does it: no handler runs, nothing is lost between two waits.

pub mod api;
pub mod controller;
pub mod signals;
pub mod supervise;
pub mod watch;

/// The drain listener's drain API, as `envoy/envoy.yaml` ships it.
pub const DEFAULT_DRAIN_URL: &str = "http://127.0.0.1:10001/drain";
/// Envoy's admin, as `envoy/envoy.yaml` ships it.
pub const DEFAULT_ENVOY_ADMIN: &str = "http://127.0.0.1:9901";
/// How long to wait for a drain: `ceil(grace_ms / 1000) + 5` with the
/// plugin's default `grace_ms` (30000), as `DRAIN_TIMEOUT_S` in
/// `envoy/prestop.sh` and `envoy/k8s/`.
pub const DEFAULT_TIMEOUT: &str = "35s";

/// The drain timeout for a plugin `grace_ms`: the grace period rounded up
/// to whole seconds, and 5 s for the last responses.
///
/// ```
/// assert_eq!(drainpipe_ops::drain_timeout_s(30_000), 35);
/// assert_eq!(drainpipe_ops::drain_timeout_s(15_500), 21);
/// ```
pub fn drain_timeout_s(grace_ms: u64) -> u64 {
    grace_ms.div_ceil(1000) + 5
}

/// Writes one line of progress to stderr, `drainpipe: ...`.
pub fn say(line: impl std::fmt::Display) {
    eprintln!("drainpipe: {line}");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_timeout_follows_the_default_grace() {
        let default = humantime::parse_duration(super::DEFAULT_TIMEOUT).unwrap();
        assert_eq!(default.as_secs(), super::drain_timeout_s(30_000));
    }
}
