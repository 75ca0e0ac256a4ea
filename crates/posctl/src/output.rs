//! Presentation helpers: PAN masking, money formatting with the currency's
//! minor units, response code descriptions, and printing of authorization
//! records and gRPC errors, both for humans and as JSON.

use serde_json::{Value, json};
use switch_proto::v1::{AuthorizationRecord, AuthorizationStatus, Money};
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

/// Number of minor-unit digits of an ISO 4217 currency, for display only:
/// 2 by default, 0 for JPY/KRW/VND, 3 for KWD/BHD/JOD/OMR/TND.
pub fn currency_exponent(currency: &str) -> u32 {
    match currency.to_ascii_uppercase().as_str() {
        "JPY" | "KRW" | "VND" => 0,
        "KWD" | "BHD" | "JOD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// Formats integer minor units as `"EUR 10.50"`, using integer arithmetic only.
pub fn format_money(minor_units: i64, currency: &str) -> String {
    let exponent = currency_exponent(currency);
    let sign = if minor_units < 0 { "-" } else { "" };
    let abs = minor_units.unsigned_abs();
    if exponent == 0 {
        return format!("{currency} {sign}{abs}");
    }
    let divisor = 10u64.pow(exponent);
    let major = abs / divisor;
    let minor = abs % divisor;
    let width = exponent as usize;
    format!("{currency} {sign}{major}.{minor:0width$}")
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
        Ok(AuthorizationStatus::Unspecified) => "UNSPECIFIED",
        Err(_) => "UNKNOWN",
    }
}

/// Human description of an ISO 8583 response code (field 39).
pub fn response_code_description(code: &str) -> &'static str {
    match code {
        "00" => "Approved",
        "01" => "Refer to card issuer",
        "03" => "Invalid merchant",
        "04" => "Pick up card",
        "05" => "Do not honour",
        "06" => "Error",
        "12" => "Invalid transaction",
        "13" => "Invalid amount",
        "14" => "Invalid card number",
        "30" => "Format error",
        "41" => "Lost card",
        "43" => "Stolen card",
        "51" => "Insufficient funds",
        "54" => "Expired card",
        "55" => "Incorrect PIN",
        "57" => "Transaction not permitted to cardholder",
        "58" => "Transaction not permitted to terminal",
        "59" => "Suspected fraud",
        "61" => "Exceeds withdrawal amount limit",
        "62" => "Restricted card",
        "65" => "Exceeds withdrawal frequency limit",
        "68" => "Response received too late",
        "91" => "Issuer or switch inoperative",
        "94" => "Duplicate transmission",
        "96" => "System malfunction",
        "" => "no response code",
        _ => "unknown response code",
    }
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
    });
    if let (Some(dup), Some(obj)) = (duplicate, value.as_object_mut()) {
        obj.insert("duplicate".to_owned(), Value::Bool(dup));
    }
    value
}

/// Human-readable, multi-line form of an authorization record.
pub fn record_text(record: &AuthorizationRecord, duplicate: Option<bool>) -> String {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let mut lines = vec![
        format!("Status:        {}", status_name(record.status)),
        format!(
            "Response code: {} ({})",
            or_dash(&record.response_code),
            response_code_description(&record.response_code)
        ),
    ];
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
}
