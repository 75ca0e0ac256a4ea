//! The consumer of authorization's events: it keeps the batcher's record of
//! every approval (terminal, merchant, amount, and whether it is
//! unconfirmed, confirmed or reversed) that batches and windows are built
//! from. Each event becomes a `LedgerCommand` here, at the edge (an unknown
//! reason or evidence is refused, never mapped to a default); what it
//! changes is `switch_core::settlement::ledger::decide`'s call.
//!
//! QR payments arrive on the same topic as `qr.*` events and enter the same
//! ledger (channel `qr`, ADR 31): `qr.paid` is the approval, `qr.confirmed`
//! its confirmation with the evidence, a refund owed to the platform
//! (`qr.cancel_requested`, reason `refund`) a reversal requested,
//! `qr.refunded` the reversal done. `qr.refund_completed` (a merchant
//! refund of a confirmed payment) records a refund debit instead, netted
//! against the merchant's next payout.

use std::collections::HashSet;

use sqlx::PgConnection;
use switch_core::orphan::{OrphanDecision, OrphanPolicy, decide_at_deadline};
use switch_core::qr::{CancelKind, OrderId};
use switch_core::{Currency, Evidence, LedgerCommand, ReversalReason, SharedClock, SystemClock};
use switch_platform::consumer::{EventHandler, Gathered, HandlerError, HandlerFuture};
use switch_platform::telemetry::set_parent_from_traceparent;
use switch_platform::timestamps::to_time;
use switch_proto::domain::{optional, required};
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{self as pb, AuthorizationFacts, EventEnvelope, QrPaymentEvent};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::Instrument;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::store::{self, Facts, LedgerError, NewApproval, NewRefundDebit, Upserted};

pub struct ApprovalLedger {
    metrics: Metrics,
    clock: SharedClock,
}

/// A row that does not parse is retried, not skipped: settlement does not
/// guess about money, and an operator must see it.
impl From<LedgerError> for HandlerError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Database(e) => HandlerError::Database(e),
            LedgerError::Corrupt(e) => HandlerError::Retry(e.to_string()),
        }
    }
}

/// Records an approval in the ledger ([`store::record`]) and makes one the
/// ledger rejected visible: it is not paid until an operator resolves it.
pub async fn record_approval(
    conn: &mut PgConnection,
    metrics: &Metrics,
    approval: &NewApproval,
    command: LedgerCommand,
    batch_number: Option<&str>,
) -> Result<Upserted, LedgerError> {
    let upserted = store::record(conn, approval, command, batch_number).await?;
    if let Upserted::KeyHeldBy(holder) = upserted {
        metrics.ledger_rejected();
        metrics.open_rejections(store::open_rejections(conn).await?);
        tracing::error!(
            transaction_id = %approval.transaction_id,
            terminal_id = %approval.terminal_id,
            stan = %approval.stan,
            local_date = %approval.local_date,
            held_by = %holder,
            "Approval rejected by the ledger: another transaction holds its terminal key. \
             Recorded in ledger_rejections; not paid until resolved."
        );
    }
    Ok(upserted)
}

/// An approval's facts as the batcher stores them, or `None` (logged) when
/// the event cannot be one: every later delivery would fail the same way.
pub fn approval_from_facts(
    event: &EventEnvelope,
    facts: Option<&AuthorizationFacts>,
    approval_code: Option<&str>,
    now: OffsetDateTime,
) -> Option<NewApproval> {
    let reject = |why: &str| ignored(event, why);
    let Ok(transaction_id) = Uuid::parse_str(&event.transaction_id) else {
        return reject("no valid transaction id");
    };
    let Some(facts) = facts else {
        return reject("no facts");
    };
    let Some(amount) = facts.amount.as_ref() else {
        return reject("no amount");
    };
    if amount.minor_units <= 0 {
        return reject("amount not positive");
    }
    let Ok(local_date) = switch_core::LocalDate::parse(&facts.local_date) else {
        return reject("bad local date");
    };
    let approved_at = event.occurred_at.as_ref().and_then(to_time).unwrap_or(now);
    Some(NewApproval {
        transaction_id,
        terminal_id: facts.terminal_id.clone(),
        merchant_id: facts.merchant_id.clone(),
        stan: facts.stan.clone(),
        local_date: local_date.date(),
        rrn: facts.rrn.clone(),
        masked_pan: facts.masked_pan.clone(),
        amount_minor: amount.minor_units,
        currency: amount.currency.clone(),
        channel: if facts.channel.is_empty() {
            "card".into()
        } else {
            facts.channel.clone()
        },
        approval_code: approval_code.filter(|c| !c.is_empty()).map(str::to_owned),
        approved_at,
        qr_order_id: None,
    })
}

