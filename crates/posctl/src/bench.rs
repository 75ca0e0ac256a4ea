//! Load generator: sends Sale requests from several terminal identities, either
//! closed-loop (N workers, each sending its next request when the previous one
//! answered) or open-loop at a fixed rate, and reports counts, throughput and
//! latency percentiles from an HDR histogram. Sales are not acknowledged
//! unless asked (`--ack`): the benchmark measures authorizations, and the
//! latency recorded is always the Sale call's alone.
//!
//! The sales go to the gRPC edge, or with `--iso` as 0200s to one of the
//! gateway's ISO 8583 listeners: there each worker holds its own TLS
//! connection speaking for one terminal (a connection carries one
//! terminal's certificate) and sends one message at a time, closed loop,
//! so `--concurrency` means the same on both edges. The acknowledgement
//! is then the 0220 completion advice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use switch_core::{Currency, ResponseCode, TerminalId};
use switch_proto::v1::{
    AcknowledgeRequest, AuthorizationStatus, Money, QrAcknowledgeRequest, QrPayRequest, SaleRequest,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::connect::{GatewayOptions, TerminalClient, connect};
use crate::iso::{self, IsoSale, IsoTarget};
use crate::output::{should_acknowledge, status_line};

/// Luhn-valid test card numbers used round-robin.
pub const TEST_PANS: &[&str] = &[
    "4111111111111111",
    "5555555555554444",
    "4012888888881881",
    "378282246310005",
];

/// Largest STAN; STANs run 000001..=999999 and wrap.
const MAX_STAN: u64 = 999_999;
/// How many distinct error messages are reported.
const MAX_ERROR_MESSAGES: usize = 5;
/// Histogram bounds in microseconds: 1 µs .. 60 s.
const HIST_LOW_US: u64 = 1;
const HIST_HIGH_US: u64 = 60_000_000;

/// What the benchmark should do.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub concurrency: usize,
    /// Requests per second for open-loop mode; `None` for closed-loop.
    pub rate: Option<u64>,
    pub duration: Duration,
    /// Stop after this many requests (overrides `duration`).
    pub requests: Option<u64>,
    pub terminals: Vec<TerminalId>,
    pub local_date: String,
    /// Acknowledge this share (0-100) of approved sales, like terminals
    /// that printed their receipts; the rest are never acknowledged.
    pub ack_percent: u8,
    /// First STAN of every terminal's sequence; random when `None`.
    pub stan_start: Option<u32>,
    /// QR payments (consumer-presented, immediate success: amounts end in
    /// 00) instead of card sales.
    pub qr: bool,
    pub json: bool,
    pub edge: Edge,
}

/// Which edge the sales go to.
#[derive(Debug, Clone)]
pub enum Edge {
    Grpc,
    Iso(IsoTarget),
}

impl Edge {
    fn name(&self) -> String {
        match self {
            Edge::Grpc => "grpc".to_owned(),
            Edge::Iso(target) => format!("iso8583 {}", target.profile.name),
        }
    }
}

/// The `n`-th STAN (0-based) of a sequence starting at `start` (1..=999999),
/// wrapping from 999999 back to 000001.
pub fn stan_at(start: u32, n: u64) -> String {
    let start = u64::from(start).clamp(1, MAX_STAN);
    let value = (start - 1 + n % MAX_STAN) % MAX_STAN + 1;
    format!("{value:06}")
}

/// Amount in minor units of the `i`-th request: 1000 + (i % 500) * 100,
/// always a whole number of major units (which the issuer simulator approves).
pub fn amount_for(i: u64) -> i64 {
    // i % 500 < 500, so the conversion cannot fail.
    1000 + i64::try_from(i % 500).unwrap_or(0) * 100
}

/// Card number of the `i`-th request.
pub fn pan_for(i: u64) -> &'static str {
    let len = TEST_PANS.len() as u64;
    TEST_PANS[usize::try_from(i % len).unwrap_or(0)]
}

