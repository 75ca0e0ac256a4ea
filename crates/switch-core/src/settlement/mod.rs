//! Settlement: batch close and reconciliation with a terminal, the
//! settlement ledger (its status order, its decision, eligibility at a
//! merchant's cut-off), and fees. Batch close is here; the rest is split by
//! concern into [`reconcile`], [`ledger`] and [`fees`], all re-exported
//! (the unit tests of batch close, reconciliation and fees stay here).
//!
//! # Batch close
//!
//! A terminal closes its batch by reporting [`BatchTotals`]: per currency, a
//! count and an amount of sales and of reversals. The host computes its own
//! totals from the transactions it holds for the batch ([`host_totals`]):
//!
//! - a host transaction counts as a **sale** when its status is
//!   [`HostStatus::Unconfirmed`] or [`HostStatus::Confirmed`];
//! - it counts as a **reversal** when its status is [`HostStatus::Reversed`]
//!   with reason [`ReversalReason::TerminalRequested`]: the terminal knows
//!   about the reversals it asked for;
//! - the switch's own reversals (of orphans, issuer timeouts and late
//!   answers) are invisible to the terminal and counted in neither figure.
//!
//! [`close_batch`] answers [`CloseVerdict::Balanced`] only when the totals
//! agree **and** no host transaction in the batch is unconfirmed. Agreeing
//! totals are not evidence about any single transaction (two different sales
//! of the same amount balance each other), so unconfirmed approvals always
//! need the terminal's batch upload.
//!
//! # Upload reconciliation
//!
//! [`reconcile_upload`] ([`reconcile`]) matches the terminal's uploaded sales with the host
//! transactions by (STAN, local date) and gives every host transaction and
//! every uploaded sale exactly one [`ReconciliationOutcome`].
//!
//! # The ledger, eligibility and fees
//!
//! The settlement ledger's status order and its one decision live in
//! [`ledger`]: [`ledger::decide`] moves an entry forward on an approval,
//! confirmation, reversal or conflict, and at a merchant's cut-off pays it
//! or holds it by [`eligibility`]; [`due_cutoff`] says when a window is due.
//! Payable amounts are summed per currency by [`payouts`] ([`fees`]), and
//! the merchant discount ([`FeeRate`]) is applied once per currency on the
//! gross, never per transaction; [`channel_payouts`] does it per channel
//! (card and QR each at the merchant's rate for it, [`FeeRates`]), and
//! [`net_refunds`] deducts the merchant's refunds of earlier QR payments
//! from a window's net, each whole, never below zero.
//!
//! # Ledger rejections
//!
//! An approval whose terminal key another transaction holds is rejected,
//! followed while the rejection is open and resolved once by an operator
//! ([`rejection`]: [`rejection::track`], [`rejection::resolve`]): dismissed
//! as a duplicate, never paid, or admitted as a distinct sale where it
//! stands.

pub mod fees;
pub mod ledger;
pub mod reconcile;
pub mod rejection;

pub use fees::*;
pub use reconcile::*;
// Not `decide`: other lifecycles have one too; it is `ledger::decide`.
pub use ledger::{
    Eligibility, HoldReason, HostStatus, LedgerCommand, LedgerDecision, LedgerEffect, LedgerEntry,
    LedgerRefusal, LedgerStatus, Standing, due_cutoff, eligibility, standing,
};

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use crate::error::InvalidField;
use crate::ids::{ApprovalCode, LocalDate, Stan};
use crate::money::{Currency, Money};
use crate::orphan::ReversalReason;

/// A terminal's batch number: exactly 6 ASCII digits, 000001..=999999.
///
/// Zero is not a batch number: terminals start at 1 and wrap from 999999 to
/// 000001, so "000000" is always a terminal or parsing bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchNumber(u32);

impl BatchNumber {
    /// Field "batch_number".
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        if s.len() != 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidField::new(
                "batch_number",
                format!("must be exactly 6 ASCII digits, got '{s}'"),
            ));
        }
        let value = s
            .bytes()
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
        if value == 0 {
            return Err(InvalidField::new(
                "batch_number",
                "must be between 000001 and 999999, got '000000'",
            ));
        }
        Ok(Self(value))
    }

    pub fn value(&self) -> u32 {
        self.0
    }
}

impl fmt::Display for BatchNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

/// One currency's totals as a terminal reports them (or the host computes
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrencyTotals {
    pub currency: Currency,
    pub sales_count: u64,
    pub sales_minor_units: i64,
    pub reversals_count: u64,
    pub reversals_minor_units: i64,
}

impl CurrencyTotals {
    fn zero(currency: Currency) -> Self {
        Self {
            currency,
            sales_count: 0,
            sales_minor_units: 0,
            reversals_count: 0,
            reversals_minor_units: 0,
        }
    }

    fn is_zero(&self) -> bool {
        self.sales_count == 0
            && self.sales_minor_units == 0
            && self.reversals_count == 0
            && self.reversals_minor_units == 0
    }

    fn figure(&self, figure: TotalsFigure) -> i64 {
        // Counts come from validated i64s or from one increment per
        // transaction, so they never exceed i64::MAX in practice.
        let count = |c: u64| i64::try_from(c).unwrap_or(i64::MAX);
        match figure {
            TotalsFigure::SalesCount => count(self.sales_count),
            TotalsFigure::SalesAmount => self.sales_minor_units,
            TotalsFigure::ReversalsCount => count(self.reversals_count),
            TotalsFigure::ReversalsAmount => self.reversals_minor_units,
        }
    }
}

/// Raw totals as they come off the wire (gRPC int64s, currency string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawCurrencyTotals<'a> {
    pub currency: &'a str,
    pub sales_count: i64,
    pub sales_minor_units: i64,
    pub reversals_count: i64,
    pub reversals_minor_units: i64,
}

/// A batch's totals per currency, ordered by currency code.
///
/// Entries whose four figures are all zero are never stored, so they are
/// ignored by comparisons (`==`, [`BatchTotals::differences`]) and by
/// [`BatchTotals::currencies`]: a terminal that reports "EUR 0/0/0/0" agrees
/// with a host that has no EUR transaction at all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchTotals {
    by_currency: BTreeMap<&'static str, CurrencyTotals>,
}

