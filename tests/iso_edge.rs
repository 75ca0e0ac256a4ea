//! The ISO 8583 edge end to end: a terminal speaking ISO 8583 over TLS with
//! its client certificate → the gateway's listener → the same forwarding
//! as gRPC → authorization → issuer simulator, with the journal in
//! PostgreSQL and the events on Kafka.

use iso8583::cup::Field60;
use iso8583::{Message, Mti, Profile};
use switch_e2e::iso::{IsoTerminal, code};
use switch_e2e::v1::{AuthorizationStatus, InquiryRequest};
use switch_e2e::{Stack, StackOptions, VISA, capture_logs, sale, today};
use terminal_gateway::{IsoListenerConfig, IsoProfile};

/// A stack whose gateway has an ASCII 1987 listener (`stack.iso[0]`) and a
/// UnionPay one (`stack.iso[1]`), both over TLS.
async fn stack() -> Stack {
    capture_logs();
    Stack::start(StackOptions {
        iso_listeners: vec![
            IsoListenerConfig {
                profile: IsoProfile::Ascii1987,
                ..IsoListenerConfig::default()
            },
            IsoListenerConfig {
                profile: IsoProfile::CupPos,
                ..IsoListenerConfig::default()
            },
        ],
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts against PostgreSQL and Kafka (is `make broker` running?)")
}

async fn terminal(stack: &Stack, listener: usize, terminal_id: &str) -> IsoTerminal {
    let merchant = dev_certs::DEFAULT_TERMINALS
        .iter()
        .find(|(tid, _)| *tid == terminal_id)
        .map(|(_, mid)| *mid)
        .expect("a dev terminal");
    let cert = stack.pki.terminal_cert(terminal_id, merchant).unwrap();
    let profile = [Profile::ASCII_1987, Profile::CUP_POS][listener];
    IsoTerminal::connect_tls(
        stack.iso[listener],
        profile,
        Some(&cert),
        stack.pki.ca_cert_pem(),
    )
    .await
    .expect("a TLS connection with the terminal's certificate")
}

/// Today as field 13 (MMDD).
fn mmdd() -> String {
    let today = today();
    format!("{}{}", &today[5..7], &today[8..10])
}

fn iso_sale(terminal_id: &str, stan: &str, pan: &str, minor_units: i64) -> Message<'static> {
    let mut sale = Message::new(Mti::FINANCIAL_REQUEST);
    sale.set(2, pan.to_owned())
        .set(3, "000000")
        .set(4, format!("{minor_units:012}"))
        .set(11, stan.to_owned())
        .set(12, "101500")
        .set(13, mmdd())
        .set(14, "2812")
        .set(22, "051")
        .set(25, "00")
        .set(41, terminal_id.to_owned())
        .set(42, "MERCHANT0000001")
        .set(49, "978");
    sale
}

/// A message about an earlier sale (completion advice, reversal): its
/// terminal, STAN and date.
fn about(mti: &str, terminal_id: &str, stan: &str, minor_units: i64) -> Message<'static> {
    let mut message = Message::new(Mti::parse(mti).unwrap());
    message
        .set(3, "000000")
        .set(4, format!("{minor_units:012}"))
        .set(11, stan.to_owned())
        .set(13, mmdd())
        .set(41, terminal_id.to_owned())
        .set(49, "978");
    message
}

