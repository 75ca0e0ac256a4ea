//! The consumer of authorization's events (and the settlement batcher's):
//! it opens a watch on every approval, turns an issuer timeout or an orphan
//! found by a batch upload into a decision due now, and closes the watch
//! when authorization announces a final decision, whatever the order in
//! which the events arrive.

use sqlx::PgConnection;
use switch_core::{OrphanDecision, ReversalReason, decide_batch_orphan};
use switch_platform::consumer::{EventHandler, HandlerError, HandlerFuture};
use switch_platform::telemetry::set_parent_from_traceparent;
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{AuthorizationFacts, EventEnvelope};
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::ReversalHandlerConfig;
use crate::metrics::Metrics;
use crate::outcome::{Outcome, deadline, timestamp};
use crate::store::{self, ApprovalFacts};

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

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
        payload: &Payload,
    ) -> Result<(), HandlerError> {
        let facts_of = |facts: Option<&AuthorizationFacts>| -> Option<ApprovalFacts> {
            let Ok(transaction_id) = Uuid::parse_str(&event.transaction_id) else {
                // Not retryable: every later delivery would fail the same way.
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
        };
        let now = OffsetDateTime::now_utc();
        match payload {
            Payload::AuthorizationApproved(approved) => {
                let Some(facts) = facts_of(approved.facts.as_ref()) else {
                    return Ok(());
                };
                let channel = approved.facts.as_ref().map_or("", |f| f.channel.as_str());
                let window = self.config.window_for(&facts.merchant_id, channel);
                let approved_at = event
                    .occurred_at
                    .as_ref()
                    .and_then(timestamp)
                    .unwrap_or(now);
                let deadline_at = deadline(event.occurred_at.as_ref(), now, window);
                if store::insert_open(conn, &facts, approved_at, deadline_at).await? {
                    tracing::debug!(
                        transaction_id = %facts.transaction_id,
                        merchant_id = %facts.merchant_id,
                        %deadline_at,
                        "Approval watched until its deadline."
                    );
                }
            }
            Payload::AuthorizationIssuerTimedOut(timed_out) => {
                let Some(facts) = facts_of(timed_out.facts.as_ref()) else {
                    return Ok(());
                };
                let due_at = event
                    .occurred_at
                    .as_ref()
                    .and_then(timestamp)
                    .unwrap_or(now);
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
                let Some(facts) = facts_of(found.facts.as_ref()) else {
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
                let Some(facts) = facts_of(closing_facts(other)) else {
                    return Ok(());
                };
                if matches!(other, Payload::AuthorizationReversed(_)) {
                    let reversed_at = event
                        .occurred_at
                        .as_ref()
                        .and_then(timestamp)
                        .unwrap_or(now);
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
}
