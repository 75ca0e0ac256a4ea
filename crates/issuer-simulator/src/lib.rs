//! Issuer simulator: a card-issuer host to test the switch against.
//!
//! This crate owns the simulated issuer: a gRPC server implementing
//! `switch.v1.IssuerService` (what the switch's issuer link calls) and
//! `switch.v1.IssuerControl` (fault injection and counters for tests), plus
//! the standard gRPC health service (`grpc.health.v1.Health`, SERVING for
//! both services and for the server as a whole) and server reflection (v1 and
//! v1alpha), served by the platform's service kit like every service.
//! Faults and counters are in memory. The ledger ([`ledger`]) is in memory
//! too unless `ledger = "database"`: then it lives in the simulator's own
//! schema (`issuer_simulator`) of the switch's database, outlives a restart
//! of the simulator, and an audit (the chaos run's) reads it beside the
//! switch's tables. While that database cannot be reached the simulator
//! decides nothing and answers UNAVAILABLE, as an issuer host that is down.
//!
//! # Decision rules
//!
//! Authorizations are decided deterministically from the last two digits of
//! the amount, `amount.minor_units % 100`:
//!
//! | last two digits | response code | meaning            |
//! |-----------------|---------------|--------------------|
//! | `51`            | `"51"`        | insufficient funds |
//! | `05`            | `"05"`        | do not honour      |
//! | `54`            | `"54"`        | expired card       |
//! | anything else   | `"00"`        | approved           |
//!
//! So EUR 10.00 (`1000`) is approved and EUR 10.51 (`1051`) declined "51".
//! An approval carries a six-character approval code (`0-9A-Z`) derived from
//! the RRN alone ([`rules::approval_code`]): the same RRN always gets the
//! same code. A malformed request (no amount, empty RRN, amount of zero or
//! less) is declined `"30"` (format error); nothing a client sends can make
//! the simulator panic.
//!
//! The simulator keeps the issuer's own ledger: every RRN it decided, and
//! whether it holds the shopper's funds (approved, fully or partially),
//! released them (reversed) or held nothing (declined);
//! `IssuerControl.Funds` reads it, so tests compare the switch's view with
//! the issuer's. A reversal of an RRN it decided releases the hold and is
//! answered `"00"`, idempotently (a repeat is answered `"00"` again); a
//! reversal of an RRN it never decided — the original never arrived, or
//! is still being held back by `latency_ms` — is answered `"25"` (unable to
//! locate the original), and the original may still be approved after
//! that, as a real issuer's would. `"30"` for an empty RRN. Every reversal
//! call is counted, repeats included.
//!
//! # Faults
//!
//! `IssuerControl.SetFaults` replaces the active [`FaultPlan`](switch_proto::v1::FaultPlan)s,
//! or, with `add`, adds one after them; an all-default plan clears them. A
//! request gets the first plan that applies to it. A plan applies to
//! requests whose STAN is in `stans` (empty: every request), on
//! authorizations, reversals or both (`authorizations_only` /
//! `reversals_only`; neither or both set: both), to a random `per_mille`
//! share of those (0: all of them), until `window_ms` has passed since it
//! was set (0: until replaced). On a
//! matching request, in order: wait `latency_ms`; then `outage` answers
//! UNAVAILABLE ("issuer outage (simulated)"), `no_response` never answers
//! (the caller's deadline fires), and `decline_code` replaces the decision
//! of the normal rules; `partial_approval` turns an approval into one for
//! half the amount (`"10"`, half held); `approve_then_hang` approves (funds
//! held) and then never answers: the answer is lost.
//!
//! # Counters
//!
//! `IssuerControl.Stats` returns: `authorizations` and `reversals` (every
//! call received, whatever happened to it), `approved` and `declined`
//! (authorization decisions that hold funds, and the others), `dropped`
//! (calls of either kind refused by an outage or left unanswered by
//! `no_response` or `approve_then_hang`).
//!
//! # Logging
//!
//! One `debug` event per request with RRN, STAN, amount and decision. The
//! PAN is never logged; at most its last four digits.

