//! Throughput of the QR platform simulator for consumer-presented payments
//! that succeed at once (what `posctl bench --qr` will drive through the
//! switch), over real HTTPS with signed requests and answers, and the delay
//! from each answer to its signed notification at a local hyper receiver.
//!
//! Two runs, in-memory ledger and database ledger (the real PostgreSQL,
//! `DATABASE_URL` or `postgres://postgres@127.0.0.1:5432/test`), each with
//! `QR_BENCH_CONCURRENCY` (64) callers making `QR_BENCH_N` (20,000) payments
//! in all. Each run prints one JSON line: payments per second, the p50/p99
//! of a pay call, and the p50/p99 from the answer's arrival to the
//! notification's (clamped at 0 when the notification came first).
//! `cargo bench -p qr-simulator --bench pay`.

// The report's rates and rounding only; no money is computed here.
#![allow(clippy::float_arithmetic)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use qr_platform::{ClientConfig, Notification, PayRequest, QrClient, TradeState};
use qr_simulator::{LedgerStore, QrSimulatorConfig, Simulator};
use switch_core::{Currency, SystemClock};
use switch_platform::config::Secret;
use switch_platform::db::DatabaseConfig;
use tokio::net::TcpListener;

const KEY: &str = "bench-acquirer-key-0123456789";

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn receiver() -> (String, Arrivals) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/notify", listener.local_addr().expect("address"));
    let arrivals: Arrivals = Arc::default();
    let shared = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let shared = shared.clone();
                        async move {
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let at = Instant::now();
                            if let Ok(n) = serde_json::from_slice::<Notification>(&body) {
                                shared.lock().unwrap().entry(n.out_trade_no).or_insert(at);
                            }
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                                b"{}",
                            ))))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (url, arrivals)
}

async fn run(name: &'static str, ledger: LedgerStore, n: usize, concurrency: usize) {
    let pki = dev_certs::DevPki::generate().expect("pki");
    let dir = std::env::temp_dir().join(format!("qr-bench-{}-{name}", std::process::id()));
    pki.write_dev_layout(&dir, &[]).expect("certs");
    let database = DatabaseConfig {
        url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        schema_prefix: format!("qrbench{}_", std::process::id()),
        ..DatabaseConfig::default()
    };
    let (notify_url, arrivals) = receiver().await;
    let config = QrSimulatorConfig {
        cert_path: dir.join("server.pem"),
        key_path: dir.join("server.key"),
        key: Secret::new(KEY),
        notify_url: Some(notify_url),
        ledger,
        ..QrSimulatorConfig::default()
    };
    let simulator = Simulator::open(&config, &database).await.expect("opens");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(simulator.serve(listener, async {
        let _ = stopped.await;
    }));
    let client = QrClient::new(
        &ClientConfig {
            base_url: format!("https://127.0.0.1:{port}"),
            ca_pem: Some(pki.ca_cert_pem().as_bytes().to_vec()),
            key: KEY.as_bytes().to_vec(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            tolerance_s: 300,
        },
        SystemClock::shared(),
    )
    .expect("client");
    let eur = Currency::parse("EUR").expect("EUR");
    let answered: Arrivals = Arc::default();
    let started = Instant::now();
    let mut callers = Vec::new();
    for caller in 0..concurrency {
        let (client, answered) = (client.clone(), answered.clone());
        callers.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3).expect("histogram");
            for i in (caller..n).step_by(concurrency) {
                let out_trade_no = format!("B{name}{i}");
                let sent = Instant::now();
                let answer = client
                    .pay(&PayRequest {
                        out_trade_no: out_trade_no.clone(),
                        auth_code: "134567890123456789".into(),
                        amount: 1_000,
                        currency: eur,
                        description: None,
                    })
                    .await
                    .expect("paid");
                let at = Instant::now();
                assert_eq!(answer.trade_state, TradeState::Success);
                latency
                    .record(u64::try_from((at - sent).as_micros()).unwrap_or(u64::MAX))
                    .expect("recorded");
                answered.lock().unwrap().insert(out_trade_no, at);
            }
            latency
        }));
    }
    let mut pay = Histogram::<u64>::new(3).expect("histogram");
    for caller in callers {
        pay.add(caller.await.expect("caller")).expect("merged");
    }
    let elapsed = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "notifications missing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut notify = Histogram::<u64>::new(3).expect("histogram");
    {
        let answered = answered.lock().unwrap();
        for (no, arrived) in arrivals.lock().unwrap().iter() {
            let delay = arrived.saturating_duration_since(answered[no]);
            notify
                .record(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX))
                .expect("recorded");
        }
    }
    let _ = stop.send(());
    server.await.expect("joins").expect("stops");
    if ledger == LedgerStore::Database {
        switch_platform::db::drop_schema(
            &database.url,
            &database.schema_for(qr_simulator::SERVICE_NAME),
        )
        .await
        .expect("dropped");
    }
    let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
    println!(
        "{{\"run\":\"{name}\",\"payments\":{n},\"concurrency\":{concurrency},\"per_second\":{:.0},\"pay_p50_ms\":{},\"pay_p99_ms\":{},\"notify_p50_ms\":{},\"notify_p99_ms\":{}}}",
        n as f64 / elapsed.as_secs_f64(),
        ms(pay.value_at_quantile(0.5)),
        ms(pay.value_at_quantile(0.99)),
        ms(notify.value_at_quantile(0.5)),
        ms(notify.value_at_quantile(0.99)),
    );
}

fn main() {
    let n = env_usize("QR_BENCH_N", 20_000);
    let concurrency = env_usize("QR_BENCH_CONCURRENCY", 64);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        run("memory", LedgerStore::Memory, n, concurrency).await;
        run("database", LedgerStore::Database, n, concurrency).await;
    });
}
