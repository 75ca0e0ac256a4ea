//! `posctl`: terminal simulator, load generator and event reader for the
//! payment switch. It speaks to the terminal gateway over mutual TLS with the
//! development certificates, and reads authorization events from Kafka.
//!
//! Like a real terminal, `sale` acknowledges an approval once it has shown
//! the result (unless `--no-ack`), and `reverse` asks the switch to undo a
//! sale the terminal never got an answer for. `close-batch` and
//! `upload-batch` close and reconcile the terminal's batch through the
//! gateway; `settlement` asks the settlement batcher directly where payments
//! are, or runs settlement. `iso` speaks ISO 8583 to an ISO listener of
//! the gateway (echo, sale with its completion advice, reversal). `watch` prints the messages the switch pushes to
//! the terminal ("reprint the receipt", "void the receipt") and acknowledges
//! them; `webhooks listen` stands in for a merchant's webhook endpoint and
//! checks each webhook's signature (with the `webhook-signature` crate).
//!
//! Identifiers, dates and currencies on the command line (terminal and
//! merchant ids, STAN, RRN, batch number, local date, currency) are parsed
//! with switch-core's types, so a bad value is refused with core's reason
//! before anything is sent. Card data and amounts are sent as given: a
//! terminal simulator must be able to show the switch refusing them.

mod bench;
mod broker_bench;
mod connect;
mod events;
mod iso;
mod operator;
mod output;
mod qr;
mod qr_bench;
mod qr_image;
mod settlement;
mod watch;
mod webhooks;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use switch_core::{Clock, Currency, LocalDate, Stan, SystemClock, TerminalId};
use switch_proto::v1::{
    AcknowledgeRequest, AuthorizationRecord, InquiryRequest, Money, ReprintLastRequest,
    SaleRequest, TerminalReverseRequest,
};
use tonic::Code;

use crate::connect::{GatewayOptions, connect};
use crate::output::{
    acknowledged_sale_json, acknowledged_sale_text, code_name, print_record, print_status_error,
    record_json, record_text, reverse_json, reverse_text, should_acknowledge, status_line,
};

#[derive(Debug, Parser)]
#[command(name = "posctl", version, about, long_about = None)]
struct Cli {
    /// Terminal gateway URL.
    #[arg(
        long,
        global = true,
        env = "POSCTL_GATEWAY",
        default_value = "https://localhost:50051"
    )]
    gateway: String,
    /// Directory of the dev PKI (ca.pem, terminals/<TID>.pem|.key).
    #[arg(
        long,
        global = true,
        env = "POSCTL_CERTS_DIR",
        default_value = ".run/certs"
    )]
    certs_dir: PathBuf,
    /// Operator certificate presented to the internal APIs' operator RPCs
    /// (default: <certs-dir>/operators/operator.pem).
    #[arg(long, global = true, env = "POSCTL_OPERATOR_CERT")]
    operator_cert: Option<PathBuf>,
    /// Its key (default: <certs-dir>/operators/operator.key).
    #[arg(long, global = true, env = "POSCTL_OPERATOR_KEY")]
    operator_key: Option<PathBuf>,
    /// The service CA the internal APIs' certificates chain to (default:
    /// <certs-dir>/service-ca.pem).
    #[arg(long, global = true, env = "POSCTL_SERVICE_CA")]
    service_ca: Option<PathBuf>,
    /// Terminal identity to speak as (selects the client certificate).
    #[arg(
        long,
        global = true,
        env = "POSCTL_TERMINAL",
        default_value = "TERM0001",
        value_parser = TerminalId::parse
    )]
    terminal: TerminalId,
    /// Terminal id to put in requests, if not the certificate's own: shows
    /// that the gateway refuses a terminal speaking for another.
    #[arg(long, global = true, value_name = "TERMINAL_ID", value_parser = TerminalId::parse)]
    claim: Option<TerminalId>,
    /// TLS server name to verify (default: the host of --gateway).
    #[arg(long, global = true, env = "POSCTL_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// Per-request deadline, e.g. 30s or 500ms.
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Machine-readable JSON output on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate the development PKI (CA, server and terminal certificates).
    Certs {
        /// Output directory (default: --certs-dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Regenerate even when DIR/ca.pem exists.
        #[arg(long)]
        force: bool,
    },
    /// Send a purchase; an approval is then acknowledged (receipt printed)
    /// unless --no-ack.
    Sale(SaleArgs),
    /// Ask for the authoritative status of a transaction by STAN and date.
    Inquiry(KeyArgs),
    /// Fetch this terminal's last transaction.
    ReprintLast,
    /// Acknowledge that the result was displayed/printed.
    Ack(KeyArgs),
    /// Ask the switch to reverse a transaction this terminal got no answer
    /// for (terminal timeout).
    Reverse(KeyArgs),
    /// Generate Sale load and report throughput and latency.
    Bench(BenchArgs),
    /// Read authorization events from Kafka.
    Events(EventsArgs),
    /// Close this terminal's batch with its totals (through the gateway).
    CloseBatch(settlement::CloseBatchArgs),
    /// After an out-of-balance close: upload the sales this terminal
    /// completed (through the gateway).
    UploadBatch(settlement::UploadBatchArgs),
    /// Ask the settlement batcher directly (not through the gateway): where
    /// payments are, or run settlement.
    Settlement(settlement::SettlementArgs),
    /// Print the messages the switch pushes to this terminal (reprint or
    /// void a receipt), acknowledging each unless --no-ack.
    Watch(watch::WatchArgs),
    /// Merchant webhooks: receive, verify and print them.
    Webhooks(webhooks::WebhooksArgs),
    /// Operators: send a dead-lettered reversal round again, saying who
    /// asks and why (asks authorization directly, not the gateway); the
    /// same as `reversals redrive`.
    Redrive(operator::RedriveArgs),
    /// Operators: list the reversals the switch gave up on, or redrive one
    /// (asks authorization directly, not the gateway).
    Reversals(operator::ReversalsArgs),
    /// Measure a Kafka-protocol broker: produce and fetch rates, group join
    /// time, and what survives a SIGKILL (see scripts/broker-compare.sh).
    BrokerBench(broker_bench::BrokerBenchArgs),
    /// Speak ISO 8583 to one of the gateway's ISO listeners (echo, sale,
    /// reverse) with this terminal's certificate.
    Iso(iso::IsoArgs),
    /// QR payments through the gateway: pay (scanned code), order (code to
    /// show), status, ack.
    Qr(qr::QrArgs),
}

