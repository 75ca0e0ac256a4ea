//! Event reader: consumes the authorization events topic from the beginning
//! with a throw-away consumer group and prints one line per decoded
//! `EventEnvelope` (or one JSON object per line) with the key fields of its
//! payload: codes, reversal reasons, confirmation evidence, attempts.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message as _;
use serde_json::{Value, json};
use switch_core::ResponseCode;
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{AuthorizationFacts, EventEnvelope};

use crate::output::{
    evidence_name, format_amount, mask_pan, money_json, outcome_name, outcome_reason_text,
    reversal_reason_name,
};

/// Extra wait for the first partition assignment before giving up.
const ASSIGNMENT_GRACE: Duration = Duration::from_secs(20);
/// How often the idle clock is checked while no message arrives.
const POLL_SLICE: Duration = Duration::from_millis(250);

/// What to consume and when to stop.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    pub brokers: String,
    pub topic_prefix: String,
    pub follow: bool,
    pub idle_timeout: Duration,
    pub limit: Option<u64>,
    pub json: bool,
}

/// Name of the authorization events topic for a prefix.
pub fn topic_name(prefix: &str) -> String {
    format!("{prefix}authorization-events")
}

/// Consumer context noting when partitions have been assigned.
struct AssignmentContext {
    assigned: Arc<AtomicBool>,
}

impl ClientContext for AssignmentContext {}

impl ConsumerContext for AssignmentContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance
            && partitions.count() > 0
        {
            self.assigned.store(true, Ordering::SeqCst);
        }
    }
}

/// Flattened, printable view of one event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EventLine {
    pub event_id: String,
    pub event_type: String,
    pub transaction_id: String,
    pub occurred_at: String,
    pub terminal_id: String,
    pub merchant_id: String,
    pub stan: String,
    pub local_date: String,
    pub rrn: String,
    pub masked_pan: String,
    pub amount: Option<switch_proto::v1::Money>,
    pub approval_code: Option<String>,
    pub response_code: Option<String>,
    pub timeout_ms: Option<u32>,
    /// Reversal reason (reversal requested/done/dead-lettered, conflicts).
    pub reason: Option<String>,
    /// What confirmed an approval.
    pub evidence: Option<String>,
    /// How many times a reversal was sent to the issuer.
    pub attempts: Option<u32>,
    /// How late an issuer answer came.
    pub latency_ms: Option<u32>,
}

/// Stable name of a payload kind, used when an envelope carries no
/// `event_type`.
pub fn payload_name(payload: Option<&Payload>) -> &'static str {
    match payload {
        Some(Payload::AuthorizationApproved(_)) => "authorization_approved",
        Some(Payload::AuthorizationDeclined(_)) => "authorization_declined",
        Some(Payload::AuthorizationIssuerTimedOut(_)) => "authorization_issuer_timed_out",
        Some(Payload::TerminalAcknowledged(_)) => "terminal_acknowledged",
        Some(Payload::AuthorizationConfirmed(_)) => "authorization_confirmed",
        Some(Payload::ReversalRequested(_)) => "reversal_requested",
        Some(Payload::AuthorizationReversed(_)) => "authorization_reversed",
        Some(Payload::ReversalDeadLettered(_)) => "reversal_dead_lettered",
        Some(Payload::AcknowledgementConflict(_)) => "acknowledgement_conflict",
        Some(Payload::LateIssuerResponse(_)) => "late_issuer_response",
        Some(Payload::UnmatchedTerminalReversal(_)) => "unmatched_terminal_reversal",
        Some(Payload::BatchOrphanFound(_)) => "batch_orphan_found",
        Some(Payload::BatchConflict(_)) => "batch_conflict",
        Some(Payload::SettlementWindowClosed(_)) => "settlement_window_closed",
        Some(Payload::MerchantPaid(_)) => "merchant_paid",
        Some(Payload::TerminalMessageRequested(_)) => "terminal_message_requested",
        Some(Payload::QrPayment(_)) => "qr_payment",
        None => "unknown",
    }
}

