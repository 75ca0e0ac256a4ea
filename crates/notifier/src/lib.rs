//! The notifier: tells merchants the final outcome of their payments and
//! their payouts, by signed webhooks, within seconds.
//!
//! It owns its own schema (`notifier`): merchants' webhook **endpoints**
//! with their signing secrets, and the **deliveries** owed to them. It
//! reads outcome events from `authorization-events` and
//! `settlement-events` and decides which become webhooks
//! ([`webhook`]: an orphan confirmed, a reversal, a conflict, a payout),
//! recording one delivery per endpoint of the merchant in the consumer's
//! exactly-once transaction. A worker then POSTs each delivery, signed
//! ([`signature`]), retries failures with exponential backoff and jitter,
//! and dead-letters it after its last attempt; every state is in
//! PostgreSQL, so retries survive restarts and replicas share the work.
//! Each merchant's endpoints get a few slots of their own, so a slow or
//! dead merchant never delays the others. `NotifierService` (gRPC) lists
//! and redelivers dead letters and registers endpoints.
//!
//! The same events tell **terminals** what to do with a receipt
//! ([`terminal`]: reprint it for an orphan confirmed by policy, void it
//! after a reversal or a conflict). Those messages are queued in the
//! notifier's outbox in the consumer's transaction and relayed to the
//! `terminal-messages` topic, keyed by terminal id; the terminal gateway
//! keeps each until the terminal acknowledges it and pushes it to the
//! terminal's `Subscribe` stream.
//!
//! # The webhook a merchant receives
//!
//! ```text
//! POST <endpoint url>
//! Content-Type: application/json
//! Switch-Event-Id: 0193a5d4-…            (idempotency key: the same for every retry)
//! Switch-Signature: t=1764000000,v1=5f2c…
//!
//! {"id":"0193a5d4-…","type":"payment.reversed","created_at":"2026-11-24T16:00:00Z",
//!  "merchant_id":"MERCHANT0000001","data":{…}}
//! ```
//!
//! Any 2xx answer within the request timeout acknowledges it; anything
//! else is retried. Delivery is at least once, and order is not
//! guaranteed.
//!
//! # Verifying a webhook
//!
//! 1. Read the raw request body as bytes, before any JSON parsing.
//! 2. Split `Switch-Signature` on `,` into `key=value` pairs; take `t` (unix
//!    seconds) and every `v1` (hex). Ignore other keys.
//! 3. Compute `HMAC-SHA256(secret, "<t>.<raw body>")` with the endpoint's
//!    secret (the whole `whsec_…` string as UTF-8 bytes), hex-encode it,
//!    and compare it with each `v1` in constant time. No match: reject.
//! 4. Reject if `|now − t| > 300` seconds (a replayed capture).
//! 5. Deduplicate on `Switch-Event-Id`: a delivery may arrive more than
//!    once; process each event id once, and answer 2xx to a repeat.
//!
//! [`signature::verify`] does steps 2–4.

mod admin;
mod config;
mod metrics;
mod planner;
mod resolver;
pub mod signature;
mod store;
pub mod terminal;
pub mod webhook;
mod worker;

use std::sync::Arc;

use switch_platform::consumer;
use switch_platform::db::DatabaseConfig;
use switch_platform::internal_tls::InternalTlsConfig;
use switch_platform::kafka::{KafkaConfig, topics};
use switch_platform::outbox::OutboxRelay;
use switch_platform::service::GrpcServer;
use switch_proto::v1::notifier_service_server::NotifierServiceServer;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use admin::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, NotifierAdmin, generate_secret};
pub use config::{
    EndpointConfig, MAX_ATTEMPTS, MAX_REQUEST_TIMEOUT_MS, MAX_RETRY_DELAY_MS, MIN_SECRET_LEN,
    NotifierConfig, RetryConfig, WebhookDestinations, validate_url,
};
pub use planner::{DeliveryPlanner, TERMINAL_MESSAGE_EVENT_TYPE};
pub use store::{
    Attempt, Claimed, Endpoint, FailedDelivery, NextState, RedeliverError, RedeliverTarget,
    claim_due, insert_deliveries, list_failed, next_due_in, record_attempts, redeliver, release,
    seed_endpoints,
};
pub use switch_platform::service::ServeError;
pub use worker::{Worker, after_failure, backoff, http_client, listen};

