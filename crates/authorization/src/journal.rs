//! The authorization journal in PostgreSQL. Every state change commits in
//! one transaction with its transition history and, where the change is news
//! for other services, its event in the outbox: the state and its
//! announcement cannot disagree.
//!
//! The two statements of every sale, the intent (`begin`) and the issuer's
//! decision (`record_decision`), are group-committed: concurrent calls share
//! one multi-row statement and one commit (see `group_commit`). Everything
//! else changes one row per transaction.

use std::collections::HashMap;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use switch_core::{
    ApprovalCode, AuthorizationEvent, AuthorizationState, CardExpiry, Channel, Currency, Evidence,
    LocalDate, MaskedPan, MerchantId, Money, Pan, PanFingerprint, ResponseCode, ReversalReason,
    Rrn, SaleDigest, Stan, TerminalId, TransactionId,
};
use switch_platform::outbox::{self, OutboxMessage};
use switch_proto::v1::EventEnvelope;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::convert;
use crate::error::AuthorizationError;
use crate::group_commit::GroupCommit;

/// What one locked update changes; `None`/`false` leaves a column alone.
#[derive(Debug, Default)]
struct Changes {
    state: Option<(AuthorizationState, &'static str)>,
    reversal_reason: Option<ReversalReason>,
    evidence: Option<Evidence>,
    acknowledge: bool,
    conflict: bool,
}

impl Changes {
    fn acknowledged() -> Self {
        Changes {
            acknowledge: true,
            ..Changes::default()
        }
    }
}

/// Which lifecycle event a change announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Confirmed,
    Acknowledged,
    Conflict,
    ReversalRequested,
    Reversed,
    DeadLettered,
}

/// A reversal a worker has claimed for one attempt.
#[derive(Debug, Clone)]
pub struct ClaimedReversal {
    pub transaction_id: TransactionId,
    pub reason: ReversalReason,
    /// Including this one.
    pub attempts: u32,
    /// Since the reversal was requested.
    pub age_ms: u64,
    pub rrn: String,
    pub stan: String,
    pub amount: Money,
    /// Trace context of the request that made the reversal owed.
    pub traceparent: String,
}

/// What identifies a terminal's request: a retry carries the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub terminal_id: TerminalId,
    pub stan: Stan,
    pub local_date: LocalDate,
}

impl std::fmt::Display for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "terminal {} STAN {} on {}",
            self.terminal_id, self.stan, self.local_date
        )
    }
}

/// A validated sale, ready to journal. Holds the PAN only in memory.
#[derive(Debug)]
pub struct SaleCommand {
    pub key: RequestKey,
    pub merchant_id: MerchantId,
    pub pan: Pan,
    pub expiry: CardExpiry,
    pub amount: Money,
    /// Evidence that the terminal completed an earlier transaction.
    pub last_completed_stan: Option<Stan>,
    pub channel: Channel,
}

/// One journal row, parsed into domain types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAuthorization {
    pub transaction_id: TransactionId,
    pub key: RequestKey,
    pub merchant_id: MerchantId,
    pub rrn: Rrn,
    pub masked_pan: MaskedPan,
    pub pan_fingerprint: PanFingerprint,
    pub amount: Money,
    pub state: AuthorizationState,
    pub response_code: Option<ResponseCode>,
    pub approval_code: Option<ApprovalCode>,
    pub acknowledged_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub reversal_reason: Option<ReversalReason>,
    pub confirmation_evidence: Option<Evidence>,
    /// The terminal acknowledged after the switch had reversed (S2).
    pub conflict: bool,
    pub channel: Channel,
}

impl StoredAuthorization {
    pub fn digest(&self) -> SaleDigest {
        SaleDigest {
            pan_fingerprint: self.pan_fingerprint.clone(),
            amount: self.amount,
        }
    }

