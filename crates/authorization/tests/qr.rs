//! QR payments through the authorization service (ADR 29) on the real
//! PostgreSQL, against the QR platform simulator over real HTTPS (the dev
//! PKI), with the switch's notification receiver on HTTPS too. The broker
//! is not needed: the outbox keeps the `qr.*` events, read back here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use qr_simulator::faults::FaultPlan;
use qr_simulator::{QrSimulatorConfig, Simulator};
use sqlx::PgPool;
use switch_platform::config::Secret;
use switch_platform::db::DatabaseConfig;
use switch_platform::kafka::KafkaConfig;
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use switch_proto::v1::{self as pb, EventEnvelope, event_envelope::Payload};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

const KEY: &str = "test-acquirer-key-0123456789";
const TERMINAL: &str = "TERM0001";
const MERCHANT: &str = "MERCHANT0000001";
const CODE: &str = "134567890123456789";

fn certs() -> &'static (PathBuf, String) {
    static CERTS: std::sync::OnceLock<(PathBuf, String)> = std::sync::OnceLock::new();
    CERTS.get_or_init(|| {
        let pki = dev_certs::DevPki::generate().expect("a dev PKI");
        let dir = std::env::temp_dir().join(format!(
            "authorization-qr-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        pki.write_dev_layout(&dir, &[]).expect("written");
        std::fs::write(dir.join("ca-only.pem"), pki.ca_cert_pem()).expect("ca written");
        (dir, pki.ca_cert_pem().to_owned())
    })
}

/// How a test wants the switch and the platform to behave.
struct Setup {
    policy: &'static str,
    terminal_wait_ms: u64,
    query_interval_ms: u64,
    query_limit_ms: u64,
    retry_max_age_ms: u64,
    faults: FaultPlan,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            policy: "reverse",
            terminal_wait_ms: 800,
            query_interval_ms: 150,
            query_limit_ms: 10_000,
            retry_max_age_ms: 60_000,
            faults: FaultPlan::default(),
        }
    }
}

struct Running {
    client: AuthorizationServiceClient<Channel>,
    simulator: Simulator,
    pool: PgPool,
    notify: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    url: String,
    schema: String,
}

async fn free_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}

