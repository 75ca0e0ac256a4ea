//! Every (mode, state, command) triple against a table written
//! independently of `decide`, the S3 stories one by one, and random command
//! sequences against the invariants.

use proptest::prelude::*;
use time::macros::datetime;

use super::*;
use crate::ids::{LocalDate, Stan, TerminalId};
use crate::money::Currency;
use QrState as S;

const T0: OffsetDateTime = datetime!(2026-12-02 10:00 UTC);

fn at(seconds: i64) -> OffsetDateTime {
    T0 + time::Duration::seconds(seconds)
}

/// The terminal waits 30 s; queries every 5 s up to 45 s.
const WINDOWS: QrWindows = QrWindows::WECHAT;

const SCHEDULE: RetrySchedule = RetrySchedule {
    initial_delay_ms: 1_000,
    max_delay_ms: 30_000,
    max_age_ms: 60_000,
};

/// When the fixtures' owed calls became owed (the query limit).
const OWED_SINCE: i64 = 45;

fn eur(minor: i64) -> Money {
    Money::positive(minor, Currency::parse("EUR").unwrap()).unwrap()
}

fn txn(id: &str) -> PlatformTxnId {
    PlatformTxnId::parse(id).unwrap()
}

fn order() -> OrderId {
    OrderId::parse("QR20261202000123").unwrap()
}

fn intent(mode: QrMode, policy: OrphanPolicy) -> QrIntent {
    QrIntent {
        transaction_id: TransactionId::new(),
        key: RequestKey {
            terminal_id: TerminalId::parse("TERM0001").unwrap(),
            stan: Stan::parse("000123").unwrap(),
            local_date: LocalDate::parse("2026-12-02").unwrap(),
        },
        merchant_id: MerchantId::parse("MERCHANT0000001").unwrap(),
        mode,
        order_id: order(),
        amount: eur(1_250),
        orphan_policy: policy,
    }
}

fn opened(mode: QrMode, policy: OrphanPolicy) -> QrPayment {
    QrPayment::open(intent(mode, policy), WINDOWS, T0).next
}

/// The fixtures: every state, the cancelling ones with each kind of call.
const FIXTURES: [&str; 12] = [
    "submitted",
    "order_created",
    "awaiting",
    "paid",
    "failed",
    "cancelling_close",
    "cancelling_refund",
    "dead_close",
    "dead_refund",
    "closed",
    "refunded",
    "confirmed",
];

/// A payment in the fixture's state, with the fields that state implies.
fn fixture(mode: QrMode, label: &str) -> QrPayment {
    let mut p = opened(mode, OrphanPolicy::Reverse);
    let owe = |p: &mut QrPayment, kind: CancelKind| {
        p.owed = Some(OwedCall {
            kind,
            request_id: PlatformRequestId::of(&p.order_id, kind.as_str()),
            since: at(OWED_SINCE),
        });
    };
    let pay = |p: &mut QrPayment| {
        p.platform_txn = Some(txn("TXN1"));
        p.paid_at = Some(at(8));
        p.next_query_at = None;
    };
    p.state = match label {
        "submitted" => S::Submitted,
        "order_created" => {
            p.code = Some("weixin://wxpay/bizpayurl?pr=abc".into());
            S::OrderCreated
        }
        "awaiting" => S::AwaitingPayment,
        "paid" => {
            pay(&mut p);
            S::Paid
        }
        "failed" => {
            p.failure = Some("insufficient balance".into());
            S::Failed
        }
        "cancelling_close" | "dead_close" | "closed" => {
            owe(&mut p, CancelKind::Close);
            match label {
                "cancelling_close" => S::Cancelling,
                "dead_close" => S::CancelDeadLettered,
                _ => S::Closed,
            }
        }
        "cancelling_refund" | "dead_refund" | "refunded" => {
            pay(&mut p);
            owe(&mut p, CancelKind::Refund);
            p.refund_reason = Some(ReversalReason::NoTerminalAcknowledgement);
            match label {
                "cancelling_refund" => S::Cancelling,
                "dead_refund" => S::CancelDeadLettered,
                _ => S::Refunded,
            }
        }
        "confirmed" => {
            pay(&mut p);
            p.acknowledged_at = Some(at(9));
            p.confirmation_evidence = Some(Evidence::TerminalAcknowledgement);
            S::Confirmed
        }
        other => panic!("no fixture {other}"),
    };
    if p.state.awaits_payment() {
        p.next_query_at = Some(at(5));
    } else {
        p.next_query_at = None;
    }
    p
}