    fn from_row(row: &PgRow) -> Result<Self, AuthorizationError> {
        let optional_code: Option<String> = row.try_get("response_code")?;
        let optional_approval: Option<String> = row.try_get("approval_code")?;
        let currency: String = row.try_get("currency")?;
        Ok(StoredAuthorization {
            transaction_id: TransactionId::from_uuid(row.try_get("transaction_id")?),
            key: RequestKey {
                terminal_id: parse(TerminalId::parse(row.try_get("terminal_id")?))?,
                stan: parse(Stan::parse(row.try_get("stan")?))?,
                local_date: LocalDate::from_date(row.try_get("local_date")?),
            },
            merchant_id: parse(MerchantId::parse(row.try_get("merchant_id")?))?,
            rrn: parse(Rrn::parse(row.try_get("rrn")?))?,
            masked_pan: parse(MaskedPan::parse(row.try_get("masked_pan")?))?,
            pan_fingerprint: parse(PanFingerprint::from_hex(row.try_get("pan_fingerprint")?))?,
            amount: Money::new(
                row.try_get("amount_minor")?,
                parse(Currency::parse(&currency))?,
            ),
            state: parse(AuthorizationState::parse(row.try_get("state")?))?,
            response_code: optional_code
                .as_deref()
                .map(ResponseCode::parse)
                .transpose()
                .map_err(AuthorizationError::CorruptRow)?,
            approval_code: optional_approval
                .as_deref()
                .map(ApprovalCode::parse)
                .transpose()
                .map_err(AuthorizationError::CorruptRow)?,
            acknowledged_at: row.try_get("acknowledged_at")?,
            created_at: row.try_get("created_at")?,
            reversal_reason: row
                .try_get::<Option<String>, _>("reversal_reason")?
                .as_deref()
                .map(ReversalReason::parse)
                .transpose()
                .map_err(AuthorizationError::CorruptRow)?,
            confirmation_evidence: row
                .try_get::<Option<String>, _>("confirmation_evidence")?
                .as_deref()
                .map(Evidence::parse)
                .transpose()
                .map_err(AuthorizationError::CorruptRow)?,
            conflict: row.try_get("conflict")?,
            channel: parse(Channel::parse(row.try_get("channel")?))?,
        })
    }
}

fn parse<T>(result: Result<T, switch_core::InvalidField>) -> Result<T, AuthorizationError> {
    result.map_err(AuthorizationError::CorruptRow)
}

const COLUMNS: &str = "transaction_id, terminal_id, merchant_id, stan, local_date, rrn, \
    masked_pan, pan_fingerprint, amount_minor, currency, state, response_code, approval_code, \
    acknowledged_at, created_at, reversal_reason, confirmation_evidence, \
    conflict_at IS NOT NULL AS conflict, channel";

/// The outcome of trying to start an authorization.
pub enum Begin {
    /// The intent is journaled and the caller owns the issuer call.
    Started(StoredAuthorization),
    /// The key was journaled before: this is a retry.
    Existing(StoredAuthorization),
}

pub struct Journal {
    pool: PgPool,
    topic: String,
    rrns: RrnAllocator,
    /// Carried in timeout events so consumers know what "too late" meant.
    issuer_timeout_ms: u32,
    /// The writer of intents (`begin`).
    intents: GroupCommit<Intent, Option<PgRow>>,
    /// The writer of issuer decisions (`record_decision`).
    decisions: GroupCommit<Decision, Option<PgRow>>,
}

impl Journal {
    /// Starts the journal's group-commit writers on the current Tokio
    /// runtime; they stop when the journal is dropped.
    pub fn new(pool: PgPool, topic: String, issuer_timeout_ms: u32) -> Self {
        let intents = {
            let pool = pool.clone();
            GroupCommit::spawn("intents", move |batch| {
                let pool = pool.clone();
                async move { insert_intents(&pool, batch).await }
            })
        };
        let decisions = {
            let pool = pool.clone();
            GroupCommit::spawn("decisions", move |batch| {
                let pool = pool.clone();
                async move { update_decisions(&pool, batch).await }
            })
        };
        Journal {
            pool,
            topic,
            rrns: RrnAllocator::default(),
            issuer_timeout_ms,
            intents,
            decisions,
        }
    }

    /// Journals the intent (state `sent_to_issuer`, with its history from
    /// `received`) before the issuer is asked, or finds the earlier request
    /// with the same key. Concurrent calls are group-committed: one
    /// statement inserts the rows and their history for all of them, and
    /// this returns only once that statement has committed.
    pub async fn begin(
        &self,
        command: &SaleCommand,
        fingerprint: &PanFingerprint,
    ) -> Result<Begin, AuthorizationError> {
        let state = AuthorizationState::Received.on(&AuthorizationEvent::SentToIssuer)?;
        let rrn = self.rrns.next(&self.pool).await?;
        let intent = Intent {
            transaction_id: TransactionId::new().as_uuid(),
            terminal_id: command.key.terminal_id.as_str().to_owned(),
            merchant_id: command.merchant_id.as_str().to_owned(),
            stan: command.key.stan.as_str().to_owned(),
            local_date: command.key.local_date.date(),
            rrn: rrn.as_str().to_owned(),
            masked_pan: command.pan.masked().as_str().to_owned(),
            pan_fingerprint: fingerprint.as_str().to_owned(),
            amount_minor: command.amount.minor_units(),
            currency: command.amount.currency().code(),
            state: state.as_str(),
            channel: command.channel.as_str(),
        };
        match self.intents.submit(intent).await? {
            Some(row) => Ok(Begin::Started(StoredAuthorization::from_row(&row)?)),
            // The key was journaled before (or by another request of the
            // same batch): this is a retry.
            None => {
                let existing = self
                    .find_by_key(&command.key)
                    .await?
                    .ok_or_else(|| AuthorizationError::NotFound(command.key.to_string()))?;
                Ok(Begin::Existing(existing))
            }
        }
    }

