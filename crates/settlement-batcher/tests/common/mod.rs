//! What the settlement batcher's integration tests share: a migrated
//! schema of their own on the real PostgreSQL.

use sqlx::PgPool;
use switch_platform::db::DatabaseConfig;
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
