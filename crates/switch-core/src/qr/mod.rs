//! The QR payment lifecycle's decisions (issue 15): for a journaled QR
//! payment, a command (the platform's answer to a pay, an order or a query,
//! a verified notification, the terminal's acknowledgement or its giving
//! up, a query falling due, the answer to a cancel, close or refund, an
//! operator's redrive) and the time, [`decide`] returns the next record and
//! every effect the shell must carry out with it, or why the command is
//! refused (nothing is written).
//!
//! Two modes share one record. *Consumer-presented*: the terminal scanned
//! the shopper's code, the switch calls the platform's pay. *Merchant-
//! presented*: the switch creates an order, the terminal shows its code,
//! the shopper pays on the phone and the platform notifies. Either way the
//! switch queries every [`QrWindows::query_interval`] until the platform
//! gives a final answer, however long ago the terminal stopped waiting, and
//! past [`QrWindows::query_limit`] without a payment it owes the platform a
//! cancel (consumer-presented) or a close (merchant-presented).
//!
//! The rules that end the S3 dispute (the phone says paid, the terminal
//! printed nothing):
//!
//! - A payment the platform confirms while the terminal waits is told to
//!   the terminal; the terminal's acknowledgement (it printed) confirms it.
//! - A payment the platform confirms after the terminal stopped waiting, or
//!   that the terminal never acknowledged by its deadline, is an orphan:
//!   the merchant's [`OrphanPolicy`] decides it ([`decide_at_deadline`]):
//!   confirmed (webhook `payment.confirmed`, push `reprint_receipt`) or
//!   refunded at the platform (`payment.reversed`, `void_receipt`).
//! - A close or cancel that races a payment ends in exactly one outcome:
//!   once the platform says paid, the owed call becomes a refund.
//! - Final states (failed, closed, refunded, confirmed) never change; a
//!   late or repeated word is a recorded no-op, and a word that contradicts
//!   a final state is refused with its reason.
//!
//! A cancel, close or refund is durable work like a card reversal: it is
//! repeated with [`RetrySchedule`]'s backoff until the platform
//! acknowledges it and dead-lettered once it is older than the schedule's
//! maximum age, for an operator to redrive.

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use crate::error::InvalidField;
use crate::ids::{MerchantId, TransactionId};
use crate::lifecycle::{RequestKey, ReversalClosed};
use crate::money::Money;
use crate::notify::{TerminalMessageKind, WebhookType};
use crate::orphan::{
    Evidence, NextAttempt, OrphanDecision, OrphanPolicy, RetrySchedule, ReversalReason,
    decide_at_deadline,
};

pub mod refund;

/// Who shows the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QrMode {
    /// The terminal scanned the shopper's payment code: the switch calls pay.
    ConsumerPresented,
    /// The terminal shows a code for an order the switch created.
    MerchantPresented,
}

impl QrMode {
    pub const ALL: [QrMode; 2] = [Self::ConsumerPresented, Self::MerchantPresented];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ConsumerPresented => "consumer_presented",
            Self::MerchantPresented => "merchant_presented",
        }
    }

    /// Field "qr_mode".
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| InvalidField::new("qr_mode", format!("unknown QR mode '{s}'")))
    }

    /// What the switch owes the platform for an unpaid order it gives up on.
    fn unpaid_call(&self) -> CancelKind {
        match self {
            Self::ConsumerPresented => CancelKind::Cancel,
            Self::MerchantPresented => CancelKind::Close,
        }
    }
}

/// The switch's order id at the platform (`out_trade_no`): 6 to 32 ASCII
/// letters, digits, `_` or `-`, the set every platform in scope accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(String);

