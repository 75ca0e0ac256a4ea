//! The end-to-end harness: starts the issuer simulator, authorization and
//! the terminal gateway (and, when asked, the reversal handler, the
//! settlement batcher and the notifier) from `switchd`'s table of services,
//! on port 0 against the real PostgreSQL and Kafka,
//! with a fresh dev PKI, and gives tests terminal clients (mutual TLS), an
//! issuer fault-injection client, the journal's pool and an independent
//! Kafka reader. Every stack has its own schema prefix and topic prefix, so
//! suites run in parallel without seeing each other.
// Fixtures are stamped with the wall clock; the code under test takes its
// time from the Clock port.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dev_certs::{CertifiedKey, DevPki};
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use switch_platform::db::DatabaseConfig;
use switch_platform::kafka::{KafkaConfig, topics};
use switch_proto::v1::issuer_control_client::IssuerControlClient;
use switch_proto::v1::settlement_service_client::SettlementServiceClient;
use switch_proto::v1::terminal_service_client::TerminalServiceClient;
use switch_proto::v1::{EventEnvelope, Money, SaleRequest};
use switchd::{Service, ServiceSpec, SwitchdConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use switch_proto::v1;

pub mod chaos;
pub mod iso;
pub mod offsets;
pub mod webhook_receiver;

/// Luhn-valid test card numbers used by the suites.
pub const VISA: &str = "4111111111111111";
pub const MASTERCARD: &str = "5555555555554444";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A name no other run or suite uses.
pub fn unique_suffix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("e{}", &id[..10])
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub issuer_timeout_ms: u64,
    /// The issuer call's deadline; `None`: one second past the timeout, so
    /// a test's shutdown does not wait for a call the simulator never
    /// answers.
    pub issuer_late_window_ms: Option<u64>,
    pub relay_enabled: bool,
    pub reversal: authorization::ReversalConfig,
    /// Start the reversal handler with this configuration (its
    /// `authorization_endpoint` is filled in).
    pub reversal_handler: Option<reversal_handler::ReversalHandlerConfig>,
    /// Start the settlement batcher with this configuration (its endpoints
    /// and payout directory are filled in).
    pub settlement: Option<settlement_batcher::SettlementConfig>,
    /// Start the notifier with this configuration (its listen address is
    /// filled in).
    pub notifier: Option<notifier::NotifierConfig>,
    /// The gateway's HTTP/2 keepalive: ping interval and ping timeout.
    pub gateway_keepalive_ms: (u64, u64),
    /// The gateway's ISO 8583 listeners; each gets a free port of its own
    /// (its `listen` is replaced), listed in `Stack::iso` in this order.
    pub iso_listeners: Vec<terminal_gateway::IsoListenerConfig>,
    /// QR payments (ADR 29): authorization's QR section, its addresses,
    /// certificates and key filled in, and a QR platform simulator started
    /// in-process beside it (`Stack::qr_simulator`), notifying it.
    pub qr: Option<authorization::QrConfig>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            issuer_timeout_ms: 1_000,
            issuer_late_window_ms: None,
            relay_enabled: true,
            // Fast repeats, so outage tests finish in seconds.
            reversal: authorization::ReversalConfig {
                initial_delay_ms: 50,
                max_delay_ms: 200,
                poll_interval_ms: 50,
                ..Default::default()
            },
            reversal_handler: None,
            settlement: None,
            notifier: None,
            gateway_keepalive_ms: {
                let defaults = terminal_gateway::GatewayConfig::default();
                (
                    defaults.keepalive_interval_ms,
                    defaults.keepalive_timeout_ms,
                )
            },
            iso_listeners: Vec::new(),
            qr: None,
        }
    }
}

/// A settlement batcher configuration for tests: windows close only when
/// a test asks (`RunSettlement`), payout files go to the stack's own
/// temporary directory.
pub fn test_settlement() -> settlement_batcher::SettlementConfig {
    settlement_batcher::SettlementConfig {
        scheduler_enabled: false,
        scheduler_interval_ms: 200,
        ..Default::default()
    }
}

