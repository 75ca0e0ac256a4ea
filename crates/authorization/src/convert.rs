//! Wire types in, domain types out (rejecting bad input with the field's
//! name), and journal rows back out as records and events.

use prost_types::Timestamp;
use switch_core::{
    AuthorizationState, CardExpiry, Channel, Currency, InvalidField, LocalDate, MerchantId, Money,
    Pan, Stan, TerminalId, terminal_response_code,
};
use switch_platform::telemetry::current_trace_context;
use switch_proto::v1::{
    self as pb, AuthorizationFacts, AuthorizationRecord, EventEnvelope, event_envelope::Payload,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::journal::{EventKind, RequestKey, SaleCommand, StoredAuthorization};

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

fn pb_money(money: &Money) -> pb::Money {
    pb::Money {
        minor_units: money.minor_units(),
        currency: money.currency().code().to_owned(),
    }
}

fn status(state: AuthorizationState) -> pb::AuthorizationStatus {
    match state {
        AuthorizationState::Received => pb::AuthorizationStatus::Received,
        AuthorizationState::SentToIssuer => pb::AuthorizationStatus::SentToIssuer,
        AuthorizationState::Approved => pb::AuthorizationStatus::Approved,
        AuthorizationState::Declined => pb::AuthorizationStatus::Declined,
        AuthorizationState::IssuerTimedOut => pb::AuthorizationStatus::IssuerTimedOut,
        AuthorizationState::ReversalPending => pb::AuthorizationStatus::ReversalPending,
        AuthorizationState::Reversed => pb::AuthorizationStatus::Reversed,
        AuthorizationState::Confirmed => pb::AuthorizationStatus::Confirmed,
        AuthorizationState::ReversalDeadLettered => pb::AuthorizationStatus::ReversalDeadLettered,
    }
}

pub fn record(auth: &StoredAuthorization) -> AuthorizationRecord {
    let code = terminal_response_code(auth.state, auth.response_code);
    let message = match auth.state {
        AuthorizationState::IssuerTimedOut => {
            "Issuer did not answer in time; the payment is not approved".to_owned()
        }
        AuthorizationState::Received | AuthorizationState::SentToIssuer => {
            "Awaiting the issuer's answer".to_owned()
        }
        AuthorizationState::ReversalPending | AuthorizationState::ReversalDeadLettered => {
            "Void: the payment is being reversed; do not hand over goods".to_owned()
        }
        AuthorizationState::Reversed => {
            "Void: the payment was reversed and the shopper's funds released".to_owned()
        }
        AuthorizationState::Confirmed => "Approved and confirmed".to_owned(),
        _ => code.description().to_owned(),
    };
    AuthorizationRecord {
        transaction_id: auth.transaction_id.to_string(),
        terminal_id: auth.key.terminal_id.to_string(),
        merchant_id: auth.merchant_id.to_string(),
        stan: auth.key.stan.to_string(),
        local_date: auth.key.local_date.to_string(),
        rrn: auth.rrn.to_string(),
        status: status(auth.state) as i32,
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
        reversal_reason: auth
            .reversal_reason
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        confirmation_evidence: auth
            .confirmation_evidence
            .map(|e| e.as_str().to_owned())
            .unwrap_or_default(),
        conflict: auth.conflict,
        channel: auth.channel.as_str().to_owned(),
    }
}

fn facts(auth: &StoredAuthorization) -> AuthorizationFacts {
    AuthorizationFacts {
        terminal_id: auth.key.terminal_id.to_string(),
        merchant_id: auth.merchant_id.to_string(),
        stan: auth.key.stan.to_string(),
        local_date: auth.key.local_date.to_string(),
        rrn: auth.rrn.to_string(),
        masked_pan: auth.masked_pan.to_string(),
        amount: Some(pb_money(&auth.amount)),
        channel: auth.channel.as_str().to_owned(),
    }
}

fn envelope(auth: &StoredAuthorization, event_type: &str, payload: Payload) -> EventEnvelope {
    envelope_for(auth.transaction_id.to_string(), event_type, payload)
}

fn envelope_for(transaction_id: String, event_type: &str, payload: Payload) -> EventEnvelope {
    let now = OffsetDateTime::now_utc();
    let (traceparent, tracestate) = current_trace_context();
    EventEnvelope {
        event_id: Uuid::new_v4().to_string(),
        event_type: event_type.to_owned(),
        transaction_id,
        occurred_at: Some(Timestamp {
            seconds: now.unix_timestamp(),
            nanos: i32::try_from(now.nanosecond()).unwrap_or(0),
        }),
        traceparent,
        tracestate,
        payload: Some(payload),
    }
}

/// The event announcing a decision; `None` for states that are not one.
pub fn decision_event(auth: &StoredAuthorization, issuer_timeout_ms: u32) -> Option<EventEnvelope> {
    let facts = Some(facts(auth));
    let (event_type, payload) = match auth.state {
        AuthorizationState::Approved => (
            "authorization.approved",
            Payload::AuthorizationApproved(pb::AuthorizationApproved {
                facts,
                approval_code: auth
                    .approval_code
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            }),
        ),
        AuthorizationState::Declined => (
            "authorization.declined",
            Payload::AuthorizationDeclined(pb::AuthorizationDeclined {
                facts,
                response_code: terminal_response_code(auth.state, auth.response_code)
                    .as_str()
                    .to_owned(),
            }),
        ),
        AuthorizationState::IssuerTimedOut => (
            "authorization.issuer_timed_out",
            Payload::AuthorizationIssuerTimedOut(pb::AuthorizationIssuerTimedOut {
                facts,
                timeout_ms: issuer_timeout_ms,
            }),
        ),
        _ => return None,
    };
    Some(envelope(auth, event_type, payload))
}

/// The event announcing a lifecycle change after the issuer's decision.
pub fn lifecycle_event(auth: &StoredAuthorization, kind: EventKind) -> EventEnvelope {
    let facts = Some(facts(auth));
    let reason = auth
        .reversal_reason
        .map(|r| r.as_str().to_owned())
        .unwrap_or_default();
    let (event_type, payload) = match kind {
        EventKind::Confirmed => (
            "authorization.confirmed",
            Payload::AuthorizationConfirmed(pb::AuthorizationConfirmed {
                facts,
                evidence: auth
                    .confirmation_evidence
                    .map(|e| e.as_str().to_owned())
                    .unwrap_or_default(),
                approval_code: auth
                    .approval_code
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            }),
        ),
        EventKind::Acknowledged => (
            "terminal.acknowledged",
            Payload::TerminalAcknowledged(pb::TerminalAcknowledged { facts }),
        ),
        EventKind::Conflict => (
            "authorization.acknowledgement_conflict",
            Payload::AcknowledgementConflict(pb::AcknowledgementConflict {
                facts,
                reversal_reason: reason,
            }),
        ),
        EventKind::ReversalRequested => (
            "authorization.reversal_requested",
            Payload::ReversalRequested(pb::ReversalRequested { facts, reason }),
        ),
        EventKind::Reversed => (
            "authorization.reversed",
            Payload::AuthorizationReversed(pb::AuthorizationReversed {
                facts,
                reason,
                attempts: 0,
            }),
        ),
        EventKind::DeadLettered => (
            "authorization.reversal_dead_lettered",
            Payload::ReversalDeadLettered(pb::ReversalDeadLettered {
                facts,
                reason,
                attempts: 0,
            }),
        ),
    };
    envelope(auth, event_type, payload)
}

/// Records how many attempts a reversal took, on the events that carry it.
pub fn set_attempts(envelope: &mut EventEnvelope, attempts: u32) {
    match &mut envelope.payload {
        Some(Payload::AuthorizationReversed(reversed)) => reversed.attempts = attempts,
        Some(Payload::ReversalDeadLettered(dead)) => dead.attempts = attempts,
        _ => {}
    }
}

pub fn unmatched_reversal_event(key: &RequestKey) -> EventEnvelope {
    envelope_for(
        String::new(),
        "terminal.unmatched_reversal",
        Payload::UnmatchedTerminalReversal(pb::UnmatchedTerminalReversal {
            terminal_id: key.terminal_id.to_string(),
            stan: key.stan.to_string(),
            local_date: key.local_date.to_string(),
        }),
    )
}

pub fn late_response_event(
    auth: &StoredAuthorization,
    response_code: &str,
    approval_code: &str,
    latency_ms: i32,
) -> EventEnvelope {
    envelope(
        auth,
        "authorization.late_issuer_response",
        Payload::LateIssuerResponse(pb::LateIssuerResponse {
            facts: Some(facts(auth)),
            response_code: response_code.to_owned(),
            approval_code: approval_code.to_owned(),
            latency_ms: u32::try_from(latency_ms).unwrap_or(0),
        }),
    )
}
