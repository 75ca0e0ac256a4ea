//! Regression tests for issue 12's holes, on the real stack: each
//! reproduces, with the issuer simulator's faults, a way the switch used to
//! leave a shopper charged, and checks the issuer's own ledger at the end.
//!
//! 1. A process dies during the issuer call after the issuer approved: the
//!    intent stays `sent_to_issuer` unless the recovery sweep finds it.
//! 2. A reversal overtakes its original: the issuer answers "25", then
//!    approves the original; a "25" must not end the reversal while the
//!    original can still land.
//! 3. A partial approval ("10") holds funds: it must be reversed, and the
//!    terminal told "declined".
//! 4. Late answers are awaited in memory: a graceful restart (SIGTERM, a
//!    rolling deploy) must still record one that arrives before the call's
//!    deadline. (After `kill -9` it is lost with the connection; the money
//!    is safe regardless, hole 1's test shows the timeout reversal.)

use std::net::SocketAddr;
use std::time::Duration;

use switch_e2e::v1::authorization_service_client::AuthorizationServiceClient;
use switch_e2e::v1::{AuthorizationStatus, FaultPlan, FundsState, TerminalReverseRequest};
use switch_e2e::{
    Stack, StackOptions, SwitchdProcess, VISA, capture_logs, database_url, free_address,
    issuer_funds, quick_reversal_handler, sale, switchd_env, today, unique_suffix,
};
use switch_platform::db::DatabaseConfig;
use tokio_util::sync::CancellationToken;

async fn stack_with(options: StackOptions) -> Stack {
    capture_logs();
    Stack::start(options)
        .await
        .expect("the stack starts against PostgreSQL and Kafka")
}

async fn set_faults(stack: &Stack, plan: FaultPlan) {
    stack
        .issuer_control()
        .await
        .unwrap()
        .set_faults(plan)
        .await
        .unwrap();
}

/// Hole 3: the issuer approves half the amount and holds it. The terminal
/// is told "05" (never "10", which a terminal could take for an approval)
/// and the hold is released at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_approval_is_declined_to_the_terminal_and_its_hold_released() {
    let stack = stack_with(StackOptions::default()).await;
    set_faults(
        &stack,
        FaultPlan {
            partial_approval: true,
            ..FaultPlan::default()
        },
    )
    .await;
    let answer = stack
        .sale_record(sale("TERM0001", "012001", VISA, 4_000))
        .await;
    assert_eq!(answer.response_code, "05", "{answer:?}");
    assert!(
        matches!(
            answer.status(),
            AuthorizationStatus::ReversalPending | AuthorizationStatus::Reversed
        ),
        "{answer:?}"
    );
    assert_eq!(
        answer.reversal_reason(),
        switch_e2e::v1::ReversalReason::ApprovalNotAccepted
    );
    stack
        .wait_for_state(&answer.transaction_id, "reversed", 20)
        .await;
    assert_eq!(
        stack.issuer_funds(&answer.rrn).await,
        (FundsState::Released, 2_000),
        "the partial hold is released"
    );
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT response_code FROM authorizations WHERE transaction_id = $1::uuid",
    )
    .bind(&answer.transaction_id)
    .fetch_one(&stack.journal)
    .await
    .unwrap();
    assert_eq!(stored.as_deref(), Some("10"), "the issuer's code is kept");
    stack.shutdown().await;
}