/// A reversal handler configuration with a short acknowledgement window and
/// a fast sweep, for tests.
pub fn quick_reversal_handler(ack_window_ms: u64) -> reversal_handler::ReversalHandlerConfig {
    reversal_handler::ReversalHandlerConfig {
        ack_window_ms,
        sweep_interval_ms: 50,
        retry_initial_delay_ms: 50,
        retry_max_delay_ms: 500,
        ..Default::default()
    }
}

/// A running switch for one test.
pub struct Stack {
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub gateway: SocketAddr,
    pub authorization: SocketAddr,
    pub issuer: SocketAddr,
    /// Where the reversal handler serves health, when it runs.
    pub reversal_handler: Option<SocketAddr>,
    /// Where the settlement batcher serves `SettlementService`, when it runs.
    pub settlement: Option<SocketAddr>,
    /// Where the notifier serves `NotifierService`, when it runs.
    pub notifier: Option<SocketAddr>,
    /// Where the settlement batcher writes payout files.
    pub payout_dir: std::path::PathBuf,
    /// Where the gateway's ISO 8583 listeners are, as configured.
    pub iso: Vec<SocketAddr>,
    pub pki: DevPki,
    /// The authorization service's schema.
    pub journal: PgPool,
    /// The QR platform, when `StackOptions::qr` asked for QR payments.
    pub qr_simulator: Option<qr_simulator::Simulator>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    _certs_dir: TempDir,
}

