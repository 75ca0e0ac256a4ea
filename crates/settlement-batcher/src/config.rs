//! The settlement batcher's configuration: where authorization is, each
//! merchant's cut-off, fee rate and payout account, where payout files go,
//! and who the acquirer paying them is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use switch_core::FeeRate;
use switch_platform::config::{ConfigError, DevelopmentSetting, DevelopmentSettings};
use switch_platform::outbox::OutboxConfig;
use time::Time;
use time::macros::format_description;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettlementConfig {
    /// Where `SettlementService`, health and reflection are served.
    pub listen: SocketAddr,
    /// URL of authorization's `AuthorizationService`: confirmations by batch
    /// upload go there, and upload items the event stream has not delivered
    /// yet are looked up there.
    pub authorization_endpoint: String,
    /// Daily cut-off, "HH:MM" in UTC, for merchants without their own.
    pub cutoff: String,
    /// Merchant discount rate in basis points for merchants without their own.
    pub fee_basis_points: u32,
    /// The discount rate on QR payments, in basis points, for merchants
    /// without their own (default `FeeRate::QR_DEFAULT`, 38).
    pub qr_fee_basis_points: u32,
    /// Per-merchant overrides, keyed by merchant id.
    pub merchants: BTreeMap<String, MerchantSettlement>,
    /// Whether windows close by themselves at their cut-off. Off, windows
    /// close only on `RunSettlement` (tests, manual operation).
    pub scheduler_enabled: bool,
    /// How often the scheduler looks for windows past their cut-off.
    pub scheduler_interval_ms: u64,
    /// Where payout files (CSV and pain.001) are written.
    pub payout_dir: PathBuf,
    /// The acquirer's account the credit transfers are paid from.
    pub debtor_name: String,
    pub debtor_iban: String,
    pub debtor_bic: String,
    /// Kafka consumer group of the authorization events consumer.
    pub consumer_group: String,
    pub outbox: OutboxConfig,
}

/// A merchant's settlement terms; absent fields inherit the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MerchantSettlement {
    pub cutoff: Option<String>,
    pub fee_basis_points: Option<u32>,
    pub qr_fee_basis_points: Option<u32>,
    /// Legal name on the credit transfer.
    pub name: Option<String>,
    /// IBAN of the merchant's account; without one the payout names the
    /// merchant's account held with the acquirer.
    pub iban: Option<String>,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        SettlementConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50054)),
            authorization_endpoint: "https://127.0.0.1:50052".into(),
            cutoff: "22:00".into(),
            fee_basis_points: u32::from(FeeRate::DEFAULT.basis_points()),
            qr_fee_basis_points: u32::from(FeeRate::QR_DEFAULT.basis_points()),
            merchants: BTreeMap::new(),
            scheduler_enabled: true,
            scheduler_interval_ms: 30_000,
            payout_dir: PathBuf::from(".run/payouts"),
            debtor_name: "Acquirer Settlement Account".into(),
            debtor_iban: "DE89370400440532013000".into(),
            debtor_bic: "COBADEFFXXX".into(),
            consumer_group: "settlement-batcher".into(),
            outbox: OutboxConfig::default(),
        }
    }
}

impl DevelopmentSettings for SettlementConfig {
    fn development_settings(&self) -> Vec<DevelopmentSetting> {
        let defaults = SettlementConfig::default();
        [
            (
                "settlement.debtor_name",
                &self.debtor_name,
                &defaults.debtor_name,
            ),
            (
                "settlement.debtor_iban",
                &self.debtor_iban,
                &defaults.debtor_iban,
            ),
            (
                "settlement.debtor_bic",
                &self.debtor_bic,
                &defaults.debtor_bic,
            ),
        ]
        .into_iter()
        .filter(|(_, value, default)| value == default)
        .map(|(key, _, _)| {
            DevelopmentSetting::new(key, "the example account payouts would be drawn on")
        })
        .collect()
    }
}

/// The terms that apply to one merchant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantTerms {
    pub cutoff: Time,
    /// On card sales.
    pub fee: FeeRate,
    /// On QR payments.
    pub qr_fee: FeeRate,
    pub name: String,
    pub iban: Option<String>,
}

