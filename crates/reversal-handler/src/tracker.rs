//! The consumer of authorization's events (and the settlement batcher's):
//! it opens a watch on every approval, turns an issuer timeout or an orphan
//! found by a batch upload into a decision due now, and closes the watch
//! when authorization announces a final decision, whatever the order in
//! which the events arrive.

use sqlx::PgConnection;
use switch_core::{OrphanDecision, ReversalReason, decide_batch_orphan};
use switch_platform::consumer::{EventHandler, Gathered, HandlerError, HandlerFuture};
use switch_platform::telemetry::{link_traceparent, set_parent_from_traceparent};
use switch_platform::timestamps::to_time;
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{AuthorizationApproved, AuthorizationFacts, EventEnvelope};
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::ReversalHandlerConfig;
use crate::metrics::Metrics;
use crate::outcome::{Outcome, deadline};
use crate::store::{self, ApprovalFacts, OpenWatch};

/// Applies authorization's events to the `approvals` table, inside the
/// consumer's exactly-once transaction.
pub struct ApprovalTracker {
    config: ReversalHandlerConfig,
    metrics: Metrics,
}

impl ApprovalTracker {
    pub fn new(config: ReversalHandlerConfig) -> Self {
        ApprovalTracker {
            config,
            metrics: Metrics::new(),
        }
    }

    /// The watch an approval opens, or `None` (logged) for an event that
    /// cannot be one.
    fn open_watch(
        &self,
        event: &EventEnvelope,
        approved: &AuthorizationApproved,
        now: OffsetDateTime,
    ) -> Option<OpenWatch> {
        let facts = facts_of(event, approved.facts.as_ref())?;
        let channel = approved.facts.as_ref().map_or("", |f| f.channel.as_str());
        let window = self.config.window_for(&facts.merchant_id, channel);
        let approved_at = event.occurred_at.as_ref().and_then(to_time).unwrap_or(now);
        let deadline_at = deadline(event.occurred_at.as_ref(), now, window);
        Some(OpenWatch {
            facts,
            approved_at,
            deadline_at,
        })
    }

    /// Opens `watches` with one statement.
    async fn open_watches(
        &self,
        conn: &mut PgConnection,
        watches: Vec<OpenWatch>,
    ) -> Result<(), HandlerError> {
        if watches.is_empty() {
            return Ok(());
        }
        let span = tracing::info_span!("reversal_handler.approvals", count = watches.len());
        for watch in watches.iter() {
            link_traceparent(&span, &watch.facts.traceparent);
        }
        let added = store::insert_open_many(conn, &watches)
            .instrument(span)
            .await?;
        tracing::debug!(
            approvals = watches.len(),
            added,
            "Approvals watched until their deadlines."
        );
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
        payload: &Payload,
    ) -> Result<(), HandlerError> {
        let facts_from = |facts: Option<&AuthorizationFacts>| facts_of(event, facts);
        let now = OffsetDateTime::now_utc();
        match payload {
            Payload::AuthorizationApproved(approved) => {
                if let Some(watch) = self.open_watch(event, approved, now) {
                    self.open_watches(conn, vec![watch]).await?;
                }
            }
            Payload::AuthorizationIssuerTimedOut(timed_out) => {
                let Some(facts) = facts_from(timed_out.facts.as_ref()) else {
                    return Ok(());
                };
                let due_at = event.occurred_at.as_ref().and_then(to_time).unwrap_or(now);
                let reason = ReversalReason::IssuerTimeout;
                let decision = OrphanDecision::Reverse(reason);
                if store::insert_decided_now(conn, &facts, due_at, decision).await? {
                    self.metrics.orphan_detected(reason.as_str());
                    tracing::info!(
                        transaction_id = %facts.transaction_id,
                        merchant_id = %facts.merchant_id,
                        decision = "reverse",
                        reason = reason.as_str(),
                        "Issuer timed out; reversal owed."
                    );
                }
            }
            Payload::BatchOrphanFound(found) => {
                // The terminal's batch upload does not list it: decided
                // now, not at its deadline.
                let Some(facts) = facts_from(found.facts.as_ref()) else {
                    return Ok(());
                };
                let (_, policy) = self.config.policy_for(&facts.merchant_id);
                let decision = decide_batch_orphan(policy);
                if store::insert_decided_now(conn, &facts, now, decision).await? {
                    self.metrics
                        .orphan_detected(ReversalReason::BatchOrphan.as_str());
                    tracing::info!(
                        transaction_id = %facts.transaction_id,
                        merchant_id = %facts.merchant_id,
                        batch_number = %found.batch_number,
                        ?decision,
                        "Orphan found by batch upload; decided now."
                    );
                }
            }
            other => {
                let Some(outcome) = Outcome::of_event(other) else {
                    return Ok(());
                };
                let Some(facts) = facts_from(closing_facts(other)) else {
                    return Ok(());
                };
                if matches!(other, Payload::AuthorizationReversed(_)) {
                    let reversed_at = event.occurred_at.as_ref().and_then(to_time).unwrap_or(now);
                    if let Some(deadline_at) =
                        store::deadline_of(conn, facts.transaction_id).await?
                    {
                        let late = (reversed_at - deadline_at).whole_milliseconds();
                        self.metrics
                            .reversal_acknowledged(u64::try_from(late).unwrap_or(0));
                    }
                }
                if store::close_from_event(conn, &facts, &outcome).await? {
                    tracing::debug!(
                        transaction_id = %facts.transaction_id,
                        %outcome,
                        "Approval closed by authorization."
                    );
                }
            }
        }
        Ok(())
    }
}