fn paid_word(id: &str, amount: Money) -> PlatformTradeState {
    PlatformTradeState::Paid {
        platform_txn: txn(id),
        amount,
    }
}

fn notification(order_id: &str, id: &str, amount: Money) -> QrCommand {
    QrCommand::NotificationReceived {
        order_id: OrderId::parse(order_id).unwrap(),
        platform_txn: txn(id),
        amount,
    }
}

/// The request id of the fixture's owed call, or one it never owed.
fn owed_request(p: &QrPayment) -> PlatformRequestId {
    p.owed.as_ref().map_or_else(
        || PlatformRequestId::of(&p.order_id, "close"),
        |owed| owed.request_id.clone(),
    )
}

fn cancel(p: &QrPayment, answer: CancelAnswer, attempts: u32) -> QrCommand {
    QrCommand::CancelAnswered {
        request_id: owed_request(p),
        answer,
        attempt: CancelAttempt {
            attempts,
            jitter: 0,
        },
        schedule: SCHEDULE,
    }
}

/// One representative of every command shape, with a label and the time
/// it is given at.
fn commands(p: &QrPayment) -> Vec<(&'static str, QrCommand, OffsetDateTime)> {
    let a = eur(1_250);
    vec![
        (
            "pay_paid",
            QrCommand::PayAnswered(paid_word("TXN1", a)),
            at(10),
        ),
        (
            "pay_in_progress",
            QrCommand::PayAnswered(PlatformTradeState::InProgress),
            at(10),
        ),
        (
            "pay_failed",
            QrCommand::PayAnswered(PlatformTradeState::Failed {
                reason: "NOTENOUGH".into(),
            }),
            at(10),
        ),
        (
            "create_ok",
            QrCommand::OrderCreateAnswered(OrderCreation::Created {
                code: "weixin://wxpay/bizpayurl?pr=abc".into(),
            }),
            at(1),
        ),
        (
            "create_refused",
            QrCommand::OrderCreateAnswered(OrderCreation::Refused {
                reason: "ORDERPAID".into(),
            }),
            at(1),
        ),
        (
            "create_unknown",
            QrCommand::OrderCreateAnswered(OrderCreation::Unknown),
            at(1),
        ),
        (
            "query_paid",
            QrCommand::QueryAnswered(paid_word("TXN1", a)),
            at(10),
        ),
        (
            "query_paid_late",
            QrCommand::QueryAnswered(paid_word("TXN1", a)),
            at(50),
        ),
        (
            "query_not_paid",
            QrCommand::QueryAnswered(PlatformTradeState::NotPaid),
            at(10),
        ),
        (
            "query_unknown",
            QrCommand::QueryAnswered(PlatformTradeState::Unknown),
            at(10),
        ),
        (
            "query_closed",
            QrCommand::QueryAnswered(PlatformTradeState::Closed),
            at(10),
        ),
        (
            "query_refunded",
            QrCommand::QueryAnswered(PlatformTradeState::Refunded {
                platform_txn: txn("TXN1"),
                amount: a,
            }),
            at(70),
        ),
        (
            "notify_paid",
            notification("QR20261202000123", "TXN1", a),
            at(10),
        ),
        (
            "notify_other_txn",
            notification("QR20261202000123", "TXN2", a),
            at(10),
        ),
        (
            "notify_wrong_amount",
            notification("QR20261202000123", "TXN1", eur(1_249)),
            at(10),
        ),
        (
            "notify_other_order",
            notification("QR20261202000999", "TXN1", a),
            at(10),
        ),
        ("ack", QrCommand::TerminalAcknowledged, at(10)),
        ("gave_up_early", QrCommand::TerminalGaveUp, at(29)),
        ("gave_up", QrCommand::TerminalGaveUp, at(30)),
        ("query_due", QrCommand::QueryDue, at(10)),
        ("query_due_early", QrCommand::QueryDue, at(4)),
        ("query_due_past_limit", QrCommand::QueryDue, at(45)),
        ("cancel_done", cancel(p, CancelAnswer::Done, 1), at(60)),
        (
            "cancel_stale",
            QrCommand::CancelAnswered {
                request_id: PlatformRequestId::of(&p.order_id, "stale"),
                answer: CancelAnswer::Done,
                attempt: CancelAttempt {
                    attempts: 1,
                    jitter: 0,
                },
                schedule: SCHEDULE,
            },
            at(60),
        ),
        (
            "cancel_order_paid",
            cancel(
                p,
                CancelAnswer::OrderPaid {
                    platform_txn: txn("TXN1"),
                    amount: a,
                },
                1,
            ),
            at(60),
        ),
        (
            "cancel_refunded",
            cancel(
                p,
                CancelAnswer::Refunded {
                    platform_txn: txn("TXN1"),
                    amount: a,
                },
                1,
            ),
            at(60),
        ),
        (
            "cancel_failed",
            cancel(p, CancelAnswer::NotDone("platform unavailable".into()), 2),
            at(OWED_SINCE + 1),
        ),
        (
            "cancel_failed_at_max_age",
            cancel(p, CancelAnswer::NotDone("platform unavailable".into()), 9),
            at(OWED_SINCE + 60),
        ),
        (
            "cancel_failed_just_before_max_age",
            cancel(p, CancelAnswer::NotDone("platform unavailable".into()), 9),
            at(OWED_SINCE + 59),
        ),
        ("redrive", QrCommand::Redrive, at(200)),
    ]
}

