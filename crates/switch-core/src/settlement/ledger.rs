//! The settlement ledger: where one approval stands for settlement, the
//! order its status moves in, and the one decision that changes it.
//!
//! The ledger is built from authorization's events and lookups, which may
//! arrive late, twice or out of order. [`decide`] takes an entry and a
//! [`LedgerCommand`] (an approval, a confirmation, a reversal requested or
//! done, a conflict flag, or the merchant's cut-off) and returns the next
//! entry and what to write, or a [`LedgerRefusal`] that says why nothing
//! changes. The rules, all here:
//!
//! - **a status only moves forward**: unconfirmed, then reversal pending,
//!   then confirmed or reversed, both final ([`LedgerStatus::moves_to`]);
//!   a stale event can never undo a later one;
//! - **the first conflict flag stays** (it is what the merchant was told),
//!   and an entry already paid is never flagged;
//! - **at a cut-off** an entry is paid, held with its reason, or never paid,
//!   by [`eligibility`]; one paid in a window is final.
//!
//! [`standing`] says where an entry stands for its merchant (paid, being
//! paid, held and why, never paid), and [`due_cutoff`] when a merchant's
//! window is due.
//!
//! Stored names are parsed once, here: an unknown status, reversal reason,
//! evidence or hold reason is an error, never mapped to a default.

use std::fmt;

use crate::error::InvalidField;
use crate::orphan::{Evidence, ReversalReason};

/// A ledger status as stored: the name of a [`HostStatus`] without its
/// reversal reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LedgerStatus {
    Unconfirmed,
    ReversalPending,
    Confirmed,
    Reversed,
}

impl LedgerStatus {
    /// In the order a status moves (confirmed and reversed are both final).
    pub const ALL: [LedgerStatus; 4] = [
        Self::Unconfirmed,
        Self::ReversalPending,
        Self::Confirmed,
        Self::Reversed,
    ];

    /// Stable storage name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unconfirmed => "unconfirmed",
            Self::ReversalPending => "reversal_pending",
            Self::Confirmed => "confirmed",
            Self::Reversed => "reversed",
        }
    }

    /// Field "status": one of the four storage names.
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| InvalidField::new("status", format!("unknown ledger status '{s}'")))
    }

    /// How far along an approval is. A pending reversal may still fail
    /// (and the approval be confirmed after all); confirmed and reversed
    /// are final, so neither replaces the other.
    fn stage(self) -> u8 {
        match self {
            Self::Unconfirmed => 1,
            Self::ReversalPending => 2,
            Self::Confirmed | Self::Reversed => 3,
        }
    }

    /// Whether an entry at `self` may move to `to`: only to a later stage.
    pub fn moves_to(self, to: LedgerStatus) -> bool {
        to.stage() > self.stage()
    }

    /// Confirmed or reversed: nothing moves it any more.
    pub fn is_final(self) -> bool {
        self.stage() == 3
    }
}

impl fmt::Display for LedgerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host's view of one approval, for settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostStatus {
    /// Approved, no evidence of completion yet.
    Unconfirmed,
    Confirmed,
    /// A reversal is owed or done (pending, reversed, dead-lettered), with
    /// its reason. `completed` is true once the issuer acknowledged it.
    Reversed {
        reason: ReversalReason,
        completed: bool,
    },
}

impl HostStatus {
    /// The status without its reversal reason.
    pub fn status(&self) -> LedgerStatus {
        match self {
            Self::Unconfirmed => LedgerStatus::Unconfirmed,
            Self::Confirmed => LedgerStatus::Confirmed,
            Self::Reversed {
                completed: false, ..
            } => LedgerStatus::ReversalPending,
            Self::Reversed {
                completed: true, ..
            } => LedgerStatus::Reversed,
        }
    }

