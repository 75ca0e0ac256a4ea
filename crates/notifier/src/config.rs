//! The notifier's configuration: which merchants' endpoints to seed, how
//! patiently a delivery is retried, and how much a slow merchant may occupy.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switch_core::destination::Destinations;
use switch_platform::config::{ConfigError, DevelopmentSetting, DevelopmentSettings, Secret};
use switch_platform::outbox::OutboxConfig;

/// The longest wait between two attempts: beyond a day an operator's
/// redelivery is the better tool.
pub const MAX_RETRY_DELAY_MS: u64 = 24 * 60 * 60 * 1_000;
/// Most attempts per budget; with a 5-minute cap, 100 attempts span 8 hours.
pub const MAX_ATTEMPTS: u32 = 100;
/// The longest request a merchant's endpoint may take.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 120_000;
/// Shortest accepted signing secret: HMAC keys shorter than this are
/// guessable.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest accepted endpoint URL.
pub const MAX_URL_LEN: usize = 2_048;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifierConfig {
    /// Where the admin gRPC service, health and reflection are served.
    pub listen: SocketAddr,
    /// Kafka consumer group of the event consumer; replicas share it.
    pub consumer_group: String,
    /// Endpoints created or updated at start-up (matched on merchant id and
    /// URL); endpoints registered through gRPC are kept alongside.
    pub endpoints: Vec<EndpointConfig>,
    pub retry: RetryConfig,
    /// Whole request, connection included; a slower answer is a failed
    /// attempt.
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Requests in flight at once, over all endpoints (per replica).
    pub max_in_flight: usize,
    /// Requests in flight at once to one endpoint (per replica): what a
    /// slow or dead merchant can occupy, so it never delays the others.
    pub max_in_flight_per_endpoint: usize,
    /// How often the worker looks for due deliveries when nothing wakes it
    /// (new deliveries and scheduled retries wake it themselves).
    pub poll_interval_ms: u64,
    /// How long a claimed delivery stays reserved for its worker: after a
    /// worker's crash its deliveries come back when this runs out. Must
    /// exceed `request_timeout_ms`.
    pub lease_ms: u64,
    /// The relay that publishes terminal messages to the gateway.
    pub outbox: OutboxConfig,
    /// Where webhooks may go: `any` (a laptop's local receivers) or
    /// `public_https` (https only, and every address checked at connect
    /// time, so DNS cannot lead a delivery inside the network).
    pub webhook_destinations: WebhookDestinations,
}

/// The setting behind [`switch_core::destination::Destinations`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookDestinations {
    #[default]
    Any,
    PublicHttps,
}

impl From<WebhookDestinations> for Destinations {
    fn from(setting: WebhookDestinations) -> Self {
        match setting {
            WebhookDestinations::Any => Destinations::Any,
            WebhookDestinations::PublicHttps => Destinations::PublicHttps,
        }
    }
}

/// A merchant's webhook endpoint and its signing secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    pub merchant_id: String,
    pub url: String,
    /// HMAC key of `Switch-Signature`; never logged, redacted in dumps.
    pub secret: Secret,
}

/// Exponential backoff between attempts: `initial_delay_ms`, doubling up to
/// `max_delay_ms`, each ±20% at random (so endpoints that failed together
/// are not retried in lock step); dead-lettered after `max_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
    pub max_attempts: u32,
}

impl RetryConfig {
    /// The retry rule these settings configure.
    pub fn rule(&self) -> switch_core::notify::DeliveryRetry {
        switch_core::notify::DeliveryRetry {
            initial_delay_ms: self.initial_delay_ms,
            max_delay_ms: self.max_delay_ms,
            max_attempts: self.max_attempts,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_delay_ms: 1_000,
            max_delay_ms: 300_000,
            max_attempts: 12,
        }
    }
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50055)),
            consumer_group: "notifier".into(),
            endpoints: Vec::new(),
            retry: RetryConfig::default(),
            request_timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            max_in_flight: 256,
            max_in_flight_per_endpoint: 8,
            poll_interval_ms: 500,
            lease_ms: 60_000,
            outbox: OutboxConfig::default(),
            webhook_destinations: WebhookDestinations::default(),
        }
    }
}

