//! Mutual TLS between the switch's services and who may call what (ADR 27).
//!
//! - [`InternalTlsConfig`]: the one `[internal_tls]` section every process
//!   reads: the service CA, and this process's certificate and key (a
//!   `{service}` in a path is replaced by the service's name, so
//!   `switchd all` presents each service's own certificate and a
//!   Kubernetes pod mounts one secret without it). Plaintext only when
//!   `plaintext_for_lab = true` says so.
//! - [`Caller`]: the identity a peer's certificate names, a URI SAN
//!   `spiffe://switch/service/<name>` or `spiffe://switch/operator/<name>`.
//! - [`ACCESS`] and [`decide`]: the table of every internal RPC and the
//!   callers it admits; a method not in it is refused.
//! - [`AccessLayer`]: the tower layer every internal server runs the table
//!   in, answering a refusal `PERMISSION_DENIED` before the handler runs.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::config::{ConfigError, DevelopmentSetting, DevelopmentSettings};
use crate::grpc::TlsFiles;
use crate::service::ClientTls;

/// Service names as they appear in certificates and the table.
pub mod services {
    pub const AUTHORIZATION: &str = "authorization";
    pub const TERMINAL_GATEWAY: &str = "terminal-gateway";
    pub const REVERSAL_HANDLER: &str = "reversal-handler";
    pub const SETTLEMENT_BATCHER: &str = "settlement-batcher";
    pub const NOTIFIER: &str = "notifier";
    pub const ISSUER_SIMULATOR: &str = "issuer-simulator";
}

/// Where the dev PKI (`make certs`) puts the service CA and certificates.
pub const DEV_CERTS_DIR: &str = ".run/certs";

/// The placeholder a certificate or key path may hold for the service name.
pub const SERVICE_PLACEHOLDER: &str = "{service}";

/// The `[internal_tls]` section: how this process's internal servers and
/// clients authenticate. The defaults point at the dev PKI, so the laptop
/// runs mutual TLS on every hop too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InternalTlsConfig {
    /// Serve and call in plaintext, with no caller identity and so no
    /// per-RPC authorization: for a lab without a service PKI, never the
    /// default.
    pub plaintext_for_lab: bool,
    /// The service CA: peers' certificates must chain to it.
    pub ca_path: PathBuf,
    /// This process's certificate (`{service}` is replaced by the name of
    /// the service presenting it).
    pub cert_path: PathBuf,
    /// Its private key (`{service}` as above).
    pub key_path: PathBuf,
    /// How often the three files are checked for a change. A change is
    /// used by new connections without a restart; established ones keep
    /// theirs ([`crate::mtls`]).
    pub reload_interval_ms: u64,
}

/// The default of `internal_tls.reload_interval_ms`: well inside the time
/// between cert-manager's renewal and the old certificate's expiry, and
/// three small reads every half a minute.
pub const DEFAULT_RELOAD_INTERVAL_MS: u64 = 30_000;

impl Default for InternalTlsConfig {
    fn default() -> Self {
        Self::in_dir(Path::new(DEV_CERTS_DIR))
    }
}

impl DevelopmentSettings for InternalTlsConfig {
    fn development_settings(&self) -> Vec<DevelopmentSetting> {
        if self.plaintext_for_lab {
            vec![DevelopmentSetting::new(
                "internal_tls.plaintext_for_lab",
                "internal calls, card numbers included, would cross the network in clear and unauthenticated",
            )]
        } else {
            Vec::new()
        }
    }
}

impl InternalTlsConfig {
    /// The dev layout under `dir`: `service-ca.pem`,
    /// `services/{service}.pem|.key`.
    pub fn in_dir(dir: &Path) -> Self {
        InternalTlsConfig {
            plaintext_for_lab: false,
            ca_path: dir.join("service-ca.pem"),
            cert_path: dir
                .join("services")
                .join(format!("{SERVICE_PLACEHOLDER}.pem")),
            key_path: dir
                .join("services")
                .join(format!("{SERVICE_PLACEHOLDER}.key")),
            reload_interval_ms: DEFAULT_RELOAD_INTERVAL_MS,
        }
    }

    /// Plaintext, no identities: the explicit lab mode.
    pub fn plaintext_for_lab() -> Self {
        InternalTlsConfig {
            plaintext_for_lab: true,
            ..Self::default()
        }
    }

    /// Whether the internal hops run mutual TLS.
    pub fn enabled(&self) -> bool {
        !self.plaintext_for_lab
    }

