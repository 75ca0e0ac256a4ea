//! `switchd`: one binary, one image, for every service of the switch.
//!
//! `switchd <service>` runs one service; `switchd all` runs authorization,
//! the terminal gateway, the reversal handler, the settlement batcher, the
//! notifier and the issuer simulator in one process, for a laptop. Both
//! start services from the one table in the library ([`switchd::SERVICES`]).
//! The binary only loads configuration, validates the sections of the
//! services it runs (exiting with status 2 and a message naming the key
//! when a value is bad), sets up telemetry, binds listeners and starts each
//! service; on SIGTERM every service drains within its grace timeout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use switch_platform::config::{self, ConfigError};
use switch_platform::service::ServeError;
use switchd::{Service, SwitchdConfig};
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
    /// Print the effective configuration (secrets redacted) and exit. Only
    /// the shared sections are checked, so a bad one can still be shown.
    #[arg(long)]
    dump_config: bool,
    /// Which service to run.
    service: Service,
}

/// Exit status of a configuration the services cannot run with.
const BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded: Result<SwitchdConfig, ConfigError> =
        config::load(cli.config.as_deref()).and_then(|c: SwitchdConfig| {
            if !cli.dump_config {
                c.validate_for(cli.service)?;
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
    match runtime.block_on(run(cli.service, settings)) {
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
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for spec in service.specs() {
        let fail = |error| Failure {
            service: spec.name,
            error: Box::new(error),
        };
        let listener = switch_platform::service::bind((spec.listen)(&settings))
            .await
            .map_err(fail)?;
        let serving = (spec.start)(
            settings.clone(),
            listener,
            Box::pin(stop.clone().cancelled_owned()),
        );
        tasks.spawn(async move { serving.await.map_err(fail) });
    }

    // Stop everything on a signal, or as soon as any service stops.
    let mut first_error = None;
    tokio::select! {
        () = switch_platform::shutdown::signal() => {}
        Some(finished) = tasks.join_next() => {
            first_error = flatten(finished).err();
        }
    }
    stop.cancel();
    while let Some(finished) = tasks.join_next().await {
        if let Err(failure) = flatten(finished) {
            first_error.get_or_insert(failure);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn flatten(finished: Result<Result<(), Failure>, tokio::task::JoinError>) -> Result<(), Failure> {
    finished.map_err(|error| Failure {
        service: "switchd",
        error: Box::new(ServeError::Start {
            what: "a service task",
            reason: error.to_string(),
        }),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_dump_without_secrets() {
        let settings: SwitchdConfig = config::load_with_env(None, Vec::new()).unwrap();
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
            "all",
        ] {
            Cli::try_parse_from(["switchd", name]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
