//! `posctl qr pay|order|status|ack`: a terminal's QR payments through the
//! gateway (ADR 29). `pay` sends the scanned payment code (never printed),
//! asks `QrStatus` while the answer is `in_progress` until the terminal's
//! deadline, and acknowledges an approval (the receipt printed) unless
//! `--no-ack`; `order` prints the code's content to show.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use switch_core::{Clock, Currency, LocalDate, Stan, SystemClock, TerminalId};
use switch_proto::v1::{
    Money, QrAcknowledgeRequest, QrOrderRequest, QrPayRequest, QrPaymentRecord, QrRefundRecord,
    QrStatusRequest,
};

use crate::connect::{GatewayOptions, connect};

/// How often `pay` asks for the status while the shopper confirms.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct QrArgs {
    #[command(subcommand)]
    command: QrCommand,
}

#[derive(Debug, Subcommand)]
enum QrCommand {
    /// Consumer-presented: charge the shopper's scanned payment code.
    Pay(PayArgs),
    /// Merchant-presented: create an order and print the code to show.
    Order(OrderArgs),
    /// Where a QR payment stands, by order id or STAN.
    Status(StatusArgs),
    /// The receipt of a paid QR payment was printed.
    Ack {
        #[arg(long)]
        order_id: String,
    },
    /// Operator: refund a confirmed QR payment in full or in part (asks
    /// authorization directly, with the operator certificate).
    Refund(RefundArgs),
    /// Operator: send a dead-lettered QR call round again: the payment's
    /// owed cancel, close or refund, or the merchant refund named.
    Redrive(RedriveArgs),
}

