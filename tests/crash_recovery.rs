//! Crash safety of the outbox: `kill -9` of a real `switchd authorization`
//! process after the journal commit but before the event was published.
//! After a restart the event must reach Kafka exactly once.

use std::net::SocketAddr;

use switch_e2e::v1::AuthorizationStatus;
use switch_e2e::v1::authorization_service_client::AuthorizationServiceClient;
use switch_e2e::{
    SwitchdProcess, database_url, free_address, kafka_brokers, read_topic, switchd_env,
    unique_suffix,
};
use switch_platform::db::DatabaseConfig;
use tokio_util::sync::CancellationToken;

fn authorization(
    prefix: &str,
    listen: SocketAddr,
    issuer: SocketAddr,
    relay_enabled: bool,
) -> SwitchdProcess {
    let env = switchd_env(
        prefix,
        &[
            ("SWITCH__AUTHORIZATION__LISTEN", listen.to_string()),
            (
                "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
                format!("http://{issuer}"),
            ),
            (
                "SWITCH__AUTHORIZATION__OUTBOX__RELAY_ENABLED",
                relay_enabled.to_string(),
            ),
            (
                "SWITCH__AUTHORIZATION__OUTBOX__POLL_INTERVAL_MS",
                "100".to_owned(),
            ),
        ],
    );
    SwitchdProcess::spawn("authorization", &env)
}

const AUTHORIZATION: &str = "switch.v1.AuthorizationService";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_committed_before_kill_9_is_published_exactly_once_after_restart() {
    let prefix = unique_suffix();
    let stop = CancellationToken::new();
    let issuer = switch_e2e::spawn_issuer(&stop).await;

    // First life: the relay is held back, as if the process died in the
    // instant between committing and publishing.
    let listen = free_address().await;
    let mut first = authorization(&prefix, listen, issuer, false);
    first.wait_until_healthy(listen, AUTHORIZATION).await;
    let mut client = AuthorizationServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let record = client
        .authorize(switch_e2e::authorize_request("TERM0001", "000901", 4_200))
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
    let second_listen = free_address().await;
    let mut second = authorization(&prefix, second_listen, issuer, true);
    second
        .wait_until_healthy(second_listen, AUTHORIZATION)
        .await;
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
