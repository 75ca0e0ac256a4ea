//! Internal mutual TLS that follows its files (issue 16, ADR 27): a
//! service's certificate, its key and the service CA bundle are checked
//! every `internal_tls.reload_interval_ms` and a change is used without a
//! restart.
//!
//! [`InternalTls`] is one service's TLS state: a rustls server and client
//! configuration built from the current files, replaced as a whole on each
//! reload ([`crate::reload::Reloadable`]). Every handshake takes the
//! configuration current at its start, so new connections present the new
//! certificate and trust the new CA while established ones keep what they
//! negotiated. Nothing is dropped, and a file that does not load leaves
//! the previous configuration in use (logged, and counted in
//! `internal_tls.reloads` with `outcome = "failed"`).
//!
//! Replacing whole configurations rather than swapping a certificate
//! resolver and a verifier under a fixed one does three things. The CA
//! names a server hints to its clients stay those of the bundle in use.
//! Each configuration has its own session-resumption cache, so a resumed
//! session never carries a certificate or a trust decision across a
//! rotation. And it is what the terminal edge does.
//!
//! Servers: [`incoming`] runs each TLS handshake in a task of its own
//! under a timeout and hands the established `tokio_rustls` stream to
//! tonic. tonic's connect info for that stream carries the peer's
//! certificates, which is where [`crate::internal_tls::Caller::of_request`]
//! reads the caller's identity, as it did when tonic ran the handshake.
//!
//! Clients: [`InternalConnector`] connects TCP and runs the handshake with
//! the current client configuration. tonic runs its own TLS on any
//! `https://` endpoint and cannot reload it, so the channel's endpoint is
//! the same address with `http://`. Its origin stays the configured
//! `https://` URL, which is the `:scheme` and `:authority` every request
//! carries. The server name checked is the URL's host, as before.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::KeyValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};

use crate::internal_tls::InternalTlsConfig;
use crate::reload::{ReloadError, Reloadable};

/// How long an accepted connection may take to finish its TLS handshake.
/// A peer that never does would otherwise hold a task and a socket.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const ESTABLISHED_BACKLOG: usize = 64;

const ALPN_H2: &[u8] = b"h2";

/// The rustls configurations of one load of the files.
struct Configs {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

/// One service's internal TLS: what its server presents and requires, and
/// what its clients present and trust, following the files. Cloning
/// shares it.
#[derive(Clone)]
pub struct InternalTls {
    service: Arc<str>,
    state: Reloadable<Configs>,
}

impl std::fmt::Debug for InternalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalTls")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl InternalTls {
    /// Loads `service`'s certificate and key and the service CA bundle as
    /// `config` names them. It does not reload by itself: see
    /// [`watch`](InternalTls::watch) and
    /// [`reload_if_changed`](InternalTls::reload_if_changed).
    pub fn load(service: &str, config: &InternalTlsConfig) -> Result<InternalTls, ReloadError> {
        let (cert_path, key_path) = config.identity_of(service);
        let ca_path = config.ca_path.clone();
        let paths = vec![ca_path.clone(), cert_path.clone(), key_path.clone()];
        let expected = crate::internal_tls::Caller::Service(service.to_owned());
        let state = Reloadable::load(paths, move |contents| {
            let &[ca, cert, key] = contents else {
                return Err(ReloadError::Tls("three files expected".into()));
            };
            // A rotated certificate naming another identity would quietly
            // give this process that identity's rights (a notifier handed
            // the gateway's certificate could authorize sales): refused,
            // and the previous files stay in use.
            let leaf =
                pem_all::<CertificateDer<'static>>(cert_path.as_path(), cert, "CERTIFICATE")?;
            let named = leaf
                .first()
                .and_then(|der| crate::internal_tls::Caller::from_der(der.as_ref()));
            if named.as_ref() != Some(&expected) {
                return Err(ReloadError::invalid(
                    cert_path.as_path(),
                    format!("names {named:?}, not this process's identity {expected:?}"),
                ));
            }
            load_configs(
                (ca_path.as_path(), ca),
                (cert_path.as_path(), cert),
                (key_path.as_path(), key),
            )
        })?;
        Ok(InternalTls {
            service: Arc::from(service),
            state,
        })
    }

    /// The service whose certificate this presents.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Loads the files again if any changed: `Ok(true)` when new
    /// handshakes now use them. On an error the previous files stay in
    /// use. Blocking (it reads files).
    pub fn reload_if_changed(&self) -> Result<bool, ReloadError> {
        self.state.reload_if_changed()
    }

