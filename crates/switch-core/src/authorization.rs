//! The authorization lifecycle as a pure state machine.
//!
//! Services persist the state and feed events in; `AuthorizationState::on`
//! is the single place that decides whether a transition is legal, so the
//! rules cannot drift between the gateway, the journal and the tools. To add
//! a state: a variant, its name, and the arms in `on`; anything not listed
//! stays illegal by default.
//!
//! ```text
//! received ─▶ sent_to_issuer ─┬▶ approved ──────────▶ confirmed (final)
//!                             ├▶ declined (final)    │
//!                             └▶ issuer_timed_out ─┐ │
//!                  (sent_to_issuer, approved) ─────┴─┴▶ reversal_pending ─▶ reversed (final)
//!                                                        ▲        │
//!                                            redrive     └── reversal_dead_lettered
//! ```
//!
//! Confirmed, declined and reversed are final: nothing leaves them, which is
//! what makes "no approval is both settled and reversed" a property of this
//! function rather than of every caller.

use std::fmt;

use crate::error::InvalidField;
use crate::ids::ApprovalCode;
use crate::orphan::{Evidence, ReversalReason};

use crate::response_code::ResponseCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorizationState {
    Received,
    SentToIssuer,
    Approved,
    Declined,
    IssuerTimedOut,
    /// A reversal is owed to the issuer and repeated until acknowledged.
    ReversalPending,
    /// The issuer acknowledged the reversal.
    Reversed,
    /// Evidence (or policy) says the terminal completed it: it will settle.
    Confirmed,
    /// Not acknowledged within the reversal's maximum age: needs an operator.
    ReversalDeadLettered,
}

impl AuthorizationState {
    pub const ALL: [AuthorizationState; 9] = [
        Self::Received,
        Self::SentToIssuer,
        Self::Approved,
        Self::Declined,
        Self::IssuerTimedOut,
        Self::ReversalPending,
        Self::Reversed,
        Self::Confirmed,
        Self::ReversalDeadLettered,
    ];

    /// Stable storage name; changing one is a data migration.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::SentToIssuer => "sent_to_issuer",
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::IssuerTimedOut => "issuer_timed_out",
            Self::ReversalPending => "reversal_pending",
            Self::Reversed => "reversed",
            Self::Confirmed => "confirmed",
            Self::ReversalDeadLettered => "reversal_dead_lettered",
        }
    }

    /// Field "state".
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| InvalidField::new("state", format!("unknown state '{s}'")))
    }

    /// The issuer has not decided yet (or the switch does not know).
    pub fn is_in_flight(&self) -> bool {
        matches!(self, Self::Received | Self::SentToIssuer)
    }

    /// One of the outcomes every authorization must end in (problem.md,
    /// invariant 1): declined, confirmed or reversed. Approved and timed-out
    /// authorizations are still open; a dead-lettered reversal is open too,
    /// waiting for an operator.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Declined | Self::Confirmed | Self::Reversed)
    }

    /// The one place transitions are decided.
    pub fn on(self, event: &AuthorizationEvent) -> Result<AuthorizationState, IllegalTransition> {
        use AuthorizationEvent as E;
        use AuthorizationState as S;
        match (self, event) {
            (S::Received, E::SentToIssuer) => Ok(S::SentToIssuer),
            (S::SentToIssuer, E::IssuerApproved { .. }) => Ok(S::Approved),
            // A "decline" carrying "00" is contradictory; accepting it would
            // record a decline the issuer may have approved.
            (S::SentToIssuer, E::IssuerDeclined { response_code })
                if !response_code.is_approval() =>
            {
                Ok(S::Declined)
            }
            (S::SentToIssuer, E::IssuerTimedOut) => Ok(S::IssuerTimedOut),
            (S::Approved, E::Confirmed { .. }) => Ok(S::Confirmed),
            // Whether money moved is unknown or unwanted: reverse. An
            // authorization still in flight is one a crash interrupted.
            (
                S::Received | S::SentToIssuer | S::Approved | S::IssuerTimedOut,
                E::ReversalRequested { .. },
            ) => Ok(S::ReversalPending),
            (S::ReversalPending | S::ReversalDeadLettered, E::IssuerReversed) => Ok(S::Reversed),
            (S::ReversalPending, E::ReversalDeadLettered) => Ok(S::ReversalDeadLettered),
            // An operator's redrive.
            (S::ReversalDeadLettered, E::ReversalRequested { .. }) => Ok(S::ReversalPending),
            _ => Err(IllegalTransition {
                from: self,
                event: event.name(),
            }),
        }
    }
}

