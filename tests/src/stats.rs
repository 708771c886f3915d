//! Envoy's stats, read from its admin: a whole list, one value, or a wait
//! until a value is reached.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::Envoy;

/// Envoy's `/stats` lines whose names match the regex `filter`.
pub async fn stats(envoy: &Envoy, filter: &str) -> anyhow::Result<String> {
    Ok(
        reqwest::get(envoy.admin(&format!("/stats?filter={filter}")))
            .await?
            .text()
            .await?,
    )
}

/// A stat's value from `/stats` (exact name), if Envoy has it.
pub async fn stat_value(envoy: &Envoy, name: &str) -> anyhow::Result<Option<u64>> {
    let text = stats(envoy, &format!("^{}$", name.replace('.', "\\."))).await?;
    Ok(text.lines().find_map(|l| {
        let (n, v) = l.split_once(": ")?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    }))
}

/// Polls a plugin stat until it equals `want`; fails after `limit` with the
/// last value seen.
pub async fn wait_stat(
    envoy: &Envoy,
    name: &str,
    want: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let got = envoy.stat(name).await?;
        if got == want {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{name} stayed at {got}, expected {want}, for {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
