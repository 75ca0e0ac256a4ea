//! Upload reconciliation: the terminal's uploaded sales against the host's
//! transactions of the batch, one [`ReconciliationOutcome`] for each.

use std::collections::HashMap;
use std::fmt;

use super::{HostStatus, HostTransaction};
use crate::error::InvalidField;
use crate::ids::{ApprovalCode, LocalDate, Stan};
use crate::money::Money;

/// One sale as listed in the terminal's batch upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedSale {
    pub stan: Stan,
    pub local_date: LocalDate,
    pub amount: Money,
    pub approval_code: Option<ApprovalCode>,
}

/// What reconciling the upload found for one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReconciliationOutcome {
    /// On the list, confirmed at host, same amount and approval code.
    Matched,
    /// On the list, unconfirmed at host: confirm it with
    /// `Evidence::BatchUpload`.
    ConfirmedByUpload,
    /// Unconfirmed at host and not on the list: an orphan now, not at its
    /// deadline (by default reversed with `ReversalReason::BatchOrphan`).
    OrphanFound,
    /// On the list, but reversed or reversal pending at host (S2): never
    /// settle, flag for an operator.
    ConflictReversedAtHost,
    /// On the list, but no host transaction has that STAN and date.
    UnknownAtHost,
    /// On the list, but amount or approval code differ: never confirm, flag.
    Mismatch,
    /// Confirmed at host (evidence already) but missing from the list: still
    /// settles, recorded.
    ConfirmedNotUploaded,
    /// Reversed at host and not on the list: consistent, nothing to do.
    ReversedNotUploaded,
}

impl ReconciliationOutcome {
    pub const ALL: [ReconciliationOutcome; 8] = [
        Self::Matched,
        Self::ConfirmedByUpload,
        Self::OrphanFound,
        Self::ConflictReversedAtHost,
        Self::UnknownAtHost,
        Self::Mismatch,
        Self::ConfirmedNotUploaded,
        Self::ReversedNotUploaded,
    ];

    /// Stable storage name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Matched => "matched",
            Self::ConfirmedByUpload => "confirmed_by_upload",
            Self::OrphanFound => "orphan_reversal_requested",
            Self::ConflictReversedAtHost => "conflict_reversed_at_host",
            Self::UnknownAtHost => "unknown_at_host",
            Self::Mismatch => "mismatch",
            Self::ConfirmedNotUploaded => "confirmed_not_uploaded",
            Self::ReversedNotUploaded => "reversed_not_uploaded",
        }
    }

    /// The outcomes that flag a transaction for an operator and block its
    /// settlement: `ConflictReversedAtHost` and `Mismatch`.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::ConflictReversedAtHost | Self::Mismatch)
    }
}

impl fmt::Display for ReconciliationOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome for one host transaction (`key` is `Some`) or one uploaded
/// sale unknown at the host (`key` is `None`), with a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled<K> {
    pub key: Option<K>,
    pub stan: Stan,
    pub local_date: LocalDate,
    pub outcome: ReconciliationOutcome,
    pub detail: String,
}

