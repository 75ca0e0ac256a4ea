//! The authorization service: the only writer of the authorization journal
//! and the switch's link to issuers.
//!
//! For every sale it makes the intent durable *before* asking the issuer (so
//! an approval that a crash interrupts can still be found and reversed),
//! assigns the RRN, records the issuer's decision or its silence, and
//! announces each decision through the transactional outbox. `Authorize` is
//! idempotent on terminal + STAN + local date across processes: the journal's
//! unique key decides, and concurrent retries in one process wait for the
//! first instead of racing it. Card numbers are kept only masked and as a
//! keyed fingerprint.

//!
//! Layers, each depending only on those above it: `model` (the domain
//! types, mostly switch-core's) → `store` (the journal in PostgreSQL: it
//! persists decisions and decides nothing) → `lifecycle` (lock, let
//! `switch_core::lifecycle::decide` decide, apply) → `service` and
//! `reversals` (the gRPC API and the reversal worker). `wire` and `events`
//! are the edges where protobuf is converted.

mod error;
mod events;
mod group_commit;
mod issuer;
mod lifecycle;
mod recovery;
// Public only for this crate's integration tests (tests/group_commit.rs).
#[doc(hidden)]
pub mod model;
// QR payments (ADR 29): the shell around switch_core::qr.
#[doc(hidden)]
pub mod qr;
mod reversals;
mod service;
#[doc(hidden)]
pub mod store;
mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switch_platform::config::{ConfigError, DevelopmentSetting, DevelopmentSettings, Secret};
use switch_platform::db::DatabaseConfig;
use switch_platform::internal_tls::InternalTlsConfig;
use switch_platform::kafka::{KafkaConfig, topics};
use switch_platform::outbox::{OutboxConfig, OutboxRelay};
use switch_platform::service::GrpcServer;
use switch_proto::v1::authorization_service_server::AuthorizationServiceServer;
use tokio::net::TcpListener;

pub use error::AuthorizationError;
pub use qr::QrConfig;
pub use switch_platform::service::ServeError;

/// Name of the service: its schema, its OpenTelemetry service name.
pub const SERVICE_NAME: &str = "authorization";

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorizationConfig {
    pub listen: SocketAddr,
    /// URL of the issuer host's `IssuerService`.
    pub issuer_endpoint: String,
    /// How long the switch waits for the issuer before recording the
    /// authorization as timed out (whether money moved is then unknown).
    pub issuer_timeout_ms: u64,
    /// The issuer call's deadline, from when it is sent: an answer until
    /// then is still awaited (and recorded as late) after the switch
    /// stopped waiting, and the issuer does not act on the call later.
    /// Until then a reversal answered "25" may have overtaken its original
    /// and is repeated; past it, an intent still in flight was abandoned
    /// by a process that died and is recovered as timed out.
    pub issuer_late_window_ms: u64,
    /// How often the recovery sweep looks for abandoned issuer calls.
    pub recovery_interval_ms: u64,
    /// Name of the issuer queue: reversals to one issuer never wait behind
    /// another's.
    pub issuer_name: String,
    /// Key of the HMAC-SHA256 fingerprint under which PANs are stored:
    /// the current key, which fingerprints every new sale.
    pub pan_hash_key: Secret,
    /// The current key's id, stored with every fingerprint it makes
    /// (ADR 33). Rows journaled before key ids carry `k1`.
    pub pan_hash_key_id: String,
    /// Keys rotated out, by id, kept while a fingerprint made with them
    /// may still be compared (a retry of a sale from before the
    /// rotation): a retry is fingerprinted under its original's key.
    pub pan_hash_previous_keys: std::collections::BTreeMap<String, Secret>,
    pub reversal: ReversalConfig,
    pub outbox: OutboxConfig,
    /// QR payments (ADR 29); absent: none are offered.
    pub qr: Option<QrConfig>,
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        AuthorizationConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            issuer_endpoint: "https://127.0.0.1:50070".into(),
            issuer_timeout_ms: 2_000,
            issuer_late_window_ms: 30_000,
            recovery_interval_ms: 5_000,
            issuer_name: "default".into(),
            reversal: ReversalConfig::default(),
            pan_hash_key: Secret::new("dev-only-pan-fingerprint-key-change-me"),
            pan_hash_key_id: switch_core::PanKeyId::FIRST.to_owned(),
            pan_hash_previous_keys: std::collections::BTreeMap::new(),
            outbox: OutboxConfig::default(),
            qr: None,
        }
    }
}

