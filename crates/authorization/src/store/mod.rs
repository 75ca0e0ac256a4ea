//! The authorization journal in PostgreSQL: the storage adapter. It decides
//! nothing. Each change is a [`Decision`] taken by `switch_core::lifecycle`
//! under the row's lock ([`Journal::lock`] then [`Locked::apply`]); the
//! journal writes the next record, its audit row and every effect — the
//! reversal queue entry, the late answer, the already-encoded outbox
//! messages — in that one transaction, so the state and its announcement
//! cannot disagree.
//!
//! The two statements of every sale, the intent ([`Journal::begin`]) and the
//! issuer's decision ([`Journal::record_decision`]), are group-committed:
//! concurrent calls share one multi-row statement and one commit (see
//! `group_commit` and `batch`). Their conditional writes (a key journaled
//! once; a decision applied only to the state it was taken from) are what
//! serialize concurrent writers there.

mod batch;
mod reversal_queue;
pub use reversal_queue::ReversalQueueGauges;
mod rows;
mod rrn;

use sqlx::{PgPool, Postgres, Transaction};
use switch_core::lifecycle::{Decision, Effect, ReversalAnswer, SaleIntent};
use switch_core::{Rrn, TerminalId, TransactionId};
use switch_platform::outbox::{self, OutboxMessage};
use time::{Date, OffsetDateTime};

use crate::error::AuthorizationError;
use crate::group_commit::GroupCommit;
use crate::model::{Authorization, RequestKey};
use batch::{DecisionRow, IntentRow};
use rows::{COLUMNS, Lock, select_by_id, select_by_key};

/// The outcome of trying to start an authorization.
pub enum Begin {
    /// The intent is journaled and the caller owns the issuer call.
    Started(Authorization),
    /// The key was journaled before: this is a retry.
    Existing(Authorization),
}

/// Which authorization a command is for.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Id(TransactionId),
    Key(&'a RequestKey),
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Id(id) => id.fmt(f),
            Target::Key(key) => key.fmt(f),
        }
    }
}

/// What an applied decision's effects need besides the decision itself.
#[derive(Debug, Clone)]
pub struct ApplyContext<'a> {
    /// The time the decision was taken at: every timestamp it writes.
    pub now: OffsetDateTime,
    /// The issuer queue a reversal goes to.
    pub issuer: &'a str,
    /// Trace context of the request, kept with an enqueued reversal.
    pub traceparent: &'a str,
    /// The operator's action behind the decision, recorded with it.
    pub operator_action: Option<OperatorAction<'a>>,
    /// The issuer's answer to the reversal attempt the decision is about:
    /// kept with the queue entry it retries or closes, for operators.
    pub reversal_answer: Option<&'a ReversalAnswer>,
}

/// Who asked for a decision by hand, and why.
#[derive(Debug, Clone, Copy)]
pub struct OperatorAction<'a> {
    pub action: &'static str,
    pub operator: &'a str,
    pub reason: &'a str,
}

pub struct Journal {
    pool: PgPool,
    rrns: rrn::RrnAllocator,
    /// The writer of intents (`begin`).
    intents: GroupCommit<IntentRow, Option<sqlx::postgres::PgRow>>,
    /// The writer of issuer decisions (`record_decision`).
    decisions: GroupCommit<DecisionRow, Option<sqlx::postgres::PgRow>>,
}

/// An authorization locked for the rest of a transaction: the state a
/// decision is taken on, and the transaction that applies it.
pub struct Locked {
    tx: Transaction<'static, Postgres>,
    pub current: Authorization,
}

impl Journal {
    /// Starts the journal's group-commit writers on the current Tokio
    /// runtime; they stop when the journal is dropped.
    pub fn new(pool: PgPool) -> Self {
        let intents = {
            let pool = pool.clone();
            GroupCommit::spawn("intents", move |batch| {
                let pool = pool.clone();
                async move { batch::insert_intents(&pool, batch).await }
            })
        };
        let decisions = {
            let pool = pool.clone();
            GroupCommit::spawn("decisions", move |batch| {
                let pool = pool.clone();
                async move { batch::update_decisions(&pool, batch).await }
            })
        };
        Journal {
            pool,
            rrns: rrn::RrnAllocator::default(),
            intents,
            decisions,
        }
    }

    /// The next retrieval reference number, dated `today`.
    pub async fn next_rrn(&self, today: Date) -> Result<Rrn, AuthorizationError> {
        self.rrns.next(&self.pool, today).await
    }