    /// Records the issuer's decision (or silence), its history entry and its
    /// event in the outbox: all three or none. Concurrent calls are
    /// group-committed in one statement.
    pub async fn record_decision(
        &self,
        current: &StoredAuthorization,
        event: &AuthorizationEvent,
        issuer_latency_ms: i32,
    ) -> Result<StoredAuthorization, AuthorizationError> {
        let next = current.state.on(event)?;
        let (response_code, approval_code) = match event {
            AuthorizationEvent::IssuerApproved { approval_code } => {
                (Some(ResponseCode::APPROVED), Some(approval_code.clone()))
            }
            AuthorizationEvent::IssuerDeclined { response_code } => (Some(*response_code), None),
            _ => (None, None),
        };
        // The event describes the row as the UPDATE will leave it; the
        // statement returns that row, and it is what the caller gets.
        let expected = StoredAuthorization {
            state: next,
            response_code,
            approval_code: approval_code.clone(),
            ..current.clone()
        };
        let message = convert::decision_event(&expected, self.issuer_timeout_ms)
            .map(|envelope| self.outbox_message(&expected, &envelope))
            .transpose()?;
        let decision = Decision {
            transaction_id: current.transaction_id.as_uuid(),
            from_state: current.state.as_str(),
            to_state: next.as_str(),
            response_code: response_code.map(|code| code.as_str().to_owned()),
            approval_code: approval_code.map(|code| code.as_str().to_owned()),
            issuer_latency_ms,
            event: event.name(),
            message,
        };
        match self.decisions.submit(decision).await? {
            Some(row) => StoredAuthorization::from_row(&row),
            // Another writer moved it on first; its record is the truth.
            None => self
                .find_by_id(current.transaction_id)
                .await?
                .ok_or_else(|| AuthorizationError::NotFound(current.transaction_id.to_string())),
        }
    }

    /// Evidence from the terminal that it completed the transaction (its
    /// acknowledgement, or a later request naming it as the last completed
    /// STAN). Confirms an approval; on a reversed one it is a conflict (S2):
    /// recorded and announced once. Idempotent.
    pub async fn acknowledge(
        &self,
        key: &RequestKey,
        evidence: Evidence,
    ) -> Result<StoredAuthorization, AuthorizationError> {
        let mut tx = self.pool.begin().await?;
        let current = self
            .lock_by_key(&mut tx, key)
            .await?
            .ok_or_else(|| AuthorizationError::NotFound(key.to_string()))?;
        if current.state.is_in_flight() {
            return Err(AuthorizationError::NotYetDecided(key.to_string()));
        }
        let first_ack = current.acknowledged_at.is_none();
        let (changes, event) = match current.state {
            AuthorizationState::Approved => {
                let confirm = AuthorizationEvent::Confirmed { evidence };
                let next = current.state.on(&confirm)?;
                (
                    Changes {
                        state: Some((next, confirm.name())),
                        evidence: Some(evidence),
                        ..Changes::acknowledged()
                    },
                    Some(EventKind::Confirmed),
                )
            }
            AuthorizationState::ReversalPending
            | AuthorizationState::Reversed
            | AuthorizationState::ReversalDeadLettered => (
                Changes {
                    conflict: true,
                    ..Changes::acknowledged()
                },
                (!current.conflict).then_some(EventKind::Conflict),
            ),
            _ => (
                Changes::acknowledged(),
                first_ack.then_some(EventKind::Acknowledged),
            ),
        };
        let updated = self.update_locked(&mut tx, &current, &changes).await?;
        if let Some(kind) = event {
            let envelope = convert::lifecycle_event(&updated, kind);
            outbox::enqueue(&mut tx, &self.outbox_message(&updated, &envelope)?).await?;
        }
        tx.commit().await?;
        Ok(updated)
    }