/// Name of the service: its schema, its consumer's default group, its
/// OpenTelemetry service name.
pub const SERVICE_NAME: &str = "notifier";

/// The topics whose events can become webhooks.
pub const TOPICS: [&str; 2] = [topics::AUTHORIZATION_EVENTS, topics::SETTLEMENT_EVENTS];

/// The topic terminal messages are published on.
pub const TERMINAL_TOPIC: &str = topics::TERMINAL_MESSAGES;

/// The service's schema migrations, for tests that set the schema up
/// without serving.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connections of the delivery worker's own pool: one for claims, one for
/// the recorder, one spare.
const WORKER_CONNECTIONS: u32 = 3;

/// The `LISTEN`/`NOTIFY` channel on which writers of due deliveries wake
/// the workers of one deployment: its schema's name, so deployments (and
/// test runs) sharing a database never wake each other.
pub fn wake_channel(database: &DatabaseConfig) -> String {
    database.schema_for(SERVICE_NAME)
}

/// The `LISTEN`/`NOTIFY` channel on which the consumer wakes the outbox
/// relay when it queued terminal messages (delivered at commit, so the
/// relay never looks before the rows are visible).
pub fn outbox_channel(database: &DatabaseConfig) -> String {
    format!("{}_outbox", database.schema_for(SERVICE_NAME))
}

/// The delivery worker's own small pool on the same schema, whose
/// transactions commit without waiting for the WAL flush
/// (`synchronous_commit = off`). Its writes are claims (leases) and attempt
/// results, and losing the last few of them in a PostgreSQL crash only
/// sends a webhook again, which delivery at least once allows and
/// `Switch-Event-Id` lets merchants recognise; waiting for a flush on each
/// would cap deliveries at the disk's commit rate. What must be durable,
/// the deliveries owed by an event, is written by the consumer through the
/// service's ordinary pool.
pub async fn worker_pool(pool: &sqlx::PgPool) -> Result<sqlx::PgPool, sqlx::Error> {
    let options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(WORKER_CONNECTIONS)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_with(options)
        .await
}

/// Runs the notifier on `listener` until `shutdown` resolves: migrates its
/// schema, seeds the configured endpoints, ensures the topics it reads and
/// writes, starts the event consumer, the delivery worker and its wake-up
/// listener, the outbox relay of terminal messages and its wake-up
/// listener, and serves `NotifierService` with health and reflection. On
/// shutdown it stops them and waits for them; the worker lets requests in
/// flight finish within the drain's grace period and gives the rest back.
pub async fn serve(
    database: &DatabaseConfig,
    kafka: &KafkaConfig,
    internal_tls: &InternalTlsConfig,
    config: &NotifierConfig,
    listener: TcpListener,
    shutdown: impl Into<switch_platform::shutdown::Shutdown>,
) -> Result<(), ServeError> {
    config.validate()?;
    internal_tls.validate_for(SERVICE_NAME)?;
    let shutdown = shutdown.into();
    let pool = switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME)).await?;
    MIGRATOR.run(&pool).await?;
    seed_endpoints(&pool, &config.endpoints).await?;
    kafka
        .ensure_topics(&[TOPICS[0], TOPICS[1], TERMINAL_TOPIC])
        .await?;
    let channel = wake_channel(database);
    let wake = Arc::new(Notify::new());
    let clock = switch_core::SystemClock::shared();
    let worker = Worker::new(
        worker_pool(&pool).await?,
        config.clone(),
        wake.clone(),
        clock.clone(),
    )
    .map_err(|error| ServeError::Start {
        what: "http client",
        reason: error.to_string(),
    })?
    .shutdown_grace(shutdown.timing.grace_period);
    let relay = OutboxRelay::new(pool.clone(), kafka.producer()?, config.outbox.clone());
    let planner = DeliveryPlanner::new(
        channel.clone(),
        kafka.topic(TERMINAL_TOPIC),
        outbox_channel(database),
        clock.clone(),
    );

    let stop = CancellationToken::new();
    let listener_task = tokio::spawn(listen(pool.clone(), channel.clone(), wake, stop.clone()));
    let worker_task = tokio::spawn(worker.run(stop.clone()));
    let relay_task = tokio::spawn(relay.clone().run(stop.clone().cancelled_owned()));
    // The consumer's commits that queued terminal messages wake the relay.
    let relay_listener_task = tokio::spawn({
        let (pool, channel, stop) = (pool.clone(), outbox_channel(database), stop.clone());
        async move {
            switch_platform::db::listen(pool, channel, stop, || relay.wake(), |_| relay.wake())
                .await;
        }
    });
    let consumer_task = tokio::spawn(run_consumer(
        pool.clone(),
        kafka.clone(),
        config.consumer_group.clone(),
        planner,
        stop.clone(),
    ));

    tracing::info!(endpoints = config.endpoints.len(), "Notifier starting.");
    let result = GrpcServer::new(SERVICE_NAME)?
        .internal(SERVICE_NAME, internal_tls)
        .add_service(NotifierServiceServer::new(NotifierAdmin::new(
            pool,
            config.destinations(),
            channel,
            clock,
        )))
        .serve(listener, shutdown)
        .await;
    stop.cancel();
    let _ = consumer_task.await;
    let _ = worker_task.await;
    let _ = listener_task.await;
    let _ = relay_listener_task.await;
    // Last: the relay publishes what the consumer queued before it stopped.
    let _ = relay_task.await;
    tracing::info!("Notifier stopped.");
    result
}

