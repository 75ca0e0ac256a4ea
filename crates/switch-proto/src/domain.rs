//! The one place where the wire enums meet switch-core's closed
//! vocabularies (feature `domain`): `TryFrom<pb::X> for core::X` where a
//! value enters, `From<core::X> for pb::X` where it leaves.
//!
//! Every wire enum has an `..._UNSPECIFIED = 0`, which is what a sender that
//! forgot the field (or an older producer) puts on the wire. It never maps to
//! a domain value: [`required`] refuses it, naming the field, and
//! [`optional`] reads it as "absent" for the few fields that are optional
//! (an authorization record's reversal reason and confirmation evidence).
//! A number this build does not know is refused the same way.

use std::fmt;

use switch_core::settlement::rejection::Resolution;
use switch_core::{
    AuthorizationState, Evidence, HoldReason, InvalidField, LedgerStatus, ReconciliationOutcome,
    ReversalReason,
};

use crate::v1 as pb;

/// The wire value was `..._UNSPECIFIED`: no domain value corresponds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unspecified;

impl fmt::Display for Unspecified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unspecified")
    }
}

impl std::error::Error for Unspecified {}

/// Reads the raw value of a required enum field `field` as a domain value:
/// an unknown number or `..._UNSPECIFIED` is an [`InvalidField`] naming it.
pub fn required<P, C>(field: &'static str, raw: i32) -> Result<C, InvalidField>
where
    P: TryFrom<i32>,
    C: TryFrom<P, Error = Unspecified>,
{
    let wire =
        P::try_from(raw).map_err(|_| InvalidField::new(field, format!("unknown value {raw}")))?;
    C::try_from(wire).map_err(|_| InvalidField::new(field, "must be specified"))
}

/// Reads the raw value of an optional enum field: `..._UNSPECIFIED` is
/// `None`; an unknown number is an [`InvalidField`] naming the field.
pub fn optional<P, C>(field: &'static str, raw: i32) -> Result<Option<C>, InvalidField>
where
    P: TryFrom<i32>,
    C: TryFrom<P, Error = Unspecified>,
{
    if raw == 0 {
        return Ok(None);
    }
    required::<P, C>(field, raw).map(Some)
}

/// Writes an optional domain value: `None` is `..._UNSPECIFIED` (0).
pub fn wire_optional<C, P>(value: Option<C>) -> i32
where
    P: From<C> + Into<i32>,
{
    value.map_or(0, |v| P::from(v).into())
}

/// Declares both directions of one vocabulary from a single table.
macro_rules! vocabulary {
    ($wire:ty, $core:ty, { $($w:ident <=> $c:ident),+ $(,)? }) => {
        impl TryFrom<$wire> for $core {
            type Error = Unspecified;

            fn try_from(value: $wire) -> Result<Self, Unspecified> {
                match value {
                    <$wire>::Unspecified => Err(Unspecified),
                    $(<$wire>::$w => Ok(<$core>::$c),)+
                }
            }
        }

        impl From<$core> for $wire {
            fn from(value: $core) -> Self {
                match value {
                    $(<$core>::$c => <$wire>::$w,)+
                }
            }
        }
    };
}

vocabulary!(pb::AuthorizationStatus, AuthorizationState, {
    Received <=> Received,
    SentToIssuer <=> SentToIssuer,
    Approved <=> Approved,
    Declined <=> Declined,
    IssuerTimedOut <=> IssuerTimedOut,
    ReversalPending <=> ReversalPending,
    Reversed <=> Reversed,
    Confirmed <=> Confirmed,
    ReversalDeadLettered <=> ReversalDeadLettered,
});

vocabulary!(pb::Evidence, Evidence, {
    TerminalAcknowledgement <=> TerminalAcknowledgement,
    LastCompletedStan <=> LastCompletedStan,
    BatchUpload <=> BatchUpload,
    Policy <=> Policy,
});

vocabulary!(pb::ReversalReason, ReversalReason, {
    NoTerminalAcknowledgement <=> NoTerminalAcknowledgement,
    IssuerTimeout <=> IssuerTimeout,
    TerminalRequested <=> TerminalRequested,
    LateIssuerResponse <=> LateIssuerResponse,
    BatchOrphan <=> BatchOrphan,
    ApprovalNotAccepted <=> ApprovalNotAccepted,
});

vocabulary!(pb::ReconciliationOutcome, ReconciliationOutcome, {
    Matched <=> Matched,
    ConfirmedByUpload <=> ConfirmedByUpload,
    OrphanReversalRequested <=> OrphanFound,
    ConflictReversedAtHost <=> ConflictReversedAtHost,
    UnknownAtHost <=> UnknownAtHost,
    Mismatch <=> Mismatch,
    ConfirmedNotUploaded <=> ConfirmedNotUploaded,
    ReversedNotUploaded <=> ReversedNotUploaded,
});

vocabulary!(pb::HoldReason, HoldReason, {
    AwaitingEvidence <=> AwaitingEvidence,
    ReversalPending <=> ReversalPending,
    Conflict <=> Conflict,
});

vocabulary!(pb::LedgerStatus, LedgerStatus, {
    Unconfirmed <=> Unconfirmed,
    ReversalPending <=> ReversalPending,
    Confirmed <=> Confirmed,
    Reversed <=> Reversed,
});

vocabulary!(pb::RejectionResolution, Resolution, {
    Dismiss <=> Dismiss,
    Admit <=> Admit,
});

/// Each vocabulary value as the reason of a terminal message.
impl From<Evidence> for pb::OutcomeReason {
    fn from(value: Evidence) -> Self {
        let value = pb::Evidence::from(value).into();
        Self {
            reason: Some(pb::outcome_reason::Reason::Evidence(value)),
        }
    }
}

impl From<ReversalReason> for pb::OutcomeReason {
    fn from(value: ReversalReason) -> Self {
        let value = pb::ReversalReason::from(value).into();
        Self {
            reason: Some(pb::outcome_reason::Reason::ReversalReason(value)),
        }
    }
}

impl From<ReconciliationOutcome> for pb::OutcomeReason {
    fn from(value: ReconciliationOutcome) -> Self {
        let value = pb::ReconciliationOutcome::from(value).into();
        Self {
            reason: Some(pb::outcome_reason::Reason::Outcome(value)),
        }
    }
}

/// The core name of a terminal message's reason (`policy`,
/// `no_terminal_acknowledgement`, `conflict_reversed_at_host`), or an
/// [`InvalidField`] "reason" when it is absent, unspecified or unknown.
pub fn outcome_reason_name(
    reason: Option<&pb::OutcomeReason>,
) -> Result<&'static str, InvalidField> {
    use pb::outcome_reason::Reason;
    match reason.and_then(|r| r.reason) {
        Some(Reason::Evidence(raw)) => {
            required::<pb::Evidence, Evidence>("reason", raw).map(|e| e.as_str())
        }
        Some(Reason::ReversalReason(raw)) => {
            required::<pb::ReversalReason, ReversalReason>("reason", raw).map(|r| r.as_str())
        }
        Some(Reason::Outcome(raw)) => {
            required::<pb::ReconciliationOutcome, ReconciliationOutcome>("reason", raw)
                .map(|o| o.as_str())
        }
        None => Err(InvalidField::new("reason", "missing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_authorization_state_round_trips() {
        for state in AuthorizationState::ALL {
            let raw: i32 = pb::AuthorizationStatus::from(state).into();
            assert_eq!(
                required::<pb::AuthorizationStatus, AuthorizationState>("status", raw),
                Ok(state)
            );
        }
        assert!(required::<pb::AuthorizationStatus, AuthorizationState>("status", 0).is_err());
    }

    #[test]
    fn every_evidence_round_trips() {
        for e in Evidence::ALL {
            let raw: i32 = pb::Evidence::from(e).into();
            assert_eq!(required::<pb::Evidence, Evidence>("evidence", raw), Ok(e));
        }
    }

    #[test]
    fn every_reversal_reason_round_trips() {
        for r in ReversalReason::ALL {
            let raw: i32 = pb::ReversalReason::from(r).into();
            assert_eq!(
                required::<pb::ReversalReason, ReversalReason>("reason", raw),
                Ok(r)
            );
        }
    }

    #[test]
    fn every_reconciliation_outcome_round_trips() {
        for o in ReconciliationOutcome::ALL {
            let raw: i32 = pb::ReconciliationOutcome::from(o).into();
            assert_eq!(
                required::<pb::ReconciliationOutcome, ReconciliationOutcome>("outcome", raw),
                Ok(o)
            );
        }
    }

    #[test]
    fn every_hold_reason_round_trips() {
        for h in HoldReason::ALL {
            let raw: i32 = pb::HoldReason::from(h).into();
            assert_eq!(
                required::<pb::HoldReason, HoldReason>("hold_reason", raw),
                Ok(h)
            );
            let name = pb::HoldReason::from(h).as_str_name();
            assert_eq!(name, format!("HOLD_REASON_{}", h.as_str().to_uppercase()));
        }
    }

    #[test]
    fn every_ledger_status_and_resolution_round_trips() {
        for status in LedgerStatus::ALL {
            let raw: i32 = pb::LedgerStatus::from(status).into();
            assert_eq!(
                required::<pb::LedgerStatus, LedgerStatus>("status", raw),
                Ok(status)
            );
            let name = pb::LedgerStatus::from(status).as_str_name();
            assert_eq!(
                name,
                format!("LEDGER_STATUS_{}", status.as_str().to_uppercase())
            );
        }
        for resolution in Resolution::ALL {
            let raw: i32 = pb::RejectionResolution::from(resolution).into();
            assert_eq!(
                required::<pb::RejectionResolution, Resolution>("resolution", raw),
                Ok(resolution)
            );
        }
        let refused = required::<pb::RejectionResolution, Resolution>("resolution", 0);
        assert_eq!(refused.unwrap_err().field, "resolution");
    }

    #[test]
    fn an_outcome_reason_is_named_by_its_core_name() {
        let reason = pb::OutcomeReason::from(ReversalReason::NoTerminalAcknowledgement);
        assert_eq!(
            outcome_reason_name(Some(&reason)),
            Ok(ReversalReason::NoTerminalAcknowledgement.as_str())
        );
        let reason = pb::OutcomeReason::from(Evidence::Policy);
        assert_eq!(outcome_reason_name(Some(&reason)), Ok("policy"));
        let reason = pb::OutcomeReason::from(ReconciliationOutcome::ConflictReversedAtHost);
        assert_eq!(
            outcome_reason_name(Some(&reason)),
            Ok("conflict_reversed_at_host")
        );
        let unspecified = pb::OutcomeReason {
            reason: Some(pb::outcome_reason::Reason::Evidence(0)),
        };
        assert_eq!(
            outcome_reason_name(Some(&unspecified)).unwrap_err().field,
            "reason"
        );
        assert_eq!(outcome_reason_name(None).unwrap_err().field, "reason");
        assert!(outcome_reason_name(Some(&pb::OutcomeReason::default())).is_err());
    }

    #[test]
    fn the_wire_names_match_the_storage_names() {
        // The proto names are the core's storage names, upper-cased and
        // prefixed, so a reader of either sees the same vocabulary.
        for e in Evidence::ALL {
            let name = pb::Evidence::from(e).as_str_name();
            assert_eq!(name, format!("EVIDENCE_{}", e.as_str().to_uppercase()));
        }
        for r in ReversalReason::ALL {
            let name = pb::ReversalReason::from(r).as_str_name();
            assert_eq!(
                name,
                format!("REVERSAL_REASON_{}", r.as_str().to_uppercase())
            );
        }
        for o in ReconciliationOutcome::ALL {
            let name = pb::ReconciliationOutcome::from(o).as_str_name();
            assert_eq!(
                name,
                format!("RECONCILIATION_OUTCOME_{}", o.as_str().to_uppercase())
            );
        }
    }

    #[test]
    fn unspecified_is_refused_with_the_fields_name() {
        let e = required::<pb::Evidence, Evidence>("evidence", 0).unwrap_err();
        assert_eq!(e.field, "evidence");
        assert_eq!(e.reason, "must be specified");
        let e = required::<pb::ReversalReason, ReversalReason>("reversal_reason", 0).unwrap_err();
        assert_eq!(e.field, "reversal_reason");
        let e =
            required::<pb::ReconciliationOutcome, ReconciliationOutcome>("outcome", 0).unwrap_err();
        assert_eq!(e.field, "outcome");
    }

    #[test]
    fn an_unknown_number_is_refused_with_the_fields_name() {
        let e = required::<pb::Evidence, Evidence>("evidence", 99).unwrap_err();
        assert_eq!(e.field, "evidence");
        assert_eq!(e.reason, "unknown value 99");
        assert!(optional::<pb::Evidence, Evidence>("confirmation_evidence", 99).is_err());
    }

    #[test]
    fn optional_reads_unspecified_as_absent() {
        assert_eq!(
            optional::<pb::ReversalReason, ReversalReason>("reversal_reason", 0),
            Ok(None)
        );
        let raw = wire_optional::<_, pb::ReversalReason>(Some(ReversalReason::BatchOrphan));
        assert_eq!(
            optional::<pb::ReversalReason, ReversalReason>("reversal_reason", raw),
            Ok(Some(ReversalReason::BatchOrphan))
        );
        assert_eq!(wire_optional::<Evidence, pb::Evidence>(None), 0);
    }
}
