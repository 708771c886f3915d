//! Where log lines go: every line from a guest (`proxy_log`, its stdout and
//! stderr) and from the host about a guest (traps, unimplemented functions)
//! is kept in a [`LogSink`] that tests read, and forwarded to the `log` crate.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::LogLevel;

/// Where a log line came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSource {
    /// `proxy_log` from the plugin with this name.
    Plugin(String),
    /// The guest wrote to WASI stdout.
    Stdout,
    /// The guest wrote to WASI stderr (Rust panics print here).
    Stderr,
    /// The host, about the guest (traps, unimplemented functions).
    Host,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub worker: u32,
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
}

/// A shared, append-only log. Cloning shares the same lines.
#[derive(Clone, Debug, Default)]
pub struct LogSink {
    records: Arc<Mutex<Vec<LogRecord>>>,
}

impl LogSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a line and forwards it to the `log` crate.
    pub fn push(&self, record: LogRecord) {
        let level = match record.level {
            LogLevel::Trace => log::Level::Trace,
            LogLevel::Debug => log::Level::Debug,
            LogLevel::Info => log::Level::Info,
            LogLevel::Warn => log::Level::Warn,
            LogLevel::Error | LogLevel::Critical => log::Level::Error,
        };
        log::log!(
            target: "drainpipe_shim::guest",
            level,
            "[worker {}] {:?}: {}",
            record.worker,
            record.source,
            record.message
        );
        self.lock().push(record);
    }

    /// A copy of every line so far.
    pub fn records(&self) -> Vec<LogRecord> {
        self.lock().clone()
    }

    /// How many lines there are.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there is no line yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The lines from index `mark` on.
    pub fn records_since(&self, mark: usize) -> Vec<LogRecord> {
        self.lock()
            .get(mark..)
            .map(<[LogRecord]>::to_vec)
            .unwrap_or_default()
    }

    /// Whether any line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lock().iter().any(|r| r.message.contains(needle))
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lock()
            .iter()
            .filter(|r| r.message.contains(needle))
            .count()
    }

    /// Every line as text, one per line, for failure messages.
    pub fn dump(&self) -> String {
        self.lock()
            .iter()
            .map(|r| {
                format!(
                    "[w{} {:?} {:?}] {}\n",
                    r.worker, r.level, r.source, r.message
                )
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<LogRecord>> {
        // A poisoned log is still a log: keep the lines.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}
