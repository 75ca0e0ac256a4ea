//! Payout files are byte-identical on a retry: a run that crashed between
//! closing its windows and settling them is finished by a later tick, on a
//! clock that has moved on, and writes exactly the bytes the first attempt
//! wrote, because the files' ids and timestamps come from the recorded run.

mod common;

use std::sync::Arc;

use settlement_batcher::{ApprovalLedger, SettlementConfig};
use switch_core::ManualClock;
use switch_platform::consumer::EventHandler as _;
use switch_platform::kafka::KafkaConfig;
use switch_proto::v1::{self as pb, EventEnvelope, event_envelope::Payload};
use time::macros::datetime;
use uuid::Uuid;

/// An approval and its confirmation, sold on 2026-11-24 at 12:00 UTC.
fn completed_sale(
    merchant_id: &str,
    stan: &str,
    minor_units: i64,
    currency: &str,
) -> Vec<EventEnvelope> {
    let transaction_id = Uuid::new_v4().to_string();
    let facts = pb::AuthorizationFacts {
        terminal_id: format!("T{}", &merchant_id[merchant_id.len() - 7..]),
        merchant_id: merchant_id.into(),
        stan: stan.into(),
        local_date: "2026-11-24".into(),
        rrn: format!("633000{stan}"),
        masked_pan: "411111******1111".into(),
        amount: Some(pb::Money {
            minor_units,
            currency: currency.into(),
        }),
        channel: "card".into(),
    };
    let envelope = |payload| {
        common::event(
            &transaction_id,
            datetime!(2026-11-24 12:00 UTC).unix_timestamp(),
            payload,
        )
    };
    vec![
        envelope(Payload::AuthorizationApproved(pb::AuthorizationApproved {
            facts: Some(facts.clone()),
            approval_code: "A1B2C3".into(),
        })),
        envelope(Payload::AuthorizationConfirmed(
            pb::AuthorizationConfirmed {
                facts: Some(facts),
                approval_code: "A1B2C3".into(),
                evidence: switch_proto::v1::Evidence::TerminalAcknowledgement.into(),
            },
        )),
    ]
}

fn files(report_csv: &std::path::Path, report_pain: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(report_csv).expect("the CSV exists"),
        std::fs::read(report_pain).expect("the pain.001 exists"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_finished_after_a_crash_writes_the_same_payout_files() {
    let (pool, url, schema) = common::fresh_schema().await;
    let ledger = ApprovalLedger::default();
    let mut events = Vec::new();
    events.extend(completed_sale("MERCHANT0000001", "000001", 1_250, "EUR"));
    events.extend(completed_sale("MERCHANT0000001", "000002", 4_000, "USD"));
    events.extend(completed_sale("MERCHANT0000002", "000003", 999, "EUR"));
    let refs: Vec<&EventEnvelope> = events.iter().collect();
    let mut tx = pool.begin().await.unwrap();
    ledger.handle_batch(&mut tx, &refs).await.unwrap();
    tx.commit().await.unwrap();

    let payout_dir = std::env::temp_dir().join(format!("payouts-{}", Uuid::new_v4().simple()));
    let config = SettlementConfig {
        payout_dir: payout_dir.clone(),
        ..SettlementConfig::default()
    };
    let closed_at = datetime!(2026-11-24 22:00:07.25 UTC);
    let clock = ManualClock::starting_at(closed_at);
    let settler = settlement_batcher::settler(
        pool.clone(),
        &KafkaConfig::default(),
        &config,
        Arc::new(clock.clone()),
    )
    .unwrap();

    let cutoff = datetime!(2026-11-24 22:00 UTC);
    let report = settler.run(&[], cutoff).await.unwrap();
    let run_id = report.run_id.expect("the run closed windows");
    assert_eq!(report.windows.len(), 2);
    let (csv_path, pain_path) = (report.csv_path.unwrap(), report.pain001_path.unwrap());
    let (csv, pain) = files(&csv_path, &pain_path);
    let pain_text = String::from_utf8(pain.clone()).unwrap();
    assert!(
        pain_text.contains("<CreDtTm>2026-11-24T22:00:07"),
        "the file's creation time is when the windows closed: {pain_text}"
    );
    assert!(pain_text.contains(&format!("<MsgId>{}</MsgId>", run_id.simple())));
    assert_eq!(
        String::from_utf8(csv.clone()).unwrap().lines().count(),
        4,
        "a header and three payouts"
    );

    // The crash: windows closed, files never written, nothing settled.
    sqlx::query(
        "UPDATE windows SET state = 'closed', settled_at = NULL, payout_file = NULL \
         WHERE run_id = $1",
    )
    .bind(run_id)
    .execute(&pool)
    .await
    .unwrap();
    std::fs::remove_file(&csv_path).unwrap();
    std::fs::remove_file(&pain_path).unwrap();

    // The next tick, hours later.
    clock.advance(time::Duration::hours(3));
    assert_eq!(settler.settle_pending().await.unwrap(), 1);
    let (csv_again, pain_again) = files(&csv_path, &pain_path);
    assert_eq!(csv_again, csv, "CSV bytes differ on the retry");
    assert_eq!(
        String::from_utf8(pain_again).unwrap(),
        pain_text,
        "pain.001 bytes differ on the retry"
    );
    let settled_at: time::OffsetDateTime =
        sqlx::query_scalar("SELECT max(settled_at) FROM windows WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        settled_at,
        clock_now(&clock),
        "settled on the settler's clock"
    );

    let _ = std::fs::remove_dir_all(&payout_dir);
    pool.close().await;
    switch_platform::db::drop_schema(&url, &schema)
        .await
        .unwrap();
}

fn clock_now(clock: &ManualClock) -> time::OffsetDateTime {
    use switch_core::Clock as _;
    clock.now()
}
