//! QR platform simulator: a WeChat Pay / Alipay-like QR payment platform to
//! test the switch's QR link against.
//!
//! This crate owns the simulated platform: an HTTPS server (HTTP/1.1 over
//! TLS with the dev PKI's server certificate) speaking the protocol of
//! `crates/qr-platform`, the shopper's behaviour, the platform's own ledger
//! ([`ledger`]), its asynchronous notifications with WeChat Pay's retry
//! schedule ([`notify`]) and fault injection ([`faults`]). The rules an
//! order follows are pure functions in [`order`]. `switchd qr-simulator`
//! (and `switchd all`) start it from the `qr_simulator` section.
//!
//! # Endpoints
//!
//! Platform endpoints (`POST`, JSON, signed requests; every answer is
//! signed, refusals included): `/v1/pay`, `/v1/orders`, `/v1/query`,
//! `/v1/cancel`, `/v1/close`, `/v1/refund`. A request whose signature is
//! missing, wrong or stale is refused 401 `SIGNERROR`, a nonce seen before
//! 401 `REPLAYED` (nonces are remembered in memory for twice the timestamp
//! tolerance), a bad field 400 `INVALID_REQUEST` naming it; nothing is
//! recorded for any of them.
//!
//! Control endpoints (unsigned, for tests and audits): `POST
//! /control/faults` (a [`faults::FaultPlan`]), `POST /control/scan`
//! (`{"out_trade_no"}`: the shopper scans a merchant-presented order),
//! `GET /control/ledger/{out_trade_no}` (a [`ledger::LedgerEntry`]) and
//! `GET /control/ledger` ([`ledger::Totals`]). The same are methods of
//! [`Simulator`] for in-process tests.
//!
//! # The shopper
//!
//! Decided by the last two digits of the amount (minor units):
//!
//! | last two digits | consumer-presented (`/v1/pay`)              | merchant-presented (`/v1/orders`)        |
//! |-----------------|---------------------------------------------|------------------------------------------|
//! | `01`            | `USERPAYING`, pays after `confirm_delay_ms` | `NOTPAY`, pays after `confirm_delay_ms` (or when scanned) |
//! | `02`            | `USERPAYING` for ever (never pays)          | `NOTPAY` for ever, a scan changes nothing |
//! | `05`            | `PAYERROR` at once                          | `PAYERROR` when scanned                   |
//! | `20`            | `USERPAYING`, pays after `late_delay_ms`    | `NOTPAY`, pays after `late_delay_ms` (or when scanned) |
//! | anything else   | `SUCCESS` at once                           | `NOTPAY` until scanned, then `SUCCESS`    |
//!
//! `late_delay_ms` defaults to 60 s: past WeChat Pay's 45 s of polling, so
//! the payment lands after the terminal gave up. A scheduled payment is
//! made by the dispatcher when due even if nobody asks, and notified.
//!
//! # Orders
//!
//! The same `out_trade_no` with the same kind, amount and currency is the
//! same order, answered as it stands; with anything else it is refused 409
//! `OUT_TRADE_NO_USED`. Close: an unpaid (or failed) order is `CLOSED` for
//! good; a paid one is refused 409 `ORDERPAID` and stays paid. Cancel
//! (reverse): an unpaid order is `REVOKED`; a paid one is refunded what is
//! left of it and `REVOKED`. A cancel or close of an order the platform
//! never received is 404 `ORDERNOTEXIST`, and that payment may still arrive
//! afterwards (like an issuer's "25"): the acquirer repeats the cancel.
//! Refund: only a paid order (409 `ORDERNOTPAID`, or `ORDERCLOSED` once
//! reversed), never more than was paid (409 `REFUND_EXCEEDED`); the same
//! `out_refund_no` (unique within its order) with the same amount is the
//! same refund, with another amount 409 `REFUND_NO_USED`.
//!
//! # Notifications
//!
//! When an order becomes paid the platform `POST`s a signed
//! [`qr_platform::Notification`] to `notify_url` and repeats it until
//! answered 2xx: at once, then after 15 s, 15 s, 30 s, 3 min, 10 min,
//! 20 min, 30 min ×3, 60 min, 3 h ×3, 6 h ×2 (WeChat Pay's schedule),
//! divided by `time_scale`; then it is abandoned. With the database ledger
//! pending notifications outlive a restart and resume on their schedule.
//! Without a `notify_url` they stay pending.
//!
//! # Faults
//!
//! See [`faults::FaultPlan`]: outage (503 `SYSTEMERROR`), refused
//! connections, a query that never answers, notifications lost, duplicated
//! or delayed, and a shopper's payment racing a close (exactly one wins,
//! under the order's lock).

