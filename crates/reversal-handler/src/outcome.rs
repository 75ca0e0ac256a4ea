//! Conversions at the edge: what closed an approval, read from an event or
//! from authorization's record into [`WatchOutcome`]; how a decision is
//! stored in its columns; when an event occurred. The rules themselves
//! (what closes, what is due, how long to back off) are in
//! [`switch_core::watch`].

use switch_core::{AuthorizationState, Evidence, OrphanDecision, ReversalReason, WatchOutcome};
use switch_platform::timestamps::to_time;
use switch_proto::domain::optional;
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{self as pb, AuthorizationRecord, AuthorizationStatus};
use time::OffsetDateTime;

/// The outcome an event announces, or `None` for events that do not close
/// an approval. An unspecified evidence or reason, or a number this build
/// does not know, reads as `None` (stored as `unknown`).
pub fn of_event(payload: &Payload) -> Option<WatchOutcome> {
    match payload {
        Payload::AuthorizationConfirmed(confirmed) => {
            Some(WatchOutcome::Confirmed(evidence(confirmed.evidence)))
        }
        Payload::ReversalRequested(requested) => {
            Some(WatchOutcome::ReversalRequested(reason(requested.reason)))
        }
        Payload::AuthorizationReversed(_) => Some(WatchOutcome::Reversed),
        Payload::ReversalDeadLettered(_) => Some(WatchOutcome::ReversalDeadLettered),
        _ => None,
    }
}

/// The outcome authorization's record shows after it accepted our request,
/// or `None` when the record is in a state that neither request can leave
/// it in (then we keep asking). `decision` fills in a reason or evidence
/// the record leaves empty.
pub fn of_record(record: &AuthorizationRecord, decision: OrphanDecision) -> Option<WatchOutcome> {
    let status = AuthorizationStatus::try_from(record.status).ok()?;
    let state = AuthorizationState::try_from(status).ok()?;
    let (asked_evidence, asked_reason) = match decision {
        OrphanDecision::Confirm(evidence) => (Some(evidence), None),
        OrphanDecision::Reverse(reason) => (None, Some(reason)),
    };
    WatchOutcome::of_authorization(
        state,
        evidence(record.confirmation_evidence).or(asked_evidence),
        reason(record.reversal_reason).or(asked_reason),
    )
}

fn evidence(raw: i32) -> Option<Evidence> {
    optional::<pb::Evidence, _>("evidence", raw).ok().flatten()
}

fn reason(raw: i32) -> Option<ReversalReason> {
    optional::<pb::ReversalReason, _>("reason", raw)
        .ok()
        .flatten()
}

/// The `decision` and `reason` columns of a decision.
pub fn decision_columns(decision: OrphanDecision) -> (&'static str, &'static str) {
    match decision {
        OrphanDecision::Reverse(reason) => ("reverse", reason.as_str()),
        OrphanDecision::Confirm(evidence) => ("confirm", evidence.as_str()),
    }
}

/// Reads a decision back from its columns; `None` if they do not name one.
pub fn parse_decision(decision: &str, reason: &str) -> Option<OrphanDecision> {
    match decision {
        "reverse" => ReversalReason::parse(reason)
            .ok()
            .map(OrphanDecision::Reverse),
        "confirm" => Evidence::parse(reason).ok().map(OrphanDecision::Confirm),
        _ => None,
    }
}

