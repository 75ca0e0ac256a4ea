//! `settlement rejections list|resolve`: approvals the ledger rejected
//! because another transaction holds their terminal + date + STAN, and the
//! operator's resolution of each (asks the settlement batcher directly).

use anyhow::Result;
use serde_json::{Value, json};
use switch_core::LedgerStatus;
use switch_core::settlement::rejection::Resolution;
use switch_proto::domain::optional;
use switch_proto::v1::settlement_service_client::SettlementServiceClient;
use switch_proto::v1::{
    self as pb, LedgerRejection, ListLedgerRejectionsRequest, ListLedgerRejectionsResponse,
    ResolveLedgerRejectionRequest,
};
use tonic::transport::Channel;

use super::args::{RejectionsCommand, ResolutionArg};
use crate::AlreadyReported;
use crate::output::{
    evidence_name, format_amount, format_table, mask_pan, money_json, or_dash, print_status_error,
    reversal_reason_name,
};

/// The name of a wire ledger status (`confirmed`), empty when the
/// rejection's status is not known.
fn status_name(raw: i32) -> String {
    match optional::<pb::LedgerStatus, LedgerStatus>("status", raw) {
        Ok(Some(status)) => status.as_str().to_owned(),
        Ok(None) => String::new(),
        Err(_) => format!("unknown ({raw})"),
    }
}

/// The name of a wire resolution (`dismissed`), empty while open.
fn resolution_name(raw: i32) -> String {
    match optional::<pb::RejectionResolution, Resolution>("resolution", raw) {
        Ok(Some(resolution)) => resolution.as_str().to_owned(),
        Ok(None) => String::new(),
        Err(_) => format!("unknown ({raw})"),
    }
}

fn rejection_json(rejection: &LedgerRejection) -> Value {
    json!({
        "transaction_id": rejection.transaction_id,
        "terminal_id": rejection.terminal_id,
        "merchant_id": rejection.merchant_id,
        "stan": rejection.stan,
        "local_date": rejection.local_date,
        "amount": money_json(rejection.amount.as_ref()),
        "held_by": rejection.held_by,
        "recorded_at": rejection.recorded_at,
        "rrn": rejection.rrn,
        "masked_pan": mask_pan(&rejection.masked_pan),
        "status": status_name(rejection.status),
        "reversal_reason": reversal_reason_name(rejection.reversal_reason),
        "evidence": evidence_name(rejection.evidence),
        "resolution": resolution_name(rejection.resolution),
        "resolved_by": rejection.resolved_by,
        "resolution_reason": rejection.resolution_reason,
        "resolved_at": rejection.resolved_at,
    })
}

/// `rejections list --json`.
pub fn rejections_json(page: &ListLedgerRejectionsResponse) -> Value {
    json!({
        "rejections": page.rejections.iter().map(rejection_json).collect::<Vec<_>>(),
        "open": page.open,
        "next_cursor": page.next_cursor,
    })
}

/// Where a rejected approval stands, in a few words: `reversed
/// (no_terminal_acknowledgement)`, `confirmed`, or `unknown`.
fn standing(rejection: &LedgerRejection) -> String {
    let status = status_name(rejection.status);
    let reason = reversal_reason_name(rejection.reversal_reason);
    match (status.as_str(), reason.as_str()) {
        ("", _) => "unknown".to_owned(),
        (status @ ("reversed" | "reversal_pending"), reason) if !reason.is_empty() => {
            format!("{status} ({reason})")
        }
        (status, _) => status.to_owned(),
    }
}

fn resolved(rejection: &LedgerRejection) -> String {
    match resolution_name(rejection.resolution).as_str() {
        "" => "open".to_owned(),
        resolution => format!(
            "{resolution} by {} at {}: {}",
            rejection.resolved_by, rejection.resolved_at, rejection.resolution_reason
        ),
    }
}

