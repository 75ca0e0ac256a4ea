//! Every SQL statement of the settlement batcher. Functions take a
//! connection so callers decide the transaction they run in.
//!
//! The ledger's rules are `switch_core::settlement::ledger::decide`: a
//! change to an approval locks its row, loads it as a [`LedgerEntry`],
//! decides, and writes the decision. The row lock is what serializes the
//! event consumer, batch uploads and settlement runs; no statement here
//! decides anything itself.

use sqlx::{FromRow, PgConnection};
use switch_core::settlement::ledger;
use switch_core::settlement::rejection::{
    self, Rejection, Resolution, ResolutionDecision, Tracked,
};
use switch_core::{
    ApprovalCode, Currency, Evidence, HoldReason, HostStatus, HostTransaction, LedgerCommand,
    LedgerDecision, LedgerEffect, LedgerEntry, LocalDate, Money, Stan,
};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

/// One approval as the batcher records it.
#[derive(Debug, Clone, FromRow)]
pub struct TransactionRow {
    pub transaction_id: Uuid,
    pub terminal_id: String,
    pub merchant_id: String,
    pub stan: String,
    pub local_date: Date,
    pub rrn: String,
    pub masked_pan: String,
    pub amount_minor: i64,
    pub currency: String,
    pub channel: String,
    pub approval_code: Option<String>,
    pub status: String,
    pub evidence: Option<String>,
    pub reversal_reason: Option<String>,
    pub conflict: Option<String>,
    pub conflict_detail: Option<String>,
    pub batch_number: Option<String>,
    pub window_id: Option<Uuid>,
    pub hold_reason: Option<String>,
    /// A QR payment's order at the platform; `None` for a card sale.
    pub qr_order_id: Option<String>,
}

const COLUMNS: &str = "transaction_id, terminal_id, merchant_id, stan, local_date, rrn, \
    masked_pan, amount_minor, currency, channel, approval_code, status, evidence, \
    reversal_reason, conflict, conflict_detail, batch_number, window_id, hold_reason, \
    qr_order_id";

/// The columns of a [`LedgerEntry`], for statements that lock a row to
/// decide on it.
const LEDGER_COLUMNS: &str =
    "transaction_id, status, reversal_reason, evidence, conflict, window_id, hold_reason";

/// One row's ledger columns.
#[derive(Debug, Clone, FromRow)]
pub struct LedgerRow {
    pub transaction_id: Uuid,
    pub status: String,
    pub reversal_reason: Option<String>,
    pub evidence: Option<String>,
    pub conflict: Option<String>,
    pub window_id: Option<Uuid>,
    pub hold_reason: Option<String>,
}

impl LedgerRow {
    /// The row as the core sees it; every stored name must parse.
    pub fn entry(&self) -> Result<LedgerEntry, CorruptRow> {
        let corrupt = |e: switch_core::InvalidField| CorruptRow {
            transaction_id: self.transaction_id,
            reason: e.to_string(),
        };
        Ok(LedgerEntry {
            status: HostStatus::parse(&self.status, self.reversal_reason.as_deref())
                .map_err(corrupt)?,
            evidence: self
                .evidence
                .as_deref()
                .map(Evidence::parse)
                .transpose()
                .map_err(corrupt)?,
            conflict: self.conflict.is_some(),
            paid: self.window_id.is_some(),
            hold: self
                .hold_reason
                .as_deref()
                .map(HoldReason::parse)
                .transpose()
                .map_err(corrupt)?,
        })
    }
}

/// A ledger change failed: the database, or a row that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRow),
}

/// A row that does not parse back into domain types was written by a
/// broken version; settlement refuses to guess about money.
#[derive(Debug, thiserror::Error)]
#[error("transaction {transaction_id}: {reason}")]
pub struct CorruptRow {
    pub transaction_id: Uuid,
    pub reason: String,
}

impl TransactionRow {
    pub fn money(&self) -> Result<Money, CorruptRow> {
        let currency = Currency::parse(&self.currency).map_err(|e| self.corrupt(e.to_string()))?;
        Ok(Money::new(self.amount_minor, currency))
    }

    pub fn host_status(&self) -> Result<HostStatus, CorruptRow> {
        HostStatus::parse(&self.status, self.reversal_reason.as_deref())
            .map_err(|e| self.corrupt(e.to_string()))
    }

    /// The row as the ledger's decisions see it.
    pub fn ledger_entry(&self) -> Result<LedgerEntry, CorruptRow> {
        LedgerRow {
            transaction_id: self.transaction_id,
            status: self.status.clone(),
            reversal_reason: self.reversal_reason.clone(),
            evidence: self.evidence.clone(),
            conflict: self.conflict.clone(),
            window_id: self.window_id,
            hold_reason: self.hold_reason.clone(),
        }
        .entry()
    }

    /// The host side of reconciliation, keyed by transaction id.
    pub fn host_transaction(&self) -> Result<HostTransaction<Uuid>, CorruptRow> {
        Ok(HostTransaction {
            key: self.transaction_id,
            stan: Stan::parse(&self.stan).map_err(|e| self.corrupt(e.to_string()))?,
            local_date: LocalDate::from_date(self.local_date),
            amount: self.money()?,
            approval_code: self
                .approval_code
                .as_deref()
                .filter(|c| !c.is_empty())
                .map(ApprovalCode::parse)
                .transpose()
                .map_err(|e| self.corrupt(e.to_string()))?,
            status: self.host_status()?,
        })
    }

