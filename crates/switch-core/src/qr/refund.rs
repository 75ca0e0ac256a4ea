//! Merchant refunds of confirmed QR payments, in full or in part (ADR 30):
//! whether an operator's request is taken ([`accept`]), what the
//! platform's answer to one attempt does ([`answered`]) and an operator's
//! redrive of one given up on ([`redrive`]).
//!
//! The rules:
//!
//! - Only a confirmed payment is refunded: anything else still has a fate
//!   of its own (an owed cancel or refund, a terminal to hear from).
//! - What the written refunds of a payment add up to never exceeds its
//!   amount: every refund written counts, whatever its state, because a
//!   dead-lettered one may still be redriven (or may even have reached the
//!   platform unheard). Requests the switch refuses are never written.
//! - A refund is keyed by the caller's `refund_id`: the same id for the
//!   same payment and amount is the same refund; with anything else it is
//!   a conflict.
//! - A refund is durable work like the owed cancel: repeated with
//!   [`RetrySchedule`]'s backoff while the platform does not answer,
//!   dead-lettered past the schedule's maximum age. A signed refusal
//!   (more than is left there, the order not paid or closed, the refund
//!   number taken) is not retried: repeating it cannot change the answer,
//!   so it is dead-lettered at once with the refusal for an operator.
//! - The platform's refund number (`out_refund_no`) is derived from the
//!   refund id alone, so a repeat after a crash or a redrive is the same
//!   refund at the platform, never a second one.

use std::fmt;

use time::OffsetDateTime;

use super::{OrderId, PlatformRequestId, QrNotice, QrPayment, QrState};
use crate::error::InvalidField;
use crate::ids::TransactionId;
use crate::money::Money;
use crate::notify::WebhookType;
use crate::orphan::{NextAttempt, RetrySchedule};

/// The caller's key of a refund: 1 to 24 ASCII letters, digits, `_` or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefundId(String);

impl RefundId {
    pub const MAX_LEN: usize = 24;

    /// Field "refund_id".
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidField::new(
                "refund_id",
                format!("must be 1 to 24 ASCII letters, digits, '_' or '-', got '{s}'"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RefundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PlatformRequestId {
    /// The `out_refund_no` of a merchant refund. The prefix keeps it apart
    /// from the owed calls' ids (`<order>-refund`, 32 characters) and the
    /// refund id's 24 characters keep it within the platform's 32.
    pub fn for_merchant_refund(refund: &RefundId) -> Self {
        Self(format!("MR-{}", refund.as_str()))
    }
}

/// Where a merchant refund stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundState {
    /// Owed to the platform: attempted until it acknowledges.
    Requested,
    /// The platform acknowledged it: the money went back. Final.
    Refunded,
    /// Given up on (too old, or refused by the platform): an operator
    /// redrives it.
    DeadLettered,
}

impl RefundState {
    pub const ALL: [RefundState; 3] = [Self::Requested, Self::Refunded, Self::DeadLettered];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Refunded => "refunded",
            Self::DeadLettered => "dead_lettered",
        }
    }

    /// Field "refund_state": storage names parse strictly.
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| InvalidField::new("refund_state", format!("unknown refund state '{s}'")))
    }
}

impl fmt::Display for RefundState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One merchant refund as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrRefund {
    pub refund_id: RefundId,
    pub transaction_id: TransactionId,
    pub order_id: OrderId,
    pub amount: Money,
    pub state: RefundState,
    /// Attempts since it was requested or last redriven.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub requested_at: OffsetDateTime,
    /// When its attempts' age starts (requested or redriven): the age
    /// decides the dead letter.
    pub since: OffsetDateTime,
    /// When the next attempt is due; `None` once refunded or dead-lettered.
    pub next_attempt_at: Option<OffsetDateTime>,
    pub completed_at: Option<OffsetDateTime>,
    pub operator: String,
    pub reason: String,
}

impl QrRefund {
    /// The platform's number of this refund.
    pub fn request_id(&self) -> PlatformRequestId {
        PlatformRequestId::for_merchant_refund(&self.refund_id)
    }
}

/// An operator's request, its fields parsed; the amount is checked here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub refund_id: RefundId,
    pub amount: Money,
    pub operator: String,
    pub reason: String,
}

/// News of a refund on the outbox (`qr.refund_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundEvent {
    Requested,
    Completed,
    DeadLettered { attempts: u32 },
}

