//! The platform's JSON messages. Every field is typed and parsed strictly:
//! unknown fields and unknown states are errors, never a default, because
//! an answer the acquirer misreads is money it misplaces.

use serde::{Deserialize, Serialize};
use switch_core::{Currency, InvalidField, Money};

/// `POST`: a consumer-presented payment (the terminal scanned the
/// shopper's payment code).
pub const PAY_PATH: &str = "/v1/pay";
/// `POST`: a merchant-presented order (the terminal shows its code).
pub const ORDERS_PATH: &str = "/v1/orders";
/// `POST`: the order's state now.
pub const QUERY_PATH: &str = "/v1/query";
/// `POST`: reverse an order: close it if unpaid, refund it in full if paid.
pub const CANCEL_PATH: &str = "/v1/cancel";
/// `POST`: close an unpaid order; a paid one is refused with `ORDERPAID`.
pub const CLOSE_PATH: &str = "/v1/close";
/// `POST`: refund a paid order, fully or in part.
pub const REFUND_PATH: &str = "/v1/refund";

/// Longest `out_trade_no` / `out_refund_no` (WeChat Pay's limit).
pub const MAX_ORDER_NO_LEN: usize = 32;

/// Where an order stands at the platform (WeChat Pay's vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TradeState {
    /// Paid: the shopper's money moved to the merchant.
    Success,
    /// The shopper has yet to confirm on the phone (consumer-presented).
    #[serde(rename = "USERPAYING")]
    UserPaying,
    /// Not paid yet (merchant-presented: nobody scanned, or not yet).
    #[serde(rename = "NOTPAY")]
    NotPay,
    /// The payment failed (e.g. the shopper's balance); nothing moved.
    #[serde(rename = "PAYERROR")]
    PayError,
    /// Closed unpaid; it can never be paid.
    Closed,
    /// Reversed by a cancel: closed if it was unpaid, refunded if paid.
    Revoked,
    /// Paid, then refunded in full or in part.
    Refund,
}

impl TradeState {
    /// The platform's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TradeState::Success => "SUCCESS",
            TradeState::UserPaying => "USERPAYING",
            TradeState::NotPay => "NOTPAY",
            TradeState::PayError => "PAYERROR",
            TradeState::Closed => "CLOSED",
            TradeState::Revoked => "REVOKED",
            TradeState::Refund => "REFUND",
        }
    }

    /// Parses the platform's spelling; anything else is an error.
    pub fn parse(value: &str) -> Result<TradeState, InvalidField> {
        ALL_STATES
            .into_iter()
            .find(|state| state.as_str() == value)
            .ok_or_else(|| InvalidField::new("trade_state", format!("unknown state '{value}'")))
    }

    /// Whether the shopper may still pay: the acquirer keeps asking.
    pub fn is_pending(self) -> bool {
        matches!(self, TradeState::UserPaying | TradeState::NotPay)
    }

    /// Whether the shopper's money moved to the merchant at some point
    /// (refunds are counted separately).
    pub fn was_paid(self) -> bool {
        matches!(self, TradeState::Success | TradeState::Refund)
    }
}

/// Every state, for tables and tests.
pub const ALL_STATES: [TradeState; 7] = [
    TradeState::Success,
    TradeState::UserPaying,
    TradeState::NotPay,
    TradeState::PayError,
    TradeState::Closed,
    TradeState::Revoked,
    TradeState::Refund,
];

/// Why the platform refused a request; the answer's `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request's signature is missing, malformed, wrong or stale.
    #[serde(rename = "SIGNERROR")]
    SignError,
    /// The request's nonce was seen before: a replay.
    Replayed,
    /// A field is missing or invalid; the message names it.
    InvalidRequest,
    /// No order with this `out_trade_no`.
    #[serde(rename = "ORDERNOTEXIST")]
    OrderNotExist,
    /// This `out_trade_no` is an order with another amount, currency or kind.
    OutTradeNoUsed,
    /// The order is paid: it cannot be closed (refund or cancel it).
    #[serde(rename = "ORDERPAID")]
    OrderPaid,
    /// The order is closed or reversed: it cannot be paid or refunded.
    #[serde(rename = "ORDERCLOSED")]
    OrderClosed,
    /// The order is not paid: there is nothing to refund.
    #[serde(rename = "ORDERNOTPAID")]
    OrderNotPaid,
    /// The refunds would exceed what was paid.
    RefundExceeded,
    /// This `out_refund_no` is a refund with another amount or order.
    RefundNoUsed,
    /// The platform cannot answer now (outage, its ledger down).
    #[serde(rename = "SYSTEMERROR")]
    SystemError,
}

impl ErrorCode {
    /// The HTTP status the platform answers with this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::SignError | ErrorCode::Replayed => 401,
            ErrorCode::InvalidRequest => 400,
            ErrorCode::OrderNotExist => 404,
            ErrorCode::OutTradeNoUsed
            | ErrorCode::OrderPaid
            | ErrorCode::OrderClosed
            | ErrorCode::OrderNotPaid
            | ErrorCode::RefundExceeded
            | ErrorCode::RefundNoUsed => 409,
            ErrorCode::SystemError => 503,
        }
    }
}

