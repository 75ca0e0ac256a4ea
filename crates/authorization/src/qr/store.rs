//! QR payments in PostgreSQL: the storage adapter, deciding nothing. A
//! payment is journaled from `QrPayment::open` before the platform is
//! called; every later change is a `switch_core::qr::decide` decision taken
//! under the row's lock ([`QrJournal::lock`]) and written with its audit
//! row, its owed-call queue entry and its outbox messages in one
//! transaction ([`LockedQr::apply`]). The query schedule is the record's
//! `next_query_at`; "due" is always the caller's `now` (ADR 12).

use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, Postgres, Row, Transaction};
use switch_core::lifecycle::RequestKey;
use switch_core::qr::{
    CancelKind, OrderId, OwedCall, PlatformRequestId, PlatformTxnId, QrDecision, QrEffect, QrMode,
    QrPayment, QrState,
};
use switch_core::{
    Currency, Evidence, InvalidField, LocalDate, MerchantId, Money, OrphanPolicy, ReversalReason,
    Stan, TerminalId, TransactionId,
};
use switch_platform::outbox::{self, OutboxMessage};
use time::OffsetDateTime;

use super::QrError;

const COLUMNS: &str = "transaction_id, terminal_id, stan, local_date, merchant_id, mode, \
    order_id, amount_minor, currency, orphan_policy, state, created_at, terminal_deadline, \
    query_limit_at, next_query_at, queries, code, platform_txn_id, paid_at, acknowledged_at, \
    terminal_gave_up, confirmation_evidence, owed_kind, owed_since, refund_reason, failure, \
    conflict_at";

/// Which payment a command is for.
#[derive(Debug, Clone, Copy)]
pub enum QrTarget<'a> {
    Id(TransactionId),
    Order(&'a OrderId),
}

impl std::fmt::Display for QrTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QrTarget::Id(id) => write!(f, "QR payment {id}"),
            QrTarget::Order(order) => write!(f, "QR order {order}"),
        }
    }
}

pub enum QrBegin {
    /// Journaled now: the caller makes the platform call.
    Started(QrPayment),
    /// The terminal key was journaled before: a retry.
    Existing(QrPayment),
}

/// An owed call claimed for one attempt.
#[derive(Debug, Clone)]
pub struct ClaimedCall {
    pub transaction_id: TransactionId,
    pub kind: CancelKind,
    pub request_id: PlatformRequestId,
    /// Including this one.
    pub attempts: u32,
}

pub struct QrJournal {
    pool: PgPool,
}

/// A payment locked for the rest of a transaction.
pub struct LockedQr {
    tx: Transaction<'static, Postgres>,
    pub current: QrPayment,
}

fn corrupt(error: InvalidField) -> QrError {
    QrError::CorruptRow(error)
}

