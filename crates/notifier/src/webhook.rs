//! What each webhook says. Pure: an envelope in, a body out, so every
//! payload is tested without a broker. Which events become webhooks is
//! `switch_core::notify::webhook_for`'s rule (its table is there), on the
//! event's vocabulary as [`notified_event`] reads it. A payment webhook
//! carries what a merchant needs to find the sale and reprint or void its
//! receipt; a reversal's reference is the original's RRN. Bodies carry
//! only masked PANs; anything else in that field is dropped.

use serde::Serialize;
use serde_json::{Value, json};
use switch_core::notify::{self, NotifiedEvent, TerminalMessageKind};
use switch_core::{Evidence, ReconciliationOutcome, ReversalReason};
use switch_platform::timestamps::to_time;
use switch_proto::domain::required;
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{self as pb, AuthorizationFacts, EventEnvelope, Money};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

pub use switch_core::notify::WebhookType;

/// A webhook to send to every endpoint of `merchant_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// The event's id: the body's `id` and the `Switch-Event-Id` header.
    pub event_id: Uuid,
    pub kind: WebhookType,
    pub merchant_id: String,
    /// When the event happened (the body's `created_at`); delivery latency
    /// is measured from it.
    pub occurred_at: OffsetDateTime,
    /// The exact JSON sent and signed; stored as text so every retry sends
    /// the same bytes.
    pub body: String,
}

/// What to do with one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Send(Webhook),
    /// Not an outcome merchants are told about.
    Ignore,
    /// An outcome that cannot be sent (no merchant, no event id, an
    /// unspecified or unknown evidence, reason or outcome); the reason is
    /// logged. Never retried: every replay would fail the same way.
    Invalid(&'static str),
}

/// The JSON envelope every webhook shares. Field order is the struct's.
#[derive(Serialize)]
struct Body<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    created_at: String,
    merchant_id: &'a str,
    data: Value,
}

/// The event's outcome in the core's vocabulary: `Ok(None)` for an event
/// that is no outcome, `Err` (the reason) for one whose evidence, reason
/// or outcome is unspecified or unknown.
pub fn notified_event(payload: &Payload) -> Result<Option<NotifiedEvent>, &'static str> {
    let event = match payload {
        Payload::AuthorizationConfirmed(confirmed) => NotifiedEvent::Confirmed {
            evidence: required::<pb::Evidence, Evidence>("evidence", confirmed.evidence)
                .map_err(|_| "event names no known evidence")?,
        },
        Payload::AuthorizationReversed(reversed) => NotifiedEvent::Reversed {
            reason: required::<pb::ReversalReason, ReversalReason>("reason", reversed.reason)
                .map_err(|_| "event names no known reversal reason")?,
        },
        Payload::AcknowledgementConflict(conflict) => NotifiedEvent::AcknowledgementConflict {
            reversal_reason: required::<pb::ReversalReason, ReversalReason>(
                "reversal_reason",
                conflict.reversal_reason,
            )
            .map_err(|_| "event names no known reversal reason")?,
        },
        Payload::BatchConflict(conflict) => NotifiedEvent::BatchConflict {
            outcome: required::<pb::ReconciliationOutcome, ReconciliationOutcome>(
                "outcome",
                conflict.outcome,
            )
            .map_err(|_| "event names no known reconciliation outcome")?,
        },
        Payload::MerchantPaid(_) => NotifiedEvent::MerchantPaid,
        _ => return Ok(None),
    };
    Ok(Some(event))
}

