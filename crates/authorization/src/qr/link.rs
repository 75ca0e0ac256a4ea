//! The QR link: the platform calls the core's effects ask for, made with
//! `qr_platform::QrClient`, and the platform's answers in the core's words
//! (the contract of ADR 25/29). A call without a trustworthy answer is
//! `Unknown` (queries will tell), never failed; only a signed refusal is
//! known to have changed nothing.

use qr_platform::{
    CallError, CreateOrderRequest, ErrorCode, PayRequest, QrClient, RefundRequest, TradeAnswer,
    TradeState,
};
use switch_core::Money;
use switch_core::qr::refund::{QrRefund, RefundAnswer};
use switch_core::qr::{
    CancelAnswer, CancelKind, OrderCreation, PlatformRequestId, PlatformTradeState, PlatformTxnId,
    QrPayment,
};

#[derive(Clone, Debug)]
pub struct QrLink {
    pub client: QrClient,
}

impl QrLink {
    /// Consumer-presented: charges the scanned `code`. The code goes into
    /// this one request and nowhere else.
    pub async fn pay(&self, payment: &QrPayment, code: &str) -> PlatformTradeState {
        let request = PayRequest {
            out_trade_no: payment.order_id.to_string(),
            auth_code: code.to_owned(),
            amount: payment.amount.minor_units(),
            currency: payment.amount.currency(),
            description: None,
        };
        match self.client.pay(&request).await {
            Ok(answer) => trade_state(&answer),
            // Signed refusals of a pay: nothing was charged.
            Err(CallError::Refused { code, message, .. })
                if !matches!(code, ErrorCode::SystemError) =>
            {
                PlatformTradeState::Failed {
                    reason: format!("{code:?}: {message}"),
                }
            }
            Err(error) => {
                tracing::warn!(order_id = %payment.order_id, %error, "QR pay without an answer; the switch queries.");
                PlatformTradeState::Unknown
            }
        }
    }

    pub async fn create_order(&self, payment: &QrPayment) -> OrderCreation {
        let request = CreateOrderRequest {
            out_trade_no: payment.order_id.to_string(),
            amount: payment.amount.minor_units(),
            currency: payment.amount.currency(),
            description: None,
        };
        match self.client.create_order(&request).await {
            Ok(answer) => match answer.code_url {
                Some(code) if !code.is_empty() => OrderCreation::Created { code },
                _ => OrderCreation::Unknown,
            },
            Err(CallError::Refused { code, message, .. })
                if !matches!(code, ErrorCode::SystemError) =>
            {
                OrderCreation::Refused {
                    reason: format!("{code:?}: {message}"),
                }
            }
            Err(error) => {
                tracing::warn!(order_id = %payment.order_id, %error, "QR order without an answer; the switch queries.");
                OrderCreation::Unknown
            }
        }
    }

    pub async fn query(&self, payment: &QrPayment) -> PlatformTradeState {
        match self.client.query(payment.order_id.as_str()).await {
            Ok(answer) => trade_state(&answer),
            // The pay or order never reached the platform.
            Err(CallError::Refused {
                code: ErrorCode::OrderNotExist,
                ..
            }) => PlatformTradeState::NotPaid,
            Err(error) => {
                tracing::debug!(order_id = %payment.order_id, %error, "QR query without an answer.");
                PlatformTradeState::Unknown
            }
        }
    }

    /// One attempt at the owed `kind` of call.
    pub async fn owed(
        &self,
        payment: &QrPayment,
        kind: CancelKind,
        request_id: &PlatformRequestId,
    ) -> CancelAnswer {
        let order = payment.order_id.as_str();
        match kind {
            CancelKind::Cancel | CancelKind::Close => {
                let answered = if kind == CancelKind::Cancel {
                    self.client.cancel(order).await
                } else {
                    self.client.close(order).await
                };
                match answered {
                    Ok(answer) => match trade_state(&answer) {
                        // WeChat's "recall" of a paid order: refunded.
                        PlatformTradeState::Refunded {
                            platform_txn,
                            amount,
                        } => CancelAnswer::Refunded {
                            platform_txn,
                            amount,
                        },
                        PlatformTradeState::Closed => CancelAnswer::Done,
                        PlatformTradeState::Paid {
                            platform_txn,
                            amount,
                        } => CancelAnswer::OrderPaid {
                            platform_txn,
                            amount,
                        },
                        _ => CancelAnswer::NotDone(format!(
                            "the platform answered {:?} to a {}",
                            answer.trade_state,
                            kind.as_str(),
                        )),
                    },
                    // Refused because paid meanwhile: the close lost the
                    // race; the query tells with which transaction.
                    Err(CallError::Refused {
                        code: ErrorCode::OrderPaid,
                        ..
                    }) => match self.query(payment).await {
                        PlatformTradeState::Paid {
                            platform_txn,
                            amount,
                        } => CancelAnswer::OrderPaid {
                            platform_txn,
                            amount,
                        },
                        PlatformTradeState::Refunded {
                            platform_txn,
                            amount,
                        } => CancelAnswer::Refunded {
                            platform_txn,
                            amount,
                        },
                        _ => CancelAnswer::NotDone(
                            "ORDERPAID, and the query did not say with which transaction".into(),
                        ),
                    },
                    // Nothing to give up: never created, or closed already.
                    Err(CallError::Refused {
                        code: ErrorCode::OrderNotExist | ErrorCode::OrderClosed,
                        ..
                    }) => CancelAnswer::Done,
                    Err(error) => CancelAnswer::NotDone(error.to_string()),
                }
            }
            CancelKind::Refund => {
                let request = RefundRequest {
                    out_trade_no: order.to_owned(),
                    out_refund_no: request_id.to_string(),
                    refund_amount: payment.amount.minor_units(),
                };
                match self.client.refund(&request).await {
                    Ok(answer) if answer.refunded_total >= payment.amount.minor_units() => {
                        CancelAnswer::Done
                    }
                    Ok(answer) => CancelAnswer::NotDone(format!(
                        "refunded {} of {}",
                        answer.refunded_total,
                        payment.amount.minor_units()
                    )),
                    Err(error) => CancelAnswer::NotDone(error.to_string()),
                }
            }
        }
    }
}

