//! The service kit against a real socket: a drain lets a request in flight
//! finish within the grace period, and returns by the grace period when a
//! request does not finish; during the unready delay health says
//! NOT_SERVING while new requests are still served; health reports SERVING
//! while up; a client built
//! by the kit reaches the server, over mutual TLS when the server requires
//! client certificates, and sending the caller's trace context.

use std::sync::Arc;
use std::time::Duration;

use switch_platform::service::{GrpcClient, GrpcServer, ServeError};
use switch_platform::shutdown::{DrainTiming, Shutdown};
use switch_proto::v1::issuer_service_client::IssuerServiceClient;
use switch_proto::v1::issuer_service_server::{IssuerService, IssuerServiceServer};
use switch_proto::v1::{
    IssuerAuthorizeRequest, IssuerAuthorizeResponse, IssuerReverseRequest, IssuerReverseResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::{Request, Response, Status};

/// An issuer whose `Authorize` says it started, then answers only once
/// released.
struct Held {
    started: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
}

#[tonic::async_trait]
impl IssuerService for Held {
    async fn authorize(
        &self,
        _request: Request<IssuerAuthorizeRequest>,
    ) -> Result<Response<IssuerAuthorizeResponse>, Status> {
        let _ = self.started.send(());
        self.release.notified().await;
        Ok(Response::new(IssuerAuthorizeResponse {
            response_code: "00".to_owned(),
            approval_code: "ABC123".to_owned(),
        }))
    }

    async fn reverse(
        &self,
        _request: Request<IssuerReverseRequest>,
    ) -> Result<Response<IssuerReverseResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

struct Running {
    client: IssuerServiceClient<switch_platform::service::TracedChannel>,
    address: std::net::SocketAddr,
    started: mpsc::UnboundedReceiver<()>,
    release: Arc<Notify>,
    stop: oneshot::Sender<()>,
    draining: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<Result<(), ServeError>>,
}

async fn start(grace: Duration) -> Running {
    start_with(DrainTiming {
        unready_delay: Duration::ZERO,
        grace_period: grace,
    })
    .await
}

async fn start_with(timing: DrainTiming) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (started_tx, started) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let server = GrpcServer::new("test")
        .expect("reflection builds")
        .add_service(IssuerServiceServer::new(Held {
            started: started_tx,
            release: release.clone(),
        }));
    let draining = server.draining();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(
        listener,
        Shutdown::new(
            async {
                let _ = stopped.await;
            },
            timing,
        ),
    ));
    let channel = GrpcClient::new(format!("http://{address}"))
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(30))
        .traced()
        .expect("a valid endpoint");
    Running {
        client: IssuerServiceClient::new(channel),
        address,
        started,
        release,
        stop,
        draining,
        server,
    }
}

fn authorize(
    running: &Running,
) -> tokio::task::JoinHandle<Result<Response<IssuerAuthorizeResponse>, Status>> {
    let mut client = running.client.clone();
    tokio::spawn(async move { client.authorize(IssuerAuthorizeRequest::default()).await })
}

/// Bounds a wait so a broken drain fails the test instead of hanging it.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 20 s"))
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_finishes_within_the_grace() {
    let mut running = start(Duration::from_secs(60)).await;
    let call = authorize(&running);
    within("the request to start", running.started.recv())
        .await
        .expect("the handler runs");

    running.stop.send(()).expect("the server is running");
    within("the drain to begin", running.draining.cancelled()).await;
    assert!(
        !running.server.is_finished(),
        "the server returned with a request still in flight"
    );
    running.release.notify_one();

    let answer = within("the answer", call)
        .await
        .expect("the call task")
        .expect("the request in flight is answered");
    assert_eq!(answer.get_ref().response_code, "00");
    within("the server to return", running.server)
        .await
        .expect("the server task")
        .expect("the server drains cleanly");
}