/// Decides whether `event` becomes a webhook (`notify::webhook_for`) and
/// renders it. `now` stands in for an event without `occurred_at`.
pub fn plan(event: &EventEnvelope, now: OffsetDateTime) -> Plan {
    let Some(payload) = &event.payload else {
        return Plan::Ignore;
    };
    if let Payload::QrPayment(qr) = payload {
        return qr_plan(event, qr, now);
    }
    let outcome = match notified_event(payload) {
        Ok(Some(outcome)) => outcome,
        Ok(None) => return Plan::Ignore,
        Err(reason) => return Plan::Invalid(reason),
    };
    let Some(kind) = notify::webhook_for(outcome) else {
        return Plan::Ignore;
    };
    let occurred_at = event.occurred_at.as_ref().and_then(to_time).unwrap_or(now);
    let (merchant_id, data) = match (payload, outcome) {
        (Payload::AuthorizationConfirmed(confirmed), NotifiedEvent::Confirmed { evidence }) => {
            let facts = confirmed.facts.clone().unwrap_or_default();
            let mut data = transaction(&event.transaction_id, &facts);
            data["approval_code"] = json!(confirmed.approval_code);
            data["evidence"] = json!(evidence.as_str());
            (facts.merchant_id, data)
        }
        (Payload::AuthorizationReversed(reversed), NotifiedEvent::Reversed { reason }) => {
            let facts = reversed.facts.clone().unwrap_or_default();
            let mut data = transaction(&event.transaction_id, &facts);
            data["reason"] = json!(reason.as_str());
            // The switch's reference of the reversal is the original's RRN:
            // ISO 8583 reversals carry the original's retrieval reference.
            data["reversal_reference"] = json!(facts.rrn);
            data["attempts"] = json!(reversed.attempts);
            // The issuer acknowledged the reversal when the event happened:
            // from then on the hold on the shopper's funds is released.
            data["funds_released_at"] = json!(rfc3339(occurred_at));
            (facts.merchant_id, data)
        }
        (
            Payload::AcknowledgementConflict(conflict),
            NotifiedEvent::AcknowledgementConflict { reversal_reason },
        ) => {
            let facts = conflict.facts.clone().unwrap_or_default();
            let mut data = transaction(&event.transaction_id, &facts);
            data["source"] = json!(Evidence::TerminalAcknowledgement.as_str());
            data["outcome"] = json!("acknowledged_after_reversal");
            data["reversal_reason"] = json!(reversal_reason.as_str());
            data["receipt_void"] = json!(true);
            (facts.merchant_id, data)
        }
        (Payload::BatchConflict(conflict), NotifiedEvent::BatchConflict { outcome }) => {
            let facts = conflict.facts.clone().unwrap_or_default();
            let mut data = transaction(&event.transaction_id, &facts);
            data["source"] = json!(Evidence::BatchUpload.as_str());
            data["batch_number"] = json!(conflict.batch_number);
            data["outcome"] = json!(outcome.as_str());
            data["detail"] = json!(conflict.detail);
            data["receipt_void"] = json!(
                notify::terminal_message_for(NotifiedEvent::BatchConflict { outcome })
                    == Some(TerminalMessageKind::VoidReceipt)
            );
            (facts.merchant_id, data)
        }
        (Payload::MerchantPaid(paid), NotifiedEvent::MerchantPaid) => {
            let payout = paid.payout.clone().unwrap_or_default();
            let paid_at = paid
                .paid_at
                .as_ref()
                .and_then(to_time)
                .unwrap_or(occurred_at);
            let data = json!({
                "window_id": paid.window_id,
                "currency": payout.currency,
                "transaction_count": payout.transaction_count,
                "gross_minor_units": payout.gross_minor_units,
                "fee_minor_units": payout.fee_minor_units,
                "net_minor_units": payout.net_minor_units,
                "payout_reference": payout.payout_reference,
                "payout_file": paid.payout_file,
                "paid_at": rfc3339(paid_at),
            });
            (paid.merchant_id.clone(), data)
        }
        // `notified_event` reads each payload as its own outcome.
        _ => return Plan::Ignore,
    };
    let Ok(event_id) = Uuid::parse_str(&event.event_id) else {
        return Plan::Invalid("event id is not a UUID");
    };
    if merchant_id.trim().is_empty() {
        return Plan::Invalid("event names no merchant");
    }
    let body = Body {
        id: event_id.to_string(),
        kind: kind.as_str(),
        created_at: rfc3339(occurred_at),
        merchant_id: &merchant_id,
        data,
    };
    let body = serde_json::to_string(&body).expect("a JSON value always serialises");
    Plan::Send(Webhook {
        event_id,
        kind,
        merchant_id,
        occurred_at,
        body,
    })
}

