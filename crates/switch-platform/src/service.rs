//! The service kit: how every service of the switch serves gRPC, calls
//! another service, and says why it could not start.
//!
//! - [`GrpcServer`] builds the one kind of server the switch runs: optional
//!   rustls TLS (with client-certificate verification where the gateway
//!   needs it), the health service (serving while up, not serving once
//!   draining), both reflection APIs, request and HTTP/2 limits
//!   ([`ServerLimits`]), serving a bound listener or connections an edge
//!   accepted itself ([`GrpcServer::serve_with_incoming`]), and a graceful
//!   drain ([`crate::shutdown::DrainTiming`]): on shutdown it says
//!   NOT_SERVING, keeps serving for the unready delay, stops accepting,
//!   lets requests in flight finish for up to the grace period, then answers what is still
//!   running with UNAVAILABLE and returns.
//! - [`GrpcClient`] builds the one kind of channel services call each other
//!   over: a lazily connected endpoint with connect and request timeouts,
//!   TLS when configured, and the caller's trace context injected into
//!   every request's metadata ([`TraceContext`]).
//! - [`ServeError`] is why any service's `serve` failed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::config::ConfigError;
use crate::grpc::{GrpcError, TlsFiles};
use crate::shutdown::Shutdown;

/// Why a service could not start, or stopped with an error. One enum for
/// every service, so `switchd` reports them all the same way.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Database(#[from] crate::db::DbError),
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("kafka: {0}")]
    Kafka(#[from] crate::kafka::KafkaError),
    #[error("grpc: {0}")]
    Grpc(#[from] GrpcError),
    /// The internal certificate, key or service CA did not load.
    #[error("internal TLS: {0}")]
    InternalTls(#[from] crate::reload::ReloadError),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A configured URL of another service is not usable.
    #[error("endpoint `{endpoint}`: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// A part of the service other than the above could not start (the
    /// notifier's HTTP client, say).
    #[error("{what}: {reason}")]
    Start { what: &'static str, reason: String },
}

/// Binds `address`, naming it when that fails.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })
}

/// Limits and timers of a server. The defaults suit the switch's small
/// request/response messages; a service overrides what it must (the
/// gateway its keepalive, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest request message accepted.
    pub max_decoding_message_bytes: usize,
    /// Largest response message sent.
    pub max_encoding_message_bytes: usize,
    /// Requests one connection may have in progress; more wait. The gateway
    /// calls authorization over one connection, so this bounds a whole
    /// gateway's concurrency, not a terminal's.
    pub concurrency_limit_per_connection: usize,
    /// Upper bound on one unary call (a stream's first response), beyond
    /// any shorter `grpc-timeout` the caller sends. `None`: the caller's.
    pub request_timeout: Option<Duration>,
    /// How often the server pings an HTTP/2 connection, and how long a ping
    /// may go unanswered before the connection is closed.
    pub http2_keepalive_interval: Option<Duration>,
    pub http2_keepalive_timeout: Option<Duration>,
    /// TCP keepalive of accepted sockets.
    pub tcp_keepalive: Option<Duration>,
    /// HTTP/2 streams one connection may have open at once (the
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` the server announces). `None`:
    /// hyper's default (200).
    pub http2_max_concurrent_streams: Option<u32>,
    /// Streams a client may open and reset before the server reads them
    /// (the "rapid reset" attack) before the connection is closed. `None`:
    /// hyper's default (20).
    pub http2_max_pending_accept_reset_streams: Option<usize>,
    /// Streams the server may reset for a client's protocol errors before
    /// it closes the connection. `None`: hyper's default (1,024).
    pub http2_max_local_error_reset_streams: Option<usize>,
    /// Largest header list a request may send. `None`: hyper's default
    /// (16 KiB).
    pub http2_max_header_list_size: Option<u32>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_decoding_message_bytes: 4 * 1024 * 1024,
            max_encoding_message_bytes: 16 * 1024 * 1024,
            concurrency_limit_per_connection: 1_024,
            // Above the longest issuer timeout authorization accepts (60 s).
            request_timeout: Some(Duration::from_secs(90)),
            http2_keepalive_interval: Some(Duration::from_secs(60)),
            http2_keepalive_timeout: Some(Duration::from_secs(20)),
            tcp_keepalive: Some(Duration::from_secs(60)),
            http2_max_concurrent_streams: None,
            http2_max_pending_accept_reset_streams: None,
            http2_max_local_error_reset_streams: None,
            http2_max_header_list_size: None,
        }
    }
}

/// How long, after the grace timeout, abandoned requests have to send their
/// UNAVAILABLE before the server returns regardless.
const ABANDON_FLUSH: Duration = Duration::from_millis(500);

/// A generated gRPC server whose message-size limits can be set: every
/// server of `switch-proto`. [`GrpcServer::add_service`] applies
/// [`ServerLimits`] through it.
pub trait MessageLimits: Sized {
    fn with_message_limits(self, decoding: usize, encoding: usize) -> Self;
}

macro_rules! message_limits {
    ($($module:ident :: $server:ident < $service:ident >),* $(,)?) => {$(
        impl<T: switch_proto::v1::$module::$service> MessageLimits
            for switch_proto::v1::$module::$server<T>
        {
            fn with_message_limits(self, decoding: usize, encoding: usize) -> Self {
                self.max_decoding_message_size(decoding)
                    .max_encoding_message_size(encoding)
            }
        }
    )*};
}

message_limits!(
    authorization_service_server::AuthorizationServiceServer<AuthorizationService>,
    terminal_service_server::TerminalServiceServer<TerminalService>,
    settlement_service_server::SettlementServiceServer<SettlementService>,
    notifier_service_server::NotifierServiceServer<NotifierService>,
    issuer_service_server::IssuerServiceServer<IssuerService>,
    issuer_control_server::IssuerControlServer<IssuerControl>,
);

/// The server of one service: built, then [`serve`](GrpcServer::serve)d.
///
/// ```ignore
/// let server = GrpcServer::new(SERVICE_NAME)
///     .tls(config.tls.as_ref())?
///     .add_service(AuthorizationServiceServer::new(api));
/// server.serve(listener, shutdown).await?;
/// ```
pub struct GrpcServer {
    name: &'static str,
    /// The services reflection describes; `None`: every proto of the
    /// switch.
    reflect_only: Option<Vec<&'static str>>,
    limits: ServerLimits,
    tls: ServerTls,
    /// Who may call what, when the server is internal ([`GrpcServer::internal`]).
    access: crate::internal_tls::AccessLayer,
    health: HealthReporter,
    routes: Routes,
    /// The gRPC names of the services added, for health.
    services: Vec<&'static str>,
    /// What the services wait for before they are reported SERVING;
    /// `None`: serving as soon as the server listens.
    ready: Option<BoxFuture<()>>,
    draining: CancellationToken,
    /// Cancelled with `draining` ([`GrpcServer::cancel_on_drain`]).
    on_drain: Vec<CancellationToken>,
    abandon: CancellationToken,
}

impl GrpcServer {
    /// A server named `name` (for logs) with health, both reflection APIs
    /// and the default [`ServerLimits`].
    pub fn new(name: &'static str) -> Result<Self, ServeError> {
        let health = HealthReporter::new();
        // Reflection is added when serving, once it is known what it
        // describes (`reflect_only`).
        let routes = Routes::new(HealthServer::new(HealthService::from_health_reporter(
            health.clone(),
        )));
        Ok(GrpcServer {
            name,
            reflect_only: None,
            limits: ServerLimits::default(),
            tls: ServerTls::Plaintext,
            access: crate::internal_tls::AccessLayer::off(),
            health,
            routes,
            services: Vec::new(),
            ready: None,
            draining: CancellationToken::new(),
            on_drain: Vec::new(),
            abandon: CancellationToken::new(),
        })
    }

    /// Describes only `services` (full names) and what they import over
    /// reflection: an edge that outsiders reach must not describe the
    /// internal APIs (the issuer control API, say).
    #[must_use]
    pub fn reflect_only(mut self, services: &[&'static str]) -> Self {
        self.reflect_only = Some(services.to_vec());
        self
    }

    /// Replaces the limits. Message limits apply to services added after.
    #[must_use]
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves over TLS when `tls` is given (plaintext otherwise); with a
    /// client CA in it, clients must present a certificate it issued.
    #[must_use]
    pub fn tls(mut self, tls: Option<&TlsFiles>) -> Self {
        self.tls = tls.map_or(ServerTls::Plaintext, |files| {
            ServerTls::Files(files.clone())
        });
        self
    }

    /// Serves `service`'s internal API as `[internal_tls]` says: mutual
    /// TLS with the service CA and every call checked against the access
    /// table ([`crate::internal_tls::ACCESS`]), or, in the explicit lab
    /// mode, plaintext with no identities. The certificate, key and CA
    /// are loaded by [`serve`](GrpcServer::serve) and reloaded every
    /// `reload_interval_ms` while it serves ([`crate::mtls`]).
    #[must_use]
    pub fn internal(
        mut self,
        service: &'static str,
        config: &crate::internal_tls::InternalTlsConfig,
    ) -> Self {
        self.tls = if config.enabled() {
            ServerTls::Internal {
                service,
                config: config.clone(),
            }
        } else {
            ServerTls::Plaintext
        };
        self.access = if config.enabled() {
            crate::internal_tls::AccessLayer::new(service)
        } else {
            crate::internal_tls::AccessLayer::off()
        };
        if !config.enabled() {
            tracing::warn!(
                service,
                "internal_tls.plaintext_for_lab is set: serving plaintext, every caller admitted."
            );
        }
        self
    }

    /// [`internal`](GrpcServer::internal) with a TLS state the caller
    /// already loaded and reloads itself
    /// ([`InternalTls::reload_if_changed`](crate::mtls::InternalTls::reload_if_changed)
    /// or [`watch`](crate::mtls::InternalTls::watch)): what a test that
    /// rotates files and checks the effect at once uses. Calls are checked
    /// against the access table, refusals counted under the server's name.
    #[must_use]
    pub fn internal_tls(mut self, tls: crate::mtls::InternalTls) -> Self {
        let service: &'static str = self.name;
        self.access = crate::internal_tls::AccessLayer::new(service);
        self.tls = ServerTls::Loaded(tls);
        self
    }

    /// Adds one of the service's gRPC services, with the message limits.
    #[must_use]
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: MessageLimits
            + tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let service = service.with_message_limits(
            self.limits.max_decoding_message_bytes,
            self.limits.max_encoding_message_bytes,
        );
        self.services.push(S::NAME);
        self.routes = self.routes.add_service(Abandonable {
            inner: service,
            abandon: self.abandon.clone(),
        });
        self
    }

    /// Reports NOT_SERVING until `ready` resolves (the reversal handler's
    /// consumer joining its group), SERVING from then until the drain.
    #[must_use]
    pub fn ready_when(mut self, ready: impl Future<Output = ()> + Send + 'static) -> Self {
        self.ready = Some(Box::pin(ready));
        self
    }

    /// The health reporter, for a service that reports more than the
    /// server's own readiness.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Cancelled when the drain begins: what a service ends its open
    /// streams on, since the drain waits for them.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Cancels `token` as the drain begins: how a service ends the streams
    /// it keeps open (the gateway's `Subscribe`), which the drain would
    /// otherwise wait for until the grace timeout.
    #[must_use]
    pub fn cancel_on_drain(mut self, token: &CancellationToken) -> Self {
        self.on_drain.push(token.clone());
        self
    }

    /// Serves on `listener` until `shutdown`'s signal, then drains by its
    /// [`DrainTiming`](crate::shutdown::DrainTiming): reports NOT_SERVING, keeps serving for the unready
    /// delay, stops accepting, lets requests in flight finish for up to the
    /// grace period, answers the rest UNAVAILABLE and returns.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Into<Shutdown>,
    ) -> Result<(), ServeError> {
        let local = listener.local_addr().ok();
        let tcp = crate::grpc::incoming(listener);
        let internal = match std::mem::replace(&mut self.tls, ServerTls::Plaintext) {
            ServerTls::Internal { service, config } => {
                let tls = crate::mtls::InternalTls::load(service, &config)?;
                tls.watch(config.reload_interval());
                Some(tls)
            }
            ServerTls::Loaded(tls) => Some(tls),
            other => {
                self.tls = other;
                None
            }
        };
        match internal {
            // The handshakes happen before tonic sees a connection, each
            // with the files current at its start.
            Some(tls) => {
                self.serve_streams(crate::mtls::incoming(tcp, tls), local, shutdown, true)
                    .await
            }
            None => self.serve_streams(tcp, local, shutdown, false).await,
        }
    }

    /// [`serve`](GrpcServer::serve) over connections the caller accepts
    /// itself: an edge that runs its own TLS handshakes (with a timeout,
    /// connection limits and reloadable certificates) hands over each
    /// established stream. TLS set with [`tls`](GrpcServer::tls) is applied
    /// on top, so an edge doing its own handshakes leaves it unset.
    /// Internal TLS ([`internal`](GrpcServer::internal)) runs its own
    /// handshakes on a listener: such a server is served with
    /// [`serve`](GrpcServer::serve), and refused here.
    /// `local` names the listening address in the logs.
    pub async fn serve_with_incoming<I, IO, IE>(
        self,
        incoming: I,
        local: Option<SocketAddr>,
        shutdown: impl Into<Shutdown>,
    ) -> Result<(), ServeError>
    where
        I: tokio_stream::Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if matches!(self.tls, ServerTls::Internal { .. } | ServerTls::Loaded(_)) {
            return Err(ServeError::Start {
                what: "gRPC server",
                reason: "internal TLS accepts its own connections: serve it with `serve(listener)`"
                    .into(),
            });
        }
        self.serve_streams(incoming, local, shutdown, false).await
    }

    /// Serves established streams; `encrypted`: they are TLS already.
    async fn serve_streams<I, IO, IE>(
        self,
        incoming: I,
        local: Option<SocketAddr>,
        shutdown: impl Into<Shutdown>,
        encrypted: bool,
    ) -> Result<(), ServeError>
    where
        I: tokio_stream::Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let GrpcServer {
            name,
            reflect_only,
            limits,
            tls,
            access,
            health,
            routes,
            services,
            ready,
            draining,
            on_drain,
            abandon,
        } = self;
        let mut builder = Server::builder()
            .concurrency_limit_per_connection(limits.concurrency_limit_per_connection)
            .http2_keepalive_interval(limits.http2_keepalive_interval)
            .http2_keepalive_timeout(limits.http2_keepalive_timeout)
            .tcp_keepalive(limits.tcp_keepalive)
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .http2_max_pending_accept_reset_streams(limits.http2_max_pending_accept_reset_streams)
            .http2_max_local_error_reset_streams(limits.http2_max_local_error_reset_streams)
            .http2_max_header_list_size(limits.http2_max_header_list_size);
        if let Some(timeout) = limits.request_timeout {
            builder = builder.timeout(timeout);
        }
        if let ServerTls::Files(files) = &tls {
            builder = builder.tls_config(files.server_config()?)?;
        }
        let (reflection_v1, reflection_v1alpha) =
            crate::grpc::reflection_services_for(reflect_only.as_deref())?;
        let routes = routes
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let authorized = access.enforces();
        let router = builder.layer(access).add_routes(routes);

        // Set under the lock, and never to SERVING once draining, so a
        // readiness that arrives during the drain cannot undo it.
        let drained = Arc::new(tokio::sync::Mutex::new(false));
        let names: Arc<[&'static str]> = std::iter::once("").chain(services).collect();
        let report = |health: HealthReporter, names: Arc<[&'static str]>, status| async move {
            for name in names.iter() {
                health.set_service_status(name, status).await;
            }
        };
        let readiness = match ready {
            None => {
                report(health.clone(), names.clone(), ServingStatus::Serving).await;
                None
            }
            Some(ready) => {
                report(health.clone(), names.clone(), ServingStatus::NotServing).await;
                let (health, names, drained) = (health.clone(), names.clone(), drained.clone());
                Some(tokio::spawn(async move {
                    ready.await;
                    let drained = drained.lock().await;
                    if !*drained {
                        report(health, names, ServingStatus::Serving).await;
                    }
                }))
            }
        };

        tracing::info!(
            service = name,
            listen = ?local,
            tls = encrypted || !matches!(tls, ServerTls::Plaintext),
            authorized,
            "Serving gRPC."
        );
        let Shutdown {
            signal: shutdown,
            timing,
        } = shutdown.into();
        let signal = {
            let (draining, health, names) = (draining.clone(), health.clone(), names.clone());
            async move {
                shutdown.await;
                {
                    let mut drained = drained.lock().await;
                    *drained = true;
                    report(health, names, ServingStatus::NotServing).await;
                }
                if !timing.unready_delay.is_zero() {
                    tracing::info!(
                        service = name,
                        unready_delay_ms =
                            u64::try_from(timing.unready_delay.as_millis()).unwrap_or(u64::MAX),
                        "NOT_SERVING; still serving until load balancers have noticed."
                    );
                    tokio::time::sleep(timing.unready_delay).await;
                }
                draining.cancel();
                for token in &on_drain {
                    token.cancel();
                }
                tracing::info!(service = name, "Draining gRPC requests.");
            }
        };
        let serving = router.serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(serving);
        let grace = timing.grace_period;
        let result = tokio::select! {
            result = &mut serving => result.map_err(ServeError::from),
            () = async {
                draining.cancelled().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(
                    service = name,
                    grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                    "Requests still in flight at the grace timeout; answering them UNAVAILABLE."
                );
                abandon.cancel();
                // Give the refusals a moment to reach their callers; a
                // stream that does not end is not waited for.
                let _ = tokio::time::timeout(ABANDON_FLUSH, &mut serving).await;
                Ok(())
            }
        };
        if let Some(readiness) = readiness {
            readiness.abort();
        }
        tracing::info!(service = name, "gRPC server stopped.");
        result
    }
}

