//! Issue 13, hole 3: a broker outage at start-up must not stop sales.
//! Authorization (a real `switchd` process) starts while its broker cannot
//! be reached, serves a sale (journal and outbox need only PostgreSQL), and
//! publishes the sale's event once the broker can be reached.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switch_e2e::v1::AuthorizationStatus;
use switch_e2e::v1::authorization_service_client::AuthorizationServiceClient;
use switch_e2e::{
    SwitchdProcess, capture_logs, database_url, free_address, kafka_brokers, read_topic,
    switchd_env, unique_suffix,
};
use switch_platform::db::DatabaseConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Forwards every connection on `listener` to `target` (the broker coming
/// back at the address the service was given).
async fn forward(listener: TcpListener, target: String, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_starts_and_sells_while_the_broker_is_down_and_publishes_after() {
    capture_logs();
    let prefix = unique_suffix();
    let stop = CancellationToken::new();
    let issuer = switch_e2e::spawn_issuer(&stop).await;
    // Nothing listens here yet: the broker is down.
    let broker: SocketAddr = free_address().await;
    let listen = free_address().await;
    let env = switchd_env(
        &prefix,
        &[
            ("SWITCH__AUTHORIZATION__LISTEN", listen.to_string()),
            (
                "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
                format!("http://{issuer}"),
            ),
            ("SWITCH__KAFKA__BROKERS", broker.to_string()),
            (
                "SWITCH__AUTHORIZATION__OUTBOX__POLL_INTERVAL_MS",
                "100".to_owned(),
            ),
        ],
    );
    let mut authorization = SwitchdProcess::spawn("authorization", &env);
    authorization
        .wait_until_healthy(listen, "switch.v1.AuthorizationService")
        .await;
    let record = AuthorizationServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap()
        .authorize(switch_e2e::authorize_request("TERM0001", "013001", 2_000))
        .await
        .expect("a sale is served while the broker is down")
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
        "the event waits in the outbox"
    );

    // The broker comes back at the address authorization was given.
    let listener = TcpListener::bind(broker).await.unwrap();
    tokio::spawn(forward(listener, kafka_brokers(), stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(90);
    while unpublished().await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "published within 90 s of the broker's return"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let topic = format!("{prefix}.authorization-events");
    let messages = read_topic(&kafka_brokers(), &topic).await.unwrap();
    assert_eq!(messages.len(), 1, "the event is on the topic, once");

    authorization.kill_9();
    stop.cancel();
    journal.close().await;
    switch_platform::db::drop_schema(&database.url, &schema)
        .await
        .unwrap();
}
