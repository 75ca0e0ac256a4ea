//! `switchd admin migrate` and `switchd admin topics`, a deployment's
//! pre-install steps (the chart's hook Jobs), against the real PostgreSQL
//! and broker: every service's schema is created and migrated, a second
//! run changes nothing, and every topic of the switch exists afterwards.

use std::process::{Command, Output};

use sqlx::Connection;
use uuid::Uuid;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn admin(prefix: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchd"))
        .arg("admin")
        .args(args)
        .env_clear()
        .env("SWITCH__DATABASE__URL", database_url())
        .env("SWITCH__DATABASE__SCHEMA_PREFIX", prefix)
        .env("SWITCH__KAFKA__BROKERS", brokers())
        .env("SWITCH__KAFKA__TOPIC_PREFIX", prefix)
        .env("SWITCH__KAFKA__PARTITIONS", "1")
        .output()
        .expect("switchd runs")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

const SCHEMAS: [&str; 7] = [
    "issuer_simulator",
    "qr_simulator",
    "authorization",
    "terminal_gateway",
    "reversal_handler",
    "settlement_batcher",
    "notifier",
];

#[tokio::test]
async fn migrate_creates_and_migrates_every_schema_once() {
    let prefix = format!("m{}_", &Uuid::new_v4().simple().to_string()[..10]);
    let first = ok(&admin(&prefix, &["migrate", "--service", "all"]));
    let mut conn = sqlx::PgConnection::connect(&database_url()).await.unwrap();
    for schema in SCHEMAS {
        let schema = format!("{prefix}{schema}");
        assert!(
            first.contains(&format!("schema {schema} migrated")),
            "{first}"
        );
        let applied: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{schema}\"._sqlx_migrations WHERE success"
        ))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{schema}: {e}"));
        assert!(applied > 0, "{schema} has no migrations applied");
    }
    // A second run (an upgrade with nothing new) applies nothing and fails
    // on nothing.
    assert_eq!(ok(&admin(&prefix, &["migrate", "--service", "all"])), first);

    let one = format!("o{}_", &Uuid::new_v4().simple().to_string()[..10]);
    let only = ok(&admin(&one, &["migrate", "--service", "notifier"]));
    assert_eq!(only.lines().count(), 1, "{only}");
    assert!(
        only.starts_with(&format!("schema {one}notifier migrated")),
        "{only}"
    );

    for schema in SCHEMAS {
        for p in [&prefix, &one] {
            switch_platform::db::drop_schema(&database_url(), &format!("{p}{schema}"))
                .await
                .unwrap();
        }
    }
}

#[test]
fn topics_creates_every_topic_of_the_switch_and_a_repeat_is_a_no_op() {
    let prefix = format!("t{}_", &Uuid::new_v4().simple().to_string()[..10]);
    let first = ok(&admin(&prefix, &["topics"]));
    for topic in [
        "authorization-events",
        "settlement-events",
        "terminal-messages",
    ] {
        assert!(
            first.contains(&format!("topic {prefix}{topic} exists")),
            "{first}"
        );
    }
    assert_eq!(ok(&admin(&prefix, &["topics"])), first);

    use rdkafka::consumer::Consumer as _;
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, std::time::Duration::from_secs(10))
        .unwrap();
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    for topic in [
        "authorization-events",
        "settlement-events",
        "terminal-messages",
    ] {
        assert!(
            names.contains(&format!("{prefix}{topic}").as_str()),
            "{names:?}"
        );
    }
}