async fn row(stack: &Stack, terminal_id: &str, stan: &str) -> Option<(String, String, String)> {
    sqlx::query_as(
        "SELECT transaction_id::text, state, coalesce(response_code, '') FROM authorizations
         WHERE terminal_id = $1 AND stan = $2",
    )
    .bind(terminal_id)
    .bind(stan)
    .fetch_optional(&stack.journal)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sign_on_and_echo_are_answered_on_both_profiles() {
    let stack = stack().await;

    let mut ascii = terminal(&stack, 0, "TERM0001").await;
    for (stan, code_70) in [("000001", "001"), ("000002", "301")] {
        let mut echo = Message::new(Mti::NETWORK_REQUEST);
        echo.set(11, stan).set(41, "TERM0001").set(70, code_70);
        let answer = ascii.call(&echo).await.unwrap();
        assert_eq!(answer.mti().to_string(), "0810");
        assert_eq!(code(&answer), "00");
        assert_eq!(answer.stan(), Some(stan));
        assert_eq!(answer.terminal_id(), Some("TERM0001"));
        assert_eq!(answer.text(70), Some(code_70));
    }

    let mut cup = terminal(&stack, 1, "TERM0003").await;
    let mut sign_on = Message::new(Mti::NETWORK_REQUEST);
    let field_60 = Field60::new(
        Field60::MANAGEMENT,
        "000001",
        Field60::SIGN_ON_SINGLE_LENGTH_KEY,
    );
    sign_on
        .set(11, "000007")
        .set(41, "TERM0003")
        .set(42, "MERCHANT0000002")
        .set(60, field_60.to_string());
    cup.send(&sign_on).await.unwrap();
    let (envelope, answer) = cup.receive_frame().await.unwrap();
    assert_eq!(answer.mti().to_string(), "0810");
    assert_eq!(code(&answer), "00");
    assert_eq!(answer.text(60), Some(field_60.to_string().as_str()));
    let tpdu = envelope.tpdu.expect("the answer has a TPDU");
    assert_eq!(
        (tpdu.destination, tpdu.source),
        ([0x00, 0x00], [0x00, 0x03]),
        "the answer's TPDU swaps destination and source"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_iso_sale_and_its_grpc_twin_leave_the_same_journal_rows_and_events() {
    let stack = stack().await;
    let mut iso = terminal(&stack, 0, "TERM0001").await;
    let answer = iso
        .call(&iso_sale("TERM0001", "000201", VISA, 1_250))
        .await
        .unwrap();
    assert_eq!(answer.mti().to_string(), "0210");
    assert_eq!(code(&answer), "00");
    assert_eq!(answer.stan(), Some("000201"));
    assert_eq!(answer.text(4), Some("000000001250"));
    let rrn = answer
        .text(37)
        .expect("the answer carries the RRN")
        .to_owned();
    assert_eq!(answer.text(38).map(str::len), Some(6), "an approval code");

    // The twin: the same sale over gRPC from the other terminal of the
    // same merchant.
    let twin = stack
        .sale_record(sale("TERM0002", "000201", VISA, 1_250))
        .await;
    assert_eq!(twin.status(), AuthorizationStatus::Approved);

    let iso_record = stack
        .terminal("TERM0001")
        .await
        .unwrap()
        .inquiry(InquiryRequest {
            terminal_id: "TERM0001".into(),
            stan: "000201".into(),
            local_date: today(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(iso_record.rrn, rrn);
    let comparable = |r: &switch_e2e::v1::AuthorizationRecord| {
        (
            r.merchant_id.clone(),
            r.stan.clone(),
            r.local_date.clone(),
            r.status,
            r.response_code.clone(),
            r.masked_pan.clone(),
            r.amount.clone(),
            r.channel.clone(),
            r.acknowledged,
        )
    };
    assert_eq!(comparable(&iso_record), comparable(&twin));

    let columns = |id: String| {
        let journal = stack.journal.clone();
        async move {
            let row: (
                String,
                String,
                String,
                String,
                String,
                i64,
                String,
                String,
                String,
            ) = sqlx::query_as(
                "SELECT merchant_id, stan, local_date::text, masked_pan, pan_fingerprint,
                            amount_minor, currency, state, coalesce(response_code, '')
                     FROM authorizations WHERE transaction_id = $1::uuid",
            )
            .bind(&id)
            .fetch_one(&journal)
            .await
            .unwrap();
            let history: Vec<(Option<String>, String, String)> = sqlx::query_as(
                "SELECT from_state, to_state, event FROM authorization_transitions
                 WHERE transaction_id = $1::uuid ORDER BY id",
            )
            .bind(&id)
            .fetch_all(&journal)
            .await
            .unwrap();
            (row, history)
        }
    };
    let iso_rows = columns(iso_record.transaction_id.clone()).await;
    assert_eq!(iso_rows, columns(twin.transaction_id.clone()).await);
    assert_eq!(iso_rows.0.7, "approved");

    stack.wait_outbox_drained().await.unwrap();
    let events = stack.read_events().await.unwrap();
    let types_of = |id: &str| {
        events
            .iter()
            .filter(|e| e.transaction_id == id)
            .map(|e| e.event_type.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        types_of(&iso_record.transaction_id),
        ["authorization.approved"]
    );
    assert_eq!(
        types_of(&iso_record.transaction_id),
        types_of(&twin.transaction_id)
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completion_advice_confirms_like_acknowledge_and_a_reversal_repeat_gets_the_original_answer()
 {
    let stack = stack().await;
    let mut iso = terminal(&stack, 0, "TERM0001").await;

    // 0220: the terminal printed the receipt.
    assert_eq!(
        code(
            &iso.call(&iso_sale("TERM0001", "000301", VISA, 700))
                .await
                .unwrap()
        ),
        "00"
    );
    let advice = iso
        .call(&about("0220", "TERM0001", "000301", 700))
        .await
        .unwrap();
    assert_eq!(advice.mti().to_string(), "0230");
    assert_eq!(code(&advice), "00");
    let (id, _, _) = row(&stack, "TERM0001", "000301").await.unwrap();
    stack.wait_for_state(&id, "confirmed", 10).await;

    // 0400, then its repeat 0401: one reversal, the same answer.
    assert_eq!(
        code(
            &iso.call(&iso_sale("TERM0001", "000302", VISA, 800))
                .await
                .unwrap()
        ),
        "00"
    );
    let reversal = iso
        .call(&about("0400", "TERM0001", "000302", 800))
        .await
        .unwrap();
    assert_eq!(reversal.mti().to_string(), "0410");
    assert_eq!(code(&reversal), "00");
    let (id, _, _) = row(&stack, "TERM0001", "000302").await.unwrap();
    stack.wait_for_state(&id, "reversed", 10).await;
    let repeat = iso
        .call(&about("0401", "TERM0001", "000302", 800))
        .await
        .unwrap();
    assert_eq!(repeat.mti().to_string(), "0410");
    assert_eq!(repeat, reversal, "the repeat gets the original's answer");

    // 0420 and 0421: the reversal advice, the same way.
    assert_eq!(
        code(
            &iso.call(&iso_sale("TERM0001", "000303", VISA, 900))
                .await
                .unwrap()
        ),
        "00"
    );
    let advice = iso
        .call(&about("0420", "TERM0001", "000303", 900))
        .await
        .unwrap();
    assert_eq!(
        (advice.mti().to_string(), code(&advice)),
        ("0430".into(), "00".into())
    );
    let repeat = iso
        .call(&about("0421", "TERM0001", "000303", 900))
        .await
        .unwrap();
    assert_eq!(repeat, advice);
    let (id, _, _) = row(&stack, "TERM0001", "000303").await.unwrap();
    stack.wait_for_state(&id, "reversed", 10).await;

    // Each reversed sale reached the issuer's books as reversed once.
    stack.wait_outbox_drained().await.unwrap();
    let events = stack.read_events().await.unwrap();
    for stan in ["000302", "000303"] {
        let (id, _, _) = row(&stack, "TERM0001", stan).await.unwrap();
        let reversed = events
            .iter()
            .filter(|e| e.transaction_id == id && e.event_type == "authorization.reversed")
            .count();
        assert_eq!(reversed, 1, "one reversal of {stan}");
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_precise_codes_and_unreadable_ones_close_the_connection() {
    let stack = stack().await;
    let mut iso = terminal(&stack, 0, "TERM0001").await;

    // Invalid card (Luhn), invalid amount, unknown currency, a refund
    // (not offered), another terminal's message.
    let mut cases = Vec::new();
    cases.push((
        "14",
        iso_sale("TERM0001", "000401", "4111111111111112", 100),
    ));
    cases.push(("13", iso_sale("TERM0001", "000402", VISA, 0)));
    let mut unknown_currency = iso_sale("TERM0001", "000403", VISA, 100);
    unknown_currency.set(49, "999");
    cases.push(("13", unknown_currency));
    let mut refund = iso_sale("TERM0001", "000404", VISA, 100);
    refund.set(3, "200000");
    cases.push(("12", refund));
    cases.push(("12", iso_sale("TERM0002", "000405", VISA, 100)));
    for (expected, request) in &cases {
        let answer = iso.call(request).await.unwrap();
        assert_eq!(answer.mti().to_string(), "0210");
        assert_eq!(
            (code(&answer), answer.stan()),
            (expected.to_string(), request.stan()),
            "{request:?}"
        );
    }
    for stan in ["000401", "000402", "000403", "000404", "000405"] {
        assert_eq!(row(&stack, "TERM0001", stan).await, None);
        assert_eq!(row(&stack, "TERM0002", stan).await, None);
    }

    // The issuer's decline passes through as the authorization's code.
    assert_eq!(
        code(
            &iso.call(&iso_sale("TERM0001", "000407", VISA, 105))
                .await
                .unwrap()
        ),
        "05"
    );
    let (_, state, _) = row(&stack, "TERM0001", "000407").await.unwrap();
    assert_eq!(state, "declined");

    // An issuer that never answers: 91, never a decline.
    stack
        .issuer_control()
        .await
        .unwrap()
        .set_faults(switch_e2e::v1::FaultPlan {
            stans: vec!["000408".into()],
            no_response: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        code(
            &iso.call(&iso_sale("TERM0001", "000408", VISA, 100))
                .await
                .unwrap()
        ),
        "91"
    );
    let (_, state, _) = row(&stack, "TERM0001", "000408").await.unwrap();
    assert!(
        ["issuer_timed_out", "reversal_pending", "reversed"].contains(&state.as_str()),
        "{state}"
    );

    // A retry with another amount is not a retry: 94, and still one
    // authorization.
    assert_eq!(
        code(
            &iso.call(&iso_sale("TERM0001", "000406", VISA, 100))
                .await
                .unwrap()
        ),
        "00"
    );
    assert_eq!(
        code(
            &iso.call(&iso_sale("TERM0001", "000406", VISA, 200))
                .await
                .unwrap()
        ),
        "94"
    );

    // A letter in the amount, with MTI, 11 and 41 readable: 30 in the
    // response class, and the connection keeps serving.
    let body = b"02001020000000800000000000001X00012345TERM0001";
    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    iso.send_raw(&frame).await.unwrap();
    let answer = iso.receive().await.unwrap();
    assert_eq!(
        (answer.mti().to_string(), code(&answer), answer.stan()),
        ("0210".into(), "30".into(), Some("012345"))
    );
    let mut echo = Message::new(Mti::NETWORK_REQUEST);
    echo.set(11, "000409").set(41, "TERM0001").set(70, "301");
    assert_eq!(code(&iso.call(&echo).await.unwrap()), "00");

    // An MTI that is not four digits: nothing to answer, the connection
    // is closed.
    let body = b"02X01020000000800000000000001000012345TERM0001";
    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    iso.send_raw(&frame).await.unwrap();
    assert!(iso.closed_by_gateway().await.unwrap());

    // A length header beyond the profile's maximum: nothing is buffered,
    // the connection is closed.
    let mut oversize = terminal(&stack, 0, "TERM0001").await;
    oversize.send_raw(&[0xFF, 0xFF, b'0', b'2']).await.unwrap();
    assert!(oversize.closed_by_gateway().await.unwrap());

    // Everything logged at debug level so far in this process, malformed
    // and refused messages included: the masked PAN at most, never the
    // card number.
    let logs = switch_e2e::captured_logs();
    assert!(
        logs.contains("ISO 8583 message malformed"),
        "logs were captured"
    );
    assert_eq!(
        switch_e2e::luhn_valid_digit_runs(&logs),
        Vec::<String>::new()
    );

    // A terminal without a certificate never gets a session.
    let refused = IsoTerminal::connect_tls(
        stack.iso[0],
        Profile::ASCII_1987,
        None,
        stack.pki.ca_cert_pem(),
    )
    .await;
    if let Ok(mut anonymous) = refused {
        // TLS 1.3 reports the refusal after the client's handshake ends.
        let _ = anonymous.send(&echo).await;
        assert!(anonymous.closed_by_gateway().await.unwrap());
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_are_matched_by_terminal_and_stan_and_cup_sales_work() {
    let stack = stack().await;

    // Three sales sent before any answer is read; each answer names its
    // request by field 11.
    let mut iso = terminal(&stack, 0, "TERM0001").await;
    let stans = ["000501", "000502", "000503"];
    for (i, stan) in stans.iter().enumerate() {
        iso.send(&iso_sale("TERM0001", stan, VISA, 1_000 + i as i64))
            .await
            .unwrap();
    }
    let mut answered = Vec::new();
    for _ in stans {
        let answer = iso.receive().await.unwrap();
        assert_eq!(code(&answer), "00");
        let stan = answer.stan().unwrap().to_owned();
        let i = stans.iter().position(|s| *s == stan).unwrap();
        assert_eq!(answer.text(4), Some(format!("{:012}", 1_000 + i).as_str()));
        answered.push(stan);
    }
    answered.sort();
    assert_eq!(answered, stans);

    // The UnionPay layout: BCD, TPDU, field 60 echoed.
    let mut cup = terminal(&stack, 1, "TERM0003").await;
    let mut sale = iso_sale("TERM0003", "000601", VISA, 4_200);
    sale.set(42, "MERCHANT0000002")
        .set(60, Field60::new(Field60::SALE, "000001", "000").to_string());
    let answer = cup.call(&sale).await.unwrap();
    assert_eq!(answer.mti().to_string(), "0210");
    assert_eq!(code(&answer), "00");
    let (_, state, response_code) = row(&stack, "TERM0003", "000601").await.unwrap();
    assert_eq!((state.as_str(), response_code.as_str()), ("approved", "00"));
    let record = stack
        .terminal("TERM0003")
        .await
        .unwrap()
        .inquiry(InquiryRequest {
            terminal_id: "TERM0003".into(),
            stan: "000601".into(),
            local_date: today(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.merchant_id, "MERCHANT0000002");
    assert_eq!(answer.text(37), Some(record.rrn.as_str()));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_close_over_iso_reaches_the_settlement_batcher() {
    capture_logs();
    let stack = Stack::start(StackOptions {
        iso_listeners: vec![IsoListenerConfig::default()],
        settlement: Some(switch_e2e::test_settlement()),
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts against PostgreSQL and Kafka");
    let ledger = stack.settlement_pool().await.unwrap();
    let mut iso = terminal(&stack, 0, "TERM0001").await;
    for (stan, amount) in [("000701", 1_010), ("000702", 2_020)] {
        assert_eq!(
            code(
                &iso.call(&iso_sale("TERM0001", stan, VISA, amount))
                    .await
                    .unwrap()
            ),
            "00"
        );
        assert_eq!(
            code(
                &iso.call(&about("0220", "TERM0001", stan, amount))
                    .await
                    .unwrap()
            ),
            "00"
        );
        let (id, _, _) = row(&stack, "TERM0001", stan).await.unwrap();
        stack
            .eventually(30, "the ledger to hold the confirmed sale", || async {
                let status: Option<String> = sqlx::query_scalar(
                    "SELECT status FROM transactions WHERE transaction_id = $1::uuid",
                )
                .bind(&id)
                .fetch_optional(&ledger)
                .await
                .unwrap();
                (status.as_deref() == Some("confirmed")).then_some(())
            })
            .await;
    }

    let close = |sales: i64, amount: i64| {
        let mut close = Message::new(Mti::RECONCILIATION_REQUEST);
        close
            .set(11, "000703")
            .set(41, "TERM0001")
            .set(50, "978")
            .set(60, "000001")
            .set(76, format!("{sales:010}"))
            .set(88, format!("{amount:016}"));
        close
    };
    let answer = iso.call(&close(2, 3_030)).await.unwrap();
    assert_eq!(answer.mti().to_string(), "0510");
    assert_eq!(code(&answer), "00", "balanced");
    assert_eq!(answer.text(60), Some("000001"));
    assert_eq!(answer.text(76), Some("0000000002"), "the host's count");
    assert_eq!(
        answer.text(88),
        Some("0000000000003030"),
        "the host's amount"
    );
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM batches")
        .fetch_one(&ledger)
        .await
        .unwrap();
    assert_eq!(batches, 1);

    // The same batch number with other totals is not a repeat.
    assert_eq!(code(&iso.call(&close(1, 1_010)).await.unwrap()), "94");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lab_listener_serves_plain_tcp_only_when_configured() {
    capture_logs();
    let stack = Stack::start(StackOptions {
        iso_listeners: vec![
            IsoListenerConfig {
                plain_tcp_for_lab: true,
                ..IsoListenerConfig::default()
            },
            IsoListenerConfig::default(),
        ],
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts against PostgreSQL and Kafka");

    // The lab listener: fields 41 and 42 name the terminal and merchant.
    let mut lab = IsoTerminal::connect_plain(stack.iso[0], Profile::ASCII_1987)
        .await
        .unwrap();
    let mut sale = iso_sale("TERM0004", "000801", VISA, 300);
    sale.set(42, "MERCHANT0000002");
    assert_eq!(code(&lab.call(&sale).await.unwrap()), "00");
    let merchant: String =
        sqlx::query_scalar("SELECT merchant_id FROM authorizations WHERE terminal_id = 'TERM0004'")
            .fetch_one(&stack.journal)
            .await
            .unwrap();
    assert_eq!(merchant, "MERCHANT0000002");

    // The other listener keeps to TLS: plain ISO bytes get at most a TLS
    // alert (record type 21), never an answer, and the connection closes.
    let mut plain = IsoTerminal::connect_plain(stack.iso[1], Profile::ASCII_1987)
        .await
        .unwrap();
    plain
        .send(&iso_sale("TERM0001", "000802", VISA, 300))
        .await
        .unwrap();
    let sent_back = plain.read_until_closed().await.unwrap();
    assert!(
        sent_back.is_empty() || sent_back[0] == 21,
        "not a TLS alert: {sent_back:02X?}"
    );
    assert_eq!(row(&stack, "TERM0001", "000802").await, None);
    stack.shutdown().await;
}

/// `posctl` next to the test binary (target/<profile>/posctl).
fn posctl_binary() -> std::path::PathBuf {
    let path = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("posctl")))
        .expect("the test binary lives under target/<profile>/deps");
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build -p posctl)",
        path.display()
    );
    path
}

/// Runs posctl; panics with its stderr when it fails.
async fn posctl(args: Vec<String>) -> (bool, Vec<serde_json::Value>) {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(posctl_binary())
            .args(args)
            .output()
            .expect("posctl runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "posctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    (output.status.success(), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posctl_speaks_iso_8583_over_tls() {
    let stack = stack().await;
    let certs =
        switch_e2e::TempDir::new(&format!("posctl-iso-{}", switch_e2e::unique_suffix())).unwrap();
    stack
        .pki
        .write_dev_layout(certs.path(), dev_certs::DEFAULT_TERMINALS)
        .unwrap();
    let base = |command: &[&str]| {
        let mut args: Vec<String> = [
            "--json",
            "--terminal",
            "TERM0001",
            "--certs-dir",
            certs.path().to_str().unwrap(),
            "iso",
            "--address",
            &stack.iso[0].to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(command.iter().map(|s| s.to_string()));
        args
    };

    // posctl does not wait for a listener still starting: a terminal
    // that does is connected first.
    drop(terminal(&stack, 0, "TERM0001").await);
    let (ok, echo) = posctl(base(&["echo"])).await;
    assert!(ok);
    assert_eq!(
        (echo[0]["mti"].as_str(), echo[0]["response_code"].as_str()),
        (Some("0810"), Some("00"))
    );

    let (ok, sale) = posctl(base(&[
        "sale", "--amount", "1234", "--pan", VISA, "--stan", "000901",
    ]))
    .await;
    assert!(ok);
    assert_eq!(
        sale.len(),
        2,
        "the sale and its completion advice: {sale:?}"
    );
    assert_eq!(
        (sale[0]["mti"].as_str(), sale[0]["response_code"].as_str()),
        (Some("0210"), Some("00"))
    );
    assert_eq!(
        (sale[1]["mti"].as_str(), sale[1]["response_code"].as_str()),
        (Some("0230"), Some("00"))
    );
    let (id, _, _) = row(&stack, "TERM0001", "000901").await.unwrap();
    stack.wait_for_state(&id, "confirmed", 10).await;

    let (ok, _) = posctl(base(&[
        "sale", "--no-ack", "--amount", "1500", "--pan", VISA, "--stan", "000902",
    ]))
    .await;
    assert!(ok);
    let (ok, reversal) = posctl(base(&["reverse", "--stan", "000902"])).await;
    assert!(ok);
    let (ok, repeat) = posctl(base(&["reverse", "--stan", "000902", "--repeat"])).await;
    assert!(ok);
    assert_eq!(reversal, repeat, "the repeat gets the original's answer");
    let (id, _, _) = row(&stack, "TERM0001", "000902").await.unwrap();
    stack.wait_for_state(&id, "reversed", 10).await;
    stack.shutdown().await;
}

/// The Python of the virtual environment with pyiso8583 (`make pyiso`).
fn pyiso8583_python() -> std::path::PathBuf {
    let python = std::env::var_os("PYISO8583_PYTHON")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| {
                std::path::PathBuf::from(home).join(".cache/pos-switch/pyiso8583-4.0.1/bin/python")
            })
        })
        .expect("PYISO8583_PYTHON or HOME is set");
    assert!(
        python.is_file(),
        "{} is missing: `make pyiso` installs it (`make test` does)",
        python.display()
    );
    python
}

/// Runs the pyiso8583 terminal for `requests`; one JSON line per exchange.
async fn pyiso_terminal(
    stack: &Stack,
    certs: &std::path::Path,
    requests: &[String],
) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/pyiso_terminal.py");
    let mut args: Vec<String> = vec![
        script.into(),
        "127.0.0.1".into(),
        stack.iso[0].port().to_string(),
        certs.join("ca.pem").display().to_string(),
        certs.join("terminals/TERM0001.pem").display().to_string(),
        certs.join("terminals/TERM0001.key").display().to_string(),
        "TERM0001".into(),
        mmdd(),
    ];
    args.extend(requests.iter().cloned());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(pyiso8583_python())
            .args(args)
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the pyiso8583 terminal failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// The same bytes decoded by pyiso8583 (`decoded`) and by this codec agree
/// field for field: the MTI, and every data field, none more, none less.
fn agrees(hex_bytes: &str, decoded: &serde_json::Value) -> Message<'static> {
    let bytes = hex::decode(hex_bytes).unwrap();
    let ours = Profile::ASCII_1987
        .unpack(&bytes)
        .expect("our codec reads what pyiso8583 wrote and read")
        .into_owned();
    assert_eq!(decoded["t"].as_str(), Some(ours.mti().as_str()));
    let theirs: Vec<(u8, String)> = decoded
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "t" | "p" | "s" | "1"))
        .map(|(key, value)| (key.parse().unwrap(), value.as_str().unwrap().to_owned()))
        .collect();
    let mut theirs = theirs;
    theirs.sort();
    let mine: Vec<(u8, String)> = ours
        .fields()
        .map(|(n, value)| (n, value.as_text().expect("text fields only").to_owned()))
        .collect();
    assert_eq!(mine, theirs, "field for field");
    ours
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pyiso8583_terminal_is_served_and_both_codecs_agree() {
    capture_logs();
    let stack = Stack::start(StackOptions {
        iso_listeners: vec![IsoListenerConfig::default()],
        settlement: Some(switch_e2e::test_settlement()),
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts against PostgreSQL and Kafka");
    let ledger = stack.settlement_pool().await.unwrap();
    let certs =
        switch_e2e::TempDir::new(&format!("pyiso-{}", switch_e2e::unique_suffix())).unwrap();
    stack
        .pki
        .write_dev_layout(certs.path(), dev_certs::DEFAULT_TERMINALS)
        .unwrap();
    // The listener may still be binding: a terminal that waits goes first.
    drop(terminal(&stack, 0, "TERM0001").await);

    let requests: Vec<String> = [
        "echo",
        "sale:001001:1500",
        "advice:001001:1500",
        "sale:001002:2500",
        "reversal:001002:2500",
    ]
    .map(String::from)
    .to_vec();
    let exchanges = pyiso_terminal(&stack, certs.path(), &requests).await;
    assert_eq!(exchanges.len(), requests.len());
    let mut answers = Vec::new();
    for exchange in &exchanges {
        agrees(
            exchange["request_hex"].as_str().unwrap(),
            &exchange["request"],
        );
        answers.push(agrees(
            exchange["answer_hex"].as_str().unwrap(),
            &exchange["answer"],
        ));
    }
    let shown: Vec<(String, String)> = answers
        .iter()
        .map(|a| (a.mti().to_string(), code(a)))
        .collect();
    assert_eq!(
        shown,
        [
            ("0810".into(), "00".into()),
            ("0210".into(), "00".into()),
            ("0230".into(), "00".into()),
            ("0210".into(), "00".into()),
            ("0410".into(), "00".into()),
        ]
    );
    let (confirmed, _, _) = row(&stack, "TERM0001", "001001").await.unwrap();
    stack.wait_for_state(&confirmed, "confirmed", 10).await;
    let (reversed, _, _) = row(&stack, "TERM0001", "001002").await.unwrap();
    stack.wait_for_state(&reversed, "reversed", 10).await;

    // The batch close, once the batcher holds the confirmed sale: one sale
    // of 15.00, one reversal asked for.
    stack
        .eventually(30, "the ledger to hold the confirmed sale", || async {
            let status: Option<String> = sqlx::query_scalar(
                "SELECT status FROM transactions WHERE transaction_id = $1::uuid",
            )
            .bind(&confirmed)
            .fetch_optional(&ledger)
            .await
            .unwrap();
            (status.as_deref() == Some("confirmed")).then_some(())
        })
        .await;
    let close = pyiso_terminal(
        &stack,
        certs.path(),
        &["close:001003:000001:1:1500:1:2500".into()],
    )
    .await;
    agrees(
        close[0]["request_hex"].as_str().unwrap(),
        &close[0]["request"],
    );
    let answer = agrees(
        close[0]["answer_hex"].as_str().unwrap(),
        &close[0]["answer"],
    );
    assert_eq!(answer.mti().to_string(), "0510");
    assert_eq!(code(&answer), "00", "balanced: {answer:?}");
    assert_eq!(answer.text(60), Some("000001"));
    assert_eq!(
        (
            answer.text(76),
            answer.text(88),
            answer.text(77),
            answer.text(89)
        ),
        (
            Some("0000000001"),
            Some("0000000000001500"),
            Some("0000000001"),
            Some("0000000000002500")
        ),
        "the host's totals"
    );
    stack.shutdown().await;
}

/// A 0320 of a batch upload: one transaction the terminal holds (its STAN
/// and date in 11 and 13, as for an advice), batch number in field 60.
fn uploaded(terminal_id: &str, stan: &str, minor_units: i64, batch: &str) -> Message<'static> {
    let mut message = about("0320", terminal_id, stan, minor_units);
    message.set(60, batch.to_owned());
    message
}

/// The 0320 that ends an upload: the number of transactions in field 48,
/// no amount.
fn upload_end(terminal_id: &str, stan: &str, count: usize, batch: &str) -> Message<'static> {
    let mut message = Message::new(Mti::BATCH_UPLOAD);
    message
        .set(11, stan.to_owned())
        .set(41, terminal_id.to_owned())
        .set(48, count.to_string())
        .set(60, batch.to_owned());
    message
}

async fn transaction_id(stack: &Stack, terminal_id: &str, stan: &str) -> String {
    row(stack, terminal_id, stan)
        .await
        .expect("the sale is journaled")
        .0
}

async fn wait_for_ledger(stack: &Stack, ledger: &sqlx::PgPool, transaction_id: &str, status: &str) {
    stack
        .eventually(
            30,
            &format!("the ledger to show {transaction_id} {status}"),
            || async {
                let now: Option<String> = sqlx::query_scalar(
                    "SELECT status FROM transactions WHERE transaction_id = $1::uuid",
                )
                .bind(transaction_id)
                .fetch_optional(ledger)
                .await
                .unwrap();
                (now.as_deref() == Some(status)).then_some(())
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_upload_over_iso_reverses_the_orphan_and_confirms_what_the_terminal_holds() {
    capture_logs();
    let stack = Stack::start(StackOptions {
        iso_listeners: vec![IsoListenerConfig::default()],
        // A long acknowledgement window: nothing here is decided by deadline.
        reversal_handler: Some(switch_e2e::quick_reversal_handler(120_000)),
        settlement: Some(switch_e2e::test_settlement()),
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts against PostgreSQL and Kafka");
    let ledger = stack.settlement_pool().await.unwrap();
    let mut iso = terminal(&stack, 0, "TERM0001").await;
    let (orphan_amount, unconfirmed_amount, matched_amount) = (1_111, 2_222, 4_444);
    for (stan, amount) in [
        ("300001", orphan_amount),
        ("300002", unconfirmed_amount),
        ("300003", matched_amount),
    ] {
        let answer = iso.call(&iso_sale("TERM0001", stan, VISA, amount)).await;
        assert_eq!(code(&answer.unwrap()), "00");
    }
    // The terminal showed only the last one.
    let advice = about("0220", "TERM0001", "300003", matched_amount);
    assert_eq!(code(&iso.call(&advice).await.unwrap()), "00");
    let orphan = transaction_id(&stack, "TERM0001", "300001").await;
    let unconfirmed = transaction_id(&stack, "TERM0001", "300002").await;
    let matched = transaction_id(&stack, "TERM0001", "300003").await;
    wait_for_ledger(&stack, &ledger, &orphan, "unconfirmed").await;
    wait_for_ledger(&stack, &ledger, &unconfirmed, "unconfirmed").await;
    wait_for_ledger(&stack, &ledger, &matched, "confirmed").await;

    // The terminal holds two sales; the host three: out of balance.
    let mut close = Message::new(Mti::RECONCILIATION_REQUEST);
    close
        .set(11, "300010")
        .set(41, "TERM0001")
        .set(50, "978")
        .set(60, "000009")
        .set(76, format!("{:010}", 2))
        .set(88, format!("{:016}", unconfirmed_amount + matched_amount));
    assert_eq!(code(&iso.call(&close).await.unwrap()), "95");

    // An upload whose end counts another number of transactions than were
    // sent is refused, and nothing of it reaches settlement.
    let first = uploaded("TERM0001", "300002", unconfirmed_amount, "000009");
    let first = iso.call(&first).await.unwrap();
    assert_eq!(
        (first.mti().to_string(), code(&first)),
        ("0330".to_owned(), "00".to_owned())
    );
    let short = upload_end("TERM0001", "300011", 2, "000009");
    assert_eq!(code(&iso.call(&short).await.unwrap()), "30");
    let uploads: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transactions WHERE transaction_id = $1::uuid AND status = 'unconfirmed'",
    )
    .bind(&unconfirmed)
    .fetch_one(&ledger)
    .await
    .unwrap();
    assert_eq!(uploads, 1, "the refused upload confirmed nothing");
    assert_eq!(stack.state_of(&orphan).await, "approved");

    // The whole upload: each transaction answered 0330 "00" as it is
    // gathered (a repeat replaces its first), the end forwarded as one
    // UploadBatch.
    for (stan, amount) in [
        ("300002", unconfirmed_amount),
        ("300003", matched_amount),
        ("300003", matched_amount),
    ] {
        let held = uploaded("TERM0001", stan, amount, "000009");
        let answer = iso.call(&held).await.unwrap();
        assert_eq!(answer.mti().to_string(), "0330");
        assert_eq!(code(&answer), "00");
        assert_eq!(answer.stan(), Some(stan));
    }
    let end = iso
        .call(&upload_end("TERM0001", "300012", 2, "000009"))
        .await
        .unwrap();
    assert_eq!(
        (end.mti().to_string(), code(&end), end.stan()),
        ("0330".to_owned(), "00".to_owned(), Some("300012"))
    );

    // As over gRPC: the orphan is reversed at once, the unconfirmed sale
    // the terminal holds is confirmed by the upload.
    stack.wait_for_state(&orphan, "reversed", 30).await;
    let reason: String = sqlx::query_scalar(
        "SELECT reversal_reason FROM authorizations WHERE transaction_id = $1::uuid",
    )
    .bind(&orphan)
    .fetch_one(&stack.journal)
    .await
    .unwrap();
    assert_eq!(reason, "batch_orphan");
    assert_eq!(stack.state_of(&unconfirmed).await, "confirmed");
    let evidence: String = sqlx::query_scalar(
        "SELECT confirmation_evidence FROM authorizations WHERE transaction_id = $1::uuid",
    )
    .bind(&unconfirmed)
    .fetch_one(&stack.journal)
    .await
    .unwrap();
    assert_eq!(evidence, "batch_upload");
    assert_eq!(stack.state_of(&matched).await, "confirmed");
    stack.shutdown().await;
}

/// CUP field 48 of a 0500: domestic debits (sales) amount and count,
/// credits (reversals) amount and count, flag; then foreign cards, zero.
fn cup_totals(sales_minor_units: i64, sales: i64, flag: char) -> String {
    format!(
        "{sales_minor_units:012}{sales:03}{:012}{:03}{flag}{:030}{flag}",
        0, 0, 0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cup_batch_close_reads_its_totals_from_field_48_and_a_balanced_one_is_answered_00() {
    capture_logs();
    let stack = Stack::start(StackOptions {
        iso_listeners: vec![IsoListenerConfig {
            profile: IsoProfile::CupPos,
            ..IsoListenerConfig::default()
        }],
        settlement: Some(switch_e2e::test_settlement()),
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts against PostgreSQL and Kafka");
    let ledger = stack.settlement_pool().await.unwrap();
    // `terminal` picks the profile by listener index; this stack's only
    // listener is UnionPay.
    let mut cup_terminal = IsoTerminal::connect_tls(
        stack.iso[0],
        Profile::CUP_POS,
        Some(
            &stack
                .pki
                .terminal_cert("TERM0003", "MERCHANT0000002")
                .unwrap(),
        ),
        stack.pki.ca_cert_pem(),
    )
    .await
    .unwrap();
    for (stan, amount) in [("000801", 1_500), ("000802", 2_500)] {
        let mut sale = iso_sale("TERM0003", stan, VISA, amount);
        sale.set(42, "MERCHANT0000002")
            .set(60, Field60::new(Field60::SALE, "000004", "000").to_string());
        assert_eq!(code(&cup_terminal.call(&sale).await.unwrap()), "00");
        let advice = about("0220", "TERM0003", stan, amount);
        assert_eq!(code(&cup_terminal.call(&advice).await.unwrap()), "00");
        let id = transaction_id(&stack, "TERM0003", stan).await;
        wait_for_ledger(&stack, &ledger, &id, "confirmed").await;
    }
    let close = |stan: &str, totals: String| {
        let mut close = Message::new(Mti::RECONCILIATION_REQUEST);
        close
            .set(11, stan.to_owned())
            .set(41, "TERM0003")
            .set(42, "MERCHANT0000002")
            .set(48, totals)
            .set(49, "978")
            .set(
                60,
                Field60::new(Field60::MANAGEMENT, "000004", Field60::BATCH_SETTLEMENT).to_string(),
            );
        close
    };
    let answer = cup_terminal
        .call(&close("000803", cup_totals(4_000, 2, '0')))
        .await
        .unwrap();
    assert_eq!(answer.mti().to_string(), "0510");
    assert_eq!(code(&answer), "00", "balanced");
    assert_eq!(
        answer.text(48),
        Some(cup_totals(4_000, 2, '1').as_str()),
        "the host's totals, flagged balanced"
    );
    assert_eq!(
        answer.text(60),
        Some(
            Field60::new(Field60::MANAGEMENT, "000004", Field60::BATCH_SETTLEMENT)
                .to_string()
                .as_str()
        )
    );
    let batches: i64 =
        sqlx::query_scalar("SELECT count(*) FROM batches WHERE batch_number = '000004'")
            .fetch_one(&ledger)
            .await
            .unwrap();
    assert_eq!(batches, 1);
    // Field 48 that is not the layout is a format error, nothing closed.
    let answer = cup_terminal
        .call(&close("000804", "12345".to_owned()))
        .await
        .unwrap();
    assert_eq!(code(&answer), "30");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posctl_uploads_a_batch_over_iso_8583() {
    capture_logs();
    let stack = Stack::start(StackOptions {
        iso_listeners: vec![IsoListenerConfig::default()],
        settlement: Some(switch_e2e::test_settlement()),
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts against PostgreSQL and Kafka");
    let ledger = stack.settlement_pool().await.unwrap();
    let certs = switch_e2e::TempDir::new(&format!("posctl-upload-{}", switch_e2e::unique_suffix()))
        .unwrap();
    stack
        .pki
        .write_dev_layout(certs.path(), dev_certs::DEFAULT_TERMINALS)
        .unwrap();
    let mut iso = terminal(&stack, 0, "TERM0002").await;
    // One sale the terminal never showed: the host holds it unconfirmed.
    let sale = iso_sale("TERM0002", "000951", VISA, 1_700);
    assert_eq!(code(&iso.call(&sale).await.unwrap()), "00");
    let id = transaction_id(&stack, "TERM0002", "000951").await;
    wait_for_ledger(&stack, &ledger, &id, "unconfirmed").await;
    // And one it does not hold at all: the host's totals are larger, so
    // the close is out of balance and asks for the upload.
    let other = iso_sale("TERM0002", "000953", VISA, 800);
    assert_eq!(code(&iso.call(&other).await.unwrap()), "00");
    let orphan = transaction_id(&stack, "TERM0002", "000953").await;
    wait_for_ledger(&stack, &ledger, &orphan, "unconfirmed").await;
    let mut close = Message::new(Mti::RECONCILIATION_REQUEST);
    close
        .set(11, "000952")
        .set(41, "TERM0002")
        .set(50, "978")
        .set(60, "000011")
        .set(76, format!("{:010}", 1))
        .set(88, format!("{:016}", 1_700));
    assert_eq!(code(&iso.call(&close).await.unwrap()), "95");

    let args: Vec<String> = [
        "--json",
        "--terminal",
        "TERM0002",
        "--certs-dir",
        certs.path().to_str().unwrap(),
        "iso",
        "--address",
        &stack.iso[0].to_string(),
        "upload",
        "--batch",
        "000011",
        "--sale",
        "000951:1700",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (ok, answers) = posctl(args).await;
    assert!(ok, "{answers:?}");
    assert_eq!(
        answers.len(),
        2,
        "the sale and the upload's end: {answers:?}"
    );
    for answer in &answers {
        assert_eq!(
            (answer["mti"].as_str(), answer["response_code"].as_str()),
            (Some("0330"), Some("00")),
            "{answer:?}"
        );
    }
    // The upload is the terminal's evidence.
    stack.wait_for_state(&id, "confirmed", 30).await;
    stack.shutdown().await;
}