impl OrderId {
    /// Field "order_id".
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        let ok = (6..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidField::new(
                "order_id",
                format!("must be 6 to 32 ASCII letters, digits, '_' or '-', got '{s}'"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The platform's own id of a payment (`transaction_id`, `trade_no`): 1 to
/// 64 printable ASCII characters without spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlatformTxnId(String);

impl PlatformTxnId {
    /// Field "platform_txn_id".
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        if (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidField::new(
                "platform_txn_id",
                format!("must be 1 to 64 printable ASCII characters, got '{s}'"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlatformTxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id a call to the platform carries so that a repeat of it is the
/// same request there (`out_trade_no` for pay and order, `out_refund_no`
/// for a refund): derived from the order id and the operation, so a
/// repeat after a crash or a redrive cannot become a second operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlatformRequestId(String);

impl PlatformRequestId {
    fn of(order: &OrderId, operation: &str) -> Self {
        Self(format!("{}-{operation}", order.as_str()))
    }

    /// The id of the owed `kind` of call for `order`, as [`decide`] makes
    /// it: how a journal that stores the kind reads the owed call back.
    pub fn for_owed(order: &OrderId, kind: CancelKind) -> Self {
        Self::of(order, kind.as_str())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlatformRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How long the terminal waits and how the switch queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QrWindows {
    /// From the request: the terminal stops waiting for the result.
    pub terminal_wait: Duration,
    /// Between two queries of a payment without a final answer.
    pub query_interval: Duration,
    /// From the request: no payment by then, and the order is given up
    /// (cancelled or closed at the platform). WeChat: 45 s.
    pub query_limit: Duration,
}

impl QrWindows {
    /// WeChat Pay's published figures: the terminal waits 30 s, the switch
    /// queries every 5 s for at most 45 s.
    pub const WECHAT: QrWindows = QrWindows {
        terminal_wait: Duration::from_secs(30),
        query_interval: Duration::from_secs(5),
        query_limit: Duration::from_secs(45),
    };

    /// A zero interval would query in a loop; it is raised to a millisecond.
    pub fn new(terminal_wait: Duration, query_interval: Duration, query_limit: Duration) -> Self {
        QrWindows {
            terminal_wait,
            query_interval: query_interval.max(Duration::from_millis(1)),
            query_limit,
        }
    }
}

/// Where a QR payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QrState {
    /// Journaled; the pay or create-order call is on its way.
    Submitted,
    /// Merchant-presented: the platform holds the order and the terminal
    /// shows its code; the shopper has not paid.
    OrderCreated,
    /// The platform said "in progress" (the shopper confirms on the phone)
    /// or could not be heard: the switch queries.
    AwaitingPayment,
    /// The platform took the money; the terminal was told and its
    /// acknowledgement is awaited until its deadline.
    Paid,
    /// The platform refused the payment; no money moved. Final.
    Failed,
    /// A cancel, close or refund is owed to the platform
    /// ([`QrPayment::owed`]) and repeated until acknowledged.
    Cancelling,
    /// The owed call went unacknowledged past its maximum age: an operator
    /// redrives it.
    CancelDeadLettered,
    /// Unpaid and closed at the platform. Final.
    Closed,
    /// The money moved and was given back. Final.
    Refunded,
    /// Paid, and the merchant keeps it. Final.
    Confirmed,
}

impl QrState {
    pub const ALL: [QrState; 10] = [
        Self::Submitted,
        Self::OrderCreated,
        Self::AwaitingPayment,
        Self::Paid,
        Self::Failed,
        Self::Cancelling,
        Self::CancelDeadLettered,
        Self::Closed,
        Self::Refunded,
        Self::Confirmed,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::OrderCreated => "order_created",
            Self::AwaitingPayment => "awaiting_payment",
            Self::Paid => "paid",
            Self::Failed => "failed",
            Self::Cancelling => "cancelling",
            Self::CancelDeadLettered => "cancel_dead_lettered",
            Self::Closed => "closed",
            Self::Refunded => "refunded",
            Self::Confirmed => "confirmed",
        }
    }

    /// Field "qr_state": storage names parse strictly.
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| InvalidField::new("qr_state", format!("unknown QR state '{s}'")))
    }

    /// Never changes again.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Closed | Self::Refunded | Self::Confirmed
        )
    }

    /// Waiting for the platform to say whether the shopper paid: queried.
    pub fn awaits_payment(&self) -> bool {
        matches!(
            self,
            Self::Submitted | Self::OrderCreated | Self::AwaitingPayment
        )
    }
}

impl fmt::Display for QrState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the switch owes the platform when it gives up or gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelKind {
    /// Consumer-presented, unpaid as far as the switch knows (WeChat's
    /// "reverse": the platform refunds it itself if it was paid after all).
    Cancel,
    /// Merchant-presented, unpaid as far as the switch knows.
    Close,
    /// The money moved: give it back.
    Refund,
}

impl CancelKind {
    pub const ALL: [CancelKind; 3] = [Self::Cancel, Self::Close, Self::Refund];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Close => "close",
            Self::Refund => "refund",
        }
    }

    /// Field "cancel_kind".
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| InvalidField::new("cancel_kind", format!("unknown cancel kind '{s}'")))
    }
}

/// The cancel, close or refund owed to the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedCall {
    pub kind: CancelKind,
    pub request_id: PlatformRequestId,
    /// When it became owed (or was redriven): its age decides the dead letter.
    pub since: OffsetDateTime,
}

/// The facts of a new QR payment, before it is journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrIntent {
    pub transaction_id: TransactionId,
    pub key: RequestKey,
    pub merchant_id: MerchantId,
    pub mode: QrMode,
    pub order_id: OrderId,
    pub amount: Money,
    /// The merchant's policy for orphans, fixed when the payment starts.
    pub orphan_policy: OrphanPolicy,
}

/// One QR payment as the journal holds it. Never holds the shopper's
/// payment code: it is a bearer credential, sent once with the pay call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrPayment {
    pub transaction_id: TransactionId,
    pub key: RequestKey,
    pub merchant_id: MerchantId,
    pub mode: QrMode,
    pub order_id: OrderId,
    pub amount: Money,
    pub orphan_policy: OrphanPolicy,
    pub state: QrState,
    pub created_at: OffsetDateTime,
    /// The terminal stops waiting for the result then.
    pub terminal_deadline: OffsetDateTime,
    /// No payment by then: the order is given up.
    pub query_limit_at: OffsetDateTime,
    /// When the next query is due; `None` once the platform's answer needs
    /// no more queries (paid, cancelling, final).
    pub next_query_at: Option<OffsetDateTime>,
    pub queries: u32,
    /// The code's content the terminal shows (merchant-presented).
    pub code: Option<String>,
    /// Set exactly when the platform said the money moved.
    pub platform_txn: Option<PlatformTxnId>,
    pub paid_at: Option<OffsetDateTime>,
    pub acknowledged_at: Option<OffsetDateTime>,
    /// The terminal's deadline passed without its acknowledgement.
    pub terminal_gave_up: bool,
    pub confirmation_evidence: Option<Evidence>,
    pub owed: Option<OwedCall>,
    pub refund_reason: Option<ReversalReason>,
    /// The platform's reason for a failed payment.
    pub failure: Option<String>,
    /// The terminal acknowledged a payment the switch is giving back (S2).
    pub conflict_at: Option<OffsetDateTime>,
}

/// A call to the platform, with the id that makes a repeat harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformCall {
    /// Consumer-presented: charge the scanned code (the shell holds it).
    Pay { request_id: PlatformRequestId },
    /// Merchant-presented: create the order whose code the terminal shows.
    CreateOrder { request_id: PlatformRequestId },
    /// Ask where the order stands.
    Query { order_id: OrderId },
}