    /// "unconfirmed", "confirmed", and "reversal_pending" or "reversed"
    /// depending on `completed`.
    pub fn as_str(&self) -> &'static str {
        self.status().as_str()
    }

    /// The reason of a pending or completed reversal.
    pub fn reversal_reason(&self) -> Option<ReversalReason> {
        match self {
            Self::Reversed { reason, .. } => Some(*reason),
            Self::Unconfirmed | Self::Confirmed => None,
        }
    }

    /// Parses a stored status and reversal reason. The status must be known
    /// (field "status"); a reason, when present, must be known (field
    /// "reversal_reason"), and a pending or completed reversal must have
    /// one. An unconfirmed or confirmed entry may carry the reason of a
    /// reversal that was requested and then failed; it is not part of the
    /// status.
    pub fn parse(status: &str, reversal_reason: Option<&str>) -> Result<Self, InvalidField> {
        let status = LedgerStatus::parse(status)?;
        let reason = reversal_reason
            .map(|r| {
                ReversalReason::parse(r).map_err(|e| InvalidField::new("reversal_reason", e.reason))
            })
            .transpose()?;
        let reversed = |completed| match reason {
            Some(reason) => Ok(Self::Reversed { reason, completed }),
            None => Err(InvalidField::new(
                "reversal_reason",
                format!("missing for status '{status}'"),
            )),
        };
        match status {
            LedgerStatus::Unconfirmed => Ok(Self::Unconfirmed),
            LedgerStatus::Confirmed => Ok(Self::Confirmed),
            LedgerStatus::ReversalPending => reversed(false),
            LedgerStatus::Reversed => reversed(true),
        }
    }
}

impl fmt::Display for HostStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one transaction stands at its merchant's cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    /// Paid in this window.
    Payable,
    /// Not paid in this window; looked at again at the next cut-off.
    Held(HoldReason),
    /// Never paid.
    NotPayable,
}

/// Why a transaction is held at a cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldReason {
    /// Still unconfirmed: no evidence the terminal completed it.
    AwaitingEvidence,
    /// A reversal is pending or dead-lettered: it may still fail.
    ReversalPending,
    /// Flagged by reconciliation: needs an operator.
    Conflict,
}

impl HoldReason {
    pub const ALL: [HoldReason; 3] = [
        Self::AwaitingEvidence,
        Self::ReversalPending,
        Self::Conflict,
    ];

    /// Stable storage name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::AwaitingEvidence => "awaiting_evidence",
            Self::ReversalPending => "reversal_pending",
            Self::Conflict => "conflict",
        }
    }
}

impl fmt::Display for HoldReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a transaction stands at its merchant's cut-off:
///
/// - Confirmed and not flagged -> `Payable`;
/// - Unconfirmed -> `Held(AwaitingEvidence)`;
/// - Reversed { completed: false } -> `Held(ReversalPending)`: a pending or
///   dead-lettered reversal may still fail, so nothing is paid, and it is
///   not yet final;
/// - Reversed { completed: true } -> `NotPayable`;
/// - `conflict == true` (flagged by reconciliation) -> `Held(Conflict)`,
///   unless the status is Reversed { completed: true } (`NotPayable`).
pub fn eligibility(status: HostStatus, conflict: bool) -> Eligibility {
    match status {
        HostStatus::Reversed {
            completed: true, ..
        } => Eligibility::NotPayable,
        _ if conflict => Eligibility::Held(HoldReason::Conflict),
        HostStatus::Confirmed => Eligibility::Payable,
        HostStatus::Unconfirmed => Eligibility::Held(HoldReason::AwaitingEvidence),
        HostStatus::Reversed {
            completed: false, ..
        } => Eligibility::Held(HoldReason::ReversalPending),
    }
}

impl HoldReason {
    /// Field "hold_reason": one of the storage names.
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        Self::ALL
            .into_iter()
            .find(|h| h.as_str() == s)
            .ok_or_else(|| InvalidField::new("hold_reason", format!("unknown hold reason '{s}'")))
    }
}

