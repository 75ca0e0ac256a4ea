//! The `approvals` table: where each watch's state is kept, and how a
//! command is applied to it. Every change goes the same way: lock the row,
//! load the watch, call [`switch_core::watch::decide`] with the caller's
//! `now`, and write the decision's next state in the same transaction; the
//! caller then carries out the decision's effects. This module converts
//! rows to watches and back and never looks at a watch's state to decide.
//!
//! Several sweepers may run at once. A sweeper claims due rows with
//! `FOR UPDATE SKIP LOCKED`, decides each under the lock (an orphan is
//! decided, every claimed row is leased: its `next_attempt_at` moves past
//! the call timeout) and commits. It then calls authorization outside the
//! row locks. So no two sweepers ask about the same row at the same time,
//! and a sweeper that dies after claiming only delays the call until the
//! lease runs out; authorization's Reverse and Confirm are idempotent, so a
//! repeated call after such a crash is harmless. "Is it due" in SQL binds
//! the caller's `now`, the clock the deadlines were computed on.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use switch_core::watch::decide;
use switch_core::{Verdict, Watch, WatchCommand, WatchDecision, WatchEffect, WatchOutcome};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::ReversalHandlerConfig;
use crate::outcome::{decision_columns, parse_decision};

/// How many rows one sweep claims at most.
pub const CLAIM_LIMIT: i64 = 100;

/// How long a row that cannot be read back waits before it is claimed
/// again: it needs an operator, not a tight loop.
const UNREADABLE_BACKOFF: time::Duration = time::Duration::minutes(1);

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

/// A due row, claimed (and locked) by one sweeper's open transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub transaction_id: Uuid,
    pub merchant_id: String,
    pub watch: Watch,
    pub traceparent: String,
}

/// A claimed watch after the sweep's decision: what to carry out (an
/// orphan to count, authorization to ask), once the claim is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    pub transaction_id: Uuid,
    pub merchant_id: String,
    pub traceparent: String,
    pub effects: Vec<WatchEffect>,
}

/// The state columns of a row, as read back.
const STATE_COLUMNS: &str = "status, approved_at, deadline_at, decision, reason, decided_at, \
     attempts, next_attempt_at, outcome, closed_at";

/// Reads a watch back from its row; `Err` names what does not parse (only
/// this service writes the rows, under CHECK constraints, so that needs an
/// operator).
fn watch_of(row: &PgRow) -> Result<Result<Watch, String>, sqlx::Error> {
    let status: &str = row.try_get("status")?;
    let approved_at: Option<OffsetDateTime> = row.try_get("approved_at")?;
    let deadline_at: Option<OffsetDateTime> = row.try_get("deadline_at")?;
    let decided_at: Option<OffsetDateTime> = row.try_get("decided_at")?;
    let next_attempt_at: Option<OffsetDateTime> = row.try_get("next_attempt_at")?;
    let closed_at: Option<OffsetDateTime> = row.try_get("closed_at")?;
    let kind: Option<&str> = row.try_get("decision")?;
    let reason: Option<&str> = row.try_get("reason")?;
    let outcome: Option<&str> = row.try_get("outcome")?;
    let attempts = u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0);
    let verdict = match (kind, reason, decided_at) {
        (Some(kind), Some(reason), Some(decided_at)) => match parse_decision(kind, reason) {
            Some(decision) => Some(Verdict {
                decision,
                decided_at,
            }),
            None => return Ok(Err(format!("no known decision '{kind}:{reason}'"))),
        },
        _ => None,
    };
    let missing = |what: &str| Ok(Err(format!("{status} row without {what}")));
    Ok(Ok(match status {
        "open" => {
            let Some(deadline_at) = deadline_at else {
                return missing("a deadline");
            };
            Watch::Open {
                approved_at: approved_at.unwrap_or(deadline_at),
                deadline_at,
            }
        }
        "decided" => {
            let (Some(verdict), Some(next_attempt_at)) = (verdict, next_attempt_at) else {
                return missing("a decision");
            };
            Watch::Decided {
                deadline_at: deadline_at.unwrap_or(verdict.decided_at),
                verdict,
                attempts,
                next_attempt_at,
            }
        }
        "closed" => {
            let (Some(outcome), Some(closed_at)) = (outcome, closed_at) else {
                return missing("an outcome");
            };
            let outcome = match WatchOutcome::parse(outcome) {
                Ok(outcome) => outcome,
                Err(error) => return Ok(Err(error.to_string())),
            };
            Watch::Closed {
                deadline_at,
                verdict,
                attempts,
                outcome,
                closed_at,
            }
        }
        other => return Ok(Err(format!("unknown status '{other}'"))),
    }))
}

