//! The `endpoints` and `deliveries` tables: what the consumer owes, how
//! workers claim and record attempts, and what operators list and redeliver.
//!
//! A worker claims due deliveries with `FOR UPDATE SKIP LOCKED` and moves
//! each claimed row's `next_attempt_at` past its request timeout (a lease),
//! with a fresh `lease_token`, in one short transaction; it sends outside
//! any lock. So replicas never send the same delivery at once, a worker
//! that dies only delays its deliveries until the lease runs out, and a
//! result is recorded only by the claim that still holds the row.
//!
//! Writers that make deliveries due (the consumer, a redelivery) call
//! `pg_notify` in their transaction: PostgreSQL delivers it at commit, so
//! the woken worker finds the rows committed.

use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row};
use switch_platform::config::Secret;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::EndpointConfig;
use crate::webhook::Webhook;

/// A merchant's endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub endpoint_id: Uuid,
    pub merchant_id: String,
    pub url: String,
    pub created_at: OffsetDateTime,
}

/// A delivery claimed by one worker, with what it needs to send it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: Uuid,
    pub lease_token: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub merchant_id: String,
    pub endpoint_id: Uuid,
    pub url: String,
    pub secret: Secret,
    pub body: String,
    pub occurred_at: OffsetDateTime,
    /// Attempts before this one, ever.
    pub attempts: i32,
    /// Attempts before this one, in the current budget.
    pub budget_used: i32,
    pub first_attempt_at: Option<OffsetDateTime>,
}

/// Where an attempt leaves a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextState {
    Delivered,
    /// Due again after this delay.
    Retry(Duration),
    DeadLettered,
}

impl NextState {
    fn column(self) -> &'static str {
        match self {
            NextState::Delivered => "delivered",
            NextState::Retry(_) => "pending",
            NextState::DeadLettered => "dead_lettered",
        }
    }
}

/// The result of one attempt, to record.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub delivery_id: Uuid,
    pub lease_token: Uuid,
    pub next: NextState,
    pub started_at: OffsetDateTime,
    pub finished_at: OffsetDateTime,
    /// HTTP status, when the endpoint answered.
    pub status: Option<u16>,
    /// Why it failed; `None` when delivered.
    pub error: Option<String>,
}

/// A dead-lettered delivery, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDelivery {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub merchant_id: String,
    pub endpoint_id: Uuid,
    pub url: String,
    pub attempts: i32,
    pub last_error: String,
    pub dead_lettered_at: OffsetDateTime,
}

/// Which dead-lettered deliveries to redeliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeliverTarget {
    Delivery(Uuid),
    Merchant(String),
    All,
}

/// Why a single delivery could not be redelivered.
#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    #[error("no delivery {0}")]
    NotFound(Uuid),
    #[error("delivery {0} is {1}; only dead-lettered deliveries are redelivered")]
    NotDeadLettered(Uuid, String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates or updates the configured endpoints (matched on merchant and
/// URL): a changed secret replaces the stored one, and a configured
/// endpoint is enabled. Endpoints not in the configuration are kept.
pub async fn seed_endpoints(
    pool: &PgPool,
    endpoints: &[EndpointConfig],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for endpoint in endpoints {
        sqlx::query(
            "INSERT INTO endpoints (endpoint_id, merchant_id, url, secret) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (merchant_id, url) DO UPDATE \
                 SET secret = EXCLUDED.secret, enabled = true",
        )
        .bind(Uuid::now_v7())
        .bind(&endpoint.merchant_id)
        .bind(&endpoint.url)
        .bind(endpoint.secret.expose())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Adds an endpoint with `secret`; `None` when the merchant has this URL
/// already.
pub async fn register_endpoint(
    pool: &PgPool,
    merchant_id: &str,
    url: &str,
    secret: &Secret,
) -> Result<Option<Endpoint>, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO endpoints (endpoint_id, merchant_id, url, secret) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (merchant_id, url) DO NOTHING \
         RETURNING endpoint_id, merchant_id, url, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(merchant_id)
    .bind(url)
    .bind(secret.expose())
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(Endpoint {
            endpoint_id: row.try_get("endpoint_id")?,
            merchant_id: row.try_get("merchant_id")?,
            url: row.try_get("url")?,
            created_at: row.try_get("created_at")?,
        })
    })
    .transpose()
}

/// Owes `webhook` to every enabled endpoint of its merchant, once per
/// endpoint whatever the number of calls, and wakes workers listening on
/// `channel` when it added any. Returns how many deliveries were added.
pub async fn insert_deliveries(
    conn: &mut PgConnection,
    webhook: &Webhook,
    channel: &str,
    now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    let added = sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, merchant_id, endpoint_id, body, \
             occurred_at, next_attempt_at) \
         SELECT $1, $2, $3, endpoint_id, $4, $5, $6 \
         FROM endpoints WHERE merchant_id = $3 AND enabled \
         ON CONFLICT (event_id, endpoint_id) DO NOTHING",
    )
    .bind(webhook.event_id)
    .bind(webhook.kind.as_str())
    .bind(&webhook.merchant_id)
    .bind(&webhook.body)
    .bind(webhook.occurred_at)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if added > 0 {
        notify(conn, channel).await?;
    }
    Ok(added)
}

