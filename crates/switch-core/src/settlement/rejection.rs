//! Ledger rejections: approvals the ledger could not take because another
//! transaction already holds their terminal + local date + STAN (the
//! ledger keeps that key unique, as authorization's journal does; a second
//! holder means the journal was reset or restored, or another deployment
//! writes to the same topics). A rejected approval is never paid until an
//! operator resolves it, once, in one of two ways:
//!
//! - **dismiss** it: it is a duplicate of the transaction that holds the
//!   key, already in the ledger and paid (or not) there; the rejected one
//!   never enters the ledger and is never paid;
//! - **admit** it: it is a distinct sale that happens to share the key; it
//!   enters the ledger where it stands and from then on is paid, held or
//!   never paid by the ledger's own rules, like any approval.
//!
//! Where it stands is not a guess. While a rejection is open, the events of
//! the rejected approval (its confirmation, its reversal requested or done)
//! move its status exactly as [`ledger::decide`] moves a ledger entry
//! ([`track`]), so admitting it ends in the state it would have reached had
//! it never been rejected, and a sale reversed meanwhile is admitted
//! reversed, never paid. A rejection recorded before the ledger followed
//! them has no tracked status; it is admitted only with a status looked up
//! where it is known (authorization's journal), or not at all.
//!
//! Conflict flags are not followed: the only flag an event raises is an
//! acknowledgement after a reversal, and the reversal itself, which is
//! followed, already keeps the approval from being paid.

use std::fmt;

use super::ledger::{self, LedgerCommand, LedgerEntry};
use crate::error::InvalidField;

/// How an operator resolves a rejected approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// A duplicate of the key's holder: never enters the ledger, never paid.
    Dismiss,
    /// A distinct sale: enters the ledger and is paid by its status.
    Admit,
}

impl Resolution {
    pub const ALL: [Resolution; 2] = [Self::Dismiss, Self::Admit];

    /// Stable storage name: what the rejection became.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Dismiss => "dismissed",
            Self::Admit => "admitted",
        }
    }

    /// Field "resolution": one of the storage names.
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| InvalidField::new("resolution", format!("unknown resolution '{s}'")))
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected approval, as far as following and resolving it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Where the approval stands by its own events since it was rejected;
    /// `None` when they were not followed (recorded before the ledger
    /// followed them).
    pub tracked: Option<LedgerEntry>,
    /// How it was resolved; `None` while open.
    pub resolution: Option<Resolution>,
}

impl Rejection {
    /// A new rejection of an approval first heard of through `command`:
    /// open, standing where the ledger would have put it.
    pub fn new(command: LedgerCommand) -> Self {
        Rejection {
            tracked: Some(LedgerEntry::first_known(command)),
            resolution: None,
        }
    }
}

/// What an event of a rejected approval does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// Its status moved: keep `next` with the rejection.
    Moved(LedgerEntry),
    /// Nothing changes: a stale or repeated event, a dismissed rejection,
    /// one whose status is not followed, or a command that does not apply
    /// to an approval outside the ledger (a flag, a cut-off).
    Unchanged,
    /// Admitted: the approval is in the ledger now, and the command is the
    /// ledger's to decide on.
    InLedger,
}

/// What `command` (from an event of the rejected approval) does to
/// `rejection`: an open one follows it as [`ledger::decide`] would follow
/// an entry.
pub fn track(rejection: &Rejection, command: LedgerCommand) -> Tracked {
    match (rejection.resolution, rejection.tracked) {
        (Some(Resolution::Admit), _) => Tracked::InLedger,
        (Some(Resolution::Dismiss), _) | (None, None) => Tracked::Unchanged,
        (None, Some(entry)) => match command {
            LedgerCommand::FlagConflict | LedgerCommand::CloseWindow => Tracked::Unchanged,
            LedgerCommand::Approve
            | LedgerCommand::Confirm { .. }
            | LedgerCommand::RequestReversal { .. }
            | LedgerCommand::Reverse { .. } => ledger::decide(&entry, command)
                .map_or(Tracked::Unchanged, |decision| Tracked::Moved(decision.next)),
        },
    }
}

