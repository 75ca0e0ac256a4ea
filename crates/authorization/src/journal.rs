//! The authorization journal in PostgreSQL. Every state change is one
//! transaction that updates the row, appends to its transition history and,
//! where the change is news for other services, enqueues the event in the
//! outbox: the state and its announcement cannot disagree.

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use switch_core::{
    ApprovalCode, AuthorizationEvent, AuthorizationState, CardExpiry, Currency, LocalDate,
    MaskedPan, MerchantId, Money, Pan, PanFingerprint, ResponseCode, Rrn, SaleDigest, Stan,
    TerminalId, TransactionId,
};
use switch_platform::outbox::{self, OutboxMessage};
use switch_proto::v1::EventEnvelope;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::convert;
use crate::error::AuthorizationError;

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
        })
    }
}

fn parse<T>(result: Result<T, switch_core::InvalidField>) -> Result<T, AuthorizationError> {
    result.map_err(AuthorizationError::CorruptRow)
}

const COLUMNS: &str = "transaction_id, terminal_id, merchant_id, stan, local_date, rrn, \
    masked_pan, pan_fingerprint, amount_minor, currency, state, response_code, approval_code, \
    acknowledged_at, created_at";

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
}

impl Journal {
    pub fn new(pool: PgPool, topic: String, issuer_timeout_ms: u32) -> Self {
        Journal {
            pool,
            topic,
            rrns: RrnAllocator::default(),
            issuer_timeout_ms,
        }
    }

    /// Journals the intent (state `sent_to_issuer`, with its history from
    /// `received`) before the issuer is asked, or finds the earlier request
    /// with the same key. One statement: the row and its history commit
    /// together in a single round trip.
    pub async fn begin(
        &self,
        command: &SaleCommand,
        fingerprint: &PanFingerprint,
    ) -> Result<Begin, AuthorizationError> {
        let state = AuthorizationState::Received.on(&AuthorizationEvent::SentToIssuer)?;
        let rrn = self.rrns.next(&self.pool).await?;
        let inserted = sqlx::query(&format!(
            "WITH inserted AS ( \
               INSERT INTO authorizations (transaction_id, terminal_id, merchant_id, stan, \
                 local_date, rrn, masked_pan, pan_fingerprint, amount_minor, currency, state) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
               ON CONFLICT ON CONSTRAINT authorizations_terminal_key DO NOTHING \
               RETURNING {COLUMNS}), \
             history AS ( \
               INSERT INTO authorization_transitions (transaction_id, from_state, to_state, event) \
               SELECT transaction_id, NULL, $12, 'received' FROM inserted \
               UNION ALL SELECT transaction_id, $12, $11, $13 FROM inserted) \
             SELECT {COLUMNS} FROM inserted"
        ))
        .bind(TransactionId::new().as_uuid())
        .bind(command.key.terminal_id.as_str())
        .bind(command.merchant_id.as_str())
        .bind(command.key.stan.as_str())
        .bind(command.key.local_date.date())
        .bind(rrn.as_str())
        .bind(command.pan.masked().as_str())
        .bind(fingerprint.as_str())
        .bind(command.amount.minor_units())
        .bind(command.amount.currency().code())
        .bind(state.as_str())
        .bind(AuthorizationState::Received.as_str())
        .bind(AuthorizationEvent::SentToIssuer.name())
        .fetch_optional(&self.pool)
        .await?;
        match inserted {
            Some(row) => Ok(Begin::Started(StoredAuthorization::from_row(&row)?)),
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
    /// event in the outbox, in one statement: all three or none.
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
            AuthorizationEvent::SentToIssuer | AuthorizationEvent::IssuerTimedOut => (None, None),
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
        let updated = sqlx::query(&format!(
            "WITH updated AS ( \
               UPDATE authorizations SET state = $2, response_code = $3, approval_code = $4, \
                 issuer_latency_ms = $5, updated_at = now() \
               WHERE transaction_id = $1 AND state = $6 RETURNING {COLUMNS}), \
             history AS ( \
               INSERT INTO authorization_transitions (transaction_id, from_state, to_state, event) \
               SELECT transaction_id, $6, $2, $7 FROM updated), \
             announced AS ( \
               INSERT INTO outbox (event_id, topic, message_key, payload, traceparent) \
               SELECT $8, $9, $10, $11, $12 FROM updated WHERE $8::uuid IS NOT NULL) \
             SELECT {COLUMNS} FROM updated"
        ))
        .bind(current.transaction_id.as_uuid())
        .bind(next.as_str())
        .bind(response_code.map(|code| code.as_str().to_owned()))
        .bind(approval_code.map(|code| code.as_str().to_owned()))
        .bind(issuer_latency_ms)
        .bind(current.state.as_str())
        .bind(event.name())
        .bind(message.as_ref().map(|m| m.event_id))
        .bind(message.as_ref().map(|m| m.topic.clone()))
        .bind(message.as_ref().map(|m| m.key.clone()))
        .bind(message.as_ref().map(|m| m.payload.clone()))
        .bind(message.as_ref().map(|m| m.traceparent.clone()))
        .fetch_optional(&self.pool)
        .await?;
        match updated {
            Some(row) => StoredAuthorization::from_row(&row),
            // Another writer moved it on first; its record is the truth.
            None => self
                .find_by_id(current.transaction_id)
                .await?
                .ok_or_else(|| AuthorizationError::NotFound(current.transaction_id.to_string())),
        }
    }

    /// Records that the terminal showed the result; idempotent (the event is
    /// emitted once, on the first acknowledgement).
    pub async fn acknowledge(
        &self,
        key: &RequestKey,
    ) -> Result<StoredAuthorization, AuthorizationError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM authorizations \
             WHERE terminal_id = $1 AND stan = $2 AND local_date = $3 FOR UPDATE"
        ))
        .bind(key.terminal_id.as_str())
        .bind(key.stan.as_str())
        .bind(key.local_date.date())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| AuthorizationError::NotFound(key.to_string()))?;
        let current = StoredAuthorization::from_row(&row)?;
        if !current.state.is_final() {
            return Err(AuthorizationError::NotYetDecided(key.to_string()));
        }
        if current.acknowledged_at.is_some() {
            return Ok(current);
        }
        let row = sqlx::query(&format!(
            "UPDATE authorizations SET acknowledged_at = now(), updated_at = now() \
             WHERE transaction_id = $1 RETURNING {COLUMNS}"
        ))
        .bind(current.transaction_id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
        let acknowledged = StoredAuthorization::from_row(&row)?;
        let envelope = convert::acknowledged_event(&acknowledged);
        outbox::enqueue(&mut tx, &self.outbox_message(&acknowledged, &envelope)?).await?;
        tx.commit().await?;
        Ok(acknowledged)
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
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM authorizations \
             WHERE terminal_id = $1 AND stan = $2 AND local_date = $3"
        ))
        .bind(key.terminal_id.as_str())
        .bind(key.stan.as_str())
        .bind(key.local_date.date())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(StoredAuthorization::from_row)
        .transpose()
    }

    pub async fn find_by_id(
        &self,
        id: TransactionId,
    ) -> Result<Option<StoredAuthorization>, AuthorizationError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM authorizations WHERE transaction_id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(StoredAuthorization::from_row)
        .transpose()
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