    /// Journals the intent (`Authorization::open`: state `sent_to_issuer`,
    /// with its history from `received`) before the issuer is asked, or
    /// finds the earlier request with the same key. Concurrent calls are
    /// group-committed, and this returns only once their statement has
    /// committed.
    ///
    /// The RRN's eight-digit sequence wraps (issue 13, hole 4): an RRN
    /// already journaled is skipped by this intent alone, never by its
    /// batch, and the intent takes the next one.
    pub async fn begin(
        &self,
        mut intent: SaleIntent,
        now: OffsetDateTime,
    ) -> Result<Begin, AuthorizationError> {
        const RRN_ATTEMPTS: usize = 3;
        for _ in 0..RRN_ATTEMPTS {
            let key = intent.key.clone();
            let (record, history) = Authorization::open(intent.clone(), now);
            if let Some(row) = self.intents.submit(IntentRow { record, history }).await? {
                return Ok(Begin::Started(rows::authorization(&row)?));
            }
            // The key was journaled before (or by another request of the
            // same batch): this is a retry.
            if let Some(existing) = self.find_by_key(&key).await? {
                return Ok(Begin::Existing(existing));
            }
            // Not the key: the RRN is in use.
            let taken = std::mem::replace(&mut intent.rrn, self.next_rrn(now.date()).await?);
            tracing::warn!(rrn = %taken, next = %intent.rrn, "RRN already journaled (the sequence wrapped); taking the next.");
        }
        Err(AuthorizationError::FailedPrecondition(format!(
            "no free RRN for {} after {RRN_ATTEMPTS} attempts",
            intent.key
        )))
    }

    /// Records the issuer's decision (or silence), its history entry and its
    /// announcement: all three or none. Applied only if the row is still in
    /// the state the decision was taken on; otherwise another writer moved
    /// it on first, and its record is returned. Concurrent calls are
    /// group-committed in one statement, which writes the record, its
    /// history and one announcement only: a decision with other effects
    /// (a reversal to enqueue) goes through [`Journal::lock`] and
    /// [`Locked::apply`], and is refused here rather than half applied.
    pub async fn record_decision(
        &self,
        decision: Decision,
        message: Option<OutboxMessage>,
        issuer_latency_ms: i32,
        now: OffsetDateTime,
    ) -> Result<Authorization, AuthorizationError> {
        let id = decision.next.transaction_id;
        if !decision.is_announcement_only() {
            return Err(AuthorizationError::FailedPrecondition(format!(
                "the issuer's decision for {id} has effects the group commit does not write"
            )));
        }
        let transition = decision.transition.ok_or_else(|| {
            AuthorizationError::FailedPrecondition(format!(
                "the issuer's decision for {id} changes no state"
            ))
        })?;
        let row = DecisionRow {
            next: decision.next,
            transition,
            issuer_latency_ms: Some(issuer_latency_ms),
            decided_at: now,
            message,
        };
        match self.decisions.submit(row).await? {
            Some(row) => rows::authorization(&row),
            None => self
                .find_by_id(id)
                .await?
                .ok_or_else(|| AuthorizationError::NotFound(id.to_string())),
        }
    }

    /// Records a decision taken on a record read without a lock,
    /// group-committed with the issuers' decisions: the record, its history
    /// and at most one announcement, all or none. `None`: the row was no
    /// longer in that state (another writer moved it on), nothing is
    /// written, and the caller decides again on what it is now. Only for
    /// decisions whose effects are announcements
    /// ([`Decision::is_announcement_only`]) and that change the state.
    pub async fn record_unlocked(
        &self,
        decision: Decision,
        message: Option<OutboxMessage>,
        now: OffsetDateTime,
    ) -> Result<Option<Authorization>, AuthorizationError> {
        let id = decision.next.transaction_id;
        let transition = match decision.transition {
            Some(transition) if decision.is_announcement_only() => transition,
            _ => {
                return Err(AuthorizationError::FailedPrecondition(format!(
                    "the decision for {id} is not one the group commit writes"
                )));
            }
        };
        let row = DecisionRow {
            next: decision.next,
            transition,
            issuer_latency_ms: None,
            decided_at: now,
            message,
        };
        self.decisions
            .submit(row)
            .await?
            .map(|row| rows::authorization(&row))
            .transpose()
    }

    /// The record `target` names, read without a lock.
    pub async fn find(
        &self,
        target: Target<'_>,
    ) -> Result<Option<Authorization>, AuthorizationError> {
        match target {
            Target::Id(id) => self.find_by_id(id).await,
            Target::Key(key) => self.find_by_key(key).await,
        }
    }