/// Formats a protobuf timestamp as RFC 3339 (empty when missing or invalid).
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else {
        return String::new();
    };
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl EventLine {
    /// Flattens an envelope; the PAN is masked again defensively.
    pub fn from_envelope(envelope: &EventEnvelope) -> Self {
        let event_type = if envelope.event_type.is_empty() {
            payload_name(envelope.payload.as_ref()).to_owned()
        } else {
            envelope.event_type.clone()
        };
        let mut line = EventLine {
            event_id: envelope.event_id.clone(),
            event_type,
            transaction_id: envelope.transaction_id.clone(),
            occurred_at: rfc3339(envelope.occurred_at.as_ref()),
            ..EventLine::default()
        };
        let facts: Option<&AuthorizationFacts> = match &envelope.payload {
            Some(Payload::AuthorizationApproved(p)) => {
                line.approval_code = Some(p.approval_code.clone());
                line.response_code = Some(ResponseCode::APPROVED.to_string());
                p.facts.as_ref()
            }
            Some(Payload::AuthorizationDeclined(p)) => {
                line.response_code = Some(p.response_code.clone());
                p.facts.as_ref()
            }
            Some(Payload::AuthorizationIssuerTimedOut(p)) => {
                line.timeout_ms = Some(p.timeout_ms);
                p.facts.as_ref()
            }
            Some(Payload::TerminalAcknowledged(p)) => p.facts.as_ref(),
            Some(Payload::AuthorizationConfirmed(p)) => {
                line.evidence = Some(evidence_name(p.evidence));
                line.approval_code = Some(p.approval_code.clone());
                p.facts.as_ref()
            }
            Some(Payload::ReversalRequested(p)) => {
                line.reason = Some(reversal_reason_name(p.reason));
                p.facts.as_ref()
            }
            Some(Payload::AuthorizationReversed(p)) => {
                line.reason = Some(reversal_reason_name(p.reason));
                line.attempts = Some(p.attempts);
                p.facts.as_ref()
            }
            Some(Payload::ReversalDeadLettered(p)) => {
                line.reason = Some(reversal_reason_name(p.reason));
                line.attempts = Some(p.attempts);
                p.facts.as_ref()
            }
            Some(Payload::AcknowledgementConflict(p)) => {
                line.reason = Some(reversal_reason_name(p.reversal_reason));
                p.facts.as_ref()
            }
            Some(Payload::LateIssuerResponse(p)) => {
                line.response_code = Some(p.response_code.clone());
                line.approval_code = Some(p.approval_code.clone());
                line.latency_ms = Some(p.latency_ms);
                p.facts.as_ref()
            }
            Some(Payload::UnmatchedTerminalReversal(p)) => {
                line.terminal_id = p.terminal_id.clone();
                line.stan = p.stan.clone();
                line.local_date = p.local_date.clone();
                None
            }
            Some(Payload::BatchOrphanFound(p)) => p.facts.as_ref(),
            Some(Payload::BatchConflict(p)) => {
                let outcome = outcome_name(p.outcome);
                line.reason = Some(if p.detail.is_empty() {
                    outcome
                } else {
                    format!("{outcome}: {}", p.detail)
                });
                p.facts.as_ref()
            }
            Some(Payload::SettlementWindowClosed(p)) => {
                line.merchant_id = p.merchant_id.clone();
                None
            }
            Some(Payload::MerchantPaid(p)) => {
                line.merchant_id = p.merchant_id.clone();
                line.amount = p.payout.as_ref().map(|payout| switch_proto::v1::Money {
                    minor_units: payout.net_minor_units,
                    currency: payout.currency.clone(),
                });
                None
            }
            Some(Payload::TerminalMessageRequested(p)) => {
                line.reason = Some(format!(
                    "{}: {}",
                    p.kind,
                    outcome_reason_text(p.reason.as_ref())
                ));
                if !p.approval_code.is_empty() {
                    line.approval_code = Some(p.approval_code.clone());
                }
                p.facts.as_ref()
            }
            Some(Payload::QrPayment(p)) => {
                if let Some(payment) = &p.payment {
                    line.merchant_id = payment.merchant_id.clone();
                    line.amount = payment.amount.clone();
                }
                if !p.reason.is_empty() {
                    line.reason = Some(p.reason.clone());
                }
                None
            }
            None => None,
        };
        if let Some(f) = facts {
            line.terminal_id = f.terminal_id.clone();
            line.merchant_id = f.merchant_id.clone();
            line.stan = f.stan.clone();
            line.local_date = f.local_date.clone();
            line.rrn = f.rrn.clone();
            line.masked_pan = mask_pan(&f.masked_pan);
            line.amount = f.amount.clone();
        }
        line
    }

    /// One human-readable line.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{:<32} txn={} term={} stan={} rrn={} pan={} amount={}",
            self.event_type,
            self.transaction_id,
            self.terminal_id,
            self.stan,
            self.rrn,
            self.masked_pan,
            format_amount(self.amount.as_ref()),
        );
        if let Some(code) = self.approval_code.as_deref().filter(|c| !c.is_empty()) {
            out.push_str(&format!(" approval={code}"));
        }
        if let Some(code) = &self.response_code {
            out.push_str(&format!(" rc={code}"));
        }
        if let Some(ms) = self.timeout_ms {
            out.push_str(&format!(" timeout_ms={ms}"));
        }
        if let Some(reason) = self.reason.as_deref().filter(|r| !r.is_empty()) {
            out.push_str(&format!(" reason={reason}"));
        }
        if let Some(evidence) = self.evidence.as_deref().filter(|e| !e.is_empty()) {
            out.push_str(&format!(" evidence={evidence}"));
        }
        if let Some(attempts) = self.attempts {
            out.push_str(&format!(" attempts={attempts}"));
        }
        if let Some(ms) = self.latency_ms {
            out.push_str(&format!(" latency_ms={ms}"));
        }
        if !self.local_date.is_empty() {
            out.push_str(&format!(" date={}", self.local_date));
        }
        out
    }

    /// One JSON object.
    pub fn json(&self, partition: i32, offset: i64) -> Value {
        json!({
            "event_type": self.event_type,
            "event_id": self.event_id,
            "transaction_id": self.transaction_id,
            "occurred_at": self.occurred_at,
            "terminal_id": self.terminal_id,
            "merchant_id": self.merchant_id,
            "stan": self.stan,
            "local_date": self.local_date,
            "rrn": self.rrn,
            "masked_pan": self.masked_pan,
            "amount": money_json(self.amount.as_ref()),
            "approval_code": self.approval_code,
            "response_code": self.response_code,
            "timeout_ms": self.timeout_ms,
            "reason": self.reason,
            "evidence": self.evidence,
            "attempts": self.attempts,
            "latency_ms": self.latency_ms,
            "partition": partition,
            "offset": offset,
        })
    }
}