/// One terminal identity and its STAN sequence.
struct TerminalSlot {
    terminal_id: String,
    /// `None` over ISO 8583, whose connections belong to the workers.
    client: Option<TerminalClient>,
    /// Field 42 of its ISO sales.
    merchant_id: String,
    stan_start: u32,
    next: AtomicU64,
}

/// Everything workers share.
struct Shared {
    terminals: Vec<TerminalSlot>,
    next_request: AtomicU64,
    local_date: String,
    /// The local date as ISO 8583 field 13 carries it.
    mmdd: String,
    /// The currency of the ISO sales (the gRPC ones name "EUR").
    currency: Currency,
    ack_percent: u8,
    qr: bool,
}

impl Shared {
    /// The terminal of request (or worker) number `i`.
    fn slot(&self, i: u64) -> &TerminalSlot {
        let count = self.terminals.len() as u64;
        &self.terminals[usize::try_from(i % count).unwrap_or(0)]
    }

    /// Whether request `i` is one of the share to acknowledge: its position
    /// in every hundred falls below the share, so exactly that share is,
    /// spread evenly.
    fn chosen_for_ack(&self, i: u64) -> bool {
        i % 100 < u64::from(self.ack_percent)
    }

    /// Builds the `i`-th request and the client to send it on.
    fn request(&self, i: u64) -> (Option<TerminalClient>, SaleRequest) {
        let slot = self.slot(i);
        let n = slot.next.fetch_add(1, Ordering::Relaxed);
        let request = SaleRequest {
            terminal_id: slot.terminal_id.clone(),
            stan: stan_at(slot.stan_start, n),
            local_date: self.local_date.clone(),
            pan: pan_for(i).to_owned(),
            expiry: "2812".to_owned(),
            amount: Some(Money {
                minor_units: amount_for(i),
                currency: "EUR".to_owned(),
            }),
            last_completed_stan: String::new(),
            channel: String::new(),
        };
        (slot.client.clone(), request)
    }
}

/// Result of one request, sent to the collector.
enum Outcome {
    Ok {
        latency_us: u64,
        status: i32,
        duplicate: bool,
        /// `None` when no acknowledgement was sent; otherwise its outcome.
        ack: Option<Result<(), String>>,
    },
    Err(String),
}

/// A scanned payment code the QR simulator accepts; only ever sent.
const BENCH_PAYMENT_CODE: &str = "134567890123456789";

/// One consumer-presented QR payment (and its acknowledgement), counted
/// as a sale: `approved` when the platform paid at once.
async fn send_one_qr(shared: &Shared, i: u64) -> Outcome {
    let (client, sale) = shared.request(i);
    let Some(mut client) = client else {
        return Outcome::Err("no gRPC client for this terminal".to_owned());
    };
    let request = QrPayRequest {
        terminal_id: sale.terminal_id,
        stan: sale.stan,
        local_date: sale.local_date,
        merchant_id: String::new(),
        payment_code: BENCH_PAYMENT_CODE.to_owned(),
        amount: sale.amount,
    };
    let terminal_id = request.terminal_id.clone();
    let started = Instant::now();
    match client.qr_pay(request).await {
        Ok(response) => {
            let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let response = response.into_inner();
            let payment = response.payment.unwrap_or_default();
            let status = match payment.answer.as_str() {
                "approved" => AuthorizationStatus::Approved as i32,
                "declined" => AuthorizationStatus::Declined as i32,
                _ => 0,
            };
            let chosen = i % 100 < u64::from(shared.ack_percent);
            let ack = if chosen && payment.answer == "approved" {
                Some(
                    client
                        .qr_acknowledge(QrAcknowledgeRequest {
                            terminal_id,
                            order_id: payment.order_id,
                        })
                        .await
                        .map(|_| ())
                        .map_err(|status| format!("ack: {}", status_line(&status))),
                )
            } else {
                None
            };
            Outcome::Ok {
                latency_us,
                status,
                duplicate: response.duplicate,
                ack,
            }
        }
        Err(status) => Outcome::Err(status_line(&status)),
    }
}