/// `rejections list`: a table, the open count, and how to get more.
pub fn rejections_text(page: &ListLedgerRejectionsResponse) -> String {
    if page.rejections.is_empty() {
        return format!("no ledger rejections listed; {} open", page.open);
    }
    let rows: Vec<Vec<String>> = page
        .rejections
        .iter()
        .map(|r| {
            vec![
                r.transaction_id.clone(),
                r.terminal_id.clone(),
                r.stan.clone(),
                r.local_date.clone(),
                or_dash(&r.rrn),
                or_dash(&mask_pan(&r.masked_pan)),
                format_amount(r.amount.as_ref()),
                standing(r),
                r.held_by.clone(),
                r.recorded_at.clone(),
                resolved(r),
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
            "STANDS",
            "HELD BY",
            "RECORDED AT",
            "RESOLUTION",
        ],
        &rows,
    );
    let listed = page.rejections.len();
    let open = page.open;
    match page.next_cursor.as_str() {
        "" => format!("{table}\n{listed} listed, {open} open"),
        cursor => format!(
            "{table}\n{listed} listed, {open} open; more: posctl settlement rejections list --cursor {cursor}"
        ),
    }
}

/// `rejections resolve`: what the rejection became.
pub fn resolved_text(rejection: &LedgerRejection) -> String {
    let outcome = match resolution_name(rejection.resolution).as_str() {
        "admitted" => format!(
            "admitted into the ledger, {}: paid by its status like any approval",
            standing(rejection)
        ),
        "dismissed" => "dismissed: a duplicate of the key's holder, never paid".to_owned(),
        other => or_dash(other),
    };
    format!(
        "Ledger rejection of {} ({} STAN {} on {}, {}, held by {}): {outcome}\nResolved by {} at {}: {}",
        rejection.transaction_id,
        rejection.terminal_id,
        rejection.stan,
        rejection.local_date,
        format_amount(rejection.amount.as_ref()),
        rejection.held_by,
        rejection.resolved_by,
        rejection.resolved_at,
        rejection.resolution_reason,
    )
}

/// Runs `settlement rejections list|resolve` against the service.
pub async fn run_rejections(
    mut client: SettlementServiceClient<Channel>,
    command: RejectionsCommand,
    json: bool,
) -> Result<()> {
    let answer = match command {
        RejectionsCommand::List(args) => client
            .list_ledger_rejections(ListLedgerRejectionsRequest {
                limit: args.limit.unwrap_or(0),
                cursor: args.cursor.unwrap_or_default(),
                include_resolved: args.all,
            })
            .await
            .map(|page| {
                let page = page.into_inner();
                if json {
                    rejections_json(&page).to_string()
                } else {
                    rejections_text(&page)
                }
            }),
        RejectionsCommand::Resolve(args) => {
            let resolution = match args.resolution {
                ResolutionArg::Dismiss => pb::RejectionResolution::Dismiss,
                ResolutionArg::Admit => pb::RejectionResolution::Admit,
            };
            client
                .resolve_ledger_rejection(ResolveLedgerRejectionRequest {
                    transaction_id: args.transaction_id.to_string(),
                    resolution: resolution.into(),
                    operator: args.operator,
                    reason: args.reason,
                })
                .await
                .map(|resolved| {
                    let resolved = resolved.into_inner();
                    if json {
                        rejection_json(&resolved).to_string()
                    } else {
                        resolved_text(&resolved)
                    }
                })
        }
    };
    match answer {
        Ok(text) => {
            println!("{text}");
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

    fn rejection() -> LedgerRejection {
        LedgerRejection {
            transaction_id: "01a23462-640c-7367-8d86-1fa0f9da8477".into(),
            terminal_id: "TERM0001".into(),
            merchant_id: "MERCHANT0000001".into(),
            stan: "000042".into(),
            local_date: "2026-12-02".into(),
            amount: Some(pb::Money {
                minor_units: 1_050,
                currency: "EUR".into(),
            }),
            held_by: "01a23462-0000-7000-8000-000000000001".into(),
            recorded_at: "2026-12-02T10:00:00Z".into(),
            rrn: "633612000042".into(),
            masked_pan: "411111******1111".into(),
            status: pb::LedgerStatus::Reversed.into(),
            reversal_reason: pb::ReversalReason::NoTerminalAcknowledgement.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_page_shows_where_each_stands_and_whether_it_is_resolved() {
        let mut legacy = rejection();
        legacy.status = 0;
        legacy.reversal_reason = 0;
        legacy.rrn.clear();
        legacy.masked_pan.clear();
        let page = ListLedgerRejectionsResponse {
            rejections: vec![rejection(), legacy],
            next_cursor: "1_x".into(),
            open: 2,
        };
        let text = rejections_text(&page);
        assert!(
            text.contains("reversed (no_terminal_acknowledgement)"),
            "{text}"
        );
        assert!(text.contains("unknown"), "{text}");
        assert!(text.contains("EUR 10.50"), "{text}");
        assert!(text.contains("  open"), "{text}");
        assert!(
            text.ends_with(
                "2 listed, 2 open; more: posctl settlement rejections list --cursor 1_x"
            )
        );
        let json = rejections_json(&page);
        assert_eq!(json["open"], 2);
        assert_eq!(json["rejections"][0]["status"], "reversed");
        assert_eq!(json["rejections"][1]["status"], "");
        assert_eq!(json["rejections"][0]["resolution"], "");
    }

    #[test]
    fn a_resolution_says_what_it_means_for_the_money() {
        let mut admitted = rejection();
        admitted.resolution = pb::RejectionResolution::Admit.into();
        admitted.resolved_by = "ops.alice".into();
        admitted.resolved_at = "2026-12-02T11:00:00Z".into();
        admitted.resolution_reason = "INC-9".into();
        let text = resolved_text(&admitted);
        assert!(
            text.contains("admitted into the ledger, reversed (no_terminal_acknowledgement)"),
            "{text}"
        );
        assert!(
            text.ends_with("Resolved by ops.alice at 2026-12-02T11:00:00Z: INC-9"),
            "{text}"
        );
        let mut dismissed = admitted.clone();
        dismissed.resolution = pb::RejectionResolution::Dismiss.into();
        assert!(resolved_text(&dismissed).contains("never paid"));
        assert_eq!(rejection_json(&dismissed)["resolution"], "dismissed");
    }
}
