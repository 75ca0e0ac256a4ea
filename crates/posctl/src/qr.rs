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
    Money, QrAcknowledgeRequest, QrOrderRequest, QrPayRequest, QrPaymentRecord, QrStatusRequest,
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
