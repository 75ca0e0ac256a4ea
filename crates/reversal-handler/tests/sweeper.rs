//! The sweeper against the real PostgreSQL: concurrent sweepers never claim
//! the same approval, only due approvals are claimed, decisions follow the
//! merchant's policy, events open, decide and close approvals in any order,
//! and authorization's answers (accepted, refused, failed) close or
//! reschedule them.
// Fixtures are stamped with the wall clock; the code under test takes its
// time from the Clock port.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{Behaviour, FakeAuthorization, TestDb, clock, facts, open_approval, row, shared};
use prost::Message as _;
use reversal_handler::{
    ApprovalTracker, CLAIM_LIMIT, LEASE, MerchantPolicy, ReversalHandlerConfig, Sweeper, Swept,
    apply, apply_now, claim_due, overdue, sweep_claimed, take_due,
};
use switch_core::{
    Clock, Evidence, OrphanDecision, ReversalReason, Watch, WatchCommand, WatchEffect,
    WatchOutcome, WatchRetry,
};
use switch_platform::consumer::{Outcome as Applied, apply_once};
use switch_proto::v1::{self as pb, EventEnvelope, event_envelope::Payload};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a sweep asks authorization about a watch, and whether the sweep
/// decided it (an orphan just found).
fn asked(swept: &Swept) -> Option<(OrphanDecision, bool)> {
    let newly = swept
        .effects
        .iter()
        .any(|e| matches!(e, WatchEffect::OrphanDecided { .. }));
    swept.effects.iter().find_map(|e| match e {
        WatchEffect::Ask { decision, .. } => Some((*decision, newly)),
        _ => None,
    })
}

fn decision_of(watch: &Watch) -> Option<OrphanDecision> {
    match watch {
        Watch::Decided { verdict, .. } => Some(verdict.decision),
        _ => None,
    }
}

