//! End-to-end tests of the QR platform simulator: an in-process server on
//! `127.0.0.1:0` over real HTTPS (the dev PKI), driven by the acquirer's
//! client from `qr-platform`, notifying a local hyper receiver; the
//! database ledger against the real PostgreSQL.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use qr_platform::{
    CallError, ClientConfig, CreateOrderRequest, ErrorCode, PayRequest, QrClient, RefundRequest,
    TradeState, Unknown, verify_notification,
};
use qr_simulator::faults::{FaultPlan, RaceWinner};
use qr_simulator::ledger::NotifyStatus;
use qr_simulator::{LedgerStore, QrSimulatorConfig, Simulator};
use switch_core::{Currency, SystemClock};
use switch_platform::config::Secret;
use switch_platform::db::DatabaseConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const KEY: &str = "test-acquirer-key-0123456789";

/// The dev PKI written once per test process.
fn certs() -> &'static (PathBuf, String) {
    static CERTS: std::sync::OnceLock<(PathBuf, String)> = std::sync::OnceLock::new();
    CERTS.get_or_init(|| {
        let pki = dev_certs::DevPki::generate().expect("a dev PKI");
        let dir = std::env::temp_dir().join(format!(
            "qr-simulator-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        pki.write_dev_layout(&dir, &[]).expect("written");
        (dir, pki.ca_cert_pem().to_owned())
    })
}

fn config() -> QrSimulatorConfig {
    let (dir, _) = certs();
    QrSimulatorConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        cert_path: dir.join("server.pem"),
        key_path: dir.join("server.key"),
        key: Secret::new(KEY),
        confirm_delay_ms: 200,
        late_delay_ms: 600,
        time_scale: 100,
        ..QrSimulatorConfig::default()
    }
}

fn eur() -> Currency {
    Currency::parse("EUR").expect("EUR")
}

/// A running simulator and an acquirer's client for it.
struct Harness {
    simulator: Simulator,
    address: SocketAddr,
    client: QrClient,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), switch_platform::service::ServeError>>,
}

impl Harness {
    async fn start(config: QrSimulatorConfig) -> Harness {
        Self::start_with(config, &DatabaseConfig::default()).await
    }

    async fn start_with(config: QrSimulatorConfig, database: &DatabaseConfig) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let simulator = Simulator::open(&config, database).await.expect("opens");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(simulator.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        Harness {
            client: client(address, KEY, Duration::from_secs(5)),
            simulator,
            address,
            stop: Some(stop),
            server,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.server)
            .await
            .expect("joins")
            .expect("stops cleanly");
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.address.port())
    }

    async fn pay(
        &self,
        out_trade_no: &str,
        amount: i64,
    ) -> Result<qr_platform::TradeAnswer, CallError> {
        self.client.pay(&pay_request(out_trade_no, amount)).await
    }

    async fn entry(&self, out_trade_no: &str) -> qr_simulator::ledger::LedgerEntry {
        self.simulator
            .entry(out_trade_no)
            .await
            .expect("ledger")
            .expect("the order is in the ledger")
    }
}

fn client(address: SocketAddr, key: &str, timeout: Duration) -> QrClient {
    QrClient::new(
        &ClientConfig {
            base_url: format!("https://127.0.0.1:{}", address.port()),
            ca_pem: Some(certs().1.clone().into_bytes()),
            key: key.as_bytes().to_vec(),
            timeout,
            connect_timeout: Duration::from_secs(2),
            tolerance_s: 300,
        },
        SystemClock::shared(),
    )
    .expect("a client")
}

fn pay_request(out_trade_no: &str, amount: i64) -> PayRequest {
    PayRequest {
        out_trade_no: out_trade_no.into(),
        auth_code: "134567890123456789".into(),
        amount,
        currency: eur(),
        description: None,
    }
}

/// Polls `condition` until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