    fn corrupt(&self, reason: String) -> CorruptRow {
        CorruptRow {
            transaction_id: self.transaction_id,
            reason,
        }
    }
}

/// The facts of a new approval, from an event or a lookup.
#[derive(Debug, Clone)]
pub struct NewApproval {
    pub transaction_id: Uuid,
    pub terminal_id: String,
    pub merchant_id: String,
    pub stan: String,
    pub local_date: Date,
    pub rrn: String,
    pub masked_pan: String,
    pub amount_minor: i64,
    pub currency: String,
    pub channel: String,
    pub approval_code: Option<String>,
    pub approved_at: OffsetDateTime,
    /// A QR payment's order at the platform (its `rrn` and `masked_pan`
    /// are empty: it has neither).
    pub qr_order_id: Option<String>,
}

/// What [`record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// Added, or moved forward.
    Written,
    /// Already known, and the decision was to change nothing (at this
    /// status or a later one).
    Unchanged,
    /// Another transaction holds the approval's terminal + date + STAN; the
    /// approval was recorded in `ledger_rejections` instead.
    KeyHeldBy(Uuid),
}

/// The entry of `transaction_id`, locked for the rest of the transaction.
pub async fn lock_entry(
    conn: &mut PgConnection,
    transaction_id: Uuid,
) -> Result<Option<LedgerEntry>, LedgerError> {
    let row: Option<LedgerRow> = sqlx::query_as(&format!(
        "SELECT {LEDGER_COLUMNS} FROM transactions WHERE transaction_id = $1 FOR UPDATE"
    ))
    .bind(transaction_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| r.entry()).transpose()?)
}

/// What a single-row decision writes besides the entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// Filled in if the row has none (an approval known first from a
    /// lookup without it).
    pub approval_code: Option<&'a str>,
    /// The kind and detail of a conflict flag.
    pub conflict: Option<(&'a str, &'a str)>,
}