pub mod faults;
pub mod ledger;
pub mod notify;
pub mod order;
pub mod rules;
pub mod server;

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switch_core::{SharedClock, SystemClock};
use switch_platform::config::{ConfigError, Secret, Validate};
use switch_platform::db::DatabaseConfig;
use switch_platform::service::ServeError;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::faults::Faults;
use crate::ledger::{Ledger, LedgerEntry, LedgerError, NotificationRecord, Totals};
use crate::order::{Delays, Order, Refusal, Step};

/// Name of the service: its schema, its logs.
pub const SERVICE_NAME: &str = "qr-simulator";

/// Default listen address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    50080,
));

/// The simulator's schema migrations (its durable ledger).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where the platform's ledger lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerStore {
    /// Forgotten when the simulator stops.
    #[default]
    Memory,
    /// In the simulator's own schema (`qr_simulator`) of the switch's database.
    Database,
}

/// Configuration of the QR platform simulator (`[qr_simulator]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QrSimulatorConfig {
    /// HTTPS listen address; default `127.0.0.1:50080`.
    pub listen: SocketAddr,
    /// The server certificate chain (PEM), e.g. the dev PKI's `server.pem`.
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Where notifications are `POST`ed (the switch's receiver); unset: none
    /// are sent, they stay pending.
    pub notify_url: Option<String>,
    /// CA certificates (PEM) to trust for an `https` `notify_url`, beside
    /// the Mozilla roots.
    pub notify_ca_path: Option<PathBuf>,
    /// The acquirer's HMAC key, shared with the switch's QR link.
    pub key: Secret,
    pub ledger: LedgerStore,
    /// Divides the notification retry schedule: 1 is WeChat Pay's real
    /// schedule, 1000 turns its 15 s into 15 ms for tests.
    pub time_scale: u32,
    /// Rule `01`: how long the shopper takes to confirm.
    pub confirm_delay_ms: u64,
    /// Rule `20`: when the shopper pays late.
    pub late_delay_ms: u64,
    /// How far a request's timestamp may stray from the simulator's clock.
    pub tolerance_s: u64,
    /// Deadline of one notification attempt.
    pub notify_timeout_ms: u64,
}

/// A development key: the switch's default QR link key is the same.
pub const DEV_KEY: &str = "qr-dev-acquirer-key-not-for-production";

impl Default for QrSimulatorConfig {
    fn default() -> Self {
        QrSimulatorConfig {
            listen: DEFAULT_LISTEN,
            cert_path: PathBuf::from(".run/certs/server.pem"),
            key_path: PathBuf::from(".run/certs/server.key"),
            notify_url: None,
            notify_ca_path: None,
            key: Secret::new(DEV_KEY),
            ledger: LedgerStore::Memory,
            time_scale: 1,
            confirm_delay_ms: 5_000,
            late_delay_ms: 60_000,
            tolerance_s: qr_platform::DEFAULT_TOLERANCE_S,
            notify_timeout_ms: 5_000,
        }
    }
}

const DAY_MS: u64 = 24 * 3_600 * 1_000;

impl Validate for QrSimulatorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let key = |name: &str| format!("qr_simulator.{name}");
        if self.key.expose().len() < 16 {
            return Err(ConfigError::invalid(
                key("key"),
                "must be at least 16 bytes",
            ));
        }
        if let Some(url) = &self.notify_url {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| ConfigError::invalid(key("notify_url"), format!("not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(ConfigError::invalid(
                    key("notify_url"),
                    "must be an http or https URL with a host",
                ));
            }
        }
        for (name, path) in [("cert_path", &self.cert_path), ("key_path", &self.key_path)] {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(key(name), "must name a PEM file"));
            }
        }
        if !(1..=1_000_000).contains(&self.time_scale) {
            return Err(ConfigError::invalid(
                key("time_scale"),
                "must be between 1 and 1000000",
            ));
        }
        for (name, value) in [
            ("confirm_delay_ms", self.confirm_delay_ms),
            ("late_delay_ms", self.late_delay_ms),
        ] {
            if value > DAY_MS {
                return Err(ConfigError::invalid(key(name), "must be at most a day"));
            }
        }
        if !(1..=3_600).contains(&self.tolerance_s) {
            return Err(ConfigError::invalid(
                key("tolerance_s"),
                "must be between 1 and 3600",
            ));
        }
        if !(1..=60_000).contains(&self.notify_timeout_ms) {
            return Err(ConfigError::invalid(
                key("notify_timeout_ms"),
                "must be between 1 and 60000",
            ));
        }
        Ok(())
    }
}

