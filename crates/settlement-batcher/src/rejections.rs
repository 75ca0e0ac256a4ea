//! Operators and ledger rejections: `SettlementService.ListLedgerRejections`
//! and `ResolveLedgerRejection`. What a resolution does is
//! `switch_core::settlement::rejection::resolve`'s call; this module parses
//! the request (refusing bad input before anything is written), locks the
//! rejection, asks the core, and has the store write the decision, who,
//! why and when in one transaction.
//!
//! A rejection recorded before the ledger followed rejected approvals has
//! neither its facts nor its status; admitting one asks authorization's
//! journal, the authority, where it stands (before the row is locked: a
//! call to another service never holds a lock).

use switch_core::settlement::rejection::{self, Resolution, ResolutionDecision, ResolutionRefusal};
use switch_core::{InvalidField, LedgerEntry, SharedClock, operator_text};
use switch_platform::service::{GrpcClient, ServeError};
use switch_proto::domain::{required, wire_optional};
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use switch_proto::v1::{
    self as pb, LedgerRejection, ListLedgerRejectionsRequest, ListLedgerRejectionsResponse,
    ResolveLedgerRejectionRequest,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::Status;
use uuid::Uuid;

use crate::batch::{AuthorizationClient, CALL_TIMEOUT, approval_from_record};
use crate::metrics::Metrics;
use crate::store::{self, CorruptRow, LedgerError, RejectionCursor, RejectionRow, ResolvedBy};

/// Rejections listed when the request names no limit.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Most rejections listed at once.
pub const MAX_LIST_LIMIT: u32 = 1_000;

/// Lists and resolves ledger rejections.
#[derive(Clone)]
pub struct LedgerRejections {
    pool: sqlx::PgPool,
    authorization: AuthorizationClient,
    metrics: Metrics,
    clock: SharedClock,
}

fn invalid(error: InvalidField) -> Status {
    Status::invalid_argument(error.to_string())
}

fn unavailable(error: sqlx::Error) -> Status {
    Status::unavailable(format!("database: {error}"))
}

fn corrupt(error: CorruptRow) -> Status {
    tracing::error!(%error, "Ledger rejection does not parse.");
    Status::internal(error.to_string())
}

fn ledger(error: LedgerError) -> Status {
    match error {
        LedgerError::Database(error) => unavailable(error),
        LedgerError::Corrupt(error) => corrupt(error),
    }
}

/// A page's `limit`: 0 is the default; above the maximum is refused.
fn list_limit(limit: u32) -> Result<u32, InvalidField> {
    match limit {
        0 => Ok(DEFAULT_LIST_LIMIT),
        n if n > MAX_LIST_LIMIT => Err(InvalidField::new(
            "limit",
            format!("must be at most {MAX_LIST_LIMIT}"),
        )),
        n => Ok(n),
    }
}

/// The cursor after `last`: when it was recorded (nanoseconds since the
/// epoch) and its transaction, the order the list is in.
fn cursor_after(last: &RejectionRow) -> String {
    format!(
        "{}_{}",
        last.recorded_at.unix_timestamp_nanos(),
        last.transaction_id
    )
}

/// A request's `cursor`: empty for the first page, otherwise one that
/// [`cursor_after`] made.
fn parse_cursor(cursor: &str) -> Result<Option<RejectionCursor>, InvalidField> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let refused = || InvalidField::new("cursor", "is not a cursor this service issued");
    let (nanos, id) = cursor.split_once('_').ok_or_else(refused)?;
    let nanos: i128 = nanos.parse().map_err(|_| refused())?;
    Ok(Some(RejectionCursor {
        recorded_at: OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| refused())?,
        transaction_id: Uuid::parse_str(id).map_err(|_| refused())?,
    }))
}

