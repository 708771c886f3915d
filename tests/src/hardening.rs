//! Helpers for the hardening tests: raw HTTP/1.1 over TCP (for requests a
//! well-behaved client library refuses to send or to abort), a small
//! fixed-seed generator, Envoy's process memory, and stat polling.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Envoy;

/// xorshift64*: deterministic pseudo-random choices for a test.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// In `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A response read from a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// The response head, lowercased.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` (complete bytes, which should ask for `connection:
/// close`) and reads the response: up to its `content-length`, or until
/// the server closes, within `limit`.
pub async fn raw_request(
    port: u16,
    request: &[u8],
    limit: Duration,
) -> anyhow::Result<RawResponse> {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(request).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        // Stop once a response with a content-length is complete (Envoy
        // waits up to its delayed-close timeout for the client to close);
        // otherwise read to the end. A reset after a complete response is
        // still a response.
        while !complete(&buf) {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(limit, exchange)
        .await
        .context("raw request timed out")??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no response head in {:?}", String::from_utf8_lossy(&buf)))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok(RawResponse {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    })
}

/// Whether `buf` holds a whole response framed by `content-length`.
fn complete(buf: &[u8]) -> bool {
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| buf.len() >= split + 4 + len)
}

/// Envoy's resident set size in KiB, from `/proc`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

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

/// A streamed chat completion request body.
pub fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({"model": crate::fake_llm::MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

/// The test-only trap filter (`tests/trap-filter`), built for wasm32-wasip1
/// on first use (or `DRAINPIPE_TRAP_WASM`, if set).
pub fn trap_filter_wasm() -> anyhow::Result<std::path::PathBuf> {
    use std::path::PathBuf;
    use std::sync::OnceLock;
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(path) = std::env::var_os("DRAINPIPE_TRAP_WASM") {
        return Ok(PathBuf::from(path));
    }
    let built = BUILT.get_or_init(|| {
        let root = crate::envoy::repo_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip1",
                "--manifest-path",
            ])
            .arg(root.join("tests/trap-filter/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .output()
            .map_err(|e| format!("running cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building tests/trap-filter failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(target.join("wasm32-wasip1/release/drainpipe_trap_filter.wasm"))
    });
    built.clone().map_err(anyhow::Error::msg)
}
