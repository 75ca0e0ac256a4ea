//! Every (state, command) pair against a table written independently of
//! `decide`, and random command sequences against the invariants.

use proptest::prelude::*;
use time::macros::datetime;

use super::*;
use crate::card::Pan;
use crate::money::Currency;
use AuthorizationState as S;

const T0: OffsetDateTime = datetime!(2026-12-01 10:00 UTC);
const T1: OffsetDateTime = datetime!(2026-12-01 10:00:05 UTC);

const SCHEDULE: RetrySchedule = RetrySchedule {
    initial_delay_ms: 200,
    max_delay_ms: 10_000,
    max_age_ms: 60_000,
};

/// The original call's deadline (T0 + 4 s) has passed at T1.
const WINDOWS: IssuerWindows = IssuerWindows {
    call_timeout: std::time::Duration::from_secs(2),
    late_window: std::time::Duration::from_secs(4),
};

/// The original call may still reach the issuer at T1 (until T0 + 60 s).
const OPEN_WINDOWS: IssuerWindows = IssuerWindows {
    call_timeout: std::time::Duration::from_secs(2),
    late_window: std::time::Duration::from_secs(60),
};

fn rc(code: &str) -> ResponseCode {
    ResponseCode::parse(code).unwrap()
}

fn sale() -> Authorization {
    let pan = Pan::parse("4111111111111111").unwrap();
    let (record, _) = Authorization::open(
        SaleIntent {
            transaction_id: TransactionId::new(),
            key: RequestKey {
                terminal_id: TerminalId::parse("TERM0001").unwrap(),
                stan: Stan::parse("000123").unwrap(),
                local_date: LocalDate::parse("2026-12-01").unwrap(),
            },
            merchant_id: MerchantId::parse("MERCHANT0000001").unwrap(),
            rrn: Rrn::parse("633510000001").unwrap(),
            masked_pan: pan.masked(),
            pan_fingerprint: crate::card::PanHasher::new(b"0123456789abcdef").fingerprint(&pan),
            amount: Money::positive(1_250, Currency::parse("EUR").unwrap()).unwrap(),
            channel: Channel::Card,
        },
        T0,
    );
    record
}

/// An authorization in `state`, with the fields that state implies.
fn in_state(state: S) -> Authorization {
    let mut record = sale();
    record.state = state;
    match state {
        S::Approved | S::Confirmed | S::ReversalPending | S::Reversed | S::ReversalDeadLettered => {
            record.response_code = Some(ResponseCode::APPROVED);
            record.approval_code = Some(ApprovalCode::parse("ABC123").unwrap());
        }
        S::Declined => record.response_code = Some(rc("51")),
        S::Received | S::SentToIssuer | S::IssuerTimedOut => {}
    }
    if state == S::Confirmed {
        record.confirmation_evidence = Some(Evidence::Policy);
    }
    if matches!(
        state,
        S::ReversalPending | S::Reversed | S::ReversalDeadLettered
    ) {
        record.reversal_reason = Some(ReversalReason::NoTerminalAcknowledgement);
    }
    record
}

fn answered(code: &str, age_ms: u64) -> Command {
    answered_within(code, age_ms, WINDOWS)
}

fn answered_within(code: &str, age_ms: u64, windows: IssuerWindows) -> Command {
    Command::ReversalAnswered {
        answer: ReversalAnswer::Answered(rc(code)),
        attempt: ReversalAttempt {
            attempts: 3,
            age_ms,
            jitter: 0,
            sent_at: T1,
        },
        schedule: SCHEDULE,
        windows,
    }
}

fn late(code: &str) -> Command {
    Command::LateIssuerAnswer {
        response_code: code.into(),
        approval_code: if code == "00" { "XYZ789" } else { "" }.into(),
        latency_ms: 2_500,
    }
}

