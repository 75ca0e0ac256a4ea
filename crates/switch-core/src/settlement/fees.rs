//! Fees and payouts: the merchant discount rate, charged once per window
//! and currency on the gross and rounded half up to the minor unit.

use std::collections::BTreeMap;

use crate::error::InvalidField;
use crate::money::{Currency, Money};

/// A merchant discount rate in basis points (0..=10_000). Default 60.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeeRate(u16);

impl Default for FeeRate {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FeeRate {
    /// 60 basis points (0.60 %).
    pub const DEFAULT: FeeRate = FeeRate(60);

    /// Field "fee_basis_points": 0 to 10_000 (100 %).
    pub fn from_basis_points(bp: u32) -> Result<Self, InvalidField> {
        match u16::try_from(bp) {
            Ok(bp) if bp <= 10_000 => Ok(Self(bp)),
            _ => Err(InvalidField::new(
                "fee_basis_points",
                format!("must be between 0 and 10000, got {bp}"),
            )),
        }
    }

    pub fn basis_points(&self) -> u16 {
        self.0
    }

    /// fee = gross * bp / 10_000, rounded half up to the minor unit (in
    /// i128, so no overflow). Computed once on the window's gross per
    /// currency, never per transaction, so the rounding error is at most
    /// half a minor unit per payout. Gross must be >= 0; a gross <= 0 has a
    /// fee of 0. The fee is never more than the gross.
    pub fn fee_on(&self, gross: i64) -> i64 {
        if gross <= 0 {
            return 0;
        }
        let fee = (i128::from(gross) * i128::from(self.0) + 5_000) / 10_000;
        // bp <= 10_000, so fee <= gross, which fits.
        i64::try_from(fee).unwrap_or(gross)
    }
}

/// One merchant's payout in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payout {
    pub currency: Currency,
    pub transaction_count: u64,
    pub gross_minor_units: i64,
    pub fee_minor_units: i64,
    pub net_minor_units: i64,
}

/// Sums payable amounts per currency (ordered by currency code) and applies
/// the fee once per currency: net = gross - fee. Only payable amounts may be
/// passed (the caller filters by [`eligibility`](super::eligibility)), so this takes amounts
/// only. Gross sums saturate at `i64::MAX` rather than overflow (unreachable
/// with real amounts: it takes over nine million maximal ISO 8583 amounts).
pub fn payouts(amounts: &[Money], rate: FeeRate) -> Vec<Payout> {
    let mut sums: BTreeMap<&'static str, (Currency, u64, i64)> = BTreeMap::new();
    for amount in amounts {
        let (_, count, gross) =
            sums.entry(amount.currency().code())
                .or_insert((amount.currency(), 0, 0));
        *count += 1;
        *gross = gross.saturating_add(amount.minor_units());
    }
    sums.into_values()
        .map(|(currency, transaction_count, gross)| {
            let fee = rate.fee_on(gross);
            Payout {
                currency,
                transaction_count,
                gross_minor_units: gross,
                fee_minor_units: fee,
                net_minor_units: gross - fee,
            }
        })
        .collect()
}