#[derive(Debug, Args)]
struct SaleArgs {
    /// Amount in integer minor units (1050 EUR = EUR 10.50). Any integer
    /// is sent: whether it is a valid amount is the switch's to judge.
    #[arg(long, allow_negative_numbers = true)]
    amount: i64,
    /// ISO 4217 currency code, one switch-core knows.
    #[arg(long, default_value = "EUR", value_parser = Currency::parse)]
    currency: Currency,
    /// Card number (digits); only ever printed masked. Sent as given, so a
    /// bad card shows the switch's refusal.
    #[arg(long)]
    pan: String,
    /// Card expiry, YYMM (sent as given, like --pan).
    #[arg(long, default_value = "2812")]
    expiry: String,
    /// Systems trace audit number, 6 digits (default: random).
    #[arg(long, value_parser = Stan::parse)]
    stan: Option<Stan>,
    /// Terminal local date, YYYY-MM-DD (default: today, UTC).
    #[arg(long, value_parser = LocalDate::parse)]
    date: Option<LocalDate>,
    /// Do not acknowledge the result: a terminal that never showed it (S1).
    #[arg(long)]
    no_ack: bool,
    /// STAN of the last transaction this terminal completed: evidence that
    /// confirms that earlier sale.
    #[arg(long, value_name = "STAN", value_parser = Stan::parse)]
    last_completed_stan: Option<Stan>,
    /// How the payment was taken: card (default) or qr.
    #[arg(long, default_value = "card")]
    channel: String,
}

