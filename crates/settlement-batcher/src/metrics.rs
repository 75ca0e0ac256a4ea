//! The settlement batcher's metrics. Attributes are low-cardinality names
//! (results, outcomes, currencies), never ids.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};

#[derive(Clone)]
pub struct Metrics {
    batches: Counter<u64>,
    reconciled: Counter<u64>,
    windows: Counter<u64>,
    held: Counter<u64>,
    paid_minor_units: Counter<u64>,
    run_duration: Histogram<u64>,
    ledger_rejections: Counter<u64>,
    open_rejections: Gauge<i64>,
}

impl Metrics {
    pub fn new() -> Self {
        let meter = opentelemetry::global::meter(crate::SERVICE_NAME);
        Metrics {
            batches: meter
                .u64_counter("settlement.batches_closed")
                .with_description("Terminal batch closes, by result")
                .build(),
            reconciled: meter
                .u64_counter("settlement.reconciled_transactions")
                .with_description("Batch upload reconciliation outcomes")
                .build(),
            windows: meter
                .u64_counter("settlement.windows_closed")
                .with_description("Merchant settlement windows closed at their cut-off")
                .build(),
            held: meter
                .u64_counter("settlement.transactions_held")
                .with_description("Transactions held at a cut-off, by reason")
                .build(),
            paid_minor_units: meter
                .u64_counter("settlement.net_paid")
                .with_description("Net paid to merchants in minor units, by currency")
                .build(),
            run_duration: meter
                .u64_histogram("settlement.run_duration")
                .with_unit("ms")
                .with_description("Time to close a settlement run's windows and write its files")
                .build(),
            ledger_rejections: meter
                .u64_counter("settlement.ledger_rejections")
                .with_description(
                    "Approvals not taken into the ledger because another transaction holds \
                     their terminal key (see ledger_rejections)",
                )
                .build(),
            open_rejections: meter
                .i64_gauge("settlement.ledger_rejections.open")
                .with_description(
                    "Ledger rejections no operator has resolved yet (never paid until resolved)",
                )
                .build(),
        }
    }

    pub fn batch_closed(&self, result: &'static str) {
        self.batches.add(1, &[KeyValue::new("result", result)]);
    }

    pub fn reconciled(&self, outcome: &'static str) {
        self.reconciled.add(1, &[KeyValue::new("outcome", outcome)]);
    }

    pub fn window_closed(&self) {
        self.windows.add(1, &[]);
    }

    pub fn held(&self, reason: &'static str, count: u64) {
        self.held.add(count, &[KeyValue::new("reason", reason)]);
    }

    pub fn paid(&self, currency: &'static str, net_minor_units: i64) {
        self.paid_minor_units.add(
            u64::try_from(net_minor_units).unwrap_or(0),
            &[KeyValue::new("currency", currency)],
        );
    }

    pub fn run_finished(&self, elapsed_ms: u64) {
        self.run_duration.record(elapsed_ms, &[]);
    }

    pub fn ledger_rejected(&self) {
        self.ledger_rejections.add(1, &[]);
    }

    /// How many rejections are open, after one was recorded or resolved.
    pub fn open_rejections(&self, open: i64) {
        self.open_rejections.record(open, &[]);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
