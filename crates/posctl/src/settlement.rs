//! Batch close, batch upload and settlement.
//!
//! `close-batch` and `upload-batch` go through the terminal gateway as the
//! terminal (the gateway takes the merchant from the certificate), like a
//! terminal's ISO 8583 0500 and 0320. `settlement status` and
//! `settlement run` speak to the settlement batcher's internal
//! `SettlementService` directly, in plaintext.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{Value, json};
use switch_proto::v1::settlement_service_client::SettlementServiceClient;
use switch_proto::v1::settlement_status_request::Query;
use switch_proto::v1::{
    BatchResult, CloseBatchRequest, CloseBatchResponse, CurrencyTotals, MerchantDay,
    MerchantPayout, Money, RunSettlementRequest, RunSettlementResponse, SettlementState,
    SettlementStatusRequest, SettlementStatusResponse, TerminalTransaction, TransactionSettlement,
    UploadBatchRequest, UploadBatchResponse, UploadedTransaction, WindowSummary,
};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::connect::{GatewayOptions, connect};
use crate::output::{
    format_amount, format_money, format_table, money_json, or_dash, print_status_error,
    response_code_description, status_line,
};
use crate::{AlreadyReported, today_utc};

/// Shape of a `--totals` value.
pub const TOTALS_SHAPE: &str = "CUR:SALES_COUNT:SALES_MINOR:REVERSALS_COUNT:REVERSALS_MINOR";

/// Shape of a `--sale` value.
pub const SALE_SHAPE: &str = "STAN:DATE:AMOUNT:CURRENCY[:APPROVAL]";

/// Default URL of the settlement batcher's internal gRPC service.
pub const DEFAULT_SETTLEMENT_URL: &str = "http://127.0.0.1:50054";

#[derive(Debug, Args)]
pub struct CloseBatchArgs {
    /// The terminal's batch number, exactly 6 digits.
    #[arg(long, value_name = "NNNNNN")]
    pub batch: String,
    /// The terminal's totals in one currency (repeat per currency; none at
    /// all closes an empty batch). Amounts in integer minor units, e.g.
    /// EUR:3:3000:0:0 = 3 sales of EUR 30.00 in all, no reversals.
    #[arg(long = "totals", value_name = TOTALS_SHAPE, value_parser = parse_totals_spec)]
    pub totals: Vec<CurrencyTotals>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("upload").required(true).args(["sales", "no_sales"])))]
pub struct UploadBatchArgs {
    /// The batch number of the out-of-balance close, exactly 6 digits.
    #[arg(long, value_name = "NNNNNN")]
    pub batch: String,
    /// One sale the terminal completed (repeatable). DATE is YYYY-MM-DD or
    /// `today` (UTC); AMOUNT in integer minor units; APPROVAL optional,
    /// e.g. 000123:today:1050:EUR:A1B2C3.
    #[arg(long = "sale", value_name = SALE_SHAPE, value_parser = parse_sale_spec)]
    pub sales: Vec<UploadedTransaction>,
    /// Upload no sale at all: the terminal completed none of the batch, so
    /// every unconfirmed approval of the host in it is an orphan and reversed.
    #[arg(long)]
    pub no_sales: bool,
}

#[derive(Debug, Args)]
pub struct SettlementArgs {
    /// URL of the settlement batcher's internal gRPC service (plaintext).
    #[arg(
        long = "settlement",
        global = true,
        env = "POSCTL_SETTLEMENT",
        default_value = DEFAULT_SETTLEMENT_URL,
        value_name = "URL"
    )]
    pub url: String,
    #[command(subcommand)]
    pub command: SettlementCommand,
}

#[derive(Debug, Subcommand)]
pub enum SettlementCommand {
    /// Where payments are: paid, pending, held or not payable, and why.
    Status(StatusArgs),
    /// Close the open settlement windows at a cut-off and pay them out.
    Run(RunArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("query").required(true).args(["rrn", "stan", "merchant"])))]
pub struct StatusArgs {
    /// Retrieval reference number of the payment (12 characters).
    #[arg(long)]
    pub rrn: Option<String>,
    /// STAN of a payment of this terminal (--terminal, or --claim).
    #[arg(long)]
    pub stan: Option<String>,
    /// With --stan: the terminal's local date, YYYY-MM-DD (default: the most
    /// recent transaction with that STAN).
    #[arg(
        long,
        requires = "stan",
        conflicts_with_all = ["rrn", "merchant"],
        value_parser = parse_date
    )]
    pub date: Option<String>,
    /// Every approval of a merchant on one day (needs --day).
    #[arg(long, value_name = "MID", requires = "day")]
    pub merchant: Option<String>,
    /// With --merchant: the UTC day the payments were approved, YYYY-MM-DD.
    #[arg(
        long,
        requires = "merchant",
        conflicts_with_all = ["rrn", "stan"],
        value_parser = parse_date
    )]
    pub day: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Merchant to settle (repeatable; default: every merchant with an open
    /// window).
    #[arg(long = "merchant", value_name = "MID")]
    pub merchants: Vec<String>,
    /// Cut-off, RFC 3339 (default: now); approvals after it stay open.
    #[arg(long, value_name = "RFC3339", value_parser = parse_cutoff)]
    pub cutoff: Option<String>,
}

// ---------------------------------------------------------------------------
// Parsing of the specs.

fn parse_currency(field: &str, text: &str) -> Result<String, String> {
    if text.len() != 3 || !text.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!(
            "{field} {text:?} must be a 3-letter ISO 4217 code, e.g. EUR"
        ));
    }
    Ok(text.to_ascii_uppercase())
}

fn parse_integer(field: &str, text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .map_err(|_| format!("{field} {text:?} is not an integer (minor units, no decimal point)"))
}

/// Parses a `--totals` value, `CUR:SALES_COUNT:SALES_MINOR:REVERSALS_COUNT:REVERSALS_MINOR`.
/// The numbers only have to be integers: the switch judges their values.
pub fn parse_totals_spec(spec: &str) -> Result<CurrencyTotals, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [
        currency,
        sales_count,
        sales_minor,
        reversals_count,
        reversals_minor,
    ] = parts[..]
    else {
        return Err(format!(
            "expected {TOTALS_SHAPE} (5 fields separated by ':'), got {} field(s)",
            parts.len()
        ));
    };
    Ok(CurrencyTotals {
        currency: parse_currency("CUR", currency)?,
        sales_count: parse_integer("SALES_COUNT", sales_count)?,
        sales_minor_units: parse_integer("SALES_MINOR", sales_minor)?,
        reversals_count: parse_integer("REVERSALS_COUNT", reversals_count)?,
        reversals_minor_units: parse_integer("REVERSALS_MINOR", reversals_minor)?,
    })
}

