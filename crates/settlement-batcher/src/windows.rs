//! Settlement windows: at a merchant's cut-off its open window closes,
//! every confirmed, unflagged approval in it is paid (gross, fee once per
//! currency, net), anything unresolved is held and carried to the next
//! window with its reason, and a payout file pair (CSV and ISO 20022
//! pain.001) is written for the run.
//!
//! A run commits in two steps so a crash between them loses nothing: the
//! close (windows, assignments, payouts, `settlement.window_closed`
//! events) in one transaction, then the files, then `settled` with the
//! `settlement.merchant_paid` events in another. Windows left `closed` by a
//! crash are settled by the next scheduler tick; the files are rendered
//! from the stored payouts, so a retry writes the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sqlx::FromRow;
use switch_core::{
    Currency, Eligibility, HoldReason, Money, PayoutAccount, PayoutInstruction, PayoutRun,
};
use switch_platform::outbox::{self, OutboxRelay};
use switch_platform::timestamps::from_time;
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{self as pb, MerchantPayout, WindowSummary};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::config::SettlementConfig;
use crate::events::outbox_message;
use crate::metrics::Metrics;
use crate::store::CorruptRow;

/// How many times a run is retried when an approval changed between its
/// read and its write (a conflict flagged meanwhile), or when the database
/// chose the run as a deadlock victim against the event consumer (which
/// updates the same rows in event order): the next attempt reads again.
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
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub run_id: Option<Uuid>,
    pub windows: Vec<WindowSummary>,
    pub csv_path: Option<PathBuf>,
    pub pain001_path: Option<PathBuf>,
}

#[derive(Debug, FromRow)]
struct Candidate {
    transaction_id: Uuid,
    merchant_id: String,
    status: String,
    reversal_reason: Option<String>,
    conflict: Option<String>,
    amount_minor: i64,
    currency: String,
}

impl Candidate {
    fn eligibility(&self) -> Result<Eligibility, CorruptRow> {
        let corrupt = |reason: String| CorruptRow {
            transaction_id: self.transaction_id,
            reason,
        };
        let status = match self.status.as_str() {
            "unconfirmed" => switch_core::HostStatus::Unconfirmed,
            "confirmed" => switch_core::HostStatus::Confirmed,
            "reversal_pending" | "reversed" => switch_core::HostStatus::Reversed {
                reason: self
                    .reversal_reason
                    .as_deref()
                    .and_then(|r| switch_core::ReversalReason::parse(r).ok())
                    .unwrap_or(switch_core::ReversalReason::NoTerminalAcknowledgement),
                completed: self.status == "reversed",
            },
            other => return Err(corrupt(format!("unknown status '{other}'"))),
        };
        Ok(switch_core::eligibility(status, self.conflict.is_some()))
    }

    fn money(&self) -> Result<Money, CorruptRow> {
        let currency = Currency::parse(&self.currency).map_err(|e| CorruptRow {
            transaction_id: self.transaction_id,
            reason: e.to_string(),
        })?;
        Ok(Money::new(self.amount_minor, currency))
    }
}

/// Payout rows as the columns of one bulk insert.
#[derive(Default)]
struct PayoutColumns {
    window_ids: Vec<Uuid>,
    currencies: Vec<String>,
    counts: Vec<i64>,
    gross: Vec<i64>,
    fees: Vec<i64>,
    net: Vec<i64>,
    references: Vec<String>,
}

