//! The reversal handler's configuration: where authorization is, how long a
//! terminal has to show evidence after an approval, what each merchant wants
//! done with approvals still unconfirmed at that deadline, and how often and
//! how patiently the sweeper works.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switch_core::OrphanPolicy;
use switch_platform::config::ConfigError;

/// The longest acknowledgement window accepted: evidence arrives with the
/// acknowledgement, the next sale or at the latest the daily batch upload.
pub const MAX_ACK_WINDOW_MS: u64 = 7 * 24 * 60 * 60 * 1_000;

/// The longest wait between two calls to authorization about one approval.
pub const MAX_RETRY_DELAY_MS: u64 = 60 * 60 * 1_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReversalHandlerConfig {
    /// Where health and reflection are served.
    pub listen: SocketAddr,
    /// URL of authorization's `AuthorizationService`.
    pub authorization_endpoint: String,
    /// Default acknowledgement deadline after an approval.
    pub ack_window_ms: u64,
    /// Default policy at the deadline: "reverse" or "confirm".
    pub orphan_policy: String,
    /// Per-merchant overrides, keyed by merchant id.
    pub merchants: BTreeMap<String, MerchantPolicy>,
    /// Acknowledgement window per channel ("card", "qr"), in milliseconds,
    /// used when the merchant has no window of its own.
    pub channels: BTreeMap<String, u64>,
    /// How often the sweeper looks for due approvals.
    pub sweep_interval_ms: u64,
    /// Delay after the first failed call to authorization; doubles up to
    /// `retry_max_delay_ms`.
    pub retry_initial_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    /// Kafka consumer group of the authorization events consumer.
    pub consumer_group: String,
}

/// A merchant's overrides of the defaults; absent fields inherit them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MerchantPolicy {
    pub ack_window_ms: Option<u64>,
    pub orphan_policy: Option<String>,
}

impl Default for ReversalHandlerConfig {
    fn default() -> Self {
        ReversalHandlerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            authorization_endpoint: "https://127.0.0.1:50052".into(),
            ack_window_ms: 30_000,
            orphan_policy: OrphanPolicy::Reverse.as_str().into(),
            merchants: BTreeMap::new(),
            channels: BTreeMap::new(),
            sweep_interval_ms: 100,
            retry_initial_delay_ms: 200,
            retry_max_delay_ms: 5_000,
            consumer_group: "reversal-handler".into(),
        }
    }
}

