//! WASI preview1 for guests, through `wasmtime-wasi`: stdout and stderr go to
//! the log line by line, clocks read the shim's clock, `random_get` is real
//! or seeded, the environment and arguments are empty, and no directory is
//! preopened.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::WasiCtxBuilder;

use crate::abi::LogLevel;
use crate::clock::{Clock, WasiMonotonicClock, WasiWallClock};
use crate::logs::{LogRecord, LogSink, LogSource};

/// Builds the WASI context of one worker's VM.
pub(crate) fn context(clock: &Clock, log: &LogSink, worker: u32, seed: Option<u64>) -> WasiP1Ctx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(GuestOutput::new(log.clone(), worker, LogSource::Stdout))
        .stderr(GuestOutput::new(log.clone(), worker, LogSource::Stderr))
        .wall_clock(WasiWallClock(clock.clone()))
        .monotonic_clock(WasiMonotonicClock(clock.clone()));
    if let Some(seed) = seed {
        builder.secure_random(wasmtime_wasi::Deterministic::new(seeded_bytes(seed)));
        builder.insecure_random(wasmtime_wasi::Deterministic::new(seeded_bytes(!seed)));
        builder.insecure_random_seed(u128::from(seed));
    }
    builder.build_p1()
}

/// 64 KiB of pseudo-random bytes from `seed` (splitmix64); the generator
/// cycles through them.
fn seeded_bytes(seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(64 * 1024);
    while out.len() < 64 * 1024 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out
}

/// A guest's stdout or stderr: complete lines become log records.
#[derive(Clone)]
struct GuestOutput {
    log: LogSink,
    worker: u32,
    source: LogSource,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    fn new(log: LogSink, worker: u32, source: LogSource) -> Self {
        GuestOutput {
            log,
            worker,
            source,
            pending: Arc::default(),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend_from_slice(bytes);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            let level = match self.source {
                LogSource::Stderr => LogLevel::Error,
                _ => LogLevel::Info,
            };
            self.log.push(LogRecord {
                worker: self.worker,
                level,
                source: self.source.clone(),
                message: text,
                from_root: false,
            });
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