/// One approval in the settlement ledger, as far as settlement decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerEntry {
    pub status: HostStatus,
    /// What confirmed it, when known.
    pub evidence: Option<Evidence>,
    /// Flagged by reconciliation or by an acknowledgement after a reversal:
    /// never paid until an operator resolves it.
    pub conflict: bool,
    /// Assigned to a settlement window (paid in it).
    pub paid: bool,
    /// Why it was held at the last cut-off it missed.
    pub hold: Option<HoldReason>,
}

impl LedgerEntry {
    /// A fresh approval: unconfirmed, nothing else known.
    pub const fn approved() -> Self {
        LedgerEntry {
            status: HostStatus::Unconfirmed,
            evidence: None,
            conflict: false,
            paid: false,
            hold: None,
        }
    }

    /// The entry of an approval the ledger first hears of through `command`
    /// (a confirmation or a reversal can outrun the approval, or be all a
    /// lookup finds): the approval with `command` applied to it.
    pub fn first_known(command: LedgerCommand) -> Self {
        let approved = Self::approved();
        decide(&approved, command).map_or(approved, |decision| decision.next)
    }
}

/// What reaches the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerCommand {
    /// The approval itself (its event, or a lookup that found it approved).
    Approve,
    /// Evidence that the terminal completed it, or the merchant's policy.
    Confirm { evidence: Option<Evidence> },
    /// A reversal is owed (pending or dead-lettered).
    RequestReversal { reason: ReversalReason },
    /// The issuer acknowledged the reversal.
    Reverse { reason: ReversalReason },
    /// A receipt exists for a payment the host undid or knows otherwise.
    FlagConflict,
    /// The merchant's cut-off: pay it in the closing window, or hold it.
    CloseWindow,
}

/// What the adapter writes for a decision, besides the next entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerEffect {
    /// The status moved (with its evidence or reversal reason).
    Advance,
    /// The conflict flag is set (the adapter writes its kind and detail).
    Flag,
    /// Assigned to the closing window: paid in it.
    Pay,
    /// Held at this cut-off, with the reason; looked at again at the next.
    Hold(HoldReason),
}

/// The next entry and what to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerDecision {
    pub next: LedgerEntry,
    pub effects: Vec<LedgerEffect>,
}

/// Why a command changes nothing. None of these is an error for the
/// sender: events repeat and arrive late.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LedgerRefusal {
    /// The entry is already at this status or a later one (a stale or
    /// repeated event, or a lookup behind the events).
    #[error("already {from}: a status only moves forward, not to {to}")]
    NotForward {
        from: LedgerStatus,
        to: LedgerStatus,
    },
    /// The first flag stays: it is the one the merchant was told.
    #[error("already flagged")]
    AlreadyFlagged,
    /// Paid in a window: its record is final.
    #[error("already paid in a window")]
    AlreadyPaid,
    /// Reversed: never paid, and not held either.
    #[error("reversed: never paid")]
    NotPayable,
}

