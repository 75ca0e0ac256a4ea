//! Merchant refunds of confirmed QR payments (ADR 30): the shell around
//! `switch_core::qr::refund`. Each step is one transaction: lock, decide
//! on the service's clock, write the refund row (its own queue entry), the
//! operator's action and the `qr.refund_*` events through the outbox, and
//! commit. A request is decided under the payment's row lock, so two
//! refunds at once cannot both take what is left.

use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Postgres, Row, Transaction};
use switch_core::qr::refund::{
    self, Acceptance, QrRefund, RefundAnswer, RefundAttempt, RefundDecision, RefundId,
    RefundRefusal, RefundRequest, RefundState,
};
use switch_core::qr::{OrderId, QrPayment};
use switch_core::{Currency, Money, TransactionId};
use time::OffsetDateTime;

use super::store::{self, QrAction, QrTarget};
use super::{QrError, QrShell, events};

const COLUMNS: &str = "r.refund_id, r.transaction_id, p.order_id, r.amount_minor, r.currency, \
    r.state, r.attempts, r.last_error, r.requested_at, r.since, r.next_attempt_at, \
    r.completed_at, r.operator, r.reason";

const FROM: &str = "qr_refunds r JOIN qr_payments p ON p.transaction_id = r.transaction_id";

/// A refund as it was written, with its payment and the payment's total.
#[derive(Debug, Clone)]
pub struct RefundView {
    pub payment: QrPayment,
    pub refund: QrRefund,
    /// What the payment's written refunds add up to.
    pub total: Money,
}

/// A refund claimed for one attempt.
#[derive(Debug, Clone)]
pub struct ClaimedRefund {
    pub refund_id: RefundId,
    /// Including this one.
    pub attempts: u32,
}

fn refund_row(row: &PgRow) -> Result<QrRefund, QrError> {
    let corrupt = QrError::CorruptRow;
    let currency: String = row.try_get("currency")?;
    Ok(QrRefund {
        refund_id: RefundId::parse(row.try_get("refund_id")?).map_err(corrupt)?,
        transaction_id: TransactionId::from_uuid(row.try_get("transaction_id")?),
        order_id: OrderId::parse(row.try_get("order_id")?).map_err(corrupt)?,
        amount: Money::new(
            row.try_get("amount_minor")?,
            Currency::parse(&currency).map_err(corrupt)?,
        ),
        state: RefundState::parse(row.try_get("state")?).map_err(corrupt)?,
        attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
        last_error: row.try_get("last_error")?,
        requested_at: row.try_get("requested_at")?,
        since: row.try_get("since")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        completed_at: row.try_get("completed_at")?,
        operator: row.try_get("operator")?,
        reason: row.try_get("reason")?,
    })
}

async fn by_id<'e>(
    executor: impl PgExecutor<'e>,
    refund_id: &RefundId,
    for_update: bool,
) -> Result<Option<QrRefund>, QrError> {
    let lock = if for_update { " FOR UPDATE OF r" } else { "" };
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE r.refund_id = $1{lock}"
    ))
    .bind(refund_id.as_str())
    .fetch_optional(executor)
    .await?
    .as_ref()
    .map(refund_row)
    .transpose()
}

async fn of_payment<'e>(
    executor: impl PgExecutor<'e>,
    id: TransactionId,
) -> Result<Vec<QrRefund>, QrError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE r.transaction_id = $1 ORDER BY r.requested_at"
    ))
    .bind(id.as_uuid())
    .fetch_all(executor)
    .await?
    .iter()
    .map(refund_row)
    .collect()
}