/// What the platform says of an order, in the core's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformTradeState {
    Paid {
        platform_txn: PlatformTxnId,
        amount: Money,
    },
    /// The shopper has not confirmed yet.
    InProgress,
    /// No payment (yet), or no such order.
    NotPaid,
    /// The platform refused the payment; no money moved.
    Failed { reason: String },
    /// The order is closed or cancelled at the platform, unpaid.
    Closed,
    /// The payment was made and refunded at the platform.
    Refunded {
        platform_txn: PlatformTxnId,
        amount: Money,
    },
    /// No answer, or one that could not be read: nothing is known.
    Unknown,
}

impl PlatformTradeState {
    fn name(&self) -> &'static str {
        match self {
            Self::Paid { .. } => "paid",
            Self::InProgress => "in_progress",
            Self::NotPaid => "not_paid",
            Self::Failed { .. } => "failed",
            Self::Closed => "closed",
            Self::Refunded { .. } => "refunded",
            Self::Unknown => "unknown",
        }
    }
}

/// The platform's answer to a create-order call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCreation {
    /// The code's content for the terminal to show.
    Created { code: String },
    /// The platform refused the order: nothing exists there.
    Refused { reason: String },
    /// No answer: the order may exist; queries will tell.
    Unknown,
}

/// The platform's answer to one cancel, close or refund attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelAnswer {
    /// Done as asked: the order closed, or the refund made.
    Done,
    /// A cancel of an order that was paid after all: the platform gave the
    /// money back itself.
    Refunded {
        platform_txn: PlatformTxnId,
        amount: Money,
    },
    /// A cancel or close refused because the order was paid meanwhile.
    OrderPaid {
        platform_txn: PlatformTxnId,
        amount: Money,
    },
    /// Not done (refused, no answer, platform down): why, for operators.
    NotDone(String),
}

/// One attempt at the owed call, as the shell counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelAttempt {
    /// Including this one.
    pub attempts: u32,
    /// Random input for the backoff's jitter.
    pub jitter: u64,
}

/// Everything that can happen to a journaled QR payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QrCommand {
    /// Consumer-presented: the platform's answer to pay.
    PayAnswered(PlatformTradeState),
    /// Merchant-presented: the platform's answer to create order.
    OrderCreateAnswered(OrderCreation),
    /// The platform's answer to a query.
    QueryAnswered(PlatformTradeState),
    /// An asynchronous notification whose signature the shell verified:
    /// the platform says this order was paid.
    NotificationReceived {
        order_id: OrderId,
        platform_txn: PlatformTxnId,
        amount: Money,
    },
    /// The terminal printed the result.
    TerminalAcknowledged,
    /// The terminal's deadline passed (a sweep at the deadline).
    TerminalGaveUp,
    /// The query schedule fell due.
    QueryDue,
    /// The platform's answer to the owed cancel, close or refund.
    CancelAnswered {
        request_id: PlatformRequestId,
        answer: CancelAnswer,
        attempt: CancelAttempt,
        schedule: RetrySchedule,
    },
    /// An operator sends a dead-lettered call round again.
    Redrive,
}

impl QrCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::PayAnswered(_) => "pay_answered",
            Self::OrderCreateAnswered(_) => "order_create_answered",
            Self::QueryAnswered(_) => "query_answered",
            Self::NotificationReceived { .. } => "notification_received",
            Self::TerminalAcknowledged => "terminal_acknowledged",
            Self::TerminalGaveUp => "terminal_gave_up",
            Self::QueryDue => "query_due",
            Self::CancelAnswered { .. } => "cancel_answered",
            Self::Redrive => "redrive",
        }
    }
}

/// News other services hear about (`qr.*` events on the outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QrEvent {
    Paid,
    Failed,
    /// A cancel, close or refund became owed.
    CancelRequested {
        kind: CancelKind,
    },
    Closed,
    Refunded {
        reason: Option<ReversalReason>,
    },
    Confirmed {
        evidence: Evidence,
    },
    CancelDeadLettered {
        kind: CancelKind,
        attempts: u32,
    },
    /// The terminal acknowledged a payment the switch is giving back (S2).
    AcknowledgementConflict,
}

impl QrEvent {
    /// The event's type on the topic.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Paid => "qr.paid",
            Self::Failed => "qr.failed",
            Self::CancelRequested { .. } => "qr.cancel_requested",
            Self::Closed => "qr.closed",
            Self::Refunded { .. } => "qr.refunded",
            Self::Confirmed { .. } => "qr.confirmed",
            Self::CancelDeadLettered { .. } => "qr.cancel_dead_lettered",
            Self::AcknowledgementConflict => "qr.acknowledgement_conflict",
        }
    }

    /// One of the four outcomes a payment ends with.
    pub fn is_outcome(&self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Closed | Self::Refunded { .. } | Self::Confirmed { .. }
        )
    }
}

/// What the notifier owes for an event: a webhook to the merchant and
/// perhaps a push to the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QrNotice {
    pub webhook: WebhookType,
    pub push: Option<TerminalMessageKind>,
}