/// The ledger's one decision: `command` applied to `entry`.
///
/// - Approve, Confirm, RequestReversal, Reverse move the status when
///   [`LedgerStatus::moves_to`] allows it, else `NotForward`; a new
///   evidence replaces none (the first one known stays unless the command
///   brings one). An entry paid in a window is confirmed, so final.
/// - FlagConflict sets the flag once; `AlreadyPaid` once in a window,
///   `AlreadyFlagged` after the first.
/// - CloseWindow asks [`eligibility`]: `Payable` pays it (`Pay`, hold
///   cleared), `Held(reason)` holds it (`Hold(reason)`), `NotPayable` is
///   refused; an entry already paid is `AlreadyPaid`.
pub fn decide(
    entry: &LedgerEntry,
    command: LedgerCommand,
) -> Result<LedgerDecision, LedgerRefusal> {
    let decision = |next: LedgerEntry, effect: LedgerEffect| LedgerDecision {
        next,
        effects: vec![effect],
    };
    match command {
        LedgerCommand::FlagConflict => {
            if entry.paid {
                return Err(LedgerRefusal::AlreadyPaid);
            }
            if entry.conflict {
                return Err(LedgerRefusal::AlreadyFlagged);
            }
            let next = LedgerEntry {
                conflict: true,
                ..*entry
            };
            Ok(decision(next, LedgerEffect::Flag))
        }
        LedgerCommand::CloseWindow => {
            if entry.paid {
                return Err(LedgerRefusal::AlreadyPaid);
            }
            match eligibility(entry.status, entry.conflict) {
                Eligibility::Payable => Ok(decision(
                    LedgerEntry {
                        paid: true,
                        hold: None,
                        ..*entry
                    },
                    LedgerEffect::Pay,
                )),
                Eligibility::Held(reason) => Ok(decision(
                    LedgerEntry {
                        hold: Some(reason),
                        ..*entry
                    },
                    LedgerEffect::Hold(reason),
                )),
                Eligibility::NotPayable => Err(LedgerRefusal::NotPayable),
            }
        }
        LedgerCommand::Approve => advance(entry, HostStatus::Unconfirmed, None),
        LedgerCommand::Confirm { evidence } => advance(entry, HostStatus::Confirmed, evidence),
        LedgerCommand::RequestReversal { reason } => advance(
            entry,
            HostStatus::Reversed {
                reason,
                completed: false,
            },
            None,
        ),
        LedgerCommand::Reverse { reason } => advance(
            entry,
            HostStatus::Reversed {
                reason,
                completed: true,
            },
            None,
        ),
    }
}

/// A status command: forward only; evidence brought by the command is
/// kept, else the one already known.
fn advance(
    entry: &LedgerEntry,
    target: HostStatus,
    evidence: Option<Evidence>,
) -> Result<LedgerDecision, LedgerRefusal> {
    let (from, to) = (entry.status.status(), target.status());
    if !from.moves_to(to) {
        return Err(LedgerRefusal::NotForward { from, to });
    }
    Ok(LedgerDecision {
        next: LedgerEntry {
            status: target,
            evidence: evidence.or(entry.evidence),
            ..*entry
        },
        effects: vec![LedgerEffect::Advance],
    })
}

/// Where an approval stands for its merchant, as a status query answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// In a window whose payout files were written.
    Paid,
    /// In a closed window whose payout files are still being written.
    Paying,
    /// Reversed: never paid.
    NotPayable { reason: ReversalReason },
    /// Flagged: held until an operator resolves it.
    Conflict,
    /// Confirmed: paid at the merchant's next cut-off.
    Confirmed { evidence: Option<Evidence> },
    /// A reversal is pending; `held` once a cut-off has passed it by.
    ReversalPending { reason: ReversalReason, held: bool },
    /// No evidence yet; `held` once a cut-off has passed it by.
    AwaitingEvidence { held: bool },
}

/// Where `entry` stands. `window_settled` is the state of the window that
/// pays it, when it has one: `Some(true)` once its files are written.
pub fn standing(entry: &LedgerEntry, window_settled: Option<bool>) -> Standing {
    let held = entry.hold.is_some();
    match (window_settled, entry.status) {
        (Some(true), _) => Standing::Paid,
        (Some(false), _) => Standing::Paying,
        (
            None,
            HostStatus::Reversed {
                reason,
                completed: true,
            },
        ) => Standing::NotPayable { reason },
        (None, _) if entry.conflict => Standing::Conflict,
        (None, HostStatus::Confirmed) => Standing::Confirmed {
            evidence: entry.evidence,
        },
        (
            None,
            HostStatus::Reversed {
                reason,
                completed: false,
            },
        ) => Standing::ReversalPending { reason, held },
        (None, HostStatus::Unconfirmed) => Standing::AwaitingEvidence { held },
    }
}

