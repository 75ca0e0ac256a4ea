//! Every SQL statement of the settlement batcher. Functions take a
//! connection so callers decide the transaction they run in.

use sqlx::{FromRow, PgConnection};
use switch_core::{
    ApprovalCode, Currency, HostStatus, HostTransaction, LocalDate, Money, ReversalReason, Stan,
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
}

const COLUMNS: &str = "transaction_id, terminal_id, merchant_id, stan, local_date, rrn, \
    masked_pan, amount_minor, currency, channel, approval_code, status, evidence, \
    reversal_reason, conflict, conflict_detail, batch_number, window_id, hold_reason";

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
        let reason = || {
            self.reversal_reason
                .as_deref()
                .and_then(|r| ReversalReason::parse(r).ok())
                .unwrap_or(ReversalReason::NoTerminalAcknowledgement)
        };
        match self.status.as_str() {
            "unconfirmed" => Ok(HostStatus::Unconfirmed),
            "confirmed" => Ok(HostStatus::Confirmed),
            "reversal_pending" => Ok(HostStatus::Reversed {
                reason: reason(),
                completed: false,
            }),
            "reversed" => Ok(HostStatus::Reversed {
                reason: reason(),
                completed: true,
            }),
            other => Err(self.corrupt(format!("unknown status '{other}'"))),
        }
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
}

/// Where an approval now stands.
#[derive(Debug, Clone, Default)]
pub struct Advance<'a> {
    pub status: &'a str,
    pub evidence: Option<&'a str>,
    pub reversal_reason: Option<&'a str>,
}

/// What [`upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// Added, or moved forward.
    Written,
    /// Already known at this status or a later one.
    Unchanged,
    /// Another transaction holds the approval's terminal + date + STAN; the
    /// approval was recorded in `ledger_rejections` instead.
    KeyHeldBy(Uuid),
}

/// Records an approval, or moves an existing one forward; a status of
/// lower rank than the stored one changes nothing. An approval whose
/// terminal key another transaction holds is not written to the ledger
/// (that would fail every retry of the batch) but recorded as a rejection.
pub async fn upsert(
    conn: &mut PgConnection,
    approval: &NewApproval,
    advance: &Advance<'_>,
    batch_number: Option<&str>,
) -> Result<Upserted, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO transactions (transaction_id, terminal_id, merchant_id, stan, local_date, \
            rrn, masked_pan, amount_minor, currency, channel, approval_code, approved_at, status, \
            evidence, reversal_reason, batch_number) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16 \
         WHERE NOT EXISTS (SELECT 1 FROM transactions \
             WHERE terminal_id = $2 AND local_date = $5 AND stan = $4 AND transaction_id <> $1) \
         ON CONFLICT (transaction_id) DO UPDATE SET \
            status = EXCLUDED.status, \
            evidence = COALESCE(EXCLUDED.evidence, transactions.evidence), \
            reversal_reason = COALESCE(EXCLUDED.reversal_reason, transactions.reversal_reason), \
            approval_code = COALESCE(transactions.approval_code, EXCLUDED.approval_code), \
            updated_at = now() \
         WHERE status_rank(EXCLUDED.status) > status_rank(transactions.status)",
    )
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
    .bind(advance.status)
    .bind(advance.evidence)
    .bind(advance.reversal_reason)
    .bind(batch_number)
    .execute(&mut *conn)
    .await?;
    if result.rows_affected() > 0 {
        return Ok(Upserted::Written);
    }
    // Nothing written: either nothing to change, or the key is taken.
    let holder: Option<Uuid> = sqlx::query_scalar(
        "SELECT transaction_id FROM transactions \
         WHERE terminal_id = $1 AND local_date = $2 AND stan = $3 AND transaction_id <> $4",
    )
    .bind(&approval.terminal_id)
    .bind(approval.local_date)
    .bind(&approval.stan)
    .bind(approval.transaction_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(holder) = holder else {
        return Ok(Upserted::Unchanged);
    };
    sqlx::query(
        "INSERT INTO ledger_rejections (transaction_id, terminal_id, local_date, stan, \
            merchant_id, amount_minor, currency, held_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (transaction_id) DO NOTHING",
    )
    .bind(approval.transaction_id)
    .bind(&approval.terminal_id)
    .bind(approval.local_date)
    .bind(&approval.stan)
    .bind(&approval.merchant_id)
    .bind(approval.amount_minor)
    .bind(&approval.currency)
    .bind(holder)
    .execute(&mut *conn)
    .await?;
    Ok(Upserted::KeyHeldBy(holder))
}

