//! One deployment of the whole switch for a chaos run: its own broker
//! process (file-backed store, so it can be killed and restarted), the
//! issuer simulator with its ledger in PostgreSQL, and each of the five
//! services as its own `switchd` process, every one of which can be killed
//! with SIGKILL and started again on the same port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dev_certs::DevPki;
use sqlx::PgPool;
use switch_proto::v1::terminal_service_client::TerminalServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{SwitchdProcess, database_url, free_address, switchd_env, unique_suffix};

/// The services a chaos run kills and restarts, in start order.
pub const SERVICES: [&str; 5] = [
    "authorization",
    "terminal-gateway",
    "reversal-handler",
    "settlement-batcher",
    "notifier",
];

/// The merchant whose orphans are confirmed rather than reversed, so the
/// run exercises both policies.
pub const CONFIRMING_MERCHANT: &str = "MERCHANT0000004";

/// The switch's timing in a chaos run: short, so that a run of minutes
/// sees many deadlines pass.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub issuer_timeout_ms: u64,
    pub issuer_late_window_ms: u64,
    pub ack_window_ms: u64,
}

/// How the database is disturbed once during the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseFault {
    /// Terminate every backend of this deployment's services (the shared
    /// server keeps running for everyone else).
    TerminateBackends,
    /// Run this command, which restarts the PostgreSQL server (e.g.
    /// `pg_ctlcluster 15 main restart -m fast`), and wait until it answers.
    Restart(Vec<String>),
}

/// The deployment's broker: a nisshi process of its own.
struct Broker {
    binary: PathBuf,
    address: SocketAddr,
    dir: PathBuf,
    storage: String,
    /// The PostgreSQL database made for this run's store, dropped with it.
    database: Option<String>,
    child: Option<Child>,
}

/// The store of the run's broker: `CHAOS_BROKER_STORAGE` when set; a
/// SQLite file of the run's own when the Makefile's broker is one without
/// the PostgreSQL store (`BROKER_STORAGE` not `postgres://`, on a machine
/// without a nightly toolchain); else a fresh PostgreSQL database of its
/// own beside the switch's, so PostgreSQL's restart takes the broker's
/// store down too.
async fn broker_storage(prefix: &str) -> anyhow::Result<(String, Option<String>)> {
    if let Ok(storage) = std::env::var("CHAOS_BROKER_STORAGE") {
        return Ok((storage, None));
    }
    if std::env::var("BROKER_STORAGE").is_ok_and(|storage| !storage.starts_with("postgres")) {
        return Ok(("sqlite://chaos.db".to_owned(), None));
    }
    let url = database_url();
    let server = url
        .split('?')
        .next()
        .and_then(|without_query| without_query.rsplit_once('/'))
        .map(|(server, _database)| server.to_owned())
        .context("DATABASE_URL names no database")?;
    let database = format!("chaos_broker_{prefix}");
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
    sqlx::query(&format!("CREATE DATABASE \"{database}\""))
        .execute(&mut connection)
        .await?;
    Ok((
        format!("{server}/{database}?sslmode=disable"),
        Some(database),
    ))
}

impl Broker {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))?;
        let url = format!("tcp://{}", self.address);
        let child = Command::new(&self.binary)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the broker {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the broker accepts connections.
    async fn wait_until_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "the broker exited ({status}); see {}",
                    self.dir.join("broker.log").display()
                );
            }
            if tokio::net::TcpStream::connect(self.address).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the broker at {} did not listen within 30 s", self.address)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill_9();
        if let Some(database) = &self.database {
            // Drop runs outside any runtime: psql, not the async pool.
            let _ = Command::new("psql")
                .args([
                    "-q",
                    &database_url(),
                    "-c",
                    &format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"),
                ])
                .status();
        }
    }
}

/// The nisshi binary: `NISSHI` (the Makefile exports it), else the
/// Makefile's cache.
fn nisshi_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NISSHI") {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    for version in ["0.8.1", "0.7.0-pre.2"] {
        let cached =
            Path::new(&home).join(format!(".cache/pos-switch/nisshi-{version}/bin/nisshi"));
        if cached.is_file() {
            return Ok(cached);
        }
    }
    bail!("no broker binary: set NISSHI or run `make broker-install` (make test does)")
}

