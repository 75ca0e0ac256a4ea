//! The refund rules one by one, and random request sequences against the
//! invariant that a payment's refunds never add up to more than it.

use proptest::prelude::*;
use time::macros::datetime;

use super::*;
use crate::ids::{LocalDate, MerchantId, Stan, TerminalId};
use crate::lifecycle::RequestKey;
use crate::money::Currency;
use crate::orphan::OrphanPolicy;
use crate::qr::{QrIntent, QrMode, QrWindows};

const T0: OffsetDateTime = datetime!(2026-12-03 10:00 UTC);

const SCHEDULE: RetrySchedule = RetrySchedule {
    initial_delay_ms: 1_000,
    max_delay_ms: 30_000,
    max_age_ms: 60_000,
};

fn at(seconds: i64) -> OffsetDateTime {
    T0 + time::Duration::seconds(seconds)
}

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap())
}

fn payment(state: QrState) -> QrPayment {
    let intent = QrIntent {
        transaction_id: TransactionId::new(),
        key: RequestKey {
            terminal_id: TerminalId::parse("TERM0001").unwrap(),
            stan: Stan::parse("000123").unwrap(),
            local_date: LocalDate::parse("2026-12-03").unwrap(),
        },
        merchant_id: MerchantId::parse("MERCHANT0000001").unwrap(),
        mode: QrMode::ConsumerPresented,
        order_id: OrderId::parse("QR20261203000123").unwrap(),
        amount: eur(1_000),
        orphan_policy: OrphanPolicy::default(),
    };
    let mut payment = QrPayment::open(intent, QrWindows::WECHAT, T0).next;
    payment.state = state;
    payment
}

fn request(id: &str, minor: i64) -> RefundRequest {
    RefundRequest {
        refund_id: RefundId::parse(id).unwrap(),
        amount: eur(minor),
        operator: "ops.alice".into(),
        reason: "goods returned".into(),
    }
}

fn new_refund(payment: &QrPayment, refunds: &[QrRefund], id: &str, minor: i64) -> QrRefund {
    match accept(payment, refunds, None, request(id, minor), T0) {
        Ok(Acceptance::New(decision)) => {
            assert_eq!(decision.events, [RefundEvent::Requested]);
            decision.next
        }
        other => panic!("expected a new refund, got {other:?}"),
    }
}

fn attempt(attempts: u32) -> RefundAttempt {
    RefundAttempt {
        attempts,
        jitter: 0,
    }
}

fn field_of(refusal: RefundRefusal) -> &'static str {
    match refusal {
        RefundRefusal::Invalid(field) => field.field,
        other => panic!("expected a bad field, got {other:?}"),
    }
}

#[test]
fn a_refund_id_is_1_to_24_safe_ascii_and_its_platform_number_fits_32() {
    for good in ["R", "refund-1_a", &"x".repeat(24)] {
        let id = RefundId::parse(good).unwrap();
        let number = PlatformRequestId::for_merchant_refund(&id);
        assert!(number.as_str().len() <= 32, "{number}");
        assert!(number.as_str().ends_with(good));
    }
    for bad in ["", "has space", "ü", &"x".repeat(25)] {
        assert_eq!(RefundId::parse(bad).unwrap_err().field, "refund_id");
    }
}

#[test]
fn a_confirmed_payment_is_refunded_in_full_or_in_parts_up_to_its_amount() {
    let confirmed = payment(QrState::Confirmed);
    let full = new_refund(&confirmed, &[], "FULL", 1_000);
    assert_eq!(
        (full.state, full.next_attempt_at, full.attempts),
        (RefundState::Requested, Some(T0), 0)
    );
    assert_eq!(full.request_id().as_str(), "MR-FULL");
    assert_eq!(left(&confirmed, std::slice::from_ref(&full)), eur(0));

    let first = new_refund(&confirmed, &[], "P1", 300);
    let second = new_refund(&confirmed, std::slice::from_ref(&first), "P2", 700);
    let both = [first, second];
    assert_eq!(committed(&confirmed, &both), eur(1_000));
    let over = accept(&confirmed, &both, None, request("P3", 1), T0).unwrap_err();
    assert_eq!(field_of(over), "amount");
}

#[test]
fn more_than_is_left_names_the_amount_and_what_is_left() {
    let confirmed = payment(QrState::Confirmed);
    let first = new_refund(&confirmed, &[], "P1", 400);
    let refused = accept(&confirmed, &[first], None, request("P2", 601), T0).unwrap_err();
    let RefundRefusal::Invalid(field) = refused else {
        panic!("a bad field");
    };
    assert_eq!(field.field, "amount");
    assert!(field.reason.contains("6.00"), "{}", field.reason);
}

