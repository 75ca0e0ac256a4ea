//! `switchd admin dead-letters` against the real PostgreSQL, with a
//! service's own configuration (here the settlement batcher's, from the
//! environment): it lists what the consumer dead-lettered, refuses a
//! replay that does not say who and why, replays an event once (its effect
//! applied, the row marked with who, why and what happened), finds an
//! event the live consumer already applied and applies nothing twice, and
//! then has nothing left to replay. The dead letters are written as the
//! consumer writes them; the consumer's own path is tested in
//! switch-platform.

use std::process::{Command, Output};

use prost::Message as _;
use sqlx::PgPool;
use switch_platform::db::DatabaseConfig;
use switch_proto::v1::{self as pb, EventEnvelope, event_envelope::Payload};
use uuid::Uuid;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

struct Admin {
    prefix: String,
}

impl Admin {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_switchd"))
            .arg("admin")
            .arg("dead-letters")
            .args(args)
            .env_clear()
            .env("SWITCH__DATABASE__URL", database_url())
            .env("SWITCH__DATABASE__SCHEMA_PREFIX", &self.prefix)
            .output()
            .expect("switchd runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

fn approval(transaction_id: Uuid, stan: &str) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::new_v4().to_string(),
        event_type: "authorization.approved".into(),
        transaction_id: transaction_id.to_string(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_795_000_000,
            nanos: 0,
        }),
        payload: Some(Payload::AuthorizationApproved(pb::AuthorizationApproved {
            facts: Some(pb::AuthorizationFacts {
                terminal_id: "TERM0001".into(),
                merchant_id: "MERCHANT0000001".into(),
                stan: stan.into(),
                local_date: "2026-12-02".into(),
                rrn: format!("633600{stan}"),
                masked_pan: "411111******1111".into(),
                amount: Some(pb::Money {
                    minor_units: 1_000,
                    currency: "EUR".into(),
                }),
                channel: "card".into(),
            }),
            approval_code: "A1B2C3".into(),
        })),
        ..EventEnvelope::default()
    }
}

/// As the consumer dead-letters an event after its attempts.
async fn dead_letter(pool: &PgPool, offset: i64, event: &EventEnvelope) {
    sqlx::query(
        "INSERT INTO dead_letter_events (consumer, topic, kafka_partition, kafka_offset, \
           payload, error, attempts) \
         VALUES ('settlement-batcher', 'authorization-events', 0, $1, $2, $3, 5)",
    )
    .bind(offset)
    .bind(event.encode_to_vec())
    .bind("database: the ledger had a bug")
    .execute(pool)
    .await
    .unwrap();
}

async fn in_ledger(pool: &PgPool, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT count(*) = 1 FROM transactions WHERE transaction_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

type Marks = Vec<(i64, Option<String>, Option<String>, Option<String>)>;

async fn marks(pool: &PgPool) -> Marks {
    sqlx::query_as(
        "SELECT kafka_offset, replayed_by, replay_reason, replay_result \
         FROM dead_letter_events ORDER BY kafka_offset",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_and_replays_a_services_dead_letters_once() {
    let suffix = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let admin = Admin {
        prefix: format!("a{suffix}_"),
    };
    // The command migrates the service's schema, as the service would.
    assert_eq!(
        admin.ok(&["list", "--service", "settlement"]),
        "no dead-lettered events for consumer settlement-batcher\n"
    );
    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: admin.prefix.clone(),
        max_connections: 2,
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(settlement_batcher::SERVICE_NAME);
    let pool = switch_platform::db::connect(&database, &schema)
        .await
        .unwrap();

    let (fixed, applied_live) = (Uuid::new_v4(), Uuid::new_v4());
    let first = approval(fixed, "000007");
    let second = approval(applied_live, "000008");
    dead_letter(&pool, 7, &first).await;
    dead_letter(&pool, 8, &second).await;
    // The live consumer applied a redelivery of the second meanwhile.
    sqlx::query(
        "INSERT INTO processed_events (consumer, event_id) VALUES ('settlement-batcher', $1::uuid)",
    )
    .bind(&second.event_id)
    .execute(&pool)
    .await
    .unwrap();

    let listed: serde_json::Value =
        serde_json::from_str(&admin.ok(&["list", "--service", "settlement", "--json"])).unwrap();
    assert_eq!(listed["consumer"], "settlement-batcher");
    let letters = listed["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["offset"], 7);
    assert_eq!(letters[0]["event_type"], "authorization.approved");
    assert_eq!(letters[0]["transaction_id"], fixed.to_string());
    assert_eq!(letters[0]["attempts"], 5);
    assert_eq!(letters[0]["replayed_at"], serde_json::Value::Null);
    let text = admin.ok(&["list", "--service", "settlement"]);
    assert!(text.starts_with("TOPIC"), "{text}");
    assert!(text.contains("the ledger had a bug"), "{text}");

    // Who and why, or nothing happens.
    let refused = admin.run(&[
        "replay",
        "--service",
        "settlement",
        "--operator",
        " ",
        "--reason",
        "fixed",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("operator: is required"),
        "{refused:?}"
    );
    let missing = admin.run(&[
        "replay",
        "--service",
        "settlement",
        "--operator",
        "ops.alice",
    ]);
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(
        marks(&pool).await,
        vec![(7, None, None, None), (8, None, None, None)]
    );
    assert!(!in_ledger(&pool, fixed).await);

    // One event, by its offset.
    let replayed: serde_json::Value = serde_json::from_str(&admin.ok(&[
        "replay",
        "--service",
        "settlement",
        "--operator",
        "ops.alice",
        "--reason",
        "INC-7: ledger fixed in 1.4.2",
        "--offset",
        "7",
        "--json",
    ]))
    .unwrap();
    assert_eq!(replayed["replayed"].as_array().unwrap().len(), 1);
    assert_eq!(replayed["replayed"][0]["result"], "applied");
    assert!(in_ledger(&pool, fixed).await, "its effect is applied");

    // The rest: the one the live consumer applied changes nothing.
    let text = admin.ok(&[
        "replay",
        "--service",
        "settlement",
        "--operator",
        "ops.alice",
        "--reason",
        "INC-7: the rest",
    ]);
    assert!(
        text.contains("authorization-events:0:8 already_processed"),
        "{text}"
    );
    assert!(!in_ledger(&pool, applied_live).await, "not applied twice");
    assert_eq!(
        marks(&pool).await,
        vec![
            (
                7,
                Some("ops.alice".into()),
                Some("INC-7: ledger fixed in 1.4.2".into()),
                Some("applied".into())
            ),
            (
                8,
                Some("ops.alice".into()),
                Some("INC-7: the rest".into()),
                Some("already_processed".into())
            ),
        ]
    );

    // A second replay does nothing.
    assert_eq!(
        admin.ok(&[
            "replay",
            "--service",
            "settlement",
            "--operator",
            "ops.bob",
            "--reason",
            "again"
        ]),
        "nothing to replay for consumer settlement-batcher\n"
    );
    let transactions: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(transactions, 1);
    pool.close().await;
    switch_platform::db::drop_schema(&database.url, &schema)
        .await
        .unwrap();
}
