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

use anyhow::Context;

use crate::system::Tool;
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

/// binaryen's `wasm-opt`, which every release module goes through.
pub const WASM_OPT: Tool = Tool {
    program: "wasm-opt",
    package: "binaryen",
    needed_for: "to build the plugin",
    elsewhere: "macOS: `brew install binaryen`",
};
