//! Fees, payouts and refund netting: the merchant discount rate, charged
//! once per window, currency and channel on the gross and rounded half up
//! to the minor unit (card sales and QR payments each at their own rate),
//! and the merchant refunds of earlier QR payments deducted from a
//! window's net, each whole, never below zero ([`net_refunds`]).

use std::collections::BTreeMap;

use crate::error::InvalidField;
use crate::money::{Currency, Money};
use crate::orphan::Channel;

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

    /// 38 basis points (0.38 %), the default on QR payments: the wallet
    /// platforms' standard merchant rate, below the card schemes' cost.
    pub const QR_DEFAULT: FeeRate = FeeRate(38);

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

/// One merchant's payout in one currency: net = gross - fee - refunds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payout {
    pub currency: Currency,
    pub transaction_count: u64,
    pub gross_minor_units: i64,
    pub fee_minor_units: i64,
    pub net_minor_units: i64,
    /// Merchant refunds of earlier payments deducted from this payout.
    pub refund_count: u64,
    pub refund_minor_units: i64,
}

/// A merchant's discount rates: one for card sales, one for QR payments
/// (the wallet platforms charge the acquirer differently from the card
/// schemes, so the merchant's price differs too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeRates {
    pub card: FeeRate,
    pub qr: FeeRate,
}

impl FeeRates {
    /// The rate of `channel`.
    pub fn of(&self, channel: Channel) -> FeeRate {
        match channel {
            Channel::Card => self.card,
            Channel::Qr => self.qr,
        }
    }
}

/// Sums payable amounts per currency (ordered by currency code) and applies
/// the fee once per currency: net = gross - fee. Only payable amounts may be
/// passed (the caller filters by [`eligibility`](super::eligibility)), so this takes amounts
/// only. Gross sums saturate at `i64::MAX` rather than overflow (unreachable
/// with real amounts: it takes over nine million maximal ISO 8583 amounts).
pub fn payouts(amounts: &[Money], rate: FeeRate) -> Vec<Payout> {
    let card: Vec<(Money, Channel)> = amounts.iter().map(|m| (*m, Channel::Card)).collect();
    channel_payouts(
        &card,
        FeeRates {
            card: rate,
            qr: rate,
        },
    )
}

/// [`payouts`] for a window of card sales and QR payments: per currency,
/// the card gross and the QR gross each get their own rate, once, on their
/// gross; the payout's count, gross and fee are the sums of the two, and
/// net = gross - fee (no refunds yet: [`net_refunds`] deducts them).
pub fn channel_payouts(amounts: &[(Money, Channel)], rates: FeeRates) -> Vec<Payout> {
    // Per currency: (currency, count, card gross, QR gross).
    let mut sums: BTreeMap<&'static str, (Currency, u64, i64, i64)> = BTreeMap::new();
    for (amount, channel) in amounts {
        let (_, count, card, qr) =
            sums.entry(amount.currency().code())
                .or_insert((amount.currency(), 0, 0, 0));
        *count += 1;
        let gross = match channel {
            Channel::Card => card,
            Channel::Qr => qr,
        };
        *gross = gross.saturating_add(amount.minor_units());
    }
    sums.into_values()
        .map(|(currency, transaction_count, card, qr)| {
            let gross = card.saturating_add(qr);
            let fee = rates.card.fee_on(card) + rates.qr.fee_on(qr);
            Payout {
                currency,
                transaction_count,
                gross_minor_units: gross,
                fee_minor_units: fee,
                net_minor_units: gross - fee,
                refund_count: 0,
                refund_minor_units: 0,
            }
        })
        .collect()
}

/// A merchant refund the acquirer takes back from the merchant's payouts:
/// its key (the refund id) and amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundDebit<K> {
    pub key: K,
    pub amount: Money,
}

/// What [`net_refunds`] decided for one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netting<K> {
    /// The window's payouts with the refunds deducted.
    pub payouts: Vec<Payout>,
    /// The debits deducted in this window, in the order given.
    pub netted: Vec<K>,
    /// The debits that wait for the merchant's next window, in the order
    /// given.
    pub waiting: Vec<K>,
}

/// Deducts a merchant's refund debits, oldest first (the caller passes
/// them in that order), from the window's payouts in their currency: each
/// debit whole, and only while it fits in what is left of that payout's
/// net. A debit that does not fit (or whose currency the window has no
/// payout in) waits for the next window, and a younger one that fits is
/// still deducted: a big refund does not hold back the small ones, and no
/// payout ever goes negative, so the acquirer never has to collect from a
/// merchant. Sum over payouts and debits: gross - fee = net + netted, and
/// netted + waiting = every debit.
pub fn net_refunds<K: Clone>(payouts: &[Payout], debits: &[RefundDebit<K>]) -> Netting<K> {
    let mut payouts = payouts.to_vec();
    let mut netted = Vec::new();
    let mut waiting = Vec::new();
    for debit in debits {
        let fits = payouts.iter_mut().find(|p| {
            p.currency == debit.amount.currency()
                && debit.amount.minor_units() > 0
                && debit.amount.minor_units() <= p.net_minor_units
        });
        match fits {
            Some(payout) => {
                payout.net_minor_units -= debit.amount.minor_units();
                payout.refund_minor_units += debit.amount.minor_units();
                payout.refund_count += 1;
                netted.push(debit.key.clone());
            }
            None => waiting.push(debit.key.clone()),
        }
    }
    Netting {
        payouts,
        netted,
        waiting,
    }
}
