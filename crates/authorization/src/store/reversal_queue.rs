//! The durable queue of reversals owed to each issuer: claiming due
//! entries for an attempt (a lease, so a worker that dies mid-attempt loses
//! its claim by itself) and counting what is pending. Entries are added,
//! repeated and closed only as effects of a lifecycle decision
//! (`Journal::apply`); "due" is decided on the caller's clock.

use sqlx::Row;
use switch_core::{Currency, Money, ReversalReason, TransactionId};
use time::OffsetDateTime;

use super::Journal;
use super::rows::parse;
use super::rows::{self, COLUMNS};
use crate::error::AuthorizationError;
use crate::model::{ClaimedReversal, DeadLetterCursor, DeadLetteredReversal};

impl Journal {
    /// Claims up to `limit` reversals of `issuer` due at `now`, leasing each
    /// for `lease_ms` and counting the attempt.
    pub async fn claim_reversals(
        &self,
        issuer: &str,
        limit: i64,
        lease_ms: i64,
        now: OffsetDateTime,
    ) -> Result<Vec<ClaimedReversal>, AuthorizationError> {
        let rows = sqlx::query(
            "WITH due AS ( \
               SELECT transaction_id FROM reversals \
               WHERE status = 'pending' AND issuer = $1 AND next_attempt_at <= $4 \
               ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
             claimed AS ( \
               UPDATE reversals r SET attempts = r.attempts + 1, \
                 next_attempt_at = $4 + make_interval(secs => $3::double precision / 1000), \
                 first_sent_at = COALESCE(r.first_sent_at, $4), last_attempt_at = $4 \
               FROM due WHERE r.transaction_id = due.transaction_id \
               RETURNING r.transaction_id, r.reason, r.attempts, r.traceparent, \
                 greatest(0, (extract(epoch FROM $4 - r.requested_at) * 1000))::bigint AS age_ms) \
             SELECT c.transaction_id, c.reason, c.attempts, c.age_ms, c.traceparent, a.rrn, \
               a.stan, a.amount_minor, a.currency \
             FROM claimed c JOIN authorizations a USING (transaction_id)",
        )
        // Planned with the caller's `now` each time (ADR 11), so the due
        // check keeps using the partial index `reversals_due`.
        .persistent(false)
        .bind(issuer)
        .bind(limit)
        .bind(lease_ms)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let currency: String = row.try_get("currency")?;
                let reason: String = row.try_get("reason")?;
                Ok(ClaimedReversal {
                    transaction_id: TransactionId::from_uuid(row.try_get("transaction_id")?),
                    reason: parse(ReversalReason::parse(&reason))?,
                    attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                    age_ms: u64::try_from(row.try_get::<i64, _>("age_ms")?).unwrap_or(0),
                    rrn: row.try_get("rrn")?,
                    stan: row.try_get("stan")?,
                    traceparent: row.try_get("traceparent")?,
                    amount: Money::new(
                        row.try_get("amount_minor")?,
                        parse(Currency::parse(&currency))?,
                    ),
                })
            })
            .collect()
    }

    /// Dead-lettered reversals in the order they were given up on, after
    /// `after`, at most `limit`: a page of what operators list.
    pub async fn dead_lettered(
        &self,
        after: Option<DeadLetterCursor>,
        limit: i64,
    ) -> Result<Vec<DeadLetteredReversal>, AuthorizationError> {
        let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("a.{c}")).collect();
        let rows = sqlx::query(&format!(
            "SELECT {}, r.reason AS queued_reason, r.attempts AS queued_attempts, \
               r.requested_at AS queued_at, r.first_sent_at, r.last_attempt_at, \
               r.last_response_code, r.last_error, r.dead_lettered_at \
             FROM reversals r JOIN authorizations a ON a.transaction_id = r.transaction_id \
             WHERE r.status = 'dead_lettered' \
               AND ($1::timestamptz IS NULL OR (r.dead_lettered_at, r.transaction_id) > ($1, $2)) \
             ORDER BY r.dead_lettered_at, r.transaction_id LIMIT $3",
            columns.join(", ")
        ))
        .bind(after.map(|c| c.dead_lettered_at))
        .bind(after.map(|c| c.transaction_id.as_uuid()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let reason: String = row.try_get("queued_reason")?;
                let dead_lettered_at: Option<OffsetDateTime> = row.try_get("dead_lettered_at")?;
                Ok(DeadLetteredReversal {
                    authorization: rows::authorization(row)?,
                    reason: parse(ReversalReason::parse(&reason))?,
                    attempts: u32::try_from(row.try_get::<i32, _>("queued_attempts")?).unwrap_or(0),
                    requested_at: row.try_get("queued_at")?,
                    first_attempt_at: row.try_get("first_sent_at")?,
                    last_attempt_at: row.try_get("last_attempt_at")?,
                    last_response_code: row.try_get("last_response_code")?,
                    last_error: row.try_get("last_error")?,
                    dead_lettered_at: dead_lettered_at.ok_or_else(|| {
                        AuthorizationError::CorruptRow(switch_core::InvalidField::new(
                            "dead_lettered_at",
                            "missing on a dead-lettered reversal",
                        ))
                    })?,
                })
            })
            .collect()
    }

    /// What the queue of `issuer` looks like at `now`, for the gauges
    /// operators watch: reversals still owed, how long the oldest has been
    /// owed, and those given up on and not redriven. Each count reads its
    /// own partial index (`reversals_due`, `reversals_dead_lettered`), so
    /// acknowledged rows, the bulk of the table, are never walked. The age
    /// is taken on the caller's clock, as "due" is.
    pub async fn reversal_queue_gauges(
        &self,
        issuer: &str,
        now: OffsetDateTime,
    ) -> Result<ReversalQueueGauges, AuthorizationError> {
        let (pending, oldest_ms): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), \
               (greatest(0, extract(epoch FROM $2 - min(requested_at)) * 1000))::bigint \
             FROM reversals WHERE issuer = $1 AND status = 'pending'",
        )
        .bind(issuer)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let dead_lettered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM reversals WHERE status = 'dead_lettered' AND issuer = $1",
        )
        .bind(issuer)
        .fetch_one(&self.pool)
        .await?;
        Ok(ReversalQueueGauges {
            pending,
            oldest_pending_ms: oldest_ms.map_or(0, |ms| u64::try_from(ms).unwrap_or(0)),
            dead_lettered,
        })
    }
}

/// One issuer's reversal queue as its gauges show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReversalQueueGauges {
    /// Owed, not yet acknowledged by the issuer.
    pub pending: i64,
    /// How long the oldest owed reversal has been owed (0 when none is).
    pub oldest_pending_ms: u64,
    /// Given up on past their maximum age and not redriven: each a shopper
    /// who may still be charged.
    pub dead_lettered: i64,
}