    /// The URL scheme internal endpoints must use in this mode.
    pub fn scheme(&self) -> &'static str {
        if self.enabled() { "https" } else { "http" }
    }

    /// The certificate and key `service` presents.
    pub fn identity_of(&self, service: &str) -> (PathBuf, PathBuf) {
        let fill = |path: &Path| {
            PathBuf::from(path.to_string_lossy().replace(SERVICE_PLACEHOLDER, service))
        };
        (fill(&self.cert_path), fill(&self.key_path))
    }

    /// How often the files are checked for a change.
    pub fn reload_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.reload_interval_ms)
    }

    /// Checks that the files `service` needs exist, naming the key of a
    /// missing one and how to get it.
    pub fn validate_for(&self, service: &str) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.reload_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "internal_tls.reload_interval_ms",
                "must be at least 1 (milliseconds between checks of the files)",
            ));
        }
        let (cert, key) = self.identity_of(service);
        for (name, path) in [
            ("ca_path", &self.ca_path),
            ("cert_path", &cert),
            ("key_path", &key),
        ] {
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    format!("internal_tls.{name}"),
                    format!(
                        "no such file: {} (`make certs` issues the dev service PKI; \
                         `internal_tls.plaintext_for_lab = true` runs without one)",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What `service`'s internal server presents and requires: its own
    /// certificate, and clients' certificates from the service CA.
    pub fn server(&self, service: &str) -> Option<TlsFiles> {
        self.enabled().then(|| {
            let (cert_path, key_path) = self.identity_of(service);
            TlsFiles {
                cert_path,
                key_path,
                client_ca_path: Some(self.ca_path.clone()),
            }
        })
    }

    /// What `service` presents when it calls another, and the CA it
    /// trusts.
    pub fn client(&self, service: &str) -> Option<ClientTls> {
        self.enabled().then(|| ClientTls {
            ca_path: self.ca_path.clone(),
            identity: Some(self.identity_of(service)),
            domain_name: None,
        })
    }

    /// Refuses an endpoint whose scheme does not match the mode, naming
    /// `key`: tonic speaks plaintext to an `http://` URL even with TLS
    /// configured, so a mismatch would silently drop the encryption.
    pub fn check_endpoint(&self, key: &str, url: &str) -> Result<(), ConfigError> {
        let scheme = self.scheme();
        if url.starts_with(&format!("{scheme}://")) {
            return Ok(());
        }
        Err(ConfigError::invalid(
            key,
            if self.enabled() {
                format!("internal TLS is on: the URL must be https://, not {url:?}")
            } else {
                format!(
                    "internal_tls.plaintext_for_lab is set: the URL must be http://, not {url:?}"
                )
            },
        ))
    }
}

/// Who is calling, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `spiffe://switch/service/<name>`.
    Service(String),
    /// `spiffe://switch/operator/<name>`.
    Operator(String),
}

const SERVICE_PREFIX: &str = "spiffe://switch/service/";
const OPERATOR_PREFIX: &str = "spiffe://switch/operator/";

impl Caller {
    /// The identity in a DER certificate's URI SANs, if it names one.
    pub fn from_der(der: &[u8]) -> Option<Caller> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let sans = cert.subject_alternative_name().ok()??;
        sans.value.general_names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => Caller::from_uri(uri),
            _ => None,
        })
    }

    /// The identity a URI names, if it is one of ours.
    pub fn from_uri(uri: &str) -> Option<Caller> {
        let valid = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if let Some(name) = uri.strip_prefix(SERVICE_PREFIX) {
            return valid(name).then(|| Caller::Service(name.to_owned()));
        }
        if let Some(name) = uri.strip_prefix(OPERATOR_PREFIX) {
            return valid(name).then(|| Caller::Operator(name.to_owned()));
        }
        None
    }

    /// The identity of the peer of a request served over TLS.
    pub fn of_request<B>(request: &http::Request<B>) -> Option<Caller> {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()?
            .peer_certs()?;
        Caller::from_der(certs.first()?.as_ref())
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Service(name) => write!(f, "{SERVICE_PREFIX}{name}"),
            Caller::Operator(name) => write!(f, "{OPERATOR_PREFIX}{name}"),
        }
    }
}

/// A caller a row of [`ACCESS`] admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// The service of this name.
    Service(&'static str),
    /// Any operator.
    Operator,
}

use Allowed::{Operator, Service};
use services::{AUTHORIZATION, REVERSAL_HANDLER, SETTLEMENT_BATCHER, TERMINAL_GATEWAY};