/// What resolving a rejection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolutionDecision {
    /// Never enters the ledger; never paid.
    Dismissed,
    /// Enters the ledger as `entry` (unpaid, unheld, unflagged), where the
    /// ledger's rules take it from there.
    Admitted { entry: LedgerEntry },
}

/// Why a resolution is refused; nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResolutionRefusal {
    /// A rejection is resolved once: the first resolution stands.
    #[error("is already {0}; a rejection is resolved once")]
    AlreadyResolved(Resolution),
    /// Admitting needs to know where the approval stands, and neither its
    /// own events nor a look-up say.
    #[error(
        "cannot be admitted: where it stands is unknown (its events were not followed and \
         authorization's journal has no record of it); dismiss it, or admit it once its status is known"
    )]
    StatusUnknown,
}

/// Resolves `rejection` with `resolution`. `looked_up` is where the
/// approval stands by another record (authorization's journal), used only
/// when the rejection did not follow its events: the rejection's own
/// tracked status is the ledger's view, like any entry's.
pub fn resolve(
    rejection: &Rejection,
    resolution: Resolution,
    looked_up: Option<LedgerEntry>,
) -> Result<ResolutionDecision, ResolutionRefusal> {
    if let Some(resolved) = rejection.resolution {
        return Err(ResolutionRefusal::AlreadyResolved(resolved));
    }
    match resolution {
        Resolution::Dismiss => Ok(ResolutionDecision::Dismissed),
        Resolution::Admit => {
            let known = rejection
                .tracked
                .or(looked_up)
                .ok_or(ResolutionRefusal::StatusUnknown)?;
            Ok(ResolutionDecision::Admitted {
                entry: LedgerEntry {
                    conflict: false,
                    paid: false,
                    hold: None,
                    ..known
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orphan::{Evidence, ReversalReason};
    use crate::settlement::ledger::{Eligibility, HostStatus, LedgerEffect};
    use proptest::prelude::*;

    const NO_ACK: ReversalReason = ReversalReason::NoTerminalAcknowledgement;
    const CONFIRM: LedgerCommand = LedgerCommand::Confirm {
        evidence: Some(Evidence::TerminalAcknowledgement),
    };

    fn open(status: HostStatus) -> Rejection {
        Rejection {
            tracked: Some(LedgerEntry {
                status,
                ..LedgerEntry::approved()
            }),
            resolution: None,
        }
    }

    fn status_of(tracked: Tracked) -> Option<HostStatus> {
        match tracked {
            Tracked::Moved(entry) => Some(entry.status),
            _ => None,
        }
    }

    #[test]
    fn resolution_names_parse_back_and_nothing_else_does() {
        for resolution in Resolution::ALL {
            assert_eq!(Resolution::parse(resolution.as_str()), Ok(resolution));
        }
        for bad in ["", "dismiss", "Admitted", "paid"] {
            assert_eq!(Resolution::parse(bad).unwrap_err().field, "resolution");
        }
    }

    #[test]
    fn a_new_rejection_stands_where_the_ledger_would_have_put_it() {
        let rejection = Rejection::new(CONFIRM);
        assert_eq!(rejection.resolution, None);
        assert_eq!(
            rejection.tracked.map(|e| e.status),
            Some(HostStatus::Confirmed)
        );
        assert_eq!(
            Rejection::new(LedgerCommand::Approve)
                .tracked
                .map(|e| e.status),
            Some(HostStatus::Unconfirmed)
        );
    }

    #[test]
    fn an_open_rejection_follows_its_events_forward_only() {
        let reversed = LedgerCommand::Reverse { reason: NO_ACK };
        let unconfirmed = open(HostStatus::Unconfirmed);
        assert_eq!(
            status_of(track(&unconfirmed, reversed)),
            Some(HostStatus::Reversed {
                reason: NO_ACK,
                completed: true
            })
        );
        assert_eq!(
            status_of(track(&unconfirmed, CONFIRM)),
            Some(HostStatus::Confirmed)
        );
        // Final is final; a repeat changes nothing.
        let confirmed = open(HostStatus::Confirmed);
        assert_eq!(track(&confirmed, reversed), Tracked::Unchanged);
        assert_eq!(track(&confirmed, CONFIRM), Tracked::Unchanged);
        assert_eq!(
            track(&unconfirmed, LedgerCommand::Approve),
            Tracked::Unchanged
        );
        // Outside the ledger nothing is flagged or paid.
        assert_eq!(
            track(&unconfirmed, LedgerCommand::FlagConflict),
            Tracked::Unchanged
        );
        assert_eq!(
            track(&confirmed, LedgerCommand::CloseWindow),
            Tracked::Unchanged
        );
    }

    #[test]
    fn resolved_and_unfollowed_rejections_are_not_tracked() {
        let dismissed = Rejection {
            resolution: Some(Resolution::Dismiss),
            ..open(HostStatus::Unconfirmed)
        };
        assert_eq!(track(&dismissed, CONFIRM), Tracked::Unchanged);
        let admitted = Rejection {
            resolution: Some(Resolution::Admit),
            ..open(HostStatus::Unconfirmed)
        };
        assert_eq!(track(&admitted, CONFIRM), Tracked::InLedger);
        let unfollowed = Rejection {
            tracked: None,
            resolution: None,
        };
        assert_eq!(track(&unfollowed, CONFIRM), Tracked::Unchanged);
    }

    #[test]
    fn the_resolution_table() {
        let confirmed = open(HostStatus::Confirmed);
        assert_eq!(
            resolve(&confirmed, Resolution::Dismiss, None),
            Ok(ResolutionDecision::Dismissed)
        );
        assert_eq!(
            resolve(&confirmed, Resolution::Admit, None),
            Ok(ResolutionDecision::Admitted {
                entry: LedgerEntry {
                    status: HostStatus::Confirmed,
                    ..LedgerEntry::approved()
                }
            })
        );
        for resolution in Resolution::ALL {
            for first in Resolution::ALL {
                let resolved = Rejection {
                    resolution: Some(first),
                    ..confirmed
                };
                assert_eq!(
                    resolve(&resolved, resolution, None),
                    Err(ResolutionRefusal::AlreadyResolved(first)),
                    "{first} then {resolution}"
                );
            }
        }
        // Not followed: admitted only by a status known elsewhere; the
        // rejection's own tracked status wins over a look-up.
        let unfollowed = Rejection {
            tracked: None,
            resolution: None,
        };
        assert_eq!(
            resolve(&unfollowed, Resolution::Admit, None),
            Err(ResolutionRefusal::StatusUnknown)
        );
        assert_eq!(
            resolve(&unfollowed, Resolution::Dismiss, None),
            Ok(ResolutionDecision::Dismissed)
        );
        let reversed = LedgerEntry {
            status: HostStatus::Reversed {
                reason: NO_ACK,
                completed: true,
            },
            ..LedgerEntry::approved()
        };
        assert_eq!(
            resolve(&unfollowed, Resolution::Admit, Some(reversed)),
            Ok(ResolutionDecision::Admitted { entry: reversed })
        );
        assert_eq!(
            resolve(&confirmed, Resolution::Admit, Some(reversed)),
            Ok(ResolutionDecision::Admitted {
                entry: confirmed.tracked.unwrap()
            })
        );
    }

    #[test]
    fn an_admitted_reversed_sale_is_never_paid() {
        let mut rejection = Rejection::new(LedgerCommand::Approve);
        if let Tracked::Moved(next) = track(&rejection, LedgerCommand::Reverse { reason: NO_ACK }) {
            rejection.tracked = Some(next);
        }
        let Ok(ResolutionDecision::Admitted { entry }) =
            resolve(&rejection, Resolution::Admit, None)
        else {
            panic!("admitted");
        };
        assert_eq!(
            ledger::eligibility(entry.status, entry.conflict),
            Eligibility::NotPayable
        );
        assert!(ledger::decide(&entry, LedgerCommand::CloseWindow).is_err());
        assert!(ledger::decide(&entry, CONFIRM).is_err());
    }

    fn status_command() -> impl Strategy<Value = LedgerCommand> {
        let reason = prop::sample::select(ReversalReason::ALL.to_vec());
        let evidence = prop::option::of(prop::sample::select(Evidence::ALL.to_vec()));
        prop_oneof![
            Just(LedgerCommand::Approve),
            evidence.prop_map(|evidence| LedgerCommand::Confirm { evidence }),
            reason
                .clone()
                .prop_map(|reason| LedgerCommand::RequestReversal { reason }),
            reason.prop_map(|reason| LedgerCommand::Reverse { reason }),
        ]
    }

    fn any_command() -> impl Strategy<Value = LedgerCommand> {
        prop_oneof![
            4 => status_command(),
            1 => Just(LedgerCommand::CloseWindow),
        ]
    }

    /// The ledger's entry after `commands`, from the approval's first
    /// command, as if it had never been rejected.
    fn in_ledger(first: LedgerCommand, commands: &[LedgerCommand]) -> (LedgerEntry, bool) {
        let mut entry = LedgerEntry::first_known(first);
        let mut paid = false;
        for command in commands {
            if let Ok(decision) = ledger::decide(&entry, *command) {
                paid |= decision.effects.contains(&LedgerEffect::Pay);
                entry = decision.next;
            }
        }
        (entry, paid)
    }

    proptest! {
        /// Admitting a rejection ends exactly where the approval would be
        /// had it never been rejected: the events it missed in the ledger
        /// were followed meanwhile. So it is paid exactly when it would
        /// have been, and a sale reversed before or after admission is
        /// never paid.
        #[test]
        fn admitting_is_as_if_it_had_never_been_rejected(
            first in status_command(),
            before in prop::collection::vec(status_command(), 0..12),
            after in prop::collection::vec(any_command(), 0..12),
        ) {
            let mut rejection = Rejection::new(first);
            for command in &before {
                match track(&rejection, *command) {
                    Tracked::Moved(next) => rejection.tracked = Some(next),
                    Tracked::Unchanged => {}
                    Tracked::InLedger => prop_assert!(false, "not admitted yet"),
                }
            }
            let Ok(ResolutionDecision::Admitted { entry }) =
                resolve(&rejection, Resolution::Admit, None)
            else {
                return Err(TestCaseError::fail("an open, followed rejection is admitted"));
            };
            prop_assert_eq!(track(&Rejection { resolution: Some(Resolution::Admit), ..rejection }, first), Tracked::InLedger);
            let mut admitted = entry;
            let mut paid = false;
            for command in &after {
                if let Ok(decision) = ledger::decide(&admitted, *command) {
                    paid |= decision.effects.contains(&LedgerEffect::Pay);
                    admitted = decision.next;
                }
            }
            let everything: Vec<LedgerCommand> = before.iter().chain(&after).copied().collect();
            let (never_rejected, paid_there) = in_ledger(first, &everything);
            prop_assert_eq!(admitted, never_rejected);
            prop_assert_eq!(paid, paid_there);
            if paid {
                prop_assert_eq!(admitted.status, HostStatus::Confirmed);
            }
        }

        /// A dismissed rejection never moves and is never resolved again.
        #[test]
        fn a_dismissed_rejection_stays_dismissed(
            first in status_command(),
            commands in prop::collection::vec(any_command(), 0..12),
        ) {
            let open = Rejection::new(first);
            prop_assert_eq!(resolve(&open, Resolution::Dismiss, None), Ok(ResolutionDecision::Dismissed));
            let dismissed = Rejection { resolution: Some(Resolution::Dismiss), ..open };
            for command in commands {
                prop_assert_eq!(track(&dismissed, command), Tracked::Unchanged);
            }
            for resolution in Resolution::ALL {
                prop_assert_eq!(
                    resolve(&dismissed, resolution, None),
                    Err(ResolutionRefusal::AlreadyResolved(Resolution::Dismiss))
                );
            }
        }
    }
}