/// The notifier's duty for a QR event, the card table's rule in QR terms
/// (`notify`): a payment the terminal printed needs no word; one confirmed
/// by policy was never shown (reprint); money given back voids any receipt.
pub fn notice_for(event: &QrEvent) -> Option<QrNotice> {
    match event {
        QrEvent::Confirmed {
            evidence: Evidence::Policy,
        } => Some(QrNotice {
            webhook: WebhookType::PaymentConfirmed,
            push: Some(TerminalMessageKind::ReprintReceipt),
        }),
        QrEvent::Refunded { .. } => Some(QrNotice {
            webhook: WebhookType::PaymentReversed,
            push: Some(TerminalMessageKind::VoidReceipt),
        }),
        QrEvent::AcknowledgementConflict => Some(QrNotice {
            webhook: WebhookType::PaymentConflict,
            push: Some(TerminalMessageKind::VoidReceipt),
        }),
        QrEvent::Confirmed { .. }
        | QrEvent::Paid
        | QrEvent::Failed
        | QrEvent::CancelRequested { .. }
        | QrEvent::Closed
        | QrEvent::CancelDeadLettered { .. } => None,
    }
}

/// What a terminal is told of a QR payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QrTerminalAnswer {
    /// Keep waiting: the platform has not said.
    InProgress,
    /// Show the order's code (merchant-presented).
    ShowCode,
    /// Paid: print the receipt.
    Approved,
    /// The platform refused the payment.
    Declined,
    /// Not paid, and given up: no money moved.
    NotPaid,
    /// The money is being or was given back: any receipt is void.
    Void,
}

impl QrTerminalAnswer {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::ShowCode => "show_code",
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::NotPaid => "not_paid",
            Self::Void => "void",
        }
    }

    /// The sentence the terminal shows.
    pub fn message(&self) -> &'static str {
        match self {
            Self::InProgress => "Waiting for the shopper to confirm on the phone",
            Self::ShowCode => "Show the code to the shopper",
            Self::Approved => "Paid",
            Self::Declined => "Payment refused by the wallet",
            Self::NotPaid => "Not paid; the order is cancelled",
            Self::Void => "Void: the payment is refunded to the shopper; do not hand over goods",
        }
    }
}

/// What the terminal is told for a payment, in every state: the one
/// mapping the terminal edge (gRPC and ISO 8583) answers with.
pub fn terminal_answer(payment: &QrPayment) -> QrTerminalAnswer {
    let refunding = payment
        .owed
        .as_ref()
        .is_some_and(|owed| owed.kind == CancelKind::Refund);
    match payment.state {
        QrState::Submitted | QrState::AwaitingPayment => QrTerminalAnswer::InProgress,
        QrState::OrderCreated => QrTerminalAnswer::ShowCode,
        QrState::Paid | QrState::Confirmed => QrTerminalAnswer::Approved,
        QrState::Failed => QrTerminalAnswer::Declined,
        QrState::Refunded => QrTerminalAnswer::Void,
        QrState::Cancelling | QrState::CancelDeadLettered if refunding => QrTerminalAnswer::Void,
        QrState::Cancelling | QrState::CancelDeadLettered | QrState::Closed => {
            QrTerminalAnswer::NotPaid
        }
    }
}

/// How an owed call leaves the queue.
pub type CancelClosed = ReversalClosed;

/// What the shell does besides writing the next record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QrEffect {
    /// Call the platform (pay, create order, query).
    Call(PlatformCall),
    /// Put the owed cancel, close or refund on the queue, due now.
    EnqueueCancel {
        kind: CancelKind,
        request_id: PlatformRequestId,
    },
    /// Repeat the owed call after `delay_ms`.
    RetryCancel { delay_ms: u64, last_error: String },
    /// Take the owed call off the queue.
    CloseCancel(CancelClosed),
    /// Query again at `at`.
    ScheduleQuery { at: OffsetDateTime },
    /// Publish through the outbox, in the same transaction.
    Announce(QrEvent),
    /// The notifier owes this webhook and push.
    Notify(QrNotice),
    /// Answer the terminal's pending request (while it still waits).
    AnswerTerminal(QrTerminalAnswer),
}

/// One row of the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QrTransition {
    pub from: QrState,
    pub to: QrState,
    pub event: &'static str,
}

/// The next record, its audit row and the effects, all committed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrDecision {
    pub next: QrPayment,
    pub transition: Option<QrTransition>,
    pub effects: Vec<QrEffect>,
}

impl QrDecision {
    fn unchanged(current: &QrPayment) -> Self {
        QrDecision {
            next: current.clone(),
            transition: None,
            effects: Vec::new(),
        }
    }

    /// Nothing to write: a duplicate, a late word or a race lost.
    pub fn is_noop(&self) -> bool {
        self.transition.is_none() && self.effects.is_empty()
    }

    pub fn announcements(&self) -> impl Iterator<Item = &QrEvent> {
        self.effects.iter().filter_map(|effect| match effect {
            QrEffect::Announce(event) => Some(event),
            _ => None,
        })
    }
}

/// Why a command is refused; nothing is written. The texts complete a
/// sentence that starts with the payment's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrRefusal {
    #[error("is {mode}: '{command}' belongs to the other mode", mode = mode.as_str())]
    WrongMode { mode: QrMode, command: &'static str },
    #[error("is order {expected}, not {got}")]
    AnotherOrder { expected: OrderId, got: OrderId },
    #[error("is for {expected}, not {got}")]
    AmountMismatch { expected: Money, got: Money },
    #[error("was paid as platform transaction {expected}, not {got}")]
    AnotherPlatformTransaction {
        expected: PlatformTxnId,
        got: PlatformTxnId,
    },
    #[error("is {state}; the platform's '{word}' contradicts it")]
    Contradiction { state: QrState, word: &'static str },
    #[error("is not due for a query before {at}")]
    QueryNotDue { at: OffsetDateTime },
    #[error("is still awaited by its terminal until {deadline}")]
    TerminalStillWaiting { deadline: OffsetDateTime },
    #[error("is {state}: the terminal cannot have printed it")]
    NotPaidYet { state: QrState },
    #[error("is {state}: there is no dead-lettered call to redrive")]
    NothingToRedrive { state: QrState },
}

impl QrRefusal {
    /// Short stable name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WrongMode { .. } => "wrong_mode",
            Self::AnotherOrder { .. } => "another_order",
            Self::AmountMismatch { .. } => "amount_mismatch",
            Self::AnotherPlatformTransaction { .. } => "another_platform_transaction",
            Self::Contradiction { .. } => "contradiction",
            Self::QueryNotDue { .. } => "query_not_due",
            Self::TerminalStillWaiting { .. } => "terminal_still_waiting",
            Self::NotPaidYet { .. } => "not_paid_yet",
            Self::NothingToRedrive { .. } => "nothing_to_redrive",
        }
    }
}

