//! "At most once a period" for the side work of a service's loops (a gauge
//! read, a pruning statement) that must not run on every wake-up: a loop
//! woken per request would otherwise run them back to back.

use std::time::{Duration, Instant};

/// When a loop's side work is next due.
#[derive(Debug, Clone, Copy)]
pub struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    /// Due at once, then once per `period`.
    pub fn new(period: Duration) -> Every {
        Every { period, last: None }
    }

    /// Due first one `period` from now.
    pub fn after(period: Duration) -> Every {
        Every {
            period,
            last: Some(Instant::now()),
        }
    }

    /// Whether the work is due now; if so, it counts as done now.
    pub fn due(&mut self) -> bool {
        if self.last.is_some_and(|at| at.elapsed() < self.period) {
            return false;
        }
        self.last = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_at_once_then_not_again_within_the_period() {
        let mut every = Every::new(Duration::from_secs(3600));
        assert!(every.due());
        assert!(!every.due());
        assert!(!Every::after(Duration::from_secs(3600)).due());
        let mut always = Every::new(Duration::ZERO);
        assert!(always.due() && always.due());
    }
}