fn is_iso_date(text: &str) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    text.len() == 10 && time::Date::parse(text, &format).is_ok()
}

/// Value parser of a `YYYY-MM-DD` flag.
pub fn parse_date(text: &str) -> Result<String, String> {
    if is_iso_date(text) {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a date YYYY-MM-DD"))
    }
}

/// Value parser of `--cutoff`: kept as given once it parses as RFC 3339.
pub fn parse_cutoff(text: &str) -> Result<String, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|_| text.to_owned())
        .map_err(|_| format!("{text:?} is not RFC 3339, e.g. 2025-01-31T18:00:00Z"))
}

/// Parses a `--sale` value; `today` is today's UTC date.
pub fn parse_sale_spec(spec: &str) -> Result<UploadedTransaction, String> {
    parse_sale_spec_on(spec, &today_utc())
}

/// [`parse_sale_spec`] with `today` given.
pub fn parse_sale_spec_on(spec: &str, today: &str) -> Result<UploadedTransaction, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (stan, date, amount, currency, approval) = match parts[..] {
        [stan, date, amount, currency] => (stan, date, amount, currency, ""),
        [stan, date, amount, currency, approval] => (stan, date, amount, currency, approval),
        _ => {
            return Err(format!(
                "expected {SALE_SHAPE} (4 or 5 fields separated by ':'), got {} field(s)",
                parts.len()
            ));
        }
    };
    if stan.len() != 6 || !stan.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("STAN {stan:?} must be exactly 6 digits"));
    }
    let local_date = if date.eq_ignore_ascii_case("today") {
        today.to_owned()
    } else if is_iso_date(date) {
        date.to_owned()
    } else {
        return Err(format!("DATE {date:?} must be YYYY-MM-DD or `today`"));
    };
    Ok(UploadedTransaction {
        stan: stan.to_owned(),
        local_date,
        amount: Some(Money {
            minor_units: parse_integer("AMOUNT", amount)?,
            currency: parse_currency("CURRENCY", currency)?,
        }),
        approval_code: approval.to_owned(),
    })
}

// ---------------------------------------------------------------------------
// Rendering.

/// Display name of a batch result, e.g. `OUT OF BALANCE`.
pub fn batch_result_text(result: i32) -> &'static str {
    match BatchResult::try_from(result) {
        Ok(BatchResult::Balanced) => "BALANCED",
        Ok(BatchResult::OutOfBalance) => "OUT OF BALANCE",
        Ok(BatchResult::Reconciled) => "RECONCILED",
        Ok(BatchResult::Unspecified) => "UNSPECIFIED",
        Err(_) => "UNKNOWN",
    }
}

/// JSON name of a batch result, e.g. `out_of_balance`.
pub fn batch_result_json(result: i32) -> &'static str {
    match BatchResult::try_from(result) {
        Ok(BatchResult::Balanced) => "balanced",
        Ok(BatchResult::OutOfBalance) => "out_of_balance",
        Ok(BatchResult::Reconciled) => "reconciled",
        Ok(BatchResult::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

fn totals_json(totals: &CurrencyTotals) -> Value {
    json!({
        "currency": totals.currency,
        "sales_count": totals.sales_count,
        "sales_minor_units": totals.sales_minor_units,
        "reversals_count": totals.reversals_count,
        "reversals_minor_units": totals.reversals_minor_units,
    })
}

fn totals_text(totals: &CurrencyTotals) -> String {
    format!(
        "{}: {} sales {}, {} reversals {}",
        totals.currency,
        totals.sales_count,
        format_money(totals.sales_minor_units, &totals.currency),
        totals.reversals_count,
        format_money(totals.reversals_minor_units, &totals.currency),
    )
}

fn duplicate_suffix(duplicate: bool) -> &'static str {
    if duplicate { " (duplicate)" } else { "" }
}

/// JSON answer of `close-batch`.
pub fn close_batch_json(response: &CloseBatchResponse) -> Value {
    json!({
        "result": batch_result_json(response.result),
        "response_code": response.response_code,
        "reason": response.reason,
        "duplicate": response.duplicate,
        "host_transactions": response.host_transactions,
        "host_totals": response.host_totals.iter().map(totals_json).collect::<Vec<_>>(),
    })
}

/// What to do after an out-of-balance close.
pub fn upload_hint(batch: &str) -> String {
    format!("upload the batch: posctl upload-batch --batch {batch} --sale {SALE_SHAPE} ...")
}

/// Text answer of `close-batch`; ends with the upload hint when out of
/// balance.
pub fn close_batch_text(response: &CloseBatchResponse, batch: &str) -> String {
    let mut lines = vec![format!(
        "Batch {batch}: {}{}",
        batch_result_text(response.result),
        duplicate_suffix(response.duplicate)
    )];
    lines.push(format!(
        "Response code:     {} ({})",
        or_dash(&response.response_code),
        response_code_description(&response.response_code)
    ));
    if !response.reason.is_empty() {
        lines.push(format!("Reason:            {}", response.reason));
    }
    lines.push(format!("Host transactions: {}", response.host_transactions));
    if response.host_totals.is_empty() {
        lines.push("Host totals:       none".to_owned());
    } else {
        lines.push("Host totals:".to_owned());
        lines.extend(
            response
                .host_totals
                .iter()
                .map(|t| format!("  {}", totals_text(t))),
        );
    }
    if response.result == BatchResult::OutOfBalance as i32 {
        lines.push(upload_hint(batch));
    }
    lines.join("\n")
}

/// How many transactions got each outcome.
pub fn outcome_counts(response: &UploadBatchResponse) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for outcome in &response.outcomes {
        *counts.entry(outcome.outcome.clone()).or_insert(0) += 1;
    }
    counts
}

/// JSON answer of `upload-batch`.
pub fn upload_batch_json(response: &UploadBatchResponse) -> Value {
    let outcomes: Vec<Value> = response
        .outcomes
        .iter()
        .map(|o| {
            json!({
                "stan": o.stan,
                "local_date": o.local_date,
                "transaction_id": o.transaction_id,
                "rrn": o.rrn,
                "outcome": o.outcome,
                "detail": o.detail,
            })
        })
        .collect();
    json!({
        "result": batch_result_json(response.result),
        "duplicate": response.duplicate,
        "outcomes": outcomes,
        "counts": outcome_counts(response),
    })
}