/// One merchant's window as the run computes it.
struct ClosingWindow {
    window_id: Uuid,
    merchant_id: String,
    sequence: i64,
    fee_basis_points: u16,
    paid: Vec<Uuid>,
    held: Vec<(Uuid, &'static str)>,
    payouts: Vec<switch_core::Payout>,
}

#[derive(Debug, FromRow)]
struct StoredPayout {
    window_id: Uuid,
    merchant_id: String,
    sequence: i64,
    cutoff_at: OffsetDateTime,
    fee_basis_points: i32,
    held_count: i64,
    currency: Option<String>,
    transaction_count: Option<i64>,
    gross_minor_units: Option<i64>,
    fee_minor_units: Option<i64>,
    net_minor_units: Option<i64>,
    reference: Option<String>,
}

impl Settler {
    pub fn new(
        pool: sqlx::PgPool,
        config: SettlementConfig,
        topic: String,
        relay: OutboxRelay,
        metrics: Metrics,
    ) -> Self {
        Settler {
            pool,
            config,
            topic,
            relay,
            metrics,
        }
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

    /// Merchants whose cut-off passed since their last window, each with
    /// the cut-off instant that is due, as of `now`.
    pub async fn due(
        &self,
        now: OffsetDateTime,
    ) -> Result<BTreeMap<OffsetDateTime, Vec<String>>, SettleError> {
        let rows: Vec<(String, Option<OffsetDateTime>)> = sqlx::query_as(
            "SELECT m.merchant_id, (SELECT max(cutoff_at) FROM windows w WHERE w.merchant_id = m.merchant_id) \
             FROM (SELECT DISTINCT merchant_id FROM transactions \
                   WHERE window_id IS NULL AND status <> 'reversed') m",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut due: BTreeMap<OffsetDateTime, Vec<String>> = BTreeMap::new();
        for (merchant_id, last_cutoff) in rows {
            let terms = self.config.terms_for(&merchant_id);
            let today = now.date().with_time(terms.cutoff).assume_utc();
            let latest = if today <= now {
                today
            } else {
                today - Duration::DAY
            };
            if last_cutoff.is_none_or(|last| last < latest) {
                due.entry(latest).or_default().push(merchant_id);
            }
        }
        Ok(due)
    }

    /// The close step; `None` when no merchant had anything before the cut-off.
    async fn close_windows(
        &self,
        merchants: &[String],
        cutoff: OffsetDateTime,
    ) -> Result<Option<Uuid>, SettleError> {
        let mut tx = self.pool.begin().await?;
        // One run at a time: replicas' schedulers and an operator's run
        // must not close the same window twice.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('settlement-run', 0))")
            .execute(&mut *tx)
            .await?;
        let candidates: Vec<Candidate> = sqlx::query_as(
            "SELECT transaction_id, merchant_id, status, reversal_reason, conflict, amount_minor, \
                    currency \
             FROM transactions \
             WHERE window_id IS NULL AND status <> 'reversed' AND approved_at < $1 \
               AND (cardinality($2::text[]) = 0 OR merchant_id = ANY($2))",
        )
        .bind(cutoff)
        .bind(merchants)
        .fetch_all(&mut *tx)
        .await?;
        if candidates.is_empty() {
            return Ok(None);
        }
        let mut by_merchant: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
        for candidate in &candidates {
            by_merchant
                .entry(candidate.merchant_id.as_str())
                .or_default()
                .push(candidate);
        }
        let merchant_ids: Vec<String> = by_merchant.keys().map(|m| (*m).to_owned()).collect();
        let sequences: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT merchant_id, max(sequence) FROM windows WHERE merchant_id = ANY($1) \
             GROUP BY merchant_id",
        )
        .bind(&merchant_ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

        let run_id = Uuid::now_v7();
        let mut windows = Vec::with_capacity(by_merchant.len());
        for (merchant_id, rows) in &by_merchant {
            let terms = self.config.terms_for(merchant_id);
            let mut paid = Vec::new();
            let mut amounts = Vec::new();
            let mut held = Vec::new();
            for row in rows {
                match row.eligibility()? {
                    Eligibility::Payable => {
                        paid.push(row.transaction_id);
                        amounts.push(row.money()?);
                    }
                    Eligibility::Held(reason) => held.push((row.transaction_id, hold_name(reason))),
                    Eligibility::NotPayable => {}
                }
            }
            windows.push(ClosingWindow {
                window_id: Uuid::now_v7(),
                merchant_id: (*merchant_id).to_owned(),
                sequence: sequences.get(*merchant_id).copied().unwrap_or(0) + 1,
                fee_basis_points: terms.fee.basis_points(),
                payouts: switch_core::payouts(&amounts, terms.fee),
                paid,
                held,
            });
        }

        let window_ids: Vec<Uuid> = windows.iter().map(|w| w.window_id).collect();
        sqlx::query(
            "INSERT INTO windows (window_id, merchant_id, sequence, run_id, cutoff_at, state, \
                fee_basis_points, held_count) \
             SELECT w, m, s, $4, $5, 'closed', f, h \
             FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $6::int[], $7::bigint[]) \
                AS u(w, m, s, f, h)",
        )
        .bind(&window_ids)
        .bind(
            windows
                .iter()
                .map(|w| w.merchant_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(windows.iter().map(|w| w.sequence).collect::<Vec<_>>())
        .bind(run_id)
        .bind(cutoff)
        .bind(
            windows
                .iter()
                .map(|w| i32::from(w.fee_basis_points))
                .collect::<Vec<_>>(),
        )
        .bind(
            windows
                .iter()
                .map(|w| i64::try_from(w.held.len()).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;

        let (paid_ids, paid_windows): (Vec<Uuid>, Vec<Uuid>) = windows
            .iter()
            .flat_map(|w| w.paid.iter().map(move |id| (*id, w.window_id)))
            .unzip();
        // The guard repeats the eligibility rule's preconditions: a row
        // flagged since it was read is not paid, and the run starts over.
        let assigned = sqlx::query(
            "UPDATE transactions t SET window_id = u.w, hold_reason = NULL, updated_at = now() \
             FROM UNNEST($1::uuid[], $2::uuid[]) AS u(id, w) \
             WHERE t.transaction_id = u.id AND t.window_id IS NULL \
               AND t.status = 'confirmed' AND t.conflict IS NULL",
        )
        .bind(&paid_ids)
        .bind(&paid_windows)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if assigned != paid_ids.len() as u64 {
            tx.rollback().await?;
            return Err(SettleError::Contended);
        }
        let (held_ids, held_reasons): (Vec<Uuid>, Vec<&str>) =
            windows.iter().flat_map(|w| w.held.iter().copied()).unzip();
        sqlx::query(
            "UPDATE transactions t SET hold_reason = u.r, updated_at = now() \
             FROM UNNEST($1::uuid[], $2::text[]) AS u(id, r) WHERE t.transaction_id = u.id",
        )
        .bind(&held_ids)
        .bind(&held_reasons)
        .execute(&mut *tx)
        .await?;

        let mut columns = PayoutColumns::default();
        for window in &windows {
            for payout in &window.payouts {
                columns.window_ids.push(window.window_id);
                columns.currencies.push(payout.currency.code().to_owned());
                columns
                    .counts
                    .push(i64::try_from(payout.transaction_count).unwrap_or(i64::MAX));
                columns.gross.push(payout.gross_minor_units);
                columns.fees.push(payout.fee_minor_units);
                columns.net.push(payout.net_minor_units);
                columns.references.push(payout_reference(
                    &window.merchant_id,
                    window.sequence,
                    payout.currency,
                ));
            }
        }
        sqlx::query(
            "INSERT INTO payouts (window_id, currency, transaction_count, gross_minor_units, \
                fee_minor_units, net_minor_units, reference) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], \
                $5::bigint[], $6::bigint[], $7::text[])",
        )
        .bind(&columns.window_ids)
        .bind(&columns.currencies)
        .bind(&columns.counts)
        .bind(&columns.gross)
        .bind(&columns.fees)
        .bind(&columns.net)
        .bind(&columns.references)
        .execute(&mut *tx)
        .await?;

        for window in &windows {
            let payload = Payload::SettlementWindowClosed(pb::SettlementWindowClosed {
                merchant_id: window.merchant_id.clone(),
                window_id: window.window_id.to_string(),
                sequence: u64::try_from(window.sequence).unwrap_or(0),
                cutoff: Some(from_time(cutoff)),
                payouts: window
                    .payouts
                    .iter()
                    .map(|p| wire_payout(p, &window.merchant_id, window.sequence))
                    .collect(),
                held_count: i64::try_from(window.held.len()).unwrap_or(i64::MAX),
            });
            let message = outbox_message(
                &self.topic,
                &window.merchant_id,
                "",
                "settlement.window_closed",
                payload,
            );
            outbox::enqueue(&mut tx, &message).await?;
        }
        tx.commit().await?;

        for window in &windows {
            self.metrics.window_closed();
            for (_, reason) in &window.held {
                self.metrics.held(reason, 1);
            }
        }
        tracing::info!(
            %run_id,
            %cutoff,
            windows = windows.len(),
            paid = paid_ids.len(),
            held = held_ids.len(),
            "Settlement windows closed."
        );
        Ok(Some(run_id))
    }

    /// Writes the run's payout files and marks its windows settled.
    async fn settle_run(&self, run_id: Uuid) -> Result<RunReport, SettleError> {
        let rows: Vec<StoredPayout> = sqlx::query_as(
            "SELECT w.window_id, w.merchant_id, w.sequence, w.cutoff_at, w.fee_basis_points, \
                    w.held_count, p.currency, p.transaction_count, p.gross_minor_units, \
                    p.fee_minor_units, p.net_minor_units, p.reference \
             FROM windows w LEFT JOIN payouts p ON p.window_id = w.window_id \
             WHERE w.run_id = $1 ORDER BY w.merchant_id, p.currency",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(RunReport::default());
        };
        let cutoff = first.cutoff_at;

        let mut summaries: Vec<WindowSummary> = Vec::new();
        let mut payouts: Vec<(String, Uuid, switch_core::Payout, String)> = Vec::new();
        for row in &rows {
            if summaries
                .last()
                .is_none_or(|s| s.window_id != row.window_id.to_string())
            {
                summaries.push(WindowSummary {
                    window_id: row.window_id.to_string(),
                    merchant_id: row.merchant_id.clone(),
                    sequence: u64::try_from(row.sequence).unwrap_or(0),
                    cutoff: cutoff.format(&Rfc3339).unwrap_or_default(),
                    payouts: Vec::new(),
                    held_count: row.held_count,
                    fee_basis_points: u32::try_from(row.fee_basis_points).unwrap_or(0),
                });
            }
            let (Some(currency), Some(count), Some(gross), Some(fee), Some(net), Some(reference)) = (
                &row.currency,
                row.transaction_count,
                row.gross_minor_units,
                row.fee_minor_units,
                row.net_minor_units,
                &row.reference,
            ) else {
                continue;
            };
            let currency = Currency::parse(currency).map_err(|e| CorruptRow {
                transaction_id: row.window_id,
                reason: e.to_string(),
            })?;
            let payout = switch_core::Payout {
                currency,
                transaction_count: u64::try_from(count).unwrap_or(0),
                gross_minor_units: gross,
                fee_minor_units: fee,
                net_minor_units: net,
            };
            if let Some(summary) = summaries.last_mut() {
                summary.payouts.push(MerchantPayout {
                    currency: currency.code().into(),
                    transaction_count: count,
                    gross_minor_units: gross,
                    fee_minor_units: fee,
                    net_minor_units: net,
                    payout_reference: reference.clone(),
                });
            }
            payouts.push((
                row.merchant_id.clone(),
                row.window_id,
                payout,
                reference.clone(),
            ));
        }

        let (csv_path, pain001_path) = if payouts.is_empty() {
            (None, None)
        } else {
            let (csv, pain) = self.write_files(run_id, cutoff, &payouts).await?;
            (Some(csv), Some(pain))
        };
        let file_name = pain001_path
            .as_deref()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();

        let mut tx = self.pool.begin().await?;
        let settled = sqlx::query(
            "UPDATE windows SET state = 'settled', settled_at = now(), payout_file = $2 \
             WHERE run_id = $1 AND state = 'closed'",
        )
        .bind(run_id)
        .bind(&file_name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if settled > 0 {
            let paid_at = OffsetDateTime::now_utc();
            for (merchant_id, window_id, payout, reference) in &payouts {
                if payout.net_minor_units <= 0 {
                    continue;
                }
                let payload = Payload::MerchantPaid(pb::MerchantPaid {
                    merchant_id: merchant_id.clone(),
                    window_id: window_id.to_string(),
                    payout: Some(MerchantPayout {
                        currency: payout.currency.code().into(),
                        transaction_count: i64::try_from(payout.transaction_count)
                            .unwrap_or(i64::MAX),
                        gross_minor_units: payout.gross_minor_units,
                        fee_minor_units: payout.fee_minor_units,
                        net_minor_units: payout.net_minor_units,
                        payout_reference: reference.clone(),
                    }),
                    paid_at: Some(from_time(paid_at)),
                    payout_file: file_name.clone(),
                });
                let message = outbox_message(
                    &self.topic,
                    merchant_id,
                    "",
                    "settlement.merchant_paid",
                    payload,
                );
                outbox::enqueue(&mut tx, &message).await?;
                self.metrics
                    .paid(payout.currency.code(), payout.net_minor_units);
            }
        }
        tx.commit().await?;
        Ok(RunReport {
            run_id: Some(run_id),
            windows: summaries,
            csv_path,
            pain001_path,
        })
    }

    async fn write_files(
        &self,
        run_id: Uuid,
        cutoff: OffsetDateTime,
        payouts: &[(String, Uuid, switch_core::Payout, String)],
    ) -> Result<(PathBuf, PathBuf), SettleError> {
        let window_ids: Vec<String> = payouts.iter().map(|p| p.1.to_string()).collect();
        let terms: Vec<_> = payouts
            .iter()
            .map(|(merchant_id, ..)| self.config.terms_for(merchant_id))
            .collect();
        let instructions: Vec<PayoutInstruction<'_>> = payouts
            .iter()
            .zip(&terms)
            .zip(&window_ids)
            .map(
                |(((merchant_id, _, payout, reference), terms), window_id)| PayoutInstruction {
                    end_to_end_id: reference,
                    merchant_id,
                    merchant_name: &terms.name,
                    account: match &terms.iban {
                        Some(iban) => PayoutAccount::Iban(iban),
                        None => PayoutAccount::MerchantAccount(merchant_id),
                    },
                    window_id,
                    payout,
                },
            )
            .collect();
        let message_id = run_id.simple().to_string();
        let run = PayoutRun {
            message_id: &message_id,
            created_at: OffsetDateTime::now_utc(),
            execution_date: cutoff.date() + Duration::DAY,
            debtor_name: &self.config.debtor_name,
            debtor_iban: &self.config.debtor_iban,
            debtor_bic: &self.config.debtor_bic,
        };
        let csv = switch_core::render_csv(&instructions);
        let pain001 = switch_core::render_pain001(&run, &instructions);
        let stem = format!(
            "payouts-{}-{}",
            cutoff
                .format(format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .unwrap_or_default(),
            run_id.simple()
        );
        let dir = self.config.payout_dir.clone();
        tokio::fs::create_dir_all(&dir).await?;
        let csv_path = dir.join(format!("{stem}.csv"));
        let pain_path = dir.join(format!("{stem}.pain001.xml"));
        write_atomically(&csv_path, csv.as_bytes()).await?;
        write_atomically(&pain_path, pain001.as_bytes()).await?;
        Ok((csv_path, pain_path))
    }
}

/// Written to a temporary name and renamed, so a reader never sees half a
/// payout file.
async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("partial");
    tokio::fs::write(&temporary, bytes).await?;
    tokio::fs::rename(&temporary, path).await
}

fn hold_name(reason: HoldReason) -> &'static str {
    reason.as_str()
}

/// The end-to-end id of a payout: merchant, window sequence, currency
/// (at most 15 + 1 + 6 + 1 + 3 characters, within pain.001's 35).
pub fn payout_reference(merchant_id: &str, sequence: i64, currency: Currency) -> String {
    format!("{merchant_id}-{sequence:06}-{}", currency.code())
}

fn wire_payout(payout: &switch_core::Payout, merchant_id: &str, sequence: i64) -> MerchantPayout {
    MerchantPayout {
        currency: payout.currency.code().into(),
        transaction_count: i64::try_from(payout.transaction_count).unwrap_or(i64::MAX),
        gross_minor_units: payout.gross_minor_units,
        fee_minor_units: payout.fee_minor_units,
        net_minor_units: payout.net_minor_units,
        payout_reference: payout_reference(merchant_id, sequence, payout.currency),
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