async fn insert(
    tx: &mut Transaction<'static, Postgres>,
    refund: &QrRefund,
    now: OffsetDateTime,
) -> Result<(), QrError> {
    sqlx::query(
        "INSERT INTO qr_refunds (refund_id, transaction_id, amount_minor, currency, state, \
           attempts, last_error, requested_at, since, next_attempt_at, completed_at, operator, \
           reason, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(refund.refund_id.as_str())
    .bind(refund.transaction_id.as_uuid())
    .bind(refund.amount.minor_units())
    .bind(refund.amount.currency().code())
    .bind(refund.state.as_str())
    .bind(i32::try_from(refund.attempts).unwrap_or(i32::MAX))
    .bind(refund.last_error.as_deref())
    .bind(refund.requested_at)
    .bind(refund.since)
    .bind(refund.next_attempt_at)
    .bind(refund.completed_at)
    .bind(&refund.operator)
    .bind(&refund.reason)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn update(
    tx: &mut Transaction<'static, Postgres>,
    refund: &QrRefund,
    now: OffsetDateTime,
) -> Result<(), QrError> {
    sqlx::query(
        "UPDATE qr_refunds SET state = $2, attempts = $3, last_error = $4, since = $5, \
           next_attempt_at = $6, completed_at = $7, updated_at = $8 \
         WHERE refund_id = $1",
    )
    .bind(refund.refund_id.as_str())
    .bind(refund.state.as_str())
    .bind(i32::try_from(refund.attempts).unwrap_or(i32::MAX))
    .bind(refund.last_error.as_deref())
    .bind(refund.since)
    .bind(refund.next_attempt_at)
    .bind(refund.completed_at)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn refused(refusal: RefundRefusal) -> QrError {
    QrError::RefundRefused(refusal)
}

impl QrShell {
    /// An operator's refund of the payment `target`: decided by
    /// `refund::accept` under the payment's lock; a new refund is written
    /// with its `qr.refund_requested` event and the operator's action, a
    /// repeat answered as it stands, a refusal writes nothing.
    pub async fn request_refund(
        &self,
        target: QrTarget<'_>,
        request: RefundRequest,
    ) -> Result<(RefundView, bool), QrError> {
        match self.request_refund_once(target, request.clone()).await {
            // The same refund id taken meanwhile for another payment (whose
            // lock this request did not hold): decided again, it is seen.
            Err(QrError::Journal(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                self.request_refund_once(target, request).await
            }
            other => other,
        }
    }

    async fn request_refund_once(
        &self,
        target: QrTarget<'_>,
        request: RefundRequest,
    ) -> Result<(RefundView, bool), QrError> {
        let pool = self.journal.pool();
        let mut tx = pool.begin().await?;
        let payment = store::select(&mut *tx, target, true)
            .await?
            .ok_or_else(|| QrError::NotFound(target.to_string()))?;
        let refunds = of_payment(&mut *tx, payment.transaction_id).await?;
        let same_id = by_id(&mut *tx, &request.refund_id, false).await?;
        let now = self.clock.now();
        let (operator, reason) = (request.operator.clone(), request.reason.clone());
        let decision = match refund::accept(&payment, &refunds, same_id.as_ref(), request, now)
            .map_err(refused)?
        {
            Acceptance::Duplicate(original) => {
                tx.commit().await?;
                let total = refund::committed(&payment, &refunds);
                return Ok((
                    RefundView {
                        payment,
                        refund: original,
                        total,
                    },
                    true,
                ));
            }
            Acceptance::New(decision) => decision,
        };
        insert(&mut tx, &decision.next, now).await?;
        let action = QrAction {
            action: "refund",
            operator: &operator,
            reason: &reason,
            refund_id: Some(decision.next.refund_id.as_str()),
        };
        store::record_action(&mut tx, payment.transaction_id, &action, now).await?;
        let mut all = refunds;
        all.push(decision.next.clone());
        let total = refund::committed(&payment, &all);
        self.publish(&mut tx, &payment, &decision, total, now)
            .await?;
        tx.commit().await?;
        self.wake.notify_one();
        self.relay.wake();
        Ok((
            RefundView {
                payment,
                refund: decision.next,
                total,
            },
            false,
        ))
    }

    /// An operator sends the dead-lettered refund `refund_id` of `order`
    /// round again; refused unless it is dead-lettered.
    pub async fn redrive_refund(
        &self,
        order: &OrderId,
        refund_id: &RefundId,
        operator: &str,
        reason: &str,
    ) -> Result<RefundView, QrError> {
        let action = QrAction {
            action: "redrive",
            operator,
            reason,
            refund_id: Some(refund_id.as_str()),
        };
        let view = self
            .step(refund_id, Some(order), Some(action), |current, now| {
                refund::redrive(current, now).map_err(refused)
            })
            .await?;
        self.wake.notify_one();
        Ok(view)
    }

    /// The platform's `answer` to an attempt at `refund_id`.
    pub async fn refund_answered(
        &self,
        refund_id: &RefundId,
        answer: RefundAnswer,
        attempt: RefundAttempt,
    ) -> Result<RefundView, QrError> {
        let schedule = self.schedule;
        self.step(refund_id, None, None, move |current, now| {
            Ok(refund::answered(current, answer, attempt, schedule, now))
        })
        .await
    }

    /// One decision on an existing refund under its row lock, written with
    /// its events (and `action`) in one transaction.
    async fn step(
        &self,
        refund_id: &RefundId,
        order: Option<&OrderId>,
        action: Option<QrAction<'_>>,
        decide: impl FnOnce(&QrRefund, OffsetDateTime) -> Result<RefundDecision, QrError>,
    ) -> Result<RefundView, QrError> {
        let not_found = || match order {
            Some(order) => QrError::NotFound(format!("refund {refund_id} of QR order {order}")),
            None => QrError::NotFound(format!("refund {refund_id}")),
        };
        let mut tx = self.journal.pool().begin().await?;
        let current = by_id(&mut *tx, refund_id, true)
            .await?
            .ok_or_else(not_found)?;
        if order.is_some_and(|order| *order != current.order_id) {
            return Err(not_found());
        }
        let payment = store::select(&mut *tx, QrTarget::Id(current.transaction_id), false)
            .await?
            .ok_or_else(not_found)?;
        let now = self.clock.now();
        let decision = decide(&current, now)?;
        let mut refunds = of_payment(&mut *tx, payment.transaction_id).await?;
        if decision.is_noop(&current) {
            tx.commit().await?;
            let total = refund::committed(&payment, &refunds);
            return Ok(RefundView {
                payment,
                refund: current,
                total,
            });
        }
        update(&mut tx, &decision.next, now).await?;
        if let Some(action) = &action {
            store::record_action(&mut tx, payment.transaction_id, action, now).await?;
        }
        for refund in &mut refunds {
            if refund.refund_id == decision.next.refund_id {
                *refund = decision.next.clone();
            }
        }
        let total = refund::committed(&payment, &refunds);
        self.publish(&mut tx, &payment, &decision, total, now)
            .await?;
        tx.commit().await?;
        if !decision.events.is_empty() {
            self.relay.wake();
        }
        Ok(RefundView {
            payment,
            refund: decision.next,
            total,
        })
    }

    async fn publish(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        payment: &QrPayment,
        decision: &RefundDecision,
        total: Money,
        now: OffsetDateTime,
    ) -> Result<(), QrError> {
        let messages = events::refund_messages(
            &self.topic,
            payment,
            &decision.next,
            total,
            &decision.events,
            now,
        );
        for message in &messages {
            switch_platform::outbox::enqueue(tx, message).await?;
        }
        Ok(())
    }

    /// A refund by its id, with its payment and the payment's total.
    pub async fn find_refund(&self, refund_id: &RefundId) -> Result<Option<RefundView>, QrError> {
        let pool = self.journal.pool();
        let Some(refund) = by_id(pool, refund_id, false).await? else {
            return Ok(None);
        };
        let payment = store::select(pool, QrTarget::Id(refund.transaction_id), false)
            .await?
            .ok_or_else(|| QrError::NotFound(format!("payment of refund {refund_id}")))?;
        let refunds = of_payment(pool, payment.transaction_id).await?;
        let total = refund::committed(&payment, &refunds);
        Ok(Some(RefundView {
            payment,
            refund,
            total,
        }))
    }

    /// Claims up to `limit` refunds due at `now`, leasing each for
    /// `lease_ms` (a worker that dies mid-call loses its claim by itself)
    /// and counting the attempt.
    pub async fn claim_refunds(
        &self,
        now: OffsetDateTime,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedRefund>, QrError> {
        let rows = sqlx::query(
            "WITH due AS ( \
               SELECT refund_id FROM qr_refunds \
               WHERE state = 'requested' AND next_attempt_at <= $1 \
               ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE qr_refunds r SET attempts = r.attempts + 1, \
               next_attempt_at = $1 + make_interval(secs => $3::double precision / 1000) \
             FROM due WHERE r.refund_id = due.refund_id \
             RETURNING r.refund_id, r.attempts",
        )
        .persistent(false)
        .bind(now)
        .bind(limit)
        .bind(lease_ms)
        .fetch_all(self.journal.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedRefund {
                    refund_id: RefundId::parse(row.try_get("refund_id")?)
                        .map_err(QrError::CorruptRow)?,
                    attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                })
            })
            .collect()
    }
}