    /// Confirms an approval without terminal evidence (policy). Idempotent;
    /// refused once a reversal has started.
    pub async fn confirm(
        &self,
        id: TransactionId,
        evidence: Evidence,
    ) -> Result<StoredAuthorization, AuthorizationError> {
        let mut tx = self.pool.begin().await?;
        let current = self
            .lock_by_id(&mut tx, id)
            .await?
            .ok_or_else(|| AuthorizationError::NotFound(id.to_string()))?;
        if current.state == AuthorizationState::Confirmed {
            return Ok(current);
        }
        let confirm = AuthorizationEvent::Confirmed { evidence };
        let next = current.state.on(&confirm).map_err(|_| {
            AuthorizationError::FailedPrecondition(format!(
                "authorization {id} is {} and cannot be confirmed",
                current.state
            ))
        })?;
        let changes = Changes {
            state: Some((next, confirm.name())),
            evidence: Some(evidence),
            ..Changes::default()
        };
        let updated = self.update_locked(&mut tx, &current, &changes).await?;
        let envelope = convert::lifecycle_event(&updated, EventKind::Confirmed);
        outbox::enqueue(&mut tx, &self.outbox_message(&updated, &envelope)?).await?;
        tx.commit().await?;
        Ok(updated)
    }

    /// Makes a reversal owed: the state, its history, the durable queue
    /// entry and the event commit together. Idempotent: a reversal already
    /// pending, done or dead-lettered is returned as it is; a declined
    /// authorization has nothing to reverse.
    pub async fn request_reversal(
        &self,
        id: TransactionId,
        reason: ReversalReason,
        issuer: &str,
    ) -> Result<StoredAuthorization, AuthorizationError> {
        let mut tx = self.pool.begin().await?;
        let current = self
            .lock_by_id(&mut tx, id)
            .await?
            .ok_or_else(|| AuthorizationError::NotFound(id.to_string()))?;
        match current.state {
            AuthorizationState::ReversalPending
            | AuthorizationState::Reversed
            | AuthorizationState::ReversalDeadLettered
            | AuthorizationState::Declined => return Ok(current),
            AuthorizationState::Confirmed => {
                return Err(AuthorizationError::FailedPrecondition(format!(
                    "authorization {id} is confirmed (evidence: {}); it is not reversed",
                    current
                        .confirmation_evidence
                        .map_or("unknown", |e| e.as_str())
                )));
            }
            _ => {}
        }
        let request = AuthorizationEvent::ReversalRequested { reason };
        let next = current.state.on(&request)?;
        let changes = Changes {
            state: Some((next, request.name())),
            reversal_reason: Some(reason),
            ..Changes::default()
        };
        let updated = self.update_locked(&mut tx, &current, &changes).await?;
        let (traceparent, _) = switch_platform::telemetry::current_trace_context();
        sqlx::query(
            "INSERT INTO reversals (transaction_id, issuer, reason, traceparent) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (transaction_id) DO UPDATE SET status = 'pending', \
               next_attempt_at = now(), requested_at = now(), attempts = 0, \
               traceparent = EXCLUDED.traceparent",
        )
        .bind(id.as_uuid())
        .bind(issuer)
        .bind(reason.as_str())
        .bind(traceparent)
        .execute(&mut *tx)
        .await?;
        let envelope = convert::lifecycle_event(&updated, EventKind::ReversalRequested);
        outbox::enqueue(&mut tx, &self.outbox_message(&updated, &envelope)?).await?;
        tx.commit().await?;
        Ok(updated)
    }

