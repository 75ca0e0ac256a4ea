//! Group commit in the authorization journal, on the real PostgreSQL: many
//! concurrent `begin`s and `record_decision`s, each committed once, with
//! exactly its history and its outbox row, and every caller told its own
//! outcome (including when the statement of its batch fails).
// Fixtures are stamped with the wall clock; the code under test takes its
// time from the Clock port.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use authorization::AuthorizationError;
use authorization::model::{Authorization, RequestKey, SaleCommand};
use authorization::store::{Begin, Journal};
use sqlx::PgPool;
use switch_core::lifecycle::{Command, IssuerVerdict, decide};
use switch_core::{
    ApprovalCode, AuthorizationState, CardExpiry, Channel, Currency, LocalDate, MerchantId, Money,
    Pan, PanHasher, ResponseCode, Stan, TerminalId,
};
use switch_platform::db::DatabaseConfig;
use switch_platform::outbox::OutboxMessage;
use time::OffsetDateTime;
use uuid::Uuid;

const VISA: &str = "4111111111111111";

/// A migrated journal schema of this test's own.
struct TestJournal {
    journal: Arc<Journal>,
    pool: PgPool,
    url: String,
    schema: String,
}

impl TestJournal {
    async fn new() -> TestJournal {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let id = Uuid::new_v4().simple().to_string();
        let database = DatabaseConfig {
            url: url.clone(),
            schema_prefix: format!("g{}_", &id[..10]),
            max_connections: 16,
            ..DatabaseConfig::default()
        };
        let schema = database.schema_for(authorization::SERVICE_NAME);
        let pool = switch_platform::db::connect(&database, &schema)
            .await
            .expect("PostgreSQL is reachable");
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .expect("migrations apply");
        let journal = Arc::new(Journal::new(pool.clone()));
        TestJournal {
            journal,
            pool,
            url,
            schema,
        }
    }

    async fn drop(self) {
        drop(self.journal);
        self.pool.close().await;
        switch_platform::db::drop_schema(&self.url, &self.schema)
            .await
            .expect("test schema dropped");
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    async fn history(&self, id: Uuid) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT to_state FROM authorization_transitions WHERE transaction_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .expect("history")
    }
}

fn sale(terminal: &str, stan: u32, minor_units: i64) -> SaleCommand {
    SaleCommand {
        key: RequestKey {
            terminal_id: TerminalId::parse(terminal).unwrap(),
            stan: Stan::parse(&format!("{stan:06}")).unwrap(),
            local_date: LocalDate::from_date(OffsetDateTime::now_utc().date()),
        },
        merchant_id: MerchantId::parse("MERCHANT0000001").unwrap(),
        pan: Pan::parse(VISA).unwrap(),
        expiry: CardExpiry::parse("3012").unwrap(),
        amount: Money::new(minor_units, Currency::parse("EUR").unwrap()),
        last_completed_stan: None,
        channel: Channel::Card,
    }
}

fn hasher() -> PanHasher {
    PanHasher::new(b"test-only-fingerprint-key")
}

/// What the service does to start a sale: an RRN, then the intent.
async fn begin(journal: &Journal, command: &SaleCommand) -> Result<Begin, AuthorizationError> {
    let now = OffsetDateTime::now_utc();
    let rrn = journal.next_rrn(now.date()).await?;
    let intent = command.intent(rrn, hasher().fingerprint(&command.pan));
    journal.begin(intent, now).await
}

/// What the service does with the issuer's verdict: decide, then record
/// the decision with one announcement.
async fn record(
    journal: &Journal,
    current: &Authorization,
    verdict: IssuerVerdict,
    latency_ms: i32,
) -> Result<Authorization, AuthorizationError> {
    let now = OffsetDateTime::now_utc();
    let decision = decide(current, Command::IssuerDecided(verdict), now).expect("decidable");
    journal
        .record_decision(decision, Some(announcement(current)), latency_ms, now)
        .await
}

/// An event of `current`'s, as the announcer would encode one.
fn announcement(current: &Authorization) -> OutboxMessage {
    OutboxMessage {
        event_id: Uuid::new_v4(),
        topic: "test.authorization-events".into(),
        key: current.transaction_id.to_string(),
        payload: Vec::new(),
        traceparent: String::new(),
    }
}