impl DevelopmentSettings for AuthorizationConfig {
    fn development_settings(&self) -> Vec<DevelopmentSetting> {
        let defaults = AuthorizationConfig::default();
        let mut found = Vec::new();
        if self.pan_hash_key == defaults.pan_hash_key {
            found.push(DevelopmentSetting::new(
                "authorization.pan_hash_key",
                "the published development key: anyone could fingerprint card numbers with it",
            ));
        }
        for (id, key) in &self.pan_hash_previous_keys {
            if *key == defaults.pan_hash_key {
                found.push(DevelopmentSetting::new(
                    format!("authorization.pan_hash_previous_keys.{id}"),
                    "the published development key: anyone could fingerprint card numbers with it",
                ));
            }
        }
        if self.issuer_endpoint == defaults.issuer_endpoint {
            found.push(DevelopmentSetting::new(
                "authorization.issuer_endpoint",
                "the issuer simulator's address",
            ));
        }
        if let Some(qr) = &self.qr {
            let defaults = QrConfig::default();
            if qr.key.expose() == qr::DEV_KEY {
                found.push(DevelopmentSetting::new(
                    "authorization.qr.key",
                    "the QR simulator's published development key",
                ));
            }
            if qr.platform_url == defaults.platform_url {
                found.push(DevelopmentSetting::new(
                    "authorization.qr.platform_url",
                    "the QR platform simulator's address",
                ));
            }
        }
        found
    }
}

impl AuthorizationConfig {
    /// The fingerprint keys as configured: the current key under
    /// `pan_hash_key_id`, then every previous key (ADR 33). Refuses an id
    /// that does not parse, a previous key shorter than 16 bytes, or one
    /// whose id is taken, naming the key.
    pub fn pan_keyring(&self) -> Result<switch_core::PanKeyring, ConfigError> {
        let id = |key: String, id: &str| {
            switch_core::PanKeyId::parse(id).map_err(|e| ConfigError::invalid(key, e.reason))
        };
        let current = switch_core::PanHasher::with_id(
            id(
                "authorization.pan_hash_key_id".into(),
                &self.pan_hash_key_id,
            )?,
            self.pan_hash_key.expose().as_bytes(),
        );
        let mut keyring = switch_core::PanKeyring::new(current);
        for (name, key) in &self.pan_hash_previous_keys {
            let field = format!("authorization.pan_hash_previous_keys.{name}");
            if key.expose().len() < 16 {
                return Err(ConfigError::invalid(field, "must be at least 16 bytes"));
            }
            let previous =
                switch_core::PanHasher::with_id(id(field.clone(), name)?, key.expose().as_bytes());
            keyring = keyring.with_previous(previous).map_err(|_| {
                ConfigError::invalid(field, "is the current key's id (pan_hash_key_id)")
            })?;
        }
        Ok(keyring)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=60_000).contains(&self.issuer_timeout_ms) {
            return Err(ConfigError::invalid(
                "authorization.issuer_timeout_ms",
                "must be between 1 and 60000",
            ));
        }
        if self.issuer_late_window_ms < self.issuer_timeout_ms
            || self.issuer_late_window_ms > 600_000
        {
            return Err(ConfigError::invalid(
                "authorization.issuer_late_window_ms",
                "must be at least issuer_timeout_ms and at most 600000",
            ));
        }
        if !(100..=600_000).contains(&self.recovery_interval_ms) {
            return Err(ConfigError::invalid(
                "authorization.recovery_interval_ms",
                "must be between 100 and 600000",
            ));
        }
        if tonic::transport::Endpoint::from_shared(self.issuer_endpoint.clone()).is_err() {
            return Err(ConfigError::invalid(
                "authorization.issuer_endpoint",
                "not a valid URL",
            ));
        }
        if self.pan_hash_key.expose().len() < 16 {
            return Err(ConfigError::invalid(
                "authorization.pan_hash_key",
                "must be at least 16 bytes",
            ));
        }
        self.pan_keyring()?;
        self.outbox.validate("authorization")?;
        self.reversal.validate()?;
        if self.issuer_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "authorization.issuer_name",
                "must not be empty",
            ));
        }
        if let Some(qr) = &self.qr {
            qr.validate()?;
        }
        Ok(())
    }
}