/// The transaction facts every payment webhook carries: what a merchant
/// needs to find the sale and reprint or void its receipt.
/// A QR payment's event (ADR 29): which webhook it owes is the core's rule
/// (`switch_core::qr::notice_for`), carried in the event; rendered here
/// with what a merchant needs to find the payment: order id, terminal,
/// STAN and the platform's transaction.
fn qr_plan(event: &EventEnvelope, qr: &pb::QrPaymentEvent, now: OffsetDateTime) -> Plan {
    if qr.webhook.is_empty() {
        return Plan::Ignore;
    }
    let Some(kind) = WebhookType::ALL
        .into_iter()
        .find(|kind| kind.as_str() == qr.webhook)
    else {
        return Plan::Invalid("QR event names no known webhook type");
    };
    let Some(payment) = &qr.payment else {
        return Plan::Invalid("QR event carries no payment");
    };
    let Ok(event_id) = Uuid::parse_str(&event.event_id) else {
        return Plan::Invalid("event id is not a UUID");
    };
    if payment.merchant_id.trim().is_empty() {
        return Plan::Invalid("event names no merchant");
    }
    let occurred_at = event.occurred_at.as_ref().and_then(to_time).unwrap_or(now);
    let mut data = json!({
        "transaction_id": event.transaction_id,
        "terminal_id": payment.terminal_id,
        "stan": payment.stan,
        "local_date": payment.local_date,
        "order_id": payment.order_id,
        "platform_txn_id": payment.platform_txn_id,
        "amount": amount(payment.amount.as_ref()),
        "channel": "qr",
        "state": payment.state,
        "reason": qr.reason,
        "receipt_void": qr.push == TerminalMessageKind::VoidReceipt.as_str(),
    });
    // A merchant refund (ADR 30): which one, how much, and what the
    // payment's refunds add up to, so the merchant can reconcile parts.
    if let Some(refund) = &qr.refund {
        data["refund"] = json!({
            "refund_id": refund.refund_id,
            "amount": amount(refund.amount.as_ref()),
            "refunded_total": amount(refund.refunded_total.as_ref()),
            "completed_at": refund.completed_at,
        });
    }
    let body = Body {
        id: event_id.to_string(),
        kind: kind.as_str(),
        created_at: rfc3339(occurred_at),
        merchant_id: &payment.merchant_id,
        data,
    };
    Plan::Send(Webhook {
        event_id,
        kind,
        merchant_id: payment.merchant_id.clone(),
        occurred_at,
        body: serde_json::to_string(&body).expect("a JSON value always serialises"),
    })
}

fn transaction(transaction_id: &str, facts: &AuthorizationFacts) -> Value {
    json!({
        "transaction_id": transaction_id,
        "terminal_id": facts.terminal_id,
        "stan": facts.stan,
        "local_date": facts.local_date,
        "rrn": facts.rrn,
        "masked_pan": masked_pan(&facts.masked_pan),
        "amount": amount(facts.amount.as_ref()),
        "channel": facts.channel,
    })
}

/// The masked PAN if it is one (first 6 and last 4 digits, `*` between);
/// anything else, a full PAN above all, is never passed on.
fn masked_pan(value: &str) -> Value {
    match switch_core::MaskedPan::parse(value) {
        Ok(masked) => json!(masked.as_str()),
        Err(_) => Value::Null,
    }
}

fn amount(money: Option<&Money>) -> Value {
    match money {
        Some(money) => json!({ "minor_units": money.minor_units, "currency": money.currency }),
        None => Value::Null,
    }
}