impl Stack {
    pub async fn start(options: StackOptions) -> anyhow::Result<Stack> {
        let suffix = unique_suffix();
        let database = DatabaseConfig {
            url: database_url(),
            max_connections: 8,
            schema_prefix: format!("{suffix}_"),
            ..DatabaseConfig::default()
        };
        let kafka = KafkaConfig {
            brokers: kafka_brokers(),
            topic_prefix: format!("{suffix}."),
            partitions: 2,
            ..KafkaConfig::default()
        };
        let pki = DevPki::generate()?;
        let certs_dir = TempDir::new(&suffix)?;
        pki.write_dev_layout(certs_dir.path(), dev_certs::DEFAULT_TERMINALS)?;
        let payout_dir = certs_dir.path().join("payouts");

        // Every listener first: each service's configuration names the
        // addresses of the others.
        let issuer_listener = TcpListener::bind("127.0.0.1:0").await?;
        let issuer = issuer_listener.local_addr()?;
        let authorization_listener = TcpListener::bind("127.0.0.1:0").await?;
        let authorization = authorization_listener.local_addr()?;
        let gateway_listener = TcpListener::bind("127.0.0.1:0").await?;
        let gateway = gateway_listener.local_addr()?;
        let optional = |wanted: bool| async move {
            match wanted {
                true => TcpListener::bind("127.0.0.1:0").await.map(Some),
                false => Ok(None),
            }
        };
        let handler_listener = optional(options.reversal_handler.is_some()).await?;
        let settlement_listener = optional(options.settlement.is_some()).await?;
        let notifier_listener = optional(options.notifier.is_some()).await?;
        let address = |listener: &Option<TcpListener>| {
            listener.as_ref().map(TcpListener::local_addr).transpose()
        };
        let handler = address(&handler_listener)?;
        let settlement = address(&settlement_listener)?;
        let notifier_address = address(&notifier_listener)?;
        let mut iso_listeners = options.iso_listeners.clone();
        for listener in &mut iso_listeners {
            listener.listen = free_address().await;
        }
        let iso: Vec<SocketAddr> = iso_listeners.iter().map(|l| l.listen).collect();
        // QR: the platform simulator on a port of its own, notifying the
        // switch's receiver on another.
        let qr_platform_listener = optional(options.qr.is_some()).await?;
        let qr_config = match (&options.qr, &qr_platform_listener) {
            (Some(qr), Some(platform)) => Some(authorization::QrConfig {
                platform_url: format!("https://localhost:{}", platform.local_addr()?.port()),
                ca_path: Some(certs_dir.path().join("ca.pem")),
                notify_listen: Some(free_address().await),
                notify_cert_path: certs_dir.path().join("server.pem"),
                notify_key_path: certs_dir.path().join("server.key"),
                ..qr.clone()
            }),
            _ => None,
        };

        let config = Arc::new(SwitchdConfig {
            database: database.clone(),
            kafka: kafka.clone(),
            // These suites call the internal APIs directly as whichever
            // service they stand in for; mutual TLS and the access table
            // are proven in crates/switch-platform/tests/internal_mtls.rs
            // and by `make demo` (ADR 27).
            internal_tls: switch_platform::internal_tls::InternalTlsConfig::plaintext_for_lab(),
            issuer_simulator: issuer_simulator::IssuerSimulatorConfig {
                listen: issuer,
                ..Default::default()
            },
            authorization: authorization::AuthorizationConfig {
                listen: authorization,
                issuer_endpoint: format!("http://{issuer}"),
                issuer_timeout_ms: options.issuer_timeout_ms,
                issuer_late_window_ms: options
                    .issuer_late_window_ms
                    .unwrap_or(options.issuer_timeout_ms + 1_000),
                recovery_interval_ms: 200,
                reversal: options.reversal.clone(),
                qr: qr_config.clone(),
                outbox: switch_platform::outbox::OutboxConfig {
                    relay_enabled: options.relay_enabled,
                    poll_interval_ms: 200,
                    ..Default::default()
                },
                ..Default::default()
            },
            gateway: terminal_gateway::GatewayConfig {
                listen: gateway,
                tls: switch_platform::grpc::TlsFiles {
                    cert_path: certs_dir.path().join("server.pem"),
                    key_path: certs_dir.path().join("server.key"),
                    client_ca_path: Some(certs_dir.path().join("ca.pem")),
                },
                authorization_endpoint: format!("http://{authorization}"),
                // Without a batcher, batch calls fail fast as UNAVAILABLE.
                settlement_endpoint: format!(
                    "http://{}",
                    settlement.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9)))
                ),
                authorization_timeout_ms: options.issuer_timeout_ms + 4_000,
                keepalive_interval_ms: options.gateway_keepalive_ms.0,
                keepalive_timeout_ms: options.gateway_keepalive_ms.1,
                iso_listeners,
                // The suites drive a few terminals far harder than a real
                // one (a hundred concurrent retries, a thousand sales in
                // chunks of a hundred, each on a connection of its own);
                // the limits themselves are tested in the gateway's own
                // suite (crates/terminal-gateway/tests/edge.rs).
                rate_limit: terminal_gateway::RateLimitConfig {
                    per_second: 100_000,
                    burst: 100_000,
                    ..Default::default()
                },
                max_concurrent_streams: 256,
                max_connections_per_terminal: 1_000,
                ..Default::default()
            },
            reversal_handler: options
                .reversal_handler
                .clone()
                .map(|config| reversal_handler::ReversalHandlerConfig {
                    listen: handler.unwrap_or(config.listen),
                    authorization_endpoint: format!("http://{authorization}"),
                    ..config
                })
                .unwrap_or_default(),
            settlement: options
                .settlement
                .clone()
                .map(|config| settlement_batcher::SettlementConfig {
                    listen: settlement.unwrap_or(config.listen),
                    authorization_endpoint: format!("http://{authorization}"),
                    payout_dir: payout_dir.clone(),
                    ..config
                })
                .unwrap_or_default(),
            notifier: options
                .notifier
                .clone()
                .map(|config| notifier::NotifierConfig {
                    listen: notifier_address.unwrap_or(config.listen),
                    ..config
                })
                .unwrap_or_default(),
            ..SwitchdConfig::default()
        });

        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let qr_simulator = match (&qr_config, qr_platform_listener) {
            (Some(qr), Some(listener)) => {
                let notify = qr.notify_listen.map(|a| a.port()).unwrap_or_default();
                let simulator = qr_simulator::Simulator::open(
                    &qr_simulator::QrSimulatorConfig {
                        cert_path: certs_dir.path().join("server.pem"),
                        key_path: certs_dir.path().join("server.key"),
                        key: qr.key.clone(),
                        notify_url: Some(format!("https://localhost:{notify}/qr/notify")),
                        notify_ca_path: Some(certs_dir.path().join("ca.pem")),
                        time_scale: 100,
                        confirm_delay_ms: 300,
                        late_delay_ms: 1_500,
                        ..Default::default()
                    },
                    &database,
                )
                .await?;
                let serving = simulator
                    .clone()
                    .serve(listener, stop.clone().cancelled_owned());
                tasks.push(tokio::spawn(async move {
                    if let Err(error) = serving.await {
                        eprintln!("qr simulator failed: {error}");
                    }
                }));
                Some(simulator)
            }
            _ => None,
        };
        let mut start = |service: Service, listener: TcpListener| {
            launch(&config, service, listener, &stop).map(|(task, stopped)| {
                tasks.push(task);
                stopped
            })
        };
        start(Service::IssuerSimulator, issuer_listener)?;
        let mut authorization_stopped = start(Service::Authorization, authorization_listener)?;
        start(Service::TerminalGateway, gateway_listener)?;
        wait_until_serving(authorization, || authorization_stopped.try_recv().ok()).await?;
        if let Some(listener) = handler_listener {
            start(Service::ReversalHandler, listener)?;
        }
        if let Some(listener) = settlement_listener {
            start(Service::SettlementBatcher, listener)?;
        }
        if let Some(listener) = notifier_listener {
            start(Service::Notifier, listener)?;
        }
        let journal = switch_platform::db::connect(
            &database,
            &database.schema_for(authorization::SERVICE_NAME),
        )
        .await?;
        Ok(Stack {
            notifier: notifier_address,
            settlement,
            payout_dir,
            iso,
            reversal_handler: handler,
            database,
            kafka,
            gateway,
            authorization,
            issuer,
            pki,
            journal,
            qr_simulator,
            stop,
            tasks,
            _certs_dir: certs_dir,
        })
    }

    /// A client of the settlement batcher's internal API.
    pub async fn settlement_client(&self) -> anyhow::Result<SettlementServiceClient<Channel>> {
        let address = self
            .settlement
            .context("this stack runs no settlement batcher")?;
        wait_until_healthy(address, "switch.v1.SettlementService", || None).await?;
        Ok(SettlementServiceClient::connect(format!("http://{address}")).await?)
    }

    /// The settlement batcher's schema, once the batcher has migrated it.
    pub async fn settlement_pool(&self) -> anyhow::Result<PgPool> {
        let address = self
            .settlement
            .context("this stack runs no settlement batcher")?;
        wait_until_healthy(address, "switch.v1.SettlementService", || None).await?;
        Ok(switch_platform::db::connect(
            &self.database,
            &self.database.schema_for(settlement_batcher::SERVICE_NAME),
        )
        .await?)
    }

    /// The terminal gateway's schema (its terminal backlog). The gateway
    /// migrates it at start-up; until then queries on it fail.
    pub async fn gateway_pool(&self) -> anyhow::Result<PgPool> {
        Ok(switch_platform::db::connect(
            &self.database,
            &self.database.schema_for(terminal_gateway::SERVICE_NAME),
        )
        .await?)
    }

    /// A terminal client authenticated by the dev certificate of `terminal_id`.
    pub async fn terminal(
        &self,
        terminal_id: &str,
    ) -> anyhow::Result<TerminalServiceClient<Channel>> {
        let merchant = dev_certs::DEFAULT_TERMINALS
            .iter()
            .find(|(tid, _)| *tid == terminal_id)
            .map_or("MERCHANT0000009", |(_, mid)| *mid);
        let cert = self.pki.terminal_cert(terminal_id, merchant)?;
        self.terminal_with(Some(&cert), self.pki.ca_cert_pem())
            .await
    }

    /// A terminal client reaching the gateway through `address` (a proxy
    /// standing for the network between them).
    pub async fn terminal_via(
        &self,
        address: SocketAddr,
        terminal_id: &str,
    ) -> anyhow::Result<TerminalServiceClient<Channel>> {
        let cert = self.pki.terminal_cert(terminal_id, "MERCHANT0000009")?;
        self.terminal_at(address, Some(&cert), self.pki.ca_cert_pem())
            .await
    }

    /// A terminal client with any certificate (or none), for refusal tests.
    pub async fn terminal_with(
        &self,
        cert: Option<&CertifiedKey>,
        ca_pem: &str,
    ) -> anyhow::Result<TerminalServiceClient<Channel>> {
        self.terminal_at(self.gateway, cert, ca_pem).await
    }

    async fn terminal_at(
        &self,
        address: SocketAddr,
        cert: Option<&CertifiedKey>,
        ca_pem: &str,
    ) -> anyhow::Result<TerminalServiceClient<Channel>> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some(cert) = cert {
            tls = tls.identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
        }
        let channel = Endpoint::from_shared(format!("https://localhost:{}", address.port()))?
            .tls_config(tls)?
            .connect_lazy();
        Ok(TerminalServiceClient::new(channel))
    }

    pub async fn issuer_control(&self) -> anyhow::Result<IssuerControlClient<Channel>> {
        let channel = Endpoint::from_shared(format!("http://{}", self.issuer))?
            .connect()
            .await?;
        Ok(IssuerControlClient::new(channel))
    }

    /// Sends `request` from its own terminal (dev certificate) and returns
    /// the switch's record; panics on an error status.
    pub async fn sale_record(&self, request: SaleRequest) -> switch_proto::v1::AuthorizationRecord {
        self.terminal(&request.terminal_id)
            .await
            .expect("a terminal client")
            .sale(request)
            .await
            .expect("the sale is answered")
            .into_inner()
            .authorization
            .expect("the answer carries the record")
    }

    /// The authoritative record of `stan` (today) as `terminal_id` sees it.
    pub async fn inquire(
        &self,
        terminal_id: &str,
        stan: &str,
    ) -> switch_proto::v1::AuthorizationRecord {
        self.terminal(terminal_id)
            .await
            .expect("a terminal client")
            .inquiry(switch_proto::v1::InquiryRequest {
                terminal_id: terminal_id.to_owned(),
                stan: stan.to_owned(),
                local_date: today(),
            })
            .await
            .expect("the inquiry is answered")
            .into_inner()
    }

    /// What the issuer simulator has seen so far.
    pub async fn issuer_stats(&self) -> anyhow::Result<switch_proto::v1::IssuerStats> {
        Ok(self
            .issuer_control()
            .await?
            .stats(switch_proto::v1::StatsRequest {})
            .await?
            .into_inner())
    }

    /// What the issuer's own ledger holds for `rrn`.
    pub async fn issuer_funds(&self, rrn: &str) -> (switch_proto::v1::FundsState, i64) {
        issuer_funds(self.issuer, rrn).await
    }

    pub fn events_topic(&self) -> String {
        self.kafka.topic(topics::AUTHORIZATION_EVENTS)
    }

    /// Waits until the relay has published every outbox row.
    pub async fn wait_outbox_drained(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(&self.journal)
                    .await?;
            if pending == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{pending} outbox rows still unpublished after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `probe` until it returns `Some`, failing after `seconds`.
    pub async fn eventually<T, F, Fut>(&self, seconds: u64, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {seconds} s waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The journal's state of a transaction.
    pub async fn state_of(&self, transaction_id: &str) -> String {
        sqlx::query_scalar("SELECT state FROM authorizations WHERE transaction_id = $1::uuid")
            .bind(transaction_id)
            .fetch_one(&self.journal)
            .await
            .expect("the transaction is in the journal")
    }

    /// Waits until the journal shows `state` for the transaction.
    pub async fn wait_for_state(&self, transaction_id: &str, state: &str, seconds: u64) {
        self.eventually(
            seconds,
            &format!("{transaction_id} to be {state}"),
            || async { (self.state_of(transaction_id).await == state).then_some(()) },
        )
        .await;
    }

    /// Every event on the authorization topic, read by an independent
    /// consumer up to the high watermark of each partition.
    pub async fn read_events(&self) -> anyhow::Result<Vec<EventEnvelope>> {
        read_topic(&self.kafka.brokers, &self.events_topic())
            .await?
            .iter()
            .map(|m| {
                EventEnvelope::decode(m.payload().unwrap_or_default())
                    .context("a message on the topic is not an EventEnvelope")
            })
            .collect()
    }

    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.journal.close().await;
        for service in [
            authorization::SERVICE_NAME,
            terminal_gateway::SERVICE_NAME,
            reversal_handler::SERVICE_NAME,
            settlement_batcher::SERVICE_NAME,
            notifier::SERVICE_NAME,
        ] {
            let _ = switch_platform::db::drop_schema(
                &self.database.url,
                &self.database.schema_for(service),
            )
            .await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts one service from `switchd`'s table, as `switchd` would: its
/// configuration section validated first, then served until `stop`. The
/// receiver says how it ended, if it ended; a failure is also printed.
fn launch(
    config: &Arc<SwitchdConfig>,
    service: Service,
    listener: TcpListener,
    stop: &CancellationToken,
) -> anyhow::Result<(JoinHandle<()>, tokio::sync::oneshot::Receiver<String>)> {
    let spec = ServiceSpec::of(service);
    (spec.validate)(config).with_context(|| format!("{} configuration", spec.name))?;
    let serving = (spec.start)(
        config.clone(),
        listener,
        Box::pin(stop.clone().cancelled_owned()),
    );
    let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let result = serving.await;
        if let Err(error) = &result {
            eprintln!("{} failed: {error}", spec.name);
        }
        let _ = stopped_tx.send(format!("{result:?}"));
    });
    Ok((task, stopped))
}

/// Waits until authorization has migrated its schema and answers its
/// health check, or fails as soon as `stopped` reports that it ended.
pub async fn wait_until_serving(
    authorization: SocketAddr,
    stopped: impl FnMut() -> Option<String>,
) -> anyhow::Result<()> {
    wait_until_healthy(authorization, "switch.v1.AuthorizationService", stopped).await
}

/// Waits until the gRPC health check of `service` (`""` for the whole
/// server) at `address` reports SERVING.
pub async fn wait_until_healthy(
    address: SocketAddr,
    service: &str,
    mut stopped: impl FnMut() -> Option<String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let endpoint = format!("http://{address}");
    while Instant::now() < deadline {
        if let Some(how) = stopped() {
            bail!("authorization stopped during start-up: {how}");
        }
        if let Ok(channel) = Endpoint::from_shared(endpoint.clone())?.connect().await {
            let mut health = tonic_health_client(channel);
            if health.is_ok_and_serving(service).await {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{service} at {address} did not become ready within 60 s")
}

/// The `switchd` binary next to the test binary (`make test` builds it).
pub fn switchd_binary() -> std::path::PathBuf {
    // target/<profile>/deps/<test binary> -> target/<profile>/switchd
    let path = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("switchd")))
        .expect("the test binary lives under target/<profile>/deps");
    assert!(
        path.is_file(),
        "{} is missing: build it first (`make test` does: cargo build -p switchd)",
        path.display()
    );
    path
}

/// The environment every `switchd` process of one test deployment shares:
/// the database and broker, with the deployment's schema and topic prefix,
/// and the settings named in `extra`.
pub fn switchd_env(prefix: &str, extra: &[(&str, String)]) -> Vec<(String, String)> {
    [
        ("SWITCH__DATABASE__URL", database_url()),
        ("SWITCH__DATABASE__SCHEMA_PREFIX", format!("{prefix}_")),
        ("SWITCH__DATABASE__MAX_CONNECTIONS", "4".to_owned()),
        ("SWITCH__KAFKA__BROKERS", kafka_brokers()),
        ("SWITCH__KAFKA__TOPIC_PREFIX", format!("{prefix}.")),
        ("SWITCH__KAFKA__PARTITIONS", "2".to_owned()),
        // See `Stack::start`: the suites speak to the internal APIs
        // directly (ADR 27).
        ("SWITCH__INTERNAL_TLS__PLAINTEXT_FOR_LAB", "true".to_owned()),
        // The lab's plaintext takes http:// endpoints only; these are the
        // defaults' addresses, which a suite overrides where it runs a peer.
        (
            "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
            "http://127.0.0.1:50070".to_owned(),
        ),
        (
            "SWITCH__GATEWAY__AUTHORIZATION_ENDPOINT",
            "http://127.0.0.1:50052".to_owned(),
        ),
        (
            "SWITCH__GATEWAY__SETTLEMENT_ENDPOINT",
            "http://127.0.0.1:50054".to_owned(),
        ),
        (
            "SWITCH__REVERSAL_HANDLER__AUTHORIZATION_ENDPOINT",
            "http://127.0.0.1:50052".to_owned(),
        ),
        (
            "SWITCH__SETTLEMENT__AUTHORIZATION_ENDPOINT",
            "http://127.0.0.1:50052".to_owned(),
        ),
    ]
    .into_iter()
    .chain(extra.iter().cloned())
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// One `switchd <service>` process, configured through `SWITCH__…`
/// variables, killed (SIGKILL) when dropped.
pub struct SwitchdProcess {
    child: std::process::Child,
    pub service: String,
}

impl SwitchdProcess {
    pub fn spawn(service: &str, env: &[(String, String)]) -> SwitchdProcess {
        Self::spawn_to(service, env, std::process::Stdio::inherit())
    }

    /// Like [`SwitchdProcess::spawn`], its log appended to `log`.
    pub fn spawn_logged(
        service: &str,
        env: &[(String, String)],
        log: &std::path::Path,
    ) -> SwitchdProcess {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the log file opens");
        Self::spawn_to(service, env, file.into())
    }

    fn spawn_to(
        service: &str,
        env: &[(String, String)],
        stderr: std::process::Stdio,
    ) -> SwitchdProcess {
        let child = std::process::Command::new(switchd_binary())
            .arg(service)
            // Quiet unless the test asks for a level (spans below it are
            // not exported either).
            .env("SWITCH__TELEMETRY__LOG_LEVEL", "warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("switchd starts");
        SwitchdProcess {
            child,
            service: service.to_owned(),
        }
    }

    /// The process id, to read its `/proc` entries.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<String> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|status| format!("{} exited: {status}", self.service))
    }

    pub async fn wait_until_healthy(&mut self, address: SocketAddr, grpc_service: &str) {
        wait_until_healthy(address, grpc_service, || self.exited())
            .await
            .expect("switchd becomes ready");
    }

    /// SIGTERM, as Kubernetes sends it, and waits for the graceful exit;
    /// returns how it exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.child.wait().expect("switchd exits")
    }

    /// SIGTERM without waiting: the drain runs while the test watches.
    pub fn send_sigterm(&self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM delivered to {}", self.service);
    }

    /// Waits up to `limit` for the process to exit; how it exited, or
    /// `None` if it is still running.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown hook, no draining, no final relay pass.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SwitchdProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Starts an in-process issuer simulator on a free port until `stop`.
pub async fn spawn_issuer(stop: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let address = listener.local_addr().expect("a bound address");
    tokio::spawn(issuer_simulator::serve(
        listener,
        stop.clone().cancelled_owned(),
    ));
    address
}

/// An `Authorize` request from `terminal_id` (merchant MERCHANT0000001,
/// today, the Visa test card) for `minor_units` euro cents.
pub fn authorize_request(
    terminal_id: &str,
    stan: &str,
    minor_units: i64,
) -> switch_proto::v1::AuthorizeRequest {
    switch_proto::v1::AuthorizeRequest {
        key: Some(switch_proto::v1::TerminalKey {
            terminal_id: terminal_id.into(),
            stan: stan.into(),
            local_date: today(),
        }),
        merchant_id: "MERCHANT0000001".into(),
        pan: VISA.into(),
        expiry: "2812".into(),
        amount: Some(Money {
            minor_units,
            currency: "EUR".into(),
        }),
        last_completed_stan: String::new(),
        channel: String::new(),
    }
}

/// What the issuer simulator at `issuer` holds for `rrn`.
pub async fn issuer_funds(issuer: SocketAddr, rrn: &str) -> (switch_proto::v1::FundsState, i64) {
    let funds = IssuerControlClient::connect(format!("http://{issuer}"))
        .await
        .expect("the issuer simulator answers")
        .funds(switch_proto::v1::FundsRequest {
            rrn: rrn.to_owned(),
        })
        .await
        .expect("the ledger is read")
        .into_inner();
    (funds.state(), funds.held_minor_units)
}

/// A free local port (bound, then released).
pub async fn free_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    listener.local_addr().expect("a bound address")
}

/// A sale from `terminal_id` with today's local date.
pub fn sale(terminal_id: &str, stan: &str, pan: &str, minor_units: i64) -> SaleRequest {
    SaleRequest {
        terminal_id: terminal_id.to_owned(),
        stan: stan.to_owned(),
        local_date: today(),
        pan: pan.to_owned(),
        expiry: "2812".to_owned(),
        amount: Some(Money {
            minor_units,
            currency: "EUR".to_owned(),
        }),
        last_completed_stan: String::new(),
        channel: String::new(),
    }
}

pub fn today() -> String {
    let date = time::OffsetDateTime::now_utc().date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Reads every message of `topic` that exists now (up to each partition's
/// high watermark), with a throwaway consumer group.
pub async fn read_topic(brokers: &str, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_topic_blocking(&brokers, &topic)).await?
}

fn read_topic_blocking(brokers: &str, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-reader-{}", unique_suffix()))
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(topic_metadata) = metadata.topics().first() else {
        bail!("topic {topic} not found");
    };
    let mut remaining = std::collections::HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in topic_metadata.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
        if high > low {
            assignment.add_partition_offset(topic, partition.id(), Offset::Offset(low))?;
            remaining.insert(partition.id(), high);
        }
    }
    let mut messages = Vec::new();
    if remaining.is_empty() {
        return Ok(messages);
    }
    consumer.assign(&assignment)?;
    // Time enough for a chaos run's topics (hundreds of thousands of
    // messages) on the development broker.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            bail!("could not read {topic} to its high watermark: {remaining:?} left");
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let partition = message.partition();
                if let Some(high) = remaining.get(&partition).copied() {
                    if message.offset() < high {
                        messages.push(message.detach());
                    }
                    if message.offset() + 1 >= high {
                        remaining.remove(&partition);
                    }
                }
            }
            Some(Err(error)) => bail!("kafka error while reading {topic}: {error}"),
            None => {}
        }
    }
    Ok(messages)
}