/// Wakes the workers listening on `channel` when the caller's transaction
/// commits (PostgreSQL folds repeats within a transaction into one).
pub async fn notify(conn: &mut PgConnection, channel: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(channel)
        .execute(conn)
        .await?;
    Ok(())
}

/// Claims up to `limit` deliveries due at `now` and leases them for `lease`.
///
/// An endpoint gets at most `per_endpoint` requests in flight: `busy` lists
/// the endpoints this worker already has requests in flight to, and how
/// many, and only the remaining slots of each are filled. Each endpoint's
/// oldest due rows are read through its index, at most its free slots, so
/// the cost of a claim grows with the number of endpoints, not with the
/// backlog; rows are then taken round-robin over endpoints, so an endpoint
/// with a backlog of thousands does not crowd out the others.
pub async fn claim_due(
    pool: &PgPool,
    busy: &[(Uuid, i32)],
    per_endpoint: i32,
    limit: i64,
    lease: Duration,
    now: OffsetDateTime,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let (busy_ids, busy_counts): (Vec<Uuid>, Vec<i32>) = busy.iter().copied().unzip();
    let rows = sqlx::query(
        "WITH candidates AS ( \
             SELECT c.delivery_id, c.next_attempt_at, \
                    row_number() OVER (PARTITION BY e.endpoint_id \
                                       ORDER BY c.next_attempt_at, c.delivery_id) AS rank \
             FROM endpoints e \
             LEFT JOIN unnest($1::uuid[], $2::int4[]) AS busy(endpoint_id, in_flight) \
                    ON busy.endpoint_id = e.endpoint_id \
             CROSS JOIN LATERAL ( \
                 SELECT d.delivery_id, d.next_attempt_at FROM deliveries d \
                 WHERE d.endpoint_id = e.endpoint_id \
                   AND d.state = 'pending' AND d.next_attempt_at <= $6 \
                 ORDER BY d.next_attempt_at \
                 LIMIT GREATEST($3 - COALESCE(busy.in_flight, 0), 0) \
                 FOR UPDATE OF d SKIP LOCKED \
             ) c \
             WHERE COALESCE(busy.in_flight, 0) < $3 \
         ), chosen AS ( \
             SELECT delivery_id FROM candidates \
             ORDER BY rank, next_attempt_at \
             LIMIT $4 \
         ) \
         UPDATE deliveries d \
         SET next_attempt_at = $6 + $5 * interval '1 millisecond', \
             lease_token = gen_random_uuid() \
         FROM chosen, endpoints e \
         WHERE d.delivery_id = chosen.delivery_id AND e.endpoint_id = d.endpoint_id \
         RETURNING d.delivery_id, d.lease_token, d.event_id, d.event_type, d.merchant_id, \
                   d.endpoint_id, e.url, e.secret, d.body, d.occurred_at, d.attempts, \
                   d.attempts - d.budget_start AS budget_used, d.first_attempt_at",
    )
    .bind(&busy_ids)
    .bind(&busy_counts)
    .bind(per_endpoint)
    .bind(limit)
    .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .bind(now)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Claimed {
                delivery_id: row.try_get("delivery_id")?,
                lease_token: row.try_get("lease_token")?,
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                merchant_id: row.try_get("merchant_id")?,
                endpoint_id: row.try_get("endpoint_id")?,
                url: row.try_get("url")?,
                secret: Secret::new(row.try_get::<String, _>("secret")?),
                body: row.try_get("body")?,
                occurred_at: row.try_get("occurred_at")?,
                attempts: row.try_get("attempts")?,
                budget_used: row.try_get("budget_used")?,
                first_attempt_at: row.try_get("first_attempt_at")?,
            })
        })
        .collect()
}