impl DevelopmentSettings for NotifierConfig {
    fn development_settings(&self) -> Vec<DevelopmentSetting> {
        match self.webhook_destinations {
            WebhookDestinations::PublicHttps => Vec::new(),
            WebhookDestinations::Any => vec![DevelopmentSetting::new(
                "notifier.webhook_destinations",
                "`any` lets a webhook URL reach plain HTTP and private addresses",
            )],
        }
    }
}

impl NotifierConfig {
    /// Where this notifier may deliver.
    pub fn destinations(&self) -> Destinations {
        self.webhook_destinations.into()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.consumer_group.trim().is_empty() {
            return Err(ConfigError::invalid(
                "notifier.consumer_group",
                "must not be empty",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let key = |field: &str| format!("notifier.endpoints[{i}].{field}");
            switch_core::MerchantId::parse(&endpoint.merchant_id)
                .map_err(|e| ConfigError::invalid(key("merchant_id"), e.reason))?;
            validate_url(&endpoint.url, self.destinations())
                .map_err(|reason| ConfigError::invalid(key("url"), reason))?;
            if endpoint.secret.expose().len() < MIN_SECRET_LEN {
                return Err(ConfigError::invalid(
                    key("secret"),
                    format!("must be at least {MIN_SECRET_LEN} characters"),
                ));
            }
            if !seen.insert((endpoint.merchant_id.as_str(), endpoint.url.as_str())) {
                return Err(ConfigError::invalid(
                    key("url"),
                    "the merchant has this URL twice",
                ));
            }
        }
        let retry = &self.retry;
        if retry.initial_delay_ms == 0 {
            return Err(ConfigError::invalid(
                "notifier.retry.initial_delay_ms",
                "must be at least 1",
            ));
        }
        if !(retry.initial_delay_ms..=MAX_RETRY_DELAY_MS).contains(&retry.max_delay_ms) {
            return Err(ConfigError::invalid(
                "notifier.retry.max_delay_ms",
                format!("must be between retry.initial_delay_ms and {MAX_RETRY_DELAY_MS}"),
            ));
        }
        if !(1..=MAX_ATTEMPTS).contains(&retry.max_attempts) {
            return Err(ConfigError::invalid(
                "notifier.retry.max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS}"),
            ));
        }
        if !(1..=MAX_REQUEST_TIMEOUT_MS).contains(&self.request_timeout_ms) {
            return Err(ConfigError::invalid(
                "notifier.request_timeout_ms",
                format!("must be between 1 and {MAX_REQUEST_TIMEOUT_MS}"),
            ));
        }
        if !(1..=self.request_timeout_ms).contains(&self.connect_timeout_ms) {
            return Err(ConfigError::invalid(
                "notifier.connect_timeout_ms",
                "must be between 1 and request_timeout_ms",
            ));
        }
        if !(1..=10_000).contains(&self.max_in_flight) {
            return Err(ConfigError::invalid(
                "notifier.max_in_flight",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=self.max_in_flight).contains(&self.max_in_flight_per_endpoint) {
            return Err(ConfigError::invalid(
                "notifier.max_in_flight_per_endpoint",
                "must be between 1 and max_in_flight",
            ));
        }
        if !(1..=60_000).contains(&self.poll_interval_ms) {
            return Err(ConfigError::invalid(
                "notifier.poll_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        // The lease must outlast the request, or a live worker's delivery
        // would be claimed a second time while it is still being sent.
        if self.lease_ms <= self.request_timeout_ms || self.lease_ms > MAX_RETRY_DELAY_MS {
            return Err(ConfigError::invalid(
                "notifier.lease_ms",
                format!("must be more than request_timeout_ms and at most {MAX_RETRY_DELAY_MS}"),
            ));
        }
        self.outbox.validate("notifier")
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

/// The address a URL names in place of a host name, if it does.
pub fn url_address(url: &reqwest::Url) -> Option<std::net::IpAddr> {
    let host = url.host_str()?;
    // An IPv6 host is written in brackets.
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// Checks an endpoint URL: absolute, http or https, with a host, and no
/// credentials (a URL is logged and listed; a password in it would leak);
/// then what `destinations` admits of its scheme and, when the host is an
/// address, of that address (a name is checked when it is resolved, at
/// every connection). Returns the reason it is refused.
pub fn validate_url(url: &str, destinations: Destinations) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not contain credentials".into());
    }
    destinations
        .admits_scheme(parsed.scheme())
        .map_err(|refusal| refusal.to_string())?;
    if let Some(address) = url_address(&parsed) {
        destinations
            .admits_address(address)
            .map_err(|refusal| refusal.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_key(config: &NotifierConfig) -> String {
        match config.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    fn endpoint(merchant_id: &str, url: &str, secret: &str) -> EndpointConfig {
        EndpointConfig {
            merchant_id: merchant_id.into(),
            url: url.into(),
            secret: Secret::new(secret),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let config = NotifierConfig::default();
        config.validate().unwrap();
        assert_eq!(config.retry.initial_delay_ms, 1_000);
        assert_eq!(config.retry.max_delay_ms, 300_000);
        assert_eq!(config.retry.max_attempts, 12);
        assert_eq!(config.request_timeout_ms, 10_000);
        assert_eq!(config.connect_timeout_ms, 2_000);
        assert_eq!(config.max_in_flight, 256);
        assert_eq!(config.max_in_flight_per_endpoint, 8);
        assert_eq!(config.consumer_group, "notifier");
    }

    #[test]
    fn urls_must_be_http_or_https_with_a_host_and_no_credentials() {
        assert!(validate_url("https://merchant.example/hooks", Destinations::Any).is_ok());
        assert!(validate_url("http://127.0.0.1:8080/", Destinations::Any).is_ok());
        for bad in [
            "",
            "merchant.example/hooks",
            "ftp://merchant.example/",
            "file:///etc/passwd",
            "https://user:pw@merchant.example/",
            "http://",
        ] {
            assert!(
                validate_url(bad, Destinations::Any).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(
            validate_url(
                &format!("https://a.example/{}", "x".repeat(MAX_URL_LEN)),
                Destinations::Any
            )
            .is_err()
        );
    }

    #[test]
    fn public_https_refuses_plain_http_and_address_literals_inside_the_network() {
        let production = Destinations::PublicHttps;
        assert!(validate_url("https://merchant.example/hooks", production).is_ok());
        assert!(validate_url("https://8.8.8.8/hooks", production).is_ok());
        for (bad, reason) in [
            ("http://merchant.example/hooks", "must be an https:// URL"),
            ("https://127.0.0.1/", "127.0.0.1 is a loopback address"),
            (
                "https://169.254.169.254/latest/meta-data",
                "link-local (cloud metadata)",
            ),
            ("https://10.1.2.3:8443/", "private (RFC 1918)"),
            ("https://[::1]/", "::1 is a loopback address"),
            ("https://[fd00:ec2::254]/", "unique local"),
            ("https://[::ffff:192.168.0.1]/", "private (RFC 1918)"),
        ] {
            let refused = validate_url(bad, production).unwrap_err();
            assert!(refused.contains(reason), "{bad}: {refused}");
        }
    }

    #[test]
    fn an_endpoint_configured_inside_the_network_is_refused_in_public_https_naming_it() {
        let config = NotifierConfig {
            webhook_destinations: WebhookDestinations::PublicHttps,
            endpoints: vec![endpoint(
                "M1",
                "https://10.0.0.7/hooks",
                "whsec_0123456789abcdef",
            )],
            ..NotifierConfig::default()
        };
        assert_eq!(invalid_key(&config), "notifier.endpoints[0].url");
        assert_eq!(
            NotifierConfig::default().development_settings()[0].key,
            "notifier.webhook_destinations"
        );
        assert!(config.development_settings().is_empty());
    }

    #[test]
    fn validation_names_the_bad_key() {
        let good = endpoint("M1", "https://m1.example/hooks", "whsec_0123456789abcdef");
        let with = |endpoints: Vec<EndpointConfig>| NotifierConfig {
            endpoints,
            ..NotifierConfig::default()
        };
        with(vec![good.clone()]).validate().unwrap();
        let cases: Vec<(NotifierConfig, &str)> = vec![
            (
                with(vec![
                    good.clone(),
                    endpoint("", "https://x.example/", "whsec_0123456789abcdef"),
                ]),
                "notifier.endpoints[1].merchant_id",
            ),
            (
                with(vec![endpoint(
                    "M1",
                    "ftp://x.example/",
                    "whsec_0123456789abcdef",
                )]),
                "notifier.endpoints[0].url",
            ),
            (
                with(vec![endpoint("M1", "https://x.example/", "short")]),
                "notifier.endpoints[0].secret",
            ),
            (
                with(vec![good.clone(), good.clone()]),
                "notifier.endpoints[1].url",
            ),
            (
                NotifierConfig {
                    consumer_group: " ".into(),
                    ..NotifierConfig::default()
                },
                "notifier.consumer_group",
            ),
            (
                NotifierConfig {
                    retry: RetryConfig {
                        initial_delay_ms: 0,
                        ..RetryConfig::default()
                    },
                    ..NotifierConfig::default()
                },
                "notifier.retry.initial_delay_ms",
            ),
            (
                NotifierConfig {
                    retry: RetryConfig {
                        max_delay_ms: 10,
                        ..RetryConfig::default()
                    },
                    ..NotifierConfig::default()
                },
                "notifier.retry.max_delay_ms",
            ),
            (
                NotifierConfig {
                    retry: RetryConfig {
                        max_attempts: 0,
                        ..RetryConfig::default()
                    },
                    ..NotifierConfig::default()
                },
                "notifier.retry.max_attempts",
            ),
            (
                NotifierConfig {
                    request_timeout_ms: 0,
                    ..NotifierConfig::default()
                },
                "notifier.request_timeout_ms",
            ),
            (
                NotifierConfig {
                    connect_timeout_ms: 20_000,
                    ..NotifierConfig::default()
                },
                "notifier.connect_timeout_ms",
            ),
            (
                NotifierConfig {
                    max_in_flight: 0,
                    ..NotifierConfig::default()
                },
                "notifier.max_in_flight",
            ),
            (
                NotifierConfig {
                    max_in_flight_per_endpoint: 1_000,
                    ..NotifierConfig::default()
                },
                "notifier.max_in_flight_per_endpoint",
            ),
            (
                NotifierConfig {
                    poll_interval_ms: 0,
                    ..NotifierConfig::default()
                },
                "notifier.poll_interval_ms",
            ),
            (
                NotifierConfig {
                    lease_ms: 10_000,
                    ..NotifierConfig::default()
                },
                "notifier.lease_ms",
            ),
            (
                NotifierConfig {
                    outbox: OutboxConfig {
                        batch_size: 0,
                        ..OutboxConfig::default()
                    },
                    ..NotifierConfig::default()
                },
                "notifier.outbox.batch_size",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(invalid_key(&config), key);
        }
    }

    #[test]
    fn secrets_never_show_in_debug_or_dumps() {
        let config = NotifierConfig {
            endpoints: vec![endpoint(
                "M1",
                "https://m1.example/",
                "whsec_topsecret_value",
            )],
            ..NotifierConfig::default()
        };
        assert!(!format!("{config:?}").contains("topsecret"));
        let dumped = switch_platform::config::dump(&config).unwrap();
        assert!(!dumped.contains("topsecret"), "{dumped}");
        assert!(dumped.contains(Secret::REDACTED));
    }

    /// The configuration as `switchd` nests it, to load it the way the
    /// binary does.
    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        notifier: NotifierConfig,
    }

    impl switch_platform::config::Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            self.notifier.validate()
        }
    }

    #[test]
    fn endpoints_load_from_the_file_and_the_environment_overrides() {
        let dir = std::env::temp_dir().join(format!("notifier-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("switch.toml");
        std::fs::write(
            &file,
            r#"
[notifier]
max_in_flight_per_endpoint = 4
retry = { initial_delay_ms = 50 }

[[notifier.endpoints]]
merchant_id = "MERCHANT0000001"
url = "https://m1.example/hooks"
secret = "whsec_0123456789abcdef"
"#,
        )
        .unwrap();
        let env = vec![(
            "SWITCH__NOTIFIER__RETRY__MAX_ATTEMPTS".to_owned(),
            "5".to_owned(),
        )];
        let loaded: Sample = switch_platform::config::load_with_env(Some(&file), env).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let config = loaded.notifier;
        assert_eq!(config.endpoints.len(), 1);
        assert_eq!(
            config.endpoints[0].secret.expose(),
            "whsec_0123456789abcdef"
        );
        assert_eq!(config.retry.initial_delay_ms, 50);
        assert_eq!(config.retry.max_attempts, 5);
        assert_eq!(config.retry.max_delay_ms, 300_000);
        assert_eq!(config.max_in_flight_per_endpoint, 4);
    }
}