/// Hole 2: the issuer holds the original back (1.5 s, past the switch's
/// 0.5 s timeout, within the call's 3 s deadline). The terminal gives up
/// and reverses; the reversal overtakes the original and is answered "25";
/// the issuer then approves the original. The switch repeats the reversal
/// past the original's deadline, and the hold is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_answered_25_before_its_original_landed_is_repeated_until_released() {
    let stack = stack_with(StackOptions {
        issuer_timeout_ms: 500,
        issuer_late_window_ms: Some(3_000),
        ..StackOptions::default()
    })
    .await;
    set_faults(
        &stack,
        FaultPlan {
            latency_ms: 1_500,
            authorizations_only: true,
            ..FaultPlan::default()
        },
    )
    .await;
    let timed_out = stack
        .sale_record(sale("TERM0001", "012101", VISA, 2_500))
        .await;
    assert_eq!(timed_out.status(), AuthorizationStatus::IssuerTimedOut);
    let reversed = stack
        .terminal("TERM0001")
        .await
        .unwrap()
        .reverse(TerminalReverseRequest {
            terminal_id: "TERM0001".into(),
            stan: "012101".into(),
            local_date: today(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reversed.original_found);
    // The first attempt reaches the issuer before the original is decided.
    stack
        .eventually(5, "the issuer to answer a reversal", || async {
            (stack.issuer_stats().await.unwrap().reversals >= 1).then_some(())
        })
        .await;
    stack
        .eventually(5, "the original to be approved at the issuer", || async {
            (stack.issuer_funds(&timed_out.rrn).await.0 != FundsState::Unknown).then_some(())
        })
        .await;
    stack
        .wait_for_state(&timed_out.transaction_id, "reversed", 20)
        .await;
    assert_eq!(
        stack.issuer_funds(&timed_out.rrn).await,
        (FundsState::Released, 2_500),
        "the late approval's hold is released"
    );
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM reversals WHERE transaction_id = $1::uuid")
            .bind(&timed_out.transaction_id)
            .fetch_one(&stack.journal)
            .await
            .unwrap();
    assert!(attempts >= 2, "the 25 was repeated: {attempts} attempts");
    stack.shutdown().await;
}

fn authorization_process(prefix: &str, listen: SocketAddr, issuer: SocketAddr) -> SwitchdProcess {
    let env = switchd_env(
        prefix,
        &[
            ("SWITCH__AUTHORIZATION__LISTEN", listen.to_string()),
            (
                "SWITCH__AUTHORIZATION__ISSUER_ENDPOINT",
                format!("http://{issuer}"),
            ),
            ("SWITCH__AUTHORIZATION__ISSUER_TIMEOUT_MS", "500".to_owned()),
            (
                "SWITCH__AUTHORIZATION__ISSUER_LATE_WINDOW_MS",
                "1500".to_owned(),
            ),
            (
                "SWITCH__AUTHORIZATION__RECOVERY_INTERVAL_MS",
                "200".to_owned(),
            ),
            (
                "SWITCH__AUTHORIZATION__OUTBOX__POLL_INTERVAL_MS",
                "100".to_owned(),
            ),
            (
                "SWITCH__AUTHORIZATION__REVERSAL__INITIAL_DELAY_MS",
                "50".to_owned(),
            ),
            (
                "SWITCH__AUTHORIZATION__REVERSAL__MAX_DELAY_MS",
                "200".to_owned(),
            ),
        ],
    );
    SwitchdProcess::spawn("authorization", &env)
}

fn reversal_handler_process(
    prefix: &str,
    listen: SocketAddr,
    authorization: SocketAddr,
) -> SwitchdProcess {
    let quick = quick_reversal_handler(2_000);
    let env = switchd_env(
        prefix,
        &[
            ("SWITCH__REVERSAL_HANDLER__LISTEN", listen.to_string()),
            (
                "SWITCH__REVERSAL_HANDLER__AUTHORIZATION_ENDPOINT",
                format!("http://{authorization}"),
            ),
            (
                "SWITCH__REVERSAL_HANDLER__ACK_WINDOW_MS",
                quick.ack_window_ms.to_string(),
            ),
            (
                "SWITCH__REVERSAL_HANDLER__SWEEP_INTERVAL_MS",
                quick.sweep_interval_ms.to_string(),
            ),
        ],
    );
    SwitchdProcess::spawn("reversal-handler", &env)
}

const AUTHORIZATION: &str = "switch.v1.AuthorizationService";

/// Hole 1: the issuer approves and holds the funds, its answer is lost,
/// and `kill -9` takes authorization down while it waits: the intent stays
/// `sent_to_issuer` with no event. After a restart the recovery sweep finds
/// it past the call's deadline, records it as timed out, and the timeout
/// reversal releases the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_whose_process_died_mid_call_is_recovered_and_reversed() {
    capture_logs();
    let prefix = unique_suffix();
    let stop = CancellationToken::new();
    let issuer = switch_e2e::spawn_issuer(&stop).await;
    let mut control = switch_e2e::v1::issuer_control_client::IssuerControlClient::connect(format!(
        "http://{issuer}"
    ))
    .await
    .unwrap();
    control
        .set_faults(FaultPlan {
            approve_then_hang: true,
            ..FaultPlan::default()
        })
        .await
        .unwrap();

    let listen = free_address().await;
    let mut first = authorization_process(&prefix, listen, issuer);
    first.wait_until_healthy(listen, AUTHORIZATION).await;
    let mut client = AuthorizationServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let call = tokio::spawn(async move {
        client
            .authorize(switch_e2e::authorize_request("TERM0001", "012201", 6_100))
            .await
    });

    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{prefix}_"),
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(authorization::SERVICE_NAME);
    let journal = switch_platform::db::connect(&database, &schema)
        .await
        .unwrap();
    let row = || {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT transaction_id::text, rrn, state FROM authorizations WHERE stan = '012201'",
        )
        .fetch_optional(&journal)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (transaction_id, rrn) = loop {
        if let Some((id, rrn, _)) = row().await.unwrap()
            && issuer_funds(issuer, &rrn).await.0 == FundsState::Held
        {
            break (id, rrn);
        }
        assert!(std::time::Instant::now() < deadline, "the issuer approves");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Killed while the issuer's answer is still awaited (the hang).
    first.kill_9();
    assert!(call.await.unwrap().is_err(), "the caller lost its answer");
    assert_eq!(row().await.unwrap().unwrap().2, "sent_to_issuer");

    let second_listen = free_address().await;
    let mut second = authorization_process(&prefix, second_listen, issuer);
    second
        .wait_until_healthy(second_listen, AUTHORIZATION)
        .await;
    let handler_listen = free_address().await;
    let mut handler = reversal_handler_process(&prefix, handler_listen, second_listen);
    handler.wait_until_healthy(handler_listen, "").await;

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state = row().await.unwrap().unwrap().2;
        if state == "reversed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "recovered and reversed within 30 s (still {state})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        issuer_funds(issuer, &rrn).await,
        (FundsState::Released, 6_100),
        "the issuer released the hold of {transaction_id}"
    );
    let transitions: Vec<String> = sqlx::query_scalar(
        "SELECT event FROM authorization_transitions WHERE transaction_id = $1::uuid ORDER BY id",
    )
    .bind(&transaction_id)
    .fetch_all(&journal)
    .await
    .unwrap();
    assert!(
        transitions.iter().any(|e| e == "issuer_timed_out"),
        "{transitions:?}"
    );
    handler.kill_9();
    second.kill_9();
    stop.cancel();
    journal.close().await;
    switch_platform::db::drop_schema(&database.url, &schema)
        .await
        .unwrap();
    for service in [reversal_handler::SERVICE_NAME] {
        let _ =
            switch_platform::db::drop_schema(&database.url, &database.schema_for(service)).await;
    }
}

