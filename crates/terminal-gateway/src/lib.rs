//! The terminal-facing edge of the switch.
//!
//! Terminals speak gRPC over mutual TLS. The client certificate *is* the
//! terminal's identity: its subject CN is the terminal id and its OU the
//! merchant id, both issued by the acquirer. A request that names another
//! terminal is refused with `PERMISSION_DENIED`; a connection without a
//! certificate from the terminal CA never completes its handshake. The
//! merchant id sent to authorization comes from the certificate, never from
//! the request, so a terminal cannot charge on another merchant's behalf.
//!
//! Batch close and upload go to the settlement batcher with the same
//! identity rule.
//!
//! Terminals that speak ISO 8583 reach the same forwarding through the
//! listeners of [`iso`] (`iso_listeners`): TLS with the same client
//! certificates, one profile per listener, and the messages mapped to the
//! gRPC calls they stand for, so both edges produce the same journal rows
//! and events.
//!
//! Sales keep no state here: duplicate detection is authoritative in the
//! authorization journal (see `docs/adr/0003-duplicate-detection.md`).
//!
//! The one thing the gateway keeps is the **terminal backlog** ([`push`]):
//! messages from the notifier ("reprint the receipt", "void the receipt"),
//! consumed from the `terminal-messages` topic into the gateway's own schema
//! (`terminal_gateway`) until the terminal acknowledges them. A terminal
//! opens `Subscribe` (server streaming, identified by its certificate like
//! every call) and receives its unacknowledged messages in order, then new
//! ones as they arrive; `AcknowledgeMessage` retires one for good. The
//! backlog is shared by the replicas (one consumer group, one schema, and
//! `pg_notify` to wake whichever replica holds the terminal's stream), so
//! replicas can still be added and removed freely.

mod identity;
pub mod iso;
mod metrics;
pub mod push;
mod service;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switch_platform::config::ConfigError;
use switch_platform::consumer;
use switch_platform::db::DatabaseConfig;
use switch_platform::grpc::TlsFiles;
use switch_platform::kafka::{KafkaConfig, topics};
use switch_platform::service::{GrpcServer, ServerLimits};
use switch_proto::v1::terminal_service_server::TerminalServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use identity::TerminalIdentity;
pub use iso::{IsoListenerConfig, IsoProfile};
pub use switch_platform::service::ServeError;

/// Name of the service: its schema, its consumer group, its OpenTelemetry
/// service name.
pub const SERVICE_NAME: &str = "terminal-gateway";

/// The consumer group of `terminal-messages`; replicas share it.
pub const CONSUMER_GROUP: &str = SERVICE_NAME;

/// The service's schema migrations, for tests that set the schema up
/// without serving.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The `LISTEN`/`NOTIFY` channel on which the gateways of one deployment
/// announce a stored message (payload: its terminal id); named after the
/// schema, so deployments sharing a database never wake each other.
pub fn message_channel(database: &DatabaseConfig) -> String {
    format!("{}_terminal_messages", database.schema_for(SERVICE_NAME))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Server certificate and the terminal CA; client certificates are
    /// always required.
    pub tls: TlsFiles,
    pub authorization_endpoint: String,
    /// URL of the settlement batcher's `SettlementService` (batch close and
    /// upload).
    pub settlement_endpoint: String,
    /// Upper bound on one call to authorization; keep it above the issuer
    /// timeout so the terminal hears the switch's answer, not a deadline.
    pub authorization_timeout_ms: u64,
    /// How often the gateway pings each terminal's connection over HTTP/2.
    /// A `Subscribe` stream can sit idle for hours: the pings keep NATs and
    /// load balancers from dropping it silently, and reveal a terminal
    /// that vanished without closing, whose stream then ends.
    pub keepalive_interval_ms: u64,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout_ms: u64,
    /// ISO 8583 listeners beside the gRPC one ([`iso`]); none by default.
    pub iso_listeners: Vec<IsoListenerConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            tls: TlsFiles {
                cert_path: PathBuf::from(".run/certs/server.pem"),
                key_path: PathBuf::from(".run/certs/server.key"),
                client_ca_path: Some(PathBuf::from(".run/certs/ca.pem")),
            },
            authorization_endpoint: "http://127.0.0.1:50052".into(),
            settlement_endpoint: "http://127.0.0.1:50054".into(),
            authorization_timeout_ms: 5_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            iso_listeners: Vec::new(),
        }
    }
}

