//! Merchant refunds of confirmed QR payments end to end (issue 15, ADR 30):
//! a terminal pays by QR through the gateway and prints the receipt, an
//! operator refunds the payment through authorization's `QrRefund` (in
//! full, or in two parts), the worker makes the refunds at the QR platform
//! simulator over HTTPS, the platform's ledger agrees, `qr.refund_completed`
//! reaches the broker with what settlement reads, and the merchant gets a
//! `payment.refunded` webhook; with settlement running, the refund of a
//! payment already paid out is deducted from the merchant's next payout.
//! Real PostgreSQL, broker and simulator.
//!
//! These suites run the internal hops in the lab's plaintext (see
//! `Stack::start`), so a non-operator's PERMISSION_DENIED is proven where
//! mutual TLS runs: crates/switch-platform/tests/internal_mtls.rs.

use std::time::Duration;

use switch_e2e::webhook_receiver::{Received, WebhookReceiver};
use switch_e2e::{Stack, StackOptions, today};
use switch_platform::config::Secret;
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use switch_proto::v1::{self as pb, EventEnvelope, event_envelope::Payload};
use tonic::Code;
use tonic::transport::Channel;

const CODE: &str = "134567890123456789";
const MERCHANT: &str = "MERCHANT0000001";

fn money(minor_units: i64) -> Option<pb::Money> {
    Some(pb::Money {
        minor_units,
        currency: "EUR".into(),
    })
}

fn pay(stan: &str, minor_units: i64) -> pb::QrPayRequest {
    pb::QrPayRequest {
        terminal_id: "TERM0001".into(),
        stan: stan.into(),
        local_date: today(),
        merchant_id: String::new(),
        payment_code: CODE.into(),
        amount: money(minor_units),
    }
}

fn refund(order_id: &str, refund_id: &str, minor_units: i64) -> pb::QrRefundRequest {
    pb::QrRefundRequest {
        order_id: order_id.into(),
        transaction_id: String::new(),
        refund_id: refund_id.into(),
        amount: money(minor_units),
        operator: "ops.alice".into(),
        reason: "the shopper brought the goods back".into(),
    }
}

fn stack_options(retry_max_age_ms: u64) -> StackOptions {
    StackOptions {
        qr: Some(authorization::QrConfig {
            terminal_wait_ms: 10_000,
            query_interval_ms: 200,
            query_limit_ms: 20_000,
            poll_interval_ms: 50,
            retry_initial_delay_ms: 50,
            retry_max_delay_ms: 200,
            retry_max_age_ms,
            ..authorization::QrConfig::default()
        }),
        ..StackOptions::default()
    }
}

async fn stack(retry_max_age_ms: u64, webhooks: Option<&WebhookReceiver>) -> Stack {
    Stack::start(StackOptions {
        notifier: webhooks.map(|receiver| notifier::NotifierConfig {
            endpoints: vec![notifier::EndpointConfig {
                merchant_id: MERCHANT.into(),
                url: receiver.url(),
                secret: Secret::new("merchant-qr-webhook-secret"),
            }],
            retry: notifier::RetryConfig {
                initial_delay_ms: 100,
                max_delay_ms: 500,
                ..Default::default()
            },
            ..Default::default()
        }),
        ..stack_options(retry_max_age_ms)
    })
    .await
    .expect("the stack starts")
}

/// The operator's client of authorization's internal API.
async fn operator(stack: &Stack) -> AuthorizationServiceClient<Channel> {
    AuthorizationServiceClient::connect(format!("http://{}", stack.authorization))
        .await
        .expect("authorization answers")
}

/// A QR payment paid at once and printed by its terminal: confirmed.
async fn confirmed(stack: &Stack, stan: &str, minor_units: i64) -> pb::QrPaymentRecord {
    let mut terminal = stack.terminal("TERM0001").await.expect("terminal");
    let paid = terminal
        .qr_pay(pay(stan, minor_units))
        .await
        .expect("paid")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(paid.answer, "approved", "{paid:?}");
    let printed = terminal
        .qr_acknowledge(pb::QrAcknowledgeRequest {
            terminal_id: "TERM0001".into(),
            order_id: paid.order_id.clone(),
        })
        .await
        .expect("acknowledged")
        .into_inner();
    assert_eq!(printed.state, "confirmed");
    printed
}