/// Random hex suffix for a throw-away consumer group.
fn random_group_id() -> String {
    let value: u64 = rand::random();
    format!("posctl-events-{value:016x}")
}

/// Consumes and prints events; returns how many were printed.
pub async fn run(config: EventsConfig) -> Result<u64> {
    let topic = topic_name(&config.topic_prefix);
    let assigned = Arc::new(AtomicBool::new(false));
    let consumer: StreamConsumer<AssignmentContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", random_group_id())
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create_with_context(AssignmentContext {
            assigned: Arc::clone(&assigned),
        })
        .with_context(|| format!("cannot create Kafka consumer for {}", config.brokers))?;
    consumer
        .subscribe(&[&topic])
        .with_context(|| format!("cannot subscribe to {topic}"))?;
    if !config.json {
        eprintln!("reading {topic} from {}", config.brokers);
    }

    let started = Instant::now();
    // When the idle clock started: first assignment or latest message.
    let mut idle_since: Option<Instant> = None;
    let mut printed: u64 = 0;
    // Distinct consumer errors already reported, so a broker outage does not
    // flood stderr.
    let mut seen_errors: HashSet<String> = HashSet::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        if config.limit.is_some_and(|limit| printed >= limit) {
            break;
        }
        if !config.follow {
            let now = Instant::now();
            if idle_since.is_none() && assigned.load(Ordering::SeqCst) {
                idle_since = Some(now);
            }
            match idle_since {
                Some(since) if now.duration_since(since) >= config.idle_timeout => break,
                None if now.duration_since(started) >= config.idle_timeout + ASSIGNMENT_GRACE => {
                    eprintln!(
                        "no partition of {topic} assigned and no message within {:?}; giving up",
                        config.idle_timeout + ASSIGNMENT_GRACE
                    );
                    break;
                }
                _ => {}
            }
        }
        let received = tokio::select! {
            _ = &mut ctrl_c => break,
            received = tokio::time::timeout(POLL_SLICE, consumer.recv()) => received,
        };
        match received {
            Err(_elapsed) => {}
            Ok(Err(error)) => {
                let message = error.to_string();
                if seen_errors.len() < 32 && seen_errors.insert(message.clone()) {
                    eprintln!("kafka: {message}");
                }
            }
            Ok(Ok(message)) => {
                idle_since = Some(Instant::now());
                let (partition, offset) = (message.partition(), message.offset());
                let Some(payload) = message.payload() else {
                    eprintln!("skipping empty message at partition {partition} offset {offset}");
                    continue;
                };
                match EventEnvelope::decode(payload) {
                    Ok(envelope) => {
                        let line = EventLine::from_envelope(&envelope);
                        if config.json {
                            println!("{}", line.json(partition, offset));
                        } else {
                            println!("{}", line.text());
                        }
                        printed += 1;
                    }
                    Err(error) => eprintln!(
                        "skipping undecodable message at partition {partition} offset {offset}: {error}"
                    ),
                }
            }
        }
    }
    if !config.json {
        eprintln!("{printed} event(s)");
    }
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch_proto::v1::{
        AcknowledgementConflict, AuthorizationApproved, AuthorizationConfirmed,
        AuthorizationDeclined, AuthorizationReversed, BatchConflict, BatchOrphanFound,
        LateIssuerResponse, MerchantPaid, MerchantPayout, Money, ReversalDeadLettered,
        ReversalRequested, SettlementWindowClosed, UnmatchedTerminalReversal,
    };

    fn facts() -> AuthorizationFacts {
        AuthorizationFacts {
            terminal_id: "TERM0001".to_owned(),
            merchant_id: "MERCHANT0000001".to_owned(),
            stan: "000042".to_owned(),
            local_date: "2025-01-01".to_owned(),
            rrn: "500100000042".to_owned(),
            masked_pan: "4111111111111111".to_owned(),
            amount: Some(Money {
                minor_units: 1050,
                currency: "EUR".to_owned(),
            }),
            channel: "card".to_owned(),
        }
    }

    #[test]
    fn topic_uses_prefix() {
        assert_eq!(topic_name(""), "authorization-events");
        assert_eq!(topic_name("test-"), "test-authorization-events");
    }

    #[test]
    fn flattens_approved_event_and_masks_pan() {
        let envelope = EventEnvelope {
            event_type: "authorization.approved".to_owned(),
            transaction_id: "tx-1".to_owned(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            payload: Some(Payload::AuthorizationApproved(AuthorizationApproved {
                facts: Some(facts()),
                approval_code: "A1B2C3".to_owned(),
            })),
            ..EventEnvelope::default()
        };
        let encoded = envelope.encode_to_vec();
        let decoded = EventEnvelope::decode(encoded.as_slice()).unwrap();
        let line = EventLine::from_envelope(&decoded);
        assert_eq!(line.masked_pan, "411111******1111");
        assert_eq!(line.occurred_at, "1970-01-01T00:00:00Z");
        let text = line.text();
        assert!(text.contains("authorization.approved"));
        assert!(text.contains("EUR 10.50"));
        assert!(text.contains("approval=A1B2C3"));
        assert!(!text.contains("4111111111111111"));
        let value = line.json(0, 7);
        assert_eq!(value["stan"], "000042");
        assert_eq!(value["approval_code"], "A1B2C3");
        assert_eq!(value["offset"], 7);
    }

    #[test]
    fn flattens_declined_event() {
        let envelope = EventEnvelope {
            event_type: "authorization.declined".to_owned(),
            payload: Some(Payload::AuthorizationDeclined(AuthorizationDeclined {
                facts: Some(facts()),
                response_code: "05".to_owned(),
            })),
            ..EventEnvelope::default()
        };
        let line = EventLine::from_envelope(&envelope);
        assert_eq!(line.response_code.as_deref(), Some("05"));
        assert!(line.approval_code.is_none());
        assert!(line.text().contains("rc=05"));
        assert_eq!(rfc3339(None), "");
    }

    fn line_for(payload: Payload) -> EventLine {
        EventLine::from_envelope(&EventEnvelope {
            payload: Some(payload),
            ..EventEnvelope::default()
        })
    }

    #[test]
    fn flattens_confirmation_and_reversal_events() {
        let line = line_for(Payload::AuthorizationConfirmed(AuthorizationConfirmed {
            facts: Some(facts()),
            evidence: switch_proto::v1::Evidence::LastCompletedStan.into(),
            approval_code: "A1B2C3".to_owned(),
        }));
        assert_eq!(line.event_type, "authorization_confirmed");
        let text = line.text();
        assert!(text.contains("evidence=last_completed_stan"), "{text}");
        assert!(text.contains("approval=A1B2C3"));
        assert!(text.contains("411111******1111"));
        assert!(!text.contains("4111111111111111"));
        assert_eq!(line.json(0, 0)["evidence"], "last_completed_stan");

        let line = line_for(Payload::ReversalRequested(ReversalRequested {
            facts: Some(facts()),
            reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into(),
        }));
        assert_eq!(line.event_type, "reversal_requested");
        assert!(line.text().contains("reason=no_terminal_acknowledgement"));
        assert!(line.attempts.is_none());

        let line = line_for(Payload::AuthorizationReversed(AuthorizationReversed {
            facts: Some(facts()),
            reason: switch_proto::v1::ReversalReason::IssuerTimeout.into(),
            attempts: 3,
        }));
        let text = line.text();
        assert!(text.contains("reason=issuer_timeout attempts=3"), "{text}");
        assert_eq!(line.json(0, 0)["attempts"], 3);

        let line = line_for(Payload::ReversalDeadLettered(ReversalDeadLettered {
            facts: Some(facts()),
            reason: switch_proto::v1::ReversalReason::TerminalRequested.into(),
            attempts: 12,
        }));
        assert_eq!(line.event_type, "reversal_dead_lettered");
        assert!(
            line.text()
                .contains("reason=terminal_requested attempts=12")
        );
    }

    #[test]
    fn flattens_conflict_late_response_and_unmatched_reversal() {
        let line = line_for(Payload::AcknowledgementConflict(AcknowledgementConflict {
            facts: Some(facts()),
            reversal_reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into(),
        }));
        assert_eq!(line.event_type, "acknowledgement_conflict");
        assert!(line.text().contains("reason=no_terminal_acknowledgement"));
        assert_eq!(line.stan, "000042");

        let line = line_for(Payload::LateIssuerResponse(LateIssuerResponse {
            facts: Some(facts()),
            response_code: "00".to_owned(),
            approval_code: "Z9Y8X7".to_owned(),
            latency_ms: 4200,
        }));
        let text = line.text();
        assert!(text.contains("approval=Z9Y8X7 rc=00"), "{text}");
        assert!(text.contains("latency_ms=4200"));
        assert_eq!(line.json(0, 0)["latency_ms"], 4200);

        let line = line_for(Payload::UnmatchedTerminalReversal(
            UnmatchedTerminalReversal {
                terminal_id: "TERM0002".to_owned(),
                stan: "000777".to_owned(),
                local_date: "2025-01-02".to_owned(),
            },
        ));
        assert_eq!(line.event_type, "unmatched_terminal_reversal");
        let text = line.text();
        assert!(text.contains("term=TERM0002 stan=000777"), "{text}");
        assert!(text.contains("date=2025-01-02"));
        assert!(line.amount.is_none());
        assert!(line.json(0, 0)["reason"].is_null());
    }

    #[test]
    fn flattens_settlement_events() {
        let line = line_for(Payload::BatchOrphanFound(BatchOrphanFound {
            facts: Some(facts()),
            batch_number: "000001".to_owned(),
        }));
        assert_eq!(line.event_type, "batch_orphan_found");
        assert_eq!(line.stan, "000042");
        assert_eq!(line.masked_pan, "411111******1111");

        let line = line_for(Payload::BatchConflict(BatchConflict {
            facts: Some(facts()),
            batch_number: "000001".to_owned(),
            outcome: switch_proto::v1::ReconciliationOutcome::Mismatch.into(),
            detail: "amount differs".to_owned(),
        }));
        assert_eq!(line.event_type, "batch_conflict");
        assert_eq!(line.reason.as_deref(), Some("mismatch: amount differs"));

        let line = line_for(Payload::SettlementWindowClosed(SettlementWindowClosed {
            merchant_id: "MERCHANT0000001".to_owned(),
            ..SettlementWindowClosed::default()
        }));
        assert_eq!(line.event_type, "settlement_window_closed");
        assert_eq!(line.merchant_id, "MERCHANT0000001");

        let line = line_for(Payload::MerchantPaid(MerchantPaid {
            merchant_id: "MERCHANT0000001".to_owned(),
            payout: Some(MerchantPayout {
                currency: "EUR".to_owned(),
                net_minor_units: 2955,
                ..MerchantPayout::default()
            }),
            ..MerchantPaid::default()
        }));
        assert_eq!(line.event_type, "merchant_paid");
        assert!(line.text().contains("amount=EUR 29.55"), "{}", line.text());
    }

    #[test]
    fn keeps_envelope_event_type_when_present() {
        let envelope = EventEnvelope {
            event_type: "authorization.reversed".to_owned(),
            payload: Some(Payload::AuthorizationReversed(
                AuthorizationReversed::default(),
            )),
            ..EventEnvelope::default()
        };
        assert_eq!(
            EventLine::from_envelope(&envelope).event_type,
            "authorization.reversed"
        );
        assert_eq!(payload_name(None), "unknown");
    }
}