    /// Changes with every reload that put new files in use.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.reloads()
    }

    /// Checks the files every `every` for as long as this state is in use
    /// (a server serving, a channel alive), logging and counting each
    /// reload (`internal_tls.reloads`, by `service` and `outcome`). Needs
    /// a Tokio runtime.
    pub fn watch(&self, every: Duration) {
        let service = self.service.clone();
        let reloads = opentelemetry::global::meter("switch-platform")
            .u64_counter("internal_tls.reloads")
            .with_description(
                "Reloads of a service's internal certificate, key and service CA, by outcome",
            )
            .build();
        self.state.spawn_watch(every, move |outcome| {
            let counted = |outcome: &'static str| {
                reloads.add(
                    1,
                    &[
                        KeyValue::new("service", service.to_string()),
                        KeyValue::new("outcome", outcome),
                    ],
                );
            };
            match outcome {
                Ok(false) => {}
                Ok(true) => {
                    counted("ok");
                    tracing::info!(service = %service, "Internal TLS certificate, key and CA reloaded.");
                }
                Err(error) => {
                    counted("failed");
                    tracing::error!(
                        service = %service,
                        %error,
                        "Internal TLS files cannot be reloaded; the previous ones stay in use."
                    );
                }
            }
        });
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.state.current().server.clone())
    }

    fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.state.current().client.clone())
    }
}

fn load_configs(
    (ca_path, ca): (&std::path::Path, &[u8]),
    (cert_path, cert): (&std::path::Path, &[u8]),
    (key_path, key): (&std::path::Path, &[u8]),
) -> Result<Configs, ReloadError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = pem_all::<CertificateDer<'static>>(cert_path, cert, "CERTIFICATE")?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| ReloadError::invalid(key_path, format!("no private key: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem_all::<CertificateDer<'static>>(ca_path, ca, "CERTIFICATE")? {
        roots
            .add(ca)
            .map_err(|e| ReloadError::invalid(ca_path, e))?;
    }
    let roots = Arc::new(roots);
    let tls = |e: rustls::Error| ReloadError::Tls(e.to_string());
    let mismatch = |e: rustls::Error| {
        ReloadError::invalid(
            cert_path,
            format!("unusable with the key {}: {e}", key_path.display()),
        )
    };

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| ReloadError::Tls(e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(mismatch)?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(mismatch)?;
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

fn pem_all<T: PemObject>(
    path: &std::path::Path,
    bytes: &[u8],
    what: &str,
) -> Result<Vec<T>, ReloadError> {
    let items = T::pem_slice_iter(bytes)
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| ReloadError::invalid(path, e))?;
    if items.is_empty() {
        return Err(ReloadError::invalid(path, format!("no PEM {what} in it")));
    }
    Ok(items)
}

/// The established TLS connections of accepted TCP ones: each handshake
/// runs in its own task under [`HANDSHAKE_TIMEOUT`] with the configuration
/// current when it starts, so a slow one delays no other. A failed
/// handshake is logged at debug and dropped. An accept error is passed on
/// for tonic to judge, as it would have been without this layer. Stops when
/// the returned stream is dropped (tonic drops it when it stops accepting).
pub fn incoming<S>(tcp: S, tls: InternalTls) -> ReceiverStream<io::Result<ServerStream>>
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(ESTABLISHED_BACKLOG);
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let next = tokio::select! {
                () = tx.closed() => break,
                next = tcp.next() => next,
            };
            let stream = match next {
                None => break,
                Some(Err(error)) => {
                    if tx.send(Err(error)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Some(Ok(stream)) => stream,
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            let service = tls.service.clone();
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(established)) => {
                        let _ = tx.send(Ok(established)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(service = %service, ?peer, %error, "Internal TLS handshake failed.");
                    }
                    Err(_) => {
                        tracing::debug!(service = %service, ?peer, "Internal TLS handshake timed out.");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// An internal server's established connection.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Connects a tonic channel to `host:port` over TLS with the client
/// configuration current at each connection: the service's certificate
/// of the moment, and the CA bundle of the moment to verify the server
/// (whose certificate must name `server_name`).
#[derive(Clone)]
pub struct InternalConnector {
    tls: InternalTls,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

impl InternalConnector {
    /// A connector to `uri` (`https://host[:port]`, 443 by default),
    /// verifying the server's certificate for `server_name`, or for the
    /// URI's host when `None`.
    pub fn new(
        tls: InternalTls,
        uri: &http::Uri,
        server_name: Option<&str>,
    ) -> Result<InternalConnector, String> {
        let host = uri
            .host()
            .ok_or_else(|| "the URL names no host".to_owned())?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let name = server_name.unwrap_or(&host);
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| format!("{name:?} is not a server name: {e}"))?;
        Ok(InternalConnector {
            tls,
            host,
            port,
            server_name,
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for InternalConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    /// The URI tonic passes is the channel's `http://` stand-in; the
    /// address and the name are this connector's own.
    fn call(&mut self, _: http::Uri) -> Self::Future {
        let connector = self.tls.connector();
        let (host, port, server_name) = (self.host.clone(), self.port, self.server_name.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            // Small request/response messages must not wait for Nagle.
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                return Err("the server did not negotiate HTTP/2 (ALPN h2)".into());
            }
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
