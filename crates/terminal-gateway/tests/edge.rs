//! The gRPC terminal edge under abuse, against the real gateway: its TLS
//! listener on port 0, its schema on the real PostgreSQL (a prefix of each
//! test's own), its consumer on the broker at `KAFKA_BROKERS` (topics of
//! each test's own). Every test also checks that a well-behaved terminal
//! is still served while the abuse goes on.
//!
//! A terminal is "served" when `AcknowledgeMessage` of an unknown message
//! answers NOT_FOUND: the call went through the whole edge (certificate,
//! revocation, rate) and the gateway's database, and needs no other
//! service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dev_certs::{CertifiedKey, DEFAULT_TERMINALS, DevPki};
use iso8583::cup::Field60;
use iso8583::{Envelope, Header, Message, Mti, Profile, Tpdu};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use switch_platform::db::DatabaseConfig;
use switch_platform::grpc::TlsFiles;
use switch_platform::kafka::KafkaConfig;
use switch_proto::v1::terminal_service_client::TerminalServiceClient;
use switch_proto::v1::{
    AcknowledgeMessageRequest, CloseBatchRequest, CurrencyTotals, SaleRequest, SubscribeRequest,
    UploadBatchRequest, UploadedTransaction,
};
use terminal_gateway::{
    GatewayConfig, IsoListenerConfig, IsoProfile, RateLimitConfig, RateSetting,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// What a served call may take while the edge is under abuse, on a
/// shared 2-core machine.
const LATENCY_BUDGET: Duration = Duration::from_secs(2);

fn unique_suffix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("g{}", &id[..10])
}

struct Gateway {
    address: SocketAddr,
    pki: DevPki,
    dir: PathBuf,
    stop: CancellationToken,
    task: JoinHandle<Result<(), terminal_gateway::ServeError>>,
    database: DatabaseConfig,
    /// The client that found the gateway serving: its connection stays
    /// open (and counted) for the whole test.
    _ready: Option<TerminalServiceClient<Channel>>,
}

impl Gateway {
    /// A gateway with the test's settings, serving once it answers a
    /// terminal. Nothing listens at its authorization and settlement
    /// endpoints: the tests need neither.
    async fn start(tune: impl FnOnce(&mut GatewayConfig, &Path)) -> Gateway {
        let suffix = unique_suffix();
        let dir = std::env::temp_dir().join(format!("gateway-edge-{suffix}"));
        let pki = DevPki::generate().expect("a PKI");
        pki.write_dev_layout(&dir, DEFAULT_TERMINALS)
            .expect("the dev layout is written");
        // A CRL revoking nothing and a registry suspending nobody, for the
        // tests that point the gateway at them.
        let empty_crl = pki.revocation_list_pem(&[]).expect("an empty CRL");
        std::fs::write(dir.join("crl.pem"), empty_crl).expect("CRL written");
        std::fs::write(dir.join("registry.toml"), "[terminals]\n").expect("registry written");
        let database = DatabaseConfig {
            url: std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
            schema_prefix: format!("{suffix}_"),
            max_connections: 4,
            ..DatabaseConfig::default()
        };
        let kafka = KafkaConfig {
            brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned()),
            topic_prefix: format!("{suffix}."),
            partitions: 1,
            ..KafkaConfig::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut config = GatewayConfig {
            listen: address,
            tls: TlsFiles {
                cert_path: dir.join("server.pem"),
                key_path: dir.join("server.key"),
                client_ca_path: Some(dir.join("ca.pem")),
            },
            authorization_endpoint: "http://127.0.0.1:9".into(),
            settlement_endpoint: "http://127.0.0.1:9".into(),
            ..GatewayConfig::default()
        };
        tune(&mut config, &dir);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (database, stop) = (database.clone(), stop.clone());
            async move {
                terminal_gateway::serve(
                    &database,
                    &kafka,
                    &switch_platform::internal_tls::InternalTlsConfig::plaintext_for_lab(),
                    &config,
                    listener,
                    stop.cancelled_owned(),
                )
                .await
            }
        });
        let mut gateway = Gateway {
            address,
            pki,
            dir,
            stop,
            task,
            database,
            _ready: None,
        };
        let client = gateway.terminal("TERM0004");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match probe(&client, "TERM0004").await {
                Ok(_) => break,
                Err(status) if Instant::now() < deadline => {
                    assert!(
                        !gateway.task.is_finished(),
                        "the gateway stopped: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("the gateway never served: {status:?}"),
            }
        }
        gateway._ready = Some(client);
        gateway
    }

    fn cert(&self, terminal_id: &str) -> CertifiedKey {
        let merchant = DEFAULT_TERMINALS
            .iter()
            .find(|(tid, _)| *tid == terminal_id)
            .map_or("MERCHANT0000009", |(_, mid)| *mid);
        self.pki
            .terminal_cert(terminal_id, merchant)
            .expect("a terminal certificate")
    }

    /// A client of `terminal_id` on a connection of its own.
    fn terminal(&self, terminal_id: &str) -> TerminalServiceClient<Channel> {
        self.client_with(&self.cert(terminal_id))
    }

    fn client_with(&self, cert: &CertifiedKey) -> TerminalServiceClient<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.pki.ca_cert_pem()))
            .domain_name("localhost")
            .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", self.address.port()))
            .expect("an endpoint")
            .tls_config(tls)
            .expect("client TLS")
            .connect_lazy();
        TerminalServiceClient::new(channel)
    }

    /// A TLS connection with `cert`, below gRPC: for what no gRPC client
    /// would send.
    async fn raw_tls(
        &self,
        cert: &CertifiedKey,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pki.ca_cert_pem().as_bytes()).expect("CA"))
            .expect("CA added");
        let certs = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate");
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client certificate");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(self.address).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
    }

    /// Writes `contents` to `name` in the gateway's directory as a whole
    /// (a rename), as an operator's rotation would.
    fn replace_file(&self, name: &str, contents: &str) {
        let staged = self.dir.join(format!("{name}.new"));
        std::fs::write(&staged, contents).expect("staged file written");
        std::fs::rename(&staged, self.dir.join(name)).expect("file replaced");
    }

    async fn stop(self) {
        self.stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the gateway stops")
            .expect("the gateway task completes");
        assert!(result.is_ok(), "the gateway failed: {result:?}");
        let schema = self.database.schema_for(terminal_gateway::SERVICE_NAME);
        switch_platform::db::drop_schema(&self.database.url, &schema)
            .await
            .expect("the test schema is dropped");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One served call of `terminal_id`; its latency, or the refusal.
async fn probe(
    client: &TerminalServiceClient<Channel>,
    terminal_id: &str,
) -> Result<Duration, Status> {
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
        Err(status) => Err(status),
        Ok(_) => panic!("an unknown message was acknowledged"),
    }
}

