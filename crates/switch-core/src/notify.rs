//! Who is told of an outcome, and how a webhook that failed is tried again.
//!
//! The notifier reads outcome events and owes, for each, at most one
//! webhook to the merchant and at most one message to the terminal. Which
//! ones is decided here, on the event's typed vocabulary
//! ([`NotifiedEvent`]), so the notifier, its tests and the deterministic
//! simulation apply the same rule:
//!
//! | event | webhook | terminal message | why |
//! |---|---|---|---|
//! | confirmed by the terminal's acknowledgement | none | none | the terminal printed the receipt; one webhook per sale would be noise |
//! | confirmed by the last completed STAN or the batch upload | `payment.confirmed` | none | an orphan confirmed; the terminal itself says it completed the sale, receipt included |
//! | confirmed by policy | `payment.confirmed` | `reprint_receipt` | an orphan confirmed at its deadline: the terminal never showed it |
//! | reversed at the terminal's request | `payment.reversed` | none | the merchant learns the funds are released; the terminal asked for it |
//! | reversed for any other reason | `payment.reversed` | `void_receipt` | the switch took the money back; a receipt may exist |
//! | acknowledged after the reversal | `payment.conflict` | `void_receipt` | a receipt was printed for a reversed payment (S2) |
//! | batch conflict, reversed at host | `payment.conflict` | `void_receipt` | the terminal's batch lists a sale the host reversed |
//! | batch conflict, other outcome | `payment.conflict` | none | a mismatch for an operator; the receipt stands |
//! | a payout | `settlement.paid` | none | |
//!
//! A failed delivery is tried again after [`DeliveryRetry::backoff`]
//! (doubling to a cap, with jitter passed in so the rule stays pure) and
//! dead-lettered once its attempt budget is spent
//! ([`DeliveryRetry::after_failure`]). A terminal message's id is derived
//! from its causing event ([`terminal_message_id`]), so a replayed event
//! yields the same message, which the gateway stores once.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use uuid::Uuid;

use crate::orphan::{Evidence, ReversalReason};
use crate::settlement::ReconciliationOutcome;

/// An outcome event as the notifier reads it, once its vocabulary parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifiedEvent {
    Confirmed { evidence: Evidence },
    Reversed { reason: ReversalReason },
    AcknowledgementConflict { reversal_reason: ReversalReason },
    BatchConflict { outcome: ReconciliationOutcome },
    MerchantPaid,
}

/// The kinds of webhook; their names are part of the merchant API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WebhookType {
    PaymentConfirmed,
    PaymentReversed,
    PaymentConflict,
    /// A merchant refund of a confirmed QR payment went back to the shopper.
    PaymentRefunded,
    SettlementPaid,
}

impl WebhookType {
    pub const ALL: [WebhookType; 5] = [
        Self::PaymentConfirmed,
        Self::PaymentReversed,
        Self::PaymentConflict,
        Self::PaymentRefunded,
        Self::SettlementPaid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentConfirmed => "payment.confirmed",
            Self::PaymentReversed => "payment.reversed",
            Self::PaymentConflict => "payment.conflict",
            Self::PaymentRefunded => "payment.refunded",
            Self::SettlementPaid => "settlement.paid",
        }
    }
}

impl fmt::Display for WebhookType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of terminal message; their names are part of the terminal API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TerminalMessageKind {
    /// Confirmed without the terminal's own evidence: print the receipt.
    ReprintReceipt,
    /// Reversed at the host: any receipt for it is void.
    VoidReceipt,
}

impl TerminalMessageKind {
    pub const ALL: [TerminalMessageKind; 2] = [Self::ReprintReceipt, Self::VoidReceipt];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReprintReceipt => "reprint_receipt",
            Self::VoidReceipt => "void_receipt",
        }
    }
}

impl fmt::Display for TerminalMessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Evidence the terminal itself gave that it completed the sale.
pub fn from_the_terminal(evidence: Evidence) -> bool {
    match evidence {
        Evidence::TerminalAcknowledgement | Evidence::LastCompletedStan | Evidence::BatchUpload => {
            true
        }
        Evidence::Policy => false,
    }
}

/// The webhook `event` owes the merchant, if any.
pub fn webhook_for(event: NotifiedEvent) -> Option<WebhookType> {
    match event {
        NotifiedEvent::Confirmed {
            evidence: Evidence::TerminalAcknowledgement,
        } => None,
        NotifiedEvent::Confirmed { .. } => Some(WebhookType::PaymentConfirmed),
        NotifiedEvent::Reversed { .. } => Some(WebhookType::PaymentReversed),
        NotifiedEvent::AcknowledgementConflict { .. } | NotifiedEvent::BatchConflict { .. } => {
            Some(WebhookType::PaymentConflict)
        }
        NotifiedEvent::MerchantPaid => Some(WebhookType::SettlementPaid),
    }
}

