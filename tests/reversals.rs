//! Reversals that always finish, exactly once (issue 4, authorization side):
//! terminal-initiated reversals (S4), reversals of transactions the switch
//! never saw, an issuer that is down while reversals are owed, dead letters,
//! late issuer approvals, and late terminal acknowledgements (S2).

use switch_e2e::v1::authorization_service_client::AuthorizationServiceClient;
use switch_e2e::v1::{
    AcknowledgeRequest, AuthorizationStatus, EventEnvelope, FaultPlan, RedriveRequest,
    TerminalReverseRequest, event_envelope::Payload,
};
use switch_e2e::{Stack, StackOptions, VISA, capture_logs, sale, today};

async fn stack_with(options: StackOptions) -> Stack {
    capture_logs();
    Stack::start(options)
        .await
        .expect("the stack starts against PostgreSQL and Kafka")
}

async fn stack() -> Stack {
    stack_with(StackOptions::default()).await
}

fn reverse_request(terminal_id: &str, stan: &str) -> TerminalReverseRequest {
    TerminalReverseRequest {
        terminal_id: terminal_id.into(),
        stan: stan.into(),
        local_date: today(),
    }
}

async fn events_of(stack: &Stack, transaction_id: &str) -> Vec<EventEnvelope> {
    stack.wait_outbox_drained().await.unwrap();
    stack
        .read_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.transaction_id == transaction_id)
        .collect()
}

fn count(events: &[EventEnvelope], event_type: &str) -> usize {
    events.iter().filter(|e| e.event_type == event_type).count()
}

async fn issuer_reversals(stack: &Stack) -> u64 {
    stack.issuer_stats().await.unwrap().reversals
}