impl fmt::Display for AuthorizationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationEvent {
    SentToIssuer,
    IssuerApproved { approval_code: ApprovalCode },
    IssuerDeclined { response_code: ResponseCode },
    IssuerTimedOut,
    Confirmed { evidence: Evidence },
    ReversalRequested { reason: ReversalReason },
    IssuerReversed,
    ReversalDeadLettered,
}

impl AuthorizationEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::SentToIssuer => "sent_to_issuer",
            Self::IssuerApproved { .. } => "issuer_approved",
            Self::IssuerDeclined { .. } => "issuer_declined",
            Self::IssuerTimedOut => "issuer_timed_out",
            Self::Confirmed { .. } => "confirmed",
            Self::ReversalRequested { .. } => "reversal_requested",
            Self::IssuerReversed => "issuer_reversed",
            Self::ReversalDeadLettered => "reversal_dead_lettered",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: {event} in state {from:?}")]
pub struct IllegalTransition {
    pub from: AuthorizationState,
    pub event: &'static str,
}

/// What the terminal is told for a state: Approved/Confirmed -> "00",
/// Declined -> the issuer's decline code, IssuerTimedOut -> "91",
/// Received/SentToIssuer -> "96" (an answer before the issuer decided is a
/// switch fault). Reversal states repeat the issuer's original answer ("00",
/// or "91" when it never answered); the status says the payment is void.
/// An approval the switch did not accept (a partial "10", or "08", "11",
/// "16") reads "05": a terminal must never take it for an approval.
///
/// For Declined, a missing or "00" issuer code falls back to "05" so that a
/// declined authorization can never be reported as approved.
pub fn terminal_response_code(
    state: AuthorizationState,
    issuer_code: Option<ResponseCode>,
) -> ResponseCode {
    match state {
        AuthorizationState::Approved | AuthorizationState::Confirmed => ResponseCode::APPROVED,
        AuthorizationState::ReversalPending
        | AuthorizationState::Reversed
        | AuthorizationState::ReversalDeadLettered => match issuer_code {
            Some(code) if code.holds_funds() && !code.is_approval() => ResponseCode::DO_NOT_HONOUR,
            Some(code) => code,
            None => ResponseCode::ISSUER_UNAVAILABLE,
        },
        AuthorizationState::Declined => issuer_code
            .filter(|c| !c.is_approval())
            .unwrap_or(ResponseCode::DO_NOT_HONOUR),
        AuthorizationState::IssuerTimedOut => ResponseCode::ISSUER_UNAVAILABLE,
        AuthorizationState::Received | AuthorizationState::SentToIssuer => {
            ResponseCode::SYSTEM_MALFUNCTION
        }
    }
}