/// One representative of every command shape, with a label for the table.
fn commands() -> Vec<(&'static str, Command)> {
    vec![
        (
            "approved",
            Command::IssuerDecided(IssuerVerdict::Approved(
                ApprovalCode::parse("ABC123").unwrap(),
            )),
        ),
        (
            "declined",
            Command::IssuerDecided(IssuerVerdict::Declined(rc("51"))),
        ),
        ("silent", Command::IssuerDecided(IssuerVerdict::Unknown)),
        (
            "partial",
            Command::IssuerDecided(IssuerVerdict::NotAccepted {
                response_code: rc("10"),
                approval_code: Some(ApprovalCode::parse("PRT001").unwrap()),
            }),
        ),
        (
            "recover",
            Command::RecoverAbandonedCall { windows: WINDOWS },
        ),
        (
            "recover_early",
            Command::RecoverAbandonedCall {
                windows: OPEN_WINDOWS,
            },
        ),
        (
            "ack",
            Command::Acknowledge {
                evidence: Evidence::TerminalAcknowledgement,
            },
        ),
        (
            "last_stan",
            Command::Acknowledge {
                evidence: Evidence::LastCompletedStan,
            },
        ),
        (
            "confirm",
            Command::Confirm {
                evidence: Evidence::BatchUpload,
            },
        ),
        (
            "reverse",
            Command::RequestReversal {
                reason: ReversalReason::TerminalRequested,
            },
        ),
        ("reversed_00", answered("00", 1_000)),
        ("reversed_25", answered("25", 1_000)),
        (
            "reversed_25_early",
            answered_within("25", 1_000, OPEN_WINDOWS),
        ),
        ("refused_05", answered("05", 1_000)),
        (
            "no_answer_too_old",
            Command::ReversalAnswered {
                answer: ReversalAnswer::NoAnswer("deadline exceeded".into()),
                attempt: ReversalAttempt {
                    attempts: 40,
                    age_ms: 60_000,
                    jitter: 7,
                    sent_at: T1,
                },
                schedule: SCHEDULE,
                windows: WINDOWS,
            },
        ),
        ("redrive", Command::Redrive),
        ("late_00", late("00")),
        ("late_05", late("05")),
    ]
}

#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Refused(&'static str),
    /// The next state and the effects, by label, in order.
    Next(S, &'static [&'static str]),
}

