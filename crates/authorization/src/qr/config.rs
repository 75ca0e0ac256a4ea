//! `[authorization.qr]`: where the QR platform is, the key both sides sign
//! with, the windows the core decides with, the notification receiver's
//! address and certificate, and the merchants' orphan policies. Absent, the
//! service offers no QR payments and starts nothing for them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switch_core::qr::QrWindows;
use switch_core::{MerchantId, OrphanPolicy, RetrySchedule};
use switch_platform::config::{ConfigError, Secret};

/// The simulator's development key (`qr_simulator.key`): refused in production.
pub const DEV_KEY: &str = "qr-dev-acquirer-key-not-for-production";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QrConfig {
    /// `https://host:port` of the platform.
    pub platform_url: String,
    /// Extra CA certificates (PEM) for the platform's server certificate.
    pub ca_path: Option<PathBuf>,
    /// The acquirer's HMAC key, shared with the platform.
    pub key: Secret,
    /// One platform call's deadline (pay, order, query, cancel, close, refund).
    pub call_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// How far a signed answer's or notification's timestamp may stray.
    pub tolerance_s: u64,
    /// `QrWindows`: the terminal waits this long for the result.
    pub terminal_wait_ms: u64,
    /// Between two queries of a payment without a final answer.
    pub query_interval_ms: u64,
    /// Unpaid by then (from the request): cancelled or closed.
    pub query_limit_ms: u64,
    /// The owed cancel, close or refund: backoff and its dead letter.
    pub retry_initial_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    pub retry_max_age_ms: u64,
    /// How often the worker looks for due queries, owed calls and terminal
    /// deadlines when nothing wakes it.
    pub poll_interval_ms: u64,
    pub batch_size: i64,
    /// HTTPS address of the notification receiver; unset: no receiver (the
    /// switch's queries still find every payment).
    pub notify_listen: Option<SocketAddr>,
    /// The receiver's certificate chain and key (PEM).
    pub notify_cert_path: PathBuf,
    pub notify_key_path: PathBuf,
    /// How often the receiver's certificate and key are checked for a
    /// change (a renewal is used without a restart).
    pub notify_reload_interval_ms: u64,
    /// How often the worker deletes notification nonces too old to
    /// matter (a statement, so not on every round).
    pub nonce_prune_interval_ms: u64,
    /// What an orphan becomes for a merchant not in `merchant_policies`.
    pub orphan_policy: String,
    /// Merchant id → "confirm" or "reverse".
    pub merchant_policies: BTreeMap<String, String>,
}

impl Default for QrConfig {
    fn default() -> Self {
        QrConfig {
            platform_url: "https://127.0.0.1:50080".into(),
            ca_path: Some(PathBuf::from(".run/certs/ca.pem")),
            key: Secret::new(DEV_KEY),
            call_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
            tolerance_s: qr_platform::DEFAULT_TOLERANCE_S,
            terminal_wait_ms: 30_000,
            query_interval_ms: 5_000,
            query_limit_ms: 45_000,
            retry_initial_delay_ms: 1_000,
            retry_max_delay_ms: 60_000,
            retry_max_age_ms: 24 * 3_600_000,
            poll_interval_ms: 200,
            batch_size: 100,
            notify_listen: None,
            notify_cert_path: PathBuf::from(".run/certs/server.pem"),
            notify_key_path: PathBuf::from(".run/certs/server.key"),
            notify_reload_interval_ms: 30_000,
            nonce_prune_interval_ms: 60_000,
            orphan_policy: OrphanPolicy::default().as_str().to_owned(),
            merchant_policies: BTreeMap::new(),
        }
    }
}

fn key(name: &str) -> String {
    format!("authorization.qr.{name}")
}