impl QrPayment {
    /// The record a QR payment is journaled as before the platform is
    /// called, and the call to make. The first query is scheduled at once,
    /// so a pay or order whose answer is lost is still found out.
    pub fn open(intent: QrIntent, windows: QrWindows, now: OffsetDateTime) -> QrDecision {
        let call = match intent.mode {
            QrMode::ConsumerPresented => PlatformCall::Pay {
                request_id: PlatformRequestId::of(&intent.order_id, "pay"),
            },
            QrMode::MerchantPresented => PlatformCall::CreateOrder {
                request_id: PlatformRequestId::of(&intent.order_id, "order"),
            },
        };
        let first_query = now + windows.query_interval;
        let record = QrPayment {
            transaction_id: intent.transaction_id,
            key: intent.key,
            merchant_id: intent.merchant_id,
            mode: intent.mode,
            order_id: intent.order_id,
            amount: intent.amount,
            orphan_policy: intent.orphan_policy,
            state: QrState::Submitted,
            created_at: now,
            terminal_deadline: now + windows.terminal_wait,
            query_limit_at: now + windows.query_limit,
            next_query_at: Some(first_query),
            queries: 0,
            code: None,
            platform_txn: None,
            paid_at: None,
            acknowledged_at: None,
            terminal_gave_up: false,
            confirmation_evidence: None,
            owed: None,
            refund_reason: None,
            failure: None,
            conflict_at: None,
        };
        QrDecision {
            next: record,
            transition: None,
            effects: vec![
                QrEffect::Call(call),
                QrEffect::ScheduleQuery { at: first_query },
            ],
        }
    }

    /// The platform said the money moved.
    pub fn money_moved(&self) -> bool {
        self.platform_txn.is_some()
    }
}

/// Decides what `command` does to `current` at `now`.
pub fn decide(
    current: &QrPayment,
    command: QrCommand,
    windows: QrWindows,
    now: OffsetDateTime,
) -> Result<QrDecision, QrRefusal> {
    match command {
        QrCommand::PayAnswered(word) => {
            if current.mode != QrMode::ConsumerPresented {
                return Err(QrRefusal::WrongMode {
                    mode: current.mode,
                    command: "pay_answered",
                });
            }
            platform_said(current, word, now)
        }
        QrCommand::OrderCreateAnswered(creation) => {
            if current.mode != QrMode::MerchantPresented {
                return Err(QrRefusal::WrongMode {
                    mode: current.mode,
                    command: "order_create_answered",
                });
            }
            order_created(current, creation, now)
        }
        QrCommand::QueryAnswered(word) => platform_said(current, word, now),
        QrCommand::NotificationReceived {
            order_id,
            platform_txn,
            amount,
        } => {
            if order_id != current.order_id {
                return Err(QrRefusal::AnotherOrder {
                    expected: current.order_id.clone(),
                    got: order_id,
                });
            }
            platform_said(
                current,
                PlatformTradeState::Paid {
                    platform_txn,
                    amount,
                },
                now,
            )
        }
        QrCommand::TerminalAcknowledged => acknowledged(current, now),
        QrCommand::TerminalGaveUp => {
            if now < current.terminal_deadline {
                return Err(QrRefusal::TerminalStillWaiting {
                    deadline: current.terminal_deadline,
                });
            }
            if current.terminal_gave_up || current.state.is_final() {
                return Ok(QrDecision::unchanged(current));
            }
            let mut next = current.clone();
            next.terminal_gave_up = true;
            if current.state == QrState::Paid {
                // Paid, told, never printed: an orphan (S3).
                return Ok(orphan(current, next, now));
            }
            // The switch keeps querying: the platform's final word decides.
            Ok(QrDecision {
                next,
                transition: None,
                effects: Vec::new(),
            })
        }
        QrCommand::QueryDue => query_due(current, windows, now),
        QrCommand::CancelAnswered {
            request_id,
            answer,
            attempt,
            schedule,
        } => cancel_answered(current, request_id, answer, attempt, schedule, now),
        QrCommand::Redrive => {
            if current.state != QrState::CancelDeadLettered {
                return Err(QrRefusal::NothingToRedrive {
                    state: current.state,
                });
            }
            let Some(owed) = current.owed.clone() else {
                return Err(QrRefusal::NothingToRedrive {
                    state: current.state,
                });
            };
            let mut next = current.clone();
            next.state = QrState::Cancelling;
            let effects = vec![QrEffect::EnqueueCancel {
                kind: owed.kind,
                // The same request id: the platform treats it as the same call.
                request_id: owed.request_id.clone(),
            }];
            // Its age starts again: a redriven call gets a whole schedule.
            next.owed = Some(OwedCall { since: now, ..owed });
            Ok(moved(current, next, "redriven", effects))
        }
    }
}

/// The terminal still waits for this payment's answer.
fn terminal_waits(payment: &QrPayment, now: OffsetDateTime) -> bool {
    !payment.terminal_gave_up && now < payment.terminal_deadline
}

