//! The close step of a run: the merchants' approvals before the cut-off are
//! locked, each is decided on by `switch_core::settlement::ledger::decide`
//! (`CloseWindow`: paid in the window or held with its reason), the
//! payouts are computed by `switch_core::channel_payouts` (card and QR at
//! the merchant's rate for each), the merchant's refund debits completed
//! before the cut-off and not yet netted are deducted by
//! `switch_core::net_refunds`, and the windows, the decisions, the netted
//! debits, the payouts and `settlement.window_closed` events are written in
//! one transaction.

use std::collections::BTreeMap;

use sqlx::FromRow;
use switch_core::settlement::ledger;
use switch_core::{Channel, Currency, FeeRates, LedgerCommand, LedgerEffect, Money, RefundDebit};
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
    /// Has an order at a QR platform. A card sale labelled `qr` (the label
    /// authorization keeps for its acknowledgement window) went through
    /// the card scheme and pays the card rate.
    qr_payment: bool,
}

impl Candidate {
    /// Its amount and the channel whose rate it pays.
    fn money(&self) -> Result<(Money, Channel), CorruptRow> {
        let currency = Currency::parse(&self.currency).map_err(|e| CorruptRow {
            transaction_id: self.ledger.transaction_id,
            reason: e.to_string(),
        })?;
        let channel = if self.qr_payment {
            Channel::Qr
        } else {
            Channel::Card
        };
        Ok((Money::new(self.amount_minor, currency), channel))
    }
}

/// A refund debit waiting to be netted, locked.
#[derive(Debug, FromRow)]
struct WaitingDebit {
    refund_id: String,
    transaction_id: Uuid,
    merchant_id: String,
    amount_minor: i64,
    currency: String,
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
    refund_counts: Vec<i64>,
    refunds: Vec<i64>,
    references: Vec<String>,
}

/// One merchant's window as the run computes it.
struct ClosingWindow {
    window_id: Uuid,
    merchant_id: String,
    sequence: i64,
    fee_basis_points: u16,
    qr_fee_basis_points: u16,
    paid: Vec<Uuid>,
    held: Vec<(Uuid, &'static str)>,
    payouts: Vec<switch_core::Payout>,
    /// Refund debits deducted from this window's payouts.
    netted: Vec<String>,
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
                    hold_reason, merchant_id, amount_minor, currency, \
                    qr_order_id IS NOT NULL AS qr_payment \
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
        // Oldest first, as `net_refunds` takes them; locked with the
        // approvals, so the debits netted are exactly the ones this
        // transaction marks.
        let debits: Vec<WaitingDebit> = sqlx::query_as(
            "SELECT refund_id, transaction_id, merchant_id, amount_minor, currency \
             FROM refund_debits \
             WHERE window_id IS NULL AND merchant_id = ANY($1) AND completed_at < $2 \
             ORDER BY merchant_id, completed_at, refund_id FOR UPDATE",
        )
        .bind(&merchant_ids)
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        let mut debits_of: BTreeMap<&str, Vec<RefundDebit<String>>> = BTreeMap::new();
        for debit in &debits {
            let currency = Currency::parse(&debit.currency).map_err(|e| CorruptRow {
                transaction_id: debit.transaction_id,
                reason: format!("refund debit {}: {e}", debit.refund_id),
            })?;
            debits_of
                .entry(debit.merchant_id.as_str())
                .or_default()
                .push(RefundDebit {
                    key: debit.refund_id.clone(),
                    amount: Money::new(debit.amount_minor, currency),
                });
        }

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
            let rates = FeeRates {
                card: terms.fee,
                qr: terms.qr_fee,
            };
            let gross = switch_core::channel_payouts(&amounts, rates);
            let netting = switch_core::net_refunds(
                &gross,
                debits_of.get(*merchant_id).map_or(&[][..], Vec::as_slice),
            );
            windows.push(ClosingWindow {
                window_id: Uuid::now_v7(),
                merchant_id: (*merchant_id).to_owned(),
                sequence: sequences.get(*merchant_id).copied().unwrap_or(0) + 1,
                fee_basis_points: terms.fee.basis_points(),
                qr_fee_basis_points: terms.qr_fee.basis_points(),
                payouts: netting.payouts,
                netted: netting.netted,
                paid,
                held,
            });
        }

        let window_ids: Vec<Uuid> = windows.iter().map(|w| w.window_id).collect();
        sqlx::query(
            "INSERT INTO windows (window_id, merchant_id, sequence, run_id, cutoff_at, state, \
                fee_basis_points, held_count, closed_at, qr_fee_basis_points) \
             SELECT w, m, s, $4, $5, 'closed', f, h, $8, q \
             FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $6::int[], $7::bigint[], \
                $9::int[]) AS u(w, m, s, f, h, q)",
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
        .bind(
            windows
                .iter()
                .map(|w| i32::from(w.qr_fee_basis_points))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;

        let (netted_ids, netted_windows): (Vec<&str>, Vec<Uuid>) = windows
            .iter()
            .flat_map(|w| w.netted.iter().map(move |id| (id.as_str(), w.window_id)))
            .unzip();
        sqlx::query(
            "UPDATE refund_debits r SET window_id = u.w \
             FROM UNNEST($1::text[], $2::uuid[]) AS u(id, w) WHERE r.refund_id = u.id",
        )
        .bind(&netted_ids)
        .bind(&netted_windows)
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
                columns
                    .refund_counts
                    .push(i64::try_from(payout.refund_count).unwrap_or(i64::MAX));
                columns.refunds.push(payout.refund_minor_units);
                columns.references.push(payout_reference(
                    &window.merchant_id,
                    window.sequence,
                    payout.currency,
                ));
            }
        }
        sqlx::query(
            "INSERT INTO payouts (window_id, currency, transaction_count, gross_minor_units, \
                fee_minor_units, net_minor_units, reference, refund_count, refund_minor_units) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], \
                $5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[])",
        )
        .bind(&columns.window_ids)
        .bind(&columns.currencies)
        .bind(&columns.counts)
        .bind(&columns.gross)
        .bind(&columns.fees)
        .bind(&columns.net)
        .bind(&columns.references)
        .bind(&columns.refund_counts)
        .bind(&columns.refunds)
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
            refunds_netted = netted_ids.len(),
            "Settlement windows closed."
        );
        Ok(Some(run_id))
    }
}
