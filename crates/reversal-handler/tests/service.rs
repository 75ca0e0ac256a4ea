//! `serve` against the real PostgreSQL and Kafka broker, with a fake
//! authorization service: it answers health checks, turns an approval
//! published on the authorization events topic into a Reverse call once the
//! acknowledgement window has passed, and stops cleanly on shutdown.
// Fixtures are stamped with the wall clock; the code under test takes its
// time from the Clock port.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{FakeAuthorization, TestDb, row, unique_suffix};
use prost::Message as _;
use rdkafka::producer::FutureRecord;
use reversal_handler::ReversalHandlerConfig;
use switch_platform::kafka::{KafkaConfig, topics};
use switch_proto::v1::{self as pb, EventEnvelope, event_envelope::Payload};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

async fn serving(addr: std::net::SocketAddr) -> bool {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    matches!(
        health.check(request).await,
        Ok(response) if response.get_ref().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unacknowledged_approval_is_reversed_after_its_window() {
    let db = TestDb::new().await;
    let suffix = unique_suffix();
    let kafka = KafkaConfig {
        brokers: kafka_brokers(),
        topic_prefix: format!("{suffix}."),
        partitions: 1,
        ..KafkaConfig::default()
    };
    let stop = CancellationToken::new();
    let fake = FakeAuthorization::default();
    let authorization = fake.start(stop.clone()).await;
    let config = ReversalHandlerConfig {
        authorization_endpoint: format!("http://{authorization}"),
        ack_window_ms: 300,
        consumer_group: format!("{suffix}-reversal-handler"),
        ..ReversalHandlerConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = tokio::spawn({
        let (database, kafka, stop) = (db.database.clone(), kafka.clone(), stop.clone());
        async move {
            reversal_handler::serve(
                &database,
                &kafka,
                &switch_platform::internal_tls::InternalTlsConfig::plaintext_for_lab(),
                &config,
                listener,
                stop.cancelled_owned(),
            )
            .await
        }
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    while !serving(addr).await {
        assert!(Instant::now() < deadline, "never served health");
        assert!(!service.is_finished(), "serve ended during start-up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let transaction_id = Uuid::new_v4();
    let now = time::OffsetDateTime::now_utc();
    let approved = EventEnvelope {
        event_id: Uuid::new_v4().to_string(),
        event_type: "authorization.approved".into(),
        transaction_id: transaction_id.to_string(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: now.unix_timestamp(),
            nanos: 0,
        }),
        payload: Some(Payload::AuthorizationApproved(pb::AuthorizationApproved {
            facts: Some(pb::AuthorizationFacts {
                terminal_id: "T0000001".into(),
                merchant_id: "M1".into(),
                stan: "000007".into(),
                local_date: "2026-11-25".into(),
                rrn: "633000000007".into(),
                masked_pan: "411111******1111".into(),
                amount: None,
                channel: "card".into(),
            }),
            approval_code: "A1B2C3".into(),
        })),
        ..EventEnvelope::default()
    }
    .encode_to_vec();
    let key = transaction_id.to_string();
    kafka
        .producer()
        .unwrap()
        .send(
            FutureRecord::to(&kafka.topic(topics::AUTHORIZATION_EVENTS))
                .key(&key)
                .payload(&approved),
            Duration::from_secs(10),
        )
        .await
        .expect("the broker accepts the event");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let closed = row(&db.pool, transaction_id)
            .await
            .is_some_and(|r| r.status == "closed");
        if closed {
            break;
        }
        assert!(Instant::now() < deadline, "the orphan was never reversed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        fake.calls(),
        vec![(
            transaction_id.to_string(),
            "reverse:no_terminal_acknowledgement".to_owned()
        )]
    );
    assert_eq!(
        row(&db.pool, transaction_id)
            .await
            .unwrap()
            .outcome
            .as_deref(),
        Some("reversal_requested:no_terminal_acknowledgement")
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), service)
        .await
        .expect("serve stops on shutdown")
        .unwrap()
        .unwrap();
    db.drop().await;
}
