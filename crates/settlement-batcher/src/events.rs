//! Envelope helpers shared by the consumer and the producers.

use switch_platform::outbox::OutboxMessage;
use switch_platform::telemetry::current_trace_context;
use switch_proto::v1::{EventEnvelope, event_envelope::Payload};
use time::OffsetDateTime;
use uuid::Uuid;

use switch_platform::timestamps::from_time;

/// An outbox row carrying `payload` on `topic`, keyed by `key` (a
/// transaction id for reconciliation outcomes, a merchant id for windows),
/// in the current trace, occurring at `now` (the caller's clock).
pub fn outbox_message(
    topic: &str,
    key: &str,
    transaction_id: &str,
    event_type: &str,
    payload: Payload,
    now: OffsetDateTime,
) -> OutboxMessage {
    let (traceparent, tracestate) = current_trace_context();
    let event_id = Uuid::new_v4();
    let envelope = EventEnvelope {
        event_id: event_id.to_string(),
        event_type: event_type.to_owned(),
        transaction_id: transaction_id.to_owned(),
        occurred_at: Some(from_time(now)),
        traceparent: traceparent.clone(),
        tracestate,
        payload: Some(payload),
    };
    OutboxMessage {
        event_id,
        topic: topic.to_owned(),
        key: key.to_owned(),
        payload: prost::Message::encode_to_vec(&envelope),
        traceparent,
    }
}
