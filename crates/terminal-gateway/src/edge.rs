//! The TLS edge terminals connect to, for any listener of the gateway.
//!
//! It owns what happens between a TCP accept and a verified, counted,
//! terminal-identified stream a protocol can serve:
//!
//! - every accepted socket counts against the gateway's maximum at once
//!   ([`Connections`]), and is closed straight away when it is full;
//! - each TLS handshake runs in its own task under a timeout, so a socket
//!   that never starts (or never finishes) one is closed, and one slow
//!   handshake never delays another;
//! - the client certificate must chain to the terminal CA and must not be
//!   on the CRL; its terminal must not be suspended in the terminal
//!   registry; then the connection counts against its terminal's maximum;
//! - the established stream ([`EdgeStream`]) is closed when nothing has
//!   been received from the terminal for the idle timeout, or when its
//!   client abandons calls faster than its bucket allows
//!   ([`ClientResets`], HTTP/2 rapid reset).
//!
//! The certificate, key, CA, CRL and registry are files ([`EdgeFiles`]),
//! loaded into one immutable [`EdgeState`] and replaced as a whole when any
//! of them changes ([`Edge::reload_if_changed`], run periodically by
//! [`watch`]): new handshakes use the new state, connections already open
//! keep theirs, so a certificate rotation drops nobody, while a revocation
//! or suspension also refuses the requests of connections already open
//! (the service checks [`Edge::refusal`] on every call, and an open
//! `Subscribe` stream on every [`Edge::reloads`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use switch_core::RateRule;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

use crate::client_resets::ClientResets;
use crate::identity::TerminalIdentity;
use crate::limits::{ConnectionPermit, Connections};
use crate::metrics::Metrics;

/// The files the edge is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub client_ca_path: PathBuf,
    /// PEM CRLs of the terminal CA; a certificate on one is refused.
    pub crl_path: Option<PathBuf>,
    /// TOML `[terminals] TERM0001 = "active" | "suspended"`; a terminal it
    /// does not list is active.
    pub registry_path: Option<PathBuf>,
}

impl EdgeFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![
            self.cert_path.as_path(),
            self.key_path.as_path(),
            self.client_ca_path.as_path(),
        ];
        paths.extend(self.crl_path.as_deref());
        paths.extend(self.registry_path.as_deref());
        paths
    }
}

/// Why the edge's files could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

fn invalid(path: &Path, reason: impl ToString) -> EdgeError {
    EdgeError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// A terminal's status in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TerminalStatus {
    Active,
    Suspended,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    terminals: HashMap<String, TerminalStatus>,
    /// `[merchants.MID] per_second = N, burst = M`: request-rate rules of
    /// a merchant's terminals, over `gateway.rate_limit`'s, reloaded with
    /// the file.
    #[serde(default)]
    merchants: HashMap<String, MerchantRate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MerchantRate {
    per_second: u32,
    burst: u32,
}

/// What the registry says: who is suspended, and the merchants' rates.
struct Registry {
    suspended: HashSet<String>,
    merchant_rates: HashMap<String, RateRule>,
}

/// Why a verified terminal is refused anyway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the certificate of terminal {terminal_id} is revoked")]
    Revoked { terminal_id: String },
    #[error("terminal {terminal_id} is suspended")]
    Suspended { terminal_id: String },
}

impl Refusal {
    /// A bounded name for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Revoked { .. } => "revoked",
            Refusal::Suspended { .. } => "suspended",
        }
    }
}

/// Everything the files say, as of one load.
pub struct EdgeState {
    acceptor: TlsAcceptor,
    /// Raw serial numbers on the CRL: checked on every request, so a
    /// revocation also reaches connections opened before it.
    revoked_serials: HashSet<Vec<u8>>,
    suspended: HashSet<String>,
    merchant_rates: HashMap<String, RateRule>,
}