/// Where each process listens.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub issuer: SocketAddr,
    pub services: BTreeMap<&'static str, SocketAddr>,
}

impl Addresses {
    pub fn of(&self, service: &str) -> SocketAddr {
        self.services[service]
    }
}

pub struct Deployment {
    pub prefix: String,
    pub addresses: Addresses,
    pub pki: DevPki,
    /// A pool on the database without a schema: queries name their schema.
    pub database: PgPool,
    pub timing: Timing,
    pub broker_address: SocketAddr,
    env: Vec<(String, String)>,
    broker: Broker,
    issuer: SwitchdProcess,
    processes: BTreeMap<&'static str, SwitchdProcess>,
    /// Certificates, the broker's store, payout files and every process's
    /// log; kept after a failed run.
    pub dir: PathBuf,
}

impl Deployment {
    /// Starts the broker, the issuer simulator and every service, and
    /// waits until each is ready.
    pub async fn start(
        timing: Timing,
        terminals: &[(String, String)],
    ) -> anyhow::Result<Deployment> {
        let prefix = unique_suffix();
        let dir = std::env::temp_dir().join(format!("switch-chaos-{prefix}"));
        std::fs::create_dir_all(&dir)?;
        let pki = DevPki::generate()?;
        let layout: Vec<(&str, &str)> = terminals
            .iter()
            .map(|(t, m)| (t.as_str(), m.as_str()))
            .collect();
        pki.write_dev_layout(&dir, &layout)?;
        let broker_dir = dir.join("broker");
        std::fs::create_dir_all(&broker_dir)?;
        let (storage, broker_database) = broker_storage(&prefix).await?;
        let mut broker = Broker {
            binary: nisshi_binary()?,
            address: free_address().await,
            dir: broker_dir,
            storage,
            database: broker_database,
            child: None,
        };
        broker.start()?;
        broker.wait_until_listening().await?;

        let issuer = free_address().await;
        let mut services = BTreeMap::new();
        for service in SERVICES {
            services.insert(service, free_address().await);
        }
        let addresses = Addresses { issuer, services };
        let config_file = dir.join("switchd.toml");
        std::fs::write(
            &config_file,
            format!(
                "[reversal_handler.merchants.{CONFIRMING_MERCHANT}]\norphan_policy = \"confirm\"\n"
            ),
        )?;
        let env = deployment_env(
            &prefix,
            &addresses,
            broker.address,
            &dir,
            &config_file,
            timing,
        );
        let mut issuer_process = SwitchdProcess::spawn_logged(
            "issuer-simulator",
            &env,
            &dir.join("issuer-simulator.log"),
        );
        issuer_process
            .wait_until_healthy(issuer, "switch.v1.IssuerService")
            .await;
        let database = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url())
            .await?;
        let mut deployment = Deployment {
            broker_address: broker.address,
            prefix,
            addresses,
            pki,
            database,
            timing,
            env,
            broker,
            issuer: issuer_process,
            processes: BTreeMap::new(),
            dir,
        };
        for service in SERVICES {
            deployment.spawn(service);
            deployment.wait_until_ready(service).await?;
        }
        Ok(deployment)
    }

    fn spawn(&mut self, service: &'static str) {
        let log = self.dir.join(format!("{service}.log"));
        let process = SwitchdProcess::spawn_logged(service, &self.env, &log);
        self.processes.insert(service, process);
    }

    /// SIGKILL, then the same process started again on the same port,
    /// ready before this returns.
    pub async fn kill_and_restart(
        &mut self,
        service: &'static str,
        down_for: Duration,
    ) -> anyhow::Result<()> {
        if let Some(process) = self.processes.get_mut(service) {
            process.kill_9();
        }
        tokio::time::sleep(down_for).await;
        self.spawn(service);
        self.wait_until_ready(service).await
    }

    /// kill -9 of the broker, then the same broker on the same store.
    pub async fn restart_broker(&mut self, down_for: Duration) -> anyhow::Result<()> {
        self.broker.kill_9();
        tokio::time::sleep(down_for).await;
        self.broker.start()?;
        self.broker.wait_until_listening().await
    }

    /// Disturbs the database as `fault` says; returns how many backends it
    /// terminated (0 for a restart).
    pub async fn disturb_database(&self, fault: &DatabaseFault) -> anyhow::Result<u64> {
        match fault {
            DatabaseFault::TerminateBackends => {
                let pattern = format!("{}\\_%", self.prefix);
                let terminated: Vec<bool> = sqlx::query_scalar(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name LIKE $1 AND pid <> pg_backend_pid()",
                )
                .bind(pattern)
                .fetch_all(&self.database)
                .await?;
                Ok(terminated.into_iter().filter(|t| *t).count() as u64)
            }
            DatabaseFault::Restart(command) => {
                let (program, args) = command.split_first().context("an empty restart command")?;
                let status = Command::new(program).args(args).status()?;
                if !status.success() {
                    bail!("{command:?} failed: {status}");
                }
                let deadline = Instant::now() + Duration::from_secs(60);
                while sqlx::query("SELECT 1")
                    .execute(&self.database)
                    .await
                    .is_err()
                {
                    if Instant::now() > deadline {
                        bail!("PostgreSQL did not answer within 60 s of its restart");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(0)
            }
        }
    }

    /// Waits until `service` answers: its health check, or for the gateway
    /// (whose only port speaks mutual TLS) an inquiry from a terminal.
    pub async fn wait_until_ready(&mut self, service: &'static str) -> anyhow::Result<()> {
        let address = self.addresses.of(service);
        if service != "terminal-gateway" {
            let grpc_service = match service {
                "authorization" => "switch.v1.AuthorizationService",
                "settlement-batcher" => "switch.v1.SettlementService",
                "notifier" => "switch.v1.NotifierService",
                _ => "",
            };
            let process = self.processes.get_mut(service).context("not started")?;
            crate::wait_until_healthy(address, grpc_service, || process.exited()).await?;
            return Ok(());
        }
        let (terminal, merchant) = ("CHAOS000".to_owned(), "MERCHANT0000001".to_owned());
        let mut client = self.terminal(&terminal, &merchant)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = client
                .inquiry(switch_proto::v1::InquiryRequest {
                    terminal_id: terminal.clone(),
                    stan: "999999".to_owned(),
                    local_date: crate::today(),
                })
                .await;
            match answer {
                Ok(_) => return Ok(()),
                Err(status) if status.code() == tonic::Code::NotFound => return Ok(()),
                Err(status) if Instant::now() > deadline => {
                    bail!("the gateway did not answer within 60 s: {status}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            if let Some(how) = self.processes.get_mut(service).and_then(|p| p.exited()) {
                bail!("{how}");
            }
        }
    }

    /// A client of the gateway for `terminal_id`, with its own certificate.
    pub fn terminal(
        &self,
        terminal_id: &str,
        merchant_id: &str,
    ) -> anyhow::Result<TerminalServiceClient<Channel>> {
        let cert = self.pki.terminal_cert(terminal_id, merchant_id)?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.pki.ca_cert_pem()))
            .domain_name("localhost")
            .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
        let port = self.addresses.of("terminal-gateway").port();
        let channel = Endpoint::from_shared(format!("https://localhost:{port}"))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        Ok(TerminalServiceClient::new(channel))
    }

    /// The schema of `service` in this deployment.
    pub fn schema(&self, service: &str) -> String {
        format!("{}_{}", self.prefix, service.replace('-', "_"))
    }

    /// Every Kafka topic name carries this prefix.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}.{topic}", self.prefix)
    }

    pub fn payout_dir(&self) -> PathBuf {
        self.dir.join("payouts")
    }

    /// Stops every process and drops the deployment's schemas; removes its
    /// directory unless `keep_dir` (a failed run keeps its logs).
    pub async fn teardown(mut self, keep_dir: bool) {
        for process in self.processes.values_mut() {
            process.kill_9();
        }
        self.issuer.kill_9();
        self.broker.kill_9();
        for service in SERVICES.iter().chain(&["issuer-simulator"]) {
            let _ = switch_platform::db::drop_schema(&database_url(), &self.schema(service)).await;
        }
        self.database.close().await;
        if !keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Every process's configuration: the shared sections, each service's
/// address and its peers', and the chaos run's short timing.
fn deployment_env(
    prefix: &str,
    addresses: &Addresses,
    broker: SocketAddr,
    dir: &Path,
    config_file: &Path,
    timing: Timing,
) -> Vec<(String, String)> {
    let http = |address: SocketAddr| format!("http://{address}");
    let path = |name: &str| dir.join(name).display().to_string();
    let at = |service| addresses.of(service);
    let settings: Vec<(&str, String)> = vec![
        ("SWITCH_CONFIG", config_file.display().to_string()),
        ("SWITCH__KAFKA__BROKERS", broker.to_string()),
        ("SWITCH__DATABASE__MAX_CONNECTIONS", "8".to_owned()),
        // The audit reads the issuer's ledger and the journal over the
        // internal APIs directly (ADR 27).
        ("SWITCH__INTERNAL_TLS__PLAINTEXT_FOR_LAB", "true".to_owned()),
        (
            "SWITCH__ISSUER_SIMULATOR__LISTEN",
            addresses.issuer.to_string(),
        ),
        ("SWITCH__ISSUER_SIMULATOR__LEDGER", "database".to_owned()),
        (
            "SWITCH__AUTHORIZATION__LISTEN",
            at("authorization").to_string(),
        ),
        (
            "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
            http(addresses.issuer),
        ),
        (
            "SWITCH__AUTHORIZATION__ISSUER_TIMEOUT_MS",
            timing.issuer_timeout_ms.to_string(),
        ),
        (
            "SWITCH__AUTHORIZATION__ISSUER_LATE_WINDOW_MS",
            timing.issuer_late_window_ms.to_string(),
        ),
        (
            "SWITCH__AUTHORIZATION__RECOVERY_INTERVAL_MS",
            "500".to_owned(),
        ),
        (
            "SWITCH__AUTHORIZATION__OUTBOX__POLL_INTERVAL_MS",
            "200".to_owned(),
        ),
        (
            "SWITCH__AUTHORIZATION__REVERSAL__INITIAL_DELAY_MS",
            "100".to_owned(),
        ),
        (
            "SWITCH__AUTHORIZATION__REVERSAL__MAX_DELAY_MS",
            "1000".to_owned(),
        ),
        (
            "SWITCH__AUTHORIZATION__REVERSAL__POLL_INTERVAL_MS",
            "100".to_owned(),
        ),
        (
            "SWITCH__GATEWAY__LISTEN",
            at("terminal-gateway").to_string(),
        ),
        ("SWITCH__GATEWAY__TLS__CERT_PATH", path("server.pem")),
        ("SWITCH__GATEWAY__TLS__KEY_PATH", path("server.key")),
        ("SWITCH__GATEWAY__TLS__CLIENT_CA_PATH", path("ca.pem")),
        (
            "SWITCH__GATEWAY__AUTHORIZATION_ENDPOINT",
            http(at("authorization")),
        ),
        (
            "SWITCH__GATEWAY__SETTLEMENT_ENDPOINT",
            http(at("settlement-batcher")),
        ),
        (
            "SWITCH__GATEWAY__AUTHORIZATION_TIMEOUT_MS",
            (timing.issuer_late_window_ms + 2_000).to_string(),
        ),
        (
            "SWITCH__REVERSAL_HANDLER__LISTEN",
            at("reversal-handler").to_string(),
        ),
        (
            "SWITCH__REVERSAL_HANDLER__AUTHORIZATION_ENDPOINT",
            http(at("authorization")),
        ),
        (
            "SWITCH__REVERSAL_HANDLER__ACK_WINDOW_MS",
            timing.ack_window_ms.to_string(),
        ),
        (
            "SWITCH__REVERSAL_HANDLER__SWEEP_INTERVAL_MS",
            "200".to_owned(),
        ),
        (
            "SWITCH__REVERSAL_HANDLER__RETRY_INITIAL_DELAY_MS",
            "100".to_owned(),
        ),
        (
            "SWITCH__REVERSAL_HANDLER__RETRY_MAX_DELAY_MS",
            "1000".to_owned(),
        ),
        (
            "SWITCH__SETTLEMENT__LISTEN",
            at("settlement-batcher").to_string(),
        ),
        (
            "SWITCH__SETTLEMENT__AUTHORIZATION_ENDPOINT",
            http(at("authorization")),
        ),
        ("SWITCH__SETTLEMENT__PAYOUT_DIR", path("payouts")),
        ("SWITCH__SETTLEMENT__SCHEDULER_ENABLED", "false".to_owned()),
        ("SWITCH__NOTIFIER__LISTEN", at("notifier").to_string()),
    ];
    switchd_env(prefix, &settings)
}
