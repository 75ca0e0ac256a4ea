//! Kafka client settings shared by every service: the idempotent producer,
//! consumer defaults, topic names, and idempotent topic creation at start-up
//! (topics are never auto-created, so a typo cannot invent one).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
pub use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Secret};

/// Names of the topics, without the deployment's prefix.
pub mod topics {
    /// Lifecycle events of authorizations, keyed by transaction id.
    pub const AUTHORIZATION_EVENTS: &str = "authorization-events";
    /// Batch reconciliation outcomes, window closes and payouts, keyed by
    /// transaction id (reconciliation) or merchant id (windows, payouts).
    pub const SETTLEMENT_EVENTS: &str = "settlement-events";
    /// Messages for terminals ("reprint the receipt", "void the receipt")
    /// from the notifier to the terminal gateway, keyed by terminal id so
    /// one terminal's messages stay in order.
    pub const TERMINAL_MESSAGES: &str = "terminal-messages";
    /// Every topic of the switch: what `switchd admin topics` creates.
    pub const ALL: [&str; 3] = [AUTHORIZATION_EVENTS, SETTLEMENT_EVENTS, TERMINAL_MESSAGES];
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap servers.
    pub brokers: String,
    /// Prepended to every topic name (tests use a unique one).
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long the producer waits to fill a batch; small keeps latency low.
    pub linger_ms: u32,
    /// How long a message may wait for delivery before the send fails.
    pub message_timeout_ms: u32,
    /// librdkafka's `fetch.wait.max.ms`: how long the broker may hold a
    /// consumer's fetch while there is nothing new. Kafka answers a
    /// waiting fetch as soon as a message arrives, so this costs no
    /// latency there; the development broker looks again only after half
    /// the time left has passed, so its consumers see a quiet topic's next
    /// message up to half this late (`make bench` lowers it).
    pub fetch_wait_max_ms: u32,
    /// Consumer session timeout. Short, because a consumer group's (re)join
    /// waits on it, and a replica that died must hand its partitions over
    /// quickly; 6000 ms is the smallest Kafka brokers accept by default.
    pub session_timeout_ms: u32,
    /// How long consumers remember the ids of events they applied. Must
    /// exceed the topics' retention: an event read again after its id was
    /// forgotten would be applied twice.
    pub dedupe_retention_hours: u32,
    /// librdkafka's `security.protocol` (`plaintext`, `ssl`,
    /// `sasl_plaintext`, `sasl_ssl`); unset: librdkafka's default
    /// (plaintext). A managed cluster wants `sasl_ssl`.
    pub security_protocol: Option<String>,
    /// `sasl.mechanism` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`).
    pub sasl_mechanism: Option<String>,
    /// `sasl.username`.
    pub sasl_username: Option<String>,
    /// `sasl.password`, never printed.
    pub sasl_password: Option<Secret>,
    /// `ssl.ca.location`: the CA bundle the brokers' certificates chain
    /// to; unset: the system's.
    pub ssl_ca_location: Option<std::path::PathBuf>,
    /// `ssl.certificate.location` and `ssl.key.location`: the client's own
    /// certificate and key, for brokers that authenticate clients by TLS
    /// (both or neither).
    pub ssl_certificate_location: Option<std::path::PathBuf>,
    pub ssl_key_location: Option<std::path::PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            partitions: 6,
            replication_factor: 1,
            linger_ms: 5,
            message_timeout_ms: 10_000,
            // librdkafka's own default.
            fetch_wait_max_ms: 500,
            session_timeout_ms: 6_000,
            // Kafka keeps a topic's messages 7 days unless told otherwise.
            dedupe_retention_hours: 8 * 24,
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
        }
    }
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.brokers", "must not be empty"));
        }
        if self.partitions < 1 {
            return Err(ConfigError::invalid(
                "kafka.partitions",
                "must be at least 1",
            ));
        }
        if self.replication_factor < 1 {
            return Err(ConfigError::invalid(
                "kafka.replication_factor",
                "must be at least 1",
            ));
        }
        if !(1..=60_000).contains(&self.fetch_wait_max_ms) {
            return Err(ConfigError::invalid(
                "kafka.fetch_wait_max_ms",
                "must be between 1 and 60000",
            ));
        }
        if self.dedupe_retention_hours < 24 {
            return Err(ConfigError::invalid(
                "kafka.dedupe_retention_hours",
                "must be at least 24, and longer than the topics' retention",
            ));
        }
        if let Some(protocol) = &self.security_protocol
            && !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
                .contains(&protocol.to_ascii_lowercase().as_str())
        {
            return Err(ConfigError::invalid(
                "kafka.security_protocol",
                "must be one of plaintext, ssl, sasl_plaintext, sasl_ssl",
            ));
        }
        let sasl = self
            .security_protocol
            .as_deref()
            .is_some_and(|p| p.to_ascii_lowercase().starts_with("sasl_"));
        if sasl {
            for (key, set) in [
                ("kafka.sasl_mechanism", self.sasl_mechanism.is_some()),
                ("kafka.sasl_username", self.sasl_username.is_some()),
                ("kafka.sasl_password", self.sasl_password.is_some()),
            ] {
                if !set {
                    return Err(ConfigError::invalid(
                        key,
                        "required when kafka.security_protocol is sasl_*",
                    ));
                }
            }
        }
        let tls = self
            .security_protocol
            .as_deref()
            .is_some_and(|p| p.to_ascii_lowercase().ends_with("ssl"));
        let tls_files = [
            ("kafka.ssl_ca_location", &self.ssl_ca_location),
            (
                "kafka.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("kafka.ssl_key_location", &self.ssl_key_location),
        ];
        for (key, path) in tls_files {
            // A missing file is librdkafka's to name when the client is
            // created: these paths exist only where the service runs.
            if path.is_some() && !tls {
                return Err(ConfigError::invalid(
                    key,
                    "set, but kafka.security_protocol is not ssl or sasl_ssl: it would be ignored",
                ));
            }
        }
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            return Err(ConfigError::invalid(
                if self.ssl_certificate_location.is_some() {
                    "kafka.ssl_key_location"
                } else {
                    "kafka.ssl_certificate_location"
                },
                "a client certificate needs its key, and a key its certificate",
            ));
        }
        if !self
            .topic_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return Err(ConfigError::invalid(
                "kafka.topic_prefix",
                "only letters, digits, '.', '_' and '-' are allowed",
            ));
        }
        Ok(())
    }

    /// The full name of `topic` in this deployment.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{}", self.topic_prefix, topic)
    }

    /// What every client of the deployment's brokers is configured with:
    /// the bootstrap servers and, when set, the security settings (the one
    /// place they reach librdkafka, for producers, consumers and the admin
    /// client alike).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        if let Some(protocol) = &self.security_protocol {
            config.set("security.protocol", protocol.to_ascii_lowercase());
        }
        if let Some(mechanism) = &self.sasl_mechanism {
            config.set("sasl.mechanism", mechanism);
        }
        if let Some(username) = &self.sasl_username {
            config.set("sasl.username", username);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password.expose());
        }
        if let Some(ca) = &self.ssl_ca_location {
            config.set("ssl.ca.location", ca.to_string_lossy());
        }
        if let Some(certificate) = &self.ssl_certificate_location {
            config.set("ssl.certificate.location", certificate.to_string_lossy());
        }
        if let Some(key) = &self.ssl_key_location {
            config.set("ssl.key.location", key.to_string_lossy());
        }
        config
    }

    /// A producer that cannot duplicate or reorder on its own retries.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        self.client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .create()
    }

    /// The full name of consumer group `group` in this deployment: groups
    /// are namespaced by the topic prefix like topics, so deployments (and
    /// test runs) sharing a broker never join each other's groups.
    pub fn group(&self, group: &str) -> String {
        format!("{}{}", self.topic_prefix, group)
    }

    /// Settings for a consumer in `group` (without prefix); offsets are
    /// committed explicitly and only after the effects of a message are
    /// durable.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", self.group(group))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            .set("max.poll.interval.ms", "60000");
        config
    }

    /// Creates each topic unless it exists already, trying again (1 s
    /// doubling to 30 s) while the broker cannot be reached, until it can
    /// or `stop` resolves; returns whether the topics exist. For services
    /// whose requests do not need the broker (their events wait in the
    /// outbox): they serve during a broker outage and publish after it.
    pub async fn ensure_topics_until_ready(
        &self,
        topics: &[&str],
        stop: impl std::future::Future<Output = ()>,
    ) -> bool {
        tokio::pin!(stop);
        let mut delay = Duration::from_secs(1);
        loop {
            // Raced with `stop`: against a broker that cannot be reached an
            // attempt lasts the admin client's timeout, and a service
            // stopping meanwhile must not wait for it.
            let attempt = tokio::select! {
                () = &mut stop => return false,
                attempt = self.ensure_topics(topics) => attempt,
            };
            match attempt {
                Ok(()) => return true,
                Err(error) => tracing::warn!(
                    %error,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "Broker unreachable: topics not ensured yet; serving meanwhile."
                ),
            }
            tokio::select! {
                () = &mut stop => return false,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// Creates each topic unless it exists already.
    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let names: Vec<String> = topics.iter().map(|t| self.topic(t)).collect();
        let new_topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    self.partitions,
                    TopicReplication::Fixed(self.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(name) => tracing::info!(topic = %name, "Topic created."),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                        tracing::error!(topic = %name, ?code, "Topic could not be created.");
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_remember_event_ids_longer_than_kafka_keeps_messages_by_default() {
        let config = KafkaConfig::default();
        assert!(config.dedupe_retention_hours > 7 * 24);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn security_settings_reach_producers_consumers_and_admin_clients() {
        let config = KafkaConfig {
            security_protocol: Some("SASL_SSL".into()),
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some("switch".into()),
            sasl_password: Some(Secret::new("hunter2")),
            ssl_ca_location: Some("/etc/kafka/ca.pem".into()),
            ..KafkaConfig::default()
        };
        assert!(config.validate().is_ok());
        for client in [config.client_config(), config.consumer_config("g")] {
            assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(client.get("sasl.username"), Some("switch"));
            assert_eq!(client.get("sasl.password"), Some("hunter2"));
            assert_eq!(client.get("ssl.ca.location"), Some("/etc/kafka/ca.pem"));
            assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        }
        let dumped = crate::config::dump(&config).expect("dump");
        assert!(!dumped.contains("hunter2"), "{dumped}");
    }

    #[test]
    fn default_clients_carry_no_security_settings() {
        let client = KafkaConfig::default().client_config();
        assert_eq!(client.get("security.protocol"), None);
        assert_eq!(client.get("sasl.password"), None);
    }

    #[test]
    fn sasl_without_credentials_is_refused_by_name() {
        let config = KafkaConfig {
            security_protocol: Some("sasl_ssl".into()),
            sasl_mechanism: Some("PLAIN".into()),
            ..KafkaConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("kafka.sasl_username"), "{error}");
        let config = KafkaConfig {
            security_protocol: Some("tls".into()),
            ..KafkaConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("kafka.security_protocol"), "{error}");
    }

    #[test]
    fn tls_files_without_tls_or_a_certificate_without_its_key_are_refused_by_name() {
        let config = KafkaConfig {
            ssl_ca_location: Some("/etc/kafka/ca.pem".into()),
            ..KafkaConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("kafka.ssl_ca_location"), "{error}");
        let config = KafkaConfig {
            security_protocol: Some("ssl".into()),
            ssl_certificate_location: Some("/etc/kafka/client.pem".into()),
            ..KafkaConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("kafka.ssl_key_location"), "{error}");
        let config = KafkaConfig {
            ssl_key_location: Some("/etc/kafka/client.key".into()),
            ..config
        };
        assert!(config.validate().is_ok());
        let client = config.client_config();
        assert_eq!(
            client.get("ssl.certificate.location"),
            Some("/etc/kafka/client.pem")
        );
        assert_eq!(
            client.get("ssl.key.location"),
            Some("/etc/kafka/client.key")
        );
    }

    #[test]
    fn a_dedupe_retention_under_a_day_is_refused_by_name() {
        let config = KafkaConfig {
            dedupe_retention_hours: 12,
            ..KafkaConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("kafka.dedupe_retention_hours"), "{error}");
    }
}