/// `terminal_id` is served within the latency budget, on a fresh
/// connection.
async fn assert_served(gateway: &Gateway, terminal_id: &str) {
    let client = gateway.terminal(terminal_id);
    let latency = tokio::time::timeout(LATENCY_BUDGET * 2, probe(&client, terminal_id))
        .await
        .unwrap_or_else(|_| panic!("{terminal_id} was not answered"))
        .unwrap_or_else(|status| panic!("{terminal_id} was refused: {status:?}"));
    assert!(
        latency < LATENCY_BUDGET,
        "{terminal_id} was served in {latency:?}"
    );
}

/// The gateway closed the connection under the call: the client sees the
/// transport fail (UNAVAILABLE, or UNKNOWN when the connection closed as
/// the request went out), never an answer.
fn assert_closed_at_connect(outcome: Result<Duration, Status>) {
    let status = outcome.expect_err("the connection is refused");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "{status:?}"
    );
}

/// How long until the peer closes `stream` (EOF or reset), reading and
/// discarding whatever it sends; `None` if still open after `within`.
async fn closed_within(
    stream: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0_u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.ok().map(|()| started.elapsed())
}

/// Polls `check` every 50 ms until it holds; the condition, not a sleep,
/// ends the wait.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_connection_that_never_starts_its_handshake_is_closed_at_the_handshake_timeout() {
    let gateway = Gateway::start(|config, _| {
        config.tls_handshake_timeout_ms = 500;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(
            TcpStream::connect(gateway.address)
                .await
                .expect("TCP connect"),
        );
    }
    // While they hold their sockets, terminals are served.
    assert_served(&gateway, "TERM0001").await;
    let started = Instant::now();
    for socket in &mut silent {
        let closed = closed_within(socket, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "a silent socket was still open");
    }
    let all_closed = started.elapsed();
    assert!(
        all_closed < Duration::from_secs(5),
        "the silent sockets took {all_closed:?} to close"
    );
    assert_served(&gateway, "TERM0002").await;
    gateway.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_maximum_are_closed_as_they_arrive() {
    let gateway = Gateway::start(|config, _| {
        config.max_connections = 20;
        config.max_connections_per_terminal = 4;
        // Long: only the maximum can close a socket in this test.
        config.tls_handshake_timeout_ms = 60_000;
    })
    .await;
    // The probe connection of `start` holds one of the 20.
    let mut sockets = Vec::new();
    for _ in 0..50 {
        sockets.push(
            TcpStream::connect(gateway.address)
                .await
                .expect("TCP connect"),
        );
    }
    let mut closed = 0;
    for socket in &mut sockets {
        if closed_within(socket, Duration::from_millis(300))
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 31, "19 sockets fit beside the probe connection");
    let refused = probe(&gateway.terminal("TERM0001"), "TERM0001").await;
    assert!(refused.is_err(), "a 21st connection was kept");
    drop(sockets);
    let client = gateway.terminal("TERM0001");
    eventually(
        Duration::from_secs(10),
        "a terminal connects once sockets free up",
        || {
            let client = client.clone();
            async move { probe(&client, "TERM0001").await.is_ok() }
        },
    )
    .await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_terminal_holds_at_most_its_connections_and_others_keep_theirs() {
    let gateway = Gateway::start(|config, _| {
        config.max_connections_per_terminal = 2;
    })
    .await;
    let first = gateway.terminal("TERM0001");
    let second = gateway.terminal("TERM0001");
    probe(&first, "TERM0001").await.expect("first connection");
    probe(&second, "TERM0001").await.expect("second connection");
    let third = probe(&gateway.terminal("TERM0001"), "TERM0001").await;
    assert_closed_at_connect(third);
    assert_served(&gateway, "TERM0002").await;
    // The two it holds keep working.
    probe(&first, "TERM0001")
        .await
        .expect("first connection still served");
    gateway.stop().await;
}

#[tokio::test]
async fn a_tls_connection_that_sends_half_a_frame_is_closed_at_the_idle_timeout_and_a_quiet_stream_is_not()
 {
    let gateway = Gateway::start(|config, _| {
        config.keepalive_interval_ms = 300;
        config.keepalive_timeout_ms = 300;
        config.idle_timeout_ms = 1_500;
    })
    .await;
    // A subscription with nothing to say: only keepalive pings cross it.
    let subscriber = gateway.terminal("TERM0002");
    let mut stream = subscriber
        .clone()
        .subscribe(SubscribeRequest {
            terminal_id: "TERM0002".into(),
        })
        .await
        .expect("subscribed")
        .into_inner();

    let mut slow = gateway
        .raw_tls(&gateway.cert("TERM0001"))
        .await
        .expect("TLS handshake");
    // Half of the HTTP/2 connection preface, then silence.
    slow.write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("written");
    slow.flush().await.expect("flushed");
    let closed = closed_within(&mut slow, Duration::from_secs(10))
        .await
        .expect("the half-frame connection is closed");
    assert!(
        closed >= Duration::from_millis(1_000),
        "closed after {closed:?}: not by the idle timeout"
    );
    assert_served(&gateway, "TERM0003").await;
    // The quiet subscription outlived the idle timeout: still open, and
    // nothing ended it.
    let pending = tokio::time::timeout(Duration::from_millis(1_000), stream.message()).await;
    assert!(pending.is_err(), "the quiet stream ended: {pending:?}");
    gateway.stop().await;
}

#[tokio::test]
async fn the_gateway_announces_its_stream_limit_to_every_connection() {
    let gateway = Gateway::start(|config, _| {
        config.max_concurrent_streams = 7;
    })
    .await;
    let tls = gateway
        .raw_tls(&gateway.cert("TERM0001"))
        .await
        .expect("TLS handshake");
    let (_requests, mut connection) = h2::client::handshake(tls).await.expect("HTTP/2 handshake");
    // Until the server's SETTINGS arrive the client assumes no limit.
    let announced = tokio::time::timeout(
        LATENCY_BUDGET,
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(ended) = std::pin::Pin::new(&mut connection).poll(cx) {
                return std::task::Poll::Ready(Err(ended));
            }
            match connection.max_concurrent_send_streams() {
                usize::MAX => std::task::Poll::Pending,
                max => std::task::Poll::Ready(Ok(max)),
            }
        }),
    )
    .await
    .expect("the server's settings arrive")
    .expect("the connection stays up");
    assert_eq!(announced, 7);
    gateway.stop().await;
}