impl SettlementConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if tonic::transport::Endpoint::from_shared(self.authorization_endpoint.clone()).is_err() {
            return Err(ConfigError::invalid(
                "settlement.authorization_endpoint",
                "not a valid URL",
            ));
        }
        parse_cutoff("settlement.cutoff", &self.cutoff)?;
        parse_fee("settlement.fee_basis_points", self.fee_basis_points)?;
        parse_fee("settlement.qr_fee_basis_points", self.qr_fee_basis_points)?;
        for (merchant_id, merchant) in &self.merchants {
            if merchant_id.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "settlement.merchants",
                    "merchant ids must not be empty",
                ));
            }
            if let Some(cutoff) = &merchant.cutoff {
                parse_cutoff(
                    &format!("settlement.merchants.{merchant_id}.cutoff"),
                    cutoff,
                )?;
            }
            if let Some(fee) = merchant.fee_basis_points {
                parse_fee(
                    &format!("settlement.merchants.{merchant_id}.fee_basis_points"),
                    fee,
                )?;
            }
            if let Some(fee) = merchant.qr_fee_basis_points {
                parse_fee(
                    &format!("settlement.merchants.{merchant_id}.qr_fee_basis_points"),
                    fee,
                )?;
            }
            if let Some(iban) = &merchant.iban {
                check_iban(&format!("settlement.merchants.{merchant_id}.iban"), iban)?;
            }
        }
        if !(100..=3_600_000).contains(&self.scheduler_interval_ms) {
            return Err(ConfigError::invalid(
                "settlement.scheduler_interval_ms",
                "must be between 100 and 3600000",
            ));
        }
        if self.payout_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "settlement.payout_dir",
                "must not be empty",
            ));
        }
        check_iban("settlement.debtor_iban", &self.debtor_iban)?;
        if !(8..=11).contains(&self.debtor_bic.len())
            || !self.debtor_bic.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ConfigError::invalid(
                "settlement.debtor_bic",
                "must be an 8 or 11 character BIC",
            ));
        }
        if self.debtor_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "settlement.debtor_name",
                "must not be empty",
            ));
        }
        if self.consumer_group.trim().is_empty() {
            return Err(ConfigError::invalid(
                "settlement.consumer_group",
                "must not be empty",
            ));
        }
        self.outbox.validate("settlement")?;
        Ok(())
    }

    /// The terms of `merchant_id`: its overrides where it has them, the
    /// defaults otherwise. Merchant ids from the environment arrive
    /// lower-cased (the `config` crate folds keys), so they match without
    /// regard to case.
    pub fn terms_for(&self, merchant_id: &str) -> MerchantTerms {
        let merchant = self
            .merchants
            .iter()
            .find(|(id, _)| id.eq_ignore_ascii_case(merchant_id))
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let cutoff = merchant
            .cutoff
            .as_deref()
            .and_then(|c| parse_cutoff("", c).ok())
            .or_else(|| parse_cutoff("", &self.cutoff).ok())
            .unwrap_or(Time::MIDNIGHT);
        let fee = parse_fee(
            "",
            merchant.fee_basis_points.unwrap_or(self.fee_basis_points),
        )
        .unwrap_or(FeeRate::DEFAULT);
        let qr_fee = parse_fee(
            "",
            merchant
                .qr_fee_basis_points
                .unwrap_or(self.qr_fee_basis_points),
        )
        .unwrap_or(FeeRate::QR_DEFAULT);
        MerchantTerms {
            cutoff,
            fee,
            qr_fee,
            name: merchant.name.unwrap_or_else(|| merchant_id.to_owned()),
            iban: merchant.iban,
        }
    }
}

fn parse_cutoff(key: &str, value: &str) -> Result<Time, ConfigError> {
    Time::parse(value, format_description!("[hour]:[minute]"))
        .map_err(|_| ConfigError::invalid(key, format!("'{value}' is not a time of day HH:MM")))
}

fn parse_fee(key: &str, basis_points: u32) -> Result<FeeRate, ConfigError> {
    FeeRate::from_basis_points(basis_points).map_err(|e| ConfigError::invalid(key, e.reason))
}

