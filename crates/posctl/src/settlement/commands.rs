//! The commands: close and upload a batch through the gateway as the
//! terminal, and ask the settlement service directly (status, runs, and
//! operators' ledger rejections).

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use switch_core::TerminalId;
use switch_proto::v1::settlement_service_client::SettlementServiceClient;
use switch_proto::v1::{
    CloseBatchRequest, RunSettlementRequest, SettlementStatusRequest, UploadBatchRequest,
};
use tonic::Code;
use tonic::transport::Channel;

use super::args::{CloseBatchArgs, SettlementArgs, SettlementCommand, UploadBatchArgs};
use super::query::{not_found_message, status_query};
use super::render::{
    close_batch_json, close_batch_text, run_settlement_json, run_settlement_text,
    settlement_status_json, settlement_status_text, upload_batch_json, upload_batch_text,
};
use crate::AlreadyReported;
use crate::connect::{GatewayOptions, OperatorTls, connect, operator_channel};
use crate::output::print_status_error;

/// `close-batch`: the terminal's batch close, through the gateway.
pub async fn run_close_batch(
    options: &GatewayOptions,
    certificate: &TerminalId,
    terminal_id: TerminalId,
    args: CloseBatchArgs,
    json: bool,
) -> Result<()> {
    let mut client = connect(options, certificate).await?;
    let response = client
        .close_batch(CloseBatchRequest {
            terminal_id: terminal_id.to_string(),
            // The gateway sets it from the certificate.
            merchant_id: String::new(),
            batch_number: args.batch.to_string(),
            totals: args.totals,
        })
        .await?
        .into_inner();
    if json {
        println!("{}", close_batch_json(&response));
    } else {
        println!("{}", close_batch_text(&response, &args.batch.to_string()));
    }
    Ok(())
}

/// `upload-batch`: the batch upload after an out-of-balance close, through
/// the gateway.
pub async fn run_upload_batch(
    options: &GatewayOptions,
    certificate: &TerminalId,
    terminal_id: TerminalId,
    args: UploadBatchArgs,
    json: bool,
) -> Result<()> {
    let mut client = connect(options, certificate).await?;
    let response = client
        .upload_batch(UploadBatchRequest {
            terminal_id: terminal_id.to_string(),
            merchant_id: String::new(),
            batch_number: args.batch.to_string(),
            transactions: args.sales,
        })
        .await?
        .into_inner();
    if json {
        println!("{}", upload_batch_json(&response));
    } else {
        println!("{}", upload_batch_text(&response, &args.batch.to_string()));
    }
    Ok(())
}

/// Connects to the settlement batcher's internal service as the operator.
async fn connect_settlement(
    url: &str,
    tls: &OperatorTls,
    timeout: Duration,
) -> Result<SettlementServiceClient<Channel>> {
    let channel = operator_channel("the settlement service", url, tls, timeout).await?;
    Ok(SettlementServiceClient::new(channel))
}

/// `settlement status|run`, against the settlement service directly.
pub async fn run_settlement(
    args: SettlementArgs,
    terminal_id: &TerminalId,
    tls: &OperatorTls,
    timeout: Duration,
    json: bool,
) -> Result<()> {
    match args.command {
        SettlementCommand::Status(status_args) => {
            let query = status_query(&status_args, terminal_id)?;
            let mut client = connect_settlement(&args.url, tls, timeout).await?;
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
        SettlementCommand::Rejections(command) => {
            let client = connect_settlement(&args.url, tls, timeout).await?;
            super::rejections::run_rejections(client, command, json).await
        }
        SettlementCommand::Run(run_args) => {
            let mut client = connect_settlement(&args.url, tls, timeout).await?;
            let response = client
                .run_settlement(RunSettlementRequest {
                    merchant_ids: run_args.merchants.into_iter().map(String::from).collect(),
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