#[tokio::test]
async fn an_oversize_or_overlong_request_is_refused_precisely_and_the_connection_keeps_serving() {
    let gateway = Gateway::start(|config, _| {
        config.max_message_bytes = 16 * 1024;
        config.max_upload_message_bytes = 32 * 1024;
        config.max_upload_transactions = 5;
        config.max_batch_totals = 2;
    })
    .await;
    let client = gateway.terminal("TERM0001");
    let oversize = client
        .clone()
        .sale(SaleRequest {
            terminal_id: "TERM0001".into(),
            stan: "000001".into(),
            pan: "4".repeat(20_000),
            ..SaleRequest::default()
        })
        .await
        .expect_err("an oversize sale is refused");
    assert_eq!(oversize.code(), Code::ResourceExhausted, "{oversize:?}");
    assert!(
        oversize.message().contains("Sale") && oversize.message().contains("16384"),
        "{oversize:?}"
    );
    probe(&client, "TERM0001")
        .await
        .expect("the same connection is still served");

    // An upload may be larger than a sale, up to its own limit.
    let large_upload = client
        .clone()
        .upload_batch(UploadBatchRequest {
            terminal_id: "TERM0001".into(),
            batch_number: "0".repeat(40_000),
            ..UploadBatchRequest::default()
        })
        .await
        .expect_err("an oversize upload is refused");
    assert_eq!(
        large_upload.code(),
        Code::ResourceExhausted,
        "{large_upload:?}"
    );
    assert!(
        large_upload.message().starts_with(
            "UploadBatch requests may be at most 32768 bytes (gateway.max_upload_message_bytes); this one has 400"
        ),
        "{large_upload:?}"
    );
    let upload = client
        .clone()
        .upload_batch(UploadBatchRequest {
            terminal_id: "TERM0001".into(),
            batch_number: "000001".into(),
            transactions: vec![UploadedTransaction::default(); 6],
            ..UploadBatchRequest::default()
        })
        .await
        .expect_err("an upload of 6 is refused");
    assert_eq!(upload.code(), Code::InvalidArgument, "{upload:?}");
    assert_eq!(
        upload.message(),
        "transactions lists 6 entries; at most 5 are accepted"
    );
    let close = client
        .clone()
        .close_batch(CloseBatchRequest {
            terminal_id: "TERM0001".into(),
            batch_number: "000001".into(),
            totals: vec![CurrencyTotals::default(); 3],
            ..CloseBatchRequest::default()
        })
        .await
        .expect_err("a close with 3 totals is refused");
    assert_eq!(close.code(), Code::InvalidArgument, "{close:?}");
    assert_eq!(
        close.message(),
        "totals lists 3 entries; at most 2 are accepted"
    );
    probe(&client, "TERM0001")
        .await
        .expect("the same connection is still served");
    gateway.stop().await;
}