impl GatewayConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls.client_ca_path.is_none() {
            return Err(ConfigError::invalid(
                "gateway.tls.client_ca_path",
                "terminals are identified by client certificates; the CA is required",
            ));
        }
        self.tls.validate("gateway.tls")?;
        if tonic::transport::Endpoint::from_shared(self.authorization_endpoint.clone()).is_err() {
            return Err(ConfigError::invalid(
                "gateway.authorization_endpoint",
                "not a valid URL",
            ));
        }
        if tonic::transport::Endpoint::from_shared(self.settlement_endpoint.clone()).is_err() {
            return Err(ConfigError::invalid(
                "gateway.settlement_endpoint",
                "not a valid URL",
            ));
        }
        if self.authorization_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "gateway.authorization_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.keepalive_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "gateway.keepalive_interval_ms",
                "must be at least 1",
            ));
        }
        if self.keepalive_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "gateway.keepalive_timeout_ms",
                "must be at least 1",
            ));
        }
        for (index, listener) in self.iso_listeners.iter().enumerate() {
            listener.validate(index)?;
            if listener.listen == self.listen
                || self.iso_listeners[..index]
                    .iter()
                    .any(|other| other.listen == listener.listen)
            {
                return Err(ConfigError::invalid(
                    format!("gateway.iso_listeners[{index}].listen"),
                    "already used by another listener of the gateway",
                ));
            }
        }
        Ok(())
    }
}

/// Serves terminals on `listener` until `shutdown` resolves: migrates the
/// backlog's schema, ensures `terminal-messages`, starts its consumer, the
/// listener that wakes subscriptions and the backlog gauge, and serves
/// `TerminalService` over mutual TLS with health (SERVING once migrated)
/// and reflection (the platform's kit, with the gateway's keepalive). As
/// the drain begins open `Subscribe` streams end with
/// UNAVAILABLE, so terminals subscribe again to another replica.
pub async fn serve(
    database: &DatabaseConfig,
    kafka: &KafkaConfig,
    config: &GatewayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    let pool = switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME)).await?;
    MIGRATOR.run(&pool).await?;
    let metrics = metrics::Metrics::new();
    let channel = message_channel(database);
    let stop = CancellationToken::new();
    let hub = push::Hub::default();
    let push = push::Push {
        pool: pool.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        stop: stop.clone(),
    };
    let api = Arc::new(service::TerminalApi::connect(
        &config.authorization_endpoint,
        &config.settlement_endpoint,
        Duration::from_millis(config.authorization_timeout_ms),
        push,
    )?);
    let iso_tasks = match iso::spawn(
        &config.iso_listeners,
        &config.tls,
        api.clone(),
        stop.clone(),
    )
    .await
    {
        Ok(tasks) => tasks,
        Err(error) => {
            // Listeners bound before the one that failed stop with it.
            stop.cancel();
            return Err(error);
        }
    };
    let listener_task = tokio::spawn(push::listen(
        pool.clone(),
        channel.clone(),
        hub,
        stop.clone(),
    ));
    let gauge_task = tokio::spawn(push::report_backlog(
        pool.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let consumer_task = tokio::spawn(run_consumer(
        pool,
        kafka.clone(),
        push::Inbox::new(channel, metrics),
        stop.clone(),
    ));

    let server = GrpcServer::new(SERVICE_NAME)?
        .limits(ServerLimits {
            http2_keepalive_interval: Some(Duration::from_millis(config.keepalive_interval_ms)),
            http2_keepalive_timeout: Some(Duration::from_millis(config.keepalive_timeout_ms)),
            ..ServerLimits::default()
        })
        .tls(Some(&config.tls))
        .add_service(TerminalServiceServer::from_arc(api))
        // Open streams never finish by themselves: end them as the drain
        // begins, or it would wait for them until the grace timeout.
        .cancel_on_drain(&stop);
    let result = server.serve(listener, shutdown).await;
    stop.cancel();
    let _ = consumer_task.await;
    let _ = listener_task.await;
    let _ = gauge_task.await;
    for task in iso_tasks {
        let _ = task.await;
    }
    tracing::info!("Terminal gateway stopped.");
    result
}

/// The gateway's consumer without Kafka, for an operator's replay of its
/// dead-lettered events (`switchd admin dead-letters`; the gateway's only
/// port faces terminals, so it offers no operator RPC): its schema
/// migrated, its group, and the inbox, which writes only the backlog of
/// that schema and wakes the running gateway's subscriptions. Unlike the
/// service, it needs none of the gateway's certificates.
pub async fn offline_consumer(
    database: &DatabaseConfig,
) -> Result<consumer::OfflineConsumer, ServeError> {
    let pool = switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME)).await?;
    MIGRATOR.run(&pool).await?;
    Ok(consumer::OfflineConsumer {
        pool,
        consumer: CONSUMER_GROUP.to_owned(),
        handler: Box::new(push::Inbox::new(
            message_channel(database),
            metrics::Metrics::new(),
        )),
    })
}

