//! `posctl redrive`: the operator's command for a reversal the switch gave
//! up on (dead-lettered past its maximum age). It asks authorization's
//! internal API directly (not through the gateway), with who asks and why;
//! authorization records both with the decision.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use switch_proto::v1::RedriveRequest;
use switch_proto::v1::authorization_service_client::AuthorizationServiceClient;
use tonic::transport::Endpoint;

use crate::AlreadyReported;
use crate::output::{print_record, print_status_error};

/// The default address of authorization's internal API (`make up`).
pub const DEFAULT_AUTHORIZATION_URL: &str = "http://127.0.0.1:50052";

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
    /// URL of authorization's internal gRPC service (plaintext).
    #[arg(long = "authorization", env = "POSCTL_AUTHORIZATION", default_value = DEFAULT_AUTHORIZATION_URL, value_name = "URL")]
    pub url: String,
}

pub async fn run_redrive(args: RedriveArgs, timeout: Duration, json: bool) -> Result<()> {
    if !args.url.starts_with("http://") {
        bail!(
            "--authorization {:?}: authorization's internal API speaks plaintext gRPC; use an http:// URL",
            args.url
        );
    }
    let channel = Endpoint::from_shared(args.url.clone())
        .with_context(|| format!("invalid authorization URL {:?}", args.url))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("authorization at {} is unreachable", args.url))?;
    let answer = AuthorizationServiceClient::new(channel)
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