/// The `qr.*` events the ledger follows.
const QR_EVENTS: [&str; 5] = [
    "qr.paid",
    "qr.confirmed",
    "qr.cancel_requested",
    "qr.refunded",
    "qr.refund_completed",
];

/// A QR payment's facts as the batcher stores them: channel `qr`, its
/// order id, no RRN and no card (empty). `None` (logged) when the event
/// cannot be one.
pub fn qr_approval(
    event: &EventEnvelope,
    payment: Option<&pb::QrPaymentRecord>,
    now: OffsetDateTime,
) -> Option<NewApproval> {
    let reject = |why: &str| ignored(event, why);
    let Some(payment) = payment else {
        return reject("no payment");
    };
    let Ok(transaction_id) = Uuid::parse_str(&payment.transaction_id) else {
        return reject("no valid transaction id");
    };
    let Some(amount) = payment.amount.as_ref() else {
        return reject("no amount");
    };
    if amount.minor_units <= 0 {
        return reject("amount not positive");
    }
    let Ok(local_date) = switch_core::LocalDate::parse(&payment.local_date) else {
        return reject("bad local date");
    };
    let Ok(order_id) = OrderId::parse(&payment.order_id) else {
        return reject("bad order id");
    };
    if payment.terminal_id.is_empty() || payment.merchant_id.is_empty() || payment.stan.is_empty() {
        return reject("no terminal, merchant or STAN");
    }
    Some(NewApproval {
        transaction_id,
        terminal_id: payment.terminal_id.clone(),
        merchant_id: payment.merchant_id.clone(),
        stan: payment.stan.clone(),
        local_date: local_date.date(),
        rrn: String::new(),
        masked_pan: String::new(),
        amount_minor: amount.minor_units,
        currency: amount.currency.clone(),
        channel: switch_core::Channel::Qr.as_str().to_owned(),
        approval_code: None,
        approved_at: event.occurred_at.as_ref().and_then(to_time).unwrap_or(now),
        qr_order_id: Some(order_id.as_str().to_owned()),
    })
}

/// The reason a QR refund owed to the platform is recorded with until the
/// platform's word brings the real one (`qr.refunded`): the QR core owes a
/// refund of a paid payment when the merchant's reverse policy decides an
/// orphan, so it is that decision's reason.
fn qr_refund_owed_reason() -> ReversalReason {
    match decide_at_deadline(OrphanPolicy::Reverse) {
        OrphanDecision::Reverse(reason) => reason,
        OrphanDecision::Confirm(_) => ReversalReason::NoTerminalAcknowledgement,
    }
}

/// A merchant refund the platform completed, as a refund debit, or `None`
/// (logged) when the event cannot be one.
fn refund_debit(event: &EventEnvelope, qr: &QrPaymentEvent) -> Option<NewRefundDebit> {
    let reject = |why: &str| ignored(event, why);
    let Some(refund) = qr.refund.as_ref() else {
        return reject("no refund");
    };
    if refund.refund_id.is_empty() || refund.refund_id.len() > 24 {
        return reject("bad refund id");
    }
    if refund.state != "refunded" {
        return reject("refund not completed");
    }
    let transaction_id = [
        refund.transaction_id.as_str(),
        qr.payment
            .as_ref()
            .map_or("", |p| p.transaction_id.as_str()),
    ]
    .into_iter()
    .find_map(|id| Uuid::parse_str(id).ok());
    let Some(transaction_id) = transaction_id else {
        return reject("no valid transaction id");
    };
    let merchant_id = if refund.merchant_id.is_empty() {
        qr.payment
            .as_ref()
            .map(|p| p.merchant_id.clone())
            .unwrap_or_default()
    } else {
        refund.merchant_id.clone()
    };
    if merchant_id.is_empty() {
        return reject("no merchant");
    }
    let Some(amount) = refund.amount.as_ref() else {
        return reject("no refund amount");
    };
    if amount.minor_units <= 0 {
        return reject("refund amount not positive");
    }
    let Ok(currency) = Currency::parse(&amount.currency) else {
        return reject("unknown refund currency");
    };
    let Ok(completed_at) = OffsetDateTime::parse(&refund.completed_at, &Rfc3339) else {
        return reject("no valid completed_at");
    };
    Some(NewRefundDebit {
        refund_id: refund.refund_id.clone(),
        transaction_id,
        merchant_id,
        amount_minor: amount.minor_units,
        currency: currency.code().to_owned(),
        completed_at,
    })
}