async fn refund_row(stack: &Stack, refund_id: &str) -> Option<(String, i32)> {
    sqlx::query_as("SELECT state, attempts FROM qr_refunds WHERE refund_id = $1")
        .bind(refund_id)
        .fetch_optional(&stack.journal)
        .await
        .expect("the journal")
}

async fn wait_for_refund(stack: &Stack, refund_id: &str, state: &str) -> i32 {
    stack
        .eventually(30, &format!("refund {refund_id} {state}"), || async {
            refund_row(stack, refund_id)
                .await
                .filter(|(now, _)| now == state)
                .map(|(_, attempts)| attempts)
        })
        .await
}

async fn count(stack: &Stack, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&stack.journal)
        .await
        .expect("count")
}

/// The `qr.refund_*` events of a payment on the broker, once `n` are there.
async fn refund_events(stack: &Stack, transaction_id: &str, n: usize) -> Vec<EventEnvelope> {
    stack
        .eventually(30, "the refund events on the broker", || async {
            let events: Vec<EventEnvelope> = stack
                .read_events()
                .await
                .ok()?
                .into_iter()
                .filter(|e| e.transaction_id == transaction_id)
                .filter(|e| e.event_type.starts_with("qr.refund_"))
                .collect();
            (events.len() >= n).then_some(events)
        })
        .await
}

fn qr_event(event: &EventEnvelope) -> &pb::QrPaymentEvent {
    match &event.payload {
        Some(Payload::QrPayment(qr)) => qr,
        other => panic!("a QR event, not {other:?}"),
    }
}