/// The approval facts an event carries, or `None` (logged) without a valid
/// transaction id: not retryable, as every later delivery would fail the
/// same way.
fn facts_of(event: &EventEnvelope, facts: Option<&AuthorizationFacts>) -> Option<ApprovalFacts> {
    let Ok(transaction_id) = Uuid::parse_str(&event.transaction_id) else {
        tracing::error!(
            event_id = %event.event_id,
            event_type = %event.event_type,
            "Event without a valid transaction id ignored."
        );
        return None;
    };
    let facts = facts.cloned().unwrap_or_default();
    Some(ApprovalFacts {
        transaction_id,
        terminal_id: facts.terminal_id,
        merchant_id: facts.merchant_id,
        stan: facts.stan,
        local_date: facts.local_date,
        rrn: facts.rrn,
        traceparent: event.traceparent.clone(),
    })
}

fn closing_facts(payload: &Payload) -> Option<&AuthorizationFacts> {
    match payload {
        Payload::AuthorizationConfirmed(p) => p.facts.as_ref(),
        Payload::ReversalRequested(p) => p.facts.as_ref(),
        Payload::AuthorizationReversed(p) => p.facts.as_ref(),
        Payload::ReversalDeadLettered(p) => p.facts.as_ref(),
        _ => None,
    }
}

impl EventHandler for ApprovalTracker {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let Some(payload) = &event.payload else {
                return Ok(());
            };
            let span =
                tracing::info_span!("reversal_handler.event", event_type = %event.event_type);
            if !event.traceparent.is_empty() {
                set_parent_from_traceparent(&span, &event.traceparent, &event.tracestate);
            }
            self.apply(tx, event, payload).instrument(span).await
        })
    }

    /// Approvals (most of a busy topic) are opened with one statement per
    /// run; every other event is applied on its own, in order. An event of
    /// a transaction whose approval is still gathered waits for that
    /// approval to be written first, so each transaction's events apply in
    /// their order (different transactions touch different rows).
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [&'a EventEnvelope],
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let now = OffsetDateTime::now_utc();
            let mut pending: Gathered<OpenWatch> = Gathered::default();
            for event in events {
                if let Some(Payload::AuthorizationApproved(approved)) = &event.payload {
                    if let Some(watch) = self.open_watch(event, approved, now) {
                        let transaction_id = watch.facts.transaction_id;
                        if pending.holds(transaction_id) {
                            self.open_watches(tx, pending.take()).await?;
                        }
                        pending.add(transaction_id, watch);
                    }
                    continue;
                }
                if pending.must_write_before(event) {
                    self.open_watches(tx, pending.take()).await?;
                }
                self.handle(tx, event).await?;
            }
            self.open_watches(tx, pending.take()).await
        })
    }
}