pub(crate) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .expect("an OffsetDateTime in range always formats")
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch_proto::v1::{
        AcknowledgementConflict, AuthorizationApproved, AuthorizationConfirmed,
        AuthorizationReversed, BatchConflict, MerchantPaid, MerchantPayout,
    };

    const NOW: i64 = 1_764_000_000;

    fn facts() -> AuthorizationFacts {
        AuthorizationFacts {
            terminal_id: "TERM0001".into(),
            merchant_id: "MERCHANT0000001".into(),
            stan: "000042".into(),
            local_date: "2026-11-24".into(),
            rrn: "633000000042".into(),
            masked_pan: "411111******1111".into(),
            amount: Some(Money {
                minor_units: 1050,
                currency: "EUR".into(),
            }),
            channel: "card".into(),
        }
    }

    fn envelope(payload: Payload) -> EventEnvelope {
        EventEnvelope {
            event_id: "0193a5d4-7e1f-7c3a-9d5e-000000000001".into(),
            event_type: "x".into(),
            transaction_id: "0193a5d4-7e1f-7c3a-9d5e-0000000000aa".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: NOW,
                nanos: 0,
            }),
            payload: Some(payload),
            ..EventEnvelope::default()
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(NOW + 60).unwrap()
    }

    fn sent(event: &EventEnvelope) -> (Webhook, Value) {
        match plan(event, now()) {
            Plan::Send(webhook) => {
                let body = serde_json::from_str(&webhook.body).unwrap();
                (webhook, body)
            }
            other => panic!("expected a webhook, got {other:?}"),
        }
    }

    #[test]
    fn an_orphan_confirmed_carries_what_a_reprint_needs() {
        let event = envelope(Payload::AuthorizationConfirmed(AuthorizationConfirmed {
            facts: Some(facts()),
            evidence: switch_proto::v1::Evidence::Policy.into(),
            approval_code: "A1B2C3".into(),
        }));
        let (webhook, body) = sent(&event);
        assert_eq!(webhook.kind, WebhookType::PaymentConfirmed);
        assert_eq!(webhook.merchant_id, "MERCHANT0000001");
        assert_eq!(
            body,
            json!({
                "id": "0193a5d4-7e1f-7c3a-9d5e-000000000001",
                "type": "payment.confirmed",
                "created_at": "2025-11-24T16:00:00Z",
                "merchant_id": "MERCHANT0000001",
                "data": {
                    "transaction_id": "0193a5d4-7e1f-7c3a-9d5e-0000000000aa",
                    "terminal_id": "TERM0001",
                    "stan": "000042",
                    "local_date": "2026-11-24",
                    "rrn": "633000000042",
                    "masked_pan": "411111******1111",
                    "amount": {"minor_units": 1050, "currency": "EUR"},
                    "channel": "card",
                    "approval_code": "A1B2C3",
                    "evidence": "policy",
                }
            })
        );
        // The envelope's fields come first, in a fixed order.
        assert!(webhook.body.starts_with(r#"{"id":"#), "{}", webhook.body);
    }

    #[test]
    fn a_terminal_acknowledgement_sends_nothing() {
        let event = envelope(Payload::AuthorizationConfirmed(AuthorizationConfirmed {
            facts: Some(facts()),
            evidence: switch_proto::v1::Evidence::TerminalAcknowledgement.into(),
            approval_code: "A1B2C3".into(),
        }));
        assert_eq!(plan(&event, now()), Plan::Ignore);
        let approved = envelope(Payload::AuthorizationApproved(AuthorizationApproved {
            facts: Some(facts()),
            approval_code: "A1B2C3".into(),
        }));
        assert_eq!(plan(&approved, now()), Plan::Ignore);
    }

    #[test]
    fn a_reversal_says_when_funds_are_released() {
        let event = envelope(Payload::AuthorizationReversed(AuthorizationReversed {
            facts: Some(facts()),
            reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into(),
            attempts: 2,
        }));
        let (webhook, body) = sent(&event);
        assert_eq!(webhook.kind, WebhookType::PaymentReversed);
        assert_eq!(body["type"], "payment.reversed");
        assert_eq!(body["data"]["reason"], "no_terminal_acknowledgement");
        assert_eq!(body["data"]["reversal_reference"], "633000000042");
        assert_eq!(body["data"]["attempts"], 2);
        assert_eq!(body["data"]["funds_released_at"], "2025-11-24T16:00:00Z");
        assert_eq!(body["data"]["masked_pan"], "411111******1111");
    }

    #[test]
    fn conflicts_from_an_acknowledgement_or_a_batch() {
        let ack = envelope(Payload::AcknowledgementConflict(AcknowledgementConflict {
            facts: Some(facts()),
            reversal_reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into(),
        }));
        let (webhook, body) = sent(&ack);
        assert_eq!(webhook.kind, WebhookType::PaymentConflict);
        assert_eq!(
            body["data"]["reversal_reason"],
            "no_terminal_acknowledgement"
        );
        assert_eq!(body["data"]["source"], "terminal_acknowledgement");
        assert_eq!(body["data"]["receipt_void"], true);

        let batch = envelope(Payload::BatchConflict(BatchConflict {
            facts: Some(facts()),
            batch_number: "000007".into(),
            outcome: switch_proto::v1::ReconciliationOutcome::Mismatch.into(),
            detail: "amount 1050 at host, 1500 on terminal".into(),
        }));
        let (_, body) = sent(&batch);
        assert_eq!(body["type"], "payment.conflict");
        assert_eq!(body["data"]["source"], "batch_upload");
        assert_eq!(body["data"]["outcome"], "mismatch");
        assert_eq!(
            body["data"]["detail"],
            "amount 1050 at host, 1500 on terminal"
        );
        assert_eq!(body["data"]["batch_number"], "000007");
        assert_eq!(body["data"]["receipt_void"], false);
    }

    #[test]
    fn a_payout_names_its_window_amounts_and_file() {
        let event = envelope(Payload::MerchantPaid(MerchantPaid {
            merchant_id: "MERCHANT0000002".into(),
            window_id: "W-1".into(),
            payout: Some(MerchantPayout {
                currency: "EUR".into(),
                transaction_count: 3,
                gross_minor_units: 3000,
                fee_minor_units: 18,
                net_minor_units: 2982,
                payout_reference: "PAY-1".into(),
                ..Default::default()
            }),
            paid_at: None,
            payout_file: "pain001-1.xml".into(),
        }));
        let (webhook, body) = sent(&event);
        assert_eq!(webhook.kind, WebhookType::SettlementPaid);
        assert_eq!(webhook.merchant_id, "MERCHANT0000002");
        assert_eq!(
            body["data"],
            json!({
                "window_id": "W-1",
                "currency": "EUR",
                "transaction_count": 3,
                "gross_minor_units": 3000,
                "fee_minor_units": 18,
                "net_minor_units": 2982,
                "payout_reference": "PAY-1",
                "payout_file": "pain001-1.xml",
                "paid_at": "2025-11-24T16:00:00Z",
            })
        );
    }

    #[test]
    fn a_full_pan_never_leaves() {
        let mut leaky = facts();
        leaky.masked_pan = "4111111111111111".into();
        let event = envelope(Payload::AuthorizationReversed(AuthorizationReversed {
            facts: Some(leaky),
            reason: switch_proto::v1::ReversalReason::IssuerTimeout.into(),
            attempts: 1,
        }));
        let (webhook, body) = sent(&event);
        assert!(!webhook.body.contains("4111111111111111"));
        assert_eq!(body["data"]["masked_pan"], Value::Null);
    }

    #[test]
    fn outcomes_without_merchant_or_event_id_are_invalid() {
        let mut no_merchant = facts();
        no_merchant.merchant_id.clear();
        let event = envelope(Payload::AuthorizationReversed(AuthorizationReversed {
            facts: Some(no_merchant),
            ..AuthorizationReversed::default()
        }));
        assert!(matches!(plan(&event, now()), Plan::Invalid(_)));
        let mut bad_id = envelope(Payload::AuthorizationReversed(AuthorizationReversed {
            facts: Some(facts()),
            ..AuthorizationReversed::default()
        }));
        bad_id.event_id = "not-a-uuid".into();
        assert!(matches!(plan(&bad_id, now()), Plan::Invalid(_)));
    }

    #[test]
    fn an_unspecified_vocabulary_value_is_invalid() {
        for payload in [
            Payload::AuthorizationConfirmed(AuthorizationConfirmed {
                facts: Some(facts()),
                ..AuthorizationConfirmed::default()
            }),
            Payload::AuthorizationReversed(AuthorizationReversed {
                facts: Some(facts()),
                ..AuthorizationReversed::default()
            }),
        ] {
            let event = envelope(payload);
            assert!(matches!(plan(&event, now()), Plan::Invalid(_)), "{event:?}");
        }
    }

    #[test]
    fn a_missing_occurred_at_uses_now() {
        let mut event = envelope(Payload::AuthorizationReversed(AuthorizationReversed {
            facts: Some(facts()),
            reason: pb::ReversalReason::IssuerTimeout.into(),
            ..AuthorizationReversed::default()
        }));
        event.occurred_at = None;
        let (webhook, _) = sent(&event);
        assert_eq!(webhook.occurred_at, now());
    }

    #[test]
    fn a_qr_event_owes_the_webhook_the_core_named() {
        let qr = |webhook: &str| EventEnvelope {
            event_id: "0193a5d4-7e1f-7c3a-9d5e-000000000001".into(),
            transaction_id: "0193a5d4-7e1f-7c3a-9d5e-0000000000aa".into(),
            payload: Some(Payload::QrPayment(pb::QrPaymentEvent {
                payment: Some(pb::QrPaymentRecord {
                    terminal_id: "TERM0001".into(),
                    merchant_id: "MERCHANT0000001".into(),
                    order_id: "Q0123456789abcdef01234567".into(),
                    platform_txn_id: "4200001".into(),
                    state: "confirmed".into(),
                    ..Default::default()
                }),
                reason: "policy".into(),
                webhook: webhook.into(),
                push: "reprint_receipt".into(),
                attempts: 0,
                refund: None,
            })),
            ..EventEnvelope::default()
        };
        let now = OffsetDateTime::from_unix_timestamp(1_764_000_000).expect("time");
        let Plan::Send(webhook) = plan(&qr("payment.confirmed"), now) else {
            panic!("a confirmed QR payment is sent");
        };
        assert_eq!(webhook.kind, WebhookType::PaymentConfirmed);
        assert_eq!(webhook.merchant_id, "MERCHANT0000001");
        let body: Value = serde_json::from_str(&webhook.body).expect("json");
        assert_eq!(body["data"]["order_id"], "Q0123456789abcdef01234567");
        assert_eq!(body["data"]["channel"], "qr");
        assert_eq!(body["data"]["receipt_void"], false);
        assert_eq!(plan(&qr(""), now), Plan::Ignore);
        assert!(matches!(plan(&qr("payment.maybe"), now), Plan::Invalid(_)));
    }

    #[test]
    fn a_completed_qr_refund_owes_payment_refunded_with_the_refund_and_no_void() {
        let event = EventEnvelope {
            event_id: "0193a5d4-7e1f-7c3a-9d5e-000000000002".into(),
            event_type: "qr.refund_completed".into(),
            transaction_id: "0193a5d4-7e1f-7c3a-9d5e-0000000000aa".into(),
            payload: Some(Payload::QrPayment(pb::QrPaymentEvent {
                payment: Some(pb::QrPaymentRecord {
                    terminal_id: "TERM0001".into(),
                    merchant_id: "MERCHANT0000001".into(),
                    order_id: "Q0123456789abcdef01234567".into(),
                    state: "confirmed".into(),
                    ..Default::default()
                }),
                webhook: "payment.refunded".into(),
                refund: Some(pb::QrRefundRecord {
                    refund_id: "RET-1".into(),
                    amount: Some(pb::Money {
                        minor_units: 300,
                        currency: "EUR".into(),
                    }),
                    refunded_total: Some(pb::Money {
                        minor_units: 700,
                        currency: "EUR".into(),
                    }),
                    state: "refunded".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..EventEnvelope::default()
        };
        let now = OffsetDateTime::from_unix_timestamp(1_764_000_000).expect("time");
        let Plan::Send(webhook) = plan(&event, now) else {
            panic!("a completed refund is sent");
        };
        assert_eq!(webhook.kind, WebhookType::PaymentRefunded);
        let body: Value = serde_json::from_str(&webhook.body).expect("json");
        assert_eq!(body["type"], "payment.refunded");
        assert_eq!(body["data"]["refund"]["refund_id"], "RET-1");
        assert_eq!(body["data"]["refund"]["amount"]["minor_units"], 300);
        assert_eq!(body["data"]["refund"]["refunded_total"]["minor_units"], 700);
        assert_eq!(body["data"]["receipt_void"], false);
    }
}
