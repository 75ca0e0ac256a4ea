//! SIGTERM under load (issue 16, part 4), each service its own `switchd`
//! process against the real PostgreSQL and broker:
//!
//! - authorization with sales in flight: health turns NOT_SERVING at once,
//!   a sale sent during the unready delay (a load balancer that has not
//!   noticed yet) is still served, every sale in flight is answered and
//!   journaled, and the process exits cleanly within its budget;
//! - the gateway with terminal sales in flight over mutual TLS: the same,
//!   for terminals;
//! - the reversal handler while it reverses a batch of orphans, and the
//!   settlement batcher while approvals stream in: each stops between
//!   batches and commits what it applied, so no event it applied lies past
//!   its group's committed offsets (its next owner would apply it again);
//!   a second process finishes, every orphan reversed exactly once at the
//!   issuer, every approval in the ledger once.
//!
//! The notifier's (webhooks in flight to a slow merchant, each sent once
//! across the restart) is in `notifications.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switch_e2e::offsets::applied_past_commit;
use switch_e2e::v1::authorization_service_client::AuthorizationServiceClient;
use switch_e2e::v1::issuer_control_client::IssuerControlClient;
use switch_e2e::v1::{AuthorizationStatus, FaultPlan, StatsRequest};
use switch_e2e::{
    SwitchdProcess, authorize_request, database_url, free_address, kafka_brokers, spawn_issuer,
    switchd_env, unique_suffix,
};
use switch_platform::db::DatabaseConfig;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const AUTHORIZATION: &str = "switch.v1.AuthorizationService";
const UNREADY_DELAY_MS: u64 = 2_000;
const GRACE_PERIOD_MS: u64 = 10_000;
/// How long the issuer holds each answer: long enough that the signal
/// arrives with every sale of the first wave still at the issuer.
const ISSUER_LATENCY_MS: u32 = 1_500;
const IN_FLIGHT: usize = 16;

fn shutdown_env() -> [(&'static str, String); 2] {
    [
        (
            "SWITCH__SHUTDOWN__UNREADY_DELAY_MS",
            UNREADY_DELAY_MS.to_string(),
        ),
        (
            "SWITCH__SHUTDOWN__GRACE_PERIOD_MS",
            GRACE_PERIOD_MS.to_string(),
        ),
    ]
}

/// Waits for a process told to stop to exit, cleanly, within its unready
/// delay and grace period (and a margin).
async fn exits_cleanly(process: &mut SwitchdProcess) {
    let exit = process
        .exit_within(Duration::from_millis(
            UNREADY_DELAY_MS + GRACE_PERIOD_MS + 5_000,
        ))
        .await
        .unwrap_or_else(|| {
            panic!(
                "{} exits within its unready delay and grace period",
                process.service
            )
        });
    assert!(
        exit.success(),
        "a clean exit of {}: {exit}",
        process.service
    );
}

async fn health(address: SocketAddr) -> Option<ServingStatus> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: AUTHORIZATION.to_owned(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status())
}