fn delivered(received: &[Received], kind: &str) -> Vec<Received> {
    received
        .iter()
        .filter(|r| r.status == 200 && r.json()["type"] == kind)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirmed_qr_payment_is_refunded_in_full_or_in_two_parts_and_announced() {
    let webhooks = WebhookReceiver::start().await;
    let stack = stack(60_000, Some(&webhooks)).await;
    let mut ops = operator(&stack).await;
    let whole = confirmed(&stack, "000301", 2_500).await;
    let parts = confirmed(&stack, "000302", 1_000).await;

    let full = ops
        .qr_refund(refund(&whole.order_id, "RET-301", 2_500))
        .await
        .expect("all of it")
        .into_inner();
    assert!(!full.duplicate);
    let first = ops
        .qr_refund(refund(&parts.order_id, "RET-302-A", 400))
        .await
        .expect("a part")
        .into_inner()
        .refund
        .expect("the refund");
    assert_eq!(first.refunded_total.expect("total").minor_units, 400);
    let second = ops
        .qr_refund(refund(&parts.order_id, "RET-302-B", 600))
        .await
        .expect("the rest")
        .into_inner()
        .refund
        .expect("the refund");
    assert_eq!(second.refunded_total.expect("total").minor_units, 1_000);
    for id in ["RET-301", "RET-302-A", "RET-302-B"] {
        wait_for_refund(&stack, id, "refunded").await;
    }

    // The platform's ledger agrees: charged once, refunded what was asked.
    let simulator = stack.qr_simulator.as_ref().expect("the QR platform");
    for (payment, refunds) in [(&whole, 1), (&parts, 2)] {
        let entry = simulator
            .entry(&payment.order_id)
            .await
            .expect("ledger")
            .expect("the order");
        let amount = payment.amount.as_ref().expect("amount").minor_units;
        assert_eq!(
            (entry.charged, entry.refunded),
            (amount, amount),
            "{entry:?}"
        );
        assert_eq!(entry.refunds.len(), refunds, "{entry:?}");
    }

    // A repeat is the original; nothing new is written.
    let repeat = ops
        .qr_refund(refund(&parts.order_id, "RET-302-A", 400))
        .await
        .expect("a repeat")
        .into_inner();
    assert!(repeat.duplicate);
    assert_eq!(repeat.refund.expect("refund").state, "refunded");

    // More than is left, and a payment that is not confirmed: refused,
    // nothing written.
    let written = (
        count(&stack, "qr_refunds").await,
        count(&stack, "outbox").await,
    );
    let over = ops
        .qr_refund(refund(&parts.order_id, "RET-302-C", 1))
        .await
        .expect_err("nothing left");
    assert_eq!(over.code(), Code::InvalidArgument, "{over:?}");
    assert!(over.message().contains("amount"), "{}", over.message());
    let mut terminal = stack.terminal("TERM0001").await.expect("terminal");
    let waiting = terminal
        .qr_pay(pay("000303", 1_002))
        .await
        .expect("pay answered")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(waiting.answer, "in_progress");
    let unconfirmed = ops
        .qr_refund(refund(&waiting.order_id, "RET-303", 100))
        .await
        .expect_err("not confirmed");
    assert_eq!(
        unconfirmed.code(),
        Code::FailedPrecondition,
        "{unconfirmed:?}"
    );
    assert_eq!(
        (
            count(&stack, "qr_refunds").await,
            count(&stack, "outbox").await
        ),
        written
    );

    // On the broker: requested then completed, with what settlement reads.
    let events = refund_events(&stack, &parts.transaction_id, 4).await;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "qr.refund_requested")
            .count(),
        2,
        "{types:?}"
    );
    let completed: Vec<&pb::QrPaymentEvent> = events
        .iter()
        .filter(|e| e.event_type == "qr.refund_completed")
        .map(qr_event)
        .collect();
    assert_eq!(completed.len(), 2, "{types:?}");
    for event in &completed {
        let refund = event.refund.as_ref().expect("the refund");
        let payment = event.payment.as_ref().expect("the payment");
        assert!(refund.refund_id.starts_with("RET-302-"), "{refund:?}");
        assert_eq!(refund.merchant_id, MERCHANT);
        assert!(!refund.completed_at.is_empty());
        assert_eq!(refund.state, "refunded");
        assert!(refund.amount.as_ref().expect("amount").minor_units > 0);
        assert_eq!(payment.transaction_id, parts.transaction_id);
        assert_eq!(payment.state, "confirmed");
        assert_eq!(
            (event.webhook.as_str(), event.push.as_str()),
            ("payment.refunded", "")
        );
    }

    // The merchant hears of each refund once.
    let heard = stack
        .eventually(30, "three payment.refunded webhooks", || async {
            let heard = delivered(&webhooks.received(), "payment.refunded");
            (heard.len() >= 3).then_some(heard)
        })
        .await;
    let mut ids: Vec<String> = heard
        .iter()
        .map(|r| {
            r.json()["data"]["refund"]["refund_id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["RET-301", "RET-302-A", "RET-302-B"]);
    assert!(
        heard
            .iter()
            .all(|r| r.json()["data"]["receipt_void"] == false)
    );
    drop((ops, terminal));
    tokio::time::timeout(Duration::from_secs(30), stack.shutdown())
        .await
        .expect("the stack stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_while_the_platform_is_down_is_dead_lettered_and_redriven_to_refunded() {
    let stack = stack(1_000, None).await;
    let mut ops = operator(&stack).await;
    let payment = confirmed(&stack, "000311", 1_000).await;
    let simulator = stack.qr_simulator.as_ref().expect("the QR platform");
    simulator.faults().update(|plan| plan.outage = true);
    ops.qr_refund(refund(&payment.order_id, "RET-311", 300))
        .await
        .expect("taken");
    let attempts = wait_for_refund(&stack, "RET-311", "dead_lettered").await;
    assert!(attempts >= 2, "repeated before giving up: {attempts}");
    let dead = refund_events(&stack, &payment.transaction_id, 2).await;
    let last = dead.last().expect("an event");
    assert_eq!(last.event_type, "qr.refund_dead_lettered");
    assert!(qr_event(last).attempts >= 2);

    let redrive = pb::QrRedriveRequest {
        order_id: payment.order_id.clone(),
        refund_id: "RET-311".into(),
        operator: "ops.bob".into(),
        reason: "the platform is back".into(),
    };
    simulator.faults().update(|plan| plan.outage = false);
    let redriven = ops
        .qr_redrive(redrive.clone())
        .await
        .expect("redriven")
        .into_inner();
    assert_eq!(redriven.refund.expect("the refund").attempts, 0);
    wait_for_refund(&stack, "RET-311", "refunded").await;
    let entry = simulator
        .entry(&payment.order_id)
        .await
        .expect("ledger")
        .expect("the order");
    assert_eq!((entry.charged, entry.refunded), (1_000, 300), "{entry:?}");
    let events = refund_events(&stack, &payment.transaction_id, 3).await;
    assert_eq!(
        events.last().map(|e| e.event_type.as_str()),
        Some("qr.refund_completed")
    );
    let again = ops.qr_redrive(redrive).await.expect_err("refunded already");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    drop(ops);
    tokio::time::timeout(Duration::from_secs(30), stack.shutdown())
        .await
        .expect("the stack stops");
}

/// Where `order_id` stands in settlement, once it is known there.
async fn settlement_of(stack: &Stack, order_id: &str) -> Option<pb::TransactionSettlement> {
    let mut settlement = stack.settlement_client().await.expect("settlement answers");
    settlement
        .get_settlement_status(pb::SettlementStatusRequest {
            query: Some(pb::settlement_status_request::Query::QrOrderId(
                order_id.to_owned(),
            )),
        })
        .await
        .ok()?
        .into_inner()
        .transactions
        .pop()
}

/// A merchant's payout in EUR of the one window a run closed.
fn eur_payout(run: &pb::RunSettlementResponse) -> (String, pb::MerchantPayout) {
    let window = run
        .windows
        .iter()
        .find(|w| w.merchant_id == MERCHANT)
        .expect("the merchant's window");
    let payout = window
        .payouts
        .iter()
        .find(|p| p.currency == "EUR")
        .cloned()
        .expect("a EUR payout");
    (window.window_id.clone(), payout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_of_a_paid_qr_payment_is_deducted_from_the_merchants_next_payout() {
    let stack = Stack::start(StackOptions {
        settlement: Some(switch_e2e::test_settlement()),
        ..stack_options(60_000)
    })
    .await
    .expect("the stack starts");
    let mut settlement = stack.settlement_client().await.expect("settlement");

    // Window 1: one QR payment, at the QR rate.
    let first = confirmed(&stack, "000801", 10_000).await;
    let known = stack
        .eventually(30, "the payment confirmed in settlement", || async {
            settlement_of(&stack, &first.order_id)
                .await
                .filter(|s| s.state() == pb::SettlementState::Pending)
        })
        .await;
    assert_eq!(known.channel, "qr");
    let run = settlement
        .run_settlement(pb::RunSettlementRequest::default())
        .await
        .expect("the first run")
        .into_inner();
    let (_, payout) = eur_payout(&run);
    let qr_rate = i64::from(run.windows[0].qr_fee_basis_points);
    assert!(qr_rate > 0, "a QR rate is recorded: {run:?}");
    let fee = 10_000 * qr_rate / 10_000;
    assert_eq!(
        (
            payout.gross_minor_units,
            payout.fee_minor_units,
            payout.refund_minor_units,
            payout.net_minor_units
        ),
        (10_000, fee, 0, 10_000 - fee)
    );

    // The shopper brings part back after the merchant was paid; the next
    // window pays a new sale less that refund.
    let second = confirmed(&stack, "000802", 5_000).await;
    let mut authorization = operator(&stack).await;
    authorization
        .qr_refund(refund(&first.order_id, "back-801", 3_000))
        .await
        .expect("the refund is accepted");
    wait_for_refund(&stack, "back-801", "refunded").await;
    stack
        .eventually(
            30,
            "the refund debit and the new sale in settlement",
            || async {
                let refunded = settlement_of(&stack, &first.order_id)
                    .await
                    .is_some_and(|s| s.refunds.len() == 1);
                let sold = settlement_of(&stack, &second.order_id)
                    .await
                    .is_some_and(|s| s.state() == pb::SettlementState::Pending);
                (refunded && sold).then_some(())
            },
        )
        .await;
    let run = settlement
        .run_settlement(pb::RunSettlementRequest::default())
        .await
        .expect("the second run")
        .into_inner();
    let (window_id, payout) = eur_payout(&run);
    let fee = 5_000 * qr_rate / 10_000;
    assert_eq!(
        (
            payout.gross_minor_units,
            payout.fee_minor_units,
            payout.refund_count,
            payout.refund_minor_units,
            payout.net_minor_units
        ),
        (5_000, fee, 1, 3_000, 5_000 - fee - 3_000)
    );
    let first_now = settlement_of(&stack, &first.order_id)
        .await
        .expect("the first payment");
    assert_eq!(first_now.state(), pb::SettlementState::Paid);
    let netted = &first_now.refunds[0];
    assert_eq!(
        (
            netted.refund_id.as_str(),
            netted.amount.as_ref().map(|m| m.minor_units),
            netted.window_id.as_str()
        ),
        ("back-801", Some(3_000), window_id.as_str())
    );
    assert_eq!(netted.state(), pb::SettlementState::Paid);
    stack.shutdown().await;
}
