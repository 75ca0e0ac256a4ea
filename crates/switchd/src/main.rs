//! `switchd`: one binary, one image, for every service of the switch.
//!
//! `switchd <service>` runs one service; `switchd all` runs authorization,
//! the terminal gateway, the reversal handler, the settlement batcher, the
//! notifier, the issuer simulator and the QR platform simulator in one
//! process, for a laptop. Both start services from the one table in the
//! library ([`switchd::SERVICES`]).
//! The binary only loads configuration, validates the sections of the
//! services it runs (exiting with status 2 and a message naming the key
//! when a value is bad), sets up telemetry, binds listeners and starts each
//! service; on SIGTERM every service drains within its grace timeout.
//!
//! `switchd admin …` runs an operator's command with the same
//! configuration instead of a service ([`switchd::admin`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use switch_platform::config::{self, ConfigError, Validate};
use switch_platform::service::ServeError;
use switchd::{Service, SwitchdConfig};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "switchd",
    version,
    about = "Runs the payment switch's services",
    subcommand_negates_reqs = true,
    override_usage = "switchd [OPTIONS] <SERVICE>\n       switchd [OPTIONS] admin <COMMAND>"
)]
struct Cli {
    /// TOML configuration file; `SWITCH__SECTION__KEY` variables override it.
    #[arg(long, env = "SWITCH_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit. Only
    /// the shared sections are checked, so a bad one can still be shown.
    #[arg(long)]
    dump_config: bool,
    /// Which service to run.
    #[arg(required = true)]
    service: Option<Service>,
    #[command(subcommand)]
    admin: Option<Admin>,
}

#[derive(Debug, Subcommand)]
enum Admin {
    /// Operators' commands, run beside the services with their
    /// configuration (no service is started).
    #[command(subcommand)]
    Admin(switchd::admin::AdminCommand),
}

