//! The simulator logs one debug line per request, and never the PAN. Own test
//! binary, because it installs a global tracing subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switch_proto::v1::issuer_service_client::IssuerServiceClient;
use switch_proto::v1::{IssuerAuthorizeRequest, Money};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_the_request_but_never_the_pan() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(issuer_simulator::serve(listener, async {
        let _ = stopped.await;
    }));
    let mut client = IssuerServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let response = client
        .authorize(IssuerAuthorizeRequest {
            rrn: "777777777777".to_owned(),
            stan: "000123".to_owned(),
            terminal_id: "TERM0001".to_owned(),
            merchant_id: "MERCHANT0000001".to_owned(),
            pan: "4000056655665556".to_owned(),
            expiry: "2812".to_owned(),
            amount: Some(Money {
                minor_units: 1051,
                currency: "EUR".to_owned(),
            }),
        })
        .await
        .expect("authorize")
        .into_inner();
    assert_eq!(response.response_code, "51");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("server result");

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    let line = logs
        .lines()
        .find(|line| line.contains("rrn=777777777777"))
        .unwrap_or_else(|| panic!("no request line in:\n{logs}"));
    assert!(line.contains("stan=000123"), "{line}");
    assert!(line.contains("amount=1051 EUR"), "{line}");
    assert!(
        line.contains("decision=\"51\"") || line.contains("decision=51"),
        "{line}"
    );
    assert!(line.contains("5556"), "last four digits expected: {line}");
    assert!(!logs.contains("4000056655665556"), "PAN leaked:\n{logs}");
    assert!(!logs.contains("400005"), "PAN prefix leaked:\n{logs}");
    println!("{line}");
}
