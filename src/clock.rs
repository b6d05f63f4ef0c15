//! Time as the cache sees it. Production code reads [`SystemClock`]; tests
//! drive a [`ManualClock`] forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// A source of "now": monotonic (deadlines) and wall time (hours of the
/// day, for the pattern engine).
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Instant;

    /// Wall time, milliseconds since the Unix epoch.
    fn unix_ms(&self) -> u64 {
        system_unix_ms()
    }
}

/// The machine's wall time, milliseconds since the Unix epoch.
pub fn system_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The machine's monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to. Its wall time starts at the
/// machine's (or at [`ManualClock::starting_at`]) and moves with it.
#[derive(Debug, Clone)]
pub struct ManualClock {
    start: Instant,
    start_unix_ms: u64,
    elapsed_micros: Arc<AtomicU64>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::starting_at(system_unix_ms())
    }
}

impl ManualClock {
    /// A clock whose wall time starts at `unix_ms`.
    pub fn starting_at(unix_ms: u64) -> ManualClock {
        ManualClock {
            start: Instant::now(),
            start_unix_ms: unix_ms,
            elapsed_micros: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.elapsed_micros.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_micros(self.elapsed_micros.load(Ordering::SeqCst))
    }

    fn unix_ms(&self) -> u64 {
        self.start_unix_ms + self.elapsed_micros.load(Ordering::SeqCst) / 1_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::default();
        let before = clock.now();
        assert_eq!(clock.now(), before);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - before, Duration::from_millis(1500));
    }

    #[test]
    fn manual_wall_time_moves_with_the_clock() {
        let clock = ManualClock::starting_at(86_400_000);
        assert_eq!(clock.unix_ms(), 86_400_000);
        clock.advance(Duration::from_secs(3_600));
        assert_eq!(clock.unix_ms(), 86_400_000 + 3_600_000);
    }
}
