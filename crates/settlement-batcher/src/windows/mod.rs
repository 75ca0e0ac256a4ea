//! Settlement windows: at a merchant's cut-off its open window closes,
//! every confirmed, unflagged approval in it is paid (gross, fee once per
//! currency and channel, merchant refunds netted, net), anything
//! unresolved is held and carried to the next window with its reason, and
//! a payout file pair (CSV and ISO 20022
//! pain.001) is written for the run.
//!
//! A run commits in two steps so a crash between them loses nothing: the
//! close (windows, assignments, payouts, `settlement.window_closed`
//! events) in one transaction ([`close`]), then the files, then `settled`
//! with the `settlement.merchant_paid` events in another ([`settle`]).
//! Windows left `closed` by a crash are settled by the next scheduler tick;
//! the files are rendered from the stored windows and payouts (their
//! timestamps and ids are the recorded ones, never a fresh clock reading
//! or id), so a retry writes the same bytes. When a window is due is
//! [`schedule`]'s question, answered by `switch_core::due_cutoff` on the
//! caller's clock.

mod close;
mod schedule;
mod settle;

use std::path::PathBuf;

use switch_core::{Currency, SharedClock};
use switch_platform::outbox::OutboxRelay;
use switch_proto::v1::{MerchantPayout, WindowSummary};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::SettlementConfig;
use crate::metrics::Metrics;
use crate::store::{CorruptRow, LedgerError};

/// How many times a run is retried when an approval changed between its
/// read and its write, or when the database chose the run as a deadlock
/// victim against the event consumer (which locks the same rows in event
/// order): the next attempt reads again.
const RUN_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRow),
    #[error("payout files: {0}")]
    Files(#[from] std::io::Error),
    #[error("approvals changed while the run was closing windows; try again")]
    Contended,
}

impl From<LedgerError> for SettleError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Database(e) => SettleError::Database(e),
            LedgerError::Corrupt(e) => SettleError::Corrupt(e),
        }
    }
}

impl SettleError {
    /// Whether running again can succeed: contention, a deadlock or a
    /// serialization failure.
    pub fn is_transient(&self) -> bool {
        match self {
            SettleError::Contended => true,
            SettleError::Database(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40P01" | "40001"))
            }
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct Settler {
    pool: sqlx::PgPool,
    config: SettlementConfig,
    topic: String,
    relay: OutboxRelay,
    metrics: Metrics,
    /// Every "now" of a run: when windows close and settle, when events
    /// occur, which cut-offs are due.
    clock: SharedClock,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub run_id: Option<Uuid>,
    pub windows: Vec<WindowSummary>,
    pub csv_path: Option<PathBuf>,
    pub pain001_path: Option<PathBuf>,
}

impl Settler {
    pub fn new(
        pool: sqlx::PgPool,
        config: SettlementConfig,
        topic: String,
        relay: OutboxRelay,
        metrics: Metrics,
        clock: SharedClock,
    ) -> Self {
        Settler {
            pool,
            config,
            topic,
            relay,
            metrics,
            clock,
        }
    }

    /// The clock the settler reads "now" from.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Closes the open windows of `merchants` (every merchant with an open
    /// window when empty) at `cutoff` and pays them out.
    pub async fn run(
        &self,
        merchants: &[String],
        cutoff: OffsetDateTime,
    ) -> Result<RunReport, SettleError> {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        let run_id = loop {
            attempt += 1;
            match self.close_windows(merchants, cutoff).await {
                Err(error) if error.is_transient() && attempt < RUN_ATTEMPTS => {
                    tracing::warn!(%error, attempt, "Settlement run contended; retrying.");
                    continue;
                }
                other => break other?,
            }
        };
        let Some(run_id) = run_id else {
            return Ok(RunReport::default());
        };
        let report = self.settle_run(run_id).await?;
        self.relay.wake();
        self.metrics
            .run_finished(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
        Ok(report)
    }

    /// Settles every run a crash left closed but not settled.
    pub async fn settle_pending(&self) -> Result<usize, SettleError> {
        let runs: Vec<Uuid> =
            sqlx::query_scalar("SELECT DISTINCT run_id FROM windows WHERE state = 'closed'")
                .fetch_all(&self.pool)
                .await?;
        for run_id in &runs {
            tracing::warn!(%run_id, "Settling a run left closed by an interrupted settlement.");
            self.settle_run(*run_id).await?;
        }
        if !runs.is_empty() {
            self.relay.wake();
        }
        Ok(runs.len())
    }
}

/// The end-to-end id of a payout: merchant, window sequence, currency
/// (at most 15 + 1 + 6 + 1 + 3 characters, within pain.001's 35).
pub fn payout_reference(merchant_id: &str, sequence: i64, currency: Currency) -> String {
    format!("{merchant_id}-{sequence:06}-{}", currency.code())
}

fn wire_payout(payout: &switch_core::Payout, reference: &str) -> MerchantPayout {
    MerchantPayout {
        currency: payout.currency.code().into(),
        transaction_count: i64::try_from(payout.transaction_count).unwrap_or(i64::MAX),
        gross_minor_units: payout.gross_minor_units,
        fee_minor_units: payout.fee_minor_units,
        net_minor_units: payout.net_minor_units,
        payout_reference: reference.to_owned(),
        refund_count: i64::try_from(payout.refund_count).unwrap_or(i64::MAX),
        refund_minor_units: payout.refund_minor_units,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payout_references_fit_pain001() {
        let reference = payout_reference("MERCHANT0000001", 42, Currency::parse("EUR").unwrap());
        assert_eq!(reference, "MERCHANT0000001-000042-EUR");
        assert!(reference.len() <= 35);
    }
}
