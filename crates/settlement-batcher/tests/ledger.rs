//! The approval ledger's consumer on the real PostgreSQL: a batch of
//! events, whose approvals are written with one statement, has exactly the
//! effect of applying the same events one by one, including an approval
//! whose terminal key another transaction holds. The schema keeps data
//! shape only (the ledger's rules are switch-core's), and a stored name
//! that does not parse is never guessed at.

mod common;

use settlement_batcher::ApprovalLedger;
use sqlx::PgPool;
use switch_platform::consumer::EventHandler as _;
use switch_proto::v1::{self as pb, EventEnvelope, event_envelope::Payload};
use uuid::Uuid;

fn facts(stan: &str) -> Option<pb::AuthorizationFacts> {
    Some(pb::AuthorizationFacts {
        terminal_id: "TERM0001".into(),
        merchant_id: "MERCHANT0000001".into(),
        stan: stan.into(),
        local_date: "2026-11-25".into(),
        rrn: format!("6330000{stan}"),
        masked_pan: "411111******1111".into(),
        amount: Some(pb::Money {
            minor_units: 1_500,
            currency: "EUR".into(),
        }),
        channel: "card".into(),
    })
}

fn event(transaction_id: Uuid, payload: Payload) -> EventEnvelope {
    common::event(&transaction_id.to_string(), 1_795_000_000, payload)
}

type LedgerRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