async fn send_one(shared: &Shared, i: u64) -> Outcome {
    if shared.qr {
        return send_one_qr(shared, i).await;
    }
    let (client, request) = shared.request(i);
    let Some(mut client) = client else {
        return Outcome::Err("no gRPC client for this terminal".to_owned());
    };
    let ack_request = AcknowledgeRequest {
        terminal_id: request.terminal_id.clone(),
        stan: request.stan.clone(),
        local_date: request.local_date.clone(),
    };
    let started = Instant::now();
    match client.sale(request).await {
        Ok(response) => {
            let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let response = response.into_inner();
            let status = response.authorization.map_or(0, |a| a.status);
            let ack = if shared.chosen_for_ack(i) && should_acknowledge(status) {
                Some(
                    client
                        .acknowledge(ack_request)
                        .await
                        .map(|_| ())
                        .map_err(|status| format!("ack: {}", status_line(&status))),
                )
            } else {
                None
            };
            Outcome::Ok {
                latency_us,
                status,
                duplicate: response.duplicate,
                ack,
            }
        }
        Err(status) => Outcome::Err(status_line(&status)),
    }
}

/// The `i`-th sale as a 0200 on `connection`, which speaks for `slot`'s
/// terminal; the 0220 advice follows when it is one to acknowledge.
async fn send_one_iso(
    shared: &Shared,
    slot: &TerminalSlot,
    connection: &mut iso::Connection,
    i: u64,
) -> Outcome {
    let stan = stan_at(slot.stan_start, slot.next.fetch_add(1, Ordering::Relaxed));
    let sale = IsoSale {
        pan: pan_for(i),
        amount: u64::try_from(amount_for(i)).unwrap_or(0),
        currency: shared.currency,
        expiry: "2812",
        stan: &stan,
        mmdd: &shared.mmdd,
        terminal: &slot.terminal_id,
        merchant: &slot.merchant_id,
    };
    let request = sale.request();
    let started = Instant::now();
    let answer = match connection.call(&request).await {
        Ok(answer) => answer,
        Err(error) => return Outcome::Err(format!("{error:#}")),
    };
    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let code = answer.text(39).unwrap_or("");
    let status = iso_status(code);
    let ack = if shared.chosen_for_ack(i) && code == ResponseCode::APPROVED.as_str() {
        Some(match connection.call(&sale.advice()).await {
            Ok(answer) if answer.text(39) == Some(ResponseCode::APPROVED.as_str()) => Ok(()),
            Ok(answer) => Err(format!(
                "ack: 0230 answered {:?}",
                answer.text(39).unwrap_or("")
            )),
            Err(error) => Err(format!("ack: {error:#}")),
        })
    } else {
        None
    };
    Outcome::Ok {
        latency_us,
        status,
        // ISO 8583 has no duplicate flag: a retry's answer is the original's.
        duplicate: false,
        ack,
    }
}

/// The gRPC status an ISO answer stands for: "00" approved, "91" the
/// issuer (or the switch behind the edge) unavailable, anything else a
/// decline or refusal.
fn iso_status(code: &str) -> i32 {
    if code == ResponseCode::APPROVED.as_str() {
        AuthorizationStatus::Approved as i32
    } else if code == ResponseCode::ISSUER_UNAVAILABLE.as_str() {
        AuthorizationStatus::IssuerTimedOut as i32
    } else {
        AuthorizationStatus::Declined as i32
    }
}

/// Aggregated counters and latency histogram.
struct Collector {
    histogram: Histogram<u64>,
    requests: u64,
    ok: u64,
    errors: u64,
    approved: u64,
    declined: u64,
    issuer_timed_out: u64,
    duplicates: u64,
    acknowledged: u64,
    ack_errors: u64,
    error_messages: Vec<String>,
}