/// A local notification receiver: answers the scripted statuses in turn,
/// then 200.
#[derive(Clone)]
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Vec<u16>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let receiver = Receiver {
            url: format!(
                "http://{}/qr/notify",
                listener.local_addr().expect("address")
            ),
            received: Arc::default(),
            script: Arc::new(Mutex::new(script.iter().rev().copied().collect())),
        };
        let shared = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let shared = shared.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                shared.received.lock().unwrap().push(Received {
                                    at: Instant::now(),
                                    headers: parts.headers,
                                    body,
                                });
                                let status = shared.script.lock().unwrap().pop().unwrap_or(200);
                                let mut answer =
                                    http::Response::new(Full::new(Bytes::from_static(b"{}")));
                                *answer.status_mut() =
                                    http::StatusCode::from_u16(status).expect("status");
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
        receiver
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn now_s() -> i64 {
    use switch_core::Clock;
    SystemClock.now().unix_timestamp()
}

#[tokio::test]
async fn a_payment_follows_the_shoppers_rule_and_a_repeat_is_the_same_order() {
    let harness = Harness::start(config()).await;
    let paid = harness.pay("T-1000", 1_000).await.expect("answered");
    assert_eq!(paid.trade_state, TradeState::Success);
    assert!(paid.paid_at_ms.is_some());
    assert_eq!(
        (paid.amount, paid.currency, paid.code_url.as_deref()),
        (1_000, eur(), None)
    );
    let failed = harness.pay("T-1005", 1_005).await.expect("answered");
    assert_eq!(failed.trade_state, TradeState::PayError);
    let waiting = harness.pay("T-1002", 1_002).await.expect("answered");
    assert_eq!(waiting.trade_state, TradeState::UserPaying);

    let again = harness.pay("T-1000", 1_000).await.expect("answered");
    assert_eq!(again, paid, "the same out_trade_no is the same order");
    let other = harness.pay("T-1000", 2_000).await.unwrap_err();
    assert_eq!(other.refusal(), Some(ErrorCode::OutTradeNoUsed), "{other}");
    let as_order = harness
        .client
        .create_order(&CreateOrderRequest {
            out_trade_no: "T-1000".into(),
            amount: 1_000,
            currency: eur(),
            description: None,
        })
        .await
        .unwrap_err();
    assert_eq!(as_order.refusal(), Some(ErrorCode::OutTradeNoUsed));

    let entry = harness.entry("T-1000").await;
    assert_eq!((entry.charged, entry.refunded), (1_000, 0));
    assert_eq!(harness.entry("T-1005").await.charged, 0);
    let totals = harness.simulator.totals().await.expect("totals");
    assert_eq!(totals.orders, 3);
    assert_eq!(totals.charged.get("EUR"), Some(&1_000));
    harness.stop().await;
}