/// The nonces of the requests seen in the last `horizon` seconds, which a
/// replay would repeat. Older ones are forgotten in the order they came (a
/// request that old is refused by its timestamp anyway), so each request
/// costs O(1) however many are remembered.
#[derive(Debug, Default)]
pub(crate) struct Nonces {
    seen: HashSet<String>,
    arrival: VecDeque<(i64, String)>,
}

impl Nonces {
    /// Records `nonce` seen at `now`; false when it was seen before.
    fn first_use(&mut self, nonce: &str, now: i64, horizon: i64) -> bool {
        while let Some((at, _)) = self.arrival.front() {
            if now.saturating_sub(*at) <= horizon {
                break;
            }
            if let Some((_, old)) = self.arrival.pop_front() {
                self.seen.remove(&old);
            }
        }
        if !self.seen.insert(nonce.to_owned()) {
            return false;
        }
        self.arrival.push_back((now, nonce.to_owned()));
        true
    }
}

/// What the running simulator needs of its configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    key: Secret,
    delays: Delays,
    tolerance_s: u64,
    time_scale: u32,
    cert_path: PathBuf,
    key_path: PathBuf,
}

pub(crate) struct Inner {
    settings: Settings,
    ledger: Ledger,
    faults: Faults,
    clock: SharedClock,
    /// Request nonces seen: the replay store.
    nonces: Mutex<Nonces>,
    /// Wakes the dispatcher when a notification was queued.
    wake: Notify,
    http: reqwest::Client,
    notify_url: Option<String>,
}

/// A simulator: its ledger, faults and settings. Cloning shares them; tests
/// hold one to set faults and read the ledger while it serves.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").finish_non_exhaustive()
    }
}

impl Simulator {
    /// A simulator as `config` says: validated, with its ledger in
    /// `database` (migrated first) when configured so.
    pub async fn open(
        config: &QrSimulatorConfig,
        database: &DatabaseConfig,
    ) -> Result<Simulator, ServeError> {
        config.validate()?;
        let ledger = match config.ledger {
            LedgerStore::Memory => Ledger::default(),
            LedgerStore::Database => {
                let pool =
                    switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME))
                        .await?;
                MIGRATOR.run(&pool).await?;
                Ledger::Database(pool)
            }
        };
        let start = |reason: String| ServeError::Start {
            what: "qr simulator notifications",
            reason,
        };
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_millis(config.notify_timeout_ms))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.notify_ca_path {
            let pem = std::fs::read(path).map_err(|e| {
                start(format!(
                    "qr_simulator.notify_ca_path {}: {e}",
                    path.display()
                ))
            })?;
            for ca in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| start(format!("qr_simulator.notify_ca_path: {e}")))?
            {
                http = http.add_root_certificate(ca);
            }
        }
        Ok(Simulator {
            inner: Arc::new(Inner {
                settings: Settings {
                    key: config.key.clone(),
                    delays: Delays {
                        confirm: duration_ms(config.confirm_delay_ms),
                        late: duration_ms(config.late_delay_ms),
                    },
                    tolerance_s: config.tolerance_s,
                    time_scale: config.time_scale,
                    cert_path: config.cert_path.clone(),
                    key_path: config.key_path.clone(),
                },
                ledger,
                faults: Faults::default(),
                clock: SystemClock::shared(),
                nonces: Mutex::default(),
                wake: Notify::new(),
                http: http.build().map_err(|e| start(e.to_string()))?,
                notify_url: config.notify_url.clone(),
            }),
        })
    }

    /// Serves on `listener` until `shutdown` resolves, delivering
    /// notifications meanwhile.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let acceptor = server::acceptor(
            &self.inner.settings.cert_path,
            &self.inner.settings.key_path,
        )?;
        let dispatcher = tokio::spawn(notify::dispatch(self.clone()));
        tracing::info!(address = ?listener.local_addr().ok(), "QR platform simulator listening.");
        server::accept(self, acceptor, listener, shutdown).await;
        dispatcher.abort();
        tracing::info!("QR platform simulator stopped.");
        Ok(())
    }

    /// The fault plan, to change while it serves.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// The order's ledger entry, if the platform has it.
    pub async fn entry(&self, out_trade_no: &str) -> Result<Option<LedgerEntry>, LedgerError> {
        Ok(self
            .inner
            .ledger
            .order(out_trade_no)
            .await?
            .as_ref()
            .map(LedgerEntry::from))
    }

    pub async fn totals(&self) -> Result<Totals, LedgerError> {
        self.inner.ledger.totals().await
    }

    /// The order's notifications and how their delivery went.
    pub async fn notifications(
        &self,
        out_trade_no: &str,
    ) -> Result<Vec<NotificationRecord>, LedgerError> {
        self.inner.ledger.notifications_of(out_trade_no).await
    }

    /// The shopper scans the merchant-presented order `out_trade_no`.
    pub async fn scan(
        &self,
        out_trade_no: &str,
    ) -> Result<Result<qr_platform::TradeAnswer, Refusal>, LedgerError> {
        let now = self.now();
        let notify_at = self.notify_at(now);
        self.apply_existing(out_trade_no, notify_at, |order| order.scan(now))
            .await
    }

    fn now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }

    fn notify_at(&self, now: OffsetDateTime) -> OffsetDateTime {
        now + Duration::from_millis(self.inner.faults.current().notification_delay_ms)
    }

    /// Pays the shopper's scheduled payment if due.
    async fn advance(&self, out_trade_no: &str) -> Result<(), LedgerError> {
        let now = self.now();
        let notify_at = self.notify_at(now);
        self.apply_existing(out_trade_no, notify_at, |order| order.query(now))
            .await
            .map(drop)
    }

    async fn apply<A>(
        &self,
        out_trade_no: &str,
        notify_at: OffsetDateTime,
        op: impl FnOnce(&mut Option<Order>) -> Step<A>,
    ) -> Result<Result<A, Refusal>, LedgerError> {
        let answer = self.inner.ledger.apply(out_trade_no, notify_at, op).await;
        // Cheap when nothing was queued: the dispatcher finds nothing due.
        self.inner.wake.notify_one();
        answer
    }

    /// Like `apply` for an order that must exist: `ORDERNOTEXIST` if not.
    async fn apply_existing<A>(
        &self,
        out_trade_no: &str,
        notify_at: OffsetDateTime,
        op: impl FnOnce(&mut Order) -> Step<A>,
    ) -> Result<Result<A, Refusal>, LedgerError> {
        self.apply(out_trade_no, notify_at, |order| match order {
            Some(order) => op(order),
            None => Step {
                answer: Err(server::not_found(out_trade_no)),
                notifications: Vec::new(),
            },
        })
        .await
    }
}

