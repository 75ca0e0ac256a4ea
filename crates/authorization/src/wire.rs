//! The gRPC edge: wire requests in, domain types out (rejecting bad input
//! with the field's name), and authorizations back out as the records the
//! API answers with. Events are `events`' business.

use switch_core::{
    CardExpiry, Channel, Currency, Evidence, InvalidField, LocalDate, MerchantId, Money, Pan,
    ReversalReason, Stan, TerminalId, terminal_message, terminal_response_code,
};
use switch_proto::domain::{required, wire_optional};
use switch_proto::v1::{self as pb, AuthorizationRecord};
use time::format_description::well_known::Rfc3339;

use crate::model::{
    Authorization, DeadLetterCursor, DeadLetteredReversal, RequestKey, SaleCommand,
};

/// Dead-lettered reversals listed when the request names no limit.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Most dead-lettered reversals listed at once.
pub const MAX_LIST_LIMIT: u32 = 1_000;

/// A page's `limit`: 0 is the default; above the maximum is refused.
pub fn list_limit(limit: u32) -> Result<u32, InvalidField> {
    match limit {
        0 => Ok(DEFAULT_LIST_LIMIT),
        n if n > MAX_LIST_LIMIT => Err(InvalidField::new(
            "limit",
            format!("must be at most {MAX_LIST_LIMIT}"),
        )),
        n => Ok(n),
    }
}

/// The cursor after `last`: when it was given up on (nanoseconds since the
/// epoch) and its transaction, the order the list is in.
pub fn dead_letter_cursor(last: &DeadLetteredReversal) -> String {
    format!(
        "{}_{}",
        last.dead_lettered_at.unix_timestamp_nanos(),
        last.authorization.transaction_id
    )
}

/// A request's `cursor`: empty for the first page, otherwise one that
/// [`dead_letter_cursor`] made.
pub fn parse_dead_letter_cursor(cursor: &str) -> Result<Option<DeadLetterCursor>, InvalidField> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let refused = || InvalidField::new("cursor", "is not a cursor this service issued");
    let (nanos, id) = cursor.split_once('_').ok_or_else(refused)?;
    let nanos: i128 = nanos.parse().map_err(|_| refused())?;
    Ok(Some(DeadLetterCursor {
        dead_lettered_at: time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .map_err(|_| refused())?,
        transaction_id: switch_core::TransactionId::parse(id).map_err(|_| refused())?,
    }))
}

