//! Terminal push end to end (issue 6): the notifier turns an orphan's
//! outcome into a message for its terminal, Kafka carries it to the
//! gateway, and the gateway keeps it until the terminal, subscribed over
//! mutual TLS, acknowledges it. A terminal offline while its orphan is
//! resolved gets the message when it subscribes again, in order, and never
//! again once it has acknowledged it; no terminal can read or acknowledge
//! another's messages.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::PgPool;
use switch_e2e::v1::terminal_service_client::TerminalServiceClient;
use switch_e2e::v1::{
    AcknowledgeMessageRequest, AuthorizationStatus, SubscribeRequest, TerminalMessage,
};
use switch_e2e::{Stack, StackOptions, VISA, capture_logs, quick_reversal_handler, sale, today};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// How long an orphan's outcome may take to reach the gateway: the first
/// consumer-group joins of the handler, the notifier and the gateway take a
/// few seconds each on the development broker.
const ARRIVAL_S: u64 = 60;

/// The bounded wait of "nothing more comes".
const QUIET: Duration = Duration::from_secs(2);

async fn push_stack() -> Stack {
    capture_logs();
    let mut handler = quick_reversal_handler(600);
    // TERM0003 and TERM0004 belong to MERCHANT0000002, whose orphans are
    // confirmed; TERM0001 and TERM0002 to MERCHANT0000001, reversed.
    handler.merchants = BTreeMap::from([(
        "MERCHANT0000002".to_owned(),
        reversal_handler::MerchantPolicy {
            ack_window_ms: None,
            orphan_policy: Some("confirm".to_owned()),
        },
    )]);
    Stack::start(StackOptions {
        reversal_handler: Some(handler),
        notifier: Some(notifier::NotifierConfig::default()),
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts against PostgreSQL and Kafka")
}

/// An approved sale the terminal never acknowledges: an orphan.
async fn orphan(stack: &Stack, terminal_id: &str, stan: &str, amount: i64) -> String {
    let record = stack
        .sale_record(sale(terminal_id, stan, VISA, amount))
        .await;
    assert_eq!(record.status(), AuthorizationStatus::Approved);
    record.transaction_id
}

/// Waits until the gateway keeps `count` messages for `terminal_id`
/// (acknowledged or not), with the terminal not subscribed.
async fn wait_stored(stack: &Stack, gateway: &PgPool, terminal_id: &str, count: i64) {
    stack
        .eventually(
            ARRIVAL_S,
            &format!("{count} message(s) for {terminal_id} at the gateway"),
            || async {
                let stored: Option<i64> = sqlx::query_scalar(
                    "SELECT count(*) FROM terminal_messages WHERE terminal_id = $1",
                )
                .bind(terminal_id)
                .fetch_one(gateway)
                .await
                .ok();
                stored.filter(|n| *n >= count).map(|_| ())
            },
        )
        .await;
}

async fn subscribe(
    client: &mut TerminalServiceClient<Channel>,
    terminal_id: &str,
) -> Result<Streaming<TerminalMessage>, tonic::Status> {
    Ok(client
        .subscribe(SubscribeRequest {
            terminal_id: terminal_id.to_owned(),
        })
        .await?
        .into_inner())
}

/// The next message, within `within`.
async fn next(stream: &mut Streaming<TerminalMessage>, within: Duration) -> TerminalMessage {
    tokio::time::timeout(within, stream.message())
        .await
        .expect("a message arrives in time")
        .expect("the stream is healthy")
        .expect("the stream stays open")
}

/// Nothing arrives within [`QUIET`] (a bounded negative check).
async fn assert_quiet(stream: &mut Streaming<TerminalMessage>) {
    if let Ok(item) = tokio::time::timeout(QUIET, stream.message()).await {
        panic!("expected nothing more, got {item:?}");
    }
}

async fn acknowledge(
    client: &mut TerminalServiceClient<Channel>,
    terminal_id: &str,
    message_id: &str,
) -> Result<bool, tonic::Status> {
    Ok(client
        .acknowledge_message(AcknowledgeMessageRequest {
            terminal_id: terminal_id.to_owned(),
            message_id: message_id.to_owned(),
        })
        .await?
        .into_inner()
        .already_acknowledged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_terminal_gets_the_void_when_it_subscribes_exactly_once_after_it_acks() {
    let stack = push_stack().await;
    let gateway = stack.gateway_pool().await.unwrap();
    // S1: TERM0001 never shows the approval and is not subscribed while the
    // reversal handler reverses it at its deadline.
    let transaction_id = orphan(&stack, "TERM0001", "007001", 4_200).await;
    stack.wait_for_state(&transaction_id, "reversed", 20).await;
    wait_stored(&stack, &gateway, "TERM0001", 1).await;

    // It comes back and subscribes: its backlog is the one void message.
    let mut terminal = stack.terminal("TERM0001").await.unwrap();
    let mut stream = subscribe(&mut terminal, "TERM0001").await.unwrap();
    let message = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(message.kind, "void_receipt");
    assert_eq!(message.transaction_id, transaction_id);
    assert_eq!(message.stan, "007001");
    assert_eq!(message.local_date, today());
    assert_eq!(
        message.reason,
        Some(switch_proto::v1::OutcomeReason {
            reason: Some(switch_proto::v1::outcome_reason::Reason::ReversalReason(
                switch_proto::v1::ReversalReason::NoTerminalAcknowledgement.into()
            )),
        })
    );
    assert_eq!(message.amount.as_ref().unwrap().minor_units, 4_200);
    assert_eq!(message.masked_pan, "411111******1111");
    assert_eq!(message.rrn.len(), 12);
    assert!(message.sequence > 0);
    assert!(
        message
            .text
            .starts_with("Payment of EUR 42.00 (STAN 007001) was reversed"),
        "{}",
        message.text
    );
    assert!(!message.created_at.is_empty());
    assert_quiet(&mut stream).await;

    // Another terminal cannot read TERM0001's messages, even of the same
    // merchant, nor acknowledge them.
    let mut other = stack.terminal("TERM0002").await.unwrap();
    let refused = subscribe(&mut other, "TERM0001").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = acknowledge(&mut other, "TERM0001", &message.message_id)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let mut stranger = stack.terminal("TERM0003").await.unwrap();
    let refused = acknowledge(&mut stranger, "TERM0003", &message.message_id)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let refused = acknowledge(&mut terminal, "TERM0001", "not-a-uuid")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("message_id"), "{refused:?}");

    // TERM0001 acknowledges it (a repeat is answered, not refused) ...
    assert!(
        !acknowledge(&mut terminal, "TERM0001", &message.message_id)
            .await
            .unwrap()
    );
    assert!(
        acknowledge(&mut terminal, "TERM0001", &message.message_id)
            .await
            .unwrap()
    );
    drop(stream);

    // ... and is never sent it again.
    let mut again = subscribe(&mut terminal, "TERM0001").await.unwrap();
    assert_quiet(&mut again).await;
    let (stored, acknowledged): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(acknowledged_at) FROM terminal_messages WHERE terminal_id = 'TERM0001'",
    )
    .fetch_one(&gateway)
    .await
    .unwrap();
    assert_eq!((stored, acknowledged), (1, 1), "one message, stored once");
    drop(again);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_arrive_in_order_live_and_again_until_acknowledged() {
    let stack = push_stack().await;
    let gateway = stack.gateway_pool().await.unwrap();
    let first = orphan(&stack, "TERM0002", "007101", 1_100).await;
    stack.wait_for_state(&first, "reversed", 20).await;
    wait_stored(&stack, &gateway, "TERM0002", 1).await;

    // The backlog first ...
    let mut terminal = stack.terminal("TERM0002").await.unwrap();
    let mut stream = subscribe(&mut terminal, "TERM0002").await.unwrap();
    let one = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(one.transaction_id, first);
    // ... then, while subscribed, a new message as soon as it is kept.
    let second = orphan(&stack, "TERM0002", "007102", 1_200).await;
    let two = next(&mut stream, Duration::from_secs(ARRIVAL_S)).await;
    assert_eq!(two.transaction_id, second);
    assert_eq!(two.kind, "void_receipt");
    assert!(two.sequence > one.sequence, "{one:?} then {two:?}");
    assert_quiet(&mut stream).await;
    drop(stream);

    // Not acknowledged: the next subscription gets both again, in order.
    let mut again = subscribe(&mut terminal, "TERM0002").await.unwrap();
    let replayed = [
        next(&mut again, Duration::from_secs(10)).await,
        next(&mut again, Duration::from_secs(10)).await,
    ];
    assert_eq!(replayed, [one.clone(), two.clone()]);
    assert_quiet(&mut again).await;
    drop(again);

    // Acknowledging the first leaves only the second.
    assert!(
        !acknowledge(&mut terminal, "TERM0002", &one.message_id)
            .await
            .unwrap()
    );
    let mut third = subscribe(&mut terminal, "TERM0002").await.unwrap();
    assert_eq!(next(&mut third, Duration::from_secs(10)).await, two);
    assert_quiet(&mut third).await;
    drop(third);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orphan_confirmed_by_policy_asks_its_terminal_for_a_reprint() {
    let stack = push_stack().await;
    let gateway = stack.gateway_pool().await.unwrap();
    let transaction_id = orphan(&stack, "TERM0003", "007201", 2_500).await;
    stack.wait_for_state(&transaction_id, "confirmed", 20).await;
    wait_stored(&stack, &gateway, "TERM0003", 1).await;

    let mut terminal = stack.terminal("TERM0003").await.unwrap();
    let mut stream = subscribe(&mut terminal, "TERM0003").await.unwrap();
    let message = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(message.kind, "reprint_receipt");
    assert_eq!(message.transaction_id, transaction_id);
    assert_eq!(message.stan, "007201");
    assert_eq!(
        message.reason,
        Some(switch_proto::v1::OutcomeReason {
            reason: Some(switch_proto::v1::outcome_reason::Reason::Evidence(
                switch_proto::v1::Evidence::Policy.into()
            )),
        })
    );
    assert_eq!(message.approval_code.len(), 6, "{message:?}");
    assert!(
        message.text.contains("was confirmed: reprint the receipt"),
        "{}",
        message.text
    );
    assert_quiet(&mut stream).await;
    assert!(
        !acknowledge(&mut terminal, "TERM0003", &message.message_id)
            .await
            .unwrap()
    );
    drop(stream);
    let mut again = subscribe(&mut terminal, "TERM0003").await.unwrap();
    assert_quiet(&mut again).await;
    drop(again);

    // A terminal's own acknowledgement confirms without any message: of
    // an acknowledged sale and an orphan of TERM0004, only the orphan is
    // pushed.
    let mut term4 = stack.terminal("TERM0004").await.unwrap();
    let acked = orphan(&stack, "TERM0004", "007202", 2_600).await;
    term4
        .acknowledge(switch_e2e::v1::AcknowledgeRequest {
            terminal_id: "TERM0004".into(),
            stan: "007202".into(),
            local_date: today(),
        })
        .await
        .unwrap();
    stack.wait_for_state(&acked, "confirmed", 20).await;
    let orphaned = orphan(&stack, "TERM0004", "007203", 2_700).await;
    stack.wait_for_state(&orphaned, "confirmed", 20).await;
    wait_stored(&stack, &gateway, "TERM0004", 1).await;
    let mut stream = subscribe(&mut term4, "TERM0004").await.unwrap();
    let only = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(only.transaction_id, orphaned);
    assert_eq!(only.kind, "reprint_receipt");
    assert_quiet(&mut stream).await;
    drop(stream);
    stack.shutdown().await;
}

/// A TCP proxy standing for the network between a terminal and the
/// gateway. Once `cut`, it carries no more bytes either way but keeps both
/// connections open, as a NAT or load balancer that dropped the flow does:
/// neither side sees the connection close.
struct Blackhole {
    address: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn blackhole_proxy(target: std::net::SocketAddr) -> Blackhole {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, cut: Arc<AtomicBool>) {
        let mut buffer = vec![0; 16 * 1024];
        loop {
            let read = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => read,
            };
            if cut.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    tokio::spawn(async move {
        while let Ok((terminal_side, _)) = listener.accept().await {
            let Ok(gateway_side) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (terminal_read, terminal_write) = terminal_side.into_split();
            let (gateway_read, gateway_write) = gateway_side.into_split();
            tokio::spawn(pump(terminal_read, gateway_write, flag.clone()));
            tokio::spawn(pump(gateway_read, terminal_write, flag.clone()));
        }
    });
    Blackhole { address, cut }
}

fn logged(terminal_id: &str, what: &str) -> bool {
    switch_e2e::captured_logs()
        .lines()
        .any(|line| line.contains(what) && line.contains(terminal_id))
}

/// A subscribed terminal whose network path silently dies (no FIN, no
/// RST) must not hold its subscription for ever: the gateway's HTTP/2
/// pings go unanswered, it closes the connection, and the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_terminal_that_vanishes_without_closing_is_unsubscribed_by_keepalive() {
    capture_logs();
    let stack = Stack::start(StackOptions {
        gateway_keepalive_ms: (200, 300),
        ..StackOptions::default()
    })
    .await
    .expect("the stack starts against PostgreSQL and Kafka");
    let proxy = blackhole_proxy(stack.gateway).await;
    let terminal_id = "TERMKA01";
    let mut terminal = stack
        .terminal_via(proxy.address, terminal_id)
        .await
        .unwrap();
    let stream = terminal
        .subscribe(SubscribeRequest {
            terminal_id: terminal_id.into(),
        })
        .await
        .expect("the terminal subscribes through the proxy")
        .into_inner();
    stack
        .eventually(10, "the gateway to register the subscription", || async {
            logged(terminal_id, "Terminal subscribed.").then_some(())
        })
        .await;
    // Pings answered through the proxy keep it subscribed meanwhile.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        !logged(terminal_id, "Terminal unsubscribed."),
        "a live terminal stays subscribed across pings"
    );

    proxy.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    stack
        .eventually(
            10,
            "the gateway to end the vanished terminal's subscription",
            || async { logged(terminal_id, "Terminal unsubscribed.").then_some(()) },
        )
        .await;
    drop(stream);
    stack.shutdown().await;
}