#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Refused(&'static str),
    /// The next state and the effects, by label, in order.
    Next(S, Vec<&'static str>),
}

fn label(effect: &QrEffect) -> String {
    match effect {
        QrEffect::Call(PlatformCall::Pay { .. }) => "call:pay".into(),
        QrEffect::Call(PlatformCall::CreateOrder { .. }) => "call:create_order".into(),
        QrEffect::Call(PlatformCall::Query { .. }) => "call:query".into(),
        QrEffect::EnqueueCancel { kind, .. } => format!("enqueue:{}", kind.as_str()),
        QrEffect::RetryCancel { .. } => "retry".into(),
        QrEffect::CloseCancel(closed) => format!("close:{}", closed.as_str()),
        QrEffect::ScheduleQuery { .. } => "schedule".into(),
        QrEffect::Announce(event) => event.name().into(),
        QrEffect::Notify(notice) => format!(
            "notify:{}+{}",
            notice.webhook,
            notice.push.map_or("none", |p| p.as_str())
        ),
        QrEffect::AnswerTerminal(answer) => format!("answer:{}", answer.as_str()),
    }
}

/// The rules, written as a table and independently of `decide`.
fn expected(mode: QrMode, fixture: &str, command: &str) -> Expected {
    use Expected::*;
    let state = fixture_state(fixture);
    let waiting = matches!(fixture, "submitted" | "order_created" | "awaiting");
    let unpaid_cancelling = matches!(fixture, "cancelling_close" | "dead_close");
    let refunding = matches!(fixture, "cancelling_refund" | "dead_refund");
    let paid_known = matches!(
        fixture,
        "paid" | "confirmed" | "refunded" | "cancelling_refund" | "dead_refund"
    );
    let same = || Next(state, vec![]);
    let cp = mode == QrMode::ConsumerPresented;
    const REFUND_OWED: [&str; 2] = ["enqueue:refund", "qr.cancel_requested"];
    const REFUNDED: [&str; 2] = ["qr.refunded", "notify:payment.reversed+void_receipt"];
    let with = |first: &[&'static str], rest: &[&'static str]| {
        first.iter().chain(rest).copied().collect::<Vec<_>>()
    };

    match command {
        "pay_paid" | "pay_in_progress" | "pay_failed" if !cp => Refused("wrong_mode"),
        "create_ok" | "create_refused" | "create_unknown" if cp => Refused("wrong_mode"),

        "notify_other_order" => Refused("another_order"),
        "notify_wrong_amount" => Refused("amount_mismatch"),
        "pay_paid" | "query_paid" | "notify_paid" | "notify_other_txn" | "query_paid_late" => {
            let late = command == "query_paid_late";
            if waiting && late {
                // S3: paid after the terminal's deadline; the policy reverses.
                Next(S::Cancelling, with(&["qr.paid"], &REFUND_OWED))
            } else if waiting {
                Next(S::Paid, vec!["qr.paid", "answer:approved"])
            } else if unpaid_cancelling {
                // The payment raced the close: the close becomes a refund.
                let mut effects = with(&["close:acknowledged"], &REFUND_OWED);
                if !late {
                    effects.push("answer:void");
                }
                Next(S::Cancelling, effects)
            } else if paid_known && command == "notify_other_txn" {
                Refused("another_platform_transaction")
            } else if paid_known {
                same()
            } else {
                Refused("contradiction")
            }
        }
        "pay_in_progress" | "query_not_paid" | "query_unknown" | "create_unknown"
            if fixture == "submitted" =>
        {
            Next(S::AwaitingPayment, vec![])
        }
        "pay_in_progress" | "query_not_paid" | "query_unknown" | "create_unknown" => same(),
        "pay_failed" if waiting => Next(S::Failed, vec!["qr.failed", "answer:declined"]),
        "create_refused" if fixture == "submitted" => {
            Next(S::Failed, vec!["qr.failed", "answer:declined"])
        }
        "create_ok" if fixture == "submitted" => Next(S::OrderCreated, vec!["answer:show_code"]),
        "pay_failed" | "create_refused" | "create_ok" => same(),

        "query_closed" if waiting => Next(S::Closed, vec!["qr.closed", "answer:not_paid"]),
        "query_closed" if unpaid_cancelling => Next(
            S::Closed,
            vec!["close:acknowledged", "qr.closed", "answer:not_paid"],
        ),
        "query_closed" if matches!(fixture, "closed" | "failed") => same(),
        "query_closed" => Refused("contradiction"),

        "query_refunded" if refunding || unpaid_cancelling => {
            Next(S::Refunded, with(&["close:acknowledged"], &REFUNDED))
        }
        "query_refunded" if fixture == "refunded" => same(),
        "query_refunded" => Refused("contradiction"),

        "ack" => match fixture {
            "paid" => Next(S::Confirmed, vec!["qr.confirmed"]),
            "refunded" | "cancelling_refund" | "dead_refund" => Next(
                state,
                vec![
                    "qr.acknowledgement_conflict",
                    "notify:payment.conflict+void_receipt",
                ],
            ),
            "confirmed" | "failed" | "closed" => same(),
            _ => Refused("not_paid_yet"),
        },

        "gave_up_early" => Refused("terminal_still_waiting"),
        "gave_up" if fixture == "paid" => Next(S::Cancelling, REFUND_OWED.to_vec()),
        "gave_up" => same(),

        "query_due" if waiting => Next(state, vec!["call:query", "schedule"]),
        "query_due_early" if waiting => Refused("query_not_due"),
        "query_due_past_limit" if waiting && cp => {
            Next(S::Cancelling, vec!["enqueue:cancel", "qr.cancel_requested"])
        }
        "query_due_past_limit" if waiting => {
            Next(S::Cancelling, vec!["enqueue:close", "qr.cancel_requested"])
        }
        "query_due" | "query_due_early" | "query_due_past_limit" => same(),

        "cancel_stale" => same(),
        "cancel_done" if unpaid_cancelling => {
            Next(S::Closed, vec!["close:acknowledged", "qr.closed"])
        }
        "cancel_done" | "cancel_refunded" if refunding || unpaid_cancelling => {
            Next(S::Refunded, with(&["close:acknowledged"], &REFUNDED))
        }
        "cancel_order_paid" if unpaid_cancelling => {
            Next(S::Cancelling, with(&["close:acknowledged"], &REFUND_OWED))
        }
        "cancel_order_paid" | "cancel_failed" | "cancel_failed_just_before_max_age"
            if fixture.starts_with("cancelling") =>
        {
            Next(state, vec!["retry"])
        }
        "cancel_failed_at_max_age" if fixture.starts_with("cancelling") => Next(
            S::CancelDeadLettered,
            vec!["close:dead_lettered", "qr.cancel_dead_lettered"],
        ),
        "cancel_done"
        | "cancel_refunded"
        | "cancel_order_paid"
        | "cancel_failed"
        | "cancel_failed_at_max_age"
        | "cancel_failed_just_before_max_age" => same(),

        "redrive" if fixture == "dead_close" => Next(S::Cancelling, vec!["enqueue:close"]),
        "redrive" if fixture == "dead_refund" => Next(S::Cancelling, vec!["enqueue:refund"]),
        "redrive" => Refused("nothing_to_redrive"),

        other => panic!("no row for command {other}"),
    }
}