const GATEWAY: Allowed = Service(TERMINAL_GATEWAY);
const REVERSALS: Allowed = Service(REVERSAL_HANDLER);
const SETTLEMENT: Allowed = Service(SETTLEMENT_BATCHER);

/// Every internal RPC of the switch and who may call it. A method that is
/// not here is refused to everyone; health and reflection are open to any
/// peer with a certificate of the service CA ([`OPEN_TO_EVERY_PEER`]).
pub const ACCESS: &[(&str, &[Allowed])] = &[
    // Authorization: the terminal-facing forwards come from the gateway
    // (its `Reverse` is a terminal's own, by terminal key); what pays a
    // merchant (`Confirm`) from the reversal handler and settlement; the
    // rest is operators'.
    ("/switch.v1.AuthorizationService/Authorize", &[GATEWAY]),
    ("/switch.v1.AuthorizationService/Acknowledge", &[GATEWAY]),
    (
        "/switch.v1.AuthorizationService/LastForTerminal",
        &[GATEWAY],
    ),
    (
        "/switch.v1.AuthorizationService/GetAuthorization",
        &[GATEWAY, REVERSALS, SETTLEMENT, Operator],
    ),
    (
        "/switch.v1.AuthorizationService/Reverse",
        &[GATEWAY, REVERSALS, SETTLEMENT],
    ),
    (
        "/switch.v1.AuthorizationService/Confirm",
        &[REVERSALS, SETTLEMENT],
    ),
    // QR payments (ADR 29): a terminal's, through the gateway; an
    // operator may look one up.
    ("/switch.v1.AuthorizationService/QrPay", &[GATEWAY]),
    ("/switch.v1.AuthorizationService/QrOrder", &[GATEWAY]),
    ("/switch.v1.AuthorizationService/QrAcknowledge", &[GATEWAY]),
    (
        "/switch.v1.AuthorizationService/QrStatus",
        &[GATEWAY, Operator],
    ),
    ("/switch.v1.AuthorizationService/Redrive", &[Operator]),
    // A merchant refund of a confirmed QR payment, and a dead-lettered QR
    // call sent round again, are operators' decisions.
    ("/switch.v1.AuthorizationService/QrRefund", &[Operator]),
    ("/switch.v1.AuthorizationService/QrRedrive", &[Operator]),
    (
        "/switch.v1.AuthorizationService/ListDeadLettered",
        &[Operator],
    ),
    // Settlement: batches come from terminals through the gateway.
    ("/switch.v1.SettlementService/CloseBatch", &[GATEWAY]),
    ("/switch.v1.SettlementService/UploadBatch", &[GATEWAY]),
    (
        "/switch.v1.SettlementService/GetSettlementStatus",
        &[Operator],
    ),
    ("/switch.v1.SettlementService/RunSettlement", &[Operator]),
    (
        "/switch.v1.SettlementService/ListLedgerRejections",
        &[Operator],
    ),
    (
        "/switch.v1.SettlementService/ResolveLedgerRejection",
        &[Operator],
    ),
    // Notifier: all of it is administration.
    (
        "/switch.v1.NotifierService/ListFailedDeliveries",
        &[Operator],
    ),
    ("/switch.v1.NotifierService/Redeliver", &[Operator]),
    ("/switch.v1.NotifierService/RegisterEndpoint", &[Operator]),
    // The issuer: only authorization sends it money movements; its
    // control API (faults, ledger) is the operators' and tests'.
    (
        "/switch.v1.IssuerService/Authorize",
        &[Service(AUTHORIZATION)],
    ),
    (
        "/switch.v1.IssuerService/Reverse",
        &[Service(AUTHORIZATION)],
    ),
    ("/switch.v1.IssuerControl/SetFaults", &[Operator]),
    ("/switch.v1.IssuerControl/Stats", &[Operator]),
    ("/switch.v1.IssuerControl/Funds", &[Operator]),
];

/// The gRPC services every authenticated peer may call: health (probes)
/// and reflection (grpcurl).
pub const OPEN_TO_EVERY_PEER: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The peer presented no certificate naming a switch identity.
    NoIdentity,
    /// The identity may not call the method (or the method is unknown).
    NotAllowed(Caller),
}