/// Milliseconds until the next pending delivery that is not due yet falls
/// due (leased rows included: their lease ends then); `None` when there is
/// none. Measured from `now`.
pub async fn next_due_in(
    pool: &PgPool,
    now: OffsetDateTime,
) -> Result<Option<Duration>, sqlx::Error> {
    let ms: Option<i64> = sqlx::query_scalar(
        "SELECT CEIL(EXTRACT(EPOCH FROM (min(next_attempt_at) - $1)) * 1000)::bigint \
         FROM deliveries WHERE state = 'pending' AND next_attempt_at > $1",
    )
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok(ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
}

/// Records attempts in one statement. A row is changed only if the claim
/// that made the attempt still holds it. Returns the ids recorded.
pub async fn record_attempts(
    pool: &PgPool,
    attempts: &[Attempt],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut ids = Vec::with_capacity(attempts.len());
    let mut tokens = Vec::with_capacity(attempts.len());
    let mut states = Vec::with_capacity(attempts.len());
    let mut delays = Vec::with_capacity(attempts.len());
    let mut started = Vec::with_capacity(attempts.len());
    let mut finished = Vec::with_capacity(attempts.len());
    let mut statuses = Vec::with_capacity(attempts.len());
    let mut errors = Vec::with_capacity(attempts.len());
    for attempt in attempts {
        ids.push(attempt.delivery_id);
        tokens.push(attempt.lease_token);
        states.push(attempt.next.column());
        delays.push(match attempt.next {
            NextState::Retry(delay) => Some(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            _ => None,
        });
        started.push(attempt.started_at);
        finished.push(attempt.finished_at);
        statuses.push(attempt.status.map(i32::from));
        errors.push(attempt.error.as_deref());
    }
    sqlx::query_scalar(
        "UPDATE deliveries d \
         SET state = v.state, \
             attempts = d.attempts + 1, \
             lease_token = NULL, \
             next_attempt_at = CASE WHEN v.state = 'pending' \
                 THEN v.finished_at + v.delay_ms * interval '1 millisecond' END, \
             first_attempt_at = COALESCE(d.first_attempt_at, v.started_at), \
             last_attempt_at = v.started_at, \
             last_status = v.status, \
             last_error = v.error, \
             delivered_at = CASE WHEN v.state = 'delivered' THEN v.finished_at END, \
             dead_lettered_at = CASE WHEN v.state = 'dead_lettered' THEN v.finished_at END \
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::timestamptz[], \
                     $6::timestamptz[], $7::int4[], $8::text[]) \
              AS v(delivery_id, lease_token, state, delay_ms, started_at, finished_at, status, error) \
         WHERE d.delivery_id = v.delivery_id AND d.lease_token = v.lease_token \
         RETURNING d.delivery_id",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&states)
    .bind(&delays)
    .bind(&started)
    .bind(&finished)
    .bind(&statuses)
    .bind(&errors)
    .fetch_all(pool)
    .await
}

/// Gives claims back at once (a worker stopping before its requests
/// finished), so they need not wait for their lease.
pub async fn release(
    pool: &PgPool,
    claims: &[(Uuid, Uuid)],
    now: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    let (ids, tokens): (Vec<Uuid>, Vec<Uuid>) = claims.iter().copied().unzip();
    Ok(sqlx::query(
        "UPDATE deliveries d SET next_attempt_at = $3, lease_token = NULL \
         FROM unnest($1::uuid[], $2::uuid[]) AS v(delivery_id, lease_token) \
         WHERE d.delivery_id = v.delivery_id AND d.lease_token = v.lease_token \
           AND d.state = 'pending'",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(now)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Dead-lettered deliveries, newest first.
pub async fn list_failed(
    pool: &PgPool,
    merchant_id: Option<&str>,
    limit: i64,
) -> Result<Vec<FailedDelivery>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.delivery_id, d.event_id, d.event_type, d.merchant_id, d.endpoint_id, e.url, \
                d.attempts, COALESCE(d.last_error, '') AS last_error, d.dead_lettered_at \
         FROM deliveries d JOIN endpoints e USING (endpoint_id) \
         WHERE d.state = 'dead_lettered' AND ($1::text IS NULL OR d.merchant_id = $1) \
         ORDER BY d.dead_lettered_at DESC, d.delivery_id \
         LIMIT $2",
    )
    .bind(merchant_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(FailedDelivery {
                delivery_id: row.try_get("delivery_id")?,
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                merchant_id: row.try_get("merchant_id")?,
                endpoint_id: row.try_get("endpoint_id")?,
                url: row.try_get("url")?,
                attempts: row.try_get("attempts")?,
                last_error: row.try_get("last_error")?,
                dead_lettered_at: row.try_get("dead_lettered_at")?,
            })
        })
        .collect()
}

/// Makes dead-lettered deliveries due now with a fresh attempt budget
/// (their attempt count is kept), and wakes the workers on `channel`.
/// Returns how many were reset.
pub async fn redeliver(
    pool: &PgPool,
    target: &RedeliverTarget,
    channel: &str,
    now: OffsetDateTime,
) -> Result<u64, RedeliverError> {
    let mut tx = pool.begin().await?;
    let reset = "UPDATE deliveries \
                 SET state = 'pending', budget_start = attempts, next_attempt_at = $1, \
                     dead_lettered_at = NULL, lease_token = NULL \
                 WHERE state = 'dead_lettered'";
    let count = match target {
        RedeliverTarget::Delivery(id) => {
            let state: Option<String> = sqlx::query_scalar(
                "SELECT state FROM deliveries WHERE delivery_id = $1 FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            match state.as_deref() {
                None => return Err(RedeliverError::NotFound(*id)),
                Some("dead_lettered") => {}
                Some(other) => return Err(RedeliverError::NotDeadLettered(*id, other.to_owned())),
            }
            sqlx::query(&format!("{reset} AND delivery_id = $2"))
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        }
        RedeliverTarget::Merchant(merchant_id) => {
            sqlx::query(&format!("{reset} AND merchant_id = $2"))
                .bind(now)
                .bind(merchant_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        }
        RedeliverTarget::All => sqlx::query(reset)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
    };
    if count > 0 {
        notify(&mut tx, channel).await?;
    }
    tx.commit().await?;
    Ok(count)
}