impl EdgeState {
    fn load(files: &EdgeFiles) -> Result<EdgeState, EdgeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_pem_all::<CertificateDer<'static>>(&files.cert_path, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key_path)?)
            .map_err(|e| invalid(&files.key_path, format!("no private key: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in read_pem_all::<CertificateDer<'static>>(&files.client_ca_path, "certificate")? {
            roots
                .add(ca)
                .map_err(|e| invalid(&files.client_ca_path, e))?;
        }
        let (crls, revoked_serials) = match &files.crl_path {
            Some(path) => load_crls(path)?,
            None => (Vec::new(), HashSet::new()),
        };
        let Registry {
            suspended,
            merchant_rates,
        } = match &files.registry_path {
            Some(path) => load_registry(path)?,
            None => Registry {
                suspended: HashSet::new(),
                merchant_rates: HashMap::new(),
            },
        };
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                // The CA is the trust anchor; only terminals' certificates are
                // ever revoked.
                .only_check_end_entity_revocation()
                .build()
                .map_err(|e| EdgeError::Tls(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| EdgeError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| invalid(&files.cert_path, format!("does not match the key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(EdgeState {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            revoked_serials,
            suspended,
            merchant_rates,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, EdgeError> {
    std::fs::read(path).map_err(|source| EdgeError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_pem_all<T: PemObject>(path: &Path, what: &str) -> Result<Vec<T>, EdgeError> {
    let bytes = read(path)?;
    let items = T::pem_slice_iter(&bytes)
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| invalid(path, e))?;
    if items.is_empty() {
        return Err(invalid(path, format!("no PEM {what} in it")));
    }
    Ok(items)
}

fn load_crls(
    path: &Path,
) -> Result<(Vec<CertificateRevocationListDer<'static>>, HashSet<Vec<u8>>), EdgeError> {
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;
    let crls = read_pem_all::<CertificateRevocationListDer<'static>>(path, "X509 CRL")?;
    let mut serials = HashSet::new();
    for crl in &crls {
        let (_, parsed) = CertificateRevocationList::from_der(crl.as_ref())
            .map_err(|e| invalid(path, format!("unreadable CRL: {e}")))?;
        serials.extend(
            parsed
                .iter_revoked_certificates()
                .map(|revoked| revoked.raw_serial().to_vec()),
        );
    }
    Ok((crls, serials))
}

fn load_registry(path: &Path) -> Result<Registry, EdgeError> {
    let text = String::from_utf8(read(path)?).map_err(|_| invalid(path, "not UTF-8"))?;
    let registry: RegistryFile = toml::from_str(&text).map_err(|e| invalid(path, e.message()))?;
    let mut merchant_rates = HashMap::new();
    for (merchant_id, rate) in registry.merchants {
        let rule = RateRule::new(rate.per_second, rate.burst)
            .map_err(|e| invalid(path, format!("merchants.{merchant_id}: {e}")))?;
        merchant_rates.insert(merchant_id, rule);
    }
    Ok(Registry {
        suspended: registry
            .terminals
            .into_iter()
            .filter(|(_, status)| *status == TerminalStatus::Suspended)
            .map(|(terminal_id, _)| terminal_id)
            .collect(),
        merchant_rates,
    })
}

/// What a file looked like when last loaded: a change of either is a
/// change of the file (a rotation writes a new file, or rewrites it).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The edge: its current state and the files it reloads from.
#[derive(Clone)]
pub struct Edge {
    files: Arc<EdgeFiles>,
    state: Arc<RwLock<Arc<EdgeState>>>,
    stamps: Arc<Mutex<Vec<Stamp>>>,
    /// Counts the reloads, so what outlives a call (a `Subscribe` stream)
    /// can check its terminal again when the CRL or registry changes.
    reloads: Arc<watch::Sender<u64>>,
}

impl Edge {
    /// Loads every file; the gateway does not start on a bad one.
    pub fn load(files: EdgeFiles) -> Result<Edge, EdgeError> {
        let stamps = files.paths().into_iter().map(stamp).collect();
        let state = EdgeState::load(&files)?;
        Ok(Edge {
            files: Arc::new(files),
            state: Arc::new(RwLock::new(Arc::new(state))),
            stamps: Arc::new(Mutex::new(stamps)),
            reloads: Arc::new(watch::channel(0).0),
        })
    }

    /// Changes with every reload that put new files in use.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    fn current(&self) -> Arc<EdgeState> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reloads every file when any of them changed. `Ok(true)`: a new
    /// state is in use. On an error the previous state stays in use (a
    /// half-written rotation must not take the edge down) and the next
    /// call tries again.
    pub fn reload_if_changed(&self) -> Result<bool, EdgeError> {
        let now: Vec<Stamp> = self.files.paths().into_iter().map(stamp).collect();
        let mut stamps = self.stamps.lock().unwrap_or_else(PoisonError::into_inner);
        if *stamps == now {
            return Ok(false);
        }
        let state = EdgeState::load(&self.files)?;
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
        *stamps = now;
        self.reloads
            .send_modify(|count| *count = count.wrapping_add(1));
        Ok(true)
    }

    /// The registry's request-rate rule of `merchant_id`'s terminals, as
    /// last reloaded; `None`: the configuration's.
    pub fn merchant_rate(&self, merchant_id: &str) -> Option<RateRule> {
        self.current().merchant_rates.get(merchant_id).copied()
    }

    /// Whether the current files refuse this verified terminal.
    pub fn refusal(&self, identity: &TerminalIdentity) -> Option<Refusal> {
        let state = self.current();
        if state.revoked_serials.contains(&identity.certificate_serial) {
            Some(Refusal::Revoked {
                terminal_id: identity.terminal_id.clone(),
            })
        } else if state.suspended.contains(&identity.terminal_id) {
            Some(Refusal::Suspended {
                terminal_id: identity.terminal_id.clone(),
            })
        } else {
            None
        }
    }
}

/// Reloads the edge every `every` until `stop`.
pub async fn watch(edge: Edge, every: Duration, metrics: Metrics, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match edge.reload_if_changed() {
            Ok(false) => {}
            Ok(true) => {
                metrics.edge_reloaded(true);
                tracing::info!("Terminal edge certificates, CRL and registry reloaded.");
            }
            Err(error) => {
                metrics.edge_reloaded(false);
                tracing::error!(%error, "Terminal edge files cannot be reloaded; the previous ones stay in use.");
            }
        }
    }
}

/// Timers of every accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptSettings {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// TCP keepalive of accepted sockets (`None`: the system's).
    pub tcp_keepalive: Option<Duration>,
    /// Calls a connection's client may abandon (reset before their
    /// answer) before the connection is closed.
    pub client_reset_limit: RateRule,
}

/// Handshaken connections waiting for the server to take them.
const ESTABLISHED_BACKLOG: usize = 64;

/// Pause after a failed `accept` (out of file descriptors, say), so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Accepts on `listener` until `stop` or until the returned stream is
/// dropped, and yields every connection that completed its handshake and
/// passed every check. `listener_name` labels the metrics (`grpc`, `iso`).
pub fn incoming(
    listener: TcpListener,
    edge: Edge,
    connections: Connections,
    settings: AcceptSettings,
    metrics: Metrics,
    listener_name: &'static str,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<EdgeStream>> {
    accept(
        listener,
        connections,
        settings,
        metrics,
        listener_name,
        stop,
        move |tcp, permit, metrics, tx| {
            tokio::spawn(establish(
                tcp,
                permit,
                edge.clone(),
                settings,
                metrics,
                listener_name,
                tx,
            ));
        },
    )
}

/// [`incoming`] without TLS, for an ISO 8583 listener configured for a lab
/// (`plain_tcp_for_lab`): the same accept loop, so the same maximum of
/// connections and the same idle timeout, but no certificate, so no
/// terminal to count per terminal or to check at connect; the listener
/// takes the terminal from each message and checks it there.
pub fn incoming_plain_for_lab(
    listener: TcpListener,
    connections: Connections,
    settings: AcceptSettings,
    metrics: Metrics,
    listener_name: &'static str,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<EdgeStream<TcpStream>>> {
    accept(
        listener,
        connections,
        settings,
        metrics,
        listener_name,
        stop,
        move |tcp, permit, metrics, tx| {
            let stream = EdgeStream::new(None, tcp, settings, metrics, listener_name, permit);
            // The backlog is bounded: a full one holds the accept loop,
            // as for TLS connections waiting to be served.
            tokio::spawn(async move {
                let _ = tx.send(Ok(stream)).await;
            });
        },
    )
}

/// The accept loop of every listener: counts each socket against the
/// gateway's maximum as it arrives (closing it at once when full), sets
/// its TCP options and hands it with its permit to `secure`, which turns
/// it into an [`EdgeStream`] on `tx` or drops it.
fn accept<S, F>(
    listener: TcpListener,
    connections: Connections,
    settings: AcceptSettings,
    metrics: Metrics,
    listener_name: &'static str,
    stop: CancellationToken,
    secure: F,
) -> ReceiverStream<io::Result<EdgeStream<S>>>
where
    S: Send + 'static,
    F: Fn(TcpStream, ConnectionPermit, Metrics, mpsc::Sender<io::Result<EdgeStream<S>>>)
        + Send
        + 'static,
{
    let (tx, rx) = mpsc::channel(ESTABLISHED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, listener = listener_name, "Accepting a connection failed.");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let permit = match connections.open() {
                Ok(permit) => permit,
                Err(refused) => {
                    metrics.connection_refused(listener_name, refused.reason());
                    tracing::debug!(%peer, %refused, "Connection refused.");
                    continue;
                }
            };
            // Small request/response messages must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            if let Some(time) = settings.tcp_keepalive {
                let keepalive = socket2::TcpKeepalive::new().with_time(time);
                if let Err(error) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
                    tracing::debug!(%error, "TCP keepalive could not be set.");
                }
            }
            secure(tcp, permit, metrics.clone(), tx.clone());
        }
    });
    ReceiverStream::new(rx)
}

async fn establish(
    tcp: TcpStream,
    permit: ConnectionPermit,
    edge: Edge,
    settings: AcceptSettings,
    metrics: Metrics,
    listener_name: &'static str,
    tx: mpsc::Sender<io::Result<EdgeStream>>,
) {
    let peer = tcp.peer_addr().ok();
    let deadline = Instant::now() + settings.handshake_timeout;
    // A socket that has sent nothing yet costs no TLS state (some KiB of
    // buffers each): wait for its first bytes before starting the
    // handshake, under the same deadline.
    match tokio::time::timeout_at(deadline, tcp.readable()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            metrics.handshake_failed(listener_name, "refused");
            tracing::debug!(?peer, %error, "Connection failed before its TLS handshake.");
            return;
        }
        Err(_) => {
            metrics.handshake_failed(listener_name, "timeout");
            tracing::debug!(?peer, "TLS handshake never started.");
            return;
        }
    }
    // Boxed: the handshake's state (rustls' connection is kilobytes) is
    // then allocated only now, not in every waiting task's future.
    Box::pin(handshake(
        tcp,
        permit,
        edge,
        deadline,
        settings,
        metrics,
        listener_name,
        tx,
    ))
    .await;
}

