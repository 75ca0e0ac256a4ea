//! Merchant webhooks end to end (issue 6): an S1 orphan's reversal, a
//! confirm-policy orphan and a payout reach the merchant as signed
//! webhooks; the signature fails on a tampered body or an old timestamp;
//! and a `kill -9` of the notifier while it retries loses no delivery.
// Fixtures are stamped with the wall clock; the code under test takes its
// time from the Clock port.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::FutureRecord;
use switch_e2e::v1::event_envelope::Payload;
use switch_e2e::v1::{
    AcknowledgeRequest, AuthorizationFacts, AuthorizationReversed, AuthorizationStatus,
    EventEnvelope, Money, RunSettlementRequest,
};
use switch_e2e::webhook_receiver::{Received, WebhookReceiver};
use switch_e2e::{
    MASTERCARD, Stack, StackOptions, SwitchdProcess, TempDir, VISA, capture_logs, database_url,
    free_address, kafka_brokers, quick_reversal_handler, sale, switchd_env, test_settlement, today,
    unique_suffix,
};
use switch_platform::config::Secret;
use switch_platform::db::DatabaseConfig;
use switch_platform::kafka::{KafkaConfig, topics};

const SECRET_1: &str = "merchant-one-webhook-secret";
const SECRET_2: &str = "merchant-two-webhook-secret";

