//! TLS to the brokers (issue 16, part 1): a real Kafka-protocol broker
//! (the project's nisshi, `NISSHI`, as `make test` exports it) that accepts
//! only TLS, on a port of its own with a fresh in-memory store. A client
//! configured with `kafka.security_protocol = "ssl"` and the broker's CA
//! creates its topic, produces and consumes through the switch's own
//! client settings; one that speaks plaintext, or trusts another CA, gets
//! no metadata.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use switch_platform::kafka::KafkaConfig;

/// The broker process, killed with the test.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("an address")
        .port()
}

fn start_tls_broker(dir: &std::path::Path, port: u16) -> Broker {
    let nisshi = std::env::var("NISSHI").expect(
        "NISSHI names the broker binary (`make test` installs and exports it; \
         `make broker-install` alone installs it)",
    );
    let log = std::fs::File::create(dir.join("broker.log")).expect("the broker log");
    let child = Command::new(nisshi)
        .current_dir(dir)
        .arg("broker")
        .arg("--listener-url")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{port}"))
        .arg("--storage-engine")
        .arg("memory://nisshi/")
        .arg("--cert")
        .arg(dir.join("server.pem"))
        .arg("--key")
        .arg(dir.join("server.key"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the broker starts");
    Broker(child)
}

fn tls_config(port: u16, ca: &std::path::Path) -> KafkaConfig {
    KafkaConfig {
        brokers: format!("127.0.0.1:{port}"),
        topic_prefix: format!("tls-{}.", uuid::Uuid::new_v4().simple()),
        partitions: 1,
        security_protocol: Some("ssl".into()),
        ssl_ca_location: Some(ca.to_path_buf()),
        ..KafkaConfig::default()
    }
}

/// Whether a client with `config` gets the cluster's metadata.
fn reaches(config: &KafkaConfig) -> bool {
    let consumer: BaseConsumer = config.consumer_config("probe").create().expect("a client");
    consumer
        .fetch_metadata(None, Duration::from_secs(3))
        .is_ok()
}

#[tokio::test]
async fn a_tls_client_produces_and_consumes_and_a_plaintext_or_untrusting_one_is_refused() {
    let dir = std::env::temp_dir().join(format!("kafka-tls-{}", uuid::Uuid::new_v4().simple()));
    let pki = dev_certs::DevPki::generate().expect("a PKI");
    pki.write_dev_layout(&dir, dev_certs::DEFAULT_TERMINALS)
        .expect("the broker's certificate");
    let port = free_port();
    let _broker = start_tls_broker(&dir, port);
    let config = tls_config(port, &dir.join("ca.pem"));
    config.validate().expect("a valid TLS configuration");

    let deadline = Instant::now() + Duration::from_secs(60);
    while !reaches(&config) {
        assert!(
            Instant::now() < deadline,
            "the TLS broker never answered; see {}",
            dir.join("broker.log").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    config
        .ensure_topics(&["tls-events"])
        .await
        .expect("the topic is created over TLS");
    let topic = config.topic("tls-events");
    config
        .producer()
        .expect("a TLS producer")
        .send(
            FutureRecord::to(&topic).key("k").payload("over TLS"),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered over TLS");
    let consumer: BaseConsumer = config
        .consumer_config(&format!("reader-{}", uuid::Uuid::new_v4().simple()))
        .create()
        .expect("a TLS consumer");
    consumer.subscribe(&[topic.as_str()]).expect("subscribed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let payload = loop {
        assert!(Instant::now() < deadline, "nothing consumed over TLS");
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("a message");
            break message.payload().map(<[u8]>::to_vec);
        }
    };
    assert_eq!(payload.as_deref(), Some(&b"over TLS"[..]));

    let plaintext = KafkaConfig {
        security_protocol: None,
        ssl_ca_location: None,
        ..config.clone()
    };
    assert!(!reaches(&plaintext), "a plaintext client got metadata");
    let other = dev_certs::DevPki::generate().expect("another PKI");
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, other.ca_cert_pem()).expect("the other CA");
    assert!(
        !reaches(&tls_config(port, &other_ca)),
        "a client trusting another CA got metadata"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