/// The rules, written as a table and independently of `decide`.
fn expected(state: S, command: &str) -> Expected {
    use Expected::*;
    const NOTHING: &[&str] = &[];
    const REVERSAL: &[&str] = &["enqueue", "announce:reversal_requested"];
    let reversal_states = matches!(
        state,
        S::ReversalPending | S::Reversed | S::ReversalDeadLettered
    );
    match command {
        "approved" if state == S::SentToIssuer => Next(S::Approved, &["announce:approved"]),
        "declined" if state == S::SentToIssuer => Next(S::Declined, &["announce:declined"]),
        "silent" if state == S::SentToIssuer => {
            Next(S::IssuerTimedOut, &["announce:issuer_timed_out"])
        }
        "partial" if state == S::SentToIssuer => Next(S::ReversalPending, REVERSAL),
        "approved" | "declined" | "silent" | "partial" => Refused("illegal"),

        "recover" if state == S::SentToIssuer => {
            Next(S::IssuerTimedOut, &["announce:issuer_timed_out"])
        }
        "recover_early" if state == S::SentToIssuer => Refused("call_still_open"),
        "recover" | "recover_early" => Next(state, NOTHING),

        "ack" | "last_stan" => match state {
            S::Received | S::SentToIssuer => Refused("not_yet_decided"),
            S::Approved => Next(S::Confirmed, &["announce:confirmed"]),
            _ if reversal_states => Next(state, &["announce:acknowledgement_conflict"]),
            _ => Next(state, &["announce:acknowledged"]),
        },

        "confirm" => match state {
            S::Approved => Next(S::Confirmed, &["announce:confirmed"]),
            S::Confirmed => Next(S::Confirmed, NOTHING),
            _ => Refused("not_confirmable"),
        },

        "reverse" => match state {
            S::Received | S::SentToIssuer | S::Approved | S::IssuerTimedOut => {
                Next(S::ReversalPending, REVERSAL)
            }
            S::Confirmed => Refused("confirmed_not_reversed"),
            _ => Next(state, NOTHING),
        },

        "reversed_00" | "reversed_25" => match state {
            S::ReversalPending | S::ReversalDeadLettered => {
                Next(S::Reversed, &["close:acknowledged", "announce:reversed"])
            }
            _ => Next(state, NOTHING),
        },
        // The reversal may have overtaken its original: not done yet.
        "refused_05" | "reversed_25_early" => match state {
            S::ReversalPending => Next(state, &["retry"]),
            _ => Next(state, NOTHING),
        },
        "no_answer_too_old" => match state {
            S::ReversalPending => Next(
                S::ReversalDeadLettered,
                &["close:dead_lettered", "announce:reversal_dead_lettered"],
            ),
            _ => Next(state, NOTHING),
        },

        "redrive" => match state {
            S::ReversalDeadLettered => Next(S::ReversalPending, REVERSAL),
            _ => Refused("nothing_to_redrive"),
        },

        "late_00" => match state {
            S::Received | S::SentToIssuer | S::Approved | S::IssuerTimedOut => Next(
                S::ReversalPending,
                &[
                    "record_late",
                    "announce:late_issuer_response",
                    "enqueue",
                    "announce:reversal_requested",
                ],
            ),
            _ => Next(state, &["record_late", "announce:late_issuer_response"]),
        },
        "late_05" => Next(state, &["record_late", "announce:late_issuer_response"]),
        other => panic!("no table row for {other}"),
    }
}

fn label(effect: &Effect) -> String {
    match effect {
        Effect::Announce(announcement) => format!(
            "announce:{}",
            match announcement {
                Announcement::Approved => "approved",
                Announcement::Declined => "declined",
                Announcement::IssuerTimedOut => "issuer_timed_out",
                Announcement::Confirmed => "confirmed",
                Announcement::Acknowledged => "acknowledged",
                Announcement::AcknowledgementConflict => "acknowledgement_conflict",
                Announcement::ReversalRequested => "reversal_requested",
                Announcement::Reversed { .. } => "reversed",
                Announcement::ReversalDeadLettered { .. } => "reversal_dead_lettered",
                Announcement::LateIssuerResponse { .. } => "late_issuer_response",
            }
        ),
        Effect::EnqueueReversal { .. } => "enqueue".into(),
        Effect::RetryReversal { .. } => "retry".into(),
        Effect::CloseReversal(closed) => format!("close:{}", closed.as_str()),
        Effect::RecordLateAnswer { .. } => "record_late".into(),
    }
}

fn refusal_kind(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::NotYetDecided => "not_yet_decided",
        Refusal::NotConfirmable { .. } => "not_confirmable",
        Refusal::ConfirmedNotReversed { .. } => "confirmed_not_reversed",
        Refusal::NothingToRedrive { .. } => "nothing_to_redrive",
        Refusal::CallStillOpen { .. } => "call_still_open",
        Refusal::Illegal(_) => "illegal",
    }
}