/// Logs an event settlement cannot apply; every later delivery would fail
/// the same way.
fn ignored<T>(event: &EventEnvelope, why: &str) -> Option<T> {
    tracing::error!(
        event_id = %event.event_id,
        event_type = %event.event_type,
        why,
        "Event ignored by settlement."
    );
    None
}

/// An event's reversal reason, or `None` (logged) when it is not one.
fn reason_of(event: &EventEnvelope, reason: i32) -> Option<ReversalReason> {
    required::<pb::ReversalReason, _>("reason", reason)
        .ok()
        .or_else(|| ignored(event, "unspecified or unknown reversal reason"))
}

/// An event's evidence: `Some(None)` when it names none (UNSPECIFIED),
/// `None` (logged) when it names a number this build does not know.
fn evidence_of(event: &EventEnvelope, evidence: i32) -> Option<Option<Evidence>> {
    match optional::<pb::Evidence, _>("evidence", evidence) {
        Ok(evidence) => Some(evidence),
        Err(_) => ignored(event, "unknown evidence"),
    }
}

type TerminalKey = (String, time::Date, String);

/// Approvals and status commands gathered for one statement each and,
/// besides their transactions, the terminal keys of their facts. A
/// transaction has at most one gathered row (its next event waits for it
/// to be written), and two rows with one terminal key never share a
/// statement: the second must meet the first, to be rejected rather than
/// fail the batch. Approvals and commands then touch different rows and
/// keys, so the order the two statements run in does not matter.
#[derive(Default)]
struct Pending {
    approvals: Gathered<NewApproval>,
    commands: Gathered<Command>,
    keys: HashSet<TerminalKey>,
}

impl Pending {
    fn key(approval: &NewApproval) -> TerminalKey {
        (
            approval.terminal_id.clone(),
            approval.local_date,
            approval.stan.clone(),
        )
    }

    fn holds(&self, transaction_id: Uuid) -> bool {
        self.approvals.holds(transaction_id) || self.commands.holds(transaction_id)
    }

    /// Whether `event` may only be applied once the gathered rows are
    /// written.
    fn must_write_before(&self, event: &EventEnvelope) -> bool {
        self.approvals.must_write_before(event) || self.commands.must_write_before(event)
    }

    fn clashes_with(&self, transaction_id: Uuid, approval: Option<&NewApproval>) -> bool {
        self.holds(transaction_id) || approval.is_some_and(|a| self.keys.contains(&Self::key(a)))
    }

    fn add(&mut self, input: Input) {
        match input {
            Input::Approval(approval) => {
                self.keys.insert(Self::key(&approval));
                self.approvals.add(approval.transaction_id, approval);
            }
            Input::Command(command) => {
                if let Some(approval) = &command.approval {
                    self.keys.insert(Self::key(approval));
                }
                self.commands.add(command.transaction_id, command);
            }
            Input::Flag { .. } | Input::Refund(_) => {}
        }
    }

    fn take(&mut self) -> (Vec<NewApproval>, Vec<Command>) {
        self.keys.clear();
        (self.approvals.take(), self.commands.take())
    }
}

impl Default for ApprovalLedger {
    fn default() -> Self {
        ApprovalLedger::new(Metrics::new(), SystemClock::shared())
    }
}

impl ApprovalLedger {
    pub(crate) fn new(metrics: Metrics, clock: SharedClock) -> Self {
        ApprovalLedger { metrics, clock }
    }