fn order_created(
    current: &QrPayment,
    creation: OrderCreation,
    now: OffsetDateTime,
) -> Result<QrDecision, QrRefusal> {
    if current.state != QrState::Submitted {
        // A repeated or late answer: the order's fate is known otherwise.
        return Ok(QrDecision::unchanged(current));
    }
    match creation {
        OrderCreation::Created { code } => {
            let mut next = current.clone();
            next.state = QrState::OrderCreated;
            next.code = Some(code);
            let mut effects = Vec::new();
            if terminal_waits(current, now) {
                effects.push(QrEffect::AnswerTerminal(QrTerminalAnswer::ShowCode));
            }
            Ok(moved(current, next, "order_created", effects))
        }
        OrderCreation::Refused { reason } => Ok(failed(current, reason, now)),
        OrderCreation::Unknown => {
            let mut next = current.clone();
            next.state = QrState::AwaitingPayment;
            Ok(moved(current, next, "order_unknown", Vec::new()))
        }
    }
}

/// The platform's word on the order, from a pay answer, a query or a
/// notification: one rule for all three, so they cannot disagree.
fn platform_said(
    current: &QrPayment,
    word: PlatformTradeState,
    now: OffsetDateTime,
) -> Result<QrDecision, QrRefusal> {
    use QrState as S;
    let word_name = word.name();
    let contradiction = || QrRefusal::Contradiction {
        state: current.state,
        word: word_name,
    };
    let refunding = current
        .owed
        .as_ref()
        .is_some_and(|owed| owed.kind == CancelKind::Refund);
    match word {
        PlatformTradeState::Paid {
            platform_txn,
            amount,
        } => {
            if amount != current.amount {
                return Err(QrRefusal::AmountMismatch {
                    expected: current.amount,
                    got: amount,
                });
            }
            if let Some(known) = &current.platform_txn {
                if *known != platform_txn {
                    return Err(QrRefusal::AnotherPlatformTransaction {
                        expected: known.clone(),
                        got: platform_txn,
                    });
                }
                // Known already: a duplicate notification or a repeat.
                return Ok(QrDecision::unchanged(current));
            }
            let mut next = current.clone();
            next.platform_txn = Some(platform_txn);
            next.paid_at = Some(now);
            next.next_query_at = None;
            match current.state {
                S::Submitted | S::OrderCreated | S::AwaitingPayment => {
                    next.state = S::Paid;
                    if !terminal_waits(current, now) {
                        // Paid after the terminal stopped waiting (S3).
                        return Ok(orphan(current, next, now));
                    }
                    Ok(moved(
                        current,
                        next,
                        "paid",
                        vec![
                            QrEffect::Announce(QrEvent::Paid),
                            QrEffect::AnswerTerminal(QrTerminalAnswer::Approved),
                        ],
                    ))
                }
                // The payment raced the close or cancel: the money moved,
                // so what is owed now is a refund (one outcome, refunded).
                S::Cancelling | S::CancelDeadLettered => Ok(refund_owed(
                    current,
                    next,
                    ReversalReason::LateIssuerResponse,
                    now,
                )),
                // Without a platform transaction these cannot be paid:
                // a closed or failed order the platform now calls paid.
                S::Failed | S::Closed | S::Paid | S::Refunded | S::Confirmed => {
                    Err(contradiction())
                }
            }
        }
        PlatformTradeState::InProgress
        | PlatformTradeState::NotPaid
        | PlatformTradeState::Unknown => match current.state {
            S::Submitted => {
                let mut next = current.clone();
                next.state = S::AwaitingPayment;
                Ok(moved(current, next, "awaiting_payment", Vec::new()))
            }
            // Nothing new: the query schedule carries on.
            _ => Ok(QrDecision::unchanged(current)),
        },
        PlatformTradeState::Failed { reason } => match current.state {
            S::Submitted | S::OrderCreated | S::AwaitingPayment => Ok(failed(current, reason, now)),
            // A cancel or close under way ends by its own answer.
            _ => Ok(QrDecision::unchanged(current)),
        },
        PlatformTradeState::Closed => match current.state {
            S::Submitted | S::OrderCreated | S::AwaitingPayment => {
                Ok(closed(current, current.clone(), Vec::new(), now))
            }
            S::Cancelling | S::CancelDeadLettered if !refunding => Ok(closed(
                current,
                current.clone(),
                vec![QrEffect::CloseCancel(CancelClosed::Acknowledged)],
                now,
            )),
            S::Closed | S::Failed => Ok(QrDecision::unchanged(current)),
            S::Cancelling | S::CancelDeadLettered | S::Paid | S::Refunded | S::Confirmed => {
                Err(contradiction())
            }
        },
        PlatformTradeState::Refunded {
            platform_txn,
            amount,
        } => match current.state {
            // The money moved and came back: whatever was owed (the refund,
            // or a cancel the platform answered by refunding a payment the
            // switch never heard of) is done.
            S::Cancelling | S::CancelDeadLettered => {
                if amount != current.amount {
                    return Err(QrRefusal::AmountMismatch {
                        expected: current.amount,
                        got: amount,
                    });
                }
                let mut next = current.clone();
                match &current.platform_txn {
                    Some(known) if *known != platform_txn => {
                        return Err(QrRefusal::AnotherPlatformTransaction {
                            expected: known.clone(),
                            got: platform_txn,
                        });
                    }
                    Some(_) => {}
                    None => {
                        next.platform_txn = Some(platform_txn);
                        next.paid_at = Some(now);
                        next.refund_reason = Some(ReversalReason::LateIssuerResponse);
                    }
                }
                let mut decision = refunded(current, next);
                decision
                    .effects
                    .insert(0, QrEffect::CloseCancel(CancelClosed::Acknowledged));
                Ok(decision)
            }
            S::Refunded => Ok(QrDecision::unchanged(current)),
            _ => Err(contradiction()),
        },
    }
}

