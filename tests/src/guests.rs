//! Every guest module (the proxy-wasm filters built for `wasm32-wasip1`)
//! built in one place, with one set of flags, each into its own target
//! directory, and its path handed back: the plugin, the shim's test filter,
//! the trap filter and the benchmark's filters. Tests, the benchmark and
//! `cargo xtask` all build through here.
//!
//! A guest has two outputs in its target directory, so neither overwrites
//! the other:
//! - [`Guest::build`]: cargo's module as the linker wrote it
//!   (`<target>/wasm32-wasip1/release/deps/<lib>.wasm`);
//! - [`Guest::build_release`]: the release module, cargo's module with the
//!   callbacks the filter does not handle taken out of its exports
//!   ([`exports`]), then binaryen's `wasm-opt -Oz --converge`
//!   (`<target>/wasm32-wasip1/release/<lib>.wasm`, where cargo would put
//!   its copy). The plugin ships so (`cargo xtask build`), and the
//!   benchmark's minimal filter is built alike to compare with it.
//!
//! The plugin is one module loaded into every Envoy worker's VM. rustc with
//! LTO and `opt-level = 2` (for speed: it runs on every request) leaves it
//! around 260 KB; `wasm-opt -Oz` takes it under 150 KB (BENCHMARKS.md has
//! the figures).

pub mod exports;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context as _};

use crate::paths::{repo_root, target_dir};

/// The target every guest is built for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// A proxy-wasm filter crate built for [`WASM_TARGET`], release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guest {
    /// The crate's directory, from the repository root.
    pub dir: &'static str,
    /// The library name cargo gives the `.wasm`.
    pub lib: &'static str,
    /// Its cargo target directory, under the workspace's target directory
    /// (`""`: the workspace's own).
    pub target: &'static str,
    /// Environment the crate reads at build time (the probe's operation).
    pub env: &'static [(&'static str, &'static str)],
}

/// The drainpipe plugin (`plugin/`), in the workspace's target directory:
/// its release module is `target/wasm32-wasip1/release/drainpipe.wasm`, the
/// path `envoy/envoy.yaml` loads. See [`plugin_wasm`].
pub const PLUGIN: Guest = Guest {
    dir: "plugin",
    lib: "drainpipe",
    target: "",
    env: &[],
};

/// The shim's own test filter (`host-shim/test-filter`).
pub const TEST_FILTER: Guest = Guest {
    dir: "host-shim/test-filter",
    lib: "shim_test_filter",
    target: "guests/test-filter",
    env: &[],
};

/// The shim's fidelity filters (`host-shim/test-filters/fidelity`): one
/// module, the plugin configuration picks the filter.
pub const FIDELITY_FILTER: Guest = Guest {
    dir: "host-shim/test-filters/fidelity",
    lib: "shim_fidelity_filter",
    target: "guests/fidelity-filter",
    env: &[],
};

/// The fidelity filters built with their `name` section kept (Envoy then
/// logs a trap's in-VM backtrace with function names).
pub const FIDELITY_FILTER_NAMED: Guest = Guest {
    target: "guests/fidelity-filter-named",
    env: &[("CARGO_PROFILE_RELEASE_STRIP", "false")],
    ..FIDELITY_FILTER
};

/// A filter that traps on request (`tests/trap-filter`).
pub const TRAP_FILTER: Guest = Guest {
    dir: "tests/trap-filter",
    lib: "drainpipe_trap_filter",
    target: "guests/trap-filter",
    env: &[],
};

/// The benchmark's minimal filter (`bench/minimal-filter`): reads one
/// header, adds one.
pub const MINIMAL_FILTER: Guest = Guest {
    dir: "bench/minimal-filter",
    lib: "bench_minimal_filter",
    target: "guests/minimal-filter",
    env: &[],
};

/// [`MINIMAL_FILTER`] again, in a target directory of its own: the
/// benchmark builds it a second time with its response body callback kept.
pub const MINIMAL_FILTER_BODY: Guest = Guest {
    target: "guests/minimal-filter-body",
    ..MINIMAL_FILTER
};