    fn approval(
        &self,
        event: &EventEnvelope,
        facts: Option<&AuthorizationFacts>,
        approval_code: &str,
    ) -> Option<NewApproval> {
        approval_from_facts(event, facts, Some(approval_code), self.clock.now())
    }

    /// Writes the gathered approvals: one statement for all of them, then
    /// the single-row path for any it did not add (already known, or a
    /// terminal key another transaction holds).
    async fn record(
        &self,
        conn: &mut PgConnection,
        approvals: Vec<NewApproval>,
    ) -> Result<(), HandlerError> {
        if approvals.is_empty() {
            return Ok(());
        }
        let added = store::insert_unconfirmed_many(conn, &approvals).await?;
        for approval in &approvals {
            if !added.contains(&approval.transaction_id) {
                record_approval(conn, &self.metrics, approval, LedgerCommand::Approve, None)
                    .await?;
            }
        }
        Ok(())
    }

    /// What `event` asks of the ledger, or `None` (logged where the event
    /// is broken) when nothing.
    fn input(&self, event: &EventEnvelope, payload: &Payload) -> Option<Input> {
        let transaction_id = || Uuid::parse_str(&event.transaction_id).ok();
        match payload {
            Payload::AuthorizationApproved(approved) => self
                .approval(event, approved.facts.as_ref(), &approved.approval_code)
                .map(Input::Approval),
            Payload::AuthorizationConfirmed(confirmed) => {
                // Confirmation follows the approval on the same partition;
                // inserting from its facts covers a consumer that started
                // after the approval was compacted away.
                let approval =
                    self.approval(event, confirmed.facts.as_ref(), &confirmed.approval_code)?;
                let evidence = evidence_of(event, confirmed.evidence)?;
                Some(Input::Command(Command {
                    transaction_id: approval.transaction_id,
                    command: LedgerCommand::Confirm { evidence },
                    approval: Some(approval),
                }))
            }
            Payload::ReversalRequested(requested) => Some(Input::Command(Command {
                transaction_id: transaction_id()?,
                command: LedgerCommand::RequestReversal {
                    reason: reason_of(event, requested.reason)?,
                },
                approval: None,
            })),
            Payload::AuthorizationReversed(reversed) => Some(Input::Command(Command {
                transaction_id: transaction_id()?,
                command: LedgerCommand::Reverse {
                    reason: reason_of(event, reversed.reason)?,
                },
                approval: None,
            })),
            Payload::AcknowledgementConflict(conflict) => Some(Input::Flag {
                transaction_id: transaction_id()?,
                detail: format!(
                    "acknowledged after the host reversed it ({})",
                    optional::<pb::ReversalReason, ReversalReason>(
                        "reversal_reason",
                        conflict.reversal_reason
                    )
                    .ok()
                    .flatten()
                    .map_or("unknown reason", |r| r.as_str())
                ),
            }),
            Payload::QrPayment(qr) => self.qr_input(event, qr),
            _ => None,
        }
    }

    /// What a `qr.*` event asks of the ledger: the mapping of ADR 31.
    fn qr_input(&self, event: &EventEnvelope, qr: &QrPaymentEvent) -> Option<Input> {
        let now = self.clock.now();
        match event.event_type.as_str() {
            "qr.paid" => qr_approval(event, qr.payment.as_ref(), now).map(Input::Approval),
            "qr.confirmed" => {
                let approval = qr_approval(event, qr.payment.as_ref(), now)?;
                let Ok(evidence) = Evidence::parse(&qr.reason) else {
                    return ignored(event, "unknown evidence");
                };
                Some(Input::Command(Command {
                    transaction_id: approval.transaction_id,
                    command: LedgerCommand::Confirm {
                        evidence: Some(evidence),
                    },
                    approval: Some(approval),
                }))
            }
            "qr.cancel_requested" => match CancelKind::parse(&qr.reason) {
                Ok(CancelKind::Refund) => Some(Input::Command(Command {
                    transaction_id: qr_approval(event, qr.payment.as_ref(), now)?.transaction_id,
                    command: LedgerCommand::RequestReversal {
                        reason: qr_refund_owed_reason(),
                    },
                    approval: None,
                })),
                // An unpaid order closed or cancelled: never approved.
                Ok(CancelKind::Cancel | CancelKind::Close) => None,
                Err(_) => ignored(event, "unknown cancel reason"),
            },
            "qr.refunded" => {
                let Ok(reason) = ReversalReason::parse(&qr.reason) else {
                    return ignored(event, "unknown or missing refund reason");
                };
                Some(Input::Command(Command {
                    transaction_id: qr_approval(event, qr.payment.as_ref(), now)?.transaction_id,
                    command: LedgerCommand::Reverse { reason },
                    approval: None,
                }))
            }
            "qr.refund_completed" => refund_debit(event, qr).map(Input::Refund),
            _ => None,
        }
    }

