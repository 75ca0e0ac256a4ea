//! Batch close and batch upload: the terminal's totals against the host's
//! record, and when they disagree, every sale the terminal holds against
//! every approval the host holds. The rules are pure code in
//! `switch_core::settlement`; this module finds the rows, acts on the
//! outcomes and records the answer so a repeat is answered the same.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sha2::{Digest, Sha256};
use switch_core::{
    ApprovalCode, BatchNumber, BatchTotals, CloseVerdict, Currency, Evidence, InvalidField,
    LedgerCommand, LocalDate, MerchantId, Money, RawCurrencyTotals, ReconciliationOutcome,
    ReversalReason, SharedClock, Stan, TerminalId, UploadedSale,
};
use switch_platform::outbox::{self, OutboxRelay};
use switch_platform::service::{GrpcClient, ServeError, TracedChannel};
use switch_proto::domain::{optional, required};
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{
    self as pb, AuthorizationFacts, AuthorizationRecord, AuthorizationStatus, BatchResult,
    CloseBatchRequest, CloseBatchResponse, ReconciledTransaction, UploadBatchRequest,
    UploadBatchResponse,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::Status;
use uuid::Uuid;

use crate::events::outbox_message;
use crate::ingest::record_approval;
use crate::metrics::Metrics;
use crate::store::{self, CorruptRow, LedgerError, NewApproval, TransactionRow, Upserted};

pub type AuthorizationClient = AuthorizationServiceClient<TracedChannel>;

/// How long one call to authorization may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// ISO 8583 field 39 of a 0510.
pub const RESPONSE_BALANCED: &str = "00";
pub const RESPONSE_OUT_OF_BALANCE: &str = "95";

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("batch {batch} of {terminal} was already closed with other totals")]
    ClosedWithOtherTotals { terminal: String, batch: String },
    #[error("batch {batch} of {terminal} was never closed")]
    UnknownBatch { terminal: String, batch: String },
    #[error("batch {batch} of {terminal} was already reconciled with another upload")]
    UploadedDifferently { terminal: String, batch: String },
    #[error("authorization: {0}")]
    Authorization(Status),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRow),
}

impl From<LedgerError> for BatchError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Database(e) => BatchError::Database(e),
            LedgerError::Corrupt(e) => BatchError::Corrupt(e),
        }
    }
}

impl From<BatchError> for Status {
    fn from(error: BatchError) -> Status {
        let message = error.to_string();
        match error {
            BatchError::Invalid(_) => Status::invalid_argument(message),
            BatchError::ClosedWithOtherTotals { .. } | BatchError::UploadedDifferently { .. } => {
                Status::already_exists(message)
            }
            BatchError::UnknownBatch { .. } => Status::not_found(message),
            BatchError::Authorization(_) | BatchError::Database(_) => Status::unavailable(message),
            BatchError::Corrupt(_) => Status::internal(message),
        }
    }
}

#[derive(Clone)]
pub struct Batcher {
    pool: sqlx::PgPool,
    authorization: AuthorizationClient,
    topic: String,
    relay: OutboxRelay,
    metrics: Metrics,
    clock: SharedClock,
}

/// A close request, parsed.
struct Close {
    terminal: TerminalId,
    merchant: MerchantId,
    batch: BatchNumber,
    totals: BatchTotals,
}

/// An upload request, parsed.
struct Upload {
    terminal: TerminalId,
    batch: BatchNumber,
    sales: Vec<UploadedSale>,
}

impl Batcher {
    pub fn new(
        pool: sqlx::PgPool,
        authorization_endpoint: &str,
        internal_tls: &switch_platform::internal_tls::InternalTlsConfig,
        topic: String,
        relay: OutboxRelay,
        metrics: Metrics,
        clock: SharedClock,
    ) -> Result<Self, ServeError> {
        let channel = GrpcClient::new(authorization_endpoint)
            .internal(crate::SERVICE_NAME, internal_tls)
            .connect_timeout(CALL_TIMEOUT)
            .request_timeout(CALL_TIMEOUT)
            .traced()?;
        Ok(Batcher {
            pool,
            authorization: AuthorizationServiceClient::new(channel),
            topic,
            relay,
            metrics,
            clock,
        })
    }

