//! Programs from the system's packages the tasks need (binaryen's
//! `wasm-opt`, valgrind): found on PATH, or installed with apt-get on Debian
//! or Ubuntu as root; elsewhere the error says what to install.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::run;

/// A program and the package that has it.
pub struct Tool {
    /// The program, run with `--version` to tell it works.
    pub program: &'static str,
    /// The Debian package.
    pub package: &'static str,
    /// What needs it, for the error message.
    pub needed_for: &'static str,
    /// How to install it elsewhere, for the error message.
    pub elsewhere: &'static str,
}

impl Tool {
    /// Makes sure the program runs; prints its version.
    pub fn ensure(&self) -> anyhow::Result<()> {
        if let Some(version) = self.version() {
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
                "{} ({}) is needed {} and is not on PATH: install {} \
                 (Debian/Ubuntu: `apt-get install {}`, {}) and rerun",
                self.program,
                self.package,
                self.needed_for,
                self.package,
                self.package,
                self.elsewhere
            );
        }
        let install = || {
            run(Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", self.package])
                .env("DEBIAN_FRONTEND", "noninteractive"))
        };
        // A fresh machine may have no package lists yet.
        if install().is_err() {
            run(Command::new("apt-get").args(["update", "-q"])).context("apt-get update failed")?;
            install().with_context(|| {
                format!(
                    "cannot install {} ({}) with apt-get",
                    self.package, self.program
                )
            })?;
        }
        match self.version() {
            Some(version) => {
                eprintln!("xtask: {version}");
                Ok(())
            }
            None => bail!(
                "{} was installed but {} does not run",
                self.package,
                self.program
            ),
        }
    }

    fn version(&self) -> Option<String> {
        let out = Command::new(self.program).arg("--version").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// binaryen's `wasm-opt`, which every release module goes through.
pub const WASM_OPT: Tool = Tool {
    program: "wasm-opt",
    package: "binaryen",
    needed_for: "to build the plugin",
    elsewhere: "macOS: `brew install binaryen`",
};
