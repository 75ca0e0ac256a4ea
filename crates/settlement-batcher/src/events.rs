//! Time and envelope helpers shared by the consumer and the producers.

use prost_types::Timestamp;
use switch_platform::outbox::OutboxMessage;
use switch_platform::telemetry::current_trace_context;
use switch_proto::v1::{EventEnvelope, event_envelope::Payload};
use time::OffsetDateTime;
use uuid::Uuid;

/// An envelope's timestamp as a time, if it is a plausible one.
pub fn from_timestamp(ts: &Timestamp) -> Option<OffsetDateTime> {
    if ts.seconds <= 0 || !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

pub fn to_timestamp(at: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

/// An outbox row carrying `payload` on `topic`, keyed by `key` (a
/// transaction id for reconciliation outcomes, a merchant id for windows),
/// in the current trace.
pub fn outbox_message(
    topic: &str,
    key: &str,
    transaction_id: &str,
    event_type: &str,
    payload: Payload,
) -> OutboxMessage {
    let (traceparent, tracestate) = current_trace_context();
    let event_id = Uuid::new_v4();
    let envelope = EventEnvelope {
        event_id: event_id.to_string(),
        event_type: event_type.to_owned(),
        transaction_id: transaction_id.to_owned(),
        occurred_at: Some(to_timestamp(OffsetDateTime::now_utc())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        assert_eq!(from_timestamp(&to_timestamp(at)), Some(at));
        assert_eq!(from_timestamp(&Timestamp::default()), None);
    }
}
