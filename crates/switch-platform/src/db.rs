//! PostgreSQL access: one pool per service, bound to that service's own
//! schema through the connection's `search_path`, so no service can read
//! another's tables by accident and test suites can run side by side in
//! schemas of their own.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::config::{ConfigError, DevelopmentSetting, DevelopmentSettings, Secret};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL without a schema; each service adds its own.
    pub url: String,
    /// Connections per service. Group commit makes concurrency what turns
    /// a flush-bound disk into throughput, but on a small machine more
    /// backends than ~16 only add contention (see the README's benchmark).
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    /// Prepended to every service's schema name (tests use a unique one).
    pub schema_prefix: String,
    /// The password, when it is kept out of the URL (a Kubernetes Secret
    /// mounted as a file: `password = { file = "…" }`). TLS settings stay
    /// in the URL (`sslmode=verify-full&sslrootcert=…`), passed through as
    /// they are.
    pub password: Option<Secret>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/test".into(),
            max_connections: 16,
            acquire_timeout_ms: 5_000,
            schema_prefix: String::new(),
            password: None,
        }
    }
}

impl DevelopmentSettings for DatabaseConfig {
    fn development_settings(&self) -> Vec<DevelopmentSetting> {
        let mut found = Vec::new();
        if self.url == DatabaseConfig::default().url {
            found.push(DevelopmentSetting::new(
                "database.url",
                "the laptop's superuser database",
            ));
        }
        if !url_has_password(&self.url) && self.password.is_none() {
            found.push(DevelopmentSetting::new(
                "database.password",
                "no password: neither in the URL nor as `database.password`",
            ));
        }
        found
    }
}