/// A watch as the columns it is stored in.
struct Columns {
    status: &'static str,
    approved_at: Option<OffsetDateTime>,
    deadline_at: Option<OffsetDateTime>,
    decision: Option<&'static str>,
    reason: Option<&'static str>,
    decided_at: Option<OffsetDateTime>,
    attempts: i32,
    next_attempt_at: Option<OffsetDateTime>,
    outcome: Option<String>,
    closed_at: Option<OffsetDateTime>,
}

impl Columns {
    fn of(watch: &Watch) -> Columns {
        let none = Columns {
            status: "open",
            approved_at: None,
            deadline_at: None,
            decision: None,
            reason: None,
            decided_at: None,
            attempts: 0,
            next_attempt_at: None,
            outcome: None,
            closed_at: None,
        };
        let with_verdict = |columns: Columns, verdict: Option<Verdict>| match verdict {
            Some(verdict) => {
                let (kind, reason) = decision_columns(verdict.decision);
                Columns {
                    decision: Some(kind),
                    reason: Some(reason),
                    decided_at: Some(verdict.decided_at),
                    ..columns
                }
            }
            None => columns,
        };
        let attempts = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        match *watch {
            // Never written: nothing is known.
            Watch::Unseen => none,
            Watch::Open {
                approved_at,
                deadline_at,
            } => Columns {
                approved_at: Some(approved_at),
                deadline_at: Some(deadline_at),
                ..none
            },
            Watch::Decided {
                deadline_at,
                verdict,
                attempts: n,
                next_attempt_at,
            } => with_verdict(
                Columns {
                    status: "decided",
                    deadline_at: Some(deadline_at),
                    attempts: attempts(n),
                    next_attempt_at: Some(next_attempt_at),
                    ..none
                },
                Some(verdict),
            ),
            Watch::Closed {
                deadline_at,
                verdict,
                attempts: n,
                outcome,
                closed_at,
            } => with_verdict(
                Columns {
                    status: "closed",
                    deadline_at,
                    attempts: attempts(n),
                    outcome: Some(outcome.name()),
                    closed_at: Some(closed_at),
                    ..none
                },
                verdict,
            ),
        }
    }
}

/// One watch to decide: its facts (for a row not written yet), the watch
/// as stored (`None`: no row) and the command.
struct Pending<'a> {
    facts: &'a ApprovalFacts,
    stored: Option<Watch>,
    command: WatchCommand,
}

/// Decides every pending watch and writes the changed ones: updates for
/// rows that exist (and are locked by the caller), inserts for new ones.
/// Returns the decisions written, and the transactions whose insert lost
/// to a concurrent one (decide those again on what it wrote).
async fn decide_and_write(
    conn: &mut PgConnection,
    pending: Vec<Pending<'_>>,
    now: OffsetDateTime,
) -> Result<(Vec<(Uuid, WatchDecision)>, HashSet<Uuid>), sqlx::Error> {
    let mut decided = Vec::with_capacity(pending.len());
    let mut updates: Vec<(Uuid, Watch)> = Vec::new();
    let mut inserts: Vec<(&ApprovalFacts, Watch)> = Vec::new();
    for item in pending {
        let transaction_id = item.facts.transaction_id;
        let current = item.stored.unwrap_or(Watch::Unseen);
        let decision = match decide(&current, item.command, now) {
            Ok(decision) => decision,
            Err(refusal) => {
                tracing::debug!(%transaction_id, %refusal, "Nothing to do for this watch.");
                continue;
            }
        };
        if decision.changes(&current) {
            match item.stored {
                Some(_) => updates.push((transaction_id, decision.next)),
                None => inserts.push((item.facts, decision.next)),
            }
        }
        decided.push((transaction_id, decision));
    }
    update_many(conn, &updates).await?;
    let inserted = insert_many(conn, &inserts).await?;
    let lost: HashSet<Uuid> = inserts
        .iter()
        .map(|(facts, _)| facts.transaction_id)
        .filter(|id| !inserted.contains(id))
        .collect();
    decided.retain(|(id, _)| !lost.contains(id));
    Ok((decided, lost))
}

