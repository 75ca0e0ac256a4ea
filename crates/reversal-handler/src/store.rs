//! The `approvals` table: what the consumer records from authorization's
//! events, and how sweepers claim due rows, record decisions and close them.
//!
//! Several sweepers may run at once. A sweeper claims due rows with
//! `FOR UPDATE SKIP LOCKED`, records the decision of each newly orphaned one
//! and moves every claimed row's `next_attempt_at` past its call timeout (a
//! lease), all in one transaction. It then calls authorization outside the
//! row locks. So no two sweepers ask about the same row at the same time,
//! and a sweeper that dies after claiming only delays the call until the
//! lease runs out; authorization's Reverse and Confirm are idempotent, so a
//! repeated call after such a crash is harmless.

use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row};
use switch_core::{OrphanDecision, decide_at_deadline};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::ReversalHandlerConfig;
use crate::outcome::{Outcome, decision_columns, parse_decision};

/// How many rows one sweep claims at most.
pub const CLAIM_LIMIT: i64 = 100;

/// The terminal-facing facts of an approval, as its events carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalFacts {
    pub transaction_id: Uuid,
    pub terminal_id: String,
    pub merchant_id: String,
    pub stan: String,
    pub local_date: String,
    pub rrn: String,
    pub traceparent: String,
}

/// A due row, claimed by one sweeper's open transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub transaction_id: Uuid,
    pub merchant_id: String,
    /// `None` for rows still open: the sweeper decides them now.
    pub decision: Option<OrphanDecision>,
    pub deadline_at: Option<OffsetDateTime>,
    pub decided_at: Option<OffsetDateTime>,
    pub attempts: i32,
    pub traceparent: String,
}

/// A decided approval whose decision authorization must now be asked to
/// carry out; leased to the sweeper that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub transaction_id: Uuid,
    pub merchant_id: String,
    pub decision: OrphanDecision,
    /// When the approval became due (its deadline; the issuer timeout for
    /// an issuer timeout).
    pub deadline_at: Option<OffsetDateTime>,
    /// Failed calls so far.
    pub attempts: i32,
    /// Whether the decision was made by this claim (an orphan just found).
    pub newly_decided: bool,
    pub traceparent: String,
}

/// An approval to watch until its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenWatch {
    pub facts: ApprovalFacts,
    pub approved_at: OffsetDateTime,
    pub deadline_at: OffsetDateTime,
}

/// Records an approval to watch until `deadline_at`. An approval already
/// known (a redelivery, or an approval whose closing event came first)
/// is left as it is. Returns whether a row was added.
pub async fn insert_open(
    conn: &mut PgConnection,
    facts: &ApprovalFacts,
    approved_at: OffsetDateTime,
    deadline_at: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    let watch = OpenWatch {
        facts: facts.clone(),
        approved_at,
        deadline_at,
    };
    Ok(insert_open_many(conn, std::slice::from_ref(&watch)).await? == 1)
}

/// [`insert_open`] for many approvals in one statement (the consumer's
/// batches are mostly approvals); returns how many rows were added.
pub async fn insert_open_many(
    conn: &mut PgConnection,
    watches: &[OpenWatch],
) -> Result<u64, sqlx::Error> {
    let column = |get: fn(&OpenWatch) -> &str| -> Vec<&str> { watches.iter().map(get).collect() };
    let inserted = sqlx::query(
        "INSERT INTO approvals (transaction_id, terminal_id, merchant_id, stan, local_date, rrn, \
             traceparent, approved_at, deadline_at, status) \
         SELECT i.*, 'open' FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[]) AS i \
         ON CONFLICT (transaction_id) DO NOTHING",
    )
    .bind(
        watches
            .iter()
            .map(|w| w.facts.transaction_id)
            .collect::<Vec<Uuid>>(),
    )
    .bind(column(|w| &w.facts.terminal_id))
    .bind(column(|w| &w.facts.merchant_id))
    .bind(column(|w| &w.facts.stan))
    .bind(column(|w| &w.facts.local_date))
    .bind(column(|w| &w.facts.rrn))
    .bind(column(|w| &w.facts.traceparent))
    .bind(watches.iter().map(|w| w.approved_at).collect::<Vec<_>>())
    .bind(watches.iter().map(|w| w.deadline_at).collect::<Vec<_>>())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted)
}

