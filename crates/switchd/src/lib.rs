//! The table of the switch's services: for each, its name, where it
//! listens, how its configuration section is validated and how it is
//! started. `switchd <service>`, `switchd all` and the end-to-end harness
//! (`tests/`) all start services from this one table, so a service added
//! here is started, validated and drained the same way everywhere.
//!
//! [`admin`] holds the operators' commands that run beside the services
//! with their configuration (`switchd admin dead-letters`).

pub mod admin;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use switch_platform::config::{ConfigError, Validate};
use switch_platform::db::DatabaseConfig;
use switch_platform::internal_tls::InternalTlsConfig;
use switch_platform::kafka::KafkaConfig;
use switch_platform::service::ServeError;
use switch_platform::telemetry::TelemetryConfig;
use tokio::net::TcpListener;

/// The whole configuration: one section per concern.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwitchdConfig {
    pub telemetry: TelemetryConfig,
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    /// Mutual TLS between the services (ADR 27): one section for the
    /// process, whichever services it runs.
    pub internal_tls: InternalTlsConfig,
    pub authorization: authorization::AuthorizationConfig,
    pub gateway: terminal_gateway::GatewayConfig,
    pub reversal_handler: reversal_handler::ReversalHandlerConfig,
    pub settlement: settlement_batcher::SettlementConfig,
    pub notifier: notifier::NotifierConfig,
    pub issuer_simulator: issuer_simulator::IssuerSimulatorConfig,
}

impl Validate for SwitchdConfig {
    /// Checks the sections every service shares; a service's own section
    /// is checked by [`SwitchdConfig::validate_for`] where it runs (the
    /// gateway's names certificate files that exist only where it runs).
    fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry.validate()?;
        self.database.validate()?;
        self.kafka.validate()
    }
}

impl SwitchdConfig {
    /// Checks the shared sections and the section of every service that
    /// `service` runs, naming the first bad key.
    pub fn validate_for(&self, service: Service) -> Result<(), ConfigError> {
        self.validate()?;
        for spec in service.specs() {
            (spec.validate)(self)?;
        }
        // After every section: a bad value is named before a missing
        // certificate file, whichever service comes first.
        for spec in service.specs() {
            self.internal_tls.validate_for(spec.name)?;
        }
        Ok(())
    }
}

/// Which service to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
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
    /// The services this selection runs, in start order.
    pub fn specs(self) -> impl Iterator<Item = &'static ServiceSpec> {
        SERVICES
            .iter()
            .filter(move |spec| self == Service::All || spec.service == self)
    }

    /// The name telemetry reports.
    pub fn name(self) -> &'static str {
        match self {
            Service::All => "switchd",
            one => one.specs().next().map_or("switchd", |spec| spec.name),
        }
    }
}

/// What a service stops on.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A running service: resolves when it has stopped.
pub type Serving = Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send + 'static>>;

/// One row of the table.
pub struct ServiceSpec {
    pub service: Service,
    /// Its name: schema, telemetry, log lines.
    pub name: &'static str,
    /// Where it listens.
    pub listen: fn(&SwitchdConfig) -> SocketAddr,
    /// Checks its own configuration section, naming the bad key.
    pub validate: fn(&SwitchdConfig) -> Result<(), ConfigError>,
    /// Serves it on `listener` until the shutdown resolves.
    pub start: fn(Arc<SwitchdConfig>, TcpListener, Shutdown) -> Serving,
}

impl ServiceSpec {
    /// The row of `service` (not [`Service::All`]).
    pub fn of(service: Service) -> &'static ServiceSpec {
        SERVICES
            .iter()
            .find(|spec| spec.service == service)
            .expect("every service but `all` has a row")
    }
}

