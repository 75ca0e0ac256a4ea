//! The QR calls of `AuthorizationService`: validate (nothing is written for
//! bad input), journal the opened payment before the platform is called,
//! make the pay or create-order call, feed its answer to the core, and
//! answer with the record. Idempotent by terminal + STAN + local date: a
//! retry gets the original payment as it now stands, a changed one is
//! refused (`ModifiedReplay`, as `switch_core::replay` does for cards).

use switch_core::qr::refund::{RefundId, RefundRequest};
use switch_core::qr::{OrderId, QrCommand, QrIntent, QrMode, QrPayment};
use switch_core::{Money, TerminalId, TransactionId};
use switch_proto::v1 as pb;

use super::store::{QrAction, QrBegin, QrTarget};
use super::wire;
use super::{QrError, QrShell};

#[derive(Clone)]
pub struct QrApi {
    pub shell: QrShell,
}

/// An order id the platform accepts, with room for the owed calls' suffix
/// ("-refund") within its 32 characters.
fn new_order_id(id: TransactionId) -> OrderId {
    let hex = id.as_uuid().simple().to_string();
    OrderId::parse(&format!("Q{}", &hex[..24])).expect("25 hex characters make an order id")
}

fn check_replay(
    original: &QrPayment,
    mode: QrMode,
    merchant: &switch_core::MerchantId,
    amount: Money,
) -> Result<(), QrError> {
    if original.mode != mode {
        return Err(QrError::ModifiedReplay { field: "mode" });
    }
    if original.amount != amount {
        return Err(QrError::ModifiedReplay { field: "amount" });
    }
    if original.merchant_id != *merchant {
        return Err(QrError::ModifiedReplay {
            field: "merchant_id",
        });
    }
    Ok(())
}

impl QrApi {
    async fn open(
        &self,
        key: switch_core::lifecycle::RequestKey,
        merchant_id: switch_core::MerchantId,
        mode: QrMode,
        amount: Money,
    ) -> Result<QrBegin, QrError> {
        let shell = &self.shell;
        let transaction_id = TransactionId::new();
        let intent = QrIntent {
            transaction_id,
            key,
            orphan_policy: shell.config.policy_of(&merchant_id),
            merchant_id,
            mode,
            order_id: new_order_id(transaction_id),
            amount,
        };
        let opened = QrPayment::open(intent, shell.windows, shell.clock.now());
        let begun = shell.journal.begin(&opened.next).await?;
        if let QrBegin::Existing(original) = &begun {
            check_replay(original, mode, &opened.next.merchant_id, amount)?;
        }
        Ok(begun)
    }

    pub async fn pay(&self, request: &pb::QrPayRequest) -> Result<pb::QrPaymentResponse, QrError> {
        let key = wire::key(&request.terminal_id, &request.stan, &request.local_date)?;
        let merchant = wire::merchant(&request.merchant_id)?;
        let amount = wire::amount(request.amount.as_ref())?;
        let code = wire::payment_code(&request.payment_code)?;
        let payment = match self
            .open(key, merchant, QrMode::ConsumerPresented, amount)
            .await?
        {
            QrBegin::Existing(original) => return Ok(answer(&original, true)),
            QrBegin::Started(payment) => payment,
        };
        let word = self.shell.link.pay(&payment, code).await;
        let (written, _) = self
            .shell
            .execute(
                QrTarget::Id(payment.transaction_id),
                QrCommand::PayAnswered(word),
            )
            .await?;
        Ok(answer(&written, false))
    }

    pub async fn order(
        &self,
        request: &pb::QrOrderRequest,
    ) -> Result<pb::QrPaymentResponse, QrError> {
        let key = wire::key(&request.terminal_id, &request.stan, &request.local_date)?;
        let merchant = wire::merchant(&request.merchant_id)?;
        let amount = wire::amount(request.amount.as_ref())?;
        let payment = match self
            .open(key, merchant, QrMode::MerchantPresented, amount)
            .await?
        {
            QrBegin::Existing(original) => return Ok(answer(&original, true)),
            QrBegin::Started(payment) => payment,
        };
        let creation = self.shell.link.create_order(&payment).await;
        let (written, _) = self
            .shell
            .execute(
                QrTarget::Id(payment.transaction_id),
                QrCommand::OrderCreateAnswered(creation),
            )
            .await?;
        Ok(answer(&written, false))
    }

    /// The terminal's own payment, by order id or by STAN and date.
    async fn own(
        &self,
        terminal_id: &str,
        order_id: &str,
        stan: &str,
        local_date: &str,
    ) -> Result<QrPayment, QrError> {
        let terminal = TerminalId::parse(terminal_id)?;
        let found = if order_id.is_empty() {
            let key = wire::key(terminal_id, stan, local_date)?;
            self.shell.journal.find_by_key(&key).await?
        } else {
            let order = OrderId::parse(order_id)?;
            self.shell.journal.find(QrTarget::Order(&order)).await?
        };
        let payment = found.ok_or_else(|| QrError::NotFound("such QR payment".into()))?;
        if payment.key.terminal_id != terminal {
            // Said as a bad argument, not "not found": the caller named an
            // order it has no right to, and learns nothing about it.
            return Err(switch_core::InvalidField::new(
                "order_id",
                "is not an order of this terminal",
            )
            .into());
        }
        Ok(payment)
    }