#[derive(Debug, Args)]
struct KeyArgs {
    /// Systems trace audit number of the transaction.
    #[arg(long, value_parser = Stan::parse)]
    stan: Stan,
    /// Terminal local date, YYYY-MM-DD (default: today, UTC).
    #[arg(long, value_parser = LocalDate::parse)]
    date: Option<LocalDate>,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Closed-loop workers (also reported in open-loop mode).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests per second: fixed-rate open-loop mode instead of closed-loop.
    #[arg(long)]
    rate: Option<u64>,
    /// How long to run, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many requests (overrides --duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Comma-separated terminal ids (default: all dev terminals).
    #[arg(long, value_delimiter = ',', value_parser = TerminalId::parse)]
    terminals: Vec<TerminalId>,
    /// Terminal local date, YYYY-MM-DD (default: today, UTC).
    #[arg(long, value_parser = LocalDate::parse)]
    date: Option<LocalDate>,
    /// Also acknowledge every approved sale (counted as `acknowledged`);
    /// latency stays the Sale call's alone.
    #[arg(long, conflicts_with = "ack_percent")]
    ack: bool,
    /// Acknowledge this share of the sales (0-100), like terminals of which
    /// the rest never showed the result: the others become orphans.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    ack_percent: Option<u8>,
    /// First STAN of every terminal's sequence (default: random). Runs that
    /// must never reuse a terminal + STAN + date (a retry of an earlier
    /// sale would be answered as a duplicate) give each run its own range.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=999_999))]
    stan_start: Option<u32>,
    /// QR payments (consumer-presented, paid at once) instead of card sales.
    #[arg(long, conflicts_with = "iso")]
    qr: bool,
    /// Send the sales as ISO 8583 0200s to the gateway's ISO listener at
    /// this address instead of over gRPC (closed loop only).
    #[arg(long, value_name = "ADDRESS")]
    iso: Option<std::net::SocketAddr>,
    /// The ISO listener's profile (with --iso).
    #[arg(long, value_enum, default_value = "ascii1987", requires = "iso")]
    iso_profile: iso::IsoProfileArg,
    /// Plain TCP to a lab ISO listener (`plain_tcp_for_lab`; with --iso).
    #[arg(long, requires = "iso")]
    iso_plain: bool,
    /// With --qr: this terminal also starts a payment the shopper confirms
    /// late (after it stopped waiting) every --late-interval, and each
    /// one's merchant webhook is timed from the platform's paid time.
    #[arg(long, requires = "qr", value_parser = TerminalId::parse)]
    late_terminal: Option<TerminalId>,
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    late_interval: Duration,
    /// The late terminal's merchant endpoint, played by posctl (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:18086")]
    webhook_listen: std::net::SocketAddr,
    #[arg(long, env = "POSCTL_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// The QR platform simulator, whose ledger says when each was paid.
    #[arg(long, default_value = "https://localhost:50080")]
    qr_platform: String,
    /// How long the last late payment's webhook may take after the load.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    late_settle: Duration,
    /// First STAN of the late terminal's payments.
    #[arg(long, default_value_t = 800_001, value_parser = clap::value_parser!(u32).range(1..=999_999))]
    late_stan_start: u32,
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Prefix of the topic names.
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// Keep waiting for new events (until Ctrl-C).
    #[arg(long)]
    follow: bool,
    /// Without --follow: stop after no event arrived for this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Stop after printing this many events.
    #[arg(long)]
    limit: Option<u64>,
}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1h`, `250us` or a bare
/// number of seconds.
fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "invalid duration {input:?}: expected a number with a unit, e.g. 10s, 500ms, 2m"
        ));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {input:?}: number too large"))?;
    let overflow = || format!("invalid duration {input:?}: too large");
    let duration = match unit.trim() {
        "" | "s" | "sec" | "secs" => Duration::from_secs(value),
        "ms" => Duration::from_millis(value),
        "us" | "µs" => Duration::from_micros(value),
        "m" | "min" | "mins" => Duration::from_secs(value.checked_mul(60).ok_or_else(overflow)?),
        "h" => Duration::from_secs(value.checked_mul(3600).ok_or_else(overflow)?),
        other => {
            return Err(format!(
                "invalid duration {input:?}: unknown unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    Ok(duration)
}

/// Today's date in UTC, the terminal's local date when none is given.
fn today_utc() -> LocalDate {
    LocalDate::from_date(SystemClock.now().date())
}

fn random_stan() -> Stan {
    let value: u32 = rand::random_range(1..=999_999);
    Stan::parse(&format!("{value:06}")).expect("six digits are a STAN")
}

/// An error already shown to the user: `main` only sets the exit code.
#[derive(Debug)]
struct AlreadyReported;

impl fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("already reported")
    }
}

impl std::error::Error for AlreadyReported {}

/// Whether a failed Sale may still have reached the switch, so that the
/// terminal does not know the outcome and should reverse.
fn outcome_unknown(code: Code) -> bool {
    matches!(
        code,
        Code::DeadlineExceeded | Code::Unavailable | Code::Cancelled | Code::Unknown
    )
}

fn require_record(record: Option<AuthorizationRecord>) -> Result<AuthorizationRecord> {
    record.context("the gateway answered without an authorization record")
}

fn gateway_options(cli: &Cli) -> GatewayOptions {
    GatewayOptions {
        gateway: cli.gateway.clone(),
        certs_dir: cli.certs_dir.clone(),
        tls_domain: cli.tls_domain.clone(),
        timeout: cli.timeout,
    }
}

/// The operator's certificate, from the flags or the dev layout.
fn operator_tls(cli: &Cli) -> connect::OperatorTls {
    let dev = connect::OperatorTls::in_dir(&cli.certs_dir, dev_certs::DEFAULT_OPERATOR);
    connect::OperatorTls {
        service_ca: cli.service_ca.clone().unwrap_or(dev.service_ca),
        cert: cli.operator_cert.clone().unwrap_or(dev.cert),
        key: cli.operator_key.clone().unwrap_or(dev.key),
    }
}

/// Issues the service CA and its certificates (ADR 27) unless
/// `service-ca.pem` exists: a layout from before the service PKI gets it
/// beside its terminal certificates, which stay as they are.
fn ensure_service_pki(dir: &Path, force: bool) -> Result<bool> {
    if dir.join("service-ca.pem").exists() && !force {
        return Ok(false);
    }
    let pki = dev_certs::DevPki::generate_service_ca().context("cannot generate the service CA")?;
    pki.write_service_layout(dir, dev_certs::SERVICES, &[dev_certs::DEFAULT_OPERATOR])
        .with_context(|| format!("cannot write service certificates to {}", dir.display()))?;
    Ok(true)
}

fn run_certs(dir: PathBuf, force: bool, json: bool) -> Result<()> {
    let terminals: Vec<&str> = dev_certs::DEFAULT_TERMINALS
        .iter()
        .map(|(tid, _)| *tid)
        .collect();
    let ca = dir.join("ca.pem");
    if ca.exists() && !force {
        let services = ensure_service_pki(&dir, false)?;
        if json {
            println!(
                "{}",
                json!({"dir": dir.display().to_string(), "generated": false, "service_pki_generated": services, "terminals": terminals})
            );
        } else if services {
            println!(
                "terminal certificates already exist in {}; wrote the service PKI beside them: service-ca.pem, services/{{{}}}.pem|.key, operators/{}.pem|.key",
                dir.display(),
                dev_certs::SERVICES.join(","),
                dev_certs::DEFAULT_OPERATOR
            );
        } else {
            println!(
                "certificates already exist in {} (use --force to regenerate); skipping",
                dir.display()
            );
        }
        return Ok(());
    }
    let pki = dev_certs::DevPki::generate().context("cannot generate the dev CA")?;
    pki.write_dev_layout(&dir, dev_certs::DEFAULT_TERMINALS)
        .with_context(|| format!("cannot write certificates to {}", dir.display()))?;
    ensure_service_pki(&dir, true)?;
    if json {
        println!(
            "{}",
            json!({"dir": dir.display().to_string(), "generated": true, "terminals": terminals})
        );
    } else {
        println!(
            "wrote dev PKI to {}: ca.pem, server.pem, server.key, terminals/{{{}}}.pem|.key; \
             service-ca.pem, services/{{{}}}.pem|.key, operators/{}.pem|.key",
            dir.display(),
            terminals.join(","),
            dev_certs::SERVICES.join(","),
            dev_certs::DEFAULT_OPERATOR
        );
    }
    Ok(())
}

/// Sends a sale and, like a terminal that printed its receipt, acknowledges
/// an approval for the same terminal, STAN and date (unless `--no-ack`).
async fn run_sale(
    options: &GatewayOptions,
    certificate: &TerminalId,
    terminal_id: TerminalId,
    args: SaleArgs,
    json: bool,
) -> Result<()> {
    let mut client = connect(options, certificate).await?;
    let stan = args.stan.unwrap_or_else(random_stan);
    let local_date = args.date.unwrap_or_else(today_utc);
    let request = SaleRequest {
        terminal_id: terminal_id.to_string(),
        stan: stan.to_string(),
        local_date: local_date.to_string(),
        pan: args.pan,
        expiry: args.expiry,
        amount: Some(Money {
            minor_units: args.amount,
            currency: args.currency.to_string(),
        }),
        last_completed_stan: args
            .last_completed_stan
            .map(String::from)
            .unwrap_or_default(),
        channel: args.channel,
    };
    let response = match client.sale(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            if outcome_unknown(status.code()) {
                eprintln!(
                    "no answer for STAN {stan} date {local_date}: the sale may have been \
                     authorized; reverse it with `posctl reverse --stan {stan} --date {local_date}`"
                );
            }
            return Err(status.into());
        }
    };
    let record = require_record(response.authorization)?;
    let duplicate = response.duplicate;
    if args.no_ack || !should_acknowledge(record.status) {
        print_record(&record, Some(duplicate), json);
        return Ok(());
    }
    let acknowledged = client
        .acknowledge(AcknowledgeRequest {
            terminal_id: terminal_id.to_string(),
            stan: stan.to_string(),
            local_date: local_date.to_string(),
        })
        .await;
    match acknowledged {
        Ok(answer) => {
            // The acknowledged record, or the sale's if the gateway sent none.
            let acked = answer.into_inner().authorization.unwrap_or(record);
            if json {
                println!("{}", acknowledged_sale_json(&acked, duplicate));
            } else {
                println!("{}", acknowledged_sale_text(&acked, duplicate));
            }
            Ok(())
        }
        Err(status) => {
            // The sale stands; show it, then why the acknowledgement failed.
            if json {
                let mut value = record_json(&record, Some(duplicate));
                if let Some(obj) = value.as_object_mut() {
                    obj.insert(
                        "ack_error".to_owned(),
                        json!({"code": code_name(status.code()), "message": status.message()}),
                    );
                }
                println!("{value}");
            } else {
                println!("{}", record_text(&record, Some(duplicate)));
            }
            eprintln!(
                "error: acknowledgement failed: gRPC {}; retry with `posctl ack --stan {stan} --date {local_date}`",
                status_line(&status)
            );
            Err(AlreadyReported.into())
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let options = gateway_options(&cli);
    let certificate = cli.terminal.clone();
    let terminal_id = cli.claim.clone().unwrap_or_else(|| cli.terminal.clone());
    let operator = operator_tls(&cli);
    match cli.command {
        Command::Certs { dir, force } => run_certs(
            dir.unwrap_or_else(|| cli.certs_dir.clone()),
            force,
            cli.json,
        ),
        Command::Sale(args) => run_sale(&options, &certificate, terminal_id, args, cli.json).await,
        Command::Inquiry(args) => {
            let mut client = connect(&options, &certificate).await?;
            let record = client
                .inquiry(InquiryRequest {
                    terminal_id: terminal_id.to_string(),
                    stan: args.stan.to_string(),
                    local_date: args.date.unwrap_or_else(today_utc).to_string(),
                })
                .await?
                .into_inner();
            print_record(&record, None, cli.json);
            Ok(())
        }
        Command::ReprintLast => {
            let mut client = connect(&options, &certificate).await?;
            let record = client
                .reprint_last(ReprintLastRequest {
                    terminal_id: terminal_id.to_string(),
                })
                .await?
                .into_inner();
            print_record(&record, None, cli.json);
            Ok(())
        }
        Command::Ack(args) => {
            let mut client = connect(&options, &certificate).await?;
            let response = client
                .acknowledge(AcknowledgeRequest {
                    terminal_id: terminal_id.to_string(),
                    stan: args.stan.to_string(),
                    local_date: args.date.unwrap_or_else(today_utc).to_string(),
                })
                .await?
                .into_inner();
            let record = require_record(response.authorization)?;
            print_record(&record, None, cli.json);
            Ok(())
        }
        Command::Reverse(args) => {
            let mut client = connect(&options, &certificate).await?;
            let stan = args.stan.to_string();
            let local_date = args.date.unwrap_or_else(today_utc).to_string();
            let response = client
                .reverse(TerminalReverseRequest {
                    terminal_id: terminal_id.to_string(),
                    stan: stan.clone(),
                    local_date: local_date.clone(),
                })
                .await?
                .into_inner();
            if response.original_found && response.authorization.is_none() {
                bail!("the gateway found the original but answered without its record");
            }
            let record = response.authorization.as_ref();
            if cli.json {
                println!(
                    "{}",
                    reverse_json(record, response.original_found, &stan, &local_date)
                );
            } else {
                println!(
                    "{}",
                    reverse_text(record, response.original_found, &stan, &local_date)
                );
            }
            Ok(())
        }
        Command::Bench(args) => {
            let terminals = if args.terminals.is_empty() {
                dev_certs::DEFAULT_TERMINALS
                    .iter()
                    .map(|(tid, _)| TerminalId::parse(tid))
                    .collect::<Result<_, _>>()
                    .context("a dev terminal id is not a terminal id")?
            } else {
                args.terminals
            };
            let config = bench::BenchConfig {
                concurrency: args.concurrency,
                rate: args.rate,
                duration: args.duration,
                requests: args.requests,
                terminals,
                local_date: args.date.unwrap_or_else(today_utc).to_string(),
                ack_percent: args.ack_percent.unwrap_or(if args.ack { 100 } else { 0 }),
                stan_start: args.stan_start,
                qr: args.qr,
                json: cli.json,
                edge: match args.iso {
                    None => bench::Edge::Grpc,
                    Some(address) => bench::Edge::Iso(iso::IsoTarget {
                        address,
                        profile: args.iso_profile.profile(),
                        plain: args.iso_plain,
                        tls_domain: options
                            .tls_domain
                            .clone()
                            .or_else(|| connect::url_host(&options.gateway))
                            .unwrap_or_else(|| "localhost".to_owned()),
                        certs_dir: cli.certs_dir.clone(),
                        timeout: cli.timeout,
                    }),
                },
            };
            let probe = match &args.late_terminal {
                Some(terminal) => Some(
                    qr_bench::start(
                        &options,
                        qr_bench::ProbeConfig {
                            terminal: terminal.clone(),
                            interval: args.late_interval,
                            webhook_listen: args.webhook_listen,
                            webhook_secret: args
                                .webhook_secret
                                .clone()
                                .context("--late-terminal needs --webhook-secret")?,
                            platform_url: args.qr_platform.clone(),
                            certs_dir: cli.certs_dir.clone(),
                            local_date: config.local_date.clone(),
                            stan_start: args.late_stan_start,
                            settle: args.late_settle,
                        },
                    )
                    .await?,
                ),
                None => None,
            };
            let summary = bench::run(&options, config).await?;
            match probe {
                None => bench::print_summary(&summary, cli.json),
                Some(probe) => qr_bench::print(&summary, &probe.finish().await?, cli.json),
            }
        }
        Command::BrokerBench(args) => broker_bench::run(args).await,
        Command::Events(args) => {
            if args.limit == Some(0) {
                bail!("--limit must be at least 1");
            }
            events::run(events::EventsConfig {
                brokers: args.brokers,
                topic_prefix: args.topic_prefix,
                follow: args.follow,
                idle_timeout: args.idle_timeout,
                limit: args.limit,
                json: cli.json,
            })
            .await
            .map(|_| ())
        }
        Command::CloseBatch(args) => {
            settlement::run_close_batch(&options, &certificate, terminal_id, args, cli.json).await
        }
        Command::UploadBatch(args) => {
            settlement::run_upload_batch(&options, &certificate, terminal_id, args, cli.json).await
        }
        Command::Settlement(args) => {
            settlement::run_settlement(args, &terminal_id, &operator, cli.timeout, cli.json).await
        }
        Command::Watch(args) => {
            watch::run_watch(&options, &certificate, terminal_id, args, cli.json).await
        }
        Command::Webhooks(args) => webhooks::run_webhooks(args, cli.json).await,
        Command::Qr(args) if args.is_operator() => {
            qr::run_qr_operator(args, &operator, cli.timeout, cli.json).await
        }
        Command::Qr(args) => qr::run_qr(&options, &certificate, terminal_id, args, cli.json).await,
        Command::Redrive(args) => {
            operator::run_redrive(args, &operator, cli.timeout, cli.json).await
        }
        Command::Reversals(args) => {
            operator::run_reversals(args, &operator, cli.timeout, cli.json).await
        }
        Command::Iso(args) => {
            iso::run_iso(args, &cli.certs_dir, &certificate, cli.timeout, cli.json).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<AlreadyReported>() => ExitCode::FAILURE,
        Err(error) => {
            if let Some(status) = error.downcast_ref::<tonic::Status>() {
                print_status_error(status, json);
            } else {
                if json {
                    println!(
                        "{}",
                        json!({"error": {"code": null, "message": format!("{error:#}")}})
                    );
                }
                eprintln!("error: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("18446744073709551615m").is_err());
    }

    #[test]
    fn today_is_iso_date() {
        let today = today_utc().to_string();
        assert_eq!(LocalDate::parse(&today), Ok(today_utc()));
        assert_eq!(today.len(), 10);
    }

    #[test]
    fn random_stan_is_never_zero() {
        for _ in 0..100 {
            assert_ne!(random_stan().value(), 0);
        }
    }

    #[test]
    fn user_input_is_parsed_with_core_types() {
        let refused = |args: &[&str]| {
            let mut argv = vec!["posctl"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).unwrap_err().to_string()
        };
        let sale = ["sale", "--amount", "1", "--pan", "4111111111111111"];
        let with = |extra: &[&'static str]| {
            let mut args = sale.to_vec();
            args.extend_from_slice(extra);
            args
        };
        assert!(refused(&with(&["--stan", "12345"])).contains("stan: must be exactly 6"));
        assert!(refused(&with(&["--date", "2025-02-30"])).contains("local_date"));
        assert!(refused(&with(&["--currency", "EURO"])).contains("currency"));
        assert!(refused(&with(&["--currency", "XYZ"])).contains("unknown currency"));
        assert!(refused(&["--terminal", "../etc", "reprint-last"]).contains("terminal_id"));
        assert!(refused(&["--claim", "T1", "reprint-last"]).contains("terminal_id"));
        assert!(refused(&["bench", "--terminals", "TERM0001,x"]).contains("terminal_id"));
        // The card and the amount are the switch's to judge.
        let cli = Cli::try_parse_from([
            "posctl",
            "sale",
            "--amount",
            "-1",
            "--pan",
            "4111111111111112",
        ])
        .unwrap();
        let Command::Sale(args) = cli.command else {
            panic!("expected sale");
        };
        assert_eq!((args.pan.as_str(), args.amount), ("4111111111111112", -1));
    }

    #[test]
    fn a_redrive_says_who_and_why() {
        let cli = Cli::try_parse_from([
            "posctl",
            "redrive",
            "--transaction-id",
            "01a23462-640c-7367-8d86-1fa0f9da8477",
            "--operator",
            "ops.alice",
            "--reason",
            "INC-42",
        ])
        .unwrap();
        let Command::Redrive(args) = cli.command else {
            panic!("expected redrive");
        };
        assert_eq!(
            (args.operator.as_str(), args.reason.as_str()),
            ("ops.alice", "INC-42")
        );
        assert_eq!(args.url, operator::DEFAULT_AUTHORIZATION_URL);
        let missing = Cli::try_parse_from([
            "posctl",
            "redrive",
            "--transaction-id",
            "x",
            "--operator",
            "o",
        ])
        .unwrap_err()
        .to_string();
        assert!(missing.contains("--reason"), "{missing}");
    }

    #[test]
    fn bench_iso_takes_the_listener_and_its_profile_and_profile_needs_iso() {
        let cli = Cli::try_parse_from([
            "posctl",
            "bench",
            "--iso",
            "127.0.0.1:18584",
            "--iso-profile",
            "cup-pos",
        ])
        .unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("expected bench");
        };
        assert_eq!(args.iso, Some("127.0.0.1:18584".parse().unwrap()));
        assert_eq!(
            args.iso_profile.profile().name,
            iso8583::Profile::CUP_POS.name
        );
        assert!(!args.iso_plain);
        let refused = Cli::try_parse_from(["posctl", "bench", "--iso-profile", "cup-pos"])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("--iso"), "{refused}");
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "posctl",
            "bench",
            "--terminals",
            "TERM0001,TERM0002",
            "--duration",
            "500ms",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Bench(args) = cli.command else {
            panic!("expected bench");
        };
        assert_eq!(
            args.terminals,
            vec![
                TerminalId::parse("TERM0001").unwrap(),
                TerminalId::parse("TERM0002").unwrap()
            ]
        );
        assert_eq!(args.duration, Duration::from_millis(500));
        assert_eq!(args.concurrency, 16);

        let cli = Cli::try_parse_from([
            "posctl",
            "sale",
            "--amount",
            "-5",
            "--pan",
            "4111111111111111",
        ])
        .unwrap();
        let Command::Sale(args) = cli.command else {
            panic!("expected sale");
        };
        assert_eq!(args.amount, -5);
        assert_eq!(args.currency.code(), "EUR");
        assert_eq!(args.expiry, "2812");
        assert!(!args.no_ack);
        assert!(args.last_completed_stan.is_none());
    }

    #[test]
    fn parses_new_flags_and_reverse() {
        let cli = Cli::try_parse_from([
            "posctl",
            "sale",
            "--amount",
            "1050",
            "--pan",
            "4111111111111111",
            "--no-ack",
            "--last-completed-stan",
            "000041",
        ])
        .unwrap();
        let Command::Sale(args) = cli.command else {
            panic!("expected sale");
        };
        assert!(args.no_ack);
        assert_eq!(
            args.last_completed_stan.as_ref().map(Stan::as_str),
            Some("000041")
        );

        let cli = Cli::try_parse_from([
            "posctl",
            "reverse",
            "--stan",
            "000042",
            "--date",
            "2025-01-01",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Reverse(args) = cli.command else {
            panic!("expected reverse");
        };
        assert_eq!(args.stan.as_str(), "000042");
        assert_eq!(
            args.date.map(|d| d.to_string()).as_deref(),
            Some("2025-01-01")
        );
        assert!(Cli::try_parse_from(["posctl", "reverse"]).is_err());

        let cli = Cli::try_parse_from(["posctl", "bench"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("expected bench");
        };
        assert!(!args.ack);
        let cli = Cli::try_parse_from(["posctl", "bench", "--ack"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("expected bench");
        };
        assert!(args.ack);
    }

    #[test]
    fn parses_watch_and_webhooks() {
        let cli = Cli::try_parse_from(["posctl", "--terminal", "TERM0002", "watch"]).unwrap();
        assert_eq!(cli.terminal.as_str(), "TERM0002");
        let Command::Watch(args) = cli.command else {
            panic!("expected watch");
        };
        assert!(!args.no_ack);
        assert_eq!(args.count, None);
        assert_eq!(args.idle_timeout, Duration::from_secs(10));
        let cli = Cli::try_parse_from([
            "posctl",
            "watch",
            "--no-ack",
            "--count",
            "2",
            "--idle-timeout",
            "500ms",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Watch(args) = cli.command else {
            panic!("expected watch");
        };
        assert!(args.no_ack);
        assert_eq!(args.count, Some(2));
        assert_eq!(args.idle_timeout, Duration::from_millis(500));
        assert!(Cli::try_parse_from(["posctl", "watch", "--count", "0"]).is_err());

        let cli = Cli::try_parse_from([
            "posctl",
            "webhooks",
            "listen",
            "--secret",
            "whsec_0123456789abcdef",
            "--count",
            "3",
        ])
        .unwrap();
        let Command::Webhooks(webhooks::WebhooksArgs {
            command: webhooks::WebhooksCommand::Listen(args),
        }) = cli.command
        else {
            panic!("expected webhooks listen");
        };
        assert_eq!(args.address, "127.0.0.1:18085".parse().unwrap());
        assert_eq!(args.secret, "whsec_0123456789abcdef");
        assert_eq!(args.count, Some(3));
    }

    #[test]
    fn unknown_outcomes_are_the_transport_failures() {
        assert!(outcome_unknown(Code::DeadlineExceeded));
        assert!(outcome_unknown(Code::Unavailable));
        assert!(!outcome_unknown(Code::InvalidArgument));
        assert!(!outcome_unknown(Code::AlreadyExists));
        assert!(!outcome_unknown(Code::PermissionDenied));
        let reported = anyhow::Error::new(AlreadyReported);
        assert!(reported.is::<AlreadyReported>());
    }

    #[test]
    fn qr_commands_parse_and_status_takes_one_key() {
        let cli = Cli::try_parse_from([
            "posctl",
            "qr",
            "pay",
            "--code",
            "134567890123456789",
            "--amount",
            "1000",
            "--no-ack",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Qr(_)));
        assert!(Cli::try_parse_from(["posctl", "qr", "order", "--amount", "500"]).is_ok());
        assert!(
            Cli::try_parse_from(["posctl", "qr", "order", "--amount", "500", "--png", "o.png"])
                .is_ok()
        );
        assert!(
            Cli::try_parse_from(["posctl", "bench", "--late-terminal", "TERM0003"]).is_err(),
            "late payments are QR payments"
        );
        assert!(
            Cli::try_parse_from(["posctl", "bench", "--qr", "--late-terminal", "TERM0003"]).is_ok()
        );
        assert!(
            Cli::try_parse_from([
                "posctl",
                "qr",
                "status",
                "--order-id",
                "Q1",
                "--stan",
                "000001"
            ])
            .is_err()
        );
    }
}
