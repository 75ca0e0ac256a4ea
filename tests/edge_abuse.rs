//! The terminal edge holds 10,000 idle connections (issue 14: "3,000 such
//! connections were all accepted", each kept for as long as it liked):
//! `switchd terminal-gateway` runs as its own process, so its memory and
//! its open sockets are its own to measure in `/proc`, while 10,000 TCP
//! connections that never start a TLS handshake sit on it and 2,000 more
//! beyond its maximum are closed as they arrive. A connected terminal is
//! served within its budget meanwhile, and the gateway's memory grows by a
//! bounded amount.

use std::time::{Duration, Instant};

use dev_certs::{DEFAULT_TERMINALS, DevPki};
use switch_e2e::v1::AcknowledgeMessageRequest;
use switch_e2e::v1::terminal_service_client::TerminalServiceClient;
use switch_e2e::{SwitchdProcess, TempDir, free_address, switchd_env, unique_suffix};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const IDLE: usize = 10_000;

/// Connections beyond the gateway's maximum, closed as they arrive.
const EXCESS: usize = 2_000;

/// What 10,000 pending handshakes may add to the gateway's resident
/// memory. Measured: about 11 KiB each (debug build); the budget leaves
/// room for the allocator's moods, and is linear in
/// `gateway.max_connections`, which bounds it.
const MEMORY_BUDGET_KIB: u64 = 192 * 1024;

/// What a served call may take while the edge is loaded, on a shared
/// 2-core machine.
const LATENCY_BUDGET: Duration = Duration::from_secs(2);

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Whether the peer closed `socket` (EOF or reset), without waiting.
fn is_closed(socket: &TcpStream) -> bool {
    let mut buf = [0_u8; 1];
    match socket.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    }
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

/// `AcknowledgeMessage` of an unknown message: NOT_FOUND is an answer that
/// went through the whole edge and the gateway's database.
async fn served(
    client: &TerminalServiceClient<Channel>,
    terminal_id: &str,
) -> Result<Duration, String> {
    let started = Instant::now();
    let answer = client
        .clone()
        .acknowledge_message(AcknowledgeMessageRequest {
            terminal_id: terminal_id.to_owned(),
            message_id: uuid::Uuid::new_v4().to_string(),
        })
        .await;
    match answer {
        Err(status) if status.code() == Code::NotFound => Ok(started.elapsed()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test]
async fn ten_thousand_idle_connections_cost_bounded_memory_while_terminals_are_served() {
    let prefix = unique_suffix();
    let certs = TempDir::new(&prefix).expect("a directory");
    let pki = DevPki::generate().expect("a PKI");
    pki.write_dev_layout(certs.path(), DEFAULT_TERMINALS)
        .expect("certificates written");
    let address = free_address().await;
    let path = |name: &str| certs.path().join(name).display().to_string();
    let env = switchd_env(
        &prefix,
        &[
            ("SWITCH__GATEWAY__LISTEN", address.to_string()),
            ("SWITCH__GATEWAY__TLS__CERT_PATH", path("server.pem")),
            ("SWITCH__GATEWAY__TLS__KEY_PATH", path("server.key")),
            ("SWITCH__GATEWAY__TLS__CLIENT_CA_PATH", path("ca.pem")),
            // Long, so every idle socket is still held when measured.
            (
                "SWITCH__GATEWAY__TLS_HANDSHAKE_TIMEOUT_MS",
                "120000".to_owned(),
            ),
            // The idle ones and the probing terminals' connections; the
            // excess is refused.
            ("SWITCH__GATEWAY__MAX_CONNECTIONS", (IDLE + 1).to_string()),
        ],
    );
    let gateway = SwitchdProcess::spawn("terminal-gateway", &env);
    let pid = gateway.id();
    let terminal = |terminal_id: &str| {
        let merchant = DEFAULT_TERMINALS
            .iter()
            .find(|(tid, _)| *tid == terminal_id)
            .map(|(_, mid)| *mid)
            .expect("a dev terminal");
        let cert = pki
            .terminal_cert(terminal_id, merchant)
            .expect("a certificate");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pki.ca_cert_pem()))
            .domain_name("localhost")
            .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
        TerminalServiceClient::new(
            Endpoint::from_shared(format!("https://127.0.0.1:{}", address.port()))
                .expect("an endpoint")
                .tls_config(tls)
                .expect("client TLS")
                .connect_lazy(),
        )
    };
    let first = terminal("TERM0001");
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(refusal) = served(&first, "TERM0001").await {
        assert!(
            Instant::now() < deadline,
            "the gateway never served: {refusal}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_before = proc_status_kib(pid, "VmRSS:");
    let files_before = open_files(pid);

    let mut idle = Vec::with_capacity(IDLE + EXCESS);
    for _ in 0..IDLE + EXCESS {
        idle.push(TcpStream::connect(address).await.expect("TCP connect"));
    }
    // Every one of them is held by the gateway: its descriptors say so.
    let deadline = Instant::now() + Duration::from_secs(60);
    while open_files(pid) < files_before + IDLE {
        assert!(
            Instant::now() < deadline,
            "the gateway holds {} descriptors",
            open_files(pid)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The excess is closed at once (not at the handshake timeout).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let closed = idle.iter().filter(|socket| is_closed(socket)).count();
        if closed == EXCESS {
            break;
        }
        assert!(
            closed < EXCESS && Instant::now() < deadline,
            "{closed} of {} sockets closed",
            IDLE + EXCESS
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        open_files(pid) < files_before + IDLE + 100,
        "the gateway holds {} descriptors",
        open_files(pid)
    );
    // The gateway is full, so a new terminal cannot connect; terminals
    // already connected are served.
    let latency = served(&first, "TERM0001")
        .await
        .unwrap_or_else(|refusal| panic!("TERM0001 refused: {refusal}"));
    assert!(latency < LATENCY_BUDGET, "TERM0001 served in {latency:?}");
    let rss_loaded = proc_status_kib(pid, "VmRSS:");
    let grown = rss_loaded.saturating_sub(rss_before);
    eprintln!(
        "gateway resident memory: {rss_before} KiB before, {rss_loaded} KiB with {IDLE} idle connections (+{grown} KiB)"
    );
    assert!(
        grown < MEMORY_BUDGET_KIB,
        "{IDLE} idle connections grew the gateway by {grown} KiB"
    );

    // Gone: the gateway lets go of every one.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_files(pid) > files_before + 100 {
        assert!(
            Instant::now() < deadline,
            "the gateway still holds {} descriptors",
            open_files(pid)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served(&terminal("TERM0004"), "TERM0004")
        .await
        .expect("served after the flood");
    drop(gateway);
    let schema = switch_platform::db::DatabaseConfig {
        schema_prefix: format!("{prefix}_"),
        ..Default::default()
    }
    .schema_for(terminal_gateway::SERVICE_NAME);
    switch_platform::db::drop_schema(&switch_e2e::database_url(), &schema)
        .await
        .expect("the test schema is dropped");
}
