//! Presentation helpers: PAN masking, money formatting and response code
//! descriptions (both switch-core's, so posctl cannot drift from the
//! switch), the final state of an
//! authorization (status with its reversal reason or confirmation evidence,
//! and whether the terminal's receipt is void), and printing of authorization
//! records and gRPC errors, both for humans and as JSON. The wire's
//! vocabulary enums (evidence, reversal reason, reconciliation outcome) are
//! shown by switch-core's names, converted once here.

use serde_json::{Value, json};
use switch_core::{
    Currency, Evidence, HoldReason, InvalidField, Money as CoreMoney, ReconciliationOutcome,
    ResponseCode, ReversalReason,
};
use switch_proto::domain::{optional, outcome_reason_name};
use switch_proto::v1::{self as pb, AuthorizationRecord, AuthorizationStatus, Money};
use tonic::Code;

/// Masks a card number for display: the first 6 and last 4 characters stay,
/// everything in between becomes `*`. Anything too short to keep 10 visible
/// characters safely is masked completely. Applying it to an already masked
/// PAN is harmless, so it is used defensively on whatever the server returns.
pub fn mask_pan(pan: &str) -> String {
    let chars: Vec<char> = pan.chars().collect();
    let len = chars.len();
    if len < 13 {
        return "*".repeat(len);
    }
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < 6 || i >= len - 4 { *c } else { '*' })
        .collect()
}

/// Formats integer minor units as `"EUR 10.50"` with core's [`Money`]
/// display (the currency's own minor units, integer arithmetic only). A
/// currency core does not know is shown with the raw minor units, never
/// guessed.
///
/// [`Money`]: switch_core::Money
pub fn format_money(minor_units: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(currency) => CoreMoney::new(minor_units, currency).to_string(),
        Err(_) => format!("{currency} {minor_units} (minor units)"),
    }
}

/// Formats an optional [`Money`] (a missing amount shows as `-`).
pub fn format_amount(amount: Option<&Money>) -> String {
    match amount {
        Some(m) => format_money(m.minor_units, &m.currency),
        None => "-".to_owned(),
    }
}

/// Short display name of an authorization status enum value.
pub fn status_name(status: i32) -> &'static str {
    match AuthorizationStatus::try_from(status) {
        Ok(AuthorizationStatus::Received) => "RECEIVED",
        Ok(AuthorizationStatus::SentToIssuer) => "SENT_TO_ISSUER",
        Ok(AuthorizationStatus::Approved) => "APPROVED",
        Ok(AuthorizationStatus::Declined) => "DECLINED",
        Ok(AuthorizationStatus::IssuerTimedOut) => "ISSUER_TIMED_OUT",
        Ok(AuthorizationStatus::ReversalPending) => "REVERSAL_PENDING",
        Ok(AuthorizationStatus::Reversed) => "REVERSED",
        Ok(AuthorizationStatus::Confirmed) => "CONFIRMED",
        Ok(AuthorizationStatus::ReversalDeadLettered) => "REVERSAL_DEAD_LETTERED",
        Ok(AuthorizationStatus::Unspecified) => "UNSPECIFIED",
        Err(_) => "UNKNOWN",
    }
}

/// Whether a terminal should acknowledge a sale answered with this status:
/// only a successful result it would print as a valid receipt.
pub fn should_acknowledge(status: i32) -> bool {
    matches!(
        AuthorizationStatus::try_from(status),
        Ok(AuthorizationStatus::Approved | AuthorizationStatus::Confirmed)
    )
}

/// Whether the switch is taking (or has taken) the money back: the sale must
/// not be honoured and any receipt for it is void. A dead-lettered reversal
/// is still owed to the issuer, so it counts as well.
pub fn is_void_status(status: i32) -> bool {
    matches!(
        AuthorizationStatus::try_from(status),
        Ok(AuthorizationStatus::Reversed
            | AuthorizationStatus::ReversalPending
            | AuthorizationStatus::ReversalDeadLettered)
    )
}

/// What the terminal must do with a voided sale.
pub const VOID_ADVICE: &str = "void: do not hand over goods; reprint as void";

/// What a conflicting acknowledgement means for the terminal.
pub const CONFLICT_NOTICE: &str =
    "CONFLICT: receipt void (acknowledged after the switch had reversed it)";

