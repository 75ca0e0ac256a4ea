//! One listener's connections: TLS with the terminal's certificate (or
//! plain TCP for a lab), frames read by the profile's length header,
//! requests handled concurrently and answered as they finish.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use switch_platform::config::ConfigError;
use switch_platform::grpc::TlsFiles;
use switch_platform::service::ServeError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use super::Listener;
use super::handler::{self, Caller, Read};
use crate::identity::TerminalIdentity;

/// Answers a connection may have ready ahead of what the socket takes.
const WRITE_BUFFER: usize = 16;

/// The TLS configuration of an ISO listener: the gateway's server
/// certificate, and client certificates required from the terminal CA.
pub(super) fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    let invalid = |key: &str, reason: String| {
        ServeError::Config(ConfigError::invalid(format!("gateway.tls.{key}"), reason))
    };
    let certs = CertificateDer::pem_file_iter(&files.cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid("cert_path", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key_path)
        .map_err(|e| invalid("key_path", e.to_string()))?;
    let ca_path = files.client_ca_path.as_ref().ok_or_else(|| {
        invalid(
            "client_ca_path",
            "terminals are identified by client certificates; the CA is required".into(),
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(ca_path)
        .map_err(|e| invalid("client_ca_path", e.to_string()))?
    {
        let ca = ca.map_err(|e| invalid("client_ca_path", e.to_string()))?;
        roots
            .add(ca)
            .map_err(|e| invalid("client_ca_path", e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| invalid("client_ca_path", e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("cert_path", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| invalid("key_path", e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until `stop`, then waits for each to answer what it
/// was handling.
pub(super) async fn accept_until_stopped(
    socket: TcpListener,
    listener: Arc<Listener>,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = socket.accept() => accepted,
        };
        // Reap finished connections so the set stays the size of the open
        // ones.
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(connection(stream, peer, listener.clone(), stop.clone()));
            }
            Err(error) => tracing::warn!(%error, "ISO 8583 accept failed."),
        }
    }
    while connections.join_next().await.is_some() {}
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = listener.tls.clone() else {
        return session(stream, Caller::Lab, listener, stop).await;
    };
    let tls = match tokio::time::timeout(listener.handshake_timeout, acceptor.accept(stream)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "ISO 8583 TLS handshake failed; connection closed.");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "ISO 8583 TLS handshake timed out; connection closed.");
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| "no client certificate".to_owned())
        .and_then(|leaf| {
            TerminalIdentity::from_der(leaf.as_ref()).map_err(|s| s.message().to_owned())
        });
    match identity {
        Ok(identity) => session(tls, Caller::Certified(identity), listener, stop).await,
        Err(reason) => {
            tracing::warn!(%peer, %reason, "ISO 8583 connection without a usable terminal certificate closed.");
        }
    }
}

/// Reads frames until the terminal hangs up, a frame cannot be answered,
/// or `stop`; then lets every request in flight finish and its answer go
/// out before closing.
async fn session<S>(stream: S, caller: Caller, listener: Arc<Listener>, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (answers, mut outgoing) = mpsc::channel::<Vec<u8>>(WRITE_BUFFER);
    let write_task = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let caller = Arc::new(caller);
    let in_flight = Arc::new(Semaphore::new(listener.max_in_flight));
    let header_len = listener.profile.framing.length.size();
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let mut frame = vec![0u8; header_len];
        let read = tokio::select! {
            () = stop.cancelled() => break,
            read = reader.read_exact(&mut frame) => read,
        };
        if read.is_err() {
            // The terminal hung up (or the connection broke) between
            // frames: the normal end of a session.
            break;
        }
        let len = match listener.profile.frame_len(&frame) {
            Ok(Some(len)) => len,
            Ok(None) => break,
            Err(error) => {
                listener.metrics.closed_unreadable();
                tracing::warn!(%error, "ISO 8583 frame refused by its length header; connection closed.");
                break;
            }
        };
        frame.resize(len, 0);
        // A frame left half sent must not hold the shutdown.
        let read = tokio::select! {
            () = stop.cancelled() => break,
            read = reader.read_exact(&mut frame[header_len..]) => read,
        };
        if read.is_err() {
            tracing::info!("ISO 8583 connection closed in the middle of a frame.");
            break;
        }
        match handler::read(&listener, &caller, &frame) {
            Read::Request(request) => {
                let (listener, caller, answers) =
                    (listener.clone(), caller.clone(), answers.clone());
                tokio::spawn(async move {
                    if let Some(answer) = handler::answer(&listener, &caller, request).await {
                        let _ = answers.send(answer).await;
                    }
                    drop(permit);
                });
            }
            Read::Answer(answer) => {
                if answers.send(answer).await.is_err() {
                    break;
                }
            }
            Read::Ignore => {}
            Read::Close(reason) => {
                listener.metrics.closed_unreadable();
                tracing::warn!(%reason, "ISO 8583 message cannot be answered; connection closed.");
                break;
            }
        }
    }
    drop(answers);
    let _ = write_task.await;
}
