//! The `qr.*` events on the authorization events topic: each announcement
//! of a decision as an `EventEnvelope` with a `QrPaymentEvent`, keyed by
//! transaction id, carrying what the notifier owes for it
//! (`switch_core::qr::notice_for`). Which events a decision makes is the
//! core's business; this module only says how each looks on the wire.

use switch_core::Money;
use switch_core::qr::refund::{QrRefund, RefundEvent, refund_notice_for};
use switch_core::qr::{QrDecision, QrEvent, QrPayment, notice_for};
use switch_platform::outbox::OutboxMessage;
use switch_platform::telemetry::current_trace_context;
use switch_platform::timestamps::from_time;
use switch_proto::v1::{EventEnvelope, QrPaymentEvent, event_envelope::Payload};
use time::OffsetDateTime;
use uuid::Uuid;

use super::wire::{record, refund_record};

/// Every announcement of `decision`, encoded for `topic`, in order.
pub fn messages(topic: &str, decision: &QrDecision, now: OffsetDateTime) -> Vec<OutboxMessage> {
    decision
        .announcements()
        .map(|event| {
            let notice = notice_for(event);
            let (reason, attempts) = match event {
                QrEvent::Refunded { reason } => {
                    (reason.map(|r| r.as_str().to_owned()).unwrap_or_default(), 0)
                }
                QrEvent::CancelRequested { kind } => (kind.as_str().to_owned(), 0),
                QrEvent::CancelDeadLettered { kind, attempts } => {
                    (kind.as_str().to_owned(), *attempts)
                }
                QrEvent::Confirmed { evidence } => (evidence.as_str().to_owned(), 0),
                QrEvent::Paid
                | QrEvent::Failed
                | QrEvent::Closed
                | QrEvent::AcknowledgementConflict => (String::new(), 0),
            };
            let payload = Payload::QrPayment(QrPaymentEvent {
                payment: Some(record(&decision.next)),
                reason,
                webhook: notice
                    .map(|n| n.webhook.as_str().to_owned())
                    .unwrap_or_default(),
                push: notice
                    .and_then(|n| n.push)
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default(),
                attempts,
                refund: None,
            });
            message(topic, &decision.next, event.name(), payload, now)
        })
        .collect()
}

/// Every announcement of a merchant refund's decision: the payment as it
/// stands (still confirmed) and the refund as it now stands, `total`
/// being what the payment's written refunds add up to.
pub fn refund_messages(
    topic: &str,
    payment: &QrPayment,
    refund: &QrRefund,
    total: Money,
    events: &[RefundEvent],
    now: OffsetDateTime,
) -> Vec<OutboxMessage> {
    events
        .iter()
        .map(|event| {
            let notice = refund_notice_for(event);
            let attempts = match event {
                RefundEvent::DeadLettered { attempts } => *attempts,
                RefundEvent::Requested | RefundEvent::Completed => 0,
            };
            let payload = Payload::QrPayment(QrPaymentEvent {
                payment: Some(record(payment)),
                reason: String::new(),
                webhook: notice
                    .map(|n| n.webhook.as_str().to_owned())
                    .unwrap_or_default(),
                push: notice
                    .and_then(|n| n.push)
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default(),
                attempts,
                refund: Some(refund_record(payment, refund, total)),
            });
            message(topic, payment, event.name(), payload, now)
        })
        .collect()
}

/// Keyed by the payment's transaction id: its refunds' events stay in
/// order with its own on one partition.
fn message(
    topic: &str,
    payment: &QrPayment,
    event_type: &str,
    payload: Payload,
    now: OffsetDateTime,
) -> OutboxMessage {
    let (traceparent, tracestate) = current_trace_context();
    let event_id = Uuid::new_v4();
    let envelope = EventEnvelope {
        event_id: event_id.to_string(),
        event_type: event_type.to_owned(),
        transaction_id: payment.transaction_id.to_string(),
        occurred_at: Some(from_time(now)),
        traceparent: traceparent.clone(),
        tracestate,
        payload: Some(payload),
    };
    OutboxMessage {
        event_id,
        topic: topic.to_owned(),
        key: payment.transaction_id.to_string(),
        payload: prost::Message::encode_to_vec(&envelope),
        traceparent,
    }
}