impl ReversalHandlerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if tonic::transport::Endpoint::from_shared(self.authorization_endpoint.clone()).is_err() {
            return Err(ConfigError::invalid(
                "reversal_handler.authorization_endpoint",
                "not a valid URL",
            ));
        }
        check_window("reversal_handler.ack_window_ms", self.ack_window_ms)?;
        check_policy("reversal_handler.orphan_policy", &self.orphan_policy)?;
        for (channel, window_ms) in &self.channels {
            let key = format!("reversal_handler.channels.{channel}");
            switch_core::Channel::parse(channel)
                .map_err(|e| ConfigError::invalid(key.clone(), e.reason))?;
            check_window(&key, *window_ms)?;
        }
        for (merchant_id, merchant) in &self.merchants {
            if merchant_id.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "reversal_handler.merchants",
                    "merchant ids must not be empty",
                ));
            }
            if let Some(window) = merchant.ack_window_ms {
                check_window(
                    &format!("reversal_handler.merchants.{merchant_id}.ack_window_ms"),
                    window,
                )?;
            }
            if let Some(policy) = &merchant.orphan_policy {
                check_policy(
                    &format!("reversal_handler.merchants.{merchant_id}.orphan_policy"),
                    policy,
                )?;
            }
        }
        if !(1..=60_000).contains(&self.sweep_interval_ms) {
            return Err(ConfigError::invalid(
                "reversal_handler.sweep_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        if self.retry_initial_delay_ms == 0 {
            return Err(ConfigError::invalid(
                "reversal_handler.retry_initial_delay_ms",
                "must be at least 1",
            ));
        }
        if !(self.retry_initial_delay_ms..=MAX_RETRY_DELAY_MS).contains(&self.retry_max_delay_ms) {
            return Err(ConfigError::invalid(
                "reversal_handler.retry_max_delay_ms",
                format!("must be between retry_initial_delay_ms and {MAX_RETRY_DELAY_MS}"),
            ));
        }
        if self.consumer_group.trim().is_empty() {
            return Err(ConfigError::invalid(
                "reversal_handler.consumer_group",
                "must not be empty",
            ));
        }
        Ok(())
    }

    /// The acknowledgement window and the orphan policy of `merchant_id`:
    /// its overrides where it has them, the defaults otherwise. A policy
    /// that does not parse (only possible without [`Self::validate`]) falls
    /// back to reversing, the choice that never leaves a shopper charged for
    /// nothing.
    /// The acknowledgement window of an approval: the merchant's own, else
    /// its channel's, else the default.
    pub fn window_for(&self, merchant_id: &str, channel: &str) -> Duration {
        let merchant_window = self.merchant(merchant_id).and_then(|m| m.ack_window_ms);
        let channel = switch_core::Channel::parse(channel).unwrap_or_default();
        let channel_window = self.channels.get(channel.as_str()).copied();
        Duration::from_millis(
            merchant_window
                .or(channel_window)
                .unwrap_or(self.ack_window_ms),
        )
    }

    fn merchant(&self, merchant_id: &str) -> Option<&MerchantPolicy> {
        self.merchants.get(merchant_id).or_else(|| {
            self.merchants
                .iter()
                .find(|(id, _)| id.eq_ignore_ascii_case(merchant_id))
                .map(|(_, policy)| policy)
        })
    }

    pub fn policy_for(&self, merchant_id: &str) -> (Duration, OrphanPolicy) {
        // Environment overrides arrive lower-cased (`SWITCH__REVERSAL_HANDLER__
        // MERCHANTS__M1__…` becomes `m1`); merchant ids are alphanumeric, so
        // they match whatever their case.
        let merchant = self.merchant(merchant_id);
        let window_ms = merchant
            .and_then(|m| m.ack_window_ms)
            .unwrap_or(self.ack_window_ms);
        let policy = merchant
            .and_then(|m| m.orphan_policy.as_deref())
            .unwrap_or(&self.orphan_policy);
        (
            Duration::from_millis(window_ms),
            OrphanPolicy::parse(policy).unwrap_or_default(),
        )
    }
}

fn check_window(key: &str, window_ms: u64) -> Result<(), ConfigError> {
    if (1..=MAX_ACK_WINDOW_MS).contains(&window_ms) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("must be between 1 and {MAX_ACK_WINDOW_MS}"),
        ))
    }
}

