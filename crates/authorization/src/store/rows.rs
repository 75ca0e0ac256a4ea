//! Journal rows in and out: the columns every read returns, and their
//! parsing into domain types. A row that does not parse is a corrupt
//! journal, reported as such, never guessed at.

use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};
use switch_core::{
    ApprovalCode, AuthorizationState, Channel, Currency, Evidence, InvalidField, LocalDate,
    MaskedPan, MerchantId, Money, PanFingerprint, PanKeyId, ResponseCode, ReversalReason, Rrn,
    Stan, TerminalId, TransactionId,
};

use crate::error::AuthorizationError;
use crate::model::{Authorization, RequestKey};

/// What every read of an authorization selects.
pub(super) const COLUMNS: &str = "transaction_id, terminal_id, merchant_id, stan, local_date, \
    rrn, masked_pan, pan_fingerprint, pan_fingerprint_key_id, amount_minor, currency, state, \
    response_code, approval_code, acknowledged_at, created_at, reversal_reason, \
    confirmation_evidence, conflict_at, channel";

pub(super) fn authorization(row: &PgRow) -> Result<Authorization, AuthorizationError> {
    let currency: String = row.try_get("currency")?;
    Ok(Authorization {
        transaction_id: TransactionId::from_uuid(row.try_get("transaction_id")?),
        key: RequestKey {
            terminal_id: parse(TerminalId::parse(row.try_get("terminal_id")?))?,
            stan: parse(Stan::parse(row.try_get("stan")?))?,
            local_date: LocalDate::from_date(row.try_get("local_date")?),
        },
        merchant_id: parse(MerchantId::parse(row.try_get("merchant_id")?))?,
        rrn: parse(Rrn::parse(row.try_get("rrn")?))?,
        masked_pan: parse(MaskedPan::parse(row.try_get("masked_pan")?))?,
        pan_fingerprint: parse(PanFingerprint::from_hex(
            parse(PanKeyId::parse(row.try_get("pan_fingerprint_key_id")?))?,
            row.try_get("pan_fingerprint")?,
        ))?,
        amount: Money::new(
            row.try_get("amount_minor")?,
            parse(Currency::parse(&currency))?,
        ),
        state: parse(AuthorizationState::parse(row.try_get("state")?))?,
        response_code: optional(row, "response_code", ResponseCode::parse)?,
        approval_code: optional(row, "approval_code", ApprovalCode::parse)?,
        acknowledged_at: row.try_get("acknowledged_at")?,
        created_at: row.try_get("created_at")?,
        reversal_reason: optional(row, "reversal_reason", ReversalReason::parse)?,
        confirmation_evidence: optional(row, "confirmation_evidence", Evidence::parse)?,
        conflict_at: row.try_get("conflict_at")?,
        channel: parse(Channel::parse(row.try_get("channel")?))?,
    })
}

fn optional<T>(
    row: &PgRow,
    column: &str,
    read: impl Fn(&str) -> Result<T, InvalidField>,
) -> Result<Option<T>, AuthorizationError> {
    row.try_get::<Option<String>, _>(column)?
        .as_deref()
        .map(read)
        .transpose()
        .map_err(AuthorizationError::CorruptRow)
}

pub(super) fn parse<T>(result: Result<T, InvalidField>) -> Result<T, AuthorizationError> {
    result.map_err(AuthorizationError::CorruptRow)
}

/// Whether a read locks the row for the rest of the caller's transaction.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lock {
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

pub(super) async fn select_by_id<'e>(
    executor: impl PgExecutor<'e>,
    id: TransactionId,
    lock: Lock,
) -> Result<Option<Authorization>, AuthorizationError> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM authorizations WHERE transaction_id = $1{}",
        lock.clause()
    ))
    .bind(id.as_uuid())
    .fetch_optional(executor)
    .await?
    .as_ref()
    .map(authorization)
    .transpose()
}

pub(super) async fn select_by_key<'e>(
    executor: impl PgExecutor<'e>,
    key: &RequestKey,
    lock: Lock,
) -> Result<Option<Authorization>, AuthorizationError> {
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
    .map(authorization)
    .transpose()
}
