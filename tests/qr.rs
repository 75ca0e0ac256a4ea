//! QR payments end to end (issue 15, ADR 29): a terminal with its dev
//! certificate pays by QR through the gateway's `TerminalService`, the
//! authorization service calls the QR platform simulator over HTTPS, and
//! the `qr.*` events reach the broker. Real PostgreSQL and broker.

use std::time::Duration;

use switch_e2e::webhook_receiver::{Received, WebhookReceiver};
use switch_e2e::{Stack, StackOptions, today};
use switch_platform::config::Secret;
use switch_proto::v1::{self as pb, event_envelope::Payload};
use tonic::Code;

const CODE: &str = "134567890123456789";

fn pay(terminal_id: &str, stan: &str, minor_units: i64) -> pb::QrPayRequest {
    pb::QrPayRequest {
        terminal_id: terminal_id.into(),
        stan: stan.into(),
        local_date: today(),
        // The gateway puts the certificate's merchant here.
        merchant_id: "MERCHANT_FORGED".into(),
        payment_code: CODE.into(),
        amount: Some(pb::Money {
            minor_units,
            currency: "EUR".into(),
        }),
    }
}

async fn stack() -> Stack {
    Stack::start(StackOptions {
        qr: Some(authorization::QrConfig {
            terminal_wait_ms: 10_000,
            query_interval_ms: 200,
            query_limit_ms: 20_000,
            poll_interval_ms: 50,
            ..authorization::QrConfig::default()
        }),
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts")
}

#[tokio::test]
async fn a_consumer_presented_payment_succeeds_through_the_gateway_and_is_announced() {
    let stack = stack().await;
    let mut terminal = stack.terminal("TERM0001").await.expect("terminal");
    let answer = terminal
        .qr_pay(pay("TERM0001", "000101", 2_500))
        .await
        .expect("paid")
        .into_inner();
    let payment = answer.payment.expect("payment");
    assert!(!answer.duplicate);
    assert_eq!(
        (payment.state.as_str(), payment.answer.as_str()),
        ("paid", "approved")
    );
    // The merchant is the certificate's, not the request's.
    let merchant = dev_certs::DEFAULT_TERMINALS
        .iter()
        .find(|(tid, _)| *tid == "TERM0001")
        .map(|(_, mid)| *mid)
        .expect("TERM0001 is a dev terminal");
    assert_eq!(payment.merchant_id, merchant);

    // A retry: the original answer.
    let retry = terminal
        .qr_pay(pay("TERM0001", "000101", 2_500))
        .await
        .expect("retry answered")
        .into_inner();
    assert!(retry.duplicate);
    assert_eq!(
        retry.payment.expect("payment").platform_txn_id,
        payment.platform_txn_id
    );
    // Speaking for another terminal is refused by the gateway.
    let other = terminal
        .qr_pay(pay("TERM0002", "000102", 2_500))
        .await
        .expect_err("another terminal's id");
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    // Bad input passes through precisely.
    let bad = terminal
        .qr_pay(pb::QrPayRequest {
            payment_code: String::new(),
            ..pay("TERM0001", "000103", 2_500)
        })
        .await
        .expect_err("no payment code");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("payment_code"), "{}", bad.message());

    let acknowledged = terminal
        .qr_acknowledge(pb::QrAcknowledgeRequest {
            terminal_id: "TERM0001".into(),
            order_id: payment.order_id.clone(),
        })
        .await
        .expect("acknowledged")
        .into_inner();
    assert_eq!(acknowledged.state, "confirmed");
    let status = terminal
        .qr_status(pb::QrStatusRequest {
            terminal_id: "TERM0001".into(),
            order_id: payment.order_id.clone(),
            ..Default::default()
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.state, "confirmed");

    // The platform charged it once; the events reach the broker.
    let entry = stack
        .qr_simulator
        .as_ref()
        .expect("the QR platform")
        .entry(&payment.order_id)
        .await
        .expect("ledger")
        .expect("the order");
    assert_eq!((entry.charged, entry.refunded), (2_500, 0));
    let types = stack
        .eventually(20, "the qr events on the broker", || async {
            let events = stack.read_events().await.ok()?;
            let types: Vec<String> = events
                .into_iter()
                .filter(|e| e.transaction_id == payment.transaction_id)
                .filter(|e| matches!(e.payload, Some(Payload::QrPayment(_))))
                .map(|e| e.event_type)
                .collect();
            (types.len() >= 2).then_some(types)
        })
        .await;
    assert_eq!(types, ["qr.paid", "qr.confirmed"]);
    tokio::time::timeout(Duration::from_secs(30), stack.shutdown())
        .await
        .expect("the stack stops");
}

/// The first webhook of `kind` the endpoint answered 2xx to.
fn delivered(received: &[Received], kind: &str) -> Option<Received> {
    received
        .iter()
        .find(|r| r.status == 200 && r.json()["type"] == kind)
        .cloned()
}

async fn next_message(stream: &mut tonic::Streaming<pb::TerminalMessage>) -> pb::TerminalMessage {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("a message arrives in time")
        .expect("the stream is healthy")
        .expect("the stream stays open")
}

/// S3 twice (issue 15): the shopper pays (amount …20: 1.5 s after the pay)
/// when the terminal stopped waiting (0.8 s). Merchant 1 (default `reverse`)
/// gets it refunded at the platform, `payment.reversed` and a
/// `void_receipt` push; merchant 2 (`confirm`) keeps it, `payment.confirmed`
/// and a `reprint_receipt` push. The platform's ledger agrees with both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_a_late_qr_payment_is_refunded_or_confirmed_by_policy_with_webhook_and_push() {
    let merchant_one = WebhookReceiver::start().await;
    let merchant_two = WebhookReceiver::start().await;
    let endpoint = |merchant_id: &str, url: String| notifier::EndpointConfig {
        merchant_id: merchant_id.into(),
        url,
        secret: Secret::new("merchant-qr-webhook-secret"),
    };
    let mut qr = authorization::QrConfig {
        terminal_wait_ms: 800,
        query_interval_ms: 200,
        query_limit_ms: 20_000,
        poll_interval_ms: 50,
        ..authorization::QrConfig::default()
    };
    qr.merchant_policies
        .insert("MERCHANT0000002".into(), "confirm".into());
    let stack = Stack::start(StackOptions {
        qr: Some(qr),
        notifier: Some(notifier::NotifierConfig {
            endpoints: vec![
                endpoint("MERCHANT0000001", merchant_one.url()),
                endpoint("MERCHANT0000002", merchant_two.url()),
            ],
            retry: notifier::RetryConfig {
                initial_delay_ms: 100,
                max_delay_ms: 500,
                ..Default::default()
            },
            ..Default::default()
        }),
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts");
    let mut one = stack.terminal("TERM0001").await.expect("terminal 1");
    let mut three = stack.terminal("TERM0003").await.expect("terminal 3");
    let subscribe = |terminal_id: &str| pb::SubscribeRequest {
        terminal_id: terminal_id.into(),
    };
    let mut one_stream = one
        .subscribe(subscribe("TERM0001"))
        .await
        .expect("subscribed")
        .into_inner();
    let mut three_stream = three
        .subscribe(subscribe("TERM0003"))
        .await
        .expect("subscribed")
        .into_inner();

    let mut started = Vec::new();
    for (terminal, terminal_id) in [(&mut one, "TERM0001"), (&mut three, "TERM0003")] {
        let payment = terminal
            .qr_pay(pay(terminal_id, "000201", 1_020))
            .await
            .expect("pay answered")
            .into_inner()
            .payment
            .expect("payment");
        assert_eq!(payment.answer, "in_progress", "{payment:?}");
        started.push(payment);
    }
    let (refunded, confirmed) = (&started[0], &started[1]);

    let reversed = stack
        .eventually(60, "payment.reversed for merchant 1", || async {
            delivered(&merchant_one.received(), "payment.reversed")
        })
        .await;
    let body = reversed.json();
    assert_eq!(body["data"]["order_id"], refunded.order_id.as_str());
    assert_eq!(body["data"]["channel"], "qr");
    assert_eq!(body["data"]["receipt_void"], true);
    let kept = stack
        .eventually(60, "payment.confirmed for merchant 2", || async {
            delivered(&merchant_two.received(), "payment.confirmed")
        })
        .await;
    assert_eq!(kept.json()["data"]["order_id"], confirmed.order_id.as_str());
    assert!(delivered(&merchant_two.received(), "payment.reversed").is_none());

    let void = next_message(&mut one_stream).await;
    assert_eq!(void.kind, "void_receipt");
    assert!(void.text.contains(&refunded.order_id), "{}", void.text);
    let reprint = next_message(&mut three_stream).await;
    assert_eq!(reprint.kind, "reprint_receipt");
    assert!(
        reprint.text.contains(&confirmed.order_id),
        "{}",
        reprint.text
    );

    let simulator = stack.qr_simulator.as_ref().expect("the QR platform");
    for (payment, refunded_minor) in [(refunded, 1_020), (confirmed, 0)] {
        let entry = simulator
            .entry(&payment.order_id)
            .await
            .expect("ledger")
            .expect("the order");
        assert_eq!(
            (entry.charged, entry.refunded),
            (1_020, refunded_minor),
            "{entry:?}"
        );
    }
    drop((one_stream, three_stream, one, three));
    tokio::time::timeout(Duration::from_secs(30), stack.shutdown())
        .await
        .expect("the stack stops");
}