#[tokio::test]
async fn a_flooding_terminal_is_held_to_its_rate_while_others_are_served() {
    let gateway = Gateway::start(|config, _| {
        config.rate_limit = RateLimitConfig {
            per_second: 2,
            burst: 5,
            merchants: [(
                "MERCHANT0000002".to_owned(),
                RateSetting {
                    per_second: 1,
                    burst: 1,
                },
            )]
            .into(),
        };
    })
    .await;
    let flooder = gateway.terminal("TERM0001");
    let started = Instant::now();
    let flood = tokio::spawn({
        let flooder = flooder.clone();
        async move {
            let mut outcomes = Vec::new();
            for _ in 0..300 {
                outcomes.push(probe(&flooder, "TERM0001").await);
            }
            outcomes
        }
    });
    // TERM0002 shares the merchant, not the bucket (its first call was
    // not made by `start`, which used TERM0004).
    assert_served(&gateway, "TERM0002").await;
    let outcomes = flood.await.expect("the flood ran");
    let elapsed = started.elapsed();
    let admitted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    let ceiling = 5 + 2 * usize::try_from(elapsed.as_secs()).unwrap_or(0) + 2;
    assert!(
        admitted >= 5 && admitted <= ceiling,
        "{admitted} of 300 admitted in {elapsed:?}"
    );
    for refused in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            refused
                .message()
                .starts_with("terminal TERM0001 is over its request rate (2 a second, 5 at once)"),
            "{refused:?}"
        );
        let retry_after: u64 = refused
            .metadata()
            .get("retry-after-ms")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .expect("a retry-after-ms");
        assert!(
            retry_after <= 500,
            "retry after {retry_after} ms at 2 a second"
        );
    }
    // MERCHANT0000002's override: one at once.
    let strict = gateway.terminal("TERM0003");
    probe(&strict, "TERM0003")
        .await
        .expect("first call admitted");
    let limited = probe(&strict, "TERM0003")
        .await
        .expect_err("second refused");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!(
        limited.message().contains("(1 a second, 1 at once)"),
        "{limited:?}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_second_subscribe_of_a_terminal_replaces_the_first() {
    let gateway = Gateway::start(|_, _| {}).await;
    let request = || SubscribeRequest {
        terminal_id: "TERM0001".into(),
    };
    let mut older = gateway
        .terminal("TERM0001")
        .subscribe(request())
        .await
        .expect("subscribed")
        .into_inner();
    let mut newer = gateway
        .terminal("TERM0001")
        .subscribe(request())
        .await
        .expect("subscribed again")
        .into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(5), older.message())
        .await
        .expect("the older stream ends")
        .expect_err("with a status");
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    assert_eq!(
        ended.message(),
        "a newer Subscribe stream of terminal TERM0001 replaced this one"
    );
    let pending = tokio::time::timeout(Duration::from_millis(500), newer.message()).await;
    assert!(pending.is_err(), "the newer stream ended: {pending:?}");
    gateway.stop().await;
}

/// The certificate a new connection is shown.
async fn server_cert_seen(gateway: &Gateway) -> Option<Vec<u8>> {
    let tls = gateway.raw_tls(&gateway.cert("TERM0004")).await.ok()?;
    let certs = tls.get_ref().1.peer_certificates()?;
    certs.first().map(|cert| cert.as_ref().to_vec())
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn revocation_suspension_and_rotation_apply_without_a_restart() {
    let gateway = Gateway::start(|config, dir| {
        config.crl_path = Some(dir.join("crl.pem"));
        config.terminal_registry_path = Some(dir.join("registry.toml"));
        config.reload_interval_ms = 100;
    })
    .await;
    let stolen = gateway.cert("TERM0001");
    let on_stolen = gateway.client_with(&stolen);
    probe(&on_stolen, "TERM0001")
        .await
        .expect("served before the revocation");
    let other = gateway.terminal("TERM0002");
    probe(&other, "TERM0002").await.expect("served");
    let mut stolen_stream = on_stolen
        .clone()
        .subscribe(SubscribeRequest {
            terminal_id: "TERM0001".into(),
        })
        .await
        .expect("subscribed before the revocation")
        .into_inner();

    // Revoked: the connection already open is refused call by call, a new
    // one cannot be made, and a fresh certificate of the terminal works.
    gateway.replace_file(
        "crl.pem",
        &gateway.pki.revocation_list_pem(&[&stolen]).expect("a CRL"),
    );
    eventually(
        Duration::from_secs(10),
        "the revocation reaches the open connection",
        || {
            let on_stolen = on_stolen.clone();
            async move {
                matches!(probe(&on_stolen, "TERM0001").await,
                Err(status) if status.code() == Code::PermissionDenied
                    && status.message() == "the certificate of terminal TERM0001 is revoked")
            }
        },
    )
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(5), stolen_stream.message())
        .await
        .expect("the revoked terminal's stream ends")
        .expect_err("with a status");
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert_eq!(
        ended.message(),
        "the certificate of terminal TERM0001 is revoked"
    );
    assert_closed_at_connect(probe(&gateway.client_with(&stolen), "TERM0001").await);
    assert_served(&gateway, "TERM0001").await;
    probe(&other, "TERM0002")
        .await
        .expect("others are untouched");

    // The server's certificate and key rotated: new connections see the
    // new one, the open connection is not dropped.
    let rotated = gateway
        .pki
        .server_cert(&["localhost", "127.0.0.1"])
        .expect("a server certificate");
    gateway.replace_file("server.key", &rotated.key_pem);
    gateway.replace_file("server.pem", &rotated.cert_pem);
    let rotated_der = der_of(&rotated.cert_pem);
    eventually(
        Duration::from_secs(10),
        "new connections see the rotated certificate",
        || {
            let rotated_der = rotated_der.clone();
            let gateway = &gateway;
            async move { server_cert_seen(gateway).await == Some(rotated_der) }
        },
    )
    .await;
    probe(&other, "TERM0002")
        .await
        .expect("the open connection survived the rotation");

    // Suspended in the registry: refused on its open connection and on a
    // new one.
    gateway.replace_file(
        "registry.toml",
        "[terminals]\nTERM0002 = \"suspended\"\nTERM0003 = \"active\"\n",
    );
    eventually(
        Duration::from_secs(10),
        "the suspension reaches the open connection",
        || {
            let other = other.clone();
            async move {
                matches!(probe(&other, "TERM0002").await,
                Err(status) if status.code() == Code::PermissionDenied
                    && status.message() == "terminal TERM0002 is suspended")
            }
        },
    )
    .await;
    assert!(
        probe(&gateway.terminal("TERM0002"), "TERM0002")
            .await
            .is_err()
    );
    assert_served(&gateway, "TERM0003").await;

    // A broken registry is not loaded: the last good files stay in use.
    gateway.replace_file("registry.toml", "[terminals]\nTERM0002 = \"gone\"\n");
    let still = gateway.terminal("TERM0003");
    for _ in 0..5 {
        probe(&still, "TERM0003").await.expect("still served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let suspended = probe(&other, "TERM0002")
        .await
        .expect_err("still suspended");
    assert_eq!(suspended.code(), Code::PermissionDenied);
    gateway.stop().await;
}

#[tokio::test]
async fn reflection_describes_only_what_terminals_may_call() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let gateway = Gateway::start(|_, _| {}).await;
    let cert = gateway.cert("TERM0001");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(gateway.pki.ca_cert_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", gateway.address.port()))
        .expect("an endpoint")
        .tls_config(tls)
        .expect("client TLS")
        .connect_lazy();
    let ask = |request: MessageRequest| {
        let mut client = ServerReflectionClient::new(channel.clone());
        async move {
            let mut answers = client
                .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request),
                }]))
                .await
                .expect("reflection answers")
                .into_inner();
            let answer: Option<ServerReflectionResponse> = answers.message().await?;
            Ok::<_, Status>(answer.and_then(|answer| answer.message_response))
        }
    };
    let Ok(Some(MessageResponse::ListServicesResponse(list))) =
        ask(MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a list of services");
    };
    let mut names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "switch.v1.TerminalService",
        ]
    );
    for internal in ["switch.v1.IssuerControl", "switch.v1.AuthorizationService"] {
        let answer = ask(MessageRequest::FileContainingSymbol(internal.to_owned())).await;
        assert!(
            matches!(&answer, Err(status) if status.code() == Code::NotFound),
            "{internal} is described: {answer:?}"
        );
    }
    let terminal = ask(MessageRequest::FileContainingSymbol(
        "switch.v1.TerminalService".to_owned(),
    ))
    .await;
    assert!(
        matches!(
            terminal,
            Ok(Some(MessageResponse::FileDescriptorResponse(_)))
        ),
        "{terminal:?}"
    );
    gateway.stop().await;
}