fn payment(row: &PgRow) -> Result<QrPayment, QrError> {
    let opt = |column: &str| row.try_get::<Option<String>, _>(column);
    let currency: String = row.try_get("currency")?;
    let order_id = OrderId::parse(row.try_get("order_id")?).map_err(corrupt)?;
    let owed = match (
        opt("owed_kind")?,
        row.try_get::<Option<OffsetDateTime>, _>("owed_since")?,
    ) {
        (Some(kind), Some(since)) => {
            let kind = CancelKind::parse(&kind).map_err(corrupt)?;
            Some(OwedCall {
                kind,
                request_id: PlatformRequestId::for_owed(&order_id, kind),
                since,
            })
        }
        _ => None,
    };
    Ok(QrPayment {
        transaction_id: TransactionId::from_uuid(row.try_get("transaction_id")?),
        key: RequestKey {
            terminal_id: TerminalId::parse(row.try_get("terminal_id")?).map_err(corrupt)?,
            stan: Stan::parse(row.try_get("stan")?).map_err(corrupt)?,
            local_date: LocalDate::from_date(row.try_get("local_date")?),
        },
        merchant_id: MerchantId::parse(row.try_get("merchant_id")?).map_err(corrupt)?,
        mode: QrMode::parse(row.try_get("mode")?).map_err(corrupt)?,
        order_id,
        amount: Money::new(
            row.try_get("amount_minor")?,
            Currency::parse(&currency).map_err(corrupt)?,
        ),
        orphan_policy: OrphanPolicy::parse(row.try_get("orphan_policy")?).map_err(corrupt)?,
        state: QrState::parse(row.try_get("state")?).map_err(corrupt)?,
        created_at: row.try_get("created_at")?,
        terminal_deadline: row.try_get("terminal_deadline")?,
        query_limit_at: row.try_get("query_limit_at")?,
        next_query_at: row.try_get("next_query_at")?,
        queries: u32::try_from(row.try_get::<i32, _>("queries")?).unwrap_or(0),
        code: opt("code")?,
        platform_txn: opt("platform_txn_id")?
            .map(|txn| PlatformTxnId::parse(&txn))
            .transpose()
            .map_err(corrupt)?,
        paid_at: row.try_get("paid_at")?,
        acknowledged_at: row.try_get("acknowledged_at")?,
        terminal_gave_up: row.try_get("terminal_gave_up")?,
        confirmation_evidence: opt("confirmation_evidence")?
            .map(|e| Evidence::parse(&e))
            .transpose()
            .map_err(corrupt)?,
        owed,
        refund_reason: opt("refund_reason")?
            .map(|r| ReversalReason::parse(&r))
            .transpose()
            .map_err(corrupt)?,
        failure: opt("failure")?,
        conflict_at: row.try_get("conflict_at")?,
    })
}

pub(super) async fn select<'e>(
    executor: impl PgExecutor<'e>,
    target: QrTarget<'_>,
    for_update: bool,
) -> Result<Option<QrPayment>, QrError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row = match target {
        QrTarget::Id(id) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM qr_payments WHERE transaction_id = $1{lock}"
            ))
            .bind(id.as_uuid())
            .fetch_optional(executor)
            .await?
        }
        QrTarget::Order(order) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM qr_payments WHERE order_id = $1{lock}"
            ))
            .bind(order.as_str())
            .fetch_optional(executor)
            .await?
        }
    };
    row.as_ref().map(payment).transpose()
}