/// When an event occurred: its envelope's timestamp, or `now` for one
/// without a usable timestamp (absent, at or before the Unix epoch, or out
/// of range).
pub fn occurred_at(
    occurred_at: Option<&prost_types::Timestamp>,
    now: OffsetDateTime,
) -> OffsetDateTime {
    occurred_at.and_then(to_time).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const REVERSE: OrphanDecision =
        OrphanDecision::Reverse(ReversalReason::NoTerminalAcknowledgement);
    const CONFIRM: OrphanDecision = OrphanDecision::Confirm(Evidence::Policy);

    fn record(status: AuthorizationStatus) -> AuthorizationRecord {
        AuthorizationRecord {
            status: status as i32,
            ..AuthorizationRecord::default()
        }
    }

    fn named(outcome: Option<WatchOutcome>) -> Option<String> {
        outcome.map(|o| o.name())
    }

    #[test]
    fn closing_events_name_their_outcome() {
        let confirmed = Payload::AuthorizationConfirmed(pb::AuthorizationConfirmed {
            evidence: pb::Evidence::BatchUpload.into(),
            ..Default::default()
        });
        assert_eq!(
            of_event(&confirmed),
            Some(WatchOutcome::Confirmed(Some(Evidence::BatchUpload)))
        );
        let requested = Payload::ReversalRequested(pb::ReversalRequested {
            reason: pb::ReversalReason::TerminalRequested.into(),
            ..Default::default()
        });
        assert_eq!(
            named(of_event(&requested)),
            Some("reversal_requested:terminal_requested".into())
        );
        let no_reason = Payload::ReversalRequested(pb::ReversalRequested::default());
        assert_eq!(
            named(of_event(&no_reason)),
            Some("reversal_requested:unknown".into())
        );
        assert_eq!(
            of_event(&Payload::AuthorizationReversed(Default::default())),
            Some(WatchOutcome::Reversed)
        );
        assert_eq!(
            of_event(&Payload::ReversalDeadLettered(Default::default())),
            Some(WatchOutcome::ReversalDeadLettered)
        );
        for open in [
            Payload::AuthorizationApproved(Default::default()),
            Payload::AuthorizationIssuerTimedOut(Default::default()),
            Payload::TerminalAcknowledged(Default::default()),
            Payload::AcknowledgementConflict(Default::default()),
        ] {
            assert_eq!(of_event(&open), None);
        }
    }

    #[test]
    fn record_after_a_request_names_the_outcome() {
        let mut pending = record(AuthorizationStatus::ReversalPending);
        assert_eq!(
            named(of_record(&pending, REVERSE)),
            Some("reversal_requested:no_terminal_acknowledgement".into())
        );
        pending.reversal_reason = pb::ReversalReason::TerminalRequested.into();
        assert_eq!(
            named(of_record(&pending, REVERSE)),
            Some("reversal_requested:terminal_requested".into())
        );
        let mut confirmed = record(AuthorizationStatus::Confirmed);
        assert_eq!(
            named(of_record(&confirmed, CONFIRM)),
            Some("confirmed:policy".into())
        );
        confirmed.confirmation_evidence = pb::Evidence::LastCompletedStan.into();
        let outcome = of_record(&confirmed, REVERSE);
        assert_eq!(named(outcome), Some("confirmed:last_completed_stan".into()));
        assert!(outcome.is_some_and(|o| !o.fulfils(REVERSE)));
        assert_eq!(
            of_record(&record(AuthorizationStatus::Reversed), REVERSE),
            Some(WatchOutcome::Reversed)
        );
        assert_eq!(
            of_record(&record(AuthorizationStatus::Approved), REVERSE),
            None
        );
        let unknown = AuthorizationRecord {
            status: 99,
            ..AuthorizationRecord::default()
        };
        assert_eq!(of_record(&unknown, REVERSE), None);
    }

    #[test]
    fn decisions_roundtrip_through_their_columns() {
        for decision in [
            REVERSE,
            CONFIRM,
            OrphanDecision::Reverse(ReversalReason::IssuerTimeout),
        ] {
            let (kind, reason) = decision_columns(decision);
            assert_eq!(parse_decision(kind, reason), Some(decision));
        }
        assert_eq!(decision_columns(CONFIRM), ("confirm", "policy"));
        assert_eq!(parse_decision("confirm", "issuer_timeout"), None);
        assert_eq!(parse_decision("refund", "policy"), None);
    }

    #[test]
    fn events_occur_at_their_timestamp_or_now() {
        let now = datetime!(2026-11-25 10:00:00 UTC);
        let occurred = prost_types::Timestamp {
            seconds: datetime!(2026-11-25 09:59:50 UTC).unix_timestamp(),
            nanos: 500_000_000,
        };
        assert_eq!(
            occurred_at(Some(&occurred), now),
            datetime!(2026-11-25 09:59:50.5 UTC)
        );
        assert_eq!(occurred_at(None, now), now);
        let unset = prost_types::Timestamp::default();
        assert_eq!(occurred_at(Some(&unset), now), now);
        let bad_nanos = prost_types::Timestamp {
            seconds: occurred.seconds,
            nanos: -1,
        };
        assert_eq!(occurred_at(Some(&bad_nanos), now), now);
        let far = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(occurred_at(Some(&far), now), now);
    }
}
