//! Where log lines go: every line from a guest (`proxy_log`, its stdout and
//! stderr) and from the host about a guest (traps, reloads)
//! is kept in a [`LogSink`] that tests read, and forwarded to the `log` crate.

use std::collections::VecDeque;
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
    /// The host, about the guest (traps, reloads).
    Host,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub worker: u32,
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
    /// Whether a root context wrote it (Envoy names only the root_id and
    /// vm_id in such lines, the plugin's name too in a stream's).
    pub from_root: bool,
}

/// Where a [`LogSink`] also sends each line as it comes (a printer, for
/// instance).
pub type LogOutput = Arc<dyn Fn(&LogRecord) + Send + Sync>;

/// A shared, append-only log. Cloning shares the same lines. By default it
/// keeps every line; [`LogSink::keep_last`] bounds it for long runs.
#[derive(Clone, Default)]
pub struct LogSink {
    records: Arc<Mutex<Lines>>,
    output: Option<LogOutput>,
}

#[derive(Default)]
struct Lines {
    kept: VecDeque<LogRecord>,
    /// Lines dropped from the front (their indexes stay counted).
    dropped: usize,
    /// At most this many lines are kept.
    limit: Option<usize>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink")
            .field("len", &self.len())
            .field("output", &self.output.is_some())
            .finish()
    }
}

impl LogSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink that also hands every line to `output` as it comes.
    pub fn with_output(output: impl Fn(&LogRecord) + Send + Sync + 'static) -> Self {
        LogSink {
            records: Default::default(),
            output: Some(Arc::new(output)),
        }
    }

    /// Keeps only the last `lines` lines (indexes keep counting).
    pub fn keep_last(self, lines: usize) -> Self {
        self.lock().limit = Some(lines);
        self
    }

    /// Appends a line, hands it to the output, and forwards it to the `log`
    /// crate.
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
        if let Some(output) = &self.output {
            output(&record);
        }
        let mut lines = self.lock();
        lines.kept.push_back(record);
        if let Some(limit) = lines.limit {
            while lines.kept.len() > limit {
                lines.kept.pop_front();
                lines.dropped += 1;
            }
        }
    }

    /// A copy of every line kept.
    pub fn records(&self) -> Vec<LogRecord> {
        self.lock().kept.iter().cloned().collect()
    }

    /// How many lines there were (kept or not).
    pub fn len(&self) -> usize {
        let lines = self.lock();
        lines.dropped + lines.kept.len()
    }

    /// Whether there is no line yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lines from index `mark` on (those still kept).
    pub fn records_since(&self, mark: usize) -> Vec<LogRecord> {
        let lines = self.lock();
        let skip = mark.saturating_sub(lines.dropped);
        lines.kept.iter().skip(skip).cloned().collect()
    }

    /// Whether any kept line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lock().kept.iter().any(|r| r.message.contains(needle))
    }

    /// How many kept lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lock()
            .kept
            .iter()
            .filter(|r| r.message.contains(needle))
            .count()
    }

    /// Every kept line as text, one per line, for failure messages.
    pub fn dump(&self) -> String {
        self.lock()
            .kept
            .iter()
            .map(|r| {
                format!(
                    "[w{} {:?} {:?}] {}\n",
                    r.worker, r.level, r.source, r.message
                )
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Lines> {
        // A poisoned log is still a log: keep the lines.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}