impl QrJournal {
    pub fn new(pool: PgPool) -> Self {
        QrJournal { pool }
    }

    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The platform calls given up on and not redriven, by kind (`cancel`,
    /// `close`, `refund` owed by the lifecycle, `merchant_refund` asked by
    /// an operator): each a shopper who may still be charged. Every kind is
    /// listed, 0 when none is, so a gauge falls back to 0 after a redrive.
    pub async fn dead_lettered_calls(&self) -> Result<Vec<(&'static str, i64)>, QrError> {
        let owed: Vec<(String, i64)> = sqlx::query_as(
            "SELECT kind, count(*) FROM qr_calls WHERE status = 'dead_lettered' GROUP BY kind",
        )
        .fetch_all(&self.pool)
        .await?;
        let refunds: i64 =
            sqlx::query_scalar("SELECT count(*) FROM qr_refunds WHERE state = 'dead_lettered'")
                .fetch_one(&self.pool)
                .await?;
        let mut counts: Vec<(&'static str, i64)> = ["cancel", "close", "refund"]
            .into_iter()
            .map(|kind| {
                let count = owed
                    .iter()
                    .find(|(owed_kind, _)| owed_kind == kind)
                    .map_or(0, |(_, count)| *count);
                (kind, count)
            })
            .collect();
        counts.push(("merchant_refund", refunds));
        Ok(counts)
    }

    /// Deletes up to `limit` notification nonces received before `cutoff`,
    /// oldest first; returns how many went. Bounded, so a backlog is
    /// worked off over rounds without one long-held lock.
    pub async fn prune_nonces(&self, cutoff: OffsetDateTime, limit: i64) -> Result<u64, QrError> {
        Ok(sqlx::query(
            "DELETE FROM qr_notification_nonces WHERE nonce IN ( \
               SELECT nonce FROM qr_notification_nonces WHERE received_at < $1 \
               ORDER BY received_at LIMIT $2)",
        )
        .persistent(false)
        .bind(cutoff)
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Journals the opened record, or finds the earlier one with the same
    /// terminal key (a retry).
    pub async fn begin(&self, record: &QrPayment) -> Result<QrBegin, QrError> {
        let inserted = sqlx::query(&format!(
            "INSERT INTO qr_payments (transaction_id, terminal_id, stan, local_date, merchant_id, \
               mode, order_id, amount_minor, currency, orphan_policy, state, created_at, \
               terminal_deadline, query_limit_at, next_query_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $12) \
             ON CONFLICT (terminal_id, stan, local_date) DO NOTHING RETURNING {COLUMNS}"
        ))
        .bind(record.transaction_id.as_uuid())
        .bind(record.key.terminal_id.as_str())
        .bind(record.key.stan.as_str())
        .bind(record.key.local_date.date())
        .bind(record.merchant_id.as_str())
        .bind(record.mode.as_str())
        .bind(record.order_id.as_str())
        .bind(record.amount.minor_units())
        .bind(record.amount.currency().code())
        .bind(record.orphan_policy.as_str())
        .bind(record.state.as_str())
        .bind(record.created_at)
        .bind(record.terminal_deadline)
        .bind(record.query_limit_at)
        .bind(record.next_query_at)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return Ok(QrBegin::Started(payment(&row)?));
        }
        self.find_by_key(&record.key)
            .await?
            .map(QrBegin::Existing)
            .ok_or_else(|| QrError::NotFound(record.key.to_string()))
    }

    pub async fn find(&self, target: QrTarget<'_>) -> Result<Option<QrPayment>, QrError> {
        select(&self.pool, target, false).await
    }

    pub async fn find_by_key(&self, key: &RequestKey) -> Result<Option<QrPayment>, QrError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM qr_payments \
             WHERE terminal_id = $1 AND stan = $2 AND local_date = $3"
        ))
        .bind(key.terminal_id.as_str())
        .bind(key.stan.as_str())
        .bind(key.local_date.date())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(payment)
        .transpose()
    }

    /// Locks the payment until the decision is applied (or dropped).
    pub async fn lock(&self, target: QrTarget<'_>) -> Result<LockedQr, QrError> {
        let mut tx = self.pool.begin().await?;
        let current = select(&mut *tx, target, true)
            .await?
            .ok_or_else(|| QrError::NotFound(target.to_string()))?;
        Ok(LockedQr { tx, current })
    }