impl Collector {
    fn new() -> Result<Self> {
        Ok(Self {
            histogram: Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, 3)
                .context("cannot create latency histogram")?,
            requests: 0,
            ok: 0,
            errors: 0,
            approved: 0,
            declined: 0,
            issuer_timed_out: 0,
            duplicates: 0,
            acknowledged: 0,
            ack_errors: 0,
            error_messages: Vec::new(),
        })
    }

    fn record(&mut self, outcome: Outcome) {
        self.requests += 1;
        match outcome {
            Outcome::Ok {
                latency_us,
                status,
                duplicate,
                ack,
            } => {
                self.ok += 1;
                self.histogram
                    .saturating_record(latency_us.clamp(HIST_LOW_US, HIST_HIGH_US));
                match AuthorizationStatus::try_from(status) {
                    Ok(AuthorizationStatus::Approved | AuthorizationStatus::Confirmed) => {
                        self.approved += 1;
                    }
                    Ok(AuthorizationStatus::Declined) => self.declined += 1,
                    Ok(AuthorizationStatus::IssuerTimedOut) => self.issuer_timed_out += 1,
                    _ => {}
                }
                if duplicate {
                    self.duplicates += 1;
                }
                match ack {
                    None => {}
                    Some(Ok(())) => self.acknowledged += 1,
                    Some(Err(message)) => {
                        self.ack_errors += 1;
                        self.note_error(message);
                    }
                }
            }
            Outcome::Err(message) => {
                self.errors += 1;
                self.note_error(message);
            }
        }
    }

    /// Keeps the first few distinct error messages.
    fn note_error(&mut self, message: String) {
        if self.error_messages.len() < MAX_ERROR_MESSAGES && !self.error_messages.contains(&message)
        {
            self.error_messages.push(message);
        }
    }
}

/// The benchmark's result, printed as text or as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `grpc`, or `iso8583 <profile>`.
    pub edge: String,
    pub mode: &'static str,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub approved: u64,
    pub declined: u64,
    pub issuer_timed_out: u64,
    pub duplicates: u64,
    /// Whether approved sales were acknowledged (`--ack`).
    pub ack: bool,
    /// Acknowledgements the gateway accepted (only with `--ack`).
    pub acknowledged: u64,
    /// Acknowledgements that failed (only with `--ack`; not in `errors`).
    pub ack_errors: u64,
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub concurrency: usize,
    pub rate: Option<u64>,
    pub terminals: Vec<String>,
    pub error_messages: Vec<String>,
}

impl Summary {
    #[allow(clippy::float_arithmetic)]
    fn build(collector: Collector, elapsed: Duration, config: &BenchConfig) -> Self {
        let hist = &collector.histogram;
        let empty = hist.is_empty();
        let ms = |us: u64| us as f64 / 1000.0;
        let quantile = |q: f64| {
            if empty {
                0.0
            } else {
                ms(hist.value_at_quantile(q))
            }
        };
        let elapsed_s = elapsed.as_secs_f64();
        let throughput_per_s = if elapsed_s > 0.0 {
            collector.requests as f64 / elapsed_s
        } else {
            0.0
        };
        Self {
            edge: config.edge.name(),
            mode: if config.rate.is_some() {
                "open-loop"
            } else {
                "closed-loop"
            },
            requests: collector.requests,
            ok: collector.ok,
            errors: collector.errors,
            approved: collector.approved,
            declined: collector.declined,
            issuer_timed_out: collector.issuer_timed_out,
            duplicates: collector.duplicates,
            ack: config.ack_percent > 0,
            acknowledged: collector.acknowledged,
            ack_errors: collector.ack_errors,
            elapsed_s,
            throughput_per_s,
            p50_ms: quantile(0.50),
            p90_ms: quantile(0.90),
            p99_ms: quantile(0.99),
            max_ms: if empty { 0.0 } else { ms(hist.max()) },
            mean_ms: if empty { 0.0 } else { hist.mean() / 1000.0 },
            concurrency: config.concurrency,
            rate: config.rate,
            terminals: config.terminals.iter().map(ToString::to_string).collect(),
            error_messages: collector.error_messages,
        }
    }

