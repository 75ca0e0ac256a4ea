//! What every terminal listener limits the same way, whatever protocol it
//! speaks (gRPC today, ISO 8583 next): how many connections are open, over
//! all and per terminal ([`Connections`]), and how fast each terminal may
//! call ([`RateLimiter`], the token-bucket rule of `switch_core::rate`
//! keyed by the certificate's terminal id, with per-merchant overrides).
//! Nothing here knows gRPC: a listener maps a refusal to its own answer
//! (`RESOURCE_EXHAUSTED`, an ISO response code, a closed socket).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use switch_core::{Admission, RateRule, TokenBucket};
use tokio::time::Instant;

/// Why a connection was not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefused {
    #[error("the gateway already holds its maximum of {limit} connections")]
    TooManyConnections { limit: usize },
    #[error("terminal {terminal_id} already holds its maximum of {limit} connections")]
    TooManyForTerminal { terminal_id: String, limit: usize },
}

impl ConnectionRefused {
    /// A bounded name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectionRefused::TooManyConnections { .. } => "max_connections",
            ConnectionRefused::TooManyForTerminal { .. } => "max_connections_per_terminal",
        }
    }
}

/// The open connections of every listener of one gateway: a connection
/// counts from the moment it is accepted (so handshakes in progress count,
/// and a flood of sockets that never finish one cannot grow without
/// bound), and against its terminal once its certificate names it.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Mutex<Counts>>,
}

struct Counts {
    max_total: usize,
    max_per_terminal: usize,
    total: usize,
    per_terminal: HashMap<String, usize>,
}

impl Connections {
    pub fn new(max_total: usize, max_per_terminal: usize) -> Connections {
        Connections {
            inner: Arc::new(Mutex::new(Counts {
                max_total,
                max_per_terminal,
                total: 0,
                per_terminal: HashMap::new(),
            })),
        }
    }

    /// Counts a just-accepted connection, or refuses it when the gateway is
    /// full. The permit releases the count when dropped.
    pub fn open(&self) -> Result<ConnectionPermit, ConnectionRefused> {
        let mut counts = self.lock();
        if counts.total >= counts.max_total {
            return Err(ConnectionRefused::TooManyConnections {
                limit: counts.max_total,
            });
        }
        counts.total += 1;
        Ok(ConnectionPermit {
            connections: self.clone(),
            terminal_id: None,
        })
    }

    /// Connections open now, handshakes included.
    pub fn open_count(&self) -> usize {
        self.lock().total
    }

    /// Connections open now for `terminal_id`.
    pub fn open_for(&self, terminal_id: &str) -> usize {
        self.lock()
            .per_terminal
            .get(terminal_id)
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Every update leaves the counts consistent: a panic elsewhere
        // while holding the lock does not corrupt them.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One counted connection.
pub struct ConnectionPermit {
    connections: Connections,
    terminal_id: Option<String>,
}

impl ConnectionPermit {
    /// Counts the connection against `terminal_id` (once its certificate
    /// is verified), or refuses it when that terminal is at its maximum.
    pub fn identify(&mut self, terminal_id: &str) -> Result<(), ConnectionRefused> {
        if self.terminal_id.is_some() {
            return Ok(());
        }
        let mut counts = self.connections.lock();
        let limit = counts.max_per_terminal;
        let open = counts
            .per_terminal
            .entry(terminal_id.to_owned())
            .or_insert(0);
        if *open >= limit {
            if *open == 0 {
                counts.per_terminal.remove(terminal_id);
            }
            return Err(ConnectionRefused::TooManyForTerminal {
                terminal_id: terminal_id.to_owned(),
                limit,
            });
        }
        *open += 1;
        self.terminal_id = Some(terminal_id.to_owned());
        Ok(())
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.connections.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(terminal_id) = self.terminal_id.take()
            && let Some(open) = counts.per_terminal.get_mut(&terminal_id)
        {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.per_terminal.remove(&terminal_id);
            }
        }
    }
}

/// The request-rate rules: one default, and overrides per merchant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRules {
    pub default: RateRule,
    pub merchants: HashMap<String, RateRule>,
}

impl RateRules {
    /// The rule of a terminal of `merchant_id`.
    pub fn for_merchant(&self, merchant_id: &str) -> RateRule {
        self.merchants
            .get(merchant_id)
            .copied()
            .unwrap_or(self.default)
    }
}