/// Every service, in the order `switchd all` starts them.
pub static SERVICES: [ServiceSpec; 6] = [
    ServiceSpec {
        service: Service::IssuerSimulator,
        name: issuer_simulator::SERVICE_NAME,
        listen: |c| c.issuer_simulator.listen,
        validate: |_| Ok(()),
        start: |c, listener, shutdown| {
            Box::pin(async move {
                issuer_simulator::serve_configured(
                    &c.issuer_simulator,
                    &c.database,
                    &c.internal_tls,
                    listener,
                    shutdown,
                )
                .await
            })
        },
    },
    ServiceSpec {
        service: Service::Authorization,
        name: authorization::SERVICE_NAME,
        listen: |c| c.authorization.listen,
        validate: |c| c.authorization.validate(),
        start: |c, listener, shutdown| {
            Box::pin(async move {
                authorization::serve(
                    &c.database,
                    &c.kafka,
                    &c.internal_tls,
                    &c.authorization,
                    listener,
                    shutdown,
                )
                .await
            })
        },
    },
    ServiceSpec {
        service: Service::TerminalGateway,
        name: terminal_gateway::SERVICE_NAME,
        listen: |c| c.gateway.listen,
        validate: |c| c.gateway.validate(),
        start: |c, listener, shutdown| {
            Box::pin(async move {
                terminal_gateway::serve(
                    &c.database,
                    &c.kafka,
                    &c.internal_tls,
                    &c.gateway,
                    listener,
                    shutdown,
                )
                .await
            })
        },
    },
    ServiceSpec {
        service: Service::ReversalHandler,
        name: reversal_handler::SERVICE_NAME,
        listen: |c| c.reversal_handler.listen,
        validate: |c| c.reversal_handler.validate(),
        start: |c, listener, shutdown| {
            Box::pin(async move {
                reversal_handler::serve(
                    &c.database,
                    &c.kafka,
                    &c.internal_tls,
                    &c.reversal_handler,
                    listener,
                    shutdown,
                )
                .await
            })
        },
    },
    ServiceSpec {
        service: Service::SettlementBatcher,
        name: settlement_batcher::SERVICE_NAME,
        listen: |c| c.settlement.listen,
        validate: |c| c.settlement.validate(),
        start: |c, listener, shutdown| {
            Box::pin(async move {
                settlement_batcher::serve(
                    &c.database,
                    &c.kafka,
                    &c.internal_tls,
                    &c.settlement,
                    listener,
                    shutdown,
                )
                .await
            })
        },
    },
    ServiceSpec {
        service: Service::Notifier,
        name: notifier::SERVICE_NAME,
        listen: |c| c.notifier.listen,
        validate: |c| c.notifier.validate(),
        start: |c, listener, shutdown| {
            Box::pin(async move {
                notifier::serve(
                    &c.database,
                    &c.kafka,
                    &c.internal_tls,
                    &c.notifier,
                    listener,
                    shutdown,
                )
                .await
            })
        },
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_one_row_and_all_runs_them_all() {
        for service in Service::value_variants() {
            let rows = SERVICES.iter().filter(|s| s.service == *service).count();
            let expected = usize::from(*service != Service::All);
            assert_eq!(rows, expected, "{service:?}");
        }
        assert_eq!(Service::All.specs().count(), SERVICES.len());
        assert_eq!(Service::Notifier.specs().count(), 1);
        assert_eq!(Service::Authorization.name(), authorization::SERVICE_NAME);
    }

    #[test]
    fn listen_addresses_are_distinct_by_default() {
        let config = SwitchdConfig::default();
        let mut addresses: Vec<SocketAddr> =
            SERVICES.iter().map(|spec| (spec.listen)(&config)).collect();
        addresses.sort();
        addresses.dedup();
        assert_eq!(addresses.len(), SERVICES.len());
    }

    #[test]
    fn a_bad_value_in_any_section_names_its_key_where_it_runs() {
        type Spoil = fn(&mut SwitchdConfig);
        let cases: [(Service, Spoil, &str); 5] = [
            (
                Service::Authorization,
                |c| c.authorization.issuer_timeout_ms = 0,
                "authorization.issuer_timeout_ms",
            ),
            (
                Service::TerminalGateway,
                |c| c.gateway.tls.client_ca_path = None,
                "gateway.tls.client_ca_path",
            ),
            (
                Service::SettlementBatcher,
                |c| c.settlement.authorization_endpoint = "not a url".into(),
                "settlement.authorization_endpoint",
            ),
            (
                Service::ReversalHandler,
                |c| c.reversal_handler.authorization_endpoint = "not a url".into(),
                "reversal_handler.authorization_endpoint",
            ),
            (
                Service::Notifier,
                |c| c.notifier.consumer_group = " ".into(),
                "notifier.consumer_group",
            ),
        ];
        for (service, spoil, key) in cases {
            let mut config = SwitchdConfig::default();
            spoil(&mut config);
            let error = config.validate_for(service).unwrap_err();
            assert!(error.to_string().contains(key), "{service:?}: {error}");
        }
    }

    #[test]
    fn a_missing_service_certificate_is_named_where_the_service_runs() {
        let config = SwitchdConfig {
            internal_tls: InternalTlsConfig::in_dir(std::path::Path::new("/nonexistent")),
            ..Default::default()
        };
        let error = config.validate_for(Service::IssuerSimulator).unwrap_err();
        assert!(
            error.to_string().contains("internal_tls.ca_path"),
            "{error}"
        );
        let lab = SwitchdConfig {
            internal_tls: InternalTlsConfig::plaintext_for_lab(),
            ..config
        };
        lab.validate_for(Service::IssuerSimulator)
            .expect("the lab mode needs no certificate");
    }

    #[test]
    fn only_the_sections_of_the_services_that_run_are_checked() {
        let config = SwitchdConfig {
            authorization: authorization::AuthorizationConfig {
                issuer_timeout_ms: 0,
                ..Default::default()
            },
            // No service PKI where unit tests run.
            internal_tls: InternalTlsConfig::plaintext_for_lab(),
            ..Default::default()
        };
        config
            .validate_for(Service::IssuerSimulator)
            .expect("the simulator does not read authorization's section");
        let error = config.validate_for(Service::All).unwrap_err();
        // `all` checks every section; the first bad one in table order is
        // authorization's (the simulator has none to check).
        assert!(
            error
                .to_string()
                .contains("authorization.issuer_timeout_ms"),
            "{error}"
        );
    }
}