/// How a server encrypts.
enum ServerTls {
    Plaintext,
    /// tonic's TLS from files read once ([`GrpcServer::tls`]).
    Files(TlsFiles),
    /// Internal mutual TLS, loaded at `serve` and reloaded while serving.
    Internal {
        service: &'static str,
        config: crate::internal_tls::InternalTlsConfig,
    },
    /// Internal mutual TLS from a state its owner reloads.
    Loaded(crate::mtls::InternalTls),
}

/// A service whose requests in flight are answered UNAVAILABLE once the
/// drain's grace timeout has passed, so nothing outlives the server.
#[derive(Clone)]
struct Abandonable<S> {
    inner: S,
    abandon: CancellationToken,
}

impl<S: NamedService> NamedService for Abandonable<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> tower::Service<http::Request<Body>> for Abandonable<S>
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
        let call = self.inner.call(request);
        let abandon = self.abandon.clone();
        Box::pin(async move {
            tokio::select! {
                response = call => response,
                () = abandon.cancelled() => Ok(tonic::Status::unavailable(
                    "the server stopped before this request finished",
                )
                .into_http()),
            }
        })
    }
}

/// A tonic interceptor that sends the current span's W3C trace context
/// with every request, so the callee's spans join the caller's trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContext;

impl tonic::service::Interceptor for TraceContext {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        crate::telemetry::propagate_trace_context(request)
    }
}