impl RefundEvent {
    /// The event's type on the topic.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Requested => "qr.refund_requested",
            Self::Completed => "qr.refund_completed",
            Self::DeadLettered { .. } => "qr.refund_dead_lettered",
        }
    }
}

/// What the notifier owes for a refund's event: the merchant hears when
/// the money went back; the terminal is not told (its receipt stands: the
/// sale happened, the goods came back later).
pub fn refund_notice_for(event: &RefundEvent) -> Option<QrNotice> {
    match event {
        RefundEvent::Completed => Some(QrNotice {
            webhook: WebhookType::PaymentRefunded,
            push: None,
        }),
        RefundEvent::Requested | RefundEvent::DeadLettered { .. } => None,
    }
}

/// The next record of a refund and its announcements, written together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundDecision {
    pub next: QrRefund,
    pub events: Vec<RefundEvent>,
}

impl RefundDecision {
    fn unchanged(current: &QrRefund) -> Self {
        RefundDecision {
            next: current.clone(),
            events: Vec::new(),
        }
    }

    /// Nothing to write: a late or repeated answer.
    pub fn is_noop(&self, current: &QrRefund) -> bool {
        self.events.is_empty() && self.next == *current
    }
}

/// What [`accept`] makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// A new refund, to journal (with its `Requested` event).
    New(RefundDecision),
    /// A repeat of an earlier request: the refund as it stands.
    Duplicate(QrRefund),
}

/// Why a refund request or redrive is refused; nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundRefusal {
    /// Bad input, naming the field (`amount`, `amount.currency`).
    #[error("{0}")]
    Invalid(InvalidField),
    #[error("QR payment {order_id} is {state}: only a confirmed payment is refunded")]
    NotConfirmed { order_id: OrderId, state: QrState },
    #[error(
        "refund {refund_id} exists already, for QR order {existing_order} of {existing_amount}: a refund id is used once"
    )]
    Conflict {
        refund_id: RefundId,
        existing_order: OrderId,
        existing_amount: Money,
    },
    #[error("refund {refund_id} is {state}: only a dead-lettered refund is redriven")]
    NotDeadLettered {
        refund_id: RefundId,
        state: RefundState,
    },
}

impl RefundRefusal {
    /// Short stable name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::NotConfirmed { .. } => "not_confirmed",
            Self::Conflict { .. } => "conflict",
            Self::NotDeadLettered { .. } => "not_dead_lettered",
        }
    }
}

/// What the written refunds of a payment add up to, in its currency. Every
/// state counts (see the module's rules).
pub fn committed(payment: &QrPayment, refunds: &[QrRefund]) -> Money {
    let minor = refunds
        .iter()
        .filter(|r| r.transaction_id == payment.transaction_id)
        .map(|r| r.amount.minor_units())
        .fold(0i64, i64::saturating_add);
    Money::new(minor, payment.amount.currency())
}

/// What is left to refund of `payment`.
pub fn left(payment: &QrPayment, refunds: &[QrRefund]) -> Money {
    let done = committed(payment, refunds).minor_units();
    Money::new(
        payment.amount.minor_units().saturating_sub(done).max(0),
        payment.amount.currency(),
    )
}

/// Whether `request` for `payment` is taken, given the payment's refunds
/// (`refunds`) and the refund already journaled under the same id, for
/// whichever payment (`same_id`).
pub fn accept(
    payment: &QrPayment,
    refunds: &[QrRefund],
    same_id: Option<&QrRefund>,
    request: RefundRequest,
    now: OffsetDateTime,
) -> Result<Acceptance, RefundRefusal> {
    if let Some(existing) = same_id {
        if existing.transaction_id == payment.transaction_id && existing.amount == request.amount {
            return Ok(Acceptance::Duplicate(existing.clone()));
        }
        return Err(RefundRefusal::Conflict {
            refund_id: request.refund_id,
            existing_order: existing.order_id.clone(),
            existing_amount: existing.amount,
        });
    }
    if payment.state != QrState::Confirmed {
        return Err(RefundRefusal::NotConfirmed {
            order_id: payment.order_id.clone(),
            state: payment.state,
        });
    }
    if request.amount.currency() != payment.amount.currency() {
        return Err(RefundRefusal::Invalid(InvalidField::new(
            "amount.currency",
            format!(
                "must be the payment's currency {}, got {}",
                payment.amount.currency().code(),
                request.amount.currency().code()
            ),
        )));
    }
    if request.amount.minor_units() <= 0 {
        return Err(RefundRefusal::Invalid(InvalidField::new(
            "amount",
            "must be greater than zero",
        )));
    }
    let left = left(payment, refunds);
    if request.amount.minor_units() > left.minor_units() {
        return Err(RefundRefusal::Invalid(InvalidField::new(
            "amount",
            format!(
                "{} is more than the {} left to refund of {}",
                request.amount, left, payment.amount
            ),
        )));
    }
    let refund = QrRefund {
        refund_id: request.refund_id,
        transaction_id: payment.transaction_id,
        order_id: payment.order_id.clone(),
        amount: request.amount,
        state: RefundState::Requested,
        attempts: 0,
        last_error: None,
        requested_at: now,
        since: now,
        next_attempt_at: Some(now),
        completed_at: None,
        operator: request.operator,
        reason: request.reason,
    };
    Ok(Acceptance::New(RefundDecision {
        next: refund,
        events: vec![RefundEvent::Requested],
    }))
}

