//! Where things are: the repository, cargo's target directory, and the
//! workspace's binaries.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// The workspace's target directory: `CARGO_TARGET_DIR`, else `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// A binary of the workspace (`drainpipe-shim`, ...), from the profile
/// directory the running test binary was built into (`target/debug/`):
/// `cargo test --workspace` builds every binary before it runs a test.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the running binary's path")?;
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the running binary is not in a cargo target directory")?;
    let bin = profile_dir.join(name);
    if !bin.exists() {
        bail!(
            "{} is missing: `cargo test --workspace` builds it (or `cargo build --bin {name}`)",
            bin.display()
        );
    }
    Ok(bin)
}