fn acknowledged(current: &QrPayment, now: OffsetDateTime) -> Result<QrDecision, QrRefusal> {
    use QrState as S;
    let refunding = current
        .owed
        .as_ref()
        .is_some_and(|owed| owed.kind == CancelKind::Refund);
    match current.state {
        S::Paid => {
            let mut next = current.clone();
            next.state = S::Confirmed;
            next.acknowledged_at = Some(now);
            next.confirmation_evidence = Some(Evidence::TerminalAcknowledgement);
            Ok(moved(
                current,
                next,
                "confirmed",
                vec![QrEffect::Announce(QrEvent::Confirmed {
                    evidence: Evidence::TerminalAcknowledgement,
                })],
            ))
        }
        S::Refunded => Ok(conflict(current, now)),
        S::Cancelling | S::CancelDeadLettered if refunding => Ok(conflict(current, now)),
        // A repeat, or a decline the terminal printed: nothing to do.
        S::Confirmed | S::Failed | S::Closed => Ok(QrDecision::unchanged(current)),
        S::Submitted
        | S::OrderCreated
        | S::AwaitingPayment
        | S::Cancelling
        | S::CancelDeadLettered => Err(QrRefusal::NotPaidYet {
            state: current.state,
        }),
    }
}

/// The terminal acknowledged a payment the switch gives back: its receipt
/// is void (S2 in QR terms). Said once.
fn conflict(current: &QrPayment, now: OffsetDateTime) -> QrDecision {
    if current.conflict_at.is_some() {
        return QrDecision::unchanged(current);
    }
    let mut next = current.clone();
    next.acknowledged_at = current.acknowledged_at.or(Some(now));
    next.conflict_at = Some(now);
    let event = QrEvent::AcknowledgementConflict;
    let notice = notice_for(&event);
    let mut effects = vec![QrEffect::Announce(event)];
    effects.extend(notice.map(QrEffect::Notify));
    QrDecision {
        next,
        transition: None,
        effects,
    }
}

fn query_due(
    current: &QrPayment,
    windows: QrWindows,
    now: OffsetDateTime,
) -> Result<QrDecision, QrRefusal> {
    let due_at = match (current.state.awaits_payment(), current.next_query_at) {
        (true, Some(at)) => at,
        // Decided meanwhile: nothing to query.
        _ => return Ok(QrDecision::unchanged(current)),
    };
    if now < due_at {
        return Err(QrRefusal::QueryNotDue { at: due_at });
    }
    if now >= current.query_limit_at {
        // No payment in time: give the order up. A payment that lands now
        // is answered "paid" to the close and becomes a refund.
        let mut next = current.clone();
        next.next_query_at = None;
        let kind = current.mode.unpaid_call();
        return Ok(cancel_owed(current, next, kind, now));
    }
    let at = now + windows.query_interval;
    let mut next = current.clone();
    next.next_query_at = Some(at);
    next.queries = current.queries.saturating_add(1);
    Ok(QrDecision {
        next,
        transition: None,
        effects: vec![
            QrEffect::Call(PlatformCall::Query {
                order_id: current.order_id.clone(),
            }),
            QrEffect::ScheduleQuery { at },
        ],
    })
}

fn cancel_answered(
    current: &QrPayment,
    request_id: PlatformRequestId,
    answer: CancelAnswer,
    attempt: CancelAttempt,
    schedule: RetrySchedule,
    now: OffsetDateTime,
) -> Result<QrDecision, QrRefusal> {
    let owed = match &current.owed {
        Some(owed)
            if owed.request_id == request_id
                && matches!(
                    current.state,
                    QrState::Cancelling | QrState::CancelDeadLettered
                ) =>
        {
            owed.clone()
        }
        // An answer to a call no longer owed (a close overtaken by the
        // payment, a repeat after the end): changes nothing.
        _ => return Ok(QrDecision::unchanged(current)),
    };
    let mut effects = vec![QrEffect::CloseCancel(CancelClosed::Acknowledged)];
    match answer {
        CancelAnswer::Done => {
            if owed.kind == CancelKind::Refund {
                let mut decision = refunded(current, current.clone());
                effects.append(&mut decision.effects);
                decision.effects = effects;
                Ok(decision)
            } else {
                Ok(closed(current, current.clone(), effects, now))
            }
        }
        CancelAnswer::Refunded {
            platform_txn,
            amount,
        } => {
            if amount != current.amount {
                return Err(QrRefusal::AmountMismatch {
                    expected: current.amount,
                    got: amount,
                });
            }
            let mut next = current.clone();
            // The platform says it gave money back: the money had moved.
            if next.platform_txn.is_none() {
                next.platform_txn = Some(platform_txn);
                next.paid_at = Some(now);
            }
            next.refund_reason = current
                .refund_reason
                .or(Some(ReversalReason::LateIssuerResponse));
            let mut decision = refunded(current, next);
            effects.append(&mut decision.effects);
            decision.effects = effects;
            Ok(decision)
        }
        CancelAnswer::OrderPaid {
            platform_txn,
            amount,
        } if owed.kind != CancelKind::Refund => {
            // The close lost the race: the same word as a notification.
            platform_said(
                current,
                PlatformTradeState::Paid {
                    platform_txn,
                    amount,
                },
                now,
            )
        }
        CancelAnswer::OrderPaid { .. } => not_done(
            current,
            &owed,
            "platform answered 'paid' to a refund".to_owned(),
            attempt,
            schedule,
            now,
        ),
        CancelAnswer::NotDone(why) => not_done(current, &owed, why, attempt, schedule, now),
    }
}

