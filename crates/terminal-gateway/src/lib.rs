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
//! The edge holds under abuse (ADR 21): the gateway accepts connections and
//! runs their TLS handshakes itself ([`edge`]: handshake and idle timeouts,
//! the CRL and the terminal registry, certificates reloaded without a
//! restart), counts them overall and per terminal and limits each
//! terminal's request rate ([`limits`], shared with any other listener),
//! bounds each method's request size and every list in a request, and its
//! reflection describes only `TerminalService`.
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

mod client_resets;
pub mod edge;
mod identity;
pub mod iso;
pub mod limits;
mod message_size;
mod metrics;
pub mod push;
mod service;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switch_platform::config::{ConfigError, DevelopmentSetting, DevelopmentSettings};
use switch_platform::consumer;
use switch_platform::db::DatabaseConfig;
use switch_platform::grpc::TlsFiles;
use switch_platform::internal_tls::InternalTlsConfig;
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

/// The one gRPC service terminals call (with health and reflection).
pub const TERMINAL_SERVICE: &str = "switch.v1.TerminalService";

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
    /// How long a terminal has, from its TCP connection, to complete the
    /// TLS handshake; then the socket is closed.
    pub tls_handshake_timeout_ms: u64,
    /// A connection on which the terminal sent nothing for this long is
    /// closed. A live terminal answers the keepalive pings, so it must be
    /// above `keepalive_interval_ms + keepalive_timeout_ms`.
    pub idle_timeout_ms: u64,
    /// Connections the gateway holds at once, handshakes in progress
    /// included; more are closed as they arrive.
    pub max_connections: usize,
    /// Connections one terminal (certificate CN) may hold at once.
    pub max_connections_per_terminal: usize,
    /// Largest request message of every method but `UploadBatch` (a sale
    /// is a few hundred bytes).
    pub max_message_bytes: usize,
    /// Largest `UploadBatch` request message.
    pub max_upload_message_bytes: usize,
    /// Transactions one `UploadBatch` may list.
    pub max_upload_transactions: usize,
    /// Currency totals one `CloseBatch` may list.
    pub max_batch_totals: usize,
    /// HTTP/2 streams (calls) one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Streams a client may open and reset before the server reads them
    /// before its connection is closed (HTTP/2 "rapid reset").
    pub max_pending_reset_streams: usize,
    /// Streams the server may reset for a client's protocol errors before
    /// it closes the connection.
    pub max_local_error_reset_streams: usize,
    /// Calls a connection's client may abandon (reset before their answer,
    /// the rapid reset hyper does not see when the server keeps up): a
    /// token bucket per connection; past it the connection is closed.
    pub client_reset_limit: RateSetting,
    /// Requests per terminal: a token bucket keyed by the certificate's
    /// terminal id, with overrides per merchant.
    pub rate_limit: RateLimitConfig,
    /// PEM file of the terminal CA's CRLs: a certificate on one cannot
    /// connect, and the requests of its open connections are refused.
    pub crl_path: Option<PathBuf>,
    /// TOML terminal registry (`[terminals] TERM0001 = "suspended"`): a
    /// suspended terminal is refused like a revoked one. Terminals it does
    /// not list are active.
    pub terminal_registry_path: Option<PathBuf>,
    /// How often the certificate, key, CA, CRL and registry files are
    /// checked for changes and reloaded (without dropping connections).
    pub reload_interval_ms: u64,
}

/// `gateway.rate_limit`: the default rule and the merchants that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests a second a terminal may send on average.
    pub per_second: u32,
    /// Requests a terminal may send at once.
    pub burst: u32,
    /// Overrides by merchant id (certificate OU).
    pub merchants: BTreeMap<String, RateSetting>,
}

/// One merchant's rate rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSetting {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            // Far above what a terminal needs (a sale every few seconds),
            // low enough that one flooding terminal costs the switch little.
            per_second: 100,
            burst: 200,
            merchants: BTreeMap::new(),
        }
    }
}

