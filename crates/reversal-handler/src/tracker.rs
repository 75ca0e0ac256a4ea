//! The consumer of authorization's events (and the settlement batcher's):
//! it turns each event into a [`WatchCommand`] (an approval, an issuer
//! timeout, an orphan found by a batch upload, authorization's final
//! decision) and has the store apply it under the watch's row lock, with
//! `now` from the service's clock. Whatever the order in which the events
//! arrive, [`switch_core::watch::decide`] says what changes.

use std::collections::HashMap;

use sqlx::PgConnection;
use switch_core::{SharedClock, WatchCommand, WatchDecision};
use switch_platform::consumer::{EventHandler, Gathered, HandlerError, HandlerFuture};
use switch_platform::telemetry::{link_traceparent, set_parent_from_traceparent};
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{AuthorizationFacts, EventEnvelope};
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::ReversalHandlerConfig;
use crate::metrics::Metrics;
use crate::outcome::{occurred_at, of_event};
use crate::store::{self, ApprovalFacts};

/// Applies authorization's events to the `approvals` table, inside the
/// consumer's exactly-once transaction.
pub struct ApprovalTracker {
    config: ReversalHandlerConfig,
    metrics: Metrics,
    clock: SharedClock,
}

impl ApprovalTracker {
    pub fn new(config: ReversalHandlerConfig, clock: SharedClock) -> Self {
        ApprovalTracker {
            config,
            metrics: Metrics::new(),
            clock,
        }
    }

    /// The command an event gives its transaction's watch, or `None` for an
    /// event that concerns no watch (or names no valid transaction, logged).
    fn command_of(
        &self,
        event: &EventEnvelope,
        payload: &Payload,
        now: OffsetDateTime,
    ) -> Option<(ApprovalFacts, WatchCommand)> {
        let at = occurred_at(event.occurred_at.as_ref(), now);
        match payload {
            Payload::AuthorizationApproved(approved) => {
                let facts = facts_of(event, approved.facts.as_ref())?;
                let channel = approved.facts.as_ref().map_or("", |f| f.channel.as_str());
                let window = self.config.window_for(&facts.merchant_id, channel);
                Some((
                    facts,
                    WatchCommand::Approved {
                        approved_at: at,
                        window,
                    },
                ))
            }
            Payload::AuthorizationIssuerTimedOut(timed_out) => Some((
                facts_of(event, timed_out.facts.as_ref())?,
                WatchCommand::IssuerTimedOut { at },
            )),
            Payload::BatchOrphanFound(found) => {
                let facts = facts_of(event, found.facts.as_ref())?;
                let (_, policy) = self.config.policy_for(&facts.merchant_id);
                tracing::debug!(
                    transaction_id = %facts.transaction_id,
                    batch_number = %found.batch_number,
                    "Batch upload does not list an approval."
                );
                Some((facts, WatchCommand::BatchOrphanFound { policy }))
            }
            other => {
                let outcome = of_event(other)?;
                Some((
                    facts_of(event, closing_facts(other))?,
                    WatchCommand::Announced { outcome, at },
                ))
            }
        }
    }

    /// Applies `commands` (distinct transactions) with one round trip per
    /// statement and carries out their effects.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        commands: Vec<(ApprovalFacts, WatchCommand)>,
        now: OffsetDateTime,
    ) -> Result<(), HandlerError> {
        if commands.is_empty() {
            return Ok(());
        }
        let span = tracing::info_span!("reversal_handler.approvals", count = commands.len());
        for (facts, _) in &commands {
            link_traceparent(&span, &facts.traceparent);
        }
        let decided = store::apply_many(conn, &commands, now)
            .instrument(span)
            .await?;
        self.observe(&commands, &decided);
        Ok(())
    }

    fn observe(
        &self,
        commands: &[(ApprovalFacts, WatchCommand)],
        decided: &[(Uuid, WatchDecision)],
    ) {
        let merchants: HashMap<Uuid, &str> = commands
            .iter()
            .map(|(facts, _)| (facts.transaction_id, facts.merchant_id.as_str()))
            .collect();
        for (transaction_id, decision) in decided {
            let merchant_id = merchants.get(transaction_id).copied().unwrap_or_default();
            for effect in &decision.effects {
                self.metrics.observe(*transaction_id, merchant_id, effect);
            }
        }
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
            let now = self.clock.now();
            let Some(command) = self.command_of(event, payload, now) else {
                return Ok(());
            };
            self.apply(tx, vec![command], now).instrument(span).await
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
            let now = self.clock.now();
            let mut pending: Gathered<(ApprovalFacts, WatchCommand)> = Gathered::default();
            for event in events {
                if let Some(payload @ Payload::AuthorizationApproved(_)) = &event.payload {
                    if let Some(command) = self.command_of(event, payload, now) {
                        let transaction_id = command.0.transaction_id;
                        if pending.holds(transaction_id) {
                            self.apply(tx, pending.take(), now).await?;
                        }
                        pending.add(transaction_id, command);
                    }
                    continue;
                }
                if pending.must_write_before(event) {
                    self.apply(tx, pending.take(), now).await?;
                }
                self.handle(tx, event).await?;
            }
            self.apply(tx, pending.take(), now).await
        })
    }
}