fn rfc3339(at: Option<OffsetDateTime>) -> String {
    at.and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A stored rejection as the API answers it.
fn wire(row: &RejectionRow) -> Result<LedgerRejection, CorruptRow> {
    let rejection = row.rejection()?;
    let tracked = rejection.tracked;
    let reason = tracked
        .and_then(|entry| entry.status.reversal_reason())
        .or_else(|| {
            row.reversal_reason
                .as_deref()
                .and_then(|r| switch_core::ReversalReason::parse(r).ok())
        });
    Ok(LedgerRejection {
        transaction_id: row.transaction_id.to_string(),
        terminal_id: row.terminal_id.clone(),
        merchant_id: row.merchant_id.clone(),
        stan: row.stan.clone(),
        local_date: switch_core::LocalDate::from_date(row.local_date).to_string(),
        amount: Some(pb::Money {
            minor_units: row.amount_minor,
            currency: row.currency.clone(),
        }),
        held_by: row.held_by.to_string(),
        recorded_at: rfc3339(Some(row.recorded_at)),
        rrn: row.rrn.clone().unwrap_or_default(),
        masked_pan: row.masked_pan.clone().unwrap_or_default(),
        status: wire_optional::<_, pb::LedgerStatus>(tracked.map(|e| e.status.status())),
        reversal_reason: wire_optional::<_, pb::ReversalReason>(reason),
        evidence: wire_optional::<_, pb::Evidence>(tracked.and_then(|e| e.evidence)),
        resolution: wire_optional::<_, pb::RejectionResolution>(rejection.resolution),
        resolved_by: row.resolved_by.clone().unwrap_or_default(),
        resolution_reason: row.resolution_reason.clone().unwrap_or_default(),
        resolved_at: rfc3339(row.resolved_at),
    })
}

impl LedgerRejections {
    /// Over a migrated pool; `authorization_endpoint` is asked only to
    /// admit a rejection recorded before the ledger kept their facts.
    pub fn new(
        pool: sqlx::PgPool,
        authorization_endpoint: &str,
        internal_tls: &switch_platform::internal_tls::InternalTlsConfig,
        clock: SharedClock,
    ) -> Result<Self, ServeError> {
        let channel = GrpcClient::new(authorization_endpoint)
            .internal(crate::SERVICE_NAME, internal_tls)
            .connect_timeout(CALL_TIMEOUT)
            .request_timeout(CALL_TIMEOUT)
            .traced()?;
        Ok(LedgerRejections {
            pool,
            authorization: AuthorizationServiceClient::new(channel),
            metrics: Metrics::new(),
            clock,
        })
    }

    /// Records the open rejections' gauge.
    pub(crate) async fn report_open(&self) -> Result<i64, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let open = store::open_rejections(&mut conn).await?;
        self.metrics.open_rejections(open);
        Ok(open)
    }

    /// `ListLedgerRejections`: a page, oldest first.
    pub async fn list(
        &self,
        request: &ListLedgerRejectionsRequest,
    ) -> Result<ListLedgerRejectionsResponse, Status> {
        let limit = list_limit(request.limit).map_err(invalid)?;
        let after = parse_cursor(&request.cursor).map_err(invalid)?;
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        // One more than the page: whether another page follows.
        let mut rows = store::list_rejections(
            &mut conn,
            request.include_resolved,
            after,
            i64::from(limit) + 1,
        )
        .await
        .map_err(unavailable)?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let open = store::open_rejections(&mut conn)
            .await
            .map_err(unavailable)?;
        let next_cursor = match rows.last() {
            Some(last) if more => cursor_after(last),
            _ => String::new(),
        };
        Ok(ListLedgerRejectionsResponse {
            rejections: rows
                .iter()
                .map(wire)
                .collect::<Result<_, _>>()
                .map_err(corrupt)?,
            next_cursor,
            open: u64::try_from(open).unwrap_or(0),
        })
    }

    /// `ResolveLedgerRejection`: once, with who and why.
    pub async fn resolve(
        &self,
        request: &ResolveLedgerRejectionRequest,
    ) -> Result<LedgerRejection, Status> {
        let transaction_id = Uuid::parse_str(request.transaction_id.trim())
            .map_err(|_| invalid(InvalidField::new("transaction_id", "must be a UUID")))?;
        let resolution: Resolution =
            required::<pb::RejectionResolution, _>("resolution", request.resolution)
                .map_err(invalid)?;
        let operator = operator_text("operator", &request.operator).map_err(invalid)?;
        let reason = operator_text("reason", &request.reason).map_err(invalid)?;
        let not_found = || {
            Status::not_found(format!(
                "no ledger rejection for transaction {transaction_id}"
            ))
        };

        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let seen = store::rejection_of(&mut conn, transaction_id, false)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        drop(conn);
        let looked_up = if resolution == Resolution::Admit
            && seen.resolution.is_none()
            && (seen.status.is_none() || seen.approval().is_none())
        {
            self.look_up(transaction_id).await?
        } else {
            None
        };

        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if resolution == Resolution::Admit {
            // Before the rejection's lock, as a batch close takes it before
            // the rows it locks: the two never wait for each other in turn.
            store::lock_terminal(&mut tx, &seen.terminal_id)
                .await
                .map_err(unavailable)?;
        }
        let row = store::rejection_of(&mut tx, transaction_id, true)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        let current = row.rejection().map_err(corrupt)?;
        let known = looked_up
            .as_ref()
            .map(|(_, command)| LedgerEntry::first_known(*command));
        let decision = rejection::resolve(&current, resolution, known).map_err(|refusal| {
            let what = match refusal {
                ResolutionRefusal::AlreadyResolved(_) => format!(
                    " (by {} at {}: {})",
                    row.resolved_by.as_deref().unwrap_or("?"),
                    rfc3339(row.resolved_at),
                    row.resolution_reason.as_deref().unwrap_or("?")
                ),
                ResolutionRefusal::StatusUnknown => String::new(),
            };
            Status::failed_precondition(format!(
                "the ledger rejection of transaction {transaction_id} {refusal}{what}"
            ))
        })?;
        let approval = row
            .approval()
            .or_else(|| looked_up.map(|(approval, _)| approval));
        if matches!(decision, ResolutionDecision::Admitted { .. }) && approval.is_none() {
            return Err(Status::failed_precondition(format!(
                "the ledger rejection of transaction {transaction_id} cannot be admitted: \
                 its facts were not kept and authorization has no record of it; dismiss it"
            )));
        }
        let by = ResolvedBy {
            operator,
            reason,
            at: self.clock.now(),
        };
        store::resolve_rejection(
            &mut tx,
            &decision,
            approval.as_ref(),
            row.reversal_reason.as_deref(),
            &by,
            transaction_id,
        )
        .await
        .map_err(ledger)?;
        let resolved = store::rejection_of(&mut tx, transaction_id, false)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        tx.commit().await.map_err(unavailable)?;
        let open = self.report_open().await.unwrap_or(-1);
        tracing::warn!(
            %transaction_id,
            terminal_id = %row.terminal_id,
            stan = %row.stan,
            held_by = %row.held_by,
            resolution = resolution.as_str(),
            status = current.tracked.or(known).map_or("unknown", |e| e.status.as_str()),
            operator,
            reason,
            open,
            "Ledger rejection resolved by an operator."
        );
        wire(&resolved).map_err(corrupt)
    }

    /// Where authorization's journal says the transaction stands, with its
    /// facts; `None` when it has no record of it (or it never was an
    /// approval).
    async fn look_up(
        &self,
        transaction_id: Uuid,
    ) -> Result<Option<(store::NewApproval, switch_core::LedgerCommand)>, Status> {
        let request = pb::GetAuthorizationRequest {
            by: Some(pb::get_authorization_request::By::TransactionId(
                transaction_id.to_string(),
            )),
        };
        match self.authorization.clone().get_authorization(request).await {
            Ok(record) => Ok(approval_from_record(&record.into_inner(), self.clock.now())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Status::unavailable(format!(
                "authorization, asked where the rejected approval stands: {}",
                status.message()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors_are_checked_naming_the_field() {
        assert_eq!(list_limit(0), Ok(DEFAULT_LIST_LIMIT));
        assert_eq!(list_limit(1_000), Ok(1_000));
        assert_eq!(list_limit(1_001).unwrap_err().field, "limit");
        assert_eq!(parse_cursor(""), Ok(None));
        let at = time::macros::datetime!(2026-12-02 10:00:00.5 UTC);
        let id = Uuid::new_v4();
        assert_eq!(
            parse_cursor(&format!("{}_{id}", at.unix_timestamp_nanos())),
            Ok(Some(RejectionCursor {
                recorded_at: at,
                transaction_id: id
            }))
        );
        for bad in ["x", "1_x", "x_00000000-0000-0000-0000-000000000000"] {
            assert_eq!(parse_cursor(bad).unwrap_err().field, "cursor", "{bad}");
        }
    }
}