#[tokio::test]
async fn the_server_returns_by_the_grace_timeout_when_a_request_does_not_finish() {
    let mut running = start(Duration::from_millis(300)).await;
    let call = authorize(&running);
    within("the request to start", running.started.recv())
        .await
        .expect("the handler runs");

    running.stop.send(()).expect("the server is running");
    // Never released: only the grace timeout can end the drain.
    within("the server to return", running.server)
        .await
        .expect("the server task")
        .expect("a drain cut short is not an error");
    let status = within("the answer", call)
        .await
        .expect("the call task")
        .expect_err("the abandoned request is refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

async fn health_of(
    address: std::net::SocketAddr,
) -> tonic_health::pb::health_check_response::ServingStatus {
    let channel = GrpcClient::new(format!("http://{address}"))
        .channel()
        .expect("a valid endpoint");
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health answers")
        .into_inner()
        .status()
}

#[tokio::test]
async fn during_the_unready_delay_health_says_not_serving_and_new_requests_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut running = start_with(DrainTiming {
        unready_delay: Duration::from_secs(60),
        grace_period: Duration::from_secs(60),
    })
    .await;
    assert_eq!(health_of(running.address).await, ServingStatus::Serving);
    running.stop.send(()).expect("the server is running");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while health_of(running.address).await != ServingStatus::NotServing {
        assert!(
            std::time::Instant::now() < deadline,
            "health still SERVING 20 s after the signal"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A load balancer that has not noticed yet sends a request on a new
    // connection: it is served, and the drain has not begun.
    let mut late_client = IssuerServiceClient::new(
        GrpcClient::new(format!("http://{}", running.address))
            .channel()
            .expect("a valid endpoint"),
    );
    let call = tokio::spawn(async move {
        late_client
            .authorize(IssuerAuthorizeRequest::default())
            .await
    });
    within("the late request to start", running.started.recv())
        .await
        .expect("the handler runs");
    assert!(!running.draining.is_cancelled(), "drained before the delay");
    running.release.notify_one();
    let answer = within("the answer", call)
        .await
        .expect("the call task")
        .expect("a request during the unready delay is served");
    assert_eq!(answer.get_ref().response_code, "00");
    assert!(!running.server.is_finished());
    running.server.abort();
}

#[tokio::test]
async fn health_reports_the_server_and_its_services_serving() {
    let running = start(Duration::from_millis(300)).await;
    let channel = GrpcClient::new(format!("http://{}", running.address))
        .channel()
        .expect("a valid endpoint");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "switch.v1.IssuerService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    running.stop.send(()).expect("the server is running");
    within("the server to return", running.server)
        .await
        .expect("the server task")
        .expect("the server drains cleanly");
}

#[test]
fn a_bad_endpoint_is_named() {
    let error = GrpcClient::new("not a url").channel().unwrap_err();
    assert!(error.to_string().contains("not a url"), "{error}");
}

#[tokio::test]
async fn a_taken_address_is_named() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = taken.local_addr().expect("address");
    let error = switch_platform::service::bind(address).await.unwrap_err();
    assert!(error.to_string().contains(&address.to_string()), "{error}");
}

#[tokio::test]
async fn a_server_requiring_client_certificates_admits_only_clients_presenting_one() {
    use switch_platform::grpc::TlsFiles;
    use switch_platform::service::ClientTls;

    let dir = std::env::temp_dir().join(format!("kit-tls-{}", uuid::Uuid::new_v4().simple()));
    let pki = dev_certs::DevPki::generate().expect("a dev PKI");
    pki.write_dev_layout(&dir, dev_certs::DEFAULT_TERMINALS)
        .expect("the dev layout is written");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (started_tx, _started) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let tls = TlsFiles {
        cert_path: dir.join("server.pem"),
        key_path: dir.join("server.key"),
        client_ca_path: Some(dir.join("ca.pem")),
    };
    let server = GrpcServer::new("test")
        .expect("reflection builds")
        .tls(Some(&tls))
        .add_service(IssuerServiceServer::new(Held {
            started: started_tx,
            release: release.clone(),
        }));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));

    let check = |identity: Option<(std::path::PathBuf, std::path::PathBuf)>| {
        let channel = GrpcClient::new(format!("https://localhost:{port}"))
            .connect_timeout(Duration::from_secs(5))
            .tls(Some(ClientTls {
                ca_path: dir.join("ca.pem"),
                identity,
                domain_name: None,
            }))
            .channel()
            .expect("a valid endpoint");
        async move {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
        }
    };
    let terminal = (
        dir.join("terminals/TERM0001.pem"),
        dir.join("terminals/TERM0001.key"),
    );
    within("the call with a certificate", check(Some(terminal)))
        .await
        .expect("a client with a certificate from the CA is served");
    within("the call without a certificate", check(None))
        .await
        .expect_err("a client without a certificate is refused");

    stop.send(()).expect("the server is running");
    within("the server to return", server)
        .await
        .expect("the server task")
        .expect("the server drains cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An issuer that hands over the `traceparent` each `Authorize` carried.
struct Recording(mpsc::UnboundedSender<Option<String>>);

#[tonic::async_trait]
impl IssuerService for Recording {
    async fn authorize(
        &self,
        request: Request<IssuerAuthorizeRequest>,
    ) -> Result<Response<IssuerAuthorizeResponse>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let _ = self.0.send(traceparent);
        Ok(Response::new(IssuerAuthorizeResponse::default()))
    }

    async fn reverse(
        &self,
        _request: Request<IssuerReverseRequest>,
    ) -> Result<Response<IssuerReverseResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn a_traced_channel_sends_the_callers_trace_context() {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing::Instrument as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("kit-test")));
    // This test's thread only (the runtime is single-threaded).
    let _subscriber = tracing::subscriber::set_default(subscriber);

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let server = GrpcServer::new("test")
        .expect("reflection builds")
        .add_service(IssuerServiceServer::new(Recording(seen_tx)));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let channel = GrpcClient::new(format!("http://{address}"))
        .traced()
        .expect("a valid endpoint");
    let mut client = IssuerServiceClient::new(channel);

    let span = tracing::info_span!("caller");
    let trace_id = span.context().span().span_context().trace_id();
    within(
        "the traced call",
        client
            .authorize(IssuerAuthorizeRequest::default())
            .instrument(span),
    )
    .await
    .expect("the call is answered");
    let traceparent = within("the recorded metadata", seen.recv())
        .await
        .expect("the server recorded the call")
        .expect("the call carried a traceparent");
    assert!(
        traceparent.contains(&trace_id.to_string()),
        "{traceparent} is not of trace {trace_id}"
    );

    stop.send(()).expect("the server is running");
    within("the server to return", server)
        .await
        .expect("the server task")
        .expect("the server drains cleanly");
}
