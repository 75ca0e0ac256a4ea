//! Pure rules: when an approval's deadline falls, how a decision is stored,
//! what closed an approval (from an event or from authorization's answer),
//! and how long to wait before asking authorization again.

use std::fmt;
use std::time::Duration;

use switch_core::{Evidence, NextAttempt, OrphanDecision, RetrySchedule, ReversalReason};
use switch_platform::timestamps::to_time;
use switch_proto::v1::event_envelope::Payload;
use switch_proto::v1::{AuthorizationRecord, AuthorizationStatus};
use time::OffsetDateTime;

/// What closed an approval; stored as text in `approvals.outcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Confirmed, with the evidence (or "policy") authorization recorded.
    Confirmed(String),
    /// Authorization accepted a reversal and repeats it until the issuer
    /// acknowledges; the reason is authorization's.
    ReversalRequested(String),
    Reversed,
    ReversalDeadLettered,
    /// Authorization refused our request because another path (evidence,
    /// a terminal reversal) had already decided the approval.
    Superseded,
}

impl Outcome {
    /// The outcome an event announces, or `None` for events that do not
    /// close an approval.
    pub fn of_event(payload: &Payload) -> Option<Outcome> {
        match payload {
            Payload::AuthorizationConfirmed(confirmed) => {
                Some(Outcome::Confirmed(named(&confirmed.evidence)))
            }
            Payload::ReversalRequested(requested) => {
                Some(Outcome::ReversalRequested(named(&requested.reason)))
            }
            Payload::AuthorizationReversed(_) => Some(Outcome::Reversed),
            Payload::ReversalDeadLettered(_) => Some(Outcome::ReversalDeadLettered),
            _ => None,
        }
    }

    /// The outcome authorization's record shows after it accepted our
    /// request, or `None` when the record is in a state that neither
    /// request can leave it in (then we keep asking). `decision` fills in
    /// a reason or evidence the record leaves empty.
    pub fn of_record(record: &AuthorizationRecord, decision: OrphanDecision) -> Option<Outcome> {
        let status = AuthorizationStatus::try_from(record.status).ok()?;
        match status {
            AuthorizationStatus::ReversalPending => Some(Outcome::ReversalRequested(or_else(
                &record.reversal_reason,
                || decision_reason(decision),
            ))),
            AuthorizationStatus::Reversed => Some(Outcome::Reversed),
            AuthorizationStatus::ReversalDeadLettered => Some(Outcome::ReversalDeadLettered),
            AuthorizationStatus::Confirmed => Some(Outcome::Confirmed(or_else(
                &record.confirmation_evidence,
                || decision_reason(decision),
            ))),
            AuthorizationStatus::Unspecified
            | AuthorizationStatus::Received
            | AuthorizationStatus::SentToIssuer
            | AuthorizationStatus::Approved
            | AuthorizationStatus::Declined
            | AuthorizationStatus::IssuerTimedOut => None,
        }
    }

    /// Whether this outcome is what `decision` asked for.
    pub fn fulfils(&self, decision: OrphanDecision) -> bool {
        match decision {
            OrphanDecision::Reverse(_) => matches!(
                self,
                Outcome::ReversalRequested(_) | Outcome::Reversed | Outcome::ReversalDeadLettered
            ),
            OrphanDecision::Confirm(_) => matches!(self, Outcome::Confirmed(_)),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Confirmed(evidence) => write!(f, "confirmed:{evidence}"),
            Outcome::ReversalRequested(reason) => write!(f, "reversal_requested:{reason}"),
            Outcome::Reversed => f.write_str("reversed"),
            Outcome::ReversalDeadLettered => f.write_str("reversal_dead_lettered"),
            Outcome::Superseded => f.write_str("superseded"),
        }
    }
}

fn named(value: &str) -> String {
    or_else(value, || "unknown".to_owned())
}

fn or_else(value: &str, fallback: impl FnOnce() -> String) -> String {
    if value.is_empty() {
        fallback()
    } else {
        value.to_owned()
    }
}

