//! Layered configuration shared by every service.
//!
//! Sources, later ones winning: the compiled-in defaults of the target type,
//! an optional TOML file, then environment variables named
//! `SWITCH__SECTION__KEY` (double underscores separate levels, so single
//! underscores stay inside key names). After deserialising, [`Validate`]
//! checks values that types alone cannot, and names the offending key.

use std::fmt;
use std::path::{Path, PathBuf};

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
    #[error(
        "environment = \"production\" refuses development settings: {}",
        DevelopmentSetting::list(.0)
    )]
    DevelopmentSettings(Vec<DevelopmentSetting>),
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

/// Where a deployment runs. A laptop runs with development defaults (a
/// published fingerprint key, the issuer simulator, plaintext lab modes);
/// production refuses to start while any of them is still set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Development,
    Production,
}

/// A setting that is right on a laptop and wrong in production, with the
/// key an operator has to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevelopmentSetting {
    pub key: String,
    pub reason: String,
}

impl DevelopmentSetting {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        DevelopmentSetting {
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn list(settings: &[DevelopmentSetting]) -> String {
        settings
            .iter()
            .map(|s| format!("`{}` ({})", s.key, s.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Every section says which of its own settings are development-only, so
/// the rule for a key lives beside the key's default.
pub trait DevelopmentSettings {
    fn development_settings(&self) -> Vec<DevelopmentSetting>;
}

/// In production, refuses `settings` (all of them, named, at once); in
/// development, accepts anything.
pub fn refuse_in_production(
    environment: Environment,
    settings: Vec<DevelopmentSetting>,
) -> Result<(), ConfigError> {
    match environment {
        Environment::Production if !settings.is_empty() => {
            Err(ConfigError::DevelopmentSettings(settings))
        }
        _ => Ok(()),
    }
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
///
/// It is given either as the value itself or as `{ file = "/path" }`, read
/// once at load (one trailing newline dropped), which is how a Kubernetes
/// Secret mounted as a file reaches it; from the environment that is
/// `SWITCH__SECTION__KEY__FILE=/path`.
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
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// A value (numbers too: the environment's values are parsed before they
/// reach a field) or a `{ file }` table.
struct SecretVisitor;

impl<'de> serde::de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret string or `{ file = \"/path\" }`")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
        Ok(Secret(value.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Secret, E> {
        Ok(Secret(value))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Secret, E> {
        Ok(Secret(value.to_string()))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Secret, E> {
        Ok(Secret(value.to_string()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Secret, A::Error> {
        use serde::de::Error;
        let mut file: Option<PathBuf> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "file" {
                return Err(A::Error::unknown_field(&key, &["file"]));
            }
            file = Some(map.next_value()?);
        }
        let file = file.ok_or_else(|| A::Error::missing_field("file"))?;
        Secret::read(&file).map_err(A::Error::custom)
    }
}

impl Secret {
    /// Reads a secret file; the error names the file, never its contents.
    pub fn read(file: &Path) -> Result<Secret, String> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("secret file {}: {e}", file.display()))?;
        let value = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        if value.is_empty() {
            return Err(format!("secret file {} is empty", file.display()));
        }
        Ok(Secret(value.to_owned()))
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
    fn a_secret_is_read_from_a_file_named_in_the_file_or_the_environment() {
        let dir = std::env::temp_dir().join(format!("cfg-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("key");
        std::fs::write(&secret, "from-a-file\n").unwrap();
        let file = dir.join("switch.toml");
        std::fs::write(
            &file,
            format!("[section]\nkey = {{ file = \"{}\" }}\n", secret.display()),
        )
        .unwrap();
        let loaded: Sample = load_with_env(Some(&file), env(&[])).unwrap();
        assert_eq!(loaded.section.key.expose(), "from-a-file");

        std::fs::write(&secret, "rotated\r\n").unwrap();
        let path = secret.display().to_string();
        let loaded: Sample =
            load_with_env(None, env(&[("SWITCH__SECTION__KEY__FILE", path.as_str())])).unwrap();
        assert_eq!(loaded.section.key.expose(), "rotated");
    }

    #[test]
    fn a_missing_or_empty_secret_file_is_refused_naming_the_file_not_a_value() {
        let dir = std::env::temp_dir().join(format!("cfg-secret-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("absent").display().to_string();
        let err = load_with_env::<Sample, _>(
            None,
            env(&[("SWITCH__SECTION__KEY__FILE", missing.as_str())]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&missing), "{err}");
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let empty = empty.display().to_string();
        let err = load_with_env::<Sample, _>(
            None,
            env(&[("SWITCH__SECTION__KEY__FILE", empty.as_str())]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn production_refuses_every_development_setting_at_once_and_development_takes_them() {
        let settings = vec![
            DevelopmentSetting::new("a.key", "the published default"),
            DevelopmentSetting::new("b.lab", "a lab-only mode"),
        ];
        assert!(refuse_in_production(Environment::Development, settings.clone()).is_ok());
        assert!(refuse_in_production(Environment::Production, Vec::new()).is_ok());
        let err = refuse_in_production(Environment::Production, settings)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "environment = \"production\" refuses development settings: \
             `a.key` (the published default); `b.lab` (a lab-only mode)"
        );
    }

    #[test]
    fn dump_redacts_secrets() {
        let rendered = dump(&Sample::default()).unwrap();
        assert!(rendered.contains(Secret::REDACTED));
        assert!(!rendered.contains("s3cret"));
        assert_eq!(format!("{:?}", Secret::new("s3cret")), Secret::REDACTED);
    }
}
