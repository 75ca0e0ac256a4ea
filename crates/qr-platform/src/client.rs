//! The acquirer's side: an HTTPS client for the platform's endpoints and
//! the check of a notification the platform sent.
//!
//! Every request is signed; every answer's signature is verified before
//! its body is read, so an answer that was not signed with the key is never
//! trusted. What a call can end in is exact about what is known: an
//! answer, a refusal the platform signed, or [`CallError::outcome_unknown`]
//! (a timeout, a broken connection, a 5xx, an answer that is unsigned or
//! unreadable): the payment may or may not have happened, and only a later
//! query can tell. None of these is ever "failed".

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use switch_core::SharedClock;

use crate::messages::{
    CANCEL_PATH, CLOSE_PATH, CreateOrderRequest, ErrorAnswer, ErrorCode, Notification, ORDERS_PATH,
    OrderRequest, PAY_PATH, PayRequest, QUERY_PATH, REFUND_PATH, RefundAnswer, RefundRequest,
    TradeAnswer,
};
use crate::signature::{self, SignatureError, Verified};

/// How to reach the platform.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host:port` (no trailing path).
    pub base_url: String,
    /// PEM certificates to trust for the platform's server certificate
    /// (the dev CA); `None`: the Mozilla roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The acquirer's HMAC key.
    pub key: Vec<u8>,
    /// The default deadline of one call, connection included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// How far an answer's timestamp may stray from our clock.
    pub tolerance_s: u64,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("key", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("the CA certificates cannot be read: {0}")]
    Ca(reqwest::Error),
    #[error("the HTTP client cannot be built: {0}")]
    Http(reqwest::Error),
    #[error("base_url must start with https:// or http:// ({0})")]
    BaseUrl(String),
}

/// What is unknown about a call that got no trustworthy answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unknown {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("the platform answered HTTP {0}")]
    Unavailable(u16),
}

/// How a call ended without an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The request may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Unknown(Unknown),
    /// An answer came whose signature does not hold: it says nothing.
    #[error("answer not trusted: {0}")]
    Untrusted(SignatureError),
    /// A signed answer that is not one of the protocol's messages.
    #[error("answer unreadable: {0}")]
    Unreadable(String),
    /// The platform refused the request (signed); nothing was applied.
    #[error("platform refused ({code:?}, HTTP {status}): {message}")]
    Refused {
        status: u16,
        code: ErrorCode,
        message: String,
    },
}

impl CallError {
    /// Whether the payment's fate is unknown: query again before deciding.
    /// Only a signed refusal is known not to have changed anything.
    pub fn outcome_unknown(&self) -> bool {
        !matches!(self, CallError::Refused { .. })
    }

