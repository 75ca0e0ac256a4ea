//! Ledger rejections on the real PostgreSQL (issue 13): an approval whose
//! terminal key another transaction holds is followed while its rejection
//! is open (its confirmation and reversal, which the ledger used to drop),
//! listed for operators, and resolved once with who and why: admitted, it
//! enters the ledger where its events took it and is paid (or not) by the
//! ledger's rules like any approval; dismissed, it never is. Bad input is
//! refused with a precise status and writes nothing. A rejection recorded
//! before the ledger followed them is admitted only with the status
//! authorization's journal gives.

mod common;

use std::sync::Arc;

use settlement_batcher::{ApprovalLedger, LedgerRejections, SettlementConfig};
use sqlx::PgPool;
use switch_core::ManualClock;
use switch_platform::consumer::EventHandler as _;
use switch_platform::kafka::KafkaConfig;
use switch_proto::v1::authorization_service_server::{
    AuthorizationService, AuthorizationServiceServer,
};
use switch_proto::v1::{
    self as pb, AuthorizationRecord, EventEnvelope, ListLedgerRejectionsRequest,
    ResolveLedgerRejectionRequest, event_envelope::Payload,
};
use time::macros::datetime;
use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

const SOLD_AT: time::OffsetDateTime = datetime!(2026-12-02 12:00 UTC);

fn facts(stan: &str) -> Option<pb::AuthorizationFacts> {
    Some(pb::AuthorizationFacts {
        terminal_id: "TERM0001".into(),
        merchant_id: "MERCHANT0000001".into(),
        stan: stan.into(),
        local_date: "2026-12-02".into(),
        rrn: format!("633600{stan}"),
        masked_pan: "411111******1111".into(),
        amount: Some(pb::Money {
            minor_units: 2_000,
            currency: "EUR".into(),
        }),
        channel: "card".into(),
    })
}

fn event(id: Uuid, payload: Payload) -> EventEnvelope {
    common::event(&id.to_string(), SOLD_AT.unix_timestamp(), payload)
}

fn approved(id: Uuid, stan: &str) -> EventEnvelope {
    event(
        id,
        Payload::AuthorizationApproved(pb::AuthorizationApproved {
            facts: facts(stan),
            approval_code: "A1B2C3".into(),
        }),
    )
}

fn confirmed(id: Uuid, stan: &str) -> EventEnvelope {
    event(
        id,
        Payload::AuthorizationConfirmed(pb::AuthorizationConfirmed {
            facts: facts(stan),
            approval_code: "A1B2C3".into(),
            evidence: pb::Evidence::TerminalAcknowledgement.into(),
        }),
    )
}

fn reversal_requested(id: Uuid) -> EventEnvelope {
    event(
        id,
        Payload::ReversalRequested(pb::ReversalRequested {
            reason: pb::ReversalReason::NoTerminalAcknowledgement.into(),
            ..Default::default()
        }),
    )
}

fn reversed(id: Uuid) -> EventEnvelope {
    event(
        id,
        Payload::AuthorizationReversed(pb::AuthorizationReversed {
            reason: pb::ReversalReason::NoTerminalAcknowledgement.into(),
            ..Default::default()
        }),
    )
}