async fn reversal_attempts(stack: &Stack, transaction_id: &str) -> i32 {
    sqlx::query_scalar("SELECT attempts FROM reversals WHERE transaction_id = $1::uuid")
        .bind(transaction_id)
        .fetch_optional(&stack.journal)
        .await
        .unwrap()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminal_reversal_sent_repeatedly_and_concurrently_reverses_once() {
    let stack = stack().await;
    let mut terminal = stack.terminal("TERM0001").await.unwrap();
    let approved = stack
        .sale_record(sale("TERM0001", "001001", VISA, 3_000))
        .await;
    assert_eq!(approved.status(), AuthorizationStatus::Approved);

    // Three times in a row, then five at once.
    for _ in 0..3 {
        let answer = terminal
            .reverse(reverse_request("TERM0001", "001001"))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.original_found);
        let status = answer.authorization.unwrap().status();
        assert!(
            matches!(
                status,
                AuthorizationStatus::ReversalPending | AuthorizationStatus::Reversed
            ),
            "{status:?}"
        );
    }
    let concurrent = (0..5).map(|_| {
        let mut client = terminal.clone();
        tokio::spawn(async move { client.reverse(reverse_request("TERM0001", "001001")).await })
    });
    for answer in futures::future::join_all(concurrent).await {
        assert!(answer.unwrap().unwrap().into_inner().original_found);
    }

    stack
        .wait_for_state(&approved.transaction_id, "reversed", 20)
        .await;
    assert_eq!(
        issuer_reversals(&stack).await,
        1,
        "one reversal reached the issuer"
    );
    let events = events_of(&stack, &approved.transaction_id).await;
    assert_eq!(count(&events, "authorization.reversal_requested"), 1);
    assert_eq!(count(&events, "authorization.reversed"), 1);
    let inquiry = stack.inquire("TERM0001", "001001").await;
    assert_eq!(inquiry.status(), AuthorizationStatus::Reversed);
    assert_eq!(
        inquiry.reversal_reason(),
        switch_proto::v1::ReversalReason::TerminalRequested
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reversal_of_a_transaction_never_seen_is_answered_and_recorded_once() {
    let stack = stack().await;
    let mut terminal = stack.terminal("TERM0002").await.unwrap();
    for _ in 0..2 {
        let answer = terminal
            .reverse(reverse_request("TERM0002", "001101"))
            .await
            .unwrap()
            .into_inner();
        assert!(!answer.original_found);
        assert!(answer.authorization.is_none());
    }
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM unmatched_reversals WHERE terminal_id = 'TERM0002' AND stan = '001101'",
    )
    .fetch_one(&stack.journal)
    .await
    .unwrap();
    assert_eq!(recorded, 1);
    stack.wait_outbox_drained().await.unwrap();
    let unmatched: Vec<_> = stack
        .read_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "terminal.unmatched_reversal")
        .collect();
    assert_eq!(unmatched.len(), 1, "{unmatched:?}");
    let Some(Payload::UnmatchedTerminalReversal(event)) = &unmatched[0].payload else {
        panic!("wrong payload");
    };
    assert_eq!(
        (event.terminal_id.as_str(), event.stan.as_str()),
        ("TERM0002", "001101")
    );
    assert_eq!(issuer_reversals(&stack).await, 0);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reversals_repeat_while_the_issuer_is_down_and_finish_once_when_it_is_back() {
    let stack = stack().await;
    let mut terminal = stack.terminal("TERM0003").await.unwrap();
    let mut ids = Vec::new();
    for stan in ["001201", "001202", "001203"] {
        let record = stack.sale_record(sale("TERM0003", stan, VISA, 4_000)).await;
        ids.push(record.transaction_id);
    }
    let mut control = stack.issuer_control().await.unwrap();
    control
        .set_faults(FaultPlan {
            outage: true,
            reversals_only: true,
            ..FaultPlan::default()
        })
        .await
        .unwrap();
    for stan in ["001201", "001202", "001203"] {
        terminal
            .reverse(reverse_request("TERM0003", stan))
            .await
            .unwrap();
    }
    // Each reversal is repeated while the issuer refuses.
    for id in &ids {
        stack
            .eventually(20, "three attempts per reversal", || async {
                (reversal_attempts(&stack, id).await >= 3).then_some(())
            })
            .await;
        assert_eq!(stack.state_of(id).await, "reversal_pending");
    }
    control.set_faults(FaultPlan::default()).await.unwrap();
    for id in &ids {
        stack.wait_for_state(id, "reversed", 20).await;
        let events = events_of(&stack, id).await;
        assert_eq!(
            count(&events, "authorization.reversed"),
            1,
            "acknowledged once"
        );
        let reversed = events
            .iter()
            .find_map(|e| match &e.payload {
                Some(Payload::AuthorizationReversed(r)) => Some(r.clone()),
                _ => None,
            })
            .unwrap();
        assert!(
            reversed.attempts >= 4,
            "repeated: {} attempts",
            reversed.attempts
        );
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reversal_not_acknowledged_within_its_maximum_age_is_dead_lettered_and_an_operator_redrives_it()
 {
    let mut options = StackOptions::default();
    options.reversal.max_age_ms = 1_500;
    let stack = stack_with(options).await;
    let mut terminal = stack.terminal("TERM0004").await.unwrap();
    let approved = stack
        .sale_record(sale("TERM0004", "001301", VISA, 5_000))
        .await;
    stack
        .issuer_control()
        .await
        .unwrap()
        .set_faults(FaultPlan {
            outage: true,
            reversals_only: true,
            ..FaultPlan::default()
        })
        .await
        .unwrap();
    terminal
        .reverse(reverse_request("TERM0004", "001301"))
        .await
        .unwrap();
    stack
        .wait_for_state(&approved.transaction_id, "reversal_dead_lettered", 20)
        .await;
    let status: String =
        sqlx::query_scalar("SELECT status FROM reversals WHERE transaction_id = $1::uuid")
            .bind(&approved.transaction_id)
            .fetch_one(&stack.journal)
            .await
            .unwrap();
    assert_eq!(status, "dead_lettered");
    let events = events_of(&stack, &approved.transaction_id).await;
    assert_eq!(count(&events, "authorization.reversal_dead_lettered"), 1);
    assert_eq!(count(&events, "authorization.reversed"), 0);
    assert!(
        switch_e2e::captured_logs().contains("Reversal dead-lettered"),
        "the dead letter is logged as an error for alerting"
    );

    // Issue 13, hole 1: the issuer is back; an operator redrives it.
    stack
        .issuer_control()
        .await
        .unwrap()
        .set_faults(FaultPlan::default())
        .await
        .unwrap();
    let mut authorization =
        AuthorizationServiceClient::connect(format!("http://{}", stack.authorization))
            .await
            .unwrap();
    let redrive = |operator: &str, reason: &str| RedriveRequest {
        transaction_id: approved.transaction_id.clone(),
        operator: operator.into(),
        reason: reason.into(),
    };
    let refused = authorization
        .redrive(redrive(" ", "issuer back"))
        .await
        .expect_err("an operator is required");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("operator"), "{refused:?}");
    let redriven = authorization
        .redrive(redrive("ops.alice", "INC-42: issuer link restored"))
        .await
        .expect("a dead-lettered reversal is redriven")
        .into_inner();
    assert!(
        matches!(
            redriven.status(),
            AuthorizationStatus::ReversalPending | AuthorizationStatus::Reversed
        ),
        "{redriven:?}"
    );
    stack
        .wait_for_state(&approved.transaction_id, "reversed", 20)
        .await;
    let (operator, reason): (String, String) = sqlx::query_as(
        "SELECT operator, reason FROM operator_actions \
         WHERE transaction_id = $1::uuid AND action = 'redrive'",
    )
    .bind(&approved.transaction_id)
    .fetch_one(&stack.journal)
    .await
    .unwrap();
    assert_eq!(
        (operator.as_str(), reason.as_str()),
        ("ops.alice", "INC-42: issuer link restored")
    );
    let again = authorization
        .redrive(redrive("ops.alice", "twice"))
        .await
        .expect_err("nothing left to redrive");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    assert!(
        again.message().contains("no dead-lettered reversal"),
        "{again:?}"
    );
    let events = events_of(&stack, &approved.transaction_id).await;
    assert_eq!(count(&events, "authorization.reversed"), 1);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_issuer_approval_is_recorded_and_never_resurrects_the_authorization() {
    let stack = stack_with(StackOptions {
        issuer_timeout_ms: 300,
        ..StackOptions::default()
    })
    .await;
    stack
        .issuer_control()
        .await
        .unwrap()
        .set_faults(FaultPlan {
            stans: vec!["001401".into()],
            latency_ms: 900,
            authorizations_only: true,
            ..FaultPlan::default()
        })
        .await
        .unwrap();
    let timed_out = stack
        .sale_record(sale("TERM0001", "001401", VISA, 6_000))
        .await;
    assert_eq!(timed_out.status(), AuthorizationStatus::IssuerTimedOut);

    // The approval arrives ~600 ms late: recorded, and reversed.
    stack
        .wait_for_state(&timed_out.transaction_id, "reversed", 20)
        .await;
    let (code, approval): (String, String) = sqlx::query_as(
        "SELECT response_code, approval_code FROM late_issuer_responses WHERE transaction_id = $1::uuid",
    )
    .bind(&timed_out.transaction_id)
    .fetch_one(&stack.journal)
    .await
    .unwrap();
    assert_eq!(code, "00");
    assert_eq!(approval.len(), 6);
    let history: Vec<String> = sqlx::query_scalar(
        "SELECT to_state FROM authorization_transitions WHERE transaction_id = $1::uuid ORDER BY id",
    )
    .bind(&timed_out.transaction_id)
    .fetch_all(&stack.journal)
    .await
    .unwrap();
    assert_eq!(
        history,
        [
            "received",
            "sent_to_issuer",
            "issuer_timed_out",
            "reversal_pending",
            "reversed"
        ],
        "never approved"
    );
    let events = events_of(&stack, &timed_out.transaction_id).await;
    assert_eq!(count(&events, "authorization.late_issuer_response"), 1);
    assert_eq!(count(&events, "authorization.approved"), 0);
    let inquiry = stack.inquire("TERM0001", "001401").await;
    assert_eq!(inquiry.status(), AuthorizationStatus::Reversed);
    assert_eq!(
        inquiry.reversal_reason(),
        switch_proto::v1::ReversalReason::LateIssuerResponse
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acknowledgement_after_the_reversal_is_a_conflict_and_the_receipt_is_void() {
    let stack = stack().await;
    let mut terminal = stack.terminal("TERM0002").await.unwrap();
    let approved = stack
        .sale_record(sale("TERM0002", "001501", VISA, 7_000))
        .await;
    terminal
        .reverse(reverse_request("TERM0002", "001501"))
        .await
        .unwrap();
    stack
        .wait_for_state(&approved.transaction_id, "reversed", 20)
        .await;

    let ack = AcknowledgeRequest {
        terminal_id: "TERM0002".into(),
        stan: "001501".into(),
        local_date: today(),
    };
    for _ in 0..2 {
        let record = terminal
            .acknowledge(ack.clone())
            .await
            .unwrap()
            .into_inner()
            .authorization
            .unwrap();
        assert_eq!(
            record.status(),
            AuthorizationStatus::Reversed,
            "stays reversed"
        );
        assert!(record.conflict);
    }
    let reprint = terminal
        .reprint_last(switch_e2e::v1::ReprintLastRequest {
            terminal_id: "TERM0002".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reprint.status(), AuthorizationStatus::Reversed);
    assert!(reprint.message.starts_with("Void"), "{}", reprint.message);
    let events = events_of(&stack, &approved.transaction_id).await;
    assert_eq!(count(&events, "authorization.acknowledgement_conflict"), 1);
    assert_eq!(count(&events, "authorization.confirmed"), 0);
    stack.shutdown().await;
}