/// Reconciles a terminal's batch upload with the host transactions of the
/// batch. Every host transaction and every uploaded sale gets exactly one
/// outcome.
///
/// Matching is by (STAN, local date). Checks in order for a matched pair:
/// amount differs (currency or minor units) -> `Mismatch` (detail
/// "terminal EUR 10.00, host EUR 12.00"); approval code present on both and
/// differs -> `Mismatch`; then by host status (Confirmed -> `Matched`,
/// Unconfirmed -> `ConfirmedByUpload`, Reversed or reversal pending ->
/// `ConflictReversedAtHost`). A host transaction not on the list is
/// `OrphanFound` (Unconfirmed), `ConfirmedNotUploaded` or
/// `ReversedNotUploaded`; an uploaded sale with no host transaction is
/// `UnknownAtHost`.
///
/// An uploaded sale listed twice (same STAN and date) is an error: field
/// "transactions", reason "STAN 000123 on 2026-11-24 listed twice". Should
/// two host transactions share a STAN and date, the upload is matched with
/// the first of them and the others count as not on the list.
///
/// Output order: host transactions in input order, then unknown uploaded
/// sales in input order.
pub fn reconcile_upload<K: Clone>(
    host: &[HostTransaction<K>],
    uploaded: &[UploadedSale],
) -> Result<Vec<Reconciled<K>>, InvalidField> {
    let mut listed: HashMap<(&Stan, LocalDate), usize> = HashMap::with_capacity(uploaded.len());
    for (i, sale) in uploaded.iter().enumerate() {
        if listed.insert((&sale.stan, sale.local_date), i).is_some() {
            return Err(InvalidField::new(
                "transactions",
                format!("STAN {} on {} listed twice", sale.stan, sale.local_date),
            ));
        }
    }

    let mut used = vec![false; uploaded.len()];
    let mut out = Vec::with_capacity(host.len() + uploaded.len());
    for t in host {
        let matched = listed
            .get(&(&t.stan, t.local_date))
            .copied()
            .filter(|&i| !used[i]);
        let (outcome, detail) = match matched {
            Some(i) => {
                used[i] = true;
                judge_pair(t, &uploaded[i])
            }
            None => judge_unlisted(t),
        };
        out.push(Reconciled {
            key: Some(t.key.clone()),
            stan: t.stan.clone(),
            local_date: t.local_date,
            outcome,
            detail,
        });
    }
    for (sale, _) in uploaded.iter().zip(&used).filter(|(_, used)| !**used) {
        out.push(Reconciled {
            key: None,
            stan: sale.stan.clone(),
            local_date: sale.local_date,
            outcome: ReconciliationOutcome::UnknownAtHost,
            detail: format!("terminal {}, no such transaction at host", sale.amount),
        });
    }
    Ok(out)
}

fn judge_pair<K>(
    host: &HostTransaction<K>,
    sale: &UploadedSale,
) -> (ReconciliationOutcome, String) {
    use ReconciliationOutcome as O;
    if sale.amount != host.amount {
        return (
            O::Mismatch,
            format!("terminal {}, host {}", sale.amount, host.amount),
        );
    }
    if let (Some(terminal), Some(hosts)) = (&sale.approval_code, &host.approval_code)
        && terminal != hosts
    {
        return (
            O::Mismatch,
            format!("terminal approval code {terminal}, host approval code {hosts}"),
        );
    }
    match host.status {
        HostStatus::Confirmed => (O::Matched, "confirmed at host".to_owned()),
        HostStatus::Unconfirmed => (
            O::ConfirmedByUpload,
            "unconfirmed at host, confirmed by the batch upload".to_owned(),
        ),
        HostStatus::Reversed { reason, .. } => (
            O::ConflictReversedAtHost,
            format!(
                "listed by the terminal but {} at host ({reason})",
                reversal_words(host.status)
            ),
        ),
    }
}

fn judge_unlisted<K>(host: &HostTransaction<K>) -> (ReconciliationOutcome, String) {
    use ReconciliationOutcome as O;
    match host.status {
        HostStatus::Unconfirmed => (
            O::OrphanFound,
            format!(
                "unconfirmed at host and not uploaded: reverse {}",
                host.amount
            ),
        ),
        HostStatus::Confirmed => (
            O::ConfirmedNotUploaded,
            "confirmed at host but not uploaded".to_owned(),
        ),
        HostStatus::Reversed { reason, .. } => (
            O::ReversedNotUploaded,
            format!(
                "{} at host ({reason}) and not uploaded",
                reversal_words(host.status)
            ),
        ),
    }
}

fn reversal_words(status: HostStatus) -> &'static str {
    match status {
        HostStatus::Reversed {
            completed: false, ..
        } => "reversal pending",
        _ => "reversed",
    }
}