/// The benchmark's host-call probe (`bench/probe-filter`) that calls
/// nothing; [`Guest::probe`] gives the others.
pub const PROBE_FILTER: Guest = Guest {
    dir: "bench/probe-filter",
    lib: "bench_probe_filter",
    target: "guests/probe-filter-none",
    env: &[("PROBE_OP", "none")],
};

/// Every guest crate, for tasks that go over all of them (lint).
pub const ALL: [Guest; 6] = [
    PLUGIN,
    TEST_FILTER,
    FIDELITY_FILTER,
    TRAP_FILTER,
    MINIMAL_FILTER,
    PROBE_FILTER,
];

impl Guest {
    /// The host-call probe built for one operation (`PROBE_OP`, see
    /// `bench/probe-filter`), in a target directory of its own:
    /// `Guest::probe(&[("PROBE_OP", "shared")], "guests/probe-filter-shared")`.
    pub const fn probe(op: &'static [(&'static str, &'static str)], target: &'static str) -> Guest {
        Guest {
            target,
            env: op,
            ..PROBE_FILTER
        }
    }

    /// The crate's manifest.
    pub fn manifest(&self) -> PathBuf {
        repo_root().join(self.dir).join("Cargo.toml")
    }

    /// Its cargo target directory.
    pub fn target_dir(&self) -> PathBuf {
        match self.target {
            "" => target_dir(),
            dir => target_dir().join(dir),
        }
    }

    fn release_dir(&self) -> PathBuf {
        self.target_dir().join(WASM_TARGET).join("release")
    }

    /// Where [`Guest::build`] leaves cargo's module.
    pub fn linked_path(&self) -> PathBuf {
        self.release_dir()
            .join("deps")
            .join(format!("{}.wasm", self.lib))
    }

    /// Where [`Guest::build_release`] leaves the release module.
    pub fn release_path(&self) -> PathBuf {
        self.release_dir().join(format!("{}.wasm", self.lib))
    }

    /// The one cargo command every guest is built with. `RUSTFLAGS` of the
    /// calling build (coverage, sanitizers) are not for the guest.
    fn cargo_build(&self) -> Command {
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args(["build", "--release", "--target", WASM_TARGET])
            .arg("--manifest-path")
            .arg(self.manifest())
            .arg("--target-dir")
            .arg(self.target_dir())
            .envs(self.env.iter().copied())
            .env_remove("RUSTFLAGS")
            .env("CARGO_ENCODED_RUSTFLAGS", remapped_sources())
            .current_dir(repo_root())
            .stdin(Stdio::null());
        cmd
    }

    /// Builds the crate (once per process) and returns cargo's module.
    /// Cargo's output is kept for the error message.
    pub fn build(&self) -> anyhow::Result<PathBuf> {
        static BUILT: OnceLock<Mutex<HashMap<Guest, Result<PathBuf, String>>>> = OnceLock::new();
        let mut built = BUILT
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let result = built.entry(*self).or_insert_with(|| {
            let out = self
                .cargo_build()
                .output()
                .map_err(|e| format!("cannot run cargo to build {}: {e}", self.dir))?;
            if !out.status.success() {
                return Err(format!(
                    "building {} for {WASM_TARGET} failed ({}; `cargo xtask setup` adds the \
                     target):\n{}",
                    self.dir,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(self.linked_path())
        });
        result.clone().map_err(anyhow::Error::msg)
    }

    /// Builds the release module: cargo's build (its progress shown), the
    /// exports of the callbacks not in `callbacks` removed (`None` keeps the
    /// SDK's), then `wasm-opt -Oz`. The pass always starts from the linker's
    /// module, so it gives the same bytes every time.
    pub fn build_release(&self, callbacks: Option<&[&str]>) -> anyhow::Result<PathBuf> {
        let mut cmd = self.cargo_build();
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        if !status.success() {
            bail!("{cmd:?} failed ({status})");
        }
        let linked = self.linked_path();
        let out = self.release_path();
        match callbacks {
            Some(keep) => {
                let module = std::fs::read(&linked)
                    .with_context(|| format!("reading {}", linked.display()))?;
                let pruned = exports::keep_callbacks(&module, keep)
                    .with_context(|| format!("pruning the exports of {}", linked.display()))?;
                let input = self
                    .release_dir()
                    .join(format!("{}.callbacks.wasm", self.lib));
                std::fs::write(&input, &pruned.module)?;
                eprintln!(
                    "{}: callbacks left to the SDK, not exported: {}",
                    self.lib,
                    pruned.dropped.join(", ")
                );
                optimize(&input, &out)?;
            }
            None => optimize(&linked, &out)?,
        }
        eprintln!(
            "{}: {} bytes (linked: {} bytes)",
            out.display(),
            size(&out)?,
            size(&linked)?
        );
        Ok(out)
    }
}

/// The release plugin: `DRAINPIPE_WASM`, else [`PLUGIN`]'s release module
/// (`cargo xtask build` makes it).
pub fn plugin_wasm() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("DRAINPIPE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PLUGIN.release_path());
    if !path.exists() {
        bail!(
            "plugin not built at {}: run `cargo xtask build`",
            path.display()
        );
    }
    Ok(path)
}

/// The WebAssembly features rustc enables by default for wasm32-wasip1.
/// binaryen must be told, or it refuses the module (bulk memory, sign
/// extension); it only keeps using what the module already may use.
const FEATURES: [&str; 6] = [
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-nontrapping-float-to-int",
    "--enable-mutable-globals",
    "--enable-multivalue",
    "--enable-reference-types",
];

fn size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} is missing", path.display()))?
        .len())
}

