//! The receiver of the platform's asynchronous notifications: HTTPS on
//! `authorization.qr.notify_listen`. A notification is verified
//! (`qr_platform::verify_notification`: signature and timestamp) before
//! its body is read, its nonce recorded (a replay is refused with nothing
//! written) and only then handed to `decide`. Whenever `decide` accepts it,
//! a no-op included, the answer is 200 `SUCCESS`, so the platform stops
//! retrying; anything else is an error answer and changes nothing.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use qr_platform::{TradeState, verify_notification};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use switch_core::Money;
use switch_core::qr::{OrderId, PlatformTxnId, QrCommand};
use switch_platform::reload::{ReloadError, Reloadable};
use switch_platform::service::ServeError;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{QrError, QrShell};

/// The path the platform is told to notify (its `notify_url`). The receiver
/// answers a `POST` on any path, so this names the convention every
/// configuration that points a platform here shares.
pub const NOTIFY_PATH: &str = "/qr/notify";

const MAX_BODY_BYTES: usize = 64 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Answer = Response<Full<Bytes>>;

/// The receiver's certificate chain and key, as the TLS acceptor every new
/// connection uses: reloaded when the files change (cert-manager renews
/// the Secret in place), so a renewal needs no restart and drops no
/// connection; a pair that does not load leaves the previous one in use.
pub fn acceptor(cert_path: &Path, key_path: &Path) -> Result<Reloadable<TlsAcceptor>, ServeError> {
    let (cert, key) = (cert_path.to_owned(), key_path.to_owned());
    Reloadable::load(vec![cert.clone(), key.clone()], move |contents| {
        let &[cert_pem, key_pem] = contents else {
            return Err(ReloadError::Tls("two files expected".into()));
        };
        tls_acceptor((&cert, cert_pem), (&key, key_pem))
    })
    .map_err(|error| ServeError::Start {
        what: "qr notification receiver tls",
        reason: error.to_string(),
    })
}

fn tls_acceptor(
    (cert_path, cert_pem): (&Path, &[u8]),
    (key_path, key_pem): (&Path, &[u8]),
) -> Result<TlsAcceptor, ReloadError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ReloadError::invalid(cert_path, e))?;
    if certs.is_empty() {
        return Err(ReloadError::invalid(cert_path, "no PEM certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| ReloadError::invalid(key_path, format!("no private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ReloadError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ReloadError::invalid(cert_path, format!("does not match the key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Checks the receiver's certificate and key every `every` while it
/// serves, logging each reload and each pair that does not load.
pub fn watch(acceptor: &Reloadable<TlsAcceptor>, every: Duration) {
    acceptor.spawn_watch(every, |outcome| match outcome {
        Ok(false) => {}
        Ok(true) => tracing::info!("QR notification receiver certificate reloaded."),
        Err(error) => tracing::error!(
            %error,
            "QR notification receiver certificate cannot be reloaded; the previous one stays in use."
        ),
    });
}

/// Serves notifications on `listener` until `shutdown`.
pub async fn serve_notifications(
    shell: QrShell,
    acceptor: Reloadable<TlsAcceptor>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    tracing::info!(address = ?listener.local_addr().ok(), "QR notification receiver listening.");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                // The pair current now, for this connection's handshake.
                let (shell, acceptor) = (shell.clone(), acceptor.current());
                connections.spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let shell = shell.clone();
                        async move { Ok::<_, Infallible>(handle(&shell, request).await) }
                    });
                    if let Err(error) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await
                    {
                        tracing::debug!(%error, "Notification connection ended with an error.");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
}

fn answer(status: StatusCode, code: &str, message: &str) -> Answer {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn refused(status: StatusCode, message: &str) -> Answer {
    tracing::warn!(%status, reason = message, "QR notification refused; nothing written.");
    answer(status, "FAIL", message)
}

async fn handle(shell: &QrShell, request: Request<Incoming>) -> Answer {
    if request.method() != Method::POST {
        return refused(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = Limited::new(body, MAX_BODY_BYTES).collect().await else {
        return refused(StatusCode::BAD_REQUEST, "body unreadable or too large");
    };
    let body = body.to_bytes();
    let now = shell.clock.now();
    let verified = match verify_notification(
        shell.config.key.expose().as_bytes(),
        &parts.headers,
        &body,
        now.unix_timestamp(),
        shell.config.tolerance_s,
    ) {
        Ok(verified) => verified,
        Err(error) => return refused(StatusCode::UNAUTHORIZED, &error.to_string()),
    };
    let notification = verified.notification;
    if notification.trade_state != TradeState::Success {
        return refused(
            StatusCode::BAD_REQUEST,
            "trade_state: only SUCCESS is notified",
        );
    }
    let order = match OrderId::parse(&notification.out_trade_no) {
        Ok(order) => order,
        Err(error) => return refused(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let platform_txn = match PlatformTxnId::parse(&notification.transaction_id) {
        Ok(txn) => txn,
        Err(error) => return refused(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let amount = match Money::positive(notification.amount, notification.currency) {
        Ok(amount) => amount,
        Err(error) => return refused(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let command = QrCommand::NotificationReceived {
        order_id: order.clone(),
        platform_txn,
        amount,
    };
    match shell
        .notified(
            &order,
            &verified.verified.nonce,
            &notification.notify_id,
            command,
        )
        .await
    {
        Ok(_) => answer(StatusCode::OK, "SUCCESS", "OK"),
        Err(QrError::Replayed) => refused(StatusCode::CONFLICT, "replayed: nonce seen before"),
        Err(error @ QrError::NotFound(_)) => refused(StatusCode::NOT_FOUND, &error.to_string()),
        Err(error @ QrError::Refused { .. }) => refused(StatusCode::CONFLICT, &error.to_string()),
        Err(error) => {
            tracing::error!(%error, "QR notification not recorded; the platform will retry.");
            answer(StatusCode::SERVICE_UNAVAILABLE, "FAIL", "try again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewed_pair_is_taken_and_a_broken_one_leaves_the_previous_in_use() {
        let dir = std::env::temp_dir().join(format!("qr-receiver-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let pki = dev_certs::DevPki::generate().unwrap();
        let write = |pair: &dev_certs::CertifiedKey| {
            std::fs::write(&cert, &pair.cert_pem).unwrap();
            std::fs::write(&key, &pair.key_pem).unwrap();
        };
        write(&pki.server_cert(&["localhost"]).unwrap());
        let receiver = acceptor(&cert, &key).expect("the pair loads");
        let first = receiver.current();

        write(&pki.server_cert(&["localhost"]).unwrap());
        assert!(
            receiver
                .reload_if_changed()
                .expect("the renewed pair loads")
        );
        let renewed = receiver.current();
        assert!(
            !Arc::ptr_eq(&first, &renewed),
            "new connections use the renewed pair"
        );

        std::fs::write(&key, "not a key").unwrap();
        let error = receiver
            .reload_if_changed()
            .expect_err("a broken key does not load");
        assert!(
            error.to_string().contains("tls.key"),
            "names the file: {error}"
        );
        assert!(
            Arc::ptr_eq(&renewed, &receiver.current()),
            "the previous pair stays"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