/// How reversals are repeated until the issuer acknowledges them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReversalConfig {
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Past this age an unacknowledged reversal is dead-lettered (counted,
    /// logged as an error) instead of repeated.
    pub max_age_ms: u64,
    /// How often the queue is checked when nothing wakes the worker.
    pub poll_interval_ms: u64,
    pub batch_size: i64,
}

impl Default for ReversalConfig {
    fn default() -> Self {
        ReversalConfig {
            initial_delay_ms: 200,
            max_delay_ms: 10_000,
            max_age_ms: 24 * 3_600_000,
            poll_interval_ms: 100,
            batch_size: 100,
        }
    }
}

impl ReversalConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.initial_delay_ms == 0 || self.initial_delay_ms > self.max_delay_ms {
            return Err(ConfigError::invalid(
                "authorization.reversal.initial_delay_ms",
                "must be at least 1 and at most max_delay_ms",
            ));
        }
        if self.max_age_ms == 0 {
            return Err(ConfigError::invalid(
                "authorization.reversal.max_age_ms",
                "must be at least 1",
            ));
        }
        if self.poll_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "authorization.reversal.poll_interval_ms",
                "must be at least 1",
            ));
        }
        if !(1..=1_000).contains(&self.batch_size) {
            return Err(ConfigError::invalid(
                "authorization.reversal.batch_size",
                "must be between 1 and 1000",
            ));
        }
        Ok(())
    }
}