/// Locks the rows of `ids` that exist and reads their watches back; a row
/// that cannot be read is logged and left out of the map, under `unreadable`.
async fn lock_watches(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<(HashMap<Uuid, Watch>, HashSet<Uuid>), sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT transaction_id, {STATE_COLUMNS} FROM approvals \
         WHERE transaction_id = ANY($1) FOR UPDATE"
    ))
    // A batch statement, planned for each batch (ADR 11): a generic plan
    // made while the table was small would find the rows by sequential scan.
    .persistent(false)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut watches = HashMap::with_capacity(rows.len());
    let mut unreadable = HashSet::new();
    for row in rows {
        let transaction_id: Uuid = row.try_get("transaction_id")?;
        match watch_of(&row)? {
            Ok(watch) => {
                watches.insert(transaction_id, watch);
            }
            Err(problem) => {
                tracing::error!(%transaction_id, problem, "Watch row cannot be read; left alone.");
                unreadable.insert(transaction_id);
            }
        }
    }
    Ok((watches, unreadable))
}

/// Applies one command to each of `commands` (distinct transactions) under
/// their row locks, inside the caller's transaction, and returns the
/// decisions written, in order; the caller carries out their effects. A
/// command the watch refuses, or a row that cannot be read, gives none.
pub async fn apply_many(
    conn: &mut PgConnection,
    commands: &[(ApprovalFacts, WatchCommand)],
    now: OffsetDateTime,
) -> Result<Vec<(Uuid, WatchDecision)>, sqlx::Error> {
    let mut all = Vec::with_capacity(commands.len());
    let mut remaining: Vec<&(ApprovalFacts, WatchCommand)> = commands.iter().collect();
    // A lost insert race is decided again on the row that won; the winner
    // holds that row, so a second round sees it.
    for _ in 0..3 {
        if remaining.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = remaining.iter().map(|(f, _)| f.transaction_id).collect();
        let (watches, unreadable) = lock_watches(conn, &ids).await?;
        let pending = remaining
            .iter()
            .filter(|(facts, _)| !unreadable.contains(&facts.transaction_id))
            .map(|(facts, command)| Pending {
                facts,
                stored: watches.get(&facts.transaction_id).copied(),
                command: *command,
            })
            .collect();
        let (decided, lost) = decide_and_write(conn, pending, now).await?;
        all.extend(decided);
        remaining.retain(|(facts, _)| lost.contains(&facts.transaction_id));
    }
    let position: HashMap<Uuid, usize> = commands
        .iter()
        .enumerate()
        .map(|(i, (facts, _))| (facts.transaction_id, i))
        .collect();
    all.sort_by_key(|(id, _)| position.get(id).copied().unwrap_or(usize::MAX));
    Ok(all)
}

/// [`apply_many`] for one command.
pub async fn apply(
    conn: &mut PgConnection,
    facts: &ApprovalFacts,
    command: WatchCommand,
    now: OffsetDateTime,
) -> Result<Option<WatchDecision>, sqlx::Error> {
    let mut decided = apply_many(conn, &[(facts.clone(), command)], now).await?;
    Ok(decided.pop().map(|(_, decision)| decision))
}

/// [`apply`] in a transaction of its own, for a watch whose row exists
/// (authorization's answer about a decided watch).
pub async fn apply_now(
    pool: &PgPool,
    transaction_id: Uuid,
    command: WatchCommand,
    now: OffsetDateTime,
) -> Result<Option<WatchDecision>, sqlx::Error> {
    let facts = ApprovalFacts {
        transaction_id,
        ..ApprovalFacts::default()
    };
    let mut tx = pool.begin().await?;
    let decision = apply(&mut tx, &facts, command, now).await?;
    tx.commit().await?;
    Ok(decision)
}