// The ISO 8583 listeners accept through the same edge.

/// A free local address, for a listener the gateway binds itself.
fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

fn iso_listener(listen: SocketAddr, profile: IsoProfile, plain: bool) -> IsoListenerConfig {
    IsoListenerConfig {
        listen,
        profile,
        plain_tcp_for_lab: plain,
        ..IsoListenerConfig::default()
    }
}

impl Gateway {
    /// A TLS connection to an ISO listener with `cert`, offering no ALPN
    /// (as ISO terminals do); the error when the gateway refuses it.
    async fn iso_tls(
        &self,
        address: SocketAddr,
        cert: &CertifiedKey,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pki.ca_cert_pem().as_bytes()).expect("CA"))
            .expect("CA added");
        let certs = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate");
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client certificate");
        let tcp = TcpStream::connect(address).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
    }
}

/// The envelope a terminal of `profile` sends.
fn envelope_for(profile: &Profile) -> Envelope {
    Envelope {
        tpdu: profile.framing.tpdu.then_some(Tpdu {
            destination: [0x00, 0x03],
            source: [0x00, 0x00],
        }),
        header: profile
            .framing
            .header
            .then_some(Header([0x60, 0x31, 0x00, 0x31, 0x07, 0x30])),
    }
}

async fn iso_send(
    stream: &mut (impl AsyncWrite + Unpin),
    profile: &Profile,
    message: &Message<'_>,
) -> std::io::Result<()> {
    let frame = profile
        .pack_frame(&envelope_for(profile), message)
        .expect("the test's message packs");
    stream.write_all(&frame).await?;
    stream.flush().await
}

/// The next answer, or `None` when the gateway closed the connection.
async fn iso_receive(
    stream: &mut (impl AsyncRead + Unpin),
    profile: &Profile,
) -> Option<Message<'static>> {
    let header = profile.framing.length.size();
    let mut frame = vec![0u8; header];
    tokio::time::timeout(LATENCY_BUDGET * 5, stream.read_exact(&mut frame))
        .await
        .expect("the gateway neither answered nor closed")
        .ok()?;
    let len = profile
        .frame_len(&frame)
        .expect("a length header")
        .expect("a whole length header");
    frame.resize(len, 0);
    tokio::time::timeout(LATENCY_BUDGET * 5, stream.read_exact(&mut frame[header..]))
        .await
        .expect("the rest of the answer")
        .ok()?;
    let unpacked = profile.unpack_frame(&frame).expect("the answer unpacks");
    Some(unpacked.message.into_owned())
}

/// An echo test of `terminal_id` in `profile`'s layout (the merchant, 42,
/// is only read on a lab's plain TCP).
fn echo(profile: &Profile, terminal_id: &str, stan: &str) -> Message<'static> {
    let mut echo = Message::new(Mti::NETWORK_REQUEST);
    echo.set(11, stan.to_owned())
        .set(41, terminal_id.to_owned())
        .set(42, "MERCHANT0000001");
    if profile.name == Profile::CUP_POS.name {
        echo.set(
            60,
            Field60::new(Field60::MANAGEMENT, "000001", Field60::ECHO_TEST).to_string(),
        );
    } else {
        echo.set(70, "301");
    }
    echo
}

/// Field 39 of an answer.
fn code_of(answer: &Message<'_>) -> String {
    answer.text(39).unwrap_or("<none>").to_owned()
}

/// `terminal_id` is served an echo on a fresh ISO connection within the
/// latency budget.
async fn assert_iso_served(gateway: &Gateway, address: SocketAddr, terminal_id: &str) {
    let started = Instant::now();
    let mut stream = gateway
        .iso_tls(address, &gateway.cert(terminal_id))
        .await
        .expect("an ISO connection");
    let profile = Profile::ASCII_1987;
    iso_send(
        &mut stream,
        &profile,
        &echo(&profile, terminal_id, "000001"),
    )
    .await
    .expect("sent");
    let answer = iso_receive(&mut stream, &profile).await.expect("an answer");
    assert_eq!(code_of(&answer), "00", "{terminal_id}");
    let latency = started.elapsed();
    assert!(
        latency < LATENCY_BUDGET,
        "{terminal_id} was served in {latency:?}"
    );
}

