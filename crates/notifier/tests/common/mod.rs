//! Helpers of the notifier's integration tests: a schema and topic prefix
//! of the test's own on the real PostgreSQL and broker, the notifier served
//! on port 0, events built and published like the real producers do, and a
//! real HTTP server (hyper) that records every webhook it receives.
// Fixtures are stamped with the wall clock; the code under test takes its
// time from the Clock port.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use notifier::{NotifierConfig, SERVICE_NAME};
use prost::Message as _;
use rdkafka::producer::FutureRecord;
use sqlx::PgPool;
use switch_platform::db::DatabaseConfig;
use switch_platform::kafka::KafkaConfig;
use switch_proto::v1::notifier_service_client::NotifierServiceClient;
use switch_proto::v1::{self as pb, EventEnvelope, event_envelope::Payload};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

/// Longest any condition is awaited.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// A name no other test or run uses.
pub fn unique_suffix() -> String {
    let id = Uuid::new_v4().simple().to_string();
    format!("n{}", &id[..10])
}

/// A merchant id of this test's own (alphanumeric, at most 15 characters).
pub fn merchant(tag: &str) -> String {
    let id = Uuid::new_v4().simple().to_string().to_uppercase();
    format!("{tag}{}", &id[..(15 - tag.len())])
}

/// The notifier's schema under a prefix of this test's own, migrated.
pub struct TestDb {
    pub database: DatabaseConfig,
    pub pool: PgPool,
    schema: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let database = DatabaseConfig {
            url: database_url(),
            schema_prefix: format!("{}_", unique_suffix()),
            max_connections: 8,
            ..DatabaseConfig::default()
        };
        let schema = database.schema_for(SERVICE_NAME);
        let pool = switch_platform::db::connect(&database, &schema)
            .await
            .expect("PostgreSQL is reachable");
        notifier::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations apply");
        TestDb {
            database,
            pool,
            schema,
        }
    }

    pub async fn drop(self) {
        self.pool.close().await;
        switch_platform::db::drop_schema(&self.database.url, &self.schema)
            .await
            .expect("test schema dropped");
    }
}

/// A delivery row, as the tests inspect it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

pub async fn deliveries(pool: &PgPool) -> Vec<DeliveryRow> {
    sqlx::query_as::<_, (Uuid, Uuid, String, String, i32, Option<String>)>(
        "SELECT delivery_id, event_id, event_type, state, attempts, last_error \
         FROM deliveries ORDER BY created_at, delivery_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(
        |(delivery_id, event_id, event_type, state, attempts, last_error)| DeliveryRow {
            delivery_id,
            event_id,
            event_type,
            state,
            attempts,
            last_error,
        },
    )
    .collect()
}

/// Polls `check` until it returns `Some`, failing with `what` after
/// [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The notifier served on a free port until [`Running::stop`].
pub struct Running {
    pub addr: SocketAddr,
    pub kafka: KafkaConfig,
    producer: rdkafka::producer::FutureProducer,
    pub db: TestDb,
    stop: CancellationToken,
    service: JoinHandle<Result<(), notifier::ServeError>>,
}

