//! QR payments through to settlement, on the real PostgreSQL and broker:
//! the batcher served as in production, `qr.*` envelopes published on the
//! authorization events topic as authorization announces them, windows
//! closed by `RunSettlement` and read back through `GetSettlementStatus`,
//! the payouts table and the payout files (ADR 31).
//!
//! A confirmed QR payment is paid at the merchant's QR rate beside a card
//! sale at the card rate; one paid but unconfirmed is held awaiting
//! evidence; an orphan the switch refunded is never paid; merchant
//! refunds are deducted from the merchant's next payout, a refund bigger
//! than that payout's net waiting for the one after; a repeated event
//! changes nothing.
// Fixtures are stamped with the wall clock, because the served batcher
// runs on the system clock and a window may not close in the future.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use settlement_batcher::{MerchantSettlement, SettlementConfig};
use sqlx::PgPool;
use switch_platform::db::DatabaseConfig;
use switch_platform::kafka::{KafkaConfig, topics};
use switch_proto::v1::settlement_service_client::SettlementServiceClient;
use switch_proto::v1::settlement_status_request::Query;
use switch_proto::v1::{self as pb, EventEnvelope, SettlementState, event_envelope::Payload};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

/// Longest any condition is awaited.
const PATIENCE: Duration = Duration::from_secs(60);

/// The merchant's rates in this test: distinct, so a payout shows which
/// one each payment paid.
const CARD_BP: u32 = 100;
const QR_BP: u32 = 200;

struct Running {
    addr: SocketAddr,
    kafka: KafkaConfig,
    producer: FutureProducer,
    pool: PgPool,
    url: String,
    schema: String,
    payout_dir: std::path::PathBuf,
    stop: CancellationToken,
    service: JoinHandle<Result<(), settlement_batcher::ServeError>>,
}

