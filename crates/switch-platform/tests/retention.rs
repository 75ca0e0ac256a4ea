//! Retention on the real PostgreSQL: the relay deletes published outbox
//! rows past their retention and never an unpublished one; a consumer
//! forgets only its own event ids past theirs. And the backlog the relay's
//! gauges report: unpublished rows only, and the oldest one's age.

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use switch_platform::consumer::{
    PROCESSED_EVENTS_AGE_INDEX_DDL, PROCESSED_EVENTS_DDL, prune_processed,
};
use switch_platform::db::DatabaseConfig;
use switch_platform::outbox::{OUTBOX_TABLE_DDL, OutboxConfig, OutboxRelay};
use uuid::Uuid;

/// A schema of this test's own with the outbox and the consumer table.
async fn schema() -> (PgPool, String, String) {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let id = Uuid::new_v4().simple().to_string();
    let database = DatabaseConfig {
        url: url.clone(),
        schema_prefix: format!("r{}_", &id[..10]),
        max_connections: 2,
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for("retention");
    let pool = switch_platform::db::connect(&database, &schema)
        .await
        .expect("PostgreSQL is reachable");
    for ddl in [
        OUTBOX_TABLE_DDL,
        PROCESSED_EVENTS_DDL,
        PROCESSED_EVENTS_AGE_INDEX_DDL,
    ] {
        sqlx::raw_sql(ddl)
            .execute(&pool)
            .await
            .expect("the table is created");
    }
    (pool, url, schema)
}

async fn outbox_row(pool: &PgPool, published_hours_ago: Option<i32>, created_hours_ago: i32) {
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, message_key, payload, created_at, published_at) \
         VALUES ($1, 't', 'k', '\\x00', now() - make_interval(hours => $2), \
                 now() - make_interval(hours => $3))",
    )
    .bind(Uuid::new_v4())
    .bind(created_hours_ago)
    .bind(published_hours_ago)
    .execute(pool)
    .await
    .expect("outbox row inserted");
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn the_relay_deletes_published_rows_past_retention_and_never_unpublished_ones() {
    let (pool, url, schema) = schema().await;
    // Oldest first, as the outbox fills: published two days ago, an
    // unpublished one as old (a message that keeps failing), then rows
    // published within the retention.
    for _ in 0..3 {
        outbox_row(&pool, Some(48), 48).await;
    }
    outbox_row(&pool, None, 48).await;
    for _ in 0..2 {
        outbox_row(&pool, Some(1), 1).await;
    }
    // Never used: pruning is SQL only.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
        .create()
        .expect("a producer is created without connecting");
    let relay = OutboxRelay::new(
        pool.clone(),
        producer,
        OutboxConfig {
            retention_hours: 24,
            ..OutboxConfig::default()
        },
    );

    assert_eq!(relay.prune_published().await.unwrap(), 3);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        1,
        "the unpublished row stays, however old"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"
        )
        .await,
        2,
        "rows within the retention stay"
    );
    assert_eq!(
        relay.prune_published().await.unwrap(),
        0,
        "nothing left to prune"
    );

    pool.close().await;
    switch_platform::db::drop_schema(&url, &schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_relay_prunes_more_rows_than_one_statement_deletes() {
    let (pool, url, schema) = schema().await;
    let rows = switch_platform::db::PRUNE_BATCH * 2 + 7;
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, message_key, payload, created_at, published_at) \
         SELECT gen_random_uuid(), 't', 'k', '\\x00', now() - interval '3 days', \
                now() - interval '3 days' FROM generate_series(1, $1)",
    )
    .bind(rows)
    .execute(&pool)
    .await
    .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
        .create()
        .unwrap();
    let relay = OutboxRelay::new(pool.clone(), producer, OutboxConfig::default());

    assert_eq!(relay.prune_published().await.unwrap(), rows as u64);
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 0);

    pool.close().await;
    switch_platform::db::drop_schema(&url, &schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_consumer_forgets_only_its_own_event_ids_past_retention() {
    let (pool, url, schema) = schema().await;
    let record = |consumer: &'static str, hours_ago: i32| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO processed_events (consumer, event_id, processed_at) \
                 VALUES ($1, $2, now() - make_interval(hours => $3))",
            )
            .bind(consumer)
            .bind(Uuid::new_v4())
            .bind(hours_ago)
            .execute(&pool)
            .await
            .expect("id recorded");
        }
    };
    for _ in 0..3 {
        record("ledger", 200).await;
    }
    for _ in 0..2 {
        record("ledger", 100).await;
    }
    for _ in 0..4 {
        record("tracker", 200).await;
    }

    assert_eq!(prune_processed(&pool, "ledger", 192).await.unwrap(), 3);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM processed_events WHERE consumer = 'ledger'"
        )
        .await,
        2,
        "ids within the retention stay"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM processed_events WHERE consumer = 'tracker'"
        )
        .await,
        4,
        "another consumer's ids are its own business"
    );

    pool.close().await;
    switch_platform::db::drop_schema(&url, &schema)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_backlog_counts_unpublished_rows_and_the_oldest_ones_age() {
    let (pool, url, schema) = schema().await;
    // Never used: the backlog is SQL only.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
        .create()
        .unwrap();
    let relay = OutboxRelay::new(pool.clone(), producer, OutboxConfig::default());
    assert_eq!(
        relay.backlog().await.unwrap(),
        switch_platform::outbox::OutboxBacklog {
            rows: 0,
            oldest_ms: 0
        },
        "an empty outbox"
    );
    // Published rows, however many and old, are not backlog.
    for _ in 0..3 {
        outbox_row(&pool, Some(1), 48).await;
    }
    // Unpublished: one committed two hours ago, two just now.
    outbox_row(&pool, None, 2).await;
    outbox_row(&pool, None, 0).await;
    outbox_row(&pool, None, 0).await;
    let backlog = relay.backlog().await.unwrap();
    assert_eq!(backlog.rows, 3);
    let two_hours_ms = 2 * 3_600_000;
    assert!(
        (two_hours_ms..two_hours_ms + 60_000).contains(&backlog.oldest_ms),
        "the oldest waited two hours: {backlog:?}"
    );

    pool.close().await;
    switch_platform::db::drop_schema(&url, &schema)
        .await
        .unwrap();
}
