//! Layered configuration shared by every service.
//!
//! Sources, later ones winning: the compiled-in defaults of the target type,
//! an optional TOML file, then environment variables named
//! `SWITCH__SECTION__KEY` (double underscores separate levels, so single
//! underscores stay inside key names). After deserialising, [`Validate`]
//! checks values that types alone cannot, and names the offending key.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of the environment variables that override configuration.
pub const ENV_PREFIX: &str = "SWITCH";

/// Why configuration could not be loaded. Every variant names the key or the
/// file, so an operator can fix it without reading code.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Source(#[from] config::ConfigError),
    #[error("configuration key `{key}` is invalid: {reason}")]
    Invalid { key: String, reason: String },
    #[error("configuration could not be rendered: {0}")]
    Render(String),
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Checks that go beyond what deserialisation enforces.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T` from defaults, `file` (when given) and the environment, then
/// validates it.
pub fn load<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default + Validate,
{
    load_with_env(file, std::env::vars())
}

/// [`load`] with an explicit environment, so tests need not mutate the
/// process environment.
pub fn load_with_env<T, I>(file: Option<&Path>, env: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default + Validate,
    I: IntoIterator<Item = (String, String)>,
{
    // Defaults come from each section's `#[serde(default)]`, not from a
    // serialised copy: serialising would redact every `Secret`.
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    let env_map = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env_map)),
    );
    let loaded: T = builder.build()?.try_deserialize()?;
    loaded.validate()?;
    Ok(loaded)
}

/// Renders the effective configuration as TOML, with every [`Secret`]
/// redacted, for `--dump-config`.
pub fn dump<T: Serialize>(value: &T) -> Result<String, ConfigError> {
    toml::to_string_pretty(value).map_err(|e| ConfigError::Render(e.to_string()))
}

/// A configuration value that must never be printed: `Debug`, `Display` and
/// serialisation all show a placeholder. The value is reached only through
/// [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub const REDACTED: &'static str = "[redacted]";

    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Self::REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        section: Section,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Section {
        timeout_ms: u64,
        name: String,
        key: Secret,
    }

    impl Default for Section {
        fn default() -> Self {
            Section {
                timeout_ms: 100,
                name: "default".into(),
                key: Secret::new("s3cret"),
            }
        }
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.section.timeout_ms == 0 {
                return Err(ConfigError::invalid("section.timeout_ms", "must be > 0"));
            }
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_file_or_env() {
        let loaded: Sample = load_with_env(None, env(&[])).unwrap();
        assert_eq!(loaded, Sample::default());
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let dir = std::env::temp_dir().join(format!("cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("switch.toml");
        std::fs::write(&file, "[section]\ntimeout_ms = 250\nname = \"file\"\n").unwrap();
        let loaded: Sample =
            load_with_env(Some(&file), env(&[("SWITCH__SECTION__NAME", "env")])).unwrap();
        assert_eq!(loaded.section.timeout_ms, 250);
        assert_eq!(loaded.section.name, "env");
    }

    #[test]
    fn validation_names_the_bad_key() {
        let err = load_with_env::<Sample, _>(None, env(&[("SWITCH__SECTION__TIMEOUT_MS", "0")]))
            .unwrap_err();
        assert!(err.to_string().contains("section.timeout_ms"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = load_with_env::<Sample, _>(None, env(&[("SWITCH__SECTION__TIMEOUT_MS", "soon")]))
            .unwrap_err();
        assert!(err.to_string().contains("timeout_ms"), "{err}");
    }

    #[test]
    fn default_secrets_survive_loading() {
        let loaded: Sample = load_with_env(None, env(&[])).unwrap();
        assert_eq!(loaded.section.key.expose(), "s3cret");
    }

    #[test]
    fn dump_redacts_secrets() {
        let rendered = dump(&Sample::default()).unwrap();
        assert!(rendered.contains(Secret::REDACTED));
        assert!(!rendered.contains("s3cret"));
        assert_eq!(format!("{:?}", Secret::new("s3cret")), Secret::REDACTED);
    }
}