    /// Compares the terminal's totals with the host's record of its open
    /// batch, which this close closes.
    pub async fn close(
        &self,
        request: &CloseBatchRequest,
    ) -> Result<CloseBatchResponse, BatchError> {
        let close = parse_close(request)?;
        let digest = close_digest(&close);
        let terminal = close.terminal.as_str();
        let batch = close.batch.to_string();

        let mut tx = self.pool.begin().await?;
        store::lock_terminal(&mut tx, terminal).await?;
        if let Some(existing) = store::lock_batch(&mut tx, terminal, &batch).await? {
            if existing.close_digest != digest {
                return Err(BatchError::ClosedWithOtherTotals {
                    terminal: terminal.to_owned(),
                    batch,
                });
            }
            let mut answer = CloseBatchResponse::decode_stored(&existing.close_response)?;
            answer.duplicate = true;
            return Ok(answer);
        }
        let rows = store::close_open_batch(&mut tx, terminal, &batch).await?;
        let host = rows
            .iter()
            .map(TransactionRow::host_transaction)
            .collect::<Result<Vec<_>, _>>()?;
        let verdict = switch_core::close_batch(&close.totals, &host);
        let host_totals = switch_core::host_totals(&host);
        let (result, response_code, reason) = match &verdict {
            CloseVerdict::Balanced => (BatchResult::Balanced, RESPONSE_BALANCED, String::new()),
            CloseVerdict::OutOfBalance(why) => (
                BatchResult::OutOfBalance,
                RESPONSE_OUT_OF_BALANCE,
                why.to_string(),
            ),
        };
        let answer = CloseBatchResponse {
            result: result.into(),
            response_code: response_code.into(),
            host_totals: wire_totals(&host_totals),
            reason,
            duplicate: false,
            host_transactions: u32::try_from(rows.len()).unwrap_or(u32::MAX),
        };
        let currencies: Vec<String> = close
            .totals
            .currencies()
            .map(|t| t.currency.code().to_owned())
            .collect();
        let encoded = prost::Message::encode_to_vec(&answer);
        store::insert_batch(
            &mut tx,
            &store::NewBatch {
                terminal_id: terminal,
                batch_number: &batch,
                merchant_id: close.merchant.as_str(),
                result: result_name(result),
                close_digest: &digest,
                currencies: &currencies,
                close_response: &encoded,
            },
        )
        .await?;
        tx.commit().await?;
        self.metrics.batch_closed(result_name(result));
        tracing::info!(
            terminal_id = terminal,
            batch_number = %batch,
            result = result_name(result),
            host_transactions = rows.len(),
            reason = %answer.reason,
            "Batch closed."
        );
        Ok(answer)
    }

