//! The reversal worker: repeats every owed reversal to its issuer until the
//! issuer acknowledges it, with capped exponential backoff, the repeat flag
//! on every retry (the 0421 convention), and dead-lettering past the maximum
//! age, counted and logged as an error for alerting. The queue lives in the
//! journal's database, so it survives restarts of every process; claims are
//! leases, so a worker that dies mid-attempt loses them by itself; one
//! worker per issuer, so a dead issuer only holds up its own reversals.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge};
use switch_core::lifecycle::{
    Command, Effect, IssuerWindows, ReversalAnswer, ReversalAttempt, ReversalClosed,
};
use switch_core::{ResponseCode, RetrySchedule};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::issuer::GrpcIssuerLink;
use crate::lifecycle::Lifecycle;
use crate::model::ClaimedReversal;
use crate::store::Target;
use crate::wire::pb_money;

pub struct ReversalWorker {
    pub lifecycle: Lifecycle,
    pub issuer: GrpcIssuerLink,
    pub issuer_name: String,
    pub schedule: RetrySchedule,
    /// Until when an original call may still reach the issuer: a "25"
    /// before then does not end the reversal.
    pub windows: IssuerWindows,
    pub batch_size: i64,
    /// How long a claim is held: longer than one attempt can take.
    pub lease_ms: i64,
    pub poll_interval: Duration,
    pub wake: Arc<Notify>,
}

struct Metrics {
    outcomes: Counter<u64>,
    dead_letters: Counter<u64>,
}

/// The queue as operators watch it, per issuer; every replica reads the
/// same table, so dashboards take `max` across them (ADR 26).
struct QueueGauges {
    pending: Gauge<i64>,
    oldest_pending: Gauge<u64>,
    dead_lettered: Gauge<i64>,
}

impl ReversalWorker {
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let meter = opentelemetry::global::meter(crate::SERVICE_NAME);
        let metrics = Metrics {
            outcomes: meter
                .u64_counter("authorization.reversal.attempts")
                .with_description("Reversal attempts sent to issuers, by outcome")
                .build(),
            dead_letters: meter
                .u64_counter("authorization.reversal.dead_letters")
                .with_description("Reversals given up after their maximum age")
                .build(),
        };
        let gauges = QueueGauges {
            pending: meter
                .i64_gauge("authorization.reversal.pending")
                .with_description("Reversals owed to each issuer")
                .build(),
            oldest_pending: meter
                .u64_gauge("authorization.reversal.oldest_pending")
                .with_unit("ms")
                .with_description(
                    "How long the oldest reversal owed to each issuer has been owed (0 when none is)",
                )
                .build(),
            dead_lettered: meter
                .i64_gauge("authorization.reversal.dead_lettered")
                .with_description(
                    "Reversals given up on and not redriven, per issuer: shoppers who may still be charged",
                )
                .build(),
        };
        tokio::pin!(shutdown);
        // The gauges are count queries: refreshed once a second, not on
        // every wake-up (each requested reversal wakes the worker).
        let mut gauge = switch_platform::every::Every::new(Duration::from_secs(1));
        loop {
            self.drain(&metrics).await;
            if gauge.due() {
                self.record_gauges(&gauges).await;
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    async fn record_gauges(&self, gauges: &QueueGauges) {
        match self
            .lifecycle
            .journal
            .reversal_queue_gauges(&self.issuer_name, self.lifecycle.clock.now())
            .await
        {
            Ok(queue) => {
                let issuer = [KeyValue::new("issuer", self.issuer_name.clone())];
                gauges.pending.record(queue.pending, &issuer);
                gauges
                    .oldest_pending
                    .record(queue.oldest_pending_ms, &issuer);
                gauges.dead_lettered.record(queue.dead_lettered, &issuer);
            }
            Err(error) => {
                tracing::debug!(%error, issuer = %self.issuer_name, "Reversal queue gauges not read.");
            }
        }
    }

    async fn drain(&self, metrics: &Metrics) {
        loop {
            let claimed = match self
                .lifecycle
                .journal
                .claim_reversals(
                    &self.issuer_name,
                    self.batch_size,
                    self.lease_ms,
                    self.lifecycle.clock.now(),
                )
                .await
            {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, issuer = %self.issuer_name, "Reversal queue unavailable.");
                    return;
                }
            };
            if claimed.is_empty() {
                return;
            }
            join_all(claimed.iter().map(|c| {
                // Each attempt is a span in the transaction's own trace.
                let span = tracing::info_span!(
                    "authorization.reversal_attempt",
                    transaction_id = %c.transaction_id,
                    attempt = c.attempts
                );
                if !c.traceparent.is_empty() {
                    switch_platform::telemetry::set_parent_from_traceparent(
                        &span,
                        &c.traceparent,
                        "",
                    );
                }
                self.attempt(c, metrics).instrument(span)
            }))
            .await;
        }
    }

