//! Crash safety of the outbox: `kill -9` of a real `switchd authorization`
//! process after the journal commit but before the event was published.
//! After a restart the event must reach Kafka exactly once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use switch_e2e::v1::authorization_service_client::AuthorizationServiceClient;
use switch_e2e::v1::{AuthorizationStatus, AuthorizeRequest, Money, TerminalKey};
use switch_e2e::{VISA, database_url, kafka_brokers, read_topic, unique_suffix};
use switch_platform::db::DatabaseConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn switchd() -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/switchd
    let path = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("switchd")))
        .expect("the test binary lives under target/<profile>/deps");
    assert!(
        path.is_file(),
        "{} is missing: build it first (`make test` does: cargo build -p switchd)",
        path.display()
    );
    path
}

struct Authorization {
    child: Child,
}

impl Authorization {
    fn spawn(prefix: &str, listen: SocketAddr, issuer: SocketAddr, relay_enabled: bool) -> Self {
        let child = Command::new(switchd())
            .arg("authorization")
            .env("SWITCH__DATABASE__URL", database_url())
            .env("SWITCH__DATABASE__SCHEMA_PREFIX", format!("{prefix}_"))
            .env("SWITCH__DATABASE__MAX_CONNECTIONS", "4")
            .env("SWITCH__KAFKA__BROKERS", kafka_brokers())
            .env("SWITCH__KAFKA__TOPIC_PREFIX", format!("{prefix}."))
            .env("SWITCH__KAFKA__PARTITIONS", "2")
            .env("SWITCH__AUTHORIZATION__LISTEN", listen.to_string())
            .env(
                "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
                format!("http://{issuer}"),
            )
            .env(
                "SWITCH__AUTHORIZATION__OUTBOX__RELAY_ENABLED",
                relay_enabled.to_string(),
            )
            .env("SWITCH__AUTHORIZATION__OUTBOX__POLL_INTERVAL_MS", "100")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("switchd starts");
        Authorization { child }
    }

    async fn wait_until_serving(&mut self, listen: SocketAddr) {
        let child = &mut self.child;
        switch_e2e::wait_until_serving(listen, || {
            child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| status.to_string())
        })
        .await
        .expect("switchd authorization becomes ready");
    }

    /// SIGKILL: no shutdown hook, no final relay pass.
    fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }
}

async fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_committed_before_kill_9_is_published_exactly_once_after_restart() {
    let prefix = unique_suffix();
    let stop = CancellationToken::new();
    let issuer_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = issuer_listener.local_addr().unwrap();
    tokio::spawn(issuer_simulator::serve(
        issuer_listener,
        stop.clone().cancelled_owned(),
    ));

    // First life: the relay is held back, as if the process died in the
    // instant between committing and publishing.
    let listen = free_port().await;
    let mut first = Authorization::spawn(&prefix, listen, issuer, false);
    first.wait_until_serving(listen).await;
    let mut client = AuthorizationServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let record = client
        .authorize(AuthorizeRequest {
            key: Some(TerminalKey {
                terminal_id: "TERM0001".into(),
                stan: "000901".into(),
                local_date: switch_e2e::today(),
            }),
            merchant_id: "MERCHANT0000001".into(),
            pan: VISA.into(),
            expiry: "2812".into(),
            amount: Some(Money {
                minor_units: 4_200,
                currency: "EUR".into(),
            }),
            last_completed_stan: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(record.status(), AuthorizationStatus::Approved);

    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{prefix}_"),
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(authorization::SERVICE_NAME);
    let journal = switch_platform::db::connect(&database, &schema)
        .await
        .unwrap();
    let unpublished = || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&journal)
    };
    assert_eq!(
        unpublished().await.unwrap(),
        1,
        "committed, not yet published"
    );
    first.kill_9();

    let topic = format!("{prefix}.authorization-events");
    assert!(
        read_topic(&kafka_brokers(), &topic)
            .await
            .unwrap()
            .is_empty(),
        "nothing reached Kafka before the crash"
    );

    // Second life: the relay finds the committed event and publishes it.
    let second_listen = free_port().await;
    let mut second = Authorization::spawn(&prefix, second_listen, issuer, true);
    second.wait_until_serving(second_listen).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while unpublished().await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "published within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let state: String =
        sqlx::query_scalar("SELECT state FROM authorizations WHERE transaction_id = $1::uuid")
            .bind(&record.transaction_id)
            .fetch_one(&journal)
            .await
            .unwrap();
    assert_eq!(state, "approved", "the journal survived the crash");
    second.kill_9();

    let messages = read_topic(&kafka_brokers(), &topic).await.unwrap();
    let envelopes: Vec<_> = messages
        .iter()
        .map(|m| {
            use prost::Message as _;
            use rdkafka::Message as _;
            switch_e2e::v1::EventEnvelope::decode(m.payload().unwrap_or_default()).unwrap()
        })
        .collect();
    assert_eq!(envelopes.len(), 1, "exactly once: {envelopes:?}");
    assert_eq!(envelopes[0].transaction_id, record.transaction_id);
    assert_eq!(envelopes[0].event_type, "authorization.approved");

    stop.cancel();
    journal.close().await;
    switch_platform::db::drop_schema(&database.url, &schema)
        .await
        .unwrap();
}