    /// Applies one input on its own.
    async fn apply(&self, conn: &mut PgConnection, input: Input) -> Result<(), HandlerError> {
        match input {
            Input::Approval(approval) => {
                record_approval(conn, &self.metrics, &approval, LedgerCommand::Approve, None)
                    .await?;
            }
            Input::Command(Command {
                command,
                approval: Some(approval),
                ..
            }) => {
                record_approval(conn, &self.metrics, &approval, command, None).await?;
            }
            Input::Command(Command {
                transaction_id,
                command,
                approval: None,
            }) => {
                store::apply_or_track(conn, transaction_id, command).await?;
            }
            Input::Flag {
                transaction_id,
                detail,
            } => {
                store::flag_conflict(conn, transaction_id, "acknowledged_after_reversal", &detail)
                    .await?;
            }
            Input::Refund(debit) => {
                if !store::record_refund_debit(conn, &debit).await? {
                    tracing::debug!(refund_id = %debit.refund_id, "Refund debit already recorded.");
                }
            }
        }
        Ok(())
    }

    /// Writes what is gathered: the approvals with one statement, the
    /// status commands with one lock and one update; then, one by one,
    /// approvals the statement did not add and commands of approvals the
    /// ledger does not know yet (recorded from their facts).
    async fn flush(
        &self,
        conn: &mut PgConnection,
        pending: &mut Pending,
    ) -> Result<(), HandlerError> {
        let (approvals, commands) = pending.take();
        self.record(conn, approvals).await?;
        if commands.is_empty() {
            return Ok(());
        }
        let batched: Vec<store::BatchedCommand> = commands
            .iter()
            .map(|c| store::BatchedCommand {
                transaction_id: c.transaction_id,
                command: c.command,
                approval_code: c.approval.as_ref().and_then(|a| a.approval_code.clone()),
            })
            .collect();
        let unknown: HashSet<Uuid> = store::apply_many(conn, &batched)
            .await?
            .into_iter()
            .collect();
        // Unknown to the ledger: recorded from their facts, or, without
        // facts, followed by their rejection if the ledger rejected them
        // (a reversal of a sale that was never approved changes nothing).
        let mut untracked = Vec::new();
        for command in commands {
            if !unknown.contains(&command.transaction_id) {
                continue;
            }
            match &command.approval {
                Some(approval) => {
                    record_approval(conn, &self.metrics, approval, command.command, None).await?;
                }
                None => untracked.push((command.transaction_id, command.command)),
            }
        }
        for (id, command) in store::track_rejected(conn, &untracked).await? {
            store::apply(conn, id, command, &Facts::default()).await?;
        }
        Ok(())
    }
}

/// What one event asks of the ledger.
enum Input {
    Approval(NewApproval),
    Command(Command),
    Flag {
        transaction_id: Uuid,
        detail: String,
    },
    /// A merchant refund to net against the merchant's next payout.
    Refund(NewRefundDebit),
}

impl Input {
    /// The transaction and facts of an input written in bulk (approvals
    /// and status commands); `None` for one applied on its own.
    fn gathered(&self) -> Option<(Uuid, Option<&NewApproval>)> {
        match self {
            Input::Approval(approval) => Some((approval.transaction_id, Some(approval))),
            Input::Command(command) => Some((command.transaction_id, command.approval.as_ref())),
            Input::Flag { .. } | Input::Refund(_) => None,
        }
    }
}

/// A status command (confirmation, reversal requested or done), with the
/// approval's facts when the event carries them for a ledger that has not
/// seen the approval.
struct Command {
    transaction_id: Uuid,
    command: LedgerCommand,
    approval: Option<NewApproval>,
}

