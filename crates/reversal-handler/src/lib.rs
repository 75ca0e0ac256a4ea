//! The reversal handler: finds orphaned approvals and has them reversed or
//! confirmed.
//!
//! It follows authorization's events into a table of its own (`approvals`):
//! every approval is watched until its merchant's acknowledgement deadline,
//! an issuer timeout is owed a reversal at once, an orphan found by a
//! terminal's batch upload (announced by the settlement batcher) is decided
//! at once, and a final decision announced by authorization (confirmation
//! by evidence, a reversal already requested) closes the watch. A sweeper
//! finds approvals still open at their deadline, and asks authorization,
//! the single writer of authorization state, to `Reverse` or `Confirm`
//! them, repeating the question with backoff until authorization accepts or
//! refuses. Once authorization has accepted a reversal it owns repeating it
//! to the issuer.
//!
//! Every one of those rules is [`switch_core::watch::decide`]: the consumer
//! and the sweeper lock a watch's row, load it, decide with `now` from one
//! [`switch_core::Clock`], and persist the next state and carry out the
//! effects; SQL only serializes them (row locks, `SKIP LOCKED`, conflict
//! guards) and binds that `now` wherever it asks what is due.

mod config;
mod metrics;
mod outcome;
mod store;
mod sweeper;
mod tracker;

use switch_platform::consumer;
use switch_platform::db::DatabaseConfig;
use switch_platform::internal_tls::InternalTlsConfig;
use switch_platform::kafka::{KafkaConfig, topics};
use switch_platform::service::GrpcServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{MAX_ACK_WINDOW_MS, MAX_RETRY_DELAY_MS, MerchantPolicy, ReversalHandlerConfig};
pub use store::{
    ApprovalFacts, CLAIM_LIMIT, Claimed, Swept, apply, apply_many, apply_now, claim_due, overdue,
    sweep_claimed, take_due,
};
pub use sweeper::{CALL_TIMEOUT, LEASE, SweepReport, Sweeper};
pub use switch_platform::service::ServeError;
pub use tracker::ApprovalTracker;

/// Name of the service: its schema, its consumer's default group, its
/// OpenTelemetry service name.
pub const SERVICE_NAME: &str = "reversal-handler";

/// The service's schema migrations, for tests that set the schema up
/// without serving.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Runs the reversal handler on `listener` until `shutdown` resolves:
/// migrates its schema, ensures the topic it reads, starts the event
/// consumer and the sweeper, and serves gRPC health and reflection. Health
/// says `NOT_SERVING` until the consumer has joined its group. On shutdown
/// it stops the consumer and the sweeper and waits for them.
pub async fn serve(
    database: &DatabaseConfig,
    kafka: &KafkaConfig,
    internal_tls: &InternalTlsConfig,
    config: &ReversalHandlerConfig,
    listener: TcpListener,
    shutdown: impl Into<switch_platform::shutdown::Shutdown>,
) -> Result<(), ServeError> {
    config.validate()?;
    internal_tls.validate_for(SERVICE_NAME)?;
    internal_tls.check_endpoint(
        "reversal_handler.authorization_endpoint",
        &config.authorization_endpoint,
    )?;
    let pool = switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME)).await?;
    MIGRATOR.run(&pool).await?;
    kafka
        .ensure_topics(&[topics::AUTHORIZATION_EVENTS, topics::SETTLEMENT_EVENTS])
        .await?;
    let clock = switch_core::SystemClock::shared();
    let sweeper = Sweeper::new(pool.clone(), config.clone(), internal_tls, clock.clone())?;

    let stop = CancellationToken::new();
    let membership = consumer::GroupMembership::default();
    let consumer_task = tokio::spawn(run_consumer(
        pool,
        kafka.clone(),
        config.clone(),
        membership.clone(),
        stop.clone(),
        clock,
    ));
    let sweeper_task = tokio::spawn(sweeper.run(stop.clone()));

    // Ready once the consumer has joined its group (which takes seconds):
    // until then no approval is watched, and a rolling update must not
    // retire the replica this one replaces.
    let result = GrpcServer::new(SERVICE_NAME)?
        .internal(SERVICE_NAME, internal_tls)
        .ready_when(async move { membership.joined().await })
        .serve(listener, shutdown)
        .await;
    stop.cancel();
    let _ = consumer_task.await;
    let _ = sweeper_task.await;
    tracing::info!("Reversal handler stopped.");
    result
}

/// The reversal handler's consumer without Kafka, for an operator's replay
/// of its dead-lettered events (`switchd admin dead-letters`): its schema
/// migrated, its group, and the handler that writes only the `approvals`
/// of that schema (the calls to authorization are the sweeper's, which
/// the running service does).
pub async fn offline_consumer(
    database: &DatabaseConfig,
    config: &ReversalHandlerConfig,
) -> Result<consumer::OfflineConsumer, ServeError> {
    config.validate()?;
    let pool = switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME)).await?;
    MIGRATOR.run(&pool).await?;
    Ok(consumer::OfflineConsumer {
        pool,
        consumer: config.consumer_group.clone(),
        handler: Box::new(ApprovalTracker::new(
            config.clone(),
            switch_core::SystemClock::shared(),
        )),
    })
}

/// Consumes authorization's and the settlement batcher's events until
/// `stop`.
async fn run_consumer(
    pool: sqlx::PgPool,
    kafka: KafkaConfig,
    config: ReversalHandlerConfig,
    membership: consumer::GroupMembership,
    stop: CancellationToken,
    clock: switch_core::SharedClock,
) {
    let group = config.consumer_group.clone();
    let tracker = ApprovalTracker::new(config, clock);
    let topics = [topics::AUTHORIZATION_EVENTS, topics::SETTLEMENT_EVENTS];
    consumer::run_until_stopped(
        pool,
        &kafka,
        &group,
        &topics,
        &tracker,
        Some(&membership),
        stop,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_named_after_the_service() {
        assert_eq!(
            DatabaseConfig::default().schema_for(SERVICE_NAME),
            "reversal_handler"
        );
    }

    #[test]
    fn migrations_create_the_consumer_table_exactly() {
        let migration = include_str!("../migrations/0001_approvals.sql");
        assert!(migration.contains(consumer::PROCESSED_EVENTS_DDL));
        let dead_letters = include_str!("../migrations/0003_dead_letter_events.sql");
        assert!(dead_letters.contains(consumer::DEAD_LETTER_EVENTS_DDL));
        let replays = include_str!("../migrations/0004_dead_letter_replays.sql");
        assert!(replays.contains(consumer::DEAD_LETTER_REPLAYS_DDL));
        let age_index = include_str!("../migrations/0002_processed_events_by_age.sql");
        assert!(age_index.contains(consumer::PROCESSED_EVENTS_AGE_INDEX_DDL));
    }
}