#[test]
fn every_written_refund_counts_whatever_its_state() {
    let confirmed = payment(QrState::Confirmed);
    let mut dead = new_refund(&confirmed, &[], "DEAD", 600);
    dead.state = RefundState::DeadLettered;
    let mut done = new_refund(&confirmed, &[], "DONE", 300);
    done.state = RefundState::Refunded;
    let refunds = [dead, done];
    assert_eq!(left(&confirmed, &refunds), eur(100));
    assert!(accept(&confirmed, &refunds, None, request("MORE", 101), T0).is_err());
}

#[test]
fn a_payment_that_is_not_confirmed_is_refused_with_its_state() {
    for state in QrState::ALL {
        if state == QrState::Confirmed {
            continue;
        }
        let refused = accept(&payment(state), &[], None, request("R1", 100), T0).unwrap_err();
        assert_eq!(
            refused,
            RefundRefusal::NotConfirmed {
                order_id: payment(state).order_id,
                state
            }
        );
        assert!(refused.to_string().contains(state.as_str()));
    }
}

#[test]
fn another_currency_zero_and_negative_amounts_name_their_field() {
    let confirmed = payment(QrState::Confirmed);
    let usd = RefundRequest {
        amount: Money::new(100, Currency::parse("USD").unwrap()),
        ..request("R1", 100)
    };
    assert_eq!(
        field_of(accept(&confirmed, &[], None, usd, T0).unwrap_err()),
        "amount.currency"
    );
    for minor in [0, -5] {
        let refused = accept(&confirmed, &[], None, request("R1", minor), T0).unwrap_err();
        assert_eq!(field_of(refused), "amount");
    }
}

#[test]
fn a_repeat_is_the_original_and_a_changed_repeat_a_conflict() {
    let confirmed = payment(QrState::Confirmed);
    let mut original = new_refund(&confirmed, &[], "R1", 250);
    original.state = RefundState::Refunded;
    let refunds = [original.clone()];
    assert_eq!(
        accept(
            &confirmed,
            &refunds,
            Some(&original),
            request("R1", 250),
            T0
        ),
        Ok(Acceptance::Duplicate(original.clone()))
    );
    // Even when nothing is left: the repeat asks for nothing new.
    assert!(matches!(
        accept(
            &confirmed,
            &refunds,
            Some(&original),
            request("R1", 251),
            T0
        ),
        Err(RefundRefusal::Conflict { .. })
    ));
    let other = payment(QrState::Confirmed);
    assert!(matches!(
        accept(&other, &[], Some(&original), request("R1", 250), T0),
        Err(RefundRefusal::Conflict { .. })
    ));
}

#[test]
fn done_completes_it_once_and_is_told_to_the_merchant_only() {
    let confirmed = payment(QrState::Confirmed);
    let refund = new_refund(&confirmed, &[], "R1", 250);
    let done = answered(&refund, RefundAnswer::Done, attempt(1), SCHEDULE, at(2));
    assert_eq!(done.events, [RefundEvent::Completed]);
    assert_eq!(
        (
            done.next.state,
            done.next.completed_at,
            done.next.next_attempt_at
        ),
        (RefundState::Refunded, Some(at(2)), None)
    );
    let again = answered(&done.next, RefundAnswer::Done, attempt(2), SCHEDULE, at(3));
    assert!(again.is_noop(&done.next));
    let notice = refund_notice_for(&RefundEvent::Completed).unwrap();
    assert_eq!(
        (notice.webhook.as_str(), notice.push),
        ("payment.refunded", None)
    );
    assert_eq!(refund_notice_for(&RefundEvent::Requested), None);
    assert_eq!(
        refund_notice_for(&RefundEvent::DeadLettered { attempts: 3 }),
        None
    );
}

#[test]
fn no_answer_is_retried_with_backoff_then_dead_lettered_past_the_maximum_age() {
    let confirmed = payment(QrState::Confirmed);
    let refund = new_refund(&confirmed, &[], "R1", 250);
    let retry = answered(
        &refund,
        RefundAnswer::Unknown("503".into()),
        attempt(1),
        SCHEDULE,
        at(1),
    );
    assert!(retry.events.is_empty());
    assert_eq!(retry.next.state, RefundState::Requested);
    assert_eq!(retry.next.last_error.as_deref(), Some("503"));
    let due = retry.next.next_attempt_at.unwrap();
    assert!(
        due > at(1) && due <= at(1) + time::Duration::seconds(30),
        "{due}"
    );

    let dead = answered(
        &retry.next,
        RefundAnswer::Unknown("503".into()),
        attempt(9),
        SCHEDULE,
        at(61),
    );
    assert_eq!(dead.events, [RefundEvent::DeadLettered { attempts: 9 }]);
    assert_eq!(
        (dead.next.state, dead.next.next_attempt_at),
        (RefundState::DeadLettered, None)
    );
    // A late failure changes nothing; a late success still completes it.
    let late = answered(
        &dead.next,
        RefundAnswer::Unknown("timeout".into()),
        attempt(10),
        SCHEDULE,
        at(62),
    );
    assert!(late.is_noop(&dead.next));
    let landed = answered(
        &dead.next,
        RefundAnswer::Done,
        attempt(10),
        SCHEDULE,
        at(62),
    );
    assert_eq!(landed.next.state, RefundState::Refunded);
}

