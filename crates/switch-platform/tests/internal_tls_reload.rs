//! Internal certificates rotate without a restart (issue 16, ADR 27),
//! over real sockets with a service PKI generated here.
//!
//! - A service's certificate and key replaced by a newly issued pair: the
//!   connection opened before keeps working with the certificates it
//!   negotiated, and a new connection presents the new client certificate
//!   and is served the new server certificate (asserted by serial, as the
//!   server and a bare TLS handshake see them).
//! - A broken certificate, or a key that does not match it, fails the
//!   reload, which names the file, and the previous pair stays in use.
//! - The service CA rotated through an overlap bundle: with old and new CA
//!   trusted, a server with a certificate of the new CA serves a client
//!   with one of the old, and the other way round. Once the bundle holds
//!   only the new CA, a certificate of the old is refused at the
//!   handshake, while the connection opened under the old CA still works.
//! - The client verifies the server's certificate for the URL's host.
//! - The server the kit builds from `[internal_tls]` checks its files on
//!   its own, every `reload_interval_ms`, in a mount laid out as the
//!   kubelet writes a Secret (files behind a `..data` symlink swapped in
//!   one rename), and counts each outcome in `internal_tls.reloads`.
//!
//! The first tests call the reload directly; the last polls the counter.
//! Neither waits for a fixed time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dev_certs::{CertifiedKey, DevPki};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use switch_platform::internal_tls::InternalTlsConfig;
use switch_platform::mtls::InternalTls;
use switch_platform::reload::ReloadError;
use switch_platform::service::{ClientTls, GrpcClient, GrpcServer, ServeError};
use switch_proto::v1::issuer_service_client::IssuerServiceClient;
use switch_proto::v1::issuer_service_server::{IssuerService, IssuerServiceServer};
use switch_proto::v1::{
    IssuerAuthorizeRequest, IssuerAuthorizeResponse, IssuerReverseRequest, IssuerReverseResponse,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

const SERVER: &str = "issuer-simulator";
const CLIENT: &str = "authorization";

/// An issuer that answers with the serial of the certificate its caller
/// presented on the connection the call came over.
struct Echo;

#[tonic::async_trait]
impl IssuerService for Echo {
    async fn authorize(
        &self,
        request: Request<IssuerAuthorizeRequest>,
    ) -> Result<Response<IssuerAuthorizeResponse>, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::internal("no peer certificate in the connect info"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::internal("an empty chain"))?;
        Ok(Response::new(IssuerAuthorizeResponse {
            response_code: "00".to_owned(),
            approval_code: serial_of(leaf.as_ref()),
        }))
    }

    async fn reverse(
        &self,
        _request: Request<IssuerReverseRequest>,
    ) -> Result<Response<IssuerReverseResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    hex(cert.raw_serial())
}

fn serial(cert: &CertifiedKey) -> String {
    hex(&cert.serial)
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 20 s"))
}

fn write(path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("a directory");
    std::fs::write(path, contents).expect("written");
}