/// Shape only (2 letters, 2 digits, up to 30 alphanumerics) and the ISO
/// 13616 mod-97 check: a typo must not send a merchant's money elsewhere.
fn check_iban(key: &str, iban: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| Err(ConfigError::invalid(key, why.to_owned()));
    let bytes = iban.as_bytes();
    if !(15..=34).contains(&bytes.len())
        || !bytes[..2].iter().all(u8::is_ascii_uppercase)
        || !bytes[2..4].iter().all(u8::is_ascii_digit)
        || !bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return bad("not an IBAN (country code, check digits, up to 30 letters or digits)");
    }
    let rearranged = bytes[4..].iter().chain(&bytes[..4]);
    let mut remainder: u32 = 0;
    for &b in rearranged {
        let value = if b.is_ascii_digit() {
            u32::from(b - b'0')
        } else {
            u32::from(b - b'A') + 10
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    if remainder != 1 {
        return bad("IBAN check digits do not match");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        SettlementConfig::default().validate().unwrap();
    }

    type Mutation = fn(&mut SettlementConfig);

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(Mutation, &str)> = vec![
            (|c| c.cutoff = "25:00".into(), "settlement.cutoff"),
            (
                |c| c.fee_basis_points = 10_001,
                "settlement.fee_basis_points",
            ),
            (
                |c| c.qr_fee_basis_points = 10_001,
                "settlement.qr_fee_basis_points",
            ),
            (
                |c| {
                    c.merchants.insert(
                        "MERCHANT0000001".into(),
                        MerchantSettlement {
                            qr_fee_basis_points: Some(20_000),
                            ..Default::default()
                        },
                    );
                },
                "settlement.merchants.MERCHANT0000001.qr_fee_basis_points",
            ),
            (
                |c| c.debtor_iban = "DE00370400440532013000".into(),
                "settlement.debtor_iban",
            ),
            (|c| c.debtor_bic = "X".into(), "settlement.debtor_bic"),
            (
                |c| c.authorization_endpoint = "not a url".into(),
                "settlement.authorization_endpoint",
            ),
            (
                |c| c.scheduler_interval_ms = 0,
                "settlement.scheduler_interval_ms",
            ),
            (
                |c| {
                    c.merchants.insert(
                        "MERCHANT0000001".into(),
                        MerchantSettlement {
                            cutoff: Some("noon".into()),
                            ..Default::default()
                        },
                    );
                },
                "settlement.merchants.MERCHANT0000001.cutoff",
            ),
            (
                |c| {
                    c.merchants.insert(
                        "MERCHANT0000001".into(),
                        MerchantSettlement {
                            iban: Some("GB82WEST12345698765433".into()),
                            ..Default::default()
                        },
                    );
                },
                "settlement.merchants.MERCHANT0000001.iban",
            ),
        ];
        for (mutate, key) in cases {
            let mut config = SettlementConfig::default();
            mutate(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{error} should name {key}");
        }
    }

    #[test]
    fn valid_ibans_pass_the_check() {
        for iban in [
            "GB82WEST12345698765432",
            "DE89370400440532013000",
            "NL91ABNA0417164300",
        ] {
            check_iban("k", iban).unwrap();
        }
    }

    #[test]
    fn merchant_terms_override_defaults_case_insensitively() {
        let mut config = SettlementConfig::default();
        config.merchants.insert(
            "merchant0000002".into(),
            MerchantSettlement {
                cutoff: Some("18:30".into()),
                fee_basis_points: Some(150),
                qr_fee_basis_points: Some(90),
                name: Some("Corner Shop".into()),
                iban: None,
            },
        );
        let terms = config.terms_for("MERCHANT0000002");
        assert_eq!(terms.cutoff, time::macros::time!(18:30));
        assert_eq!(terms.fee.basis_points(), 150);
        assert_eq!(terms.qr_fee.basis_points(), 90);
        assert_eq!(terms.name, "Corner Shop");
        let default = config.terms_for("MERCHANT0000001");
        assert_eq!(default.fee, FeeRate::DEFAULT);
        assert_eq!(default.qr_fee, FeeRate::QR_DEFAULT);
        assert_eq!(FeeRate::QR_DEFAULT.basis_points(), 38);
        assert_eq!(default.cutoff, time::macros::time!(22:00));
        assert_eq!(default.name, "MERCHANT0000001");
    }
}