/// rustc flags for every guest: the dependencies' source paths that panic
/// locations carry (`$CARGO_HOME/registry/src/<index>/crate-x.y/...`) are
/// written `cargo/crate-x.y/...`, so a module names no directory of the
/// machine that built it and is the same wherever it is built (and a few
/// hundred bytes smaller). Flags are separated as `CARGO_ENCODED_RUSTFLAGS`
/// wants them.
fn remapped_sources() -> String {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut dirs: Vec<PathBuf> = home
        .and_then(|h| std::fs::read_dir(h.join("registry/src")).ok())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs.iter()
        .map(|d| format!("--remap-path-prefix={}=cargo", d.display()))
        .collect::<Vec<_>>()
        .join("\x1f")
}

/// `wasm-opt -Oz --converge` from `input` to `output`, through a temporary file renamed
/// into place (`output` may be a hard link to `input`).
fn optimize(input: &Path, output: &Path) -> anyhow::Result<()> {
    let tmp = output.with_extension("wasm-opt.tmp");
    let status = Command::new("wasm-opt")
        // --converge: the -Oz pipeline again until the module stops
        // shrinking (about 0.5 % smaller than one pass, BENCHMARKS.md).
        .args(["-Oz", "--converge"])
        .args(FEATURES)
        .args(["--strip-debug", "--strip-producers"])
        .arg(input)
        .arg("-o")
        .arg(&tmp)
        .status()
        .context("cannot run wasm-opt (binaryen); `cargo xtask setup` installs it")?;
    if !status.success() {
        bail!("wasm-opt failed on {} ({status})", input.display());
    }
    std::fs::rename(&tmp, output)
        .with_context(|| format!("cannot move {} into place", tmp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_has_its_own_target_directory() {
        let mut dirs: Vec<PathBuf> = ALL.iter().map(Guest::target_dir).collect();
        let probe = Guest::probe(&[("PROBE_OP", "shared")], "guests/probe-filter-shared");
        dirs.push(probe.target_dir());
        let n = dirs.len();
        dirs.sort();
        dirs.dedup();
        assert_eq!(dirs.len(), n, "two guests share a target directory");
    }

    #[test]
    fn cargo_output_and_release_module_are_two_files() {
        for guest in ALL {
            assert_ne!(guest.linked_path(), guest.release_path());
            assert!(guest.manifest().exists(), "{}", guest.dir);
        }
    }

    #[test]
    fn plugin_release_module_is_where_the_envoy_config_loads_it() {
        assert_eq!(
            PLUGIN.release_path(),
            target_dir().join("wasm32-wasip1/release/drainpipe.wasm")
        );
    }
}
