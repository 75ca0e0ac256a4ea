//! The flags of `close-batch`, `upload-batch` and `settlement`. Every
//! identifier is parsed with switch-core's type, so a bad value is refused
//! with core's reason before anything is sent.

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use switch_core::qr::OrderId;
use switch_core::{BatchNumber, LocalDate, MerchantId, Rrn, Stan, TransactionId};
use switch_proto::v1::{CurrencyTotals, UploadedTransaction};

use super::specs::{SALE_SHAPE, TOTALS_SHAPE, parse_cutoff, parse_sale_spec, parse_totals_spec};

/// Default URL of the settlement batcher's internal gRPC service.
pub const DEFAULT_SETTLEMENT_URL: &str = "https://127.0.0.1:50054";

#[derive(Debug, Args)]
pub struct CloseBatchArgs {
    /// The terminal's batch number, exactly 6 digits.
    #[arg(long, value_name = "NNNNNN", value_parser = BatchNumber::parse)]
    pub batch: BatchNumber,
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
    #[arg(long, value_name = "NNNNNN", value_parser = BatchNumber::parse)]
    pub batch: BatchNumber,
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
    /// URL of the settlement batcher's internal gRPC service (https: mutual
    /// TLS with the operator certificate).
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
    /// Operators: approvals the ledger rejected because another
    /// transaction holds their terminal + date + STAN; list or resolve them.
    #[command(subcommand)]
    Rejections(RejectionsCommand),
}

#[derive(Debug, Subcommand)]
pub enum RejectionsCommand {
    /// The rejections still open (all with --all), oldest first, with where
    /// each rejected approval stands.
    List(RejectionsListArgs),
    /// Resolve one, once: dismiss it (a duplicate, never paid) or admit it
    /// (a distinct sale, paid by its status); who and why are recorded.
    Resolve(ResolveArgs),
}

#[derive(Debug, Args)]
pub struct RejectionsListArgs {
    /// At most this many (the service's default is 100, its maximum 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start after this cursor (printed after a page that has more).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Also the resolved ones.
    #[arg(long)]
    pub all: bool,
}

