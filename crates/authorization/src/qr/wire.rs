//! The QR calls' gRPC edge: requests in, validated into the core's types
//! with the offending field named; payments out as `QrPaymentRecord`s.
//! The payment code is checked here and carried on, never kept.

use switch_core::lifecycle::RequestKey;
use switch_core::qr::refund::QrRefund;
use switch_core::qr::{QrPayment, terminal_answer};
use switch_core::{Currency, InvalidField, LocalDate, MerchantId, Money, Stan, TerminalId};
use switch_proto::v1 as pb;
use time::format_description::well_known::Rfc3339;

pub fn key(terminal_id: &str, stan: &str, local_date: &str) -> Result<RequestKey, InvalidField> {
    Ok(RequestKey {
        terminal_id: TerminalId::parse(terminal_id)?,
        stan: Stan::parse(stan)?,
        local_date: LocalDate::parse(local_date)?,
    })
}

pub fn merchant(merchant_id: &str) -> Result<MerchantId, InvalidField> {
    MerchantId::parse(merchant_id).map_err(|e| InvalidField::new("merchant_id", e.to_string()))
}

/// Field "amount" (zero or negative refused), "amount.currency" (unknown).
pub fn amount(amount: Option<&pb::Money>) -> Result<Money, InvalidField> {
    let amount = amount.ok_or_else(|| InvalidField::new("amount", "missing"))?;
    let currency = Currency::parse(&amount.currency)
        .map_err(|e| InvalidField::new("amount.currency", e.to_string()))?;
    Money::positive(amount.minor_units, currency)
}

/// Field "payment_code": the shopper's scanned code, 16 to 24 digits. The
/// error never repeats the code.
pub fn payment_code(code: &str) -> Result<&str, InvalidField> {
    if code.is_empty() {
        return Err(InvalidField::new("payment_code", "missing"));
    }
    if !(16..=24).contains(&code.len()) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidField::new(
            "payment_code",
            format!("must be 16 to 24 digits (got {} characters)", code.len()),
        ));
    }
    Ok(code)
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

pub fn record(payment: &QrPayment) -> pb::QrPaymentRecord {
    let answer = terminal_answer(payment);
    pb::QrPaymentRecord {
        transaction_id: payment.transaction_id.to_string(),
        terminal_id: payment.key.terminal_id.to_string(),
        stan: payment.key.stan.to_string(),
        local_date: payment.key.local_date.to_string(),
        merchant_id: payment.merchant_id.to_string(),
        mode: payment.mode.as_str().to_owned(),
        order_id: payment.order_id.to_string(),
        amount: Some(pb::Money {
            minor_units: payment.amount.minor_units(),
            currency: payment.amount.currency().code().to_owned(),
        }),
        state: payment.state.as_str().to_owned(),
        answer: answer.as_str().to_owned(),
        message: answer.message().to_owned(),
        code: payment.code.clone().unwrap_or_default(),
        platform_txn_id: payment
            .platform_txn
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        created_at: rfc3339(payment.created_at),
        terminal_deadline: rfc3339(payment.terminal_deadline),
        failure: payment.failure.clone().unwrap_or_default(),
    }
}

fn money(amount: Money) -> pb::Money {
    pb::Money {
        minor_units: amount.minor_units(),
        currency: amount.currency().code().to_owned(),
    }
}

/// A merchant refund of `payment` as the API and the events show it;
/// `total` is what the payment's written refunds add up to.
pub fn refund_record(payment: &QrPayment, refund: &QrRefund, total: Money) -> pb::QrRefundRecord {
    pb::QrRefundRecord {
        refund_id: refund.refund_id.to_string(),
        transaction_id: refund.transaction_id.to_string(),
        order_id: refund.order_id.to_string(),
        merchant_id: payment.merchant_id.to_string(),
        terminal_id: payment.key.terminal_id.to_string(),
        amount: Some(money(refund.amount)),
        state: refund.state.as_str().to_owned(),
        attempts: refund.attempts,
        last_error: refund.last_error.clone().unwrap_or_default(),
        requested_at: rfc3339(refund.requested_at),
        completed_at: refund.completed_at.map(rfc3339).unwrap_or_default(),
        refunded_total: Some(money(total)),
        operator: refund.operator.clone(),
        reason: refund.reason.clone(),
    }
}

/// Field "amount" (missing), "amount.currency" (unknown). The sign and
/// what is left are the core's to judge (`refund::accept`).
pub fn refund_amount(amount: Option<&pb::Money>) -> Result<Money, InvalidField> {
    let amount = amount.ok_or_else(|| InvalidField::new("amount", "missing"))?;
    let currency = Currency::parse(&amount.currency)
        .map_err(|e| InvalidField::new("amount.currency", e.to_string()))?;
    Ok(Money::new(amount.minor_units, currency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_names_its_field_and_never_echoes_the_code() {
        let field = |e: InvalidField| e.to_string();
        assert!(field(payment_code("").expect_err("empty")).contains("payment_code"));
        let short = payment_code("12345").expect_err("short");
        assert!(field(short.clone()).contains("payment_code"));
        let letters = "1234567890abcdefgh";
        let refused = field(payment_code(letters).expect_err("letters"));
        assert!(refused.contains("payment_code") && !refused.contains(letters));
        assert_eq!(payment_code("1234567890123456"), Ok("1234567890123456"));
        let zero = pb::Money {
            minor_units: 0,
            currency: "EUR".into(),
        };
        assert!(field(amount(Some(&zero)).expect_err("zero")).contains("amount"));
        let unknown = pb::Money {
            minor_units: 100,
            currency: "XXQ".into(),
        };
        assert!(field(amount(Some(&unknown)).expect_err("currency")).contains("amount.currency"));
    }
}