    /// Records a terminal reversal for a transaction the switch never saw;
    /// announced once however often the terminal repeats it.
    pub async fn record_unmatched_reversal(
        &self,
        key: &RequestKey,
    ) -> Result<(), AuthorizationError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO unmatched_reversals (terminal_id, stan, local_date) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(key.terminal_id.as_str())
        .bind(key.stan.as_str())
        .bind(key.local_date.date())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            let envelope = convert::unmatched_reversal_event(key);
            let message = OutboxMessage {
                event_id: Uuid::parse_str(&envelope.event_id)
                    .map_err(|_| switch_core::InvalidField::new("event_id", "not a UUID"))
                    .map_err(AuthorizationError::CorruptRow)?,
                topic: self.topic.clone(),
                key: key.to_string(),
                payload: prost::Message::encode_to_vec(&envelope),
                traceparent: envelope.traceparent.clone(),
            };
            outbox::enqueue(&mut tx, &message).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records an issuer answer that arrived after the switch gave up. It
    /// changes no state: the authorization stays timed out (or reversed).
    pub async fn record_late_response(
        &self,
        id: TransactionId,
        response_code: &str,
        approval_code: &str,
        latency_ms: i32,
    ) -> Result<(), AuthorizationError> {
        let mut tx = self.pool.begin().await?;
        let Some(current) = self.lock_by_id(&mut tx, id).await? else {
            return Err(AuthorizationError::NotFound(id.to_string()));
        };
        sqlx::query(
            "INSERT INTO late_issuer_responses (transaction_id, response_code, approval_code, latency_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(id.as_uuid())
        .bind(response_code)
        .bind(approval_code)
        .bind(latency_ms)
        .execute(&mut *tx)
        .await?;
        let envelope =
            convert::late_response_event(&current, response_code, approval_code, latency_ms);
        outbox::enqueue(&mut tx, &self.outbox_message(&current, &envelope)?).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims up to `limit` due reversals of `issuer`, leasing each for
    /// `lease_ms` (so a worker that dies mid-attempt loses its claim by
    /// itself) and counting the attempt.
    pub async fn claim_reversals(
        &self,
        issuer: &str,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedReversal>, AuthorizationError> {
        let rows = sqlx::query(
            "WITH due AS ( \
               SELECT transaction_id FROM reversals \
               WHERE status = 'pending' AND issuer = $1 AND next_attempt_at <= now() \
               ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
             claimed AS ( \
               UPDATE reversals r SET attempts = r.attempts + 1, \
                 next_attempt_at = now() + make_interval(secs => $3::double precision / 1000), \
                 first_sent_at = COALESCE(r.first_sent_at, now()) \
               FROM due WHERE r.transaction_id = due.transaction_id \
               RETURNING r.transaction_id, r.reason, r.attempts, r.traceparent, \
                 (extract(epoch FROM now() - r.requested_at) * 1000)::bigint AS age_ms) \
             SELECT c.transaction_id, c.reason, c.attempts, c.age_ms, c.traceparent, a.rrn, \
               a.stan, a.amount_minor, a.currency \
             FROM claimed c JOIN authorizations a USING (transaction_id)",
        )
        .bind(issuer)
        .bind(limit)
        .bind(lease_ms)
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

    /// The issuer acknowledged the reversal: the queue entry, the state, its
    /// history and the event, together. Idempotent.
    pub async fn complete_reversal(
        &self,
        claimed: &ClaimedReversal,
    ) -> Result<Option<StoredAuthorization>, AuthorizationError> {
        self.finish_reversal(
            claimed,
            "acknowledged",
            &AuthorizationEvent::IssuerReversed,
            EventKind::Reversed,
        )
        .await
    }

    /// The reversal outlived its maximum age: dead-lettered, announced.
    pub async fn dead_letter_reversal(
        &self,
        claimed: &ClaimedReversal,
    ) -> Result<Option<StoredAuthorization>, AuthorizationError> {
        self.finish_reversal(
            claimed,
            "dead_lettered",
            &AuthorizationEvent::ReversalDeadLettered,
            EventKind::DeadLettered,
        )
        .await
    }

    async fn finish_reversal(
        &self,
        claimed: &ClaimedReversal,
        status: &str,
        event: &AuthorizationEvent,
        kind: EventKind,
    ) -> Result<Option<StoredAuthorization>, AuthorizationError> {
        // Lock order everywhere: the authorization row, then its reversal.
        let mut tx = self.pool.begin().await?;
        let current = self
            .lock_by_id(&mut tx, claimed.transaction_id)
            .await?
            .ok_or_else(|| AuthorizationError::NotFound(claimed.transaction_id.to_string()))?;
        let marked = sqlx::query(
            "UPDATE reversals SET status = $2, \
               acknowledged_at = CASE WHEN $2 = 'acknowledged' THEN now() END, \
               dead_lettered_at = CASE WHEN $2 = 'dead_lettered' THEN now() END \
             WHERE transaction_id = $1 AND status = 'pending'",
        )
        .bind(claimed.transaction_id.as_uuid())
        .bind(status)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 0 {
            // Another worker finished it first.
            return Ok(None);
        }
        let next = current.state.on(event)?;
        let changes = Changes {
            state: Some((next, event.name())),
            ..Changes::default()
        };
        let updated = self.update_locked(&mut tx, &current, &changes).await?;
        let mut envelope = convert::lifecycle_event(&updated, kind);
        convert::set_attempts(&mut envelope, claimed.attempts);
        outbox::enqueue(&mut tx, &self.outbox_message(&updated, &envelope)?).await?;
        tx.commit().await?;
        Ok(Some(updated))
    }

    /// The attempt failed: try again after `delay_ms`.
    pub async fn retry_reversal(
        &self,
        claimed: &ClaimedReversal,
        delay_ms: u64,
        error: &str,
    ) -> Result<(), AuthorizationError> {
        sqlx::query(
            "UPDATE reversals SET next_attempt_at = now() + make_interval(secs => $2::double precision / 1000), \
               last_error = $3 WHERE transaction_id = $1 AND status = 'pending'",
        )
        .bind(claimed.transaction_id.as_uuid())
        .bind(i64::try_from(delay_ms).unwrap_or(i64::MAX))
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
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

    async fn lock_by_id(
        &self,
        tx: &mut sqlx::PgConnection,
        id: TransactionId,
    ) -> Result<Option<StoredAuthorization>, AuthorizationError> {
        select_by_id(tx, id, Lock::ForUpdate).await
    }

    async fn lock_by_key(
        &self,
        tx: &mut sqlx::PgConnection,
        key: &RequestKey,
    ) -> Result<Option<StoredAuthorization>, AuthorizationError> {
        select_by_key(tx, key, Lock::ForUpdate).await
    }

    /// Applies `changes` to a row the caller has locked, with a history
    /// entry when the state changes.
    async fn update_locked(
        &self,
        tx: &mut sqlx::PgConnection,
        current: &StoredAuthorization,
        changes: &Changes,
    ) -> Result<StoredAuthorization, AuthorizationError> {
        let next = changes.state.map_or(current.state, |(state, _)| state);
        let row = sqlx::query(&format!(
            "UPDATE authorizations SET state = $2, \
               reversal_reason = COALESCE($3, reversal_reason), \
               confirmation_evidence = COALESCE($4, confirmation_evidence), \
               acknowledged_at = CASE WHEN $5 THEN COALESCE(acknowledged_at, now()) ELSE acknowledged_at END, \
               conflict_at = CASE WHEN $6 THEN COALESCE(conflict_at, now()) ELSE conflict_at END, \
               updated_at = now() \
             WHERE transaction_id = $1 RETURNING {COLUMNS}"
        ))
        .bind(current.transaction_id.as_uuid())
        .bind(next.as_str())
        .bind(changes.reversal_reason.map(|r| r.as_str()))
        .bind(changes.evidence.map(|e| e.as_str()))
        .bind(changes.acknowledge)
        .bind(changes.conflict)
        .fetch_one(&mut *tx)
        .await?;
        if let Some((to, event)) = changes.state {
            sqlx::query(
                "INSERT INTO authorization_transitions (transaction_id, from_state, to_state, event) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(current.transaction_id.as_uuid())
            .bind(current.state.as_str())
            .bind(to.as_str())
            .bind(event)
            .execute(&mut *tx)
            .await?;
        }
        StoredAuthorization::from_row(&row)
    }

    fn outbox_message(
        &self,
        authorization: &StoredAuthorization,
        envelope: &EventEnvelope,
    ) -> Result<OutboxMessage, AuthorizationError> {
        let event_id = Uuid::parse_str(&envelope.event_id)
            .map_err(|_| switch_core::InvalidField::new("event_id", "not a UUID"))
            .map_err(AuthorizationError::CorruptRow)?;
        Ok(OutboxMessage {
            event_id,
            topic: self.topic.clone(),
            key: authorization.transaction_id.to_string(),
            payload: prost::Message::encode_to_vec(envelope),
            traceparent: envelope.traceparent.clone(),
        })
    }

    pub async fn find_by_key(
        &self,
        key: &RequestKey,
    ) -> Result<Option<StoredAuthorization>, AuthorizationError> {
        select_by_key(&self.pool, key, Lock::None).await
    }

    pub async fn find_by_id(
        &self,
        id: TransactionId,
    ) -> Result<Option<StoredAuthorization>, AuthorizationError> {
        select_by_id(&self.pool, id, Lock::None).await
    }

    pub async fn last_for_terminal(
        &self,
        terminal_id: &TerminalId,
    ) -> Result<Option<StoredAuthorization>, AuthorizationError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM authorizations WHERE terminal_id = $1 \
             ORDER BY created_at DESC, transaction_id DESC LIMIT 1"
        ))
        .bind(terminal_id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(StoredAuthorization::from_row)
        .transpose()
    }
}

/// Whether a read locks the row for the rest of the caller's transaction.
#[derive(Debug, Clone, Copy)]
enum Lock {
    None,
    ForUpdate,
}

impl Lock {
    fn clause(self) -> &'static str {
        match self {
            Lock::None => "",
            Lock::ForUpdate => " FOR UPDATE",
        }
    }
}

async fn select_by_id<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: TransactionId,
    lock: Lock,
) -> Result<Option<StoredAuthorization>, AuthorizationError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM authorizations WHERE transaction_id = $1{}",
        lock.clause()
    ))
    .bind(id.as_uuid())
    .fetch_optional(executor)
    .await?
    .as_ref()
    .map(StoredAuthorization::from_row)
    .transpose()
}