#[derive(Debug, Args)]
struct PayArgs {
    /// The shopper's payment code as scanned (16-24 digits); never printed.
    #[arg(long)]
    code: String,
    /// Amount in integer minor units; any integer is sent.
    #[arg(long, allow_negative_numbers = true)]
    amount: i64,
    #[arg(long, default_value = "EUR", value_parser = Currency::parse)]
    currency: Currency,
    /// Default: random.
    #[arg(long, value_parser = Stan::parse)]
    stan: Option<Stan>,
    /// Default: today, UTC.
    #[arg(long, value_parser = LocalDate::parse)]
    date: Option<LocalDate>,
    /// Do not acknowledge an approval (a terminal that printed nothing: S3).
    #[arg(long)]
    no_ack: bool,
    /// Do not ask for the status after an `in_progress` answer.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, Args)]
struct OrderArgs {
    #[arg(long, allow_negative_numbers = true)]
    amount: i64,
    #[arg(long, default_value = "EUR", value_parser = Currency::parse)]
    currency: Currency,
    #[arg(long, value_parser = Stan::parse)]
    stan: Option<Stan>,
    #[arg(long, value_parser = LocalDate::parse)]
    date: Option<LocalDate>,
    /// Also write the code as a QR image (PNG) to this file.
    #[arg(long, value_name = "FILE")]
    png: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[arg(long, conflicts_with = "stan")]
    order_id: Option<String>,
    #[arg(long, value_parser = Stan::parse)]
    stan: Option<Stan>,
    #[arg(long, value_parser = LocalDate::parse)]
    date: Option<LocalDate>,
}

fn today() -> LocalDate {
    LocalDate::from_date(SystemClock.now().date())
}

fn stan_or_random(stan: Option<Stan>) -> Stan {
    stan.unwrap_or_else(|| {
        let value: u32 = rand::random_range(1..=999_999);
        Stan::parse(&format!("{value:06}")).expect("six digits are a STAN")
    })
}

fn print(record: &QrPaymentRecord, duplicate: Option<bool>, as_json: bool) {
    let amount = record
        .amount
        .as_ref()
        .map(|m| format!("{} {}", m.minor_units, m.currency))
        .unwrap_or_default();
    if as_json {
        let mut value = json!({
            "transaction_id": record.transaction_id,
            "order_id": record.order_id,
            "mode": record.mode,
            "state": record.state,
            "answer": record.answer,
            "message": record.message,
            "stan": record.stan,
            "local_date": record.local_date,
            "amount": amount,
            "code": record.code,
            "platform_txn_id": record.platform_txn_id,
            "terminal_deadline": record.terminal_deadline,
        });
        if let (Some(duplicate), Some(obj)) = (duplicate, value.as_object_mut()) {
            obj.insert("duplicate".into(), json!(duplicate));
        }
        println!("{value}");
    } else {
        let mut line = format!(
            "{} {} order {} STAN {} {}: {} ({})",
            record.answer,
            amount,
            record.order_id,
            record.stan,
            record.local_date,
            record.message,
            record.state
        );
        if !record.code.is_empty() {
            line.push_str(&format!("\ncode: {}", record.code));
        }
        if !record.platform_txn_id.is_empty() {
            line.push_str(&format!("\nwallet transaction: {}", record.platform_txn_id));
        }
        if duplicate == Some(true) {
            line.push_str("\n(duplicate: the original answer)");
        }
        println!("{line}");
    }
}

pub async fn run_qr(
    options: &GatewayOptions,
    certificate: &TerminalId,
    terminal_id: TerminalId,
    args: QrArgs,
    as_json: bool,
) -> Result<()> {
    let mut client = connect(options, certificate).await?;
    match args.command {
        QrCommand::Refund(_) | QrCommand::Redrive(_) => {
            anyhow::bail!("an operator command: run by run_qr_operator")
        }
        QrCommand::Pay(pay) => {
            let stan = stan_or_random(pay.stan);
            let local_date = pay.date.unwrap_or_else(today);
            let response = client
                .qr_pay(QrPayRequest {
                    terminal_id: terminal_id.to_string(),
                    stan: stan.to_string(),
                    local_date: local_date.to_string(),
                    merchant_id: String::new(),
                    payment_code: pay.code,
                    amount: Some(Money {
                        minor_units: pay.amount,
                        currency: pay.currency.to_string(),
                    }),
                })
                .await?
                .into_inner();
            let duplicate = response.duplicate;
            let mut record = response
                .payment
                .ok_or_else(|| anyhow::anyhow!("the gateway answered without the payment"))?;
            let deadline = tokio::time::Instant::now() + terminal_wait(&record);
            while record.answer == "in_progress"
                && !pay.no_wait
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(POLL).await;
                record = client
                    .qr_status(QrStatusRequest {
                        terminal_id: terminal_id.to_string(),
                        order_id: record.order_id.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
            }
            if record.answer == "approved" && !pay.no_ack {
                record = client
                    .qr_acknowledge(QrAcknowledgeRequest {
                        terminal_id: terminal_id.to_string(),
                        order_id: record.order_id.clone(),
                    })
                    .await?
                    .into_inner();
            }
            print(&record, Some(duplicate), as_json);
        }
        QrCommand::Order(order) => {
            let response = client
                .qr_order(QrOrderRequest {
                    terminal_id: terminal_id.to_string(),
                    stan: stan_or_random(order.stan).to_string(),
                    local_date: order.date.unwrap_or_else(today).to_string(),
                    merchant_id: String::new(),
                    amount: Some(Money {
                        minor_units: order.amount,
                        currency: order.currency.to_string(),
                    }),
                })
                .await?
                .into_inner();
            let record = response
                .payment
                .ok_or_else(|| anyhow::anyhow!("the gateway answered without the payment"))?;
            print(&record, Some(response.duplicate), as_json);
            crate::qr_image::show_order(&record.code, order.png.as_deref(), as_json)?;
        }
        QrCommand::Status(status) => {
            let record = client
                .qr_status(QrStatusRequest {
                    terminal_id: terminal_id.to_string(),
                    order_id: status.order_id.unwrap_or_default(),
                    stan: status.stan.map(|s| s.to_string()).unwrap_or_default(),
                    local_date: status.date.unwrap_or_else(today).to_string(),
                })
                .await?
                .into_inner();
            print(&record, None, as_json);
        }
        QrCommand::Ack { order_id } => {
            let record = client
                .qr_acknowledge(QrAcknowledgeRequest {
                    terminal_id: terminal_id.to_string(),
                    order_id,
                })
                .await?
                .into_inner();
            print(&record, None, as_json);
        }
    }
    Ok(())
}

/// How long the terminal waits: until the record's deadline (RFC 3339),
/// 30 s when it cannot be read.
fn terminal_wait(record: &QrPaymentRecord) -> Duration {
    let deadline = time::OffsetDateTime::parse(
        &record.terminal_deadline,
        &time::format_description::well_known::Rfc3339,
    );
    match deadline {
        Ok(deadline) => {
            let left = deadline - SystemClock.now();
            Duration::try_from(left).unwrap_or(Duration::ZERO)
        }
        Err(_) => Duration::from_secs(30),
    }
}

impl QrArgs {
    /// `qr refund` and `qr redrive` are an operator's, not a terminal's.
    pub fn is_operator(&self) -> bool {
        matches!(self.command, QrCommand::Refund(_) | QrCommand::Redrive(_))
    }
}

#[derive(Debug, Args)]
struct RefundArgs {
    /// The payment's order id.
    #[arg(long = "order")]
    order_id: String,
    /// The refund's key (1-24 letters, digits, '_' or '-'): a repeat with
    /// the same key is the same refund.
    #[arg(long)]
    refund_id: String,
    /// In major units, e.g. 1.00 (no more decimals than the currency has).
    #[arg(long)]
    amount: String,
    #[arg(long, default_value = "EUR", value_parser = Currency::parse)]
    currency: Currency,
    /// Who asks; recorded with the refund.
    #[arg(long, env = "POSCTL_OPERATOR")]
    operator: String,
    /// Why (the goods came back, the ticket); recorded with the refund.
    #[arg(long)]
    reason: String,
    /// URL of authorization's internal gRPC service (https: mutual TLS with
    /// the operator certificate).
    #[arg(long = "authorization", env = "POSCTL_AUTHORIZATION", default_value = crate::operator::DEFAULT_AUTHORIZATION_URL, value_name = "URL")]
    url: String,
}

#[derive(Debug, Args)]
struct RedriveArgs {
    #[arg(long = "order")]
    order_id: String,
    /// The merchant refund to redrive; without it, the payment's owed
    /// cancel, close or refund.
    #[arg(long)]
    refund_id: Option<String>,
    #[arg(long, env = "POSCTL_OPERATOR")]
    operator: String,
    #[arg(long)]
    reason: String,
    #[arg(long = "authorization", env = "POSCTL_AUTHORIZATION", default_value = crate::operator::DEFAULT_AUTHORIZATION_URL, value_name = "URL")]
    url: String,
}

/// `amount` in major units ("1", "1.5", "1.00") as integer minor units of
/// `currency`, without floating point: more decimals than the currency
/// has is an error, not a rounding.
fn minor_units(amount: &str, currency: Currency) -> Result<i64> {
    let exponent = usize::from(currency.exponent());
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (amount.contains('.') && !digits(fraction)) || fraction.len() > exponent {
        anyhow::bail!(
            "--amount: '{amount}' is not an amount of {} (at most {exponent} decimals)",
            currency.code()
        );
    }
    let padded = format!("{whole}{fraction:0<exponent$}");
    padded
        .parse::<i64>()
        .map_err(|_| anyhow::anyhow!("--amount: '{amount}' is too large"))
}

fn refund_json(refund: &QrRefundRecord) -> serde_json::Value {
    json!({
        "refund_id": refund.refund_id,
        "transaction_id": refund.transaction_id,
        "order_id": refund.order_id,
        "merchant_id": refund.merchant_id,
        "amount": crate::output::money_json(refund.amount.as_ref()),
        "refunded_total": crate::output::money_json(refund.refunded_total.as_ref()),
        "state": refund.state,
        "attempts": refund.attempts,
        "last_error": refund.last_error,
        "requested_at": refund.requested_at,
        "completed_at": refund.completed_at,
        "operator": refund.operator,
        "reason": refund.reason,
    })
}

fn print_refund(refund: &QrRefundRecord, duplicate: Option<bool>, as_json: bool) {
    if as_json {
        let mut value = refund_json(refund);
        if let (Some(duplicate), Some(obj)) = (duplicate, value.as_object_mut()) {
            obj.insert("duplicate".into(), json!(duplicate));
        }
        println!("{value}");
        return;
    }
    let mut line = format!(
        "refund {} of order {}: {} {} (refunded in all: {}), attempts {}",
        refund.refund_id,
        refund.order_id,
        crate::output::format_amount(refund.amount.as_ref()),
        refund.state,
        crate::output::format_amount(refund.refunded_total.as_ref()),
        refund.attempts,
    );
    if !refund.last_error.is_empty() {
        line.push_str(&format!("\nlast error: {}", refund.last_error));
    }
    if duplicate == Some(true) {
        line.push_str("\n(duplicate: the refund as it stands)");
    }
    println!("{line}");
}

/// `posctl qr refund|redrive`: authorization's operator RPCs.
pub async fn run_qr_operator(
    args: QrArgs,
    tls: &crate::connect::OperatorTls,
    timeout: Duration,
    as_json: bool,
) -> Result<()> {
    use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
    use switch_proto::v1::{QrRedriveRequest, QrRefundRequest};
    let answered = match args.command {
        QrCommand::Refund(refund) => {
            let minor = minor_units(&refund.amount, refund.currency)?;
            let channel =
                crate::connect::operator_channel("authorization", &refund.url, tls, timeout)
                    .await?;
            AuthorizationServiceClient::new(channel)
                .qr_refund(QrRefundRequest {
                    order_id: refund.order_id,
                    transaction_id: String::new(),
                    refund_id: refund.refund_id,
                    amount: Some(Money {
                        minor_units: minor,
                        currency: refund.currency.to_string(),
                    }),
                    operator: refund.operator,
                    reason: refund.reason,
                })
                .await
                .map(|answer| {
                    let answer = answer.into_inner();
                    if let Some(record) = &answer.refund {
                        print_refund(record, Some(answer.duplicate), as_json);
                    }
                })
        }
        QrCommand::Redrive(redrive) => {
            let channel =
                crate::connect::operator_channel("authorization", &redrive.url, tls, timeout)
                    .await?;
            AuthorizationServiceClient::new(channel)
                .qr_redrive(QrRedriveRequest {
                    order_id: redrive.order_id,
                    refund_id: redrive.refund_id.unwrap_or_default(),
                    operator: redrive.operator,
                    reason: redrive.reason,
                })
                .await
                .map(|answer| {
                    let answer = answer.into_inner();
                    match (&answer.refund, &answer.payment) {
                        (Some(refund), _) => print_refund(refund, None, as_json),
                        (None, Some(payment)) => print(payment, None, as_json),
                        (None, None) => {}
                    }
                })
        }
        _ => anyhow::bail!("a terminal's command: run by run_qr"),
    };
    answered.map_err(|status| {
        crate::output::print_status_error(&status, as_json);
        crate::AlreadyReported.into()
    })
}

#[cfg(test)]
mod operator_tests {
    use super::*;

    #[test]
    fn an_amount_in_major_units_becomes_minor_units_without_rounding() {
        let eur = Currency::parse("EUR").expect("EUR");
        let jpy = Currency::parse("JPY").expect("JPY");
        assert_eq!(minor_units("1.00", eur).expect("1.00"), 100);
        assert_eq!(minor_units("1.5", eur).expect("1.5"), 150);
        assert_eq!(minor_units("12", eur).expect("12"), 1_200);
        assert_eq!(minor_units("500", jpy).expect("500"), 500);
        for bad in ["1.005", "-1", "1.", ".5", "1,00", "", "1e3"] {
            assert!(minor_units(bad, eur).is_err(), "{bad}");
        }
        assert!(minor_units("1.0", jpy).is_err());
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        qr: QrArgs,
    }

    #[test]
    fn refund_and_redrive_parse_as_operator_commands() {
        use clap::Parser;
        let refund = Cli::try_parse_from([
            "qr",
            "refund",
            "--order",
            "Q1",
            "--refund-id",
            "R1",
            "--amount",
            "1.00",
            "--currency",
            "EUR",
            "--operator",
            "ops.alice",
            "--reason",
            "returned",
        ])
        .expect("refund parses");
        assert!(refund.qr.is_operator());
        let redrive = Cli::try_parse_from([
            "qr",
            "redrive",
            "--order",
            "Q1",
            "--operator",
            "ops.alice",
            "--reason",
            "back",
        ])
        .expect("redrive parses");
        assert!(redrive.qr.is_operator());
        let status = Cli::try_parse_from(["qr", "status", "--order-id", "Q1"]).expect("status");
        assert!(!status.qr.is_operator());
        assert!(Cli::try_parse_from(["qr", "refund", "--order", "Q1"]).is_err());
    }
}