/// Records new approvals as unconfirmed with one statement; returns the
/// ids it added. One not added is either known already (its status can
/// only be the same or later: unconfirmed is the lowest) or has its
/// terminal key held by another transaction: the caller passes those to
/// [`upsert`], which tells the two apart. The approvals must have distinct
/// ids and terminal keys.
pub async fn insert_unconfirmed_many(
    conn: &mut PgConnection,
    approvals: &[NewApproval],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    let text = |get: fn(&NewApproval) -> &str| -> Vec<&str> { approvals.iter().map(get).collect() };
    let added: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO transactions (transaction_id, terminal_id, merchant_id, stan, local_date, \
            rrn, masked_pan, amount_minor, currency, channel, approval_code, approved_at, status) \
         SELECT i.*, 'unconfirmed' FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
             $5::date[], $6::text[], $7::text[], $8::int8[], $9::text[], $10::text[], \
             $11::text[], $12::timestamptz[]) \
           AS i(transaction_id, terminal_id, merchant_id, stan, local_date, rrn, masked_pan, \
             amount_minor, currency, channel, approval_code, approved_at) \
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
    .fetch_all(conn)
    .await?;
    Ok(added.into_iter().collect())
}

/// Moves a known approval forward; unknown ids (a reversal of an
/// authorization that was never approved) change nothing.
pub async fn advance(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    advance: &Advance<'_>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE transactions SET status = $2, \
            evidence = COALESCE($3, evidence), \
            reversal_reason = COALESCE($4, reversal_reason), \
            updated_at = now() \
         WHERE transaction_id = $1 AND status_rank($2) > status_rank(status)",
    )
    .bind(transaction_id)
    .bind(advance.status)
    .bind(advance.evidence)
    .bind(advance.reversal_reason)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() > 0)
}

/// Flags a receipt that exists for a payment the host undid or knows
/// otherwise. The first flag stays: it is the one the merchant was told.
pub async fn flag_conflict(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    kind: &str,
    detail: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE transactions SET conflict = $2, conflict_detail = $3, updated_at = now() \
         WHERE transaction_id = $1 AND conflict IS NULL AND window_id IS NULL",
    )
    .bind(transaction_id)
    .bind(kind)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() > 0)
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
/// batch and returns every transaction of the batch.
pub async fn close_open_batch(
    conn: &mut PgConnection,
    terminal_id: &str,
    batch_number: &str,
) -> Result<Vec<TransactionRow>, sqlx::Error> {
    sqlx::query(
        "UPDATE transactions SET batch_number = $2, updated_at = now() \
         WHERE terminal_id = $1 AND batch_number IS NULL",
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

/// A transaction by the terminal's key, whatever batch it is in.
pub async fn by_terminal_key(
    conn: &mut PgConnection,
    terminal_id: &str,
    local_date: Date,
    stan: &str,
) -> Result<Option<TransactionRow>, sqlx::Error> {
    sqlx::query_as::<_, TransactionRow>(&format!(
        "SELECT {COLUMNS} FROM transactions \
         WHERE terminal_id = $1 AND local_date = $2 AND stan = $3"
    ))
    .bind(terminal_id)
    .bind(local_date)
    .bind(stan)
    .fetch_optional(conn)
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
         ORDER BY local_date DESC LIMIT 1"
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