/// Hole 4: the issuer holds the original back past the switch's timeout;
/// authorization gets SIGTERM while the late answer is still awaited. It
/// records the late approval (and reverses it) before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_awaited_during_a_graceful_restart_is_recorded() {
    capture_logs();
    let prefix = unique_suffix();
    let stop = CancellationToken::new();
    let issuer = switch_e2e::spawn_issuer(&stop).await;
    let mut control = switch_e2e::v1::issuer_control_client::IssuerControlClient::connect(format!(
        "http://{issuer}"
    ))
    .await
    .unwrap();
    control
        .set_faults(FaultPlan {
            latency_ms: 1_000,
            authorizations_only: true,
            ..FaultPlan::default()
        })
        .await
        .unwrap();
    let listen = free_address().await;
    let mut authorization = authorization_process(&prefix, listen, issuer);
    authorization
        .wait_until_healthy(listen, AUTHORIZATION)
        .await;
    let record = AuthorizationServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap()
        .authorize(switch_e2e::authorize_request("TERM0001", "012301", 3_300))
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(record.status(), AuthorizationStatus::IssuerTimedOut);
    // The answer is due in about half a second; the process is asked to
    // stop now.
    let exit = authorization.terminate();
    assert!(exit.success(), "a graceful exit: {exit}");

    let database = DatabaseConfig {
        url: database_url(),
        schema_prefix: format!("{prefix}_"),
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(authorization::SERVICE_NAME);
    let journal = switch_platform::db::connect(&database, &schema)
        .await
        .unwrap();
    let late: Vec<(String, String)> = sqlx::query_as(
        "SELECT response_code, approval_code FROM late_issuer_responses \
         WHERE transaction_id = $1::uuid",
    )
    .bind(&record.transaction_id)
    .fetch_all(&journal)
    .await
    .unwrap();
    assert_eq!(late.len(), 1, "the late answer is on the record: {late:?}");
    assert_eq!(late[0].0, "00");
    let (state, reason): (String, Option<String>) = sqlx::query_as(
        "SELECT state, reversal_reason FROM authorizations WHERE transaction_id = $1::uuid",
    )
    .bind(&record.transaction_id)
    .fetch_one(&journal)
    .await
    .unwrap();
    assert!(
        state == "reversal_pending" || state == "reversed",
        "the late approval is reversed, or owed: {state}"
    );
    assert_eq!(reason.as_deref(), Some("late_issuer_response"));
    stop.cancel();
    journal.close().await;
    switch_platform::db::drop_schema(&database.url, &schema)
        .await
        .unwrap();
}
