//! The consumer of authorization's events: it keeps the batcher's record of
//! every approval (terminal, merchant, amount, and whether it is
//! unconfirmed, confirmed or reversed) that batches and windows are built
//! from. Each event becomes a `LedgerCommand` here, at the edge (an unknown
//! reason or evidence is refused, never mapped to a default); what it
//! changes is `switch_core::settlement::ledger::decide`'s call.

use std::collections::HashSet;

use sqlx::PgConnection;
use switch_core::{Evidence, LedgerCommand, ReversalReason, SharedClock, SystemClock};
use switch_platform::consumer::{EventHandler, Gathered, HandlerError, HandlerFuture};
use switch_platform::telemetry::set_parent_from_traceparent;
use switch_platform::timestamps::to_time;
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{AuthorizationFacts, EventEnvelope};
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::store::{self, Facts, LedgerError, NewApproval, Upserted};

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
fn reason_of(event: &EventEnvelope, reason: &str) -> Option<ReversalReason> {
    ReversalReason::parse(reason)
        .ok()
        .or_else(|| ignored(event, "unknown reversal reason"))
}

/// An event's evidence: `Some(None)` when it names none (proto3's empty
/// string), `None` (logged) when it names one that does not exist.
fn evidence_of(event: &EventEnvelope, evidence: &str) -> Option<Option<Evidence>> {
    if evidence.is_empty() {
        return Some(None);
    }
    match Evidence::parse(evidence) {
        Ok(evidence) => Some(Some(evidence)),
        Err(_) => ignored(event, "unknown evidence"),
    }
}

/// Approvals gathered for one statement and, besides their transactions,
/// their terminal keys: two approvals with one key never share a
/// statement, so the second meets the first and is rejected rather than
/// failing the batch.
#[derive(Default)]
struct PendingApprovals {
    gathered: Gathered<NewApproval>,
    keys: HashSet<(String, time::Date, String)>,
}

impl PendingApprovals {
    fn key(approval: &NewApproval) -> (String, time::Date, String) {
        (
            approval.terminal_id.clone(),
            approval.local_date,
            approval.stan.clone(),
        )
    }

    fn clashes_with(&self, approval: &NewApproval) -> bool {
        self.gathered.holds(approval.transaction_id) || self.keys.contains(&Self::key(approval))
    }

    fn add(&mut self, approval: NewApproval) {
        self.keys.insert(Self::key(&approval));
        self.gathered.add(approval.transaction_id, approval);
    }

    fn take(&mut self) -> Vec<NewApproval> {
        self.keys.clear();
        self.gathered.take()
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

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
        payload: &Payload,
    ) -> Result<(), HandlerError> {
        let transaction_id = || Uuid::parse_str(&event.transaction_id).ok();
        let none = Facts::default();
        match payload {
            Payload::AuthorizationApproved(approved) => {
                if let Some(approval) =
                    self.approval(event, approved.facts.as_ref(), &approved.approval_code)
                {
                    record_approval(conn, &self.metrics, &approval, LedgerCommand::Approve, None)
                        .await?;
                }
            }
            Payload::AuthorizationConfirmed(confirmed) => {
                // Confirmation follows the approval on the same partition;
                // inserting from its facts covers a consumer that started
                // after the approval was compacted away.
                if let (Some(approval), Some(evidence)) = (
                    self.approval(event, confirmed.facts.as_ref(), &confirmed.approval_code),
                    evidence_of(event, &confirmed.evidence),
                ) {
                    let command = LedgerCommand::Confirm { evidence };
                    record_approval(conn, &self.metrics, &approval, command, None).await?;
                }
            }
            Payload::ReversalRequested(requested) => {
                if let (Some(id), Some(reason)) =
                    (transaction_id(), reason_of(event, &requested.reason))
                {
                    let command = LedgerCommand::RequestReversal { reason };
                    store::apply(conn, id, command, &none).await?;
                }
            }
            Payload::AuthorizationReversed(reversed) => {
                if let (Some(id), Some(reason)) =
                    (transaction_id(), reason_of(event, &reversed.reason))
                {
                    store::apply(conn, id, LedgerCommand::Reverse { reason }, &none).await?;
                }
            }
            Payload::AcknowledgementConflict(conflict) => {
                if let Some(id) = transaction_id() {
                    let detail = format!(
                        "acknowledged after the host reversed it ({})",
                        conflict.reversal_reason
                    );
                    store::flag_conflict(conn, id, "acknowledged_after_reversal", &detail).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
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
            self.apply(tx, event, payload).instrument(span).await
        })
    }

    /// Approvals (most of a busy topic) are recorded with one statement per
    /// run; every other event is applied on its own, in order. An event of
    /// a transaction whose approval is still gathered waits for it to be
    /// written first, and two approvals with the same terminal key never
    /// share a statement (the second must meet the first, to be rejected
    /// rather than fail the batch).
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let mut pending = PendingApprovals::default();
            for event in events {
                if let Some(Payload::AuthorizationApproved(approved)) = &event.payload {
                    if let Some(approval) =
                        self.approval(event, approved.facts.as_ref(), &approved.approval_code)
                    {
                        if pending.clashes_with(&approval) {
                            self.record(tx, pending.take()).await?;
                        }
                        pending.add(approval);
                    }
                    continue;
                }
                if pending.gathered.must_write_before(event) {
                    self.record(tx, pending.take()).await?;
                }
                self.handle(tx, event).await?;
            }
            self.record(tx, pending.take()).await
        })
    }

    /// Declines, timeouts, acknowledgements and late answers change nothing
    /// settlement keeps; they are not recorded.
    fn wants(&self, event: &EventEnvelope) -> bool {
        matches!(
            event.payload,
            Some(
                Payload::AuthorizationApproved(_)
                    | Payload::AuthorizationConfirmed(_)
                    | Payload::ReversalRequested(_)
                    | Payload::AuthorizationReversed(_)
                    | Payload::AcknowledgementConflict(_)
            )
        )
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
    }
}