/// Whether `caller` may call `path` (`/package.Service/Method`).
pub fn decide(caller: Option<&Caller>, path: &str) -> Result<(), Refusal> {
    let Some(caller) = caller else {
        return Err(Refusal::NoIdentity);
    };
    if OPEN_TO_EVERY_PEER
        .iter()
        .any(|prefix| path.starts_with(prefix))
    {
        return Ok(());
    }
    let admitted = ACCESS
        .iter()
        .find(|(method, _)| *method == path)
        .is_some_and(|(_, allowed)| {
            allowed.iter().any(|allowed| match (allowed, caller) {
                (Allowed::Service(name), Caller::Service(caller)) => name == caller,
                (Allowed::Operator, Caller::Operator(_)) => true,
                _ => false,
            })
        });
    if admitted {
        Ok(())
    } else {
        Err(Refusal::NotAllowed(caller.clone()))
    }
}

/// Runs [`decide`] in front of every request of a server: a refused call
/// is answered `PERMISSION_DENIED` naming the identity and the method,
/// counted (`<service>.grpc.refused`, by method and caller) and logged,
/// and never reaches a handler.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    /// `None`: every call passes (the edge, or the lab mode).
    enforced: Option<Enforced>,
}

#[derive(Debug, Clone)]
struct Enforced {
    service: &'static str,
    refused: opentelemetry::metrics::Counter<u64>,
}

impl AccessLayer {
    /// Checks every call to `service` against [`ACCESS`].
    pub fn new(service: &'static str) -> Self {
        let meter = opentelemetry::global::meter(service);
        AccessLayer {
            enforced: Some(Enforced {
                service,
                refused: meter
                    .u64_counter(format!("{service}.grpc.refused"))
                    .with_description("Internal calls refused by caller identity (ADR 27)")
                    .build(),
            }),
        }
    }

    /// Lets every call pass: a server whose callers another rule decides
    /// (the terminal edge), or the lab mode.
    pub fn off() -> Self {
        AccessLayer { enforced: None }
    }