/// The body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorAnswer {
    pub code: ErrorCode,
    pub message: String,
}

/// `POST /v1/pay`. `Debug` and `Display` show only the payment code's
/// last four digits.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    pub out_trade_no: String,
    /// The shopper's one-time payment code, as scanned: 16 to 24 digits.
    pub auth_code: String,
    /// Minor units of `currency`.
    pub amount: i64,
    pub currency: Currency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl PayRequest {
    /// Refuses what the platform would refuse, naming the field.
    pub fn validate(&self) -> Result<Money, InvalidField> {
        order_no("out_trade_no", &self.out_trade_no)?;
        auth_code(&self.auth_code)?;
        Money::positive(self.amount, self.currency)
    }
}

impl std::fmt::Debug for PayRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for PayRequest {
    /// The payment code is a bearer token for the shopper's money: never
    /// shown whole.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pay {} {} {} code …{}",
            self.out_trade_no,
            self.amount,
            self.currency,
            masked_tail(&self.auth_code)
        )
    }
}

/// `POST /v1/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderRequest {
    pub out_trade_no: String,
    pub amount: i64,
    pub currency: Currency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl CreateOrderRequest {
    pub fn validate(&self) -> Result<Money, InvalidField> {
        order_no("out_trade_no", &self.out_trade_no)?;
        Money::positive(self.amount, self.currency)
    }
}

/// `POST /v1/query`, `/v1/cancel`, `/v1/close`: which order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub out_trade_no: String,
}

impl OrderRequest {
    pub fn validate(&self) -> Result<(), InvalidField> {
        order_no("out_trade_no", &self.out_trade_no)
    }
}

/// `POST /v1/refund`. The same `out_refund_no` with the same amount is
/// the same refund, answered again; with another amount it is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    pub out_trade_no: String,
    pub out_refund_no: String,
    /// Minor units of the order's currency.
    pub refund_amount: i64,
}

