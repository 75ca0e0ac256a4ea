//! The consumer of outcome events: each event a merchant must hear about
//! becomes one delivery per endpoint of that merchant, and each event a
//! terminal must hear about becomes one terminal message in the outbox,
//! inside the consumer's exactly-once transaction, so an event is owed
//! exactly once however often Kafka delivers it.

use sqlx::PgConnection;
use switch_core::SharedClock;
use switch_platform::consumer::{EventHandler, HandlerError, HandlerFuture};
use switch_platform::outbox::{self, OutboxMessage};
use switch_platform::telemetry::{current_trace_context, set_parent_from_traceparent};
use switch_proto::v1::EventEnvelope;
use switch_proto::v1::event_envelope::Payload;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::store;
use crate::terminal::{self, TerminalPlan, TerminalPush};
use crate::webhook::{Plan, plan};

/// Event type of the envelopes that carry terminal messages.
pub const TERMINAL_MESSAGE_EVENT_TYPE: &str = "notifier.terminal_message_requested";

/// Turns outcome events into deliveries and terminal messages.
pub struct DeliveryPlanner {
    /// The `pg_notify` channel the delivery workers listen on.
    channel: String,
    /// Full name of the terminal-messages topic.
    terminal_topic: String,
    /// The `pg_notify` channel that wakes the outbox relay.
    outbox_channel: String,
    metrics: Metrics,
    /// What "now" is for an event without a time of its own, and when a
    /// new delivery is due.
    clock: SharedClock,
}

impl DeliveryPlanner {
    pub fn new(
        channel: impl Into<String>,
        terminal_topic: impl Into<String>,
        outbox_channel: impl Into<String>,
        clock: SharedClock,
    ) -> Self {
        DeliveryPlanner {
            channel: channel.into(),
            terminal_topic: terminal_topic.into(),
            outbox_channel: outbox_channel.into(),
            metrics: Metrics::new(),
            clock,
        }
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
    ) -> Result<(), HandlerError> {
        let now = self.clock.now();
        self.plan_webhook(conn, event, now).await?;
        self.plan_terminal_message(conn, event, now).await
    }

    /// Queues the terminal message `event` causes, if any, in the outbox
    /// (the consumer's transaction), and wakes the relay at commit.
    async fn plan_terminal_message(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
        now: OffsetDateTime,
    ) -> Result<(), HandlerError> {
        let push = match terminal::plan(event, now) {
            TerminalPlan::Send(push) => push,
            TerminalPlan::Ignore => return Ok(()),
            TerminalPlan::Invalid(reason) => {
                tracing::error!(
                    event_id = %event.event_id,
                    event_type = %event.event_type,
                    reason,
                    "Outcome event cannot be sent to a terminal; skipped."
                );
                return Ok(());
            }
        };
        let message = outbox_message(&self.terminal_topic, &push);
        outbox::enqueue(&mut *conn, &message).await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(&self.outbox_channel)
            .execute(&mut *conn)
            .await?;
        self.metrics.terminal_message_planned(push.kind.as_str());
        tracing::debug!(
            event_id = %event.event_id,
            message_id = %push.message_id,
            terminal_id = %push.message.terminal_id,
            kind = %push.kind,
            "Terminal message owed."
        );
        Ok(())
    }

    async fn plan_webhook(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
        now: OffsetDateTime,
    ) -> Result<(), HandlerError> {
        let webhook = match plan(event, now) {
            Plan::Send(webhook) => webhook,
            Plan::Ignore => return Ok(()),
            Plan::Invalid(reason) => {
                tracing::error!(
                    event_id = %event.event_id,
                    event_type = %event.event_type,
                    reason,
                    "Outcome event cannot be sent to a merchant; skipped."
                );
                return Ok(());
            }
        };
        let added = store::insert_deliveries(conn, &webhook, &self.channel, now).await?;
        if added == 0 {
            tracing::debug!(
                event_id = %webhook.event_id,
                merchant_id = %webhook.merchant_id,
                webhook_type = %webhook.kind,
                "Merchant has no webhook endpoint; nothing to send."
            );
        } else {
            self.metrics.planned(webhook.kind.as_str(), added);
            tracing::debug!(
                event_id = %webhook.event_id,
                merchant_id = %webhook.merchant_id,
                webhook_type = %webhook.kind,
                endpoints = added,
                "Webhook owed."
            );
        }
        Ok(())
    }
}