#[allow(clippy::too_many_arguments)] // establish's state, moved as it is
async fn handshake(
    tcp: TcpStream,
    mut permit: ConnectionPermit,
    edge: Edge,
    deadline: Instant,
    settings: AcceptSettings,
    metrics: Metrics,
    listener_name: &'static str,
    tx: mpsc::Sender<io::Result<EdgeStream>>,
) {
    let peer = tcp.peer_addr().ok();
    let acceptor = edge.current().acceptor.clone();
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            metrics.handshake_failed(listener_name, "refused");
            tracing::debug!(?peer, %error, "TLS handshake failed.");
            return;
        }
        Err(_) => {
            metrics.handshake_failed(listener_name, "timeout");
            tracing::debug!(?peer, "TLS handshake timed out.");
            return;
        }
    };
    let identity = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|leaf| TerminalIdentity::from_der(leaf.as_ref()))
    {
        Some(Ok(identity)) => identity,
        Some(Err(status)) => {
            metrics.handshake_failed(listener_name, "identity");
            tracing::info!(
                ?peer,
                reason = status.message(),
                "Terminal certificate names no terminal; connection closed."
            );
            return;
        }
        None => {
            metrics.handshake_failed(listener_name, "identity");
            return;
        }
    };
    if let Some(refusal) = edge.refusal(&identity) {
        metrics.connection_refused(listener_name, refusal.reason());
        tracing::info!(terminal_id = %identity.terminal_id, %refusal, "Terminal refused at the edge.");
        return;
    }
    if let Err(refused) = permit.identify(&identity.terminal_id) {
        metrics.connection_refused(listener_name, refused.reason());
        tracing::info!(terminal_id = %identity.terminal_id, %refused, "Connection refused.");
        return;
    }
    let stream = EdgeStream::new(
        Some(identity),
        tls,
        settings,
        metrics,
        listener_name,
        permit,
    );
    let _ = tx.send(Ok(stream)).await;
}