/// The notifier's consumer without Kafka, for an operator's replay of its
/// dead-lettered events (`switchd admin dead-letters`): its schema
/// migrated, its group, and the planner, which writes only that schema
/// (deliveries, and terminal messages in its outbox) and wakes the running
/// notifier's worker and relay through their channels.
pub async fn offline_consumer(
    database: &DatabaseConfig,
    kafka: &KafkaConfig,
    config: &NotifierConfig,
) -> Result<consumer::OfflineConsumer, ServeError> {
    config.validate()?;
    let pool = switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME)).await?;
    MIGRATOR.run(&pool).await?;
    let planner = DeliveryPlanner::new(
        wake_channel(database),
        kafka.topic(TERMINAL_TOPIC),
        outbox_channel(database),
        switch_core::SystemClock::shared(),
    );
    Ok(consumer::OfflineConsumer {
        pool,
        consumer: config.consumer_group.clone(),
        handler: Box::new(planner),
    })
}

/// Consumes the outcome topics until `stop`.
async fn run_consumer(
    pool: sqlx::PgPool,
    kafka: KafkaConfig,
    group: String,
    planner: DeliveryPlanner,
    stop: CancellationToken,
) {
    consumer::run_until_stopped(pool, &kafka, &group, &TOPICS, &planner, None, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_and_wake_channel_are_named_after_the_service() {
        assert_eq!(
            DatabaseConfig::default().schema_for(SERVICE_NAME),
            "notifier"
        );
        let prefixed = DatabaseConfig {
            schema_prefix: "t1_".into(),
            ..DatabaseConfig::default()
        };
        assert_eq!(wake_channel(&prefixed), "t1_notifier");
        assert_eq!(outbox_channel(&prefixed), "t1_notifier_outbox");
    }

    #[test]
    fn reflection_describes_the_notifier_service() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(switch_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let service = set
            .file
            .iter()
            .flat_map(|file| &file.service)
            .find(|service| service.name() == "NotifierService")
            .expect("notifier.proto is in the descriptor set");
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        assert_eq!(
            methods,
            ["ListFailedDeliveries", "Redeliver", "RegisterEndpoint"]
        );
    }

    #[test]
    fn migrations_create_the_consumer_table_exactly() {
        let migration = include_str!("../migrations/0001_notifier.sql");
        assert!(migration.contains(consumer::PROCESSED_EVENTS_DDL));
        let dead_letters = include_str!("../migrations/0004_dead_letter_events.sql");
        assert!(dead_letters.contains(consumer::DEAD_LETTER_EVENTS_DDL));
        let replays = include_str!("../migrations/0005_dead_letter_replays.sql");
        assert!(replays.contains(consumer::DEAD_LETTER_REPLAYS_DDL));
        let age_index = include_str!("../migrations/0003_processed_events_by_age.sql");
        assert!(age_index.contains(consumer::PROCESSED_EVENTS_AGE_INDEX_DDL));
    }

    #[test]
    fn migrations_create_the_outbox_table_exactly() {
        let migration = include_str!("../migrations/0002_terminal_messages.sql");
        assert!(migration.contains(switch_platform::outbox::OUTBOX_TABLE_DDL));
    }
}
