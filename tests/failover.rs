//! Process failures in the middle of a batch of orphans (issue 4): `kill -9`
//! of the reversal handler, of authorization, and of one of two handler
//! replicas. Every service runs as its own `switchd` process against the
//! real PostgreSQL and broker; afterwards every orphan must be reversed
//! exactly once.

use std::net::SocketAddr;
use std::time::Duration;

use switch_e2e::v1::authorization_service_client::AuthorizationServiceClient;
use switch_e2e::v1::{
    AuthorizationStatus, AuthorizeRequest, EventEnvelope, FaultPlan, Money, TerminalKey,
};
use switch_e2e::{
    SwitchdProcess, VISA, database_url, free_address, switchd_env, today, unique_suffix,
};
use switch_platform::db::DatabaseConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const ORPHANS: usize = 20;

/// Configuration shared by every process of one test.
struct Deployment {
    prefix: String,
    authorization: SocketAddr,
    issuer: SocketAddr,
    journal: sqlx::PgPool,
    database: DatabaseConfig,
    stop_issuer: CancellationToken,
}

impl Deployment {
    async fn start() -> Deployment {
        let prefix = unique_suffix();
        let stop_issuer = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = listener.local_addr().unwrap();
        tokio::spawn(issuer_simulator::serve(
            listener,
            stop_issuer.clone().cancelled_owned(),
        ));
        let database = DatabaseConfig {
            url: database_url(),
            schema_prefix: format!("{prefix}_"),
            max_connections: 4,
            ..DatabaseConfig::default()
        };
        let journal = switch_platform::db::connect(
            &database,
            &database.schema_for(authorization::SERVICE_NAME),
        )
        .await
        .unwrap();
        Deployment {
            prefix,
            authorization: free_address().await,
            issuer,
            journal,
            database,
            stop_issuer,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        switchd_env(
            &self.prefix,
            &[
                (
                    "SWITCH__AUTHORIZATION__LISTEN",
                    self.authorization.to_string(),
                ),
                (
                    "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
                    format!("http://{}", self.issuer),
                ),
                (
                    "SWITCH__AUTHORIZATION__ISSUER_TIMEOUT_MS",
                    "1000".to_owned(),
                ),
                (
                    "SWITCH__AUTHORIZATION__REVERSAL__INITIAL_DELAY_MS",
                    "50".to_owned(),
                ),
                (
                    "SWITCH__AUTHORIZATION__REVERSAL__MAX_DELAY_MS",
                    "200".to_owned(),
                ),
                (
                    "SWITCH__AUTHORIZATION__REVERSAL__POLL_INTERVAL_MS",
                    "50".to_owned(),
                ),
                (
                    "SWITCH__AUTHORIZATION__OUTBOX__POLL_INTERVAL_MS",
                    "100".to_owned(),
                ),
                (
                    "SWITCH__REVERSAL_HANDLER__AUTHORIZATION_ENDPOINT",
                    format!("http://{}", self.authorization),
                ),
                ("SWITCH__REVERSAL_HANDLER__ACK_WINDOW_MS", "800".to_owned()),
                (
                    "SWITCH__REVERSAL_HANDLER__SWEEP_INTERVAL_MS",
                    "50".to_owned(),
                ),
                (
                    "SWITCH__REVERSAL_HANDLER__RETRY_INITIAL_DELAY_MS",
                    "50".to_owned(),
                ),
                (
                    "SWITCH__REVERSAL_HANDLER__RETRY_MAX_DELAY_MS",
                    "300".to_owned(),
                ),
            ],
        )
    }

    async fn authorization(&self) -> SwitchdProcess {
        let mut process = SwitchdProcess::spawn("authorization", &self.env());
        process
            .wait_until_healthy(self.authorization, "switch.v1.AuthorizationService")
            .await;
        process
    }

    async fn reversal_handler(&self) -> SwitchdProcess {
        let listen = free_address().await;
        let mut env = self.env();
        env.push((
            "SWITCH__REVERSAL_HANDLER__LISTEN".into(),
            listen.to_string(),
        ));
        let mut process = SwitchdProcess::spawn("reversal-handler", &env);
        process.wait_until_healthy(listen, "").await;
        process
    }

    /// Approved sales nobody will acknowledge: orphans once the window ends.
    async fn orphans(&self, stan_base: u32) -> Vec<String> {
        let mut client =
            AuthorizationServiceClient::connect(format!("http://{}", self.authorization))
                .await
                .unwrap();
        let mut ids = Vec::new();
        for i in 0..ORPHANS {
            let record = client
                .authorize(AuthorizeRequest {
                    key: Some(TerminalKey {
                        terminal_id: "TERM0001".into(),
                        stan: format!("{:06}", stan_base + u32::try_from(i).unwrap()),
                        local_date: today(),
                    }),
                    merchant_id: "MERCHANT0000001".into(),
                    pan: VISA.into(),
                    expiry: "2812".into(),
                    amount: Some(Money {
                        minor_units: 1_000,
                        currency: "EUR".into(),
                    }),
                    last_completed_stan: String::new(),
                    channel: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .authorization
                .unwrap();
            assert_eq!(record.status(), AuthorizationStatus::Approved);
            ids.push(record.transaction_id);
        }
        ids
    }

    async fn count_in_state(&self, state: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM authorizations WHERE state = $1")
            .bind(state)
            .fetch_one(&self.journal)
            .await
            .unwrap()
    }

    async fn wait_until(&self, what: &str, seconds: u64, mut done: impl AsyncFnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
        while !done().await {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the handler has started asking for reversals.
    async fn wait_for_first_reversal_request(&self) {
        self.wait_until("the first reversal request", 60, async || {
            self.count_in_state("reversal_pending").await + self.count_in_state("reversed").await
                > 0
        })
        .await;
    }

    /// Every orphan reversed, each with one reversal request, one
    /// acknowledged reversal and one `authorization.reversed` event.
    async fn assert_all_reversed_exactly_once(&self, ids: &[String]) {
        self.wait_until("every orphan reversed", 90, async || {
            self.count_in_state("reversed").await == i64::try_from(ids.len()).unwrap()
        })
        .await;
        for id in ids {
            let history: Vec<String> = sqlx::query_scalar(
                "SELECT to_state FROM authorization_transitions WHERE transaction_id = $1::uuid ORDER BY id",
            )
            .bind(id)
            .fetch_all(&self.journal)
            .await
            .unwrap();
            assert_eq!(
                history,
                [
                    "received",
                    "sent_to_issuer",
                    "approved",
                    "reversal_pending",
                    "reversed"
                ],
                "{id}"
            );
        }
        let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox")
            .fetch_all(&self.journal)
            .await
            .unwrap();
        let reversed: Vec<String> = payloads
            .iter()
            .map(|p| <EventEnvelope as prost::Message>::decode(p.as_slice()).unwrap())
            .filter(|e| e.event_type == "authorization.reversed")
            .map(|e| e.transaction_id)
            .collect();
        for id in ids {
            assert_eq!(
                reversed.iter().filter(|r| *r == id).count(),
                1,
                "one authorization.reversed event for {id}"
            );
        }
    }

    async fn finish(self) {
        self.stop_issuer.cancel();
        self.journal.close().await;
        for service in [authorization::SERVICE_NAME, reversal_handler::SERVICE_NAME] {
            let _ = switch_platform::db::drop_schema(
                &self.database.url,
                &self.database.schema_for(service),
            )
            .await;
        }
    }
}

async fn slow_issuer_reversals(deployment: &Deployment, latency_ms: u32) {
    let mut control = switch_e2e::v1::issuer_control_client::IssuerControlClient::connect(format!(
        "http://{}",
        deployment.issuer
    ))
    .await
    .unwrap();
    control
        .set_faults(FaultPlan {
            latency_ms,
            reversals_only: true,
            ..FaultPlan::default()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reversal_handler_killed_mid_batch_every_orphan_reversed_once() {
    let deployment = Deployment::start().await;
    let _authorization = deployment.authorization().await;
    let mut handler = deployment.reversal_handler().await;
    let ids = deployment.orphans(300_000).await;

    // Kill the handler as soon as it has started asking for reversals.
    deployment.wait_for_first_reversal_request().await;
    handler.kill_9();
    let _successor = deployment.reversal_handler().await;
    deployment.assert_all_reversed_exactly_once(&ids).await;
    deployment.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorization_killed_mid_batch_every_orphan_reversed_once() {
    let deployment = Deployment::start().await;
    // Slow reversals, so the kill lands while some are in flight.
    slow_issuer_reversals(&deployment, 150).await;
    let mut authorization = deployment.authorization().await;
    let _handler = deployment.reversal_handler().await;
    let ids = deployment.orphans(310_000).await;

    deployment
        .wait_until("some reversals acknowledged", 60, async || {
            deployment.count_in_state("reversed").await > 0
        })
        .await;
    authorization.kill_9();
    let _restarted = deployment.authorization().await;
    deployment.assert_all_reversed_exactly_once(&ids).await;
    deployment.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handler_replicas_one_killed_every_orphan_reversed_once() {
    let deployment = Deployment::start().await;
    let _authorization = deployment.authorization().await;
    let mut first = deployment.reversal_handler().await;
    let _second = deployment.reversal_handler().await;
    let ids = deployment.orphans(320_000).await;

    deployment.wait_for_first_reversal_request().await;
    first.kill_9();
    deployment.assert_all_reversed_exactly_once(&ids).await;
    deployment.finish().await;
}