#[test]
fn every_state_and_command_matches_the_table() {
    let mut pairs = 0;
    for state in S::ALL {
        for (name, command) in commands() {
            pairs += 1;
            let current = in_state(state);
            let got = match decide(&current, command, T1) {
                Err(refusal) => Expected::Refused(refusal_kind(&refusal)),
                Ok(decision) => {
                    let labels: Vec<String> = decision.effects.iter().map(label).collect();
                    let want = expected(state, name);
                    if let Expected::Next(_, effects) = want {
                        assert_eq!(labels, effects, "{state:?} + {name}: effects");
                    }
                    // The audit row is there exactly when the state moves.
                    assert_eq!(
                        decision.transition.is_some(),
                        decision.next.state != state,
                        "{state:?} + {name}: transition"
                    );
                    if let Some(transition) = decision.transition {
                        assert_eq!(transition.from, Some(state));
                        assert_eq!(transition.to, decision.next.state);
                    }
                    // What never changes, whatever the command.
                    assert_eq!(decision.next.transaction_id, current.transaction_id);
                    assert_eq!(decision.next.amount, current.amount);
                    assert_eq!(decision.next.created_at, current.created_at);
                    Expected::Next(
                        decision.next.state,
                        // Compared above; the table's slice stands in here.
                        match expected(state, name) {
                            Expected::Next(_, effects) => effects,
                            Expected::Refused(_) => &[],
                        },
                    )
                }
            };
            assert_eq!(got, expected(state, name), "{state:?} + {name}");
        }
    }
    assert_eq!(pairs, S::ALL.len() * commands().len());
}

#[test]
fn issuer_answers_are_read_strictly() {
    let read = IssuerVerdict::read;
    assert_eq!(
        read("00", "ABC123").unwrap(),
        IssuerVerdict::Approved(ApprovalCode::parse("ABC123").unwrap())
    );
    // An approval we cannot reference is unusable.
    assert_eq!(read("00", "").unwrap_err().field, "approval_code");
    assert_eq!(read("00", "AB 123").unwrap_err().field, "approval_code");
    assert_eq!(read("51", "").unwrap(), IssuerVerdict::Declined(rc("51")));
    // The approval code is ignored on declines.
    assert_eq!(
        read("05", "ABC123").unwrap(),
        IssuerVerdict::Declined(rc("05"))
    );
    assert_eq!(read("Z1", "").unwrap(), IssuerVerdict::Declined(rc("Z1")));
    for bad in ["", "0", "000", "0 "] {
        assert_eq!(read(bad, "ABC123").unwrap_err().field, "response_code");
    }
}

#[test]
fn the_issuer_verdict_is_written_to_the_record() {
    let approved = decide(
        &in_state(S::SentToIssuer),
        Command::IssuerDecided(IssuerVerdict::Approved(
            ApprovalCode::parse("ABC123").unwrap(),
        )),
        T1,
    )
    .unwrap();
    assert_eq!(approved.next.response_code, Some(ResponseCode::APPROVED));
    assert_eq!(approved.next.approval_code.unwrap().as_str(), "ABC123");
    let declined = decide(
        &in_state(S::SentToIssuer),
        Command::IssuerDecided(IssuerVerdict::Declined(rc("51"))),
        T1,
    )
    .unwrap();
    assert_eq!(declined.next.response_code, Some(rc("51")));
    assert_eq!(declined.next.approval_code, None);
}

#[test]
fn acknowledgement_is_stamped_once_and_a_conflict_announced_once() {
    let ack = || Command::Acknowledge {
        evidence: Evidence::TerminalAcknowledgement,
    };
    let confirmed = decide(&in_state(S::Approved), ack(), T1).unwrap().next;
    assert_eq!(confirmed.acknowledged_at, Some(T1));
    assert_eq!(
        confirmed.confirmation_evidence,
        Some(Evidence::TerminalAcknowledgement)
    );
    let later = datetime!(2026-12-01 11:00 UTC);
    let again = decide(&confirmed, ack(), later).unwrap();
    assert!(again.is_noop());
    assert_eq!(again.next.acknowledged_at, Some(T1));

    let conflict = decide(&in_state(S::Reversed), ack(), T1).unwrap();
    assert_eq!(conflict.next.conflict_at, Some(T1));
    let repeat = decide(&conflict.next, ack(), later).unwrap();
    assert!(repeat.is_noop(), "{repeat:?}");
    assert_eq!(repeat.next.conflict_at, Some(T1));
}