#[tokio::test]
async fn an_iso_connection_that_never_starts_its_handshake_is_closed_at_the_handshake_timeout() {
    let iso = free_address();
    let gateway = Gateway::start(|config, _| {
        config.tls_handshake_timeout_ms = 500;
        config.iso_listeners = vec![iso_listener(iso, IsoProfile::Ascii1987, false)];
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(iso).await.expect("TCP connect"));
    }
    assert_iso_served(&gateway, iso, "TERM0001").await;
    assert_served(&gateway, "TERM0002").await;
    let started = Instant::now();
    for socket in &mut silent {
        let closed = closed_within(socket, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "a silent ISO socket was still open");
    }
    let all_closed = started.elapsed();
    assert!(
        all_closed < Duration::from_secs(5),
        "the silent ISO sockets took {all_closed:?} to close"
    );
    assert_iso_served(&gateway, iso, "TERM0002").await;
    gateway.stop().await;
}

#[tokio::test]
async fn the_iso_and_grpc_listeners_share_the_gateways_maximum_of_connections() {
    let iso = free_address();
    let gateway = Gateway::start(|config, _| {
        config.max_connections = 6;
        config.max_connections_per_terminal = 2;
        config.iso_listeners = vec![iso_listener(iso, IsoProfile::Ascii1987, false)];
    })
    .await;
    // The gRPC connection of `start` holds one; TERM0001 may hold two.
    let profile = Profile::ASCII_1987;
    let mut held = Vec::new();
    for stan in ["000001", "000002"] {
        let mut stream = gateway
            .iso_tls(iso, &gateway.cert("TERM0001"))
            .await
            .expect("within TERM0001's maximum");
        iso_send(&mut stream, &profile, &echo(&profile, "TERM0001", stan))
            .await
            .expect("sent");
        assert_eq!(
            iso_receive(&mut stream, &profile)
                .await
                .map(|a| code_of(&a)),
            Some("00".to_owned())
        );
        held.push(stream);
    }
    // A third of the same terminal is closed once its certificate names it.
    let third = gateway.iso_tls(iso, &gateway.cert("TERM0001")).await;
    if let Ok(mut third) = third {
        let _ = iso_send(&mut third, &profile, &echo(&profile, "TERM0001", "000003")).await;
        assert!(
            iso_receive(&mut third, &profile).await.is_none(),
            "a third connection of TERM0001 was served"
        );
    }
    // Three more sockets fill the gateway (1 + 2 + 3); the next, on either
    // listener, is closed as it arrives, and TERM0002's held one serves.
    let mut fillers = Vec::new();
    for _ in 0..3 {
        fillers.push(TcpStream::connect(iso).await.expect("TCP connect"));
    }
    eventually(Duration::from_secs(5), "the gateway to be full", || {
        let address = iso;
        async move {
            let mut socket = TcpStream::connect(address).await.expect("TCP connect");
            closed_within(&mut socket, Duration::from_millis(500))
                .await
                .is_some()
        }
    })
    .await;
    let mut over = TcpStream::connect(gateway.address)
        .await
        .expect("TCP connect");
    assert!(
        closed_within(&mut over, Duration::from_secs(2))
            .await
            .is_some(),
        "the gRPC listener took a connection beyond the shared maximum"
    );
    let stream = &mut held[0];
    iso_send(stream, &profile, &echo(&profile, "TERM0001", "000004"))
        .await
        .expect("sent");
    assert_eq!(
        iso_receive(stream, &profile).await.map(|a| code_of(&a)),
        Some("00".to_owned()),
        "a held connection keeps serving"
    );
    drop(fillers);
    gateway.stop().await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_on_the_iso_port_and_its_open_connection_closed() {
    let iso = free_address();
    let gateway = Gateway::start(|config, dir| {
        config.crl_path = Some(dir.join("crl.pem"));
        config.terminal_registry_path = Some(dir.join("registry.toml"));
        config.reload_interval_ms = 100;
        config.iso_listeners = vec![iso_listener(iso, IsoProfile::Ascii1987, false)];
    })
    .await;
    let profile = Profile::ASCII_1987;
    let stolen = gateway.cert("TERM0001");
    let mut open = gateway.iso_tls(iso, &stolen).await.expect("connected");
    iso_send(&mut open, &profile, &echo(&profile, "TERM0001", "000001"))
        .await
        .expect("sent");
    assert_eq!(
        iso_receive(&mut open, &profile).await.map(|a| code_of(&a)),
        Some("00".to_owned()),
        "served before the revocation"
    );
    let mut other = gateway
        .iso_tls(iso, &gateway.cert("TERM0002"))
        .await
        .expect("connected");

    gateway.replace_file(
        "crl.pem",
        &gateway.pki.revocation_list_pem(&[&stolen]).expect("a CRL"),
    );
    // A new connection with the revoked certificate is refused: the
    // handshake fails, or (TLS 1.3, where the client finishes first) the
    // gateway closes before answering.
    eventually(
        Duration::from_secs(10),
        "the revoked certificate is refused on the ISO port",
        || {
            let gateway = &gateway;
            let stolen = &stolen;
            async move {
                match gateway.iso_tls(iso, stolen).await {
                    Err(_) => true,
                    Ok(mut stream) => {
                        let _ = iso_send(
                            &mut stream,
                            &Profile::ASCII_1987,
                            &echo(&Profile::ASCII_1987, "TERM0001", "000002"),
                        )
                        .await;
                        iso_receive(&mut stream, &Profile::ASCII_1987)
                            .await
                            .is_none()
                    }
                }
            }
        },
    )
    .await;
    // The connection opened before the revocation is closed at its next
    // message, unanswered.
    let _ = iso_send(&mut open, &profile, &echo(&profile, "TERM0001", "000003")).await;
    assert!(
        iso_receive(&mut open, &profile).await.is_none(),
        "the revoked terminal's open connection was answered"
    );
    iso_send(&mut other, &profile, &echo(&profile, "TERM0002", "000004"))
        .await
        .expect("sent");
    assert_eq!(
        iso_receive(&mut other, &profile).await.map(|a| code_of(&a)),
        Some("00".to_owned()),
        "another terminal keeps being served"
    );
    // Suspension in the registry applies the same way.
    gateway.replace_file("registry.toml", "[terminals]\nTERM0002 = \"suspended\"\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    for stan in 5.. {
        let _ = iso_send(
            &mut other,
            &profile,
            &echo(&profile, "TERM0002", &format!("{stan:06}")),
        )
        .await;
        if iso_receive(&mut other, &profile).await.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the suspension never closed TERM0002's connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_iso_served(&gateway, iso, "TERM0003").await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_flooding_iso_terminal_gets_the_over_rate_code_while_another_terminal_is_served() {
    let (ascii, cup) = (free_address(), free_address());
    let gateway = Gateway::start(|config, _| {
        config.rate_limit = RateLimitConfig {
            per_second: 1,
            burst: 3,
            merchants: Default::default(),
        };
        config.iso_listeners = vec![
            iso_listener(ascii, IsoProfile::Ascii1987, false),
            iso_listener(cup, IsoProfile::CupPos, false),
        ];
    })
    .await;
    for (address, profile, terminal_id, over_rate) in [
        (ascii, Profile::ASCII_1987, "TERM0001", "19"),
        (cup, Profile::CUP_POS, "TERM0003", "90"),
    ] {
        let mut flooder = gateway
            .iso_tls(address, &gateway.cert(terminal_id))
            .await
            .expect("connected");
        let started = Instant::now();
        let sent = 20;
        for stan in 1..=sent {
            iso_send(
                &mut flooder,
                &profile,
                &echo(&profile, terminal_id, &format!("{stan:06}")),
            )
            .await
            .expect("sent");
        }
        let mut codes = std::collections::BTreeMap::new();
        for _ in 1..=sent {
            let answer = iso_receive(&mut flooder, &profile)
                .await
                .expect("every message is answered");
            assert_eq!(answer.mti().to_string(), "0810", "in the request's class");
            assert_eq!(answer.terminal_id(), Some(terminal_id));
            codes.insert(
                answer.stan().expect("field 11").to_owned(),
                code_of(&answer),
            );
        }
        let elapsed = started.elapsed();
        assert_eq!(codes.len(), sent, "one answer per STAN");
        let admitted = codes.values().filter(|code| *code == "00").count();
        let refused = codes.values().filter(|code| *code == over_rate).count();
        let ceiling = 3 + usize::try_from(elapsed.as_secs()).unwrap_or(0) + 1;
        assert!(
            (3..=ceiling).contains(&admitted),
            "{admitted} of {sent} admitted in {elapsed:?}: {codes:?}"
        );
        assert_eq!(admitted + refused, sent, "{codes:?}");
        // One budget per terminal: its gRPC calls draw from the same
        // bucket.
        let limited = probe(&gateway.terminal(terminal_id), terminal_id)
            .await
            .expect_err("the terminal's gRPC call is over the same rate");
        assert_eq!(limited.code(), Code::ResourceExhausted);
    }
    // Another terminal has its own bucket.
    assert_iso_served(&gateway, ascii, "TERM0002").await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_lab_iso_connection_is_counted_and_closed_when_idle() {
    let iso = free_address();
    let gateway = Gateway::start(|config, _| {
        config.keepalive_interval_ms = 100;
        config.keepalive_timeout_ms = 100;
        config.idle_timeout_ms = 700;
        config.iso_listeners = vec![iso_listener(iso, IsoProfile::Ascii1987, true)];
    })
    .await;
    let profile = Profile::ASCII_1987;
    let mut lab = TcpStream::connect(iso).await.expect("connected");
    iso_send(&mut lab, &profile, &echo(&profile, "TERM0001", "000001"))
        .await
        .expect("sent");
    assert_eq!(
        iso_receive(&mut lab, &profile).await.map(|a| code_of(&a)),
        Some("00".to_owned()),
        "plain TCP is served on a lab listener"
    );
    // Half a frame, then silence: closed at the idle timeout.
    lab.write_all(&[0x00, 0x40, b'0', b'8'])
        .await
        .expect("half a frame sent");
    let started = Instant::now();
    let closed = closed_within(&mut lab, Duration::from_secs(5))
        .await
        .expect("the idle lab connection is closed");
    assert!(
        closed >= Duration::from_millis(500) && started.elapsed() < Duration::from_secs(5),
        "closed after {closed:?}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_rapid_reset_flood_is_cut_off_and_other_terminals_keep_being_served() {
    let gateway = Gateway::start(|config, _| {
        config.max_pending_reset_streams = 20;
    })
    .await;
    let (error, sent) = flood_with_resets(&gateway).await;
    // hyper's GOAWAY (ENHANCE_YOUR_CALM) when resets piled up before the
    // server took them; otherwise the edge's own count of abandoned calls
    // closed the socket under the client.
    assert!(
        (error.is_go_away() && error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
            || error.is_io(),
        "{error:?} after {sent} resets"
    );
    // Bounded work: 100 to 400 were sent before the cut-off when measured
    // (20 pending, or 100 abandoned at 10 a second; the rest in flight).
    assert!(sent < 2_000, "{sent} resets were taken");
    assert_served(&gateway, "TERM0003").await;
    gateway.stop().await;
}

/// A server that keeps up takes every stream before its reset arrives, so
/// hyper's count of streams reset before they were taken never grows: the
/// edge's count of abandoned calls alone must cut the flood off.
#[tokio::test]
async fn a_rapid_reset_flood_the_server_keeps_up_with_is_cut_off_by_its_abandoned_calls() {
    let gateway = Gateway::start(|config, _| {
        config.max_pending_reset_streams = 1_000_000;
        config.client_reset_limit = RateSetting {
            per_second: 10,
            burst: 50,
        };
    })
    .await;
    let (error, sent) = flood_with_resets(&gateway).await;
    assert!(error.is_io(), "{error:?} after {sent} resets");
    // 50 abandoned calls, plus the refill and what was in flight when the
    // socket closed.
    assert!((50..1_000).contains(&sent), "{sent} resets were taken");
    assert_served(&gateway, "TERM0003").await;
    gateway.stop().await;
}

/// Opens and resets streams on one connection of TERM0001 as fast as the
/// client can (HEADERS then RST_STREAM, CVE-2023-44487), serving TERM0002
/// every 100, until the server ends the connection; returns how it ended
/// it and how many were sent.
async fn flood_with_resets(gateway: &Gateway) -> (h2::Error, u32) {
    let tls = gateway
        .raw_tls(&gateway.cert("TERM0001"))
        .await
        .expect("TLS handshake");
    let (requests, connection) = h2::client::handshake(tls).await.expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let mut requests = requests.ready().await.expect("the connection is ready");
    let attack = Instant::now();
    let mut sent = 0_u32;
    let mut stalls = 0_u32;
    for _ in 0..20_000 {
        let request =
            http::Request::post("https://localhost/switch.v1.TerminalService/AcknowledgeMessage")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("a request");
        let ready = match tokio::time::timeout(LATENCY_BUDGET, requests.clone().ready()).await {
            Ok(Ok(ready)) => ready,
            // Refused: the server has closed the connection.
            Ok(Err(_)) => break,
            // Not ready yet, on a loaded machine: the connection is still
            // open, so the flood goes on (a stuck one ends it).
            Err(_) => {
                stalls += 1;
                if stalls > 20 {
                    break;
                }
                continue;
            }
        };
        requests = ready;
        match requests.send_request(request, false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
        sent += 1;
        // Lets the client's connection task (this runtime has one thread)
        // write the frames and read what the server answers.
        tokio::task::yield_now().await;
        if sent.is_multiple_of(100) {
            // Others are served while it goes on.
            assert_served(gateway, "TERM0002").await;
        }
    }
    let outcome = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .unwrap_or_else(|_| {
            panic!("the server ends the flooding connection ({sent} resets sent, {stalls} stalls)")
        })
        .expect("the connection task completes");
    let error = outcome.expect_err("the server ends the flooding connection");
    eprintln!(
        "rapid reset: cut off after {sent} resets in {:?}",
        attack.elapsed()
    );
    (error, sent)
}

#[tokio::test]
async fn a_merchants_rate_rule_in_the_registry_applies_without_a_restart() {
    let iso = free_address();
    let gateway = Gateway::start(|config, dir| {
        config.terminal_registry_path = Some(dir.join("registry.toml"));
        config.reload_interval_ms = 100;
        config.iso_listeners = vec![iso_listener(iso, IsoProfile::Ascii1987, false)];
    })
    .await;
    // The configuration's default (100 a second, 200 at once) first.
    let strict = gateway.terminal("TERM0003");
    for _ in 0..5 {
        probe(&strict, "TERM0003")
            .await
            .expect("within the default rate");
    }
    gateway.replace_file(
        "registry.toml",
        "[terminals]\n\n[merchants.MERCHANT0000002]\nper_second = 1\nburst = 1\n",
    );
    // Once reloaded, the second of two calls at once is refused.
    eventually(
        Duration::from_secs(10),
        "the merchant's reloaded rule to hold its terminal",
        || {
            let strict = strict.clone();
            async move {
                let _ = probe(&strict, "TERM0003").await;
                matches!(probe(&strict, "TERM0003").await,
                    Err(status) if status.code() == Code::ResourceExhausted
                        && status.message().contains("(1 a second, 1 at once)"))
            }
        },
    )
    .await;
    // Over ISO too: the same bucket, the same rule.
    let profile = Profile::ASCII_1987;
    let mut stream = gateway
        .iso_tls(iso, &gateway.cert("TERM0004"))
        .await
        .expect("connected");
    let mut codes = Vec::new();
    for stan in ["000001", "000002"] {
        iso_send(&mut stream, &profile, &echo(&profile, "TERM0004", stan))
            .await
            .expect("sent");
        let answer = iso_receive(&mut stream, &profile).await.expect("answered");
        codes.push(code_of(&answer));
    }
    assert_eq!(
        codes,
        ["00", "19"],
        "TERM0004 shares MERCHANT0000002's rule"
    );
    // Another merchant keeps the default.
    for _ in 0..5 {
        assert_served(&gateway, "TERM0001").await;
    }
    // A rule that cannot hold is refused, and the previous one stays.
    gateway.replace_file(
        "registry.toml",
        "[merchants.MERCHANT0000002]\nper_second = 0\nburst = 1\n",
    );
    // Ten reload intervals: the bad file was tried several times, and each
    // time the loaded rule stayed.
    let mut still_strict = true;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = probe(&strict, "TERM0003").await;
        still_strict &= probe(&strict, "TERM0003").await.is_err();
    }
    assert!(still_strict, "a bad registry replaced the loaded rule");
    gateway.stop().await;
}
