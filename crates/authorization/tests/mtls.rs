//! Authorization and the issuer simulator with mutual TLS on both hops,
//! on the real PostgreSQL (ADR 27). The gateway's certificate authorizes
//! a sale, so the authorization → issuer hop works with authorization's
//! own certificate. The notifier's certificate calling `Confirm` is refused
//! PERMISSION_DENIED naming it, and the journal is unchanged. The reversal
//! handler's certificate confirms. An operator RPC refuses a service and
//! admits the operator. The broker is not needed: the outbox keeps the
//! events.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use switch_platform::db::DatabaseConfig;
use switch_platform::internal_tls::InternalTlsConfig;
use switch_platform::kafka::KafkaConfig;
use switch_platform::service::{ClientTls, GrpcClient};
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use switch_proto::v1::{
    self as pb, AuthorizeRequest, ConfirmRequest, GetAuthorizationRequest, ListDeadLetteredRequest,
    TerminalKey, get_authorization_request::By,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

fn write_pki(dir: &Path) {
    dev_certs::DevPki::generate_service_ca()
        .expect("a service CA")
        .write_service_layout(dir, dev_certs::SERVICES, &[dev_certs::DEFAULT_OPERATOR])
        .expect("the service layout is written");
}

/// A client of authorization at `port` presenting `sub/name.pem`.
fn as_identity(
    dir: &Path,
    port: u16,
    sub: &str,
    name: &str,
) -> AuthorizationServiceClient<Channel> {
    let pair = |ext: &str| dir.join(sub).join(format!("{name}.{ext}"));
    let channel = GrpcClient::new(format!("https://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(10))
        .tls(Some(ClientTls {
            ca_path: dir.join("service-ca.pem"),
            identity: Some((pair("pem"), pair("key"))),
            domain_name: None,
        }))
        .channel()
        .expect("a valid endpoint");
    AuthorizationServiceClient::new(channel)
}

async fn status_of(
    client: &mut AuthorizationServiceClient<Channel>,
    transaction_id: &str,
) -> pb::AuthorizationStatus {
    client
        .get_authorization(GetAuthorizationRequest {
            by: Some(By::TransactionId(transaction_id.to_owned())),
        })
        .await
        .expect("the record is read")
        .into_inner()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admitted_identities_reach_authorization_and_a_refusal_changes_nothing() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let suffix = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let database = DatabaseConfig {
        url: url.clone(),
        schema_prefix: format!("m{suffix}_"),
        max_connections: 4,
        ..DatabaseConfig::default()
    };
    let schema = database.schema_for(authorization::SERVICE_NAME);
    let dir: PathBuf = std::env::temp_dir().join(format!("authz-mtls-{suffix}"));
    write_pki(&dir);
    let tls = InternalTlsConfig::in_dir(&dir);
    let stop = CancellationToken::new();

    let issuer_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = issuer_listener.local_addr().unwrap();
    let issuer_task = tokio::spawn({
        let (stop, tls) = (stop.clone(), tls.clone());
        async move {
            issuer_simulator::serve_simulator(
                issuer_simulator::Simulator::new(),
                &tls,
                issuer_listener,
                stop.cancelled_owned(),
            )
            .await
            .expect("the issuer simulator serves");
        }
    });
    let config = authorization::AuthorizationConfig {
        issuer_endpoint: format!("https://{issuer}"),
        ..Default::default()
    };
    let kafka = KafkaConfig {
        topic_prefix: format!("m{suffix}."),
        ..KafkaConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let authorization_task = tokio::spawn({
        let (stop, tls) = (stop.clone(), tls.clone());
        async move {
            authorization::serve(
                &database,
                &kafka,
                &tls,
                &config,
                listener,
                stop.cancelled_owned(),
            )
            .await
            .expect("authorization serves");
        }
    });

    let mut gateway = as_identity(&dir, port, "services", "terminal-gateway");
    let sale = AuthorizeRequest {
        key: Some(TerminalKey {
            terminal_id: "TERM0001".into(),
            stan: "000201".into(),
            local_date: "2026-12-02".into(),
        }),
        merchant_id: "MERCHANT0000001".into(),
        pan: "4111111111111111".into(),
        expiry: "3012".into(),
        amount: Some(pb::Money {
            minor_units: 1_050,
            currency: "EUR".into(),
        }),
        last_completed_stan: String::new(),
        channel: "card".into(),
    };
    // Until authorization has migrated and serves, calls fail UNAVAILABLE.
    let deadline = Instant::now() + Duration::from_secs(60);
    let approved = loop {
        match gateway.authorize(sale.clone()).await {
            Ok(answer) => break answer.into_inner().authorization.expect("a record"),
            Err(status) if status.code() == Code::Unavailable => {
                assert!(Instant::now() < deadline, "authorization starts: {status}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the gateway may authorize: {status}"),
        }
    };
    assert_eq!(
        approved.status(),
        pb::AuthorizationStatus::Approved,
        "the issuer answered over its own mutual TLS hop"
    );
    let id = approved.transaction_id.clone();
    let confirm = ConfirmRequest {
        transaction_id: id.clone(),
        evidence: pb::Evidence::TerminalAcknowledgement.into(),
    };

    let mut notifier = as_identity(&dir, port, "services", "notifier");
    let status = notifier
        .confirm(confirm.clone())
        .await
        .expect_err("the notifier may not confirm");
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(
        status
            .message()
            .contains("spiffe://switch/service/notifier")
            && status.message().contains("Confirm"),
        "{status}"
    );
    assert_eq!(
        status_of(&mut gateway, &id).await,
        pb::AuthorizationStatus::Approved,
        "the refused Confirm changed nothing"
    );

    let mut reversal_handler = as_identity(&dir, port, "services", "reversal-handler");
    let confirmed = reversal_handler
        .confirm(confirm)
        .await
        .expect("the reversal handler may confirm")
        .into_inner();
    assert_eq!(confirmed.status(), pb::AuthorizationStatus::Confirmed);

    let list = ListDeadLetteredRequest {
        limit: 10,
        cursor: String::new(),
    };
    let status = gateway
        .list_dead_lettered(list.clone())
        .await
        .expect_err("a service may not call an operator RPC");
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    let mut operator = as_identity(&dir, port, "operators", dev_certs::DEFAULT_OPERATOR);
    operator
        .list_dead_lettered(list)
        .await
        .expect("an operator lists dead letters");

    drop((gateway, notifier, reversal_handler, operator));
    stop.cancel();
    authorization_task.await.unwrap();
    issuer_task.await.unwrap();
    switch_platform::db::drop_schema(&url, &schema)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
