//! The `qr.*` events on the authorization events topic: each announcement
//! of a decision as an `EventEnvelope` with a `QrPaymentEvent`, keyed by
//! transaction id, carrying what the notifier owes for it
//! (`switch_core::qr::notice_for`). Which events a decision makes is the
//! core's business; this module only says how each looks on the wire.

use switch_core::qr::{QrDecision, QrEvent, notice_for};
use switch_platform::outbox::OutboxMessage;
use switch_platform::telemetry::current_trace_context;
use switch_platform::timestamps::from_time;
use switch_proto::v1::{EventEnvelope, QrPaymentEvent, event_envelope::Payload};
use time::OffsetDateTime;
use uuid::Uuid;

use super::wire::record;

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
            let (traceparent, tracestate) = current_trace_context();
            let event_id = Uuid::new_v4();
            let envelope = EventEnvelope {
                event_id: event_id.to_string(),
                event_type: event.name().to_owned(),
                transaction_id: decision.next.transaction_id.to_string(),
                occurred_at: Some(from_time(now)),
                traceparent: traceparent.clone(),
                tracestate,
                payload: Some(payload),
            };
            OutboxMessage {
                event_id,
                topic: topic.to_owned(),
                key: decision.next.transaction_id.to_string(),
                payload: prost::Message::encode_to_vec(&envelope),
                traceparent,
            }
        })
        .collect()
}
