//! The ISO 8583 listeners' metrics: low-cardinality attributes only (the
//! MTI class and the response code), never a terminal id or a STAN.

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;

#[derive(Clone)]
pub struct IsoMetrics {
    answered: Counter<u64>,
    wrong_terminal: Counter<u64>,
    closed: Counter<u64>,
    rate_limited: Counter<u64>,
}

impl IsoMetrics {
    pub fn new() -> Self {
        let meter = opentelemetry::global::meter(crate::SERVICE_NAME);
        IsoMetrics {
            answered: meter
                .u64_counter("gateway.iso.answered")
                .with_description("ISO 8583 answers sent, by request MTI and response code")
                .build(),
            wrong_terminal: meter
                .u64_counter("gateway.iso.wrong_terminal")
                .with_description(
                    "ISO 8583 requests refused because field 41 is not the certificate's terminal",
                )
                .build(),
            closed: meter
                .u64_counter("gateway.iso.closed_unreadable")
                .with_description(
                    "ISO 8583 connections closed on a message that could not be answered",
                )
                .build(),
            rate_limited: meter
                .u64_counter("gateway.iso.rate_limited")
                .with_description(
                    "ISO 8583 requests refused over the terminal's request rate, by request MTI",
                )
                .build(),
        }
    }

    pub fn rate_limited(&self, request: iso8583::Mti) {
        self.rate_limited
            .add(1, &[KeyValue::new("mti", bounded_mti(request))]);
    }

    pub fn answered(&self, request: iso8583::Mti, code: switch_core::ResponseCode) {
        self.answered.add(
            1,
            &[
                KeyValue::new("mti", bounded_mti(request)),
                KeyValue::new("response_code", code.as_str().to_owned()),
            ],
        );
    }

    pub fn wrong_terminal(&self) {
        self.wrong_terminal.add(1, &[]);
    }

    pub fn closed_unreadable(&self) {
        self.closed.add(1, &[]);
    }
}

/// A request MTI as an attribute: the ones the listener serves, anything
/// else `other`, so a terminal sending junk cannot add series.
pub(super) fn bounded_mti(mti: iso8583::Mti) -> &'static str {
    const SERVED: [&str; 13] = [
        "0200", "0201", "0220", "0221", "0320", "0321", "0400", "0401", "0420", "0421", "0500",
        "0501", "0800",
    ];
    SERVED
        .into_iter()
        .find(|served| *served == mti.as_str())
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtis_are_bounded() {
        assert_eq!(bounded_mti(iso8583::Mti::FINANCIAL_REQUEST), "0200");
        assert_eq!(bounded_mti(iso8583::Mti::parse("0421").unwrap()), "0421");
        assert_eq!(bounded_mti(iso8583::Mti::parse("9999").unwrap()), "other");
    }
}