    pub async fn status(
        &self,
        request: &pb::QrStatusRequest,
    ) -> Result<pb::QrPaymentRecord, QrError> {
        let payment = self
            .own(
                &request.terminal_id,
                &request.order_id,
                &request.stan,
                &request.local_date,
            )
            .await?;
        Ok(wire::record(&payment))
    }

    pub async fn acknowledge(
        &self,
        request: &pb::QrAcknowledgeRequest,
    ) -> Result<pb::QrPaymentRecord, QrError> {
        if request.order_id.is_empty() {
            return Err(switch_core::InvalidField::new("order_id", "missing").into());
        }
        let payment = self
            .own(&request.terminal_id, &request.order_id, "", "")
            .await?;
        let (written, _) = self
            .shell
            .execute(
                QrTarget::Id(payment.transaction_id),
                QrCommand::TerminalAcknowledged,
            )
            .await?;
        Ok(wire::record(&written))
    }
}

impl QrApi {
    /// The payment an operator names: by order id or by transaction id.
    fn operator_target(order_id: &str, transaction_id: &str) -> Result<OperatorTarget, QrError> {
        match (order_id.is_empty(), transaction_id.is_empty()) {
            (false, true) => Ok(OperatorTarget::Order(OrderId::parse(order_id)?)),
            (true, false) => Ok(OperatorTarget::Id(TransactionId::parse(transaction_id)?)),
            (true, true) => Err(switch_core::InvalidField::new(
                "order_id",
                "missing: name the payment by order_id or transaction_id",
            )
            .into()),
            (false, false) => Err(switch_core::InvalidField::new(
                "transaction_id",
                "name the payment by order_id or transaction_id, not both",
            )
            .into()),
        }
    }

    /// An operator's merchant refund of a confirmed payment (ADR 30).
    pub async fn refund(
        &self,
        request: &pb::QrRefundRequest,
    ) -> Result<pb::QrRefundResponse, QrError> {
        let target = Self::operator_target(&request.order_id, &request.transaction_id)?;
        let refund_id = RefundId::parse(&request.refund_id)?;
        let amount = wire::refund_amount(request.amount.as_ref())?;
        let operator = switch_core::operator_text("operator", &request.operator)?;
        let reason = switch_core::operator_text("reason", &request.reason)?;
        let asked = RefundRequest {
            refund_id,
            amount,
            operator: operator.to_owned(),
            reason: reason.to_owned(),
        };
        let (view, duplicate) = self.shell.request_refund(target.as_target(), asked).await?;
        if !duplicate {
            tracing::warn!(
                order_id = %view.payment.order_id,
                refund_id = %view.refund.refund_id,
                amount = %view.refund.amount,
                operator,
                reason,
                "QR merchant refund requested by an operator."
            );
        }
        Ok(pb::QrRefundResponse {
            refund: Some(wire::refund_record(&view.payment, &view.refund, view.total)),
            duplicate,
        })
    }

    /// An operator sends a dead-lettered QR call round again: the
    /// payment's owed cancel, close or refund, or a merchant refund.
    pub async fn redrive(
        &self,
        request: &pb::QrRedriveRequest,
    ) -> Result<pb::QrRedriveResponse, QrError> {
        if request.order_id.is_empty() {
            return Err(switch_core::InvalidField::new("order_id", "missing").into());
        }
        let order = OrderId::parse(&request.order_id)?;
        let refund_id = if request.refund_id.is_empty() {
            None
        } else {
            Some(RefundId::parse(&request.refund_id)?)
        };
        let operator = switch_core::operator_text("operator", &request.operator)?;
        let reason = switch_core::operator_text("reason", &request.reason)?;
        let answer = match &refund_id {
            Some(refund_id) => {
                let view = self
                    .shell
                    .redrive_refund(&order, refund_id, operator, reason)
                    .await?;
                pb::QrRedriveResponse {
                    payment: Some(wire::record(&view.payment)),
                    refund: Some(wire::refund_record(&view.payment, &view.refund, view.total)),
                }
            }
            None => {
                let action = QrAction {
                    action: "redrive",
                    operator,
                    reason,
                    refund_id: None,
                };
                let (written, _) = self
                    .shell
                    .execute_as(QrTarget::Order(&order), QrCommand::Redrive, Some(action))
                    .await?;
                pb::QrRedriveResponse {
                    payment: Some(wire::record(&written)),
                    refund: None,
                }
            }
        };
        tracing::warn!(
            order_id = %order,
            refund_id = refund_id.as_ref().map(RefundId::as_str).unwrap_or(""),
            operator,
            reason,
            "Dead-lettered QR call redriven by an operator."
        );
        Ok(answer)
    }
}

/// A payment named by an operator, owned for the length of a call.
enum OperatorTarget {
    Order(OrderId),
    Id(TransactionId),
}

impl OperatorTarget {
    fn as_target(&self) -> QrTarget<'_> {
        match self {
            OperatorTarget::Order(order) => QrTarget::Order(order),
            OperatorTarget::Id(id) => QrTarget::Id(*id),
        }
    }
}

fn answer(payment: &QrPayment, duplicate: bool) -> pb::QrPaymentResponse {
    pb::QrPaymentResponse {
        payment: Some(wire::record(payment)),
        duplicate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_id_leaves_room_for_the_owed_calls_request_ids() {
        for _ in 0..100 {
            let order = new_order_id(TransactionId::new());
            let refund = switch_core::qr::PlatformRequestId::for_owed(
                &order,
                switch_core::qr::CancelKind::Refund,
            );
            assert!(refund.as_str().len() <= 32, "{refund}");
        }
    }
}
