//! The acquirer's client against a scripted local platform (plain HTTP on
//! loopback): which answers it trusts, and what it makes of the others.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use qr_platform::{CallError, ClientConfig, QrClient, TradeAnswer, TradeState, Unknown};
use switch_core::{Clock, Currency, SystemClock};
use tokio::net::TcpListener;

const KEY: &[u8] = b"client-test-key-0123456789";

/// What the scripted platform answers: status, body, and the key it signs
/// with (`None`: unsigned).
#[derive(Clone)]
struct Script {
    status: u16,
    body: Vec<u8>,
    key: Option<&'static [u8]>,
    delay: Duration,
}

async fn platform(script: Script) -> (String, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let shared = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (script, shared) = (script.clone(), shared.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (script, shared) = (script.clone(), shared.clone());
                        async move {
                            shared.lock().unwrap().push(request.headers().clone());
                            tokio::time::sleep(script.delay).await;
                            let mut answer =
                                http::Response::new(Full::new(Bytes::from(script.body.clone())));
                            *answer.status_mut() =
                                http::StatusCode::from_u16(script.status).expect("status");
                            if let Some(key) = script.key {
                                qr_platform::signature::sign_fresh(
                                    key,
                                    SystemClock.now().unix_timestamp(),
                                    &script.body,
                                )
                                .apply(answer.headers_mut());
                            }
                            Ok::<_, Infallible>(answer)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (url, seen)
}

fn client(url: &str, timeout: Duration) -> QrClient {
    QrClient::new(
        &ClientConfig {
            base_url: url.to_owned(),
            ca_pem: None,
            key: KEY.to_vec(),
            timeout,
            connect_timeout: Duration::from_secs(1),
            tolerance_s: 300,
        },
        SystemClock::shared(),
    )
    .expect("client")
}

fn answer_for(out_trade_no: &str) -> Vec<u8> {
    serde_json::to_vec(&TradeAnswer {
        out_trade_no: out_trade_no.into(),
        transaction_id: "42".into(),
        trade_state: TradeState::Success,
        amount: 1_000,
        currency: Currency::parse("EUR").expect("EUR"),
        refunded_amount: 0,
        code_url: None,
        paid_at_ms: Some(1),
    })
    .expect("json")
}

fn ok(body: Vec<u8>, key: Option<&'static [u8]>) -> Script {
    Script {
        status: 200,
        body,
        key,
        delay: Duration::ZERO,
    }
}

#[tokio::test]
async fn a_signed_answer_is_read_and_every_request_is_signed_afresh() {
    let (url, seen) = platform(ok(answer_for("T1"), Some(KEY))).await;
    let client = client(&url, Duration::from_secs(2));
    let answer = client.query("T1").await.expect("answered");
    assert_eq!(answer.trade_state, TradeState::Success);
    client.query("T1").await.expect("answered");
    let seen = seen.lock().unwrap();
    let nonce = |h: &http::HeaderMap| h[qr_platform::NONCE_HEADER].to_str().unwrap().to_owned();
    assert!(seen[0].contains_key(qr_platform::SIGNATURE_HEADER));
    assert_ne!(nonce(&seen[0]), nonce(&seen[1]));
}

#[tokio::test]
async fn an_unsigned_or_wrongly_signed_answer_is_never_trusted() {
    for key in [None, Some(&b"another key"[..])] {
        let (url, _) = platform(ok(answer_for("T1"), key)).await;
        let error = client(&url, Duration::from_secs(2))
            .query("T1")
            .await
            .unwrap_err();
        assert!(matches!(error, CallError::Untrusted(_)), "{error}");
        assert!(error.outcome_unknown());
    }
}

#[tokio::test]
async fn a_signed_answer_about_another_order_or_in_another_shape_is_unreadable() {
    let (url, _) = platform(ok(answer_for("T2"), Some(KEY))).await;
    let error = client(&url, Duration::from_secs(2))
        .query("T1")
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Unreadable(_)), "{error}");
    let (url, _) = platform(ok(br#"{"trade_state":"PAID"}"#.to_vec(), Some(KEY))).await;
    let error = client(&url, Duration::from_secs(2))
        .query("T1")
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Unreadable(_)), "{error}");
    assert!(error.outcome_unknown());
}

#[tokio::test]
async fn a_5xx_a_timeout_and_no_platform_are_unknown() {
    let (url, _) = platform(Script {
        status: 502,
        body: b"bad gateway".to_vec(),
        key: None,
        delay: Duration::ZERO,
    })
    .await;
    let error = client(&url, Duration::from_secs(2))
        .query("T1")
        .await
        .unwrap_err();
    assert_eq!(error, CallError::Unknown(Unknown::Unavailable(502)));

    let (url, _) = platform(Script {
        delay: Duration::from_secs(30),
        ..ok(answer_for("T1"), Some(KEY))
    })
    .await;
    let error = client(&url, Duration::from_millis(200))
        .query("T1")
        .await
        .unwrap_err();
    assert_eq!(
        error,
        CallError::Unknown(Unknown::Timeout(Duration::from_millis(200)))
    );

    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let error = client(&url, Duration::from_secs(2))
        .query("T1")
        .await
        .unwrap_err();
    assert!(
        matches!(error, CallError::Unknown(Unknown::Connection(_))),
        "{error}"
    );
}

#[tokio::test]
async fn a_signed_refusal_is_known_and_an_unsigned_one_is_not() {
    let refusal = br#"{"code":"ORDERPAID","message":"paid"}"#.to_vec();
    let (url, _) = platform(Script {
        status: 409,
        body: refusal.clone(),
        key: Some(KEY),
        delay: Duration::ZERO,
    })
    .await;
    let error = client(&url, Duration::from_secs(2))
        .close("T1")
        .await
        .unwrap_err();
    assert_eq!(error.refusal(), Some(qr_platform::ErrorCode::OrderPaid));
    assert!(!error.outcome_unknown());
    let (url, _) = platform(Script {
        status: 409,
        body: refusal,
        key: None,
        delay: Duration::ZERO,
    })
    .await;
    let error = client(&url, Duration::from_secs(2))
        .close("T1")
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Untrusted(_)), "{error}");
}

#[test]
fn a_base_url_must_be_http_or_https() {
    let built = QrClient::new(
        &ClientConfig {
            base_url: "ftp://platform".into(),
            ca_pem: None,
            key: KEY.to_vec(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            tolerance_s: 300,
        },
        SystemClock::shared(),
    );
    assert!(built.is_err());
}