#[test]
fn a_signed_refusal_is_dead_lettered_at_once_with_its_reason() {
    let confirmed = payment(QrState::Confirmed);
    let refund = new_refund(&confirmed, &[], "R1", 250);
    let refused = answered(
        &refund,
        RefundAnswer::Refused("RefundExceeded: 250 is more than the 0 left".into()),
        attempt(1),
        SCHEDULE,
        at(1),
    );
    assert_eq!(refused.events, [RefundEvent::DeadLettered { attempts: 1 }]);
    assert_eq!(refused.next.state, RefundState::DeadLettered);
    assert!(
        refused
            .next
            .last_error
            .as_deref()
            .unwrap()
            .contains("RefundExceeded")
    );
}

#[test]
fn only_a_dead_lettered_refund_is_redriven_and_it_starts_afresh() {
    let confirmed = payment(QrState::Confirmed);
    let refund = new_refund(&confirmed, &[], "R1", 250);
    assert!(matches!(
        redrive(&refund, at(5)),
        Err(RefundRefusal::NotDeadLettered {
            state: RefundState::Requested,
            ..
        })
    ));
    let dead = answered(
        &refund,
        RefundAnswer::Unknown("503".into()),
        attempt(7),
        SCHEDULE,
        at(61),
    )
    .next;
    let redriven = redrive(&dead, at(100)).unwrap();
    assert_eq!(
        (
            redriven.next.state,
            redriven.next.attempts,
            redriven.next.since,
            redriven.next.next_attempt_at
        ),
        (RefundState::Requested, 0, at(100), Some(at(100)))
    );
    assert_eq!(redriven.next.request_id(), refund.request_id());
    let done = answered(
        &redriven.next,
        RefundAnswer::Done,
        attempt(1),
        SCHEDULE,
        at(101),
    );
    assert!(matches!(
        redrive(&done.next, at(102)),
        Err(RefundRefusal::NotDeadLettered {
            state: RefundState::Refunded,
            ..
        })
    ));
}

#[derive(Debug, Clone)]
enum Step {
    Request { minor: i64, reuse: Option<usize> },
    Answer { which: usize, outcome: u8 },
    Redrive { which: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (-10i64..1_200, proptest::option::of(0usize..8))
            .prop_map(|(minor, reuse)| Step::Request { minor, reuse }),
        (0usize..8, 0u8..3).prop_map(|(which, outcome)| Step::Answer { which, outcome }),
        (0usize..8).prop_map(|which| Step::Redrive { which }),
    ]
}

proptest! {
    #[test]
    fn refunds_never_add_up_to_more_than_the_payment(steps in proptest::collection::vec(step(), 1..40)) {
        let confirmed = payment(QrState::Confirmed);
        let mut refunds: Vec<QrRefund> = Vec::new();
        let mut completed = 0i64;
        for (n, step) in steps.into_iter().enumerate() {
            let now = at(i64::try_from(n).unwrap() * 10);
            match step {
                Step::Request { minor, reuse } => {
                    let (id, same) = match reuse.and_then(|i| refunds.get(i)) {
                        Some(r) => (r.refund_id.as_str().to_owned(), Some(r.clone())),
                        None => (format!("R{n}"), None),
                    };
                    let asked = request(&id, minor);
                    match accept(&confirmed, &refunds, same.as_ref(), asked, now) {
                        Ok(Acceptance::New(decision)) => refunds.push(decision.next),
                        Ok(Acceptance::Duplicate(original)) => {
                            prop_assert_eq!(Some(original), same);
                        }
                        Err(_) => {}
                    }
                }
                Step::Answer { which, outcome } => {
                    if let Some(refund) = refunds.get_mut(which) {
                        let answer = match outcome {
                            0 => RefundAnswer::Done,
                            1 => RefundAnswer::Refused("RefundExceeded".into()),
                            _ => RefundAnswer::Unknown("503".into()),
                        };
                        let decision = answered(refund, answer, attempt(refund.attempts + 1), SCHEDULE, now);
                        if decision.events.contains(&RefundEvent::Completed) {
                            completed += decision.next.amount.minor_units();
                        }
                        *refund = decision.next;
                    }
                }
                Step::Redrive { which } => {
                    if let Some(refund) = refunds.get_mut(which)
                        && let Ok(decision) = redrive(refund, now)
                    {
                        *refund = decision.next;
                    }
                }
            }
            let total = committed(&confirmed, &refunds).minor_units();
            prop_assert!(total <= confirmed.amount.minor_units(), "{} > amount", total);
            prop_assert!(completed <= total);
            prop_assert!(refunds.iter().all(|r| r.amount.minor_units() > 0));
        }
    }
}
