//! The guest's log on stderr, in Envoy's format: a plugin's `proxy_log`
//! lines (and what it writes to stdout, at info, and stderr, at error) as
//! `[time][worker][level][wasm] wasm log <name> [<root_id>] <vm_id>: <line>`,
//! the host's lines about the guest (traps) as `[time][worker][level][wasm]
//! <line>`; lines below the chosen level are left out, as with Envoy's
//! `--log-level`.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use drainpipe_shim::{LogLevel, LogRecord, LogSink, LogSource};

/// How many lines the host keeps in memory for its own messages (traps).
const KEPT: usize = 1024;

/// `--log-level`, with Envoy's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Level {
    Trace,
    Debug,
    Info,
    #[value(alias = "warn")]
    Warning,
    Error,
    Critical,
    Off,
}

impl Level {
    /// The level guests are told and below which their lines are dropped.
    pub(crate) fn guest_level(self) -> LogLevel {
        match self {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warning => LogLevel::Warn,
            Level::Error => LogLevel::Error,
            Level::Critical | Level::Off => LogLevel::Critical,
        }
    }
}

/// One plugin's log prefix: Envoy writes its name, its root_id if it has
/// one, and the vm_id.
pub(crate) struct Prefix {
    pub(crate) plugin: String,
    /// For a stream's lines.
    pub(crate) text: String,
    /// For a root context's lines: root_id and vm_id only.
    pub(crate) root: String,
}

impl Prefix {
    pub(crate) fn new(plugin: &str, root_id: &str, vm_id: &str) -> Prefix {
        let join = |parts: &[&str]| {
            parts
                .iter()
                .filter(|part| !part.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ")
        };
        Prefix {
            plugin: plugin.to_owned(),
            text: join(&[plugin, root_id, vm_id]),
            root: join(&[root_id, vm_id]),
        }
    }
}

/// A log sink that prints every line at or above `level` to stderr.
pub(crate) fn stderr_sink(level: Level, prefixes: Vec<Prefix>) -> LogSink {
    LogSink::with_output(move |record| {
        if level == Level::Off || record.level < level.guest_level() {
            return;
        }
        let line = format_line(record, &prefixes, SystemTime::now());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    })
    .keep_last(KEPT)
}

fn format_line(record: &LogRecord, prefixes: &[Prefix], now: SystemTime) -> String {
    let level = match record.level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warning",
        LogLevel::Error => "error",
        LogLevel::Critical => "critical",
    };
    let head = format!("[{}][{}][{level}][wasm]", timestamp(now), record.worker);
    let prefix = |plugin: Option<&str>| {
        prefixes
            .iter()
            .find(|p| plugin.is_none_or(|name| p.plugin == name))
            .map_or("", |p| match record.from_root {
                true => p.root.as_str(),
                false => p.text.as_str(),
            })
    };
    match &record.source {
        LogSource::Plugin(name) => format!(
            "{head} wasm log {}: {}\n",
            prefix(Some(name)),
            record.message
        ),
        // Which plugin wrote is not known; the VM's first one is named.
        LogSource::Stdout | LogSource::Stderr => {
            format!("{head} wasm log {}: {}\n", prefix(None), record.message)
        }
        LogSource::Host => format!("{head} {}\n", record.message),
    }
}

/// `2026-12-02 04:46:01.245`, UTC.
fn timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_look_like_envoys_wasm_log_lines() {
        let prefixes = vec![Prefix::new("fidelity", "", "fidelity_vm")];
        let record = LogRecord {
            worker: 0,
            level: LogLevel::Warn,
            source: LogSource::Plugin("fidelity".into()),
            message: "hello".into(),
            from_root: false,
        };
        let t = UNIX_EPOCH + Duration::from_millis(1_764_650_761_245);
        assert_eq!(
            format_line(&record, &prefixes, t),
            "[2025-12-02 04:46:01.245][0][warning][wasm] wasm log fidelity fidelity_vm: hello\n"
        );
        let from_root = LogRecord {
            from_root: true,
            ..record
        };
        assert!(format_line(&from_root, &prefixes, t).ends_with("] wasm log fidelity_vm: hello\n"));
        let with_root = Prefix::new("p", "root", "vm");
        assert_eq!(
            (with_root.text, with_root.root),
            ("p root vm".into(), "root vm".into())
        );
    }
}