/// Starts the notifier with `config` (its consumer group made unique) on
/// a fresh schema and topic prefix, and waits until it serves health.
pub async fn start(mut config: NotifierConfig) -> Running {
    let db = TestDb::new().await;
    let suffix = unique_suffix();
    let kafka = KafkaConfig {
        brokers: kafka_brokers(),
        topic_prefix: format!("{suffix}."),
        partitions: 1,
        ..KafkaConfig::default()
    };
    config.consumer_group = format!("{suffix}-notifier");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let service = tokio::spawn({
        let (database, kafka, stop) = (db.database.clone(), kafka.clone(), stop.clone());
        async move {
            notifier::serve(
                &database,
                &kafka,
                &switch_platform::internal_tls::InternalTlsConfig::plaintext_for_lab(),
                &config,
                listener,
                stop.cancelled_owned(),
            )
            .await
        }
    });
    let deadline = Instant::now() + PATIENCE;
    while !serving(addr).await {
        assert!(Instant::now() < deadline, "never served health");
        assert!(!service.is_finished(), "serve ended during start-up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Running {
        addr,
        producer: kafka.producer().expect("a producer"),
        kafka,
        db,
        stop,
        service,
    }
}

impl Running {
    pub async fn admin(&self) -> NotifierServiceClient<Channel> {
        NotifierServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("the admin service accepts connections")
    }

    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// Publishes `event` on `topic` (without prefix), keyed like the real
    /// producers: by transaction id, else by merchant id.
    pub async fn publish(&self, topic: &str, event: &EventEnvelope) {
        let key = if event.transaction_id.is_empty() {
            match &event.payload {
                Some(Payload::MerchantPaid(paid)) => paid.merchant_id.clone(),
                _ => event.event_id.clone(),
            }
        } else {
            event.transaction_id.clone()
        };
        let payload = event.encode_to_vec();
        self.producer
            .send(
                FutureRecord::to(&self.kafka.topic(topic))
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("the broker accepts the event");
    }

    /// Stops the service, checks it stopped cleanly, and drops the schema.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.service)
            .await
            .expect("serve stops on shutdown")
            .unwrap()
            .unwrap();
        self.db.drop().await;
    }
}

async fn serving(addr: SocketAddr) -> bool {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    matches!(
        health.check(request).await,
        Ok(response) if response.get_ref().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}

// ---------------------------------------------------------------- events

pub fn facts(merchant_id: &str, stan: &str) -> pb::AuthorizationFacts {
    pb::AuthorizationFacts {
        terminal_id: "TERM0001".into(),
        merchant_id: merchant_id.into(),
        stan: stan.into(),
        local_date: "2026-11-24".into(),
        rrn: format!("633000{stan}"),
        masked_pan: "411111******1111".into(),
        amount: Some(pb::Money {
            minor_units: 1050,
            currency: "EUR".into(),
        }),
        channel: "card".into(),
    }
}

pub fn envelope(event_type: &str, transaction_id: Option<Uuid>, payload: Payload) -> EventEnvelope {
    let now = time::OffsetDateTime::now_utc();
    EventEnvelope {
        event_id: Uuid::now_v7().to_string(),
        event_type: event_type.into(),
        transaction_id: transaction_id.map(|id| id.to_string()).unwrap_or_default(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: now.unix_timestamp(),
            nanos: i32::try_from(now.nanosecond()).unwrap(),
        }),
        payload: Some(payload),
        ..EventEnvelope::default()
    }
}

pub fn confirmed(merchant_id: &str, stan: &str, evidence: pb::Evidence) -> EventEnvelope {
    envelope(
        "authorization.confirmed",
        Some(Uuid::now_v7()),
        Payload::AuthorizationConfirmed(pb::AuthorizationConfirmed {
            facts: Some(facts(merchant_id, stan)),
            evidence: evidence.into(),
            approval_code: "A1B2C3".into(),
        }),
    )
}

pub fn reversed(merchant_id: &str, stan: &str) -> EventEnvelope {
    envelope(
        "authorization.reversed",
        Some(Uuid::now_v7()),
        Payload::AuthorizationReversed(pb::AuthorizationReversed {
            facts: Some(facts(merchant_id, stan)),
            reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into(),
            attempts: 2,
        }),
    )
}

pub fn acknowledgement_conflict(merchant_id: &str, stan: &str) -> EventEnvelope {
    envelope(
        "authorization.acknowledgement_conflict",
        Some(Uuid::now_v7()),
        Payload::AcknowledgementConflict(pb::AcknowledgementConflict {
            facts: Some(facts(merchant_id, stan)),
            reversal_reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into(),
        }),
    )
}

pub fn batch_conflict(merchant_id: &str, stan: &str) -> EventEnvelope {
    envelope(
        "settlement.batch_conflict",
        Some(Uuid::now_v7()),
        Payload::BatchConflict(pb::BatchConflict {
            facts: Some(facts(merchant_id, stan)),
            batch_number: "000007".into(),
            outcome: switch_proto::v1::ReconciliationOutcome::ConflictReversedAtHost.into(),
            detail: "the host reversed it (no_terminal_acknowledgement)".into(),
        }),
    )
}

pub fn merchant_paid(merchant_id: &str) -> EventEnvelope {
    envelope(
        "settlement.merchant_paid",
        None,
        Payload::MerchantPaid(pb::MerchantPaid {
            merchant_id: merchant_id.into(),
            window_id: "0193a5d4-7e1f-7c3a-9d5e-00000000beef".into(),
            payout: Some(pb::MerchantPayout {
                currency: "EUR".into(),
                transaction_count: 3,
                gross_minor_units: 3150,
                fee_minor_units: 19,
                net_minor_units: 3131,
                payout_reference: "PO-000123".into(),
                ..Default::default()
            }),
            paid_at: None,
            payout_file: "pain001-20261124.xml".into(),
        }),
    )
}

// ------------------------------------------------------------ HTTP server

/// How one path of the test server answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200.
    Ok,
    /// This status, always.
    Status(u16),
    /// 500 for the first `n` requests, then 200.
    FailFirst(u32),
    /// 200 after this long.
    Slow(Duration),
}

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub at: Instant,
    pub signature: String,
    pub event_id: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