    /// Locks the authorization for a decision: the lock is held until the
    /// decision is applied (or the `Locked` dropped, which rolls back).
    pub async fn lock(&self, target: Target<'_>) -> Result<Locked, AuthorizationError> {
        let mut tx = self.pool.begin().await?;
        let current = match target {
            Target::Id(id) => select_by_id(&mut *tx, id, Lock::ForUpdate).await?,
            Target::Key(key) => select_by_key(&mut *tx, key, Lock::ForUpdate).await?,
        }
        .ok_or_else(|| AuthorizationError::NotFound(target.to_string()))?;
        Ok(Locked { tx, current })
    }

    /// Records a terminal reversal for a transaction the switch never saw;
    /// `announcement` is published once however often the terminal repeats
    /// it.
    pub async fn record_unmatched_reversal(
        &self,
        key: &RequestKey,
        announcement: &OutboxMessage,
        now: OffsetDateTime,
    ) -> Result<(), AuthorizationError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO unmatched_reversals (terminal_id, stan, local_date, received_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(key.terminal_id.as_str())
        .bind(key.stan.as_str())
        .bind(key.local_date.date())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            outbox::enqueue(&mut tx, announcement).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn find_by_key(
        &self,
        key: &RequestKey,
    ) -> Result<Option<Authorization>, AuthorizationError> {
        select_by_key(&self.pool, key, Lock::None).await
    }

    pub async fn find_by_id(
        &self,
        id: TransactionId,
    ) -> Result<Option<Authorization>, AuthorizationError> {
        select_by_id(&self.pool, id, Lock::None).await
    }

    /// Intents journaled in `[from, before)` (from the beginning of the
    /// journal when `from` is `None`) and still waiting for the issuer's
    /// answer, oldest first: candidates for
    /// `switch_core::lifecycle::Command::RecoverAbandonedCall`, which
    /// decides under the lock whether each really was abandoned.
    pub async fn calls_in_flight(
        &self,
        from: Option<OffsetDateTime>,
        before: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<(TransactionId, OffsetDateTime)>, AuthorizationError> {
        let rows: Vec<(uuid::Uuid, OffsetDateTime)> = sqlx::query_as(
            "SELECT transaction_id, created_at FROM authorizations \
             WHERE state = 'sent_to_issuer' AND created_at < $2 \
               AND ($1::timestamptz IS NULL OR created_at >= $1) \
             ORDER BY created_at LIMIT $3",
        )
        .bind(from)
        .bind(before)
        .bind(limit)
        .persistent(false)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, created_at)| (TransactionId::from_uuid(id), created_at))
            .collect())
    }

    pub async fn last_for_terminal(
        &self,
        terminal_id: &TerminalId,
    ) -> Result<Option<Authorization>, AuthorizationError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM authorizations WHERE terminal_id = $1 \
             ORDER BY created_at DESC, transaction_id DESC LIMIT 1"
        ))
        .bind(terminal_id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(rows::authorization)
        .transpose()
    }
}

/// The response code of a reversal attempt's answer; `None` when the
/// issuer did not answer (or no attempt is concerned).
fn answer_code(answer: Option<&ReversalAnswer>) -> Option<&str> {
    match answer {
        Some(ReversalAnswer::Answered(code)) => Some(code.as_str()),
        Some(ReversalAnswer::NoAnswer(_)) | None => None,
    }
}

