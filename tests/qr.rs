//! QR payments end to end (issue 15, ADR 29): a terminal with its dev
//! certificate pays by QR through the gateway's `TerminalService`, the
//! authorization service calls the QR platform simulator over HTTPS, and
//! the `qr.*` events reach the broker. Real PostgreSQL and broker.

use std::time::Duration;

use switch_e2e::{Stack, StackOptions, today};
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