/// A refusal of the rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub rule: RateRule,
    pub retry_after_ms: u64,
}

/// Buckets kept before the full ones (terminals idle long enough to have
/// refilled, which a fresh bucket would equal) are dropped: terminal ids
/// come from certificates the acquirer issued, so this is a safety net,
/// not a working limit.
const PRUNE_AT: usize = 100_000;

/// One token bucket per terminal, shared by every listener of the gateway
/// (so a terminal cannot double its rate by calling over both edges).
#[derive(Clone)]
pub struct RateLimiter {
    rules: Arc<RateRules>,
    buckets: Arc<Mutex<HashMap<String, TokenBucket>>>,
    epoch: Instant,
}

impl RateLimiter {
    pub fn new(rules: RateRules) -> RateLimiter {
        RateLimiter {
            rules: Arc::new(rules),
            buckets: Arc::new(Mutex::new(HashMap::new())),
            epoch: Instant::now(),
        }
    }

    /// Takes one token from `terminal_id`'s bucket (under its merchant's
    /// rule: `reloaded`, the terminal registry's as last reloaded, over
    /// the configuration's), or says how long to wait.
    pub fn check(
        &self,
        terminal_id: &str,
        merchant_id: &str,
        reloaded: Option<RateRule>,
    ) -> Result<(), RateLimited> {
        let rule = reloaded.unwrap_or_else(|| self.rules.for_merchant(merchant_id));
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= PRUNE_AT && !buckets.contains_key(terminal_id) {
            buckets
                .retain(|_, bucket| bucket.take(rule, now_ms).0.tokens() < u64::from(rule.burst()));
        }
        let bucket = buckets
            .get(terminal_id)
            .copied()
            .unwrap_or_else(|| TokenBucket::full(rule, now_ms));
        let (next, admission) = bucket.take(rule, now_ms);
        buckets.insert(terminal_id.to_owned(), next);
        match admission {
            Admission::Admitted => Ok(()),
            Admission::Limited { retry_after_ms } => Err(RateLimited {
                rule,
                retry_after_ms,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_and_each_terminal_hold_at_most_their_maximum() {
        let connections = Connections::new(3, 2);
        let mut first = connections.open().unwrap();
        let mut second = connections.open().unwrap();
        let mut third = connections.open().unwrap();
        assert_eq!(
            connections.open().err(),
            Some(ConnectionRefused::TooManyConnections { limit: 3 })
        );
        first.identify("TERM0001").unwrap();
        second.identify("TERM0001").unwrap();
        assert_eq!(
            third.identify("TERM0001"),
            Err(ConnectionRefused::TooManyForTerminal {
                terminal_id: "TERM0001".into(),
                limit: 2
            })
        );
        third.identify("TERM0002").unwrap();
        assert_eq!(connections.open_for("TERM0001"), 2);
        drop(first);
        assert_eq!(connections.open_count(), 2);
        assert_eq!(connections.open_for("TERM0001"), 1);
        let mut fourth = connections.open().unwrap();
        fourth.identify("TERM0001").unwrap();
        drop((second, third, fourth));
        assert_eq!(connections.open_count(), 0);
        assert_eq!(connections.open_for("TERM0001"), 0);
    }

    #[test]
    fn a_merchant_override_replaces_the_default_for_its_terminals_only() {
        let strict = RateRule::new(1, 1).unwrap();
        let limiter = RateLimiter::new(RateRules {
            default: RateRule::new(1, 3).unwrap(),
            merchants: HashMap::from([("MERCHANT0000002".to_owned(), strict)]),
        });
        for _ in 0..3 {
            limiter.check("TERM0001", "MERCHANT0000001", None).unwrap();
        }
        assert!(limiter.check("TERM0001", "MERCHANT0000001", None).is_err());
        // Another terminal has its own bucket.
        limiter.check("TERM0002", "MERCHANT0000001", None).unwrap();
        limiter.check("TERM0003", "MERCHANT0000002", None).unwrap();
        let refused = limiter
            .check("TERM0003", "MERCHANT0000002", None)
            .unwrap_err();
        assert_eq!(refused.rule, strict);
        assert!(refused.retry_after_ms > 0);
    }
}