/// The final state of a record in one phrase, e.g.
/// `REVERSED (reason: no_terminal_acknowledgement)` or
/// `CONFIRMED (evidence: terminal_acknowledgement)`. The reason and the
/// evidence are shown whenever the switch recorded them.
pub fn status_headline(status: i32, reversal_reason: &str, confirmation_evidence: &str) -> String {
    let mut details = Vec::new();
    if !reversal_reason.is_empty() {
        details.push(format!("reason: {reversal_reason}"));
    }
    if !confirmation_evidence.is_empty() {
        details.push(format!("evidence: {confirmation_evidence}"));
    }
    let name = status_name(status);
    if details.is_empty() {
        name.to_owned()
    } else {
        format!("{name} ({})", details.join(", "))
    }
}

/// [`status_headline`] of a record.
pub fn record_headline(record: &AuthorizationRecord) -> String {
    status_headline(
        record.status,
        &reversal_reason_name(record.reversal_reason),
        &evidence_name(record.confirmation_evidence),
    )
}

/// A vocabulary value's core name: empty when unspecified, `unknown (N)`
/// for a number this build does not know.
fn vocabulary_name(named: Result<Option<&'static str>, InvalidField>, raw: i32) -> String {
    match named {
        Ok(Some(name)) => name.to_owned(),
        Ok(None) => String::new(),
        Err(_) => format!("unknown ({raw})"),
    }
}

/// The name of a wire reversal reason, e.g. `no_terminal_acknowledgement`.
pub fn reversal_reason_name(raw: i32) -> String {
    let reason = optional::<pb::ReversalReason, ReversalReason>("reversal_reason", raw);
    vocabulary_name(reason.map(|r| r.map(|r| r.as_str())), raw)
}

/// The name of a wire evidence, e.g. `terminal_acknowledgement`.
pub fn evidence_name(raw: i32) -> String {
    let evidence = optional::<pb::Evidence, Evidence>("evidence", raw);
    vocabulary_name(evidence.map(|e| e.map(|e| e.as_str())), raw)
}

/// The name of a wire hold reason, e.g. `awaiting_evidence`.
pub fn hold_reason_name(raw: i32) -> String {
    let hold = optional::<pb::HoldReason, HoldReason>("hold_reason", raw);
    vocabulary_name(hold.map(|h| h.map(|h| h.as_str())), raw)
}

/// The name of a terminal message's reason, e.g. `policy`: empty when
/// there is none, `unknown` when it names nothing this build knows.
pub fn outcome_reason_text(reason: Option<&pb::OutcomeReason>) -> String {
    match (reason, outcome_reason_name(reason)) {
        (_, Ok(name)) => name.to_owned(),
        (None, Err(_)) => String::new(),
        (Some(_), Err(_)) => "unknown".to_owned(),
    }
}

/// The name of a wire reconciliation outcome, e.g. `matched`.
pub fn outcome_name(raw: i32) -> String {
    let outcome = optional::<pb::ReconciliationOutcome, ReconciliationOutcome>("outcome", raw);
    vocabulary_name(outcome.map(|o| o.map(|o| o.as_str())), raw)
}

/// Human description of an ISO 8583 response code (field 39), from
/// [`ResponseCode::description`]; an empty field (no code) and a malformed
/// one are named as such.
pub fn response_code_description(code: &str) -> &'static str {
    if code.is_empty() {
        return "no response code";
    }
    ResponseCode::parse(code).map_or("Malformed response code", |code| code.description())
}

/// Canonical upper-case name of a gRPC status code, e.g. `INVALID_ARGUMENT`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One-line description of a gRPC error: `CODE: message`.
pub fn status_line(status: &tonic::Status) -> String {
    let message = status.message();
    if message.is_empty() {
        code_name(status.code()).to_owned()
    } else {
        format!("{}: {message}", code_name(status.code()))
    }
}

/// JSON form of a money amount.
pub fn money_json(amount: Option<&Money>) -> Value {
    match amount {
        Some(m) => json!({
            "minor_units": m.minor_units,
            "currency": m.currency,
            "display": format_money(m.minor_units, &m.currency),
        }),
        None => Value::Null,
    }
}