impl DatabaseConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        PgConnectOptions::from_str(&self.url)
            .map_err(|e| ConfigError::invalid("database.url", e.to_string()))?;
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        if !is_identifier(&self.schema_prefix, true) {
            return Err(ConfigError::invalid(
                "database.schema_prefix",
                "only lower-case letters, digits and '_' are allowed",
            ));
        }
        Ok(())
    }

    /// The URL's options with [`DatabaseConfig::password`] applied.
    pub fn connect_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        let options = PgConnectOptions::from_str(&self.url)?;
        Ok(match &self.password {
            Some(password) => options.password(password.expose()),
            None => options,
        })
    }

    /// The schema a service called `service` owns.
    pub fn schema_for(&self, service: &str) -> String {
        format!("{}{}", self.schema_prefix, service.replace('-', "_"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid schema name `{0}`")]
    InvalidSchema(String),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Creates `schema` if needed and returns a pool whose connections all use
/// it as their `search_path`.
pub async fn connect(config: &DatabaseConfig, schema: &str) -> Result<PgPool, DbError> {
    if !is_identifier(schema, false) {
        return Err(DbError::InvalidSchema(schema.to_owned()));
    }
    let base = config.connect_options()?;
    let mut bootstrap = sqlx::PgConnection::connect_with(&base).await?;
    // The name was checked above to be a plain identifier, so quoting is safe.
    let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .execute(&mut bootstrap)
        .await;
    match created {
        Ok(_) => {}
        // Two processes creating the same schema at once race inside
        // PostgreSQL even with IF NOT EXISTS; the loser's schema exists.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {}
        Err(e) => return Err(e.into()),
    }
    bootstrap.close().await?;

    // The schema names the service (and, under a prefix, its deployment),
    // so operators see in pg_stat_activity which service holds a backend.
    let options = base
        .options([("search_path", schema)])
        .application_name(schema);
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Drops a schema and everything in it; for tests that made their own.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), DbError> {
    if !is_identifier(schema, false) {
        return Err(DbError::InvalidSchema(schema.to_owned()));
    }
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Whether a connection URL carries a password, in its user info or as
/// the `password` parameter.
fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before_query.split('/').next().unwrap_or("");
    let in_user_info = authority.rsplit_once('@').is_some_and(|(user_info, _)| {
        user_info
            .split_once(':')
            .is_some_and(|(_, p)| !p.is_empty())
    });
    let in_query = query.split('&').any(|pair| {
        pair.strip_prefix("password=")
            .is_some_and(|p| !p.is_empty())
    });
    in_user_info || in_query
}

fn is_identifier(name: &str, allow_empty: bool) -> bool {
    (allow_empty || !name.is_empty())
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Rows one pruning statement deletes at most, so no delete holds its
/// locks (or grows one transaction) for long.
pub const PRUNE_BATCH: i64 = 5_000;

/// Runs `delete` (a statement that deletes at most [`PRUNE_BATCH`] rows)
/// until a run deletes fewer; returns how many rows it deleted in all.
pub async fn delete_in_batches<'q>(
    pool: &PgPool,
    delete: impl Fn() -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        let batch = delete().execute(pool).await?.rows_affected();
        deleted += batch;
        if batch < PRUNE_BATCH as u64 {
            return Ok(deleted);
        }
    }
}

/// Hours as a `make_interval(hours => …)` argument.
pub fn interval_hours(hours: u32) -> i32 {
    i32::try_from(hours).unwrap_or(i32::MAX)
}

/// Listens on `channel` until `stop`, reconnecting (after a second) when
/// the connection drops: `on_notification` gets each notification's
/// payload, `on_connected` runs after every (re)connection, because
/// notifications sent while the listener was away are lost and whoever
/// waits on them must look for itself.
pub async fn listen(
    pool: PgPool,
    channel: String,
    stop: tokio_util::sync::CancellationToken,
    mut on_connected: impl FnMut(),
    mut on_notification: impl FnMut(&str),
) {
    while !stop.is_cancelled() {
        let connected = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = connected => result,
        };
        match result {
            Ok(mut listener) => {
                on_connected();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        received = listener.try_recv() => match received {
                            Ok(Some(notification)) => on_notification(notification.payload()),
                            Ok(None) => {
                                tracing::warn!(%channel, "Listener lost its connection; reconnecting.");
                                break;
                            }
                            Err(error) => {
                                tracing::warn!(%error, %channel, "Listener failed; reconnecting.");
                                break;
                            }
                        },
                    }
                }
            }
            Err(error) => tracing::warn!(%error, %channel, "Listener could not connect."),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(is_identifier("authorization", false));
        assert!(is_identifier("t_1a2b_authorization", false));
        assert!(!is_identifier("", false));
        assert!(!is_identifier("x\"; drop table y; --", false));
        assert!(!is_identifier("Upper", false));
    }

    #[test]
    fn bad_url_and_prefix_are_named() {
        let config = DatabaseConfig {
            url: "not a url".into(),
            ..DatabaseConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("database.url")
        );
        let config = DatabaseConfig {
            schema_prefix: "Bad-Prefix".into(),
            ..DatabaseConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("database.schema_prefix")
        );
    }

    #[test]
    fn a_password_is_found_in_the_user_info_or_the_query_only() {
        assert!(url_has_password("postgres://switch:pw@db:5432/switch"));
        assert!(url_has_password(
            "postgres://switch@db/switch?sslmode=verify-full&password=pw"
        ));
        assert!(!url_has_password("postgres://switch@db:5432/switch"));
        assert!(!url_has_password("postgres://switch:@db/switch"));
        assert!(!url_has_password("postgres://db/switch?user=a:b@c"));
        assert!(!url_has_password("not a url"));
    }

    #[test]
    fn the_laptops_database_and_a_password_less_one_are_development_settings() {
        let keys = |config: &DatabaseConfig| -> Vec<String> {
            config
                .development_settings()
                .into_iter()
                .map(|s| s.key)
                .collect()
        };
        assert_eq!(
            keys(&DatabaseConfig::default()),
            ["database.url", "database.password"]
        );
        let managed = DatabaseConfig {
            url: "postgres://switch@db.internal:5432/switch?sslmode=verify-full".into(),
            ..DatabaseConfig::default()
        };
        assert_eq!(keys(&managed), ["database.password"]);
        let with_secret = DatabaseConfig {
            password: Some(Secret::new("from-a-kubernetes-secret")),
            ..managed
        };
        assert!(keys(&with_secret).is_empty());
    }

    #[test]
    fn the_password_setting_reaches_the_connection_options_and_stays_out_of_dumps() {
        let config = DatabaseConfig {
            url: "postgres://switch@db.internal/switch".into(),
            password: Some(Secret::new("pw-from-file")),
            ..DatabaseConfig::default()
        };
        assert!(config.connect_options().is_ok());
        let dumped = crate::config::dump(&config).unwrap();
        assert!(!dumped.contains("pw-from-file"), "{dumped}");
    }
}