fn endpoint(merchant_id: &str, url: String, secret: &str) -> notifier::EndpointConfig {
    notifier::EndpointConfig {
        merchant_id: merchant_id.into(),
        url,
        secret: Secret::new(secret),
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The first webhook of `kind` the endpoint answered 2xx to.
fn delivered<'a>(received: &'a [Received], kind: &str) -> Option<&'a Received> {
    received
        .iter()
        .find(|r| r.status == 200 && r.json()["type"] == kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphans_and_payouts_reach_the_merchant_as_signed_webhooks() {
    capture_logs();
    let merchant_one = WebhookReceiver::start().await;
    let merchant_two = WebhookReceiver::start().await;
    let mut handler = quick_reversal_handler(600);
    // Merchant 2 hands goods over before the answer: its orphans are confirmed.
    handler.merchants.insert(
        "MERCHANT0000002".into(),
        reversal_handler::MerchantPolicy {
            orphan_policy: Some("confirm".into()),
            ..Default::default()
        },
    );
    let notifier = notifier::NotifierConfig {
        endpoints: vec![
            endpoint("MERCHANT0000001", merchant_one.url(), SECRET_1),
            endpoint("MERCHANT0000002", merchant_two.url(), SECRET_2),
        ],
        retry: notifier::RetryConfig {
            initial_delay_ms: 100,
            max_delay_ms: 500,
            ..Default::default()
        },
        ..Default::default()
    };
    let stack = Stack::start(StackOptions {
        reversal_handler: Some(handler),
        settlement: Some(test_settlement()),
        notifier: Some(notifier),
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts");

    // S1 at merchant 1: approved, never shown, reversed at the deadline.
    let orphan = stack
        .sale_record(sale("TERM0001", "500001", VISA, 4_200))
        .await;
    assert_eq!(orphan.status(), AuthorizationStatus::Approved);
    // A completed sale at merchant 1, to be paid out.
    let paid = stack
        .sale_record(sale("TERM0002", "500002", MASTERCARD, 1_000))
        .await;
    stack
        .terminal("TERM0002")
        .await
        .unwrap()
        .acknowledge(AcknowledgeRequest {
            terminal_id: "TERM0002".into(),
            stan: "500002".into(),
            local_date: today(),
        })
        .await
        .unwrap();
    // An orphan at merchant 2, confirmed by its policy.
    let kept = stack
        .sale_record(sale("TERM0003", "500003", VISA, 7_700))
        .await;
    stack
        .wait_for_state(&orphan.transaction_id, "reversed", 30)
        .await;
    stack
        .wait_for_state(&kept.transaction_id, "confirmed", 30)
        .await;
    stack
        .wait_for_state(&paid.transaction_id, "confirmed", 30)
        .await;

    let reversed = stack
        .eventually(60, "the reversal webhook", || async {
            delivered(&merchant_one.received(), "payment.reversed").cloned()
        })
        .await;
    notifier::signature::verify(
        SECRET_1,
        &reversed.signature,
        &reversed.body,
        now_unix(),
        300,
    )
    .expect("the merchant verifies the signature");
    let body = reversed.json();
    assert_eq!(body["merchant_id"], "MERCHANT0000001");
    assert_eq!(body["id"], reversed.event_id.as_str());
    assert_eq!(body["data"]["rrn"], orphan.rrn.as_str());
    assert_eq!(body["data"]["reversal_reference"], orphan.rrn.as_str());
    assert_eq!(body["data"]["reason"], "no_terminal_acknowledgement");
    assert!(body["data"]["funds_released_at"].is_string(), "{body}");
    assert!(!String::from_utf8_lossy(&reversed.body).contains(VISA));

    // What a tampering proxy or a replaying attacker would send fails.
    let mut tampered = reversed.body.clone();
    let at = tampered
        .iter()
        .position(|b| *b == b'4')
        .expect("a digit in the body");
    tampered[at] = b'9';
    assert!(
        notifier::signature::verify(SECRET_1, &reversed.signature, &tampered, now_unix(), 300)
            .is_err()
    );
    assert!(
        notifier::signature::verify(
            SECRET_1,
            &reversed.signature,
            &reversed.body,
            now_unix() + 3_600,
            300
        )
        .is_err(),
        "a signature an hour old is refused"
    );
    assert!(
        notifier::signature::verify(
            SECRET_2,
            &reversed.signature,
            &reversed.body,
            now_unix(),
            300
        )
        .is_err(),
        "another merchant's secret does not verify it"
    );

    let confirmed = stack
        .eventually(60, "the confirmation webhook", || async {
            delivered(&merchant_two.received(), "payment.confirmed").cloned()
        })
        .await;
    notifier::signature::verify(
        SECRET_2,
        &confirmed.signature,
        &confirmed.body,
        now_unix(),
        300,
    )
    .expect("merchant 2 verifies with its own secret");
    let body = confirmed.json();
    assert_eq!(body["data"]["stan"], "500003");
    assert_eq!(body["data"]["evidence"], "policy");
    assert_eq!(body["data"]["approval_code"], kept.approval_code.as_str());
    assert_eq!(body["data"]["amount"]["minor_units"], 7_700);

    // The acknowledged sale is paid; the merchant hears of the payout.
    let mut settlement = stack.settlement_client().await.unwrap();
    stack
        .eventually(30, "the batcher to see the confirmed sale", || async {
            let pool = stack.settlement_pool().await.ok()?;
            let status: Option<String> = sqlx::query_scalar(
                "SELECT status FROM transactions WHERE transaction_id = $1::uuid",
            )
            .bind(&paid.transaction_id)
            .fetch_optional(&pool)
            .await
            .ok()?;
            (status.as_deref() == Some("confirmed")).then_some(())
        })
        .await;
    settlement
        .run_settlement(RunSettlementRequest {
            merchant_ids: vec!["MERCHANT0000001".into()],
            cutoff: String::new(),
        })
        .await
        .expect("the window closes");
    let payout = stack
        .eventually(60, "the payout webhook", || async {
            delivered(&merchant_one.received(), "settlement.paid").cloned()
        })
        .await;
    notifier::signature::verify(SECRET_1, &payout.signature, &payout.body, now_unix(), 300)
        .unwrap();
    let body = payout.json();
    assert_eq!(body["data"]["gross_minor_units"], 1_000);
    assert_eq!(body["data"]["fee_minor_units"], 6);
    assert_eq!(body["data"]["net_minor_units"], 994);

    // The completed sale's acknowledgement sent the merchant nothing; each
    // outcome arrived once.
    let kinds: Vec<String> = merchant_one
        .received()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "payment.reversed").count(),
        1,
        "{kinds:?}"
    );
    assert!(!kinds.iter().any(|k| k == "payment.confirmed"), "{kinds:?}");
    stack.shutdown().await;
}

/// An `AuthorizationReversed` event as authorization publishes it.
fn reversal_event(transaction_id: &str) -> EventEnvelope {
    EventEnvelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_type: "authorization.reversed".into(),
        transaction_id: transaction_id.into(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: now_unix(),
            nanos: 0,
        }),
        traceparent: String::new(),
        tracestate: String::new(),
        payload: Some(Payload::AuthorizationReversed(AuthorizationReversed {
            facts: Some(AuthorizationFacts {
                terminal_id: "TERM0001".into(),
                merchant_id: "MERCHANT0000001".into(),
                stan: "600001".into(),
                local_date: today(),
                rrn: "633000600001".into(),
                masked_pan: "411111******1111".into(),
                amount: Some(Money {
                    minor_units: 2_500,
                    currency: "EUR".into(),
                }),
                channel: "card".into(),
            }),
            reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into(),
            attempts: 1,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_9_of_the_notifier_mid_retry_loses_no_delivery() {
    let prefix = unique_suffix();
    let receiver = WebhookReceiver::start().await;
    receiver.answer_with(500);
    let config_dir = TempDir::new(&prefix).unwrap();
    let config_file = config_dir.path().join("switchd.toml");
    std::fs::write(
        &config_file,
        format!(
            "[notifier.retry]\ninitial_delay_ms = 200\nmax_delay_ms = 400\nmax_attempts = 100\n\n\
             [[notifier.endpoints]]\nmerchant_id = \"MERCHANT0000001\"\nurl = \"{}\"\n\
             secret = \"{SECRET_1}\"\n",
            receiver.url()
        ),
    )
    .unwrap();
    let listen = free_address().await;
    let env = switchd_env(
        &prefix,
        &[
            ("SWITCH_CONFIG", config_file.display().to_string()),
            ("SWITCH__NOTIFIER__LISTEN", listen.to_string()),
        ],
    );
    let mut first = SwitchdProcess::spawn("notifier", &env);
    first
        .wait_until_healthy(listen, "switch.v1.NotifierService")
        .await;

    let kafka = KafkaConfig {
        brokers: kafka_brokers(),
        topic_prefix: format!("{prefix}."),
        ..KafkaConfig::default()
    };
    let event = reversal_event(&uuid::Uuid::new_v4().to_string());
    kafka
        .producer()
        .unwrap()
        .send(
            FutureRecord::to(&kafka.topic(topics::AUTHORIZATION_EVENTS))
                .key(&event.transaction_id)
                .payload(&event.encode_to_vec()),
            Duration::from_secs(10),
        )
        .await
        .expect("the broker takes the event");

    // The endpoint fails; the notifier retries; it dies between attempts.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while receiver.received().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no retry seen");
        assert!(first.exited().is_none(), "the notifier stopped by itself");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill_9();
    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{prefix}_"),
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(notifier::SERVICE_NAME);
    let pool = switch_platform::db::connect(&database, &schema)
        .await
        .unwrap();
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM deliveries WHERE event_id = $1::uuid")
            .bind(&event.event_id)
            .fetch_one(&pool)
            .await
            .expect("the delivery is recorded");
    assert_eq!(state, "pending");
    assert!(attempts >= 1, "{attempts}");

    // The merchant's endpoint recovers; a new notifier process finishes.
    receiver.answer_with(200);
    let mut second = SwitchdProcess::spawn("notifier", &env);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let state: String =
            sqlx::query_scalar("SELECT state FROM deliveries WHERE event_id = $1::uuid")
                .bind(&event.event_id)
                .fetch_one(&pool)
                .await
                .unwrap();
        if state == "delivered" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never delivered");
        assert!(second.exited().is_none(), "the restarted notifier stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.kill_9();
    let received = receiver.received();
    assert!(received.iter().all(|r| r.event_id == event.event_id));
    assert_eq!(
        received.iter().filter(|r| r.status == 200).count(),
        1,
        "delivered once, none lost: {received:?}"
    );
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 1);
    pool.close().await;
    let _ = switch_platform::db::drop_schema(&database.url, &schema).await;
}

/// SIGTERM while webhooks are in flight to a slow merchant (issue 16, part
/// 4): the notifier lets them finish within its grace period and records
/// them, so the notifier that takes over sends every other one and none
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigterm_of_the_notifier_mid_delivery_sends_each_webhook_once() {
    const EVENTS: usize = 12;
    let prefix = unique_suffix();
    let receiver = WebhookReceiver::start().await;
    // Each answer takes a second: the signal finds deliveries in flight.
    receiver.answer_after(Duration::from_secs(1));
    let config_dir = TempDir::new(&prefix).unwrap();
    let config_file = config_dir.path().join("switchd.toml");
    std::fs::write(
        &config_file,
        format!(
            "[shutdown]\ngrace_period_ms = 10000\n\n\
             [notifier]\nmax_in_flight_per_endpoint = 4\n\n\
             [[notifier.endpoints]]\nmerchant_id = \"MERCHANT0000001\"\nurl = \"{}\"\n\
             secret = \"{SECRET_1}\"\n",
            receiver.url()
        ),
    )
    .unwrap();
    let listen = free_address().await;
    let env = switchd_env(
        &prefix,
        &[
            ("SWITCH_CONFIG", config_file.display().to_string()),
            ("SWITCH__NOTIFIER__LISTEN", listen.to_string()),
        ],
    );
    let mut first = SwitchdProcess::spawn("notifier", &env);
    first
        .wait_until_healthy(listen, "switch.v1.NotifierService")
        .await;
    let kafka = KafkaConfig {
        brokers: kafka_brokers(),
        topic_prefix: format!("{prefix}."),
        ..KafkaConfig::default()
    };
    let producer = kafka.producer().unwrap();
    let mut events = Vec::new();
    for _ in 0..EVENTS {
        let event = reversal_event(&uuid::Uuid::new_v4().to_string());
        producer
            .send(
                FutureRecord::to(&kafka.topic(topics::AUTHORIZATION_EVENTS))
                    .key(&event.transaction_id)
                    .payload(&event.encode_to_vec()),
                Duration::from_secs(10),
            )
            .await
            .expect("the broker takes the event");
        events.push(event.event_id);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while receiver.arrived() == 0 {
        assert!(std::time::Instant::now() < deadline, "no webhook sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.send_sigterm();
    let exit = first
        .exit_within(Duration::from_secs(30))
        .await
        .expect("the notifier exits within its grace period");
    assert!(exit.success(), "a clean exit: {exit}");
    let answered_before = receiver.received().len();
    assert_eq!(
        answered_before,
        receiver.arrived(),
        "every webhook in flight at the signal was answered before the exit"
    );

    receiver.answer_after(Duration::ZERO);
    let mut second = SwitchdProcess::spawn("notifier", &env);
    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{prefix}_"),
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(notifier::SERVICE_NAME);
    let pool = switch_platform::db::connect(&database, &schema)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let delivered: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE state = 'delivered'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if delivered == i64::try_from(EVENTS).unwrap() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never all delivered");
        assert!(second.exited().is_none(), "the second notifier stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(second.terminate().success());
    let received = receiver.received();
    for event_id in &events {
        let sent = received.iter().filter(|r| &r.event_id == event_id).count();
        assert_eq!(sent, 1, "event {event_id} sent {sent} times: {received:?}");
    }
    assert!(
        (1..EVENTS).contains(&answered_before),
        "the signal came mid-way: {answered_before} of {EVENTS} answered before it"
    );
    pool.close().await;
    let _ = switch_platform::db::drop_schema(&database.url, &schema).await;
}
