//! `switchd`: one binary, one image, for every service of the switch.
//!
//! `switchd <service>` runs one service; `switchd all` runs authorization,
//! the terminal gateway, the reversal handler, the settlement batcher, the
//! notifier and the issuer simulator in one process, for a laptop. The binary only loads configuration, sets up telemetry, binds
//! listeners and calls each service's `serve`; it exits with a clear message
//! naming the key when the configuration is bad, and drains on SIGTERM.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use switch_platform::config::{self, ConfigError, Validate};
use switch_platform::db::DatabaseConfig;
use switch_platform::kafka::KafkaConfig;
use switch_platform::telemetry::TelemetryConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "switchd",
    version,
    about = "Runs the payment switch's services"
)]
struct Cli {
    /// TOML configuration file; `SWITCH__SECTION__KEY` variables override it.
    #[arg(long, env = "SWITCH_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    dump_config: bool,
    /// Which service to run.
    service: Service,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    Authorization,
    #[value(alias = "gateway")]
    TerminalGateway,
    ReversalHandler,
    #[value(alias = "settlement")]
    SettlementBatcher,
    Notifier,
    IssuerSimulator,
    /// Every service above in one process.
    All,
}

impl Service {
    fn runs(self, other: Service) -> bool {
        self == other || self == Service::All
    }

    fn name(self) -> &'static str {
        match self {
            Service::Authorization => authorization::SERVICE_NAME,
            Service::TerminalGateway => terminal_gateway::SERVICE_NAME,
            Service::ReversalHandler => reversal_handler::SERVICE_NAME,
            Service::SettlementBatcher => settlement_batcher::SERVICE_NAME,
            Service::Notifier => notifier::SERVICE_NAME,
            Service::IssuerSimulator => "issuer-simulator",
            Service::All => "switchd",
        }
    }
}

/// The whole configuration: one section per concern.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SwitchdConfig {
    telemetry: TelemetryConfig,
    database: DatabaseConfig,
    kafka: KafkaConfig,
    authorization: authorization::AuthorizationConfig,
    gateway: terminal_gateway::GatewayConfig,
    reversal_handler: reversal_handler::ReversalHandlerConfig,
    settlement: settlement_batcher::SettlementConfig,
    notifier: notifier::NotifierConfig,
    issuer_simulator: issuer_simulator::IssuerSimulatorConfig,
}

impl Validate for SwitchdConfig {
    /// Checks every section that does not depend on which service runs;
    /// the gateway's certificate files are checked only where it runs.
    fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry.validate()?;
        self.database.validate()?;
        self.kafka.validate()?;
        self.reversal_handler.validate()?;
        self.settlement.validate()?;
        self.notifier.validate()?;
        self.authorization.validate()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded: Result<SwitchdConfig, ConfigError> =
        config::load(cli.config.as_deref()).and_then(|c: SwitchdConfig| {
            if cli.service.runs(Service::TerminalGateway) && !cli.dump_config {
                c.gateway.validate()?;
            }
            Ok(c)
        });
    let settings = match loaded {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("switchd: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.dump_config {
        return match config::dump(&settings) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("switchd: {error}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("switchd: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.service, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(service: Service, settings: SwitchdConfig) -> anyhow::Result<()> {
    let _telemetry = switch_platform::telemetry::init(service.name(), &settings.telemetry)?;
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    if service.runs(Service::IssuerSimulator) {
        let listener = bind(settings.issuer_simulator.listen).await?;
        spawn(&mut tasks, "issuer-simulator", {
            let stop = stop.clone();
            async move {
                issuer_simulator::serve(listener, stop.cancelled_owned())
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
    }
    if service.runs(Service::Authorization) {
        let listener = bind(settings.authorization.listen).await?;
        let (database, kafka, config) = (
            settings.database.clone(),
            settings.kafka.clone(),
            settings.authorization.clone(),
        );
        spawn(&mut tasks, "authorization", {
            let stop = stop.clone();
            async move {
                authorization::serve(&database, &kafka, &config, listener, stop.cancelled_owned())
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
    }
    if service.runs(Service::TerminalGateway) {
        let listener = bind(settings.gateway.listen).await?;
        let (database, kafka, config) = (
            settings.database.clone(),
            settings.kafka.clone(),
            settings.gateway.clone(),
        );
        spawn(&mut tasks, "terminal-gateway", {
            let stop = stop.clone();
            async move {
                terminal_gateway::serve(
                    &database,
                    &kafka,
                    &config,
                    listener,
                    stop.cancelled_owned(),
                )
                .await
                .map_err(anyhow::Error::from)
            }
        });
    }

    if service.runs(Service::ReversalHandler) {
        let listener = bind(settings.reversal_handler.listen).await?;
        let (database, kafka, config) = (
            settings.database.clone(),
            settings.kafka.clone(),
            settings.reversal_handler.clone(),
        );
        spawn(&mut tasks, "reversal-handler", {
            let stop = stop.clone();
            async move {
                reversal_handler::serve(
                    &database,
                    &kafka,
                    &config,
                    listener,
                    stop.cancelled_owned(),
                )
                .await
                .map_err(anyhow::Error::from)
            }
        });
    }

    if service.runs(Service::SettlementBatcher) {
        let listener = bind(settings.settlement.listen).await?;
        let (database, kafka, config) = (
            settings.database.clone(),
            settings.kafka.clone(),
            settings.settlement.clone(),
        );
        spawn(&mut tasks, "settlement-batcher", {
            let stop = stop.clone();
            async move {
                settlement_batcher::serve(
                    &database,
                    &kafka,
                    &config,
                    listener,
                    stop.cancelled_owned(),
                )
                .await
                .map_err(anyhow::Error::from)
            }
        });
    }

    if service.runs(Service::Notifier) {
        let listener = bind(settings.notifier.listen).await?;
        let (database, kafka, config) = (
            settings.database.clone(),
            settings.kafka.clone(),
            settings.notifier.clone(),
        );
        spawn(&mut tasks, "notifier", {
            let stop = stop.clone();
            async move {
                notifier::serve(&database, &kafka, &config, listener, stop.cancelled_owned())
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
    }

    // Stop everything on a signal, or as soon as any service fails.
    let mut first_error = None;
    tokio::select! {
        () = switch_platform::shutdown::signal() => {}
        Some(finished) = tasks.join_next() => {
            first_error = flatten(finished).err();
        }
    }
    stop.cancel();
    while let Some(finished) = tasks.join_next().await {
        if let Err(error) = flatten(finished) {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn spawn(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    name: &'static str,
    service: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) {
    tasks.spawn(async move {
        service
            .await
            .map_err(|error| error.context(format!("{name} stopped with an error")))
    });
}

fn flatten(finished: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    finished.map_err(anyhow::Error::from)?
}

async fn bind(address: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {address}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_dump_without_secrets() {
        let settings: SwitchdConfig = config::load_with_env(None, Vec::new()).unwrap();
        let dumped = config::dump(&settings).unwrap();
        assert!(dumped.contains("[authorization]"));
        assert!(!dumped.contains(settings.authorization.pan_hash_key.expose()));
        // The dump is itself a valid configuration file.
        let _: SwitchdConfig = toml::from_str(&dumped).unwrap();
    }

    #[test]
    fn a_bad_environment_value_names_its_key() {
        let error = config::load_with_env::<SwitchdConfig, _>(
            None,
            vec![(
                "SWITCH__AUTHORIZATION__ISSUER_TIMEOUT_MS".to_owned(),
                "0".to_owned(),
            )],
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("authorization.issuer_timeout_ms"),
            "{error}"
        );
    }
}