/// Runs the authorization service on `listener` until `shutdown` resolves:
/// migrates its schema and serves gRPC with the platform's kit (health,
/// reflection, limits, a drain bounded by the grace timeout), while in the
/// background it ensures its topic, as soon as the broker can be reached,
/// and then runs the outbox relay: a broker outage at start-up stops no
/// sale (issue 13, hole 3).
pub async fn serve(
    database: &DatabaseConfig,
    kafka: &KafkaConfig,
    internal_tls: &InternalTlsConfig,
    config: &AuthorizationConfig,
    listener: TcpListener,
    shutdown: impl Into<switch_platform::shutdown::Shutdown>,
) -> Result<(), ServeError> {
    config.validate()?;
    internal_tls.validate_for(SERVICE_NAME)?;
    internal_tls.check_endpoint("authorization.issuer_endpoint", &config.issuer_endpoint)?;
    let pool = switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME)).await?;
    MIGRATOR.run(&pool).await?;
    let relay = OutboxRelay::new(pool.clone(), kafka.producer()?, config.outbox.clone());
    let windows = switch_core::lifecycle::IssuerWindows::new(
        Duration::from_millis(config.issuer_timeout_ms),
        Duration::from_millis(config.issuer_late_window_ms),
    );
    let issuer = issuer::GrpcIssuerLink::connect(
        &config.issuer_endpoint,
        internal_tls,
        windows.call_timeout,
    )?;
    let late_answers = service::LateAnswers::default();
    // QR payments (ADR 29): off unless `authorization.qr` is configured.
    let qr = match &config.qr {
        Some(qr_config) => Some(
            qr::start(
                qr_config,
                pool.clone(),
                kafka.topic(topics::AUTHORIZATION_EVENTS),
                relay.clone(),
                switch_core::SystemClock::shared(),
            )
            .await?,
        ),
        None => None,
    };
    let (qr_api, qr_tasks) = qr.unzip();
    let journal = std::sync::Arc::new(store::Journal::new(pool));
    let wake_reversals = std::sync::Arc::new(tokio::sync::Notify::new());
    let lifecycle = lifecycle::Lifecycle {
        journal,
        announcer: events::Announcer {
            topic: kafka.topic(topics::AUTHORIZATION_EVENTS),
            issuer_timeout_ms: u32::try_from(config.issuer_timeout_ms).unwrap_or(u32::MAX),
        },
        clock: switch_core::SystemClock::shared(),
        issuer_name: config.issuer_name.clone(),
        relay: relay.clone(),
        reversals: wake_reversals.clone(),
    };
    let service = service::AuthorizationApi::new(
        lifecycle.clone(),
        issuer.clone(),
        config.pan_keyring()?,
        windows,
        late_answers.clone(),
    )
    .with_qr(qr_api);
    let recovery = recovery::RecoverySweep {
        lifecycle: lifecycle.clone(),
        windows,
        interval: Duration::from_millis(config.recovery_interval_ms),
        batch_size: config.reversal.batch_size,
    };
    let worker = reversals::ReversalWorker {
        lifecycle,
        issuer,
        issuer_name: config.issuer_name.clone(),
        schedule: switch_core::RetrySchedule {
            initial_delay_ms: config.reversal.initial_delay_ms,
            max_delay_ms: config.reversal.max_delay_ms,
            max_age_ms: config.reversal.max_age_ms,
        },
        windows,
        batch_size: config.reversal.batch_size,
        lease_ms: i64::try_from(config.issuer_timeout_ms.saturating_mul(2) + 1_000)
            .unwrap_or(i64::MAX),
        poll_interval: Duration::from_millis(config.reversal.poll_interval_ms),
        wake: wake_reversals,
    };

    // Sales need the journal, not the broker: the relay starts publishing
    // once the topic exists, and until then the outbox holds the events.
    let (stop_relay_tx, mut stop_relay_rx) = tokio::sync::oneshot::channel::<()>();
    let relay_task = {
        let kafka = kafka.clone();
        tokio::spawn(async move {
            let ready = kafka
                .ensure_topics_until_ready(&[topics::AUTHORIZATION_EVENTS], async {
                    let _ = (&mut stop_relay_rx).await;
                })
                .await;
            if ready {
                relay
                    .run(async move {
                        let _ = stop_relay_rx.await;
                    })
                    .await;
            }
        })
    };
    let (stop_worker_tx, stop_worker_rx) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(worker.run(async {
        let _ = stop_worker_rx.await;
    }));

    let (stop_recovery_tx, stop_recovery_rx) = tokio::sync::oneshot::channel::<()>();
    let recovery_task = tokio::spawn(recovery.run(async {
        let _ = stop_recovery_rx.await;
    }));

    let result = GrpcServer::new(SERVICE_NAME)?
        .internal(SERVICE_NAME, internal_tls)
        .add_service(AuthorizationServiceServer::new(service))
        .serve(listener, shutdown)
        .await;
    // In-flight requests have finished; late answers still awaited are
    // recorded (each by its call's deadline), then what they all enqueued
    // is published before the workers stop.
    late_answers.drain().await;
    if let Some(qr_tasks) = qr_tasks {
        qr_tasks.stop().await;
    }
    let _ = stop_recovery_tx.send(());
    let _ = recovery_task.await;
    let _ = stop_worker_tx.send(());
    let _ = worker_task.await;
    let _ = stop_relay_tx.send(());
    let _ = relay_task.await;
    tracing::info!("Authorization service stopped.");
    result
}

