//! What each message for the terminal says. Pure, like [`crate::webhook`]:
//! an envelope in, a message out. Which events become which message
//! (`reprint_receipt` for an orphan confirmed without the terminal's own
//! evidence, `void_receipt` for a reversal the terminal did not ask for or
//! a conflict) is `switch_core::notify::terminal_message_for`'s rule, whose
//! table is there.
//!
//! The message id is a UUID (version 5) of the causing event's id and the
//! kind (`switch_core::notify::terminal_message_id`), so a replayed event
//! yields the same message, which the gateway stores once.

use switch_core::notify::{self, NotifiedEvent};
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{
    self as pb, AuthorizationFacts, EventEnvelope, Money, TerminalMessageRequested,
};
use time::OffsetDateTime;
use uuid::Uuid;

use switch_platform::timestamps::to_time;

use crate::webhook::notified_event;

pub use switch_core::notify::{MESSAGE_ID_NAMESPACE, TerminalMessageKind};

/// A message for one terminal, ready to be wrapped in an envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct TerminalPush {
    /// Also the id of the envelope that carries it.
    pub message_id: Uuid,
    pub kind: TerminalMessageKind,
    /// The causing event's transaction (the envelope's `transaction_id`).
    pub transaction_id: String,
    /// When the outcome happened: the causing event's time.
    pub occurred_at: OffsetDateTime,
    pub message: TerminalMessageRequested,
}

impl TerminalPush {
    /// The Kafka key: one terminal's messages stay in one partition, in order.
    pub fn key(&self) -> &str {
        &self.message.terminal_id
    }
}