#[tokio::test]
async fn a_shopper_who_confirms_later_is_userpaying_until_then_and_is_notified() {
    let receiver = Receiver::start(&[]).await;
    let harness = Harness::start(QrSimulatorConfig {
        notify_url: Some(receiver.url.clone()),
        ..config()
    })
    .await;
    let started = Instant::now();
    let answer = harness.pay("T-1001", 1_001).await.expect("answered");
    assert_eq!(answer.trade_state, TradeState::UserPaying);
    let early = harness.client.query("T-1001").await.expect("answered");
    if started.elapsed() < Duration::from_millis(150) {
        assert_eq!(early.trade_state, TradeState::UserPaying);
    }
    eventually(Duration::from_secs(5), "the shopper confirms", || async {
        harness
            .client
            .query("T-1001")
            .await
            .expect("answered")
            .trade_state
            == TradeState::Success
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "not before the confirm delay"
    );
    eventually(
        Duration::from_secs(5),
        "the notification arrives",
        || async { !receiver.received().is_empty() },
    )
    .await;
    let got = &receiver.received()[0];
    let verified = verify_notification(KEY.as_bytes(), &got.headers, &got.body, now_s(), 300)
        .expect("a signed notification");
    assert_eq!(verified.notification.out_trade_no, "T-1001");
    assert_eq!(verified.notification.trade_state, TradeState::Success);
    assert_eq!(verified.notification.transaction_id, answer.transaction_id);
    harness.stop().await;
}

#[tokio::test]
async fn a_merchant_presented_order_is_paid_when_the_shopper_scans_it() {
    let harness = Harness::start(config()).await;
    let order = harness
        .client
        .create_order(&CreateOrderRequest {
            out_trade_no: "O-1".into(),
            amount: 2_500,
            currency: eur(),
            description: Some("coffee".into()),
        })
        .await
        .expect("created");
    assert_eq!(order.trade_state, TradeState::NotPay);
    assert_eq!(
        order.code_url.as_deref(),
        Some(format!("qr://sim/{}", order.transaction_id).as_str())
    );
    assert_eq!(
        harness
            .client
            .query("O-1")
            .await
            .expect("answered")
            .trade_state,
        TradeState::NotPay
    );
    // The shopper scans through the HTTPS control endpoint.
    let control = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(certs().1.as_bytes()).expect("ca"))
        .build()
        .expect("client");
    let scanned = control
        .post(harness.url("/control/scan"))
        .body(r#"{"out_trade_no":"O-1"}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(scanned.status(), 200);
    assert_eq!(
        harness
            .client
            .query("O-1")
            .await
            .expect("answered")
            .trade_state,
        TradeState::Success
    );
    let ledger = control
        .get(harness.url("/control/ledger/O-1"))
        .send()
        .await
        .expect("answered")
        .bytes()
        .await
        .expect("body");
    let ledger: serde_json::Value = serde_json::from_slice(&ledger).expect("json");
    assert_eq!(ledger["charged"], 2_500);
    assert_eq!(ledger["trade_state"], "SUCCESS");
    let unknown = control
        .get(harness.url("/control/ledger/O-404"))
        .send()
        .await
        .expect("answered");
    assert_eq!(unknown.status(), 404);
    harness.stop().await;
}

#[tokio::test]
async fn close_closes_only_unpaid_orders_and_cancel_refunds_paid_ones() {
    let harness = Harness::start(config()).await;
    let client = &harness.client;
    harness.pay("C-unpaid", 1_002).await.expect("answered");
    let closed = client.close("C-unpaid").await.expect("closed");
    assert_eq!(closed.trade_state, TradeState::Closed);
    assert_eq!(client.close("C-unpaid").await.expect("again"), closed);
    let refused = client
        .refund(&RefundRequest {
            out_trade_no: "C-unpaid".into(),
            out_refund_no: "R1".into(),
            refund_amount: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.refusal(), Some(ErrorCode::OrderClosed));

    harness.pay("C-paid", 1_000).await.expect("answered");
    let paid = client.close("C-paid").await.unwrap_err();
    assert_eq!(paid.refusal(), Some(ErrorCode::OrderPaid));
    assert!(!paid.outcome_unknown());
    assert_eq!(
        harness.entry("C-paid").await.trade_state,
        TradeState::Success
    );
    let reversed = client.cancel("C-paid").await.expect("cancelled");
    assert_eq!(
        (reversed.trade_state, reversed.refunded_amount),
        (TradeState::Revoked, 1_000)
    );
    assert_eq!(client.cancel("C-paid").await.expect("again"), reversed);
    let entry = harness.entry("C-paid").await;
    assert_eq!((entry.charged, entry.refunded), (1_000, 1_000));

    harness.pay("C-waiting", 1_002).await.expect("answered");
    let revoked = client.cancel("C-waiting").await.expect("cancelled");
    assert_eq!(
        (revoked.trade_state, revoked.refunded_amount),
        (TradeState::Revoked, 0)
    );
    let missing = client.cancel("C-never").await.unwrap_err();
    assert_eq!(missing.refusal(), Some(ErrorCode::OrderNotExist));
    let missing = client.query("C-never").await.unwrap_err();
    assert_eq!(missing.refusal(), Some(ErrorCode::OrderNotExist));
    harness.stop().await;
}

#[tokio::test]
async fn refunds_are_partial_or_full_never_more_and_idempotent_by_out_refund_no() {
    let harness = Harness::start(config()).await;
    let client = &harness.client;
    harness.pay("R-1", 1_000).await.expect("paid");
    let refund = |no: &str, amount| RefundRequest {
        out_trade_no: "R-1".into(),
        out_refund_no: no.into(),
        refund_amount: amount,
    };
    let first = client.refund(&refund("RF-1", 400)).await.expect("refunded");
    assert_eq!(
        (first.refunded_total, first.trade_state),
        (400, TradeState::Refund)
    );
    assert_eq!(
        client.refund(&refund("RF-1", 400)).await.expect("again"),
        first
    );
    let changed = client.refund(&refund("RF-1", 500)).await.unwrap_err();
    assert_eq!(changed.refusal(), Some(ErrorCode::RefundNoUsed));
    let too_much = client.refund(&refund("RF-2", 601)).await.unwrap_err();
    assert_eq!(too_much.refusal(), Some(ErrorCode::RefundExceeded));
    let rest = client.refund(&refund("RF-2", 600)).await.expect("refunded");
    assert_eq!(rest.refunded_total, 1_000);
    assert_ne!(rest.refund_id, first.refund_id);
    let query = client.query("R-1").await.expect("answered");
    assert_eq!(
        (query.trade_state, query.refunded_amount),
        (TradeState::Refund, 1_000)
    );

    harness.pay("R-unpaid", 1_002).await.expect("answered");
    let unpaid = client
        .refund(&RefundRequest {
            out_trade_no: "R-unpaid".into(),
            out_refund_no: "RF-1".into(),
            refund_amount: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(unpaid.refusal(), Some(ErrorCode::OrderNotPaid));
    let totals = harness.simulator.totals().await.expect("totals");
    assert_eq!(
        (totals.charged.get("EUR"), totals.refunded.get("EUR")),
        (Some(&1_000), Some(&1_000))
    );
    harness.stop().await;
}

#[tokio::test]
async fn a_notification_is_repeated_on_the_schedule_until_answered() {
    let receiver = Receiver::start(&[500, 500]).await;
    let harness = Harness::start(QrSimulatorConfig {
        notify_url: Some(receiver.url.clone()),
        // 15 s, 15 s, … become 150 ms, 150 ms, …
        time_scale: 100,
        ..config()
    })
    .await;
    harness.pay("N-1", 1_000).await.expect("paid");
    eventually(Duration::from_secs(5), "three attempts", || async {
        receiver.received().len() >= 3
    })
    .await;
    eventually(
        Duration::from_secs(2),
        "the delivery is recorded",
        || async {
            let records = harness
                .simulator
                .notifications("N-1")
                .await
                .expect("ledger");
            records.len() == 1 && records[0].status == NotifyStatus::Delivered
        },
    )
    .await;
    let records = harness
        .simulator
        .notifications("N-1")
        .await
        .expect("ledger");
    assert_eq!(records[0].attempts, 3);
    let got = receiver.received();
    assert_eq!(got.len(), 3, "no attempt after the 200");
    for pair in got.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(150),
            "retried after {gap:?}, before its 150 ms"
        );
        assert!(gap < Duration::from_millis(1_500), "retried after {gap:?}");
    }
    let mut nonces = std::collections::HashSet::new();
    for attempt in &got {
        assert_eq!(attempt.body, got[0].body, "the same notification each time");
        let verified = verify_notification(
            KEY.as_bytes(),
            &attempt.headers,
            &attempt.body,
            now_s(),
            300,
        )
        .expect("signed");
        assert!(
            nonces.insert(verified.verified.nonce),
            "a fresh nonce per attempt"
        );
    }
    harness.stop().await;
}

#[tokio::test]
async fn notifications_can_be_duplicated_or_lost_and_a_query_still_finds_the_payment() {
    let receiver = Receiver::start(&[]).await;
    let harness = Harness::start(QrSimulatorConfig {
        notify_url: Some(receiver.url.clone()),
        ..config()
    })
    .await;
    harness.simulator.faults().set(FaultPlan {
        duplicate_notifications: true,
        ..FaultPlan::default()
    });
    harness.pay("D-1", 1_000).await.expect("paid");
    eventually(Duration::from_secs(5), "two deliveries", || async {
        receiver.received().len() >= 2
    })
    .await;
    let got = receiver.received();
    let id = |r: &Received| {
        verify_notification(KEY.as_bytes(), &r.headers, &r.body, now_s(), 300)
            .expect("signed")
            .notification
            .notify_id
    };
    assert_eq!(id(&got[0]), id(&got[1]), "one notification, sent twice");

    harness.simulator.faults().set(FaultPlan {
        lose_notifications: true,
        ..FaultPlan::default()
    });
    harness.pay("L-1", 1_000).await.expect("paid");
    eventually(
        Duration::from_secs(5),
        "the notification is lost",
        || async {
            let records = harness
                .simulator
                .notifications("L-1")
                .await
                .expect("ledger");
            records
                .first()
                .is_some_and(|r| r.status == NotifyStatus::Lost)
        },
    )
    .await;
    assert_eq!(receiver.received().len(), 2, "nothing sent for L-1");
    assert_eq!(
        harness
            .client
            .query("L-1")
            .await
            .expect("answered")
            .trade_state,
        TradeState::Success
    );
    harness.stop().await;
}

#[tokio::test]
async fn forged_stale_and_replayed_requests_are_refused_and_change_nothing() {
    let harness = Harness::start(config()).await;
    let raw = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(certs().1.as_bytes()).expect("ca"))
        .build()
        .expect("client");
    let body = serde_json::to_vec(&pay_request("F-1", 1_000)).expect("json");
    let send = |signed: qr_platform::Signed, body: Vec<u8>| {
        let raw = raw.clone();
        let url = harness.url("/v1/pay");
        async move {
            let mut headers = http::HeaderMap::new();
            signed.apply(&mut headers);
            let answer = raw
                .post(url)
                .headers(headers)
                .body(body)
                .send()
                .await
                .expect("answered");
            let status = answer.status().as_u16();
            let headers = answer.headers().clone();
            let body = answer.bytes().await.expect("body");
            // Refusals are signed too.
            qr_platform::signature::verify(KEY.as_bytes(), &headers, &body, now_s(), 300)
                .expect("a signed refusal");
            let refusal: qr_platform::ErrorAnswer = serde_json::from_slice(&body).expect("json");
            (status, refusal.code)
        }
    };
    let forged = qr_platform::signature::sign_fresh(b"not the key", now_s(), &body);
    assert_eq!(
        send(forged, body.clone()).await,
        (401, ErrorCode::SignError)
    );
    let stale = qr_platform::signature::sign_fresh(KEY.as_bytes(), now_s() - 301, &body);
    assert_eq!(send(stale, body.clone()).await, (401, ErrorCode::SignError));
    let good = qr_platform::signature::sign_fresh(KEY.as_bytes(), now_s(), &body);
    let tampered = serde_json::to_vec(&pay_request("F-1", 9_000)).expect("json");
    assert_eq!(
        send(good.clone(), tampered).await,
        (401, ErrorCode::SignError)
    );
    assert!(
        harness
            .simulator
            .entry("F-1")
            .await
            .expect("ledger")
            .is_none()
    );

    let raw_pay = |signed: qr_platform::Signed| {
        let raw = raw.clone();
        let url = harness.url("/v1/pay");
        let body = body.clone();
        async move {
            let mut headers = http::HeaderMap::new();
            signed.apply(&mut headers);
            raw.post(url)
                .headers(headers)
                .body(body)
                .send()
                .await
                .expect("answered")
                .status()
        }
    };
    let once = qr_platform::signature::sign_fresh(KEY.as_bytes(), now_s(), &body);
    assert_eq!(raw_pay(once.clone()).await, 200);
    assert_eq!(send(once, body.clone()).await, (401, ErrorCode::Replayed));

    // A client with another key: its request is refused, and the refusal
    // (signed with the platform's key) is not trusted by it either.
    let impostor = client(
        harness.address,
        "an impostor's key 0123",
        Duration::from_secs(5),
    );
    let error = impostor.pay(&pay_request("F-2", 1_000)).await.unwrap_err();
    assert!(matches!(error, CallError::Untrusted(_)), "{error}");
    assert!(error.outcome_unknown());
    assert!(
        harness
            .simulator
            .entry("F-2")
            .await
            .expect("ledger")
            .is_none()
    );
    harness.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_field_and_record_nothing() {
    let harness = Harness::start(config()).await;
    for (request, field) in [
        (
            PayRequest {
                auth_code: String::new(),
                ..pay_request("B-1", 1_000)
            },
            "auth_code",
        ),
        (
            PayRequest {
                auth_code: "1345678901234567xx".into(),
                ..pay_request("B-1", 1_000)
            },
            "auth_code",
        ),
        (pay_request("B-1", 0), "amount"),
        (pay_request("B 1", 1_000), "out_trade_no"),
    ] {
        let error = harness.client.pay(&request).await.unwrap_err();
        match error {
            CallError::Refused {
                status,
                code,
                message,
            } => {
                assert_eq!((status, code), (400, ErrorCode::InvalidRequest));
                assert!(message.starts_with(field), "{message}");
            }
            other => panic!("{field}: {other}"),
        }
    }
    assert_eq!(harness.simulator.totals().await.expect("totals").orders, 0);
    harness.stop().await;
}

#[tokio::test]
async fn a_timeout_an_outage_and_a_refused_connection_are_unknown_never_failed() {
    let harness = Harness::start(config()).await;
    harness.pay("U-1", 1_000).await.expect("paid");

    harness.simulator.faults().set(FaultPlan {
        query_hangs: true,
        ..FaultPlan::default()
    });
    let impatient = harness.client.with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let error = impatient.query("U-1").await.unwrap_err();
    assert!(
        matches!(error, CallError::Unknown(Unknown::Timeout(_))),
        "{error}"
    );
    assert!(error.outcome_unknown());
    assert!(started.elapsed() >= Duration::from_millis(300));

    harness.simulator.faults().set(FaultPlan {
        outage: true,
        ..FaultPlan::default()
    });
    let error = harness.client.query("U-1").await.unwrap_err();
    assert_eq!(error, CallError::Unknown(Unknown::Unavailable(503)));

    harness.simulator.faults().set(FaultPlan {
        refuse_connections: true,
        ..FaultPlan::default()
    });
    // A fresh client: a pooled connection would still be served.
    let fresh = client(harness.address, KEY, Duration::from_secs(2));
    let error = fresh.query("U-1").await.unwrap_err();
    assert!(
        matches!(error, CallError::Unknown(Unknown::Connection(_))),
        "{error}"
    );

    harness.simulator.faults().set(FaultPlan::default());
    assert_eq!(
        harness
            .client
            .query("U-1")
            .await
            .expect("answered")
            .trade_state,
        TradeState::Success
    );
    let address = harness.address;
    harness.stop().await;
    let error = client(address, KEY, Duration::from_secs(2))
        .query("U-1")
        .await
        .unwrap_err();
    assert!(
        matches!(error, CallError::Unknown(Unknown::Connection(_))),
        "{error}"
    );
}

#[tokio::test]
async fn a_payment_racing_a_close_ends_in_exactly_one_outcome() {
    let receiver = Receiver::start(&[]).await;
    let harness = Harness::start(QrSimulatorConfig {
        notify_url: Some(receiver.url.clone()),
        ..config()
    })
    .await;
    let client = &harness.client;

    // The shopper's payment lands first: the close is refused, the order
    // stays paid and is notified.
    harness.simulator.faults().set(FaultPlan {
        close_races_payment: Some(RaceWinner::Payment),
        ..FaultPlan::default()
    });
    harness.pay("X-pay", 1_002).await.expect("waiting");
    let close = client.close("X-pay").await.unwrap_err();
    assert_eq!(close.refusal(), Some(ErrorCode::OrderPaid));
    let entry = harness.entry("X-pay").await;
    assert_eq!(
        (entry.trade_state, entry.charged),
        (TradeState::Success, 1_002)
    );
    eventually(
        Duration::from_secs(5),
        "the payment is notified",
        || async { receiver.received().len() == 1 },
    )
    .await;

    // The close lands first: the payment bounces, nothing is charged.
    harness.simulator.faults().set(FaultPlan {
        close_races_payment: Some(RaceWinner::Close),
        ..FaultPlan::default()
    });
    harness.pay("X-close", 1_002).await.expect("waiting");
    let closed = client.close("X-close").await.expect("closed");
    assert_eq!(closed.trade_state, TradeState::Closed);
    let entry = harness.entry("X-close").await;
    assert_eq!((entry.charged, entry.refused_payments), (0, 1));

    // A real race: the shopper scans while the terminal closes.
    harness.simulator.faults().set(FaultPlan::default());
    for round in 0..20 {
        let no = format!("X-race-{round}");
        client
            .create_order(&CreateOrderRequest {
                out_trade_no: no.clone(),
                amount: 1_000,
                currency: eur(),
                description: None,
            })
            .await
            .expect("created");
        let (scan, close) = tokio::join!(harness.simulator.scan(&no), client.close(&no));
        let scan = scan.expect("ledger");
        let entry = harness.entry(&no).await;
        match (scan, close) {
            (Ok(paid), Err(refused)) => {
                assert_eq!(paid.trade_state, TradeState::Success);
                assert_eq!(refused.refusal(), Some(ErrorCode::OrderPaid));
                assert_eq!(
                    (entry.trade_state, entry.charged),
                    (TradeState::Success, 1_000)
                );
            }
            (Err(bounced), Ok(closed)) => {
                assert_eq!(bounced.code, ErrorCode::OrderClosed);
                assert_eq!(closed.trade_state, TradeState::Closed);
                assert_eq!((entry.trade_state, entry.charged), (TradeState::Closed, 0));
            }
            (scan, close) => panic!("two outcomes or none: {scan:?} / {close:?}"),
        }
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_late_shopper_pays_after_the_terminal_gave_up_and_is_notified_unasked() {
    let receiver = Receiver::start(&[]).await;
    let harness = Harness::start(QrSimulatorConfig {
        notify_url: Some(receiver.url.clone()),
        ..config()
    })
    .await;
    let started = Instant::now();
    assert_eq!(
        harness
            .pay("LATE-1", 1_020)
            .await
            .expect("answered")
            .trade_state,
        TradeState::UserPaying
    );
    // Nobody queries: the dispatcher pays the shopper when due.
    eventually(
        Duration::from_secs(5),
        "the late payment is notified",
        || async { !receiver.received().is_empty() },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "not before the late delay"
    );
    assert_eq!(harness.entry("LATE-1").await.charged, 1_020);
    harness.stop().await;
}

#[tokio::test]
async fn a_database_ledger_survives_a_restart_with_its_pending_notifications() {
    let database = DatabaseConfig {
        url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        schema_prefix: format!("qrs{}_{}_", std::process::id(), rand::random::<u32>()),
        ..DatabaseConfig::default()
    };
    let receiver = Receiver::start(&[500]).await;
    let config = QrSimulatorConfig {
        ledger: LedgerStore::Database,
        notify_url: Some(receiver.url.clone()),
        // The retry after the first failure is due 1.5 s later: after the
        // restart below.
        time_scale: 10,
        ..config()
    };

    let first = Harness::start_with(config.clone(), &database).await;
    let paid = first.pay("DB-1", 1_000).await.expect("paid");
    first
        .client
        .refund(&RefundRequest {
            out_trade_no: "DB-1".into(),
            out_refund_no: "RF-1".into(),
            refund_amount: 300,
        })
        .await
        .expect("refunded");
    first.pay("DB-2", 1_002).await.expect("waiting");
    eventually(
        Duration::from_secs(5),
        "the first attempt fails",
        || async {
            let records = first.simulator.notifications("DB-1").await.expect("ledger");
            records.first().is_some_and(|r| r.attempts == 1)
        },
    )
    .await;
    let pending = first.simulator.notifications("DB-1").await.expect("ledger");
    assert_eq!(pending[0].status, NotifyStatus::Pending);
    first.stop().await;
    assert_eq!(receiver.received().len(), 1);

    // A new process finds the orders, the refund and the notification.
    let second = Harness::start_with(config.clone(), &database).await;
    assert_eq!(
        second
            .pay("DB-1", 1_000)
            .await
            .expect("same order")
            .transaction_id,
        paid.transaction_id
    );
    let entry = second.entry("DB-1").await;
    assert_eq!(
        (entry.trade_state, entry.charged, entry.refunded),
        (TradeState::Refund, 1_000, 300)
    );
    assert_eq!(
        second.entry("DB-2").await.trade_state,
        TradeState::UserPaying
    );
    eventually(
        Duration::from_secs(10),
        "the retry after the restart",
        || async {
            let records = second
                .simulator
                .notifications("DB-1")
                .await
                .expect("ledger");
            records
                .first()
                .is_some_and(|r| r.status == NotifyStatus::Delivered)
        },
    )
    .await;
    let records = second
        .simulator
        .notifications("DB-1")
        .await
        .expect("ledger");
    assert_eq!(records[0].attempts, 2);
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(1_500),
        "on its schedule"
    );
    assert_eq!(got[0].body, got[1].body);
    let totals = second.simulator.totals().await.expect("totals");
    assert_eq!(totals.orders, 2);
    second.stop().await;
    switch_platform::db::drop_schema(
        &database.url,
        &database.schema_for(qr_simulator::SERVICE_NAME),
    )
    .await
    .expect("the schema is dropped");
}
