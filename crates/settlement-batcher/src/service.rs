//! `SettlementService`: the gRPC shell around batches, windows and the
//! status query.

use std::collections::HashMap;

use switch_core::qr::OrderId;
use switch_core::{
    HoldReason, InvalidField, LocalDate, MerchantId, Stan, Standing, TerminalId, TransactionId,
};
use switch_platform::telemetry::server_span;
use switch_proto::domain::wire_optional;
use switch_proto::v1::settlement_service_server::SettlementService;
use switch_proto::v1::settlement_status_request::Query;
use switch_proto::v1::{
    self as pb, CloseBatchRequest, CloseBatchResponse, RefundSettlement, RunSettlementRequest,
    RunSettlementResponse, SettlementState, SettlementStatusRequest, SettlementStatusResponse,
    TransactionSettlement, UploadBatchRequest, UploadBatchResponse,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use uuid::Uuid;

use crate::batch::Batcher;
use crate::store::{self, CorruptRow, RefundDebitRow, TransactionRow, WindowInfo};
use crate::windows::{SettleError, Settler};

/// The most transactions one merchant-day query returns.
pub const MAX_STATUS_ROWS: i64 = 10_000;

pub struct SettlementApi {
    pub(crate) pool: sqlx::PgPool,
    pub(crate) batcher: Batcher,
    pub(crate) settler: Settler,
    pub(crate) rejections: crate::LedgerRejections,
}

impl From<SettleError> for Status {
    fn from(error: SettleError) -> Status {
        match error {
            SettleError::Database(_) | SettleError::Contended => {
                Status::unavailable(error.to_string())
            }
            SettleError::Corrupt(_) | SettleError::Files(_) => Status::internal(error.to_string()),
        }
    }
}

fn invalid(error: InvalidField) -> Status {
    Status::invalid_argument(error.to_string())
}

#[tonic::async_trait]
impl SettlementService for SettlementApi {
    async fn list_ledger_rejections(
        &self,
        request: Request<pb::ListLedgerRejectionsRequest>,
    ) -> Result<Response<pb::ListLedgerRejectionsResponse>, Status> {
        let span = server_span("settlement.ListLedgerRejections", request.metadata());
        let request = request.into_inner();
        async { Ok(Response::new(self.rejections.list(&request).await?)) }
            .instrument(span)
            .await
    }

    async fn resolve_ledger_rejection(
        &self,
        request: Request<pb::ResolveLedgerRejectionRequest>,
    ) -> Result<Response<pb::LedgerRejection>, Status> {
        let span = server_span("settlement.ResolveLedgerRejection", request.metadata());
        let request = request.into_inner();
        async { Ok(Response::new(self.rejections.resolve(&request).await?)) }
            .instrument(span)
            .await
    }

    async fn close_batch(
        &self,
        request: Request<CloseBatchRequest>,
    ) -> Result<Response<CloseBatchResponse>, Status> {
        let span = server_span("settlement.CloseBatch", request.metadata());
        let request = request.into_inner();
        async { Ok(Response::new(self.batcher.close(&request).await?)) }
            .instrument(span)
            .await
    }

    async fn upload_batch(
        &self,
        request: Request<UploadBatchRequest>,
    ) -> Result<Response<UploadBatchResponse>, Status> {
        let span = server_span("settlement.UploadBatch", request.metadata());
        let request = request.into_inner();
        async { Ok(Response::new(self.batcher.upload(&request).await?)) }
            .instrument(span)
            .await
    }

    async fn get_settlement_status(
        &self,
        request: Request<SettlementStatusRequest>,
    ) -> Result<Response<SettlementStatusResponse>, Status> {
        let span = server_span("settlement.GetSettlementStatus", request.metadata());
        let request = request.into_inner();
        async {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let db = |e: sqlx::Error| Status::unavailable(e.to_string());
            let rows: Vec<TransactionRow> = match request.query {
                Some(Query::Rrn(rrn)) => {
                    if rrn.len() != 12 || !rrn.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return Err(invalid(InvalidField::new(
                            "rrn",
                            "must be 12 letters or digits",
                        )));
                    }
                    store::by_rrn(&mut conn, &rrn).await.map_err(db)?
                }
                Some(Query::Terminal(key)) => {
                    let terminal = TerminalId::parse(&key.terminal_id).map_err(invalid)?;
                    let stan = Stan::parse(&key.stan).map_err(invalid)?;
                    if key.local_date.is_empty() {
                        store::latest_by_stan(&mut conn, terminal.as_str(), &stan.to_string())
                            .await
                            .map_err(db)?
                            .into_iter()
                            .collect()
                    } else {
                        let date = LocalDate::parse(&key.local_date).map_err(invalid)?;
                        store::all_by_terminal_key(
                            &mut conn,
                            terminal.as_str(),
                            date.date(),
                            &stan.to_string(),
                        )
                        .await
                        .map_err(db)?
                    }
                }
                Some(Query::Merchant(day)) => {
                    let merchant = MerchantId::parse(&day.merchant_id).map_err(invalid)?;
                    let date = LocalDate::parse(&day.date)
                        .map_err(|e| invalid(InvalidField::new("date", e.reason)))?;
                    store::by_merchant_day(
                        &mut conn,
                        merchant.as_str(),
                        date.date(),
                        MAX_STATUS_ROWS,
                    )
                    .await
                    .map_err(db)?
                }
                Some(Query::TransactionId(id)) => {
                    let id = TransactionId::parse(&id).map_err(invalid)?;
                    store::by_transaction_id(&mut conn, id.as_uuid())
                        .await
                        .map_err(db)?
                }
                Some(Query::QrOrderId(order_id)) => {
                    let order_id = OrderId::parse(&order_id)
                        .map_err(|e| invalid(InvalidField::new("qr_order_id", e.reason)))?;
                    store::by_qr_order_id(&mut conn, order_id.as_str())
                        .await
                        .map_err(db)?
                }
                None => {
                    return Err(invalid(InvalidField::new(
                        "query",
                        "missing: rrn, terminal, merchant, transaction_id or qr_order_id",
                    )));
                }
            };
            if rows.is_empty() {
                return Err(Status::not_found("no approval matches the query"));
            }
            let window_ids: Vec<Uuid> = rows.iter().filter_map(|r| r.window_id).collect();
            let windows = store::windows_of(&mut conn, &window_ids)
                .await
                .map_err(db)?;
            let mut by_window: HashMap<(Uuid, String), &WindowInfo> = HashMap::new();
            for window in &windows {
                by_window.insert(
                    (
                        window.window_id,
                        window.currency.clone().unwrap_or_default(),
                    ),
                    window,
                );
            }
            let ids: Vec<Uuid> = rows.iter().map(|r| r.transaction_id).collect();
            let mut refunds: HashMap<Uuid, Vec<RefundSettlement>> = HashMap::new();
            for refund in store::refunds_of(&mut conn, &ids).await.map_err(db)? {
                refunds
                    .entry(refund.transaction_id)
                    .or_default()
                    .push(refund_settlement(&refund));
            }
            let transactions = rows
                .iter()
                .map(|row| {
                    let window = row
                        .window_id
                        .and_then(|id| by_window.get(&(id, row.currency.clone())).copied());
                    let mut settlement =
                        settlement_of(row, window).map_err(|e| Status::internal(e.to_string()))?;
                    settlement.refunds = refunds.remove(&row.transaction_id).unwrap_or_default();
                    Ok(settlement)
                })
                .collect::<Result<_, Status>>()?;
            Ok(Response::new(SettlementStatusResponse { transactions }))
        }
        .instrument(span)
        .await
    }

    async fn run_settlement(
        &self,
        request: Request<RunSettlementRequest>,
    ) -> Result<Response<RunSettlementResponse>, Status> {
        let span = server_span("settlement.RunSettlement", request.metadata());
        let request = request.into_inner();
        async {
            let now = self.settler.now();
            let cutoff = match request.cutoff.as_str() {
                "" => now,
                text => OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
                    invalid(InvalidField::new(
                        "cutoff",
                        format!("'{text}' is not RFC 3339"),
                    ))
                })?,
            };
            if cutoff > now {
                return Err(invalid(InvalidField::new(
                    "cutoff",
                    "is in the future: a window cannot close before its cut-off",
                )));
            }
            for merchant in &request.merchant_ids {
                MerchantId::parse(merchant)
                    .map_err(|e| invalid(InvalidField::new("merchant_ids", e.reason)))?;
            }
            let report = self.settler.run(&request.merchant_ids, cutoff).await?;
            let path = |p: Option<std::path::PathBuf>| {
                p.map(|p| p.display().to_string()).unwrap_or_default()
            };
            Ok(Response::new(RunSettlementResponse {
                windows: report.windows,
                csv_path: path(report.csv_path),
                pain001_path: path(report.pain001_path),
                run_id: report.run_id.map(|r| r.to_string()).unwrap_or_default(),
            }))
        }
        .instrument(span)
        .await
    }
}