/// The outbox row that carries `push` to the terminal gateway: keyed by
/// terminal id, its envelope's id the message id (so a replay is the same
/// event), in the current trace.
pub fn outbox_message(topic: &str, push: &TerminalPush) -> OutboxMessage {
    let (traceparent, tracestate) = current_trace_context();
    let envelope = EventEnvelope {
        event_id: push.message_id.to_string(),
        event_type: TERMINAL_MESSAGE_EVENT_TYPE.to_owned(),
        transaction_id: push.transaction_id.clone(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: push.occurred_at.unix_timestamp(),
            nanos: i32::try_from(push.occurred_at.nanosecond()).unwrap_or(0),
        }),
        traceparent: traceparent.clone(),
        tracestate,
        payload: Some(Payload::TerminalMessageRequested(push.message.clone())),
    };
    OutboxMessage {
        event_id: push.message_id,
        topic: topic.to_owned(),
        key: push.key().to_owned(),
        payload: prost::Message::encode_to_vec(&envelope),
        traceparent,
    }
}

impl EventHandler for DeliveryPlanner {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            if event.payload.is_none() {
                return Ok(());
            }
            let span = tracing::info_span!("notifier.event", event_type = %event.event_type);
            if !event.traceparent.is_empty() {
                set_parent_from_traceparent(&span, &event.traceparent, &event.tracestate);
            }
            self.apply(tx, event).instrument(span).await
        })
    }

    /// Most events (every approval, every acknowledgement) concern neither
    /// a merchant's endpoint nor a terminal; they are not recorded.
    fn wants(&self, event: &EventEnvelope) -> bool {
        let now = self.clock.now();
        !matches!(plan(event, now), Plan::Ignore)
            || !matches!(terminal::plan(event, now), TerminalPlan::Ignore)
    }
}

#[cfg(test)]
mod tests {
    use switch_proto::v1::{
        AuthorizationApproved, AuthorizationFacts, AuthorizationReversed, Money,
    };

    use super::*;

    fn with(payload: Payload) -> EventEnvelope {
        EventEnvelope {
            event_id: "0193a5d4-0000-7000-8000-000000000001".into(),
            transaction_id: "0193a5d4-0000-7000-8000-000000000002".into(),
            payload: Some(payload),
            ..EventEnvelope::default()
        }
    }

    #[test]
    fn approvals_are_not_recorded_reversals_are() {
        let planner = DeliveryPlanner::new(
            "deliveries",
            "terminal-messages",
            "outbox",
            switch_core::SystemClock::shared(),
        );
        let facts = AuthorizationFacts {
            terminal_id: "TERM0001".into(),
            merchant_id: "MERCHANT0000001".into(),
            stan: "000001".into(),
            local_date: "2026-11-24".into(),
            rrn: "633000000001".into(),
            masked_pan: "411111******1111".into(),
            amount: Some(Money {
                minor_units: 100,
                currency: "EUR".into(),
            }),
            channel: "card".into(),
        };
        assert!(!planner.wants(&with(Payload::AuthorizationApproved(
            AuthorizationApproved {
                facts: Some(facts.clone()),
                approval_code: "ABC123".into(),
            }
        ))));
        assert!(planner.wants(&with(Payload::AuthorizationReversed(
            AuthorizationReversed {
                facts: Some(facts),
                reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into(),
                attempts: 1,
            }
        ))));
    }
}
