//! The authorization path end to end: terminal → gateway (mutual TLS) →
//! authorization → issuer simulator, with the journal in PostgreSQL and the
//! events on Kafka read back by an independent consumer.

use std::error::Error as _;
use switch_e2e::v1::{
    AcknowledgeRequest, AuthorizationStatus, EventEnvelope, FaultPlan, InquiryRequest,
    ReprintLastRequest, SaleRequest, event_envelope::Payload,
};
use switch_e2e::{MASTERCARD, Stack, StackOptions, VISA, capture_logs, sale};

use tonic::Code;

async fn stack() -> Stack {
    capture_logs();
    Stack::start(StackOptions::default())
        .await
        .expect("the stack starts against PostgreSQL and Kafka (is `make broker` running?)")
}

async fn journal_rows(stack: &Stack) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM authorizations")
        .fetch_one(&stack.journal)
        .await
        .unwrap()
}

async fn outbox_rows(stack: &Stack) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&stack.journal)
        .await
        .unwrap()
}

async fn events_for(stack: &Stack, transaction_id: &str) -> Vec<EventEnvelope> {
    stack.wait_outbox_drained().await.unwrap();
    stack
        .read_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.transaction_id == transaction_id)
        .collect()
}

async fn journal_state(stack: &Stack, transaction_id: &str) -> (String, Option<String>) {
    sqlx::query_as(
        "SELECT state, response_code FROM authorizations WHERE transaction_id = $1::uuid",
    )
    .bind(transaction_id)
    .fetch_one(&stack.journal)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approved_sale_is_journaled_and_announced_once() {
    let stack = stack().await;
    let mut terminal = stack.terminal("TERM0001").await.unwrap();

    let response = terminal
        .sale(sale("TERM0001", "000101", VISA, 1_000))
        .await
        .unwrap()
        .into_inner();
    let record = response.authorization.unwrap();
    assert!(!response.duplicate);
    assert_eq!(record.status(), AuthorizationStatus::Approved);
    assert_eq!(record.response_code, "00");
    assert_eq!(record.approval_code.len(), 6);
    assert_eq!(record.rrn.len(), 12);
    assert_eq!(record.masked_pan, "411111******1111");
    assert_eq!(
        record.merchant_id, "MERCHANT0000001",
        "merchant comes from the certificate"
    );

    assert_eq!(
        journal_state(&stack, &record.transaction_id).await,
        ("approved".to_owned(), Some("00".to_owned()))
    );
    let history: Vec<String> = sqlx::query_scalar(
        "SELECT to_state FROM authorization_transitions WHERE transaction_id = $1::uuid ORDER BY id",
    )
    .bind(&record.transaction_id)
    .fetch_all(&stack.journal)
    .await
    .unwrap();
    assert_eq!(history, ["received", "sent_to_issuer", "approved"]);

    let events = events_for(&stack, &record.transaction_id).await;
    assert_eq!(events.len(), 1, "exactly one event: {events:?}");
    assert_eq!(events[0].event_type, "authorization.approved");
    let Some(Payload::AuthorizationApproved(approved)) = &events[0].payload else {
        panic!("wrong payload: {:?}", events[0].payload);
    };
    assert_eq!(approved.approval_code, record.approval_code);
    let facts = approved.facts.as_ref().unwrap();
    assert_eq!(facts.rrn, record.rrn);
    assert_eq!(facts.masked_pan, "411111******1111");
    assert!(
        events[0].traceparent.starts_with("00-"),
        "the event carries W3C trace context: {:?}",
        events[0].traceparent
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declined_sale_is_journaled_and_announced_once() {
    let stack = stack().await;
    let mut terminal = stack.terminal("TERM0001").await.unwrap();

    // The simulator declines amounts ending in 51 with "insufficient funds".
    let record = terminal
        .sale(sale("TERM0001", "000102", MASTERCARD, 1_051))
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(record.status(), AuthorizationStatus::Declined);
    assert_eq!(record.response_code, "51");
    assert!(record.approval_code.is_empty());
    assert_eq!(
        journal_state(&stack, &record.transaction_id).await,
        ("declined".to_owned(), Some("51".to_owned()))
    );
    let events = events_for(&stack, &record.transaction_id).await;
    assert_eq!(events.len(), 1, "exactly one event: {events:?}");
    assert_eq!(events[0].event_type, "authorization.declined");
    let Some(Payload::AuthorizationDeclined(declined)) = &events[0].payload else {
        panic!("wrong payload: {:?}", events[0].payload);
    };
    assert_eq!(declined.response_code, "51");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_retries_make_one_authorization() {
    let stack = stack().await;
    let terminal = stack.terminal("TERM0002").await.unwrap();
    let request = sale("TERM0002", "000200", VISA, 2_500);

    let calls = (0..100).map(|_| {
        let mut client = terminal.clone();
        let request = request.clone();
        tokio::spawn(async move { client.sale(request).await.map(|r| r.into_inner()) })
    });
    let answers: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().expect("every retry gets an answer"))
        .collect();

    let first = answers[0].authorization.clone().unwrap();
    assert_eq!(first.status(), AuthorizationStatus::Approved);
    for answer in &answers {
        assert_eq!(
            answer.authorization.as_ref(),
            Some(&first),
            "identical answers"
        );
    }
    assert_eq!(
        answers.iter().filter(|a| !a.duplicate).count(),
        1,
        "exactly one answer is the original"
    );
    assert_eq!(journal_rows(&stack).await, 1);
    let stats = stack.issuer_stats().await.unwrap();
    assert_eq!(stats.authorizations, 1, "one issuer call");

    // The same key with another amount or card is a modified request.
    let mut client = terminal.clone();
    let mut other_amount = request.clone();
    other_amount.amount.as_mut().unwrap().minor_units = 2_600;
    let status = client.sale(other_amount).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("amount"), "{}", status.message());
    let mut other_card = request.clone();
    other_card.pan = MASTERCARD.to_owned();
    let status = client.sale(other_card).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("pan"), "{}", status.message());
    assert_eq!(journal_rows(&stack).await, 1);
    assert_eq!(events_for(&stack, &first.transaction_id).await.len(), 1);
    stack.shutdown().await;
}

/// The server refused the TLS handshake, so the request never reached the
/// service. Under TLS 1.3 the client learns this only when it writes, as an
/// alert, a broken pipe or a closed connection, depending on timing; what
/// they share is that the status comes from the transport, not a service.
fn assert_refused_by_tls(status: &tonic::Status) {
    assert!(
        matches!(
            status.code(),
            Code::Unknown | Code::Unavailable | Code::Cancelled
        ),
        "{status:?}"
    );
    assert!(
        status.source().is_some(),
        "a transport error, not an answer from the service: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_for_another_terminal_or_none_are_refused() {
    let stack = stack().await;

    // A genuine certificate of TERM0002 speaking for TERM0001.
    let mut impostor = stack.terminal("TERM0002").await.unwrap();
    let status = impostor
        .sale(sale("TERM0001", "000301", VISA, 1_000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("TERM0001"),
        "{}",
        status.message()
    );
    let status = impostor
        .inquiry(InquiryRequest {
            terminal_id: "TERM0001".into(),
            stan: "000301".into(),
            local_date: switch_e2e::today(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // No client certificate: the TLS handshake itself fails.
    let mut anonymous = stack
        .terminal_with(None, stack.pki.ca_cert_pem())
        .await
        .unwrap();
    let status = anonymous
        .sale(sale("TERM0001", "000302", VISA, 1_000))
        .await
        .unwrap_err();
    assert_refused_by_tls(&status);

    // A certificate for TERM0001 from a CA the switch does not trust.
    let rogue = dev_certs::DevPki::generate().unwrap();
    let rogue_cert = rogue.terminal_cert("TERM0001", "MERCHANT0000001").unwrap();
    let mut forged = stack
        .terminal_with(Some(&rogue_cert), stack.pki.ca_cert_pem())
        .await
        .unwrap();
    let status = forged
        .sale(sale("TERM0001", "000303", VISA, 1_000))
        .await
        .unwrap_err();
    assert_refused_by_tls(&status);

    assert_eq!(journal_rows(&stack).await, 0, "nothing was authorized");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_rejected_naming_the_field_and_writes_nothing() {
    let stack = stack().await;
    let mut terminal = stack.terminal("TERM0001").await.unwrap();
    let valid = sale("TERM0001", "000401", VISA, 1_000);

    let cases: Vec<(&str, SaleRequest)> = vec![
        (
            "pan",
            SaleRequest {
                pan: "4111111111111112".into(),
                ..valid.clone()
            },
        ),
        (
            "pan",
            SaleRequest {
                pan: String::new(),
                ..valid.clone()
            },
        ),
        ("amount", {
            let mut r = valid.clone();
            r.amount.as_mut().unwrap().minor_units = 0;
            r
        }),
        ("amount", {
            let mut r = valid.clone();
            r.amount.as_mut().unwrap().minor_units = -500;
            r
        }),
        (
            "amount",
            SaleRequest {
                amount: None,
                ..valid.clone()
            },
        ),
        ("currency", {
            let mut r = valid.clone();
            r.amount.as_mut().unwrap().currency = "XYZ".into();
            r
        }),
        (
            "stan",
            SaleRequest {
                stan: "12345".into(),
                ..valid.clone()
            },
        ),
        (
            "stan",
            SaleRequest {
                stan: "12345a".into(),
                ..valid.clone()
            },
        ),
        (
            "local_date",
            SaleRequest {
                local_date: "2026-13-01".into(),
                ..valid.clone()
            },
        ),
        (
            "expiry",
            SaleRequest {
                expiry: String::new(),
                ..valid.clone()
            },
        ),
    ];
    for (field, request) in cases {
        let status = terminal.sale(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "the error names {field}: {:?}",
            status.message()
        );
        assert!(
            !status.message().contains(&request.pan) || request.pan.is_empty(),
            "the error never echoes the card number"
        );
    }
    assert_eq!(journal_rows(&stack).await, 0, "no row written");
    assert_eq!(outbox_rows(&stack).await, 0, "no event written");

    // The service kept running: a valid sale still goes through.
    let record = terminal
        .sale(valid)
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(record.status(), AuthorizationStatus::Approved);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issuer_timeout_is_recorded_as_timeout_not_decline() {
    capture_logs();
    let stack = Stack::start(StackOptions {
        issuer_timeout_ms: 300,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let mut control = stack.issuer_control().await.unwrap();
    control
        .set_faults(FaultPlan {
            stans: vec!["000501".into()],
            no_response: true,
            ..FaultPlan::default()
        })
        .await
        .unwrap();
    let mut terminal = stack.terminal("TERM0003").await.unwrap();
    let record = terminal
        .sale(sale("TERM0003", "000501", VISA, 1_000))
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(record.status(), AuthorizationStatus::IssuerTimedOut);
    assert_eq!(
        record.response_code, "91",
        "issuer unavailable, not a decline"
    );
    assert_eq!(
        journal_state(&stack, &record.transaction_id).await,
        ("issuer_timed_out".to_owned(), None)
    );
    let events = events_for(&stack, &record.transaction_id).await;
    assert_eq!(events.len(), 1);
    let Some(Payload::AuthorizationIssuerTimedOut(timed_out)) = &events[0].payload else {
        panic!("wrong payload: {:?}", events[0].payload);
    };
    assert_eq!(timed_out.timeout_ms, 300);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inquiry_reprint_and_acknowledge_report_the_journal() {
    let stack = stack().await;
    let mut terminal = stack.terminal("TERM0004").await.unwrap();
    let first = terminal
        .sale(sale("TERM0004", "000601", VISA, 1_000))
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    let second = terminal
        .sale(sale("TERM0004", "000602", VISA, 1_005))
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap();
    assert_eq!(second.status(), AuthorizationStatus::Declined);

    let inquiry = terminal
        .inquiry(InquiryRequest {
            terminal_id: "TERM0004".into(),
            stan: "000601".into(),
            local_date: first.local_date.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inquiry, first);
    let status = terminal
        .inquiry(InquiryRequest {
            terminal_id: "TERM0004".into(),
            stan: "999999".into(),
            local_date: first.local_date.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let last = terminal
        .reprint_last(ReprintLastRequest {
            terminal_id: "TERM0004".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(last.transaction_id, second.transaction_id);

    let ack = AcknowledgeRequest {
        terminal_id: "TERM0004".into(),
        stan: "000601".into(),
        local_date: first.local_date.clone(),
    };
    for _ in 0..3 {
        let acknowledged = terminal
            .acknowledge(ack.clone())
            .await
            .unwrap()
            .into_inner()
            .authorization
            .unwrap();
        assert!(acknowledged.acknowledged);
        assert_eq!(acknowledged.status(), AuthorizationStatus::Confirmed);
        assert_eq!(
            acknowledged.confirmation_evidence(),
            switch_proto::v1::Evidence::TerminalAcknowledgement
        );
    }
    let events = events_for(&stack, &first.transaction_id).await;
    let confirmations: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "authorization.confirmed")
        .collect();
    assert_eq!(
        confirmations.len(),
        1,
        "one confirmation however often the terminal acks: {events:?}"
    );
    let Some(Payload::AuthorizationConfirmed(confirmed)) = &confirmations[0].payload else {
        panic!("wrong payload");
    };
    assert_eq!(
        confirmed.evidence(),
        switch_proto::v1::Evidence::TerminalAcknowledgement
    );

    // Acknowledging the declined sale confirms nothing; it is recorded once.
    let declined_ack = AcknowledgeRequest {
        stan: "000602".into(),
        ..ack.clone()
    };
    for _ in 0..2 {
        let record = terminal
            .acknowledge(declined_ack.clone())
            .await
            .unwrap()
            .into_inner()
            .authorization
            .unwrap();
        assert_eq!(record.status(), AuthorizationStatus::Declined);
        assert!(record.acknowledged);
    }
    let events = events_for(&stack, &second.transaction_id).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "terminal.acknowledged")
            .count(),
        1
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_full_card_number_in_logs_tables_or_kafka() {
    let stack = stack().await;
    let mut terminal = stack.terminal("TERM0001").await.unwrap();
    let used_pans = [VISA, MASTERCARD, "4012888888881881", "378282246310005"];
    for (stan, pan, amount) in [
        ("000701", used_pans[0], 1_000),
        ("000702", used_pans[1], 1_051),
        ("000703", used_pans[2], 1_054),
        ("000704", used_pans[3], 2_000),
    ] {
        terminal
            .sale(sale("TERM0001", stan, pan, amount))
            .await
            .unwrap();
    }
    let _ = terminal
        .sale(sale("TERM0001", "000705", "4111111111111112", 1_000))
        .await;
    stack.wait_outbox_drained().await.unwrap();

    // Text columns, as the database renders them (payloads are checked
    // below: their hex rendering is all digits).
    let mut tables = String::new();
    for table in ["authorizations", "authorization_transitions", "outbox"] {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT (to_jsonb(t) - 'payload')::text FROM {table} t"
        ))
        .fetch_all(&stack.journal)
        .await
        .unwrap();
        tables.push_str(&rows.join("\n"));
    }
    assert_eq!(
        switch_e2e::luhn_valid_digit_runs(&tables),
        Vec::<String>::new()
    );

    // Event payloads, raw and decoded: raw bytes are searched for the exact
    // card numbers used (protobuf tag bytes can be ASCII digits, so a Luhn
    // scan of raw bytes would see numbers that are not there), decoded
    // envelopes for any card number at all.
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox")
        .fetch_all(&stack.journal)
        .await
        .unwrap();
    let messages = switch_e2e::read_topic(&stack.kafka.brokers, &stack.events_topic())
        .await
        .unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(payloads.len(), 4);
    let kafka_payloads = messages.iter().map(|m| {
        use rdkafka::Message;
        m.payload().unwrap_or_default().to_vec()
    });
    for payload in payloads.into_iter().chain(kafka_payloads) {
        for pan in used_pans {
            assert!(
                !payload.windows(pan.len()).any(|w| w == pan.as_bytes()),
                "a payload contains a full card number"
            );
        }
        let decoded = <EventEnvelope as prost::Message>::decode(payload.as_slice()).unwrap();
        let text = format!("{decoded:?}");
        assert!(text.contains("*****"), "the masked PAN is there: {text}");
        assert_eq!(
            switch_e2e::luhn_valid_digit_runs(&text),
            Vec::<String>::new()
        );
    }

    // Everything logged at debug level by every test of this process so far.
    let logs = switch_e2e::captured_logs();
    assert!(
        logs.contains("Authorization decided."),
        "logs were captured"
    );
    assert_eq!(
        switch_e2e::luhn_valid_digit_runs(&logs),
        Vec::<String>::new()
    );
    stack.shutdown().await;
}