/// What the terminal shows beside the code for a state: whether the payment
/// stands, and for a void one that goods must not be handed over.
pub fn terminal_message(state: AuthorizationState, code: ResponseCode) -> &'static str {
    match state {
        AuthorizationState::IssuerTimedOut => {
            "Issuer did not answer in time; the payment is not approved"
        }
        AuthorizationState::Received | AuthorizationState::SentToIssuer => {
            "Awaiting the issuer's answer"
        }
        AuthorizationState::ReversalPending | AuthorizationState::ReversalDeadLettered => {
            "Void: the payment is being reversed; do not hand over goods"
        }
        AuthorizationState::Reversed => {
            "Void: the payment was reversed and the shopper's funds released"
        }
        AuthorizationState::Confirmed => "Approved and confirmed",
        AuthorizationState::Approved | AuthorizationState::Declined => code.description(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AuthorizationEvent as E;
    use AuthorizationState as S;
    use proptest::prelude::*;

    fn approved() -> E {
        E::IssuerApproved {
            approval_code: ApprovalCode::parse("ABC123").unwrap(),
        }
    }

    fn declined(code: &str) -> E {
        E::IssuerDeclined {
            response_code: ResponseCode::parse(code).unwrap(),
        }
    }

    /// One representative of every event shape, including the contradictory
    /// "declined with 00".
    fn all_events() -> Vec<E> {
        vec![
            E::SentToIssuer,
            approved(),
            declined("05"),
            declined("00"),
            E::IssuerTimedOut,
            E::Confirmed {
                evidence: Evidence::TerminalAcknowledgement,
            },
            E::ReversalRequested {
                reason: ReversalReason::NoTerminalAcknowledgement,
            },
            E::ReversalRequested {
                reason: ReversalReason::TerminalRequested,
            },
            E::IssuerReversed,
            E::ReversalDeadLettered,
        ]
    }

    /// The legal table, written independently of `on`.
    fn legal(from: S, event: &E) -> Option<S> {
        const TABLE: &[(S, &str, S)] = &[
            (S::Received, "sent_to_issuer", S::SentToIssuer),
            (S::SentToIssuer, "issuer_approved", S::Approved),
            (S::SentToIssuer, "issuer_declined", S::Declined),
            (S::SentToIssuer, "issuer_timed_out", S::IssuerTimedOut),
            (S::Approved, "confirmed", S::Confirmed),
            (S::Received, "reversal_requested", S::ReversalPending),
            (S::SentToIssuer, "reversal_requested", S::ReversalPending),
            (S::Approved, "reversal_requested", S::ReversalPending),
            (S::IssuerTimedOut, "reversal_requested", S::ReversalPending),
            (
                S::ReversalDeadLettered,
                "reversal_requested",
                S::ReversalPending,
            ),
            (S::ReversalPending, "issuer_reversed", S::Reversed),
            (S::ReversalDeadLettered, "issuer_reversed", S::Reversed),
            (
                S::ReversalPending,
                "reversal_dead_lettered",
                S::ReversalDeadLettered,
            ),
        ];
        if let E::IssuerDeclined { response_code } = event
            && response_code.is_approval()
        {
            return None;
        }
        TABLE
            .iter()
            .find(|(f, e, _)| *f == from && *e == event.name())
            .map(|(_, _, to)| *to)
    }

    #[test]
    fn every_state_event_pair_matches_table() {
        let mut legal_pairs = 0;
        for state in S::ALL {
            for event in all_events() {
                let want = legal(state, &event);
                legal_pairs += usize::from(want.is_some());
                match (state.on(&event), want) {
                    (Ok(got), Some(w)) => assert_eq!(got, w, "{state:?} {event:?}"),
                    (Err(err), None) => {
                        assert_eq!(err.from, state);
                        assert_eq!(err.event, event.name());
                    }
                    (got, want) => panic!("{state:?} {event:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        // 13 table rows; two ReversalRequested reasons each count twice.
        assert_eq!(legal_pairs, 13 + 5);
    }

    #[test]
    fn spot_checks_of_the_rules_that_matter() {
        // A late approval never resurrects a reversal.
        assert!(S::ReversalPending.on(&approved()).is_err());
        assert!(S::Reversed.on(&approved()).is_err());
        // Nothing is both confirmed and reversed.
        let terminal_reversal = E::ReversalRequested {
            reason: ReversalReason::TerminalRequested,
        };
        assert!(S::Confirmed.on(&terminal_reversal).is_err());
        assert!(
            S::Reversed
                .on(&E::Confirmed {
                    evidence: Evidence::Policy
                })
                .is_err()
        );
        // A reversal is never requested twice while one is pending.
        assert!(S::ReversalPending.on(&terminal_reversal).is_err());
        // A declined authorization has nothing to reverse.
        assert!(S::Declined.on(&terminal_reversal).is_err());
    }

    #[test]
    fn state_names_roundtrip() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()).unwrap(), s);
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(S::Received.as_str(), "received");
        assert_eq!(S::SentToIssuer.as_str(), "sent_to_issuer");
        assert_eq!(S::Approved.as_str(), "approved");
        assert_eq!(S::Declined.as_str(), "declined");
        assert_eq!(S::IssuerTimedOut.as_str(), "issuer_timed_out");
        assert_eq!(S::ReversalDeadLettered.as_str(), "reversal_dead_lettered");
        for bad in ["", "Received", "RECEIVED", "timed_out", "approved "] {
            assert_eq!(S::parse(bad).unwrap_err().field, "state");
        }
    }

    #[test]
    fn finality() {
        let finals: Vec<S> = S::ALL.into_iter().filter(S::is_final).collect();
        assert_eq!(finals, [S::Declined, S::Reversed, S::Confirmed]);
        let in_flight: Vec<S> = S::ALL.into_iter().filter(S::is_in_flight).collect();
        assert_eq!(in_flight, [S::Received, S::SentToIssuer]);
    }

    #[test]
    fn event_names() {
        let names: Vec<&str> = all_events().iter().map(E::name).collect();
        assert_eq!(
            names,
            [
                "sent_to_issuer",
                "issuer_approved",
                "issuer_declined",
                "issuer_declined",
                "issuer_timed_out",
                "confirmed",
                "reversal_requested",
                "reversal_requested",
                "issuer_reversed",
                "reversal_dead_lettered",
            ]
        );
    }

    #[test]
    fn illegal_transition_message() {
        let err = S::Approved.on(&E::SentToIssuer).unwrap_err();
        assert_eq!(
            err.to_string(),
            "illegal transition: sent_to_issuer in state Approved"
        );
    }

    #[test]
    fn terminal_code_cases() {
        let rc = |s| ResponseCode::parse(s).unwrap();
        assert_eq!(terminal_response_code(S::Approved, None), rc("00"));
        assert_eq!(
            terminal_response_code(S::Approved, Some(rc("05"))),
            rc("00")
        );
        assert_eq!(
            terminal_response_code(S::Declined, Some(rc("51"))),
            rc("51")
        );
        assert_eq!(terminal_response_code(S::Declined, None), rc("05"));
        assert_eq!(
            terminal_response_code(S::Declined, Some(rc("00"))),
            rc("05")
        );
        assert_eq!(terminal_response_code(S::IssuerTimedOut, None), rc("91"));
        assert_eq!(terminal_response_code(S::Received, None), rc("96"));
        assert_eq!(
            terminal_response_code(S::SentToIssuer, Some(rc("00"))),
            rc("96")
        );
        assert_eq!(terminal_response_code(S::Reversed, None), rc("91"));
        assert_eq!(
            terminal_response_code(S::ReversalPending, Some(rc("00"))),
            rc("00")
        );
        // An approval the switch did not accept is never shown as one, in
        // any reversal state.
        for s in [S::ReversalPending, S::Reversed, S::ReversalDeadLettered] {
            for held in ["08", "10", "11", "16"] {
                assert_eq!(
                    terminal_response_code(s, Some(rc(held))),
                    rc("05"),
                    "{s:?} {held}"
                );
            }
        }
        for s in S::ALL {
            let code = terminal_response_code(s, Some(rc("51")));
            assert_eq!(
                code.is_approval(),
                matches!(s, S::Approved | S::Confirmed),
                "{s:?}"
            );
        }
    }

    #[test]
    fn terminal_messages_say_void_exactly_for_reversals() {
        for state in S::ALL {
            let message = terminal_message(state, terminal_response_code(state, None));
            assert_eq!(
                message.starts_with("Void"),
                matches!(
                    state,
                    S::ReversalPending | S::Reversed | S::ReversalDeadLettered
                ),
                "{state:?}: {message}"
            );
        }
        let rc = |s| ResponseCode::parse(s).unwrap();
        assert_eq!(
            terminal_message(S::Declined, rc("51")),
            "Insufficient funds"
        );
        assert_eq!(terminal_message(S::Approved, rc("00")), "Approved");
    }

    fn any_event() -> impl Strategy<Value = E> {
        prop_oneof![
            Just(E::SentToIssuer),
            Just(approved()),
            prop::sample::select(vec!["00", "05", "51", "91", "Z9"]).prop_map(declined),
            Just(E::IssuerTimedOut),
            prop::sample::select(Evidence::ALL.to_vec())
                .prop_map(|evidence| E::Confirmed { evidence }),
            prop::sample::select(ReversalReason::ALL.to_vec())
                .prop_map(|reason| E::ReversalRequested { reason }),
            Just(E::IssuerReversed),
            Just(E::ReversalDeadLettered),
        ]
    }

    proptest! {
        #[test]
        fn random_sequences_respect_table(events in prop::collection::vec(any_event(), 0..16)) {
            let mut state = S::Received;
            let mut reached_final = false;
            for event in &events {
                match state.on(event) {
                    Ok(next) => {
                        prop_assert!(!reached_final, "left final {state:?} via {event:?}");
                        prop_assert_eq!(legal(state, event), Some(next));
                        state = next;
                    }
                    Err(err) => {
                        prop_assert_eq!(legal(state, event), None);
                        prop_assert_eq!(err.from, state);
                    }
                }
                reached_final |= state.is_final();
                if reached_final {
                    prop_assert!(state.is_final());
                }
            }
        }
    }
}