pub mod faults;
pub mod ledger;
pub mod rules;
pub mod service;

use std::future::Future;
use std::net::SocketAddr;

use switch_platform::db::DatabaseConfig;
use switch_platform::internal_tls::InternalTlsConfig;
use switch_platform::service::{GrpcServer, ServeError};
use switch_proto::v1::issuer_control_server::IssuerControlServer;
use switch_proto::v1::issuer_service_server::IssuerServiceServer;
use tokio::net::TcpListener;

pub use service::{OUTAGE_MESSAGE, Simulator};

/// Name of the service: its OpenTelemetry service name, its logs.
pub const SERVICE_NAME: &str = "issuer-simulator";

/// Default listen address of the simulator.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    50070,
));

/// The simulator's schema migrations (its durable ledger).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Configuration of the issuer simulator.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerSimulatorConfig {
    /// Address the gRPC server listens on; default `127.0.0.1:50070`.
    pub listen: SocketAddr,
    /// Where the issuer's ledger lives: `memory` (default) or `database`.
    pub ledger: LedgerStore,
}

impl Default for IssuerSimulatorConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            ledger: LedgerStore::Memory,
        }
    }
}

/// Where the issuer's ledger lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerStore {
    /// Forgotten when the simulator stops.
    #[default]
    Memory,
    /// In the simulator's own schema of the switch's database.
    Database,
}

/// Why the simulator could not start or stopped with an error: the
/// platform's [`ServeError`], like every service's.
pub type SimulatorError = ServeError;

/// Serves the simulator on `listener` until `shutdown` resolves. Tests pass
/// a listener bound to `127.0.0.1:0`.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimulatorError> {
    serve_simulator(
        Simulator::new(),
        &InternalTlsConfig::plaintext_for_lab(),
        listener,
        shutdown,
    )
    .await
}

/// Serves the simulator as `config` says on `listener` until `shutdown`
/// resolves: with its ledger in `database` (migrated first) when
/// configured so.
pub async fn serve_configured(
    config: &IssuerSimulatorConfig,
    database: &DatabaseConfig,
    internal_tls: &InternalTlsConfig,
    listener: TcpListener,
    shutdown: impl Into<switch_platform::shutdown::Shutdown>,
) -> Result<(), SimulatorError> {
    internal_tls
        .validate_for(SERVICE_NAME)
        .map_err(ServeError::from)?;
    let ledger = match config.ledger {
        LedgerStore::Memory => ledger::Ledger::default(),
        LedgerStore::Database => {
            let pool =
                switch_platform::db::connect(database, &database.schema_for(SERVICE_NAME)).await?;
            MIGRATOR.run(&pool).await?;
            ledger::Ledger::Database(pool)
        }
    };
    serve_simulator(
        Simulator::with_ledger(ledger),
        internal_tls,
        listener,
        shutdown,
    )
    .await
}

/// Binds `config.listen` and serves until `shutdown` resolves.
pub async fn run(
    config: &IssuerSimulatorConfig,
    database: &DatabaseConfig,
    internal_tls: &InternalTlsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimulatorError> {
    let listener = switch_platform::service::bind(config.listen).await?;
    serve_configured(config, database, internal_tls, listener, shutdown).await
}

/// Like [`serve`], with a caller-provided [`Simulator`] (e.g. to share state
/// with an in-process test harness).
pub async fn serve_simulator(
    simulator: Simulator,
    internal_tls: &InternalTlsConfig,
    listener: TcpListener,
    shutdown: impl Into<switch_platform::shutdown::Shutdown>,
) -> Result<(), SimulatorError> {
    GrpcServer::new(SERVICE_NAME)?
        .internal(SERVICE_NAME, internal_tls)
        .add_service(IssuerServiceServer::new(simulator.clone()))
        .add_service(IssuerControlServer::new(simulator))
        .serve(listener, shutdown)
        .await?;
    tracing::info!("issuer simulator stopped");
    Ok(())
}
