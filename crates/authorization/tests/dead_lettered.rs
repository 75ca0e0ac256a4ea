//! `AuthorizationService.ListDeadLettered` on the real PostgreSQL, with the
//! issuer simulator: reversals the issuer keeps answering "91" are given up
//! on past their maximum age, and operators list them oldest first, a page
//! at a time, each with its authorization (card number masked only) and
//! what its attempts got; a limit above the maximum or a cursor the service
//! did not issue is refused naming the field. The queue's gauges count
//! what is owed (and since when) and what was given up on. The broker is
//! not needed: the outbox keeps the events.

use std::time::{Duration, Instant};

use authorization::store::{Journal, ReversalQueueGauges};
use switch_core::Clock as _;
use switch_platform::db::DatabaseConfig;
use switch_platform::kafka::KafkaConfig;
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use switch_proto::v1::issuer_control_client::IssuerControlClient;
use switch_proto::v1::{
    self as pb, AuthorizeRequest, FaultPlan, ListDeadLetteredRequest, ReverseRequest, TerminalKey,
    reverse_request::Target,
};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

const PAN: &str = "4111111111111111";

/// The service's own clock: the gauges' ages are taken on it.
fn now() -> OffsetDateTime {
    switch_core::SystemClock.now()
}

struct Running {
    client: AuthorizationServiceClient<Channel>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    url: String,
    schema: String,
    database: DatabaseConfig,
}

/// Reversals are given up on within a second and a half.
const QUICK_DEAD_LETTER_MS: u64 = 1_500;

async fn start() -> Running {
    start_with_max_age(QUICK_DEAD_LETTER_MS).await
}