fn fixture_state(label: &str) -> S {
    fixture(QrMode::MerchantPresented, label).state
}

#[test]
fn every_mode_state_and_command_matches_the_table() {
    let mut rows = 0;
    for mode in QrMode::ALL {
        for name in FIXTURES {
            let current = fixture(mode, name);
            for (command_name, command, now) in commands(&current) {
                let actual = match decide(&current, command, WINDOWS, now) {
                    Err(refusal) => Err(refusal.kind()),
                    Ok(decision) => Ok((
                        decision.next.state,
                        decision.effects.iter().map(label).collect::<Vec<_>>(),
                    )),
                };
                let wanted = match expected(mode, name, command_name) {
                    Expected::Refused(kind) => Err(kind),
                    Expected::Next(state, effects) => {
                        Ok((state, effects.into_iter().map(String::from).collect()))
                    }
                };
                assert_eq!(
                    actual,
                    wanted,
                    "{} / {name} / {command_name}",
                    mode.as_str()
                );
                rows += 1;
            }
        }
    }
    assert_eq!(rows, 2 * FIXTURES.len() * 30);
}

#[test]
fn opening_calls_the_platform_and_schedules_the_first_query() {
    for (mode, call) in [
        (QrMode::ConsumerPresented, "call:pay"),
        (QrMode::MerchantPresented, "call:create_order"),
    ] {
        let opened = QrPayment::open(intent(mode, OrphanPolicy::Reverse), WINDOWS, T0);
        let labels: Vec<String> = opened.effects.iter().map(label).collect();
        assert_eq!(labels, [call, "schedule"]);
        assert_eq!(opened.next.state, S::Submitted);
        assert_eq!(opened.next.next_query_at, Some(at(5)));
        assert_eq!(opened.next.terminal_deadline, at(30));
        assert_eq!(opened.next.query_limit_at, at(45));
        assert_eq!(terminal_answer(&opened.next), QrTerminalAnswer::InProgress);
    }
}

