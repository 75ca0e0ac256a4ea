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
use crate::error::AuthorizationError;
use crate::model::ClaimedReversal;

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
                 first_sent_at = COALESCE(r.first_sent_at, $4) \
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

    /// Pending reversals per issuer, for the gauge operators watch.
    pub async fn pending_reversals(&self, issuer: &str) -> Result<i64, AuthorizationError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM reversals WHERE issuer = $1 AND status = 'pending'",
        )
        .bind(issuer)
        .fetch_one(&self.pool)
        .await?)
    }
}
