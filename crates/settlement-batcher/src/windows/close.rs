//! The close step of a run: the merchants' approvals before the cut-off are
//! locked, each is decided on by `switch_core::settlement::ledger::decide`
//! (`CloseWindow`: paid in the window or held with its reason), and the
//! windows, the decisions, the payouts and `settlement.window_closed`
//! events are written in one transaction.

use std::collections::BTreeMap;

use sqlx::FromRow;
use switch_core::settlement::ledger;
use switch_core::{Currency, LedgerCommand, LedgerEffect, Money};
use switch_platform::outbox;
use switch_platform::timestamps::from_time;
use switch_proto::v1::{self as pb, event_envelope::Payload};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{SettleError, Settler, payout_reference, wire_payout};
use crate::events::outbox_message;
use crate::store::{CorruptRow, LedgerRow};

/// An approval a run may close into a window, locked.
#[derive(Debug, FromRow)]
struct Candidate {
    #[sqlx(flatten)]
    ledger: LedgerRow,
    merchant_id: String,
    amount_minor: i64,
    currency: String,
}

impl Candidate {
    fn money(&self) -> Result<Money, CorruptRow> {
        let currency = Currency::parse(&self.currency).map_err(|e| CorruptRow {
            transaction_id: self.ledger.transaction_id,
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

impl Settler {
    /// The close step; `None` when no merchant had anything before the cut-off.
    pub(super) async fn close_windows(
        &self,
        merchants: &[String],
        cutoff: OffsetDateTime,
    ) -> Result<Option<Uuid>, SettleError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        // One run at a time: replicas' schedulers and an operator's run
        // must not close the same window twice.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('settlement-run', 0))")
            .execute(&mut *tx)
            .await?;
        // Locked, in id order, so the consumer cannot change an approval
        // between this decision and its write. `window_id IS NULL AND
        // status <> 'reversed'` only skips rows the decision would refuse
        // (already paid; never paid), as the index `transactions_unsettled`
        // does.
        let candidates: Vec<Candidate> = sqlx::query_as(
            "SELECT transaction_id, status, reversal_reason, evidence, conflict, window_id, \
                    hold_reason, merchant_id, amount_minor, currency \
             FROM transactions \
             WHERE window_id IS NULL AND status <> 'reversed' AND approved_at < $1 \
               AND (cardinality($2::text[]) = 0 OR merchant_id = ANY($2)) \
             ORDER BY transaction_id FOR UPDATE",
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
                let id = row.ledger.transaction_id;
                let Ok(decision) = ledger::decide(&row.ledger.entry()?, LedgerCommand::CloseWindow)
                else {
                    continue;
                };
                for effect in decision.effects {
                    match effect {
                        LedgerEffect::Pay => {
                            paid.push(id);
                            amounts.push(row.money()?);
                        }
                        LedgerEffect::Hold(reason) => held.push((id, reason.as_str())),
                        LedgerEffect::Advance | LedgerEffect::Flag => {}
                    }
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
                fee_basis_points, held_count, closed_at) \
             SELECT w, m, s, $4, $5, 'closed', f, h, $8 \
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
        .bind(now)
        .execute(&mut *tx)
        .await?;

        let (paid_ids, paid_windows): (Vec<Uuid>, Vec<Uuid>) = windows
            .iter()
            .flat_map(|w| w.paid.iter().map(move |id| (*id, w.window_id)))
            .unzip();
        // The rows are locked: the decisions stand, and every one is written.
        let assigned = sqlx::query(
            "UPDATE transactions t SET window_id = u.w, hold_reason = NULL, updated_at = now() \
             FROM UNNEST($1::uuid[], $2::uuid[]) AS u(id, w) WHERE t.transaction_id = u.id",
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
                    .map(|p| {
                        let reference =
                            payout_reference(&window.merchant_id, window.sequence, p.currency);
                        wire_payout(p, &reference)
                    })
                    .collect(),
                held_count: i64::try_from(window.held.len()).unwrap_or(i64::MAX),
            });
            let message = outbox_message(
                &self.topic,
                &window.merchant_id,
                "",
                "settlement.window_closed",
                payload,
                now,
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
}