/// Every number of 13 to 19 digits in `text` that passes the Luhn check:
/// what a leaked card number looks like. A number is a run of digits that
/// stands on its own: digits inside a hexadecimal token (a PAN
/// fingerprint, a trace id) are part of that token, and about one test run
/// in twenty found a Luhn-valid 13-digit stretch inside one.
pub fn luhn_valid_digit_runs(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for token in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        // A token mixing digits and letters is an identifier, not a
        // number; look only at tokens of digits alone.
        if !token.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if (13..=19).contains(&token.len()) && luhn_valid(token) {
            found.push(token.to_owned());
        }
    }
    found
}

fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

/// Sends every log line of this test process, at debug level, to a buffer
/// [`captured_logs`] returns. Call it first in every test of a binary.
pub fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let config = switch_platform::telemetry::TelemetryConfig {
            log_level: "debug,h2=info,hyper=info,tower=info,rustls=info,sqlx=info".to_owned(),
            ..Default::default()
        };
        // The guard lives for the whole process on purpose.
        if let Ok(guard) =
            switch_platform::telemetry::init_with_writer("e2e", &config, || CaptureWriter)
        {
            std::mem::forget(guard);
        }
    });
}

pub fn captured_logs() -> String {
    let buffer = LOGS.get_or_init(Mutex::default);
    let bytes = buffer.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = LOGS.get_or_init(Mutex::default).lock() {
            buffer.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A directory removed when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> std::io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("switch-e2e-{name}"));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct HealthClient(tonic_health::pb::health_client::HealthClient<Channel>);

fn tonic_health_client(channel: Channel) -> HealthClient {
    HealthClient(tonic_health::pb::health_client::HealthClient::new(channel))
}

impl HealthClient {
    async fn is_ok_and_serving(&mut self, service: &str) -> bool {
        let request = tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        };
        matches!(
            self.0.check(request).await,
            Ok(response) if response.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_card_numbers_but_not_other_digit_runs() {
        assert_eq!(luhn_valid_digit_runs("pan=4111111111111111 ok"), vec![VISA]);
        assert!(luhn_valid_digit_runs("rrn=633100000001 masked=411111******1111").is_empty());
        assert!(luhn_valid_digit_runs("4111111111111112").is_empty());
        // A Luhn-valid stretch inside a hex fingerprint is not a number.
        assert!(luhn_valid_digit_runs("fp=ab2965880797065cd").is_empty());
        assert_eq!(
            luhn_valid_digit_runs(r#"{"pan":"4111111111111111","x":1}"#),
            vec![VISA]
        );
    }
}