/// An established terminal connection: counted while it lives, closed when
/// the terminal has sent nothing for the idle timeout. A live terminal
/// answers the server's HTTP/2 keepalive pings, so only a silent one (a
/// slow-loris sending half a frame, a vanished peer) is idle; the gateway's
/// configuration keeps the idle timeout above a ping's round. Also closed
/// when its [`ClientResets`] says so.
pub struct EdgeStream<S = TlsStream<TcpStream>> {
    /// Who the verified certificate says is calling: what a listener that
    /// reads terminal ids from its messages (ISO 8583 field 41) checks
    /// them against. `None` only on a lab's plain TCP.
    identity: Option<Arc<TerminalIdentity>>,
    inner: S,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    resets: ClientResets,
    close: CancellationToken,
    closed_for_resets: Pin<Box<WaitForCancellationFutureOwned>>,
    metrics: Metrics,
    listener_name: &'static str,
    _permit: ConnectionPermit,
}

impl<S> EdgeStream<S> {
    fn new(
        identity: Option<TerminalIdentity>,
        inner: S,
        settings: AcceptSettings,
        metrics: Metrics,
        listener_name: &'static str,
        permit: ConnectionPermit,
    ) -> EdgeStream<S> {
        let resets = ClientResets::new(settings.client_reset_limit, metrics.clone(), listener_name);
        EdgeStream {
            identity: identity.map(Arc::new),
            inner,
            idle_timeout: settings.idle_timeout,
            idle: Box::pin(tokio::time::sleep(settings.idle_timeout)),
            close: resets.close_signal(),
            closed_for_resets: Box::pin(resets.close_signal().cancelled_owned()),
            resets,
            metrics,
            listener_name,
            _permit: permit,
        }
    }

