//! `posctl bench --qr --late-terminal T`: beside the QR load, S3 under
//! load. Every `--late-interval` one terminal starts a payment the shopper
//! confirms late (the simulator's amount rule `…20`) and does not wait for
//! it, so the platform's word arrives after the terminal stopped waiting
//! and the merchant's policy resolves it with a webhook. A local endpoint
//! (`webhooks::serve`) plays the merchant; each webhook is timed from the
//! moment the platform paid (its ledger's `paid_at_ms`, the instant it
//! sends its notification) to its arrival. The target is a p99 of
//! at most a second.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use serde_json::Value;
use switch_core::{Clock, SystemClock, TerminalId};
use switch_proto::v1::{Money, QrPayRequest};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsConnector, rustls};

use crate::bench::{Summary, stan_at};
use crate::connect::{GatewayOptions, connect};
use crate::webhooks;

/// The target for the platform's word → merchant's webhook.
pub const TARGET_P99_MS: u64 = 1_000;

/// A scanned payment code the QR simulator accepts; only ever sent.
const PROBE_PAYMENT_CODE: &str = "134567890123456789";

/// What the late payments and their endpoint are.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub terminal: TerminalId,
    pub interval: Duration,
    pub webhook_listen: SocketAddr,
    pub webhook_secret: String,
    /// The QR platform simulator (`https://host:port`), for its ledger.
    pub platform_url: String,
    pub certs_dir: PathBuf,
    pub local_date: String,
    pub stan_start: u32,
    /// How long after the last late payment its webhook may take.
    pub settle: Duration,
}

/// The `n`-th late payment's amount: the rule `…20`, whole units apart.
pub fn late_amount(n: u64) -> i64 {
    1_020 + i64::try_from(n % 50).unwrap_or(0) * 100
}

/// A webhook as the endpoint saw it.
#[derive(Debug, Clone)]
struct Arrival {
    kind: String,
    at_ms: i64,
    signature_valid: bool,
}

/// The late payments under way and the endpoint receiving their webhooks.
pub struct Probe {
    config: ProbeConfig,
    stop: Arc<AtomicBool>,
    sender: JoinHandle<Sent>,
    server: JoinHandle<()>,
    collector: JoinHandle<()>,
    arrivals: Arc<Mutex<HashMap<String, Arrival>>>,
}

#[derive(Debug, Default)]
struct Sent {
    orders: Vec<String>,
    /// Answers other than `in_progress`, and failed calls.
    unexpected: Vec<String>,
}

fn now_ms() -> i64 {
    let now = SystemClock.now();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Binds the endpoint and starts sending late payments.
pub async fn start(options: &GatewayOptions, config: ProbeConfig) -> Result<Probe> {
    if config.interval.is_zero() {
        bail!("--late-interval must be more than zero");
    }
    let listener = TcpListener::bind(config.webhook_listen)
        .await
        .with_context(|| format!("cannot listen for webhooks on {}", config.webhook_listen))?;
    let (server, mut deliveries) = webhooks::serve(listener, &config.webhook_secret);
    let arrivals: Arc<Mutex<HashMap<String, Arrival>>> = Arc::default();
    let collector = {
        let arrivals = Arc::clone(&arrivals);
        tokio::spawn(async move {
            while let Some(delivery) = deliveries.recv().await {
                // Stamped as it arrives: the channel hands it over at once.
                let at_ms = now_ms();
                let Ok(body) = serde_json::from_slice::<Value>(&delivery.body) else {
                    continue;
                };
                let Some(order) = body["data"]["order_id"].as_str() else {
                    continue;
                };
                let arrival = Arrival {
                    kind: body["type"].as_str().unwrap_or_default().to_owned(),
                    at_ms,
                    signature_valid: delivery.verdict.is_ok(),
                };
                if let Ok(mut arrivals) = arrivals.lock() {
                    // A redelivery does not make the first one later.
                    arrivals.entry(order.to_owned()).or_insert(arrival);
                }
            }
        })
    };
    let mut client = connect(options, &config.terminal).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, config) = (Arc::clone(&stop), config.clone());
        tokio::spawn(async move {
            let mut sent = Sent::default();
            let mut ticks = tokio::time::interval(config.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                let request = QrPayRequest {
                    terminal_id: config.terminal.to_string(),
                    stan: stan_at(config.stan_start, n),
                    local_date: config.local_date.clone(),
                    merchant_id: String::new(),
                    payment_code: PROBE_PAYMENT_CODE.to_owned(),
                    amount: Some(Money {
                        minor_units: late_amount(n),
                        currency: "EUR".to_owned(),
                    }),
                };
                n += 1;
                match client.qr_pay(request).await {
                    Ok(answer) => {
                        let payment = answer.into_inner().payment.unwrap_or_default();
                        if payment.answer == "in_progress" {
                            sent.orders.push(payment.order_id);
                        } else {
                            sent.unexpected.push(format!(
                                "late payment answered {} ({})",
                                payment.answer, payment.state
                            ));
                        }
                    }
                    Err(status) => sent.unexpected.push(format!("late payment: {status}")),
                }
            }
            sent
        })
    };
    Ok(Probe {
        config,
        stop,
        sender,
        server,
        collector,
        arrivals,
    })
}

