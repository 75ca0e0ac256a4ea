//! `switch_platform::consumer` against the real broker and database: an
//! event delivered twice (as the outbox may do after a crash) changes state
//! once, and a malformed message is skipped without stopping the partition.

use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{PgConnection, PgPool};
use switch_e2e::v1::EventEnvelope;
use switch_e2e::{database_url, kafka_brokers, unique_suffix};
use switch_platform::consumer::{self, EventHandler, HandlerFuture};
use switch_platform::db::DatabaseConfig;
use switch_platform::kafka::KafkaConfig;
use tokio_util::sync::CancellationToken;

/// Records each event it is given; the state whose changes must be exactly once.
struct RecordEffects;

impl EventHandler for RecordEffects {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            sqlx::query("INSERT INTO effects (event_id, event_type) VALUES ($1, $2)")
                .bind(&event.event_id)
                .bind(&event.event_type)
                .execute(tx)
                .await?;
            Ok(())
        })
    }
}

fn envelope(event_type: &str) -> EventEnvelope {
    EventEnvelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_type: event_type.to_owned(),
        transaction_id: "txn-1".to_owned(),
        ..EventEnvelope::default()
    }
}

async fn publish(producer: &FutureProducer, topic: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic).key("txn-1").payload(payload),
            Duration::from_secs(10),
        )
        .await
        .expect("the broker accepts the message");
}

async fn effects(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT event_type FROM effects ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_changes_state_once() {
    let suffix = unique_suffix();
    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{suffix}_"),
        max_connections: 4,
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for("consumer");
    let pool = switch_platform::db::connect(&database, &schema)
        .await
        .unwrap();
    sqlx::raw_sql(consumer::PROCESSED_EVENTS_DDL)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, event_id TEXT, event_type TEXT)")
        .execute(&pool)
        .await
        .unwrap();

    let kafka = KafkaConfig {
        brokers: kafka_brokers(),
        topic_prefix: format!("{suffix}."),
        partitions: 1,
        ..KafkaConfig::default()
    };
    kafka.ensure_topics(&["consumer-test"]).await.unwrap();
    let topic = kafka.topic("consumer-test");
    let producer = kafka.producer().unwrap();

    let first = envelope("first").encode_to_vec();
    publish(&producer, &topic, &first).await;
    publish(&producer, &topic, &first).await; // redelivery
    publish(&producer, &topic, b"\xff\xfe not protobuf").await;
    publish(&producer, &topic, &first).await; // and again after a poison message
    let last = envelope("last").encode_to_vec();
    publish(&producer, &topic, &last).await;

    let stop = CancellationToken::new();
    let consumer_task = tokio::spawn({
        let (pool, kafka, stop) = (pool.clone(), kafka.clone(), stop.clone());
        async move {
            consumer::run(
                pool,
                &kafka,
                &format!("{suffix}-group"),
                &["consumer-test"],
                &RecordEffects,
                None,
                stop.cancelled_owned(),
            )
            .await
        }
    });

    // One partition, so once "last" is applied everything before it was seen.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !effects(&pool).await.contains(&"last".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "the consumer reached the last event"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(effects(&pool).await, ["first", "last"]);
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(processed, 2);

    stop.cancel();
    consumer_task.await.unwrap().unwrap();
    pool.close().await;
    switch_platform::db::drop_schema(&database.url, &schema)
        .await
        .unwrap();
}

/// Issue 13, hole 2: a poison event — one its handler fails on every time,
/// for reasons of its own (here a constraint it violates) — is
/// dead-lettered after a bounded number of attempts, and the consumer moves
/// on to the events behind it. After a fix, a replay applies it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_and_the_consumer_moves_on() {
    let suffix = unique_suffix();
    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{suffix}_"),
        max_connections: 4,
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for("consumer");
    let pool = switch_platform::db::connect(&database, &schema)
        .await
        .unwrap();
    for ddl in [
        consumer::PROCESSED_EVENTS_DDL,
        consumer::DEAD_LETTER_EVENTS_DDL,
        "CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, event_id TEXT, \
         event_type TEXT CONSTRAINT no_poison CHECK (event_type <> 'poison'))",
    ] {
        sqlx::raw_sql(ddl).execute(&pool).await.unwrap();
    }
    let kafka = KafkaConfig {
        brokers: kafka_brokers(),
        topic_prefix: format!("{suffix}."),
        partitions: 1,
        ..KafkaConfig::default()
    };
    kafka.ensure_topics(&["consumer-test"]).await.unwrap();
    let topic = kafka.topic("consumer-test");
    let producer = kafka.producer().unwrap();
    let poison = envelope("poison");
    for event in [envelope("before"), poison.clone(), envelope("after")] {
        publish(&producer, &topic, &event.encode_to_vec()).await;
    }

    let group = format!("{suffix}-group");
    let stop = CancellationToken::new();
    let consumer_task = tokio::spawn({
        let (pool, kafka, stop, group) = (pool.clone(), kafka.clone(), stop.clone(), group.clone());
        async move {
            consumer::run(
                pool,
                &kafka,
                &group,
                &["consumer-test"],
                &RecordEffects,
                None,
                stop.cancelled_owned(),
            )
            .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    while !effects(&pool).await.contains(&"after".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "the consumer got past the poison event"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(effects(&pool).await, ["before", "after"]);
    let (error, attempts): (String, i32) =
        sqlx::query_as("SELECT error, attempts FROM dead_letter_events WHERE consumer = $1")
            .bind(&group)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(error.contains("no_poison"), "{error}");
    assert_eq!(attempts, consumer::POISON_ATTEMPTS as i32);
    stop.cancel();
    consumer_task.await.unwrap().unwrap();

    // The fix, then the replay: applied once, marked, not replayed again.
    sqlx::query("ALTER TABLE effects DROP CONSTRAINT no_poison")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        consumer::replay_dead_letters(&pool, &group, &RecordEffects)
            .await
            .unwrap(),
        1
    );
    assert_eq!(effects(&pool).await, ["before", "after", "poison"]);
    assert_eq!(
        consumer::replay_dead_letters(&pool, &group, &RecordEffects)
            .await
            .unwrap(),
        0
    );
    pool.close().await;
    switch_platform::db::drop_schema(&database.url, &schema)
        .await
        .unwrap();
}