    /// Payments whose next query is due at `now`, oldest first.
    pub async fn due_queries(
        &self,
        now: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<TransactionId>, QrError> {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT transaction_id FROM qr_payments \
             WHERE next_query_at IS NOT NULL AND next_query_at <= $1 \
             ORDER BY next_query_at LIMIT $2",
        )
        // Planned with the caller's `now` each time (ADR 11).
        .persistent(false)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(TransactionId::from_uuid).collect())
    }

    /// Payments whose terminal's deadline passed at `now` without the
    /// terminal acknowledging or the payment ending.
    pub async fn past_terminal_deadline(
        &self,
        now: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<TransactionId>, QrError> {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT transaction_id FROM qr_payments \
             WHERE NOT terminal_gave_up \
               AND state NOT IN ('failed', 'closed', 'refunded', 'confirmed') \
               AND terminal_deadline <= $1 \
             ORDER BY terminal_deadline LIMIT $2",
        )
        .persistent(false)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(TransactionId::from_uuid).collect())
    }

    /// Claims up to `limit` owed calls due at `now`, leasing each for
    /// `lease_ms` (a worker that dies mid-call loses its claim by itself)
    /// and counting the attempt.
    pub async fn claim_calls(
        &self,
        now: OffsetDateTime,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedCall>, QrError> {
        let rows = sqlx::query(
            "WITH due AS ( \
               SELECT transaction_id FROM qr_calls \
               WHERE status = 'pending' AND next_attempt_at <= $1 \
               ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE qr_calls c SET attempts = c.attempts + 1, last_attempt_at = $1, \
               next_attempt_at = $1 + make_interval(secs => $3::double precision / 1000) \
             FROM due WHERE c.transaction_id = due.transaction_id \
             RETURNING c.transaction_id, c.kind, c.attempts",
        )
        .persistent(false)
        .bind(now)
        .bind(limit)
        .bind(lease_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let id = TransactionId::from_uuid(row.try_get("transaction_id")?);
            let kind = CancelKind::parse(row.try_get("kind")?).map_err(corrupt)?;
            let order: String =
                sqlx::query_scalar("SELECT order_id FROM qr_payments WHERE transaction_id = $1")
                    .bind(id.as_uuid())
                    .fetch_one(&self.pool)
                    .await?;
            let order = OrderId::parse(&order).map_err(corrupt)?;
            claimed.push(ClaimedCall {
                transaction_id: id,
                kind,
                request_id: PlatformRequestId::for_owed(&order, kind),
                attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
            });
        }
        Ok(claimed)
    }

    /// The audit trail of a payment: (from, to, event, command), oldest first.
    pub async fn transitions(
        &self,
        id: TransactionId,
    ) -> Result<Vec<(String, String, String, String)>, QrError> {
        Ok(sqlx::query_as(
            "SELECT from_state, to_state, event, command FROM qr_transitions \
             WHERE transaction_id = $1 ORDER BY id",
        )
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await?)
    }
}

/// An operator's hand in a decision: recorded with it, who and why.
#[derive(Debug, Clone, Copy)]
pub struct QrAction<'a> {
    pub action: &'static str,
    pub operator: &'a str,
    pub reason: &'a str,
    /// The merchant refund it was about, if any.
    pub refund_id: Option<&'a str>,
}