fn apply(p: &QrPayment, command: QrCommand, now: OffsetDateTime) -> QrDecision {
    decide(p, command, WINDOWS, now).unwrap_or_else(|refusal| panic!("refused: {refusal}"))
}

#[test]
fn a_payment_after_the_terminal_gave_up_is_confirmed_and_reprinted_under_a_confirm_policy() {
    let p = opened(QrMode::MerchantPresented, OrphanPolicy::Confirm);
    let p = apply(
        &p,
        QrCommand::OrderCreateAnswered(OrderCreation::Created { code: "c".into() }),
        at(1),
    )
    .next;
    let p = apply(&p, QrCommand::TerminalGaveUp, at(30)).next;
    assert!(p.terminal_gave_up);
    assert_eq!(p.state, S::OrderCreated, "the switch keeps querying");
    // The shopper pays 20 s after the terminal stopped waiting.
    let d = apply(
        &p,
        notification("QR20261202000123", "TXN1", eur(1_250)),
        at(50),
    );
    assert_eq!(d.next.state, S::Confirmed);
    assert_eq!(d.next.confirmation_evidence, Some(Evidence::Policy));
    let labels: Vec<String> = d.effects.iter().map(label).collect();
    assert_eq!(
        labels,
        [
            "qr.paid",
            "qr.confirmed",
            "notify:payment.confirmed+reprint_receipt"
        ]
    );
    // The platform retries its notification: applied once.
    let again = apply(
        &d.next,
        notification("QR20261202000123", "TXN1", eur(1_250)),
        at(65),
    );
    assert!(again.is_noop());
}

#[test]
fn a_payment_after_the_terminal_gave_up_is_refunded_and_voided_under_the_default_policy() {
    let p = opened(QrMode::ConsumerPresented, OrphanPolicy::default());
    let p = apply(
        &p,
        QrCommand::PayAnswered(PlatformTradeState::InProgress),
        at(1),
    )
    .next;
    let p = apply(&p, QrCommand::TerminalGaveUp, at(30)).next;
    let d = apply(
        &p,
        QrCommand::QueryAnswered(paid_word("TXN1", eur(1_250))),
        at(40),
    );
    assert_eq!(d.next.state, S::Cancelling);
    assert_eq!(
        d.next.refund_reason,
        Some(ReversalReason::NoTerminalAcknowledgement)
    );
    let owed = d.next.owed.clone().unwrap();
    assert_eq!(owed.kind, CancelKind::Refund);
    assert_eq!(owed.request_id.as_str(), "QR20261202000123-refund");
    assert_eq!(terminal_answer(&d.next), QrTerminalAnswer::Void);
    let done = apply(&d.next, cancel(&d.next, CancelAnswer::Done, 1), at(41));
    assert_eq!(done.next.state, S::Refunded);
    assert!(done.effects.contains(&QrEffect::Notify(QrNotice {
        webhook: WebhookType::PaymentReversed,
        push: Some(TerminalMessageKind::VoidReceipt),
    })));
}