fn check_policy(key: &str, policy: &str) -> Result<(), ConfigError> {
    OrphanPolicy::parse(policy)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_merchants(merchants: &[(&str, MerchantPolicy)]) -> ReversalHandlerConfig {
        ReversalHandlerConfig {
            merchants: merchants
                .iter()
                .map(|(id, m)| ((*id).to_owned(), m.clone()))
                .collect(),
            ..ReversalHandlerConfig::default()
        }
    }

    fn invalid_key(config: &ReversalHandlerConfig) -> String {
        match config.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn windows_come_from_the_merchant_then_the_channel_then_the_default() {
        let mut config = with_merchants(&[(
            "M1",
            MerchantPolicy {
                ack_window_ms: Some(1_000),
                orphan_policy: None,
            },
        )]);
        config.channels = BTreeMap::from([("qr".to_owned(), 120_000)]);
        config.validate().unwrap();
        assert_eq!(config.window_for("M1", "qr"), Duration::from_secs(1));
        assert_eq!(config.window_for("M2", "qr"), Duration::from_secs(120));
        assert_eq!(config.window_for("M2", "card"), Duration::from_secs(30));
        assert_eq!(config.window_for("M2", ""), Duration::from_secs(30));
        config.channels = BTreeMap::from([("nfc".to_owned(), 1_000)]);
        assert_eq!(invalid_key(&config), "reversal_handler.channels.nfc");
    }

    #[test]
    fn overrides_from_the_environment_match_whatever_their_case() {
        // `config` lower-cases environment keys.
        let config = with_merchants(&[(
            "merchant0000002",
            MerchantPolicy {
                ack_window_ms: Some(2_000),
                orphan_policy: Some("confirm".to_owned()),
            },
        )]);
        assert_eq!(
            config.policy_for("MERCHANT0000002"),
            (Duration::from_secs(2), OrphanPolicy::Confirm)
        );
        assert_eq!(
            config.policy_for("MERCHANT0000001").1,
            OrphanPolicy::Reverse
        );
    }

    #[test]
    fn defaults_are_valid_and_reverse_after_thirty_seconds() {
        let config = ReversalHandlerConfig::default();
        config.validate().unwrap();
        assert_eq!(
            config.policy_for("M1"),
            (Duration::from_secs(30), OrphanPolicy::Reverse)
        );
        assert_eq!(config.listen.port(), 50053);
        assert_eq!(config.consumer_group, "reversal-handler");
    }

    #[test]
    fn merchant_overrides_apply_field_by_field() {
        let config = with_merchants(&[
            (
                "FUEL01",
                MerchantPolicy {
                    ack_window_ms: Some(5_000),
                    orphan_policy: Some("confirm".into()),
                },
            ),
            (
                "SLOW01",
                MerchantPolicy {
                    ack_window_ms: Some(120_000),
                    orphan_policy: None,
                },
            ),
            (
                "KEEP01",
                MerchantPolicy {
                    ack_window_ms: None,
                    orphan_policy: Some("confirm".into()),
                },
            ),
        ]);
        config.validate().unwrap();
        assert_eq!(
            config.policy_for("FUEL01"),
            (Duration::from_secs(5), OrphanPolicy::Confirm)
        );
        assert_eq!(
            config.policy_for("SLOW01"),
            (Duration::from_secs(120), OrphanPolicy::Reverse)
        );
        assert_eq!(
            config.policy_for("KEEP01"),
            (Duration::from_secs(30), OrphanPolicy::Confirm)
        );
        assert_eq!(
            config.policy_for("OTHER"),
            (Duration::from_secs(30), OrphanPolicy::Reverse)
        );
    }

    #[test]
    fn validation_names_the_bad_key() {
        let bad_policy = ReversalHandlerConfig {
            orphan_policy: "refund".into(),
            ..ReversalHandlerConfig::default()
        };
        assert_eq!(invalid_key(&bad_policy), "reversal_handler.orphan_policy");

        let bad_merchant = with_merchants(&[(
            "M1",
            MerchantPolicy {
                ack_window_ms: None,
                orphan_policy: Some("Reverse".into()),
            },
        )]);
        assert_eq!(
            invalid_key(&bad_merchant),
            "reversal_handler.merchants.M1.orphan_policy"
        );

        let zero_window = with_merchants(&[(
            "M1",
            MerchantPolicy {
                ack_window_ms: Some(0),
                orphan_policy: None,
            },
        )]);
        assert_eq!(
            invalid_key(&zero_window),
            "reversal_handler.merchants.M1.ack_window_ms"
        );

        let cases: [(ReversalHandlerConfig, &str); 6] = [
            (
                ReversalHandlerConfig {
                    ack_window_ms: MAX_ACK_WINDOW_MS + 1,
                    ..ReversalHandlerConfig::default()
                },
                "reversal_handler.ack_window_ms",
            ),
            (
                ReversalHandlerConfig {
                    authorization_endpoint: "not a url".into(),
                    ..ReversalHandlerConfig::default()
                },
                "reversal_handler.authorization_endpoint",
            ),
            (
                ReversalHandlerConfig {
                    sweep_interval_ms: 0,
                    ..ReversalHandlerConfig::default()
                },
                "reversal_handler.sweep_interval_ms",
            ),
            (
                ReversalHandlerConfig {
                    retry_initial_delay_ms: 0,
                    ..ReversalHandlerConfig::default()
                },
                "reversal_handler.retry_initial_delay_ms",
            ),
            (
                ReversalHandlerConfig {
                    retry_max_delay_ms: 100,
                    ..ReversalHandlerConfig::default()
                },
                "reversal_handler.retry_max_delay_ms",
            ),
            (
                ReversalHandlerConfig {
                    consumer_group: " ".into(),
                    ..ReversalHandlerConfig::default()
                },
                "reversal_handler.consumer_group",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(invalid_key(&config), key);
        }
    }

    #[test]
    fn unparsable_policy_falls_back_to_reverse() {
        let config = ReversalHandlerConfig {
            orphan_policy: "keep".into(),
            ..ReversalHandlerConfig::default()
        };
        assert_eq!(config.policy_for("M1").1, OrphanPolicy::Reverse);
    }
}