/// Writes a decision taken on a row locked by [`lock_entry`].
async fn persist(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    decision: &LedgerDecision,
    facts: &Facts<'_>,
) -> Result<(), LedgerError> {
    let next = &decision.next;
    for effect in &decision.effects {
        match effect {
            LedgerEffect::Advance => {
                sqlx::query(
                    "UPDATE transactions SET status = $2, evidence = $3, \
                        reversal_reason = COALESCE($4, reversal_reason), \
                        approval_code = COALESCE(approval_code, $5), updated_at = now() \
                     WHERE transaction_id = $1",
                )
                .bind(transaction_id)
                .bind(next.status.as_str())
                .bind(next.evidence.map(|e| e.as_str()))
                .bind(next.status.reversal_reason().map(|r| r.as_str()))
                .bind(facts.approval_code)
                .execute(&mut *conn)
                .await?;
            }
            LedgerEffect::Flag => {
                let Some((kind, detail)) = facts.conflict else {
                    return Err(CorruptRow {
                        transaction_id,
                        reason: "a conflict flag needs its kind and detail".into(),
                    }
                    .into());
                };
                sqlx::query(
                    "UPDATE transactions SET conflict = $2, conflict_detail = $3, \
                        updated_at = now() WHERE transaction_id = $1",
                )
                .bind(transaction_id)
                .bind(kind)
                .bind(detail)
                .execute(&mut *conn)
                .await?;
            }
            // Windows are closed in bulk, by `windows::close`.
            LedgerEffect::Pay | LedgerEffect::Hold(_) => {
                return Err(CorruptRow {
                    transaction_id,
                    reason: format!("{effect:?} is written by a settlement run, not one row"),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// Applies `command` to a known approval: locks it, decides, writes the
/// decision. Unknown ids (a reversal of an authorization that was never
/// approved) change nothing. Returns whether anything was written.
pub async fn apply(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    command: LedgerCommand,
    facts: &Facts<'_>,
) -> Result<bool, LedgerError> {
    let Some(entry) = lock_entry(conn, transaction_id).await? else {
        return Ok(false);
    };
    decide_locked(conn, transaction_id, &entry, command, facts).await
}

/// [`apply`], and for an approval outside the ledger because it was
/// rejected, has its rejection follow the command ([`track_rejected`]),
/// or, once admitted, applies it in the ledger.
pub async fn apply_or_track(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    command: LedgerCommand,
) -> Result<(), LedgerError> {
    if let Some(entry) = lock_entry(conn, transaction_id).await? {
        decide_locked(conn, transaction_id, &entry, command, &Facts::default()).await?;
        return Ok(());
    }
    for (id, command) in track_rejected(conn, &[(transaction_id, command)]).await? {
        apply(conn, id, command, &Facts::default()).await?;
    }
    Ok(())
}

/// Decides on an entry locked by [`lock_entry`] and writes the decision.
async fn decide_locked(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    entry: &LedgerEntry,
    command: LedgerCommand,
    facts: &Facts<'_>,
) -> Result<bool, LedgerError> {
    match ledger::decide(entry, command) {
        Ok(decision) => {
            persist(conn, transaction_id, &decision, facts).await?;
            Ok(true)
        }
        Err(refusal) => {
            tracing::debug!(%transaction_id, %refusal, "Ledger unchanged.");
            Ok(false)
        }
    }
}

/// One status command of a batch, for [`apply_many`].
#[derive(Debug, Clone)]
pub struct BatchedCommand {
    pub transaction_id: Uuid,
    pub command: LedgerCommand,
    /// Filled in if the row has none.
    pub approval_code: Option<String>,
}

/// Applies status commands of distinct transactions with two statements:
/// their rows are locked (in id order, as a settlement run locks them),
/// each command is decided on, and the decisions are written back with one
/// `UNNEST` update. Returns the ids the ledger does not know, in input
/// order, for the caller to record from their facts or to drop.
pub async fn apply_many(
    conn: &mut PgConnection,
    commands: &[BatchedCommand],
) -> Result<Vec<Uuid>, LedgerError> {
    if commands.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = commands.iter().map(|c| c.transaction_id).collect();
    let rows: Vec<LedgerRow> = sqlx::query_as(&format!(
        "SELECT {LEDGER_COLUMNS} FROM transactions WHERE transaction_id = ANY($1) \
         ORDER BY transaction_id FOR UPDATE"
    ))
    // A batch statement, planned for each batch (ADR 11): a generic plan
    // made while the table was small would find the rows by sequential scan.
    .persistent(false)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut entries = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        entries.insert(row.transaction_id, row.entry()?);
    }
    let mut unknown = Vec::new();
    let mut written: Vec<Uuid> = Vec::new();
    let mut statuses: Vec<&'static str> = Vec::new();
    let mut evidence: Vec<Option<&'static str>> = Vec::new();
    let mut reasons: Vec<Option<&'static str>> = Vec::new();
    let mut codes: Vec<Option<&str>> = Vec::new();
    for batched in commands {
        let id = batched.transaction_id;
        let Some(entry) = entries.get(&id) else {
            unknown.push(id);
            continue;
        };
        let decision = match ledger::decide(entry, batched.command) {
            Ok(decision) => decision,
            Err(refusal) => {
                tracing::debug!(transaction_id = %id, %refusal, "Ledger unchanged.");
                continue;
            }
        };
        for effect in &decision.effects {
            match effect {
                LedgerEffect::Advance => {
                    let next = &decision.next;
                    written.push(id);
                    statuses.push(next.status.as_str());
                    evidence.push(next.evidence.map(|e| e.as_str()));
                    reasons.push(next.status.reversal_reason().map(|r| r.as_str()));
                    codes.push(batched.approval_code.as_deref());
                }
                other => {
                    return Err(CorruptRow {
                        transaction_id: id,
                        reason: format!("{other:?} is not a status change"),
                    }
                    .into());
                }
            }
        }
    }
    if !written.is_empty() {
        sqlx::query(
            "UPDATE transactions t SET status = u.status, evidence = u.evidence, \
                reversal_reason = COALESCE(u.reason, t.reversal_reason), \
                approval_code = COALESCE(t.approval_code, u.code), updated_at = now() \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                AS u(id, status, evidence, reason, code) \
             WHERE t.transaction_id = u.id",
        )
        // Planned for each batch, like the approvals' insert (ADR 11).
        .persistent(false)
        .bind(&written)
        .bind(&statuses)
        .bind(&evidence)
        .bind(&reasons)
        .bind(&codes)
        .execute(&mut *conn)
        .await?;
    }
    Ok(unknown)
}

/// Binds `approval`'s twelve columns, in the order both ledger inserts
/// list them ($1 to $12: transaction_id, terminal_id, merchant_id, stan,
/// local_date, rrn, masked_pan, amount_minor, currency, channel,
/// approval_code, approved_at).
fn bind_approval<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    approval: &'q NewApproval,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(approval.transaction_id)
        .bind(&approval.terminal_id)
        .bind(&approval.merchant_id)
        .bind(&approval.stan)
        .bind(approval.local_date)
        .bind(&approval.rrn)
        .bind(&approval.masked_pan)
        .bind(approval.amount_minor)
        .bind(&approval.currency)
        .bind(&approval.channel)
        .bind(&approval.approval_code)
        .bind(approval.approved_at)
}

/// Records an approval with `command` (its approval, confirmation or
/// reversal): a known one is decided on under its row lock ([`apply`]); a
/// new one is inserted as [`LedgerEntry::first_known`]. An approval whose
/// terminal key another transaction holds is not written to the ledger
/// (that would fail every retry of the batch) but recorded as a rejection.
pub async fn record(
    conn: &mut PgConnection,
    approval: &NewApproval,
    command: LedgerCommand,
    batch_number: Option<&str>,
) -> Result<Upserted, LedgerError> {
    let facts = Facts {
        approval_code: approval.approval_code.as_deref(),
        conflict: None,
    };
    // Twice at most: an insert that lost to a concurrent one of the same
    // id finds the row locked the second time.
    for _ in 0..2 {
        if let Some(entry) = lock_entry(conn, approval.transaction_id).await? {
            let written =
                decide_locked(conn, approval.transaction_id, &entry, command, &facts).await?;
            return Ok(if written {
                Upserted::Written
            } else {
                Upserted::Unchanged
            });
        }
        let first = LedgerEntry::first_known(command);
        let inserted = bind_approval(
            sqlx::query(
                "INSERT INTO transactions (transaction_id, terminal_id, merchant_id, stan, \
                    local_date, rrn, masked_pan, amount_minor, currency, channel, approval_code, \
                    approved_at, status, evidence, reversal_reason, batch_number, qr_order_id) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17 \
                 WHERE NOT EXISTS (SELECT 1 FROM transactions \
                     WHERE terminal_id = $2 AND local_date = $5 AND stan = $4 \
                       AND transaction_id <> $1) \
                 ON CONFLICT (transaction_id) DO NOTHING",
            ),
            approval,
        )
        .bind(first.status.as_str())
        .bind(first.evidence.map(|e| e.as_str()))
        .bind(first.status.reversal_reason().map(|r| r.as_str()))
        .bind(batch_number)
        .bind(&approval.qr_order_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted > 0 {
            return Ok(Upserted::Written);
        }
        match reject_if_key_held(conn, approval, command).await? {
            KeyHeld::By(holder) => return Ok(Upserted::KeyHeldBy(holder)),
            // Admitted meanwhile: the next round finds it in the ledger.
            KeyHeld::Admitted | KeyHeld::Free => {}
        }
    }
    Ok(Upserted::Unchanged)
}

/// Whether another transaction holds an approval's terminal key.
enum KeyHeld {
    /// No: the insert lost to a concurrent one of the same id.
    Free,
    /// Yes: the approval is (or already was) rejected.
    By(Uuid),
    /// It was rejected, and an operator has admitted it since.
    Admitted,
}

/// When another transaction holds the approval's terminal key, records the
/// approval in `ledger_rejections`, standing where `command` puts it
/// ([`Rejection::new`]); one already rejected follows `command` instead
/// ([`rejection::track`]).
async fn reject_if_key_held(
    conn: &mut PgConnection,
    approval: &NewApproval,
    command: LedgerCommand,
) -> Result<KeyHeld, LedgerError> {
    let holder: Option<Uuid> = sqlx::query_scalar(
        "SELECT transaction_id FROM transactions \
         WHERE terminal_id = $1 AND local_date = $2 AND stan = $3 AND transaction_id <> $4 \
         ORDER BY key_instance LIMIT 1",
    )
    .bind(&approval.terminal_id)
    .bind(approval.local_date)
    .bind(&approval.stan)
    .bind(approval.transaction_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(holder) = holder else {
        return Ok(KeyHeld::Free);
    };
    let Some(entry) = Rejection::new(command).tracked else {
        return Ok(KeyHeld::By(holder));
    };
    let inserted = sqlx::query(
        "INSERT INTO ledger_rejections (transaction_id, terminal_id, local_date, stan, \
            merchant_id, amount_minor, currency, held_by, rrn, masked_pan, channel, \
            approval_code, approved_at, status, evidence, reversal_reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (transaction_id) DO NOTHING",
    )
    .bind(approval.transaction_id)
    .bind(&approval.terminal_id)
    .bind(approval.local_date)
    .bind(&approval.stan)
    .bind(&approval.merchant_id)
    .bind(approval.amount_minor)
    .bind(&approval.currency)
    .bind(holder)
    .bind(&approval.rrn)
    .bind(&approval.masked_pan)
    .bind(&approval.channel)
    .bind(&approval.approval_code)
    .bind(approval.approved_at)
    .bind(entry.status.as_str())
    .bind(entry.evidence.map(|e| e.as_str()))
    .bind(entry.status.reversal_reason().map(|r| r.as_str()))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        let admitted = track_rejected(conn, &[(approval.transaction_id, command)]).await?;
        if !admitted.is_empty() {
            return Ok(KeyHeld::Admitted);
        }
    }
    Ok(KeyHeld::By(holder))
}

// --- Ledger rejections ----------------------------------------------------

/// A ledger rejection as stored.
#[derive(Debug, Clone, FromRow)]
pub struct RejectionRow {
    pub transaction_id: Uuid,
    pub terminal_id: String,
    pub local_date: Date,
    pub stan: String,
    pub merchant_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub held_by: Uuid,
    pub recorded_at: OffsetDateTime,
    pub rrn: Option<String>,
    pub masked_pan: Option<String>,
    pub channel: Option<String>,
    pub approval_code: Option<String>,
    pub approved_at: Option<OffsetDateTime>,
    pub status: Option<String>,
    pub evidence: Option<String>,
    pub reversal_reason: Option<String>,
    pub resolution: Option<String>,
    pub resolved_by: Option<String>,
    pub resolution_reason: Option<String>,
    pub resolved_at: Option<OffsetDateTime>,
}

const REJECTION_COLUMNS: &str = "transaction_id, terminal_id, local_date, stan, merchant_id, \
    amount_minor, currency, held_by, recorded_at, rrn, masked_pan, channel, approval_code, \
    approved_at, status, evidence, reversal_reason, resolution, resolved_by, \
    resolution_reason, resolved_at";

impl RejectionRow {
    /// The rejection as the core sees it; every stored name must parse.
    pub fn rejection(&self) -> Result<Rejection, CorruptRow> {
        let corrupt = |e: switch_core::InvalidField| CorruptRow {
            transaction_id: self.transaction_id,
            reason: format!("ledger rejection: {e}"),
        };
        let tracked = match &self.status {
            None => None,
            Some(status) => Some(
                LedgerRow {
                    transaction_id: self.transaction_id,
                    status: status.clone(),
                    reversal_reason: self.reversal_reason.clone(),
                    evidence: self.evidence.clone(),
                    conflict: None,
                    window_id: None,
                    hold_reason: None,
                }
                .entry()?,
            ),
        };
        Ok(Rejection {
            tracked,
            resolution: self
                .resolution
                .as_deref()
                .map(Resolution::parse)
                .transpose()
                .map_err(corrupt)?,
        })
    }

    /// The approval's facts, when the rejection kept them (every one
    /// recorded since the ledger keeps them).
    pub fn approval(&self) -> Option<NewApproval> {
        Some(NewApproval {
            transaction_id: self.transaction_id,
            terminal_id: self.terminal_id.clone(),
            merchant_id: self.merchant_id.clone(),
            stan: self.stan.clone(),
            local_date: self.local_date,
            rrn: self.rrn.clone()?,
            masked_pan: self.masked_pan.clone()?,
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            channel: self.channel.clone().unwrap_or_else(|| "card".to_owned()),
            approval_code: self.approval_code.clone(),
            approved_at: self.approved_at?,
            // Rejections keep no order id: an admitted QR payment is
            // found by its transaction id or terminal key.
            qr_order_id: None,
        })
    }
}

/// Has the open rejections of `commands` (their approvals outside the
/// ledger; distinct ids) follow their commands ([`rejection::track`]), and
/// returns those an operator has admitted meanwhile, whose commands are
/// the ledger's to apply now. Ids without a rejection change nothing.
pub async fn track_rejected(
    conn: &mut PgConnection,
    commands: &[(Uuid, LedgerCommand)],
) -> Result<Vec<(Uuid, LedgerCommand)>, LedgerError> {
    if commands.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = commands.iter().map(|(id, _)| *id).collect();
    let rows: Vec<RejectionRow> = sqlx::query_as(&format!(
        "SELECT {REJECTION_COLUMNS} FROM ledger_rejections WHERE transaction_id = ANY($1) \
         ORDER BY transaction_id FOR UPDATE"
    ))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut rejections = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        rejections.insert(row.transaction_id, row.rejection()?);
    }
    let mut admitted = Vec::new();
    for (id, command) in commands {
        let Some(rejection) = rejections.get_mut(id) else {
            continue;
        };
        match rejection::track(rejection, *command) {
            Tracked::Moved(next) => {
                sqlx::query(
                    "UPDATE ledger_rejections SET status = $2, evidence = $3, \
                        reversal_reason = COALESCE($4, reversal_reason) \
                     WHERE transaction_id = $1",
                )
                .bind(id)
                .bind(next.status.as_str())
                .bind(next.evidence.map(|e| e.as_str()))
                .bind(next.status.reversal_reason().map(|r| r.as_str()))
                .execute(&mut *conn)
                .await?;
                rejection.tracked = Some(next);
            }
            Tracked::InLedger => admitted.push((*id, *command)),
            Tracked::Unchanged => {}
        }
    }
    Ok(admitted)
}

/// The rejection of `transaction_id`, locked for the rest of the
/// transaction when `lock`.
pub async fn rejection_of(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    lock: bool,
) -> Result<Option<RejectionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REJECTION_COLUMNS} FROM ledger_rejections WHERE transaction_id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    ))
    .bind(transaction_id)
    .fetch_optional(conn)
    .await
}