impl BatchTotals {
    /// No single figure may exceed 10^15 minor units: three orders of
    /// magnitude above the largest single ISO 8583 amount, far beyond any
    /// real batch, and small enough that sums never overflow an `i64`.
    pub const MAX_AMOUNT_MINOR_UNITS: i64 = 1_000_000_000_000_000;

    /// Validates the terminal's totals:
    ///
    /// - the currency parses (field "totals.currency");
    /// - every count and amount is >= 0 (fields "totals.sales_count",
    ///   "totals.sales_minor_units", "totals.reversals_count",
    ///   "totals.reversals_minor_units"; the reason says "must not be
    ///   negative");
    /// - an amount is at most [`Self::MAX_AMOUNT_MINOR_UNITS`] (10^15);
    /// - a count of 0 with a non-zero amount, or a non-zero count with an
    ///   amount of 0, is invalid, reported on the amount field (amounts are
    ///   not required to be <= `Money::MAX_MINOR_UNITS` * count);
    /// - the same currency twice is invalid (field "totals.currency", reason
    ///   "duplicate currency EUR"), even when one of them is all zeros.
    pub fn parse(raw: &[RawCurrencyTotals<'_>]) -> Result<Self, InvalidField> {
        let mut totals = BatchTotals::default();
        let mut seen = HashSet::new();
        for r in raw {
            let currency = Currency::parse(r.currency)
                .map_err(|e| InvalidField::new("totals.currency", e.reason))?;
            if !seen.insert(currency.code()) {
                return Err(InvalidField::new(
                    "totals.currency",
                    format!("duplicate currency {currency}"),
                ));
            }
            let sales_count = count_field("totals.sales_count", r.sales_count, currency)?;
            let reversals_count =
                count_field("totals.reversals_count", r.reversals_count, currency)?;
            let sales_minor_units = amount_field(
                "totals.sales_minor_units",
                r.sales_minor_units,
                "totals.sales_count",
                sales_count,
                currency,
            )?;
            let reversals_minor_units = amount_field(
                "totals.reversals_minor_units",
                r.reversals_minor_units,
                "totals.reversals_count",
                reversals_count,
                currency,
            )?;
            let entry = CurrencyTotals {
                currency,
                sales_count,
                sales_minor_units,
                reversals_count,
                reversals_minor_units,
            };
            if !entry.is_zero() {
                totals.by_currency.insert(currency.code(), entry);
            }
        }
        Ok(totals)
    }

    /// Counts one sale. Sums saturate instead of overflowing (unreachable
    /// with real amounts: it takes millions of maximal ISO 8583 amounts).
    pub fn add_sale(&mut self, amount: Money) {
        let entry = self.entry(amount.currency());
        entry.sales_count = entry.sales_count.saturating_add(1);
        entry.sales_minor_units = entry.sales_minor_units.saturating_add(amount.minor_units());
    }

    /// Counts one reversal (of a sale the terminal knows about).
    pub fn add_reversal(&mut self, amount: Money) {
        let entry = self.entry(amount.currency());
        entry.reversals_count = entry.reversals_count.saturating_add(1);
        entry.reversals_minor_units = entry
            .reversals_minor_units
            .saturating_add(amount.minor_units());
    }

    fn entry(&mut self, currency: Currency) -> &mut CurrencyTotals {
        self.by_currency
            .entry(currency.code())
            .or_insert_with(|| CurrencyTotals::zero(currency))
    }

    /// The non-zero entries, ordered by currency code. Entries whose four
    /// figures are all zero are ignored by comparisons and not listed.
    pub fn currencies(&self) -> impl Iterator<Item = &CurrencyTotals> {
        self.by_currency.values()
    }

    /// No non-zero entry.
    pub fn is_empty(&self) -> bool {
        self.by_currency.is_empty()
    }

    /// Every figure that differs, terminal (`self`) vs `host`, ordered by
    /// currency code then by figure (sales count, sales amount, reversals
    /// count, reversals amount). A currency missing on one side counts as
    /// all zeros there.
    pub fn differences(&self, host: &BatchTotals) -> Vec<TotalsDifference> {
        let codes: BTreeMap<&'static str, Currency> = self
            .currencies()
            .chain(host.currencies())
            .map(|t| (t.currency.code(), t.currency))
            .collect();
        let mut out = Vec::new();
        for (code, currency) in codes {
            let zero = CurrencyTotals::zero(currency);
            let terminal = self.by_currency.get(code).unwrap_or(&zero);
            let hosts = host.by_currency.get(code).unwrap_or(&zero);
            for figure in TotalsFigure::ALL {
                let (t, h) = (terminal.figure(figure), hosts.figure(figure));
                if t != h {
                    out.push(TotalsDifference {
                        currency,
                        figure,
                        terminal: t,
                        host: h,
                    });
                }
            }
        }
        out
    }
}

fn count_field(field: &'static str, value: i64, currency: Currency) -> Result<u64, InvalidField> {
    u64::try_from(value).map_err(|_| {
        InvalidField::new(
            field,
            format!("must not be negative, got {value} for {currency}"),
        )
    })
}

fn amount_field(
    field: &'static str,
    value: i64,
    count_name: &str,
    count: u64,
    currency: Currency,
) -> Result<i64, InvalidField> {
    if value < 0 {
        return Err(InvalidField::new(
            field,
            format!("must not be negative, got {value} for {currency}"),
        ));
    }
    if value > BatchTotals::MAX_AMOUNT_MINOR_UNITS {
        return Err(InvalidField::new(
            field,
            format!(
                "must not exceed {} minor units, got {value} for {currency}",
                BatchTotals::MAX_AMOUNT_MINOR_UNITS
            ),
        ));
    }
    if count == 0 && value != 0 {
        return Err(InvalidField::new(
            field,
            format!("must be 0 when {count_name} is 0, got {value} for {currency}"),
        ));
    }
    if count != 0 && value == 0 {
        return Err(InvalidField::new(
            field,
            format!("must not be 0 when {count_name} is {count} for {currency}"),
        ));
    }
    Ok(value)
}

/// One of the four figures of a currency's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TotalsFigure {
    SalesCount,
    SalesAmount,
    ReversalsCount,
    ReversalsAmount,
}

