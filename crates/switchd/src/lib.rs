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
use switch_platform::config::{
    ConfigError, DevelopmentSetting, DevelopmentSettings, Environment, Validate,
    refuse_in_production,
};
use switch_platform::db::DatabaseConfig;
use switch_platform::internal_tls::InternalTlsConfig;
use switch_platform::kafka::KafkaConfig;
use switch_platform::service::ServeError;
use switch_platform::shutdown::{Shutdown, ShutdownConfig};
use switch_platform::telemetry::TelemetryConfig;
use tokio::net::TcpListener;

/// The whole configuration: one section per concern.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwitchdConfig {
    /// `development` (the default, for a laptop) or `production`, where
    /// the services refuse to start with any development setting.
    pub environment: Environment,
    pub telemetry: TelemetryConfig,
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    /// Mutual TLS between the services (ADR 27): one section for the
    /// process, whichever services it runs.
    pub internal_tls: InternalTlsConfig,
    /// How every service of the process stops on SIGTERM: NOT_SERVING
    /// first, then the drain.
    pub shutdown: ShutdownConfig,
    pub authorization: authorization::AuthorizationConfig,
    pub gateway: terminal_gateway::GatewayConfig,
    pub reversal_handler: reversal_handler::ReversalHandlerConfig,
    pub settlement: settlement_batcher::SettlementConfig,
    pub notifier: notifier::NotifierConfig,
    pub issuer_simulator: issuer_simulator::IssuerSimulatorConfig,
    pub qr_simulator: qr_simulator::QrSimulatorConfig,
}

impl Validate for SwitchdConfig {
    /// Checks the sections every service shares; a service's own section
    /// is checked by [`SwitchdConfig::validate_for`] where it runs (the
    /// gateway's names certificate files that exist only where it runs).
    fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry.validate()?;
        self.database.validate()?;
        self.kafka.validate()?;
        self.shutdown.validate()
    }
}

impl SwitchdConfig {
    /// Checks the shared sections and the section of every service that
    /// `service` runs, naming the first bad key.
    /// In production, every development setting of the shared sections
    /// and of the services `service` runs is refused at once, each named.
    pub fn validate_for(&self, service: Service) -> Result<(), ConfigError> {
        self.validate()?;
        for spec in service.specs() {
            (spec.validate)(self)?;
        }
        // After every section: a bad value, then a development setting in
        // production, is named before a missing certificate file.
        refuse_in_production(self.environment, self.development_settings_for(service))?;
        for spec in service.specs().filter(|spec| spec.internal_grpc) {
            self.internal_tls.validate_for(spec.name)?;
        }
        Ok(())
    }

    /// The development settings that `service` would run with.
    pub fn development_settings_for(&self, service: Service) -> Vec<DevelopmentSetting> {
        let mut found = self.database.development_settings();
        found.extend(self.internal_tls.development_settings());
        for spec in service.specs() {
            found.extend((spec.development_settings)(self));
        }
        found
    }
}

/// Where `switchd all` receives the QR platform's notifications in
/// development, beside the simulator's own `127.0.0.1:50080`.
pub const DEV_QR_NOTIFY_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    50081,
));