async fn ledger_row(pool: &PgPool, id: Uuid) -> Option<LedgerRow> {
    sqlx::query_as(
        "SELECT status, evidence, reversal_reason, approval_code, conflict, amount_minor \
         FROM transactions WHERE transaction_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn rejected_for(pool: &PgPool, id: Uuid) -> Option<Uuid> {
    sqlx::query_scalar("SELECT held_by FROM ledger_rejections WHERE transaction_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_events_has_the_effect_of_applying_them_one_by_one() {
    let (pool, url, schema) = common::fresh_schema().await;
    let ledger = ApprovalLedger::default();
    let approved = |stan: &str| {
        Payload::AuthorizationApproved(pb::AuthorizationApproved {
            facts: facts(stan),
            approval_code: "A1B2C3".into(),
        })
    };
    let confirmed = |stan: &str| {
        Payload::AuthorizationConfirmed(pb::AuthorizationConfirmed {
            facts: facts(stan),
            approval_code: "A1B2C3".into(),
            evidence: switch_proto::v1::Evidence::TerminalAcknowledgement.into(),
        })
    };
    let reversed = || {
        Payload::AuthorizationReversed(pb::AuthorizationReversed {
            reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into(),
            ..Default::default()
        })
    };
    let requested = || {
        Payload::ReversalRequested(pb::ReversalRequested {
            reason: switch_proto::v1::ReversalReason::BatchOrphan.into(),
            ..Default::default()
        })
    };
    // (transaction 0..11, STAN offset, payload) in delivery order: approved
    // then confirmed in the same batch; approved alone; a reversal of a
    // sale not yet known, then its approval; a republished approval; two
    // transactions under one terminal key (the second is rejected); an
    // approval then its reversal; a confirmation whose approval never
    // arrived; a reversal requested, then the approval confirmed after
    // all; a reversal after the confirmation (confirmed is final); a
    // confirmation of another transaction under the key of the one before
    // last but two (rejected).
    let script = |base: u32| -> Vec<(usize, Payload)> {
        let stan = |offset: u32| format!("{:06}", base + offset);
        vec![
            (0, approved(&stan(0))),
            (1, approved(&stan(1))),
            (0, confirmed(&stan(0))),
            (2, reversed()),
            (2, approved(&stan(2))),
            (3, approved(&stan(3))),
            (3, approved(&stan(3))),
            (4, approved(&stan(4))),
            (5, approved(&stan(4))),
            (6, approved(&stan(6))),
            (6, reversed()),
            (7, confirmed(&stan(7))),
            (8, approved(&stan(8))),
            (8, requested()),
            (8, confirmed(&stan(8))),
            (9, approved(&stan(9))),
            (9, confirmed(&stan(9))),
            (9, reversed()),
            (10, confirmed(&stan(7))),
        ]
    };
    let batched: Vec<Uuid> = (0..11).map(|_| Uuid::new_v4()).collect();
    let single: Vec<Uuid> = (0..11).map(|_| Uuid::new_v4()).collect();

    let batch: Vec<EventEnvelope> = script(100)
        .into_iter()
        .map(|(who, payload)| event(batched[who], payload))
        .collect();
    let refs: Vec<&EventEnvelope> = batch.iter().collect();
    let mut tx = pool.begin().await.unwrap();
    ledger.handle_batch(&mut tx, &refs).await.unwrap();
    tx.commit().await.unwrap();
    for (who, payload) in script(200) {
        let mut tx = pool.begin().await.unwrap();
        ledger
            .handle(&mut tx, &event(single[who], payload))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    for who in 0..11 {
        assert_eq!(
            ledger_row(&pool, batched[who]).await,
            ledger_row(&pool, single[who]).await,
            "transaction {who}: batch and one-by-one differ"
        );
    }
    let status = |row: Option<LedgerRow>| row.map(|r| r.0);
    assert_eq!(
        status(ledger_row(&pool, batched[0]).await).as_deref(),
        Some("confirmed")
    );
    assert_eq!(
        status(ledger_row(&pool, batched[1]).await).as_deref(),
        Some("unconfirmed")
    );
    assert_eq!(
        status(ledger_row(&pool, batched[6]).await).as_deref(),
        Some("reversed")
    );
    assert_eq!(
        ledger_row(&pool, batched[5]).await,
        None,
        "never in the ledger"
    );
    assert_eq!(rejected_for(&pool, batched[5]).await, Some(batched[4]));
    assert_eq!(rejected_for(&pool, single[5]).await, Some(single[4]));
    for (who, expected) in [(7, "confirmed"), (8, "confirmed"), (9, "confirmed")] {
        assert_eq!(
            status(ledger_row(&pool, batched[who]).await).as_deref(),
            Some(expected),
            "transaction {who}"
        );
    }
    assert_eq!(
        ledger_row(&pool, batched[8])
            .await
            .and_then(|r| r.2)
            .as_deref(),
        Some("batch_orphan"),
        "the failed reversal's reason stays on record"
    );
    assert_eq!(ledger_row(&pool, batched[10]).await, None);
    assert_eq!(rejected_for(&pool, batched[10]).await, Some(batched[7]));

    pool.close().await;
    switch_platform::db::drop_schema(&url, &schema)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_keeps_data_shape_and_no_ledger_rule() {
    let (pool, url, schema) = common::fresh_schema().await;
    let functions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        functions, 0,
        "status order is switch-core's, not a SQL function"
    );
    let mut checks: Vec<String> = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint \
         WHERE conrelid = 'transactions'::regclass AND contype = 'c'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    checks.sort();
    assert_eq!(
        checks,
        [
            "transactions_amount_minor_check",
            "transactions_status_check"
        ],
        "only data shape is checked; eligibility is switch-core's"
    );
    pool.close().await;
    switch_platform::db::drop_schema(&url, &schema)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_reason_that_does_not_parse_stops_the_event_instead_of_being_guessed() {
    let (pool, url, schema) = common::fresh_schema().await;
    let ledger = ApprovalLedger::default();
    let id = Uuid::new_v4();
    let approved = Payload::AuthorizationApproved(pb::AuthorizationApproved {
        facts: facts("000777"),
        approval_code: "A1B2C3".into(),
    });
    let mut tx = pool.begin().await.unwrap();
    ledger.handle(&mut tx, &event(id, approved)).await.unwrap();
    tx.commit().await.unwrap();
    // A row written by a broken version.
    sqlx::query(
        "UPDATE transactions SET status = 'reversal_pending', reversal_reason = 'gremlins' \
         WHERE transaction_id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let reversed = Payload::AuthorizationReversed(pb::AuthorizationReversed {
        reason: switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into(),
        ..Default::default()
    });
    let mut tx = pool.begin().await.unwrap();
    let result = ledger.handle(&mut tx, &event(id, reversed)).await;
    tx.rollback().await.unwrap();
    let error = result.expect_err("a corrupt row is not decided on");
    assert!(error.to_string().contains("gremlins"), "{error}");

    // An event naming a reason that does not exist changes nothing.
    let other = Uuid::new_v4();
    let approved = Payload::AuthorizationApproved(pb::AuthorizationApproved {
        facts: facts("000778"),
        approval_code: "A1B2C3".into(),
    });
    let unknown = Payload::ReversalRequested(pb::ReversalRequested {
        // A number no ReversalReason has.
        reason: 99,
        ..Default::default()
    });
    let mut tx = pool.begin().await.unwrap();
    ledger
        .handle(&mut tx, &event(other, approved))
        .await
        .unwrap();
    ledger
        .handle(&mut tx, &event(other, unknown))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        ledger_row(&pool, other).await.map(|r| (r.0, r.2)),
        Some(("unconfirmed".to_owned(), None))
    );

    pool.close().await;
    switch_platform::db::drop_schema(&url, &schema)
        .await
        .unwrap();
}