    /// Whether calls are checked.
    pub fn enforces(&self) -> bool {
        self.enforced.is_some()
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessChecked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessChecked {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service behind [`AccessLayer`].
#[derive(Debug, Clone)]
pub struct AccessChecked<S> {
    inner: S,
    layer: AccessLayer,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S> tower::Service<http::Request<Body>> for AccessChecked<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(enforced) = &self.layer.enforced else {
            return Box::pin(self.inner.call(request));
        };
        let caller = Caller::of_request(&request);
        let path = request.uri().path().to_owned();
        match decide(caller.as_ref(), &path) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(refusal) => {
                let who = match &refusal {
                    Refusal::NoIdentity => "a peer without a switch identity".to_owned(),
                    Refusal::NotAllowed(caller) => caller.to_string(),
                };
                enforced.refused.add(
                    1,
                    &[
                        opentelemetry::KeyValue::new("service", enforced.service),
                        opentelemetry::KeyValue::new("method", path.clone()),
                        opentelemetry::KeyValue::new("caller", who.clone()),
                    ],
                );
                tracing::warn!(
                    service = enforced.service,
                    method = %path,
                    caller = %who,
                    "Internal call refused: the caller may not call this method."
                );
                let status = tonic::Status::permission_denied(format!(
                    "{who} may not call {path} on {}",
                    enforced.service
                ));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> Caller {
        Caller::Service(name.to_owned())
    }

    #[test]
    fn every_method_of_the_switch_has_a_row_and_every_row_a_method() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(switch_proto::FILE_DESCRIPTOR_SET)
            .expect("descriptors");
        let mut methods: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| {
                file.service.iter().flat_map(move |svc| {
                    svc.method.iter().map(move |method| {
                        format!("/{}.{}/{}", file.package(), svc.name(), method.name())
                    })
                })
            })
            // The terminal API is the edge's: terminal certificates, not
            // this table, decide who calls it.
            .filter(|path| !path.starts_with("/switch.v1.TerminalService/"))
            .collect();
        methods.sort();
        let mut rows: Vec<String> = ACCESS.iter().map(|(m, _)| (*m).to_owned()).collect();
        rows.sort();
        assert_eq!(methods, rows);
    }

    #[test]
    fn qr_refunds_and_redrives_are_operators_only() {
        let operator = Caller::Operator("ops.alice".into());
        for method in [
            "/switch.v1.AuthorizationService/QrRefund",
            "/switch.v1.AuthorizationService/QrRedrive",
        ] {
            assert_eq!(decide(Some(&operator), method), Ok(()), "{method}");
            for who in [
                TERMINAL_GATEWAY,
                REVERSAL_HANDLER,
                SETTLEMENT_BATCHER,
                services::NOTIFIER,
                AUTHORIZATION,
            ] {
                assert_eq!(
                    decide(Some(&service(who)), method),
                    Err(Refusal::NotAllowed(service(who))),
                    "{who} {method}"
                );
            }
        }
    }

    #[test]
    fn the_table_admits_exactly_its_callers() {
        let confirm = "/switch.v1.AuthorizationService/Confirm";
        assert_eq!(decide(Some(&service(REVERSAL_HANDLER)), confirm), Ok(()));
        assert_eq!(decide(Some(&service(SETTLEMENT_BATCHER)), confirm), Ok(()));
        for who in [TERMINAL_GATEWAY, services::NOTIFIER, AUTHORIZATION] {
            assert_eq!(
                decide(Some(&service(who)), confirm),
                Err(Refusal::NotAllowed(service(who))),
                "{who}"
            );
        }
        let operator = Caller::Operator("alice".into());
        assert!(decide(Some(&operator), confirm).is_err());
        assert_eq!(
            decide(
                Some(&operator),
                "/switch.v1.NotifierService/RegisterEndpoint"
            ),
            Ok(())
        );
        assert!(
            decide(
                Some(&service(TERMINAL_GATEWAY)),
                "/switch.v1.NotifierService/RegisterEndpoint"
            )
            .is_err()
        );
        assert_eq!(
            decide(
                Some(&service(TERMINAL_GATEWAY)),
                "/switch.v1.AuthorizationService/Authorize"
            ),
            Ok(())
        );
    }

    #[test]
    fn unknown_methods_and_anonymous_peers_are_refused_and_health_is_open() {
        let gateway = service(TERMINAL_GATEWAY);
        assert!(decide(Some(&gateway), "/switch.v1.AuthorizationService/Nope").is_err());
        assert!(decide(Some(&gateway), "/switch.v1.TerminalService/Sale").is_err());
        assert_eq!(
            decide(None, "/switch.v1.AuthorizationService/Authorize"),
            Err(Refusal::NoIdentity)
        );
        assert_eq!(
            decide(None, "/grpc.health.v1.Health/Check"),
            Err(Refusal::NoIdentity)
        );
        assert_eq!(
            decide(
                Some(&Caller::Operator("x".into())),
                "/grpc.health.v1.Health/Check"
            ),
            Ok(())
        );
        assert_eq!(
            decide(
                Some(&gateway),
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
            ),
            Ok(())
        );
    }

    #[test]
    fn identities_parse_strictly() {
        assert_eq!(
            Caller::from_uri("spiffe://switch/service/notifier"),
            Some(service("notifier"))
        );
        assert_eq!(
            Caller::from_uri("spiffe://switch/operator/alice"),
            Some(Caller::Operator("alice".into()))
        );
        for bad in [
            "spiffe://switch/service/",
            "spiffe://switch/service/a/b",
            "spiffe://other/service/notifier",
            "https://switch/service/notifier",
        ] {
            assert_eq!(Caller::from_uri(bad), None, "{bad}");
        }
        assert_eq!(
            service("notifier").to_string(),
            "spiffe://switch/service/notifier"
        );
    }

    #[test]
    fn a_missing_file_is_named_and_lab_mode_needs_none() {
        let config = InternalTlsConfig::in_dir(Path::new("/nonexistent"));
        let error = config.validate_for("notifier").unwrap_err().to_string();
        assert!(error.contains("internal_tls.ca_path"), "{error}");
        assert!(
            InternalTlsConfig::plaintext_for_lab()
                .validate_for("notifier")
                .is_ok()
        );
        assert_eq!(
            config.identity_of("notifier").0,
            PathBuf::from("/nonexistent/services/notifier.pem")
        );
    }

    #[test]
    fn a_reload_interval_of_zero_is_refused_by_name() {
        let config = InternalTlsConfig {
            reload_interval_ms: 0,
            ..InternalTlsConfig::default()
        };
        let error = config.validate_for("notifier").unwrap_err().to_string();
        assert!(error.contains("internal_tls.reload_interval_ms"), "{error}");
    }

    #[test]
    fn an_endpoint_must_match_the_mode() {
        let on = InternalTlsConfig::default();
        assert!(
            on.check_endpoint("x.endpoint", "https://127.0.0.1:1")
                .is_ok()
        );
        let error = on
            .check_endpoint("x.endpoint", "http://127.0.0.1:1")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("x.endpoint") && error.contains("https"),
            "{error}"
        );
        let lab = InternalTlsConfig::plaintext_for_lab();
        assert!(
            lab.check_endpoint("x.endpoint", "http://127.0.0.1:1")
                .is_ok()
        );
        assert!(
            lab.check_endpoint("x.endpoint", "https://127.0.0.1:1")
                .is_err()
        );
    }
}