/// A channel to another service that propagates the trace context: what a
/// generated client is built on (`FooClient::new(channel)`).
pub type TracedChannel = InterceptedService<Channel, TraceContext>;

/// PEM files a client trusts (and presents, for mutual TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA the server's certificate must chain to.
    pub ca_path: PathBuf,
    /// The client's own certificate and key, when the server requires one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must carry, when it is not the
    /// endpoint's host.
    pub domain_name: Option<String>,
}

/// How a service calls another: `GrpcClient::new(url)`, then
/// [`channel`](GrpcClient::channel) or [`traced`](GrpcClient::traced).
#[derive(Debug, Clone)]
pub struct GrpcClient {
    endpoint: String,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    tls: Option<ClientTls>,
    /// Internal mutual TLS, which follows its files ([`crate::mtls`]).
    internal: Option<InternalClient>,
    /// The scheme the endpoint must have, when the mode decides it.
    scheme: Option<&'static str>,
}

#[derive(Debug, Clone)]
enum InternalClient {
    /// Loaded when the channel is built, then watched for as long as the
    /// channel lives.
    Config {
        service: String,
        config: crate::internal_tls::InternalTlsConfig,
    },
    /// A state its owner reloads.
    Loaded(crate::mtls::InternalTls),
}

impl GrpcClient {
    pub fn new(endpoint: impl Into<String>) -> Self {
        GrpcClient {
            endpoint: endpoint.into(),
            connect_timeout: None,
            request_timeout: None,
            tls: None,
            internal: None,
            scheme: None,
        }
    }

