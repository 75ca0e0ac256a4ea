//! Helpers of the reversal handler's integration tests: a migrated schema
//! of its own per test on the real PostgreSQL, approvals to sweep, and a
//! fake authorization service that records what it is asked.
// Fixtures are stamped with the wall clock; the code under test takes its
// time from the Clock port.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reversal_handler::{ApprovalFacts, SERVICE_NAME};
use sqlx::PgPool;
use switch_core::{ManualClock, SharedClock, Watch, WatchCommand};
use switch_platform::db::DatabaseConfig;
use switch_proto::domain::required;
use switch_proto::v1::authorization_service_server::{
    AuthorizationService, AuthorizationServiceServer,
};
use switch_proto::v1::{
    self as pb, AuthorizationRecord, AuthorizationStatus, reverse_request::Target,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A name no other test or run uses.
pub fn unique_suffix() -> String {
    let id = Uuid::new_v4().simple().to_string();
    format!("r{}", &id[..10])
}

/// The service's schema under a prefix of this test's own.
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
        reversal_handler::MIGRATOR
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

pub fn facts(merchant_id: &str) -> ApprovalFacts {
    ApprovalFacts {
        transaction_id: Uuid::new_v4(),
        terminal_id: "T0000001".into(),
        merchant_id: merchant_id.into(),
        stan: "000123".into(),
        local_date: "2026-11-25".into(),
        rrn: "633000000123".into(),
        traceparent: String::new(),
    }
}

/// A clock for one test: the wall clock's time when called (to the
/// millisecond, which PostgreSQL stores exactly), moved by hand from then on.
pub fn clock() -> ManualClock {
    let now = time::OffsetDateTime::now_utc();
    let millis = now.replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000);
    ManualClock::starting_at(millis.unwrap_or(now))
}

/// The clock as the service takes it.
pub fn shared(clock: &ManualClock) -> SharedClock {
    Arc::new(clock.clone())
}

/// Adds an open approval whose deadline is `offset_s` seconds from now
/// (negative: already past), as its approval event would.
pub async fn open_approval(pool: &PgPool, merchant_id: &str, offset_s: i64) -> Uuid {
    let facts = facts(merchant_id);
    let now = time::OffsetDateTime::now_utc();
    let window = Duration::from_secs(30);
    let approved_at = now + time::Duration::seconds(offset_s) - window;
    let mut conn = pool.acquire().await.unwrap();
    let decided = reversal_handler::apply(
        &mut conn,
        &facts,
        WatchCommand::Approved {
            approved_at,
            window,
        },
        now,
    )
    .await
    .unwrap()
    .expect("an approval opens a watch");
    assert!(matches!(decided.next, Watch::Open { .. }));
    facts.transaction_id
}

/// One row of `approvals`, as the tests inspect it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub status: String,
    pub decision: Option<String>,
    pub reason: Option<String>,
    pub outcome: Option<String>,
    pub attempts: i32,
    pub decided: bool,
    pub due_now: bool,
}

pub async fn row(pool: &PgPool, id: Uuid) -> Option<Row> {
    sqlx::query_as::<
        _,
        (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            i32,
            bool,
            bool,
        ),
    >(
        "SELECT status, decision, reason, outcome, attempts, decided_at IS NOT NULL, \
                COALESCE(next_attempt_at <= now(), false) \
         FROM approvals WHERE transaction_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .unwrap()
    .map(
        |(status, decision, reason, outcome, attempts, decided, due_now)| Row {
            status,
            decision,
            reason,
            outcome,
            attempts,
            decided,
            due_now,
        },
    )
}

/// How the fake authorization answers about one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Reverse → reversal pending; Confirm → confirmed.
    Accept,
    /// FAILED_PRECONDITION: evidence or another reversal won the race.
    Refuse,
    /// UNAVAILABLE: the journal is down.
    Fail,
}

/// An `AuthorizationService` that answers Reverse and Confirm as told and
/// records every call as (transaction id, "reverse:<reason>" or
/// "confirm:<evidence>").
#[derive(Clone, Default)]
pub struct FakeAuthorization {
    pub behaviour: Arc<Mutex<HashMap<String, Behaviour>>>,
    pub calls: Arc<Mutex<Vec<(String, String)>>>,
}