    /// The terminal of the verified certificate (`None` on plain TCP).
    pub fn identity(&self) -> Option<&TerminalIdentity> {
        self.identity.as_deref()
    }
}

/// What every request of an edge connection carries (in its extensions):
/// the terminal its certificate names, verified and parsed once per
/// connection, and the connection's abandoned-call bucket.
#[derive(Clone)]
pub struct EdgeConnectInfo {
    pub identity: Option<Arc<TerminalIdentity>>,
    pub remote_addr: Option<SocketAddr>,
    pub resets: ClientResets,
}

impl EdgeConnectInfo {
    pub fn terminal_id(&self) -> Option<Arc<str>> {
        self.identity
            .as_ref()
            .map(|identity| Arc::from(identity.terminal_id.as_str()))
    }
}

impl Connected for EdgeStream<TlsStream<TcpStream>> {
    type ConnectInfo = EdgeConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        EdgeConnectInfo {
            identity: self.identity.clone(),
            remote_addr: self.inner.get_ref().0.peer_addr().ok(),
            resets: self.resets.clone(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EdgeStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed_for_resets.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(abandoned_too_many()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let deadline = Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.metrics.idle_closed(this.listener_name);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the terminal sent nothing for the idle timeout",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EdgeStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close.is_cancelled() {
            return Poll::Ready(Err(abandoned_too_many()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close.is_cancelled() {
            return Poll::Ready(Err(abandoned_too_many()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn abandoned_too_many() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the terminal abandoned calls faster than gateway.client_reset_limit allows",
    )
}