    /// Human-readable report.
    pub fn text(&self) -> String {
        let rate = self
            .rate
            .map_or_else(|| "-".to_owned(), |r| format!("{r}/s"));
        let acknowledged = if self.ack {
            format!("{} ({} ack errors)", self.acknowledged, self.ack_errors)
        } else {
            "- (sales not acknowledged; use --ack)".to_owned()
        };
        [
            format!("edge          {}", self.edge),
            format!(
                "mode          {} (concurrency {}, rate {rate})",
                self.mode, self.concurrency
            ),
            format!("terminals     {}", self.terminals.join(",")),
            format!("requests      {}", self.requests),
            format!("ok            {}", self.ok),
            format!("errors        {}", self.errors),
            format!("approved      {}", self.approved),
            format!("declined      {}", self.declined),
            format!("timed out     {}", self.issuer_timed_out),
            format!("duplicates    {}", self.duplicates),
            format!("acknowledged  {acknowledged}"),
            format!("elapsed       {:.2} s", self.elapsed_s),
            format!("throughput    {:.1} req/s", self.throughput_per_s),
            format!(
                "latency (ms)  p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}",
                self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms, self.mean_ms
            ),
        ]
        .join("\n")
    }
}

fn progress_bar(config: &BenchConfig) -> ProgressBar {
    if config.json {
        return ProgressBar::hidden();
    }
    let (bar, template) = match config.requests {
        Some(n) => (
            ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            "{bar:40.cyan/blue} {human_pos}/{human_len} [{elapsed_precise}] {per_sec} {msg}",
        ),
        None => (
            ProgressBar::with_draw_target(
                Some(u64::try_from(config.duration.as_millis()).unwrap_or(u64::MAX)),
                ProgressDrawTarget::stderr(),
            ),
            "{bar:40.cyan/blue} [{elapsed_precise}] {msg}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs the benchmark and returns its summary.
pub async fn run(options: &GatewayOptions, config: BenchConfig) -> Result<Summary> {
    if config.terminals.is_empty() {
        bail!("--terminals must name at least one terminal");
    }
    if config.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if config.rate == Some(0) {
        bail!("--rate must be at least 1 request per second");
    }
    if config.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    if matches!(config.edge, Edge::Iso(_)) && config.rate.is_some() {
        bail!("--iso runs closed-loop only: drop --rate");
    }
    let mmdd = match (config.local_date.get(5..7), config.local_date.get(8..10)) {
        (Some(month), Some(day)) => format!("{month}{day}"),
        _ => bail!("the local date {:?} is not YYYY-MM-DD", config.local_date),
    };

    let mut terminals = Vec::with_capacity(config.terminals.len());
    for terminal_id in &config.terminals {
        let client = match config.edge {
            Edge::Grpc => Some(connect(options, terminal_id).await?),
            Edge::Iso(_) => None,
        };
        let stan_start = config
            .stan_start
            .unwrap_or_else(|| rand::random_range(1..=999_999));
        terminals.push(TerminalSlot {
            terminal_id: terminal_id.to_string(),
            client,
            merchant_id: iso::dev_merchant(terminal_id),
            stan_start,
            next: AtomicU64::new(0),
        });
    }
    let shared = Arc::new(Shared {
        terminals,
        next_request: AtomicU64::new(0),
        local_date: config.local_date.clone(),
        mmdd,
        currency: Currency::parse("EUR").context("EUR is a currency")?,
        ack_percent: config.ack_percent,
        qr: config.qr,
    });
    // Every ISO connection is open (TLS handshakes done) before the clock
    // starts, as the gRPC channels are.
    let mut iso_connections = Vec::new();
    if let Edge::Iso(target) = &config.edge {
        for worker in 0..config.concurrency {
            let terminal = TerminalId::parse(&shared.slot(worker as u64).terminal_id)
                .context("a terminal id")?;
            iso_connections.push(iso::open(target, &terminal).await?);
        }
    }

    let bar = progress_bar(&config);
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let started = Instant::now();
    let deadline = started + config.duration;
    let driver = tokio::spawn(drive(shared, config.clone(), deadline, tx, iso_connections));

    let mut collector = Collector::new()?;
    while let Some(outcome) = rx.recv().await {
        collector.record(outcome);
        if config.requests.is_some() {
            bar.set_position(collector.requests);
        } else {
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            bar.set_position(elapsed_ms.min(bar.length().unwrap_or(u64::MAX)));
        }
        if collector.requests % 64 == 1 {
            bar.set_message(format!(
                "{} req, {} errors",
                collector.requests, collector.errors
            ));
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    driver.await.context("load driver panicked")?;
    Ok(Summary::build(collector, elapsed, &config))
}

/// Whether request number `i` should still be sent.
fn should_send(i: u64, config: &BenchConfig, deadline: Instant) -> bool {
    match config.requests {
        Some(limit) => i < limit,
        None => Instant::now() < deadline,
    }
}

/// Generates the load; returns once every request has been answered.
async fn drive(
    shared: Arc<Shared>,
    config: BenchConfig,
    deadline: Instant,
    tx: mpsc::UnboundedSender<Outcome>,
    iso_connections: Vec<iso::Connection>,
) {
    let mut tasks = JoinSet::new();
    match (&config.edge, config.rate) {
        (Edge::Iso(target), _) => {
            for (worker, mut connection) in iso_connections.into_iter().enumerate() {
                let shared = Arc::clone(&shared);
                let config = config.clone();
                let target = target.clone();
                let tx = tx.clone();
                tasks.spawn(async move {
                    let slot = shared.slot(worker as u64);
                    loop {
                        let i = shared.next_request.fetch_add(1, Ordering::Relaxed);
                        if !should_send(i, &config, deadline) {
                            break;
                        }
                        let mut outcome = send_one_iso(&shared, slot, &mut connection, i).await;
                        // After a failed call the stream may still hold its
                        // late answer: go on with a new connection, or stop
                        // this worker when none can be had.
                        let mut give_up = false;
                        if let Outcome::Err(message) = &mut outcome {
                            let reopened = match TerminalId::parse(&slot.terminal_id) {
                                Ok(terminal) => iso::open(&target, &terminal).await,
                                Err(error) => Err(error.into()),
                            };
                            match reopened {
                                Ok(fresh) => connection = fresh,
                                Err(error) => {
                                    message.push_str(&format!("; reconnect: {error:#}"));
                                    give_up = true;
                                }
                            }
                        }
                        if tx.send(outcome).is_err() || give_up {
                            break;
                        }
                    }
                });
            }
        }
        (Edge::Grpc, None) => {
            for _ in 0..config.concurrency {
                let shared = Arc::clone(&shared);
                let config = config.clone();
                let tx = tx.clone();
                tasks.spawn(async move {
                    loop {
                        let i = shared.next_request.fetch_add(1, Ordering::Relaxed);
                        if !should_send(i, &config, deadline) {
                            break;
                        }
                        if tx.send(send_one(&shared, i).await).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        (Edge::Grpc, Some(rate)) => {
            let period = Duration::from_nanos((1_000_000_000 / rate).max(1));
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                ticker.tick().await;
                let i = shared.next_request.fetch_add(1, Ordering::Relaxed);
                if !should_send(i, &config, deadline) {
                    break;
                }
                let shared = Arc::clone(&shared);
                let tx = tx.clone();
                tasks.spawn(async move {
                    // The collector only goes away when the run is over.
                    let _ = tx.send(send_one(&shared, i).await);
                });
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    drop(tx);
    while tasks.join_next().await.is_some() {}
}

/// Prints the summary: one JSON object on stdout with `--json`, text
/// otherwise; distinct error messages always go to stderr.
pub fn print_summary(summary: &Summary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(summary)?);
    } else {
        println!("{}", summary.text());
    }
    if !summary.error_messages.is_empty() {
        eprintln!("first distinct errors:");
        for message in &summary.error_messages {
            eprintln!("  {message}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BenchConfig {
        BenchConfig {
            concurrency: 16,
            rate: None,
            duration: Duration::from_secs(10),
            requests: None,
            terminals: vec![TerminalId::parse("TERM0001").unwrap()],
            local_date: "2025-01-01".to_owned(),
            ack_percent: 0,
            qr: false,
            stan_start: None,
            json: true,
            edge: Edge::Grpc,
        }
    }

    #[test]
    fn iso_answers_count_as_the_grpc_status_they_stand_for() {
        assert_eq!(iso_status("00"), AuthorizationStatus::Approved as i32);
        assert_eq!(iso_status("91"), AuthorizationStatus::IssuerTimedOut as i32);
        for declined in ["05", "51", "30", "12", ""] {
            assert_eq!(iso_status(declined), AuthorizationStatus::Declined as i32);
        }
    }

    #[tokio::test]
    async fn iso_runs_refuse_an_open_loop_before_connecting() {
        let mut iso = config();
        iso.rate = Some(100);
        iso.edge = Edge::Iso(IsoTarget {
            // Nothing listens there: the refusal must come first.
            address: "127.0.0.1:9".parse().unwrap(),
            profile: iso8583::Profile::ASCII_1987,
            plain: true,
            tls_domain: "localhost".to_owned(),
            certs_dir: std::path::PathBuf::from("/nonexistent"),
            timeout: Duration::from_secs(1),
        });
        let options = GatewayOptions {
            gateway: "https://localhost:1".to_owned(),
            certs_dir: std::path::PathBuf::from("/nonexistent"),
            tls_domain: None,
            timeout: Duration::from_secs(1),
        };
        let refused = run(&options, iso).await.unwrap_err().to_string();
        assert!(refused.contains("closed-loop only"), "{refused}");
    }

    #[test]
    fn stan_sequence_wraps_to_one() {
        assert_eq!(stan_at(1, 0), "000001");
        assert_eq!(stan_at(123, 1), "000124");
        assert_eq!(stan_at(999_998, 0), "999998");
        assert_eq!(stan_at(999_998, 1), "999999");
        assert_eq!(stan_at(999_998, 2), "000001");
        assert_eq!(stan_at(999_998, 3), "000002");
        assert_eq!(stan_at(5, 999_999), "000005");
        assert_eq!(stan_at(5, u64::MAX).len(), 6);
    }

    #[test]
    fn amounts_and_pans_cycle() {
        assert_eq!(amount_for(0), 1000);
        assert_eq!(amount_for(1), 1100);
        assert_eq!(amount_for(499), 50_900);
        assert_eq!(amount_for(500), 1000);
        assert!((0..2000).all(|i| amount_for(i) % 100 == 0));
        assert_eq!(pan_for(0), "4111111111111111");
        assert_eq!(pan_for(5), "5555555555554444");
    }

    #[test]
    fn test_pans_are_luhn_valid() {
        for pan in TEST_PANS {
            let sum: u32 = pan
                .chars()
                .rev()
                .filter_map(|c| c.to_digit(10))
                .enumerate()
                .map(|(i, d)| {
                    if i % 2 == 1 {
                        let d = d * 2;
                        if d > 9 { d - 9 } else { d }
                    } else {
                        d
                    }
                })
                .sum();
            assert_eq!(sum % 10, 0, "{pan}");
        }
    }

    #[test]
    fn collector_counts_outcomes() {
        let mut collector = Collector::new().unwrap();
        collector.record(Outcome::Ok {
            latency_us: 1500,
            status: AuthorizationStatus::Approved as i32,
            duplicate: false,
            ack: None,
        });
        collector.record(Outcome::Ok {
            latency_us: 0,
            status: AuthorizationStatus::Declined as i32,
            duplicate: true,
            ack: None,
        });
        for _ in 0..10 {
            collector.record(Outcome::Err("UNAVAILABLE: down".to_owned()));
        }
        assert_eq!(collector.requests, 12);
        assert_eq!(collector.ok, 2);
        assert_eq!(collector.errors, 10);
        assert_eq!(collector.approved, 1);
        assert_eq!(collector.declined, 1);
        assert_eq!(collector.duplicates, 1);
        assert_eq!(collector.error_messages, vec!["UNAVAILABLE: down"]);
    }

    #[test]
    fn summary_json_has_required_keys() {
        let mut collector = Collector::new().unwrap();
        collector.record(Outcome::Ok {
            latency_us: 2000,
            status: AuthorizationStatus::Approved as i32,
            duplicate: false,
            ack: None,
        });
        let summary = Summary::build(collector, Duration::from_secs(2), &config());
        let value = serde_json::to_value(&summary).unwrap();
        for key in [
            "requests",
            "ok",
            "errors",
            "approved",
            "declined",
            "duplicates",
            "elapsed_s",
            "throughput_per_s",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
            "concurrency",
            "rate",
        ] {
            assert!(value.get(key).is_some(), "missing key {key}");
        }
        assert_eq!(value["requests"], 1);
        assert_eq!(value["concurrency"], 16);
        assert!(value["rate"].is_null());
        assert_eq!(value["throughput_per_s"], 0.5);
        let p50 = value["p50_ms"].as_f64().unwrap();
        assert!((1.99..=2.01).contains(&p50), "{p50}");
    }

    #[test]
    fn empty_summary_has_zero_latencies() {
        let summary = Summary::build(Collector::new().unwrap(), Duration::ZERO, &config());
        assert_eq!(summary.requests, 0);
        assert_eq!(summary.max_ms.to_bits(), 0.0f64.to_bits());
        assert_eq!(summary.throughput_per_s.to_bits(), 0.0f64.to_bits());
    }

    #[test]
    fn collector_counts_acknowledgements_separately() {
        let mut collector = Collector::new().unwrap();
        for ack in [
            Some(Ok(())),
            Some(Ok(())),
            Some(Err("ack: UNAVAILABLE: down".to_owned())),
        ] {
            collector.record(Outcome::Ok {
                latency_us: 1000,
                status: AuthorizationStatus::Approved as i32,
                duplicate: false,
                ack,
            });
        }
        collector.record(Outcome::Ok {
            latency_us: 1000,
            status: AuthorizationStatus::Declined as i32,
            duplicate: false,
            ack: None,
        });
        assert_eq!(collector.requests, 4);
        assert_eq!(collector.ok, 4);
        assert_eq!(collector.errors, 0);
        assert_eq!(collector.approved, 3);
        assert_eq!(collector.acknowledged, 2);
        assert_eq!(collector.ack_errors, 1);
        assert_eq!(collector.error_messages, vec!["ack: UNAVAILABLE: down"]);

        let mut with_ack = config();
        with_ack.ack_percent = 100;
        let summary = Summary::build(collector, Duration::from_secs(1), &with_ack);
        let value = serde_json::to_value(&summary).unwrap();
        assert_eq!(value["acknowledged"], 2);
        assert_eq!(value["ack_errors"], 1);
        assert_eq!(value["ack"], true);
        assert!(summary.text().contains("acknowledged  2 (1 ack errors)"));

        let summary = Summary::build(Collector::new().unwrap(), Duration::ZERO, &config());
        assert!(
            summary
                .text()
                .contains("acknowledged  - (sales not acknowledged")
        );
    }
}
