//! Dead-lettered events and an operator's replay, against the real broker
//! and database (ADR 16, ADR 19): a poison event is dead-lettered and the
//! consumer moves on; after the fix an operator replays it, saying who and
//! why; it is applied once and marked with both; a second replay does
//! nothing, and nor does a replay of an event the live consumer applied
//! meanwhile. Needs the broker at `KAFKA_BROKERS` (127.0.0.1:9092).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::producer::FutureRecord;
use sqlx::{PgConnection, PgPool};
use switch_platform::consumer::{
    self, EventHandler, HandlerError, HandlerFuture, Replay, ReplayError, ReplayResult,
    ReplaySelection,
};
use switch_platform::db::DatabaseConfig;
use switch_platform::kafka::KafkaConfig;
use switch_proto::v1::EventEnvelope;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Fails on the poison event, for reasons of its own, until the fix is in.
#[derive(Default)]
struct FailsUntilFixed {
    fixed: AtomicBool,
}

impl EventHandler for FailsUntilFixed {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a EventEnvelope,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            if event.event_type == "poison" && !self.fixed.load(Ordering::SeqCst) {
                return Err(HandlerError::Retry(
                    "the handler cannot take a poison event yet".into(),
                ));
            }
            sqlx::query("INSERT INTO effects (event_id, event_type) VALUES ($1, $2)")
                .bind(&event.event_id)
                .bind(&event.event_type)
                .execute(tx)
                .await?;
            Ok(())
        })
    }
}

struct World {
    pool: PgPool,
    url: String,
    schema: String,
    kafka: KafkaConfig,
    group: String,
}

impl World {
    async fn new() -> World {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let suffix = Uuid::new_v4().simple().to_string()[..10].to_owned();
        let database = DatabaseConfig {
            url: url.clone(),
            schema_prefix: format!("d{suffix}_"),
            max_connections: 4,
            ..DatabaseConfig::default()
        };
        let schema = database.schema_for("dead_letters");
        let pool = switch_platform::db::connect(&database, &schema)
            .await
            .expect("PostgreSQL is reachable");
        for ddl in [
            consumer::PROCESSED_EVENTS_DDL,
            consumer::DEAD_LETTER_EVENTS_DDL,
            consumer::DEAD_LETTER_REPLAYS_DDL,
            "CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, event_id TEXT, event_type TEXT)",
        ] {
            sqlx::raw_sql(ddl)
                .execute(&pool)
                .await
                .expect("DDL applies");
        }
        let kafka = KafkaConfig {
            brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned()),
            topic_prefix: format!("d{suffix}."),
            partitions: 1,
            ..KafkaConfig::default()
        };
        kafka
            .ensure_topics(&["events"])
            .await
            .expect("the broker answers");
        World {
            pool,
            url,
            schema,
            kafka,
            group: format!("d{suffix}-group"),
        }
    }

    async fn publish(&self, events: &[&EventEnvelope]) {
        let producer = self.kafka.producer().expect("a producer");
        let topic = self.kafka.topic("events");
        for event in events {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key("txn-1")
                        .payload(&event.encode_to_vec()),
                    Duration::from_secs(10),
                )
                .await
                .expect("the broker takes the event");
        }
    }

    /// Runs the live consumer until `done` holds of the effects.
    async fn consume_until(&self, handler: &FailsUntilFixed, done: impl Fn(&[String]) -> bool) {
        let stop = CancellationToken::new();
        let consuming = consumer::run(
            self.pool.clone(),
            &self.kafka,
            &self.group,
            &["events"],
            handler,
            None,
            stop.clone().cancelled_owned(),
        );
        let watching = async {
            let deadline = Instant::now() + Duration::from_secs(90);
            while !done(&self.effects().await) {
                assert!(Instant::now() < deadline, "the consumer got there in time");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stop.cancel();
        };
        let (consumed, ()) = tokio::join!(consuming, watching);
        consumed.expect("the consumer stops cleanly");
    }

    async fn effects(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT event_type FROM effects ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    async fn drop(self) {
        self.pool.close().await;
        switch_platform::db::drop_schema(&self.url, &self.schema)
            .await
            .unwrap();
    }
}

fn envelope(event_type: &str) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::new_v4().to_string(),
        event_type: event_type.to_owned(),
        transaction_id: "txn-1".to_owned(),
        ..EventEnvelope::default()
    }
}

type Marks = (Option<String>, Option<String>, Option<String>, bool, i32);

