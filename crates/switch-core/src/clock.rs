//! Time as a port. Every decision takes `now` as an argument; services get
//! it from one [`Clock`], so a deadline computed and a deadline compared use
//! the same clock, and tests move time by hand instead of sleeping.
//!
//! The wall clock is read here and nowhere else: `clippy.toml` bans
//! `OffsetDateTime::now_utc` and `SystemTime::now` outside this module.

use std::sync::{Arc, Mutex};

use time::{Duration, OffsetDateTime};

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> OffsetDateTime;
}

/// The shared handle services pass around.
pub type SharedClock = Arc<dyn Clock>;

/// The machine's UTC wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// A shared handle on the wall clock.
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // The one place the wall clock is read.
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told: for tests and the simulation.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
}

impl ManualClock {
    pub fn starting_at(now: OffsetDateTime) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(now)),
        }
    }

    pub fn set(&self, now: OffsetDateTime) {
        *self.lock() = now;
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now += by;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OffsetDateTime> {
        // A panic while holding the lock cannot leave a half-written
        // timestamp behind, so a poisoned lock is still a good one.
        self.now.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::starting_at(datetime!(2026-12-01 10:00 UTC));
        assert_eq!(clock.now(), datetime!(2026-12-01 10:00 UTC));
        clock.advance(Duration::milliseconds(1_500));
        assert_eq!(clock.now(), datetime!(2026-12-01 10:00:01.5 UTC));
        let shared: SharedClock = Arc::new(clock.clone());
        clock.set(datetime!(2026-12-02 00:00 UTC));
        assert_eq!(shared.now(), datetime!(2026-12-02 00:00 UTC));
    }

    #[test]
    fn system_clock_is_utc() {
        assert_eq!(SystemClock.now().offset(), time::UtcOffset::UTC);
    }
}
