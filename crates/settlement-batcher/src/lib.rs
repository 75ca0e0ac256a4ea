//! The settlement batcher: makes sure every confirmed approval is paid to
//! its merchant exactly once, nothing reversed is paid, and a merchant can
//! ask where any payment is (scenario S5).
//!
//! It owns four things:
//! - **the ledger of approvals** it follows from authorization's events
//!   (and, for a batch upload that outruns them, from authorization
//!   directly);
//! - **terminal batches**: a close compares the terminal's totals with the
//!   host's; an upload reconciles sale by sale, confirming what the
//!   terminal completed through authorization's evidence path, handing
//!   orphans to the reversal handler at once (`settlement.batch_orphan_found`)
//!   and flagging conflicts, which are never paid;
//! - **settlement windows** per merchant, closed at its cut-off: confirmed
//!   approvals (card sales, and QR payments from the `qr.*` events) are
//!   paid net of the merchant discount rate of their channel and of the
//!   merchant's refunds of earlier QR payments, unresolved ones are held
//!   and carried over, with the reason;
//! - **payout files** (CSV and ISO 20022 pain.001) and the events that
//!   announce closed windows and payouts;
//! - **ledger rejections**: approvals whose terminal key another
//!   transaction holds, followed while open and resolved once by an
//!   operator (dismissed, or admitted into the ledger).
//!
//! The rules (totals, reconciliation outcomes, the ledger's status order
//! and eligibility, when a window is due, fees and their rounding) are pure
//! code in `switch_core::settlement`; this crate locks rows, calls the
//! decisions and persists them. Time comes from one `SharedClock`.

mod batch;
mod config;
mod events;
mod ingest;
mod metrics;
mod rejections;
mod service;
mod store;
mod windows;

use std::time::Duration;

use switch_platform::consumer;
use switch_platform::db::DatabaseConfig;
use switch_platform::internal_tls::InternalTlsConfig;
use switch_platform::kafka::{KafkaConfig, topics};
use switch_platform::outbox::OutboxRelay;
use switch_platform::service::GrpcServer;
use switch_proto::v1::settlement_service_server::SettlementServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use batch::{RESPONSE_BALANCED, RESPONSE_OUT_OF_BALANCE};
pub use config::{MerchantSettlement, MerchantTerms, SettlementConfig};
pub use ingest::ApprovalLedger;
pub use rejections::LedgerRejections;
pub use switch_platform::service::ServeError;
pub use windows::{RunReport, SettleError, Settler, payout_reference};

/// Name of the service: its schema, its consumer's default group, its
/// OpenTelemetry service name.
pub const SERVICE_NAME: &str = "settlement-batcher";

/// The service's schema migrations, for tests and benchmarks that set the
/// schema up without serving.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A settler over an already migrated pool, for benchmarks and tests that
/// close windows without serving, on `clock`. Its outbox is relayed by
/// whoever runs the relay for that schema (none in a benchmark: events stay
/// queued).
pub fn settler(
    pool: sqlx::PgPool,
    kafka: &KafkaConfig,
    config: &SettlementConfig,
    clock: switch_core::SharedClock,
) -> Result<Settler, ServeError> {
    let relay = OutboxRelay::new(pool.clone(), kafka.producer()?, config.outbox.clone());
    Ok(Settler::new(
        pool,
        config.clone(),
        kafka.topic(topics::SETTLEMENT_EVENTS),
        relay,
        metrics::Metrics::new(),
        clock,
    ))
}