impl TotalsFigure {
    /// In the order differences are reported.
    pub const ALL: [TotalsFigure; 4] = [
        Self::SalesCount,
        Self::SalesAmount,
        Self::ReversalsCount,
        Self::ReversalsAmount,
    ];

    /// The wire field name of the figure.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::SalesCount => "sales_count",
            Self::SalesAmount => "sales_minor_units",
            Self::ReversalsCount => "reversals_count",
            Self::ReversalsAmount => "reversals_minor_units",
        }
    }
}

impl fmt::Display for TotalsFigure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One figure on which terminal and host disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotalsDifference {
    pub currency: Currency,
    pub figure: TotalsFigure,
    pub terminal: i64,
    pub host: i64,
}

impl fmt::Display for TotalsDifference {
    /// E.g. "EUR sales_minor_units: terminal 3000, host 4000".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: terminal {}, host {}",
            self.currency, self.figure, self.terminal, self.host
        )
    }
}

/// One approval the host holds for a terminal's batch. `key` is the
/// caller's own id (a transaction id, a row id), carried through untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTransaction<K> {
    pub key: K,
    pub stan: Stan,
    pub local_date: LocalDate,
    pub amount: Money,
    pub approval_code: Option<ApprovalCode>,
    pub status: HostStatus,
}

/// The host's totals for a batch: Unconfirmed and Confirmed transactions
/// count as sales; Reversed with reason `TerminalRequested` counts as a
/// reversal; the switch's own reversals (orphans, issuer timeouts, late
/// answers, batch orphans) count in neither figure, because the terminal
/// cannot know about them.
pub fn host_totals<K>(transactions: &[HostTransaction<K>]) -> BatchTotals {
    let mut totals = BatchTotals::default();
    for t in transactions {
        match t.status {
            HostStatus::Unconfirmed | HostStatus::Confirmed => totals.add_sale(t.amount),
            HostStatus::Reversed {
                reason: ReversalReason::TerminalRequested,
                ..
            } => totals.add_reversal(t.amount),
            HostStatus::Reversed { .. } => {}
        }
    }
    totals
}

/// The answer to a batch close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseVerdict {
    Balanced,
    OutOfBalance(OutOfBalance),
}

/// Why a batch did not balance: the differing figures, and how many host
/// transactions in the batch are still unconfirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfBalance {
    pub differences: Vec<TotalsDifference>,
    pub unconfirmed: usize,
}

impl fmt::Display for OutOfBalance {
    /// E.g. "EUR sales_count: terminal 3, host 4; 2 approvals unconfirmed at
    /// host".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.differences.iter().map(ToString::to_string).collect();
        match self.unconfirmed {
            0 => {}
            1 => parts.push("1 approval unconfirmed at host".to_owned()),
            n => parts.push(format!("{n} approvals unconfirmed at host")),
        }
        if parts.is_empty() {
            return f.write_str("no differences");
        }
        f.write_str(&parts.join("; "))
    }
}