impl RefundRequest {
    pub fn validate(&self) -> Result<(), InvalidField> {
        order_no("out_trade_no", &self.out_trade_no)?;
        order_no("out_refund_no", &self.out_refund_no)?;
        if self.refund_amount <= 0 {
            return Err(InvalidField::new(
                "refund_amount",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// The answer to pay, create order, query, cancel and close: the order as
/// the platform has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TradeAnswer {
    pub out_trade_no: String,
    /// The platform's id of the order.
    pub transaction_id: String,
    pub trade_state: TradeState,
    pub amount: i64,
    pub currency: Currency,
    /// Refunded so far (a cancel of a paid order refunds all of it).
    pub refunded_amount: i64,
    /// Merchant-presented orders: what the terminal's QR code encodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_url: Option<String>,
    /// When the shopper paid, unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at_ms: Option<i64>,
}

/// The answer to a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundAnswer {
    pub out_trade_no: String,
    pub out_refund_no: String,
    /// The platform's id of the refund.
    pub refund_id: String,
    pub refund_amount: i64,
    /// All refunds of the order so far, this one included.
    pub refunded_total: i64,
    pub currency: Currency,
    pub trade_state: TradeState,
}

/// What a notification announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NotifyEvent {
    /// The order became paid.
    #[serde(rename = "TRANSACTION.SUCCESS")]
    TransactionSuccess,
}

/// The body of an asynchronous notification, `POST`ed to the acquirer's
/// notify URL and repeated until answered 2xx. `notify_id` is the same on
/// every attempt: the receiver's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    pub notify_id: String,
    pub event: NotifyEvent,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub trade_state: TradeState,
    pub amount: i64,
    pub currency: Currency,
    pub paid_at_ms: i64,
}

fn order_no(field: &'static str, value: &str) -> Result<(), InvalidField> {
    if value.is_empty() || value.len() > MAX_ORDER_NO_LEN {
        return Err(InvalidField::new(
            field,
            format!("must be 1 to {MAX_ORDER_NO_LEN} characters"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*'))
    {
        return Err(InvalidField::new(
            field,
            "only letters, digits and _ - | * are allowed",
        ));
    }
    Ok(())
}

fn auth_code(value: &str) -> Result<(), InvalidField> {
    if !(16..=24).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidField::new("auth_code", "must be 16 to 24 digits"));
    }
    Ok(())
}

/// The last four characters of a payment code, what logs may show.
pub fn masked_tail(code: &str) -> &str {
    let start = code.len().saturating_sub(4);
    code.get(start..).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").expect("EUR")
    }

    #[test]
    fn states_round_trip_through_their_spelling_and_unknown_ones_are_refused() {
        for state in ALL_STATES {
            let json = serde_json::to_string(&state).expect("serializes");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(
                serde_json::from_str::<TradeState>(&json).expect("parses"),
                state
            );
            assert_eq!(TradeState::parse(state.as_str()), Ok(state));
        }
        for unknown in ["\"PAID\"", "\"success\"", "\"\"", "7"] {
            assert!(
                serde_json::from_str::<TradeState>(unknown).is_err(),
                "{unknown}"
            );
        }
        assert!(TradeState::parse("REFUNDED").is_err());
    }

    #[test]
    fn an_answer_with_an_unknown_state_or_field_is_refused_not_defaulted() {
        let answer = TradeAnswer {
            out_trade_no: "T1".into(),
            transaction_id: "4200001".into(),
            trade_state: TradeState::Success,
            amount: 1_000,
            currency: eur(),
            refunded_amount: 0,
            code_url: None,
            paid_at_ms: Some(1_764_000_000_000),
        };
        let json = serde_json::to_string(&answer).expect("serializes");
        assert_eq!(
            serde_json::from_str::<TradeAnswer>(&json).expect("parses"),
            answer
        );
        let unknown_state = json.replace("\"SUCCESS\"", "\"ALMOST\"");
        assert!(serde_json::from_str::<TradeAnswer>(&unknown_state).is_err());
        let extra = json.replace('}', ",\"bonus\":1}");
        assert!(serde_json::from_str::<TradeAnswer>(&extra).is_err());
        let missing = json.replace("\"refunded_amount\":0,", "");
        assert!(serde_json::from_str::<TradeAnswer>(&missing).is_err());
        let bad_currency = json.replace("\"EUR\"", "\"XXQ\"");
        assert!(serde_json::from_str::<TradeAnswer>(&bad_currency).is_err());
    }

    #[test]
    fn requests_notifications_and_refusals_round_trip() {
        let pay = PayRequest {
            out_trade_no: "T1".into(),
            auth_code: "134567890123456789".into(),
            amount: 1_000,
            currency: eur(),
            description: None,
        };
        let json = serde_json::to_string(&pay).expect("serializes");
        assert!(!json.contains("description"), "{json}");
        assert_eq!(
            serde_json::from_str::<PayRequest>(&json).expect("parses"),
            pay
        );
        let refund = RefundRequest {
            out_trade_no: "T1".into(),
            out_refund_no: "R1".into(),
            refund_amount: 400,
        };
        let json = serde_json::to_string(&refund).expect("serializes");
        assert_eq!(
            serde_json::from_str::<RefundRequest>(&json).expect("parses"),
            refund
        );
        let notification = Notification {
            notify_id: "n1".into(),
            event: NotifyEvent::TransactionSuccess,
            out_trade_no: "T1".into(),
            transaction_id: "4200001".into(),
            trade_state: TradeState::Success,
            amount: 1_000,
            currency: eur(),
            paid_at_ms: 1,
        };
        let json = serde_json::to_string(&notification).expect("serializes");
        assert!(json.contains("\"TRANSACTION.SUCCESS\""), "{json}");
        assert_eq!(
            serde_json::from_str::<Notification>(&json).expect("parses"),
            notification
        );
        let refusal = ErrorAnswer {
            code: ErrorCode::OrderPaid,
            message: "paid".into(),
        };
        let json = serde_json::to_string(&refusal).expect("serializes");
        assert_eq!(json, r#"{"code":"ORDERPAID","message":"paid"}"#);
        assert_eq!(
            serde_json::from_str::<ErrorAnswer>(&json).expect("parses"),
            refusal
        );
        assert!(serde_json::from_str::<ErrorAnswer>(r#"{"code":"OOPS","message":""}"#).is_err());
    }

    #[test]
    fn requests_are_validated_naming_the_field() {
        let good = PayRequest {
            out_trade_no: "T-1_a".into(),
            auth_code: "134567890123456789".into(),
            amount: 1,
            currency: eur(),
            description: None,
        };
        assert!(good.validate().is_ok());
        let field = |pay: PayRequest| pay.validate().unwrap_err().field;
        for (bad, expected) in [
            (
                PayRequest {
                    out_trade_no: String::new(),
                    ..good.clone()
                },
                "out_trade_no",
            ),
            (
                PayRequest {
                    out_trade_no: "x".repeat(33),
                    ..good.clone()
                },
                "out_trade_no",
            ),
            (
                PayRequest {
                    out_trade_no: "T 1".into(),
                    ..good.clone()
                },
                "out_trade_no",
            ),
            (
                PayRequest {
                    auth_code: String::new(),
                    ..good.clone()
                },
                "auth_code",
            ),
            (
                PayRequest {
                    auth_code: "13456789012345678a".into(),
                    ..good.clone()
                },
                "auth_code",
            ),
            (
                PayRequest {
                    amount: 0,
                    ..good.clone()
                },
                "amount",
            ),
        ] {
            assert_eq!(field(bad), expected);
        }
        let refund = RefundRequest {
            out_trade_no: "T1".into(),
            out_refund_no: "R1".into(),
            refund_amount: 0,
        };
        assert_eq!(refund.validate().unwrap_err().field, "refund_amount");
    }

    #[test]
    fn a_pay_request_never_shows_its_payment_code() {
        let pay = PayRequest {
            out_trade_no: "T1".into(),
            auth_code: "134567890123456789".into(),
            amount: 1,
            currency: eur(),
            description: None,
        };
        let shown = pay.to_string();
        assert!(!shown.contains("134567890123456789"), "{shown}");
        assert!(shown.ends_with("…6789"), "{shown}");
    }
}