/// Records `decision` as due now (a reversal owed after an issuer timeout,
/// an orphan found by a batch upload), for an approval not yet known or
/// still open; a decided or closed one keeps its state. Returns whether
/// the decision was recorded.
pub async fn insert_decided_now(
    conn: &mut PgConnection,
    facts: &ApprovalFacts,
    due_at: OffsetDateTime,
    decision: OrphanDecision,
) -> Result<bool, sqlx::Error> {
    let (decision, reason) = decision_columns(decision);
    let changed = sqlx::query(
        "INSERT INTO approvals (transaction_id, terminal_id, merchant_id, stan, local_date, rrn, \
             traceparent, deadline_at, status, decision, reason, decided_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'decided', $9, $10, now(), now()) \
         ON CONFLICT (transaction_id) DO UPDATE \
             SET status = 'decided', decision = EXCLUDED.decision, reason = EXCLUDED.reason, \
                 decided_at = now(), next_attempt_at = now() \
             WHERE approvals.status = 'open'",
    )
    .bind(facts.transaction_id)
    .bind(&facts.terminal_id)
    .bind(&facts.merchant_id)
    .bind(&facts.stan)
    .bind(&facts.local_date)
    .bind(&facts.rrn)
    .bind(&facts.traceparent)
    .bind(due_at)
    .bind(decision)
    .bind(reason)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Closes an approval with `outcome` unless it is closed already; creates
/// it closed if it is not known yet, so that a late or redelivered
/// approval cannot reopen it. Returns whether anything changed.
pub async fn close_from_event(
    conn: &mut PgConnection,
    facts: &ApprovalFacts,
    outcome: &Outcome,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "INSERT INTO approvals (transaction_id, terminal_id, merchant_id, stan, local_date, rrn, \
             traceparent, status, outcome, closed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'closed', $8, now()) \
         ON CONFLICT (transaction_id) DO UPDATE \
             SET status = 'closed', outcome = EXCLUDED.outcome, closed_at = now() \
             WHERE approvals.status <> 'closed'",
    )
    .bind(facts.transaction_id)
    .bind(&facts.terminal_id)
    .bind(&facts.merchant_id)
    .bind(&facts.stan)
    .bind(&facts.local_date)
    .bind(&facts.rrn)
    .bind(&facts.traceparent)
    .bind(outcome.to_string())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// The acknowledgement deadline of an approval, if it had one.
pub async fn deadline_of(
    conn: &mut PgConnection,
    transaction_id: uuid::Uuid,
) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, Option<OffsetDateTime>>(
        "SELECT deadline_at FROM approvals WHERE transaction_id = $1",
    )
    .bind(transaction_id)
    .fetch_optional(conn)
    .await?
    .flatten())
}

/// Claims up to `limit` due rows inside the caller's transaction: open rows
/// past their deadline and decided rows whose next attempt is due, oldest
/// first, skipping rows another transaction holds. The locks last until the
/// caller's transaction ends.
pub async fn claim_due(conn: &mut PgConnection, limit: i64) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT transaction_id, merchant_id, status, decision, reason, deadline_at, decided_at, \
                attempts, traceparent \
         FROM approvals \
         WHERE (status = 'open' AND deadline_at <= now()) \
            OR (status = 'decided' AND next_attempt_at <= now()) \
         ORDER BY CASE WHEN status = 'open' THEN deadline_at ELSE next_attempt_at END \
         LIMIT $1 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for row in rows {
        let transaction_id: Uuid = row.try_get("transaction_id")?;
        let status: &str = row.try_get("status")?;
        let decision = if status == "open" {
            None
        } else {
            let kind: Option<&str> = row.try_get("decision")?;
            let reason: Option<&str> = row.try_get("reason")?;
            let parsed = parse_decision(kind.unwrap_or_default(), reason.unwrap_or_default());
            if parsed.is_none() {
                // Only this service writes the row, under CHECK constraints,
                // so this needs an operator; look again only once a minute.
                tracing::error!(
                    %transaction_id,
                    decision = kind,
                    reason,
                    "Decided approval names no known decision; skipped."
                );
                unreadable.push(transaction_id);
                continue;
            }
            parsed
        };
        claimed.push(Claimed {
            transaction_id,
            merchant_id: row.try_get("merchant_id")?,
            decision,
            deadline_at: row.try_get("deadline_at")?,
            decided_at: row.try_get("decided_at")?,
            attempts: row.try_get("attempts")?,
            traceparent: row.try_get("traceparent")?,
        });
    }
    if !unreadable.is_empty() {
        sqlx::query(
            "UPDATE approvals SET next_attempt_at = now() + interval '1 minute' \
             WHERE transaction_id = ANY($1)",
        )
        .bind(&unreadable)
        .execute(conn)
        .await?;
    }
    Ok(claimed)
}

