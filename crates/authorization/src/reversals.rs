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
use opentelemetry::metrics::Counter;
use switch_core::{NextAttempt, RetrySchedule};
use switch_proto::v1 as pb;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::issuer::GrpcIssuerLink;
use crate::journal::{ClaimedReversal, Journal};

/// Issuer answers that mean the reversal needs no repeat: done ("00"), or
/// there is no original to reverse ("25", unable to locate record).
const REVERSAL_DONE: [&str; 2] = ["00", "25"];

pub struct ReversalWorker {
    pub journal: Arc<Journal>,
    pub issuer: GrpcIssuerLink,
    pub issuer_name: String,
    pub schedule: RetrySchedule,
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
        let pending = meter
            .i64_gauge("authorization.reversal.pending")
            .with_description("Reversals owed to each issuer")
            .build();
        tokio::pin!(shutdown);
        // The gauge is a count query: refreshed once a second, not on every
        // wake-up (each requested reversal wakes the worker).
        let mut gauge_read_at: Option<std::time::Instant> = None;
        loop {
            self.drain(&metrics).await;
            if gauge_read_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                gauge_read_at = Some(std::time::Instant::now());
                if let Ok(count) = self.journal.pending_reversals(&self.issuer_name).await {
                    pending.record(count, &[KeyValue::new("issuer", self.issuer_name.clone())]);
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    async fn drain(&self, metrics: &Metrics) {
        loop {
            let claimed = match self
                .journal
                .claim_reversals(&self.issuer_name, self.batch_size, self.lease_ms)
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
        let amount = pb::Money {
            minor_units: claimed.amount.minor_units(),
            currency: claimed.amount.currency().code().to_owned(),
        };
        let result = self
            .issuer
            .reverse(&claimed.rrn, &claimed.stan, amount, claimed.attempts > 1)
            .await;
        let outcome = match result {
            Ok(code) if REVERSAL_DONE.contains(&code.as_str()) => {
                match self.journal.complete_reversal(claimed).await {
                    Ok(_) => {
                        tracing::info!(
                            transaction_id = %claimed.transaction_id,
                            rrn = %claimed.rrn,
                            reason = claimed.reason.as_str(),
                            attempts = claimed.attempts,
                            response_code = %code,
                            "Reversal acknowledged by the issuer."
                        );
                        "acknowledged"
                    }
                    Err(error) => {
                        // The issuer has it; the lease expires and the next
                        // attempt (flagged as a repeat) records it.
                        tracing::warn!(%error, transaction_id = %claimed.transaction_id, "Reversal acknowledged but not recorded; will repeat.");
                        "unrecorded"
                    }
                }
            }
            Ok(code) => {
                self.failed(claimed, &format!("issuer answered {code}"), metrics)
                    .await
            }
            Err(reason) => self.failed(claimed, &reason, metrics).await,
        };
        metrics.outcomes.add(
            1,
            &[
                KeyValue::new("issuer", self.issuer_name.clone()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    async fn failed(
        &self,
        claimed: &ClaimedReversal,
        error: &str,
        metrics: &Metrics,
    ) -> &'static str {
        let jitter = rand::random::<u64>();
        match self
            .schedule
            .after_failure(claimed.attempts, claimed.age_ms, jitter)
        {
            NextAttempt::After(delay_ms) => {
                tracing::debug!(
                    transaction_id = %claimed.transaction_id,
                    attempts = claimed.attempts,
                    delay_ms,
                    %error,
                    "Reversal attempt failed; will repeat."
                );
                if let Err(e) = self.journal.retry_reversal(claimed, delay_ms, error).await {
                    tracing::warn!(error = %e, "Reversal retry not recorded; the lease will expire.");
                }
                "retry"
            }
            NextAttempt::DeadLetter => {
                if let Err(e) = self.journal.dead_letter_reversal(claimed).await {
                    tracing::warn!(error = %e, "Dead letter not recorded; will retry.");
                    return "retry";
                }
                metrics
                    .dead_letters
                    .add(1, &[KeyValue::new("issuer", self.issuer_name.clone())]);
                tracing::error!(
                    transaction_id = %claimed.transaction_id,
                    rrn = %claimed.rrn,
                    issuer = %self.issuer_name,
                    attempts = claimed.attempts,
                    age_ms = claimed.age_ms,
                    %error,
                    "Reversal dead-lettered: not acknowledged within its maximum age. An operator must resolve it."
                );
                "dead_lettered"
            }
        }
    }
}