/// The message `event` owes the terminal, if any.
pub fn terminal_message_for(event: NotifiedEvent) -> Option<TerminalMessageKind> {
    match event {
        NotifiedEvent::Confirmed { evidence } if from_the_terminal(evidence) => None,
        NotifiedEvent::Confirmed { .. } => Some(TerminalMessageKind::ReprintReceipt),
        // The terminal asked for it, or was told "declined" in the first
        // place (an approval the switch did not accept): no receipt to void.
        NotifiedEvent::Reversed {
            reason: ReversalReason::TerminalRequested | ReversalReason::ApprovalNotAccepted,
        } => None,
        NotifiedEvent::Reversed { .. } | NotifiedEvent::AcknowledgementConflict { .. } => {
            Some(TerminalMessageKind::VoidReceipt)
        }
        NotifiedEvent::BatchConflict {
            outcome: ReconciliationOutcome::ConflictReversedAtHost,
        } => Some(TerminalMessageKind::VoidReceipt),
        NotifiedEvent::BatchConflict { .. } | NotifiedEvent::MerchantPaid => None,
    }
}

/// Namespace of the version 5 UUIDs of terminal messages.
pub const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1c_29d4_8f0e_4a57_9c1b_7e52_d3a0_f6e1);

/// The id of the `kind` message caused by the event `event_id`: the same
/// for every replay of the event, distinct per kind and per event.
pub fn terminal_message_id(event_id: Uuid, kind: TerminalMessageKind) -> Uuid {
    let name = format!("{}/{}", event_id.as_hyphenated(), kind.as_str());
    Uuid::new_v5(&MESSAGE_ID_NAMESPACE, name.as_bytes())
}

/// The jitter a caller draws for [`DeliveryRetry::after_failure`]: ±20%,
/// so endpoints that failed together do not come back in lock step.
pub const JITTER_PERMILLE: RangeInclusive<u64> = 800..=1_200;

/// Exponential backoff between attempts of one delivery, and its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRetry {
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Attempts in a budget; the last failed one dead-letters.
    pub max_attempts: u32,
}

/// Where a failed attempt leaves a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Due again after this delay.
    Retry(Duration),
    /// The budget is spent: an operator may redeliver it.
    DeadLettered,
}

impl DeliveryRetry {
    /// The delay before the next attempt after `failures` failed attempts
    /// in the current budget: `initial_delay_ms` doubled per earlier
    /// failure, capped at `max_delay_ms`, then scaled by `jitter_permille`.
    pub fn backoff(&self, failures: u32, jitter_permille: u64) -> Duration {
        let doublings = failures.saturating_sub(1).min(40);
        let base = self
            .initial_delay_ms
            .saturating_mul(1_u64 << doublings)
            .min(self.max_delay_ms);
        Duration::from_millis(base.saturating_mul(jitter_permille) / 1_000)
    }