async fn start(setup: Setup) -> Running {
    let (dir, _) = certs();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let suffix = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let database = DatabaseConfig {
        url: url.clone(),
        schema_prefix: format!("q{suffix}_"),
        max_connections: 8,
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(authorization::SERVICE_NAME);
    let stop = CancellationToken::new();
    let notify = free_address().await;

    let simulator = Simulator::open(
        &QrSimulatorConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            cert_path: dir.join("server.pem"),
            key_path: dir.join("server.key"),
            key: Secret::new(KEY),
            notify_url: Some(format!("https://127.0.0.1:{}/qr/notify", notify.port())),
            notify_ca_path: Some(dir.join("ca-only.pem")),
            confirm_delay_ms: 300,
            late_delay_ms: 1_500,
            time_scale: 100,
            ..QrSimulatorConfig::default()
        },
        &database,
    )
    .await
    .expect("the simulator opens");
    simulator.faults().set(setup.faults);
    let platform_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let platform = platform_listener.local_addr().expect("address");
    let platform_task = tokio::spawn({
        let (simulator, stop) = (simulator.clone(), stop.clone());
        async move {
            simulator
                .serve(platform_listener, stop.cancelled_owned())
                .await
                .expect("the simulator serves");
        }
    });

    let mut qr = authorization::QrConfig {
        platform_url: format!("https://127.0.0.1:{}", platform.port()),
        ca_path: Some(dir.join("ca-only.pem")),
        key: Secret::new(KEY),
        call_timeout_ms: 2_000,
        terminal_wait_ms: setup.terminal_wait_ms,
        query_interval_ms: setup.query_interval_ms,
        query_limit_ms: setup.query_limit_ms,
        retry_initial_delay_ms: 50,
        retry_max_delay_ms: 200,
        retry_max_age_ms: setup.retry_max_age_ms,
        poll_interval_ms: 50,
        // The pruning test inserts old nonces after the worker started.
        nonce_prune_interval_ms: 50,
        notify_listen: Some(notify),
        notify_cert_path: dir.join("server.pem"),
        notify_key_path: dir.join("server.key"),
        orphan_policy: setup.policy.into(),
        ..authorization::QrConfig::default()
    };
    qr.merchant_policies.clear();
    let config = authorization::AuthorizationConfig {
        // No sale in these tests asks the issuer.
        issuer_endpoint: "http://127.0.0.1:1".into(),
        qr: Some(qr),
        ..Default::default()
    };
    let kafka = KafkaConfig {
        topic_prefix: format!("q{suffix}."),
        ..KafkaConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let authorization_task = tokio::spawn({
        let stop = stop.clone();
        async move {
            // The QR path is what is tested here; the internal hops run the
            // lab's plaintext (ADR 27; mutual TLS has tests of its own).
            authorization::serve(
                &database,
                &kafka,
                &switch_platform::internal_tls::InternalTlsConfig::plaintext_for_lab(),
                &config,
                listener,
                stop.cancelled_owned(),
            )
            .await
            .expect("authorization serves");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match AuthorizationServiceClient::connect(format!("http://{address}")).await {
            Ok(client) => break client,
            Err(error) => {
                assert!(Instant::now() < deadline, "authorization starts: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .after_connect({
            let schema = schema.clone();
            move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    sqlx::query(&format!("SET search_path TO \"{schema}\""))
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            }
        })
        .connect(&url)
        .await
        .expect("the test's pool connects");
    Running {
        client,
        simulator,
        pool,
        notify,
        stop,
        tasks: vec![platform_task, authorization_task],
        url,
        schema,
    }
}

fn today() -> String {
    "2026-12-02".into()
}

fn money(minor_units: i64) -> Option<pb::Money> {
    Some(pb::Money {
        minor_units,
        currency: "EUR".into(),
    })
}

fn pay(stan: &str, minor_units: i64) -> pb::QrPayRequest {
    pb::QrPayRequest {
        terminal_id: TERMINAL.into(),
        stan: stan.into(),
        local_date: today(),
        merchant_id: MERCHANT.into(),
        payment_code: CODE.into(),
        amount: money(minor_units),
    }
}

fn order(stan: &str, minor_units: i64) -> pb::QrOrderRequest {
    pb::QrOrderRequest {
        terminal_id: TERMINAL.into(),
        stan: stan.into(),
        local_date: today(),
        merchant_id: MERCHANT.into(),
        amount: money(minor_units),
    }
}

impl Running {
    async fn stop(self) {
        drop(self.client);
        self.pool.close().await;
        self.stop.cancel();
        for task in self.tasks {
            task.await.expect("joins");
        }
        switch_platform::db::drop_schema(&self.url, &self.schema)
            .await
            .expect("schema dropped");
    }

    async fn status(&mut self, order_id: &str) -> pb::QrPaymentRecord {
        self.client
            .qr_status(pb::QrStatusRequest {
                terminal_id: TERMINAL.into(),
                order_id: order_id.into(),
                ..Default::default()
            })
            .await
            .expect("status")
            .into_inner()
    }

    /// Polls the payment's state until it is `state` (or the deadline).
    async fn wait_for(&mut self, order_id: &str, state: &str, seconds: u64) -> pb::QrPaymentRecord {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let record = self.status(order_id).await;
            if record.state == state {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "{order_id} is {} after {seconds} s, not {state}",
                record.state
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The `qr.*` events of a payment in the outbox, in order.
    async fn events(&self, transaction_id: &str) -> Vec<EventEnvelope> {
        let payloads: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT payload FROM outbox WHERE message_key = $1 ORDER BY id")
                .bind(transaction_id)
                .fetch_all(&self.pool)
                .await
                .expect("outbox");
        payloads
            .iter()
            .map(|p| prost::Message::decode(p.as_slice()).expect("an envelope"))
            .collect()
    }

    async fn event_types(&self, transaction_id: &str) -> Vec<String> {
        self.events(transaction_id)
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    /// (to_state, command) of every audit row of the payment.
    async fn transitions(&self, transaction_id: &str) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT to_state, command FROM qr_transitions \
             WHERE transaction_id = $1::uuid ORDER BY id",
        )
        .bind(transaction_id)
        .fetch_all(&self.pool)
        .await
        .expect("transitions")
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    async fn entry(&self, order_id: &str) -> qr_simulator::ledger::LedgerEntry {
        self.simulator
            .entry(order_id)
            .await
            .expect("ledger")
            .expect("the platform has the order")
    }

    /// POSTs `body` to the switch's receiver, signed with `key` and `nonce`.
    async fn post_notification(&self, key: &str, nonce: &str, body: &[u8]) -> u16 {
        let now = switch_core::Clock::now(&switch_core::SystemClock).unix_timestamp();
        self.post_notification_at(key, nonce, body, now).await
    }

    /// As [`Running::post_notification`], signed as of `timestamp`.
    async fn post_notification_at(
        &self,
        key: &str,
        nonce: &str,
        body: &[u8],
        timestamp: i64,
    ) -> u16 {
        let (_, ca) = certs();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca"))
            .build()
            .expect("client");
        let mut headers = http::HeaderMap::new();
        qr_platform::signature::sign(key.as_bytes(), timestamp, nonce, body).apply(&mut headers);
        client
            .post(format!(
                "https://127.0.0.1:{}/qr/notify",
                self.notify.port()
            ))
            .headers(headers)
            .body(body.to_vec())
            .send()
            .await
            .expect("the receiver answers")
            .status()
            .as_u16()
    }
}

#[tokio::test]
async fn immediate_success_is_approved_a_retry_gets_the_original_and_bad_input_writes_nothing() {
    let mut running = start(Setup {
        terminal_wait_ms: 10_000,
        ..Setup::default()
    })
    .await;

    // Bad input: refused naming the field, nothing journaled.
    let refusals: [(pb::QrPayRequest, &str); 5] = [
        (
            pb::QrPayRequest {
                payment_code: String::new(),
                ..pay("000001", 1_000)
            },
            "payment_code",
        ),
        (
            pb::QrPayRequest {
                payment_code: "12ab".into(),
                ..pay("000001", 1_000)
            },
            "payment_code",
        ),
        (pay("000001", 0), "amount"),
        (
            pb::QrPayRequest {
                amount: Some(pb::Money {
                    minor_units: 1_000,
                    currency: "XQQ".into(),
                }),
                ..pay("000001", 1_000)
            },
            "currency",
        ),
        (
            pb::QrPayRequest {
                stan: "12".into(),
                ..pay("000001", 1_000)
            },
            "stan",
        ),
    ];
    for (request, field) in refusals {
        let status = running.client.qr_pay(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
        assert!(!status.message().contains(CODE), "the code is never echoed");
    }
    assert_eq!(running.count("qr_payments").await, 0);

    let first = running
        .client
        .qr_pay(pay("000001", 1_000))
        .await
        .expect("pays")
        .into_inner();
    let payment = first.payment.expect("payment");
    assert!(!first.duplicate);
    assert_eq!(payment.state, "paid");
    assert_eq!(payment.answer, "approved");
    assert!(!payment.platform_txn_id.is_empty());

    // The terminal retries: the original answer, the platform not asked again.
    let retry = running
        .client
        .qr_pay(pay("000001", 1_000))
        .await
        .expect("a retry is answered")
        .into_inner();
    assert!(retry.duplicate);
    let again = retry.payment.expect("payment");
    assert_eq!(again.order_id, payment.order_id);
    assert_eq!(again.transaction_id, payment.transaction_id);
    assert_eq!(again.platform_txn_id, payment.platform_txn_id);
    // A changed retry is refused.
    let changed = running
        .client
        .qr_pay(pay("000001", 1_100))
        .await
        .expect_err("a changed amount");
    assert_eq!(changed.code(), Code::AlreadyExists);
    assert!(
        changed.message().contains("amount"),
        "{}",
        changed.message()
    );
    assert_eq!(running.count("qr_payments").await, 1);

    // Another terminal may not see it.
    let foreign = running
        .client
        .qr_status(pb::QrStatusRequest {
            terminal_id: "TERM0002".into(),
            order_id: payment.order_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("another terminal's order");
    assert_eq!(foreign.code(), Code::InvalidArgument);
    assert!(
        foreign.message().contains("order_id"),
        "{}",
        foreign.message()
    );

    // The terminal printed: confirmed by its word, no webhook owed.
    let acknowledged = running
        .client
        .qr_acknowledge(pb::QrAcknowledgeRequest {
            terminal_id: TERMINAL.into(),
            order_id: payment.order_id.clone(),
        })
        .await
        .expect("acknowledged")
        .into_inner();
    assert_eq!(acknowledged.state, "confirmed");
    let entry = running.entry(&payment.order_id).await;
    assert_eq!((entry.charged, entry.refunded), (1_000, 0));
    assert_eq!(
        running.event_types(&payment.transaction_id).await,
        ["qr.paid", "qr.confirmed"]
    );
    // The payment code is nowhere in the journal or the outbox.
    let dump: String =
        sqlx::query_scalar("SELECT coalesce(string_agg(p::text, ' '), '') FROM qr_payments p")
            .fetch_one(&running.pool)
            .await
            .expect("dump");
    assert!(!dump.contains(CODE));
    for event in running.events(&payment.transaction_id).await {
        let bytes = prost::Message::encode_to_vec(&event);
        assert!(!String::from_utf8_lossy(&bytes).contains(CODE));
    }
    running.stop().await;
}

/// S3: the shopper confirms (amount …20: 1.5 s after the order) when the
/// terminal stopped waiting (0.8 s).
async fn late_payment(policy: &'static str) -> (Running, pb::QrPaymentRecord) {
    let mut running = start(Setup {
        policy,
        ..Setup::default()
    })
    .await;
    let answered = running
        .client
        .qr_pay(pay("000002", 1_020))
        .await
        .expect("pay answered")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(answered.answer, "in_progress", "{answered:?}");
    let record = running.status(&answered.order_id).await;
    (running, record)
}

fn qr_event(event: &EventEnvelope) -> &pb::QrPaymentEvent {
    match &event.payload {
        Some(Payload::QrPayment(qr)) => qr,
        other => panic!("not a QR event: {other:?}"),
    }
}

#[tokio::test]
async fn s3_a_late_payment_is_confirmed_and_reprinted_under_a_confirm_policy() {
    let (mut running, payment) = late_payment("confirm").await;
    let confirmed = running.wait_for(&payment.order_id, "confirmed", 15).await;
    assert!(!confirmed.platform_txn_id.is_empty());
    let entry = running.entry(&payment.order_id).await;
    assert_eq!((entry.charged, entry.refunded), (1_020, 0));
    let events = running.events(&payment.transaction_id).await;
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["qr.paid", "qr.confirmed"]);
    let notice = qr_event(&events[1]);
    assert_eq!(
        (notice.webhook.as_str(), notice.push.as_str()),
        ("payment.confirmed", "reprint_receipt")
    );
    running.stop().await;
}

#[tokio::test]
async fn s3_a_late_payment_is_refunded_at_the_platform_under_a_reverse_policy() {
    let (mut running, payment) = late_payment("reverse").await;
    let refunded = running.wait_for(&payment.order_id, "refunded", 15).await;
    assert_eq!(refunded.answer, "void");
    // The platform's ledger agrees: nothing left charged.
    let entry = running.entry(&payment.order_id).await;
    assert_eq!((entry.charged, entry.refunded), (1_020, 1_020), "{entry:?}");
    let events = running.events(&payment.transaction_id).await;
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["qr.paid", "qr.cancel_requested", "qr.refunded"]);
    let notice = qr_event(&events[2]);
    assert_eq!(
        (notice.webhook.as_str(), notice.push.as_str()),
        ("payment.reversed", "void_receipt")
    );
    let acknowledged: String =
        sqlx::query_scalar("SELECT status FROM qr_calls WHERE transaction_id = $1::uuid")
            .bind(&payment.transaction_id)
            .fetch_one(&running.pool)
            .await
            .expect("the owed refund");
    assert_eq!(acknowledged, "acknowledged");
    running.stop().await;
}

#[tokio::test]
async fn a_lost_notification_is_found_by_the_switchs_own_query() {
    let mut running = start(Setup {
        terminal_wait_ms: 5_000,
        faults: FaultPlan {
            lose_notifications: true,
            ..FaultPlan::default()
        },
        ..Setup::default()
    })
    .await;
    let created = running
        .client
        .qr_order(order("000003", 1_000))
        .await
        .expect("order")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(created.answer, "show_code");
    assert!(!created.code.is_empty());
    running
        .simulator
        .scan(&created.order_id)
        .await
        .expect("ledger")
        .expect("the shopper pays");
    let paid = running.wait_for(&created.order_id, "paid", 10).await;
    assert_eq!(paid.answer, "approved");
    let transitions = running.transitions(&created.transaction_id).await;
    assert_eq!(
        transitions
            .last()
            .map(|(to, command)| (to.as_str(), command.as_str())),
        Some(("paid", "query_answered")),
        "{transitions:?}"
    );
    assert_eq!(running.count("qr_notification_nonces").await, 0);
    running.stop().await;
}

#[tokio::test]
async fn a_duplicated_notification_is_applied_once() {
    let mut running = start(Setup {
        terminal_wait_ms: 10_000,
        // No query before the notification: it is what finds the payment.
        query_interval_ms: 60_000,
        query_limit_ms: 120_000,
        faults: FaultPlan {
            duplicate_notifications: true,
            ..FaultPlan::default()
        },
        ..Setup::default()
    })
    .await;
    let created = running
        .client
        .qr_order(order("000004", 1_000))
        .await
        .expect("order")
        .into_inner()
        .payment
        .expect("payment");
    running
        .simulator
        .scan(&created.order_id)
        .await
        .expect("ledger")
        .expect("the shopper pays");
    running.wait_for(&created.order_id, "paid", 10).await;
    // Both copies are answered (the platform stops): wait for its record.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let notifications = running
            .simulator
            .notifications(&created.order_id)
            .await
            .expect("ledger");
        if notifications
            .iter()
            .any(|n| n.status == qr_simulator::ledger::NotifyStatus::Delivered)
        {
            break;
        }
        assert!(Instant::now() < deadline, "delivered: {notifications:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let paid_rows: Vec<_> = running
        .transitions(&created.transaction_id)
        .await
        .into_iter()
        .filter(|(to, _)| to == "paid")
        .collect();
    assert_eq!(
        paid_rows,
        [("paid".to_owned(), "notification_received".to_owned())]
    );
    assert_eq!(
        running.event_types(&created.transaction_id).await,
        ["qr.paid"]
    );
    running.stop().await;
}

#[tokio::test]
async fn a_forged_or_replayed_notification_is_refused_and_changes_nothing() {
    let mut running = start(Setup {
        terminal_wait_ms: 10_000,
        query_interval_ms: 60_000,
        query_limit_ms: 120_000,
        faults: FaultPlan {
            lose_notifications: true,
            ..FaultPlan::default()
        },
        ..Setup::default()
    })
    .await;
    let created = running
        .client
        .qr_order(order("000005", 1_000))
        .await
        .expect("order")
        .into_inner()
        .payment
        .expect("payment");
    let body = |txn: &str| {
        serde_json::to_vec(&qr_platform::Notification {
            notify_id: "forged-1".into(),
            event: qr_platform::NotifyEvent::TransactionSuccess,
            out_trade_no: created.order_id.clone(),
            transaction_id: txn.into(),
            trade_state: qr_platform::TradeState::Success,
            amount: 1_000,
            currency: switch_core::Currency::parse("EUR").expect("EUR"),
            paid_at_ms: 1,
        })
        .expect("serializes")
    };
    // Signed with another key: refused, the order still unpaid, nothing kept.
    let forged = running
        .post_notification("another-key-0123456789", "nonce-forged", &body("4200999"))
        .await;
    assert_eq!(forged, 401);
    assert_eq!(
        running.status(&created.order_id).await.state,
        "order_created"
    );
    assert_eq!(running.count("qr_notification_nonces").await, 0);
    assert!(running.transitions(&created.transaction_id).await.len() == 1);

    // The real payment, then its word repeated with one nonce twice.
    running
        .simulator
        .scan(&created.order_id)
        .await
        .expect("ledger")
        .expect("the shopper pays");
    let txn = running.entry(&created.order_id).await.transaction_id;
    let genuine = body(&txn);
    assert_eq!(
        running.post_notification(KEY, "nonce-1", &genuine).await,
        200
    );
    let paid = running.wait_for(&created.order_id, "paid", 5).await;
    assert_eq!(paid.platform_txn_id, txn);
    let written = running.transitions(&created.transaction_id).await;
    assert_eq!(
        running.post_notification(KEY, "nonce-1", &genuine).await,
        409
    );
    // A new nonce with a contradicting transaction: refused, nothing written.
    assert_eq!(
        running
            .post_notification(KEY, "nonce-2", &body("4200999"))
            .await,
        409
    );
    assert_eq!(running.transitions(&created.transaction_id).await, written);
    assert_eq!(running.count("qr_notification_nonces").await, 1);
    assert_eq!(
        running.event_types(&created.transaction_id).await,
        ["qr.paid"]
    );
    running.stop().await;
}

/// An unpaid payment (amount …02: the shopper never pays) given up while
/// the platform is down: the cancel is repeated until the platform is back.
async fn cancel_during_an_outage(retry_max_age_ms: u64) -> (Running, pb::QrPaymentRecord) {
    let mut running = start(Setup {
        terminal_wait_ms: 300,
        query_interval_ms: 100,
        query_limit_ms: 600,
        retry_max_age_ms,
        ..Setup::default()
    })
    .await;
    let answered = running
        .client
        .qr_pay(pay("000006", 1_002))
        .await
        .expect("pay answered")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(answered.answer, "in_progress");
    running.simulator.faults().update(|plan| plan.outage = true);
    let record = running.wait_for(&answered.order_id, "cancelling", 10).await;
    (running, record)
}

async fn cancel_attempts(running: &Running, transaction_id: &str) -> (String, i32) {
    sqlx::query_as("SELECT status, attempts FROM qr_calls WHERE transaction_id = $1::uuid")
        .bind(transaction_id)
        .fetch_one(&running.pool)
        .await
        .expect("the owed cancel")
}

#[tokio::test]
async fn a_cancel_during_a_platform_outage_repeats_until_acknowledged() {
    let (mut running, payment) = cancel_during_an_outage(60_000).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cancel_attempts(&running, &payment.transaction_id).await.1 < 3 {
        assert!(Instant::now() < deadline, "the cancel is repeated");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(running.status(&payment.order_id).await.state, "cancelling");
    running
        .simulator
        .faults()
        .update(|plan| plan.outage = false);
    let closed = running.wait_for(&payment.order_id, "closed", 10).await;
    assert_eq!(closed.answer, "not_paid");
    assert_eq!(
        cancel_attempts(&running, &payment.transaction_id).await.0,
        "acknowledged"
    );
    let entry = running.entry(&payment.order_id).await;
    assert_eq!((entry.charged, entry.refunded), (0, 0), "{entry:?}");
    assert!(
        matches!(
            entry.trade_state,
            qr_platform::TradeState::Revoked | qr_platform::TradeState::Closed
        ),
        "{entry:?}"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_cancel_the_platform_never_takes_is_dead_lettered_past_its_maximum_age() {
    let (mut running, payment) = cancel_during_an_outage(800).await;
    let dead = running
        .wait_for(&payment.order_id, "cancel_dead_lettered", 10)
        .await;
    assert_eq!(dead.answer, "not_paid");
    let (status, attempts) = cancel_attempts(&running, &payment.transaction_id).await;
    assert_eq!(status, "dead_lettered");
    assert!(attempts >= 2, "{attempts} attempts");
    let types = running.event_types(&payment.transaction_id).await;
    assert_eq!(
        types.last().map(String::as_str),
        Some("qr.cancel_dead_lettered"),
        "{types:?}"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_close_that_races_the_payment_ends_refunded_once() {
    let mut running = start(Setup {
        terminal_wait_ms: 300,
        query_interval_ms: 100,
        query_limit_ms: 600,
        faults: FaultPlan {
            close_races_payment: Some(qr_simulator::faults::RaceWinner::Payment),
            ..FaultPlan::default()
        },
        ..Setup::default()
    })
    .await;
    // Amount …02: nobody pays before the close; the payment wins the race.
    let created = running
        .client
        .qr_order(order("000007", 1_002))
        .await
        .expect("order")
        .into_inner()
        .payment
        .expect("payment");
    let refunded = running.wait_for(&created.order_id, "refunded", 15).await;
    assert_eq!(refunded.answer, "void");
    assert!(!refunded.platform_txn_id.is_empty());
    let entry = running.entry(&created.order_id).await;
    assert_eq!((entry.charged, entry.refunded), (1_002, 1_002), "{entry:?}");
    let types = running.event_types(&created.transaction_id).await;
    let outcomes = types
        .iter()
        .filter(|t| {
            matches!(
                t.as_str(),
                "qr.refunded" | "qr.closed" | "qr.confirmed" | "qr.failed"
            )
        })
        .count();
    assert_eq!(outcomes, 1, "{types:?}");
    running.stop().await;
}

/// A nonce older than the signature's tolerance (twice, plus a margin) is
/// pruned by the worker, and a replay signed that long ago is still
/// refused: as stale, by the signature check, with nothing written.
#[tokio::test]
async fn an_old_nonce_is_pruned_and_a_replay_that_old_is_refused_as_stale() {
    let mut running = start(Setup {
        terminal_wait_ms: 10_000,
        query_interval_ms: 60_000,
        query_limit_ms: 120_000,
        faults: FaultPlan {
            lose_notifications: true,
            ..FaultPlan::default()
        },
        ..Setup::default()
    })
    .await;
    let created = running
        .client
        .qr_order(order("000031", 1_000))
        .await
        .expect("order")
        .into_inner()
        .payment
        .expect("payment");
    let now = switch_core::Clock::now(&switch_core::SystemClock);
    let two_hours_ago = now - time::Duration::hours(2);
    for (nonce, at) in [("nonce-old", two_hours_ago), ("nonce-recent", now)] {
        sqlx::query(
            "INSERT INTO qr_notification_nonces (nonce, notify_id, order_id, received_at) \
             VALUES ($1, 'n-1', $2, $3)",
        )
        .bind(nonce)
        .bind(&created.order_id)
        .bind(at)
        .execute(&running.pool)
        .await
        .expect("a nonce");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> =
            sqlx::query_scalar("SELECT nonce FROM qr_notification_nonces ORDER BY nonce")
                .fetch_all(&running.pool)
                .await
                .expect("nonces");
        if left == ["nonce-recent"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old nonce is pruned: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    running
        .simulator
        .scan(&created.order_id)
        .await
        .expect("ledger")
        .expect("the shopper pays");
    let txn = running.entry(&created.order_id).await.transaction_id;
    let body = serde_json::to_vec(&qr_platform::Notification {
        notify_id: "n-1".into(),
        event: qr_platform::NotifyEvent::TransactionSuccess,
        out_trade_no: created.order_id.clone(),
        transaction_id: txn,
        trade_state: qr_platform::TradeState::Success,
        amount: 1_000,
        currency: switch_core::Currency::parse("EUR").expect("EUR"),
        paid_at_ms: 1,
    })
    .expect("serializes");
    let replay = running
        .post_notification_at(KEY, "nonce-old", &body, two_hours_ago.unix_timestamp())
        .await;
    assert_eq!(replay, 401, "stale");
    assert_eq!(
        running.status(&created.order_id).await.state,
        "order_created"
    );
    assert_eq!(running.count("qr_notification_nonces").await, 1);
    running.stop().await;
}

/// A dead-lettered cancel is sent round again by an operator once the
/// platform is back: who and why are recorded, the payment ends closed. A
/// redrive of a payment with nothing dead-lettered is FAILED_PRECONDITION.
#[tokio::test]
async fn an_operator_redrives_a_dead_lettered_cancel() {
    let (mut running, payment) = cancel_during_an_outage(800).await;
    running
        .wait_for(&payment.order_id, "cancel_dead_lettered", 10)
        .await;
    // What the gauge authorization.qr.dead_lettered shows: this call,
    // under its kind, and every other kind at 0.
    let journal = authorization::qr::QrJournal::new(running.pool.clone());
    let dead_lettered = || async { journal.dead_lettered_calls().await.expect("counted") };
    let owed_kind: String =
        sqlx::query_scalar("SELECT kind FROM qr_calls WHERE transaction_id = $1::uuid")
            .bind(&payment.transaction_id)
            .fetch_one(&running.pool)
            .await
            .expect("the owed call");
    let counts = dead_lettered().await;
    assert_eq!(
        counts.iter().map(|(kind, _)| *kind).collect::<Vec<_>>(),
        ["cancel", "close", "refund", "merchant_refund"]
    );
    for (kind, count) in &counts {
        assert_eq!(*count, i64::from(*kind == owed_kind), "{counts:?}");
    }
    running
        .simulator
        .faults()
        .update(|plan| plan.outage = false);
    let redrive = |operator: &str| pb::QrRedriveRequest {
        order_id: payment.order_id.clone(),
        refund_id: String::new(),
        operator: operator.into(),
        reason: "platform back after the outage".into(),
    };
    let blank = running
        .client
        .qr_redrive(redrive(" "))
        .await
        .expect_err("no operator");
    assert_eq!(blank.code(), Code::InvalidArgument);
    assert!(blank.message().contains("operator"), "{}", blank.message());
    let redriven = running
        .client
        .qr_redrive(redrive("ops.alice"))
        .await
        .expect("redriven")
        .into_inner();
    assert!(redriven.refund.is_none());
    let closed = running.wait_for(&payment.order_id, "closed", 10).await;
    assert_eq!(closed.answer, "not_paid");
    assert!(
        dead_lettered().await.iter().all(|(_, count)| *count == 0),
        "redriven and acknowledged, nothing is dead-lettered: {:?}",
        dead_lettered().await
    );
    let actions: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, operator FROM qr_operator_actions WHERE transaction_id = $1::uuid",
    )
    .bind(&payment.transaction_id)
    .fetch_all(&running.pool)
    .await
    .expect("actions");
    assert_eq!(actions, [("redrive".to_owned(), "ops.alice".to_owned())]);
    let again = running
        .client
        .qr_redrive(redrive("ops.alice"))
        .await
        .expect_err("closed: nothing dead-lettered");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    running.stop().await;
}

/// A confirmed payment (paid at once, acknowledged by its terminal).
async fn confirmed(running: &mut Running, stan: &str, minor_units: i64) -> pb::QrPaymentRecord {
    let paid = running
        .client
        .qr_pay(pay(stan, minor_units))
        .await
        .expect("paid")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(paid.state, "paid", "{paid:?}");
    let confirmed = running
        .client
        .qr_acknowledge(pb::QrAcknowledgeRequest {
            terminal_id: TERMINAL.into(),
            order_id: paid.order_id.clone(),
        })
        .await
        .expect("acknowledged")
        .into_inner();
    assert_eq!(confirmed.state, "confirmed");
    confirmed
}

fn refund(order_id: &str, refund_id: &str, minor_units: i64) -> pb::QrRefundRequest {
    pb::QrRefundRequest {
        order_id: order_id.into(),
        transaction_id: String::new(),
        refund_id: refund_id.into(),
        amount: money(minor_units),
        operator: "ops.alice".into(),
        reason: "goods returned".into(),
    }
}

impl Running {
    async fn refund_state(&self, refund_id: &str) -> (String, i32) {
        sqlx::query_as("SELECT state, attempts FROM qr_refunds WHERE refund_id = $1")
            .bind(refund_id)
            .fetch_one(&self.pool)
            .await
            .expect("the refund")
    }

    async fn wait_for_refund(&self, refund_id: &str, state: &str, seconds: u64) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let (now, attempts) = self.refund_state(refund_id).await;
            if now == state {
                return attempts;
            }
            assert!(
                Instant::now() < deadline,
                "refund {refund_id} is {now} after {seconds} s, not {state}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Merchant refunds (ADR 30): two parts of one payment and all of another
/// reach the platform's ledger; more than is left, another currency, an
/// unconfirmed payment and a changed repeat are refused with nothing
/// written; a repeat is the original.
#[tokio::test]
async fn a_confirmed_payment_is_refunded_in_parts_or_in_full_and_bad_refunds_write_nothing() {
    let mut running = start(Setup {
        terminal_wait_ms: 10_000,
        ..Setup::default()
    })
    .await;
    let parts = confirmed(&mut running, "000041", 1_000).await;
    let whole = confirmed(&mut running, "000042", 2_500).await;

    let first = running
        .client
        .qr_refund(refund(&parts.order_id, "RET-41-A", 300))
        .await
        .expect("taken")
        .into_inner();
    assert!(!first.duplicate);
    let record = first.refund.expect("refund");
    assert_eq!(
        (record.state.as_str(), record.merchant_id.as_str()),
        ("requested", MERCHANT)
    );
    assert_eq!(record.refunded_total.expect("total").minor_units, 300);
    let repeat = running
        .client
        .qr_refund(refund(&parts.order_id, "RET-41-A", 300))
        .await
        .expect("a repeat")
        .into_inner();
    assert!(repeat.duplicate);
    assert_eq!(repeat.refund.expect("refund").refund_id, "RET-41-A");
    running
        .client
        .qr_refund(pb::QrRefundRequest {
            order_id: String::new(),
            transaction_id: parts.transaction_id.clone(),
            ..refund("", "RET-41-B", 700)
        })
        .await
        .expect("the rest, by transaction id");
    running
        .client
        .qr_refund(refund(&whole.order_id, "RET-42", 2_500))
        .await
        .expect("all of it");
    for id in ["RET-41-A", "RET-41-B", "RET-42"] {
        running.wait_for_refund(id, "refunded", 10).await;
    }
    assert_eq!(running.entry(&parts.order_id).await.refunded, 1_000);
    assert_eq!(running.entry(&whole.order_id).await.refunded, 2_500);
    // The payment stays confirmed: the sale happened, the goods came back.
    assert_eq!(running.status(&parts.order_id).await.state, "confirmed");

    let written = running.count("qr_refunds").await;
    let outbox = running.count("outbox").await;
    let refusals = [
        (
            refund(&parts.order_id, "RET-41-C", 1),
            Code::InvalidArgument,
            "amount",
        ),
        (
            pb::QrRefundRequest {
                amount: Some(pb::Money {
                    minor_units: 100,
                    currency: "USD".into(),
                }),
                ..refund(&whole.order_id, "RET-42-B", 100)
            },
            Code::InvalidArgument,
            "amount.currency",
        ),
        (
            refund(&whole.order_id, "RET-42-C", 0),
            Code::InvalidArgument,
            "amount",
        ),
        (
            refund(&whole.order_id, "bad id!", 100),
            Code::InvalidArgument,
            "refund_id",
        ),
        (
            pb::QrRefundRequest {
                operator: String::new(),
                ..refund(&whole.order_id, "RET-42-D", 100)
            },
            Code::InvalidArgument,
            "operator",
        ),
        (
            refund(&whole.order_id, "RET-41-A", 300),
            Code::AlreadyExists,
            "RET-41-A",
        ),
        (
            refund(&parts.order_id, "RET-41-A", 299),
            Code::AlreadyExists,
            "RET-41-A",
        ),
        (
            refund("Q000000000000000000000000", "RET-X", 100),
            Code::NotFound,
            "Q000",
        ),
    ];
    for (request, code, names) in refusals {
        let status = running.client.qr_refund(request).await.expect_err(names);
        assert_eq!(status.code(), code, "{names}: {status:?}");
        assert!(
            status.message().contains(names),
            "{names}: {}",
            status.message()
        );
    }
    let over = running
        .client
        .qr_refund(refund(&parts.order_id, "RET-41-C", 1))
        .await
        .expect_err("nothing left");
    assert!(
        over.message().contains("0.00"),
        "what is left: {}",
        over.message()
    );
    assert_eq!(running.count("qr_refunds").await, written);
    assert_eq!(running.count("outbox").await, outbox);

    // Not confirmed (the shopper never pays): FAILED_PRECONDITION.
    let waiting = running
        .client
        .qr_pay(pay("000043", 1_002))
        .await
        .expect("pay answered")
        .into_inner()
        .payment
        .expect("payment");
    let unconfirmed = running
        .client
        .qr_refund(refund(&waiting.order_id, "RET-43", 100))
        .await
        .expect_err("not confirmed");
    assert_eq!(
        unconfirmed.code(),
        Code::FailedPrecondition,
        "{unconfirmed:?}"
    );
    assert!(
        unconfirmed.message().contains("awaiting_payment"),
        "{}",
        unconfirmed.message()
    );
    assert_eq!(running.count("qr_refunds").await, written);

    let types = running.event_types(&parts.transaction_id).await;
    assert_eq!(
        types
            .iter()
            .filter(|t| t.starts_with("qr.refund_"))
            .map(String::as_str)
            .collect::<Vec<_>>()
            .len(),
        4,
        "{types:?}"
    );
    let completed: Vec<EventEnvelope> = running
        .events(&parts.transaction_id)
        .await
        .into_iter()
        .filter(|e| e.event_type == "qr.refund_completed")
        .collect();
    assert_eq!(completed.len(), 2);
    let Some(Payload::QrPayment(last)) = &completed[1].payload else {
        panic!("a QR event");
    };
    let done = last.refund.as_ref().expect("the refund");
    assert_eq!(done.state, "refunded");
    assert!(!done.completed_at.is_empty());
    assert_eq!(
        done.refunded_total.as_ref().expect("total").minor_units,
        1_000
    );
    assert_eq!(last.webhook, "payment.refunded");
    assert_eq!(last.push, "");
    let payment = last.payment.as_ref().expect("the payment");
    assert_eq!(
        (payment.state.as_str(), payment.transaction_id.as_str()),
        ("confirmed", parts.transaction_id.as_str())
    );
    running.stop().await;
}

/// A refund while the platform is down is repeated, dead-lettered past its
/// maximum age, and refunded once an operator redrives it.
#[tokio::test]
async fn a_refund_during_an_outage_is_dead_lettered_then_redriven_to_refunded() {
    let mut running = start(Setup {
        terminal_wait_ms: 10_000,
        retry_max_age_ms: 800,
        ..Setup::default()
    })
    .await;
    let payment = confirmed(&mut running, "000051", 1_000).await;
    running.simulator.faults().update(|plan| plan.outage = true);
    running
        .client
        .qr_refund(refund(&payment.order_id, "RET-51", 400))
        .await
        .expect("taken");
    let attempts = running.wait_for_refund("RET-51", "dead_lettered", 10).await;
    assert!(attempts >= 2, "{attempts} attempts");
    let types = running.event_types(&payment.transaction_id).await;
    assert_eq!(
        types.last().map(String::as_str),
        Some("qr.refund_dead_lettered")
    );
    assert_eq!(running.entry(&payment.order_id).await.refunded, 0);

    running
        .simulator
        .faults()
        .update(|plan| plan.outage = false);
    let wrong = running
        .client
        .qr_redrive(pb::QrRedriveRequest {
            order_id: payment.order_id.clone(),
            refund_id: "RET-NONE".into(),
            operator: "ops.bob".into(),
            reason: "platform back".into(),
        })
        .await
        .expect_err("no such refund");
    assert_eq!(wrong.code(), Code::NotFound);
    let redriven = running
        .client
        .qr_redrive(pb::QrRedriveRequest {
            order_id: payment.order_id.clone(),
            refund_id: "RET-51".into(),
            operator: "ops.bob".into(),
            reason: "platform back".into(),
        })
        .await
        .expect("redriven")
        .into_inner();
    let record = redriven.refund.expect("the refund");
    assert_eq!((record.state.as_str(), record.attempts), ("requested", 0));
    running.wait_for_refund("RET-51", "refunded", 10).await;
    assert_eq!(running.entry(&payment.order_id).await.refunded, 400);
    let again = running
        .client
        .qr_redrive(pb::QrRedriveRequest {
            order_id: payment.order_id.clone(),
            refund_id: "RET-51".into(),
            operator: "ops.bob".into(),
            reason: "twice".into(),
        })
        .await
        .expect_err("refunded: not dead-lettered");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let actions: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT action, refund_id FROM qr_operator_actions WHERE transaction_id = $1::uuid ORDER BY id",
    )
    .bind(&payment.transaction_id)
    .fetch_all(&running.pool)
    .await
    .expect("actions");
    assert_eq!(
        actions,
        [
            ("refund".to_owned(), Some("RET-51".to_owned())),
            ("redrive".to_owned(), Some("RET-51".to_owned())),
        ]
    );
    running.stop().await;
}

/// Refunds asked at once: the payment's lock lets exactly as many through
/// as fit, and one refund id raced for two payments is taken once.
#[tokio::test]
async fn concurrent_refunds_never_take_more_than_is_left() {
    let mut running = start(Setup {
        terminal_wait_ms: 10_000,
        ..Setup::default()
    })
    .await;
    let payment = confirmed(&mut running, "000061", 1_000).await;
    let other = confirmed(&mut running, "000062", 1_000).await;
    let asks = (0..10).map(|n| {
        let mut client = running.client.clone();
        let request = refund(&payment.order_id, &format!("RACE-{n}"), 300);
        async move { client.qr_refund(request).await }
    });
    let answers = futures::future::join_all(asks).await;
    let taken = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(taken, 3, "{answers:?}");
    assert!(
        answers
            .iter()
            .filter_map(|a| a.as_ref().err())
            .all(|s| s.code() == Code::InvalidArgument)
    );
    let total: i64 = sqlx::query_scalar(
        "SELECT sum(amount_minor)::bigint FROM qr_refunds WHERE transaction_id = $1::uuid",
    )
    .bind(&payment.transaction_id)
    .fetch_one(&running.pool)
    .await
    .expect("total");
    assert_eq!(total, 900);

    let (mut a, mut b) = (running.client.clone(), running.client.clone());
    let (one, two) = tokio::join!(
        a.qr_refund(refund(&payment.order_id, "SHARED", 100)),
        b.qr_refund(refund(&other.order_id, "SHARED", 100)),
    );
    let codes = [one.map(|_| Code::Ok), two.map(|_| Code::Ok)]
        .map(|r| r.unwrap_or_else(|status| status.code()));
    let mut sorted = codes;
    sorted.sort_by_key(|code| i32::from(*code));
    assert_eq!(sorted, [Code::Ok, Code::AlreadyExists], "{codes:?}");
    running.stop().await;
}