/// Decides every open row among `claimed` under its merchant's policy, and
/// leases every claimed row for `lease` (its next attempt moves that far
/// ahead), inside the caller's transaction. Returns what authorization must
/// be asked, in claim order.
pub async fn record_decisions(
    conn: &mut PgConnection,
    claimed: &[Claimed],
    config: &ReversalHandlerConfig,
    lease: Duration,
) -> Result<Vec<Due>, sqlx::Error> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let mut due = Vec::with_capacity(claimed.len());
    let mut leased = Vec::new();
    for row in claimed {
        let (decision, newly_decided) = match row.decision {
            Some(decision) => {
                leased.push(row.transaction_id);
                (decision, false)
            }
            None => {
                let (_, policy) = config.policy_for(&row.merchant_id);
                let decision = decide_at_deadline(policy);
                let (kind, reason) = decision_columns(decision);
                sqlx::query(
                    "UPDATE approvals \
                     SET status = 'decided', decision = $2, reason = $3, decided_at = now(), \
                         next_attempt_at = now() + $4 * interval '1 millisecond' \
                     WHERE transaction_id = $1 AND status = 'open'",
                )
                .bind(row.transaction_id)
                .bind(kind)
                .bind(reason)
                .bind(lease_ms)
                .execute(&mut *conn)
                .await?;
                (decision, true)
            }
        };
        due.push(Due {
            transaction_id: row.transaction_id,
            merchant_id: row.merchant_id.clone(),
            decision,
            deadline_at: row.deadline_at,
            attempts: row.attempts,
            newly_decided,
            traceparent: row.traceparent.clone(),
        });
    }
    if !leased.is_empty() {
        sqlx::query(
            "UPDATE approvals SET next_attempt_at = now() + $2 * interval '1 millisecond' \
             WHERE transaction_id = ANY($1) AND status = 'decided'",
        )
        .bind(&leased)
        .bind(lease_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(due)
}

/// One sweep's claim: claims up to `limit` due rows, decides the orphans
/// among them, leases them all for `lease`, and commits.
pub async fn take_due(
    pool: &PgPool,
    config: &ReversalHandlerConfig,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Due>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let claimed = claim_due(&mut tx, limit).await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let due = record_decisions(&mut tx, &claimed, config, lease).await?;
    tx.commit().await?;
    Ok(due)
}

/// Closes a decided approval after authorization answered; an approval an
/// event closed in the meantime keeps that event's outcome. Returns whether
/// this call closed it.
pub async fn close(
    pool: &PgPool,
    transaction_id: Uuid,
    outcome: &Outcome,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE approvals SET status = 'closed', outcome = $2, closed_at = now() \
         WHERE transaction_id = $1 AND status <> 'closed'",
    )
    .bind(transaction_id)
    .bind(outcome.to_string())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Counts a failed call and schedules the next one `delay` from now.
pub async fn record_failure(
    pool: &PgPool,
    transaction_id: Uuid,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE approvals \
         SET attempts = attempts + 1, next_attempt_at = now() + $2 * interval '1 millisecond' \
         WHERE transaction_id = $1 AND status = 'decided'",
    )
    .bind(transaction_id)
    .bind(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    Ok(())
}
