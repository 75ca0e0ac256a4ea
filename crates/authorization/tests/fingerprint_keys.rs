//! Rotating the PAN fingerprint key (ADR 33), on the real PostgreSQL with
//! the issuer simulator: a sale fingerprinted under the first key is
//! still recognized when its retry arrives after the rotation (the same
//! card: the original answer; another card: refused as modified), new
//! sales carry the new key's id, and once the old key is dropped a retry
//! of its sale is refused rather than compared under the wrong key. The
//! broker is not needed: the outbox keeps the events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switch_platform::config::Secret;
use switch_platform::db::DatabaseConfig;
use switch_platform::kafka::KafkaConfig;
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use switch_proto::v1::{self as pb, AuthorizeRequest, TerminalKey};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

const VISA: &str = "4111111111111111";
const MASTERCARD: &str = "5555555555554444";
const FIRST_KEY: &str = "the-first-fingerprint-key";
const SECOND_KEY: &str = "the-second-fingerprint-key";

/// The issuer simulator, and one authorization service at a time over the
/// same schema, so the service can be restarted with another keyring.
struct World {
    database: DatabaseConfig,
    kafka: KafkaConfig,
    issuer: std::net::SocketAddr,
    stop_issuer: CancellationToken,
    issuer_task: tokio::task::JoinHandle<()>,
}

struct Running {
    client: AuthorizationServiceClient<Channel>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl World {
    async fn new() -> World {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let suffix = Uuid::new_v4().simple().to_string()[..10].to_owned();
        let database = DatabaseConfig {
            url,
            schema_prefix: format!("f{suffix}_"),
            max_connections: 4,
            ..DatabaseConfig::default()
        };
        let stop_issuer = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = listener.local_addr().unwrap();
        let issuer_task = tokio::spawn({
            let stop = stop_issuer.clone();
            async move {
                issuer_simulator::serve(listener, stop.cancelled_owned())
                    .await
                    .expect("the issuer simulator serves");
            }
        });
        World {
            database,
            kafka: KafkaConfig {
                topic_prefix: format!("f{suffix}."),
                ..KafkaConfig::default()
            },
            issuer,
            stop_issuer,
            issuer_task,
        }
    }

    /// Authorization with the current key `current` (id, key) and
    /// `previous` keys.
    async fn start(&self, current: (&str, &str), previous: &[(&str, &str)]) -> Running {
        let config = authorization::AuthorizationConfig {
            issuer_endpoint: format!("http://{}", self.issuer),
            pan_hash_key_id: current.0.into(),
            pan_hash_key: Secret::new(current.1),
            pan_hash_previous_keys: previous
                .iter()
                .map(|(id, key)| ((*id).to_owned(), Secret::new(*key)))
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            let (database, kafka) = (self.database.clone(), self.kafka.clone());
            async move {
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
        Running { client, stop, task }
    }

    /// The fingerprint and its key id, as journaled for `stan`.
    async fn journaled(&self, stan: &str) -> (String, String) {
        let schema = self.database.schema_for(authorization::SERVICE_NAME);
        let pool = switch_platform::db::connect(&self.database, &schema)
            .await
            .unwrap();
        let row = sqlx::query_as(
            "SELECT pan_fingerprint, pan_fingerprint_key_id FROM authorizations WHERE stan = $1",
        )
        .bind(stan)
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        row
    }

    async fn drop(self) {
        self.stop_issuer.cancel();
        self.issuer_task.await.unwrap();
        switch_platform::db::drop_schema(
            &self.database.url,
            &self.database.schema_for(authorization::SERVICE_NAME),
        )
        .await
        .unwrap();
    }
}

impl Running {
    async fn sale(
        &mut self,
        stan: &str,
        pan: &str,
    ) -> Result<pb::AuthorizeResponse, tonic::Status> {
        self.client
            .authorize(AuthorizeRequest {
                key: Some(TerminalKey {
                    terminal_id: "TERM0001".into(),
                    stan: stan.into(),
                    local_date: "2026-12-04".into(),
                }),
                merchant_id: "MERCHANT0000001".into(),
                pan: pan.into(),
                expiry: "3012".into(),
                amount: Some(pb::Money {
                    minor_units: 1_500,
                    currency: "EUR".into(),
                }),
                last_completed_stan: String::new(),
                channel: "card".into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn stop(self) {
        drop(self.client);
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_from_before_a_key_rotation_is_recognized_under_its_own_key() {
    let world = World::new().await;

    let mut before = world.start(("k1", FIRST_KEY), &[]).await;
    let original = before.sale("000301", VISA).await.unwrap();
    let original_id = original
        .authorization
        .as_ref()
        .unwrap()
        .transaction_id
        .clone();
    assert!(!original.duplicate);
    before.stop().await;
    let (first_fingerprint, first_key) = world.journaled("000301").await;
    assert_eq!(first_key, "k1");

    // Rotated: k2 is current, k1 kept for what it fingerprinted.
    let mut rotated = world.start(("k2", SECOND_KEY), &[("k1", FIRST_KEY)]).await;
    let retry = rotated.sale("000301", VISA).await.unwrap();
    assert!(
        retry.duplicate,
        "the same card's retry gets the original answer"
    );
    assert_eq!(
        retry.authorization.as_ref().unwrap().transaction_id,
        original_id
    );
    let modified = rotated.sale("000301", MASTERCARD).await.unwrap_err();
    assert_eq!(modified.code(), tonic::Code::AlreadyExists, "{modified:?}");
    assert!(modified.message().contains("pan"), "{modified:?}");
    // A new sale is fingerprinted under the current key.
    assert!(!rotated.sale("000302", VISA).await.unwrap().duplicate);
    rotated.stop().await;
    let (second_fingerprint, second_key) = world.journaled("000302").await;
    assert_eq!(second_key, "k2");
    assert_ne!(
        second_fingerprint, first_fingerprint,
        "one card under two keys"
    );
    assert_eq!(
        world.journaled("000301").await,
        (first_fingerprint, "k1".to_owned()),
        "the retry changed nothing"
    );

    // k1 dropped: its sale's retry cannot be compared, and is refused
    // rather than taken for another card.
    let mut retired = world.start(("k2", SECOND_KEY), &[]).await;
    let refused = retired.sale("000301", VISA).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("k1"), "{refused:?}");
    assert!(
        retired.sale("000302", VISA).await.unwrap().duplicate,
        "a sale under the current key is still recognized"
    );
    retired.stop().await;

    world.drop().await;
}