/// What the late payments showed.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub terminal: String,
    pub late_payments: usize,
    pub webhooks: usize,
    /// By webhook type (`payment.confirmed` under `confirm`, …).
    pub kinds: BTreeMap<String, usize>,
    pub invalid_signatures: usize,
    /// Late payments without a webhook within the settle time.
    pub missing: usize,
    /// With a webhook but no paid time in the platform's ledger.
    pub unpaid: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    pub target_p99_ms: u64,
    pub meets_target: bool,
    pub errors: Vec<String>,
}

impl LatencyReport {
    pub fn text(&self) -> String {
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        [
            format!(
                "late QR payments  {} on {} ({} webhooks: {}; {} missing, {} unpaid, {} bad signatures)",
                self.late_payments,
                self.terminal,
                self.webhooks,
                kinds.join(", "),
                self.missing,
                self.unpaid,
                self.invalid_signatures
            ),
            format!(
                "paid -> webhook (ms)  p50 {}  p99 {}  max {}  (target p99 <= {}: {})",
                self.p50_ms,
                self.p99_ms,
                self.max_ms,
                self.target_p99_ms,
                if self.meets_target { "met" } else { "NOT met" }
            ),
        ]
        .join("\n")
    }
}

impl Probe {
    /// Stops sending, waits (polling, up to the settle time) for every late
    /// payment's webhook, and times each against the platform's ledger.
    pub async fn finish(self) -> Result<LatencyReport> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.await.context("the late payments' sender")?;
        let deadline = tokio::time::Instant::now() + self.config.settle;
        let arrived = || -> HashMap<String, Arrival> {
            self.arrivals.lock().map(|a| a.clone()).unwrap_or_default()
        };
        loop {
            let arrivals = arrived();
            let all = sent.orders.iter().all(|order| arrivals.contains_key(order));
            if all || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let arrivals = arrived();
        self.server.abort();
        self.collector.abort();

        let mut ledger = Ledger::connect(&self.config).await?;
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000, 3)
            .context("cannot create latency histogram")?;
        let (mut webhooks, mut missing, mut unpaid, mut invalid) = (0, 0, 0, 0);
        let mut kinds = BTreeMap::new();
        for order in &sent.orders {
            let Some(arrival) = arrivals.get(order) else {
                missing += 1;
                continue;
            };
            webhooks += 1;
            *kinds.entry(arrival.kind.clone()).or_insert(0) += 1;
            if !arrival.signature_valid {
                invalid += 1;
            }
            match ledger.paid_at_ms(order).await? {
                Some(paid_at) => {
                    let took = u64::try_from(arrival.at_ms.saturating_sub(paid_at)).unwrap_or(0);
                    histogram.saturating_record(took.max(1));
                }
                None => unpaid += 1,
            }
        }
        let at = |q: f64| {
            if histogram.is_empty() {
                0
            } else {
                histogram.value_at_quantile(q)
            }
        };
        let p99_ms = at(0.99);
        Ok(LatencyReport {
            terminal: self.config.terminal.to_string(),
            late_payments: sent.orders.len(),
            webhooks,
            kinds,
            invalid_signatures: invalid,
            missing,
            unpaid,
            p50_ms: at(0.50),
            p99_ms,
            max_ms: if histogram.is_empty() {
                0
            } else {
                histogram.max()
            },
            target_p99_ms: TARGET_P99_MS,
            meets_target: !sent.orders.is_empty()
                && missing == 0
                && unpaid == 0
                && p99_ms <= TARGET_P99_MS,
            errors: sent.unexpected.into_iter().take(5).collect(),
        })
    }
}