#[test]
fn a_reversal_records_its_reason_and_a_redrive_keeps_it() {
    let requested = decide(
        &in_state(S::IssuerTimedOut),
        Command::RequestReversal {
            reason: ReversalReason::IssuerTimeout,
        },
        T1,
    )
    .unwrap();
    assert_eq!(
        requested.next.reversal_reason,
        Some(ReversalReason::IssuerTimeout)
    );
    let mut dead = requested.next;
    dead.state = S::ReversalDeadLettered;
    let redriven = decide(&dead, Command::Redrive, T1).unwrap();
    assert_eq!(
        redriven.effects[0],
        Effect::EnqueueReversal {
            reason: ReversalReason::IssuerTimeout
        }
    );
}

#[test]
fn a_failed_attempt_is_repeated_with_backoff_and_the_reason_kept() {
    let decision = decide(&in_state(S::ReversalPending), answered("05", 1_000), T1).unwrap();
    assert_eq!(
        decision.effects,
        [Effect::RetryReversal {
            delay_ms: SCHEDULE.initial_delay_ms * 4,
            last_error: "issuer answered 05".into()
        }]
    );
}

#[test]
fn approvals_the_switch_does_not_accept_are_read_as_holding_funds() {
    for code in ["08", "10", "11", "16"] {
        let verdict = IssuerVerdict::read(code, "PRT001").unwrap();
        assert_eq!(
            verdict,
            IssuerVerdict::NotAccepted {
                response_code: rc(code),
                approval_code: Some(ApprovalCode::parse("PRT001").unwrap()),
            }
        );
        assert!(verdict.holds_funds(), "{code}");
    }
    // Without a usable approval code the hold is still reversed.
    assert_eq!(
        IssuerVerdict::read("10", "").unwrap(),
        IssuerVerdict::NotAccepted {
            response_code: rc("10"),
            approval_code: None,
        }
    );
    assert!(!IssuerVerdict::read("51", "").unwrap().holds_funds());
}

#[test]
fn a_partial_approval_is_declined_to_the_terminal_and_reversed() {
    let decision = decide(
        &in_state(S::SentToIssuer),
        Command::IssuerDecided(IssuerVerdict::read("10", "PRT001").unwrap()),
        T1,
    )
    .unwrap();
    let next = &decision.next;
    assert_eq!(next.state, S::ReversalPending);
    assert_eq!(
        next.reversal_reason,
        Some(ReversalReason::ApprovalNotAccepted)
    );
    assert_eq!(next.response_code, Some(rc("10")));
    assert_eq!(next.approval_code.as_ref().unwrap().as_str(), "PRT001");
    assert_eq!(
        decision.effects[0],
        Effect::EnqueueReversal {
            reason: ReversalReason::ApprovalNotAccepted
        }
    );
    let code = crate::terminal_response_code(next.state, next.response_code);
    assert!(!code.holds_funds(), "the terminal is told {code}");
}

#[test]
fn a_25_before_the_originals_deadline_is_repeated_after_it() {
    // The original was sent at T0 and may reach the issuer until T0 + 60 s;
    // at T1 (T0 + 5 s) a "25" may only mean the reversal overtook it.
    let decision = decide(
        &in_state(S::ReversalPending),
        answered_within("25", 1_000, OPEN_WINDOWS),
        T1,
    )
    .unwrap();
    assert_eq!(decision.next.state, S::ReversalPending);
    assert_eq!(
        decision.effects,
        [Effect::RetryReversal {
            delay_ms: 55_000,
            last_error: "issuer answered 25".into()
        }]
    );
    // A "25" to an attempt sent before the deadline does not end it, however
    // late it arrives: the issuer answered before the original landed.
    let after = T0 + time::Duration::seconds(61);
    let late_25 = decide(
        &in_state(S::ReversalPending),
        answered_within("25", 50_000, OPEN_WINDOWS),
        after,
    )
    .unwrap();
    assert_eq!(late_25.next.state, S::ReversalPending);
    // An attempt sent at the deadline answered "25": the issuer holds nothing.
    let mut past_deadline = answered_within("25", 50_000, OPEN_WINDOWS);
    if let Command::ReversalAnswered { attempt, .. } = &mut past_deadline {
        attempt.sent_at = T0 + time::Duration::seconds(60);
    }
    let done = decide(&in_state(S::ReversalPending), past_deadline, after).unwrap();
    assert_eq!(done.next.state, S::Reversed);
}