#[cfg(test)]
mod qr_settings_tests {
    use super::*;

    #[test]
    fn a_qr_section_with_the_simulators_key_or_address_is_a_development_setting() {
        let keys = |config: &AuthorizationConfig| -> Vec<String> {
            config
                .development_settings()
                .into_iter()
                .map(|s| s.key)
                .filter(|k| k.starts_with("authorization.qr"))
                .collect()
        };
        let mut config = AuthorizationConfig::default();
        assert!(keys(&config).is_empty(), "no QR section, nothing to say");
        config.qr = Some(QrConfig::default());
        assert_eq!(
            keys(&config),
            ["authorization.qr.key", "authorization.qr.platform_url"]
        );
        config.qr = Some(QrConfig {
            key: Secret::new("a-production-key-0123456789"),
            platform_url: "https://qr.example".into(),
            ..QrConfig::default()
        });
        assert!(keys(&config).is_empty());
    }
}

#[cfg(test)]
mod pan_keyring_tests {
    use super::*;

    fn refusal(config: &AuthorizationConfig) -> String {
        match config.validate() {
            Err(ConfigError::Invalid { key, reason }) => format!("{key}: {reason}"),
            other => panic!("expected the keyring refused, got {other:?}"),
        }
    }

    fn rotated() -> AuthorizationConfig {
        AuthorizationConfig {
            pan_hash_key_id: "k2".into(),
            pan_hash_key: Secret::new("the-acquirers-second-key"),
            pan_hash_previous_keys: [("k1".to_owned(), Secret::new("the-acquirers-first-key"))]
                .into(),
            ..AuthorizationConfig::default()
        }
    }

    #[test]
    fn the_keyring_is_the_current_key_under_its_id_and_the_previous_ones() {
        let keyring = rotated().pan_keyring().unwrap();
        assert_eq!(keyring.current_id().as_str(), "k2");
        assert_eq!(
            AuthorizationConfig::default()
                .pan_keyring()
                .unwrap()
                .current_id()
                .as_str(),
            switch_core::PanKeyId::FIRST,
            "unrotated, the key is the one every earlier row names"
        );
        assert!(rotated().validate().is_ok());
    }

    #[test]
    fn a_bad_key_id_a_short_previous_key_or_a_taken_id_is_refused_by_name() {
        let mut config = rotated();
        config.pan_hash_key_id = "k 2".into();
        assert!(
            refusal(&config).starts_with("authorization.pan_hash_key_id:"),
            "{}",
            refusal(&config)
        );
        let mut config = rotated();
        config
            .pan_hash_previous_keys
            .insert("k0".into(), Secret::new("short"));
        assert_eq!(
            refusal(&config),
            "authorization.pan_hash_previous_keys.k0: must be at least 16 bytes"
        );
        let mut config = rotated();
        config
            .pan_hash_previous_keys
            .insert("k2".into(), Secret::new("another-key-named-k2"));
        assert_eq!(
            refusal(&config),
            "authorization.pan_hash_previous_keys.k2: is the current key's id (pan_hash_key_id)"
        );
    }

    #[test]
    fn the_published_development_key_is_a_development_setting_current_or_previous() {
        let keys = |config: &AuthorizationConfig| -> Vec<String> {
            config
                .development_settings()
                .into_iter()
                .map(|s| s.key)
                .filter(|k| k.starts_with("authorization.pan_hash"))
                .collect()
        };
        assert_eq!(
            keys(&AuthorizationConfig::default()),
            ["authorization.pan_hash_key"]
        );
        assert!(keys(&rotated()).is_empty());
        // Rotated away from the development key, but kept as a previous one:
        // its fingerprints are as guessable as before.
        let mut config = rotated();
        config.pan_hash_previous_keys.insert(
            "dev".into(),
            AuthorizationConfig::default().pan_hash_key.clone(),
        );
        assert_eq!(keys(&config), ["authorization.pan_hash_previous_keys.dev"]);
    }
}