/// Applies events as the consumer does: one batch.
async fn consume(pool: &PgPool, events: &[EventEnvelope]) {
    let refs: Vec<&EventEnvelope> = events.iter().collect();
    let mut tx = pool.begin().await.unwrap();
    ApprovalLedger::default()
        .handle_batch(&mut tx, &refs)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Applies one event on its own, as a consumer retrying a failed batch does.
async fn consume_one(pool: &PgPool, event: &EventEnvelope) {
    let mut tx = pool.begin().await.unwrap();
    ApprovalLedger::default()
        .handle(&mut tx, event)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Status and window (paid in) of a transaction in the ledger.
async fn in_ledger(pool: &PgPool, id: Uuid) -> Option<(String, Option<Uuid>, i16)> {
    sqlx::query_as(
        "SELECT status, window_id, key_instance FROM transactions WHERE transaction_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// What operators see of the rejections' state: everything resolving
/// writes, to check that a refused request wrote nothing.
async fn snapshot(pool: &PgPool) -> (Vec<(Uuid, Option<String>, Option<String>)>, i64) {
    let rejections = sqlx::query_as(
        "SELECT transaction_id, status, resolution FROM ledger_rejections ORDER BY transaction_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let transactions = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(pool)
        .await
        .unwrap();
    (rejections, transactions)
}

fn resolve(id: &str, resolution: pb::RejectionResolution) -> ResolveLedgerRejectionRequest {
    ResolveLedgerRejectionRequest {
        transaction_id: id.into(),
        resolution: resolution.into(),
        operator: "ops.alice".into(),
        reason: "INC-9: two terminals share TERM0001 since the restore".into(),
    }
}

fn rejections(pool: &PgPool, authorization: &str) -> LedgerRejections {
    LedgerRejections::new(
        pool.clone(),
        authorization,
        &switch_platform::internal_tls::InternalTlsConfig::plaintext_for_lab(),
        Arc::new(ManualClock::starting_at(datetime!(2026-12-02 13:00 UTC))),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_sale_is_followed_then_admitted_where_it_stands_or_dismissed() {
    let (pool, url, schema) = common::fresh_schema().await;
    let ids: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    let (holder_1, confirmed_later, holder_2, reversed_later) = (ids[0], ids[1], ids[2], ids[3]);
    let (holder_3, admitted_open, holder_4, duplicate) = (ids[4], ids[5], ids[6], ids[7]);
    consume(
        &pool,
        &[
            approved(holder_1, "000001"),
            confirmed(holder_1, "000001"),
            approved(confirmed_later, "000001"),
            approved(holder_2, "000002"),
            approved(reversed_later, "000002"),
            approved(holder_3, "000003"),
            approved(admitted_open, "000003"),
            approved(holder_4, "000004"),
            confirmed(holder_4, "000004"),
            approved(duplicate, "000004"),
        ],
    )
    .await;
    // Events after the rejections: the ledger used to drop these.
    consume(
        &pool,
        &[
            confirmed(confirmed_later, "000001"),
            reversal_requested(reversed_later),
        ],
    )
    .await;
    consume_one(&pool, &reversed(reversed_later)).await;
    for rejected in [confirmed_later, reversed_later, admitted_open, duplicate] {
        assert_eq!(in_ledger(&pool, rejected).await, None, "not in the ledger");
    }

    let service = rejections(&pool, "http://127.0.0.1:1");
    let list = |limit, cursor: &str| ListLedgerRejectionsRequest {
        limit,
        cursor: cursor.into(),
        include_resolved: false,
    };
    let page = service.list(&list(0, "")).await.unwrap();
    assert_eq!(page.open, 4);
    assert_eq!(page.rejections.len(), 4);
    assert!(page.next_cursor.is_empty());
    let listed = |id: Uuid| {
        page.rejections
            .iter()
            .find(|r| r.transaction_id == id.to_string())
            .cloned()
            .unwrap()
    };
    let stands = listed(confirmed_later);
    assert_eq!(stands.status(), pb::LedgerStatus::Confirmed);
    assert_eq!(stands.evidence(), pb::Evidence::TerminalAcknowledgement);
    assert_eq!(stands.held_by, holder_1.to_string());
    assert_eq!(stands.masked_pan, "411111******1111");
    assert_eq!(stands.rrn, "633600000001");
    assert_eq!(stands.resolution(), pb::RejectionResolution::Unspecified);
    let stands = listed(reversed_later);
    assert_eq!(stands.status(), pb::LedgerStatus::Reversed);
    assert_eq!(
        stands.reversal_reason(),
        pb::ReversalReason::NoTerminalAcknowledgement
    );
    assert_eq!(
        listed(admitted_open).status(),
        pb::LedgerStatus::Unconfirmed
    );

    // A page at a time, each once.
    let first = service.list(&list(3, "")).await.unwrap();
    assert_eq!(first.rejections.len(), 3);
    let second = service.list(&list(3, &first.next_cursor)).await.unwrap();
    assert_eq!(second.rejections.len(), 1);
    assert!(second.next_cursor.is_empty());
    let mut paged: Vec<String> = first
        .rejections
        .iter()
        .chain(&second.rejections)
        .map(|r| r.transaction_id.clone())
        .collect();
    paged.sort();
    paged.dedup();
    assert_eq!(paged.len(), 4);

    // Bad input: a precise status, and nothing written.
    let before = snapshot(&pool).await;
    let id = confirmed_later.to_string();
    let bad: Vec<(ResolveLedgerRejectionRequest, Code, &str)> = vec![
        (
            resolve("not-a-uuid", pb::RejectionResolution::Admit),
            Code::InvalidArgument,
            "transaction_id",
        ),
        (
            resolve(&Uuid::new_v4().to_string(), pb::RejectionResolution::Admit),
            Code::NotFound,
            "no ledger rejection",
        ),
        (
            resolve(&id, pb::RejectionResolution::Unspecified),
            Code::InvalidArgument,
            "resolution",
        ),
        (
            ResolveLedgerRejectionRequest {
                operator: "  ".into(),
                ..resolve(&id, pb::RejectionResolution::Admit)
            },
            Code::InvalidArgument,
            "operator",
        ),
        (
            ResolveLedgerRejectionRequest {
                reason: String::new(),
                ..resolve(&id, pb::RejectionResolution::Admit)
            },
            Code::InvalidArgument,
            "reason",
        ),
    ];
    for (request, code, names) in bad {
        let refused = service.resolve(&request).await.unwrap_err();
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(refused.message().contains(names), "{refused:?}");
    }
    for (request, names) in [(list(1_001, ""), "limit"), (list(10, "zzz"), "cursor")] {
        let refused = service.list(&request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().starts_with(names), "{refused:?}");
    }
    assert_eq!(snapshot(&pool).await, before, "nothing written");

    // Admitted where its events took it: confirmed, beside its key's holder.
    let admitted = service
        .resolve(&resolve(&id, pb::RejectionResolution::Admit))
        .await
        .unwrap();
    assert_eq!(admitted.resolution(), pb::RejectionResolution::Admit);
    assert_eq!(admitted.resolved_by, "ops.alice");
    assert_eq!(admitted.resolved_at, "2026-12-02T13:00:00Z");
    assert_eq!(
        in_ledger(&pool, confirmed_later).await,
        Some(("confirmed".into(), None, 1))
    );
    // Once only: the first resolution stands, and says who made it.
    let before = snapshot(&pool).await;
    let again = service
        .resolve(&resolve(&id, pb::RejectionResolution::Dismiss))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("already admitted"), "{again:?}");
    assert!(again.message().contains("ops.alice"), "{again:?}");
    assert_eq!(snapshot(&pool).await, before);

    // Reversed while rejected: admitted reversed, never paid.
    service
        .resolve(&resolve(
            &reversed_later.to_string(),
            pb::RejectionResolution::Admit,
        ))
        .await
        .unwrap();
    assert_eq!(
        in_ledger(&pool, reversed_later).await.map(|r| r.0),
        Some("reversed".into())
    );
    // Admitted unconfirmed: its later events are the ledger's, as usual.
    service
        .resolve(&resolve(
            &admitted_open.to_string(),
            pb::RejectionResolution::Admit,
        ))
        .await
        .unwrap();
    consume(&pool, &[confirmed(admitted_open, "000003")]).await;
    assert_eq!(
        in_ledger(&pool, admitted_open).await.map(|r| r.0),
        Some("confirmed".into())
    );
    // Dismissed: a duplicate; its later events change nothing.
    let dismissed = service
        .resolve(&resolve(
            &duplicate.to_string(),
            pb::RejectionResolution::Dismiss,
        ))
        .await
        .unwrap();
    assert_eq!(dismissed.resolution(), pb::RejectionResolution::Dismiss);
    consume(&pool, &[confirmed(duplicate, "000004")]).await;
    assert_eq!(in_ledger(&pool, duplicate).await, None);
    let open = service.list(&list(0, "")).await.unwrap();
    assert_eq!((open.open, open.rejections.len()), (0, 0));
    let all = service
        .list(&ListLedgerRejectionsRequest {
            include_resolved: true,
            ..list(0, "")
        })
        .await
        .unwrap();
    assert_eq!(all.rejections.len(), 4);

    // The window pays what the ledger's rules pay: the holders confirmed,
    // the two admitted sales confirmed; not the reversed one, not the
    // duplicate, not the holders still unconfirmed.
    let payout_dir = std::env::temp_dir().join(format!("payouts-{}", Uuid::new_v4().simple()));
    let config = SettlementConfig {
        payout_dir: payout_dir.clone(),
        ..SettlementConfig::default()
    };
    let settler = settlement_batcher::settler(
        pool.clone(),
        &KafkaConfig::default(),
        &config,
        Arc::new(ManualClock::starting_at(datetime!(2026-12-02 22:00:01 UTC))),
    )
    .unwrap();
    settler
        .run(&[], datetime!(2026-12-02 22:00 UTC))
        .await
        .unwrap();
    let paid = |row: Option<(String, Option<Uuid>, i16)>| row.and_then(|r| r.1).is_some();
    for (id, expected) in [
        (holder_1, true),
        (confirmed_later, true),
        (admitted_open, true),
        (holder_4, true),
        (reversed_later, false),
        (holder_2, false),
        (holder_3, false),
    ] {
        assert_eq!(paid(in_ledger(&pool, id).await), expected, "{id}");
    }
    let net: i64 = sqlx::query_scalar("SELECT sum(gross_minor_units)::bigint FROM payouts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(net, 4 * 2_000, "four sales paid, each once");

    let _ = std::fs::remove_dir_all(&payout_dir);
    pool.close().await;
    switch_platform::db::drop_schema(&url, &schema)
        .await
        .unwrap();
}

/// Authorization's journal, as far as a look-up of these tests needs it.
#[derive(Clone, Default)]
struct Journal(std::collections::HashMap<String, AuthorizationRecord>);

#[tonic::async_trait]
impl AuthorizationService for Journal {
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

    async fn get_authorization(
        &self,
        request: Request<pb::GetAuthorizationRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        let Some(pb::get_authorization_request::By::TransactionId(id)) = request.into_inner().by
        else {
            return Err(Status::invalid_argument("by transaction id only"));
        };
        self.0
            .get(&id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no authorization found for {id}")))
    }

    async fn authorize(
        &self,
        _: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        Err(Status::unimplemented("not asked by resolutions"))
    }

    async fn reverse(
        &self,
        _: Request<pb::ReverseRequest>,
    ) -> Result<Response<pb::ReverseResponse>, Status> {
        Err(Status::unimplemented("not asked by resolutions"))
    }

    async fn last_for_terminal(
        &self,
        _: Request<pb::LastForTerminalRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        Err(Status::unimplemented("not asked by resolutions"))
    }

    async fn acknowledge(
        &self,
        _: Request<pb::TerminalKey>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        Err(Status::unimplemented("not asked by resolutions"))
    }

    async fn confirm(
        &self,
        _: Request<pb::ConfirmRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        Err(Status::unimplemented("not asked by resolutions"))
    }

    async fn redrive(
        &self,
        _: Request<pb::RedriveRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        Err(Status::unimplemented("not asked by resolutions"))
    }

    async fn list_dead_lettered(
        &self,
        _: Request<pb::ListDeadLetteredRequest>,
    ) -> Result<Response<pb::ListDeadLetteredResponse>, Status> {
        Err(Status::unimplemented("not asked by resolutions"))
    }
}

/// A rejection as the ledger recorded it before it kept facts and status.
async fn legacy_rejection(pool: &PgPool, id: Uuid, stan: &str, holder: Uuid) {
    sqlx::query(
        "INSERT INTO ledger_rejections (transaction_id, terminal_id, local_date, stan, \
            merchant_id, amount_minor, currency, held_by) \
         VALUES ($1, 'TERM0001', '2026-12-02', $2, 'MERCHANT0000001', 2000, 'EUR', $3)",
    )
    .bind(id)
    .bind(stan)
    .bind(holder)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_older_than_its_facts_is_admitted_only_as_authorization_knows_it() {
    let (pool, url, schema) = common::fresh_schema().await;
    let (holder, known, unknown) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    consume(&pool, &[approved(holder, "000010")]).await;
    legacy_rejection(&pool, known, "000010", holder).await;
    legacy_rejection(&pool, unknown, "000010", holder).await;

    // Authorization cannot be asked: refused, nothing written.
    let before = snapshot(&pool).await;
    let unreachable = rejections(&pool, "http://127.0.0.1:1");
    let refused = unreachable
        .resolve(&resolve(&known.to_string(), pb::RejectionResolution::Admit))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(snapshot(&pool).await, before);
    let listed = unreachable
        .list(&ListLedgerRejectionsRequest::default())
        .await
        .unwrap();
    assert!(
        listed
            .rejections
            .iter()
            .all(|r| r.status() == pb::LedgerStatus::Unspecified && r.rrn.is_empty()),
        "their status and facts are unknown here: {listed:?}"
    );

    // Authorization's journal knows one of them: reversed.
    let record = AuthorizationRecord {
        transaction_id: known.to_string(),
        terminal_id: "TERM0001".into(),
        merchant_id: "MERCHANT0000001".into(),
        stan: "000010".into(),
        local_date: "2026-12-02".into(),
        rrn: "633600000010".into(),
        status: pb::AuthorizationStatus::Reversed.into(),
        response_code: "00".into(),
        approval_code: "A1B2C3".into(),
        masked_pan: "411111******1111".into(),
        amount: Some(pb::Money {
            minor_units: 2_000,
            currency: "EUR".into(),
        }),
        created_at: "2026-12-02T12:00:00Z".into(),
        reversal_reason: pb::ReversalReason::IssuerTimeout.into(),
        channel: "card".into(),
        ..Default::default()
    };
    let journal = Journal([(known.to_string(), record)].into_iter().collect());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AuthorizationServiceServer::new(journal))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    let service = rejections(&pool, &format!("http://{address}"));
    service
        .resolve(&resolve(&known.to_string(), pb::RejectionResolution::Admit))
        .await
        .unwrap();
    assert_eq!(
        in_ledger(&pool, known).await,
        Some(("reversed".into(), None, 1))
    );
    let rrn: String = sqlx::query_scalar("SELECT rrn FROM transactions WHERE transaction_id = $1")
        .bind(known)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rrn, "633600000010", "its facts come from the journal");

    // Unknown there too: it cannot be admitted, only dismissed.
    let before = snapshot(&pool).await;
    let refused = service
        .resolve(&resolve(
            &unknown.to_string(),
            pb::RejectionResolution::Admit,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("unknown"), "{refused:?}");
    assert_eq!(snapshot(&pool).await, before);
    service
        .resolve(&resolve(
            &unknown.to_string(),
            pb::RejectionResolution::Dismiss,
        ))
        .await
        .unwrap();
    assert_eq!(in_ledger(&pool, unknown).await, None);

    let _ = stop.send(());
    server.await.unwrap();
    pool.close().await;
    switch_platform::db::drop_schema(&url, &schema)
        .await
        .unwrap();
}