impl Locked {
    /// Writes `decision` (taken on `self.current`), its audit row, every
    /// effect and the `announcements` (the decision's announcements,
    /// encoded, in order) in this transaction, and commits. Returns the
    /// record as written.
    pub async fn apply(
        mut self,
        decision: &Decision,
        announcements: &[OutboxMessage],
        context: &ApplyContext<'_>,
    ) -> Result<Authorization, AuthorizationError> {
        if decision.is_noop() {
            self.tx.commit().await?;
            return Ok(self.current);
        }
        let next = &decision.next;
        let id = next.transaction_id.as_uuid();
        let written = if *next == self.current {
            self.current.clone()
        } else {
            let row = sqlx::query(&format!(
                "UPDATE authorizations SET state = $2, reversal_reason = $3, \
                   confirmation_evidence = $4, acknowledged_at = $5, conflict_at = $6, \
                   updated_at = $7, response_code = $8, approval_code = $9 \
                 WHERE transaction_id = $1 RETURNING {COLUMNS}"
            ))
            .bind(id)
            .bind(next.state.as_str())
            .bind(next.reversal_reason.map(|r| r.as_str()))
            .bind(next.confirmation_evidence.map(|e| e.as_str()))
            .bind(next.acknowledged_at)
            .bind(next.conflict_at)
            .bind(context.now)
            .bind(next.response_code.as_ref().map(|c| c.as_str()))
            .bind(next.approval_code.as_ref().map(|c| c.as_str()))
            .fetch_one(&mut *self.tx)
            .await?;
            rows::authorization(&row)?
        };
        if let Some(action) = &context.operator_action {
            sqlx::query(
                "INSERT INTO operator_actions (transaction_id, action, operator, reason, at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(action.action)
            .bind(action.operator)
            .bind(action.reason)
            .bind(context.now)
            .execute(&mut *self.tx)
            .await?;
        }
        if let Some(transition) = &decision.transition {
            sqlx::query(
                "INSERT INTO authorization_transitions (transaction_id, from_state, to_state, event, at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(transition.from.map(|state| state.as_str()))
            .bind(transition.to.as_str())
            .bind(transition.event)
            .bind(context.now)
            .execute(&mut *self.tx)
            .await?;
        }
        for effect in &decision.effects {
            match effect {
                // Encoded by the caller, enqueued below in order.
                Effect::Announce(_) => {}
                Effect::EnqueueReversal { reason } => {
                    sqlx::query(
                        "INSERT INTO reversals (transaction_id, issuer, reason, traceparent, \
                           requested_at, next_attempt_at) \
                         VALUES ($1, $2, $3, $4, $5, $5) \
                         ON CONFLICT (transaction_id) DO UPDATE SET status = 'pending', \
                           reason = EXCLUDED.reason, next_attempt_at = EXCLUDED.next_attempt_at, \
                           requested_at = EXCLUDED.requested_at, attempts = 0, \
                           traceparent = EXCLUDED.traceparent",
                    )
                    .bind(id)
                    .bind(context.issuer)
                    .bind(reason.as_str())
                    .bind(context.traceparent)
                    .bind(context.now)
                    .execute(&mut *self.tx)
                    .await?;
                }
                Effect::RetryReversal {
                    delay_ms,
                    last_error,
                } => {
                    sqlx::query(
                        "UPDATE reversals SET next_attempt_at = $2 + make_interval(secs => $3::double precision / 1000), \
                           last_error = $4, last_response_code = $5 WHERE transaction_id = $1",
                    )
                    .bind(id)
                    .bind(context.now)
                    .bind(i64::try_from(*delay_ms).unwrap_or(i64::MAX))
                    .bind(last_error)
                    .bind(answer_code(context.reversal_answer))
                    .execute(&mut *self.tx)
                    .await?;
                }
                Effect::CloseReversal(closed) => {
                    // The last attempt's answer closes it: kept when known.
                    sqlx::query(
                        "UPDATE reversals SET status = $2, \
                           acknowledged_at = CASE WHEN $2 = 'acknowledged' THEN $3 ELSE acknowledged_at END, \
                           dead_lettered_at = CASE WHEN $2 = 'dead_lettered' THEN $3 ELSE dead_lettered_at END, \
                           last_response_code = CASE WHEN $4 THEN $5 ELSE last_response_code END, \
                           last_error = CASE WHEN $4 THEN $6 ELSE last_error END \
                         WHERE transaction_id = $1",
                    )
                    .bind(id)
                    .bind(closed.as_str())
                    .bind(context.now)
                    .bind(context.reversal_answer.is_some())
                    .bind(answer_code(context.reversal_answer))
                    .bind(context.reversal_answer.map(ToString::to_string))
                    .execute(&mut *self.tx)
                    .await?;
                }
                Effect::RecordLateAnswer {
                    response_code,
                    approval_code,
                    latency_ms,
                } => {
                    sqlx::query(
                        "INSERT INTO late_issuer_responses (transaction_id, response_code, \
                           approval_code, latency_ms, received_at) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(id)
                    .bind(response_code)
                    .bind(approval_code)
                    .bind(i32::try_from(*latency_ms).unwrap_or(i32::MAX))
                    .bind(context.now)
                    .execute(&mut *self.tx)
                    .await?;
                }
            }
        }
        for message in announcements {
            outbox::enqueue(&mut self.tx, message).await?;
        }
        self.tx.commit().await?;
        Ok(written)
    }
}
