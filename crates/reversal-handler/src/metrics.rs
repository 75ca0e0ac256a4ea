//! The reversal handler's metrics and the log lines that go with them.
//! Attributes are low-cardinality names (reasons), never ids.
//! [`Metrics::observe`] turns each effect of a watch decision into its log
//! line and its counter, so the two never drift.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};
use switch_core::{OrphanDecision, OrphanFound, WatchEffect};
use uuid::Uuid;

use crate::outcome::decision_columns;

#[derive(Clone)]
pub struct Metrics {
    detected: Counter<u64>,
    reversed: Counter<u64>,
    confirmed: Counter<u64>,
    superseded: Counter<u64>,
    deadline_to_request: Histogram<u64>,
    deadline_to_reversed: Histogram<u64>,
    overdue: Gauge<i64>,
    oldest_overdue: Gauge<u64>,
}

impl Metrics {
    pub fn new() -> Self {
        let meter = opentelemetry::global::meter(crate::SERVICE_NAME);
        Metrics {
            detected: meter
                .u64_counter("reversal_handler.orphans_detected")
                .with_description("Approvals found without evidence at their deadline, by reason")
                .build(),
            reversed: meter
                .u64_counter("reversal_handler.orphans_reversed")
                .with_description("Orphans whose reversal authorization accepted")
                .build(),
            confirmed: meter
                .u64_counter("reversal_handler.orphans_confirmed")
                .with_description("Orphans authorization confirmed under the merchant's policy")
                .build(),
            superseded: meter
                .u64_counter("reversal_handler.orphans_superseded")
                .with_description("Orphans another path decided before our request")
                .build(),
            deadline_to_reversed: meter
                .u64_histogram("reversal_handler.deadline_to_reversed")
                .with_unit("ms")
                .with_description(
                    "From an orphan's acknowledgement deadline to the issuer's acknowledgement of its reversal",
                )
                .build(),
            overdue: meter
                .i64_gauge("reversal_handler.orphans_overdue")
                .with_description(
                    "Approvals past their deadline whose outcome authorization has not given yet",
                )
                .build(),
            oldest_overdue: meter
                .u64_gauge("reversal_handler.oldest_overdue")
                .with_unit("ms")
                .with_description(
                    "How far past its deadline the oldest unresolved approval is (0 when none is)",
                )
                .build(),
            deadline_to_request: meter
                .u64_histogram("reversal_handler.deadline_to_request")
                .with_unit("ms")
                .with_description(
                    "Time from an orphan's deadline to authorization accepting its decision",
                )
                .build(),
        }
    }

    pub fn orphan_detected(&self, reason: &'static str) {
        self.detected.add(1, &[KeyValue::new("reason", reason)]);
    }

    /// Authorization accepted a reversal `latency_ms` after the deadline.
    pub fn reversed(&self, latency_ms: u64) {
        self.reversed.add(1, &[]);
        self.deadline_to_request
            .record(latency_ms, &[KeyValue::new("decision", "reverse")]);
    }

    /// Authorization confirmed an orphan `latency_ms` after the deadline.
    pub fn confirmed(&self, latency_ms: u64) {
        self.confirmed.add(1, &[]);
        self.deadline_to_request
            .record(latency_ms, &[KeyValue::new("decision", "confirm")]);
    }

    /// The issuer acknowledged the reversal of an orphan `latency_ms` after
    /// its deadline.
    pub fn reversal_acknowledged(&self, latency_ms: u64) {
        self.deadline_to_reversed.record(latency_ms, &[]);
    }

    pub fn superseded(&self) {
        self.superseded.add(1, &[]);
    }

    /// `count` approvals are past their deadline unresolved, the oldest
    /// `oldest_ms` past it.
    pub fn overdue(&self, count: i64, oldest_ms: u64) {
        self.overdue.record(count, &[]);
        self.oldest_overdue.record(oldest_ms, &[]);
    }
}

impl Metrics {
    /// Logs and counts one effect of a watch decision about
    /// `transaction_id`. `Ask` is the sweeper's to carry out; it is only
    /// logged here at debug level.
    pub fn observe(&self, transaction_id: Uuid, merchant_id: &str, effect: &WatchEffect) {
        match *effect {
            WatchEffect::OrphanDecided { decision, found } => {
                let (kind, reason) = decision_columns(decision);
                let label = match found {
                    OrphanFound::AtDeadline => reason,
                    OrphanFound::IssuerTimeout => "issuer_timeout",
                    OrphanFound::BatchUpload => "batch_orphan",
                };
                self.orphan_detected(label);
                tracing::info!(
                    %transaction_id,
                    %merchant_id,
                    found = ?found,
                    decision = kind,
                    reason,
                    "Orphaned approval decided."
                );
            }
            WatchEffect::Ask { decision, attempts } => {
                let (kind, reason) = decision_columns(decision);
                tracing::debug!(%transaction_id, decision = kind, reason, attempts, "Asking authorization.");
            }
            WatchEffect::Resolved {
                decision,
                outcome,
                fulfilled,
                latency_ms,
            } => {
                match (fulfilled, decision) {
                    (true, OrphanDecision::Reverse(_)) => self.reversed(latency_ms),
                    (true, OrphanDecision::Confirm(_)) => self.confirmed(latency_ms),
                    (false, _) => self.superseded(),
                }
                tracing::info!(
                    %transaction_id,
                    %merchant_id,
                    %outcome,
                    latency_ms,
                    "Orphaned approval closed."
                );
            }
            WatchEffect::ClosedByAuthorization { outcome } => {
                tracing::debug!(%transaction_id, %outcome, "Approval closed by authorization.");
            }
            WatchEffect::ReversalAcknowledged { late_ms } => self.reversal_acknowledged(late_ms),
            WatchEffect::RetryScheduled { attempts, delay } => {
                tracing::debug!(
                    %transaction_id,
                    attempts,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "Authorization will be asked again."
                );
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