fn not_done(
    current: &QrPayment,
    owed: &OwedCall,
    why: String,
    attempt: CancelAttempt,
    schedule: RetrySchedule,
    now: OffsetDateTime,
) -> Result<QrDecision, QrRefusal> {
    if current.state != QrState::Cancelling {
        // Dead-lettered already: a late failure changes nothing.
        return Ok(QrDecision::unchanged(current));
    }
    let age_ms = u64::try_from((now - owed.since).whole_milliseconds()).unwrap_or(0);
    match schedule.after_failure(attempt.attempts, age_ms, attempt.jitter) {
        NextAttempt::After(delay_ms) => Ok(QrDecision {
            next: current.clone(),
            transition: None,
            effects: vec![QrEffect::RetryCancel {
                delay_ms,
                last_error: why,
            }],
        }),
        NextAttempt::DeadLetter => {
            let mut next = current.clone();
            next.state = QrState::CancelDeadLettered;
            Ok(moved(
                current,
                next,
                "cancel_dead_lettered",
                vec![
                    QrEffect::CloseCancel(CancelClosed::DeadLettered),
                    QrEffect::Announce(QrEvent::CancelDeadLettered {
                        kind: owed.kind,
                        attempts: attempt.attempts,
                    }),
                ],
            ))
        }
    }
}

/// A paid payment without the terminal's acknowledgement, decided by the
/// merchant's policy. `next` carries the payment's facts, state `Paid`.
fn orphan(current: &QrPayment, mut next: QrPayment, now: OffsetDateTime) -> QrDecision {
    next.terminal_gave_up = true;
    match decide_at_deadline(current.orphan_policy) {
        OrphanDecision::Confirm(evidence) => {
            next.state = QrState::Confirmed;
            next.confirmation_evidence = Some(evidence);
            next.next_query_at = None;
            let event = QrEvent::Confirmed { evidence };
            let notice = notice_for(&event);
            let mut effects = Vec::new();
            if current.state != QrState::Paid {
                effects.push(QrEffect::Announce(QrEvent::Paid));
            }
            effects.push(QrEffect::Announce(event));
            effects.extend(notice.map(QrEffect::Notify));
            moved(current, next, "confirmed", effects)
        }
        OrphanDecision::Reverse(reason) => {
            let mut decision = refund_owed(current, next, reason, now);
            if current.state != QrState::Paid {
                decision
                    .effects
                    .insert(0, QrEffect::Announce(QrEvent::Paid));
            }
            decision
        }
    }
}

fn refund_owed(
    current: &QrPayment,
    mut next: QrPayment,
    reason: ReversalReason,
    now: OffsetDateTime,
) -> QrDecision {
    next.refund_reason = Some(reason);
    let mut decision = cancel_owed(current, next, CancelKind::Refund, now);
    if matches!(
        current.state,
        QrState::Cancelling | QrState::CancelDeadLettered
    ) {
        // The close or cancel on the queue is replaced by the refund.
        decision
            .effects
            .insert(0, QrEffect::CloseCancel(CancelClosed::Acknowledged));
    }
    decision
}

fn cancel_owed(
    current: &QrPayment,
    mut next: QrPayment,
    kind: CancelKind,
    now: OffsetDateTime,
) -> QrDecision {
    let request_id = PlatformRequestId::of(&current.order_id, kind.as_str());
    next.state = QrState::Cancelling;
    next.next_query_at = None;
    next.owed = Some(OwedCall {
        kind,
        request_id: request_id.clone(),
        since: now,
    });
    let mut effects = vec![
        QrEffect::EnqueueCancel { kind, request_id },
        QrEffect::Announce(QrEvent::CancelRequested { kind }),
    ];
    if terminal_waits(&next, now) {
        effects.push(QrEffect::AnswerTerminal(terminal_answer(&next)));
    }
    moved(current, next, kind.as_str(), effects)
}

fn failed(current: &QrPayment, reason: String, now: OffsetDateTime) -> QrDecision {
    let mut next = current.clone();
    next.state = QrState::Failed;
    next.failure = Some(reason);
    next.next_query_at = None;
    let mut effects = vec![QrEffect::Announce(QrEvent::Failed)];
    if terminal_waits(current, now) {
        effects.push(QrEffect::AnswerTerminal(QrTerminalAnswer::Declined));
    }
    moved(current, next, "failed", effects)
}

fn closed(
    current: &QrPayment,
    mut next: QrPayment,
    mut effects: Vec<QrEffect>,
    now: OffsetDateTime,
) -> QrDecision {
    next.state = QrState::Closed;
    next.next_query_at = None;
    effects.push(QrEffect::Announce(QrEvent::Closed));
    if terminal_waits(current, now) {
        effects.push(QrEffect::AnswerTerminal(QrTerminalAnswer::NotPaid));
    }
    moved(current, next, "closed", effects)
}

fn refunded(current: &QrPayment, mut next: QrPayment) -> QrDecision {
    next.state = QrState::Refunded;
    next.next_query_at = None;
    let event = QrEvent::Refunded {
        reason: next.refund_reason,
    };
    let notice = notice_for(&event);
    let mut effects = vec![QrEffect::Announce(event)];
    effects.extend(notice.map(QrEffect::Notify));
    moved(current, next, "refunded", effects)
}

fn moved(
    current: &QrPayment,
    next: QrPayment,
    event: &'static str,
    effects: Vec<QrEffect>,
) -> QrDecision {
    QrDecision {
        transition: Some(QrTransition {
            from: current.state,
            to: next.state,
            event,
        }),
        next,
        effects,
    }
}

#[cfg(test)]
mod tests;