fn duration_ms(ms: u64) -> time::Duration {
    time::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// Serves the simulator as `config` says on `listener` until `shutdown`.
pub async fn serve_configured(
    config: &QrSimulatorConfig,
    database: &DatabaseConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Simulator::open(config, database)
        .await?
        .serve(listener, shutdown)
        .await
}

/// Binds `config.listen` and serves until `shutdown` resolves.
pub async fn run(
    config: &QrSimulatorConfig,
    database: &DatabaseConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = switch_platform::service::bind(config.listen).await?;
    serve_configured(config, database, listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_each_bad_value_names_its_key() {
        QrSimulatorConfig::default()
            .validate()
            .expect("defaults are valid");
        type Spoil = fn(&mut QrSimulatorConfig);
        let cases: [(Spoil, &str); 9] = [
            (|c| c.key = Secret::new("short"), "qr_simulator.key"),
            (
                |c| c.notify_url = Some("not a url".into()),
                "qr_simulator.notify_url",
            ),
            (
                |c| c.notify_url = Some("ftp://h/n".into()),
                "qr_simulator.notify_url",
            ),
            (|c| c.cert_path = PathBuf::new(), "qr_simulator.cert_path"),
            (|c| c.time_scale = 0, "qr_simulator.time_scale"),
            (
                |c| c.confirm_delay_ms = DAY_MS + 1,
                "qr_simulator.confirm_delay_ms",
            ),
            (
                |c| c.late_delay_ms = DAY_MS + 1,
                "qr_simulator.late_delay_ms",
            ),
            (|c| c.tolerance_s = 0, "qr_simulator.tolerance_s"),
            (
                |c| c.notify_timeout_ms = 0,
                "qr_simulator.notify_timeout_ms",
            ),
        ];
        for (spoil, key) in cases {
            let mut config = QrSimulatorConfig::default();
            spoil(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }

    #[test]
    fn a_nonce_is_refused_again_within_the_horizon_and_forgotten_after() {
        let mut nonces = Nonces::default();
        assert!(nonces.first_use("a", 100, 600));
        assert!(!nonces.first_use("a", 700, 600));
        assert!(nonces.first_use("b", 701, 600));
        // "a" is more than 600 s old now: forgotten, as its timestamp would
        // be refused.
        assert!(nonces.first_use("a", 701, 600));
        assert_eq!(nonces.seen.len(), 2);
        assert_eq!(nonces.arrival.len(), 2);
    }

    #[test]
    fn the_key_is_never_shown() {
        let config = QrSimulatorConfig {
            key: Secret::new("a secret key of the acquirer"),
            ..QrSimulatorConfig::default()
        };
        assert!(!format!("{config:?}").contains("a secret key"));
    }
}
