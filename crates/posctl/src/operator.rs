//! `posctl reversals list|redrive` (and `posctl redrive`, the same as
//! `reversals redrive`): the operator's commands for reversals the switch
//! gave up on (dead-lettered past their maximum age). They ask
//! authorization's internal API directly (not through the gateway); a
//! redrive says who asks and why, and authorization records both with the
//! decision.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use switch_proto::v1::{
    DeadLetteredReversal, ListDeadLetteredRequest, ListDeadLetteredResponse, RedriveRequest,
};
use tonic::transport::Channel;

use crate::connect::{OperatorTls, operator_channel};

use crate::AlreadyReported;
use crate::output::{
    format_amount, format_table, mask_pan, money_json, or_dash, print_record, print_status_error,
    reversal_reason_name,
};

#[derive(Debug, Args)]
pub struct ReversalsArgs {
    #[command(subcommand)]
    pub command: ReversalsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ReversalsCommand {
    /// The reversals the switch gave up on, oldest first, with what their
    /// attempts got.
    List(ListArgs),
    /// Send a dead-lettered reversal round again, saying who asks and why.
    Redrive(RedriveArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// At most this many (the service's default is 100, its maximum 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start after this cursor (printed after a page that has more).
    #[arg(long)]
    pub cursor: Option<String>,
    /// URL of authorization's internal gRPC service (https: mutual TLS with
    /// the operator certificate).
    #[arg(long = "authorization", env = "POSCTL_AUTHORIZATION", default_value = DEFAULT_AUTHORIZATION_URL, value_name = "URL")]
    pub url: String,
}

/// The default address of authorization's internal API (`make up`).
pub const DEFAULT_AUTHORIZATION_URL: &str = "https://127.0.0.1:50052";

#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// The transaction whose dead-lettered reversal is sent round again.
    #[arg(long)]
    pub transaction_id: String,
    /// Who asks (a person or a runbook); recorded with the redrive.
    #[arg(long, env = "POSCTL_OPERATOR")]
    pub operator: String,
    /// Why (the incident, the fix); recorded with the redrive.
    #[arg(long)]
    pub reason: String,
    /// URL of authorization's internal gRPC service (https: mutual TLS with
    /// the operator certificate).
    #[arg(long = "authorization", env = "POSCTL_AUTHORIZATION", default_value = DEFAULT_AUTHORIZATION_URL, value_name = "URL")]
    pub url: String,
}

/// Connects to authorization's internal API as the operator.
async fn connect_authorization(
    url: &str,
    tls: &OperatorTls,
    timeout: Duration,
) -> Result<AuthorizationServiceClient<Channel>> {
    let channel = operator_channel("authorization", url, tls, timeout).await?;
    Ok(AuthorizationServiceClient::new(channel))
}

/// `posctl reversals list|redrive`.
pub async fn run_reversals(
    args: ReversalsArgs,
    tls: &OperatorTls,
    timeout: Duration,
    json: bool,
) -> Result<()> {
    match args.command {
        ReversalsCommand::List(args) => run_list(args, tls, timeout, json).await,
        ReversalsCommand::Redrive(args) => run_redrive(args, tls, timeout, json).await,
    }
}

async fn run_list(args: ListArgs, tls: &OperatorTls, timeout: Duration, json: bool) -> Result<()> {
    let mut client = connect_authorization(&args.url, tls, timeout).await?;
    let answer = client
        .list_dead_lettered(ListDeadLetteredRequest {
            limit: args.limit.unwrap_or(0),
            cursor: args.cursor.unwrap_or_default(),
        })
        .await;
    match answer {
        Ok(page) => {
            let page = page.into_inner();
            if json {
                println!("{}", dead_lettered_json(&page));
            } else {
                println!("{}", dead_lettered_text(&page));
            }
            Ok(())
        }
        Err(status) => {
            print_status_error(&status, json);
            Err(AlreadyReported.into())
        }
    }
}

fn reversal_json(reversal: &DeadLetteredReversal) -> Value {
    let record = reversal.authorization.clone().unwrap_or_default();
    json!({
        "transaction_id": record.transaction_id,
        "terminal_id": record.terminal_id,
        "merchant_id": record.merchant_id,
        "stan": record.stan,
        "local_date": record.local_date,
        "rrn": record.rrn,
        "masked_pan": mask_pan(&record.masked_pan),
        "amount": money_json(record.amount.as_ref()),
        "reason": reversal_reason_name(reversal.reason),
        "attempts": reversal.attempts,
        "requested_at": reversal.requested_at,
        "first_attempt_at": reversal.first_attempt_at,
        "last_attempt_at": reversal.last_attempt_at,
        "last_response_code": reversal.last_response_code,
        "last_error": reversal.last_error,
        "dead_lettered_at": reversal.dead_lettered_at,
    })
}

/// `reversals list --json`: the page and the cursor of the next one.
pub fn dead_lettered_json(page: &ListDeadLetteredResponse) -> Value {
    json!({
        "reversals": page.reversals.iter().map(reversal_json).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
    })
}

/// `reversals list`: a table, then how to get the next page.
pub fn dead_lettered_text(page: &ListDeadLetteredResponse) -> String {
    if page.reversals.is_empty() {
        return "no dead-lettered reversals".to_owned();
    }
    let rows: Vec<Vec<String>> = page
        .reversals
        .iter()
        .map(|reversal| {
            let record = reversal.authorization.clone().unwrap_or_default();
            vec![
                record.transaction_id,
                record.terminal_id,
                record.stan,
                record.local_date,
                record.rrn,
                mask_pan(&record.masked_pan),
                format_amount(record.amount.as_ref()),
                reversal_reason_name(reversal.reason),
                reversal.attempts.to_string(),
                or_dash(&reversal.first_attempt_at),
                or_dash(&reversal.last_attempt_at),
                or_dash(&reversal.last_response_code),
                reversal.dead_lettered_at.clone(),
            ]
        })
        .collect();
    let table = format_table(
        &[
            "TRANSACTION",
            "TERMINAL",
            "STAN",
            "DATE",
            "RRN",
            "CARD",
            "AMOUNT",
            "REASON",
            "ATTEMPTS",
            "FIRST ATTEMPT",
            "LAST ATTEMPT",
            "LAST CODE",
            "DEAD-LETTERED AT",
        ],
        &rows,
    );
    let count = page.reversals.len();
    match page.next_cursor.as_str() {
        "" => format!("{table}\n{count} dead-lettered reversal(s)"),
        cursor => format!(
            "{table}\n{count} dead-lettered reversal(s); more: posctl reversals list --cursor {cursor}"
        ),
    }
}

pub async fn run_redrive(
    args: RedriveArgs,
    tls: &OperatorTls,
    timeout: Duration,
    json: bool,
) -> Result<()> {
    let answer = connect_authorization(&args.url, tls, timeout)
        .await?
        .redrive(RedriveRequest {
            transaction_id: args.transaction_id,
            operator: args.operator,
            reason: args.reason,
        })
        .await;
    match answer {
        Ok(record) => {
            print_record(&record.into_inner(), None, json);
            Ok(())
        }
        Err(status) => {
            print_status_error(&status, json);
            Err(AlreadyReported.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch_proto::v1::{self as pb, AuthorizationRecord};

    fn page(next_cursor: &str) -> ListDeadLetteredResponse {
        ListDeadLetteredResponse {
            reversals: vec![DeadLetteredReversal {
                authorization: Some(AuthorizationRecord {
                    transaction_id: "01a23462-640c-7367-8d86-1fa0f9da8477".into(),
                    terminal_id: "TERM0004".into(),
                    stan: "001301".into(),
                    local_date: "2026-12-02".into(),
                    rrn: "633612000042".into(),
                    masked_pan: "411111******1111".into(),
                    amount: Some(pb::Money {
                        minor_units: 5_000,
                        currency: "EUR".into(),
                    }),
                    ..Default::default()
                }),
                reason: pb::ReversalReason::TerminalRequested.into(),
                attempts: 7,
                requested_at: "2026-12-02T10:00:00Z".into(),
                first_attempt_at: "2026-12-02T10:00:00.1Z".into(),
                last_attempt_at: "2026-12-02T10:00:01.4Z".into(),
                last_response_code: "91".into(),
                last_error: "issuer answered 91".into(),
                dead_lettered_at: "2026-12-02T10:00:01.5Z".into(),
            }],
            next_cursor: next_cursor.into(),
        }
    }

    #[test]
    fn a_page_of_dead_letters_shows_the_card_masked_and_the_next_cursor() {
        let text = dead_lettered_text(&page("123_abc"));
        assert!(text.starts_with("TRANSACTION"), "{text}");
        assert!(text.contains("411111******1111"), "{text}");
        assert!(text.contains("EUR 50.00"), "{text}");
        assert!(text.contains("terminal_requested"), "{text}");
        assert!(text.contains("  91  "), "{text}");
        assert!(
            text.ends_with("more: posctl reversals list --cursor 123_abc"),
            "{text}"
        );
        assert!(dead_lettered_text(&page("")).ends_with("1 dead-lettered reversal(s)"));
        let json = dead_lettered_json(&page(""));
        assert_eq!(json["reversals"][0]["last_response_code"], "91");
        assert_eq!(json["reversals"][0]["attempts"], 7);
        assert_eq!(json["next_cursor"], "");
        assert_eq!(
            dead_lettered_text(&ListDeadLetteredResponse::default()),
            "no dead-lettered reversals"
        );
    }
}