/// Fires every sale at once, each from a task of its own.
async fn begin_all(
    journal: &Arc<Journal>,
    sales: Vec<SaleCommand>,
) -> Vec<(SaleCommand, Result<Begin, AuthorizationError>)> {
    let tasks: Vec<_> = sales
        .into_iter()
        .map(|command| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let result = begin(&journal, &command).await;
                (command, result)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.expect("begin task"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_begins_and_decisions_commit_once_each() {
    let db = TestJournal::new().await;

    // 200 concurrent begins: 150 keys, 50 of them sent twice (a retry
    // racing its original, often inside the same batch).
    let mut sales: Vec<SaleCommand> = (0..150).map(|i| sale("TERM0001", i, 1_000)).collect();
    sales.extend((0..50).map(|i| sale("TERM0001", i * 3, 1_000)));
    let results = begin_all(&db.journal, sales).await;

    let mut started: HashMap<RequestKey, Authorization> = HashMap::new();
    let mut existing: Vec<Authorization> = Vec::new();
    for (command, result) in results {
        match result.expect("begin succeeds") {
            Begin::Started(row) => {
                assert_eq!(row.key, command.key);
                assert_eq!(row.state, AuthorizationState::SentToIssuer);
                assert!(
                    started.insert(command.key.clone(), row).is_none(),
                    "one start per key"
                );
            }
            Begin::Existing(row) => {
                assert_eq!(row.key, command.key);
                existing.push(row);
            }
        }
    }
    assert_eq!(started.len(), 150, "every key started once");
    assert_eq!(existing.len(), 50, "every retry found its original");
    for row in &existing {
        assert_eq!(
            started[&row.key].transaction_id, row.transaction_id,
            "a retry gets its original's transaction"
        );
    }
    assert_eq!(db.count("SELECT count(*) FROM authorizations").await, 150);
    assert_eq!(
        db.count("SELECT count(*) FROM authorization_transitions")
            .await,
        300
    );
    for row in started.values() {
        assert_eq!(
            db.history(row.transaction_id.as_uuid()).await,
            ["received", "sent_to_issuer"]
        );
    }
    let transactions = db
        .count("SELECT count(DISTINCT xmin::text) FROM authorizations")
        .await;
    assert!(
        transactions < 150,
        "concurrent begins share transactions ({transactions} for 150 rows)"
    );

    // Decisions for all 150, and for 30 of them a second, conflicting
    // decision at the same time: exactly one of the two is recorded and
    // both callers get the recorded one.
    let mut decisions: Vec<(Authorization, IssuerVerdict)> = Vec::new();
    for (i, row) in started.values().enumerate() {
        let verdict = match i % 3 {
            0 => IssuerVerdict::Approved(ApprovalCode::parse(&format!("A{i:05}")).unwrap()),
            1 => IssuerVerdict::Declined(ResponseCode::INSUFFICIENT_FUNDS),
            _ => IssuerVerdict::Unknown,
        };
        decisions.push((row.clone(), verdict));
        if i < 30 {
            decisions.push((
                row.clone(),
                IssuerVerdict::Declined(ResponseCode::DO_NOT_HONOUR),
            ));
        }
    }
    let tasks: Vec<_> = decisions
        .into_iter()
        .map(|(current, verdict)| {
            let journal = db.journal.clone();
            tokio::spawn(async move {
                let decided = record(&journal, &current, verdict, 42).await;
                (current, decided)
            })
        })
        .collect();
    let mut outcomes: HashMap<Uuid, Vec<Authorization>> = HashMap::new();
    for task in tasks {
        let (current, decided) = task.await.expect("decision task");
        let decided = decided.expect("decision recorded");
        assert_eq!(decided.transaction_id, current.transaction_id);
        assert!(
            matches!(
                decided.state,
                AuthorizationState::Approved
                    | AuthorizationState::Declined
                    | AuthorizationState::IssuerTimedOut
            ),
            "decided: {}",
            decided.state
        );
        outcomes
            .entry(current.transaction_id.as_uuid())
            .or_default()
            .push(decided);
    }
    assert_eq!(outcomes.len(), 150);
    for (id, decided) in &outcomes {
        assert!(
            decided.windows(2).all(|pair| pair[0] == pair[1]),
            "both callers of {id} get the recorded decision"
        );
        let history = db.history(*id).await;
        assert_eq!(history.len(), 3, "one decision recorded for {id}");
        assert_eq!(history[2], decided[0].state.as_str());
    }
    assert_eq!(
        db.count("SELECT count(*) FROM authorizations WHERE state = 'sent_to_issuer'")
            .await,
        0
    );
    assert_eq!(db.count("SELECT count(*) FROM outbox").await, 150);
    assert_eq!(
        db.count(
            "SELECT count(DISTINCT o.message_key) FROM outbox o \
             JOIN authorizations a ON a.transaction_id::text = o.message_key"
        )
        .await,
        150,
        "one event per decided authorization, keyed by it"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox WHERE topic <> 'test.authorization-events'")
            .await,
        0
    );
    let approvals = db
        .count(
            "SELECT count(*) FROM authorizations \
             WHERE state = 'approved' AND response_code = '00' AND approval_code IS NOT NULL \
             AND issuer_latency_ms = 42",
        )
        .await;
    let approved = db
        .count("SELECT count(*) FROM authorizations WHERE state = 'approved'")
        .await;
    assert_eq!(approvals, approved, "approvals carry their codes");
    let transactions = db
        .count("SELECT count(DISTINCT xmin::text) FROM outbox")
        .await;
    assert!(
        transactions < 150,
        "concurrent decisions share transactions ({transactions} for 150 events)"
    );

    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_journal_commits_a_lone_request_at_once() {
    let db = TestJournal::new().await;
    let command = sale("TERM0002", 1, 500);
    let started = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        begin(&db.journal, &command),
    )
    .await
    .expect("no waiting for a batch to fill")
    .expect("begin");
    let Begin::Started(started) = started else {
        panic!("a new key starts");
    };
    let again = begin(&db.journal, &command).await.expect("retry");
    assert!(
        matches!(again, Begin::Existing(ref row) if row.transaction_id == started.transaction_id)
    );

    let decided = record(&db.journal, &started, IssuerVerdict::Unknown, 2_000)
        .await
        .expect("decision");
    assert_eq!(decided.state, AuthorizationState::IssuerTimedOut);
    // Deciding from a state the row has left records nothing more.
    let late = record(
        &db.journal,
        &started,
        IssuerVerdict::Declined(ResponseCode::DO_NOT_HONOUR),
        10,
    )
    .await
    .expect("stale decision");
    assert_eq!(late, decided);
    assert_eq!(
        db.history(started.transaction_id.as_uuid()).await,
        ["received", "sent_to_issuer", "issuer_timed_out"]
    );
    assert_eq!(db.count("SELECT count(*) FROM outbox").await, 1);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_batch_fails_every_request_in_it_and_loses_none() {
    let db = TestJournal::new().await;
    // Any row of terminal TERMFAIL makes the whole statement fail.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_termfail() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.terminal_id = 'TERMFAIL' THEN RAISE EXCEPTION 'refused'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER refuse_termfail BEFORE INSERT ON authorizations \
         FOR EACH ROW EXECUTE FUNCTION refuse_termfail();",
    )
    .execute(&db.pool)
    .await
    .expect("trigger");

    let mut sales: Vec<SaleCommand> = (0..60).map(|i| sale("TERM0003", i, 700)).collect();
    sales.insert(30, sale("TERMFAIL", 1, 700));
    let results = begin_all(&db.journal, sales).await;

    let mut failed = Vec::new();
    for (command, result) in results {
        let journaled = db.journal.find_by_key(&command.key).await.expect("lookup");
        match result {
            Ok(Begin::Started(row)) => {
                assert_eq!(journaled.as_ref(), Some(&row), "a start is committed");
                assert_eq!(
                    db.history(row.transaction_id.as_uuid()).await,
                    ["received", "sent_to_issuer"]
                );
            }
            Ok(Begin::Existing(_)) => panic!("no key was sent twice"),
            Err(error) => {
                assert!(
                    matches!(error, AuthorizationError::JournalBatch(_)),
                    "{error}"
                );
                assert_eq!(journaled, None, "a failed request left no row");
                failed.push(command);
            }
        }
    }
    assert!(
        failed
            .iter()
            .any(|c| c.key.terminal_id.as_str() == "TERMFAIL"),
        "the bad row fails"
    );

    // Once the cause is gone, the failed requests' retries go through.
    sqlx::raw_sql("DROP TRIGGER refuse_termfail ON authorizations")
        .execute(&db.pool)
        .await
        .expect("drop trigger");
    let retried = begin_all(&db.journal, failed).await;
    let mut seen = HashSet::new();
    for (command, result) in retried {
        assert!(matches!(result, Ok(Begin::Started(_))), "retry starts");
        assert!(seen.insert(command.key));
    }
    assert_eq!(db.count("SELECT count(*) FROM authorizations").await, 61);
    assert_eq!(
        db.count("SELECT count(*) FROM authorization_transitions")
            .await,
        122
    );
    db.drop().await;
}

/// Issue 13, hole 4: the RRN's sequence wraps, so an intent may come with
/// an RRN already journaled. It alone takes the next RRN; the sales that
/// share its batch are started as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_rrn_already_journaled_is_skipped_by_its_intent_not_its_batch() {
    let db = TestJournal::new().await;
    let first = match begin(&db.journal, &sale("TERM0002", 1, 1_000))
        .await
        .unwrap()
    {
        Begin::Started(row) => row,
        Begin::Existing(_) => panic!("a new key starts"),
    };
    // The wrapped sequence hands out the first sale's RRN again, while 20
    // other sales are being started at the same moment.
    let colliding = sale("TERM0002", 2, 2_000);
    let intent = colliding.intent(first.rrn.clone(), hasher().fingerprint(&colliding.pan));
    let journal = db.journal.clone();
    let collided =
        tokio::spawn(async move { journal.begin(intent, OffsetDateTime::now_utc()).await });
    let others = begin_all(
        &db.journal,
        (10..30).map(|i| sale("TERM0002", i, 1_000)).collect(),
    )
    .await;
    let collided = match collided
        .await
        .unwrap()
        .expect("the colliding intent starts")
    {
        Begin::Started(row) => row,
        Begin::Existing(row) => panic!("a new key is no retry: {row:?}"),
    };
    assert_eq!(collided.key, colliding.key);
    assert_ne!(collided.rrn, first.rrn, "it took the next RRN");
    for (command, result) in others {
        match result.expect("the batch is not failed by the collision") {
            Begin::Started(row) => assert_eq!(row.key, command.key),
            Begin::Existing(row) => panic!("a new key is no retry: {row:?}"),
        }
    }
    assert_eq!(db.count("SELECT count(*) FROM authorizations").await, 22);
    assert_eq!(
        db.count("SELECT count(DISTINCT rrn) FROM authorizations")
            .await,
        22
    );
    db.drop().await;
}

/// An acknowledgement decided on the record read without a lock and
/// group-committed: it writes the acknowledgement's columns, its history
/// and its announcement, keeps the issuer's latency the approval recorded,
/// and, decided on a state the row has left, writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acknowledgement_recorded_without_a_lock_keeps_the_approvals_columns() {
    let db = TestJournal::new().await;
    let Begin::Started(started) = begin(&db.journal, &sale("TERM0003", 1, 700))
        .await
        .expect("begin")
    else {
        panic!("a new key starts");
    };
    let approved = record(
        &db.journal,
        &started,
        IssuerVerdict::Approved(ApprovalCode::parse("A00001").unwrap()),
        123,
    )
    .await
    .expect("approval");
    // PostgreSQL keeps microseconds: a time it returns equal to this one.
    let wall = OffsetDateTime::now_utc();
    let now = wall
        .replace_nanosecond(wall.nanosecond() / 1_000 * 1_000)
        .expect("a valid time");
    let acknowledge = Command::Acknowledge {
        evidence: switch_core::Evidence::TerminalAcknowledgement,
    };
    let decision = decide(&approved, acknowledge.clone(), now).expect("decidable");
    let expected = decision.next.clone();
    let acknowledged = db
        .journal
        .record_unlocked(decision, Some(announcement(&approved)), now)
        .await
        .expect("recorded")
        .expect("the row was still approved");
    assert_eq!(acknowledged.state, expected.state);
    assert_eq!(acknowledged.acknowledged_at, expected.acknowledged_at);
    assert_eq!(
        acknowledged.confirmation_evidence,
        expected.confirmation_evidence
    );
    assert!(acknowledged.acknowledged_at.is_some());
    let latency: Option<i32> = sqlx::query_scalar(
        "SELECT issuer_latency_ms FROM authorizations WHERE transaction_id = $1",
    )
    .bind(started.transaction_id.as_uuid())
    .fetch_one(&db.pool)
    .await
    .expect("latency");
    assert_eq!(latency, Some(123), "the approval's issuer latency is kept");

    // The same acknowledgement decided on the approved record again: the
    // row has left that state, so nothing is written.
    let stale = decide(&approved, acknowledge, now).expect("decidable");
    assert_eq!(
        db.journal
            .record_unlocked(stale, None, now)
            .await
            .expect("no error"),
        None
    );
    let history = db.history(started.transaction_id.as_uuid()).await;
    assert_eq!(
        history.len(),
        4,
        "one transition for the acknowledgement: {history:?}"
    );
    assert_eq!(
        history.last().map(String::as_str),
        Some(expected.state.as_str())
    );
    assert_eq!(db.count("SELECT count(*) FROM outbox").await, 2);
    db.drop().await;
}