fn config_with_confirming_merchant(merchant_id: &str) -> ReversalHandlerConfig {
    ReversalHandlerConfig {
        merchants: BTreeMap::from([(
            merchant_id.to_owned(),
            MerchantPolicy {
                ack_window_ms: Some(5_000),
                orphan_policy: Some("confirm".into()),
            },
        )]),
        ..ReversalHandlerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sweepers_never_claim_the_same_approval() {
    let db = TestDb::new().await;
    let mut due = HashSet::new();
    for _ in 0..40 {
        due.insert(open_approval(&db.pool, "M1", -60).await);
    }
    for _ in 0..10 {
        let facts = facts("M1");
        let mut conn = db.pool.acquire().await.unwrap();
        let now = time::OffsetDateTime::now_utc();
        apply(
            &mut conn,
            &facts,
            WatchCommand::IssuerTimedOut { at: now },
            now,
        )
        .await
        .unwrap()
        .expect("an issuer timeout is decided");
        due.insert(facts.transaction_id);
    }
    let now = time::OffsetDateTime::now_utc();

    // Two open transactions: the second skips what the first holds.
    let mut first = db.pool.begin().await.unwrap();
    let mut second = db.pool.begin().await.unwrap();
    let a = claim_due(&mut first, now, 25).await.unwrap();
    let b = claim_due(&mut second, now, CLAIM_LIMIT).await.unwrap();
    let a_ids: HashSet<Uuid> = a.iter().map(|c| c.transaction_id).collect();
    let b_ids: HashSet<Uuid> = b.iter().map(|c| c.transaction_id).collect();
    assert_eq!(a.len(), 25);
    assert_eq!(b.len(), 25);
    assert!(a_ids.is_disjoint(&b_ids), "a row was claimed twice");
    assert_eq!(
        a_ids.union(&b_ids).copied().collect::<HashSet<_>>(),
        due,
        "every due row was claimed by one of them"
    );
    first.rollback().await.unwrap();
    second.rollback().await.unwrap();

    // Four sweepers taking small batches at once: each row exactly once,
    // and a leased row is not taken again while its lease lasts.
    let config = ReversalHandlerConfig::default();
    let mut sweepers = Vec::new();
    for _ in 0..4 {
        let (pool, config) = (db.pool.clone(), config.clone());
        sweepers.push(tokio::spawn(async move {
            let mut taken = Vec::new();
            loop {
                let batch = take_due(&pool, &config, 7, LEASE, now).await.unwrap();
                if batch.is_empty() {
                    return taken;
                }
                taken.extend(batch.into_iter().map(|d| d.transaction_id));
            }
        }));
    }
    let mut all = Vec::new();
    for sweeper in sweepers {
        all.extend(sweeper.await.unwrap());
    }
    let unique: HashSet<Uuid> = all.iter().copied().collect();
    assert_eq!(all.len(), due.len(), "some row was taken twice: {all:?}");
    assert_eq!(unique, due);
    assert!(
        take_due(&db.pool, &config, CLAIM_LIMIT, LEASE, now)
            .await
            .unwrap()
            .is_empty()
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_due_approvals_are_claimed_and_decided_by_policy() {
    let db = TestDb::new().await;
    let orphan = open_approval(&db.pool, "M1", -60).await;
    let fuel_orphan = open_approval(&db.pool, "FUEL01", -60).await;
    let not_yet = open_approval(&db.pool, "M1", 60).await;
    let backing_off = open_approval(&db.pool, "M1", -60).await;
    let closed = open_approval(&db.pool, "M1", -60).await;
    let now = time::OffsetDateTime::now_utc();
    let evidence = WatchCommand::Announced {
        outcome: WatchOutcome::Confirmed(Some(Evidence::TerminalAcknowledgement)),
        at: now,
    };
    apply_now(&db.pool, closed, evidence, now).await.unwrap();
    // Decided earlier, failed, and not due again for a minute.
    let config = config_with_confirming_merchant("FUEL01");
    let mut tx = db.pool.begin().await.unwrap();
    let claimed = claim_due(&mut tx, now, CLAIM_LIMIT).await.unwrap();
    let claimed_backing_off: Vec<_> = claimed
        .into_iter()
        .filter(|c| c.transaction_id == backing_off)
        .collect();
    sweep_claimed(&mut tx, &claimed_backing_off, &config, LEASE, now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let minute = WatchRetry {
        initial_delay_ms: 60_000,
        max_delay_ms: 60_000,
    };
    let failed = WatchCommand::CallFailed {
        retry: minute,
        jitter: 0,
    };
    apply_now(&db.pool, backing_off, failed, now).await.unwrap();

    let due = take_due(&db.pool, &config, CLAIM_LIMIT, LEASE, now)
        .await
        .unwrap();
    let decisions: BTreeMap<Uuid, (OrphanDecision, bool)> = due
        .iter()
        .filter_map(|d| Some((d.transaction_id, asked(d)?)))
        .collect();
    assert_eq!(
        decisions.len(),
        due.len(),
        "every claimed watch is asked about"
    );
    assert_eq!(
        decisions,
        BTreeMap::from([
            (
                orphan,
                (
                    OrphanDecision::Reverse(ReversalReason::NoTerminalAcknowledgement),
                    true
                )
            ),
            (
                fuel_orphan,
                (OrphanDecision::Confirm(Evidence::Policy), true)
            ),
        ])
    );

    let decided = row(&db.pool, orphan).await.unwrap();
    assert_eq!(decided.status, "decided");
    assert_eq!(decided.decision.as_deref(), Some("reverse"));
    assert_eq!(
        decided.reason.as_deref(),
        Some("no_terminal_acknowledgement")
    );
    assert!(decided.decided && !decided.due_now, "decided and leased");
    let fuel = row(&db.pool, fuel_orphan).await.unwrap();
    assert_eq!(
        (fuel.decision.as_deref(), fuel.reason.as_deref()),
        (Some("confirm"), Some("policy"))
    );
    assert_eq!(row(&db.pool, not_yet).await.unwrap().status, "open");
    let waiting = row(&db.pool, backing_off).await.unwrap();
    assert_eq!((waiting.status.as_str(), waiting.attempts), ("decided", 1));
    assert!(!waiting.due_now);
    let done = row(&db.pool, closed).await.unwrap();
    assert_eq!(done.status, "closed");
    assert_eq!(
        done.outcome.as_deref(),
        Some("confirmed:terminal_acknowledgement")
    );

    // Closing is once: a later answer does not overwrite the first.
    let refused = apply_now(&db.pool, orphan, WatchCommand::CallRefused, now)
        .await
        .unwrap();
    assert!(refused.is_some_and(|d| !d.effects.is_empty()));
    let late = WatchCommand::CallSucceeded {
        outcome: WatchOutcome::Reversed,
    };
    let unchanged = apply_now(&db.pool, orphan, late, now).await.unwrap();
    assert!(unchanged.is_some_and(|d| d.effects.is_empty()));
    assert_eq!(
        row(&db.pool, orphan).await.unwrap().outcome.as_deref(),
        Some("superseded")
    );
    db.drop().await;
}

fn envelope(transaction_id: Uuid, payload: Payload) -> Vec<u8> {
    let facts = Some(pb::AuthorizationFacts {
        terminal_id: "T0000001".into(),
        merchant_id: "M1".into(),
        stan: "000042".into(),
        local_date: "2026-11-25".into(),
        rrn: "633000000042".into(),
        masked_pan: "411111******1111".into(),
        amount: None,
        channel: "card".into(),
    });
    let payload = match payload {
        Payload::AuthorizationApproved(mut p) => {
            p.facts = facts;
            Payload::AuthorizationApproved(p)
        }
        Payload::AuthorizationIssuerTimedOut(mut p) => {
            p.facts = facts;
            Payload::AuthorizationIssuerTimedOut(p)
        }
        Payload::ReversalRequested(mut p) => {
            p.facts = facts;
            Payload::ReversalRequested(p)
        }
        Payload::AuthorizationConfirmed(mut p) => {
            p.facts = facts;
            Payload::AuthorizationConfirmed(p)
        }
        other => other,
    };
    EventEnvelope {
        event_id: Uuid::new_v4().to_string(),
        event_type: "test".into(),
        transaction_id: transaction_id.to_string(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: time::OffsetDateTime::now_utc().unix_timestamp() - 10,
            nanos: 0,
        }),
        payload: Some(payload),
        ..EventEnvelope::default()
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_open_decide_and_close_approvals_in_any_order() {
    let db = TestDb::new().await;
    let tracker = ApprovalTracker::new(ReversalHandlerConfig::default(), shared(&clock()));
    let apply = |payload: Vec<u8>| {
        let (pool, tracker) = (db.pool.clone(), &tracker);
        async move {
            apply_once(&pool, "reversal-handler", &payload, tracker)
                .await
                .unwrap()
        }
    };
    let approved = || Payload::AuthorizationApproved(pb::AuthorizationApproved::default());

    // Approved, redelivered as a new event, then confirmed by evidence.
    let confirmed = Uuid::new_v4();
    assert_eq!(
        apply(envelope(confirmed, approved())).await,
        Applied::Applied
    );
    apply(envelope(confirmed, approved())).await;
    let open = row(&db.pool, confirmed).await.unwrap();
    assert_eq!(open.status, "open");
    let deadline_in_s: i64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM deadline_at - approved_at)::BIGINT FROM approvals \
         WHERE transaction_id = $1",
    )
    .bind(confirmed)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        deadline_in_s, 30,
        "the default window counts from occurred_at"
    );
    apply(envelope(
        confirmed,
        Payload::AuthorizationConfirmed(pb::AuthorizationConfirmed {
            evidence: switch_proto::v1::Evidence::TerminalAcknowledgement.into(),
            ..Default::default()
        }),
    ))
    .await;
    let closed = row(&db.pool, confirmed).await.unwrap();
    assert_eq!(closed.status, "closed");
    assert_eq!(
        closed.outcome.as_deref(),
        Some("confirmed:terminal_acknowledgement")
    );

    // The closing event first (order across restarts): the approval that
    // follows does not reopen it.
    let reversed_first = Uuid::new_v4();
    apply(envelope(
        reversed_first,
        Payload::ReversalRequested(pb::ReversalRequested {
            reason: switch_proto::v1::ReversalReason::TerminalRequested.into(),
            ..Default::default()
        }),
    ))
    .await;
    apply(envelope(reversed_first, approved())).await;
    let stays = row(&db.pool, reversed_first).await.unwrap();
    assert_eq!(stays.status, "closed");
    assert_eq!(
        stays.outcome.as_deref(),
        Some("reversal_requested:terminal_requested")
    );

    // An issuer timeout is owed a reversal at once.
    let timed_out = Uuid::new_v4();
    apply(envelope(
        timed_out,
        Payload::AuthorizationIssuerTimedOut(pb::AuthorizationIssuerTimedOut {
            timeout_ms: 2_000,
            ..Default::default()
        }),
    ))
    .await;
    let decided = row(&db.pool, timed_out).await.unwrap();
    assert_eq!(decided.status, "decided");
    assert_eq!(
        (decided.decision.as_deref(), decided.reason.as_deref()),
        (Some("reverse"), Some("issuer_timeout"))
    );
    let mut tx = db.pool.begin().await.unwrap();
    let claimed = claim_due(&mut tx, time::OffsetDateTime::now_utc(), CLAIM_LIMIT)
        .await
        .unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|c| (c.transaction_id, decision_of(&c.watch)))
            .collect::<Vec<_>>(),
        vec![(
            timed_out,
            Some(OrphanDecision::Reverse(ReversalReason::IssuerTimeout))
        )]
    );
    tx.rollback().await.unwrap();

    // Events that do not concern orphans, or name no transaction, change nothing.
    let declined = Uuid::new_v4();
    apply(envelope(
        declined,
        Payload::AuthorizationDeclined(pb::AuthorizationDeclined::default()),
    ))
    .await;
    assert_eq!(row(&db.pool, declined).await, None);
    let mut bad = EventEnvelope::decode(envelope(Uuid::new_v4(), approved()).as_slice()).unwrap();
    bad.transaction_id = "not-a-uuid".into();
    assert_eq!(apply(bad.encode_to_vec()).await, Applied::Applied);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM approvals")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 3);
    db.drop().await;
}

/// A consumer batch gathers approvals into one statement; the result must
/// be exactly that of applying the same events one by one, whatever the
/// interleaving: each sequence below is applied to one set of transactions
/// in one `handle_batch` and to another with `handle` per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_events_has_the_effect_of_applying_them_one_by_one() {
    use switch_platform::consumer::EventHandler as _;

    let db = TestDb::new().await;
    let tracker = ApprovalTracker::new(ReversalHandlerConfig::default(), shared(&clock()));
    let approved = || Payload::AuthorizationApproved(pb::AuthorizationApproved::default());
    let confirmed = || {
        Payload::AuthorizationConfirmed(pb::AuthorizationConfirmed {
            evidence: switch_proto::v1::Evidence::TerminalAcknowledgement.into(),
            ..Default::default()
        })
    };
    let reversal = || {
        Payload::ReversalRequested(pb::ReversalRequested {
            reason: switch_proto::v1::ReversalReason::TerminalRequested.into(),
            ..Default::default()
        })
    };
    let timed_out = || {
        Payload::AuthorizationIssuerTimedOut(pb::AuthorizationIssuerTimedOut {
            timeout_ms: 2_000,
            ..Default::default()
        })
    };
    // (transaction, payload) in delivery order, transactions named 0..5:
    // approved then confirmed in the same batch; approved alone; closed
    // before its approval arrives; approved twice (a republished event);
    // an issuer timeout after its approval; approved after an unrelated
    // closing event.
    let script: Vec<(usize, Payload)> = vec![
        (0, approved()),
        (1, approved()),
        (0, confirmed()),
        (2, reversal()),
        (2, approved()),
        (3, approved()),
        (3, approved()),
        (4, approved()),
        (4, timed_out()),
        (0, confirmed()),
        (5, approved()),
    ];
    let batched: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let single: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let events = |ids: &[Uuid]| -> Vec<EventEnvelope> {
        script
            .iter()
            .map(|(who, payload)| {
                EventEnvelope::decode(envelope(ids[*who], payload.clone()).as_slice()).unwrap()
            })
            .collect()
    };

    let batch = events(&batched);
    let refs: Vec<&EventEnvelope> = batch.iter().collect();
    let mut tx = db.pool.begin().await.unwrap();
    tracker.handle_batch(&mut tx, &refs).await.unwrap();
    tx.commit().await.unwrap();
    for event in events(&single) {
        let mut tx = db.pool.begin().await.unwrap();
        tracker.handle(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    }

    for who in 0..6 {
        let (a, b) = (
            row(&db.pool, batched[who]).await,
            row(&db.pool, single[who]).await,
        );
        assert!(a.is_some(), "transaction {who} is tracked");
        assert_eq!(a, b, "transaction {who}: batch and one-by-one differ");
    }
    assert_eq!(
        row(&db.pool, batched[0]).await.unwrap().status,
        "closed",
        "the confirmation in the same batch closes the approval before it"
    );
    assert_eq!(row(&db.pool, batched[1]).await.unwrap().status, "open");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_answers_close_or_reschedule() {
    let db = TestDb::new().await;
    let stop = CancellationToken::new();
    let fake = FakeAuthorization::default();
    let addr = fake.start(stop.clone()).await;
    let config = ReversalHandlerConfig {
        authorization_endpoint: format!("http://{addr}"),
        ..config_with_confirming_merchant("FUEL01")
    };
    let reversed = open_approval(&db.pool, "M1", -1).await;
    let confirmed = open_approval(&db.pool, "FUEL01", -1).await;
    let superseded = open_approval(&db.pool, "M1", -1).await;
    let failing = open_approval(&db.pool, "M1", -1).await;
    fake.set(superseded, Behaviour::Refuse);
    fake.set(failing, Behaviour::Fail);

    let clock = clock();
    let sweeper = Sweeper::new(
        db.pool.clone(),
        config,
        &switch_platform::internal_tls::InternalTlsConfig::plaintext_for_lab(),
        shared(&clock),
    )
    .unwrap();
    let report = sweeper.sweep_once().await.unwrap();
    assert_eq!((report.claimed, report.closed, report.failed), (4, 3, 1));

    let outcome = |id| {
        let pool = db.pool.clone();
        async move { row(&pool, id).await.unwrap() }
    };
    assert_eq!(
        outcome(reversed).await.outcome.as_deref(),
        Some("reversal_requested:no_terminal_acknowledgement")
    );
    assert_eq!(
        outcome(confirmed).await.outcome.as_deref(),
        Some("confirmed:policy")
    );
    assert_eq!(
        outcome(superseded).await.outcome.as_deref(),
        Some("superseded")
    );
    let retrying = outcome(failing).await;
    assert_eq!(
        (retrying.status.as_str(), retrying.attempts),
        ("decided", 1)
    );

    let mut calls = fake.calls();
    calls.sort();
    let mut expected = vec![
        (
            reversed.to_string(),
            "reverse:no_terminal_acknowledgement".to_owned(),
        ),
        (confirmed.to_string(), "confirm:policy".to_owned()),
        (
            superseded.to_string(),
            "reverse:no_terminal_acknowledgement".to_owned(),
        ),
        (
            failing.to_string(),
            "reverse:no_terminal_acknowledgement".to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(calls, expected);

    // Not asked again before the backoff ends, on the sweeper's clock.
    fake.set(failing, Behaviour::Accept);
    let early = sweeper.sweep_once().await.unwrap();
    assert_eq!(early.claimed, 0, "asked again before the backoff ended");
    // Once it ends (the backoff is 200 ms at first), the reversal is
    // asked again and accepted.
    clock.advance(time::Duration::milliseconds(250));
    let retried = sweeper.sweep_once().await.unwrap();
    assert_eq!((retried.claimed, retried.closed), (1, 1));
    assert_eq!(outcome(failing).await.status, "closed");
    assert_eq!(fake.calls().len(), 5);
    stop.cancel();
    db.drop().await;
}

/// What is due is decided on the sweeper's clock, the one deadlines are
/// computed on, never on the database's `now()`: a clock past a deadline
/// claims the approval the database would still call early, and a clock
/// before it claims nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_is_decided_on_the_callers_clock_not_the_databases() {
    let db = TestDb::new().await;
    let in_a_minute = open_approval(&db.pool, "M1", 60).await;
    let config = ReversalHandlerConfig::default();
    let clock = clock();

    let early = take_due(&db.pool, &config, CLAIM_LIMIT, LEASE, clock.now())
        .await
        .unwrap();
    assert!(early.is_empty(), "claimed before its deadline: {early:?}");

    clock.advance(time::Duration::seconds(61));
    let due = take_due(&db.pool, &config, CLAIM_LIMIT, LEASE, clock.now())
        .await
        .unwrap();
    assert_eq!(
        due.iter()
            .map(|d| (d.transaction_id, asked(d)))
            .collect::<Vec<_>>(),
        vec![(
            in_a_minute,
            Some((
                OrphanDecision::Reverse(ReversalReason::NoTerminalAcknowledgement),
                true
            ))
        )]
    );
    let decided = row(&db.pool, in_a_minute).await.unwrap();
    assert_eq!(decided.status, "decided");
    let decided_at: time::OffsetDateTime =
        sqlx::query_scalar("SELECT decided_at FROM approvals WHERE transaction_id = $1")
            .bind(in_a_minute)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(decided_at, clock.now(), "timestamps come from the clock");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_past_their_deadline_count_as_overdue_until_resolved() {
    let db = TestDb::new().await;
    let ten_ago = open_approval(&db.pool, "M1", -10).await;
    let _three_ago = open_approval(&db.pool, "M1", -3).await;
    let _in_a_minute = open_approval(&db.pool, "M1", 60).await;
    let now = time::OffsetDateTime::now_utc();

    let (count, oldest) = overdue(&db.pool, now).await.unwrap();
    assert_eq!(count, 2, "the one due in a minute is not overdue");
    let deadline: time::OffsetDateTime =
        sqlx::query_scalar("SELECT deadline_at FROM approvals WHERE transaction_id = $1")
            .bind(ten_ago)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(oldest, Some(deadline));

    // Decided and asking authorization: still owed an outcome.
    let config = ReversalHandlerConfig::default();
    let decided = take_due(&db.pool, &config, CLAIM_LIMIT, LEASE, now)
        .await
        .unwrap();
    assert_eq!(decided.len(), 2);
    assert_eq!(overdue(&db.pool, now).await.unwrap().0, 2);

    // Resolved: authorization's record of the reversal closes the watch.
    let mut conn = db.pool.acquire().await.unwrap();
    let resolved = reversal_handler::ApprovalFacts {
        transaction_id: ten_ago,
        ..facts("M1")
    };
    apply(
        &mut conn,
        &resolved,
        WatchCommand::Announced {
            outcome: WatchOutcome::Reversed,
            at: now,
        },
        now,
    )
    .await
    .unwrap();
    drop(conn);
    let (count, oldest) = overdue(&db.pool, now).await.unwrap();
    assert_eq!(count, 1);
    assert!(oldest > Some(deadline));

    // Nothing is overdue before any deadline.
    let (count, oldest) = overdue(&db.pool, now - time::Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!((count, oldest), (0, None));
    db.drop().await;
}