async fn marks(world: &World) -> Marks {
    sqlx::query_as(
        "SELECT replayed_by, replay_reason, replay_result, replayed_at IS NOT NULL, attempts \
         FROM dead_letter_events WHERE consumer = $1",
    )
    .bind(&world.group)
    .fetch_one(&world.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_replayed_once_after_the_fix_with_who_and_why() {
    let world = World::new().await;
    let handler = FailsUntilFixed::default();
    let poison = envelope("poison");
    world
        .publish(&[&envelope("before"), &poison, &envelope("after")])
        .await;
    world
        .consume_until(&handler, |effects| effects.contains(&"after".to_owned()))
        .await;
    assert_eq!(world.effects().await, ["before", "after"]);

    let listed = consumer::list_dead_letters(&world.pool, &world.group, false, 100)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].event_type.as_deref(), Some("poison"));
    assert_eq!(
        listed[0].event_id.as_deref(),
        Some(poison.event_id.as_str())
    );
    assert_eq!(listed[0].attempts, consumer::POISON_ATTEMPTS as i32);
    assert!(listed[0].error.contains("cannot take a poison event"));
    assert_eq!(listed[0].replayed_at, None);
    // What the gauge consumer.dead_letters.open shows, for this group only.
    assert_eq!(
        consumer::open_dead_letters(&world.pool, &world.group)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        consumer::open_dead_letters(&world.pool, "another-group")
            .await
            .unwrap(),
        0
    );

    let everything = ReplaySelection::default();
    let replay = |operator: &'static str, reason: &'static str| Replay {
        operator,
        reason,
        selection: &everything,
    };
    // Who and why are required: refused before anything is touched.
    for (operator, reason, field) in [(" ", "fixed", "operator"), ("ops.alice", "", "reason")] {
        let refused = consumer::replay_dead_letters_by(
            &world.pool,
            &world.group,
            &handler,
            &replay(operator, reason),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&refused, ReplayError::Invalid(invalid) if invalid.field == field),
            "{refused}"
        );
    }
    assert_eq!(marks(&world).await, (None, None, None, false, 5));

    // Before the fix the replay fails again: kept, with its new error.
    let failed = consumer::replay_dead_letters_by(
        &world.pool,
        &world.group,
        &handler,
        &replay("ops.alice", "INC-7: first try"),
    )
    .await
    .unwrap();
    assert_eq!(failed.len(), 1);
    assert!(matches!(&failed[0].result, ReplayResult::Failed(e) if e.contains("poison")));
    assert_eq!(marks(&world).await, (None, None, None, false, 6));
    assert_eq!(world.effects().await, ["before", "after"]);
    assert_eq!(
        consumer::open_dead_letters(&world.pool, &world.group)
            .await
            .unwrap(),
        1,
        "a failed replay leaves it open"
    );

    // The fix, then the replay: applied once and marked, in one transaction.
    handler.fixed.store(true, Ordering::SeqCst);
    let replayed = consumer::replay_dead_letters_by(
        &world.pool,
        &world.group,
        &handler,
        &replay("  ops.alice ", "INC-7: handler fixed in 1.4.2"),
    )
    .await
    .unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].result, ReplayResult::Applied);
    assert_eq!(replayed[0].offset, listed[0].offset);
    assert_eq!(
        consumer::open_dead_letters(&world.pool, &world.group)
            .await
            .unwrap(),
        0,
        "replayed, it is no longer open"
    );
    assert_eq!(world.effects().await, ["before", "after", "poison"]);
    assert_eq!(
        marks(&world).await,
        (
            Some("ops.alice".into()),
            Some("INC-7: handler fixed in 1.4.2".into()),
            Some("applied".into()),
            true,
            6
        )
    );
    let processed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = $2::uuid",
    )
    .bind(&world.group)
    .bind(&poison.event_id)
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(processed, 1);

    // A second replay finds nothing left to replay.
    let again = consumer::replay_dead_letters_by(
        &world.pool,
        &world.group,
        &handler,
        &replay("ops.bob", "again"),
    )
    .await
    .unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(world.effects().await, ["before", "after", "poison"]);
    assert!(
        consumer::list_dead_letters(&world.pool, &world.group, false, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let all = consumer::list_dead_letters(&world.pool, &world.group, true, 100)
        .await
        .unwrap();
    assert_eq!(all[0].replayed_by.as_deref(), Some("ops.alice"));
    world.drop().await;
}

/// The live consumer and a replay record the event's id in the transaction
/// that applies it, so whichever comes second applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_an_event_the_live_consumer_applied_meanwhile_changes_nothing() {
    let world = World::new().await;
    let handler = FailsUntilFixed::default();
    let poison = envelope("poison");
    world.publish(&[&poison, &envelope("after")]).await;
    world
        .consume_until(&handler, |effects| effects.contains(&"after".to_owned()))
        .await;
    // The fix; then the event comes again (the outbox republished it) and
    // the live consumer applies it before any operator replays it.
    handler.fixed.store(true, Ordering::SeqCst);
    world.publish(&[&poison]).await;
    world
        .consume_until(&handler, |effects| effects.contains(&"poison".to_owned()))
        .await;
    assert_eq!(world.effects().await, ["after", "poison"]);

    let everything = ReplaySelection {
        offset: Some(0),
        ..ReplaySelection::default()
    };
    let replayed = consumer::replay_dead_letters_by(
        &world.pool,
        &world.group,
        &handler,
        &Replay {
            operator: "ops.alice",
            reason: "INC-8",
            selection: &everything,
        },
    )
    .await
    .unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].result, ReplayResult::AlreadyProcessed);
    assert_eq!(world.effects().await, ["after", "poison"], "applied once");
    assert_eq!(
        marks(&world).await,
        (
            Some("ops.alice".into()),
            Some("INC-8".into()),
            Some("already_processed".into()),
            true,
            5
        )
    );
    world.drop().await;
}
