//! The consumer of outcome events: each event a merchant must hear about
//! becomes one delivery per endpoint of that merchant, inside the
//! consumer's exactly-once transaction, so an event is owed exactly once
//! however often Kafka delivers it.

use sqlx::PgConnection;
use switch_platform::consumer::{EventHandler, HandlerError, HandlerFuture};
use switch_platform::telemetry::set_parent_from_traceparent;
use switch_proto::v1::EventEnvelope;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::store;
use crate::webhook::{Plan, plan};

/// Turns outcome events into deliveries.
pub struct DeliveryPlanner {
    /// The `pg_notify` channel the delivery workers listen on.
    channel: String,
    metrics: Metrics,
}

impl DeliveryPlanner {
    pub fn new(channel: impl Into<String>) -> Self {
        DeliveryPlanner {
            channel: channel.into(),
            metrics: Metrics::new(),
        }
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &EventEnvelope,
    ) -> Result<(), HandlerError> {
        let webhook = match plan(event, OffsetDateTime::now_utc()) {
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
        let added = store::insert_deliveries(conn, &webhook, &self.channel).await?;
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
}
