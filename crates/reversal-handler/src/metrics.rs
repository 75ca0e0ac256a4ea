//! The reversal handler's metrics. Attributes are low-cardinality names
//! (reasons), never ids.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

#[derive(Clone)]
pub struct Metrics {
    detected: Counter<u64>,
    reversed: Counter<u64>,
    confirmed: Counter<u64>,
    superseded: Counter<u64>,
    deadline_to_request: Histogram<u64>,
    deadline_to_reversed: Histogram<u64>,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