    /// Reconciles the terminal's upload with the batch it closed.
    pub async fn upload(
        &self,
        request: &UploadBatchRequest,
    ) -> Result<UploadBatchResponse, BatchError> {
        let upload = parse_upload(request)?;
        let digest = upload_digest(&upload);
        let terminal = upload.terminal.as_str().to_owned();
        let batch = upload.batch.to_string();

        // Before anything is locked: the batch must exist, a repeat is
        // answered from the record, and the currencies must be the batch's.
        {
            let mut conn = self.pool.acquire().await?;
            let existing = store::lock_batch(&mut conn, &terminal, &batch)
                .await?
                .ok_or_else(|| BatchError::UnknownBatch {
                    terminal: terminal.clone(),
                    batch: batch.clone(),
                })?;
            if let Some(answer) = repeated_upload(&existing, &digest, &terminal, &batch)? {
                return Ok(answer);
            }
            check_currencies(&existing.currencies, &upload.sales)?;
        }

        // Sales whose approval event has not reached this service yet are
        // looked up at authorization, the authority, so a terminal closing
        // right after its last sale is not told the host never saw it.
        self.catch_up(&terminal, &batch, &upload.sales).await?;
        // Confirming is idempotent and the listing is evidence in itself,
        // so it happens before the record and is safe to repeat.
        let confirmed_now = self
            .confirm_listed(&terminal, &batch, &upload.sales)
            .await?;

        let mut tx = self.pool.begin().await?;
        store::lock_terminal(&mut tx, &terminal).await?;
        let existing = store::lock_batch(&mut tx, &terminal, &batch)
            .await?
            .ok_or_else(|| BatchError::UnknownBatch {
                terminal: terminal.clone(),
                batch: batch.clone(),
            })?;
        if let Some(answer) = repeated_upload(&existing, &digest, &terminal, &batch)? {
            return Ok(answer);
        }
        let rows = store::in_batch(&mut tx, &terminal, &batch).await?;
        let by_id: HashMap<Uuid, &TransactionRow> =
            rows.iter().map(|r| (r.transaction_id, r)).collect();
        let host = rows
            .iter()
            .map(TransactionRow::host_transaction)
            .collect::<Result<Vec<_>, _>>()?;
        let reconciled = switch_core::reconcile_upload(&host, &upload.sales)?;

        let mut outcomes = Vec::with_capacity(reconciled.len());
        let mut wake = false;
        for item in &reconciled {
            let row = item.key.and_then(|id| by_id.get(&id).copied());
            let mut outcome = item.outcome;
            if outcome == ReconciliationOutcome::Matched
                && item.key.is_some_and(|id| confirmed_now.contains(&id))
            {
                outcome = ReconciliationOutcome::ConfirmedByUpload;
            }
            match (outcome, row) {
                (ReconciliationOutcome::OrphanFound, Some(row)) => {
                    let payload = Payload::BatchOrphanFound(pb::BatchOrphanFound {
                        facts: Some(facts_of(row)),
                        batch_number: batch.clone(),
                    });
                    let message = outbox_message(
                        &self.topic,
                        &row.transaction_id.to_string(),
                        &row.transaction_id.to_string(),
                        "settlement.batch_orphan_found",
                        payload,
                        self.clock.now(),
                    );
                    outbox::enqueue(&mut tx, &message).await?;
                    wake = true;
                }
                (outcome, Some(row)) if outcome.is_conflict() => {
                    store::flag_conflict(
                        &mut tx,
                        row.transaction_id,
                        outcome.as_str(),
                        &item.detail,
                    )
                    .await?;
                    let payload = Payload::BatchConflict(pb::BatchConflict {
                        facts: Some(facts_of(row)),
                        batch_number: batch.clone(),
                        outcome: pb::ReconciliationOutcome::from(outcome).into(),
                        detail: item.detail.clone(),
                    });
                    let message = outbox_message(
                        &self.topic,
                        &row.transaction_id.to_string(),
                        &row.transaction_id.to_string(),
                        "settlement.batch_conflict",
                        payload,
                        self.clock.now(),
                    );
                    outbox::enqueue(&mut tx, &message).await?;
                    wake = true;
                }
                _ => {}
            }
            self.metrics.reconciled(outcome.as_str());
            outcomes.push(ReconciledTransaction {
                stan: item.stan.to_string(),
                local_date: item.local_date.to_string(),
                transaction_id: row
                    .map(|r| r.transaction_id.to_string())
                    .unwrap_or_default(),
                rrn: row.map(|r| r.rrn.clone()).unwrap_or_default(),
                outcome: pb::ReconciliationOutcome::from(outcome).into(),
                detail: item.detail.clone(),
            });
        }
        let answer = UploadBatchResponse {
            result: BatchResult::Reconciled.into(),
            outcomes,
            duplicate: false,
        };
        store::record_upload(
            &mut tx,
            &terminal,
            &batch,
            &digest,
            &prost::Message::encode_to_vec(&answer),
        )
        .await?;
        tx.commit().await?;
        if wake {
            self.relay.wake();
        }
        tracing::info!(
            terminal_id = %terminal,
            batch_number = %batch,
            uploaded = upload.sales.len(),
            host = rows.len(),
            "Batch reconciled."
        );
        Ok(answer)
    }