/// Consumes `terminal-messages` until `stop`.
async fn run_consumer(
    pool: sqlx::PgPool,
    kafka: KafkaConfig,
    inbox: push::Inbox,
    stop: CancellationToken,
) {
    let topics = [topics::TERMINAL_MESSAGES];
    // Terminals are served whether or not pushes flow yet: the gateway's
    // readiness is its sales path, not its consumer's membership, nor the
    // broker's being reachable at start-up.
    if !kafka
        .ensure_topics_until_ready(&topics, stop.clone().cancelled_owned())
        .await
    {
        return;
    }
    consumer::run_until_stopped(pool, &kafka, CONSUMER_GROUP, &topics, &inbox, None, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_listeners_need_addresses_of_their_own() {
        // Any existing file passes the TLS check, which is not under test.
        let file = PathBuf::from(env!("CARGO_MANIFEST_PATH"));
        let config = |addresses: &[u16]| GatewayConfig {
            tls: TlsFiles {
                cert_path: file.clone(),
                key_path: file.clone(),
                client_ca_path: Some(file.clone()),
            },
            iso_listeners: addresses
                .iter()
                .map(|port| IsoListenerConfig {
                    listen: SocketAddr::from(([127, 0, 0, 1], *port)),
                    ..IsoListenerConfig::default()
                })
                .collect(),
            ..GatewayConfig::default()
        };
        assert!(config(&[]).validate().is_ok());
        assert!(config(&[8583, 8584]).validate().is_ok());
        let twice = config(&[8583, 8583]).validate().unwrap_err().to_string();
        assert!(twice.contains("gateway.iso_listeners[1].listen"), "{twice}");
        let grpc = config(&[50051]).validate().unwrap_err().to_string();
        assert!(grpc.contains("gateway.iso_listeners[0].listen"), "{grpc}");
    }

    #[test]
    fn schema_and_channel_are_named_after_the_service() {
        assert_eq!(
            DatabaseConfig::default().schema_for(SERVICE_NAME),
            "terminal_gateway"
        );
        let prefixed = DatabaseConfig {
            schema_prefix: "t1_".into(),
            ..DatabaseConfig::default()
        };
        assert_eq!(
            message_channel(&prefixed),
            "t1_terminal_gateway_terminal_messages"
        );
    }

    #[test]
    fn migrations_create_the_consumer_table_exactly() {
        let migration = include_str!("../migrations/0001_terminal_messages.sql");
        assert!(migration.contains(consumer::PROCESSED_EVENTS_DDL));
        let dead_letters = include_str!("../migrations/0003_dead_letter_events.sql");
        assert!(dead_letters.contains(consumer::DEAD_LETTER_EVENTS_DDL));
        let replays = include_str!("../migrations/0004_dead_letter_replays.sql");
        assert!(replays.contains(consumer::DEAD_LETTER_REPLAYS_DDL));
        let age_index = include_str!("../migrations/0002_processed_events_by_age.sql");
        assert!(age_index.contains(consumer::PROCESSED_EVENTS_AGE_INDEX_DDL));
    }

    #[test]
    fn reflection_describes_the_push_methods() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(switch_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let service = set
            .file
            .iter()
            .flat_map(|file| &file.service)
            .find(|service| service.name() == "TerminalService")
            .expect("terminal.proto is in the descriptor set");
        let subscribe = service
            .method
            .iter()
            .find(|m| m.name() == "Subscribe")
            .expect("Subscribe is offered");
        assert!(subscribe.server_streaming());
        assert!(
            service
                .method
                .iter()
                .any(|m| m.name() == "AcknowledgeMessage")
        );
    }
}