/// Serves the batcher on a fresh schema and topic prefix, with `merchant`'s
/// own card and QR rates and the scheduler off (windows close on
/// `RunSettlement` only).
async fn start(merchant: &str) -> Running {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let id = Uuid::new_v4().simple().to_string();
    let suffix = format!("q{}", &id[..10]);
    let database = DatabaseConfig {
        url: url.clone(),
        schema_prefix: format!("{suffix}_"),
        max_connections: 4,
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(settlement_batcher::SERVICE_NAME);
    let kafka = KafkaConfig {
        brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned()),
        topic_prefix: format!("{suffix}."),
        partitions: 1,
        ..KafkaConfig::default()
    };
    let payout_dir = std::env::temp_dir().join(format!("qr-payouts-{suffix}"));
    let mut config = SettlementConfig {
        authorization_endpoint: "http://127.0.0.1:9".into(),
        scheduler_enabled: false,
        scheduler_interval_ms: 200,
        payout_dir: payout_dir.clone(),
        consumer_group: format!("{suffix}-settlement"),
        ..SettlementConfig::default()
    };
    config.merchants.insert(
        merchant.to_owned(),
        MerchantSettlement {
            fee_basis_points: Some(CARD_BP),
            qr_fee_basis_points: Some(QR_BP),
            ..MerchantSettlement::default()
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let service = tokio::spawn({
        let (database, kafka, stop) = (database.clone(), kafka.clone(), stop.clone());
        async move {
            settlement_batcher::serve(
                &database,
                &kafka,
                &switch_platform::internal_tls::InternalTlsConfig::plaintext_for_lab(),
                &config,
                listener,
                stop.cancelled_owned(),
            )
            .await
        }
    });
    // The listener accepts before the schema is migrated; health says
    // serving only once it is and the service is up.
    let deadline = Instant::now() + PATIENCE;
    while !serving(addr).await {
        assert!(Instant::now() < deadline, "never served health");
        assert!(!service.is_finished(), "serve ended during start-up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool = switch_platform::db::connect(&database, &schema)
        .await
        .expect("PostgreSQL is reachable");
    Running {
        addr,
        producer: kafka.producer().expect("a producer"),
        kafka,
        pool,
        url,
        schema,
        payout_dir,
        stop,
        service,
    }
}

async fn serving(addr: SocketAddr) -> bool {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    matches!(
        health.check(request).await,
        Ok(response) if response.get_ref().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}

impl Running {
    async fn client(&self) -> SettlementServiceClient<Channel> {
        SettlementServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("the settlement service accepts connections")
    }

    /// Publishes `event` on the authorization events topic, keyed by its
    /// transaction like authorization's outbox does.
    async fn publish(&self, event: &EventEnvelope) {
        let payload = event.encode_to_vec();
        self.producer
            .send(
                FutureRecord::to(&self.kafka.topic(topics::AUTHORIZATION_EVENTS))
                    .key(&event.transaction_id)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("the broker accepts the event");
    }

    /// Publishes `events` in order, then waits until the consumer has
    /// processed the last one (one partition: everything before it too).
    async fn publish_all(&self, events: &[EventEnvelope]) {
        for event in events {
            self.publish(event).await;
        }
        let last = Uuid::parse_str(&events.last().expect("events").event_id).unwrap();
        self.until("the last event is processed", || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM processed_events WHERE event_id = $1",
            )
            .bind(last)
            .fetch_one(&self.pool)
            .await
            .unwrap()
                == 1
        })
        .await;
    }

    async fn until<F, Fut>(&self, what: &str, condition: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + PATIENCE;
        while !condition().await {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn run(&self, cutoff: OffsetDateTime) -> pb::RunSettlementResponse {
        self.client()
            .await
            .run_settlement(pb::RunSettlementRequest {
                cutoff: cutoff.format(&Rfc3339).unwrap(),
                ..Default::default()
            })
            .await
            .expect("the run succeeds")
            .into_inner()
    }

    async fn status(&self, query: Query) -> Result<Vec<pb::TransactionSettlement>, tonic::Status> {
        self.client()
            .await
            .get_settlement_status(pb::SettlementStatusRequest { query: Some(query) })
            .await
            .map(|r| r.into_inner().transactions)
    }

    async fn one(&self, query: Query) -> pb::TransactionSettlement {
        let mut found = self.status(query).await.expect("the status answers");
        assert_eq!(found.len(), 1, "{found:?}");
        found.remove(0)
    }

    async fn ledger_status(&self, id: Uuid) -> Option<String> {
        sqlx::query_scalar("SELECT status FROM transactions WHERE transaction_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.service)
            .await
            .expect("serve stops on shutdown")
            .unwrap()
            .unwrap();
        self.pool.close().await;
        switch_platform::db::drop_schema(&self.url, &self.schema)
            .await
            .unwrap();
        let _ = std::fs::remove_dir_all(&self.payout_dir);
    }
}

fn merchant() -> String {
    let id = Uuid::new_v4().simple().to_string().to_uppercase();
    format!("QRM{}", &id[..12])
}

fn money(minor_units: i64) -> Option<pb::Money> {
    Some(pb::Money {
        minor_units,
        currency: "EUR".into(),
    })
}

fn envelope(
    event_type: &str,
    transaction_id: Uuid,
    at: OffsetDateTime,
    payload: Payload,
) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::new_v4().to_string(),
        event_type: event_type.into(),
        transaction_id: transaction_id.to_string(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: at.unix_timestamp(),
            nanos: 0,
        }),
        payload: Some(payload),
        ..EventEnvelope::default()
    }
}

/// One QR payment of the merchant, as authorization's `qr.*` events carry it.
#[derive(Clone)]
struct Qr {
    id: Uuid,
    order_id: String,
    merchant: String,
    stan: String,
    amount: i64,
}

impl Qr {
    fn new(merchant: &str, stan: u32, amount: i64) -> Self {
        let id = Uuid::new_v4();
        Qr {
            id,
            order_id: format!("QRO{}", &id.simple().to_string()[..20]),
            merchant: merchant.to_owned(),
            stan: format!("{stan:06}"),
            amount,
        }
    }

    fn record(&self, state: &str) -> pb::QrPaymentRecord {
        pb::QrPaymentRecord {
            transaction_id: self.id.to_string(),
            terminal_id: "QRTERM01".into(),
            stan: self.stan.clone(),
            local_date: "2026-11-24".into(),
            merchant_id: self.merchant.clone(),
            mode: "consumer_presented".into(),
            order_id: self.order_id.clone(),
            amount: money(self.amount),
            state: state.into(),
            ..Default::default()
        }
    }

    fn event(
        &self,
        event_type: &str,
        state: &str,
        reason: &str,
        at: OffsetDateTime,
    ) -> EventEnvelope {
        envelope(
            event_type,
            self.id,
            at,
            Payload::QrPayment(pb::QrPaymentEvent {
                payment: Some(self.record(state)),
                reason: reason.into(),
                ..Default::default()
            }),
        )
    }

    fn paid(&self, at: OffsetDateTime) -> EventEnvelope {
        self.event("qr.paid", "paid", "", at)
    }

    fn confirmed(&self, evidence: &str, at: OffsetDateTime) -> EventEnvelope {
        self.event("qr.confirmed", "confirmed", evidence, at)
    }

    /// A merchant refund of this (confirmed) payment the platform completed.
    fn refund_completed(
        &self,
        refund_id: &str,
        amount: i64,
        completed_at: OffsetDateTime,
    ) -> EventEnvelope {
        envelope(
            "qr.refund_completed",
            self.id,
            completed_at,
            Payload::QrPayment(pb::QrPaymentEvent {
                payment: Some(self.record("confirmed")),
                refund: Some(pb::QrRefundRecord {
                    refund_id: refund_id.into(),
                    transaction_id: self.id.to_string(),
                    order_id: self.order_id.clone(),
                    merchant_id: self.merchant.clone(),
                    terminal_id: "QRTERM01".into(),
                    amount: money(amount),
                    state: "refunded".into(),
                    completed_at: completed_at.format(&Rfc3339).unwrap(),
                    refunded_total: money(amount),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
    }
}

/// A card sale approved and confirmed by the terminal's acknowledgement,
/// on the channel `label` authorization gave it.
fn card_sale(
    merchant: &str,
    stan: u32,
    amount: i64,
    label: &str,
    at: OffsetDateTime,
) -> (Uuid, Vec<EventEnvelope>) {
    let id = Uuid::new_v4();
    let stan = format!("{stan:06}");
    let facts = pb::AuthorizationFacts {
        terminal_id: "CARDTRM1".into(),
        merchant_id: merchant.into(),
        stan: stan.clone(),
        local_date: "2026-11-24".into(),
        rrn: format!("633000{stan}"),
        masked_pan: "411111******1111".into(),
        amount: money(amount),
        channel: label.into(),
    };
    let events = vec![
        envelope(
            "authorization.approved",
            id,
            at,
            Payload::AuthorizationApproved(pb::AuthorizationApproved {
                facts: Some(facts.clone()),
                approval_code: "A1B2C3".into(),
            }),
        ),
        envelope(
            "authorization.confirmed",
            id,
            at,
            Payload::AuthorizationConfirmed(pb::AuthorizationConfirmed {
                facts: Some(facts),
                approval_code: "A1B2C3".into(),
                evidence: pb::Evidence::TerminalAcknowledgement.into(),
            }),
        ),
    ];
    (id, events)
}

/// The one payout of a run's only window: (count, gross, fee, net,
/// refund count, refunds).
fn only_payout(run: &pb::RunSettlementResponse) -> (i64, i64, i64, i64, i64, i64) {
    assert_eq!(run.windows.len(), 1, "{run:?}");
    let payouts = &run.windows[0].payouts;
    assert_eq!(payouts.len(), 1, "{run:?}");
    let p = &payouts[0];
    (
        p.transaction_count,
        p.gross_minor_units,
        p.fee_minor_units,
        p.net_minor_units,
        p.refund_count,
        p.refund_minor_units,
    )
}

async fn refund_states(running: &Running, qr: &Qr) -> Vec<(String, SettlementState, String)> {
    running
        .one(Query::QrOrderId(qr.order_id.clone()))
        .await
        .refunds
        .into_iter()
        .map(|r| {
            assert_eq!(r.amount.as_ref().unwrap().currency, "EUR");
            (r.refund_id.clone(), r.state(), r.window_id.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_payments_settle_at_their_rate_and_refunds_net_against_the_next_windows() {
    let merchant = merchant();
    let running = start(&merchant).await;
    let t0 = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - time::Duration::hours(3);
    let minutes = |m: i64| t0 + time::Duration::minutes(m);

    // Window 1: a card sale, a confirmed QR payment, one paid but never
    // confirmed, and an orphan the switch refunded at the platform.
    let (card, card_events) = card_sale(&merchant, 1, 10_000, "card", minutes(0));
    let confirmed = Qr::new(&merchant, 2, 20_000);
    let unconfirmed = Qr::new(&merchant, 3, 5_000);
    let orphan = Qr::new(&merchant, 4, 7_000);
    let mut events = card_events;
    let confirmation = confirmed.confirmed("terminal_acknowledgement", minutes(1));
    events.extend([
        confirmed.paid(minutes(0)),
        confirmation.clone(),
        unconfirmed.paid(minutes(0)),
        orphan.paid(minutes(0)),
        orphan.event("qr.cancel_requested", "cancelling", "refund", minutes(1)),
        orphan.event(
            "qr.refunded",
            "refunded",
            "no_terminal_acknowledgement",
            minutes(2),
        ),
        // Events that change nothing settlement keeps.
        orphan.event("qr.failed", "failed", "", minutes(2)),
        unconfirmed.event(
            "qr.cancel_dead_lettered",
            "cancel_dead_lettered",
            "cancel",
            minutes(2),
        ),
        // A redelivery (same event id) and a republication (a new id) of
        // the confirmation, and a stale qr.paid after it.
        confirmation.clone(),
        EventEnvelope {
            event_id: Uuid::new_v4().to_string(),
            ..confirmation.clone()
        },
        confirmed.paid(minutes(3)),
    ]);
    running.publish_all(&events).await;
    assert_eq!(
        running.ledger_status(card).await.as_deref(),
        Some("confirmed")
    );
    assert_eq!(
        running.ledger_status(confirmed.id).await.as_deref(),
        Some("confirmed")
    );
    assert_eq!(
        running.ledger_status(unconfirmed.id).await.as_deref(),
        Some("unconfirmed")
    );
    assert_eq!(
        running.ledger_status(orphan.id).await.as_deref(),
        Some("reversed")
    );
    let (channel, rrn, masked_pan, order): (String, String, String, Option<String>) = sqlx::query_as(
        "SELECT channel, rrn, masked_pan, qr_order_id FROM transactions WHERE transaction_id = $1",
    )
    .bind(confirmed.id)
    .fetch_one(&running.pool)
    .await
    .unwrap();
    assert_eq!(channel, "qr");
    assert_eq!(
        (rrn.as_str(), masked_pan.as_str()),
        ("", ""),
        "a QR payment has no RRN or card"
    );
    assert_eq!(order.as_deref(), Some(confirmed.order_id.as_str()));

    let first = running.run(minutes(10)).await;
    // Card 10_000 at 100 bp = 100; QR 20_000 at 200 bp = 400; both paid,
    // the unconfirmed payment held, the refunded orphan nowhere.
    assert_eq!(only_payout(&first), (2, 30_000, 500, 29_500, 0, 0));
    let window = &first.windows[0];
    assert_eq!(
        (window.fee_basis_points, window.qr_fee_basis_points),
        (CARD_BP, QR_BP)
    );
    assert_eq!(window.held_count, 1);

    let by_id = running
        .one(Query::TransactionId(confirmed.id.to_string()))
        .await;
    assert_eq!(by_id.channel, "qr");
    assert_eq!(by_id.qr_order_id, confirmed.order_id);
    assert_eq!(by_id.state(), SettlementState::Paid);
    assert_eq!(by_id.window_id, window.window_id);
    assert!(by_id.refunds.is_empty());
    let held = running
        .one(Query::QrOrderId(unconfirmed.order_id.clone()))
        .await;
    assert_eq!(held.state(), SettlementState::Held);
    assert_eq!(held.hold_reason(), pb::HoldReason::AwaitingEvidence);
    let never = running.one(Query::QrOrderId(orphan.order_id.clone())).await;
    assert_eq!(never.state(), SettlementState::NotPayable);
    assert_eq!(
        never.reversal_reason(),
        pb::ReversalReason::NoTerminalAcknowledgement
    );
    let card_status = running.one(Query::TransactionId(card.to_string())).await;
    assert_eq!(
        (card_status.channel.as_str(), card_status.state()),
        ("card", SettlementState::Paid)
    );
    // QR rows answer the merchant-day and terminal queries too.
    let day = running
        .status(Query::Merchant(pb::MerchantDay {
            merchant_id: merchant.clone(),
            date: t0.date().to_string(),
        }))
        .await
        .unwrap();
    assert_eq!(
        day.iter().filter(|t| t.channel == "qr").count(),
        3,
        "{day:?}"
    );
    let by_terminal = running
        .one(Query::Terminal(pb::TerminalTransaction {
            terminal_id: "QRTERM01".into(),
            stan: confirmed.stan.clone(),
            local_date: "2026-11-24".into(),
        }))
        .await;
    assert_eq!(by_terminal.qr_order_id, confirmed.order_id);

    // Window 2: a card sale of 10_000 labelled `qr` by its terminal (a
    // card payment all the same: the card rate, net 9_900) and two
    // merchant refunds of the confirmed QR payment: 3_000 fits, 15_000
    // does not and waits. The first refund's event arrives twice.
    let (_, card_events) = card_sale(&merchant, 5, 10_000, "qr", minutes(20));
    let small = confirmed.refund_completed("REFUND-SMALL", 3_000, minutes(21));
    let mut events = card_events;
    events.extend([
        small.clone(),
        confirmed.refund_completed("REFUND-BIG", 15_000, minutes(22)),
        small.clone(),
        EventEnvelope {
            event_id: Uuid::new_v4().to_string(),
            ..small
        },
    ]);
    running.publish_all(&events).await;
    let debits: i64 = sqlx::query_scalar("SELECT count(*) FROM refund_debits")
        .fetch_one(&running.pool)
        .await
        .unwrap();
    assert_eq!(debits, 2, "a repeated refund is one debit");
    assert_eq!(
        refund_states(&running, &confirmed).await,
        [
            (
                "REFUND-SMALL".to_owned(),
                SettlementState::Pending,
                String::new()
            ),
            (
                "REFUND-BIG".to_owned(),
                SettlementState::Pending,
                String::new()
            ),
        ]
    );

    let second = running.run(minutes(30)).await;
    assert_eq!(only_payout(&second), (1, 10_000, 100, 6_900, 1, 3_000));
    let second_window = second.windows[0].window_id.clone();
    assert_eq!(
        refund_states(&running, &confirmed).await,
        [
            (
                "REFUND-SMALL".to_owned(),
                SettlementState::Paid,
                second_window.clone()
            ),
            (
                "REFUND-BIG".to_owned(),
                SettlementState::Pending,
                String::new()
            ),
        ]
    );
    let csv = std::fs::read_to_string(&second.csv_path).expect("the CSV exists");
    assert!(
        csv.contains(&format!(",{second_window},EUR,1,10000,100,6900,1,3000\r\n")),
        "{csv}"
    );
    let pain = std::fs::read_to_string(&second.pain001_path).expect("the pain.001 exists");
    assert!(
        pain.contains("<InstdAmt Ccy=\"EUR\">69.00</InstdAmt>"),
        "{pain}"
    );

    // Window 3: a QR payment confirmed by the merchant's policy (30_000 at
    // 200 bp = 600, net 29_400) and refunded in part before the cut-off,
    // while its window is still open: the waiting 15_000 is netted first,
    // then the new 1_000.
    let late = Qr::new(&merchant, 6, 30_000);
    running
        .publish_all(&[
            late.paid(minutes(40)),
            late.confirmed("policy", minutes(41)),
            late.refund_completed("REFUND-OPEN", 1_000, minutes(42)),
        ])
        .await;
    let third = running.run(minutes(50)).await;
    assert_eq!(only_payout(&third), (1, 30_000, 600, 13_400, 2, 16_000));
    let third_window = third.windows[0].window_id.clone();
    assert_eq!(
        refund_states(&running, &confirmed).await[1],
        (
            "REFUND-BIG".to_owned(),
            SettlementState::Paid,
            third_window.clone()
        )
    );
    assert_eq!(
        refund_states(&running, &late).await,
        [(
            "REFUND-OPEN".to_owned(),
            SettlementState::Paid,
            third_window.clone()
        )]
    );
    let late_status = running.one(Query::TransactionId(late.id.to_string())).await;
    assert_eq!(
        late_status.state(),
        SettlementState::Paid,
        "paid gross, the refund deducted"
    );

    // The stored payouts keep net = gross - fee - refunds, and the
    // window_closed and merchant_paid events carry the refund figures.
    let stored: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT p.gross_minor_units, p.fee_minor_units, p.refund_count, p.refund_minor_units, \
                p.net_minor_units \
         FROM payouts p JOIN windows w USING (window_id) ORDER BY w.sequence",
    )
    .fetch_all(&running.pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        [
            (30_000, 500, 0, 0, 29_500),
            (10_000, 100, 1, 3_000, 6_900),
            (30_000, 600, 2, 16_000, 13_400)
        ]
    );
    let announced: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox ORDER BY id")
        .fetch_all(&running.pool)
        .await
        .unwrap();
    let mut closed_refunds = Vec::new();
    let mut paid_refunds = Vec::new();
    for bytes in announced {
        match EventEnvelope::decode(bytes.as_slice()).unwrap().payload {
            Some(Payload::SettlementWindowClosed(closed)) => {
                closed_refunds.push(closed.payouts[0].refund_minor_units);
            }
            Some(Payload::MerchantPaid(paid)) => {
                let payout = paid.payout.unwrap();
                paid_refunds.push((
                    payout.refund_count,
                    payout.refund_minor_units,
                    payout.net_minor_units,
                ));
            }
            _ => {}
        }
    }
    assert_eq!(closed_refunds, [0, 3_000, 16_000]);
    assert_eq!(
        paid_refunds,
        [(0, 0, 29_500), (1, 3_000, 6_900), (2, 16_000, 13_400)]
    );

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_are_refused_naming_their_field_and_unknown_ones_are_not_found() {
    let merchant = merchant();
    let running = start(&merchant).await;
    let cases = [
        (Query::TransactionId("not-a-uuid".into()), "transaction_id"),
        (Query::TransactionId(String::new()), "transaction_id"),
        (Query::QrOrderId("x".into()), "qr_order_id"),
        (
            Query::QrOrderId("order id with spaces".into()),
            "qr_order_id",
        ),
    ];
    for (query, field) in cases {
        let refused = running.status(query.clone()).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{query:?}: {refused:?}"
        );
        assert!(refused.message().contains(field), "{query:?}: {refused:?}");
    }
    for query in [
        Query::TransactionId(Uuid::new_v4().to_string()),
        Query::QrOrderId("QRO_UNKNOWN_0001".into()),
    ] {
        let missing = running.status(query).await.unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    }
    running.stop().await;
}
