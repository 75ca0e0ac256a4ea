//! Batch close, batch upload and settlement.
//!
//! `close-batch` and `upload-batch` go through the terminal gateway as the
//! terminal (the gateway takes the merchant from the certificate), like a
//! terminal's ISO 8583 0500 and 0320. `settlement status` and
//! `settlement run` speak to the settlement batcher's internal
//! `SettlementService` directly, in plaintext.
//!
//! By concern: [`args`] declares the flags, [`specs`] parses the `--totals`
//! and `--sale` values with switch-core's types, [`query`] turns `settlement
//! status` flags into the service's query, [`render`] shows every answer as
//! text or JSON, and [`commands`] sends the requests. [`rejections`] is the
//! operators' `settlement rejections list|resolve`.

pub mod args;
pub mod commands;
pub mod query;
pub mod rejections;
pub mod render;
pub mod specs;

pub use args::{CloseBatchArgs, SettlementArgs, UploadBatchArgs};
pub use commands::{run_close_batch, run_settlement, run_upload_batch};

#[cfg(test)]
pub(crate) mod test_support {
    use switch_proto::v1::{CurrencyTotals, Money};

    pub fn totals(currency: &str, sales: (i64, i64), reversals: (i64, i64)) -> CurrencyTotals {
        CurrencyTotals {
            currency: currency.to_owned(),
            sales_count: sales.0,
            sales_minor_units: sales.1,
            reversals_count: reversals.0,
            reversals_minor_units: reversals.1,
        }
    }

    pub fn money(minor_units: i64, currency: &str) -> Option<Money> {
        Some(Money {
            minor_units,
            currency: currency.to_owned(),
        })
    }
}