/// Text answer of `upload-batch`: one line per transaction, then the count
/// of each outcome.
pub fn upload_batch_text(response: &UploadBatchResponse, batch: &str) -> String {
    let mut lines = vec![format!(
        "Batch {batch}: {}{}",
        batch_result_text(response.result),
        duplicate_suffix(response.duplicate)
    )];
    if response.outcomes.is_empty() {
        lines.push("no transaction to reconcile".to_owned());
        return lines.join("\n");
    }
    let rows: Vec<Vec<String>> = response
        .outcomes
        .iter()
        .map(|o| {
            vec![
                or_dash(&o.stan),
                or_dash(&o.local_date),
                or_dash(&o.rrn),
                or_dash(&o.outcome),
                or_dash(&o.detail),
            ]
        })
        .collect();
    lines.push(format_table(
        &["STAN", "DATE", "RRN", "OUTCOME", "DETAIL"],
        &rows,
    ));
    let counts = outcome_counts(response);
    let summary: Vec<String> = counts
        .iter()
        .map(|(outcome, n)| format!("{n} {outcome}"))
        .collect();
    lines.push(format!(
        "Summary: {} ({} transactions)",
        summary.join(", "),
        response.outcomes.len()
    ));
    lines.join("\n")
}

/// Display name of a settlement state, e.g. `NOT PAYABLE`.
pub fn settlement_state_text(state: i32) -> &'static str {
    match SettlementState::try_from(state) {
        Ok(SettlementState::Paid) => "PAID",
        Ok(SettlementState::Pending) => "PENDING",
        Ok(SettlementState::Held) => "HELD",
        Ok(SettlementState::NotPayable) => "NOT PAYABLE",
        Ok(SettlementState::Unspecified) => "UNSPECIFIED",
        Err(_) => "UNKNOWN",
    }
}