impl QrLink {
    /// One attempt at a merchant refund, numbered by the refund alone so a
    /// repeat is the same refund at the platform.
    pub async fn merchant_refund(&self, payment: &QrPayment, refund: &QrRefund) -> RefundAnswer {
        let request = RefundRequest {
            out_trade_no: payment.order_id.to_string(),
            out_refund_no: refund.request_id().to_string(),
            refund_amount: refund.amount.minor_units(),
        };
        match self.client.refund(&request).await {
            Ok(answer) if answer.refund_amount == refund.amount.minor_units() => RefundAnswer::Done,
            // The client checked the number: a signed answer for this
            // refund with another amount says nothing the switch can use.
            Ok(answer) => RefundAnswer::Unknown(format!(
                "the platform answered a refund of {} to one of {}",
                answer.refund_amount,
                refund.amount.minor_units()
            )),
            Err(CallError::Refused { code, message, .. })
                if matches!(
                    code,
                    ErrorCode::RefundExceeded
                        | ErrorCode::RefundNoUsed
                        | ErrorCode::OrderNotPaid
                        | ErrorCode::OrderClosed
                        | ErrorCode::OrderNotExist
                ) =>
            {
                RefundAnswer::Refused(format!("{code:?}: {message}"))
            }
            Err(error) => RefundAnswer::Unknown(error.to_string()),
        }
    }
}

fn txn(answer: &TradeAnswer) -> Option<PlatformTxnId> {
    PlatformTxnId::parse(&answer.transaction_id).ok()
}

/// The platform's state of an order in the core's words.
pub fn trade_state(answer: &TradeAnswer) -> PlatformTradeState {
    let amount = Money::new(answer.amount, answer.currency);
    match answer.trade_state {
        TradeState::Success => match txn(answer) {
            Some(platform_txn) => PlatformTradeState::Paid {
                platform_txn,
                amount,
            },
            None => PlatformTradeState::Unknown,
        },
        TradeState::UserPaying => PlatformTradeState::InProgress,
        TradeState::NotPay => PlatformTradeState::NotPaid,
        TradeState::PayError => PlatformTradeState::Failed {
            reason: "PAYERROR".into(),
        },
        TradeState::Closed => PlatformTradeState::Closed,
        // A cancel refunds a paid order, closes an unpaid one.
        TradeState::Revoked if answer.refunded_amount == 0 => PlatformTradeState::Closed,
        TradeState::Revoked | TradeState::Refund => match txn(answer) {
            Some(platform_txn) => PlatformTradeState::Refunded {
                platform_txn,
                amount,
            },
            None => PlatformTradeState::Unknown,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch_core::Currency;

    fn answer(state: TradeState, refunded: i64) -> TradeAnswer {
        TradeAnswer {
            out_trade_no: "Q123456".into(),
            transaction_id: "4200001".into(),
            trade_state: state,
            amount: 1_000,
            currency: Currency::parse("EUR").expect("EUR"),
            refunded_amount: refunded,
            code_url: None,
            paid_at_ms: None,
        }
    }

    #[test]
    fn each_platform_state_has_the_cores_word() {
        let eur = Currency::parse("EUR").expect("EUR");
        let txn = PlatformTxnId::parse("4200001").expect("txn");
        let money = Money::new(1_000, eur);
        let cases = [
            (
                answer(TradeState::Success, 0),
                PlatformTradeState::Paid {
                    platform_txn: txn.clone(),
                    amount: money,
                },
            ),
            (
                answer(TradeState::UserPaying, 0),
                PlatformTradeState::InProgress,
            ),
            (answer(TradeState::NotPay, 0), PlatformTradeState::NotPaid),
            (
                answer(TradeState::PayError, 0),
                PlatformTradeState::Failed {
                    reason: "PAYERROR".into(),
                },
            ),
            (answer(TradeState::Closed, 0), PlatformTradeState::Closed),
            (answer(TradeState::Revoked, 0), PlatformTradeState::Closed),
            (
                answer(TradeState::Revoked, 1_000),
                PlatformTradeState::Refunded {
                    platform_txn: txn.clone(),
                    amount: money,
                },
            ),
            (
                answer(TradeState::Refund, 1_000),
                PlatformTradeState::Refunded {
                    platform_txn: txn,
                    amount: money,
                },
            ),
        ];
        for (answer, expected) in cases {
            assert_eq!(trade_state(&answer), expected, "{:?}", answer.trade_state);
        }
        let mut without_txn = answer(TradeState::Success, 0);
        without_txn.transaction_id = String::new();
        assert_eq!(trade_state(&without_txn), PlatformTradeState::Unknown);
    }
}