impl RateLimitConfig {
    /// The rules, naming the key of the first bad one.
    pub fn rules(&self) -> Result<limits::RateRules, ConfigError> {
        let rule = |key: String, per_second, burst| {
            switch_core::RateRule::new(per_second, burst)
                .map_err(|e| ConfigError::invalid(key, e.to_string()))
        };
        let default = rule("gateway.rate_limit".into(), self.per_second, self.burst)?;
        let mut merchants = std::collections::HashMap::new();
        for (merchant, setting) in &self.merchants {
            merchants.insert(
                merchant.clone(),
                rule(
                    format!("gateway.rate_limit.merchants.{merchant}"),
                    setting.per_second,
                    setting.burst,
                )?,
            );
        }
        Ok(limits::RateRules { default, merchants })
    }
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
            authorization_endpoint: "https://127.0.0.1:50052".into(),
            settlement_endpoint: "https://127.0.0.1:50054".into(),
            authorization_timeout_ms: 5_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            iso_listeners: Vec::new(),
            tls_handshake_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            max_connections: 10_000,
            max_connections_per_terminal: 8,
            max_message_bytes: 16 * 1024,
            max_upload_message_bytes: 1024 * 1024,
            max_upload_transactions: 5_000,
            max_batch_totals: 16,
            max_concurrent_streams: 32,
            max_pending_reset_streams: 20,
            max_local_error_reset_streams: 64,
            // A terminal abandons a call when its deadline passes: a few
            // in a minute, even through an issuer outage.
            client_reset_limit: RateSetting {
                per_second: 10,
                burst: 100,
            },
            rate_limit: RateLimitConfig::default(),
            crl_path: None,
            terminal_registry_path: None,
            reload_interval_ms: 10_000,
        }
    }
}

/// The smallest `gateway.max_message_bytes` accepted.
pub const MIN_MESSAGE_BYTES: usize = 1024;

fn as_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

impl DevelopmentSettings for GatewayConfig {
    fn development_settings(&self) -> Vec<DevelopmentSetting> {
        self.iso_listeners
            .iter()
            .enumerate()
            .filter(|(_, listener)| listener.plain_tcp_for_lab)
            .map(|(i, _)| {
                DevelopmentSetting::new(
                    format!("gateway.iso_listeners[{i}].plain_tcp_for_lab"),
                    "terminals would send card data without TLS",
                )
            })
            .collect()
    }
}

impl GatewayConfig {
    fn client_reset_rule(&self) -> Result<switch_core::RateRule, ConfigError> {
        let limit = self.client_reset_limit;
        switch_core::RateRule::new(limit.per_second, limit.burst)
            .map_err(|e| ConfigError::invalid("gateway.client_reset_limit", e.to_string()))
    }

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
        let at_least_one = [
            ("gateway.keepalive_timeout_ms", self.keepalive_timeout_ms),
            (
                "gateway.tls_handshake_timeout_ms",
                self.tls_handshake_timeout_ms,
            ),
            ("gateway.reload_interval_ms", self.reload_interval_ms),
            ("gateway.max_connections", as_u64(self.max_connections)),
            (
                "gateway.max_connections_per_terminal",
                as_u64(self.max_connections_per_terminal),
            ),
            (
                "gateway.max_upload_transactions",
                as_u64(self.max_upload_transactions),
            ),
            ("gateway.max_batch_totals", as_u64(self.max_batch_totals)),
            (
                "gateway.max_concurrent_streams",
                u64::from(self.max_concurrent_streams),
            ),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::invalid(*key, "must be at least 1"));
        }
        let ping_round = self
            .keepalive_interval_ms
            .saturating_add(self.keepalive_timeout_ms);
        if self.idle_timeout_ms <= ping_round {
            return Err(ConfigError::invalid(
                "gateway.idle_timeout_ms",
                format!(
                    "must be above keepalive_interval_ms + keepalive_timeout_ms ({ping_round}), or live terminals answering pings would be cut"
                ),
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
        if self.max_connections_per_terminal > self.max_connections {
            return Err(ConfigError::invalid(
                "gateway.max_connections_per_terminal",
                format!("must not exceed max_connections ({})", self.max_connections),
            ));
        }
        // A request message needs room for its fields; below this nothing
        // a terminal sends would fit.
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(ConfigError::invalid(
                "gateway.max_message_bytes",
                format!("must be at least {MIN_MESSAGE_BYTES}"),
            ));
        }
        if self.max_upload_message_bytes < self.max_message_bytes {
            return Err(ConfigError::invalid(
                "gateway.max_upload_message_bytes",
                format!(
                    "must be at least max_message_bytes ({})",
                    self.max_message_bytes
                ),
            ));
        }
        for (key, path) in [
            ("gateway.crl_path", &self.crl_path),
            (
                "gateway.terminal_registry_path",
                &self.terminal_registry_path,
            ),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(ConfigError::invalid(
                    key,
                    format!("no such file: {}", path.display()),
                ));
            }
        }
        self.rate_limit.rules()?;
        self.client_reset_rule()?;
        Ok(())
    }

    /// The edge's files: the TLS files, the CRL and the registry.
    fn edge_files(&self) -> edge::EdgeFiles {
        edge::EdgeFiles {
            cert_path: self.tls.cert_path.clone(),
            key_path: self.tls.key_path.clone(),
            client_ca_path: self.tls.client_ca_path.clone().unwrap_or_default(),
            crl_path: self.crl_path.clone(),
            registry_path: self.terminal_registry_path.clone(),
        }
    }
}