    /// Where a failed attempt leaves a delivery that had `budget_used`
    /// failed attempts in its budget before it: retried after the jittered
    /// backoff, or dead-lettered once the budget is spent.
    pub fn after_failure(&self, budget_used: u32, jitter_permille: u64) -> AfterFailure {
        let failures = budget_used.saturating_add(1);
        if failures >= self.max_attempts {
            AfterFailure::DeadLettered
        } else {
            AfterFailure::Retry(self.backoff(failures, jitter_permille))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TerminalMessageKind::{ReprintReceipt, VoidReceipt};
    use WebhookType::*;

    /// Every event the notifier reads, with the webhook and the terminal
    /// message it owes.
    #[test]
    fn the_notification_table() {
        use ReconciliationOutcome as O;
        use ReversalReason as R;
        let confirmed = |evidence| NotifiedEvent::Confirmed { evidence };
        let reversed = |reason| NotifiedEvent::Reversed { reason };
        let batch = |outcome| NotifiedEvent::BatchConflict { outcome };
        let table: Vec<(
            NotifiedEvent,
            Option<WebhookType>,
            Option<TerminalMessageKind>,
        )> = vec![
            (confirmed(Evidence::TerminalAcknowledgement), None, None),
            (
                confirmed(Evidence::LastCompletedStan),
                Some(PaymentConfirmed),
                None,
            ),
            (
                confirmed(Evidence::BatchUpload),
                Some(PaymentConfirmed),
                None,
            ),
            (
                confirmed(Evidence::Policy),
                Some(PaymentConfirmed),
                Some(ReprintReceipt),
            ),
            (
                reversed(R::NoTerminalAcknowledgement),
                Some(PaymentReversed),
                Some(VoidReceipt),
            ),
            (
                reversed(R::IssuerTimeout),
                Some(PaymentReversed),
                Some(VoidReceipt),
            ),
            (reversed(R::TerminalRequested), Some(PaymentReversed), None),
            (
                reversed(R::ApprovalNotAccepted),
                Some(PaymentReversed),
                None,
            ),
            (
                reversed(R::LateIssuerResponse),
                Some(PaymentReversed),
                Some(VoidReceipt),
            ),
            (
                reversed(R::BatchOrphan),
                Some(PaymentReversed),
                Some(VoidReceipt),
            ),
            (
                NotifiedEvent::AcknowledgementConflict {
                    reversal_reason: R::NoTerminalAcknowledgement,
                },
                Some(PaymentConflict),
                Some(VoidReceipt),
            ),
            (
                batch(O::ConflictReversedAtHost),
                Some(PaymentConflict),
                Some(VoidReceipt),
            ),
            (batch(O::Mismatch), Some(PaymentConflict), None),
            (NotifiedEvent::MerchantPaid, Some(SettlementPaid), None),
        ];
        for (event, webhook, message) in &table {
            assert_eq!(webhook_for(*event), *webhook, "{event:?}");
            assert_eq!(terminal_message_for(*event), *message, "{event:?}");
        }
        // Every evidence, every reason and every outcome is in some row or
        // decided by the rows' rule below.
        for evidence in Evidence::ALL {
            let message = terminal_message_for(confirmed(evidence));
            assert_eq!(
                message.is_none(),
                from_the_terminal(evidence),
                "{evidence:?}"
            );
        }
        for reason in ReversalReason::ALL {
            assert_eq!(webhook_for(reversed(reason)), Some(PaymentReversed));
            assert!(
                table.iter().any(|(event, _, _)| *event == reversed(reason)),
                "{reason:?} has no row"
            );
        }
        for outcome in ReconciliationOutcome::ALL {
            assert_eq!(webhook_for(batch(outcome)), Some(PaymentConflict));
            assert_eq!(
                terminal_message_for(batch(outcome)).is_some(),
                outcome == O::ConflictReversedAtHost,
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn names_are_the_api_names() {
        let webhooks: Vec<&str> = WebhookType::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            webhooks,
            [
                "payment.confirmed",
                "payment.reversed",
                "payment.conflict",
                "payment.refunded",
                "settlement.paid"
            ]
        );
        let messages: Vec<String> = TerminalMessageKind::ALL
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(messages, ["reprint_receipt", "void_receipt"]);
    }

    #[test]
    fn a_message_id_is_the_same_for_a_replay_and_distinct_per_kind_and_event() {
        let event = Uuid::from_u128(1);
        let id = terminal_message_id(event, VoidReceipt);
        assert_eq!(id, terminal_message_id(event, VoidReceipt));
        assert_eq!(id.get_version_num(), 5);
        assert_ne!(id, terminal_message_id(event, ReprintReceipt));
        assert_ne!(id, terminal_message_id(Uuid::from_u128(2), VoidReceipt));
    }

    fn retry(initial: u64, max: u64, attempts: u32) -> DeliveryRetry {
        DeliveryRetry {
            initial_delay_ms: initial,
            max_delay_ms: max,
            max_attempts: attempts,
        }
    }

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_cap() {
        let r = retry(1_000, 300_000, 12);
        let delays: Vec<u128> = (1..=11).map(|n| r.backoff(n, 1_000).as_millis()).collect();
        assert_eq!(
            delays,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000,
                300_000
            ]
        );
        assert_eq!(r.backoff(1_000, 1_000), Duration::from_millis(300_000));
        assert_eq!(r.backoff(0, 1_000), Duration::from_millis(1_000));
    }

    #[test]
    fn jitter_scales_the_delay() {
        let r = retry(50, 10_000, 12);
        assert_eq!(
            r.backoff(2, *JITTER_PERMILLE.start()),
            Duration::from_millis(80)
        );
        assert_eq!(
            r.backoff(2, *JITTER_PERMILLE.end()),
            Duration::from_millis(120)
        );
        assert_eq!(
            r.after_failure(1, 1_000),
            AfterFailure::Retry(Duration::from_millis(100))
        );
    }

    #[test]
    fn the_last_attempt_of_a_budget_dead_letters() {
        let r = retry(50, 1_000, 3);
        assert!(matches!(r.after_failure(0, 1_000), AfterFailure::Retry(_)));
        assert!(matches!(r.after_failure(1, 1_000), AfterFailure::Retry(_)));
        assert_eq!(r.after_failure(2, 1_000), AfterFailure::DeadLettered);
        assert_eq!(r.after_failure(u32::MAX, 1_000), AfterFailure::DeadLettered);
        assert_eq!(
            retry(50, 1_000, 1).after_failure(0, 1_000),
            AfterFailure::DeadLettered
        );
    }
}
