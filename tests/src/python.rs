//! The project's Python clients (`tests/python/`: the official `openai`,
//! `anthropic` and `grpcio` clients driven through Envoy), run with the
//! Python of the project's `.venv`, where `cargo xtask setup` installs the
//! pinned versions (`requirements.txt`). Each script prints one JSON value.

use anyhow::Context as _;
use serde_json::Value;

use crate::paths::repo_root;

/// Runs `tests/python/<script>` with `args` and returns the JSON value it
/// prints. The error says what to do when `.venv` is missing, and shows the
/// script's output when it fails or prints something else.
pub async fn run_client(script: &str, args: Vec<String>) -> anyhow::Result<Value> {
    let python = repo_root().join(".venv/bin/python");
    anyhow::ensure!(
        python.exists(),
        "no {}: run `cargo xtask setup` (installs the Python clients)",
        python.display()
    );
    let mut cmd = std::process::Command::new(python);
    cmd.arg(repo_root().join("tests/python").join(script))
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("running {script}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "{script} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("{script} printed no JSON: {stdout}"))
}