/// JSON form of an authorization record; `duplicate` is included when known.
pub fn record_json(record: &AuthorizationRecord, duplicate: Option<bool>) -> Value {
    let mut value = json!({
        "status": status_name(record.status),
        "response_code": record.response_code,
        "response_description": response_code_description(&record.response_code),
        "approval_code": record.approval_code,
        "rrn": record.rrn,
        "masked_pan": mask_pan(&record.masked_pan),
        "amount": money_json(record.amount.as_ref()),
        "message": record.message,
        "transaction_id": record.transaction_id,
        "terminal_id": record.terminal_id,
        "merchant_id": record.merchant_id,
        "stan": record.stan,
        "local_date": record.local_date,
        "created_at": record.created_at,
        "acknowledged": record.acknowledged,
        "reversal_reason": reversal_reason_name(record.reversal_reason),
        "confirmation_evidence": evidence_name(record.confirmation_evidence),
        "conflict": record.conflict,
        "void": record.conflict || is_void_status(record.status),
    });
    if let (Some(dup), Some(obj)) = (duplicate, value.as_object_mut()) {
        obj.insert("duplicate".to_owned(), Value::Bool(dup));
    }
    value
}

/// Human-readable, multi-line form of an authorization record.
pub fn record_text(record: &AuthorizationRecord, duplicate: Option<bool>) -> String {
    let mut lines = vec![format!("Status:        {}", record_headline(record))];
    if is_void_status(record.status) {
        lines.push(format!("               {VOID_ADVICE}"));
    }
    if record.conflict {
        lines.push(CONFLICT_NOTICE.to_owned());
    }
    lines.push(format!(
        "Response code: {} ({})",
        or_dash(&record.response_code),
        response_code_description(&record.response_code)
    ));
    if !record.message.is_empty() {
        lines.push(format!("Message:       {}", record.message));
    }
    lines.extend([
        format!("RRN:           {}", or_dash(&record.rrn)),
        format!("Approval code: {}", or_dash(&record.approval_code)),
        format!("Card:          {}", or_dash(&mask_pan(&record.masked_pan))),
        format!("Amount:        {}", format_amount(record.amount.as_ref())),
        format!(
            "Terminal:      {} (merchant {}), STAN {}, date {}",
            or_dash(&record.terminal_id),
            or_dash(&record.merchant_id),
            or_dash(&record.stan),
            or_dash(&record.local_date)
        ),
        format!("Transaction:   {}", or_dash(&record.transaction_id)),
    ]);
    if !record.created_at.is_empty() {
        lines.push(format!("Created at:    {}", record.created_at));
    }
    lines.push(format!(
        "Acknowledged:  {}",
        if record.acknowledged { "yes" } else { "no" }
    ));

    if duplicate == Some(true) {
        lines.push("(duplicate: original answer)".to_owned());
    }
    lines.join("\n")
}

/// Prints an authorization record to stdout, as text or as one JSON object.
pub fn print_record(record: &AuthorizationRecord, duplicate: Option<bool>, json: bool) {
    if json {
        println!("{}", record_json(record, duplicate));
    } else {
        println!("{}", record_text(record, duplicate));
    }
}

/// Line a terminal shows after acknowledging a sale: the receipt stands,
/// unless the switch had already reversed it.
pub fn ack_line(record: &AuthorizationRecord) -> &'static str {
    if record.conflict || is_void_status(record.status) {
        "acknowledged: receipt printed, but the switch had reversed the sale: receipt void"
    } else {
        "acknowledged: receipt printed"
    }
}

/// JSON of a sale whose result the terminal acknowledged: the record the
/// acknowledgement returned, with `"acknowledged": true`.
pub fn acknowledged_sale_json(record: &AuthorizationRecord, duplicate: bool) -> Value {
    let mut value = record_json(record, Some(duplicate));
    if let Some(obj) = value.as_object_mut() {
        obj.insert("acknowledged".to_owned(), Value::Bool(true));
    }
    value
}

/// Text of a sale whose result the terminal acknowledged.
pub fn acknowledged_sale_text(record: &AuthorizationRecord, duplicate: bool) -> String {
    format!(
        "{}\n{}",
        record_text(record, Some(duplicate)),
        ack_line(record)
    )
}

/// What the terminal is told when the switch never saw the transaction it
/// asked to reverse.
pub const NOTHING_TO_REVERSE: &str =
    "no such transaction at the switch: reversal recorded, nothing to reverse";

/// JSON answer of a terminal reversal: the record with
/// `"original_found": true`, or, when the switch never saw the transaction,
/// its key with `"original_found": false`.
pub fn reverse_json(
    record: Option<&AuthorizationRecord>,
    original_found: bool,
    stan: &str,
    local_date: &str,
) -> Value {
    match record.filter(|_| original_found) {
        Some(record) => {
            let mut value = record_json(record, None);
            if let Some(obj) = value.as_object_mut() {
                obj.insert("original_found".to_owned(), Value::Bool(true));
            }
            value
        }
        None => json!({
            "original_found": false,
            "stan": stan,
            "local_date": local_date,
            "message": NOTHING_TO_REVERSE,
        }),
    }
}