#[test]
fn paid_and_acknowledged_in_time_is_confirmed_without_a_webhook() {
    let p = opened(QrMode::ConsumerPresented, OrphanPolicy::Reverse);
    let p = apply(
        &p,
        QrCommand::PayAnswered(paid_word("TXN1", eur(1_250))),
        at(1),
    )
    .next;
    assert_eq!(terminal_answer(&p), QrTerminalAnswer::Approved);
    let d = apply(&p, QrCommand::TerminalAcknowledged, at(2));
    assert_eq!(d.next.state, S::Confirmed);
    assert!(!d.effects.iter().any(|e| matches!(e, QrEffect::Notify(_))));
    // The sweep at the deadline finds it decided.
    assert!(apply(&d.next, QrCommand::TerminalGaveUp, at(30)).is_noop());
}

#[test]
fn a_close_that_races_the_payment_ends_refunded_once() {
    let p = opened(QrMode::MerchantPresented, OrphanPolicy::Confirm);
    let p = apply(
        &p,
        QrCommand::OrderCreateAnswered(OrderCreation::Created { code: "c".into() }),
        at(1),
    )
    .next;
    let p = apply(&p, QrCommand::TerminalGaveUp, at(30)).next;
    let mut p = p;
    p.next_query_at = Some(at(45));
    let closing = apply(&p, QrCommand::QueryDue, at(45)).next;
    assert_eq!(closing.owed.as_ref().unwrap().kind, CancelKind::Close);
    // The shopper paid just before the close reached the platform.
    let refunding = apply(
        &closing,
        cancel(
            &closing,
            CancelAnswer::OrderPaid {
                platform_txn: txn("TXN1"),
                amount: eur(1_250),
            },
            1,
        ),
        at(46),
    )
    .next;
    assert_eq!(refunding.owed.as_ref().unwrap().kind, CancelKind::Refund);
    assert!(refunding.money_moved());
    // The close's own answer arrives late, and the notification too.
    assert!(apply(&refunding, cancel(&closing, CancelAnswer::Done, 1), at(47)).is_noop());
    assert!(
        apply(
            &refunding,
            notification("QR20261202000123", "TXN1", eur(1_250)),
            at(48)
        )
        .is_noop()
    );
    let done = apply(
        &refunding,
        cancel(&refunding, CancelAnswer::Done, 1),
        at(49),
    );
    assert_eq!(done.next.state, S::Refunded);
    let outcomes = done.announcements().filter(|e| e.is_outcome()).count();
    assert_eq!(outcomes, 1);
}

/// Found by the simulation (seed 286 before the fix): the switch never heard
/// of the payment, owed a cancel, and the platform answered the cancel by
/// refunding; a query sent before the cancel is answered after it.
#[test]
fn a_query_that_says_refunded_while_a_cancel_is_owed_ends_refunded() {
    let p = fixture(QrMode::ConsumerPresented, "cancelling_close");
    assert!(!p.money_moved());
    let d = apply(
        &p,
        QrCommand::QueryAnswered(PlatformTradeState::Refunded {
            platform_txn: txn("TXN9"),
            amount: eur(1_250),
        }),
        at(50),
    );
    assert_eq!(d.next.state, S::Refunded);
    assert_eq!(d.next.platform_txn, Some(txn("TXN9")));
    assert!(
        d.effects
            .contains(&QrEffect::CloseCancel(CancelClosed::Acknowledged))
    );
    // The cancel's own answer, late, changes nothing.
    let late = CancelAnswer::Refunded {
        platform_txn: txn("TXN9"),
        amount: eur(1_250),
    };
    assert!(apply(&d.next, cancel(&p, late, 1), at(51)).is_noop());
}

#[test]
fn the_owed_call_repeats_with_backoff_and_dead_letters_only_at_its_maximum_age() {
    let p = fixture(QrMode::ConsumerPresented, "cancelling_close");
    let mut delays = Vec::new();
    for attempts in 1..=5 {
        let d = apply(
            &p,
            cancel(&p, CancelAnswer::NotDone("down".into()), attempts),
            at(OWED_SINCE),
        );
        match d.effects.as_slice() {
            [
                QrEffect::RetryCancel {
                    delay_ms,
                    last_error,
                },
            ] => {
                assert_eq!(last_error, "down");
                delays.push(*delay_ms);
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }
    assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 16_000]);
    let dead = apply(
        &p,
        cancel(&p, CancelAnswer::NotDone("down".into()), 30),
        at(OWED_SINCE + 60),
    );
    assert_eq!(dead.next.state, S::CancelDeadLettered);
    let redriven = apply(&dead.next, QrCommand::Redrive, at(300));
    assert_eq!(redriven.next.state, S::Cancelling);
    let owed = redriven.next.owed.unwrap();
    assert_eq!(owed.since, at(300), "a redrive restarts the age");
    assert_eq!(
        owed.request_id,
        p.owed.unwrap().request_id,
        "and keeps the id"
    );
}