/// Runs the settlement batcher on `listener` until `shutdown` resolves:
/// migrates its schema, ensures its topics, starts the event consumer, the
/// outbox relay and the cut-off scheduler, and serves `SettlementService`
/// with health and reflection.
pub async fn serve(
    database: &DatabaseConfig,
    kafka: &KafkaConfig,
    internal_tls: &InternalTlsConfig,
    config: &SettlementConfig,
    listener: TcpListener,
    shutdown: impl Into<switch_platform::shutdown::Shutdown>,
) -> Result<(), ServeError> {
    config.validate()?;
    internal_tls.validate_for(SERVICE_NAME)?;
    internal_tls.check_endpoint(
        "settlement.authorization_endpoint",
        &config.authorization_endpoint,
    )?;
    let clock = switch_core::SystemClock::shared();
    let pool = switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME)).await?;
    MIGRATOR.run(&pool).await?;
    kafka
        .ensure_topics(&[topics::AUTHORIZATION_EVENTS, topics::SETTLEMENT_EVENTS])
        .await?;
    let metrics = metrics::Metrics::new();
    let topic = kafka.topic(topics::SETTLEMENT_EVENTS);
    let relay = OutboxRelay::new(pool.clone(), kafka.producer()?, config.outbox.clone());
    let batcher = batch::Batcher::new(
        pool.clone(),
        &config.authorization_endpoint,
        internal_tls,
        topic.clone(),
        relay.clone(),
        metrics.clone(),
        clock.clone(),
    )?;
    let settler = Settler::new(
        pool.clone(),
        config.clone(),
        topic,
        relay.clone(),
        metrics.clone(),
        clock.clone(),
    );

    let stop = CancellationToken::new();
    let relay_task = tokio::spawn(relay.run(stop.clone().cancelled_owned()));
    let consumer_task = tokio::spawn(run_consumer(
        pool.clone(),
        kafka.clone(),
        config.consumer_group.clone(),
        metrics.clone(),
        clock.clone(),
        stop.clone(),
    ));
    let scheduler_task = tokio::spawn(run_scheduler(settler.clone(), config.clone(), stop.clone()));

    let rejections = LedgerRejections::new(
        pool.clone(),
        &config.authorization_endpoint,
        internal_tls,
        clock,
    )?;
    if let Err(error) = rejections.report_open().await {
        tracing::warn!(%error, "Open ledger rejections could not be counted.");
    }
    let api = service::SettlementApi {
        pool,
        batcher,
        settler,
        rejections,
    };
    let result = GrpcServer::new(SERVICE_NAME)?
        .internal(SERVICE_NAME, internal_tls)
        .add_service(SettlementServiceServer::new(api))
        .serve(listener, shutdown)
        .await;
    stop.cancel();
    let _ = consumer_task.await;
    let _ = scheduler_task.await;
    let _ = relay_task.await;
    tracing::info!("Settlement batcher stopped.");
    result
}

/// The settlement batcher's consumer without Kafka, for an operator's
/// replay of its dead-lettered events (`switchd admin dead-letters`): its
/// schema migrated, its group, and the ledger's handler, which writes only
/// that schema.
pub async fn offline_consumer(
    database: &DatabaseConfig,
    config: &SettlementConfig,
) -> Result<consumer::OfflineConsumer, ServeError> {
    config.validate()?;
    let pool = switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME)).await?;
    MIGRATOR.run(&pool).await?;
    Ok(consumer::OfflineConsumer {
        pool,
        consumer: config.consumer_group.clone(),
        handler: Box::new(ingest::ApprovalLedger::default()),
    })
}

/// Consumes authorization's events until `stop`.
async fn run_consumer(
    pool: sqlx::PgPool,
    kafka: KafkaConfig,
    group: String,
    metrics: metrics::Metrics,
    clock: switch_core::SharedClock,
    stop: CancellationToken,
) {
    let ledger = ingest::ApprovalLedger::new(metrics, clock);
    let topics = [topics::AUTHORIZATION_EVENTS];
    consumer::run_until_stopped(pool, &kafka, &group, &topics, &ledger, None, stop).await;
}

/// Settles runs an earlier crash left half done, then closes windows as
/// their cut-offs pass (when enabled).
async fn run_scheduler(settler: Settler, config: SettlementConfig, stop: CancellationToken) {
    let interval = Duration::from_millis(config.scheduler_interval_ms);
    loop {
        if let Err(error) = settler.settle_pending().await {
            tracing::error!(%error, "Settling interrupted runs failed; retrying.");
        }
        if config.scheduler_enabled {
            match settler.due(settler.now()).await {
                Ok(due) => {
                    for (cutoff, merchants) in due {
                        if let Err(error) = settler.run(&merchants, cutoff).await {
                            tracing::error!(%error, %cutoff, "Scheduled settlement failed; retrying.");
                        }
                    }
                }
                Err(error) => tracing::error!(%error, "Looking for due windows failed."),
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_named_after_the_service() {
        assert_eq!(
            DatabaseConfig::default().schema_for(SERVICE_NAME),
            "settlement_batcher"
        );
    }

    #[test]
    fn migrations_create_the_platform_tables_exactly() {
        let migration = include_str!("../migrations/0001_settlement.sql");
        assert!(migration.contains(consumer::PROCESSED_EVENTS_DDL));
        let dead_letters = include_str!("../migrations/0005_dead_letter_events.sql");
        assert!(dead_letters.contains(consumer::DEAD_LETTER_EVENTS_DDL));
        let replays = include_str!("../migrations/0007_dead_letter_replays.sql");
        assert!(replays.contains(consumer::DEAD_LETTER_REPLAYS_DDL));
        let age_index = include_str!("../migrations/0003_processed_events_by_age.sql");
        assert!(age_index.contains(consumer::PROCESSED_EVENTS_AGE_INDEX_DDL));
        assert!(migration.contains(switch_platform::outbox::OUTBOX_TABLE_DDL));
    }
}
