//! Metrics: one registry for the whole host, as Envoy's stats store is one
//! per process, so values aggregate across workers. Metric ids are per VM
//! (see [`MetricIds`]) and encode the kind in their low two bits as Envoy's do.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};

use crate::abi::{AbiResult, MetricKind, Status};

/// Envoy's default histogram bucket bounds.
const BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The process-wide stats store.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<BTreeMap<(String, KindKey), Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KindKey {
    Counter,
    Gauge,
    Histogram,
}

impl From<MetricKind> for KindKey {
    fn from(kind: MetricKind) -> Self {
        match kind {
            MetricKind::Counter => KindKey::Counter,
            MetricKind::Gauge => KindKey::Gauge,
            MetricKind::Histogram => KindKey::Histogram,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Value {
    value: u64,
    samples: Vec<u64>,
}

/// A snapshot of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSnapshot {
    pub name: String,
    pub kind: MetricKind,
    /// Counter or gauge value; for a histogram, the number of samples.
    pub value: u64,
    /// Recorded samples (histograms only).
    pub samples: Vec<u64>,
}

impl Metrics {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, KindKey), Value>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn define(&self, name: &str, kind: MetricKind) {
        self.lock()
            .entry((name.to_owned(), kind.into()))
            .or_default();
    }

    fn increment(&self, name: &str, kind: MetricKind, offset: i64) -> AbiResult {
        let mut inner = self.lock();
        let value = inner.entry((name.to_owned(), kind.into())).or_default();
        match kind {
            MetricKind::Counter if offset > 0 => {
                value.value = value.value.wrapping_add(offset as u64)
            }
            MetricKind::Counter => return Err(Status::BadArgument),
            // Envoy's gauges are unsigned and wrap when subtracted below zero.
            MetricKind::Gauge if offset >= 0 => {
                value.value = value.value.wrapping_add(offset as u64)
            }
            MetricKind::Gauge => value.value = value.value.wrapping_sub(offset.unsigned_abs()),
            MetricKind::Histogram => return Err(Status::BadArgument),
        }
        Ok(())
    }

    fn record(&self, name: &str, kind: MetricKind, v: u64) {
        let mut inner = self.lock();
        let value = inner.entry((name.to_owned(), kind.into())).or_default();
        match kind {
            MetricKind::Counter => value.value = value.value.wrapping_add(v),
            MetricKind::Gauge => value.value = v,
            MetricKind::Histogram => value.samples.push(v),
        }
    }

    fn get(&self, name: &str, kind: MetricKind) -> AbiResult<u64> {
        match kind {
            MetricKind::Histogram => Err(Status::BadArgument),
            _ => Ok(self
                .lock()
                .get(&(name.to_owned(), kind.into()))
                .map_or(0, |v| v.value)),
        }
    }

    /// Every metric, sorted by name.
    pub fn snapshot(&self) -> Vec<MetricSnapshot> {
        self.lock()
            .iter()
            .map(|((name, kind), v)| {
                let kind = match kind {
                    KindKey::Counter => MetricKind::Counter,
                    KindKey::Gauge => MetricKind::Gauge,
                    KindKey::Histogram => MetricKind::Histogram,
                };
                MetricSnapshot {
                    name: name.clone(),
                    kind,
                    value: if kind == MetricKind::Histogram {
                        v.samples.len() as u64
                    } else {
                        v.value
                    },
                    samples: v.samples.clone(),
                }
            })
            .collect()
    }

    /// The value of the counter or gauge `name`, if defined.
    pub fn value(&self, name: &str) -> Option<u64> {
        let inner = self.lock();
        [KindKey::Counter, KindKey::Gauge]
            .into_iter()
            .find_map(|k| inner.get(&(name.to_owned(), k)).map(|v| v.value))
    }

    /// The metrics in Prometheus text format, named as Envoy's
    /// `/stats/prometheus` names custom Wasm stats: no `envoy_` prefix, and
    /// characters other than `[a-zA-Z0-9_]` replaced by `_`.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for m in self.snapshot() {
            let name = prometheus_name(&m.name);
            match m.kind {
                MetricKind::Counter => {
                    let _ = writeln!(out, "# TYPE {name} counter\n{name}{{}} {}", m.value);
                }
                MetricKind::Gauge => {
                    let _ = writeln!(out, "# TYPE {name} gauge\n{name}{{}} {}", m.value);
                }
                MetricKind::Histogram => {
                    let _ = writeln!(out, "# TYPE {name} histogram");
                    for bound in BUCKETS {
                        let count = m.samples.iter().filter(|&&s| (s as f64) <= *bound).count();
                        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
                    }
                    let sum: u64 = m.samples.iter().sum();
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", m.samples.len());
                    let _ = writeln!(out, "{name}_sum{{}} {sum}");
                    let _ = writeln!(out, "{name}_count{{}} {}", m.samples.len());
                }
            }
        }
        out
    }
}

