//! The issuer's own ledger: every RRN it decided and what it holds for it.
//! In memory by default; in PostgreSQL when configured, so that it outlives
//! the simulator's process and an audit can read it beside the switch's
//! tables. Either way an entry is written before the answer is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sqlx::PgPool;

/// What the issuer holds for one RRN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Funds {
    Held(i64),
    Released(i64),
    Declined,
}

impl Funds {
    fn state(self) -> &'static str {
        match self {
            Funds::Held(_) => "held",
            Funds::Released(_) => "released",
            Funds::Declined => "declined",
        }
    }

    fn held_minor(self) -> i64 {
        match self {
            Funds::Held(held) | Funds::Released(held) => held,
            Funds::Declined => 0,
        }
    }

    fn from_row(state: &str, held_minor: i64) -> Result<Funds, LedgerError> {
        match state {
            "held" => Ok(Funds::Held(held_minor)),
            "released" => Ok(Funds::Released(held_minor)),
            "declined" => Ok(Funds::Declined),
            other => Err(LedgerError::Corrupt(format!("unknown state '{other}'"))),
        }
    }
}

/// One RRN's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub funds: Funds,
    /// Reversal requests answered for it, repeats included.
    pub reversal_requests: u32,
    /// Reversals that found the funds already released and were not flagged
    /// as repeats: an independent second reversal of the same original.
    pub unflagged_repeats: u32,
}

impl Entry {
    fn new(funds: Funds) -> Entry {
        Entry {
            funds,
            reversal_requests: 0,
            unflagged_repeats: 0,
        }
    }

    /// A reversal of this RRN: a hold is released (once); a repeat of a
    /// released one changes nothing but the counts. Returns whether the
    /// funds had been released (or never held) already.
    fn reverse(&mut self, repeat: bool) -> bool {
        self.reversal_requests += 1;
        match self.funds {
            Funds::Held(held) => {
                self.funds = Funds::Released(held);
                false
            }
            Funds::Released(_) => {
                if !repeat {
                    self.unflagged_repeats += 1;
                }
                true
            }
            Funds::Declined => true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("issuer ledger unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error("issuer ledger corrupt: {0}")]
    Corrupt(String),
}

/// The ledger; cloning shares it.
#[derive(Debug, Clone)]
pub enum Ledger {
    Memory(Arc<Mutex<HashMap<String, Entry>>>),
    Database(PgPool),
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::Memory(Arc::default())
    }
}

impl Ledger {
    /// Records the decision for `rrn`; a repeated authorization of the same
    /// RRN keeps the first entry.
    pub async fn record(
        &self,
        rrn: &str,
        stan: &str,
        funds: Funds,
        code: &str,
    ) -> Result<(), LedgerError> {
        match self {
            Ledger::Memory(entries) => {
                lock(entries)
                    .entry(rrn.to_owned())
                    .or_insert(Entry::new(funds));
                Ok(())
            }
            Ledger::Database(pool) => {
                sqlx::query(
                    "INSERT INTO issuer_ledger (rrn, stan, state, held_minor, response_code) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (rrn) DO NOTHING",
                )
                .bind(rrn)
                .bind(stan)
                .bind(funds.state())
                .bind(funds.held_minor())
                .bind(code)
                .execute(pool)
                .await?;
                Ok(())
            }
        }
    }

    /// Applies a reversal of `rrn`: `None` when the issuer never decided it
    /// (the original never arrived, or is still being held back); else
    /// whether the funds had been released already.
    pub async fn reverse(&self, rrn: &str, repeat: bool) -> Result<Option<bool>, LedgerError> {
        match self {
            Ledger::Memory(entries) => Ok(lock(entries).get_mut(rrn).map(|e| e.reverse(repeat))),
            Ledger::Database(pool) => {
                let mut tx = pool.begin().await?;
                let Some(mut entry) = select(&mut tx, rrn, " FOR UPDATE").await? else {
                    return Ok(None);
                };
                let already = entry.reverse(repeat);
                sqlx::query(
                    "UPDATE issuer_ledger SET state = $2, reversal_requests = $3, \
                        unflagged_repeats = $4, \
                        released_at = CASE WHEN $2 = 'released' THEN coalesce(released_at, now()) END \
                     WHERE rrn = $1",
                )
                .bind(rrn)
                .bind(entry.funds.state())
                .bind(i32::try_from(entry.reversal_requests).unwrap_or(i32::MAX))
                .bind(i32::try_from(entry.unflagged_repeats).unwrap_or(i32::MAX))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(already))
            }
        }
    }

    /// The entry of `rrn`, if the issuer decided it.
    pub async fn entry(&self, rrn: &str) -> Result<Option<Entry>, LedgerError> {
        match self {
            Ledger::Memory(entries) => Ok(lock(entries).get(rrn).copied()),
            Ledger::Database(pool) => {
                let mut conn = pool.acquire().await?;
                select(&mut conn, rrn, "").await
            }
        }
    }
}

async fn select(
    conn: &mut sqlx::PgConnection,
    rrn: &str,
    lock: &str,
) -> Result<Option<Entry>, LedgerError> {
    let row: Option<(String, i64, i32, i32)> = sqlx::query_as(&format!(
        "SELECT state, held_minor, reversal_requests, unflagged_repeats \
         FROM issuer_ledger WHERE rrn = $1{lock}"
    ))
    .bind(rrn)
    .fetch_optional(conn)
    .await?;
    row.map(|(state, held, requests, unflagged)| {
        Ok(Entry {
            funds: Funds::from_row(&state, held)?,
            reversal_requests: u32::try_from(requests).unwrap_or_default(),
            unflagged_repeats: u32::try_from(unflagged).unwrap_or_default(),
        })
    })
    .transpose()
}

/// Every change is one insert or update of a map entry, which a panic
/// cannot leave half done: a poisoned lock is usable.
fn lock(entries: &Mutex<HashMap<String, Entry>>) -> MutexGuard<'_, HashMap<String, Entry>> {
    entries.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reversal_releases_a_hold_once_and_counts_unflagged_repeats() {
        let mut entry = Entry::new(Funds::Held(1_000));
        assert!(!entry.reverse(false));
        assert_eq!(entry.funds, Funds::Released(1_000));
        assert!(entry.reverse(true));
        assert_eq!(entry.unflagged_repeats, 0);
        assert!(entry.reverse(false));
        assert_eq!((entry.reversal_requests, entry.unflagged_repeats), (3, 1));
        assert_eq!(entry.funds, Funds::Released(1_000));
    }

    #[test]
    fn a_decline_holds_nothing_to_release() {
        let mut entry = Entry::new(Funds::Declined);
        assert!(entry.reverse(false));
        assert_eq!((entry.funds, entry.unflagged_repeats), (Funds::Declined, 0));
    }
}