/// What to do with one event.
#[derive(Debug, Clone, PartialEq)]
pub enum TerminalPlan {
    Send(Box<TerminalPush>),
    /// Nothing the terminal needs to be told.
    Ignore,
    /// An outcome that cannot be sent (no terminal, no event id, an
    /// unspecified or unknown evidence, reason or outcome); the reason is
    /// logged. Never retried: every replay would fail the same way.
    Invalid(&'static str),
}

/// The message id of `kind` caused by the event `event_id`.
pub fn message_id(event_id: Uuid, kind: TerminalMessageKind) -> Uuid {
    notify::terminal_message_id(event_id, kind)
}

/// Decides whether `event` becomes a terminal message
/// (`notify::terminal_message_for`) and renders it. `now` stands in for an
/// event without `occurred_at`.
pub fn plan(event: &EventEnvelope, now: OffsetDateTime) -> TerminalPlan {
    let Some(payload) = &event.payload else {
        return TerminalPlan::Ignore;
    };
    if let Payload::QrPayment(qr) = payload {
        return qr_push(event, qr, now);
    }
    let outcome = match notified_event(payload) {
        Ok(Some(outcome)) => outcome,
        Ok(None) => return TerminalPlan::Ignore,
        Err(reason) => return TerminalPlan::Invalid(reason),
    };
    let Some(kind) = notify::terminal_message_for(outcome) else {
        return TerminalPlan::Ignore;
    };
    let (facts, approval_code, reason, outcome) = match (payload, outcome) {
        (Payload::AuthorizationConfirmed(confirmed), NotifiedEvent::Confirmed { evidence }) => (
            confirmed.facts.clone().unwrap_or_default(),
            confirmed.approval_code.clone(),
            pb::OutcomeReason::from(evidence),
            "was confirmed: reprint the receipt".to_owned(),
        ),
        (Payload::AuthorizationReversed(reversed), NotifiedEvent::Reversed { reason }) => (
            reversed.facts.clone().unwrap_or_default(),
            String::new(),
            pb::OutcomeReason::from(reason),
            "was reversed: void the receipt".to_owned(),
        ),
        (
            Payload::AcknowledgementConflict(conflict),
            NotifiedEvent::AcknowledgementConflict { reversal_reason },
        ) => (
            conflict.facts.clone().unwrap_or_default(),
            String::new(),
            pb::OutcomeReason::from(reversal_reason),
            "had been reversed before it was acknowledged: void the receipt".to_owned(),
        ),
        (Payload::BatchConflict(conflict), NotifiedEvent::BatchConflict { outcome }) => (
            conflict.facts.clone().unwrap_or_default(),
            String::new(),
            pb::OutcomeReason::from(outcome),
            format!(
                "in batch {} was reversed at the host: void the receipt",
                conflict.batch_number
            ),
        ),
        // `notified_event` reads each payload as its own outcome, and a
        // payout owes no terminal message.
        _ => return TerminalPlan::Ignore,
    };
    let Ok(event_id) = Uuid::parse_str(&event.event_id) else {
        return TerminalPlan::Invalid("event id is not a UUID");
    };
    if facts.terminal_id.trim().is_empty() {
        return TerminalPlan::Invalid("event names no terminal");
    }
    let occurred_at = event.occurred_at.as_ref().and_then(to_time).unwrap_or(now);
    let message_id = message_id(event_id, kind);
    let text = format!(
        "Payment of {} (STAN {}) {outcome}",
        display_amount(facts.amount.as_ref()),
        facts.stan
    );
    let facts = AuthorizationFacts {
        masked_pan: masked_pan(&facts.masked_pan),
        ..facts
    };
    TerminalPlan::Send(Box::new(TerminalPush {
        message_id,
        kind,
        transaction_id: event.transaction_id.clone(),
        occurred_at,
        message: TerminalMessageRequested {
            message_id: message_id.to_string(),
            terminal_id: facts.terminal_id.clone(),
            merchant_id: facts.merchant_id.clone(),
            kind: kind.as_str().to_owned(),
            facts: Some(facts),
            approval_code,
            reason: Some(reason),
            text,
        },
    }))
}

/// A QR payment's event (ADR 29): the push it owes is the core's rule
/// (`switch_core::qr::notice_for`), carried in the event.
fn qr_push(event: &EventEnvelope, qr: &pb::QrPaymentEvent, now: OffsetDateTime) -> TerminalPlan {
    if qr.push.is_empty() {
        return TerminalPlan::Ignore;
    }
    let Some(kind) = TerminalMessageKind::ALL
        .into_iter()
        .find(|kind| kind.as_str() == qr.push)
    else {
        return TerminalPlan::Invalid("QR event names no known terminal message");
    };
    let Some(payment) = &qr.payment else {
        return TerminalPlan::Invalid("QR event carries no payment");
    };
    let Ok(event_id) = Uuid::parse_str(&event.event_id) else {
        return TerminalPlan::Invalid("event id is not a UUID");
    };
    if payment.terminal_id.trim().is_empty() {
        return TerminalPlan::Invalid("event names no terminal");
    }
    let reason = match kind {
        TerminalMessageKind::ReprintReceipt => {
            pb::OutcomeReason::from(switch_core::Evidence::Policy)
        }
        TerminalMessageKind::VoidReceipt => pb::OutcomeReason::from(
            switch_core::ReversalReason::parse(&qr.reason)
                .unwrap_or(switch_core::ReversalReason::LateIssuerResponse),
        ),
    };
    let outcome = match kind {
        TerminalMessageKind::ReprintReceipt => "was confirmed: reprint the receipt",
        TerminalMessageKind::VoidReceipt => "was refunded to the shopper: void the receipt",
    };
    let occurred_at = event.occurred_at.as_ref().and_then(to_time).unwrap_or(now);
    let message_id = message_id(event_id, kind);
    let text = format!(
        "QR payment of {} (STAN {}, order {}, wallet transaction {}) {outcome}",
        display_amount(payment.amount.as_ref()),
        payment.stan,
        payment.order_id,
        payment.platform_txn_id
    );
    let facts = AuthorizationFacts {
        terminal_id: payment.terminal_id.clone(),
        merchant_id: payment.merchant_id.clone(),
        stan: payment.stan.clone(),
        local_date: payment.local_date.clone(),
        rrn: String::new(),
        masked_pan: String::new(),
        amount: payment.amount.clone(),
        channel: "qr".into(),
    };
    TerminalPlan::Send(Box::new(TerminalPush {
        message_id,
        kind,
        transaction_id: event.transaction_id.clone(),
        occurred_at,
        message: TerminalMessageRequested {
            message_id: message_id.to_string(),
            terminal_id: facts.terminal_id.clone(),
            merchant_id: facts.merchant_id.clone(),
            kind: kind.as_str().to_owned(),
            facts: Some(facts),
            // QR has no approval code; the wallet's transaction is in the text.
            approval_code: String::new(),
            reason: Some(reason),
            text,
        },
    }))
}

/// `EUR 42.00` in the currency's minor units; an unknown currency shows
/// its minor units as they are.
fn display_amount(amount: Option<&Money>) -> String {
    let Some(amount) = amount else {
        return "an unknown amount".to_owned();
    };
    match switch_core::Currency::parse(&amount.currency) {
        Ok(currency) => switch_core::Money::new(amount.minor_units, currency).to_string(),
        Err(_) => format!("{} {} (minor units)", amount.currency, amount.minor_units),
    }
}

/// The masked PAN if it is one; anything else, a full PAN above all, is
/// never passed on.
fn masked_pan(value: &str) -> String {
    switch_core::MaskedPan::parse(value)
        .map(|masked| masked.as_str().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch_core::{Evidence, ReconciliationOutcome, ReversalReason};
    use switch_proto::v1::{
        AcknowledgementConflict, AuthorizationApproved, AuthorizationConfirmed,
        AuthorizationReversed, BatchConflict, MerchantPaid,
    };

    const NOW: i64 = 1_764_000_000;
    const EVENT_ID: &str = "0193a5d4-7e1f-7c3a-9d5e-000000000001";

    fn facts() -> AuthorizationFacts {
        AuthorizationFacts {
            terminal_id: "TERM0001".into(),
            merchant_id: "MERCHANT0000001".into(),
            stan: "100008".into(),
            local_date: "2026-11-24".into(),
            rrn: "633000000042".into(),
            masked_pan: "411111******1111".into(),
            amount: Some(Money {
                minor_units: 4200,
                currency: "EUR".into(),
            }),
            channel: "card".into(),
        }
    }

    fn envelope(payload: Payload) -> EventEnvelope {
        EventEnvelope {
            event_id: EVENT_ID.into(),
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

    fn confirmed(evidence: impl Into<i32>) -> EventEnvelope {
        envelope(Payload::AuthorizationConfirmed(AuthorizationConfirmed {
            facts: Some(facts()),
            evidence: evidence.into(),
            approval_code: "A1B2C3".into(),
        }))
    }

    fn reversed(reason: impl Into<i32>) -> EventEnvelope {
        envelope(Payload::AuthorizationReversed(AuthorizationReversed {
            facts: Some(facts()),
            reason: reason.into(),
            attempts: 1,
        }))
    }

    fn batch_conflict(outcome: impl Into<i32>) -> EventEnvelope {
        envelope(Payload::BatchConflict(BatchConflict {
            facts: Some(facts()),
            batch_number: "000007".into(),
            outcome: outcome.into(),
            detail: String::new(),
        }))
    }

    fn kind_of(event: &EventEnvelope) -> Option<TerminalMessageKind> {
        match plan(event, now()) {
            TerminalPlan::Send(push) => Some(push.kind),
            TerminalPlan::Ignore => None,
            TerminalPlan::Invalid(reason) => panic!("unexpectedly invalid: {reason}"),
        }
    }

    fn sent(event: &EventEnvelope) -> TerminalPush {
        match plan(event, now()) {
            TerminalPlan::Send(push) => *push,
            other => panic!("expected a terminal message, got {other:?}"),
        }
    }

    #[test]
    fn an_unspecified_or_unknown_vocabulary_value_is_invalid() {
        for event in [
            confirmed(pb::Evidence::Unspecified),
            confirmed(99),
            reversed(pb::ReversalReason::Unspecified),
            batch_conflict(pb::ReconciliationOutcome::Unspecified),
        ] {
            assert!(
                matches!(plan(&event, now()), TerminalPlan::Invalid(_)),
                "{event:?}"
            );
        }
    }

    #[test]
    fn the_planning_table() {
        use TerminalMessageKind::{ReprintReceipt, VoidReceipt};
        let table: [(&str, EventEnvelope, Option<TerminalMessageKind>); 13] = [
            (
                "confirmed by policy",
                confirmed(pb::Evidence::Policy),
                Some(ReprintReceipt),
            ),
            (
                "confirmed by the terminal's acknowledgement",
                confirmed(pb::Evidence::TerminalAcknowledgement),
                None,
            ),
            (
                "confirmed by the terminal's last completed STAN",
                confirmed(pb::Evidence::LastCompletedStan),
                None,
            ),
            (
                "confirmed by the terminal's batch upload",
                confirmed(pb::Evidence::BatchUpload),
                None,
            ),
            (
                "reversed without acknowledgement",
                reversed(pb::ReversalReason::NoTerminalAcknowledgement),
                Some(VoidReceipt),
            ),
            (
                "reversed after an issuer timeout",
                reversed(pb::ReversalReason::IssuerTimeout),
                Some(VoidReceipt),
            ),
            (
                "reversed after a late issuer answer",
                reversed(pb::ReversalReason::LateIssuerResponse),
                Some(VoidReceipt),
            ),
            (
                "reversed as a batch orphan",
                reversed(pb::ReversalReason::BatchOrphan),
                Some(VoidReceipt),
            ),
            (
                "reversed at the terminal's request",
                reversed(pb::ReversalReason::TerminalRequested),
                None,
            ),
            (
                "acknowledged after the reversal",
                envelope(Payload::AcknowledgementConflict(AcknowledgementConflict {
                    facts: Some(facts()),
                    reversal_reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement
                        .into(),
                })),
                Some(VoidReceipt),
            ),
            (
                "batch lists a sale reversed at the host",
                batch_conflict(pb::ReconciliationOutcome::ConflictReversedAtHost),
                Some(VoidReceipt),
            ),
            (
                "batch mismatch",
                batch_conflict(pb::ReconciliationOutcome::Mismatch),
                None,
            ),
            (
                "an approval",
                envelope(Payload::AuthorizationApproved(AuthorizationApproved {
                    facts: Some(facts()),
                    approval_code: "A1B2C3".into(),
                })),
                None,
            ),
        ];
        for (what, event, expected) in table {
            assert_eq!(kind_of(&event), expected, "{what}");
        }
        let payout = envelope(Payload::MerchantPaid(MerchantPaid::default()));
        assert_eq!(plan(&payout, now()), TerminalPlan::Ignore);
        assert_eq!(plan(&EventEnvelope::default(), now()), TerminalPlan::Ignore);
    }

    #[test]
    fn a_void_message_says_what_to_do_with_the_receipt() {
        let push = sent(&reversed(pb::ReversalReason::NoTerminalAcknowledgement));
        assert_eq!(push.kind, TerminalMessageKind::VoidReceipt);
        assert_eq!(push.key(), "TERM0001");
        assert_eq!(push.transaction_id, "0193a5d4-7e1f-7c3a-9d5e-0000000000aa");
        assert_eq!(
            push.occurred_at,
            OffsetDateTime::from_unix_timestamp(NOW).unwrap()
        );
        let message = &push.message;
        assert_eq!(message.message_id, push.message_id.to_string());
        assert_eq!(message.terminal_id, "TERM0001");
        assert_eq!(message.merchant_id, "MERCHANT0000001");
        assert_eq!(message.kind, "void_receipt");
        assert_eq!(
            message.reason,
            Some(ReversalReason::NoTerminalAcknowledgement.into())
        );
        assert_eq!(message.approval_code, "");
        assert_eq!(message.facts, Some(facts()));
        assert_eq!(
            message.text,
            "Payment of EUR 42.00 (STAN 100008) was reversed: void the receipt"
        );
    }

    #[test]
    fn a_reprint_message_carries_the_approval_code_and_evidence() {
        let push = sent(&confirmed(pb::Evidence::Policy));
        assert_eq!(push.message.kind, "reprint_receipt");
        assert_eq!(push.message.approval_code, "A1B2C3");
        assert_eq!(push.message.reason, Some(Evidence::Policy.into()));
        assert_eq!(
            push.message.text,
            "Payment of EUR 42.00 (STAN 100008) was confirmed: reprint the receipt"
        );
    }

    #[test]
    fn conflicts_name_their_source() {
        let ack = sent(&envelope(Payload::AcknowledgementConflict(
            AcknowledgementConflict {
                facts: Some(facts()),
                reversal_reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into(),
            },
        )));
        assert_eq!(
            ack.message.reason,
            Some(ReversalReason::NoTerminalAcknowledgement.into())
        );
        assert_eq!(
            ack.message.text,
            "Payment of EUR 42.00 (STAN 100008) had been reversed before it was acknowledged: \
             void the receipt"
        );
        let batch = sent(&batch_conflict(
            pb::ReconciliationOutcome::ConflictReversedAtHost,
        ));
        assert_eq!(
            batch.message.reason,
            Some(ReconciliationOutcome::ConflictReversedAtHost.into())
        );
        assert_eq!(
            batch.message.text,
            "Payment of EUR 42.00 (STAN 100008) in batch 000007 was reversed at the host: \
             void the receipt"
        );
    }

    #[test]
    fn a_replayed_event_yields_the_same_message_id() {
        let first = sent(&reversed(pb::ReversalReason::IssuerTimeout));
        let again = sent(&reversed(pb::ReversalReason::IssuerTimeout));
        assert_eq!(first.message_id, again.message_id);
        assert_eq!(first.message_id.get_version_num(), 5);
        let event_id = Uuid::parse_str(EVENT_ID).unwrap();
        assert_eq!(
            first.message_id,
            message_id(event_id, TerminalMessageKind::VoidReceipt)
        );
        assert_ne!(
            message_id(event_id, TerminalMessageKind::VoidReceipt),
            message_id(event_id, TerminalMessageKind::ReprintReceipt)
        );
        let mut other = reversed(pb::ReversalReason::IssuerTimeout);
        other.event_id = "0193a5d4-7e1f-7c3a-9d5e-000000000002".into();
        assert_ne!(sent(&other).message_id, first.message_id);
    }

    #[test]
    fn amounts_use_the_currency_minor_units() {
        let mut yen = facts();
        yen.amount = Some(Money {
            minor_units: 4200,
            currency: "JPY".into(),
        });
        let event = envelope(Payload::AuthorizationReversed(AuthorizationReversed {
            facts: Some(yen),
            reason: switch_proto::v1::ReversalReason::IssuerTimeout.into(),
            attempts: 1,
        }));
        assert!(
            sent(&event)
                .message
                .text
                .starts_with("Payment of JPY 4200 (STAN 100008)")
        );
        let mut odd = facts();
        odd.amount = Some(Money {
            minor_units: 4200,
            currency: "XQQ".into(),
        });
        let event = envelope(Payload::AuthorizationReversed(AuthorizationReversed {
            facts: Some(odd),
            reason: switch_proto::v1::ReversalReason::IssuerTimeout.into(),
            attempts: 1,
        }));
        assert!(
            sent(&event)
                .message
                .text
                .starts_with("Payment of XQQ 4200 (minor units) (STAN 100008)")
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
        let push = sent(&event);
        assert_eq!(push.message.facts.unwrap().masked_pan, "");
    }

    #[test]
    fn outcomes_without_terminal_or_event_id_are_invalid() {
        let mut no_terminal = facts();
        no_terminal.terminal_id.clear();
        let event = envelope(Payload::AuthorizationReversed(AuthorizationReversed {
            facts: Some(no_terminal),
            reason: switch_proto::v1::ReversalReason::IssuerTimeout.into(),
            attempts: 1,
        }));
        assert!(matches!(plan(&event, now()), TerminalPlan::Invalid(_)));
        let mut bad_id = reversed(pb::ReversalReason::IssuerTimeout);
        bad_id.event_id = "not-a-uuid".into();
        assert!(matches!(plan(&bad_id, now()), TerminalPlan::Invalid(_)));
    }

    #[test]
    fn a_missing_occurred_at_uses_now() {
        let mut event = reversed(pb::ReversalReason::IssuerTimeout);
        event.occurred_at = None;
        assert_eq!(sent(&event).occurred_at, now());
    }

    #[test]
    fn a_qr_event_pushes_what_the_core_said_it_owes() {
        let qr = |push: &str| {
            envelope(Payload::QrPayment(pb::QrPaymentEvent {
                payment: Some(pb::QrPaymentRecord {
                    terminal_id: "TERM0001".into(),
                    merchant_id: "MERCHANT0000001".into(),
                    stan: "000001".into(),
                    order_id: "Q0123456789abcdef01234567".into(),
                    platform_txn_id: "4200001".into(),
                    amount: facts().amount,
                    ..Default::default()
                }),
                reason: "late_issuer_response".into(),
                webhook: "payment.reversed".into(),
                push: push.into(),
                attempts: 0,
                refund: None,
            }))
        };
        let now = OffsetDateTime::from_unix_timestamp(NOW).expect("time");
        let TerminalPlan::Send(push) = plan(&qr("void_receipt"), now) else {
            panic!("a void is pushed");
        };
        assert_eq!(push.kind, TerminalMessageKind::VoidReceipt);
        assert_eq!(push.message.terminal_id, "TERM0001");
        assert!(
            push.message.text.contains("4200001"),
            "{}",
            push.message.text
        );
        assert_eq!(plan(&qr(""), now), TerminalPlan::Ignore);
        assert!(matches!(plan(&qr("dance"), now), TerminalPlan::Invalid(_)));
    }
}