    /// The refusal's code, if the platform refused.
    pub fn refusal(&self) -> Option<ErrorCode> {
        match self {
            CallError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The platform's client; cloning shares its connections.
#[derive(Clone)]
pub struct QrClient {
    http: reqwest::Client,
    base_url: Arc<str>,
    key: Arc<[u8]>,
    clock: SharedClock,
    timeout: Duration,
    tolerance_s: u64,
}

impl std::fmt::Debug for QrClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QrClient")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl QrClient {
    /// A client as `config` says, stamping requests with `clock`'s time.
    pub fn new(config: &ClientConfig, clock: SharedClock) -> Result<QrClient, ClientBuildError> {
        let base_url = config.base_url.trim_end_matches('/');
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(ClientBuildError::BaseUrl(base_url.to_owned()));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(config.connect_timeout)
            // A signed request is never sent where it was not addressed.
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .user_agent(concat!("pos-switch-qr/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.ca_pem {
            for certificate in
                reqwest::Certificate::from_pem_bundle(pem).map_err(ClientBuildError::Ca)?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(QrClient {
            http: builder.build().map_err(ClientBuildError::Http)?,
            base_url: base_url.into(),
            key: config.key.clone().into(),
            clock,
            timeout: config.timeout,
            tolerance_s: config.tolerance_s,
        })
    }

    /// The same client with another per-call deadline (a query inside a
    /// terminal's wait, say, is shorter than a cancel's).
    pub fn with_timeout(&self, timeout: Duration) -> QrClient {
        QrClient {
            timeout,
            ..self.clone()
        }
    }

    /// Consumer-presented payment.
    pub async fn pay(&self, request: &PayRequest) -> Result<TradeAnswer, CallError> {
        let answer = self.call(PAY_PATH, request).await?;
        same_order(&request.out_trade_no, answer)
    }

    /// Merchant-presented order: the answer's `code_url` is the code.
    pub async fn create_order(
        &self,
        request: &CreateOrderRequest,
    ) -> Result<TradeAnswer, CallError> {
        let answer = self.call(ORDERS_PATH, request).await?;
        same_order(&request.out_trade_no, answer)
    }

    pub async fn query(&self, out_trade_no: &str) -> Result<TradeAnswer, CallError> {
        let answer = self.call(QUERY_PATH, &order(out_trade_no)).await?;
        same_order(out_trade_no, answer)
    }

    /// Reverse: closes an unpaid order, refunds a paid one in full.
    pub async fn cancel(&self, out_trade_no: &str) -> Result<TradeAnswer, CallError> {
        let answer = self.call(CANCEL_PATH, &order(out_trade_no)).await?;
        same_order(out_trade_no, answer)
    }

    /// Closes an unpaid order; a paid one is refused `ORDERPAID`.
    pub async fn close(&self, out_trade_no: &str) -> Result<TradeAnswer, CallError> {
        let answer = self.call(CLOSE_PATH, &order(out_trade_no)).await?;
        same_order(out_trade_no, answer)
    }

    pub async fn refund(&self, request: &RefundRequest) -> Result<RefundAnswer, CallError> {
        let answer: RefundAnswer = self.call(REFUND_PATH, request).await?;
        if answer.out_trade_no != request.out_trade_no
            || answer.out_refund_no != request.out_refund_no
        {
            return Err(CallError::Unreadable(format!(
                "an answer for refund {} of {} to a request for {} of {}",
                answer.out_refund_no,
                answer.out_trade_no,
                request.out_refund_no,
                request.out_trade_no
            )));
        }
        Ok(answer)
    }

    async fn call<Req: Serialize, Ans: DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Ans, CallError> {
        let body = serde_json::to_vec(request).expect("protocol messages always serialize");
        let signed = signature::sign_fresh(&self.key, self.clock.now().unix_timestamp(), &body);
        let mut headers = HeaderMap::new();
        signed.apply(&mut headers);
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let sent = self
            .http
            .post(format!("{}{path}", self.base_url))
            .headers(headers)
            .timeout(self.timeout)
            .body(body)
            .send()
            .await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(error) => return Err(CallError::Unknown(self.unknown(&error))),
        };
        let status = answer.status().as_u16();
        let headers = answer.headers().clone();
        let body = answer
            .bytes()
            .await
            .map_err(|error| CallError::Unknown(self.unknown(&error)))?;
        if status >= 500 {
            return Err(CallError::Unknown(Unknown::Unavailable(status)));
        }
        signature::verify(
            &self.key,
            &headers,
            &body,
            self.clock.now().unix_timestamp(),
            self.tolerance_s,
        )
        .map_err(CallError::Untrusted)?;
        if (200..300).contains(&status) {
            serde_json::from_slice(&body).map_err(|e| CallError::Unreadable(e.to_string()))
        } else {
            let refusal: ErrorAnswer =
                serde_json::from_slice(&body).map_err(|e| CallError::Unreadable(e.to_string()))?;
            Err(CallError::Refused {
                status,
                code: refusal.code,
                message: refusal.message,
            })
        }
    }

    fn unknown(&self, error: &reqwest::Error) -> Unknown {
        if error.is_timeout() {
            Unknown::Timeout(self.timeout)
        } else {
            // Without the URL: it is ours and adds nothing.
            Unknown::Connection(error.without_url_string())
        }
    }
}

trait WithoutUrl {
    fn without_url_string(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_string(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// A signed answer about another order says nothing about this one.
fn same_order(out_trade_no: &str, answer: TradeAnswer) -> Result<TradeAnswer, CallError> {
    if answer.out_trade_no != out_trade_no {
        return Err(CallError::Unreadable(format!(
            "an answer for order {} to a request for {out_trade_no}",
            answer.out_trade_no
        )));
    }
    Ok(answer)
}

fn order(out_trade_no: &str) -> OrderRequest {
    OrderRequest {
        out_trade_no: out_trade_no.to_owned(),
    }
}

/// Why a notification was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    #[error("notification signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("notification unreadable: {0}")]
    Unreadable(String),
}

/// A notification whose signature and timestamp hold. The receiver still
/// has to refuse a replay: its store records `verified.nonce` and
/// `notification.notify_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNotification {
    pub notification: Notification,
    pub verified: Verified,
}

/// Checks a notification the platform `POST`ed: its headers and raw body,
/// received at `now` (unix seconds). The body is read only once the
/// signature holds.
pub fn verify_notification(
    key: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance_s: u64,
) -> Result<VerifiedNotification, NotificationError> {
    let verified = signature::verify(key, headers, body, now, tolerance_s)?;
    let notification =
        serde_json::from_slice(body).map_err(|e| NotificationError::Unreadable(e.to_string()))?;
    Ok(VerifiedNotification {
        notification,
        verified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{NotifyEvent, TradeState};
    use switch_core::Currency;

    fn notification_body() -> Vec<u8> {
        serde_json::to_vec(&Notification {
            notify_id: "n1".into(),
            event: NotifyEvent::TransactionSuccess,
            out_trade_no: "T1".into(),
            transaction_id: "42".into(),
            trade_state: TradeState::Success,
            amount: 1_000,
            currency: Currency::parse("EUR").expect("EUR"),
            paid_at_ms: 1,
        })
        .expect("serializes")
    }

    #[test]
    fn a_signed_notification_is_read_and_a_forged_one_is_not() {
        let body = notification_body();
        let mut headers = HeaderMap::new();
        signature::sign(b"k", 100, "nonce-1", &body).apply(&mut headers);
        let verified = verify_notification(b"k", &headers, &body, 100, 300).expect("verifies");
        assert_eq!(verified.notification.notify_id, "n1");
        assert_eq!(verified.verified.nonce, "nonce-1");
        assert_eq!(
            verify_notification(b"other", &headers, &body, 100, 300),
            Err(NotificationError::Signature(SignatureError::Mismatch))
        );
        let mut forged = body.clone();
        forged.extend_from_slice(b" ");
        assert!(verify_notification(b"k", &headers, &forged, 100, 300).is_err());
    }

    #[test]
    fn a_signed_notification_that_is_not_one_is_unreadable() {
        let body = br#"{"notify_id":"n1"}"#;
        let mut headers = HeaderMap::new();
        signature::sign(b"k", 100, "nonce-1", body).apply(&mut headers);
        assert!(matches!(
            verify_notification(b"k", &headers, body, 100, 300),
            Err(NotificationError::Unreadable(_))
        ));
    }

    #[test]
    fn only_a_signed_refusal_is_known_to_have_changed_nothing() {
        let refused = CallError::Refused {
            status: 409,
            code: ErrorCode::OrderPaid,
            message: String::new(),
        };
        assert!(!refused.outcome_unknown());
        assert_eq!(refused.refusal(), Some(ErrorCode::OrderPaid));
        for unknown in [
            CallError::Unknown(Unknown::Timeout(Duration::from_secs(1))),
            CallError::Unknown(Unknown::Connection("refused".into())),
            CallError::Unknown(Unknown::Unavailable(503)),
            CallError::Untrusted(SignatureError::Mismatch),
            CallError::Unreadable("eof".into()),
        ] {
            assert!(unknown.outcome_unknown(), "{unknown}");
            assert_eq!(unknown.refusal(), None);
        }
    }
}
