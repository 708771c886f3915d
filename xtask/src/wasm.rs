//! Release wasm modules: cargo's build, the callbacks the module does not
//! handle taken out of its exports ([`exports`]), then binaryen's `wasm-opt
//! -Oz`.
//!
//! The plugin is one module loaded into every Envoy worker's VM. rustc with
//! LTO and `opt-level = "z"` leaves it around 170 KB; a post-link `wasm-opt
//! -Oz` takes it to about 130 KB (BENCHMARKS.md has the figures). The
//! benchmark's minimal filter goes through the same step, so the two are
//! built alike.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::{cargo, exports, root, run, WASM_TARGET};

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

/// A cdylib crate built for wasm32-wasip1, release, then optimised.
pub struct Module<'a> {
    /// `cargo build` arguments that select the crate (package or manifest).
    pub select: &'a [&'a str],
    /// Its target directory (the workspace's `target` when `None`).
    pub target_dir: Option<&'a str>,
    /// The library name cargo gives the `.wasm`.
    pub lib: &'a str,
    /// The proxy-wasm callbacks the module handles: the others' exports are
    /// removed before `wasm-opt` (see [`exports`]). `None` keeps the SDK's.
    pub callbacks: Option<&'a [&'a str]>,
}

impl Module<'_> {
    /// Builds and optimises it; returns the optimised module, written where
    /// cargo puts the release artifact (`<target>/wasm32-wasip1/release/`).
    /// cargo's own output stays in `deps/`, so the pass always starts from
    /// the linker's module and gives the same bytes every time.
    pub fn build(&self) -> anyhow::Result<PathBuf> {
        let mut cmd = cargo();
        cmd.args(["build", "--release", "--target", WASM_TARGET])
            .args(self.select);
        if let Some(dir) = self.target_dir {
            cmd.arg("--target-dir").arg(root().join(dir));
        }
        run(&mut cmd)?;
        let release = root()
            .join(self.target_dir.unwrap_or("target"))
            .join(WASM_TARGET)
            .join("release");
        let linked = release.join("deps").join(format!("{}.wasm", self.lib));
        let out = release.join(format!("{}.wasm", self.lib));
        match self.callbacks {
            Some(keep) => {
                let module = std::fs::read(&linked)
                    .with_context(|| format!("reading {}", linked.display()))?;
                let pruned = exports::keep_callbacks(&module, keep)
                    .with_context(|| format!("pruning the exports of {}", linked.display()))?;
                let input = release.join(format!("{}.callbacks.wasm", self.lib));
                std::fs::write(&input, &pruned.module)?;
                eprintln!(
                    "xtask: {}: callbacks left to the SDK, not exported: {}",
                    self.lib,
                    pruned.dropped.join(", ")
                );
                optimize(&input, &out)?;
            }
            None => optimize(&linked, &out)?,
        }
        eprintln!(
            "xtask: {}: {} bytes (linked: {} bytes)",
            out.display(),
            size(&out)?,
            size(&linked)?
        );
        Ok(out)
    }
}

fn size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} is missing", path.display()))?
        .len())
}

/// `wasm-opt -Oz` from `input` to `output`, through a temporary file renamed
/// into place (`output` may be a hard link to `input`).
fn optimize(input: &Path, output: &Path) -> anyhow::Result<()> {
    let tmp = output.with_extension("wasm-opt.tmp");
    run(Command::new("wasm-opt")
        .arg("-Oz")
        .args(FEATURES)
        .args(["--strip-debug", "--strip-producers"])
        .arg(input)
        .arg("-o")
        .arg(&tmp))
    .context("wasm-opt (binaryen) failed; `cargo xtask setup` installs it")?;
    std::fs::rename(&tmp, output)
        .with_context(|| format!("cannot move {} into place", tmp.display()))
}

/// Makes sure binaryen's `wasm-opt` is on PATH: on Debian or Ubuntu as root,
/// installs the `binaryen` package; elsewhere says what to install.
pub fn ensure_wasm_opt() -> anyhow::Result<()> {
    if let Some(version) = wasm_opt_version() {
        eprintln!("xtask: {version}");
        return Ok(());
    }
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let apt = Path::new("/usr/bin/apt-get").exists();
    if !(root_user && apt) {
        bail!(
            "wasm-opt (binaryen) is needed to build the plugin and is not on PATH: \
             install binaryen (Debian/Ubuntu: `apt-get install binaryen`, macOS: \
             `brew install binaryen`) and rerun"
        );
    }
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "binaryen"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    // A fresh machine may have no package lists yet.
    if install().is_err() {
        run(Command::new("apt-get").args(["update", "-q"])).context("apt-get update failed")?;
        install().context("cannot install binaryen (wasm-opt) with apt-get")?;
    }
    match wasm_opt_version() {
        Some(version) => {
            eprintln!("xtask: {version}");
            Ok(())
        }
        None => bail!("binaryen was installed but wasm-opt does not run"),
    }
}

fn wasm_opt_version() -> Option<String> {
    let out = Command::new("wasm-opt").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