async fn within<T>(what: &str, seconds: u64, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn issuer_authorizations(issuer: SocketAddr) -> u64 {
    IssuerControlClient::connect(format!("http://{issuer}"))
        .await
        .unwrap()
        .stats(StatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .authorizations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorization_answers_every_sale_in_flight_and_those_sent_while_it_was_unready() {
    let prefix = unique_suffix();
    let stop = CancellationToken::new();
    let issuer = spawn_issuer(&stop).await;
    IssuerControlClient::connect(format!("http://{issuer}"))
        .await
        .unwrap()
        .set_faults(FaultPlan {
            latency_ms: ISSUER_LATENCY_MS,
            authorizations_only: true,
            ..FaultPlan::default()
        })
        .await
        .unwrap();
    let listen = free_address().await;
    let mut env = switchd_env(
        &prefix,
        &[
            ("SWITCH__AUTHORIZATION__LISTEN", listen.to_string()),
            (
                "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
                format!("http://{issuer}"),
            ),
            (
                "SWITCH__AUTHORIZATION__ISSUER_TIMEOUT_MS",
                "5000".to_owned(),
            ),
        ],
    );
    env.extend(shutdown_env().map(|(k, v)| (k.to_owned(), v)));
    let mut authorization = SwitchdProcess::spawn("authorization", &env);
    authorization
        .wait_until_healthy(listen, AUTHORIZATION)
        .await;

    let client = AuthorizationServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let first_wave: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .authorize(authorize_request(
                        "TERM0001",
                        &format!("{:06}", 100 + i),
                        1_000,
                    ))
                    .await
            })
        })
        .collect();
    within(
        "every sale of the first wave at the issuer",
        30,
        async || {
            (issuer_authorizations(issuer).await >= u64::try_from(IN_FLIGHT).unwrap()).then_some(())
        },
    )
    .await;

    let signalled = Instant::now();
    authorization.send_sigterm();
    within("health to say NOT_SERVING", 10, async || {
        (health(listen).await == Some(ServingStatus::NotServing)).then_some(())
    })
    .await;
    assert!(
        signalled.elapsed() < Duration::from_millis(UNREADY_DELAY_MS),
        "NOT_SERVING came {:?} after the signal: past the unready delay",
        signalled.elapsed()
    );
    // A caller that has not noticed yet, on a connection of its own.
    let mut late = AuthorizationServiceClient::connect(format!("http://{listen}"))
        .await
        .expect("still accepting during the unready delay");
    let late_sale = late
        .authorize(authorize_request("TERM0002", "000900", 1_000))
        .await
        .expect("a sale sent while unready is served")
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(late_sale.status(), AuthorizationStatus::Approved);

    let mut approved = vec![late_sale.transaction_id];
    for call in first_wave {
        let record = call
            .await
            .unwrap()
            .expect("a sale in flight at the signal is answered")
            .into_inner()
            .authorization
            .unwrap();
        assert_eq!(record.status(), AuthorizationStatus::Approved);
        approved.push(record.transaction_id);
    }
    exits_cleanly(&mut authorization).await;

    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{prefix}_"),
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(authorization::SERVICE_NAME);
    let journal = switch_platform::db::connect(&database, &schema)
        .await
        .unwrap();
    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT transaction_id::text, state FROM authorizations")
            .fetch_all(&journal)
            .await
            .unwrap();
    let journaled: HashMap<String, String> = states.into_iter().collect();
    assert_eq!(journaled.len(), IN_FLIGHT + 1, "{journaled:?}");
    for id in &approved {
        assert_eq!(
            journaled.get(id).map(String::as_str),
            Some("approved"),
            "{id}"
        );
    }
    let undelivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&journal)
            .await
            .unwrap();
    assert_eq!(
        undelivered, 0,
        "the relay published every event before exiting"
    );
    stop.cancel();
    journal.close().await;
    switch_platform::db::drop_schema(&database.url, &schema)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reversal_handler_stopped_mid_batch_commits_what_it_applied_and_nothing_is_reversed_twice()
 {
    const ORPHANS: usize = 24;
    let prefix = unique_suffix();
    let stop = CancellationToken::new();
    let issuer = spawn_issuer(&stop).await;
    let authorization_listen = free_address().await;
    let mut env = switchd_env(
        &prefix,
        &[
            (
                "SWITCH__AUTHORIZATION__LISTEN",
                authorization_listen.to_string(),
            ),
            (
                "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
                format!("http://{issuer}"),
            ),
            (
                "SWITCH__AUTHORIZATION__OUTBOX__POLL_INTERVAL_MS",
                "100".to_owned(),
            ),
            (
                "SWITCH__AUTHORIZATION__REVERSAL__INITIAL_DELAY_MS",
                "50".to_owned(),
            ),
            (
                "SWITCH__AUTHORIZATION__REVERSAL__POLL_INTERVAL_MS",
                "50".to_owned(),
            ),
            (
                "SWITCH__REVERSAL_HANDLER__AUTHORIZATION_ENDPOINT",
                format!("http://{authorization_listen}"),
            ),
            ("SWITCH__REVERSAL_HANDLER__ACK_WINDOW_MS", "1500".to_owned()),
            (
                "SWITCH__REVERSAL_HANDLER__SWEEP_INTERVAL_MS",
                "50".to_owned(),
            ),
        ],
    );
    env.extend(shutdown_env().map(|(k, v)| (k.to_owned(), v)));
    let mut authorization = SwitchdProcess::spawn("authorization", &env);
    authorization
        .wait_until_healthy(authorization_listen, AUTHORIZATION)
        .await;
    let handler_listen = free_address().await;
    let mut handler_env = env.clone();
    handler_env.push((
        "SWITCH__REVERSAL_HANDLER__LISTEN".into(),
        handler_listen.to_string(),
    ));
    let mut first = SwitchdProcess::spawn("reversal-handler", &handler_env);
    first.wait_until_healthy(handler_listen, "").await;

    let mut client = AuthorizationServiceClient::connect(format!("http://{authorization_listen}"))
        .await
        .unwrap();
    let mut orphans = Vec::new();
    for i in 0..ORPHANS {
        let record = client
            .authorize(authorize_request(
                "TERM0001",
                &format!("{:06}", 300 + i),
                1_000,
            ))
            .await
            .unwrap()
            .into_inner()
            .authorization
            .unwrap();
        assert_eq!(record.status(), AuthorizationStatus::Approved);
        orphans.push(record.transaction_id);
    }
    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{prefix}_"),
        ..DatabaseConfig::default()
    };
    let journal_schema = database.schema_for(authorization::SERVICE_NAME);
    let journal = switch_platform::db::connect(&database, &journal_schema)
        .await
        .unwrap();
    let settled = async || -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM authorizations WHERE state IN ('reversal_pending', 'reversed')",
        )
        .fetch_one(&journal)
        .await
        .unwrap()
    };
    // Stopped as soon as it has started on the batch: some orphans are
    // handled, others not yet.
    within("the first reversal request", 60, async || {
        (settled().await > 0).then_some(())
    })
    .await;
    first.send_sigterm();
    exits_cleanly(&mut first).await;

    // What the stopped handler applied is all below its committed offsets.
    let kafka = switch_platform::kafka::KafkaConfig {
        brokers: kafka_brokers(),
        topic_prefix: format!("{prefix}."),
        ..switch_platform::kafka::KafkaConfig::default()
    };
    let topics: Vec<String> = [
        switch_platform::kafka::topics::AUTHORIZATION_EVENTS,
        switch_platform::kafka::topics::SETTLEMENT_EVENTS,
    ]
    .iter()
    .map(|t| kafka.topic(t))
    .collect();
    let handler_schema = database.schema_for(reversal_handler::SERVICE_NAME);
    let handler_db = switch_platform::db::connect(&database, &handler_schema)
        .await
        .unwrap();
    let (applied, past_commit) =
        applied_past_commit(&handler_db, &kafka.group("reversal-handler"), &topics).await;
    assert!(applied > 0, "the first handler applied events");
    assert!(
        past_commit.is_empty(),
        "applied but not committed, so applied again by the next owner: {past_commit:?}"
    );

    // A second handler takes over and finishes the batch.
    let mut second = SwitchdProcess::spawn("reversal-handler", &handler_env);
    second.wait_until_healthy(handler_listen, "").await;
    within("every orphan reversed", 90, async || {
        let reversed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM authorizations WHERE state = 'reversed'")
                .fetch_one(&journal)
                .await
                .unwrap();
        (reversed == i64::try_from(ORPHANS).unwrap()).then_some(())
    })
    .await;
    let stats = IssuerControlClient::connect(format!("http://{issuer}"))
        .await
        .unwrap()
        .stats(StatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stats.reversals,
        u64::try_from(ORPHANS).unwrap(),
        "each orphan reversed exactly once at the issuer"
    );
    assert!(second.terminate().success());
    assert!(authorization.terminate().success());
    stop.cancel();
    journal.close().await;
    handler_db.close().await;
    for schema in [journal_schema, handler_schema] {
        let _ = switch_platform::db::drop_schema(&database.url, &schema).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_settlement_batcher_stopped_while_approvals_stream_in_commits_what_it_recorded() {
    const SALES: usize = 40;
    let prefix = unique_suffix();
    let stop = CancellationToken::new();
    let issuer = spawn_issuer(&stop).await;
    let authorization_listen = free_address().await;
    let settlement_listen = free_address().await;
    let payouts = switch_e2e::TempDir::new(&prefix).unwrap();
    let mut env = switchd_env(
        &prefix,
        &[
            (
                "SWITCH__AUTHORIZATION__LISTEN",
                authorization_listen.to_string(),
            ),
            (
                "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
                format!("http://{issuer}"),
            ),
            (
                "SWITCH__AUTHORIZATION__OUTBOX__POLL_INTERVAL_MS",
                "100".to_owned(),
            ),
            ("SWITCH__SETTLEMENT__LISTEN", settlement_listen.to_string()),
            (
                "SWITCH__SETTLEMENT__AUTHORIZATION_ENDPOINT",
                format!("http://{authorization_listen}"),
            ),
            ("SWITCH__SETTLEMENT__SCHEDULER_ENABLED", "false".to_owned()),
            (
                "SWITCH__SETTLEMENT__PAYOUT_DIR",
                payouts.path().display().to_string(),
            ),
        ],
    );
    env.extend(shutdown_env().map(|(k, v)| (k.to_owned(), v)));
    // The batcher consumes through its unready delay; without one it stops
    // while approvals are still coming.
    env.push(("SWITCH__SHUTDOWN__UNREADY_DELAY_MS".into(), "0".into()));
    let mut authorization = SwitchdProcess::spawn("authorization", &env);
    authorization
        .wait_until_healthy(authorization_listen, AUTHORIZATION)
        .await;
    let mut first = SwitchdProcess::spawn("settlement-batcher", &env);
    first.wait_until_healthy(settlement_listen, "").await;

    // Approvals keep coming while the batcher is told to stop.
    let client = AuthorizationServiceClient::connect(format!("http://{authorization_listen}"))
        .await
        .unwrap();
    let sales = tokio::spawn(async move {
        let mut client = client;
        for i in 0..SALES {
            let record = client
                .authorize(authorize_request(
                    "TERM0001",
                    &format!("{:06}", 700 + i),
                    1_000,
                ))
                .await
                .expect("authorization serves throughout")
                .into_inner()
                .authorization
                .unwrap();
            assert_eq!(record.status(), AuthorizationStatus::Approved);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{prefix}_"),
        ..DatabaseConfig::default()
    };
    let ledger_schema = database.schema_for(settlement_batcher::SERVICE_NAME);
    let ledger = switch_platform::db::connect(&database, &ledger_schema)
        .await
        .unwrap();
    let recorded = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM transactions")
            .fetch_one(&ledger)
            .await
            .unwrap()
    };
    within("the first approvals in the ledger", 60, async || {
        (recorded().await > 0).then_some(())
    })
    .await;
    first.send_sigterm();
    exits_cleanly(&mut first).await;
    let kafka = switch_platform::kafka::KafkaConfig {
        brokers: kafka_brokers(),
        topic_prefix: format!("{prefix}."),
        ..switch_platform::kafka::KafkaConfig::default()
    };
    let topics = [kafka.topic(switch_platform::kafka::topics::AUTHORIZATION_EVENTS)];
    let (applied, past_commit) =
        applied_past_commit(&ledger, &kafka.group("settlement-batcher"), &topics).await;
    assert!(applied > 0, "the first batcher applied events");
    assert!(
        past_commit.is_empty(),
        "applied but not committed, so applied again by the next owner: {past_commit:?}"
    );
    let before = recorded().await;
    assert!(
        before < i64::try_from(SALES).unwrap(),
        "stopped mid-stream: {before} of {SALES} recorded"
    );

    sales.await.expect("every sale approved");
    let mut second = SwitchdProcess::spawn("settlement-batcher", &env);
    second.wait_until_healthy(settlement_listen, "").await;
    within("every approval in the ledger", 90, async || {
        (recorded().await == i64::try_from(SALES).unwrap()).then_some(())
    })
    .await;
    let unconfirmed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transactions WHERE status = 'unconfirmed'")
            .fetch_one(&ledger)
            .await
            .unwrap();
    assert_eq!(unconfirmed, i64::try_from(SALES).unwrap());
    assert!(second.terminate().success());
    assert!(authorization.terminate().success());
    stop.cancel();
    ledger.close().await;
    for service in [
        authorization::SERVICE_NAME,
        settlement_batcher::SERVICE_NAME,
    ] {
        let _ =
            switch_platform::db::drop_schema(&database.url, &database.schema_for(service)).await;
    }
}

/// A terminal's client over mutual TLS to the gateway at `gateway`.
fn terminal_client(
    pki: &dev_certs::DevPki,
    gateway: SocketAddr,
) -> switch_e2e::v1::terminal_service_client::TerminalServiceClient<Channel> {
    let cert = pki
        .terminal_cert("TERM0001", "MERCHANT0000001")
        .expect("a terminal certificate");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pki.ca_cert_pem()))
        .domain_name("localhost")
        .identity(tonic::transport::Identity::from_pem(
            &cert.cert_pem,
            &cert.key_pem,
        ));
    switch_e2e::v1::terminal_service_client::TerminalServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", gateway.port()))
            .expect("an endpoint")
            .tls_config(tls)
            .expect("client TLS")
            .connect_lazy(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_answers_every_terminal_sale_in_flight_at_sigterm() {
    const IN_FLIGHT_SALES: usize = 8;
    let prefix = unique_suffix();
    let stop = CancellationToken::new();
    let issuer = spawn_issuer(&stop).await;
    IssuerControlClient::connect(format!("http://{issuer}"))
        .await
        .unwrap()
        .set_faults(FaultPlan {
            latency_ms: ISSUER_LATENCY_MS,
            authorizations_only: true,
            ..FaultPlan::default()
        })
        .await
        .unwrap();
    let certs = switch_e2e::TempDir::new(&prefix).unwrap();
    let pki = dev_certs::DevPki::generate().unwrap();
    pki.write_dev_layout(certs.path(), dev_certs::DEFAULT_TERMINALS)
        .unwrap();
    let path = |name: &str| certs.path().join(name).display().to_string();
    let (authorization_listen, gateway) = (free_address().await, free_address().await);
    let mut env = switchd_env(
        &prefix,
        &[
            (
                "SWITCH__AUTHORIZATION__LISTEN",
                authorization_listen.to_string(),
            ),
            (
                "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
                format!("http://{issuer}"),
            ),
            (
                "SWITCH__AUTHORIZATION__ISSUER_TIMEOUT_MS",
                "5000".to_owned(),
            ),
            ("SWITCH__GATEWAY__LISTEN", gateway.to_string()),
            (
                "SWITCH__GATEWAY__AUTHORIZATION_ENDPOINT",
                format!("http://{authorization_listen}"),
            ),
            ("SWITCH__GATEWAY__TLS__CERT_PATH", path("server.pem")),
            ("SWITCH__GATEWAY__TLS__KEY_PATH", path("server.key")),
            ("SWITCH__GATEWAY__TLS__CLIENT_CA_PATH", path("ca.pem")),
        ],
    );
    env.extend(shutdown_env().map(|(k, v)| (k.to_owned(), v)));
    let mut authorization = SwitchdProcess::spawn("authorization", &env);
    authorization
        .wait_until_healthy(authorization_listen, AUTHORIZATION)
        .await;
    let mut gateway_process = SwitchdProcess::spawn("terminal-gateway", &env);
    let terminal = terminal_client(&pki, gateway);
    // Served once a (slow) sale goes through: the gateway is up.
    let first = within("the gateway to serve a sale", 60, async || {
        terminal
            .clone()
            .sale(switch_e2e::sale(
                "TERM0001",
                "000800",
                switch_e2e::VISA,
                1_000,
            ))
            .await
            .ok()
    })
    .await;
    assert_eq!(
        first.into_inner().authorization.unwrap().status(),
        AuthorizationStatus::Approved
    );
    let already = issuer_authorizations(issuer).await;

    let in_flight: Vec<_> = (0..IN_FLIGHT_SALES)
        .map(|i| {
            let mut terminal = terminal.clone();
            tokio::spawn(async move {
                terminal
                    .sale(switch_e2e::sale(
                        "TERM0001",
                        &format!("{:06}", 801 + i),
                        switch_e2e::VISA,
                        1_000,
                    ))
                    .await
            })
        })
        .collect();
    within("every sale at the issuer", 30, async || {
        (issuer_authorizations(issuer).await >= already + u64::try_from(IN_FLIGHT_SALES).unwrap())
            .then_some(())
    })
    .await;
    gateway_process.send_sigterm();
    // A terminal that connects during the unready delay is still served.
    let late = terminal_client(&pki, gateway)
        .sale(switch_e2e::sale(
            "TERM0001",
            "000899",
            switch_e2e::VISA,
            1_000,
        ))
        .await
        .expect("a sale sent during the unready delay is served")
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(late.status(), AuthorizationStatus::Approved);
    for call in in_flight {
        let record = call
            .await
            .unwrap()
            .expect("a sale in flight at the signal is answered")
            .into_inner()
            .authorization
            .unwrap();
        assert_eq!(record.status(), AuthorizationStatus::Approved);
    }
    exits_cleanly(&mut gateway_process).await;
    assert!(authorization.terminate().success());
    stop.cancel();
    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{prefix}_"),
        ..DatabaseConfig::default()
    };
    for service in [authorization::SERVICE_NAME, terminal_gateway::SERVICE_NAME] {
        let _ =
            switch_platform::db::drop_schema(&database.url, &database.schema_for(service)).await;
    }
}