    /// How long establishing the connection may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Upper bound on every call made over the channel (a call's own
    /// `set_timeout` may be shorter).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Calls as `service` as `[internal_tls]` says: presenting its
    /// certificate of the service CA, or in plaintext in the lab mode. The
    /// endpoint's scheme must match ([`InternalTlsConfig::check_endpoint`](crate::internal_tls::InternalTlsConfig::check_endpoint)).
    /// Each new connection presents the certificate and trusts the CA
    /// bundle of the moment: the files are checked every
    /// `reload_interval_ms` for as long as the channel lives.
    #[must_use]
    pub fn internal(
        mut self,
        service: &str,
        config: &crate::internal_tls::InternalTlsConfig,
    ) -> Self {
        self.tls = None;
        self.internal = config.enabled().then(|| InternalClient::Config {
            service: service.to_owned(),
            config: config.clone(),
        });
        self.scheme = Some(config.scheme());
        self
    }

    /// [`internal`](GrpcClient::internal) with a TLS state the caller
    /// loaded and reloads itself.
    #[must_use]
    pub fn internal_tls(mut self, tls: crate::mtls::InternalTls) -> Self {
        self.tls = None;
        self.internal = Some(InternalClient::Loaded(tls));
        self.scheme = Some("https");
        self
    }