async fn select_by_key<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    key: &RequestKey,
    lock: Lock,
) -> Result<Option<StoredAuthorization>, AuthorizationError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM authorizations \
         WHERE terminal_id = $1 AND stan = $2 AND local_date = $3{}",
        lock.clause()
    ))
    .bind(key.terminal_id.as_str())
    .bind(key.stan.as_str())
    .bind(key.local_date.date())
    .fetch_optional(executor)
    .await?
    .as_ref()
    .map(StoredAuthorization::from_row)
    .transpose()
}

/// One `begin`, validated and ready to insert.
struct Intent {
    transaction_id: Uuid,
    terminal_id: String,
    merchant_id: String,
    stan: String,
    local_date: time::Date,
    rrn: String,
    masked_pan: String,
    pan_fingerprint: String,
    amount_minor: i64,
    currency: &'static str,
    state: &'static str,
    channel: &'static str,
}

/// Inserts a batch of intents, each with its two history rows, in one
/// statement (one transaction). A row whose key is already journaled,
/// including by an earlier intent of the same batch, is not inserted: its
/// result is `None`. Results are in the batch's order, matched back by
/// transaction id.
async fn insert_intents(
    pool: &PgPool,
    batch: Vec<Intent>,
) -> Result<Vec<Option<PgRow>>, sqlx::Error> {
    let ids: Vec<Uuid> = batch.iter().map(|intent| intent.transaction_id).collect();
    // Rows go in in key order, so two batches (of two processes) never wait
    // for each other's keys in opposite orders.
    let mut sorted = batch;
    sorted.sort_by(|a, b| {
        (&a.terminal_id, &a.stan, a.local_date).cmp(&(&b.terminal_id, &b.stan, b.local_date))
    });
    let text = |get: fn(&Intent) -> &str| -> Vec<&str> { sorted.iter().map(get).collect() };
    let rows = sqlx::query(&format!(
        "WITH inserted AS ( \
           INSERT INTO authorizations (transaction_id, terminal_id, merchant_id, stan, \
             local_date, rrn, masked_pan, pan_fingerprint, amount_minor, currency, state, \
             channel) \
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::date[], \
             $6::text[], $7::text[], $8::text[], $9::int8[], $10::text[], $11::text[], \
             $12::text[]) \
           ON CONFLICT ON CONSTRAINT authorizations_terminal_key DO NOTHING \
           RETURNING {COLUMNS}), \
         history AS ( \
           INSERT INTO authorization_transitions (transaction_id, from_state, to_state, event) \
           SELECT transaction_id, NULL, $13::text, 'received' FROM inserted \
           UNION ALL SELECT transaction_id, $13::text, state, $14::text FROM inserted) \
         SELECT * FROM inserted"
    ))
    .bind(sorted.iter().map(|i| i.transaction_id).collect::<Vec<_>>())
    .bind(text(|i| &i.terminal_id))
    .bind(text(|i| &i.merchant_id))
    .bind(text(|i| &i.stan))
    .bind(sorted.iter().map(|i| i.local_date).collect::<Vec<_>>())
    .bind(text(|i| &i.rrn))
    .bind(text(|i| &i.masked_pan))
    .bind(text(|i| &i.pan_fingerprint))
    .bind(sorted.iter().map(|i| i.amount_minor).collect::<Vec<_>>())
    .bind(text(|i| i.currency))
    .bind(text(|i| i.state))
    .bind(text(|i| i.channel))
    .bind(AuthorizationState::Received.as_str())
    .bind(AuthorizationEvent::SentToIssuer.name())
    .fetch_all(pool)
    .await?;
    let mut inserted: HashMap<Uuid, PgRow> = HashMap::with_capacity(rows.len());
    for row in rows {
        inserted.insert(row.try_get("transaction_id")?, row);
    }
    Ok(ids.iter().map(|id| inserted.remove(id)).collect())
}