/// Where one approval stands (`switch_core::standing`), in words a
/// merchant understands.
fn settlement_of(
    row: &TransactionRow,
    window: Option<&WindowInfo>,
) -> Result<TransactionSettlement, CorruptRow> {
    let entry = row.ledger_entry()?;
    let standing = switch_core::standing(&entry, window.map(|w| w.state == "settled"));
    let hold_reason = match standing {
        Standing::Conflict => Some(HoldReason::Conflict),
        Standing::ReversalPending { held: true, .. } => Some(HoldReason::ReversalPending),
        Standing::AwaitingEvidence { held: true } => Some(HoldReason::AwaitingEvidence),
        _ => None,
    };
    let waiting = |held: bool| {
        if held {
            SettlementState::Held
        } else {
            SettlementState::Pending
        }
    };
    let (state, reason) = match standing {
        Standing::Paid => (SettlementState::Paid, String::new()),
        Standing::Paying => (
            SettlementState::Pending,
            "window closed; payout file being written".to_owned(),
        ),
        Standing::NotPayable { reason } => {
            (SettlementState::NotPayable, format!("reversed ({reason})"))
        }
        Standing::Conflict => (
            SettlementState::Held,
            format!(
                "conflict: {}{}",
                row.conflict.as_deref().unwrap_or_default(),
                row.conflict_detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        ),
        Standing::Confirmed { evidence } => (
            SettlementState::Pending,
            format!(
                "confirmed ({}); paid at the merchant's next cut-off",
                evidence.map_or("evidence recorded", |e| e.as_str())
            ),
        ),
        Standing::ReversalPending { reason, held } => (
            waiting(held),
            format!("reversal_pending: reversal of the approval in progress ({reason})"),
        ),
        Standing::AwaitingEvidence { held } => (
            waiting(held),
            "awaiting_evidence: the terminal has not shown it completed the sale".into(),
        ),
    };
    Ok(TransactionSettlement {
        transaction_id: row.transaction_id.to_string(),
        rrn: row.rrn.clone(),
        terminal_id: row.terminal_id.clone(),
        merchant_id: row.merchant_id.clone(),
        stan: row.stan.clone(),
        local_date: LocalDate::from_date(row.local_date).to_string(),
        amount: Some(pb::Money {
            minor_units: row.amount_minor,
            currency: row.currency.clone(),
        }),
        state: state.into(),
        reason,
        window_id: if state == SettlementState::Paid {
            row.window_id.map(|w| w.to_string()).unwrap_or_default()
        } else {
            String::new()
        },
        batch_number: row.batch_number.clone().unwrap_or_default(),
        paid_at: window
            .and_then(|w| w.settled_at)
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default(),
        payout_reference: window.and_then(|w| w.reference.clone()).unwrap_or_default(),
        conflict: row.conflict.is_some(),
        hold_reason: wire_optional::<_, pb::HoldReason>(hold_reason),
        reversal_reason: wire_optional::<_, pb::ReversalReason>(entry.status.reversal_reason()),
        channel: row.channel.clone(),
        qr_order_id: row.qr_order_id.clone().unwrap_or_default(),
        refunds: Vec::new(),
    })
}

/// A merchant refund as settlement takes it back: pending until the window
/// it was netted in is paid out, then paid with that window.
fn refund_settlement(refund: &RefundDebitRow) -> RefundSettlement {
    let paid = refund.window_state.as_deref() == Some("settled");
    RefundSettlement {
        refund_id: refund.refund_id.clone(),
        amount: Some(pb::Money {
            minor_units: refund.amount_minor,
            currency: refund.currency.clone(),
        }),
        state: if paid {
            SettlementState::Paid
        } else {
            SettlementState::Pending
        }
        .into(),
        window_id: if paid {
            refund.window_id.map(|w| w.to_string()).unwrap_or_default()
        } else {
            String::new()
        },
    }
}
