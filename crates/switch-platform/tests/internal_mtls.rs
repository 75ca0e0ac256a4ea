//! An internal server built by the kit (`GrpcServer::internal`) against
//! real sockets and real certificates (ADR 27). A peer without a client
//! certificate, or with a terminal's, fails the handshake. A service whose
//! identity the table does not admit gets PERMISSION_DENIED naming it and
//! the method, the refusal is counted, and the handler never runs. The
//! admitted identity is served, an operator RPC refuses a service, health
//! is open to any authenticated peer, and a client built by the kit
//! (`GrpcClient::internal`) presents its service's certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use switch_platform::internal_tls::InternalTlsConfig;
use switch_platform::service::{ClientTls, GrpcClient, GrpcServer};
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use switch_proto::v1::authorization_service_server::{
    AuthorizationService, AuthorizationServiceServer,
};
use switch_proto::v1::{
    AuthorizationRecord, AuthorizeRequest, AuthorizeResponse, ConfirmRequest,
    GetAuthorizationRequest, LastForTerminalRequest, ListDeadLetteredRequest,
    ListDeadLetteredResponse, RedriveRequest, ReverseRequest, ReverseResponse, TerminalKey,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// An authorization service that counts the calls reaching it: a refused
/// call must leave the count where it was. `Confirm` and `Redrive` answer;
/// the rest are not part of this test.
#[derive(Clone, Default)]
struct Counting {
    calls: Arc<AtomicUsize>,
}

impl Counting {
    fn count(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tonic::async_trait]
impl AuthorizationService for Counting {
    async fn qr_pay(
        &self,
        _: tonic::Request<switch_proto::v1::QrPayRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrPaymentResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn qr_order(
        &self,
        _: tonic::Request<switch_proto::v1::QrOrderRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrPaymentResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn qr_status(
        &self,
        _: tonic::Request<switch_proto::v1::QrStatusRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrPaymentRecord>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn qr_refund(
        &self,
        _: tonic::Request<switch_proto::v1::QrRefundRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrRefundResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn qr_redrive(
        &self,
        _: tonic::Request<switch_proto::v1::QrRedriveRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrRedriveResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn qr_acknowledge(
        &self,
        _: tonic::Request<switch_proto::v1::QrAcknowledgeRequest>,
    ) -> Result<tonic::Response<switch_proto::v1::QrPaymentRecord>, tonic::Status> {
        Err(tonic::Status::unimplemented("no QR here"))
    }

    async fn authorize(
        &self,
        _: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        self.count()?;
        Ok(Response::new(AuthorizeResponse::default()))
    }
    async fn reverse(
        &self,
        _: Request<ReverseRequest>,
    ) -> Result<Response<ReverseResponse>, Status> {
        self.count()?;
        Ok(Response::new(ReverseResponse::default()))
    }
    async fn get_authorization(
        &self,
        _: Request<GetAuthorizationRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        self.count()?;
        Ok(Response::new(AuthorizationRecord::default()))
    }
    async fn last_for_terminal(
        &self,
        _: Request<LastForTerminalRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        self.count()?;
        Ok(Response::new(AuthorizationRecord::default()))
    }
    async fn acknowledge(
        &self,
        _: Request<TerminalKey>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        self.count()?;
        Ok(Response::new(AuthorizationRecord::default()))
    }
    async fn confirm(
        &self,
        _: Request<ConfirmRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        self.count()?;
        Ok(Response::new(AuthorizationRecord::default()))
    }
    async fn redrive(
        &self,
        _: Request<RedriveRequest>,
    ) -> Result<Response<AuthorizationRecord>, Status> {
        self.count()?;
        Ok(Response::new(AuthorizationRecord::default()))
    }
    async fn list_dead_lettered(
        &self,
        _: Request<ListDeadLetteredRequest>,
    ) -> Result<Response<ListDeadLetteredResponse>, Status> {
        self.count()?;
        Ok(Response::new(ListDeadLetteredResponse::default()))
    }
}

/// An exporter that keeps the last value of the refusal counter by
/// method, so the test reads what the services export.
#[derive(Debug, Clone, Default)]
struct Tally {
    refused: Arc<Mutex<HashMap<String, u64>>>,
}

impl PushMetricExporter for Tally {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let mut refused = self.refused.lock().expect("tally");
        for metric in metrics.scope_metrics().flat_map(|scope| scope.metrics()) {
            if metric.name() != "authorization.grpc.refused" {
                continue;
            }
            if let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() {
                for point in sum.data_points() {
                    if let Some(method) = point.attributes().find(|kv| kv.key.as_str() == "method")
                    {
                        refused.insert(method.value.as_str().into_owned(), point.value());
                    }
                }
            }
        }
        Ok(())
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// How often `method` has been refused, as exported now.
async fn counted(provider: &SdkMeterProvider, tally: &Tally, method: &str) -> u64 {
    let provider = provider.clone();
    tokio::task::spawn_blocking(move || provider.force_flush())
        .await
        .expect("the flush task")
        .expect("metrics flush");
    tally
        .refused
        .lock()
        .expect("tally")
        .get(method)
        .copied()
        .unwrap_or(0)
}

struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A terminal PKI and a service PKI side by side, as `make certs`
    /// writes them.
    fn generate() -> Pki {
        let dir =
            std::env::temp_dir().join(format!("internal-mtls-{}", uuid::Uuid::new_v4().simple()));
        dev_certs::DevPki::generate()
            .expect("a terminal CA")
            .write_dev_layout(&dir, dev_certs::DEFAULT_TERMINALS)
            .expect("the terminal layout is written");
        dev_certs::DevPki::generate_service_ca()
            .expect("a service CA")
            .write_service_layout(&dir, dev_certs::SERVICES, &[dev_certs::DEFAULT_OPERATOR])
            .expect("the service layout is written");
        Pki { dir }
    }

    fn config(&self) -> InternalTlsConfig {
        InternalTlsConfig::in_dir(&self.dir)
    }

    fn pair(&self, sub: &str, name: &str) -> (PathBuf, PathBuf) {
        let dir: &Path = &self.dir;
        (
            dir.join(sub).join(format!("{name}.pem")),
            dir.join(sub).join(format!("{name}.key")),
        )
    }

    /// A channel trusting the service CA, presenting `identity`.
    fn channel(&self, port: u16, identity: Option<(PathBuf, PathBuf)>) -> Channel {
        GrpcClient::new(format!("https://127.0.0.1:{port}"))
            .connect_timeout(Duration::from_secs(5))
            .request_timeout(Duration::from_secs(10))
            .tls(Some(ClientTls {
                ca_path: self.dir.join("service-ca.pem"),
                identity,
                domain_name: None,
            }))
            .channel()
            .expect("a valid endpoint")
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 20 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_calls_are_admitted_by_certificate_and_identity_only() {
    let tally = Tally::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(tally.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());

    let pki = Pki::generate();
    let config = pki.config();
    config
        .validate_for("authorization")
        .expect("the dev layout has authorization's files");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let api = Counting::default();
    let server = GrpcServer::new("authorization")
        .expect("reflection builds")
        .internal("authorization", &config)
        .add_service(AuthorizationServiceServer::new(api.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let calls = || api.calls.load(Ordering::SeqCst);
    let confirm = |channel: Channel| async move {
        AuthorizationServiceClient::new(channel)
            .confirm(ConfirmRequest {
                transaction_id: "00000000-0000-0000-0000-000000000001".into(),
                ..ConfirmRequest::default()
            })
            .await
    };

    // No client certificate: the handshake fails, nothing is called.
    let error = within(
        "the call without a certificate",
        confirm(pki.channel(port, None)),
    )
    .await
    .expect_err("a client without a certificate is refused");
    assert_ne!(
        error.code(),
        Code::PermissionDenied,
        "refused at the handshake: {error}"
    );
    assert_ne!(error.code(), Code::Ok);

    // A terminal's certificate chains to the terminal CA, not the service CA.
    let terminal = pki.pair("terminals", "TERM0001");
    let error = within(
        "the call with a terminal certificate",
        confirm(pki.channel(port, Some(terminal))),
    )
    .await
    .expect_err("a terminal certificate is refused");
    assert_ne!(
        error.code(),
        Code::PermissionDenied,
        "refused at the handshake: {error}"
    );
    assert_eq!(calls(), 0, "no refused call reached the handler");

    // The notifier is a service, but not one that may confirm.
    let notifier = pki.channel(port, Some(pki.pair("services", "notifier")));
    let status = within("the notifier's Confirm", confirm(notifier.clone()))
        .await
        .expect_err("the notifier may not confirm");
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(
        status
            .message()
            .contains("spiffe://switch/service/notifier")
            && status
                .message()
                .contains("/switch.v1.AuthorizationService/Confirm"),
        "names the identity and the method: {}",
        status.message()
    );
    assert_eq!(calls(), 0, "the refused Confirm never reached the handler");
    assert_eq!(
        counted(&provider, &tally, "/switch.v1.AuthorizationService/Confirm").await,
        1,
        "the refusal is counted once"
    );

    // Health is open to any peer of the service CA.
    let health = within(
        "the notifier's health check",
        tonic_health::pb::health_client::HealthClient::new(notifier)
            .check(tonic_health::pb::HealthCheckRequest::default()),
    )
    .await
    .expect("health is open to every authenticated peer")
    .into_inner();
    assert_eq!(
        health.status,
        i32::from(tonic_health::pb::health_check_response::ServingStatus::Serving)
    );

    // The reversal handler may confirm; its client is the kit's own.
    let reversal_handler = GrpcClient::new(format!("https://127.0.0.1:{port}"))
        .internal("reversal-handler", &config)
        .connect_timeout(Duration::from_secs(5))
        .channel()
        .expect("a valid endpoint");
    within("the reversal handler's Confirm", confirm(reversal_handler))
        .await
        .expect("the reversal handler may confirm");
    assert_eq!(calls(), 1);

    // An operator RPC refuses a service, even the gateway, and admits an operator.
    let redrive = |channel: Channel| async move {
        AuthorizationServiceClient::new(channel)
            .redrive(RedriveRequest::default())
            .await
    };
    let gateway = pki.channel(port, Some(pki.pair("services", "terminal-gateway")));
    let status = within("the gateway's Redrive", redrive(gateway))
        .await
        .expect_err("a service may not call an operator RPC");
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(
        status
            .message()
            .contains("spiffe://switch/service/terminal-gateway"),
        "{status}"
    );
    assert_eq!(calls(), 1);
    let operator = pki.channel(
        port,
        Some(pki.pair("operators", dev_certs::DEFAULT_OPERATOR)),
    );
    within("the operator's Redrive", redrive(operator))
        .await
        .expect("an operator may redrive");
    assert_eq!(calls(), 2);

    // A QR merchant refund is an operator's too: the gateway is refused
    // before the handler, an operator reaches it (this one answers
    // UNIMPLEMENTED: there is no QR here).
    let qr_refund = |channel: Channel| async move {
        AuthorizationServiceClient::new(channel)
            .qr_refund(switch_proto::v1::QrRefundRequest::default())
            .await
    };
    let gateway = pki.channel(port, Some(pki.pair("services", "terminal-gateway")));
    let status = within("the gateway's QrRefund", qr_refund(gateway))
        .await
        .expect_err("a service may not refund");
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    let operator = pki.channel(
        port,
        Some(pki.pair("operators", dev_certs::DEFAULT_OPERATOR)),
    );
    let status = within("the operator's QrRefund", qr_refund(operator))
        .await
        .expect_err("the stand-in has no QR");
    assert_eq!(status.code(), Code::Unimplemented, "{status}");

    // A client configured for TLS refuses to dial an http:// URL, which
    // tonic would otherwise speak plaintext to.
    let error = GrpcClient::new(format!("http://127.0.0.1:{port}"))
        .internal("reversal-handler", &config)
        .channel()
        .expect_err("a plaintext URL with internal TLS on is refused");
    assert!(error.to_string().contains("https://"), "{error}");

    stop.send(()).expect("the server is running");
    within("the server to return", server)
        .await
        .expect("the server task")
        .expect("the server stops cleanly");
    let _ = std::fs::remove_dir_all(&pki.dir);
}
