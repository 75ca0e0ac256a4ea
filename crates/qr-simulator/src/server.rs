//! The HTTPS server: TLS with the dev PKI's server certificate, HTTP/1.1,
//! the platform's signed endpoints and the unsigned control endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use qr_platform::{
    CANCEL_PATH, CLOSE_PATH, CreateOrderRequest, ErrorAnswer, ErrorCode, ORDERS_PATH, OrderRequest,
    PAY_PATH, PayRequest, QUERY_PATH, REFUND_PATH, RefundRequest,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switch_platform::service::ServeError;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::Simulator;
use crate::faults::FaultPlan;
use crate::order::{Mode, Order, Refusal};

/// Largest request body read.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// A client that does not finish its handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Answer = Response<Full<Bytes>>;

/// The TLS acceptor for the certificate chain and key in these PEM files.
pub fn acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, ServeError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| ServeError::Start {
            what: "qr simulator tls",
            reason: format!("{}: {e}", path.display()),
        })
    };
    let invalid = |path: &Path, reason: String| ServeError::Start {
        what: "qr simulator tls",
        reason: format!("{}: {reason}", path.display()),
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert_path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid(cert_path, "no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_path)?)
        .map_err(|e| invalid(key_path, format!("no private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert_path, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(cert_path, format!("does not match the key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until `shutdown`, then drops every connection.
pub(crate) async fn accept(
    simulator: Simulator,
    acceptor: TlsAcceptor,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(error) => {
                        tracing::warn!(%error, "Connection not accepted.");
                        continue;
                    }
                };
                if simulator.inner.faults.current().refuse_connections {
                    drop(tcp);
                    continue;
                }
                let (simulator, acceptor) = (simulator.clone(), acceptor.clone());
                connections.spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let simulator = simulator.clone();
                        async move { Ok::<_, Infallible>(simulator.handle(request).await) }
                    });
                    if let Err(error) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await
                    {
                        tracing::debug!(%error, "Connection ended with an error.");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
}

impl Simulator {
    async fn handle(&self, request: http::Request<Incoming>) -> Answer {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                return self.refusal(Refusal {
                    code: ErrorCode::InvalidRequest,
                    message: format!("the body is unreadable or over {MAX_BODY_BYTES} bytes"),
                });
            }
        };
        let path = parts.uri.path();
        match (&parts.method, path) {
            (&Method::POST, "/control/faults") => match parse::<FaultPlan>(&body) {
                Ok(plan) => {
                    self.inner.faults.set(plan);
                    self.reply(StatusCode::OK, &self.inner.faults.current())
                }
                Err(refusal) => self.refusal(refusal),
            },
            (&Method::POST, "/control/scan") => match parse::<OrderRequest>(&body) {
                Ok(request) => self.answer(self.scan(&request.out_trade_no).await),
                Err(refusal) => self.refusal(refusal),
            },
            (&Method::GET, "/control/ledger") => match self.inner.ledger.totals().await {
                Ok(totals) => self.reply(StatusCode::OK, &totals),
                Err(error) => self.unavailable(&error),
            },
            (&Method::GET, _) if path.starts_with("/control/ledger/") => {
                let out_trade_no = &path["/control/ledger/".len()..];
                match self.entry(out_trade_no).await {
                    Ok(Some(entry)) => self.reply(StatusCode::OK, &entry),
                    Ok(None) => self.refusal(not_found(out_trade_no)),
                    Err(error) => self.unavailable(&error),
                }
            }
            (
                &Method::POST,
                PAY_PATH | ORDERS_PATH | QUERY_PATH | CANCEL_PATH | CLOSE_PATH | REFUND_PATH,
            ) => self.platform(path, &parts.headers, &body).await,
            _ => self.reply(
                StatusCode::NOT_FOUND,
                &ErrorAnswer {
                    code: ErrorCode::InvalidRequest,
                    message: format!("no endpoint {} {path}", parts.method),
                },
            ),
        }
    }

    /// A platform endpoint: outage, signature, replay, request, then the
    /// order's rules.
    async fn platform(&self, path: &str, headers: &HeaderMap, body: &[u8]) -> Answer {
        let faults = self.inner.faults.current();
        if faults.outage {
            return self.refusal(Refusal {
                code: ErrorCode::SystemError,
                message: "QR platform outage (simulated)".into(),
            });
        }
        let settings = &self.inner.settings;
        let now = self.now();
        let verified = match qr_platform::signature::verify(
            settings.key.expose().as_bytes(),
            headers,
            body,
            now.unix_timestamp(),
            settings.tolerance_s,
        ) {
            Ok(verified) => verified,
            Err(error) => {
                tracing::info!(path, reason = error.reason(), "Request refused: signature.");
                return self.refusal(Refusal {
                    code: ErrorCode::SignError,
                    message: error.to_string(),
                });
            }
        };
        if !self.first_use_of(&verified.nonce, now.unix_timestamp()) {
            tracing::info!(path, "Request refused: replayed nonce.");
            return self.refusal(Refusal {
                code: ErrorCode::Replayed,
                message: "this nonce was used before".into(),
            });
        }
        let notify_at = now + Duration::from_millis(faults.notification_delay_ms);
        let delays = settings.delays;
        let answer = match path {
            PAY_PATH => {
                let request = match parse_valid::<PayRequest>(body, |r| r.validate().map(drop)) {
                    Ok(request) => request,
                    Err(refusal) => return self.refusal(refusal),
                };
                tracing::debug!(%request, "Pay.");
                self.apply(&request.out_trade_no, notify_at, |order| {
                    Order::open(
                        order,
                        &request.out_trade_no,
                        Mode::Pay,
                        request.amount,
                        request.currency,
                        delays,
                        now,
                    )
                })
                .await
                .map(|a| a.map(|a| self.reply(StatusCode::OK, &a)))
            }
            ORDERS_PATH => {
                let request =
                    match parse_valid::<CreateOrderRequest>(body, |r| r.validate().map(drop)) {
                        Ok(request) => request,
                        Err(refusal) => return self.refusal(refusal),
                    };
                self.apply(&request.out_trade_no, notify_at, |order| {
                    Order::open(
                        order,
                        &request.out_trade_no,
                        Mode::Order,
                        request.amount,
                        request.currency,
                        delays,
                        now,
                    )
                })
                .await
                .map(|a| a.map(|a| self.reply(StatusCode::OK, &a)))
            }
            REFUND_PATH => {
                let request = match parse_valid::<RefundRequest>(body, RefundRequest::validate) {
                    Ok(request) => request,
                    Err(refusal) => return self.refusal(refusal),
                };
                self.apply_existing(&request.out_trade_no, notify_at, |order| {
                    order.refund(&request.out_refund_no, request.refund_amount, now)
                })
                .await
                .map(|a| a.map(|a| self.reply(StatusCode::OK, &a)))
            }
            _ => {
                let request = match parse_valid::<OrderRequest>(body, OrderRequest::validate) {
                    Ok(request) => request,
                    Err(refusal) => return self.refusal(refusal),
                };
                if path == QUERY_PATH && faults.query_hangs {
                    tracing::info!(out_trade_no = %request.out_trade_no, "Query left unanswered (simulated).");
                    std::future::pending::<()>().await;
                }
                let race = faults.close_races_payment;
                self.apply_existing(&request.out_trade_no, notify_at, |order| match path {
                    QUERY_PATH => order.query(now),
                    CANCEL_PATH => order.cancel(now),
                    _ => order.close(race, now),
                })
                .await
                .map(|a| a.map(|a| self.reply(StatusCode::OK, &a)))
            }
        };
        match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(refusal)) => self.refusal(refusal),
            Err(error) => self.unavailable(&error),
        }
    }

    /// Records `nonce` (seen at `now`); false when it was seen before.
    fn first_use_of(&self, nonce: &str, now: i64) -> bool {
        let horizon =
            i64::try_from(self.inner.settings.tolerance_s.saturating_mul(2)).unwrap_or(i64::MAX);
        self.inner
            .nonces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first_use(nonce, now, horizon)
    }

    fn answer<T: Serialize>(
        &self,
        result: Result<Result<T, Refusal>, crate::ledger::LedgerError>,
    ) -> Answer {
        match result {
            Ok(Ok(answer)) => self.reply(StatusCode::OK, &answer),
            Ok(Err(refusal)) => self.refusal(refusal),
            Err(error) => self.unavailable(&error),
        }
    }

    fn refusal(&self, refusal: Refusal) -> Answer {
        let status = StatusCode::from_u16(refusal.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.reply(
            status,
            &ErrorAnswer {
                code: refusal.code,
                message: refusal.message,
            },
        )
    }

    fn unavailable(&self, error: &crate::ledger::LedgerError) -> Answer {
        tracing::warn!(%error, "Request not decided: the ledger is unavailable.");
        self.refusal(Refusal {
            code: ErrorCode::SystemError,
            message: "the platform's ledger is unavailable".into(),
        })
    }

    /// Every answer is signed, refusals included.
    fn reply<T: Serialize>(&self, status: StatusCode, body: &T) -> Answer {
        let body = serde_json::to_vec(body).expect("answers always serialize");
        let signed = qr_platform::signature::sign_fresh(
            self.inner.settings.key.expose().as_bytes(),
            self.now().unix_timestamp(),
            &body,
        );
        let mut answer = Response::new(Full::new(Bytes::from(body)));
        *answer.status_mut() = status;
        signed.apply(answer.headers_mut());
        answer.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        answer
    }
}

pub(crate) fn not_found(out_trade_no: &str) -> Refusal {
    Refusal {
        code: ErrorCode::OrderNotExist,
        message: format!("no order {out_trade_no}"),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| Refusal {
        code: ErrorCode::InvalidRequest,
        message: e.to_string(),
    })
}

fn parse_valid<T: DeserializeOwned>(
    body: &[u8],
    validate: impl FnOnce(&T) -> Result<(), switch_core::InvalidField>,
) -> Result<T, Refusal> {
    let request = parse::<T>(body)?;
    validate(&request).map_err(|e| Refusal {
        code: ErrorCode::InvalidRequest,
        message: format!("{}: {}", e.field, e.reason),
    })?;
    Ok(request)
}