/// Writes the next state of rows that exist, in one statement.
async fn update_many(
    conn: &mut PgConnection,
    updates: &[(Uuid, Watch)],
) -> Result<(), sqlx::Error> {
    if updates.is_empty() {
        return Ok(());
    }
    let columns: Vec<Columns> = updates.iter().map(|(_, w)| Columns::of(w)).collect();
    sqlx::query(
        "UPDATE approvals AS a \
         SET status = u.status, deadline_at = u.deadline_at, decision = u.decision, \
             reason = u.reason, decided_at = u.decided_at, attempts = u.attempts, \
             next_attempt_at = u.next_attempt_at, outcome = u.outcome, closed_at = u.closed_at \
         FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], \
             $6::timestamptz[], $7::int[], $8::timestamptz[], $9::text[], $10::timestamptz[]) \
             AS u(transaction_id, status, deadline_at, decision, reason, decided_at, attempts, \
                  next_attempt_at, outcome, closed_at) \
         WHERE a.transaction_id = u.transaction_id",
    )
    // A batch statement, planned for each batch (ADR 11): a generic plan
    // made while the table was small would find the rows by sequential scan.
    .persistent(false)
    .bind(updates.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.status).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.deadline_at).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.decision).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.reason).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.decided_at).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.attempts).collect::<Vec<_>>())
    .bind(
        columns
            .iter()
            .map(|c| c.next_attempt_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        columns
            .iter()
            .map(|c| c.outcome.clone())
            .collect::<Vec<_>>(),
    )
    .bind(columns.iter().map(|c| c.closed_at).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes new rows in one statement; a row another transaction wrote
/// first is left as it is. Returns the transactions written.
async fn insert_many(
    conn: &mut PgConnection,
    inserts: &[(&ApprovalFacts, Watch)],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if inserts.is_empty() {
        return Ok(HashSet::new());
    }
    let columns: Vec<Columns> = inserts.iter().map(|(_, w)| Columns::of(w)).collect();
    let fact = |get: fn(&ApprovalFacts) -> &str| -> Vec<&str> {
        inserts.iter().map(|(facts, _)| get(facts)).collect()
    };
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO approvals (transaction_id, terminal_id, merchant_id, stan, local_date, rrn, \
             traceparent, status, approved_at, deadline_at, decision, reason, decided_at, \
             attempts, next_attempt_at, outcome, closed_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], \
             $11::text[], $12::text[], $13::timestamptz[], $14::int[], $15::timestamptz[], \
             $16::text[], $17::timestamptz[]) \
         ON CONFLICT (transaction_id) DO NOTHING \
         RETURNING transaction_id",
    )
    .bind(
        inserts
            .iter()
            .map(|(f, _)| f.transaction_id)
            .collect::<Vec<_>>(),
    )
    .bind(fact(|f| &f.terminal_id))
    .bind(fact(|f| &f.merchant_id))
    .bind(fact(|f| &f.stan))
    .bind(fact(|f| &f.local_date))
    .bind(fact(|f| &f.rrn))
    .bind(fact(|f| &f.traceparent))
    .bind(columns.iter().map(|c| c.status).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.approved_at).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.deadline_at).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.decision).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.reason).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.decided_at).collect::<Vec<_>>())
    .bind(columns.iter().map(|c| c.attempts).collect::<Vec<_>>())
    .bind(
        columns
            .iter()
            .map(|c| c.next_attempt_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        columns
            .iter()
            .map(|c| c.outcome.clone())
            .collect::<Vec<_>>(),
    )
    .bind(columns.iter().map(|c| c.closed_at).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Approvals past their deadline at `now` whose outcome authorization has
/// not yet given: still open (no sweep has decided them) or decided and
/// asking. How many, and the earliest such deadline. An approval the
/// promise is late for: the operators' page when it stays so.
pub async fn overdue(
    pool: &PgPool,
    now: OffsetDateTime,
) -> Result<(i64, Option<OffsetDateTime>), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), min(deadline_at) FROM approvals \
         WHERE status IN ('open', 'decided') AND deadline_at <= $1",
    )
    // Planned with the caller's `now`, as `claim_due` (ADR 11).
    .persistent(false)
    .bind(now)
    .fetch_one(pool)
    .await
}