async fn start_with_max_age(max_age_ms: u64) -> Running {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let suffix = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let database = DatabaseConfig {
        url: url.clone(),
        schema_prefix: format!("l{suffix}_"),
        max_connections: 4,
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(authorization::SERVICE_NAME);
    let stop = CancellationToken::new();

    let issuer_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = issuer_listener.local_addr().unwrap();
    let issuer_task = tokio::spawn({
        let stop = stop.clone();
        async move {
            issuer_simulator::serve(issuer_listener, stop.cancelled_owned())
                .await
                .expect("the issuer simulator serves");
        }
    });
    // Every reversal is answered "91" (issuer unavailable): repeated, then
    // given up on past `max_age_ms`.
    IssuerControlClient::connect(format!("http://{issuer}"))
        .await
        .unwrap()
        .set_faults(FaultPlan {
            decline_code: "91".into(),
            reversals_only: true,
            ..FaultPlan::default()
        })
        .await
        .unwrap();

    // A failed attempt is repeated no sooner than the original call's
    // deadline (ADR 14): kept short, so the maximum age is what ends it.
    let mut config = authorization::AuthorizationConfig {
        issuer_endpoint: format!("http://{issuer}"),
        issuer_timeout_ms: 300,
        issuer_late_window_ms: 300,
        ..Default::default()
    };
    config.reversal.initial_delay_ms = 50;
    config.reversal.max_delay_ms = 200;
    config.reversal.max_age_ms = max_age_ms;
    let kafka = KafkaConfig {
        topic_prefix: format!("l{suffix}."),
        ..KafkaConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let authorization_task = tokio::spawn({
        let stop = stop.clone();
        let database = database.clone();
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
    Running {
        client,
        stop,
        tasks: vec![issuer_task, authorization_task],
        url,
        schema,
        database,
    }
}

impl Running {
    async fn stop(self) {
        // An open connection would hold the server's drain to its grace.
        drop(self.client);
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
        switch_platform::db::drop_schema(&self.url, &self.schema)
            .await
            .unwrap();
    }

    /// An approved sale, then its reversal: owed to an issuer that will
    /// not take it.
    async fn approved_then_reversed(&mut self, stan: &str) -> String {
        let approved = self
            .client
            .authorize(AuthorizeRequest {
                key: Some(TerminalKey {
                    terminal_id: "TERM0001".into(),
                    stan: stan.into(),
                    local_date: "2026-12-02".into(),
                }),
                merchant_id: "MERCHANT0000001".into(),
                pan: PAN.into(),
                expiry: "3012".into(),
                amount: Some(pb::Money {
                    minor_units: 1_500,
                    currency: "EUR".into(),
                }),
                last_completed_stan: String::new(),
                channel: "card".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .authorization
            .unwrap();
        assert_eq!(approved.status(), pb::AuthorizationStatus::Approved);
        self.client
            .reverse(ReverseRequest {
                target: Some(Target::TransactionId(approved.transaction_id.clone())),
                reason: pb::ReversalReason::TerminalRequested.into(),
            })
            .await
            .unwrap();
        approved.transaction_id
    }

    /// The default issuer's queue as its gauges read it, at `now`.
    async fn gauges(&self, now: OffsetDateTime) -> ReversalQueueGauges {
        let pool = switch_platform::db::connect(&self.database, &self.schema)
            .await
            .unwrap();
        let gauges = Journal::new(pool.clone())
            .reversal_queue_gauges(
                &authorization::AuthorizationConfig::default().issuer_name,
                now,
            )
            .await
            .unwrap();
        pool.close().await;
        gauges
    }

    async fn page(&mut self, limit: u32, cursor: &str) -> pb::ListDeadLetteredResponse {
        self.client
            .list_dead_lettered(ListDeadLetteredRequest {
                limit,
                cursor: cursor.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_dead_lettered_reversals_a_page_at_a_time() {
    let mut running = start().await;
    let mut ids = Vec::new();
    for stan in ["000101", "000102", "000103"] {
        ids.push(running.approved_then_reversed(stan).await);
    }
    // A sale whose reversal is still owed is not listed, nor one never reversed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.page(0, "").await.reversals.len() < 3 {
        assert!(Instant::now() < deadline, "the reversals are given up on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(
        running.gauges(now()).await,
        ReversalQueueGauges {
            pending: 0,
            oldest_pending_ms: 0,
            dead_lettered: 3
        },
        "all three given up on, none owed"
    );

    let first = running.page(2, "").await;
    assert_eq!(first.reversals.len(), 2);
    assert!(!first.next_cursor.is_empty());
    let second = running.page(2, &first.next_cursor).await;
    assert_eq!(second.reversals.len(), 1);
    assert!(second.next_cursor.is_empty(), "the last page says so");
    let listed: Vec<&pb::DeadLetteredReversal> =
        first.reversals.iter().chain(&second.reversals).collect();
    let mut listed_ids: Vec<String> = listed
        .iter()
        .map(|r| r.authorization.as_ref().unwrap().transaction_id.clone())
        .collect();
    let in_order: Vec<&str> = listed.iter().map(|r| r.dead_lettered_at.as_str()).collect();
    let mut sorted = in_order.clone();
    sorted.sort_unstable();
    assert_eq!(in_order, sorted, "oldest first");
    listed_ids.sort();
    ids.sort();
    assert_eq!(listed_ids, ids, "each exactly once across the pages");

    for reversal in &listed {
        let record = reversal.authorization.as_ref().unwrap();
        assert_eq!(
            record.status(),
            pb::AuthorizationStatus::ReversalDeadLettered
        );
        assert_eq!(record.masked_pan, "411111******1111");
        assert_eq!(reversal.reason(), pb::ReversalReason::TerminalRequested);
        assert!(reversal.attempts >= 2, "{reversal:?}");
        assert_eq!(reversal.last_response_code, "91", "{reversal:?}");
        assert!(reversal.last_error.contains("91"), "{reversal:?}");
        assert!(!reversal.first_attempt_at.is_empty());
        assert!(reversal.first_attempt_at <= reversal.last_attempt_at);
        assert!(reversal.last_attempt_at <= reversal.dead_lettered_at);
        assert!(reversal.requested_at <= reversal.first_attempt_at);
        assert!(
            !format!("{reversal:?}").contains(PAN),
            "never the full card number"
        );
    }

    for (request, field) in [
        (
            ListDeadLetteredRequest {
                limit: 1_001,
                cursor: String::new(),
            },
            "limit",
        ),
        (
            ListDeadLetteredRequest {
                limit: 10,
                cursor: "not-a-cursor".into(),
            },
            "cursor",
        ),
    ] {
        let refused = running
            .client
            .list_dead_lettered(request)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().starts_with(field), "{refused:?}");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_gauges_show_how_long_the_oldest_reversal_has_been_owed() {
    // Given up on only after a day: the reversal stays owed for the test.
    let mut running = start_with_max_age(86_400_000).await;
    // Answered once the service serves, its migrations applied.
    assert!(running.page(0, "").await.reversals.is_empty());
    assert_eq!(
        running.gauges(now()).await,
        ReversalQueueGauges {
            pending: 0,
            oldest_pending_ms: 0,
            dead_lettered: 0
        },
        "nothing owed yet"
    );
    let requested_after = now();
    running.approved_then_reversed("000201").await;
    running.approved_then_reversed("000202").await;
    // Read an hour on (the age is taken on the caller's clock), so the
    // age is the hour plus what the requests themselves took.
    let an_hour_on = requested_after + time::Duration::hours(1);
    let gauges = running.gauges(an_hour_on).await;
    assert_eq!(gauges.pending, 2, "{gauges:?}");
    assert_eq!(gauges.dead_lettered, 0, "{gauges:?}");
    let elapsed_ms = u64::try_from((now() - requested_after).whole_milliseconds()).unwrap();
    assert!(
        (3_600_000 - elapsed_ms..=3_600_000).contains(&gauges.oldest_pending_ms),
        "the oldest was requested an hour before the reading, less the requests' own time: {gauges:?}"
    );
    running.stop().await;
}