/// Serves terminals on `listener` until `shutdown` resolves: migrates the
/// backlog's schema, ensures `terminal-messages`, starts its consumer, the
/// listener that wakes subscriptions, the backlog gauge and the edge's
/// reloader, and serves `TerminalService` over the edge's mutual TLS with
/// health (SERVING once migrated) and reflection (the platform's kit, with
/// the gateway's keepalive and limits). As
/// the drain begins open `Subscribe` streams end with
/// UNAVAILABLE, so terminals subscribe again to another replica.
pub async fn serve(
    database: &DatabaseConfig,
    kafka: &KafkaConfig,
    internal_tls: &InternalTlsConfig,
    config: &GatewayConfig,
    listener: TcpListener,
    shutdown: impl Into<switch_platform::shutdown::Shutdown>,
) -> Result<(), ServeError> {
    config.validate()?;
    internal_tls.validate_for(SERVICE_NAME)?;
    internal_tls.check_endpoint(
        "gateway.authorization_endpoint",
        &config.authorization_endpoint,
    )?;
    internal_tls.check_endpoint("gateway.settlement_endpoint", &config.settlement_endpoint)?;
    let pool = switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME)).await?;
    MIGRATOR.run(&pool).await?;
    let metrics = metrics::Metrics::new();
    let channel = message_channel(database);
    let stop = CancellationToken::new();
    let hub = push::Hub::default();
    let edge = edge::Edge::load(config.edge_files()).map_err(|error| ServeError::Start {
        what: "terminal edge",
        reason: error.to_string(),
    })?;
    let push = push::Push {
        pool: pool.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        edge: edge.clone(),
        stop: stop.clone(),
    };
    let guard = service::Guard {
        edge: edge.clone(),
        rate: limits::RateLimiter::new(config.rate_limit.rules()?),
        metrics: metrics.clone(),
        max_upload_transactions: config.max_upload_transactions,
        max_batch_totals: config.max_batch_totals,
    };
    let api = Arc::new(service::TerminalApi::connect(
        &config.authorization_endpoint,
        &config.settlement_endpoint,
        internal_tls,
        Duration::from_millis(config.authorization_timeout_ms),
        push,
        guard,
    )?);
    let reload_task = tokio::spawn(edge::watch(
        edge.clone(),
        Duration::from_millis(config.reload_interval_ms),
        metrics.clone(),
        stop.clone(),
    ));
    // Every listener accepts through the same edge: one count of
    // connections, one set of timers, one CRL and registry.
    let connections =
        limits::Connections::new(config.max_connections, config.max_connections_per_terminal);
    let settings = edge::AcceptSettings {
        handshake_timeout: Duration::from_millis(config.tls_handshake_timeout_ms),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        // What the platform's own listener sets on every service.
        tcp_keepalive: ServerLimits::default().tcp_keepalive,
        client_reset_limit: config.client_reset_rule()?,
    };
    let shared = iso::Shared {
        edge: edge.clone(),
        connections: connections.clone(),
        settings,
        metrics: metrics.clone(),
    };
    let iso_tasks =
        match iso::spawn(&config.iso_listeners, &shared, api.clone(), stop.clone()).await {
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
        push::Inbox::new(channel, metrics.clone()),
        stop.clone(),
    ));

    let local = listener.local_addr().ok();
    // The edge runs the TLS handshakes itself (with their timeout, the
    // connection limits, the CRL and reloadable certificates): the server
    // gets established streams and sets no TLS of its own.
    let incoming = edge::incoming(
        listener,
        edge,
        connections,
        settings,
        metrics.clone(),
        "grpc",
        stop.clone(),
    );
    let server = GrpcServer::new(SERVICE_NAME)?
        // Terminals reach this port: describe what they may call, not the
        // switch's internal APIs.
        .reflect_only(&[TERMINAL_SERVICE])
        .limits(ServerLimits {
            // The service's bound is the larger (UploadBatch's);
            // `MethodLimits` holds every other method to the smaller.
            max_decoding_message_bytes: config.max_upload_message_bytes,
            http2_keepalive_interval: Some(Duration::from_millis(config.keepalive_interval_ms)),
            http2_keepalive_timeout: Some(Duration::from_millis(config.keepalive_timeout_ms)),
            http2_max_concurrent_streams: Some(config.max_concurrent_streams),
            http2_max_pending_accept_reset_streams: Some(config.max_pending_reset_streams),
            http2_max_local_error_reset_streams: Some(config.max_local_error_reset_streams),
            ..ServerLimits::default()
        })
        .add_service(client_resets::CountResets::new(
            message_size::MethodLimits::new(
                TerminalServiceServer::from_arc(api),
                config.max_message_bytes,
                config.max_upload_message_bytes,
            ),
        ))
        // Open streams never finish by themselves: end them as the drain
        // begins, or it would wait for them until the grace timeout.
        .cancel_on_drain(&stop);
    let result = server.serve_with_incoming(incoming, local, shutdown).await;
    stop.cancel();
    let _ = reload_task.await;
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

    /// A configuration whose TLS files exist, in a directory of its own.
    fn config_with_files(name: &str) -> (GatewayConfig, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "gateway-config-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["server.pem", "server.key", "ca.pem"] {
            std::fs::write(dir.join(file), "").unwrap();
        }
        let config = GatewayConfig {
            tls: TlsFiles {
                cert_path: dir.join("server.pem"),
                key_path: dir.join("server.key"),
                client_ca_path: Some(dir.join("ca.pem")),
            },
            ..GatewayConfig::default()
        };
        (config, dir)
    }

    #[test]
    fn every_edge_limit_is_validated_naming_its_key() {
        let (valid, dir) = config_with_files("limits");
        valid.validate().expect("the defaults are valid");
        type Spoil = Box<dyn Fn(&mut GatewayConfig)>;
        let cases: Vec<(&str, Spoil)> = vec![
            (
                "gateway.tls_handshake_timeout_ms",
                Box::new(|c| c.tls_handshake_timeout_ms = 0),
            ),
            (
                "gateway.idle_timeout_ms",
                Box::new(|c| c.idle_timeout_ms = 40_000),
            ),
            (
                "gateway.max_connections",
                Box::new(|c| c.max_connections = 0),
            ),
            (
                "gateway.max_connections_per_terminal",
                Box::new(|c| c.max_connections_per_terminal = c.max_connections + 1),
            ),
            (
                "gateway.max_message_bytes",
                Box::new(|c| c.max_message_bytes = 100),
            ),
            (
                "gateway.max_upload_message_bytes",
                Box::new(|c| c.max_upload_message_bytes = c.max_message_bytes - 1),
            ),
            (
                "gateway.max_upload_transactions",
                Box::new(|c| c.max_upload_transactions = 0),
            ),
            (
                "gateway.max_batch_totals",
                Box::new(|c| c.max_batch_totals = 0),
            ),
            (
                "gateway.max_concurrent_streams",
                Box::new(|c| c.max_concurrent_streams = 0),
            ),
            (
                "gateway.reload_interval_ms",
                Box::new(|c| c.reload_interval_ms = 0),
            ),
            (
                "gateway.rate_limit",
                Box::new(|c| c.rate_limit.per_second = 0),
            ),
            (
                "gateway.rate_limit.merchants.MERCHANT0000002",
                Box::new(|c| {
                    c.rate_limit.merchants.insert(
                        "MERCHANT0000002".into(),
                        RateSetting {
                            per_second: 5,
                            burst: 0,
                        },
                    );
                }),
            ),
            (
                "gateway.crl_path",
                Box::new(|c| c.crl_path = Some(PathBuf::from("/nonexistent/crl.pem"))),
            ),
            (
                "gateway.terminal_registry_path",
                Box::new(|c| c.terminal_registry_path = Some(PathBuf::from("/nonexistent/r.toml"))),
            ),
        ];
        for (key, spoil) in cases {
            let mut config = valid.clone();
            spoil(&mut config);
            let error = config.validate().expect_err(key).to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
        }
        let _ = std::fs::remove_dir_all(dir);
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