/// What an operator decides for a rejected approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResolutionArg {
    /// A duplicate of the transaction holding the key: never paid.
    Dismiss,
    /// A distinct sale: it enters the ledger where its events took it.
    Admit,
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// The rejected approval's transaction.
    #[arg(long, value_parser = TransactionId::parse)]
    pub transaction_id: TransactionId,
    #[arg(long, value_enum)]
    pub resolution: ResolutionArg,
    /// Who resolves it (a person or a runbook); recorded with it.
    #[arg(long, env = "POSCTL_OPERATOR")]
    pub operator: String,
    /// Why (the incident, what was checked); recorded with it.
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("query")
        .required(true)
        .args(["rrn", "stan", "merchant", "transaction_id", "qr_order_id"])
))]
pub struct StatusArgs {
    /// Retrieval reference number of the payment (12 characters).
    #[arg(long, value_parser = Rrn::parse)]
    pub rrn: Option<Rrn>,
    /// STAN of a payment of this terminal (--terminal, or --claim).
    #[arg(long, value_parser = Stan::parse)]
    pub stan: Option<Stan>,
    /// With --stan: the terminal's local date, YYYY-MM-DD (default: the most
    /// recent transaction with that STAN).
    #[arg(
        long,
        requires = "stan",
        conflicts_with_all = ["rrn", "merchant"],
        value_parser = LocalDate::parse
    )]
    pub date: Option<LocalDate>,
    /// Every approval of a merchant on one day (needs --day).
    #[arg(long, value_name = "MID", requires = "day", value_parser = MerchantId::parse)]
    pub merchant: Option<MerchantId>,
    /// With --merchant: the UTC day the payments were approved, YYYY-MM-DD.
    #[arg(
        long,
        requires = "merchant",
        conflicts_with_all = ["rrn", "stan"],
        value_parser = LocalDate::parse
    )]
    pub day: Option<LocalDate>,
    /// A card sale or QR payment by the switch's transaction id (UUID).
    #[arg(long, value_name = "UUID", value_parser = TransactionId::parse)]
    pub transaction_id: Option<TransactionId>,
    /// A QR payment by the switch's order id at the platform.
    #[arg(long, value_name = "ORDER_ID", value_parser = OrderId::parse)]
    pub qr_order_id: Option<OrderId>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Merchant to settle (repeatable; default: every merchant with an open
    /// window).
    #[arg(long = "merchant", value_name = "MID", value_parser = MerchantId::parse)]
    pub merchants: Vec<MerchantId>,
    /// Cut-off, RFC 3339 (default: now); approvals after it stay open.
    #[arg(long, value_name = "RFC3339", value_parser = parse_cutoff)]
    pub cutoff: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settlement::test_support::totals;
    use crate::{Cli, Command};
    use clap::Parser;

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
        assert_eq!(args.batch.to_string(), "000001");
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
        let merchants: Vec<&str> = args.merchants.iter().map(MerchantId::as_str).collect();
        assert_eq!(merchants, ["MERCH001", "MERCH002"]);
        assert_eq!(args.cutoff.as_deref(), Some("2025-01-31T18:00:00Z"));
        let error =
            Cli::try_parse_from(["posctl", "settlement", "run", "--cutoff", "6pm"]).unwrap_err();
        assert!(error.to_string().contains("--cutoff"), "{error}");
        let error =
            Cli::try_parse_from(["posctl", "settlement", "run", "--merchant", "M-1"]).unwrap_err();
        assert!(error.to_string().contains("merchant_id"), "{error}");
    }

    #[test]
    fn rejections_are_listed_and_resolved_with_who_and_why() {
        let cli = Cli::try_parse_from([
            "posctl",
            "settlement",
            "rejections",
            "resolve",
            "--transaction-id",
            "01a23462-640c-7367-8d86-1fa0f9da8477",
            "--resolution",
            "admit",
            "--operator",
            "ops.alice",
            "--reason",
            "INC-9: a second terminal with the same id",
        ])
        .unwrap();
        let Command::Settlement(settlement) = cli.command else {
            panic!("expected settlement");
        };
        let SettlementCommand::Rejections(RejectionsCommand::Resolve(args)) = settlement.command
        else {
            panic!("expected settlement rejections resolve");
        };
        assert_eq!(args.resolution, ResolutionArg::Admit);
        assert_eq!(args.operator, "ops.alice");
        for (bad, flag) in [
            (
                ["--transaction-id", "x", "--resolution", "admit"],
                "transaction_id",
            ),
            (
                [
                    "--transaction-id",
                    "01a23462-640c-7367-8d86-1fa0f9da8477",
                    "--resolution",
                    "pay",
                ],
                "--resolution",
            ),
        ] {
            let mut argv = vec!["posctl", "settlement", "rejections", "resolve"];
            argv.extend(bad);
            argv.extend(["--operator", "o", "--reason", "r"]);
            let error = Cli::try_parse_from(argv).unwrap_err().to_string();
            assert!(error.contains(flag), "{error}");
        }
        let cli =
            Cli::try_parse_from(["posctl", "settlement", "rejections", "list", "--all"]).unwrap();
        let Command::Settlement(settlement) = cli.command else {
            panic!("expected settlement");
        };
        assert!(matches!(
            settlement.command,
            SettlementCommand::Rejections(RejectionsCommand::List(RejectionsListArgs {
                all: true,
                ..
            }))
        ));
    }

    #[test]
    fn batch_numbers_are_core_batch_numbers() {
        for bad in ["1", "000000", "00000a"] {
            let error = Cli::try_parse_from(["posctl", "close-batch", "--batch", bad]).unwrap_err();
            assert!(error.to_string().contains("batch_number"), "{bad}: {error}");
        }
    }
}