/// `GET /control/ledger/{order}` on the simulator over a kept-alive
/// HTTPS connection, opened again when the simulator closed it.
struct Ledger {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
    port: u16,
    connector: TlsConnector,
}

/// `https://host:port` → (host, port).
fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("--qr-platform {url:?} is not an https URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .map_or((authority, "443"), |(h, p)| (h, p));
    let port = port
        .parse()
        .with_context(|| format!("--qr-platform {url:?}: bad port"))?;
    if host.is_empty() {
        bail!("--qr-platform {url:?} names no host");
    }
    Ok((host.to_owned(), port))
}

impl Ledger {
    async fn open(
        connector: &TlsConnector,
        host: &str,
        port: u16,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
        let tcp = TcpStream::connect((host, port))
            .await
            .with_context(|| format!("cannot reach the QR platform at {host}:{port}"))?;
        let stream = connector
            .connect(ServerName::try_from(host.to_owned())?, tcp)
            .await
            .context("TLS handshake with the QR platform")?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the QR platform")?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn connect(config: &ProbeConfig) -> Result<Ledger> {
        let (host, port) = host_port(&config.platform_url)?;
        let ca_path = config.certs_dir.join("ca.pem");
        let ca = std::fs::read(&ca_path)
            .with_context(|| format!("cannot read {}", ca_path.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(tls));
        let sender = Self::open(&connector, &host, port).await?;
        Ok(Ledger {
            sender,
            host,
            port,
            connector,
        })
    }

    async fn paid_at_ms(&mut self, order: &str) -> Result<Option<i64>> {
        if self.sender.ready().await.is_err() {
            self.sender = Self::open(&self.connector, &self.host, self.port).await?;
            self.sender
                .ready()
                .await
                .context("the QR platform's ledger connection")?;
        }
        let request = hyper::Request::get(format!("/control/ledger/{order}"))
            .header(hyper::header::HOST, &self.host)
            .body(Empty::new())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("the QR platform's ledger")?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("the QR platform's ledger answered {status} for {order}");
        }
        let entry: Value = serde_json::from_slice(&body).context("a ledger entry")?;
        Ok(entry["paid_at_ms"].as_i64())
    }
}

/// The QR load's summary with the late payments' report beside it.
pub fn print(summary: &Summary, report: &LatencyReport, json: bool) -> Result<()> {
    if json {
        let mut value = serde_json::to_value(summary)?;
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "notification_to_webhook".to_owned(),
                serde_json::to_value(report)?,
            );
        }
        println!("{value}");
    } else {
        println!("{}\n{}", summary.text(), report.text());
    }
    for message in summary.error_messages.iter().chain(&report.errors) {
        eprintln!("  {message}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_amounts_follow_the_simulators_late_rule() {
        for n in [0, 1, 49, 50, 1_000_003] {
            let amount = late_amount(n);
            assert_eq!(amount % 100, 20, "{amount}");
            assert!(amount >= 1_020);
        }
        assert_ne!(late_amount(0), late_amount(1));
    }

    #[test]
    fn the_platform_url_names_host_and_port() {
        assert_eq!(
            host_port("https://localhost:50080").unwrap(),
            ("localhost".to_owned(), 50080)
        );
        assert_eq!(
            host_port("https://qr.example/").unwrap(),
            ("qr.example".to_owned(), 443)
        );
        assert!(host_port("http://localhost:50080").is_err());
        assert!(host_port("https://:1").is_err());
    }
}