impl EventHandler for ApprovalLedger {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let Some(payload) = &event.payload else {
                return Ok(());
            };
            let span = tracing::debug_span!("settlement.event", event_type = %event.event_type);
            if !event.traceparent.is_empty() {
                set_parent_from_traceparent(&span, &event.traceparent, &event.tracestate);
            }
            let Some(input) = self.input(event, payload) else {
                return Ok(());
            };
            self.apply(tx, input).instrument(span).await
        })
    }

    /// Approvals and confirmations (most of a busy topic) are written with
    /// one statement each per run of events, reversals with them; a
    /// conflict flag is applied on its own, in order. An event of a
    /// transaction with a gathered row waits for it to be written first,
    /// and two rows with the same terminal key never share a statement.
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let mut pending = Pending::default();
            for event in events {
                let Some(payload) = &event.payload else {
                    continue;
                };
                let Some(input) = self.input(event, payload) else {
                    continue;
                };
                match input.gathered() {
                    Some((transaction_id, approval)) => {
                        if pending.clashes_with(transaction_id, approval) {
                            self.flush(tx, &mut pending).await?;
                        }
                        pending.add(input);
                    }
                    None => {
                        if pending.must_write_before(event) {
                            self.flush(tx, &mut pending).await?;
                        }
                        self.handle(tx, event).await?;
                    }
                }
            }
            self.flush(tx, &mut pending).await
        })
    }

    /// Declines, timeouts, acknowledgements and late answers change nothing
    /// settlement keeps; they are not recorded. Nor are the `qr.*` events
    /// that change nothing here (failed, closed, dead-lettered calls).
    fn wants(&self, event: &EventEnvelope) -> bool {
        match event.payload {
            Some(
                Payload::AuthorizationApproved(_)
                | Payload::AuthorizationConfirmed(_)
                | Payload::ReversalRequested(_)
                | Payload::AuthorizationReversed(_)
                | Payload::AcknowledgementConflict(_),
            ) => true,
            Some(Payload::QrPayment(_)) => QR_EVENTS.contains(&event.event_type.as_str()),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use switch_proto::v1::{AuthorizationApproved, AuthorizationDeclined, TerminalAcknowledged};

    use super::*;

    fn with(payload: Payload) -> EventEnvelope {
        EventEnvelope {
            payload: Some(payload),
            ..EventEnvelope::default()
        }
    }

    #[test]
    fn only_events_that_change_the_ledger_are_recorded() {
        let ledger = ApprovalLedger::default();
        assert!(ledger.wants(&with(Payload::AuthorizationApproved(
            AuthorizationApproved::default()
        ))));
        assert!(!ledger.wants(&with(Payload::AuthorizationDeclined(
            AuthorizationDeclined::default()
        ))));
        assert!(!ledger.wants(&with(Payload::TerminalAcknowledged(
            TerminalAcknowledged::default()
        ))));
        assert!(!ledger.wants(&EventEnvelope::default()));
        let qr = |event_type: &str| EventEnvelope {
            event_type: event_type.into(),
            ..with(Payload::QrPayment(QrPaymentEvent::default()))
        };
        for wanted in QR_EVENTS {
            assert!(ledger.wants(&qr(wanted)), "{wanted}");
        }
        for unwanted in [
            "qr.failed",
            "qr.closed",
            "qr.cancel_dead_lettered",
            "qr.acknowledgement_conflict",
            "qr.refund_requested",
            "qr.refund_dead_lettered",
        ] {
            assert!(!ledger.wants(&qr(unwanted)), "{unwanted}");
        }
    }

    fn payment() -> pb::QrPaymentRecord {
        pb::QrPaymentRecord {
            transaction_id: Uuid::nil().to_string(),
            terminal_id: "TERM0001".into(),
            stan: "000042".into(),
            local_date: "2026-11-24".into(),
            merchant_id: "MERCHANT0000001".into(),
            order_id: "QR0000000042".into(),
            amount: Some(pb::Money {
                minor_units: 1_000,
                currency: "EUR".into(),
            }),
            ..Default::default()
        }
    }

    fn qr_event(event_type: &str, reason: &str) -> EventEnvelope {
        EventEnvelope {
            event_type: event_type.into(),
            ..with(Payload::QrPayment(QrPaymentEvent {
                payment: Some(payment()),
                reason: reason.into(),
                ..Default::default()
            }))
        }
    }

    fn command_of(ledger: &ApprovalLedger, event: &EventEnvelope) -> Option<LedgerCommand> {
        match ledger.input(event, event.payload.as_ref()?)? {
            Input::Command(c) => Some(c.command),
            Input::Approval(_) => Some(LedgerCommand::Approve),
            Input::Flag { .. } | Input::Refund(_) => None,
        }
    }

    #[test]
    fn qr_events_map_onto_ledger_commands_and_unknown_reasons_are_refused() {
        let ledger = ApprovalLedger::default();
        let paid = qr_event("qr.paid", "");
        let Some(Input::Approval(approval)) = ledger.input(&paid, paid.payload.as_ref().unwrap())
        else {
            panic!("qr.paid is an approval");
        };
        assert_eq!(approval.channel, "qr");
        assert_eq!(approval.qr_order_id.as_deref(), Some("QR0000000042"));
        assert_eq!(
            (approval.rrn.as_str(), approval.masked_pan.as_str()),
            ("", "")
        );
        let cases = [
            (
                qr_event("qr.confirmed", "policy"),
                Some(LedgerCommand::Confirm {
                    evidence: Some(Evidence::Policy),
                }),
            ),
            (qr_event("qr.confirmed", "gremlins"), None),
            (qr_event("qr.confirmed", ""), None),
            (
                qr_event("qr.cancel_requested", "refund"),
                Some(LedgerCommand::RequestReversal {
                    reason: ReversalReason::NoTerminalAcknowledgement,
                }),
            ),
            (qr_event("qr.cancel_requested", "close"), None),
            (qr_event("qr.cancel_requested", "cancel"), None),
            (qr_event("qr.cancel_requested", "later"), None),
            (
                qr_event("qr.refunded", "late_issuer_response"),
                Some(LedgerCommand::Reverse {
                    reason: ReversalReason::LateIssuerResponse,
                }),
            ),
            (qr_event("qr.refunded", ""), None),
            (qr_event("qr.failed", ""), None),
            (qr_event("qr.closed", ""), None),
        ];
        for (event, expected) in cases {
            assert_eq!(
                command_of(&ledger, &event),
                expected,
                "{} {:?}",
                event.event_type,
                event.payload
            );
        }
        let mut bad_order = qr_event("qr.paid", "");
        if let Some(Payload::QrPayment(qr)) = &mut bad_order.payload {
            qr.payment.as_mut().unwrap().order_id = "x".into();
        }
        assert!(command_of(&ledger, &bad_order).is_none());
    }

    #[test]
    fn a_completed_merchant_refund_is_a_debit_and_anything_less_is_refused() {
        let refund = |state: &str, currency: &str, completed_at: &str| {
            let mut event = qr_event("qr.refund_completed", "");
            if let Some(Payload::QrPayment(qr)) = &mut event.payload {
                qr.refund = Some(pb::QrRefundRecord {
                    refund_id: "R1".into(),
                    transaction_id: Uuid::nil().to_string(),
                    merchant_id: "MERCHANT0000001".into(),
                    amount: Some(pb::Money {
                        minor_units: 300,
                        currency: currency.into(),
                    }),
                    state: state.into(),
                    completed_at: completed_at.into(),
                    ..Default::default()
                });
            }
            event
        };
        let ok = refund("refunded", "EUR", "2026-11-24T12:00:00Z");
        let Payload::QrPayment(qr) = ok.payload.as_ref().unwrap() else {
            unreachable!()
        };
        let debit = refund_debit(&ok, qr).expect("a debit");
        assert_eq!(
            (
                debit.refund_id.as_str(),
                debit.amount_minor,
                debit.currency.as_str()
            ),
            ("R1", 300, "EUR")
        );
        for bad in [
            refund("requested", "EUR", "2026-11-24T12:00:00Z"),
            refund("refunded", "XXX", "2026-11-24T12:00:00Z"),
            refund("refunded", "EUR", ""),
        ] {
            let Payload::QrPayment(qr) = bad.payload.as_ref().unwrap() else {
                unreachable!()
            };
            assert!(refund_debit(&bad, qr).is_none());
        }
    }
}
