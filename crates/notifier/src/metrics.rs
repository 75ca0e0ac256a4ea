//! The notifier's metrics. Attributes are low-cardinality names (outcome,
//! webhook type, message kind), never merchant, terminal, endpoint or event
//! ids.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

#[derive(Clone)]
pub struct Metrics {
    deliveries: Counter<u64>,
    dead_letters: Counter<u64>,
    latency: Histogram<u64>,
    latency_from_first_attempt: Histogram<u64>,
    attempts: Histogram<u64>,
    in_flight: UpDownCounter<i64>,
    planned: Counter<u64>,
    terminal_messages: Counter<u64>,
}

/// What one recorded attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Retried,
    DeadLettered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let meter = opentelemetry::global::meter(crate::SERVICE_NAME);
        Metrics {
            deliveries: meter
                .u64_counter("notifier.deliveries")
                .with_description(
                    "Webhook attempts recorded, by outcome (delivered, retried, dead_lettered)",
                )
                .build(),
            dead_letters: meter
                .u64_counter("notifier.dead_letters")
                .with_description("Deliveries that exhausted their attempts")
                .build(),
            latency: meter
                .u64_histogram("notifier.delivery_latency")
                .with_unit("ms")
                .with_description("From the event's occurrence to the endpoint's 2xx answer")
                .build(),
            latency_from_first_attempt: meter
                .u64_histogram("notifier.delivery_latency_from_first_attempt")
                .with_unit("ms")
                .with_description("From a delivery's first attempt to the endpoint's 2xx answer")
                .build(),
            attempts: meter
                .u64_histogram("notifier.delivery_attempts")
                .with_description("Attempts per delivery, when it is delivered or dead-lettered")
                .build(),
            in_flight: meter
                .i64_up_down_counter("notifier.in_flight")
                .with_description("Webhook requests in flight")
                .build(),
            planned: meter
                .u64_counter("notifier.deliveries_planned")
                .with_description("Deliveries owed to endpoints, by webhook type")
                .build(),
            terminal_messages: meter
                .u64_counter("notifier.terminal_messages_planned")
                .with_description("Messages for terminals queued for the gateway, by kind")
                .build(),
        }
    }

    pub fn planned(&self, kind: &'static str, count: u64) {
        self.planned.add(count, &[KeyValue::new("type", kind)]);
    }

    pub fn terminal_message_planned(&self, kind: &'static str) {
        self.terminal_messages
            .add(1, &[KeyValue::new("kind", kind)]);
    }

    pub fn request_started(&self) {
        self.in_flight.add(1, &[]);
    }

    pub fn request_finished(&self) {
        self.in_flight.add(-1, &[]);
    }

    /// A delivery reached `outcome` after `attempts` attempts in total.
    pub fn recorded(&self, outcome: Outcome, attempts: u64) {
        self.deliveries
            .add(1, &[KeyValue::new("outcome", outcome.as_str())]);
        match outcome {
            Outcome::Delivered => self.attempts.record(attempts, &[]),
            Outcome::DeadLettered => {
                self.dead_letters.add(1, &[]);
                self.attempts.record(attempts, &[]);
            }
            Outcome::Retried => {}
        }
    }

    /// A delivery succeeded `from_event_ms` after its event and
    /// `from_first_attempt_ms` after its first attempt.
    pub fn delivered_after(&self, from_event_ms: u64, from_first_attempt_ms: u64) {
        self.latency.record(from_event_ms, &[]);
        self.latency_from_first_attempt
            .record(from_first_attempt_ms, &[]);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
