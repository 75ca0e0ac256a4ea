//! The gateway's push metrics. Attributes are low-cardinality names (message
//! kind), never terminal or message ids: a terminal's backlog is recorded as
//! one observation of a histogram when it subscribes, and the backlog over
//! all terminals as one gauge.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, UpDownCounter};

#[derive(Clone)]
pub struct Metrics {
    received: Counter<u64>,
    pushed: Counter<u64>,
    acknowledged: Counter<u64>,
    backlog: Histogram<u64>,
    unacknowledged: Gauge<i64>,
    subscribers: UpDownCounter<i64>,
}

impl Metrics {
    pub fn new() -> Self {
        let meter = opentelemetry::global::meter(crate::SERVICE_NAME);
        Metrics {
            received: meter
                .u64_counter("gateway.terminal_messages.received")
                .with_description("Terminal messages stored from the topic (replays not counted), by kind")
                .build(),
            pushed: meter
                .u64_counter("gateway.terminal_messages.pushed")
                .with_description("Terminal messages sent on a Subscribe stream, by kind")
                .build(),
            acknowledged: meter
                .u64_counter("gateway.terminal_messages.acknowledged")
                .with_description("Terminal messages acknowledged (repeats not counted)")
                .build(),
            backlog: meter
                .u64_histogram("gateway.terminal_backlog")
                .with_description(
                    "Unacknowledged messages of a terminal when it subscribes (one observation per subscription)",
                )
                .with_boundaries(vec![0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0])
                .build(),
            unacknowledged: meter
                .i64_gauge("gateway.terminal_messages.unacknowledged")
                .with_description("Messages kept for terminals and not yet acknowledged, over all terminals")
                .build(),
            subscribers: meter
                .i64_up_down_counter("gateway.subscribers")
                .with_description("Open Subscribe streams")
                .build(),
        }
    }

    pub fn received(&self, kind: &str) {
        self.received
            .add(1, &[KeyValue::new("kind", bounded_kind(kind))]);
    }

    pub fn pushed(&self, kind: &str) {
        self.pushed
            .add(1, &[KeyValue::new("kind", bounded_kind(kind))]);
    }

    pub fn acknowledged(&self) {
        self.acknowledged.add(1, &[]);
    }

    pub fn backlog_at_subscribe(&self, size: u64) {
        self.backlog.record(size, &[]);
    }

    pub fn unacknowledged(&self, total: i64) {
        self.unacknowledged.record(total, &[]);
    }

    /// Counts an open stream until the guard is dropped.
    pub fn subscriber(&self) -> SubscriberGuard {
        self.subscribers.add(1, &[]);
        SubscriberGuard(self.subscribers.clone())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps `gateway.subscribers` counting one stream while it lives.
pub struct SubscriberGuard(UpDownCounter<i64>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.add(-1, &[]);
    }
}

/// A kind as a metric attribute: the known names, anything else `other`,
/// so a bad message cannot add series.
fn bounded_kind(kind: &str) -> &'static str {
    match kind {
        "reprint_receipt" => "reprint_receipt",
        "void_receipt" => "void_receipt",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_bounded() {
        assert_eq!(bounded_kind("void_receipt"), "void_receipt");
        assert_eq!(bounded_kind("reprint_receipt"), "reprint_receipt");
        assert_eq!(bounded_kind("TERM0001"), "other");
    }
}
