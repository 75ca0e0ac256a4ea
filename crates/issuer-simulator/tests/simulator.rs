//! End-to-end tests of the issuer simulator: an in-process server on
//! `127.0.0.1:0`, driven over plaintext HTTP/2 by the generated clients.

use std::net::SocketAddr;
use std::time::Duration;

use issuer_simulator::rules::approval_code;
use switch_platform::db::DatabaseConfig;
use switch_proto::v1::issuer_control_client::IssuerControlClient;
use switch_proto::v1::issuer_service_client::IssuerServiceClient;
use switch_proto::v1::{
    FaultPlan, FundsRequest, FundsState, IssuerAuthorizeRequest, IssuerAuthorizeResponse,
    IssuerReverseRequest, IssuerStats, Money, StatsRequest,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

/// A running simulator and clients for it.
struct Harness {
    channel: Channel,
    issuer: IssuerServiceClient<Channel>,
    control: IssuerControlClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), issuer_simulator::SimulatorError>>,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_configured(
            &issuer_simulator::IssuerSimulatorConfig::default(),
            &DatabaseConfig::default(),
        )
        .await
    }

    async fn start_configured(
        config: &issuer_simulator::IssuerSimulatorConfig,
        database: &DatabaseConfig,
    ) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let (config, database) = (config.clone(), database.clone());
        let server = tokio::spawn(async move {
            issuer_simulator::serve_configured(
                &config,
                &database,
                &switch_platform::internal_tls::InternalTlsConfig::plaintext_for_lab(),
                listener,
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        Harness {
            issuer: IssuerServiceClient::new(channel.clone()),
            control: IssuerControlClient::new(channel.clone()),
            channel,
            stop: Some(stop),
            server,
        }
    }

    async fn authorize(
        &self,
        rrn: &str,
        stan: &str,
        units: i64,
    ) -> Result<IssuerAuthorizeResponse, tonic::Status> {
        self.issuer
            .clone()
            .authorize(auth_request(rrn, stan, Some(units)))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn code(&self, rrn: &str, stan: &str, units: i64) -> String {
        self.authorize(rrn, stan, units)
            .await
            .expect("authorize")
            .response_code
    }

    async fn reverse(&self, rrn: &str, stan: &str, repeat: bool) -> Result<String, tonic::Status> {
        self.issuer
            .clone()
            .reverse(IssuerReverseRequest {
                rrn: rrn.to_owned(),
                stan: stan.to_owned(),
                amount: Some(eur(1000)),
                repeat,
            })
            .await
            .map(|r| r.into_inner().response_code)
    }

    async fn set_faults(&self, plan: FaultPlan) {
        self.control
            .clone()
            .set_faults(plan)
            .await
            .expect("set faults");
    }

    async fn stats(&self) -> IssuerStats {
        self.control
            .clone()
            .stats(StatsRequest {})
            .await
            .expect("stats")
            .into_inner()
    }

    async fn funds(&self, rrn: &str) -> (FundsState, i64) {
        let funds = self.funds_entry(rrn).await;
        (funds.state(), funds.held_minor_units)
    }

    async fn funds_entry(&self, rrn: &str) -> switch_proto::v1::FundsResponse {
        self.control
            .clone()
            .funds(FundsRequest {
                rrn: rrn.to_owned(),
            })
            .await
            .expect("funds")
            .into_inner()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(5), &mut self.server)
            .await
            .expect("server stops")
            .expect("server task");
        result.expect("server result");
    }
}

fn eur(minor_units: i64) -> Money {
    Money {
        minor_units,
        currency: "EUR".to_owned(),
    }
}

fn auth_request(rrn: &str, stan: &str, units: Option<i64>) -> IssuerAuthorizeRequest {
    IssuerAuthorizeRequest {
        rrn: rrn.to_owned(),
        stan: stan.to_owned(),
        terminal_id: "TERM0001".to_owned(),
        merchant_id: "MERCHANT0000001".to_owned(),
        pan: "4111111111111111".to_owned(),
        expiry: "2812".to_owned(),
        amount: units.map(eur),
    }
}

#[tokio::test]
async fn approves_with_deterministic_approval_code() {
    let h = Harness::start().await;
    let first = h
        .authorize("512345678901", "000001", 1000)
        .await
        .expect("authorize");
    assert_eq!(first.response_code, "00");
    assert_eq!(first.approval_code.len(), 6);
    assert!(
        first
            .approval_code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
        "{}",
        first.approval_code
    );
    assert_eq!(first.approval_code, approval_code("512345678901"));
    // Same RRN, same code — even with another amount and STAN.
    let again = h
        .authorize("512345678901", "000002", 2599)
        .await
        .expect("authorize");
    assert_eq!(again, first);
    let other = h
        .authorize("512345678902", "000003", 1000)
        .await
        .expect("authorize");
    assert_eq!(other.response_code, "00");
    assert_ne!(other.approval_code, first.approval_code);
    h.stop().await;
}

#[tokio::test]
async fn decline_rules() {
    let h = Harness::start().await;
    for (units, expected) in [
        (1051, "51"),
        (51, "51"),
        (1005, "05"),
        (2054, "54"),
        (1050, "00"),
    ] {
        let response = h
            .authorize("600000000001", "000001", units)
            .await
            .expect("authorize");
        assert_eq!(response.response_code, expected, "amount {units}");
        if expected != "00" {
            assert_eq!(response.approval_code, "", "no approval code on a decline");
        }
    }
    let stats = h.stats().await;
    assert_eq!(
        (stats.authorizations, stats.approved, stats.declined),
        (5, 1, 4)
    );
    h.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_format_errors() {
    let h = Harness::start().await;
    let mut issuer = h.issuer.clone();
    for request in [
        auth_request("600000000002", "000001", None),
        auth_request("", "000001", Some(1000)),
        auth_request("600000000002", "000001", Some(0)),
        auth_request("600000000002", "000001", Some(-1000)),
        IssuerAuthorizeRequest::default(),
    ] {
        let response = issuer
            .authorize(request)
            .await
            .expect("answered")
            .into_inner();
        assert_eq!(response.response_code, "30");
        assert_eq!(response.approval_code, "");
    }
    assert_eq!(
        h.reverse("", "000001", false).await.expect("answered"),
        "30"
    );
    h.stop().await;
}

#[tokio::test]
async fn latency_fault_delays_the_answer() {
    let h = Harness::start().await;
    h.set_faults(FaultPlan {
        latency_ms: 300,
        ..FaultPlan::default()
    })
    .await;
    let started = Instant::now();
    assert_eq!(h.code("600000000003", "000001", 1000).await, "00");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    h.set_faults(FaultPlan::default()).await;
    let started = Instant::now();
    assert_eq!(h.code("600000000003", "000002", 1000).await, "00");
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    h.stop().await;
}

#[tokio::test]
async fn no_response_makes_the_caller_time_out() {
    let h = Harness::start().await;
    h.set_faults(FaultPlan {
        no_response: true,
        ..FaultPlan::default()
    })
    .await;
    let outcome = tokio::time::timeout(
        Duration::from_millis(300),
        h.authorize("600000000004", "000001", 1000),
    )
    .await;
    assert!(outcome.is_err(), "expected a timeout, got {outcome:?}");

    // A gRPC deadline (grpc-timeout) fires too. tonic's server enforces it
    // and answers CANCELLED "Timeout expired" (not DEADLINE_EXCEEDED).
    let mut request = tonic::Request::new(auth_request("600000000004", "000002", Some(1000)));
    request.set_timeout(Duration::from_millis(200));
    let status = h
        .issuer
        .clone()
        .authorize(request)
        .await
        .expect_err("deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );

    let stats = h.stats().await;
    assert_eq!(
        (stats.authorizations, stats.dropped, stats.approved),
        (2, 2, 0)
    );

    // Cleared: answers again.
    h.set_faults(FaultPlan::default()).await;
    assert_eq!(h.code("600000000004", "000003", 1000).await, "00");
    h.stop().await;
}

#[tokio::test]
async fn outage_is_unavailable() {
    let h = Harness::start().await;
    h.set_faults(FaultPlan {
        outage: true,
        ..FaultPlan::default()
    })
    .await;
    let status = h
        .authorize("600000000005", "000001", 1000)
        .await
        .expect_err("outage");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "issuer outage (simulated)");
    let status = h
        .reverse("600000000005", "000002", false)
        .await
        .expect_err("outage");
    assert_eq!(status.code(), Code::Unavailable);
    let stats = h.stats().await;
    assert_eq!(
        (stats.authorizations, stats.reversals, stats.dropped),
        (1, 1, 2)
    );
    h.stop().await;
}

#[tokio::test]
async fn decline_code_fault_overrides_the_rules() {
    let h = Harness::start().await;
    h.set_faults(FaultPlan {
        decline_code: "91".to_owned(),
        ..FaultPlan::default()
    })
    .await;
    let response = h
        .authorize("600000000006", "000001", 1000)
        .await
        .expect("authorize");
    assert_eq!(response.response_code, "91");
    assert_eq!(response.approval_code, "");
    assert_eq!(h.stats().await.declined, 1);
    h.stop().await;
}

#[tokio::test]
async fn fault_window_expires() {
    let h = Harness::start().await;
    let window = Duration::from_millis(300);
    let set_at = Instant::now();
    h.set_faults(FaultPlan {
        decline_code: "91".to_owned(),
        window_ms: 300,
        ..FaultPlan::default()
    })
    .await;
    assert_eq!(h.code("600000000007", "000001", 1000).await, "91");

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut polls = 0u32;
    loop {
        polls += 1;
        if h.code("600000000007", "000002", 1000).await == "00" {
            break;
        }
        assert!(Instant::now() < deadline, "fault still active after 5 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The plan cannot have expired before its window had passed.
    assert!(
        set_at.elapsed() >= window,
        "expired after {:?}",
        set_at.elapsed()
    );
    assert!(polls > 1);
    h.stop().await;
}

#[tokio::test]
async fn stans_filter_selects_requests() {
    let h = Harness::start().await;
    h.set_faults(FaultPlan {
        stans: vec!["000042".to_owned(), "000043".to_owned()],
        decline_code: "91".to_owned(),
        ..FaultPlan::default()
    })
    .await;
    assert_eq!(h.code("600000000008", "000041", 1000).await, "00");
    assert_eq!(h.code("600000000009", "000042", 1000).await, "91");
    assert_eq!(h.code("600000000010", "000043", 1000).await, "91");
    assert_eq!(h.code("600000000011", "000044", 1000).await, "00");
    h.stop().await;
}

#[tokio::test]
async fn rpc_kind_selection() {
    let h = Harness::start().await;
    h.set_faults(FaultPlan {
        outage: true,
        reversals_only: true,
        ..FaultPlan::default()
    })
    .await;
    assert_eq!(h.code("600000000012", "000001", 1000).await, "00");
    let status = h
        .reverse("600000000012", "000002", false)
        .await
        .expect_err("outage");
    assert_eq!(status.code(), Code::Unavailable);

    h.set_faults(FaultPlan {
        outage: true,
        authorizations_only: true,
        ..FaultPlan::default()
    })
    .await;
    let status = h
        .authorize("600000000013", "000003", 1000)
        .await
        .expect_err("outage");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        h.reverse("600000000012", "000004", true)
            .await
            .expect("reverse"),
        "00"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_partial_approval_holds_half_until_reversed() {
    let h = Harness::start().await;
    h.set_faults(FaultPlan {
        partial_approval: true,
        ..FaultPlan::default()
    })
    .await;
    let answer = h.authorize("600000000020", "000001", 1000).await.unwrap();
    assert_eq!(answer.response_code, "10");
    assert_eq!(answer.approval_code.len(), 6);
    assert_eq!(h.funds("600000000020").await, (FundsState::Held, 500));
    // Declines stay declines.
    assert_eq!(h.code("600000000021", "000002", 1051).await, "51");
    assert_eq!(
        h.reverse("600000000020", "000001", false).await.unwrap(),
        "00"
    );
    assert_eq!(h.funds("600000000020").await, (FundsState::Released, 500));
    h.stop().await;
}

#[tokio::test]
async fn approve_then_hang_holds_funds_and_loses_the_answer() {
    let h = Harness::start().await;
    h.set_faults(FaultPlan {
        approve_then_hang: true,
        ..FaultPlan::default()
    })
    .await;
    let mut request = tonic::Request::new(auth_request("600000000022", "000001", Some(1000)));
    request.set_timeout(Duration::from_millis(300));
    let status = h
        .issuer
        .clone()
        .authorize(request)
        .await
        .expect_err("no answer");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert_eq!(h.funds("600000000022").await, (FundsState::Held, 1000));
    assert_eq!(h.stats().await.dropped, 1);
    h.stop().await;
}

/// A reversal that overtakes its original (still held back by latency)
/// is answered "25"; the original is approved afterwards.
#[tokio::test]
async fn a_reversal_overtaking_its_original_is_answered_25() {
    let h = Harness::start().await;
    h.set_faults(FaultPlan {
        latency_ms: 300,
        authorizations_only: true,
        ..FaultPlan::default()
    })
    .await;
    let issuer = h.issuer.clone();
    let original = tokio::spawn(async move {
        let mut issuer = issuer;
        issuer
            .authorize(auth_request("600000000023", "000001", Some(1000)))
            .await
            .map(|r| r.into_inner().response_code)
    });
    // The original is received (counted) before the reversal is sent.
    while h.stats().await.authorizations == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        h.reverse("600000000023", "000001", false).await.unwrap(),
        "25"
    );
    assert_eq!(original.await.unwrap().unwrap(), "00");
    assert_eq!(h.funds("600000000023").await, (FundsState::Held, 1000));
    h.stop().await;
}

#[tokio::test]
async fn reversals_are_idempotent_and_counted() {
    let h = Harness::start().await;
    assert_eq!(h.code("600000000014", "000001", 1000).await, "00");
    assert_eq!(h.code("600000000015", "000002", 1051).await, "51");
    assert_eq!(
        h.reverse("600000000014", "000003", false)
            .await
            .expect("reverse"),
        "00"
    );
    assert_eq!(
        h.reverse("600000000014", "000003", true)
            .await
            .expect("repeat"),
        "00"
    );
    assert_eq!(
        h.reverse("600000000014", "000003", true)
            .await
            .expect("repeat"),
        "00"
    );
    // Reversing an RRN the simulator never decided: no original ("25").
    assert_eq!(
        h.reverse("699999999999", "000004", false)
            .await
            .expect("reverse"),
        "25"
    );
    assert_eq!(h.funds("600000000014").await, (FundsState::Released, 1000));
    assert_eq!(h.funds("600000000015").await, (FundsState::Declined, 0));
    assert_eq!(h.funds("699999999999").await, (FundsState::Unknown, 0));
    assert_eq!(
        h.stats().await,
        IssuerStats {
            authorizations: 2,
            reversals: 4,
            approved: 1,
            declined: 1,
            dropped: 0,
        }
    );
    h.stop().await;
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let h = Harness::start().await;
    let mut health = HealthClient::new(h.channel.clone());
    for service in ["", "switch.v1.IssuerService", "switch.v1.IssuerControl"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("check")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }
    let status = health
        .check(HealthCheckRequest {
            service: "switch.v1.Nope".to_owned(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(status.code(), Code::NotFound);
    h.stop().await;
}

#[tokio::test]
async fn reflection_lists_services_v1_and_v1alpha() {
    let h = Harness::start().await;
    let mut v1 = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
        h.channel.clone(),
    );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut responses = v1
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("message")
        .expect("one response");
    let Some(
        tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(
            list,
        ),
    ) = response.message_response
    else {
        panic!("unexpected response {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "switch.v1.IssuerService",
        "switch.v1.IssuerControl",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }

    let mut v1alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            h.channel.clone(),
        );
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "switch.v1.IssuerControl".to_owned(),
            ),
        ),
    };
    let mut responses = v1alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("message")
        .expect("one response");
    assert!(
        matches!(
            response.message_response,
            Some(tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "unexpected response {response:?}"
    );
    h.stop().await;
}

#[test]
fn config_defaults_and_parsing() {
    use issuer_simulator::IssuerSimulatorConfig;

    let default = IssuerSimulatorConfig::default();
    assert_eq!(
        default.listen,
        "127.0.0.1:50070".parse::<SocketAddr>().expect("addr")
    );
    let empty: IssuerSimulatorConfig = toml::from_str("").expect("empty config");
    assert_eq!(empty.listen, default.listen);
    let set: IssuerSimulatorConfig = toml::from_str("listen = \"0.0.0.0:6000\"").expect("config");
    assert_eq!(
        set.listen,
        "0.0.0.0:6000".parse::<SocketAddr>().expect("addr")
    );
    assert!(toml::from_str::<IssuerSimulatorConfig>("lisen = \"0.0.0.0:6000\"").is_err());
}

#[tokio::test]
async fn run_reports_bind_errors() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = issuer_simulator::IssuerSimulatorConfig {
        listen: taken.local_addr().expect("addr"),
        ..Default::default()
    };
    let database = switch_platform::db::DatabaseConfig::default();
    let error = issuer_simulator::run(
        &config,
        &database,
        &switch_platform::internal_tls::InternalTlsConfig::plaintext_for_lab(),
        std::future::ready(()),
    )
    .await
    .expect_err("address in use");
    assert!(
        matches!(error, issuer_simulator::SimulatorError::Bind { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_database_ledger_outlives_the_simulator_and_counts_unflagged_repeats() {
    let unique = rand::random::<u32>();
    let database = DatabaseConfig {
        url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        schema_prefix: format!("iss{}_{unique}_", std::process::id()),
        ..DatabaseConfig::default()
    };
    let config = issuer_simulator::IssuerSimulatorConfig {
        ledger: issuer_simulator::LedgerStore::Database,
        ..Default::default()
    };
    let (rrn, stan) = ("633100000001", "000001");

    let first = Harness::start_configured(&config, &database).await;
    assert_eq!(first.code(rrn, stan, 1_000).await, "00");
    assert_eq!(first.code("633100000002", "000002", 1_051).await, "51");
    first.stop().await;

    // A new process finds what the first decided.
    let second = Harness::start_configured(&config, &database).await;
    assert_eq!(second.funds(rrn).await, (FundsState::Held, 1_000));
    assert_eq!(
        second.funds("633100000002").await,
        (FundsState::Declined, 0)
    );
    assert_eq!(
        second.reverse(rrn, stan, false).await.expect("reversed"),
        "00"
    );
    assert_eq!(second.reverse(rrn, stan, true).await.expect("repeat"), "00");
    // A second reversal that does not say it is a repeat: an issuer without
    // duplicate detection would credit it again.
    assert_eq!(second.reverse(rrn, stan, false).await.expect("again"), "00");
    let entry = second.funds_entry(rrn).await;
    assert_eq!(
        (
            entry.state(),
            entry.held_minor_units,
            entry.reversal_requests,
            entry.unflagged_repeats
        ),
        (FundsState::Released, 1_000, 3, 1)
    );
    assert_eq!(
        second
            .reverse("633100000009", "000009", false)
            .await
            .expect("unknown"),
        "25"
    );
    second.stop().await;
    switch_platform::db::drop_schema(
        &database.url,
        &database.schema_for(issuer_simulator::SERVICE_NAME),
    )
    .await
    .expect("the schema is dropped");
}
