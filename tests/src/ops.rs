//! The operations binary, `drainpipe` (crate `drainpipe-ops`), for tests
//! that run it: built on first use, and Envoy started under `drainpipe run`;
//! and where the static build images ship is (`cargo xtask dist`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::paths::{repo_root, target_dir};
use crate::procfs;
use crate::{Envoy, EnvoyConfig, EnvoyOptions, Ports};

/// The `drainpipe` binary: `DRAINPIPE_BIN`, else built (debug) into the
/// workspace's target directory on first use.
pub fn drainpipe_bin() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(path) = std::env::var_os("DRAINPIPE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let built = BUILT.get_or_init(|| {
        let target = target_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["build", "--package", "drainpipe-ops", "--bin", "drainpipe"])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(repo_root())
            .output()
            .map_err(|e| format!("running cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building the drainpipe binary failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(target.join("debug/drainpipe"))
    });
    built.clone().map_err(anyhow::Error::msg)
}

/// The target of the static `drainpipe` that goes into images.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Where `cargo xtask dist` leaves the static `drainpipe`:
/// `target/x86_64-unknown-linux-musl/release/drainpipe`.
pub fn static_drainpipe_path() -> PathBuf {
    target_dir().join(MUSL_TARGET).join("release/drainpipe")
}

/// The static `drainpipe`, built by `cargo xtask dist` (`cargo xtask test`
/// builds it before the tests, as it builds the release plugin).
pub fn static_drainpipe_bin() -> anyhow::Result<PathBuf> {
    let path = static_drainpipe_path();
    if !path.exists() {
        anyhow::bail!(
            "the static drainpipe is not built at {}: run `cargo xtask dist`",
            path.display()
        );
    }
    Ok(path)
}

/// `drainpipe run` with the drain API and admin of `ports`, `args` after
/// them, ending in `--`: the wrapper that starts Envoy under supervision.
pub fn run_wrapper(ports: Ports, args: &[&str]) -> Vec<OsString> {
    let bin = drainpipe_bin().expect("the drainpipe binary");
    run_wrapper_of(&bin, ports, args)
}

/// [`run_wrapper`] with the `drainpipe` binary at `bin`.
pub fn run_wrapper_of(bin: &Path, ports: Ports, args: &[&str]) -> Vec<OsString> {
    let mut wrapper: Vec<OsString> = vec![
        bin.into(),
        "run".into(),
        "--drain-url".into(),
        format!("http://127.0.0.1:{}/drain", ports.drain).into(),
        "--envoy-admin".into(),
        format!("http://127.0.0.1:{}", ports.admin).into(),
    ];
    wrapper.extend(args.iter().map(OsString::from));
    wrapper.push("--".into());
    wrapper
}

/// Envoy under `drainpipe run`. The guard's pid is the supervisor's;
/// Envoy's own pid is read from the supervisor's first line, and Envoy is
/// killed on drop if it is still there.
pub struct Supervised {
    pub envoy: Envoy,
    pub envoy_pid: i32,
}

impl Supervised {
    /// Starts `cfg` (localized to `ports`) under `drainpipe run ARGS --`,
    /// the `drainpipe` binary at `bin`.
    pub fn start_with(
        bin: &Path,
        cfg: &EnvoyConfig,
        ports: Ports,
        args: &[&str],
    ) -> anyhow::Result<Supervised> {
        let opts = EnvoyOptions {
            wrapper: run_wrapper_of(bin, ports, args),
            ..EnvoyOptions::default()
        };
        let envoy = Envoy::start(cfg, ports, opts)?;
        let envoy_pid = started_envoy_pid(&envoy)?;
        Ok(Supervised { envoy, envoy_pid })
    }

    /// The supervisor's lines (`drainpipe: ...`) in the shared log.
    pub fn lines(&self) -> Vec<String> {
        self.envoy
            .log()
            .lines()
            .filter(|l| l.starts_with("drainpipe: "))
            .map(str::to_string)
            .collect()
    }

    /// Sends `signal` to the supervisor.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.envoy.pid() as libc::pid_t, signal);
        }
    }

    /// Whether Envoy's process is still there (a zombie counts as gone).
    pub fn envoy_alive(&self) -> bool {
        process_alive(self.envoy_pid)
    }

    /// Waits until the supervisor's log has a line containing `text`.
    pub fn wait_line(&self, text: &str, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while !self.lines().iter().any(|l| l.contains(text)) {
            if started.elapsed() > limit {
                anyhow::bail!(
                    "no line with {text:?} within {limit:?}; log tail:\n{}",
                    self.envoy.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.envoy_alive() {
            // SAFETY: kill(2); the pid is Envoy's, still running.
            unsafe {
                libc::kill(self.envoy_pid, libc::SIGKILL);
            }
        }
    }
}

/// Envoy's own pid under `drainpipe run`, from the supervisor's `started
/// Envoy (pid N)` line in the shared log.
pub fn started_envoy_pid(envoy: &Envoy) -> anyhow::Result<i32> {
    envoy
        .log()
        .lines()
        .find_map(|l| {
            l.strip_prefix("drainpipe: started Envoy (pid ")?
                .strip_suffix(')')?
                .parse()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no `started Envoy` line:\n{}", envoy.log_tail(20)))
}

/// Whether process `pid` is running ([`procfs::alive`]), for a pid held as
/// a `pid_t`, as `kill(2)` takes it.
pub fn process_alive(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(procfs::alive)
}