#[derive(Default)]
struct State {
    behaviours: Mutex<HashMap<String, Behaviour>>,
    received: Mutex<Vec<Received>>,
    /// Requests being answered, per path, and the most ever at once.
    in_flight: Mutex<HashMap<String, (usize, usize)>>,
    arrived: Notify,
}

/// A real HTTP/1.1 server on 127.0.0.1:0 that answers each path as told
/// (200 by default) and records what it receives.
pub struct WebhookServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl WebhookServer {
    pub async fn start() -> WebhookServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        tokio::spawn({
            let (state, stop) = (state.clone(), stop.clone());
            async move {
                loop {
                    let stream = tokio::select! {
                        () = stop.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| handle(state.clone(), request));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        WebhookServer { addr, state, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, path: &str, behaviour: Behaviour) {
        self.state
            .behaviours
            .lock()
            .unwrap()
            .insert(path.to_owned(), behaviour);
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// (requests being answered now, most ever at once) on `path`.
    pub fn in_flight(&self, path: &str) -> (usize, usize) {
        self.state
            .in_flight
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or_default()
    }

    /// Waits until `path` has received at least `count` requests.
    pub async fn wait_for(&self, path: &str, count: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let arrived = self.state.arrived.notified();
            tokio::pin!(arrived);
            // Registered before checking, so an arrival in between is seen.
            arrived.as_mut().enable();
            let received = self.received(path);
            if received.len() >= count {
                return received;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "{path} received {} requests, not {count}, within {PATIENCE:?}",
                    received.len()
                );
            }
        }
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (signature, event_id, content_type) = (
        header("switch-signature"),
        header("switch-event-id"),
        header("content-type"),
    );
    let at = Instant::now();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    {
        let mut in_flight = state.in_flight.lock().unwrap();
        let entry = in_flight.entry(path.clone()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(entry.0);
    }
    let status = {
        let mut behaviours = state.behaviours.lock().unwrap();
        let received = state.received.lock().unwrap();
        let earlier = received.iter().filter(|r| r.path == path).count();
        match behaviours.entry(path.clone()).or_insert(Behaviour::Ok) {
            Behaviour::Ok | Behaviour::Slow(_) => 200,
            Behaviour::Status(code) => *code,
            Behaviour::FailFirst(n) => {
                if earlier < usize::try_from(*n).unwrap() {
                    500
                } else {
                    200
                }
            }
        }
    };
    state.received.lock().unwrap().push(Received {
        path: path.clone(),
        at,
        signature,
        event_id,
        content_type,
        body,
    });
    state.arrived.notify_waiters();
    let delay = match state.behaviours.lock().unwrap().get(&path) {
        Some(Behaviour::Slow(delay)) => Some(*delay),
        _ => None,
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    state.in_flight.lock().unwrap().get_mut(&path).unwrap().0 -= 1;
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    Ok(response)
}