/// The cut-off a merchant's window is due at, as of `now`: the latest
/// instant at or before `now` whose UTC time of day is `cutoff`, when it is
/// later than the cut-off of the merchant's last window (`last`); `None`
/// when that window already closed at it.
pub fn due_cutoff(
    now: time::OffsetDateTime,
    cutoff: time::Time,
    last: Option<time::OffsetDateTime>,
) -> Option<time::OffsetDateTime> {
    let now = now.to_offset(time::UtcOffset::UTC);
    let today = now.date().with_time(cutoff).assume_utc();
    let latest = if today <= now {
        today
    } else {
        today - time::Duration::DAY
    };
    last.is_none_or(|last| last < latest).then_some(latest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::{datetime, time};

    const NO_ACK: ReversalReason = ReversalReason::NoTerminalAcknowledgement;
    const ORPHAN: ReversalReason = ReversalReason::BatchOrphan;

    fn entry(status: HostStatus) -> LedgerEntry {
        LedgerEntry {
            status,
            ..LedgerEntry::approved()
        }
    }

    fn pending(reason: ReversalReason) -> HostStatus {
        HostStatus::Reversed {
            reason,
            completed: false,
        }
    }

    fn reversed(reason: ReversalReason) -> HostStatus {
        HostStatus::Reversed {
            reason,
            completed: true,
        }
    }

    #[test]
    fn status_names_parse_back_and_nothing_else_does() {
        for status in LedgerStatus::ALL {
            assert_eq!(LedgerStatus::parse(status.as_str()), Ok(status));
        }
        for bad in ["", "paid", "Confirmed", "reversal-pending"] {
            assert_eq!(LedgerStatus::parse(bad).unwrap_err().field, "status");
        }
        for hold in HoldReason::ALL {
            assert_eq!(HoldReason::parse(hold.as_str()), Ok(hold));
        }
        assert_eq!(HoldReason::parse("later").unwrap_err().field, "hold_reason");
    }

    #[test]
    fn host_status_parse_refuses_unknown_and_missing_reasons() {
        let ok: [(&str, Option<&str>, HostStatus); 6] = [
            ("unconfirmed", None, HostStatus::Unconfirmed),
            ("confirmed", None, HostStatus::Confirmed),
            // A reversal requested, then failed, then confirmed.
            ("confirmed", Some("batch_orphan"), HostStatus::Confirmed),
            ("reversal_pending", Some("batch_orphan"), pending(ORPHAN)),
            (
                "reversed",
                Some("no_terminal_acknowledgement"),
                reversed(NO_ACK),
            ),
            (
                "reversed",
                Some("issuer_timeout"),
                reversed(ReversalReason::IssuerTimeout),
            ),
        ];
        for (status, reason, expected) in ok {
            assert_eq!(
                HostStatus::parse(status, reason),
                Ok(expected),
                "{status} {reason:?}"
            );
            assert_eq!(expected.as_str(), status);
        }
        let bad: [(&str, Option<&str>, &str); 5] = [
            ("paid", None, "status"),
            ("reversed", None, "reversal_reason"),
            ("reversal_pending", None, "reversal_reason"),
            ("reversed", Some("gremlins"), "reversal_reason"),
            ("confirmed", Some("gremlins"), "reversal_reason"),
        ];
        for (status, reason, field) in bad {
            let err = HostStatus::parse(status, reason).unwrap_err();
            assert_eq!(err.field, field, "{status} {reason:?}");
        }
        for reason in ReversalReason::ALL {
            assert_eq!(pending(reason).reversal_reason(), Some(reason));
        }
        assert_eq!(HostStatus::Confirmed.reversal_reason(), None);
    }

    #[test]
    fn status_only_moves_forward() {
        use LedgerStatus::*;
        let allowed = [
            (Unconfirmed, ReversalPending),
            (Unconfirmed, Confirmed),
            (Unconfirmed, Reversed),
            (ReversalPending, Confirmed),
            (ReversalPending, Reversed),
        ];
        for from in LedgerStatus::ALL {
            for to in LedgerStatus::ALL {
                assert_eq!(
                    from.moves_to(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
            assert_eq!(from.is_final(), matches!(from, Confirmed | Reversed));
        }
    }

    /// Every (status, command) pair, unflagged and unpaid.
    #[test]
    fn decision_table() {
        use HoldReason::*;
        use LedgerEffect::*;
        use LedgerRefusal::*;
        use LedgerStatus as S;
        let ack = Some(Evidence::TerminalAcknowledgement);
        let commands = [
            LedgerCommand::Approve,
            LedgerCommand::Confirm { evidence: ack },
            LedgerCommand::RequestReversal { reason: ORPHAN },
            LedgerCommand::Reverse { reason: ORPHAN },
            LedgerCommand::FlagConflict,
            LedgerCommand::CloseWindow,
        ];
        let not_forward = |from, to| Err(NotForward { from, to });
        // Per status: the outcome of each command above, as (next status,
        // effect) or the refusal.
        type Row = [Result<(HostStatus, LedgerEffect), LedgerRefusal>; 6];
        let table: [(HostStatus, Row); 4] = [
            (
                HostStatus::Unconfirmed,
                [
                    not_forward(S::Unconfirmed, S::Unconfirmed),
                    Ok((HostStatus::Confirmed, Advance)),
                    Ok((pending(ORPHAN), Advance)),
                    Ok((reversed(ORPHAN), Advance)),
                    Ok((HostStatus::Unconfirmed, Flag)),
                    Ok((HostStatus::Unconfirmed, Hold(AwaitingEvidence))),
                ],
            ),
            (
                pending(NO_ACK),
                [
                    not_forward(S::ReversalPending, S::Unconfirmed),
                    Ok((HostStatus::Confirmed, Advance)),
                    not_forward(S::ReversalPending, S::ReversalPending),
                    Ok((reversed(ORPHAN), Advance)),
                    Ok((pending(NO_ACK), Flag)),
                    Ok((pending(NO_ACK), Hold(ReversalPending))),
                ],
            ),
            (
                HostStatus::Confirmed,
                [
                    not_forward(S::Confirmed, S::Unconfirmed),
                    not_forward(S::Confirmed, S::Confirmed),
                    not_forward(S::Confirmed, S::ReversalPending),
                    not_forward(S::Confirmed, S::Reversed),
                    Ok((HostStatus::Confirmed, Flag)),
                    Ok((HostStatus::Confirmed, Pay)),
                ],
            ),
            (
                reversed(NO_ACK),
                [
                    not_forward(S::Reversed, S::Unconfirmed),
                    not_forward(S::Reversed, S::Confirmed),
                    not_forward(S::Reversed, S::ReversalPending),
                    not_forward(S::Reversed, S::Reversed),
                    Ok((reversed(NO_ACK), Flag)),
                    Err(NotPayable),
                ],
            ),
        ];
        for (status, row) in table {
            for (command, expected) in commands.into_iter().zip(row) {
                let got =
                    decide(&entry(status), command).map(|d| (d.next.status, single(&d.effects)));
                assert_eq!(got, expected, "{status:?} {command:?}");
            }
        }
    }

    fn single(effects: &[LedgerEffect]) -> LedgerEffect {
        assert_eq!(effects.len(), 1, "{effects:?}");
        effects[0]
    }

    /// The flag and the window, for every status.
    #[test]
    fn flagged_and_paid_entries() {
        use HoldReason::*;
        for status in [
            HostStatus::Unconfirmed,
            HostStatus::Confirmed,
            pending(NO_ACK),
            reversed(NO_ACK),
        ] {
            let flagged = LedgerEntry {
                conflict: true,
                ..entry(status)
            };
            assert_eq!(
                decide(&flagged, LedgerCommand::FlagConflict),
                Err(LedgerRefusal::AlreadyFlagged)
            );
            let close = decide(&flagged, LedgerCommand::CloseWindow);
            if status.status() == LedgerStatus::Reversed {
                assert_eq!(close, Err(LedgerRefusal::NotPayable));
            } else {
                let decision = close.unwrap();
                assert_eq!(decision.effects, [LedgerEffect::Hold(Conflict)]);
                assert_eq!(decision.next.hold, Some(Conflict));
                assert!(!decision.next.paid);
            }
            // A flag does not stop the status from moving.
            let confirmed = decide(&flagged, LedgerCommand::Confirm { evidence: None });
            assert_eq!(
                confirmed.is_ok(),
                status.status().moves_to(LedgerStatus::Confirmed)
            );
            if let Ok(d) = confirmed {
                assert!(d.next.conflict);
            }
        }
        let paid = LedgerEntry {
            paid: true,
            ..entry(HostStatus::Confirmed)
        };
        for command in [LedgerCommand::FlagConflict, LedgerCommand::CloseWindow] {
            assert_eq!(decide(&paid, command), Err(LedgerRefusal::AlreadyPaid));
        }
        let held = LedgerEntry {
            hold: Some(AwaitingEvidence),
            ..entry(HostStatus::Confirmed)
        };
        let decision = decide(&held, LedgerCommand::CloseWindow).unwrap();
        assert_eq!(decision.next.hold, None, "paying clears the hold");
        assert!(decision.next.paid);
    }

    #[test]
    fn evidence_is_kept_unless_a_confirmation_brings_one() {
        let policy = LedgerEntry {
            evidence: Some(Evidence::Policy),
            ..entry(pending(NO_ACK))
        };
        let next = |command| decide(&policy, command).unwrap().next.evidence;
        assert_eq!(
            next(LedgerCommand::Confirm {
                evidence: Some(Evidence::BatchUpload)
            }),
            Some(Evidence::BatchUpload)
        );
        assert_eq!(
            next(LedgerCommand::Confirm { evidence: None }),
            Some(Evidence::Policy)
        );
        assert_eq!(
            next(LedgerCommand::Reverse { reason: NO_ACK }),
            Some(Evidence::Policy)
        );
    }

    #[test]
    fn first_known_is_the_approval_with_the_command_applied() {
        assert_eq!(
            LedgerEntry::first_known(LedgerCommand::Approve),
            LedgerEntry::approved()
        );
        let confirmed = LedgerEntry::first_known(LedgerCommand::Confirm {
            evidence: Some(Evidence::LastCompletedStan),
        });
        assert_eq!(confirmed.status, HostStatus::Confirmed);
        assert_eq!(confirmed.evidence, Some(Evidence::LastCompletedStan));
        assert_eq!(
            LedgerEntry::first_known(LedgerCommand::Reverse { reason: ORPHAN }).status,
            reversed(ORPHAN)
        );
    }

    #[test]
    fn standing_of_every_status() {
        let ack = Some(Evidence::TerminalAcknowledgement);
        let held = |e: LedgerEntry| LedgerEntry {
            hold: Some(HoldReason::AwaitingEvidence),
            ..e
        };
        let flagged = |e: LedgerEntry| LedgerEntry {
            conflict: true,
            ..e
        };
        let confirmed = LedgerEntry {
            evidence: ack,
            ..entry(HostStatus::Confirmed)
        };
        let cases = [
            (confirmed, Some(true), Standing::Paid),
            (confirmed, Some(false), Standing::Paying),
            (confirmed, None, Standing::Confirmed { evidence: ack }),
            (flagged(confirmed), None, Standing::Conflict),
            (
                entry(reversed(ORPHAN)),
                None,
                Standing::NotPayable { reason: ORPHAN },
            ),
            (
                flagged(entry(reversed(ORPHAN))),
                None,
                Standing::NotPayable { reason: ORPHAN },
            ),
            (
                entry(pending(NO_ACK)),
                None,
                Standing::ReversalPending {
                    reason: NO_ACK,
                    held: false,
                },
            ),
            (
                held(entry(pending(NO_ACK))),
                None,
                Standing::ReversalPending {
                    reason: NO_ACK,
                    held: true,
                },
            ),
            (flagged(entry(pending(NO_ACK))), None, Standing::Conflict),
            (
                entry(HostStatus::Unconfirmed),
                None,
                Standing::AwaitingEvidence { held: false },
            ),
            (
                held(entry(HostStatus::Unconfirmed)),
                None,
                Standing::AwaitingEvidence { held: true },
            ),
        ];
        for (e, window, expected) in cases {
            assert_eq!(standing(&e, window), expected, "{e:?} {window:?}");
        }
    }

    #[test]
    fn due_cutoff_is_the_latest_cutoff_not_yet_closed() {
        let at = time!(22:00);
        let now = datetime!(2026-11-24 22:30 UTC);
        let today = datetime!(2026-11-24 22:00 UTC);
        let yesterday = datetime!(2026-11-23 22:00 UTC);
        assert_eq!(due_cutoff(now, at, None), Some(today));
        assert_eq!(due_cutoff(now, at, Some(yesterday)), Some(today));
        assert_eq!(due_cutoff(now, at, Some(today)), None);
        // Before today's cut-off, yesterday's is the one due.
        let morning = datetime!(2026-11-24 08:00 UTC);
        assert_eq!(due_cutoff(morning, at, None), Some(yesterday));
        assert_eq!(due_cutoff(morning, at, Some(yesterday)), None);
        // Exactly at the cut-off it is due; another offset is the same instant.
        assert_eq!(due_cutoff(today, at, Some(yesterday)), Some(today));
        let same = datetime!(2026-11-25 03:30 +05:30);
        assert_eq!(due_cutoff(same, at, None), Some(today));
    }

    fn command() -> impl Strategy<Value = LedgerCommand> {
        let reason = prop::sample::select(ReversalReason::ALL.to_vec());
        let evidence = prop::option::of(prop::sample::select(Evidence::ALL.to_vec()));
        prop_oneof![
            Just(LedgerCommand::Approve),
            evidence.prop_map(|evidence| LedgerCommand::Confirm { evidence }),
            reason
                .clone()
                .prop_map(|reason| LedgerCommand::RequestReversal { reason }),
            reason.prop_map(|reason| LedgerCommand::Reverse { reason }),
            Just(LedgerCommand::FlagConflict),
            Just(LedgerCommand::CloseWindow),
        ]
    }

    proptest! {
        /// Whatever arrives in whatever order: the status never moves back,
        /// a final status never changes, the flag and the payment are never
        /// undone, and only a confirmed, unflagged entry is ever paid.
        #[test]
        fn no_sequence_of_commands_breaks_the_ledger(
            commands in prop::collection::vec(command(), 0..40),
        ) {
            let mut at = LedgerEntry::approved();
            for command in commands {
                if let Ok(decision) = decide(&at, command) {
                    let next = decision.next;
                    let (from, to) = (at.status.status(), next.status.status());
                    prop_assert!(from == to || from.moves_to(to));
                    prop_assert!(!from.is_final() || at.status == next.status);
                    prop_assert!(!at.conflict || next.conflict);
                    prop_assert!(!at.paid || next.paid);
                    if next.paid && !at.paid {
                        prop_assert_eq!(at.status, HostStatus::Confirmed);
                        prop_assert!(!at.conflict);
                        prop_assert_eq!(&decision.effects, &[LedgerEffect::Pay]);
                    }
                    prop_assert_eq!(decision.effects.len(), 1);
                    at = next;
                }
            }
        }
    }
}