impl SwitchdConfig {
    /// What `service` runs with once the development defaults that span two
    /// sections are filled in: in development, `switchd all` runs the QR
    /// platform simulator, so authorization offers QR payments against it
    /// and the simulator notifies authorization's receiver. Both ends of
    /// each link are derived here from one address, so they cannot drift
    /// apart; a value configured explicitly is kept. Production and single
    /// services are returned unchanged: there each section says what it
    /// means, and production refuses the simulator anyway (ADR 28).
    pub fn resolved_for(mut self, service: Service) -> Self {
        if service != Service::All || self.environment != Environment::Development {
            return self;
        }
        let qr = self.authorization.qr.get_or_insert_with(Default::default);
        // The default URL means "the simulator", wherever it listens.
        if qr.platform_url == authorization::QrConfig::default().platform_url {
            qr.platform_url = format!("https://{}", self.qr_simulator.listen);
        }
        let notify_listen = *qr.notify_listen.get_or_insert(DEV_QR_NOTIFY_LISTEN);
        if self.qr_simulator.notify_url.is_none() {
            self.qr_simulator.notify_url = Some(format!(
                "https://{notify_listen}{}",
                authorization::qr::NOTIFY_PATH
            ));
            // The receiver presents the dev PKI's server certificate, issued
            // by the CA authorization already trusts for the platform.
            if self.qr_simulator.notify_ca_path.is_none() {
                self.qr_simulator.notify_ca_path = qr.ca_path.clone();
            }
        }
        self
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
    QrSimulator,
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
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A running service: resolves when it has stopped.
pub type Serving = Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send + 'static>>;

/// One row of the table.
pub struct ServiceSpec {
    pub service: Service,
    /// Its name: schema, telemetry, log lines.
    pub name: &'static str,
    /// Where it listens.
    pub listen: fn(&SwitchdConfig) -> SocketAddr,
    /// Whether it serves or calls the switch's internal gRPC, and so needs
    /// a service certificate (ADR 27); the QR platform simulator speaks
    /// HTTPS with the dev server certificate instead.
    pub internal_grpc: bool,
    /// The services it calls: `switchd all` stops it before them, so its
    /// last requests in flight still find them serving.
    pub calls: &'static [Service],
    /// Checks its own configuration section, naming the bad key.
    pub validate: fn(&SwitchdConfig) -> Result<(), ConfigError>,
    /// Its settings that production refuses.
    pub development_settings: fn(&SwitchdConfig) -> Vec<DevelopmentSetting>,
    /// The migrations of its schema (`switchd admin migrate`; the service
    /// also runs them when it starts).
    pub migrator: &'static sqlx::migrate::Migrator,
    /// Serves it on `listener` until the shutdown resolves.
    pub start: fn(Arc<SwitchdConfig>, TcpListener, StopSignal) -> Serving,
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

impl Service {
    /// The services this selection runs, in the order they stop: every
    /// service before the services it calls (the reverse of a start order
    /// in which every service starts after those it calls).
    pub fn stop_order(self) -> Vec<&'static ServiceSpec> {
        let mut remaining: Vec<&'static ServiceSpec> = self.specs().collect();
        let mut order = Vec::with_capacity(remaining.len());
        while !remaining.is_empty() {
            // A service no remaining service calls may stop now.
            let next = remaining
                .iter()
                .position(|candidate| {
                    !remaining
                        .iter()
                        .any(|caller| caller.calls.contains(&candidate.service))
                })
                .expect("the table's calls have no cycle");
            order.push(remaining.remove(next));
        }
        order
    }
}

/// Every service, in the order `switchd all` starts them.
pub static SERVICES: [ServiceSpec; 7] = [
    ServiceSpec {
        service: Service::IssuerSimulator,
        name: issuer_simulator::SERVICE_NAME,
        listen: |c| c.issuer_simulator.listen,
        calls: &[],
        internal_grpc: true,
        validate: |_| Ok(()),
        development_settings: |_| {
            vec![DevelopmentSetting::new(
                "issuer_simulator",
                "the issuer simulator is a test double that approves by rule",
            )]
        },
        migrator: &issuer_simulator::MIGRATOR,
        start: |c, listener, shutdown| {
            Box::pin(async move {
                issuer_simulator::serve_configured(
                    &c.issuer_simulator,
                    &c.database,
                    &c.internal_tls,
                    listener,
                    Shutdown::new(shutdown, c.shutdown.timing()),
                )
                .await
            })
        },
    },
    ServiceSpec {
        service: Service::QrSimulator,
        name: qr_simulator::SERVICE_NAME,
        listen: |c| c.qr_simulator.listen,
        calls: &[],
        internal_grpc: false,
        validate: |c| c.qr_simulator.validate(),
        development_settings: |_| {
            vec![DevelopmentSetting::new(
                "qr_simulator",
                "the QR platform simulator is a test double that pays by rule",
            )]
        },
        migrator: &qr_simulator::MIGRATOR,
        start: |c, listener, shutdown| {
            Box::pin(async move {
                qr_simulator::serve_configured(&c.qr_simulator, &c.database, listener, shutdown)
                    .await
            })
        },
    },
    ServiceSpec {
        service: Service::Authorization,
        name: authorization::SERVICE_NAME,
        listen: |c| c.authorization.listen,
        // The QR platform too, once its link is configured.
        calls: &[Service::IssuerSimulator, Service::QrSimulator],
        internal_grpc: true,
        validate: |c| c.authorization.validate(),
        development_settings: |c| c.authorization.development_settings(),
        migrator: &authorization::MIGRATOR,
        start: |c, listener, shutdown| {
            Box::pin(async move {
                authorization::serve(
                    &c.database,
                    &c.kafka,
                    &c.internal_tls,
                    &c.authorization,
                    listener,
                    Shutdown::new(shutdown, c.shutdown.timing()),
                )
                .await
            })
        },
    },
    ServiceSpec {
        service: Service::TerminalGateway,
        name: terminal_gateway::SERVICE_NAME,
        listen: |c| c.gateway.listen,
        calls: &[Service::Authorization, Service::SettlementBatcher],
        internal_grpc: true,
        validate: |c| c.gateway.validate(),
        development_settings: |c| c.gateway.development_settings(),
        migrator: &terminal_gateway::MIGRATOR,
        start: |c, listener, shutdown| {
            Box::pin(async move {
                terminal_gateway::serve(
                    &c.database,
                    &c.kafka,
                    &c.internal_tls,
                    &c.gateway,
                    listener,
                    Shutdown::new(shutdown, c.shutdown.timing()),
                )
                .await
            })
        },
    },
    ServiceSpec {
        service: Service::ReversalHandler,
        name: reversal_handler::SERVICE_NAME,
        listen: |c| c.reversal_handler.listen,
        calls: &[Service::Authorization],
        internal_grpc: true,
        validate: |c| c.reversal_handler.validate(),
        development_settings: |_| Vec::new(),
        migrator: &reversal_handler::MIGRATOR,
        start: |c, listener, shutdown| {
            Box::pin(async move {
                reversal_handler::serve(
                    &c.database,
                    &c.kafka,
                    &c.internal_tls,
                    &c.reversal_handler,
                    listener,
                    Shutdown::new(shutdown, c.shutdown.timing()),
                )
                .await
            })
        },
    },
    ServiceSpec {
        service: Service::SettlementBatcher,
        name: settlement_batcher::SERVICE_NAME,
        listen: |c| c.settlement.listen,
        calls: &[Service::Authorization],
        internal_grpc: true,
        validate: |c| c.settlement.validate(),
        development_settings: |c| c.settlement.development_settings(),
        migrator: &settlement_batcher::MIGRATOR,
        start: |c, listener, shutdown| {
            Box::pin(async move {
                settlement_batcher::serve(
                    &c.database,
                    &c.kafka,
                    &c.internal_tls,
                    &c.settlement,
                    listener,
                    Shutdown::new(shutdown, c.shutdown.timing()),
                )
                .await
            })
        },
    },
    ServiceSpec {
        service: Service::Notifier,
        name: notifier::SERVICE_NAME,
        listen: |c| c.notifier.listen,
        calls: &[],
        internal_grpc: true,
        validate: |c| c.notifier.validate(),
        development_settings: |c| c.notifier.development_settings(),
        migrator: &notifier::MIGRATOR,
        start: |c, listener, shutdown| {
            Box::pin(async move {
                notifier::serve(
                    &c.database,
                    &c.kafka,
                    &c.internal_tls,
                    &c.notifier,
                    listener,
                    Shutdown::new(shutdown, c.shutdown.timing()),
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

    fn production_ready() -> SwitchdConfig {
        let mut c = SwitchdConfig {
            environment: Environment::Production,
            ..SwitchdConfig::default()
        };
        c.database.url = "postgres://switch@db.internal:5432/switch?sslmode=verify-full".into();
        c.database.password = Some(switch_platform::config::Secret::new("from-a-secret"));
        c.authorization.pan_hash_key =
            switch_platform::config::Secret::new("a-key-of-the-acquirers-own-0001");
        c.authorization.issuer_endpoint = "https://issuer.internal:443".into();
        c.settlement.debtor_name = "Acquirer Ltd".into();
        c.settlement.debtor_iban = "GB29NWBK60161331926819".into();
        c.settlement.debtor_bic = "NWBKGB2L".into();
        c.notifier.webhook_destinations = notifier::WebhookDestinations::PublicHttps;
        c.internal_tls = service_pki();
        c
    }

    /// A service PKI on disk, as a pod would mount it.
    fn service_pki() -> switch_platform::internal_tls::InternalTlsConfig {
        let dir = std::env::temp_dir().join(format!("switchd-pki-{}", std::process::id()));
        let services: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
        dev_certs::DevPki::generate_service_ca()
            .unwrap()
            .write_service_layout(&dir, &services, &[])
            .unwrap();
        switch_platform::internal_tls::InternalTlsConfig::in_dir(&dir)
    }

    fn refused_keys(config: &SwitchdConfig, service: Service) -> Vec<String> {
        match config.validate_for(service) {
            Err(ConfigError::DevelopmentSettings(settings)) => {
                settings.into_iter().map(|s| s.key).collect()
            }
            other => panic!("expected development settings refused, got {other:?}"),
        }
    }

    #[test]
    fn production_refuses_every_development_default_naming_each_key() {
        let laptop = SwitchdConfig {
            environment: Environment::Production,
            ..SwitchdConfig::default()
        };
        assert_eq!(
            refused_keys(&laptop, Service::Authorization),
            [
                "database.url",
                "database.password",
                "authorization.pan_hash_key",
                "authorization.issuer_endpoint"
            ]
        );
        assert_eq!(
            refused_keys(&laptop, Service::SettlementBatcher)[2..],
            [
                "settlement.debtor_name",
                "settlement.debtor_iban",
                "settlement.debtor_bic"
            ]
        );
        assert_eq!(
            refused_keys(&laptop, Service::Notifier)[2..],
            ["notifier.webhook_destinations"]
        );
        // The same configuration runs on a laptop.
        let development = SwitchdConfig {
            internal_tls: service_pki(),
            ..SwitchdConfig::default()
        };
        assert!(development.validate_for(Service::Authorization).is_ok());
    }

    #[test]
    fn a_production_configuration_starts_every_service_but_the_simulator() {
        let config = production_ready();
        for service in [
            Service::Authorization,
            Service::ReversalHandler,
            Service::SettlementBatcher,
            Service::Notifier,
        ] {
            assert_eq!(
                config.validate_for(service).map_err(|e| e.to_string()),
                Ok(())
            );
        }
        assert_eq!(
            refused_keys(&config, Service::IssuerSimulator),
            ["issuer_simulator"]
        );
        let all: Vec<String> = config
            .development_settings_for(Service::All)
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(all, ["issuer_simulator", "qr_simulator"]);
        assert_eq!(
            refused_keys(&config, Service::QrSimulator),
            ["qr_simulator"]
        );
        let mut plaintext = production_ready();
        plaintext.internal_tls =
            switch_platform::internal_tls::InternalTlsConfig::plaintext_for_lab();
        let keys: Vec<String> = plaintext
            .development_settings_for(Service::Authorization)
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(keys, ["internal_tls.plaintext_for_lab"]);
        let mut lab = production_ready();
        lab.gateway.iso_listeners = vec![terminal_gateway::IsoListenerConfig {
            plain_tcp_for_lab: true,
            ..Default::default()
        }];
        // The gateway's own checks want its certificate files; the
        // development settings are read from the section alone.
        let lab_keys: Vec<String> = lab
            .development_settings_for(Service::TerminalGateway)
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(lab_keys, ["gateway.iso_listeners[0].plain_tcp_for_lab"]);
    }

    #[test]
    fn switchd_all_in_development_runs_qr_with_the_simulator_notifying_the_receiver() {
        let config = SwitchdConfig::default().resolved_for(Service::All);
        let qr = config.authorization.qr.as_ref().expect("QR is on");
        assert_eq!(qr.notify_listen, Some(DEV_QR_NOTIFY_LISTEN));
        assert_eq!(qr.platform_url, "https://127.0.0.1:50080");
        assert_eq!(
            config.qr_simulator.notify_url.as_deref(),
            Some("https://127.0.0.1:50081/qr/notify")
        );
        assert_eq!(config.qr_simulator.notify_ca_path, qr.ca_path);
        assert!(qr.ca_path.is_some(), "the receiver's CA is trusted");
        // Its own listen address is distinct from every service's.
        assert!(
            SERVICES
                .iter()
                .all(|s| (s.listen)(&config) != DEV_QR_NOTIFY_LISTEN)
        );
        let lab = SwitchdConfig {
            internal_tls: InternalTlsConfig::plaintext_for_lab(),
            ..config
        };
        // (`all` would also check the gateway's certificate files.)
        for service in [Service::Authorization, Service::QrSimulator] {
            lab.validate_for(service)
                .expect("the derived sections are valid");
        }
    }

    #[test]
    fn each_derived_address_follows_the_one_it_is_derived_from() {
        let mut moved = SwitchdConfig::default();
        moved.qr_simulator.listen = SocketAddr::from(([127, 0, 0, 1], 60080));
        moved.authorization.qr = Some(authorization::QrConfig {
            notify_listen: Some(SocketAddr::from(([127, 0, 0, 1], 60081))),
            ..Default::default()
        });
        let moved = moved.resolved_for(Service::All);
        let qr = moved.authorization.qr.as_ref().expect("QR is on");
        assert_eq!(qr.platform_url, "https://127.0.0.1:60080");
        assert_eq!(
            moved.qr_simulator.notify_url.as_deref(),
            Some("https://127.0.0.1:60081/qr/notify")
        );
        // What is configured explicitly is kept.
        let mut explicit = SwitchdConfig::default();
        explicit.qr_simulator.notify_url = Some("https://switch.lab:8443/qr/notify".into());
        explicit.authorization.qr = Some(authorization::QrConfig {
            platform_url: "https://qr.lab:443".into(),
            ..Default::default()
        });
        let explicit = explicit.resolved_for(Service::All);
        assert_eq!(
            explicit.qr_simulator.notify_url.as_deref(),
            Some("https://switch.lab:8443/qr/notify")
        );
        assert_eq!(explicit.qr_simulator.notify_ca_path, None);
        assert_eq!(
            explicit.authorization.qr.expect("kept").platform_url,
            "https://qr.lab:443"
        );
    }

    #[test]
    fn windows_set_from_the_environment_keep_the_derived_links() {
        let settings: SwitchdConfig = switch_platform::config::load_with_env(
            None,
            vec![(
                "SWITCH__AUTHORIZATION__QR__TERMINAL_WAIT_MS".to_owned(),
                "1500".to_owned(),
            )],
        )
        .expect("loads");
        let settings = settings.resolved_for(Service::All);
        let qr = settings.authorization.qr.as_ref().expect("QR is on");
        assert_eq!(qr.terminal_wait_ms, 1_500);
        assert_eq!(qr.notify_listen, Some(DEV_QR_NOTIFY_LISTEN));
        assert!(settings.qr_simulator.notify_url.is_some());
    }

    #[test]
    fn production_and_single_services_get_no_development_qr() {
        let production = production_ready().resolved_for(Service::All);
        assert!(production.authorization.qr.is_none());
        assert!(production.qr_simulator.notify_url.is_none());
        // Production `all` still refuses the simulators it would run.
        let all: Vec<String> = production
            .development_settings_for(Service::All)
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(all, ["issuer_simulator", "qr_simulator"]);
        // A QR section copied from a laptop is refused in production, named.
        let mut copied = production_ready();
        copied.authorization.qr = SwitchdConfig::default()
            .resolved_for(Service::All)
            .authorization
            .qr;
        assert_eq!(
            refused_keys(&copied, Service::Authorization),
            ["authorization.qr.key", "authorization.qr.platform_url"]
        );
        for service in [Service::Authorization, Service::QrSimulator] {
            let one = SwitchdConfig::default().resolved_for(service);
            assert!(one.authorization.qr.is_none(), "{service:?}");
            assert!(one.qr_simulator.notify_url.is_none(), "{service:?}");
        }
    }

    #[test]
    fn every_service_stops_before_the_services_it_calls() {
        let order: Vec<Service> = Service::All
            .stop_order()
            .iter()
            .map(|s| s.service)
            .collect();
        assert_eq!(order.len(), SERVICES.len());
        for (position, spec) in Service::All.stop_order().iter().enumerate() {
            for callee in spec.calls {
                let callee_at = order.iter().position(|s| s == callee).unwrap();
                assert!(
                    callee_at > position,
                    "{:?} stops before its caller {:?}",
                    callee,
                    spec.service
                );
            }
        }
        assert_eq!(order[0], Service::TerminalGateway);
        let issuer = order.iter().position(|s| *s == Service::IssuerSimulator);
        let authorization = order.iter().position(|s| *s == Service::Authorization);
        assert!(authorization < issuer);
        assert_eq!(
            Service::Notifier
                .stop_order()
                .iter()
                .map(|s| s.service)
                .collect::<Vec<_>>(),
            [Service::Notifier]
        );
    }

    #[test]
    fn switchd_all_needs_a_service_certificate_for_each_internal_grpc_service_only() {
        let config = SwitchdConfig {
            internal_tls: service_pki(),
            ..SwitchdConfig::default()
        };
        // The PKI has no certificate for the QR platform simulator, which
        // speaks HTTPS with the server certificate, not internal gRPC.
        assert!(
            !Service::All
                .specs()
                .filter(|s| !s.internal_grpc)
                .any(|s| s.service != Service::QrSimulator)
        );
        for spec in Service::All.specs().filter(|s| s.internal_grpc) {
            config.internal_tls.validate_for(spec.name).unwrap();
        }
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
        let cases: [(Service, Spoil, &str); 8] = [
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
            (
                Service::QrSimulator,
                |c| c.qr_simulator.notify_url = Some("ftp://switch/notify".into()),
                "qr_simulator.notify_url",
            ),
            // A grace period of zero would refuse every request in flight.
            (
                Service::Authorization,
                |c| c.shutdown.grace_period_ms = 0,
                "shutdown.grace_period_ms",
            ),
            (
                Service::TerminalGateway,
                |c| c.shutdown.unready_delay_ms = 600_000,
                "shutdown.unready_delay_ms",
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
