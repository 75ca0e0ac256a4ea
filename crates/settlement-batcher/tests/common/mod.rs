//! What the settlement batcher's integration tests share: a migrated
//! schema of their own on the real PostgreSQL, and events as they arrive
//! from Kafka.

use prost::Message as _;
use sqlx::PgPool;
use switch_platform::db::DatabaseConfig;
use switch_proto::v1::{EventEnvelope, event_envelope::Payload};
use uuid::Uuid;

/// A fresh, migrated schema: its pool, the database URL and the schema's
/// name (for `drop_schema` at the end).
pub async fn fresh_schema() -> (PgPool, String, String) {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let id = Uuid::new_v4().simple().to_string();
    let database = DatabaseConfig {
        url: url.clone(),
        schema_prefix: format!("s{}_", &id[..10]),
        max_connections: 2,
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(settlement_batcher::SERVICE_NAME);
    let pool = switch_platform::db::connect(&database, &schema)
        .await
        .expect("PostgreSQL is reachable");
    settlement_batcher::MIGRATOR
        .run(&pool)
        .await
        .expect("migrations apply");
    (pool, url, schema)
}

/// An event of `transaction_id` that occurred at `occurred_at` (unix
/// seconds), encoded and decoded again as the consumer receives it.
pub fn event(transaction_id: &str, occurred_at: i64, payload: Payload) -> EventEnvelope {
    EventEnvelope::decode(
        EventEnvelope {
            event_id: Uuid::new_v4().to_string(),
            event_type: "test".into(),
            transaction_id: transaction_id.to_owned(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: occurred_at,
                nanos: 0,
            }),
            payload: Some(payload),
            ..EventEnvelope::default()
        }
        .encode_to_vec()
        .as_slice(),
    )
    .expect("an envelope decodes")
}
