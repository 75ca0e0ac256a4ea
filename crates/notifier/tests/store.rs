//! The deliveries table against the real PostgreSQL, without HTTP: an
//! event is owed once per endpoint however often it is inserted, claims
//! respect the per-endpoint cap and skip what another worker holds, a
//! crashed worker's claim comes back when its lease ends, and a worker
//! whose lease has passed cannot record over the new claim.
// Fixtures are stamped with the wall clock; the code under test takes its
// time from the Clock port.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{TestDb, merchant};
use notifier::webhook::{Plan, plan};
use notifier::{
    Attempt, EndpointConfig, NextState, claim_due, insert_deliveries, record_attempts,
    seed_endpoints,
};
use switch_platform::config::Secret;
use time::OffsetDateTime;
use uuid::Uuid;

async fn endpoints(db: &TestDb, merchant_id: &str, urls: &[&str]) -> Vec<Uuid> {
    let configured: Vec<EndpointConfig> = urls
        .iter()
        .map(|url| EndpointConfig {
            merchant_id: merchant_id.to_owned(),
            url: (*url).to_owned(),
            secret: Secret::new("whsec_store_test_secret_01"),
        })
        .collect();
    seed_endpoints(&db.pool, &configured).await.unwrap();
    sqlx::query_scalar("SELECT endpoint_id FROM endpoints WHERE merchant_id = $1 ORDER BY url")
        .bind(merchant_id)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// Owes one new webhook to every endpoint of `merchant_id`; returns how
/// many deliveries were added.
async fn owe(db: &TestDb, merchant_id: &str) -> u64 {
    let event = common::reversed(merchant_id, "000001");
    let Plan::Send(webhook) = plan(&event, OffsetDateTime::now_utc()) else {
        panic!("a reversal is a webhook");
    };
    let mut conn = db.pool.acquire().await.unwrap();
    insert_deliveries(
        &mut conn,
        &webhook,
        "unused_channel",
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_event_is_owed_once_per_endpoint() {
    let db = TestDb::new().await;
    let m1 = merchant("SA");
    endpoints(&db, &m1, &["http://a.example/1", "http://a.example/2"]).await;
    let event = common::reversed(&m1, "000001");
    let Plan::Send(webhook) = plan(&event, OffsetDateTime::now_utc()) else {
        panic!("a reversal is a webhook");
    };
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(
        insert_deliveries(&mut conn, &webhook, "c", OffsetDateTime::now_utc())
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        insert_deliveries(&mut conn, &webhook, "c", OffsetDateTime::now_utc())
            .await
            .unwrap(),
        0
    );
    // A merchant without endpoints is owed nothing.
    assert_eq!(owe(&db, &merchant("SB")).await, 0);
    // Seeding again updates, never duplicates.
    assert_eq!(endpoints(&db, &m1, &["http://a.example/1"]).await.len(), 2);
    drop(conn);
    db.drop().await;
}

#[tokio::test]
async fn claims_fill_only_each_endpoints_free_slots() {
    let db = TestDb::new().await;
    let m1 = merchant("SC");
    let m2 = merchant("SD");
    let e1 = endpoints(&db, &m1, &["http://a.example/1"]).await[0];
    let e2 = endpoints(&db, &m2, &["http://b.example/1"]).await[0];
    for _ in 0..5 {
        owe(&db, &m1).await;
    }
    for _ in 0..2 {
        owe(&db, &m2).await;
    }
    let lease = Duration::from_secs(60);
    let now = OffsetDateTime::now_utc();
    // Cap 3 per endpoint; e1 has 2 in flight already: 1 more from e1, 2 from e2.
    let claimed = claim_due(&db.pool, &[(e1, 2)], 3, 100, lease, now)
        .await
        .unwrap();
    let from = |e: Uuid| claimed.iter().filter(|c| c.endpoint_id == e).count();
    assert_eq!((from(e1), from(e2)), (1, 2));
    // Claimed rows are leased: a second worker finds only e1's remaining rows.
    let second = claim_due(&db.pool, &[], 10, 100, lease, now).await.unwrap();
    assert_eq!(second.len(), 4);
    assert!(second.iter().all(|c| c.endpoint_id == e1));
    assert!(
        claim_due(&db.pool, &[], 10, 100, lease, now)
            .await
            .unwrap()
            .is_empty()
    );
    db.drop().await;
}

#[tokio::test]
async fn a_lost_claim_comes_back_and_the_stale_worker_cannot_record() {
    let db = TestDb::new().await;
    let m1 = merchant("SE");
    endpoints(&db, &m1, &["http://a.example/1"]).await;
    owe(&db, &m1).await;
    let short = Duration::from_millis(200);
    let start = OffsetDateTime::now_utc();
    let first = claim_due(&db.pool, &[], 8, 10, short, start).await.unwrap();
    assert_eq!(first.len(), 1);
    // Still leased just before the lease ends, on the caller's clock...
    let before = start + time::Duration::milliseconds(150);
    assert!(
        claim_due(&db.pool, &[], 8, 10, short, before)
            .await
            .unwrap()
            .is_empty()
    );
    // ...and back once it has: the first worker "crashed".
    let after = start + time::Duration::milliseconds(250);
    let second = claim_due(&db.pool, &[], 8, 10, Duration::from_secs(60), after)
        .await
        .unwrap();
    assert_eq!(second[0].delivery_id, first[0].delivery_id);
    assert_ne!(second[0].lease_token, first[0].lease_token);

    let attempt = |claim: &notifier::Claimed, next| Attempt {
        delivery_id: claim.delivery_id,
        lease_token: claim.lease_token,
        next,
        started_at: after,
        finished_at: after,
        status: Some(500),
        error: Some("HTTP 500".into()),
    };
    // The first worker wakes up and tries to record: ignored.
    let stale = record_attempts(&db.pool, &[attempt(&first[0], NextState::DeadLettered)])
        .await
        .unwrap();
    assert!(stale.is_empty());
    let recorded = record_attempts(
        &db.pool,
        &[attempt(
            &second[0],
            NextState::Retry(Duration::from_secs(30)),
        )],
    )
    .await
    .unwrap();
    assert_eq!(recorded, vec![second[0].delivery_id]);
    let rows = common::deliveries(&db.pool).await;
    assert_eq!((rows[0].state.as_str(), rows[0].attempts), ("pending", 1));
    // Retried later (30 s after the attempt), not now.
    assert!(
        claim_due(
            &db.pool,
            &[],
            8,
            10,
            short,
            after + time::Duration::seconds(29)
        )
        .await
        .unwrap()
        .is_empty()
    );
    let retried = claim_due(
        &db.pool,
        &[],
        8,
        10,
        short,
        after + time::Duration::seconds(31),
    )
    .await
    .unwrap();
    assert_eq!(retried.len(), 1, "due once its retry time has come");
    db.drop().await;
}