/// Closes a batch: Balanced only when the totals agree AND no host
/// transaction in the batch is Unconfirmed. Agreeing totals are not
/// evidence about any single transaction (two different sales of the same
/// amount balance each other), so unconfirmed approvals always need the
/// upload.
pub fn close_batch<K>(terminal: &BatchTotals, host: &[HostTransaction<K>]) -> CloseVerdict {
    let differences = terminal.differences(&host_totals(host));
    let unconfirmed = host
        .iter()
        .filter(|t| t.status == HostStatus::Unconfirmed)
        .count();
    if differences.is_empty() && unconfirmed == 0 {
        CloseVerdict::Balanced
    } else {
        CloseVerdict::OutOfBalance(OutOfBalance {
            differences,
            unconfirmed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cur(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn eur(minor: i64) -> Money {
        Money::new(minor, cur("EUR"))
    }

    fn stan(n: u32) -> Stan {
        Stan::parse(&format!("{n:06}")).unwrap()
    }

    fn day(s: &str) -> LocalDate {
        LocalDate::parse(s).unwrap()
    }

    fn code(s: &str) -> Option<ApprovalCode> {
        Some(ApprovalCode::parse(s).unwrap())
    }

    fn raw(currency: &str, sc: i64, sa: i64, rc: i64, ra: i64) -> RawCurrencyTotals<'_> {
        RawCurrencyTotals {
            currency,
            sales_count: sc,
            sales_minor_units: sa,
            reversals_count: rc,
            reversals_minor_units: ra,
        }
    }

    fn host_tx(key: u32, n: u32, amount: Money, status: HostStatus) -> HostTransaction<u32> {
        HostTransaction {
            key,
            stan: stan(n),
            local_date: day("2026-11-24"),
            amount,
            approval_code: code("ABC123"),
            status,
        }
    }

    fn sale(n: u32, amount: Money) -> UploadedSale {
        UploadedSale {
            stan: stan(n),
            local_date: day("2026-11-24"),
            amount,
            approval_code: code("ABC123"),
        }
    }

    const fn reversed(reason: ReversalReason, completed: bool) -> HostStatus {
        HostStatus::Reversed { reason, completed }
    }

    #[test]
    fn batch_number_parsing() {
        for (ok, v) in [("000001", 1), ("999999", 999_999), ("012345", 12_345)] {
            let b = BatchNumber::parse(ok).unwrap();
            assert_eq!(b.value(), v);
            assert_eq!(b.to_string(), ok);
        }
        for bad in [
            "000000",
            "",
            "1",
            "00001",
            "0000001",
            "12345a",
            " 12345",
            "-00001",
            "１２３４５６",
        ] {
            let err = BatchNumber::parse(bad).unwrap_err();
            assert_eq!(err.field, "batch_number", "{bad}");
        }
        assert!(BatchNumber::parse("000002").unwrap() > BatchNumber::parse("000001").unwrap());
    }

    #[test]
    fn totals_parse_ok_ordered_and_zero_entries_dropped() {
        let t = BatchTotals::parse(&[
            raw("USD", 1, 500, 0, 0),
            raw("EUR", 3, 3000, 1, 100),
            raw("JPY", 0, 0, 0, 0),
        ])
        .unwrap();
        let codes: Vec<_> = t.currencies().map(|c| c.currency.code()).collect();
        assert_eq!(codes, ["EUR", "USD"]);
        let e = t.currencies().next().unwrap();
        assert_eq!(
            (
                e.sales_count,
                e.sales_minor_units,
                e.reversals_count,
                e.reversals_minor_units
            ),
            (3, 3000, 1, 100)
        );
        assert!(!t.is_empty());
        let zero = BatchTotals::parse(&[raw("EUR", 0, 0, 0, 0)]).unwrap();
        assert!(zero.is_empty());
        assert_eq!(zero, BatchTotals::default());
        assert!(BatchTotals::parse(&[]).unwrap().is_empty());
        assert!(
            BatchTotals::parse(&[raw("EUR", 1, 1_000_000_000_000_000, 0, 0)]).is_ok(),
            "10^15 itself is allowed"
        );
    }

    #[test]
    fn totals_parse_errors_name_the_field() {
        let cases: &[(RawCurrencyTotals<'_>, &str, &str)] = &[
            (raw("eur", 1, 1, 0, 0), "totals.currency", "uppercase"),
            (raw("XXX", 1, 1, 0, 0), "totals.currency", "unknown"),
            (
                raw("EUR", -1, 1, 0, 0),
                "totals.sales_count",
                "must not be negative",
            ),
            (
                raw("EUR", 1, -1, 0, 0),
                "totals.sales_minor_units",
                "must not be negative",
            ),
            (
                raw("EUR", 0, 0, -1, 1),
                "totals.reversals_count",
                "must not be negative",
            ),
            (
                raw("EUR", 0, 0, 1, -1),
                "totals.reversals_minor_units",
                "must not be negative",
            ),
            (
                raw("EUR", 0, 5, 0, 0),
                "totals.sales_minor_units",
                "must be 0",
            ),
            (
                raw("EUR", 2, 0, 0, 0),
                "totals.sales_minor_units",
                "must not be 0",
            ),
            (
                raw("EUR", 0, 0, 0, 5),
                "totals.reversals_minor_units",
                "must be 0",
            ),
            (
                raw("EUR", 0, 0, 2, 0),
                "totals.reversals_minor_units",
                "must not be 0",
            ),
            (
                raw("EUR", 1, 1_000_000_000_000_001, 0, 0),
                "totals.sales_minor_units",
                "must not exceed",
            ),
            (
                raw("EUR", 0, 0, 1, i64::MAX),
                "totals.reversals_minor_units",
                "must not exceed",
            ),
        ];
        for (r, field, reason) in cases {
            let err = BatchTotals::parse(&[*r]).unwrap_err();
            assert_eq!(err.field, *field, "{r:?}");
            assert!(err.reason.contains(reason), "{r:?}: {err}");
        }
    }

    #[test]
    fn totals_parse_rejects_duplicate_currency() {
        let err =
            BatchTotals::parse(&[raw("EUR", 1, 100, 0, 0), raw("EUR", 0, 0, 0, 0)]).unwrap_err();
        assert_eq!(
            err,
            InvalidField::new("totals.currency", "duplicate currency EUR")
        );
        assert!(BatchTotals::parse(&[raw("EUR", 1, 100, 0, 0), raw("USD", 1, 100, 0, 0)]).is_ok());
    }

    #[test]
    fn differences_and_display() {
        let terminal =
            BatchTotals::parse(&[raw("USD", 1, 500, 0, 0), raw("EUR", 3, 3000, 1, 100)]).unwrap();
        let mut host = BatchTotals::default();
        for m in [eur(1000), eur(1000), eur(1000), eur(1000)] {
            host.add_sale(m);
        }
        host.add_reversal(eur(100));
        host.add_sale(Money::new(7, cur("JPY")));
        let diffs = terminal.differences(&host);
        let shown: Vec<String> = diffs.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "EUR sales_count: terminal 3, host 4",
                "EUR sales_minor_units: terminal 3000, host 4000",
                "JPY sales_count: terminal 0, host 1",
                "JPY sales_minor_units: terminal 0, host 7",
                "USD sales_count: terminal 1, host 0",
                "USD sales_minor_units: terminal 500, host 0",
            ]
        );
        assert_eq!(diffs[1].figure, TotalsFigure::SalesAmount);
        assert_eq!((diffs[1].terminal, diffs[1].host), (3000, 4000));
        assert!(terminal.differences(&terminal).is_empty());
        assert_eq!(
            TotalsFigure::ALL.map(|f| f.as_str()),
            [
                "sales_count",
                "sales_minor_units",
                "reversals_count",
                "reversals_minor_units"
            ]
        );
        // An all-zero entry agrees with no entry at all.
        let zero = BatchTotals::parse(&[raw("EUR", 0, 0, 0, 0)]).unwrap();
        assert!(zero.differences(&BatchTotals::default()).is_empty());
    }

    #[test]
    fn host_totals_counts_terminal_requested_reversals_only() {
        let host = [
            host_tx(1, 1, eur(1000), HostStatus::Confirmed),
            host_tx(2, 2, eur(2000), HostStatus::Unconfirmed),
            host_tx(
                3,
                3,
                eur(300),
                reversed(ReversalReason::TerminalRequested, true),
            ),
            host_tx(
                4,
                4,
                eur(400),
                reversed(ReversalReason::TerminalRequested, false),
            ),
            host_tx(
                5,
                5,
                eur(5000),
                reversed(ReversalReason::NoTerminalAcknowledgement, true),
            ),
            host_tx(
                6,
                6,
                eur(6000),
                reversed(ReversalReason::IssuerTimeout, false),
            ),
            host_tx(
                7,
                7,
                eur(7000),
                reversed(ReversalReason::LateIssuerResponse, true),
            ),
            host_tx(8, 8, eur(8000), reversed(ReversalReason::BatchOrphan, true)),
        ];
        let expected = BatchTotals::parse(&[raw("EUR", 2, 3000, 2, 700)]).unwrap();
        assert_eq!(host_totals(&host), expected);
        assert!(host_totals::<u32>(&[]).is_empty());
    }

    #[test]
    fn close_batch_verdicts() {
        let terminal = BatchTotals::parse(&[raw("EUR", 2, 3000, 0, 0)]).unwrap();
        let confirmed = [
            host_tx(1, 1, eur(1000), HostStatus::Confirmed),
            host_tx(2, 2, eur(2000), HostStatus::Confirmed),
            host_tx(
                3,
                3,
                eur(999),
                reversed(ReversalReason::NoTerminalAcknowledgement, true),
            ),
        ];
        assert_eq!(close_batch(&terminal, &confirmed), CloseVerdict::Balanced);

        // Out of balance by totals.
        let more = [
            host_tx(1, 1, eur(1000), HostStatus::Confirmed),
            host_tx(2, 2, eur(2000), HostStatus::Confirmed),
            host_tx(4, 4, eur(500), HostStatus::Confirmed),
        ];
        let CloseVerdict::OutOfBalance(oob) = close_batch(&terminal, &more) else {
            panic!("expected out of balance");
        };
        assert_eq!(oob.unconfirmed, 0);
        assert_eq!(
            oob.to_string(),
            "EUR sales_count: terminal 2, host 3; EUR sales_minor_units: terminal 3000, host 3500"
        );

        // Totals agree but approvals are unconfirmed: still needs the upload.
        let unconfirmed = [
            host_tx(1, 1, eur(1000), HostStatus::Unconfirmed),
            host_tx(2, 2, eur(2000), HostStatus::Unconfirmed),
        ];
        assert_eq!(
            close_batch(&terminal, &unconfirmed),
            CloseVerdict::OutOfBalance(OutOfBalance {
                differences: vec![],
                unconfirmed: 2
            })
        );
        let one = [
            host_tx(1, 1, eur(1000), HostStatus::Confirmed),
            host_tx(2, 2, eur(2000), HostStatus::Unconfirmed),
        ];
        let CloseVerdict::OutOfBalance(oob) = close_batch(&terminal, &one) else {
            panic!("expected out of balance");
        };
        assert_eq!(oob.to_string(), "1 approval unconfirmed at host");

        // Both.
        let terminal3 = BatchTotals::parse(&[raw("EUR", 3, 3000, 0, 0)]).unwrap();
        let CloseVerdict::OutOfBalance(oob) = close_batch(&terminal3, &unconfirmed) else {
            panic!("expected out of balance");
        };
        assert_eq!(
            oob.to_string(),
            "EUR sales_count: terminal 3, host 2; 2 approvals unconfirmed at host"
        );
        assert_eq!(
            close_batch::<u32>(&BatchTotals::default(), &[]),
            CloseVerdict::Balanced
        );
    }

    #[test]
    fn host_status_names() {
        assert_eq!(HostStatus::Unconfirmed.as_str(), "unconfirmed");
        assert_eq!(HostStatus::Confirmed.as_str(), "confirmed");
        assert_eq!(
            reversed(ReversalReason::IssuerTimeout, false).as_str(),
            "reversal_pending"
        );
        assert_eq!(
            reversed(ReversalReason::IssuerTimeout, true).as_str(),
            "reversed"
        );
    }

    #[test]
    fn reconcile_one_case_per_outcome_in_order() {
        use ReconciliationOutcome as O;
        let host = [
            host_tx(10, 1, eur(100), HostStatus::Confirmed),
            host_tx(11, 2, eur(200), HostStatus::Unconfirmed),
            host_tx(12, 3, eur(300), HostStatus::Unconfirmed),
            host_tx(
                13,
                4,
                eur(400),
                reversed(ReversalReason::IssuerTimeout, false),
            ),
            host_tx(14, 5, eur(500), HostStatus::Confirmed),
            host_tx(15, 6, eur(600), HostStatus::Confirmed),
            host_tx(
                16,
                7,
                eur(700),
                reversed(ReversalReason::NoTerminalAcknowledgement, true),
            ),
        ];
        let uploaded = [
            sale(99, eur(9900)),
            sale(5, eur(555)),
            sale(4, eur(400)),
            sale(2, eur(200)),
            sale(1, eur(100)),
            sale(98, eur(9800)),
        ];
        let out = reconcile_upload(&host, &uploaded).unwrap();
        let got: Vec<(Option<u32>, u32, O)> = out
            .iter()
            .map(|r| (r.key, r.stan.value(), r.outcome))
            .collect();
        assert_eq!(
            got,
            [
                (Some(10), 1, O::Matched),
                (Some(11), 2, O::ConfirmedByUpload),
                (Some(12), 3, O::OrphanFound),
                (Some(13), 4, O::ConflictReversedAtHost),
                (Some(14), 5, O::Mismatch),
                (Some(15), 6, O::ConfirmedNotUploaded),
                (Some(16), 7, O::ReversedNotUploaded),
                (None, 99, O::UnknownAtHost),
                (None, 98, O::UnknownAtHost),
            ]
        );
        assert_eq!(out[4].detail, "terminal EUR 5.55, host EUR 5.00");
        assert!(
            out[3].detail.contains("reversal pending"),
            "{}",
            out[3].detail
        );
        let names: Vec<_> = O::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            [
                "matched",
                "confirmed_by_upload",
                "orphan_reversal_requested",
                "conflict_reversed_at_host",
                "unknown_at_host",
                "mismatch",
                "confirmed_not_uploaded",
                "reversed_not_uploaded",
            ]
        );
        let conflicts: Vec<_> = O::ALL.into_iter().filter(O::is_conflict).collect();
        assert_eq!(conflicts, [O::ConflictReversedAtHost, O::Mismatch]);
    }

    #[test]
    fn reconcile_mismatch_by_amount_and_by_approval_code() {
        use ReconciliationOutcome as O;
        let host = [
            host_tx(1, 1, eur(1200), HostStatus::Unconfirmed),
            host_tx(2, 2, eur(1000), HostStatus::Unconfirmed),
            host_tx(3, 3, eur(1000), HostStatus::Confirmed),
            host_tx(4, 4, eur(1000), HostStatus::Unconfirmed),
            host_tx(5, 5, eur(1000), HostStatus::Unconfirmed),
        ];
        let mut other_code = sale(3, eur(1000));
        other_code.approval_code = code("XYZ789");
        let mut no_code = sale(4, eur(1000));
        no_code.approval_code = None;
        let uploaded = [
            sale(1, eur(1000)),
            sale(2, Money::new(1000, cur("USD"))),
            other_code,
            no_code,
            sale(5, eur(1000)),
        ];
        let out = reconcile_upload(&host, &uploaded).unwrap();
        let outcomes: Vec<_> = out.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [
                O::Mismatch,
                O::Mismatch,
                O::Mismatch,
                O::ConfirmedByUpload,
                O::ConfirmedByUpload
            ]
        );
        assert_eq!(out[0].detail, "terminal EUR 10.00, host EUR 12.00");
        assert_eq!(out[1].detail, "terminal USD 10.00, host EUR 10.00");
        assert_eq!(
            out[2].detail,
            "terminal approval code XYZ789, host approval code ABC123"
        );
    }

    #[test]
    fn reconcile_rejects_a_sale_listed_twice() {
        let host = [host_tx(1, 123, eur(100), HostStatus::Unconfirmed)];
        let err = reconcile_upload(&host, &[sale(123, eur(100)), sale(123, eur(100))]).unwrap_err();
        assert_eq!(
            err,
            InvalidField::new("transactions", "STAN 000123 on 2026-11-24 listed twice")
        );
        // Same STAN on another date is another transaction.
        let mut next_day = sale(123, eur(100));
        next_day.local_date = day("2026-11-25");
        let out = reconcile_upload(&host, &[sale(123, eur(100)), next_day]).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].outcome, ReconciliationOutcome::UnknownAtHost);
        assert_eq!(out[1].local_date, day("2026-11-25"));
    }

    #[test]
    fn eligibility_table() {
        use Eligibility::*;
        use HoldReason::*;
        let mut cases = vec![
            (HostStatus::Confirmed, false, Payable),
            (HostStatus::Confirmed, true, Held(Conflict)),
            (HostStatus::Unconfirmed, false, Held(AwaitingEvidence)),
            (HostStatus::Unconfirmed, true, Held(Conflict)),
        ];
        for reason in ReversalReason::ALL {
            cases.push((reversed(reason, false), false, Held(ReversalPending)));
            cases.push((reversed(reason, false), true, Held(Conflict)));
            cases.push((reversed(reason, true), false, NotPayable));
            cases.push((reversed(reason, true), true, NotPayable));
        }
        for (status, conflict, expected) in cases {
            assert_eq!(
                eligibility(status, conflict),
                expected,
                "{status:?} {conflict}"
            );
        }
        assert_eq!(
            HoldReason::ALL.map(|h| h.as_str()),
            ["awaiting_evidence", "reversal_pending", "conflict"]
        );
    }

    #[test]
    fn fee_rounding_half_up() {
        let r = FeeRate::DEFAULT;
        assert_eq!(r.basis_points(), 60);
        assert_eq!(FeeRate::default(), r);
        for (gross, fee) in [(1000, 6), (83, 0), (84, 1), (250, 2), (0, 0), (-100, 0)] {
            assert_eq!(r.fee_on(gross), fee, "60bp of {gross}");
        }
        let full = FeeRate::from_basis_points(10_000).unwrap();
        assert_eq!(full.fee_on(i64::MAX), i64::MAX);
        assert_eq!(FeeRate::from_basis_points(0).unwrap().fee_on(i64::MAX), 0);
        assert_eq!(
            FeeRate::from_basis_points(5_000).unwrap().fee_on(1),
            1,
            "0.5 rounds up"
        );
    }

    #[test]
    fn fee_rate_bounds() {
        assert_eq!(FeeRate::from_basis_points(0).unwrap().basis_points(), 0);
        assert_eq!(
            FeeRate::from_basis_points(10_000).unwrap().basis_points(),
            10_000
        );
        for bad in [10_001, 65_535, 65_536, u32::MAX] {
            let err = FeeRate::from_basis_points(bad).unwrap_err();
            assert_eq!(err.field, "fee_basis_points");
            assert!(err.reason.contains(&bad.to_string()));
        }
    }

    #[test]
    fn payouts_per_currency_fee_once() {
        let jpy = cur("JPY");
        let amounts = [
            eur(83),
            Money::new(500, jpy),
            eur(83),
            eur(84),
            Money::new(100, cur("USD")),
        ];
        let p = payouts(&amounts, FeeRate::DEFAULT);
        assert_eq!(
            p,
            [
                // 60bp of 250 = 1.5 -> 2 (per transaction it would be 0+0+1).
                Payout {
                    currency: cur("EUR"),
                    transaction_count: 3,
                    gross_minor_units: 250,
                    fee_minor_units: 2,
                    net_minor_units: 248,
                    refund_count: 0,
                    refund_minor_units: 0,
                },
                Payout {
                    currency: jpy,
                    transaction_count: 1,
                    gross_minor_units: 500,
                    fee_minor_units: 3,
                    net_minor_units: 497,
                    refund_count: 0,
                    refund_minor_units: 0,
                },
                Payout {
                    currency: cur("USD"),
                    transaction_count: 1,
                    gross_minor_units: 100,
                    fee_minor_units: 1,
                    net_minor_units: 99,
                    refund_count: 0,
                    refund_minor_units: 0,
                },
            ]
        );
        assert!(payouts(&[], FeeRate::DEFAULT).is_empty());
    }

    fn rates(card: u32, qr: u32) -> FeeRates {
        FeeRates {
            card: FeeRate::from_basis_points(card).unwrap(),
            qr: FeeRate::from_basis_points(qr).unwrap(),
        }
    }

    #[test]
    fn card_and_qr_each_pay_their_rate_once_on_their_gross() {
        use crate::orphan::Channel::{Card, Qr};
        // Card 250 at 60bp = 1.5 -> 2; QR 250 at 200bp = 5; per currency.
        let amounts = [
            (eur(125), Card),
            (eur(125), Card),
            (eur(100), Qr),
            (eur(150), Qr),
            (Money::new(1000, cur("JPY")), Qr),
        ];
        let p = channel_payouts(&amounts, rates(60, 200));
        assert_eq!(
            p.iter()
                .map(|p| (
                    p.currency.code(),
                    p.transaction_count,
                    p.gross_minor_units,
                    p.fee_minor_units,
                    p.net_minor_units
                ))
                .collect::<Vec<_>>(),
            [("EUR", 4, 500, 7, 493), ("JPY", 1, 1000, 20, 980)]
        );
        // Two fees rounded apart, not one on the sum: 83 at 60bp (0.498 ->
        // 0) twice is 0 + 0, where 166 at 60bp would be 1.
        let split = channel_payouts(&[(eur(83), Card), (eur(83), Qr)], rates(60, 60));
        assert_eq!(split[0].fee_minor_units, 0);
        // All card: the same as `payouts` at the card rate.
        let card: Vec<Money> = amounts.iter().map(|(m, _)| *m).collect();
        let all_card: Vec<_> = card.iter().map(|m| (*m, Card)).collect();
        assert_eq!(
            channel_payouts(&all_card, rates(60, 200)),
            payouts(&card, FeeRate::DEFAULT)
        );
    }

    fn payout_of(code: &str, net: i64) -> Payout {
        Payout {
            currency: cur(code),
            transaction_count: 1,
            gross_minor_units: net,
            fee_minor_units: 0,
            net_minor_units: net,
            refund_count: 0,
            refund_minor_units: 0,
        }
    }

    fn debit(key: &'static str, code: &str, minor: i64) -> RefundDebit<&'static str> {
        RefundDebit {
            key,
            amount: Money::new(minor, cur(code)),
        }
    }

    #[test]
    fn refunds_are_netted_oldest_first_each_whole_and_never_below_zero() {
        let window = [payout_of("EUR", 1000), payout_of("USD", 50)];
        let n = net_refunds(
            &window,
            &[
                debit("r1", "EUR", 600),
                // Does not fit in the 400 left: waits.
                debit("r2", "EUR", 500),
                // Younger, but fits: netted.
                debit("r3", "EUR", 400),
                // No JPY payout in this window: waits.
                debit("r4", "JPY", 10),
                // Exactly the USD net: netted to zero.
                debit("r5", "USD", 50),
            ],
        );
        assert_eq!(n.netted, ["r1", "r3", "r5"]);
        assert_eq!(n.waiting, ["r2", "r4"]);
        let eur = &n.payouts[0];
        assert_eq!(
            (
                eur.net_minor_units,
                eur.refund_count,
                eur.refund_minor_units
            ),
            (0, 2, 1000)
        );
        let usd = &n.payouts[1];
        assert_eq!(
            (
                usd.net_minor_units,
                usd.refund_count,
                usd.refund_minor_units
            ),
            (0, 1, 50)
        );
        // Gross and fee are untouched by refunds.
        assert_eq!(eur.gross_minor_units, 1000);
        // Nothing to net: the payouts as they were.
        let none = net_refunds::<&str>(&window, &[]);
        assert_eq!(none.payouts, window);
        assert!(none.netted.is_empty() && none.waiting.is_empty());
    }

    proptest! {
        #[test]
        fn fee_is_within_half_a_minor_unit(gross in 0i64..=100_000_000_000_000, bp in 0u32..=10_000) {
            let fee = FeeRate::from_basis_points(bp).unwrap().fee_on(gross);
            prop_assert!(0 <= fee && fee <= gross);
            // |fee - gross*bp/10000| <= 1/2  <=>  |20000*fee - 2*gross*bp| <= 10000
            let exact_x2 = 2 * i128::from(gross) * i128::from(bp);
            let err = (20_000 * i128::from(fee) - exact_x2).abs();
            prop_assert!(err <= 10_000, "gross {} bp {} fee {}", gross, bp, fee);
        }

        /// Whatever the window and the debits: every debit is netted or
        /// waits, exactly once; per currency, the payout plus what was
        /// netted is gross - fee; no payout goes negative; and a debit
        /// that waits did not fit in what was left when its turn came.
        #[test]
        fn netting_adds_up_and_never_goes_negative(
            sales in prop::collection::vec(
                (prop::sample::select(vec!["EUR", "USD", "JPY"]), 1i64..=100_000, any::<bool>()),
                0..20,
            ),
            debits in prop::collection::vec(
                (prop::sample::select(vec!["EUR", "USD", "JPY"]), 1i64..=150_000),
                0..20,
            ),
            card_bp in 0u32..=10_000,
            qr_bp in 0u32..=10_000,
        ) {
            use crate::orphan::Channel;
            let amounts: Vec<(Money, Channel)> = sales
                .iter()
                .map(|(c, m, qr)| (Money::new(*m, cur(c)), if *qr { Channel::Qr } else { Channel::Card }))
                .collect();
            let window = channel_payouts(&amounts, rates(card_bp, qr_bp));
            let debits: Vec<RefundDebit<usize>> = debits
                .iter()
                .enumerate()
                .map(|(i, (c, m))| RefundDebit { key: i, amount: Money::new(*m, cur(c)) })
                .collect();
            let n = net_refunds(&window, &debits);
            let mut all: Vec<usize> = n.netted.iter().chain(&n.waiting).copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..debits.len()).collect::<Vec<_>>());
            prop_assert_eq!(n.payouts.len(), window.len());
            for (after, before) in n.payouts.iter().zip(&window) {
                prop_assert!(after.net_minor_units >= 0);
                prop_assert_eq!(after.gross_minor_units, before.gross_minor_units);
                prop_assert_eq!(after.fee_minor_units, before.fee_minor_units);
                let netted: i64 = n.netted.iter()
                    .map(|k| &debits[*k])
                    .filter(|d| d.amount.currency() == after.currency)
                    .map(|d| d.amount.minor_units())
                    .sum();
                prop_assert_eq!(after.refund_minor_units, netted);
                prop_assert_eq!(
                    after.net_minor_units + netted,
                    after.gross_minor_units - after.fee_minor_units
                );
                let waiting_here = n.waiting.iter()
                    .map(|k| &debits[*k])
                    .filter(|d| d.amount.currency() == after.currency);
                // What is left is less than every debit that waits: none
                // was passed over that would have fitted at the end.
                for d in waiting_here {
                    prop_assert!(d.amount.minor_units() > after.net_minor_units);
                }
            }
            // The sum over the window and the debits still owed:
            // payouts + netted = gross - fees, debits = netted + waiting.
            let total_debits: i64 = debits.iter().map(|d| d.amount.minor_units()).sum();
            let netted_total: i64 = n.payouts.iter().map(|p| p.refund_minor_units).sum();
            let waiting_total: i64 = n.waiting.iter().map(|k| debits[*k].amount.minor_units()).sum();
            prop_assert_eq!(netted_total + waiting_total, total_debits);
            let gross_less_fees: i64 = window.iter().map(|p| p.gross_minor_units - p.fee_minor_units).sum();
            let paid: i64 = n.payouts.iter().map(|p| p.net_minor_units).sum();
            prop_assert_eq!(paid + netted_total, gross_less_fees);
        }

        #[test]
        fn payouts_add_up(
            amounts in prop::collection::vec(
                (prop::sample::select(vec!["EUR", "USD", "JPY", "KWD"]), 1i64..=Money::MAX_MINOR_UNITS),
                0..40,
            ),
            bp in 0u32..=10_000,
        ) {
            let amounts: Vec<Money> = amounts
                .into_iter()
                .map(|(c, m)| Money::new(m, cur(c)))
                .collect();
            let p = payouts(&amounts, FeeRate::from_basis_points(bp).unwrap());
            let count: u64 = p.iter().map(|p| p.transaction_count).sum();
            prop_assert_eq!(count, amounts.len() as u64);
            for w in p.windows(2) {
                prop_assert!(w[0].currency.code() < w[1].currency.code());
            }
            for p in &p {
                prop_assert_eq!(p.net_minor_units + p.fee_minor_units, p.gross_minor_units);
                let gross: i64 = amounts
                    .iter()
                    .filter(|m| m.currency() == p.currency)
                    .map(Money::minor_units)
                    .sum();
                prop_assert_eq!(p.gross_minor_units, gross);
            }
        }

        #[test]
        fn reconcile_gives_everything_exactly_one_outcome(
            host_specs in prop::collection::vec((0u8..6, 1i64..5, any::<bool>()), 0..30),
            upload_specs in prop::collection::vec((any::<bool>(), 0u8..4, any::<bool>()), 0..30),
            extra in prop::collection::btree_set(500u32..600, 0..5),
        ) {
            // Host transactions: STAN = index (unique), date fixed.
            let statuses = [
                HostStatus::Unconfirmed,
                HostStatus::Confirmed,
                reversed(ReversalReason::TerminalRequested, true),
                reversed(ReversalReason::NoTerminalAcknowledgement, false),
                reversed(ReversalReason::IssuerTimeout, true),
                reversed(ReversalReason::BatchOrphan, false),
            ];
            let host: Vec<HostTransaction<u32>> = host_specs
                .iter()
                .enumerate()
                .map(|(i, &(s, amount, has_code))| {
                    let mut t = host_tx(i as u32, i as u32, eur(amount * 100), statuses[usize::from(s)]);
                    if !has_code {
                        t.approval_code = None;
                    }
                    t
                })
                .collect();
            // Upload: a subset of the host transactions, some perturbed,
            // plus STANs unknown at the host.
            let mut uploaded: Vec<UploadedSale> = host
                .iter()
                .zip(&upload_specs)
                .filter(|(_, (listed, _, _))| *listed)
                .map(|(t, &(_, perturb, _))| {
                    let mut s = sale(t.stan.value(), t.amount);
                    s.approval_code = t.approval_code.clone();
                    match perturb {
                        1 => s.amount = eur(t.amount.minor_units() + 1),
                        2 => s.approval_code = code("ZZZ999"),
                        3 => s.approval_code = None,
                        _ => {}
                    }
                    s
                })
                .collect();
            uploaded.extend(extra.iter().map(|&n| sale(n, eur(100))));
            if upload_specs.first().is_some_and(|s| s.2) {
                uploaded.reverse();
            }

            let out = reconcile_upload(&host, &uploaded).unwrap();
            prop_assert_eq!(out.len(), host.len() + extra.len());
            // Host transactions first, once each, in input order.
            for (i, r) in out.iter().take(host.len()).enumerate() {
                prop_assert_eq!(r.key, Some(i as u32));
                prop_assert!(r.outcome != ReconciliationOutcome::UnknownAtHost);
            }
            // Every upload appears exactly once: matched with its host
            // transaction or reported unknown.
            for s in &uploaded {
                let hits = out
                    .iter()
                    .filter(|r| r.stan == s.stan && r.local_date == s.local_date)
                    .count();
                prop_assert_eq!(hits, 1);
            }
            let unknown: Vec<u32> = out[host.len()..]
                .iter()
                .map(|r| {
                    assert_eq!(r.key, None);
                    assert_eq!(r.outcome, ReconciliationOutcome::UnknownAtHost);
                    r.stan.value()
                })
                .collect();
            let expected_unknown: Vec<u32> = uploaded
                .iter()
                .map(|s| s.stan.value())
                .filter(|n| *n >= 500)
                .collect();
            prop_assert_eq!(unknown, expected_unknown);
            // No unconfirmed approval is both confirmed and reversed.
            for t in host.iter().filter(|t| t.status == HostStatus::Unconfirmed) {
                let outcomes: Vec<_> = out
                    .iter()
                    .filter(|r| r.key == Some(t.key))
                    .map(|r| r.outcome)
                    .collect();
                prop_assert_eq!(outcomes.len(), 1);
                let listed = uploaded.iter().any(|s| s.stan == t.stan);
                prop_assert!(!(outcomes.contains(&ReconciliationOutcome::ConfirmedByUpload)
                    && outcomes.contains(&ReconciliationOutcome::OrphanFound)));
                if !listed {
                    prop_assert_eq!(outcomes[0], ReconciliationOutcome::OrphanFound);
                }
            }
        }
    }
}