    async fn attempt(&self, claimed: &ClaimedReversal, metrics: &Metrics) {
        let sent_at = self.lifecycle.clock.now();
        let result = self
            .issuer
            .reverse(
                &claimed.rrn,
                &claimed.stan,
                pb_money(&claimed.amount),
                claimed.attempts > 1,
            )
            .await;
        let answer = match result {
            Ok(code) => match ResponseCode::parse(&code) {
                Ok(code) => ReversalAnswer::Answered(code),
                Err(_) => ReversalAnswer::NoAnswer(format!("unreadable response code '{code}'")),
            },
            Err(reason) => ReversalAnswer::NoAnswer(reason),
        };
        let command = Command::ReversalAnswered {
            answer: answer.clone(),
            attempt: ReversalAttempt {
                attempts: claimed.attempts,
                age_ms: claimed.age_ms,
                jitter: rand::random::<u64>(),
                sent_at,
            },
            schedule: self.schedule,
            windows: self.windows,
        };
        let outcome = match self
            .lifecycle
            .execute_decision(Target::Id(claimed.transaction_id), command)
            .await
        {
            Ok((_, decision)) => self.report(claimed, &answer, &decision.effects, metrics),
            Err(error) => {
                // Whatever the issuer did, nothing was recorded: the lease
                // expires and the next attempt (flagged as a repeat) tries
                // again.
                tracing::warn!(%error, transaction_id = %claimed.transaction_id, %answer, "Reversal attempt not recorded; will repeat.");
                "unrecorded"
            }
        };
        metrics.outcomes.add(
            1,
            &[
                KeyValue::new("issuer", self.issuer_name.clone()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    /// Logs and counts what the lifecycle made of an attempt.
    fn report(
        &self,
        claimed: &ClaimedReversal,
        answer: &ReversalAnswer,
        effects: &[Effect],
        metrics: &Metrics,
    ) -> &'static str {
        for effect in effects {
            match effect {
                Effect::CloseReversal(ReversalClosed::Acknowledged) => {
                    tracing::info!(
                        transaction_id = %claimed.transaction_id,
                        rrn = %claimed.rrn,
                        reason = claimed.reason.as_str(),
                        attempts = claimed.attempts,
                        %answer,
                        "Reversal acknowledged by the issuer."
                    );
                    return "acknowledged";
                }
                Effect::CloseReversal(ReversalClosed::DeadLettered) => {
                    metrics
                        .dead_letters
                        .add(1, &[KeyValue::new("issuer", self.issuer_name.clone())]);
                    tracing::error!(
                        transaction_id = %claimed.transaction_id,
                        rrn = %claimed.rrn,
                        issuer = %self.issuer_name,
                        attempts = claimed.attempts,
                        age_ms = claimed.age_ms,
                        error = %answer,
                        "Reversal dead-lettered: not acknowledged within its maximum age. An operator must resolve it."
                    );
                    return "dead_lettered";
                }
                Effect::RetryReversal { delay_ms, .. } => {
                    tracing::debug!(
                        transaction_id = %claimed.transaction_id,
                        attempts = claimed.attempts,
                        delay_ms,
                        error = %answer,
                        "Reversal attempt failed; will repeat."
                    );
                    return "retry";
                }
                _ => {}
            }
        }
        // Another attempt had already finished it.
        "already_done"
    }
}