#[test]
fn the_terminal_answer_covers_every_state() {
    let cases = [
        ("submitted", QrTerminalAnswer::InProgress),
        ("order_created", QrTerminalAnswer::ShowCode),
        ("awaiting", QrTerminalAnswer::InProgress),
        ("paid", QrTerminalAnswer::Approved),
        ("failed", QrTerminalAnswer::Declined),
        ("cancelling_close", QrTerminalAnswer::NotPaid),
        ("cancelling_refund", QrTerminalAnswer::Void),
        ("dead_close", QrTerminalAnswer::NotPaid),
        ("dead_refund", QrTerminalAnswer::Void),
        ("closed", QrTerminalAnswer::NotPaid),
        ("refunded", QrTerminalAnswer::Void),
        ("confirmed", QrTerminalAnswer::Approved),
    ];
    for (name, answer) in cases {
        assert_eq!(
            terminal_answer(&fixture(QrMode::MerchantPresented, name)),
            answer,
            "{name}"
        );
    }
    let states: std::collections::HashSet<S> = FIXTURES.iter().map(|f| fixture_state(f)).collect();
    assert_eq!(
        states.len(),
        QrState::ALL.len(),
        "the fixtures cover every state"
    );
}

#[test]
fn names_parse_strictly() {
    for state in QrState::ALL {
        assert_eq!(QrState::parse(state.as_str()).unwrap(), state);
    }
    for mode in QrMode::ALL {
        assert_eq!(QrMode::parse(mode.as_str()).unwrap(), mode);
    }
    for kind in CancelKind::ALL {
        assert_eq!(CancelKind::parse(kind.as_str()).unwrap(), kind);
    }
    assert_eq!(QrState::parse("Paid").unwrap_err().field, "qr_state");
    assert_eq!(QrMode::parse("").unwrap_err().field, "qr_mode");
    assert_eq!(CancelKind::parse("void").unwrap_err().field, "cancel_kind");
    for bad in ["", "short", "has space 123", &"x".repeat(33), "ünïcode123"] {
        assert_eq!(
            OrderId::parse(bad).unwrap_err().field,
            "order_id",
            "{bad:?}"
        );
    }
    assert!(OrderId::parse("QR_2026-12-02").is_ok());
    for bad in ["", "a b", &"t".repeat(65)] {
        assert_eq!(
            PlatformTxnId::parse(bad).unwrap_err().field,
            "platform_txn_id"
        );
    }
}

// ---- random sequences ----

#[derive(Debug, Clone)]
enum Step {
    Pay(u8),
    Create(u8),
    Query(u8),
    Notify { txn: bool, amount_ok: bool },
    Ack,
    GaveUp,
    QueryDue,
    Cancel { answer: u8, stale: bool },
    Redrive,
}

fn word(n: u8) -> PlatformTradeState {
    match n % 7 {
        0 => paid_word("TXN1", eur(1_250)),
        1 => PlatformTradeState::InProgress,
        2 => PlatformTradeState::NotPaid,
        3 => PlatformTradeState::Failed {
            reason: "NOTENOUGH".into(),
        },
        4 => PlatformTradeState::Closed,
        5 => PlatformTradeState::Refunded {
            platform_txn: txn("TXN1"),
            amount: eur(1_250),
        },
        _ => PlatformTradeState::Unknown,
    }
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<u8>().prop_map(Step::Pay),
        any::<u8>().prop_map(Step::Create),
        any::<u8>().prop_map(Step::Query),
        (any::<bool>(), any::<bool>()).prop_map(|(txn, amount_ok)| Step::Notify { txn, amount_ok }),
        Just(Step::Ack),
        Just(Step::GaveUp),
        Just(Step::QueryDue),
        (any::<u8>(), any::<bool>()).prop_map(|(answer, stale)| Step::Cancel { answer, stale }),
        Just(Step::Redrive),
    ]
}