    /// Calls over TLS when `tls` is given.
    #[must_use]
    pub fn tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self.internal = None;
        self
    }

    /// A lazily connected channel: the service starts (and answers its own
    /// callers with a clear UNAVAILABLE) while the other is down.
    pub fn channel(&self) -> Result<Channel, ServeError> {
        let bad = |reason: String| ServeError::Endpoint {
            endpoint: self.endpoint.clone(),
            reason,
        };
        if let Some(scheme) = self.scheme
            && !self.endpoint.starts_with(&format!("{scheme}://"))
        {
            return Err(bad(format!(
                "internal hops speak {scheme} here (internal_tls): the URL must be {scheme}://"
            )));
        }
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| bad(e.to_string()))?
            .tcp_nodelay(true);
        if let Some(timeout) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(timeout);
        }
        if let Some(timeout) = self.request_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        if let Some(internal) = &self.internal {
            let tls = match internal {
                InternalClient::Config { service, config } => {
                    let tls = crate::mtls::InternalTls::load(service, config)?;
                    tls.watch(config.reload_interval());
                    tls
                }
                InternalClient::Loaded(tls) => tls.clone(),
            };
            // tonic would run its own, fixed TLS on an https:// endpoint:
            // it dials the same address as http:// through the connector,
            // which runs the handshake, while every request still carries
            // the configured URL's scheme and authority.
            let origin = endpoint.uri().clone();
            let mut parts = origin.clone().into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            let dialled = http::Uri::from_parts(parts).map_err(|e| bad(e.to_string()))?;
            let connector = crate::mtls::InternalConnector::new(tls, &origin, None).map_err(bad)?;
            let endpoint = Endpoint::from(dialled).origin(origin).tcp_nodelay(true);
            let endpoint = match self.connect_timeout {
                Some(timeout) => endpoint.connect_timeout(timeout),
                None => endpoint,
            };
            let endpoint = match self.request_timeout {
                Some(timeout) => endpoint.timeout(timeout),
                None => endpoint,
            };
            return Ok(endpoint.connect_with_connector_lazy(connector));
        }
        if let Some(tls) = &self.tls {
            let mut config =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&tls.ca_path)?));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(name) = &tls.domain_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// [`channel`](GrpcClient::channel) with trace propagation.
    pub fn traced(&self) -> Result<TracedChannel, ServeError> {
        Ok(InterceptedService::new(self.channel()?, TraceContext))
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|source| {
        ServeError::Grpc(GrpcError::Read {
            path: path.to_owned(),
            source,
        })
    })
}