impl QrConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.platform_url.starts_with("https://") || self.platform_url.starts_with("http://"))
        {
            return Err(ConfigError::invalid(
                key("platform_url"),
                "must be an https (or http) URL",
            ));
        }
        if self.key.expose().len() < 16 {
            return Err(ConfigError::invalid(
                key("key"),
                "must be at least 16 bytes",
            ));
        }
        for (name, value) in [
            ("call_timeout_ms", self.call_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if !(1..=60_000).contains(&value) {
                return Err(ConfigError::invalid(
                    key(name),
                    "must be between 1 and 60000",
                ));
            }
        }
        if !(1..=3_600).contains(&self.tolerance_s) {
            return Err(ConfigError::invalid(
                key("tolerance_s"),
                "must be between 1 and 3600",
            ));
        }
        if self.terminal_wait_ms == 0 || self.query_interval_ms == 0 {
            return Err(ConfigError::invalid(
                key("terminal_wait_ms"),
                "terminal_wait_ms and query_interval_ms must be at least 1",
            ));
        }
        if self.query_limit_ms < self.terminal_wait_ms {
            return Err(ConfigError::invalid(
                key("query_limit_ms"),
                "must be at least terminal_wait_ms: the switch queries at least as long as the terminal waits",
            ));
        }
        if self.retry_initial_delay_ms == 0 || self.retry_initial_delay_ms > self.retry_max_delay_ms
        {
            return Err(ConfigError::invalid(
                key("retry_initial_delay_ms"),
                "must be at least 1 and at most retry_max_delay_ms",
            ));
        }
        for (name, value) in [
            ("notify_reload_interval_ms", self.notify_reload_interval_ms),
            ("nonce_prune_interval_ms", self.nonce_prune_interval_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key(name), "must be at least 1"));
            }
        }
        if self.retry_max_age_ms == 0 || self.poll_interval_ms == 0 {
            return Err(ConfigError::invalid(
                key("poll_interval_ms"),
                "poll_interval_ms and retry_max_age_ms must be at least 1",
            ));
        }
        if !(1..=1_000).contains(&self.batch_size) {
            return Err(ConfigError::invalid(
                key("batch_size"),
                "must be between 1 and 1000",
            ));
        }
        OrphanPolicy::parse(&self.orphan_policy)
            .map_err(|e| ConfigError::invalid(key("orphan_policy"), e.to_string()))?;
        for (merchant, policy) in &self.merchant_policies {
            MerchantId::parse(merchant).map_err(|e| {
                ConfigError::invalid(key(&format!("merchant_policies.{merchant}")), e.to_string())
            })?;
            OrphanPolicy::parse(policy).map_err(|e| {
                ConfigError::invalid(key(&format!("merchant_policies.{merchant}")), e.to_string())
            })?;
        }
        Ok(())
    }

    pub fn windows(&self) -> QrWindows {
        QrWindows::new(
            Duration::from_millis(self.terminal_wait_ms),
            Duration::from_millis(self.query_interval_ms),
            Duration::from_millis(self.query_limit_ms),
        )
    }

    pub fn schedule(&self) -> RetrySchedule {
        RetrySchedule {
            initial_delay_ms: self.retry_initial_delay_ms,
            max_delay_ms: self.retry_max_delay_ms,
            max_age_ms: self.retry_max_age_ms,
        }
    }

    /// The merchant's policy for a payment that starts now (validated).
    /// How long a notification's nonce is kept. A notification is taken
    /// while its timestamp is within `tolerance_s` of the receiver's clock
    /// either way, so one accepted at `t` carries a timestamp of at most
    /// `t + tolerance_s`, and a replay of it is fresh until
    /// `t + 2 * tolerance_s`; after that the signature check refuses it as
    /// stale and the nonce is no longer needed. The minute more covers the
    /// clocks of two instances of the service disagreeing.
    pub fn nonce_retention(&self) -> time::Duration {
        let seconds = self.tolerance_s.saturating_mul(2).saturating_add(60);
        time::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX))
    }

    pub fn policy_of(&self, merchant: &MerchantId) -> OrphanPolicy {
        let name = self
            .merchant_policies
            .get(merchant.as_str())
            .unwrap_or(&self.orphan_policy);
        OrphanPolicy::parse(name).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_value_is_refused_naming_its_key() {
        QrConfig::default().validate().expect("defaults are valid");
        type Spoil = fn(&mut QrConfig);
        let cases: [(Spoil, &str); 6] = [
            (|c| c.platform_url = "ftp://x".into(), "platform_url"),
            (|c| c.key = Secret::new("short"), "key"),
            (|c| c.query_limit_ms = 1, "query_limit_ms"),
            (|c| c.orphan_policy = "keep".into(), "orphan_policy"),
            (
                |c| {
                    c.merchant_policies
                        .insert("MERCHANT0000001".into(), "maybe".into());
                },
                "merchant_policies.MERCHANT0000001",
            ),
            (|c| c.batch_size = 0, "batch_size"),
        ];
        for (spoil, name) in cases {
            let mut config = QrConfig::default();
            spoil(&mut config);
            let error = config.validate().expect_err(name).to_string();
            assert!(
                error.contains(&format!("authorization.qr.{name}")),
                "{name}: {error}"
            );
        }
    }

    #[test]
    fn a_merchant_policy_overrides_the_default() {
        let mut config = QrConfig::default();
        config
            .merchant_policies
            .insert("MERCHANT0000001".into(), "confirm".into());
        let listed = MerchantId::parse("MERCHANT0000001").expect("merchant");
        let other = MerchantId::parse("MERCHANT0000002").expect("merchant");
        assert_eq!(config.policy_of(&listed), OrphanPolicy::Confirm);
        assert_eq!(config.policy_of(&other), OrphanPolicy::Reverse);
    }
}