fn decision_reason(decision: OrphanDecision) -> String {
    decision_columns(decision).1.to_owned()
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

/// When an approval that occurred at `occurred_at` becomes an orphan:
/// `window` later. An envelope without a usable timestamp (absent, at or
/// before the Unix epoch, or out of range) counts from `now`.
pub fn deadline(
    occurred_at: Option<&prost_types::Timestamp>,
    now: OffsetDateTime,
    window: Duration,
) -> OffsetDateTime {
    let start = occurred_at.and_then(to_time).unwrap_or(now);
    start.checked_add(window_of(window)).unwrap_or(start)
}

fn window_of(window: Duration) -> time::Duration {
    time::Duration::try_from(window).unwrap_or(time::Duration::MAX)
}

/// Milliseconds from `from` to `to`, zero if `to` is earlier (clock skew).
pub fn millis_between(from: OffsetDateTime, to: OffsetDateTime) -> u64 {
    u64::try_from((to - from).whole_milliseconds()).unwrap_or(0)
}

/// How long to wait after the `attempts`-th failed call. Never gives up:
/// until authorization accepts a decision, nobody else will act on it.
pub fn retry_delay(initial_ms: u64, max_ms: u64, attempts: u32, jitter: u64) -> Duration {
    let schedule = RetrySchedule {
        initial_delay_ms: initial_ms,
        max_delay_ms: max_ms,
        max_age_ms: u64::MAX,
    };
    match schedule.after_failure(attempts.max(1), 0, jitter) {
        NextAttempt::After(ms) => Duration::from_millis(ms),
        NextAttempt::DeadLetter => Duration::from_millis(max_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch_proto::v1 as pb;
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

    #[test]
    fn outcomes_are_named_for_the_table() {
        assert_eq!(
            Outcome::Confirmed("terminal_acknowledgement".into()).to_string(),
            "confirmed:terminal_acknowledgement"
        );
        assert_eq!(
            Outcome::ReversalRequested("issuer_timeout".into()).to_string(),
            "reversal_requested:issuer_timeout"
        );
        assert_eq!(Outcome::Reversed.to_string(), "reversed");
        assert_eq!(
            Outcome::ReversalDeadLettered.to_string(),
            "reversal_dead_lettered"
        );
        assert_eq!(Outcome::Superseded.to_string(), "superseded");
    }

    #[test]
    fn closing_events_name_their_outcome() {
        let confirmed = Payload::AuthorizationConfirmed(pb::AuthorizationConfirmed {
            evidence: "batch_upload".into(),
            ..Default::default()
        });
        assert_eq!(
            Outcome::of_event(&confirmed),
            Some(Outcome::Confirmed("batch_upload".into()))
        );
        let requested = Payload::ReversalRequested(pb::ReversalRequested {
            reason: "terminal_requested".into(),
            ..Default::default()
        });
        assert_eq!(
            Outcome::of_event(&requested).map(|o| o.to_string()),
            Some("reversal_requested:terminal_requested".into())
        );
        let no_reason = Payload::ReversalRequested(pb::ReversalRequested::default());
        assert_eq!(
            Outcome::of_event(&no_reason).map(|o| o.to_string()),
            Some("reversal_requested:unknown".into())
        );
        assert_eq!(
            Outcome::of_event(&Payload::AuthorizationReversed(Default::default())),
            Some(Outcome::Reversed)
        );
        assert_eq!(
            Outcome::of_event(&Payload::ReversalDeadLettered(Default::default())),
            Some(Outcome::ReversalDeadLettered)
        );
        for open in [
            Payload::AuthorizationApproved(Default::default()),
            Payload::AuthorizationIssuerTimedOut(Default::default()),
            Payload::TerminalAcknowledged(Default::default()),
            Payload::AcknowledgementConflict(Default::default()),
        ] {
            assert_eq!(Outcome::of_event(&open), None);
        }
    }

    #[test]
    fn record_after_a_request_names_the_outcome() {
        let mut pending = record(AuthorizationStatus::ReversalPending);
        assert_eq!(
            Outcome::of_record(&pending, REVERSE).map(|o| o.to_string()),
            Some("reversal_requested:no_terminal_acknowledgement".into())
        );
        pending.reversal_reason = "terminal_requested".into();
        assert_eq!(
            Outcome::of_record(&pending, REVERSE).map(|o| o.to_string()),
            Some("reversal_requested:terminal_requested".into())
        );
        let mut confirmed = record(AuthorizationStatus::Confirmed);
        assert_eq!(
            Outcome::of_record(&confirmed, CONFIRM).map(|o| o.to_string()),
            Some("confirmed:policy".into())
        );
        confirmed.confirmation_evidence = "last_completed_stan".into();
        let outcome = Outcome::of_record(&confirmed, REVERSE);
        assert_eq!(
            outcome.as_ref().map(ToString::to_string),
            Some("confirmed:last_completed_stan".into())
        );
        assert!(outcome.is_some_and(|o| !o.fulfils(REVERSE)));
        assert_eq!(
            Outcome::of_record(&record(AuthorizationStatus::Reversed), REVERSE),
            Some(Outcome::Reversed)
        );
        assert_eq!(
            Outcome::of_record(&record(AuthorizationStatus::Approved), REVERSE),
            None
        );
        let unknown = AuthorizationRecord {
            status: 99,
            ..AuthorizationRecord::default()
        };
        assert_eq!(Outcome::of_record(&unknown, REVERSE), None);
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
    fn deadline_counts_from_the_event_or_from_now() {
        let now = datetime!(2026-11-25 10:00:00 UTC);
        let window = Duration::from_millis(30_000);
        let occurred = prost_types::Timestamp {
            seconds: datetime!(2026-11-25 09:59:50.5 UTC).unix_timestamp(),
            nanos: 500_000_000,
        };
        assert_eq!(
            deadline(Some(&occurred), now, window),
            datetime!(2026-11-25 10:00:20.5 UTC)
        );
        assert_eq!(
            deadline(None, now, window),
            datetime!(2026-11-25 10:00:30 UTC)
        );
        let unset = prost_types::Timestamp::default();
        assert_eq!(
            deadline(Some(&unset), now, window),
            datetime!(2026-11-25 10:00:30 UTC)
        );
        let bad_nanos = prost_types::Timestamp {
            seconds: occurred.seconds,
            nanos: -1,
        };
        assert_eq!(
            deadline(Some(&bad_nanos), now, window),
            datetime!(2026-11-25 10:00:30 UTC)
        );
        let far = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(
            deadline(Some(&far), now, window),
            datetime!(2026-11-25 10:00:30 UTC)
        );
        assert_eq!(deadline(None, now, Duration::MAX), now);
    }

    #[test]
    fn latency_is_never_negative() {
        let deadline = datetime!(2026-11-25 10:00:00 UTC);
        assert_eq!(
            millis_between(deadline, datetime!(2026-11-25 10:00:01.25 UTC)),
            1_250
        );
        assert_eq!(
            millis_between(deadline, datetime!(2026-11-25 09:59:59 UTC)),
            0
        );
    }

    #[test]
    fn retries_back_off_to_the_cap_and_never_stop() {
        assert_eq!(retry_delay(200, 5_000, 1, 0), Duration::from_millis(200));
        assert_eq!(retry_delay(200, 5_000, 0, 0), Duration::from_millis(200));
        assert_eq!(retry_delay(200, 5_000, 3, 0), Duration::from_millis(800));
        assert_eq!(
            retry_delay(200, 5_000, u32::MAX, 0),
            Duration::from_millis(5_000)
        );
        let jittered = retry_delay(200, 5_000, 10, u64::MAX);
        assert!(
            jittered >= Duration::from_millis(4_000) && jittered <= Duration::from_millis(5_000)
        );
    }
}