/// One `record_decision`, validated (its transition checked) and with its
/// event, if it has one, already encoded.
struct Decision {
    transaction_id: Uuid,
    from_state: &'static str,
    to_state: &'static str,
    response_code: Option<String>,
    approval_code: Option<String>,
    issuer_latency_ms: i32,
    event: &'static str,
    message: Option<OutboxMessage>,
}

/// Records a batch of decisions, each with its history row and its outbox
/// row (if it has an event), in one statement (one transaction). A decision
/// whose row is no longer in the state it was decided from is not applied:
/// its result is `None`, and it adds neither history nor event. Results are
/// in the batch's order, matched back by the decision's position.
async fn update_decisions(
    pool: &PgPool,
    batch: Vec<Decision>,
) -> Result<Vec<Option<PgRow>>, sqlx::Error> {
    // Rows are locked in transaction id order (see `insert_intents`);
    // `order[k]` is the batch position of the k-th decision sent.
    let size = batch.len();
    let mut sorted: Vec<(usize, Decision)> = batch.into_iter().enumerate().collect();
    sorted.sort_by_key(|(_, decision)| decision.transaction_id);
    let order: Vec<usize> = sorted.iter().map(|(position, _)| *position).collect();
    let decisions: Vec<&Decision> = sorted.iter().map(|(_, decision)| decision).collect();
    let column = |get: fn(&Decision) -> Option<&str>| -> Vec<Option<&str>> {
        decisions.iter().map(|d| get(d)).collect()
    };
    let message = |get: fn(&OutboxMessage) -> &str| -> Vec<Option<&str>> {
        decisions
            .iter()
            .map(|d| d.message.as_ref().map(get))
            .collect()
    };
    let rows = sqlx::query(&format!(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::int4[], $7::text[], $8::uuid[], $9::text[], $10::text[], $11::bytea[], \
             $12::text[]) \
           WITH ORDINALITY AS i(id, from_state, to_state, new_response_code, \
             new_approval_code, latency_ms, event, event_id, topic, message_key, payload, \
             traceparent, ord)), \
         updated AS ( \
           UPDATE authorizations SET state = i.to_state, response_code = i.new_response_code, \
             approval_code = i.new_approval_code, issuer_latency_ms = i.latency_ms, \
             updated_at = now() \
           FROM input i \
           WHERE transaction_id = i.id AND state = i.from_state \
           RETURNING i.ord, {COLUMNS}), \
         history AS ( \
           INSERT INTO authorization_transitions (transaction_id, from_state, to_state, event) \
           SELECT i.id, i.from_state, i.to_state, i.event \
           FROM updated JOIN input i USING (ord) ORDER BY ord), \
         announced AS ( \
           INSERT INTO outbox (event_id, topic, message_key, payload, traceparent) \
           SELECT i.event_id, i.topic, i.message_key, i.payload, i.traceparent \
           FROM updated JOIN input i USING (ord) \
           WHERE i.event_id IS NOT NULL ORDER BY ord) \
         SELECT * FROM updated"
    ))
    // Planned afresh for every batch: a cached generic plan, made while the
    // journal was small (a fresh deployment, before autovacuum has analyzed
    // it), keeps joining by sequential scan as the table grows: 0.3 ms per
    // decision at 50,000 rows instead of microseconds.
    .persistent(false)
    .bind(
        decisions
            .iter()
            .map(|d| d.transaction_id)
            .collect::<Vec<_>>(),
    )
    .bind(decisions.iter().map(|d| d.from_state).collect::<Vec<_>>())
    .bind(decisions.iter().map(|d| d.to_state).collect::<Vec<_>>())
    .bind(column(|d| d.response_code.as_deref()))
    .bind(column(|d| d.approval_code.as_deref()))
    .bind(
        decisions
            .iter()
            .map(|d| d.issuer_latency_ms)
            .collect::<Vec<_>>(),
    )
    .bind(decisions.iter().map(|d| d.event).collect::<Vec<_>>())
    .bind(
        decisions
            .iter()
            .map(|d| d.message.as_ref().map(|m| m.event_id))
            .collect::<Vec<_>>(),
    )
    .bind(message(|m| &m.topic))
    .bind(message(|m| &m.key))
    .bind(
        decisions
            .iter()
            .map(|d| d.message.as_ref().map(|m| m.payload.as_slice()))
            .collect::<Vec<_>>(),
    )
    .bind(message(|m| &m.traceparent))
    .fetch_all(pool)
    .await?;
    let mut results: Vec<Option<PgRow>> = (0..size).map(|_| None).collect();
    for row in rows {
        // `ord` counts the decisions sent from 1. RETURNING gives each
        // input at most one row, so a decision repeated in one batch is
        // applied once and its repeat falls back like a late one.
        let ord: i64 = row.try_get("ord")?;
        let position = usize::try_from(ord - 1)
            .ok()
            .and_then(|k| order.get(k))
            .copied()
            .ok_or_else(|| sqlx::Error::Protocol(format!("decision ordinal {ord} out of range")))?;
        results[position] = Some(row);
    }
    Ok(results)
}

/// Hands out RRN sequence numbers from blocks of 1000 reserved in the
/// database, so RRNs stay unique across processes without a round trip per
/// authorization.
#[derive(Default)]
struct RrnAllocator {
    block: Mutex<(u64, u64)>,
}

impl RrnAllocator {
    const BLOCK: u64 = 1_000;

    async fn next(&self, pool: &PgPool) -> Result<Rrn, AuthorizationError> {
        let mut block = self.block.lock().await;
        if block.0 == block.1 {
            let reserved: i64 = sqlx::query_scalar("SELECT nextval('rrn_blocks')")
                .fetch_one(pool)
                .await?;
            let start = u64::try_from(reserved).unwrap_or(0) * Self::BLOCK;
            *block = (start, start + Self::BLOCK);
        }
        let sequence = block.0;
        block.0 += 1;
        Ok(Rrn::from_parts(OffsetDateTime::now_utc().date(), sequence))
    }
}