/// JSON (lower-case) name of a settlement state, e.g. `not_payable`.
pub fn settlement_state_json(state: i32) -> &'static str {
    match SettlementState::try_from(state) {
        Ok(SettlementState::Paid) => "paid",
        Ok(SettlementState::Pending) => "pending",
        Ok(SettlementState::Held) => "held",
        Ok(SettlementState::NotPayable) => "not_payable",
        Ok(SettlementState::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

fn transaction_settlement_json(t: &TransactionSettlement) -> Value {
    json!({
        "transaction_id": t.transaction_id,
        "terminal_id": t.terminal_id,
        "merchant_id": t.merchant_id,
        "stan": t.stan,
        "local_date": t.local_date,
        "rrn": t.rrn,
        "amount": money_json(t.amount.as_ref()),
        "state": settlement_state_json(t.state),
        "reason": t.reason,
        "window_id": t.window_id,
        "batch_number": t.batch_number,
        "paid_at": t.paid_at,
        "payout_reference": t.payout_reference,
        "conflict": t.conflict,
    })
}

/// JSON answer of `settlement status`: an array, one object per payment.
pub fn settlement_status_json(response: &SettlementStatusResponse) -> Value {
    Value::Array(
        response
            .transactions
            .iter()
            .map(transaction_settlement_json)
            .collect(),
    )
}

/// Text answer of `settlement status`: a table, then the count per state.
pub fn settlement_status_text(response: &SettlementStatusResponse) -> String {
    let rows: Vec<Vec<String>> = response
        .transactions
        .iter()
        .map(|t| {
            vec![
                or_dash(&t.terminal_id),
                or_dash(&t.stan),
                or_dash(&t.local_date),
                or_dash(&t.rrn),
                format_amount(t.amount.as_ref()),
                settlement_state_text(t.state).to_owned(),
                or_dash(&t.reason),
                or_dash(&t.window_id),
                or_dash(&t.paid_at),
                or_dash(&t.payout_reference),
                if t.conflict { "CONFLICT" } else { "" }.to_owned(),
            ]
        })
        .collect();
    let table = format_table(
        &[
            "TERMINAL",
            "STAN",
            "DATE",
            "RRN",
            "AMOUNT",
            "STATE",
            "REASON",
            "WINDOW",
            "PAID_AT",
            "PAYOUT_REF",
            "",
        ],
        &rows,
    );
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    for t in &response.transactions {
        *counts.entry(t.state).or_insert(0) += 1;
    }
    // Paid first, then pending, held and not payable (enum order 2, 1, 3, 4).
    let order = |state: i32| {
        if state == SettlementState::Paid as i32 {
            0
        } else {
            state.max(0) + 1
        }
    };
    let mut states: Vec<(i32, usize)> = counts.into_iter().collect();
    states.sort_by_key(|(state, _)| order(*state));
    let summary: Vec<String> = states
        .iter()
        .map(|(state, n)| format!("{n} {}", settlement_state_text(*state).to_lowercase()))
        .collect();
    let total = response.transactions.len();
    let noun = if total == 1 { "payment" } else { "payments" };
    format!("{table}\n{total} {noun}: {}", summary.join(", "))
}

fn payout_json(p: &MerchantPayout) -> Value {
    json!({
        "currency": p.currency,
        "transaction_count": p.transaction_count,
        "gross_minor_units": p.gross_minor_units,
        "fee_minor_units": p.fee_minor_units,
        "net_minor_units": p.net_minor_units,
        "payout_reference": p.payout_reference,
    })
}

fn window_json(w: &WindowSummary) -> Value {
    json!({
        "window_id": w.window_id,
        "merchant_id": w.merchant_id,
        "sequence": w.sequence,
        "cutoff": w.cutoff,
        "payouts": w.payouts.iter().map(payout_json).collect::<Vec<_>>(),
        "held_count": w.held_count,
        "fee_basis_points": w.fee_basis_points,
    })
}

/// JSON answer of `settlement run`: the whole response, with the proto's
/// field names.
pub fn run_settlement_json(response: &RunSettlementResponse) -> Value {
    json!({
        "windows": response.windows.iter().map(window_json).collect::<Vec<_>>(),
        "csv_path": response.csv_path,
        "pain001_path": response.pain001_path,
        "run_id": response.run_id,
    })
}

fn payout_text(p: &MerchantPayout) -> String {
    format!(
        "{}: {} transactions, gross {}, fee {}, net {}, payout reference {}",
        p.currency,
        p.transaction_count,
        format_money(p.gross_minor_units, &p.currency),
        format_money(p.fee_minor_units, &p.currency),
        format_money(p.net_minor_units, &p.currency),
        or_dash(&p.payout_reference),
    )
}

/// Text answer of `settlement run`: each window with its payouts, then the
/// payout files.
pub fn run_settlement_text(response: &RunSettlementResponse) -> String {
    let mut lines = Vec::new();
    let windows = response.windows.len();
    let noun = if windows == 1 { "window" } else { "windows" };
    lines.push(format!(
        "Settlement run {}: {windows} {noun} closed",
        or_dash(&response.run_id)
    ));
    if response.windows.is_empty() {
        lines.push("nothing to settle: no open window with approvals up to the cut-off".to_owned());
    }
    for w in &response.windows {
        lines.push(format!(
            "Window {} merchant {} #{}: cutoff {}, fee {} bp, held {}",
            or_dash(&w.window_id),
            or_dash(&w.merchant_id),
            w.sequence,
            or_dash(&w.cutoff),
            w.fee_basis_points,
            w.held_count,
        ));
        if w.payouts.is_empty() {
            lines.push("  no payout".to_owned());
        }
        lines.extend(w.payouts.iter().map(|p| format!("  {}", payout_text(p))));
    }
    let file = |path: &str| {
        if path.is_empty() {
            "- (none written)".to_owned()
        } else {
            path.to_owned()
        }
    };
    lines.push(format!("CSV:      {}", file(&response.csv_path)));
    lines.push(format!("pain.001: {}", file(&response.pain001_path)));
    lines.join("\n")
}

// ---------------------------------------------------------------------------
// Commands.

/// `close-batch`: the terminal's batch close, through the gateway.
pub async fn run_close_batch(
    options: &GatewayOptions,
    certificate: &str,
    terminal_id: String,
    args: CloseBatchArgs,
    json: bool,
) -> Result<()> {
    let mut client = connect(options, certificate).await?;
    let response = client
        .close_batch(CloseBatchRequest {
            terminal_id,
            // The gateway sets it from the certificate.
            merchant_id: String::new(),
            batch_number: args.batch.clone(),
            totals: args.totals,
        })
        .await?
        .into_inner();
    if json {
        println!("{}", close_batch_json(&response));
    } else {
        println!("{}", close_batch_text(&response, &args.batch));
    }
    Ok(())
}

/// `upload-batch`: the batch upload after an out-of-balance close, through
/// the gateway.
pub async fn run_upload_batch(
    options: &GatewayOptions,
    certificate: &str,
    terminal_id: String,
    args: UploadBatchArgs,
    json: bool,
) -> Result<()> {
    let mut client = connect(options, certificate).await?;
    let response = client
        .upload_batch(UploadBatchRequest {
            terminal_id,
            merchant_id: String::new(),
            batch_number: args.batch.clone(),
            transactions: args.sales,
        })
        .await?
        .into_inner();
    if json {
        println!("{}", upload_batch_json(&response));
    } else {
        println!("{}", upload_batch_text(&response, &args.batch));
    }
    Ok(())
}

/// Connects to the settlement batcher's internal service (plaintext).
async fn connect_settlement(
    url: &str,
    timeout: Duration,
) -> Result<SettlementServiceClient<Channel>> {
    if !url.starts_with("http://") {
        bail!(
            "--settlement {url:?}: the settlement service speaks plaintext gRPC; use an http:// URL"
        );
    }
    let channel = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid settlement service URL {url:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .connect()
        .await
        .map_err(anyhow::Error::new)
        .with_context(|| format!("cannot connect to the settlement service {url}"))?;
    Ok(SettlementServiceClient::new(channel))
}

/// The query of `settlement status`; `--stan` is a STAN of `terminal_id`.
pub fn status_query(args: &StatusArgs, terminal_id: &str) -> Result<Query> {
    if let Some(rrn) = &args.rrn {
        return Ok(Query::Rrn(rrn.clone()));
    }
    if let Some(stan) = &args.stan {
        return Ok(Query::Terminal(TerminalTransaction {
            terminal_id: terminal_id.to_owned(),
            stan: stan.clone(),
            local_date: args.date.clone().unwrap_or_default(),
        }));
    }
    if let (Some(merchant), Some(day)) = (&args.merchant, &args.day) {
        return Ok(Query::Merchant(MerchantDay {
            merchant_id: merchant.clone(),
            date: day.clone(),
        }));
    }
    bail!("give one of --rrn, --stan or --merchant with --day")
}

/// The query in words, for messages.
pub fn describe_query(query: &Query) -> String {
    match query {
        Query::Rrn(rrn) => format!("RRN {rrn}"),
        Query::Terminal(key) if key.local_date.is_empty() => format!(
            "terminal {} STAN {} (most recent)",
            key.terminal_id, key.stan
        ),
        Query::Terminal(key) => format!(
            "terminal {} STAN {} date {}",
            key.terminal_id, key.stan, key.local_date
        ),
        Query::Merchant(day) => format!("merchant {} on {}", day.merchant_id, day.date),
    }
}

/// What `settlement status` says when nothing matches.
pub fn not_found_message(query: &Query, status: Option<&tonic::Status>) -> String {
    let mut message = format!(
        "not found: no approved payment matches {} at the settlement service",
        describe_query(query)
    );
    if let Some(status) = status {
        message.push_str(&format!(" (gRPC {})", status_line(status)));
    }
    message
}

/// `settlement status|run`, against the settlement service directly.
pub async fn run_settlement(
    args: SettlementArgs,
    terminal_id: &str,
    timeout: Duration,
    json: bool,
) -> Result<()> {
    match args.command {
        SettlementCommand::Status(status_args) => {
            let query = status_query(&status_args, terminal_id)?;
            let mut client = connect_settlement(&args.url, timeout).await?;
            let answer = client
                .get_settlement_status(SettlementStatusRequest {
                    query: Some(query.clone()),
                })
                .await;
            let response = match answer {
                Ok(response) => response.into_inner(),
                Err(status) if status.code() == Code::NotFound => {
                    print_status_error(&status, json);
                    if json {
                        eprintln!("{}", not_found_message(&query, Some(&status)));
                    } else {
                        // print_status_error already showed the gRPC line.
                        eprintln!("{}", not_found_message(&query, None));
                    }
                    return Err(AlreadyReported.into());
                }
                Err(status) => return Err(status.into()),
            };
            if response.transactions.is_empty() {
                if json {
                    println!(
                        "{}",
                        json!({"error": {"code": "NOT_FOUND", "code_number": i32::from(Code::NotFound), "message": "no approval matches the query"}})
                    );
                }
                eprintln!("{}", not_found_message(&query, None));
                return Err(AlreadyReported.into());
            }
            if json {
                println!("{}", settlement_status_json(&response));
            } else {
                println!("{}", settlement_status_text(&response));
            }
            Ok(())
        }
        SettlementCommand::Run(run_args) => {
            let mut client = connect_settlement(&args.url, timeout).await?;
            let response = client
                .run_settlement(RunSettlementRequest {
                    merchant_ids: run_args.merchants,
                    cutoff: run_args.cutoff.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if json {
                println!("{}", run_settlement_json(&response));
            } else {
                println!("{}", run_settlement_text(&response));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;
    use switch_proto::v1::ReconciledTransaction;

    fn totals(currency: &str, sales: (i64, i64), reversals: (i64, i64)) -> CurrencyTotals {
        CurrencyTotals {
            currency: currency.to_owned(),
            sales_count: sales.0,
            sales_minor_units: sales.1,
            reversals_count: reversals.0,
            reversals_minor_units: reversals.1,
        }
    }

    fn money(minor_units: i64, currency: &str) -> Option<Money> {
        Some(Money {
            minor_units,
            currency: currency.to_owned(),
        })
    }

    #[test]
    fn parses_totals_specs() {
        assert_eq!(
            parse_totals_spec("EUR:3:3000:0:0"),
            Ok(totals("EUR", (3, 3000), (0, 0)))
        );
        assert_eq!(
            parse_totals_spec("usd:1:500:2:250"),
            Ok(totals("USD", (1, 500), (2, 250)))
        );
        // Values are the switch's to judge: a negative count is sent as is.
        assert_eq!(
            parse_totals_spec("EUR:-1:0:0:0"),
            Ok(totals("EUR", (-1, 0), (0, 0)))
        );
    }

    #[test]
    fn rejects_bad_totals_specs_clearly() {
        assert_eq!(
            parse_totals_spec("EUR:3:3000:0").unwrap_err(),
            "expected CUR:SALES_COUNT:SALES_MINOR:REVERSALS_COUNT:REVERSALS_MINOR \
             (5 fields separated by ':'), got 4 field(s)"
        );
        assert!(
            parse_totals_spec("EUR:3:3000:0:0:0")
                .unwrap_err()
                .ends_with("got 6 field(s)")
        );
        assert_eq!(
            parse_totals_spec("EURO:3:3000:0:0").unwrap_err(),
            "CUR \"EURO\" must be a 3-letter ISO 4217 code, e.g. EUR"
        );
        assert_eq!(
            parse_totals_spec("EUR:three:3000:0:0").unwrap_err(),
            "SALES_COUNT \"three\" is not an integer (minor units, no decimal point)"
        );
        assert!(
            parse_totals_spec("EUR:3:30.00:0:0")
                .unwrap_err()
                .starts_with("SALES_MINOR \"30.00\"")
        );
        assert!(
            parse_totals_spec("EUR:3:3000::0")
                .unwrap_err()
                .starts_with("REVERSALS_COUNT \"\"")
        );
        assert!(
            parse_totals_spec("EUR:3:3000:0:x")
                .unwrap_err()
                .starts_with("REVERSALS_MINOR \"x\"")
        );
        assert!(parse_totals_spec("").is_err());
    }

    #[test]
    fn parses_sale_specs() {
        assert_eq!(
            parse_sale_spec_on("000123:2025-01-31:1050:EUR", "2025-02-01"),
            Ok(UploadedTransaction {
                stan: "000123".to_owned(),
                local_date: "2025-01-31".to_owned(),
                amount: money(1050, "EUR"),
                approval_code: String::new(),
            })
        );
        assert_eq!(
            parse_sale_spec_on("000124:today:500:usd:A1B2C3", "2025-02-01"),
            Ok(UploadedTransaction {
                stan: "000124".to_owned(),
                local_date: "2025-02-01".to_owned(),
                amount: money(500, "USD"),
                approval_code: "A1B2C3".to_owned(),
            })
        );
        // An empty approval field is no approval code.
        let sale = parse_sale_spec_on("000125:TODAY:1:EUR:", "2025-02-01").unwrap();
        assert_eq!(sale.approval_code, "");
        assert_eq!(sale.local_date, "2025-02-01");
        // `today` resolves to a real date.
        let sale = parse_sale_spec("000126:today:1:EUR").unwrap();
        assert!(is_iso_date(&sale.local_date), "{}", sale.local_date);
    }

    #[test]
    fn rejects_bad_sale_specs_clearly() {
        let bad = |spec: &str| parse_sale_spec_on(spec, "2025-02-01").unwrap_err();
        assert_eq!(
            bad("000123:today:1050"),
            "expected STAN:DATE:AMOUNT:CURRENCY[:APPROVAL] (4 or 5 fields separated by ':'), \
             got 3 field(s)"
        );
        assert!(bad("000123:today:1050:EUR:A1:x").ends_with("got 6 field(s)"));
        assert_eq!(
            bad("123:today:1050:EUR"),
            "STAN \"123\" must be exactly 6 digits"
        );
        assert_eq!(
            bad("00012a:today:1050:EUR"),
            "STAN \"00012a\" must be exactly 6 digits"
        );
        assert_eq!(
            bad("000123:2025-02-30:1050:EUR"),
            "DATE \"2025-02-30\" must be YYYY-MM-DD or `today`"
        );
        assert_eq!(
            bad("000123:yesterday:1050:EUR"),
            "DATE \"yesterday\" must be YYYY-MM-DD or `today`"
        );
        assert_eq!(
            bad("000123:today:10.50:EUR"),
            "AMOUNT \"10.50\" is not an integer (minor units, no decimal point)"
        );
        assert_eq!(
            bad("000123:today:1050:E1R"),
            "CURRENCY \"E1R\" must be a 3-letter ISO 4217 code, e.g. EUR"
        );
    }

    #[test]
    fn validates_dates_and_cutoffs() {
        assert_eq!(parse_date("2025-01-31"), Ok("2025-01-31".to_owned()));
        assert!(parse_date("2025-1-31").is_err());
        assert!(parse_date("31/01/2025").is_err());
        assert_eq!(
            parse_cutoff("2025-01-31T18:00:00Z"),
            Ok("2025-01-31T18:00:00Z".to_owned())
        );
        assert_eq!(
            parse_cutoff("2025-01-31T18:00:00+01:00"),
            Ok("2025-01-31T18:00:00+01:00".to_owned())
        );
        assert_eq!(
            parse_cutoff("2025-01-31").unwrap_err(),
            "\"2025-01-31\" is not RFC 3339, e.g. 2025-01-31T18:00:00Z"
        );
    }

    #[test]
    fn cli_parses_batch_commands_and_names_the_flag_on_errors() {
        let cli = Cli::try_parse_from([
            "posctl",
            "close-batch",
            "--batch",
            "000001",
            "--totals",
            "EUR:3:3000:0:0",
            "--totals",
            "USD:1:500:0:0",
        ])
        .unwrap();
        let Command::CloseBatch(args) = cli.command else {
            panic!("expected close-batch");
        };
        assert_eq!(args.batch, "000001");
        assert_eq!(
            args.totals,
            vec![
                totals("EUR", (3, 3000), (0, 0)),
                totals("USD", (1, 500), (0, 0))
            ]
        );

        // No --totals: an empty batch.
        let cli = Cli::try_parse_from(["posctl", "close-batch", "--batch", "000002"]).unwrap();
        let Command::CloseBatch(args) = cli.command else {
            panic!("expected close-batch");
        };
        assert!(args.totals.is_empty());

        let error = Cli::try_parse_from([
            "posctl",
            "close-batch",
            "--batch",
            "000001",
            "--totals",
            "EUR:3",
        ])
        .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        let message = error.to_string();
        assert!(message.contains("--totals"), "{message}");
        assert!(message.contains("got 2 field(s)"), "{message}");

        let cli = Cli::try_parse_from([
            "posctl",
            "upload-batch",
            "--batch",
            "000001",
            "--sale",
            "000001:2025-01-31:1000:EUR:A1B2C3",
            "--sale",
            "000002:2025-01-31:2000:EUR",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::UploadBatch(args) = cli.command else {
            panic!("expected upload-batch");
        };
        assert_eq!(args.sales.len(), 2);
        assert_eq!(args.sales[1].stan, "000002");
        assert!(!args.no_sales);

        let error = Cli::try_parse_from([
            "posctl",
            "upload-batch",
            "--batch",
            "000001",
            "--sale",
            "000001:2025-01-31:10.00:EUR",
        ])
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("--sale"), "{message}");
        assert!(message.contains("AMOUNT \"10.00\""), "{message}");

        // An upload says explicitly that the terminal completed nothing.
        assert!(Cli::try_parse_from(["posctl", "upload-batch", "--batch", "000001"]).is_err());
        let cli =
            Cli::try_parse_from(["posctl", "upload-batch", "--batch", "000001", "--no-sales"])
                .unwrap();
        let Command::UploadBatch(args) = cli.command else {
            panic!("expected upload-batch");
        };
        assert!(args.no_sales && args.sales.is_empty());
        assert!(
            Cli::try_parse_from([
                "posctl",
                "upload-batch",
                "--batch",
                "000001",
                "--no-sales",
                "--sale",
                "000001:today:1:EUR",
            ])
            .is_err()
        );
    }

    fn status_args(args: &[&str]) -> Result<(StatusArgs, String, String), clap::Error> {
        let cli = Cli::try_parse_from(args.iter().copied())?;
        let terminal = cli.claim.clone().unwrap_or(cli.terminal.clone());
        let Command::Settlement(settlement) = cli.command else {
            panic!("expected settlement");
        };
        let SettlementCommand::Status(status) = settlement.command else {
            panic!("expected settlement status");
        };
        Ok((status, settlement.url, terminal))
    }

    #[test]
    fn settlement_status_takes_exactly_one_query() {
        let (args, url, terminal) =
            status_args(&["posctl", "settlement", "status", "--rrn", "000000000042"]).unwrap();
        assert_eq!(url, DEFAULT_SETTLEMENT_URL);
        assert_eq!(
            status_query(&args, &terminal).unwrap(),
            Query::Rrn("000000000042".to_owned())
        );

        let (args, url, terminal) = status_args(&[
            "posctl",
            "settlement",
            "--settlement",
            "http://10.0.0.1:6000",
            "status",
            "--stan",
            "000042",
            "--terminal",
            "TERM0002",
        ])
        .unwrap();
        assert_eq!(url, "http://10.0.0.1:6000");
        let query = status_query(&args, &terminal).unwrap();
        assert_eq!(
            query,
            Query::Terminal(TerminalTransaction {
                terminal_id: "TERM0002".to_owned(),
                stan: "000042".to_owned(),
                local_date: String::new(),
            })
        );
        assert_eq!(
            describe_query(&query),
            "terminal TERM0002 STAN 000042 (most recent)"
        );

        // --settlement after the subcommand, --claim wins over --terminal.
        let (args, url, terminal) = status_args(&[
            "posctl",
            "settlement",
            "status",
            "--stan",
            "000042",
            "--date",
            "2025-01-31",
            "--claim",
            "TERM0009",
            "--settlement",
            "http://127.0.0.1:6001",
        ])
        .unwrap();
        assert_eq!(url, "http://127.0.0.1:6001");
        let query = status_query(&args, &terminal).unwrap();
        assert_eq!(
            describe_query(&query),
            "terminal TERM0009 STAN 000042 date 2025-01-31"
        );

        let (args, _, terminal) = status_args(&[
            "posctl",
            "settlement",
            "status",
            "--merchant",
            "MERCH001",
            "--day",
            "2025-01-31",
        ])
        .unwrap();
        let query = status_query(&args, &terminal).unwrap();
        assert_eq!(
            query,
            Query::Merchant(MerchantDay {
                merchant_id: "MERCH001".to_owned(),
                date: "2025-01-31".to_owned(),
            })
        );
        assert_eq!(
            not_found_message(
                &query,
                Some(&tonic::Status::not_found("no approval matches the query"))
            ),
            "not found: no approved payment matches merchant MERCH001 on 2025-01-31 at the \
             settlement service (gRPC NOT_FOUND: no approval matches the query)"
        );

        for bad in [
            &["posctl", "settlement", "status"][..],
            &[
                "posctl",
                "settlement",
                "status",
                "--rrn",
                "X",
                "--stan",
                "000001",
            ],
            &[
                "posctl",
                "settlement",
                "status",
                "--stan",
                "000001",
                "--merchant",
                "M",
            ],
            &["posctl", "settlement", "status", "--merchant", "MERCH001"],
            &["posctl", "settlement", "status", "--day", "2025-01-31"],
            &[
                "posctl",
                "settlement",
                "status",
                "--date",
                "2025-01-31",
                "--rrn",
                "X",
            ],
            &[
                "posctl",
                "settlement",
                "status",
                "--stan",
                "000001",
                "--date",
                "today",
            ],
        ] {
            assert!(status_args(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn settlement_run_flags() {
        let cli = Cli::try_parse_from([
            "posctl",
            "settlement",
            "run",
            "--merchant",
            "MERCH001",
            "--merchant",
            "MERCH002",
            "--cutoff",
            "2025-01-31T18:00:00Z",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Settlement(settlement) = cli.command else {
            panic!("expected settlement");
        };
        let SettlementCommand::Run(args) = settlement.command else {
            panic!("expected settlement run");
        };
        assert_eq!(args.merchants, vec!["MERCH001", "MERCH002"]);
        assert_eq!(args.cutoff.as_deref(), Some("2025-01-31T18:00:00Z"));
        let error =
            Cli::try_parse_from(["posctl", "settlement", "run", "--cutoff", "6pm"]).unwrap_err();
        assert!(error.to_string().contains("--cutoff"), "{error}");
    }

    fn out_of_balance() -> CloseBatchResponse {
        CloseBatchResponse {
            result: BatchResult::OutOfBalance as i32,
            response_code: "95".to_owned(),
            host_totals: vec![
                totals("EUR", (4, 4000), (1, 1000)),
                totals("JPY", (1, 500), (0, 0)),
            ],
            reason: "EUR sales: terminal 3 / 3000, host 4 / 4000".to_owned(),
            duplicate: false,
            host_transactions: 6,
        }
    }

    #[test]
    fn close_batch_json_has_the_documented_shape() {
        assert_eq!(
            close_batch_json(&out_of_balance()),
            json!({
                "result": "out_of_balance",
                "response_code": "95",
                "reason": "EUR sales: terminal 3 / 3000, host 4 / 4000",
                "duplicate": false,
                "host_transactions": 6,
                "host_totals": [
                    {"currency": "EUR", "sales_count": 4, "sales_minor_units": 4000,
                     "reversals_count": 1, "reversals_minor_units": 1000},
                    {"currency": "JPY", "sales_count": 1, "sales_minor_units": 500,
                     "reversals_count": 0, "reversals_minor_units": 0},
                ],
            })
        );
        let balanced = CloseBatchResponse {
            result: BatchResult::Balanced as i32,
            response_code: "00".to_owned(),
            duplicate: true,
            ..CloseBatchResponse::default()
        };
        let value = close_batch_json(&balanced);
        assert_eq!(value["result"], "balanced");
        assert_eq!(value["duplicate"], true);
        assert_eq!(value["host_totals"], json!([]));
    }

    #[test]
    fn close_batch_text_shows_totals_and_the_upload_hint() {
        assert_eq!(
            close_batch_text(&out_of_balance(), "000001"),
            "Batch 000001: OUT OF BALANCE\n\
             Response code:     95 (Reconcile error)\n\
             Reason:            EUR sales: terminal 3 / 3000, host 4 / 4000\n\
             Host transactions: 6\n\
             Host totals:\n  \
             EUR: 4 sales EUR 40.00, 1 reversals EUR 10.00\n  \
             JPY: 1 sales JPY 500, 0 reversals JPY 0\n\
             upload the batch: posctl upload-batch --batch 000001 --sale \
             STAN:DATE:AMOUNT:CURRENCY[:APPROVAL] ..."
        );
        let balanced = CloseBatchResponse {
            result: BatchResult::Balanced as i32,
            response_code: "00".to_owned(),
            host_totals: vec![totals("EUR", (3, 3000), (0, 0))],
            duplicate: true,
            host_transactions: 3,
            ..CloseBatchResponse::default()
        };
        assert_eq!(
            close_batch_text(&balanced, "000002"),
            "Batch 000002: BALANCED (duplicate)\n\
             Response code:     00 (Approved)\n\
             Host transactions: 3\n\
             Host totals:\n  \
             EUR: 3 sales EUR 30.00, 0 reversals EUR 0.00"
        );
        let empty = CloseBatchResponse {
            result: BatchResult::Balanced as i32,
            response_code: "00".to_owned(),
            ..CloseBatchResponse::default()
        };
        assert!(close_batch_text(&empty, "000003").contains("Host totals:       none"));
        assert_eq!(batch_result_text(42), "UNKNOWN");
        assert_eq!(
            batch_result_json(BatchResult::Reconciled as i32),
            "reconciled"
        );
    }

    fn reconciled() -> UploadBatchResponse {
        let outcome =
            |stan: &str, id: &str, rrn: &str, outcome: &str, detail: &str| ReconciledTransaction {
                stan: stan.to_owned(),
                local_date: "2025-01-31".to_owned(),
                transaction_id: id.to_owned(),
                rrn: rrn.to_owned(),
                outcome: outcome.to_owned(),
                detail: detail.to_owned(),
            };
        UploadBatchResponse {
            result: BatchResult::Reconciled as i32,
            outcomes: vec![
                outcome("000001", "t-1", "503100000001", "matched", ""),
                outcome(
                    "000002",
                    "t-2",
                    "503100000002",
                    "orphan_reversal_requested",
                    "not in the upload",
                ),
                outcome("000003", "", "", "unknown_at_host", "no such approval"),
                outcome("000004", "t-4", "503100000004", "matched", ""),
            ],
            duplicate: false,
        }
    }

    #[test]
    fn upload_batch_json_has_outcomes_and_counts() {
        let value = upload_batch_json(&reconciled());
        assert_eq!(value["result"], "reconciled");
        assert_eq!(value["duplicate"], false);
        assert_eq!(
            value["outcomes"][2],
            json!({"stan": "000003", "local_date": "2025-01-31", "transaction_id": "",
                   "rrn": "", "outcome": "unknown_at_host", "detail": "no such approval"})
        );
        assert_eq!(value["outcomes"].as_array().map(Vec::len), Some(4));
        assert_eq!(
            value["counts"],
            json!({"matched": 2, "orphan_reversal_requested": 1, "unknown_at_host": 1})
        );
    }

    #[test]
    fn upload_batch_text_lists_each_outcome_and_a_summary() {
        assert_eq!(
            upload_batch_text(&reconciled(), "000001"),
            "Batch 000001: RECONCILED\n\
             STAN    DATE        RRN           OUTCOME                    DETAIL\n\
             000001  2025-01-31  503100000001  matched                    -\n\
             000002  2025-01-31  503100000002  orphan_reversal_requested  not in the upload\n\
             000003  2025-01-31  -             unknown_at_host            no such approval\n\
             000004  2025-01-31  503100000004  matched                    -\n\
             Summary: 2 matched, 1 orphan_reversal_requested, 1 unknown_at_host (4 transactions)"
        );
        let empty = UploadBatchResponse {
            result: BatchResult::Reconciled as i32,
            duplicate: true,
            ..UploadBatchResponse::default()
        };
        assert_eq!(
            upload_batch_text(&empty, "000009"),
            "Batch 000009: RECONCILED (duplicate)\nno transaction to reconcile"
        );
    }

    fn status_response() -> SettlementStatusResponse {
        SettlementStatusResponse {
            transactions: vec![
                TransactionSettlement {
                    transaction_id: "t-1".to_owned(),
                    rrn: "503100000001".to_owned(),
                    terminal_id: "TERM0001".to_owned(),
                    merchant_id: "MERCH001".to_owned(),
                    stan: "000001".to_owned(),
                    local_date: "2025-01-31".to_owned(),
                    amount: money(1050, "EUR"),
                    state: SettlementState::Paid as i32,
                    reason: String::new(),
                    window_id: "w-1".to_owned(),
                    batch_number: "000001".to_owned(),
                    paid_at: "2025-01-31T18:00:05Z".to_owned(),
                    payout_reference: "PAY-1".to_owned(),
                    conflict: false,
                },
                TransactionSettlement {
                    transaction_id: "t-2".to_owned(),
                    rrn: "503100000002".to_owned(),
                    terminal_id: "TERM0001".to_owned(),
                    merchant_id: "MERCH001".to_owned(),
                    stan: "000002".to_owned(),
                    local_date: "2025-01-31".to_owned(),
                    amount: money(2000, "EUR"),
                    state: SettlementState::Held as i32,
                    reason: "conflict: conflict_reversed_at_host".to_owned(),
                    conflict: true,
                    ..TransactionSettlement::default()
                },
            ],
        }
    }

    #[test]
    fn settlement_status_json_is_an_array_with_lower_case_states() {
        let value = settlement_status_json(&status_response());
        assert_eq!(
            value[0],
            json!({
                "transaction_id": "t-1",
                "terminal_id": "TERM0001",
                "merchant_id": "MERCH001",
                "stan": "000001",
                "local_date": "2025-01-31",
                "rrn": "503100000001",
                "amount": {"minor_units": 1050, "currency": "EUR", "display": "EUR 10.50"},
                "state": "paid",
                "reason": "",
                "window_id": "w-1",
                "batch_number": "000001",
                "paid_at": "2025-01-31T18:00:05Z",
                "payout_reference": "PAY-1",
                "conflict": false,
            })
        );
        assert_eq!(value[1]["state"], "held");
        assert_eq!(value[1]["conflict"], true);
        assert_eq!(value[1]["reason"], "conflict: conflict_reversed_at_host");
        assert_eq!(value.as_array().map(Vec::len), Some(2));
        assert_eq!(
            settlement_state_json(SettlementState::NotPayable as i32),
            "not_payable"
        );
        assert_eq!(
            settlement_state_json(SettlementState::Pending as i32),
            "pending"
        );
    }

    #[test]
    fn settlement_status_text_is_a_table_with_conflict_marker() {
        assert_eq!(
            settlement_status_text(&status_response()),
            "TERMINAL  STAN    DATE        RRN           AMOUNT     STATE  REASON                               WINDOW  PAID_AT               PAYOUT_REF\n\
             TERM0001  000001  2025-01-31  503100000001  EUR 10.50  PAID   -                                    w-1     2025-01-31T18:00:05Z  PAY-1\n\
             TERM0001  000002  2025-01-31  503100000002  EUR 20.00  HELD   conflict: conflict_reversed_at_host  -       -                     -           CONFLICT\n\
             2 payments: 1 paid, 1 held"
        );
        let one = SettlementStatusResponse {
            transactions: vec![TransactionSettlement {
                state: SettlementState::NotPayable as i32,
                reason: "reversed (no_terminal_acknowledgement)".to_owned(),
                ..TransactionSettlement::default()
            }],
        };
        let text = settlement_status_text(&one);
        assert!(text.contains("NOT PAYABLE"), "{text}");
        assert!(text.ends_with("\n1 payment: 1 not payable"), "{text}");
        assert!(!text.contains("CONFLICT"), "{text}");
    }

    fn run_response() -> RunSettlementResponse {
        RunSettlementResponse {
            windows: vec![
                WindowSummary {
                    window_id: "w-1".to_owned(),
                    merchant_id: "MERCH001".to_owned(),
                    sequence: 3,
                    cutoff: "2025-01-31T18:00:00Z".to_owned(),
                    payouts: vec![MerchantPayout {
                        currency: "EUR".to_owned(),
                        transaction_count: 2,
                        gross_minor_units: 3050,
                        fee_minor_units: 46,
                        net_minor_units: 3004,
                        payout_reference: "PAY-1".to_owned(),
                    }],
                    held_count: 1,
                    fee_basis_points: 150,
                },
                WindowSummary {
                    window_id: "w-2".to_owned(),
                    merchant_id: "MERCH002".to_owned(),
                    sequence: 1,
                    cutoff: "2025-01-31T18:00:00Z".to_owned(),
                    payouts: vec![],
                    held_count: 2,
                    fee_basis_points: 0,
                },
            ],
            csv_path: "/var/payouts/run-1.csv".to_owned(),
            pain001_path: "/var/payouts/run-1.xml".to_owned(),
            run_id: "run-1".to_owned(),
        }
    }

    #[test]
    fn run_settlement_output() {
        let value = run_settlement_json(&run_response());
        assert_eq!(value["run_id"], "run-1");
        assert_eq!(value["csv_path"], "/var/payouts/run-1.csv");
        assert_eq!(value["pain001_path"], "/var/payouts/run-1.xml");
        assert_eq!(
            value["windows"][0],
            json!({
                "window_id": "w-1",
                "merchant_id": "MERCH001",
                "sequence": 3,
                "cutoff": "2025-01-31T18:00:00Z",
                "payouts": [{
                    "currency": "EUR",
                    "transaction_count": 2,
                    "gross_minor_units": 3050,
                    "fee_minor_units": 46,
                    "net_minor_units": 3004,
                    "payout_reference": "PAY-1",
                }],
                "held_count": 1,
                "fee_basis_points": 150,
            })
        );
        assert_eq!(value["windows"][1]["payouts"], json!([]));

        assert_eq!(
            run_settlement_text(&run_response()),
            "Settlement run run-1: 2 windows closed\n\
             Window w-1 merchant MERCH001 #3: cutoff 2025-01-31T18:00:00Z, fee 150 bp, held 1\n  \
             EUR: 2 transactions, gross EUR 30.50, fee EUR 0.46, net EUR 30.04, payout reference PAY-1\n\
             Window w-2 merchant MERCH002 #1: cutoff 2025-01-31T18:00:00Z, fee 0 bp, held 2\n  \
             no payout\n\
             CSV:      /var/payouts/run-1.csv\n\
             pain.001: /var/payouts/run-1.xml"
        );
        let nothing = RunSettlementResponse::default();
        assert_eq!(
            run_settlement_text(&nothing),
            "Settlement run -: 0 windows closed\n\
             nothing to settle: no open window with approvals up to the cut-off\n\
             CSV:      - (none written)\n\
             pain.001: - (none written)"
        );
    }
}