impl FakeAuthorization {
    pub fn set(&self, id: Uuid, behaviour: Behaviour) {
        self.behaviour
            .lock()
            .unwrap()
            .insert(id.to_string(), behaviour);
    }

    pub fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().unwrap().clone()
    }

    fn answer(&self, id: &str, call: String) -> Result<(), Status> {
        self.calls.lock().unwrap().push((id.to_owned(), call));
        let behaviour = self
            .behaviour
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(Behaviour::Accept);
        match behaviour {
            Behaviour::Accept => Ok(()),
            Behaviour::Refuse => Err(Status::failed_precondition("already confirmed")),
            Behaviour::Fail => Err(Status::unavailable("journal unavailable")),
        }
    }

    /// Serves on a free port until `stop`; returns its address.
    pub async fn start(&self, stop: CancellationToken) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = AuthorizationServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    stop.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        addr
    }
}

#[tonic::async_trait]
impl AuthorizationService for FakeAuthorization {
    async fn qr_pay(
        &self,
        _: tonic::Request<switch_proto::v1::QrPayRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrPaymentResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn qr_order(
        &self,
        _: tonic::Request<switch_proto::v1::QrOrderRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrPaymentResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn qr_status(
        &self,
        _: tonic::Request<switch_proto::v1::QrStatusRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrPaymentRecord>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn qr_refund(
        &self,
        _: tonic::Request<switch_proto::v1::QrRefundRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrRefundResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn qr_redrive(
        &self,
        _: tonic::Request<switch_proto::v1::QrRedriveRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrRedriveResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn qr_acknowledge(
        &self,
        _: tonic::Request<switch_proto::v1::QrAcknowledgeRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrPaymentRecord>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn authorize(
        &self,
        _: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn reverse(
        &self,
        request: Request<pb::ReverseRequest>,
    ) -> Result<Response<pb::ReverseResponse>, Status> {
        let request = request.into_inner();
        let Some(Target::TransactionId(id)) = request.target else {
            return Err(Status::invalid_argument("transaction_id expected"));
        };
        let reason: switch_core::ReversalReason =
            required::<pb::ReversalReason, _>("reason", request.reason)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.answer(&id, format!("reverse:{reason}"))?;
        Ok(Response::new(pb::ReverseResponse {
            authorization: Some(AuthorizationRecord {
                transaction_id: id,
                status: AuthorizationStatus::ReversalPending as i32,
                reversal_reason: request.reason,
                ..AuthorizationRecord::default()
            }),
            original_found: true,
        }))
    }

    async fn get_authorization(
        &self,
        _: Request<pb::GetAuthorizationRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn last_for_terminal(
        &self,
        _: Request<pb::LastForTerminalRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn acknowledge(
        &self,
        _: Request<pb::TerminalKey>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn confirm(
        &self,
        request: Request<pb::ConfirmRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        let request = request.into_inner();
        let evidence: switch_core::Evidence =
            required::<pb::Evidence, _>("evidence", request.evidence)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.answer(&request.transaction_id, format!("confirm:{evidence}"))?;
        Ok(Response::new(AuthorizationRecord {
            transaction_id: request.transaction_id,
            status: AuthorizationStatus::Confirmed as i32,
            confirmation_evidence: request.evidence,
            ..AuthorizationRecord::default()
        }))
    }

    /// Operators redrive; the reversal handler never does.
    async fn redrive(
        &self,
        _request: Request<pb::RedriveRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        Err(Status::unimplemented("the handler never redrives"))
    }

    /// Operators list dead letters; the reversal handler never does.
    async fn list_dead_lettered(
        &self,
        _request: Request<pb::ListDeadLetteredRequest>,
    ) -> Result<Response<pb::ListDeadLetteredResponse>, Status> {
        Err(Status::unimplemented(
            "the handler never lists dead letters",
        ))
    }
}