/// Exit status of a configuration the services cannot run with.
const BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded: Result<SwitchdConfig, ConfigError> =
        config::load(cli.config.as_deref()).and_then(|c: SwitchdConfig| {
            let c = match cli.service {
                Some(service) => c.resolved_for(service),
                None => c,
            };
            match cli.service {
                _ if cli.dump_config => {}
                Some(service) => c.validate_for(service)?,
                // An admin command checks the shared sections here and the
                // section of the service it acts for when it builds it.
                None => c.validate()?,
            }
            Ok(c)
        });
    let settings = match loaded {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("switchd: {error}");
            return ExitCode::from(BAD_CONFIG);
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
                ExitCode::from(BAD_CONFIG)
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
    let service = match (cli.service, cli.admin) {
        (Some(_), Some(_)) => {
            eprintln!("switchd: give a service to run or an admin command, not both");
            return ExitCode::from(BAD_CONFIG);
        }
        (Some(service), None) => service,
        (None, Some(Admin::Admin(command))) => return run_admin(&runtime, command, &settings),
        (None, None) => unreachable!("clap requires a service or a subcommand"),
    };
    match runtime.block_on(run(service, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { service, error }) => {
            eprintln!("switchd: {service}: {error}");
            match *error {
                ServeError::Config(_) => ExitCode::from(BAD_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Runs an admin command: status 0 when it did what was asked, 2 when the
/// operator's input or the configuration is refused, 1 otherwise.
fn run_admin(
    runtime: &tokio::runtime::Runtime,
    command: switchd::admin::AdminCommand,
    settings: &SwitchdConfig,
) -> ExitCode {
    use switchd::admin::AdminError;
    match runtime.block_on(switchd::admin::run(command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchd admin: {error}");
            match error {
                AdminError::Invalid(_) | AdminError::Start(ServeError::Config(_)) => {
                    ExitCode::from(BAD_CONFIG)
                }
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Why `switchd` stopped with an error: which service, and the platform's
/// error it reported.
struct Failure {
    service: &'static str,
    error: Box<ServeError>,
}

async fn run(service: Service, settings: SwitchdConfig) -> Result<(), Failure> {
    let _telemetry = switch_platform::telemetry::init(service.name(), &settings.telemetry)
        .map_err(|error| Failure {
            service: "telemetry",
            error: Box::new(ServeError::Start {
                what: "telemetry",
                reason: error.to_string(),
            }),
        })?;
    let settings = Arc::new(settings);
    // One stop per service, so they stop one after another.
    let mut stops: HashMap<&'static str, CancellationToken> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for spec in service.specs() {
        let fail = |error| Failure {
            service: spec.name,
            error: Box::new(error),
        };
        let listener = switch_platform::service::bind((spec.listen)(&settings))
            .await
            .map_err(fail)?;
        let stop = CancellationToken::new();
        let serving = (spec.start)(
            settings.clone(),
            listener,
            Box::pin(stop.clone().cancelled_owned()),
        );
        stops.insert(spec.name, stop);
        tasks.spawn(async move { (spec.name, serving.await.map_err(fail)) });
    }

    // Stop everything on a signal, or as soon as any service stops.
    let mut stopped: HashSet<&'static str> = HashSet::new();
    let mut first_error = None;
    tokio::select! {
        () = switch_platform::shutdown::signal() => {}
        Some(finished) = tasks.join_next() => record(finished, &mut stopped, &mut first_error),
    }
    // Callers first: each drains while what it calls still serves.
    for spec in service.stop_order() {
        if let Some(stop) = stops.get(spec.name) {
            stop.cancel();
        }
        while !stopped.contains(spec.name) {
            match tasks.join_next().await {
                Some(finished) => record(finished, &mut stopped, &mut first_error),
                None => break,
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Notes a service task's end and keeps the first error.
fn record(
    finished: Result<(&'static str, Result<(), Failure>), tokio::task::JoinError>,
    stopped: &mut HashSet<&'static str>,
    first_error: &mut Option<Failure>,
) {
    match finished {
        Ok((name, result)) => {
            stopped.insert(name);
            if let Err(failure) = result {
                first_error.get_or_insert(failure);
            }
        }
        Err(error) => {
            // A panicked task's name is lost; every service is waited for
            // by the join set emptying instead.
            first_error.get_or_insert(Failure {
                service: "switchd",
                error: Box::new(ServeError::Start {
                    what: "a service task",
                    reason: error.to_string(),
                }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_dump_without_secrets() {
        // No service PKI where unit tests run: the lab mode, named.
        let lab = vec![(
            "SWITCH__INTERNAL_TLS__PLAINTEXT_FOR_LAB".to_owned(),
            "true".to_owned(),
        )];
        let settings: SwitchdConfig = config::load_with_env(None, lab).unwrap();
        settings
            .validate_for(Service::Authorization)
            .expect("the defaults run authorization");
        let dumped = config::dump(&settings).unwrap();
        assert!(dumped.contains("[authorization]"));
        assert!(!dumped.contains(settings.authorization.pan_hash_key.expose()));
        // The dump is itself a valid configuration file.
        let _: SwitchdConfig = toml::from_str(&dumped).unwrap();
    }

    #[test]
    fn a_bad_environment_value_names_its_key() {
        let settings = config::load_with_env::<SwitchdConfig, _>(
            None,
            vec![(
                "SWITCH__AUTHORIZATION__ISSUER_TIMEOUT_MS".to_owned(),
                "0".to_owned(),
            )],
        )
        .expect("the shared sections are fine");
        let error = settings.validate_for(Service::Authorization).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("authorization.issuer_timeout_ms"),
            "{error}"
        );
    }

    #[test]
    fn the_command_line_names_every_service() {
        for name in [
            "authorization",
            "terminal-gateway",
            "gateway",
            "reversal-handler",
            "settlement",
            "notifier",
            "issuer-simulator",
            "qr-simulator",
            "all",
        ] {
            Cli::try_parse_from(["switchd", name]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(
            Cli::try_parse_from(["switchd"]).is_err(),
            "a service is required"
        );
    }

    #[test]
    fn admin_commands_parse_beside_the_services() {
        use switchd::admin::{AdminCommand, ConsumingService, DeadLettersCommand};
        let cli = Cli::try_parse_from([
            "switchd",
            "--config",
            "switch.toml",
            "admin",
            "dead-letters",
            "replay",
            "--service",
            "settlement",
            "--operator",
            "ops.alice",
            "--reason",
            "INC-7: fixed",
            "--offset",
            "41",
        ])
        .unwrap();
        assert_eq!(cli.service, None);
        let Some(Admin::Admin(AdminCommand::DeadLetters(DeadLettersCommand::Replay(args)))) =
            cli.admin
        else {
            panic!("expected admin dead-letters replay");
        };
        assert_eq!(args.service, ConsumingService::SettlementBatcher);
        assert_eq!(args.offset, Some(41));
        assert_eq!(args.operator, "ops.alice");
        let missing = Cli::try_parse_from([
            "switchd",
            "admin",
            "dead-letters",
            "replay",
            "--service",
            "notifier",
            "--operator",
            "ops.alice",
        ])
        .unwrap_err()
        .to_string();
        assert!(missing.contains("--reason"), "{missing}");
        let no_consumer = Cli::try_parse_from([
            "switchd",
            "admin",
            "dead-letters",
            "list",
            "--service",
            "authorization",
        ]);
        assert!(no_consumer.is_err(), "authorization consumes no events");
        let cli = Cli::try_parse_from([
            "switchd",
            "admin",
            "dead-letters",
            "list",
            "--service",
            "gateway",
            "--all",
        ])
        .unwrap();
        assert!(matches!(
            cli.admin,
            Some(Admin::Admin(AdminCommand::DeadLetters(DeadLettersCommand::List(ref args))))
                if args.service == ConsumingService::TerminalGateway && args.all
        ));
    }
}