fn prometheus_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The metric ids one VM has defined. Envoy hands out ids per VM, in steps
/// of 4 with the kind in the low two bits; each definition gets a new id even
/// for a name already defined, and all of them address the same stat.
#[derive(Debug, Default)]
pub(crate) struct MetricIds {
    ids: BTreeMap<u32, (String, MetricKind)>,
    next: [u32; 3],
}

impl MetricIds {
    pub(crate) fn define(&mut self, metrics: &Metrics, kind: MetricKind, name: &str) -> u32 {
        let (slot, tag) = match kind {
            MetricKind::Counter => (0, 0),
            MetricKind::Gauge => (1, 1),
            MetricKind::Histogram => (2, 2),
        };
        let id = (self.next[slot] << 2) | tag;
        self.next[slot] += 1;
        self.ids.insert(id, (name.to_owned(), kind));
        metrics.define(name, kind);
        id
    }

    fn lookup(&self, id: u32) -> AbiResult<(&str, MetricKind)> {
        self.ids
            .get(&id)
            .map(|(n, k)| (n.as_str(), *k))
            .ok_or(Status::NotFound)
    }

    pub(crate) fn increment(&self, metrics: &Metrics, id: u32, offset: i64) -> AbiResult {
        let (name, kind) = self.lookup(id)?;
        metrics.increment(name, kind, offset)
    }

    pub(crate) fn record(&self, metrics: &Metrics, id: u32, value: u64) -> AbiResult {
        let (name, kind) = self.lookup(id)?;
        metrics.record(name, kind, value);
        Ok(())
    }

    pub(crate) fn get(&self, metrics: &Metrics, id: u32) -> AbiResult<u64> {
        let (name, kind) = self.lookup(id)?;
        metrics.get(name, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_rejects_non_positive_increments() {
        let metrics = Metrics::new();
        let mut ids = MetricIds::default();
        let c = ids.define(&metrics, MetricKind::Counter, "c");
        assert_eq!(ids.increment(&metrics, c, 0), Err(Status::BadArgument));
        assert_eq!(ids.increment(&metrics, c, -1), Err(Status::BadArgument));
        ids.increment(&metrics, c, 2).unwrap();
        assert_eq!(ids.get(&metrics, c), Ok(2));
    }

    #[test]
    fn histogram_get_is_a_bad_argument_and_unknown_id_not_found() {
        let metrics = Metrics::new();
        let mut ids = MetricIds::default();
        let h = ids.define(&metrics, MetricKind::Histogram, "h");
        ids.record(&metrics, h, 7).unwrap();
        assert_eq!(ids.get(&metrics, h), Err(Status::BadArgument));
        assert_eq!(ids.increment(&metrics, h, 1), Err(Status::BadArgument));
        assert_eq!(ids.get(&metrics, 4000), Err(Status::NotFound));
    }

    #[test]
    fn ids_encode_the_kind_and_redefinition_shares_the_stat() {
        let metrics = Metrics::new();
        let mut a = MetricIds::default();
        let mut b = MetricIds::default();
        let g1 = a.define(&metrics, MetricKind::Gauge, "g");
        let g2 = b.define(&metrics, MetricKind::Gauge, "g");
        assert_eq!(g1 & 3, 1);
        a.increment(&metrics, g1, 5).unwrap();
        b.increment(&metrics, g2, -2).unwrap();
        assert_eq!(metrics.value("g"), Some(3));
    }
}
