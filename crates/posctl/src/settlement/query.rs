//! The query `settlement status` sends, built from its flags, and how it
//! is described in messages.

use anyhow::{Result, bail};
use switch_core::TerminalId;
use switch_proto::v1::settlement_status_request::Query;
use switch_proto::v1::{MerchantDay, TerminalTransaction};

use super::args::StatusArgs;
use crate::output::status_line;

/// The query of `settlement status`; `--stan` is a STAN of `terminal_id`.
pub fn status_query(args: &StatusArgs, terminal_id: &TerminalId) -> Result<Query> {
    if let Some(rrn) = &args.rrn {
        return Ok(Query::Rrn(rrn.to_string()));
    }
    if let Some(stan) = &args.stan {
        return Ok(Query::Terminal(TerminalTransaction {
            terminal_id: terminal_id.to_string(),
            stan: stan.to_string(),
            local_date: args.date.map(|d| d.to_string()).unwrap_or_default(),
        }));
    }
    if let (Some(merchant), Some(day)) = (&args.merchant, &args.day) {
        return Ok(Query::Merchant(MerchantDay {
            merchant_id: merchant.to_string(),
            date: day.to_string(),
        }));
    }
    if let Some(id) = &args.transaction_id {
        return Ok(Query::TransactionId(id.as_uuid().to_string()));
    }
    if let Some(order) = &args.qr_order_id {
        return Ok(Query::QrOrderId(order.to_string()));
    }
    bail!("give one of --rrn, --stan, --merchant with --day, --transaction-id or --qr-order-id")
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
        Query::TransactionId(id) => format!("transaction {id}"),
        Query::QrOrderId(order) => format!("QR order {order}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settlement::args::{DEFAULT_SETTLEMENT_URL, SettlementCommand};
    use crate::{Cli, Command};
    use clap::Parser;

    fn status_args(args: &[&str]) -> Result<(StatusArgs, String, TerminalId), clap::Error> {
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
    fn settlement_status_asks_by_transaction_id_or_qr_order_id() {
        let id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let (args, _, terminal) =
            status_args(&["posctl", "settlement", "status", "--transaction-id", id]).unwrap();
        assert_eq!(
            status_query(&args, &terminal).unwrap(),
            Query::TransactionId(id.to_owned())
        );
        let (args, _, terminal) = status_args(&[
            "posctl",
            "settlement",
            "status",
            "--qr-order-id",
            "QRO0000000042",
        ])
        .unwrap();
        let query = status_query(&args, &terminal).unwrap();
        assert_eq!(query, Query::QrOrderId("QRO0000000042".to_owned()));
        assert_eq!(describe_query(&query), "QR order QRO0000000042");
        for (flag, bad, field) in [
            ("--transaction-id", "nope", "transaction_id"),
            ("--qr-order-id", "x", "order_id"),
        ] {
            let error = status_args(&["posctl", "settlement", "status", flag, bad]).unwrap_err();
            assert!(error.to_string().contains(field), "{error}");
        }
        assert!(
            status_args(&[
                "posctl",
                "settlement",
                "status",
                "--transaction-id",
                id,
                "--rrn",
                "000000000042"
            ])
            .is_err(),
            "one query at a time"
        );
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
}
