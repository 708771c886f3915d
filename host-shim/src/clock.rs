//! The shim's clock: the system clock, or a manual one that tests advance
//! without sleeping. Guests read it through `proxy_get_current_time_nanoseconds`
//! and WASI's clocks; timers (ticks, http call timeouts) fire against it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A clock shared by every worker of a host. Cloning shares the same time.
///
/// ```
/// use drainpipe_shim::Clock;
/// use std::time::Duration;
///
/// let clock = Clock::manual(1_700_000_000_000);
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.unix_ms(), 1_700_000_001_500);
/// ```
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<ClockKind>,
}

#[derive(Debug)]
enum ClockKind {
    System {
        start: Instant,
    },
    Manual {
        unix_nanos: AtomicU64,
        mono_nanos: AtomicU64,
    },
}

impl Clock {
    /// The real time.
    pub fn system() -> Self {
        Clock {
            inner: Arc::new(ClockKind::System {
                start: Instant::now(),
            }),
        }
    }

    /// A clock that stands still at `unix_ms` until [`Clock::advance`].
    pub fn manual(unix_ms: u64) -> Self {
        Clock {
            inner: Arc::new(ClockKind::Manual {
                unix_nanos: AtomicU64::new(unix_ms.saturating_mul(1_000_000)),
                mono_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Whether this clock only moves when advanced.
    pub fn is_manual(&self) -> bool {
        matches!(*self.inner, ClockKind::Manual { .. })
    }

    /// Moves a manual clock forward; does nothing on the system clock.
    pub fn advance(&self, by: Duration) {
        if let ClockKind::Manual {
            unix_nanos,
            mono_nanos,
        } = &*self.inner
        {
            let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            unix_nanos.fetch_add(nanos, Ordering::SeqCst);
            mono_nanos.fetch_add(nanos, Ordering::SeqCst);
        }
    }

    /// Wall-clock time in nanoseconds since the Unix epoch.
    pub fn unix_nanos(&self) -> u64 {
        match &*self.inner {
            ClockKind::System { .. } => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            ClockKind::Manual { unix_nanos, .. } => unix_nanos.load(Ordering::SeqCst),
        }
    }

    /// Wall-clock time in milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> u64 {
        self.unix_nanos() / 1_000_000
    }

    /// Monotonic time in nanoseconds since the clock was made.
    pub fn monotonic_nanos(&self) -> u64 {
        match &*self.inner {
            ClockKind::System { start } => {
                u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
            }
            ClockKind::Manual { mono_nanos, .. } => mono_nanos.load(Ordering::SeqCst),
        }
    }
}

/// WASI's wall clock, read from the shim's clock.
pub(crate) struct WasiWallClock(pub(crate) Clock);

impl wasmtime_wasi::HostWallClock for WasiWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.unix_nanos())
    }
}

/// WASI's monotonic clock, read from the shim's clock.
pub(crate) struct WasiMonotonicClock(pub(crate) Clock);

impl wasmtime_wasi::HostMonotonicClock for WasiMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.0.monotonic_nanos()
    }
}