/// Writes `action` on payment `id` in `tx`.
pub(super) async fn record_action(
    tx: &mut Transaction<'static, Postgres>,
    id: TransactionId,
    action: &QrAction<'_>,
    now: OffsetDateTime,
) -> Result<(), QrError> {
    sqlx::query(
        "INSERT INTO qr_operator_actions (transaction_id, refund_id, action, operator, reason, at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.as_uuid())
    .bind(action.refund_id)
    .bind(action.action)
    .bind(action.operator)
    .bind(action.reason)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl LockedQr {
    /// Records an operator's `action` in this transaction: it commits with
    /// the decision it caused, or not at all.
    pub async fn record_action(
        &mut self,
        action: &QrAction<'_>,
        now: OffsetDateTime,
    ) -> Result<(), QrError> {
        record_action(&mut self.tx, self.current.transaction_id, action, now).await
    }

    /// Records a notification's nonce in this transaction: `false` if it
    /// was seen before (a replay, to refuse with nothing written).
    pub async fn first_use_of_nonce(
        &mut self,
        nonce: &str,
        notify_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, QrError> {
        let inserted = sqlx::query(
            "INSERT INTO qr_notification_nonces (nonce, notify_id, order_id, received_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(nonce)
        .bind(notify_id)
        .bind(self.current.order_id.as_str())
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Writes `decision` (taken on `self.current` by `command`), its audit
    /// row, its queue effects and `messages` (its announcements, encoded)
    /// in this transaction, and commits. Platform calls and the terminal's
    /// answer are the caller's, after the commit.
    pub async fn apply(
        mut self,
        decision: &QrDecision,
        messages: &[OutboxMessage],
        command: &'static str,
        now: OffsetDateTime,
    ) -> Result<QrPayment, QrError> {
        let next = &decision.next;
        if decision.is_noop() && *next == self.current {
            self.tx.commit().await?;
            return Ok(self.current);
        }
        let id = next.transaction_id.as_uuid();
        if *next != self.current {
            sqlx::query(
                "UPDATE qr_payments SET state = $2, next_query_at = $3, queries = $4, code = $5, \
                   platform_txn_id = $6, paid_at = $7, acknowledged_at = $8, \
                   terminal_gave_up = $9, confirmation_evidence = $10, owed_kind = $11, \
                   owed_request_id = $12, owed_since = $13, refund_reason = $14, failure = $15, \
                   conflict_at = $16, updated_at = $17 \
                 WHERE transaction_id = $1",
            )
            .bind(id)
            .bind(next.state.as_str())
            .bind(next.next_query_at)
            .bind(i32::try_from(next.queries).unwrap_or(i32::MAX))
            .bind(next.code.as_deref())
            .bind(next.platform_txn.as_ref().map(PlatformTxnId::as_str))
            .bind(next.paid_at)
            .bind(next.acknowledged_at)
            .bind(next.terminal_gave_up)
            .bind(next.confirmation_evidence.map(|e| e.as_str()))
            .bind(next.owed.as_ref().map(|o| o.kind.as_str()))
            .bind(next.owed.as_ref().map(|o| o.request_id.as_str()))
            .bind(next.owed.as_ref().map(|o| o.since))
            .bind(next.refund_reason.map(|r| r.as_str()))
            .bind(next.failure.as_deref())
            .bind(next.conflict_at)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
        }
        if let Some(transition) = &decision.transition {
            sqlx::query(
                "INSERT INTO qr_transitions (transaction_id, from_state, to_state, event, command, at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(transition.from.as_str())
            .bind(transition.to.as_str())
            .bind(transition.event)
            .bind(command)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
        }
        for effect in &decision.effects {
            match effect {
                QrEffect::EnqueueCancel { kind, request_id } => {
                    sqlx::query(
                        "INSERT INTO qr_calls (transaction_id, kind, request_id, requested_at, \
                           next_attempt_at) VALUES ($1, $2, $3, $4, $4) \
                         ON CONFLICT (transaction_id) DO UPDATE SET kind = EXCLUDED.kind, \
                           request_id = EXCLUDED.request_id, status = 'pending', attempts = 0, \
                           requested_at = EXCLUDED.requested_at, \
                           next_attempt_at = EXCLUDED.next_attempt_at, \
                           acknowledged_at = NULL, dead_lettered_at = NULL",
                    )
                    .bind(id)
                    .bind(kind.as_str())
                    .bind(request_id.as_str())
                    .bind(now)
                    .execute(&mut *self.tx)
                    .await?;
                }
                QrEffect::RetryCancel {
                    delay_ms,
                    last_error,
                } => {
                    sqlx::query(
                        "UPDATE qr_calls SET last_error = $3, \
                           next_attempt_at = $2 + make_interval(secs => $4::double precision / 1000) \
                         WHERE transaction_id = $1",
                    )
                    .bind(id)
                    .bind(now)
                    .bind(last_error)
                    .bind(i64::try_from(*delay_ms).unwrap_or(i64::MAX))
                    .execute(&mut *self.tx)
                    .await?;
                }
                QrEffect::CloseCancel(closed) => {
                    sqlx::query(
                        "UPDATE qr_calls SET status = $2, \
                           acknowledged_at = CASE WHEN $2 = 'acknowledged' THEN $3 ELSE acknowledged_at END, \
                           dead_lettered_at = CASE WHEN $2 = 'dead_lettered' THEN $3 ELSE dead_lettered_at END \
                         WHERE transaction_id = $1 AND status = 'pending'",
                    )
                    .bind(id)
                    .bind(closed.as_str())
                    .bind(now)
                    .execute(&mut *self.tx)
                    .await?;
                }
                // The schedule is the record's `next_query_at`, written above;
                // announcements are `messages`, with the notice they owe;
                // calls and the terminal's answer follow the commit.
                QrEffect::ScheduleQuery { .. }
                | QrEffect::Announce(_)
                | QrEffect::Notify(_)
                | QrEffect::Call(_)
                | QrEffect::AnswerTerminal(_) => {}
            }
        }
        for message in messages {
            outbox::enqueue(&mut self.tx, message).await?;
        }
        self.tx.commit().await?;
        Ok(decision.next.clone())
    }
}