/// Text answer of a terminal reversal (see [`reverse_json`]).
pub fn reverse_text(
    record: Option<&AuthorizationRecord>,
    original_found: bool,
    stan: &str,
    local_date: &str,
) -> String {
    match record.filter(|_| original_found) {
        Some(record) => record_text(record, None),
        None => format!("{NOTHING_TO_REVERSE} (STAN {stan}, date {local_date})"),
    }
}

/// `-` for an empty field of a human-readable table or line.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// Lays out rows under headers in left-aligned columns separated by two
/// spaces; trailing blanks are trimmed, so an empty last column adds nothing.
pub fn format_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad));
        }
        out.trim_end().to_owned()
    };
    let mut lines = vec![line(headers.to_vec())];
    for row in rows {
        let cells = (0..columns)
            .map(|i| row.get(i).map_or("", String::as_str))
            .collect();
        lines.push(line(cells));
    }
    lines.join("\n")
}

/// Prints a gRPC error: to stderr for humans, or as a JSON object on stdout.
pub fn print_status_error(status: &tonic::Status, json: bool) {
    if json {
        println!(
            "{}",
            json!({
                "error": {
                    "code": code_name(status.code()),
                    "code_number": i32::from(status.code()),
                    "message": status.message(),
                }
            })
        );
    } else {
        eprintln!("error: gRPC {}", status_line(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_pan_keeping_first_six_and_last_four() {
        assert_eq!(mask_pan("4111111111111111"), "411111******1111");
        assert_eq!(mask_pan("378282246310005"), "378282*****0005");
        assert_eq!(mask_pan("4111111111111111111"), "411111*********1111");
        // Already masked input stays masked.
        assert_eq!(mask_pan("411111******1111"), "411111******1111");
        // Too short to show safely: everything hidden.
        assert_eq!(mask_pan("123456789012"), "************");
        assert_eq!(mask_pan(""), "");
    }

    #[test]
    fn formats_money_with_minor_units() {
        assert_eq!(format_money(1050, "EUR"), "EUR 10.50");
        assert_eq!(format_money(5, "EUR"), "EUR 0.05");
        assert_eq!(format_money(0, "USD"), "USD 0.00");
        assert_eq!(format_money(-1050, "EUR"), "EUR -10.50");
        assert_eq!(format_money(1050, "JPY"), "JPY 1050");
        assert_eq!(format_money(1050, "KWD"), "KWD 1.050");
        assert_eq!(format_money(7, "BHD"), "BHD 0.007");
        assert_eq!(format_money(i64::MIN, "EUR"), "EUR -92233720368547758.08");
        assert_eq!(format_money(1050, "XYZ"), "XYZ 1050 (minor units)");
        assert_eq!(format_amount(None), "-");
    }

    #[test]
    fn names_status_and_codes() {
        assert_eq!(
            status_name(AuthorizationStatus::Approved as i32),
            "APPROVED"
        );
        assert_eq!(status_name(99), "UNKNOWN");
        assert_eq!(response_code_description("05"), "Do not honour");
        assert_eq!(
            response_code_description("91"),
            ResponseCode::ISSUER_UNAVAILABLE.description()
        );
        assert_eq!(response_code_description("Z9"), "Unknown response code");
        assert_eq!(response_code_description(""), "no response code");
        assert_eq!(response_code_description("000"), "Malformed response code");
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        let status = tonic::Status::already_exists("modified replay");
        assert_eq!(status_line(&status), "ALREADY_EXISTS: modified replay");
    }

    #[test]
    fn record_output_masks_and_flags_duplicates() {
        let record = AuthorizationRecord {
            masked_pan: "4111111111111111".to_owned(),
            status: AuthorizationStatus::Approved as i32,
            response_code: "00".to_owned(),
            amount: Some(Money {
                minor_units: 1050,
                currency: "EUR".to_owned(),
            }),
            ..AuthorizationRecord::default()
        };
        let text = record_text(&record, Some(true));
        assert!(text.contains("411111******1111"));
        assert!(!text.contains("4111111111111111"));
        assert!(text.contains("EUR 10.50"));
        assert!(text.contains("(duplicate: original answer)"));
        let json = record_json(&record, Some(false));
        assert_eq!(json["masked_pan"], "411111******1111");
        assert_eq!(json["duplicate"], false);
        assert_eq!(json["amount"]["display"], "EUR 10.50");
        assert!(record_json(&record, None).get("duplicate").is_none());
    }

    #[test]
    fn tables_align_columns_and_trim() {
        let table = format_table(
            &["STAN", "OUTCOME", ""],
            &[
                vec!["000001".to_owned(), "matched".to_owned(), String::new()],
                vec!["2".to_owned(), "x".to_owned(), "CONFLICT".to_owned()],
                vec!["3".to_owned()],
            ],
        );
        assert_eq!(
            table,
            "STAN    OUTCOME\n000001  matched\n2       x        CONFLICT\n3"
        );
        assert_eq!(or_dash(""), "-");
        assert_eq!(or_dash("a"), "a");
        assert_eq!(response_code_description("95"), "Reconcile error");
    }

    #[test]
    fn names_every_status() {
        for (status, name) in [
            (AuthorizationStatus::Unspecified, "UNSPECIFIED"),
            (AuthorizationStatus::Received, "RECEIVED"),
            (AuthorizationStatus::SentToIssuer, "SENT_TO_ISSUER"),
            (AuthorizationStatus::Approved, "APPROVED"),
            (AuthorizationStatus::Declined, "DECLINED"),
            (AuthorizationStatus::IssuerTimedOut, "ISSUER_TIMED_OUT"),
            (AuthorizationStatus::ReversalPending, "REVERSAL_PENDING"),
            (AuthorizationStatus::Reversed, "REVERSED"),
            (AuthorizationStatus::Confirmed, "CONFIRMED"),
            (
                AuthorizationStatus::ReversalDeadLettered,
                "REVERSAL_DEAD_LETTERED",
            ),
        ] {
            assert_eq!(status_name(status as i32), name);
        }
    }

    #[test]
    fn vocabulary_values_show_by_their_core_names() {
        assert_eq!(
            reversal_reason_name(pb::ReversalReason::BatchOrphan.into()),
            "batch_orphan"
        );
        assert_eq!(evidence_name(pb::Evidence::Policy.into()), "policy");
        assert_eq!(
            outcome_name(pb::ReconciliationOutcome::OrphanReversalRequested.into()),
            "orphan_reversal_requested"
        );
        assert_eq!(evidence_name(0), "");
        assert_eq!(reversal_reason_name(42), "unknown (42)");
    }

    #[test]
    fn headline_shows_reason_and_evidence() {
        assert_eq!(
            status_headline(
                AuthorizationStatus::Reversed as i32,
                "no_terminal_acknowledgement",
                ""
            ),
            "REVERSED (reason: no_terminal_acknowledgement)"
        );
        assert_eq!(
            status_headline(
                AuthorizationStatus::Confirmed as i32,
                "",
                "terminal_acknowledgement"
            ),
            "CONFIRMED (evidence: terminal_acknowledgement)"
        );
        assert_eq!(
            status_headline(AuthorizationStatus::Approved as i32, "", ""),
            "APPROVED"
        );
        assert_eq!(
            status_headline(
                AuthorizationStatus::Reversed as i32,
                "issuer_timeout",
                "policy"
            ),
            "REVERSED (reason: issuer_timeout, evidence: policy)"
        );
    }

    #[test]
    fn classifies_statuses_for_ack_and_void() {
        assert!(should_acknowledge(AuthorizationStatus::Approved as i32));
        assert!(should_acknowledge(AuthorizationStatus::Confirmed as i32));
        for status in [
            AuthorizationStatus::Declined,
            AuthorizationStatus::IssuerTimedOut,
            AuthorizationStatus::Reversed,
            AuthorizationStatus::ReversalPending,
            AuthorizationStatus::Received,
        ] {
            assert!(!should_acknowledge(status as i32), "{status:?}");
        }
        assert!(!should_acknowledge(99));
        assert!(is_void_status(AuthorizationStatus::Reversed as i32));
        assert!(is_void_status(AuthorizationStatus::ReversalPending as i32));
        assert!(is_void_status(
            AuthorizationStatus::ReversalDeadLettered as i32
        ));
        assert!(!is_void_status(AuthorizationStatus::Approved as i32));
        assert!(!is_void_status(AuthorizationStatus::Confirmed as i32));
        assert!(!is_void_status(AuthorizationStatus::Declined as i32));
    }

    #[test]
    fn reversed_record_is_marked_void() {
        let record = AuthorizationRecord {
            status: AuthorizationStatus::Reversed as i32,
            reversal_reason: pb::ReversalReason::NoTerminalAcknowledgement.into(),
            ..AuthorizationRecord::default()
        };
        let text = record_text(&record, None);
        assert!(text.starts_with("Status:        REVERSED (reason: no_terminal_acknowledgement)"));
        assert!(text.contains(VOID_ADVICE));
        assert!(!text.contains("CONFLICT"));
        let json = record_json(&record, None);
        assert_eq!(json["status"], "REVERSED");
        assert_eq!(json["reversal_reason"], "no_terminal_acknowledgement");
        assert_eq!(json["void"], true);
        assert_eq!(json["conflict"], false);

        let confirmed = AuthorizationRecord {
            status: AuthorizationStatus::Confirmed as i32,
            confirmation_evidence: pb::Evidence::TerminalAcknowledgement.into(),
            acknowledged: true,
            ..AuthorizationRecord::default()
        };
        let text = record_text(&confirmed, None);
        assert!(text.contains("CONFIRMED (evidence: terminal_acknowledgement)"));
        assert!(!text.contains("void"));
        let json = record_json(&confirmed, None);
        assert_eq!(json["confirmation_evidence"], "terminal_acknowledgement");
        assert_eq!(json["void"], false);
    }

    #[test]
    fn conflict_voids_the_receipt() {
        let record = AuthorizationRecord {
            status: AuthorizationStatus::Reversed as i32,
            reversal_reason: pb::ReversalReason::NoTerminalAcknowledgement.into(),
            acknowledged: true,
            conflict: true,
            ..AuthorizationRecord::default()
        };
        let text = record_text(&record, None);
        assert!(text.contains("CONFLICT: receipt void"));
        let json = record_json(&record, None);
        assert_eq!(json["conflict"], true);
        assert_eq!(json["void"], true);
    }

    #[test]
    fn acknowledged_sale_output() {
        let record = AuthorizationRecord {
            status: AuthorizationStatus::Confirmed as i32,
            confirmation_evidence: pb::Evidence::TerminalAcknowledgement.into(),
            ..AuthorizationRecord::default()
        };
        let text = acknowledged_sale_text(&record, false);
        assert!(text.ends_with("\nacknowledged: receipt printed"), "{text}");
        let json = acknowledged_sale_json(&record, false);
        assert_eq!(json["acknowledged"], true);
        assert_eq!(json["duplicate"], false);
        assert_eq!(json["status"], "CONFIRMED");

        let conflicting = AuthorizationRecord {
            status: AuthorizationStatus::Reversed as i32,
            conflict: true,
            ..AuthorizationRecord::default()
        };
        assert!(ack_line(&conflicting).contains("receipt void"));
        assert!(acknowledged_sale_text(&conflicting, false).contains("CONFLICT: receipt void"));
    }

    #[test]
    fn reverse_output_with_and_without_original() {
        let text = reverse_text(None, false, "000042", "2025-01-01");
        assert!(text.starts_with(NOTHING_TO_REVERSE));
        assert!(text.contains("STAN 000042"));
        let json = reverse_json(None, false, "000042", "2025-01-01");
        assert_eq!(json["original_found"], false);
        assert_eq!(json["stan"], "000042");
        assert_eq!(json["message"], NOTHING_TO_REVERSE);

        let record = AuthorizationRecord {
            status: AuthorizationStatus::ReversalPending as i32,
            reversal_reason: pb::ReversalReason::TerminalRequested.into(),
            masked_pan: "4111111111111111".to_owned(),
            ..AuthorizationRecord::default()
        };
        let text = reverse_text(Some(&record), true, "000042", "2025-01-01");
        assert!(text.contains("REVERSAL_PENDING (reason: terminal_requested)"));
        assert!(text.contains(VOID_ADVICE));
        assert!(!text.contains("4111111111111111"));
        let json = reverse_json(Some(&record), true, "000042", "2025-01-01");
        assert_eq!(json["original_found"], true);
        assert_eq!(json["reversal_reason"], "terminal_requested");
        // A record without original_found is not trusted as the original.
        let json = reverse_json(Some(&record), false, "000042", "2025-01-01");
        assert_eq!(json["original_found"], false);
    }
}