    /// Brings every listed sale the batch does not hold into it: from the
    /// open batch (its event arrived after the close), or from
    /// authorization when this service has not heard of it at all.
    async fn catch_up(
        &self,
        terminal: &str,
        batch: &str,
        sales: &[UploadedSale],
    ) -> Result<(), BatchError> {
        let mut conn = self.pool.acquire().await?;
        for sale in sales {
            let date = sale.local_date.date();
            let stan = sale.stan.to_string();
            match store::by_terminal_key(&mut conn, terminal, date, &stan).await? {
                Some(row) if row.batch_number.is_none() => {
                    store::move_into_batch(&mut conn, row.transaction_id, batch).await?;
                }
                Some(_) => {}
                None => {
                    let key = pb::TerminalKey {
                        terminal_id: terminal.to_owned(),
                        stan: stan.clone(),
                        local_date: sale.local_date.to_string(),
                    };
                    let request = pb::GetAuthorizationRequest {
                        by: Some(pb::get_authorization_request::By::Key(key)),
                    };
                    let record = match self.authorization.clone().get_authorization(request).await {
                        Ok(record) => record.into_inner(),
                        Err(status) if status.code() == tonic::Code::NotFound => continue,
                        Err(status) => return Err(BatchError::Authorization(status)),
                    };
                    if let Some((approval, command)) =
                        approval_from_record(&record, self.clock.now())
                    {
                        record_approval(&mut conn, &self.metrics, &approval, command, Some(batch))
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Confirms, through authorization's evidence path, every listed sale
    /// the host holds unconfirmed; returns the ids it confirmed. One that
    /// authorization has meanwhile reversed is recorded as such, and then
    /// reconciles as a conflict.
    async fn confirm_listed(
        &self,
        terminal: &str,
        batch: &str,
        sales: &[UploadedSale],
    ) -> Result<HashSet<Uuid>, BatchError> {
        let mut conn = self.pool.acquire().await?;
        let rows = store::in_batch(&mut conn, terminal, batch).await?;
        let host = rows
            .iter()
            .map(TransactionRow::host_transaction)
            .collect::<Result<Vec<_>, _>>()?;
        let mut confirmed = HashSet::new();
        for item in switch_core::reconcile_upload(&host, sales)? {
            let (ReconciliationOutcome::ConfirmedByUpload, Some(id)) = (item.outcome, item.key)
            else {
                continue;
            };
            let request = pb::ConfirmRequest {
                transaction_id: id.to_string(),
                evidence: pb::Evidence::from(Evidence::BatchUpload).into(),
            };
            let record = match self.authorization.clone().confirm(request).await {
                Ok(record) => record.into_inner(),
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                    let request = pb::GetAuthorizationRequest {
                        by: Some(pb::get_authorization_request::By::TransactionId(
                            id.to_string(),
                        )),
                    };
                    self.authorization
                        .clone()
                        .get_authorization(request)
                        .await
                        .map_err(BatchError::Authorization)?
                        .into_inner()
                }
                Err(status) => return Err(BatchError::Authorization(status)),
            };
            if let Some((approval, command)) = approval_from_record(&record, self.clock.now()) {
                let upserted =
                    record_approval(&mut conn, &self.metrics, &approval, command, Some(batch))
                        .await?;
                let is_confirmation = matches!(command, LedgerCommand::Confirm { .. });
                if is_confirmation && !matches!(upserted, Upserted::KeyHeldBy(_)) {
                    confirmed.insert(id);
                }
            }
        }
        Ok(confirmed)
    }
}

fn repeated_upload(
    existing: &store::BatchRow,
    digest: &str,
    terminal: &str,
    batch: &str,
) -> Result<Option<UploadBatchResponse>, BatchError> {
    match (&existing.upload_digest, &existing.upload_response) {
        (Some(stored), Some(response)) if stored == digest => {
            let mut answer = UploadBatchResponse::decode_stored(response)?;
            answer.duplicate = true;
            Ok(Some(answer))
        }
        (Some(_), _) => Err(BatchError::UploadedDifferently {
            terminal: terminal.to_owned(),
            batch: batch.to_owned(),
        }),
        (None, _) => Ok(None),
    }
}

fn check_currencies(currencies: &[String], sales: &[UploadedSale]) -> Result<(), BatchError> {
    for sale in sales {
        let code = sale.amount.currency().code();
        if !currencies.iter().any(|c| c == code) {
            return Err(InvalidField::new(
                "transactions.amount.currency",
                format!(
                    "STAN {} is in {code}, but the batch was closed with totals in [{}]",
                    sale.stan,
                    currencies.join(", ")
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Decoding a stored answer of our own; failure means a corrupt row.
trait DecodeStored: Sized {
    fn decode_stored(bytes: &[u8]) -> Result<Self, BatchError>;
}

impl<T: prost::Message + Default> DecodeStored for T {
    fn decode_stored(bytes: &[u8]) -> Result<Self, BatchError> {
        T::decode(bytes).map_err(|e| {
            BatchError::Corrupt(CorruptRow {
                transaction_id: Uuid::nil(),
                reason: format!("stored batch answer does not decode: {e}"),
            })
        })
    }
}

fn parse_close(request: &CloseBatchRequest) -> Result<Close, InvalidField> {
    let raw: Vec<RawCurrencyTotals<'_>> = request
        .totals
        .iter()
        .map(|t| RawCurrencyTotals {
            currency: &t.currency,
            sales_count: t.sales_count,
            sales_minor_units: t.sales_minor_units,
            reversals_count: t.reversals_count,
            reversals_minor_units: t.reversals_minor_units,
        })
        .collect();
    Ok(Close {
        terminal: TerminalId::parse(&request.terminal_id)?,
        merchant: MerchantId::parse(&request.merchant_id)?,
        batch: BatchNumber::parse(&request.batch_number)?,
        totals: BatchTotals::parse(&raw)?,
    })
}

fn parse_upload(request: &UploadBatchRequest) -> Result<Upload, InvalidField> {
    let field = |name: &'static str| move |e: InvalidField| InvalidField::new(name, e.reason);
    let sales = request
        .transactions
        .iter()
        .map(|t| {
            let amount = t
                .amount
                .as_ref()
                .ok_or_else(|| InvalidField::new("transactions.amount", "missing"))?;
            let currency =
                Currency::parse(&amount.currency).map_err(field("transactions.amount.currency"))?;
            Ok(UploadedSale {
                stan: Stan::parse(&t.stan).map_err(field("transactions.stan"))?,
                local_date: LocalDate::parse(&t.local_date)
                    .map_err(field("transactions.local_date"))?,
                amount: Money::positive(amount.minor_units, currency)
                    .map_err(field("transactions.amount"))?,
                approval_code: match t.approval_code.as_str() {
                    "" => None,
                    code => Some(
                        ApprovalCode::parse(code).map_err(field("transactions.approval_code"))?,
                    ),
                },
            })
        })
        .collect::<Result<Vec<_>, InvalidField>>()?;
    MerchantId::parse(&request.merchant_id)?;
    Ok(Upload {
        terminal: TerminalId::parse(&request.terminal_id)?,
        batch: BatchNumber::parse(&request.batch_number)?,
        sales,
    })
}

/// Identifies a request's content: a repeat with the same digest is a
/// duplicate, one with another digest a different request.
fn close_digest(close: &Close) -> String {
    let mut hasher = Sha256::new();
    hasher.update(close.merchant.as_str());
    for t in close.totals.currencies() {
        hasher.update(format!(
            "|{}:{}:{}:{}:{}",
            t.currency.code(),
            t.sales_count,
            t.sales_minor_units,
            t.reversals_count,
            t.reversals_minor_units
        ));
    }
    hex::encode(hasher.finalize())
}

fn upload_digest(upload: &Upload) -> String {
    let mut lines: Vec<String> = upload
        .sales
        .iter()
        .map(|s| {
            format!(
                "{}:{}:{}:{}:{}",
                s.local_date,
                s.stan,
                s.amount.minor_units(),
                s.amount.currency().code(),
                s.approval_code.as_ref().map(|c| c.as_str()).unwrap_or("")
            )
        })
        .collect();
    lines.sort();
    hex::encode(Sha256::digest(lines.join("|")))
}

fn wire_totals(totals: &BatchTotals) -> Vec<pb::CurrencyTotals> {
    totals
        .currencies()
        .map(|t| pb::CurrencyTotals {
            currency: t.currency.code().into(),
            sales_count: i64::try_from(t.sales_count).unwrap_or(i64::MAX),
            sales_minor_units: t.sales_minor_units,
            reversals_count: i64::try_from(t.reversals_count).unwrap_or(i64::MAX),
            reversals_minor_units: t.reversals_minor_units,
        })
        .collect()
}

fn result_name(result: BatchResult) -> &'static str {
    match result {
        BatchResult::Balanced => "balanced",
        BatchResult::OutOfBalance => "out_of_balance",
        BatchResult::Reconciled => "reconciled",
        BatchResult::Unspecified => "unspecified",
    }
}

pub fn facts_of(row: &TransactionRow) -> AuthorizationFacts {
    AuthorizationFacts {
        terminal_id: row.terminal_id.clone(),
        merchant_id: row.merchant_id.clone(),
        stan: row.stan.clone(),
        local_date: LocalDate::from_date(row.local_date).to_string(),
        rrn: row.rrn.clone(),
        masked_pan: row.masked_pan.clone(),
        amount: Some(pb::Money {
            minor_units: row.amount_minor,
            currency: row.currency.clone(),
        }),
        channel: row.channel.clone(),
    }
}

/// An authorization record as an approval for the ledger and the command
/// its status stands for, or `None` when it never was one (declined, timed
/// out, still in flight) or names a reason or evidence that does not exist
/// (logged: nothing is mapped to a default).
pub(crate) fn approval_from_record(
    record: &AuthorizationRecord,
    now: OffsetDateTime,
) -> Option<(NewApproval, LedgerCommand)> {
    // A reversal pending after an issuer timeout was never an approval.
    if record.approval_code.is_empty() {
        return None;
    }
    fn refuse<T>(record: &AuthorizationRecord, why: &str) -> Option<T> {
        tracing::error!(
            transaction_id = %record.transaction_id,
            why,
            "Authorization record not taken into the ledger."
        );
        None
    }
    let reason = || match required::<pb::ReversalReason, ReversalReason>(
        "reversal_reason",
        record.reversal_reason,
    ) {
        Ok(reason) => Some(reason),
        Err(_) => refuse(record, "unknown or missing reversal reason"),
    };
    let command = match record.status() {
        AuthorizationStatus::Approved => LedgerCommand::Approve,
        AuthorizationStatus::Confirmed => LedgerCommand::Confirm {
            evidence: match optional::<pb::Evidence, Evidence>(
                "confirmation_evidence",
                record.confirmation_evidence,
            ) {
                Ok(evidence) => evidence,
                Err(_) => return refuse(record, "unknown evidence"),
            },
        },
        AuthorizationStatus::ReversalPending | AuthorizationStatus::ReversalDeadLettered => {
            LedgerCommand::RequestReversal { reason: reason()? }
        }
        AuthorizationStatus::Reversed => LedgerCommand::Reverse { reason: reason()? },
        _ => return None,
    };
    let amount = record.amount.as_ref()?;
    let approval = NewApproval {
        transaction_id: Uuid::parse_str(&record.transaction_id).ok()?,
        terminal_id: record.terminal_id.clone(),
        merchant_id: record.merchant_id.clone(),
        stan: record.stan.clone(),
        local_date: LocalDate::parse(&record.local_date).ok()?.date(),
        rrn: record.rrn.clone(),
        masked_pan: record.masked_pan.clone(),
        amount_minor: amount.minor_units,
        currency: amount.currency.clone(),
        channel: if record.channel.is_empty() {
            "card".into()
        } else {
            record.channel.clone()
        },
        approval_code: Some(record.approval_code.clone()),
        approved_at: OffsetDateTime::parse(&record.created_at, &Rfc3339).unwrap_or(now),
        qr_order_id: None,
    };
    Some((approval, command))
}