/// Claims up to `limit` rows due at `now` inside the caller's transaction:
/// open rows past their deadline and decided rows whose next attempt is
/// due, oldest first, skipping rows another transaction holds. The locks
/// last until the caller's transaction ends. A row that cannot be read
/// back is logged and not claimed again for a minute.
pub async fn claim_due(
    conn: &mut PgConnection,
    now: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT transaction_id, merchant_id, traceparent, {STATE_COLUMNS} \
         FROM approvals \
         WHERE (status = 'open' AND deadline_at <= $2) \
            OR (status = 'decided' AND next_attempt_at <= $2) \
         ORDER BY CASE WHEN status = 'open' THEN deadline_at ELSE next_attempt_at END \
         LIMIT $1 \
         FOR UPDATE SKIP LOCKED"
    ))
    // Planned for each sweep with the caller's `now` (ADR 11): as a cached
    // generic plan, `deadline_at <= $2` no longer lets the planner use the
    // two partial indexes, and every sweep scanned the whole table (0.012
    // sequential scans per sale at 2,800 sales/s, growing with the table).
    .persistent(false)
    .bind(limit)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for row in rows {
        let transaction_id: Uuid = row.try_get("transaction_id")?;
        match watch_of(&row)? {
            Ok(watch) => claimed.push(Claimed {
                transaction_id,
                merchant_id: row.try_get("merchant_id")?,
                watch,
                traceparent: row.try_get("traceparent")?,
            }),
            Err(problem) => {
                tracing::error!(%transaction_id, problem, "Due watch cannot be read; skipped.");
                unreadable.push(transaction_id);
            }
        }
    }
    if !unreadable.is_empty() {
        sqlx::query("UPDATE approvals SET next_attempt_at = $2 WHERE transaction_id = ANY($1)")
            .bind(&unreadable)
            .bind(now + UNREADABLE_BACKOFF)
            .execute(conn)
            .await?;
    }
    Ok(claimed)
}

/// Decides every claimed watch as a sweep at `now` (an orphan is decided
/// under its merchant's policy, every row is leased for `lease`) and writes
/// the decisions, inside the caller's transaction. Returns what to carry
/// out, in claim order.
pub async fn sweep_claimed(
    conn: &mut PgConnection,
    claimed: &[Claimed],
    config: &ReversalHandlerConfig,
    lease: Duration,
    now: OffsetDateTime,
) -> Result<Vec<Swept>, sqlx::Error> {
    let facts: Vec<ApprovalFacts> = claimed
        .iter()
        .map(|c| ApprovalFacts {
            transaction_id: c.transaction_id,
            merchant_id: c.merchant_id.clone(),
            traceparent: c.traceparent.clone(),
            ..ApprovalFacts::default()
        })
        .collect();
    let pending = claimed
        .iter()
        .zip(&facts)
        .map(|(c, facts)| Pending {
            facts,
            stored: Some(c.watch),
            command: WatchCommand::Sweep {
                policy: config.policy_for(&c.merchant_id).1,
                lease,
            },
        })
        .collect();
    // Every row exists and is locked: nothing is inserted, nothing lost.
    let (decided, _) = decide_and_write(conn, pending, now).await?;
    let mut by_id: HashMap<Uuid, WatchDecision> = decided.into_iter().collect();
    Ok(claimed
        .iter()
        .filter_map(|c| {
            let decision = by_id.remove(&c.transaction_id)?;
            Some(Swept {
                transaction_id: c.transaction_id,
                merchant_id: c.merchant_id.clone(),
                traceparent: c.traceparent.clone(),
                effects: decision.effects,
            })
        })
        .collect())
}

/// One sweep's claim at `now`: claims up to `limit` due rows, decides them
/// under the locks, and commits.
pub async fn take_due(
    pool: &PgPool,
    config: &ReversalHandlerConfig,
    limit: i64,
    lease: Duration,
    now: OffsetDateTime,
) -> Result<Vec<Swept>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let claimed = claim_due(&mut tx, now, limit).await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let swept = sweep_claimed(&mut tx, &claimed, config, lease, now).await?;
    tx.commit().await?;
    Ok(swept)
}
