//! The Kafka edge: a decision's announcements as `EventEnvelope`s, encoded
//! into outbox messages keyed by transaction id. Which announcements a
//! decision makes is `switch_core::lifecycle`'s business; this module only
//! says how each one looks on the wire.

use switch_core::lifecycle::{Announcement, Decision};
use switch_core::terminal_response_code;
use switch_platform::outbox::OutboxMessage;
use switch_platform::telemetry::current_trace_context;
use switch_platform::timestamps::from_time;
use switch_proto::domain::wire_optional;
use switch_proto::v1::{self as pb, AuthorizationFacts, EventEnvelope, event_envelope::Payload};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{Authorization, RequestKey};
use crate::wire::pb_money;

/// Where and how the service's events are published.
#[derive(Debug, Clone)]
pub struct Announcer {
    /// Full topic name, prefix included.
    pub topic: String,
    /// Carried in timeout events so consumers know what "too late" meant.
    pub issuer_timeout_ms: u32,
}

impl Announcer {
    /// Every announcement of `decision`, encoded, in order.
    pub fn messages(&self, decision: &Decision, now: OffsetDateTime) -> Vec<OutboxMessage> {
        decision
            .announcements()
            .map(|announcement| {
                let envelope = self.envelope(&decision.next, announcement, now);
                self.message(decision.next.transaction_id.to_string(), &envelope)
            })
            .collect()
    }

    /// A terminal reversal for a transaction the switch never saw.
    pub fn unmatched_reversal(&self, key: &RequestKey, now: OffsetDateTime) -> OutboxMessage {
        let envelope = envelope_for(
            String::new(),
            "terminal.unmatched_reversal",
            Payload::UnmatchedTerminalReversal(pb::UnmatchedTerminalReversal {
                terminal_id: key.terminal_id.to_string(),
                stan: key.stan.to_string(),
                local_date: key.local_date.to_string(),
            }),
            now,
        );
        self.message(key.to_string(), &envelope)
    }

    fn message(&self, key: String, (event_id, envelope): &(Uuid, EventEnvelope)) -> OutboxMessage {
        OutboxMessage {
            event_id: *event_id,
            topic: self.topic.clone(),
            key,
            payload: prost::Message::encode_to_vec(envelope),
            traceparent: envelope.traceparent.clone(),
        }
    }

    fn envelope(
        &self,
        auth: &Authorization,
        announcement: &Announcement,
        now: OffsetDateTime,
    ) -> (Uuid, EventEnvelope) {
        let facts = Some(facts(auth));
        let approval_code = || {
            auth.approval_code
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        let reason = || wire_optional::<_, pb::ReversalReason>(auth.reversal_reason);
        let (event_type, payload) = match announcement {
            Announcement::Approved => (
                "authorization.approved",
                Payload::AuthorizationApproved(pb::AuthorizationApproved {
                    facts,
                    approval_code: approval_code(),
                }),
            ),
            Announcement::Declined => (
                "authorization.declined",
                Payload::AuthorizationDeclined(pb::AuthorizationDeclined {
                    facts,
                    response_code: terminal_response_code(auth.state, auth.response_code)
                        .as_str()
                        .to_owned(),
                }),
            ),
            Announcement::IssuerTimedOut => (
                "authorization.issuer_timed_out",
                Payload::AuthorizationIssuerTimedOut(pb::AuthorizationIssuerTimedOut {
                    facts,
                    timeout_ms: self.issuer_timeout_ms,
                }),
            ),
            Announcement::Confirmed => (
                "authorization.confirmed",
                Payload::AuthorizationConfirmed(pb::AuthorizationConfirmed {
                    facts,
                    evidence: wire_optional::<_, pb::Evidence>(auth.confirmation_evidence),
                    approval_code: approval_code(),
                }),
            ),
            Announcement::Acknowledged => (
                "terminal.acknowledged",
                Payload::TerminalAcknowledged(pb::TerminalAcknowledged { facts }),
            ),
            Announcement::AcknowledgementConflict => (
                "authorization.acknowledgement_conflict",
                Payload::AcknowledgementConflict(pb::AcknowledgementConflict {
                    facts,
                    reversal_reason: reason(),
                }),
            ),
            Announcement::ReversalRequested => (
                "authorization.reversal_requested",
                Payload::ReversalRequested(pb::ReversalRequested {
                    facts,
                    reason: reason(),
                }),
            ),
            Announcement::Reversed { attempts } => (
                "authorization.reversed",
                Payload::AuthorizationReversed(pb::AuthorizationReversed {
                    facts,
                    reason: reason(),
                    attempts: *attempts,
                }),
            ),
            Announcement::ReversalDeadLettered { attempts } => (
                "authorization.reversal_dead_lettered",
                Payload::ReversalDeadLettered(pb::ReversalDeadLettered {
                    facts,
                    reason: reason(),
                    attempts: *attempts,
                }),
            ),
            Announcement::LateIssuerResponse {
                response_code,
                approval_code,
                latency_ms,
            } => (
                "authorization.late_issuer_response",
                Payload::LateIssuerResponse(pb::LateIssuerResponse {
                    facts,
                    response_code: response_code.clone(),
                    approval_code: approval_code.clone(),
                    latency_ms: *latency_ms,
                }),
            ),
        };
        envelope_for(auth.transaction_id.to_string(), event_type, payload, now)
    }
}

fn facts(auth: &Authorization) -> AuthorizationFacts {
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

fn envelope_for(
    transaction_id: String,
    event_type: &str,
    payload: Payload,
    now: OffsetDateTime,
) -> (Uuid, EventEnvelope) {
    let (traceparent, tracestate) = current_trace_context();
    let event_id = Uuid::new_v4();
    let envelope = EventEnvelope {
        event_id: event_id.to_string(),
        event_type: event_type.to_owned(),
        transaction_id,
        occurred_at: Some(from_time(now)),
        traceparent,
        tracestate,
        payload: Some(payload),
    };
    (event_id, envelope)
}