/// Where a page of rejections starts: after this one, in the order they
/// were recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectionCursor {
    pub recorded_at: OffsetDateTime,
    pub transaction_id: Uuid,
}

/// Rejections in the order they were recorded, after `after`, at most
/// `limit`; resolved ones only if `include_resolved`.
pub async fn list_rejections(
    conn: &mut PgConnection,
    include_resolved: bool,
    after: Option<RejectionCursor>,
    limit: i64,
) -> Result<Vec<RejectionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {REJECTION_COLUMNS} FROM ledger_rejections \
         WHERE ($1 OR resolution IS NULL) \
           AND ($2::timestamptz IS NULL OR (recorded_at, transaction_id) > ($2, $3)) \
         ORDER BY recorded_at, transaction_id LIMIT $4"
    ))
    .bind(include_resolved)
    .bind(after.map(|c| c.recorded_at))
    .bind(after.map(|c| c.transaction_id))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Rejections no operator has resolved yet.
pub async fn open_rejections(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM ledger_rejections WHERE resolution IS NULL")
        .fetch_one(conn)
        .await
}

/// Who resolved a rejection, why and when.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedBy<'a> {
    pub operator: &'a str,
    pub reason: &'a str,
    pub at: OffsetDateTime,
}

/// Writes a resolution decided on a rejection locked by [`rejection_of`]:
/// an admitted approval enters the ledger as `entry` (`approval`'s facts)
/// beside the key's holder, under the next instance of the key (the caller
/// holds [`lock_terminal`], taken before the rejection's lock, so an
/// admission is serialized with the terminal's closes and with another
/// admission under the key); either way the rejection records the
/// resolution, who, why and when.
pub async fn resolve_rejection(
    conn: &mut PgConnection,
    decision: &ResolutionDecision,
    approval: Option<&NewApproval>,
    reversal_reason: Option<&str>,
    by: &ResolvedBy<'_>,
    transaction_id: Uuid,
) -> Result<(), LedgerError> {
    let resolution = match decision {
        ResolutionDecision::Dismissed => Resolution::Dismiss,
        ResolutionDecision::Admitted { entry } => {
            let Some(approval) = approval else {
                return Err(CorruptRow {
                    transaction_id,
                    reason: "an admitted rejection needs the approval's facts".into(),
                }
                .into());
            };
            bind_approval(
                sqlx::query(
                    "INSERT INTO transactions (transaction_id, terminal_id, merchant_id, stan, \
                        local_date, rrn, masked_pan, amount_minor, currency, channel, approval_code, \
                        approved_at, status, evidence, reversal_reason, key_instance, qr_order_id) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                        COALESCE((SELECT max(key_instance) FROM transactions \
                                  WHERE terminal_id = $2 AND local_date = $5 AND stan = $4), -1) + 1, \
                        $16",
                ),
                approval,
            )
            .bind(entry.status.as_str())
            .bind(entry.evidence.map(|e| e.as_str()))
            .bind(
                entry
                    .status
                    .reversal_reason()
                    .map(|r| r.as_str())
                    .or(reversal_reason),
            )
            .bind(&approval.qr_order_id)
            .execute(&mut *conn)
            .await?;
            Resolution::Admit
        }
    };
    sqlx::query(
        "UPDATE ledger_rejections SET resolution = $2, resolved_by = $3, \
            resolution_reason = $4, resolved_at = $5 \
         WHERE transaction_id = $1",
    )
    .bind(transaction_id)
    .bind(resolution.as_str())
    .bind(by.operator)
    .bind(by.reason)
    .bind(by.at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records new approvals as [`LedgerEntry::first_known`] of an approval
/// with one statement; returns the ids it added. One not added is either
/// known already or has its terminal key held by another transaction: the
/// caller passes those to [`record`], which decides on the first and tells
/// the two apart. The approvals must have distinct
/// ids and terminal keys.
pub async fn insert_unconfirmed_many(
    conn: &mut PgConnection,
    approvals: &[NewApproval],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    let text = |get: fn(&NewApproval) -> &str| -> Vec<&str> { approvals.iter().map(get).collect() };
    let added: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO transactions (transaction_id, terminal_id, merchant_id, stan, local_date, \
            rrn, masked_pan, amount_minor, currency, channel, approval_code, approved_at, \
            qr_order_id, status) \
         SELECT i.*, $13 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
             $5::date[], $6::text[], $7::text[], $8::int8[], $9::text[], $10::text[], \
             $11::text[], $12::timestamptz[], $14::text[]) \
           AS i(transaction_id, terminal_id, merchant_id, stan, local_date, rrn, masked_pan, \
             amount_minor, currency, channel, approval_code, approved_at, qr_order_id) \
         WHERE NOT EXISTS (SELECT 1 FROM transactions t \
             WHERE t.terminal_id = i.terminal_id AND t.local_date = i.local_date \
               AND t.stan = i.stan AND t.transaction_id <> i.transaction_id) \
         ON CONFLICT (transaction_id) DO NOTHING \
         RETURNING transaction_id",
    )
    // Planned for each batch: a generic plan made while the ledger was
    // small would check the terminal keys by sequential scan (ADR 11).
    .persistent(false)
    .bind(
        approvals
            .iter()
            .map(|a| a.transaction_id)
            .collect::<Vec<_>>(),
    )
    .bind(text(|a| &a.terminal_id))
    .bind(text(|a| &a.merchant_id))
    .bind(text(|a| &a.stan))
    .bind(approvals.iter().map(|a| a.local_date).collect::<Vec<_>>())
    .bind(text(|a| &a.rrn))
    .bind(text(|a| &a.masked_pan))
    .bind(approvals.iter().map(|a| a.amount_minor).collect::<Vec<_>>())
    .bind(text(|a| &a.currency))
    .bind(text(|a| &a.channel))
    .bind(
        approvals
            .iter()
            .map(|a| a.approval_code.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(approvals.iter().map(|a| a.approved_at).collect::<Vec<_>>())
    .bind(
        LedgerEntry::first_known(LedgerCommand::Approve)
            .status
            .as_str(),
    )
    .bind(
        approvals
            .iter()
            .map(|a| a.qr_order_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .fetch_all(conn)
    .await?;
    Ok(added.into_iter().collect())
}

/// Flags a receipt that exists for a payment the host undid or knows
/// otherwise, as [`ledger::decide`] allows (the first flag stays; a paid
/// approval is not flagged). Returns whether it was flagged now.
pub async fn flag_conflict(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    kind: &str,
    detail: &str,
) -> Result<bool, LedgerError> {
    let facts = Facts {
        approval_code: None,
        conflict: Some((kind, detail)),
    };
    apply(conn, transaction_id, LedgerCommand::FlagConflict, &facts).await
}

// --- Terminal batches ---------------------------------------------------

#[derive(Debug, Clone, FromRow)]
pub struct BatchRow {
    pub close_digest: String,
    pub currencies: Vec<String>,
    pub close_response: Vec<u8>,
    pub upload_digest: Option<String>,
    pub upload_response: Option<Vec<u8>>,
}

/// The batch, locked for the rest of the transaction.
pub async fn lock_batch(
    conn: &mut PgConnection,
    terminal_id: &str,
    batch_number: &str,
) -> Result<Option<BatchRow>, sqlx::Error> {
    sqlx::query_as::<_, BatchRow>(
        "SELECT close_digest, currencies, close_response, upload_digest, upload_response \
         FROM batches WHERE terminal_id = $1 AND batch_number = $2 FOR UPDATE",
    )
    .bind(terminal_id)
    .bind(batch_number)
    .fetch_optional(conn)
    .await
}

/// Serialises closes of one terminal's batches: two concurrent closes must
/// not both take the same open transactions.
pub async fn lock_terminal(conn: &mut PgConnection, terminal_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('batch:' || $1, 0))")
        .bind(terminal_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Puts the terminal's open transactions approved up to now into the
/// batch and returns every transaction of the batch. QR payments are not
/// in a terminal's batch: the wallet platform, not the terminal's card
/// batch, is their record, and an unconfirmed one would keep every close
/// out of balance (or an upload would take it for a card orphan).
pub async fn close_open_batch(
    conn: &mut PgConnection,
    terminal_id: &str,
    batch_number: &str,
) -> Result<Vec<TransactionRow>, sqlx::Error> {
    sqlx::query(
        "UPDATE transactions SET batch_number = $2, updated_at = now() \
         WHERE terminal_id = $1 AND batch_number IS NULL AND qr_order_id IS NULL",
    )
    .bind(terminal_id)
    .bind(batch_number)
    .execute(&mut *conn)
    .await?;
    in_batch(conn, terminal_id, batch_number).await
}

pub async fn in_batch(
    conn: &mut PgConnection,
    terminal_id: &str,
    batch_number: &str,
) -> Result<Vec<TransactionRow>, sqlx::Error> {
    sqlx::query_as::<_, TransactionRow>(&format!(
        "SELECT {COLUMNS} FROM transactions WHERE terminal_id = $1 AND batch_number = $2 \
         ORDER BY approved_at, transaction_id"
    ))
    .bind(terminal_id)
    .bind(batch_number)
    .fetch_all(conn)
    .await
}

/// A batch as its close answered it.
pub struct NewBatch<'a> {
    pub terminal_id: &'a str,
    pub batch_number: &'a str,
    pub merchant_id: &'a str,
    pub result: &'a str,
    pub close_digest: &'a str,
    pub currencies: &'a [String],
    pub close_response: &'a [u8],
}

pub async fn insert_batch(
    conn: &mut PgConnection,
    batch: &NewBatch<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO batches (terminal_id, batch_number, merchant_id, result, close_digest, \
            currencies, close_response) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(batch.terminal_id)
    .bind(batch.batch_number)
    .bind(batch.merchant_id)
    .bind(batch.result)
    .bind(batch.close_digest)
    .bind(batch.currencies)
    .bind(batch.close_response)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn record_upload(
    conn: &mut PgConnection,
    terminal_id: &str,
    batch_number: &str,
    upload_digest: &str,
    upload_response: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE batches SET result = 'reconciled', upload_digest = $3, upload_response = $4, \
            reconciled_at = now() \
         WHERE terminal_id = $1 AND batch_number = $2",
    )
    .bind(terminal_id)
    .bind(batch_number)
    .bind(upload_digest)
    .bind(upload_response)
    .execute(conn)
    .await?;
    Ok(())
}

/// A transaction by the terminal's key, whatever batch it is in: the one
/// that took the key first, when an admitted rejection shares it.
pub async fn by_terminal_key(
    conn: &mut PgConnection,
    terminal_id: &str,
    local_date: Date,
    stan: &str,
) -> Result<Option<TransactionRow>, sqlx::Error> {
    Ok(all_by_terminal_key(conn, terminal_id, local_date, stan)
        .await?
        .into_iter()
        .next())
}

/// Every transaction under the terminal's key: one, or more once an
/// operator admitted a rejected approval beside its holder, in the order
/// they took the key.
pub async fn all_by_terminal_key(
    conn: &mut PgConnection,
    terminal_id: &str,
    local_date: Date,
    stan: &str,
) -> Result<Vec<TransactionRow>, sqlx::Error> {
    sqlx::query_as::<_, TransactionRow>(&format!(
        "SELECT {COLUMNS} FROM transactions \
         WHERE terminal_id = $1 AND local_date = $2 AND stan = $3 ORDER BY key_instance"
    ))
    .bind(terminal_id)
    .bind(local_date)
    .bind(stan)
    .fetch_all(conn)
    .await
}

/// Moves a transaction the close missed (its event arrived late) from the
/// open batch into `batch_number`.
pub async fn move_into_batch(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    batch_number: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE transactions SET batch_number = $2, updated_at = now() \
         WHERE transaction_id = $1 AND batch_number IS NULL",
    )
    .bind(transaction_id)
    .bind(batch_number)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() > 0)
}

// --- Status queries ------------------------------------------------------

pub async fn by_rrn(
    conn: &mut PgConnection,
    rrn: &str,
) -> Result<Vec<TransactionRow>, sqlx::Error> {
    sqlx::query_as::<_, TransactionRow>(&format!(
        "SELECT {COLUMNS} FROM transactions WHERE rrn = $1 ORDER BY approved_at"
    ))
    .bind(rrn)
    .fetch_all(conn)
    .await
}

/// The most recent transaction of the terminal with this STAN.
pub async fn latest_by_stan(
    conn: &mut PgConnection,
    terminal_id: &str,
    stan: &str,
) -> Result<Option<TransactionRow>, sqlx::Error> {
    sqlx::query_as::<_, TransactionRow>(&format!(
        "SELECT {COLUMNS} FROM transactions WHERE terminal_id = $1 AND stan = $2 \
         ORDER BY local_date DESC, key_instance LIMIT 1"
    ))
    .bind(terminal_id)
    .bind(stan)
    .fetch_optional(conn)
    .await
}

/// A merchant's approvals of one UTC day, at most `limit`.
pub async fn by_merchant_day(
    conn: &mut PgConnection,
    merchant_id: &str,
    day: Date,
    limit: i64,
) -> Result<Vec<TransactionRow>, sqlx::Error> {
    let start = day.midnight().assume_utc();
    let end = start + time::Duration::DAY;
    sqlx::query_as::<_, TransactionRow>(&format!(
        "SELECT {COLUMNS} FROM transactions \
         WHERE merchant_id = $1 AND approved_at >= $2 AND approved_at < $3 \
         ORDER BY approved_at, transaction_id LIMIT $4"
    ))
    .bind(merchant_id)
    .bind(start)
    .bind(end)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The transaction with this id, card sale or QR payment.
pub async fn by_transaction_id(
    conn: &mut PgConnection,
    transaction_id: Uuid,
) -> Result<Vec<TransactionRow>, sqlx::Error> {
    sqlx::query_as::<_, TransactionRow>(&format!(
        "SELECT {COLUMNS} FROM transactions WHERE transaction_id = $1"
    ))
    .bind(transaction_id)
    .fetch_all(conn)
    .await
}

/// The QR payment of this order at the platform.
pub async fn by_qr_order_id(
    conn: &mut PgConnection,
    order_id: &str,
) -> Result<Vec<TransactionRow>, sqlx::Error> {
    sqlx::query_as::<_, TransactionRow>(&format!(
        "SELECT {COLUMNS} FROM transactions WHERE qr_order_id = $1"
    ))
    .bind(order_id)
    .fetch_all(conn)
    .await
}

/// A merchant refund as settlement records it, with the state of the
/// window it was netted in, if any.
#[derive(Debug, Clone, FromRow)]
pub struct RefundDebitRow {
    pub refund_id: String,
    pub transaction_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub window_id: Option<Uuid>,
    pub window_state: Option<String>,
}

/// The refund debits of these transactions, oldest first.
pub async fn refunds_of(
    conn: &mut PgConnection,
    transaction_ids: &[Uuid],
) -> Result<Vec<RefundDebitRow>, sqlx::Error> {
    sqlx::query_as::<_, RefundDebitRow>(
        "SELECT r.refund_id, r.transaction_id, r.amount_minor, r.currency, r.window_id, \
                w.state AS window_state \
         FROM refund_debits r LEFT JOIN windows w ON w.window_id = r.window_id \
         WHERE r.transaction_id = ANY($1) ORDER BY r.completed_at, r.refund_id",
    )
    .bind(transaction_ids)
    .fetch_all(conn)
    .await
}

/// A merchant refund the platform completed, to be netted against the
/// merchant's payouts.
#[derive(Debug, Clone)]
pub struct NewRefundDebit {
    pub refund_id: String,
    pub transaction_id: Uuid,
    pub merchant_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub completed_at: OffsetDateTime,
}

/// Records a refund debit once: a repeat of its refund id changes nothing
/// (returns false).
pub async fn record_refund_debit(
    conn: &mut PgConnection,
    debit: &NewRefundDebit,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO refund_debits (refund_id, transaction_id, merchant_id, amount_minor, \
            currency, completed_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (refund_id) DO NOTHING",
    )
    .bind(&debit.refund_id)
    .bind(debit.transaction_id)
    .bind(&debit.merchant_id)
    .bind(debit.amount_minor)
    .bind(&debit.currency)
    .bind(debit.completed_at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted > 0)
}

#[derive(Debug, Clone, FromRow)]
pub struct WindowInfo {
    pub window_id: Uuid,
    pub state: String,
    pub settled_at: Option<OffsetDateTime>,
    pub currency: Option<String>,
    pub reference: Option<String>,
}

/// The window (and its payout in `currency`) of each transaction that has one.
pub async fn windows_of(
    conn: &mut PgConnection,
    window_ids: &[Uuid],
) -> Result<Vec<WindowInfo>, sqlx::Error> {
    sqlx::query_as::<_, WindowInfo>(
        "SELECT w.window_id, w.state, w.settled_at, p.currency, p.reference \
         FROM windows w LEFT JOIN payouts p ON p.window_id = w.window_id \
         WHERE w.window_id = ANY($1)",
    )
    .bind(window_ids)
    .fetch_all(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch_core::ReversalReason;

    fn row(status: &str, reason: Option<&str>) -> TransactionRow {
        TransactionRow {
            transaction_id: Uuid::nil(),
            terminal_id: "TERM0001".into(),
            merchant_id: "MERCHANT0000001".into(),
            stan: "000001".into(),
            local_date: time::macros::date!(2026 - 11 - 24),
            rrn: "633012000001".into(),
            masked_pan: "411111******1111".into(),
            amount_minor: 1234,
            currency: "EUR".into(),
            channel: "card".into(),
            approval_code: Some("A1B2C3".into()),
            status: status.into(),
            evidence: None,
            reversal_reason: reason.map(str::to_owned),
            conflict: None,
            conflict_detail: None,
            batch_number: None,
            window_id: None,
            hold_reason: None,
            qr_order_id: None,
        }
    }

    #[test]
    fn rows_map_onto_host_statuses() {
        assert_eq!(
            row("unconfirmed", None).host_status().unwrap(),
            HostStatus::Unconfirmed
        );
        assert_eq!(
            row("confirmed", None).host_status().unwrap(),
            HostStatus::Confirmed
        );
        assert_eq!(
            row("reversed", Some("terminal_requested"))
                .host_status()
                .unwrap(),
            HostStatus::Reversed {
                reason: ReversalReason::TerminalRequested,
                completed: true
            }
        );
        assert_eq!(
            row("reversal_pending", Some("batch_orphan"))
                .host_status()
                .unwrap(),
            HostStatus::Reversed {
                reason: ReversalReason::BatchOrphan,
                completed: false
            }
        );
        assert!(row("paid", None).host_status().is_err());
        // Nothing is mapped to a default: an unknown or missing reason of a
        // reversal is a corrupt row.
        assert!(row("reversed", Some("gremlins")).host_status().is_err());
        assert!(row("reversal_pending", None).host_status().is_err());
    }

    #[test]
    fn a_row_becomes_a_host_transaction() {
        let host = row("confirmed", None).host_transaction().unwrap();
        assert_eq!(host.amount.minor_units(), 1234);
        assert_eq!(host.stan.to_string(), "000001");
        let mut bad = row("confirmed", None);
        bad.currency = "XXX".into();
        assert!(bad.host_transaction().is_err());
    }
}