/// The platform's answer to one attempt at a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundAnswer {
    /// The platform acknowledged this refund (made now, or before).
    Done,
    /// A signed refusal (RefundExceeded, OrderNotPaid, OrderClosed,
    /// RefundNoUsed): the platform will not make it, however often asked.
    Refused(String),
    /// No answer, or one that says nothing for sure (outage, timeout).
    Unknown(String),
}

/// One attempt, as the shell counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundAttempt {
    /// Since the refund was requested or redriven, this one included.
    pub attempts: u32,
    /// Random input for the backoff's jitter.
    pub jitter: u64,
}

/// What the platform's `answer` to `attempt` does to `current` at `now`.
pub fn answered(
    current: &QrRefund,
    answer: RefundAnswer,
    attempt: RefundAttempt,
    schedule: RetrySchedule,
    now: OffsetDateTime,
) -> RefundDecision {
    match (current.state, answer) {
        // The money went back: whatever the switch had given up on.
        (RefundState::Requested | RefundState::DeadLettered, RefundAnswer::Done) => {
            let mut next = current.clone();
            next.state = RefundState::Refunded;
            next.attempts = attempt.attempts.max(current.attempts);
            next.next_attempt_at = None;
            next.completed_at = Some(now);
            RefundDecision {
                next,
                events: vec![RefundEvent::Completed],
            }
        }
        (RefundState::Requested, RefundAnswer::Refused(why)) => {
            dead_lettered(current, attempt, format!("refused by the platform: {why}"))
        }
        (RefundState::Requested, RefundAnswer::Unknown(why)) => {
            let age_ms = u64::try_from((now - current.since).whole_milliseconds()).unwrap_or(0);
            match schedule.after_failure(attempt.attempts, age_ms, attempt.jitter) {
                NextAttempt::After(delay_ms) => {
                    let mut next = current.clone();
                    next.attempts = attempt.attempts;
                    next.last_error = Some(why);
                    let delay =
                        time::Duration::milliseconds(i64::try_from(delay_ms).unwrap_or(i64::MAX));
                    next.next_attempt_at = Some(now.saturating_add(delay));
                    RefundDecision {
                        next,
                        events: Vec::new(),
                    }
                }
                NextAttempt::DeadLetter => dead_lettered(current, attempt, why),
            }
        }
        // Refunded already, or a late failure of one given up on.
        (RefundState::Refunded, _)
        | (RefundState::DeadLettered, RefundAnswer::Refused(_) | RefundAnswer::Unknown(_)) => {
            RefundDecision::unchanged(current)
        }
    }
}

fn dead_lettered(current: &QrRefund, attempt: RefundAttempt, why: String) -> RefundDecision {
    let mut next = current.clone();
    next.state = RefundState::DeadLettered;
    next.attempts = attempt.attempts;
    next.last_error = Some(why);
    next.next_attempt_at = None;
    RefundDecision {
        next,
        events: vec![RefundEvent::DeadLettered {
            attempts: attempt.attempts,
        }],
    }
}

/// An operator sends a dead-lettered refund round again: due now, its
/// attempts and age reset, with the same platform number.
pub fn redrive(current: &QrRefund, now: OffsetDateTime) -> Result<RefundDecision, RefundRefusal> {
    if current.state != RefundState::DeadLettered {
        return Err(RefundRefusal::NotDeadLettered {
            refund_id: current.refund_id.clone(),
            state: current.state,
        });
    }
    let mut next = current.clone();
    next.state = RefundState::Requested;
    next.attempts = 0;
    next.since = now;
    next.next_attempt_at = Some(now);
    Ok(RefundDecision {
        next,
        events: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