fn rfc3339(at: Option<time::OffsetDateTime>) -> String {
    at.and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub fn dead_lettered(reversal: &DeadLetteredReversal) -> pb::DeadLetteredReversal {
    pb::DeadLetteredReversal {
        authorization: Some(record(&reversal.authorization)),
        reason: pb::ReversalReason::from(reversal.reason).into(),
        attempts: reversal.attempts,
        requested_at: rfc3339(Some(reversal.requested_at)),
        first_attempt_at: rfc3339(reversal.first_attempt_at),
        last_attempt_at: rfc3339(reversal.last_attempt_at),
        last_response_code: reversal.last_response_code.clone().unwrap_or_default(),
        last_error: reversal.last_error.clone().unwrap_or_default(),
        dead_lettered_at: rfc3339(Some(reversal.dead_lettered_at)),
    }
}

/// `ReverseRequest.reason`: required, field "reason".
pub fn reversal_reason(request: &pb::ReverseRequest) -> Result<ReversalReason, InvalidField> {
    required::<pb::ReversalReason, _>("reason", request.reason)
}

/// `ConfirmRequest.evidence`: required, field "evidence".
pub fn confirmation_evidence(request: &pb::ConfirmRequest) -> Result<Evidence, InvalidField> {
    required::<pb::Evidence, _>("evidence", request.evidence)
}

pub fn request_key(key: Option<&pb::TerminalKey>) -> Result<RequestKey, InvalidField> {
    let key = key.ok_or_else(|| InvalidField::new("key", "missing"))?;
    Ok(RequestKey {
        terminal_id: TerminalId::parse(&key.terminal_id)?,
        stan: Stan::parse(&key.stan)?,
        local_date: LocalDate::parse(&key.local_date)?,
    })
}

pub fn money(amount: Option<&pb::Money>) -> Result<Money, InvalidField> {
    let amount = amount.ok_or_else(|| InvalidField::new("amount", "missing"))?;
    let currency = Currency::parse(&amount.currency)?;
    Money::positive(amount.minor_units, currency)
}

pub fn sale_command(request: &pb::AuthorizeRequest) -> Result<SaleCommand, InvalidField> {
    let last_completed_stan = match request.last_completed_stan.as_str() {
        "" => None,
        stan => Some(
            Stan::parse(stan).map_err(|e| InvalidField::new("last_completed_stan", e.reason))?,
        ),
    };
    Ok(SaleCommand {
        key: request_key(request.key.as_ref())?,
        merchant_id: MerchantId::parse(&request.merchant_id)?,
        pan: Pan::parse(&request.pan)?,
        expiry: CardExpiry::parse(&request.expiry)?,
        amount: money(request.amount.as_ref())?,
        last_completed_stan,
        channel: Channel::parse(&request.channel)?,
    })
}

pub(crate) fn pb_money(money: &Money) -> pb::Money {
    pb::Money {
        minor_units: money.minor_units(),
        currency: money.currency().code().to_owned(),
    }
}

pub fn record(auth: &Authorization) -> AuthorizationRecord {
    let code = terminal_response_code(auth.state, auth.response_code);
    let message = terminal_message(auth.state, code).to_owned();
    AuthorizationRecord {
        transaction_id: auth.transaction_id.to_string(),
        terminal_id: auth.key.terminal_id.to_string(),
        merchant_id: auth.merchant_id.to_string(),
        stan: auth.key.stan.to_string(),
        local_date: auth.key.local_date.to_string(),
        rrn: auth.rrn.to_string(),
        status: pb::AuthorizationStatus::from(auth.state) as i32,
        response_code: code.as_str().to_owned(),
        approval_code: auth
            .approval_code
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        masked_pan: auth.masked_pan.to_string(),
        amount: Some(pb_money(&auth.amount)),
        message,
        created_at: auth.created_at.format(&Rfc3339).unwrap_or_default(),
        acknowledged: auth.acknowledged_at.is_some(),
        reversal_reason: wire_optional::<_, pb::ReversalReason>(auth.reversal_reason),
        confirmation_evidence: wire_optional::<_, pb::Evidence>(auth.confirmation_evidence),
        conflict: auth.conflict(),
        channel: auth.channel.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AuthorizationError;

    #[test]
    fn an_unspecified_reason_or_evidence_is_refused_naming_the_field() {
        let reverse = pb::ReverseRequest::default();
        let refused = reversal_reason(&reverse).unwrap_err();
        assert_eq!(refused.field, "reason");
        let status = tonic::Status::from(AuthorizationError::from(refused));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "reason: must be specified");

        let confirm = pb::ConfirmRequest::default();
        let refused = confirmation_evidence(&confirm).unwrap_err();
        assert_eq!(refused.field, "evidence");
        let status = tonic::Status::from(AuthorizationError::from(refused));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "evidence: must be specified");
    }

    #[test]
    fn a_page_is_bounded_and_its_cursor_is_ours() {
        assert_eq!(list_limit(0), Ok(DEFAULT_LIST_LIMIT));
        assert_eq!(list_limit(1_000), Ok(1_000));
        let refused = list_limit(1_001).unwrap_err();
        assert_eq!(refused.field, "limit");
        let status = tonic::Status::from(AuthorizationError::from(refused));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "limit: must be at most 1000");

        assert_eq!(parse_dead_letter_cursor(""), Ok(None));
        let at = time::macros::datetime!(2026-12-02 10:00:00.123456 UTC);
        let id = switch_core::TransactionId::new();
        let cursor = format!("{}_{id}", at.unix_timestamp_nanos());
        assert_eq!(
            parse_dead_letter_cursor(&cursor),
            Ok(Some(DeadLetterCursor {
                dead_lettered_at: at,
                transaction_id: id
            }))
        );
        for bad in [
            "x",
            "12_not-a-uuid",
            "abc_01a23462-640c-7367-8d86-1fa0f9da8477",
        ] {
            assert_eq!(
                parse_dead_letter_cursor(bad).unwrap_err().field,
                "cursor",
                "{bad}"
            );
        }
    }

    #[test]
    fn a_specified_reason_or_evidence_enters_as_the_core_value() {
        let reverse = pb::ReverseRequest {
            reason: pb::ReversalReason::TerminalRequested.into(),
            ..Default::default()
        };
        assert_eq!(
            reversal_reason(&reverse),
            Ok(ReversalReason::TerminalRequested)
        );
        let confirm = pb::ConfirmRequest {
            evidence: pb::Evidence::Policy.into(),
            ..Default::default()
        };
        assert_eq!(confirmation_evidence(&confirm), Ok(Evidence::Policy));
        let unknown = pb::ConfirmRequest {
            evidence: 77,
            ..Default::default()
        };
        let refused = confirmation_evidence(&unknown).unwrap_err();
        assert_eq!(refused.field, "evidence");
        assert_eq!(refused.reason, "unknown value 77");
    }
}