fn command_of(step: &Step, p: &QrPayment, attempts: u32) -> QrCommand {
    match step {
        Step::Pay(n) => QrCommand::PayAnswered(word(*n)),
        Step::Create(n) => QrCommand::OrderCreateAnswered(match n % 3 {
            0 => OrderCreation::Created { code: "c".into() },
            1 => OrderCreation::Refused { reason: "r".into() },
            _ => OrderCreation::Unknown,
        }),
        Step::Query(n) => QrCommand::QueryAnswered(word(*n)),
        Step::Notify { txn, amount_ok } => notification(
            "QR20261202000123",
            if *txn { "TXN1" } else { "TXN2" },
            if *amount_ok { eur(1_250) } else { eur(99) },
        ),
        Step::Ack => QrCommand::TerminalAcknowledged,
        Step::GaveUp => QrCommand::TerminalGaveUp,
        Step::QueryDue => QrCommand::QueryDue,
        Step::Cancel { answer, stale } => QrCommand::CancelAnswered {
            request_id: if *stale {
                PlatformRequestId::of(&p.order_id, "close")
            } else {
                owed_request(p)
            },
            answer: match answer % 4 {
                0 => CancelAnswer::Done,
                1 => CancelAnswer::Refunded {
                    platform_txn: txn("TXN1"),
                    amount: eur(1_250),
                },
                2 => CancelAnswer::OrderPaid {
                    platform_txn: txn("TXN1"),
                    amount: eur(1_250),
                },
                _ => CancelAnswer::NotDone("down".into()),
            },
            attempt: CancelAttempt {
                attempts,
                jitter: u64::from(*answer),
            },
            schedule: SCHEDULE,
        },
        Step::Redrive => QrCommand::Redrive,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_sequences_keep_the_invariants(
        cp in any::<bool>(),
        confirm_policy in any::<bool>(),
        steps in prop::collection::vec((step_strategy(), 0u32..15_000), 1..40),
    ) {
        let mode = if cp { QrMode::ConsumerPresented } else { QrMode::MerchantPresented };
        let policy = if confirm_policy { OrphanPolicy::Confirm } else { OrphanPolicy::Reverse };
        let mut p = opened(mode, policy);
        let mut now = T0;
        let mut outcomes = 0;
        let mut attempts = 0u32;
        for (step, advance_ms) in steps {
            now += time::Duration::milliseconds(i64::from(advance_ms));
            attempts += 1;
            let before = p.clone();
            let command = command_of(&step, &p, attempts);
            let Ok(d) = decide(&p, command, WINDOWS, now) else { continue };
            outcomes += d.announcements().filter(|e| e.is_outcome()).count();
            prop_assert!(outcomes <= 1, "more than one outcome: {:?}", d.effects);

            if before.state.is_final() {
                // A final state never changes; only the one S2 conflict
                // notice may follow, once.
                prop_assert_eq!(d.next.state, before.state);
                prop_assert!(d.transition.is_none());
                for effect in &d.effects {
                    prop_assert!(matches!(
                        effect,
                        QrEffect::Announce(QrEvent::AcknowledgementConflict) | QrEffect::Notify(_)
                    ), "effect after final: {effect:?}");
                }
            }
            if let Some(t) = d.transition {
                prop_assert_eq!(t.from, before.state);
                prop_assert_eq!(t.to, d.next.state);
                if t.to == S::CancelDeadLettered {
                    let since = before.owed.as_ref().unwrap().since;
                    prop_assert!((now - since).whole_milliseconds() >= i128::from(SCHEDULE.max_age_ms),
                        "dead-lettered before its maximum age");
                }
            }
            if d.effects.iter().any(|e| matches!(e, QrEffect::RetryCancel { .. })) {
                let since = before.owed.as_ref().unwrap().since;
                prop_assert!((now - since).whole_milliseconds() < i128::from(SCHEDULE.max_age_ms));
            }
            p = d.next;
            if matches!(p.state, S::Cancelling | S::CancelDeadLettered) {
                prop_assert!(p.owed.is_some());
                prop_assert!(p.next_query_at.is_none());
            }
            if p.owed.as_ref().is_some_and(|o| o.kind == CancelKind::Refund) {
                prop_assert!(p.money_moved(), "a refund owed for money that never moved");
            }
            match p.state {
                S::Refunded => prop_assert!(p.money_moved()),
                S::Closed | S::Failed => prop_assert!(!p.money_moved()),
                S::Confirmed => {
                    prop_assert!(p.money_moved());
                    let by_terminal = p.acknowledged_at.is_some()
                        && p.confirmation_evidence == Some(Evidence::TerminalAcknowledgement);
                    let by_policy = policy == OrphanPolicy::Confirm
                        && p.confirmation_evidence == Some(Evidence::Policy);
                    prop_assert!(by_terminal || by_policy);
                }
                S::Paid => prop_assert!(p.money_moved()),
                _ => {}
            }
        }
    }
}
