//! How every answer is shown: text for people, JSON for scripts.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use switch_proto::v1::{
    BatchResult, CloseBatchResponse, CurrencyTotals, MerchantPayout, RunSettlementResponse,
    SettlementState, SettlementStatusResponse, TransactionSettlement, UploadBatchResponse,
    WindowSummary,
};

use super::specs::SALE_SHAPE;
use crate::output::{
    format_amount, format_money, format_table, hold_reason_name, money_json, or_dash, outcome_name,
    response_code_description, reversal_reason_name,
};

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
        *counts.entry(outcome_name(outcome.outcome)).or_insert(0) += 1;
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
                "outcome": outcome_name(o.outcome),
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
                or_dash(&outcome_name(o.outcome)),
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
        "hold_reason": hold_reason_name(t.hold_reason),
        "reversal_reason": reversal_reason_name(t.reversal_reason),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settlement::test_support::{money, totals};
    use switch_proto::v1::{ReconciledTransaction, ReconciliationOutcome};

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
            |stan: &str, id: &str, rrn: &str, outcome: ReconciliationOutcome, detail: &str| {
                ReconciledTransaction {
                    stan: stan.to_owned(),
                    local_date: "2025-01-31".to_owned(),
                    transaction_id: id.to_owned(),
                    rrn: rrn.to_owned(),
                    outcome: outcome.into(),
                    detail: detail.to_owned(),
                }
            };
        UploadBatchResponse {
            result: BatchResult::Reconciled as i32,
            outcomes: vec![
                outcome(
                    "000001",
                    "t-1",
                    "503100000001",
                    ReconciliationOutcome::Matched,
                    "",
                ),
                outcome(
                    "000002",
                    "t-2",
                    "503100000002",
                    ReconciliationOutcome::OrphanReversalRequested,
                    "not in the upload",
                ),
                outcome(
                    "000003",
                    "",
                    "",
                    ReconciliationOutcome::UnknownAtHost,
                    "no such approval",
                ),
                outcome(
                    "000004",
                    "t-4",
                    "503100000004",
                    ReconciliationOutcome::Matched,
                    "",
                ),
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
                    ..TransactionSettlement::default()
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
                    hold_reason: switch_proto::v1::HoldReason::Conflict.into(),
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
                "hold_reason": "",
                "reversal_reason": "",
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
        assert_eq!(value[1]["hold_reason"], "conflict");
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
                        ..Default::default()
                    }],
                    held_count: 1,
                    fee_basis_points: 150,
                    ..Default::default()
                },
                WindowSummary {
                    window_id: "w-2".to_owned(),
                    merchant_id: "MERCH002".to_owned(),
                    sequence: 1,
                    cutoff: "2025-01-31T18:00:00Z".to_owned(),
                    payouts: vec![],
                    held_count: 2,
                    fee_basis_points: 0,
                    ..Default::default()
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