/// The dev layout of `[internal_tls]` under a directory of its own.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new() -> Layout {
        let dir =
            std::env::temp_dir().join(format!("tls-reload-{}", uuid::Uuid::new_v4().simple()));
        Layout { dir }
    }

    fn config(&self) -> InternalTlsConfig {
        InternalTlsConfig::in_dir(&self.dir)
    }

    fn trust(&self, cas: &[&DevPki]) {
        let bundle: String = cas.iter().map(|ca| ca.ca_cert_pem()).collect();
        write(&self.dir.join("service-ca.pem"), &bundle);
    }

    fn issue(&self, service: &str, pair: &CertifiedKey) {
        let (cert, key) = self.config().identity_of(service);
        write(&cert, &pair.cert_pem);
        write(&key, &pair.key_pem);
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Served {
    port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Served {
    async fn start(server: GrpcServer) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = server.add_service(IssuerServiceServer::new(Echo));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Served { port, stop, task }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A channel of the kit's internal client on `tls`.
    fn channel(&self, tls: &InternalTls) -> Channel {
        GrpcClient::new(self.url())
            .internal_tls(tls.clone())
            .connect_timeout(Duration::from_secs(5))
            .request_timeout(Duration::from_secs(10))
            .channel()
            .expect("a valid endpoint")
    }

    async fn stop(self) {
        self.stop.send(()).expect("the server is running");
        within("the server to return", self.task)
            .await
            .expect("the server task")
            .expect("the server stops cleanly");
    }
}

/// The serial of the certificate the server saw from the caller.
async fn caller_serial(channel: Channel) -> Result<String, Status> {
    let response = within(
        "a call",
        IssuerServiceClient::new(channel).authorize(IssuerAuthorizeRequest::default()),
    )
    .await?;
    Ok(response.into_inner().approval_code)
}

/// The serial of the certificate the server presents to a new connection,
/// from a bare TLS handshake trusting `ca_pem` and presenting `client`.
async fn served_serial(port: u16, ca_pem: &str, client: &CertifiedKey) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.expect("a CA")).expect("a usable CA");
    }
    let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("a chain");
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).expect("a key");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("a client identity");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = within(
        "the TCP connection",
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .expect("connected");
    let tls = within(
        "the TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(
            ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            tcp,
        ),
    )
    .await
    .expect("the server's certificate is trusted");
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .expect("the server presented a certificate");
    serial_of(leaf.as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pair_is_used_by_new_connections_and_a_broken_one_is_not() {
    let layout = Layout::new();
    let ca = DevPki::generate_service_ca().expect("a service CA");
    layout.trust(&[&ca]);
    let server_1 = ca.service_cert(SERVER).expect("issued");
    let client_1 = ca.service_cert(CLIENT).expect("issued");
    layout.issue(SERVER, &server_1);
    layout.issue(CLIENT, &client_1);
    let config = layout.config();
    let server_tls = InternalTls::load(SERVER, &config).expect("the server's files load");
    let client_tls = InternalTls::load(CLIENT, &config).expect("the client's files load");
    let served = Served::start(
        GrpcServer::new(SERVER)
            .expect("reflection builds")
            .internal_tls(server_tls.clone()),
    )
    .await;
    let open = served.channel(&client_tls);
    assert_eq!(
        caller_serial(open.clone()).await.expect("served"),
        serial(&client_1)
    );
    assert_eq!(
        served_serial(served.port, ca.ca_cert_pem(), &client_1).await,
        serial(&server_1)
    );

    // Both services get a newly issued pair.
    let server_2 = ca.service_cert(SERVER).expect("issued");
    let client_2 = ca.service_cert(CLIENT).expect("issued");
    layout.issue(SERVER, &server_2);
    layout.issue(CLIENT, &client_2);
    let mut reloads = server_tls.reloads();
    assert!(
        server_tls
            .reload_if_changed()
            .expect("the new server pair loads")
    );
    assert!(
        client_tls
            .reload_if_changed()
            .expect("the new client pair loads")
    );
    assert!(reloads.has_changed().expect("the state is alive"));
    reloads.mark_unchanged();
    assert!(
        !server_tls.reload_if_changed().expect("nothing changed"),
        "unchanged files are not loaded again"
    );

    // The open connection is kept, with the certificate it presented.
    assert_eq!(
        caller_serial(open.clone())
            .await
            .expect("the open connection still works"),
        serial(&client_1)
    );
    // A new connection presents the new certificate and is served the new one.
    assert_eq!(
        caller_serial(served.channel(&client_tls))
            .await
            .expect("served"),
        serial(&client_2)
    );
    assert_eq!(
        served_serial(served.port, ca.ca_cert_pem(), &client_2).await,
        serial(&server_2)
    );

    // A truncated certificate does not load; the previous pair stays.
    let (cert_path, key_path) = config.identity_of(SERVER);
    write(
        &cert_path,
        &server_2.cert_pem[..server_2.cert_pem.len() / 2],
    );
    let error = server_tls
        .reload_if_changed()
        .expect_err("half a certificate does not load");
    assert!(
        error.to_string().contains(&cert_path.display().to_string()),
        "names the file: {error}"
    );
    assert!(!reloads.has_changed().expect("alive"), "no new state");
    assert_eq!(
        served_serial(served.port, ca.ca_cert_pem(), &client_2).await,
        serial(&server_2)
    );
    // So does a whole certificate beside another pair's key (a rotation
    // caught between its two writes).
    let server_3 = ca.service_cert(SERVER).expect("issued");
    write(&cert_path, &server_3.cert_pem);
    let error = server_tls
        .reload_if_changed()
        .expect_err("a certificate with another key does not load");
    assert!(
        matches!(&error, ReloadError::Invalid { path, .. } if *path == cert_path),
        "{error}"
    );
    assert_eq!(
        served_serial(served.port, ca.ca_cert_pem(), &client_2).await,
        serial(&server_2)
    );
    assert_eq!(
        caller_serial(served.channel(&client_tls))
            .await
            .expect("new connections are still served"),
        serial(&client_2)
    );
    // The key arrives: the next check loads the pair.
    write(&key_path, &server_3.key_pem);
    assert!(server_tls.reload_if_changed().expect("the pair loads"));
    assert_eq!(
        served_serial(served.port, ca.ca_cert_pem(), &client_2).await,
        serial(&server_3)
    );
    // Another service's pair (a mix-up in a Secret) would give this
    // process that service's rights: refused, the previous pair stays.
    let gateway = ca.service_cert("terminal-gateway").expect("issued");
    write(&cert_path, &gateway.cert_pem);
    write(&key_path, &gateway.key_pem);
    let error = server_tls
        .reload_if_changed()
        .expect_err("another identity's certificate does not load");
    assert!(
        matches!(&error, ReloadError::Invalid { path, reason } if *path == cert_path && reason.contains("terminal-gateway")),
        "{error}"
    );
    assert_eq!(
        served_serial(served.port, ca.ca_cert_pem(), &client_2).await,
        serial(&server_3)
    );
    assert_eq!(
        caller_serial(open).await.expect("still open"),
        serial(&client_1)
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_ca_rotates_through_an_overlap_bundle() {
    let layout = Layout::new();
    let old = DevPki::generate_service_ca().expect("the old service CA");
    let new = DevPki::generate_service_ca().expect("the new service CA");
    layout.trust(&[&old]);
    let server_old = old.service_cert(SERVER).expect("issued");
    let client_old = old.service_cert(CLIENT).expect("issued");
    layout.issue(SERVER, &server_old);
    layout.issue(CLIENT, &client_old);
    let config = layout.config();
    let server_tls = InternalTls::load(SERVER, &config).expect("loads");
    let client_tls = InternalTls::load(CLIENT, &config).expect("loads");
    let served = Served::start(
        GrpcServer::new(SERVER)
            .expect("reflection builds")
            .internal_tls(server_tls.clone()),
    )
    .await;
    let open = served.channel(&client_tls);
    assert_eq!(
        caller_serial(open.clone()).await.expect("served"),
        serial(&client_old)
    );

    // A server certificate of the new CA before anyone trusts it: the
    // client refuses it, so a CA rotates by trusting first.
    let server_new = new.service_cert(SERVER).expect("issued");
    layout.issue(SERVER, &server_new);
    assert!(server_tls.reload_if_changed().expect("loads"));
    let refused = caller_serial(served.channel(&client_tls))
        .await
        .expect_err("a server of an untrusted CA is refused");
    assert_ne!(refused.code(), Code::Ok);
    layout.issue(SERVER, &server_old);
    assert!(server_tls.reload_if_changed().expect("loads"));

    // Both CAs trusted everywhere, then the server moves to the new CA:
    // the client, still presenting its old certificate, reaches it.
    layout.trust(&[&old, &new]);
    assert!(server_tls.reload_if_changed().expect("the bundle loads"));
    assert!(client_tls.reload_if_changed().expect("the bundle loads"));
    layout.issue(SERVER, &server_new);
    assert!(server_tls.reload_if_changed().expect("loads"));
    let both = format!("{}{}", old.ca_cert_pem(), new.ca_cert_pem());
    assert_eq!(
        served_serial(served.port, &both, &client_old).await,
        serial(&server_new)
    );
    assert_eq!(
        caller_serial(served.channel(&client_tls))
            .await
            .expect("an old client certificate, a new server certificate"),
        serial(&client_old)
    );
    // Then the client moves too.
    let client_new = new.service_cert(CLIENT).expect("issued");
    layout.issue(CLIENT, &client_new);
    assert!(client_tls.reload_if_changed().expect("loads"));
    assert_eq!(
        caller_serial(served.channel(&client_tls))
            .await
            .expect("both on the new CA"),
        serial(&client_new)
    );

    // The old CA leaves the bundle.
    layout.trust(&[&new]);
    assert!(server_tls.reload_if_changed().expect("loads"));
    assert!(client_tls.reload_if_changed().expect("loads"));
    // A new connection with a certificate of the old CA fails the handshake.
    let leftovers = Layout::new();
    leftovers.trust(&[&old, &new]);
    leftovers.issue(CLIENT, &client_old);
    let (cert, key) = leftovers.config().identity_of(CLIENT);
    let stale = GrpcClient::new(served.url())
        .connect_timeout(Duration::from_secs(5))
        .tls(Some(ClientTls {
            ca_path: leftovers.config().ca_path,
            identity: Some((cert, key)),
            domain_name: None,
        }))
        .channel()
        .expect("a valid endpoint");
    let refused = caller_serial(stale)
        .await
        .expect_err("a certificate of the old CA is refused");
    assert_ne!(
        refused.code(),
        Code::PermissionDenied,
        "refused at the handshake, not by the access table: {refused}"
    );
    assert_ne!(refused.code(), Code::Ok);
    assert_eq!(
        caller_serial(served.channel(&client_tls))
            .await
            .expect("the new CA's certificates are served"),
        serial(&client_new)
    );
    // The connection opened under the old CA, before any of this, is kept.
    assert_eq!(
        caller_serial(open).await.expect("still open"),
        serial(&client_old)
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_checks_the_servers_name_against_the_url() {
    let layout = Layout::new();
    let ca = DevPki::generate_service_ca().expect("a service CA");
    layout.trust(&[&ca]);
    layout.issue(CLIENT, &ca.service_cert(CLIENT).expect("issued"));
    // Chains to the trusted CA and names the service, but another host.
    layout.issue(
        SERVER,
        &ca.service_cert_for_hosts(SERVER, &["elsewhere"])
            .expect("issued"),
    );
    let config = layout.config();
    let server_tls = InternalTls::load(SERVER, &config).expect("loads");
    let client_tls = InternalTls::load(CLIENT, &config).expect("loads");
    let served = Served::start(
        GrpcServer::new(SERVER)
            .expect("reflection builds")
            .internal_tls(server_tls.clone()),
    )
    .await;
    let refused = caller_serial(served.channel(&client_tls))
        .await
        .expect_err("a certificate for another host is refused");
    assert_ne!(refused.code(), Code::Ok);

    // The service's own certificate names `localhost`: a URL with that
    // host is verified by name and served.
    let pair = ca.service_cert(SERVER).expect("issued");
    layout.issue(SERVER, &pair);
    assert!(server_tls.reload_if_changed().expect("loads"));
    let by_name = GrpcClient::new(format!("https://localhost:{}", served.port))
        .internal_tls(client_tls.clone())
        .connect_timeout(Duration::from_secs(5))
        .channel()
        .expect("a valid endpoint");
    caller_serial(by_name)
        .await
        .expect("a certificate naming the URL's host is served");
    served.stop().await;
}

/// Keeps the last value of `internal_tls.reloads` by service and outcome.
#[derive(Debug, Clone, Default)]
struct Tally {
    reloads: Arc<Mutex<HashMap<(String, String), u64>>>,
}

impl PushMetricExporter for Tally {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let mut reloads = self.reloads.lock().expect("tally");
        for metric in metrics.scope_metrics().flat_map(|scope| scope.metrics()) {
            if metric.name() != "internal_tls.reloads" {
                continue;
            }
            if let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() {
                for point in sum.data_points() {
                    let attribute = |key: &str| {
                        point
                            .attributes()
                            .find(|kv| kv.key.as_str() == key)
                            .map(|kv| kv.value.as_str().into_owned())
                            .unwrap_or_default()
                    };
                    reloads.insert((attribute("service"), attribute("outcome")), point.value());
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

impl Tally {
    /// Waits until `outcome` has been counted `count` times for `service`,
    /// flushing the meter on each look.
    async fn until(&self, provider: &SdkMeterProvider, service: &str, outcome: &str, count: u64) {
        let key = (service.to_owned(), outcome.to_owned());
        within(&format!("{count} reloads {outcome} of {service}"), async {
            loop {
                let provider = provider.clone();
                tokio::task::spawn_blocking(move || provider.force_flush())
                    .await
                    .expect("the flush task")
                    .expect("metrics flush");
                let seen = self.reloads.lock().expect("tally").get(&key).copied();
                if seen.unwrap_or(0) >= count {
                    return;
                }
                // Between looks at the counter (the watch checks every
                // 20 ms), not a wait for the reload itself.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}

/// A Secret mounted the way the kubelet writes it: `tls.crt`, `tls.key`
/// and `ca.crt` are symlinks into `..data`, itself a symlink to a
/// directory of the current version, replaced in one rename.
struct SecretMount {
    dir: PathBuf,
    version: u32,
}

impl SecretMount {
    fn new() -> SecretMount {
        let dir = std::env::temp_dir().join(format!("tls-mount-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a directory");
        SecretMount { dir, version: 0 }
    }

    fn update(&mut self, ca_pem: &str, cert_pem: &str, key_pem: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let target = self.dir.join(&version);
        std::fs::create_dir_all(&target).expect("a version directory");
        for (name, contents) in [
            ("ca.crt", ca_pem),
            ("tls.crt", cert_pem),
            ("tls.key", key_pem),
        ] {
            std::fs::write(target.join(name), contents).expect("written");
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                    .expect("the file's link");
            }
        }
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).expect("the staged link");
        std::fs::rename(&staged, self.dir.join("..data")).expect("swapped");
    }

    fn config(&self, reload_interval_ms: u64) -> InternalTlsConfig {
        InternalTlsConfig {
            plaintext_for_lab: false,
            ca_path: self.dir.join("ca.crt"),
            cert_path: self.dir.join("tls.crt"),
            key_path: self.dir.join("tls.key"),
            reload_interval_ms,
        }
    }
}

impl Drop for SecretMount {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kits_server_reloads_a_rotated_secret_on_its_own_and_counts_it() {
    let tally = Tally::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(tally.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());

    let ca = DevPki::generate_service_ca().expect("a service CA");
    let client = ca.service_cert(CLIENT).expect("issued");
    let first = ca.service_cert(SERVER).expect("issued");
    let mut mount = SecretMount::new();
    mount.update(ca.ca_cert_pem(), &first.cert_pem, &first.key_pem);
    let config = mount.config(20);
    config
        .validate_for(SERVER)
        .expect("the mount has every file");
    let served = Served::start(
        GrpcServer::new(SERVER)
            .expect("reflection builds")
            .internal(SERVER, &config),
    )
    .await;
    assert_eq!(
        served_serial(served.port, ca.ca_cert_pem(), &client).await,
        serial(&first)
    );

    let second = ca.service_cert(SERVER).expect("issued");
    mount.update(ca.ca_cert_pem(), &second.cert_pem, &second.key_pem);
    tally.until(&provider, SERVER, "ok", 1).await;
    assert_eq!(
        served_serial(served.port, ca.ca_cert_pem(), &client).await,
        serial(&second)
    );

    mount.update(ca.ca_cert_pem(), "not a certificate", &second.key_pem);
    tally.until(&provider, SERVER, "failed", 1).await;
    assert_eq!(
        served_serial(served.port, ca.ca_cert_pem(), &client).await,
        serial(&second),
        "the previous certificate stays in use"
    );
    served.stop().await;
}