#[test]
fn an_abandoned_call_is_recovered_only_past_its_deadline() {
    let record = in_state(S::SentToIssuer);
    let refused = decide(
        &record,
        Command::RecoverAbandonedCall {
            windows: OPEN_WINDOWS,
        },
        T1,
    )
    .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "may still be answered by the issuer until 2026-12-01 10:01:00.0 +00:00:00"
    );
    assert_eq!(
        OPEN_WINDOWS.abandoned_before(T1),
        T0 - time::Duration::seconds(55)
    );
    let recovered = decide(
        &record,
        Command::RecoverAbandonedCall { windows: WINDOWS },
        T1,
    )
    .unwrap();
    assert_eq!(recovered.next.state, S::IssuerTimedOut);
    // The late window is never shorter than the call's own timeout.
    let windows = IssuerWindows::new(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(3),
    );
    assert_eq!(windows.late_window, std::time::Duration::from_secs(10));
}

#[test]
fn an_unreadable_late_answer_is_treated_as_holding_funds() {
    let decision = decide(&in_state(S::IssuerTimedOut), late("0"), T1).unwrap();
    assert_eq!(decision.next.state, S::ReversalPending);
    assert_eq!(
        decision.next.reversal_reason,
        Some(ReversalReason::LateIssuerResponse)
    );
}

#[test]
fn refusals_explain_themselves() {
    let refused = decide(
        &in_state(S::Confirmed),
        Command::RequestReversal {
            reason: ReversalReason::TerminalRequested,
        },
        T1,
    )
    .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "is confirmed (evidence: policy); it is not reversed"
    );
    let refused = decide(&in_state(S::Declined), Command::Redrive, T1).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "is declined: there is no dead-lettered reversal to redrive"
    );
}

fn any_command() -> impl Strategy<Value = Command> {
    (0..commands().len()).prop_map(|i| commands().swap_remove(i).1)
}

proptest! {
    /// Whatever arrives, in whatever order: a final state is never left for
    /// another outcome, nothing is both confirmed and reversed, the
    /// acknowledgement time never moves once set, and the reversal is
    /// enqueued again only by a redrive or after being dead-lettered.
    #[test]
    fn random_sequences_keep_the_invariants(sequence in prop::collection::vec(any_command(), 0..24)) {
        let mut current = in_state(S::SentToIssuer);
        let mut now = T0;
        let mut was_confirmed = false;
        let mut was_reversed = false;
        for command in sequence {
            now += time::Duration::seconds(1);
            let is_redrive = command == Command::Redrive;
            let Ok(decision) = decide(&current, command, now) else { continue };
            let next = &decision.next;
            if current.state.is_final() {
                prop_assert_eq!(next.state, current.state, "left a final state");
            }
            if let Some(at) = current.acknowledged_at {
                prop_assert_eq!(next.acknowledged_at, Some(at));
            }
            if decision.enqueues_reversal() {
                prop_assert!(
                    !current.state.is_final()
                        && (current.state != S::ReversalDeadLettered || is_redrive)
                );
            }
            was_confirmed |= next.state == S::Confirmed;
            was_reversed |= next.state == S::Reversed;
            prop_assert!(!(was_confirmed && was_reversed), "confirmed and reversed");
            current = decision.next;
        }
    }
}
