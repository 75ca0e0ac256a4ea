//! One order at the platform and what each request does to it: pure
//! functions of the order, the request and `now`, so the in-memory and the
//! database ledger apply exactly the same rules (the ledger only loads,
//! locks and saves).

use qr_platform::{ErrorCode, Notification, NotifyEvent, RefundAnswer, TradeAnswer, TradeState};
use switch_core::Currency;
use time::{Duration, OffsetDateTime};

use crate::faults::RaceWinner;
use crate::rules::Shopper;

/// How the order arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Consumer-presented: `/v1/pay` with the shopper's code.
    Pay,
    /// Merchant-presented: `/v1/orders`, paid when the shopper scans.
    Order,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pay => "pay",
            Mode::Order => "order",
        }
    }

    pub fn parse(value: &str) -> Option<Mode> {
        match value {
            "pay" => Some(Mode::Pay),
            "order" => Some(Mode::Order),
            _ => None,
        }
    }
}

/// A refund of (part of) an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub out_refund_no: String,
    pub refund_id: String,
    pub amount: i64,
    pub refunded_at: OffsetDateTime,
}

/// The refund a cancel of a paid order makes; `~` is not allowed in a
/// request's `out_refund_no`, so it never collides with one.
pub const CANCEL_REFUND_NO: &str = "~cancel";

/// An order as the platform's ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub out_trade_no: String,
    pub mode: Mode,
    pub transaction_id: String,
    pub amount: i64,
    pub currency: Currency,
    pub state: TradeState,
    /// When the shopper will pay by the amount's rule, while pending.
    pub pays_at: Option<OffsetDateTime>,
    pub paid_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub refunds: Vec<Refund>,
    /// Payments the shopper tried after the order was closed: they bounced.
    pub refused_payments: u32,
}

/// A refusal with the platform's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        code,
        message: message.into(),
    })
}

/// The delays of the shopper's rules.
#[derive(Debug, Clone, Copy)]
pub struct Delays {
    pub confirm: Duration,
    pub late: Duration,
}

/// What a request changed: notifications to send (the order became paid).
pub type Notifications = Vec<Notification>;

/// What one request did: its answer or refusal, and the notifications to
/// send. The order is saved either way: a refusal can follow a change (the
/// shopper's payment that won a race with the close, a bounced payment).
#[derive(Debug)]
pub struct Step<A> {
    pub answer: Result<A, Refusal>,
    pub notifications: Notifications,
}

impl<A> Step<A> {
    fn new(answer: Result<A, Refusal>, notifications: Notifications) -> Step<A> {
        Step {
            answer,
            notifications,
        }
    }
}

impl Order {
    fn new(
        out_trade_no: &str,
        mode: Mode,
        amount: i64,
        currency: Currency,
        now: OffsetDateTime,
    ) -> Order {
        Order {
            out_trade_no: out_trade_no.to_owned(),
            mode,
            transaction_id: new_transaction_id(),
            amount,
            currency,
            state: match mode {
                Mode::Pay => TradeState::UserPaying,
                Mode::Order => TradeState::NotPay,
            },
            pays_at: None,
            paid_at: None,
            created_at: now,
            refunds: Vec::new(),
            refused_payments: 0,
        }
    }

    /// `/v1/pay` and `/v1/orders`: a new order, or the same one again for
    /// the same `out_trade_no`, mode, amount and currency.
    pub fn open(
        existing: &mut Option<Order>,
        out_trade_no: &str,
        mode: Mode,
        amount: i64,
        currency: Currency,
        delays: Delays,
        now: OffsetDateTime,
    ) -> Step<TradeAnswer> {
        if let Some(order) = existing {
            let notifications = order.advance(now);
            if order.mode != mode || order.amount != amount || order.currency != currency {
                let refusal = refuse(
                    ErrorCode::OutTradeNoUsed,
                    format!(
                        "out_trade_no {out_trade_no} is an order of {} {} by {}",
                        order.amount,
                        order.currency,
                        order.mode.as_str()
                    ),
                );
                return Step::new(refusal, notifications);
            }
            return Step::new(Ok(order.answer()), notifications);
        }
        let mut order = Order::new(out_trade_no, mode, amount, currency, now);
        let mut notifications = Vec::new();
        match (Shopper::for_amount(amount), mode) {
            (Shopper::PaysAtOnce, Mode::Pay) => notifications.extend(order.pay(now)),
            (Shopper::Fails, Mode::Pay) => order.state = TradeState::PayError,
            (Shopper::ConfirmsAfterDelay, _) => order.pays_at = Some(now + delays.confirm),
            (Shopper::PaysLate, _) => order.pays_at = Some(now + delays.late),
            // A merchant-presented order waits for its scan.
            (Shopper::NeverPays, _) | (_, Mode::Order) => {}
        }
        let answer = order.answer();
        *existing = Some(order);
        Step::new(Ok(answer), notifications)
    }

    /// The shopper's scheduled payment, if it is due by `now`.
    pub fn advance(&mut self, now: OffsetDateTime) -> Notifications {
        match self.pays_at {
            Some(due) if self.state.is_pending() && due <= now => {
                self.pay(due).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    /// The money moves: the order is paid at `at`.
    fn pay(&mut self, at: OffsetDateTime) -> Option<Notification> {
        if !self.state.is_pending() {
            return None;
        }
        self.state = TradeState::Success;
        self.pays_at = None;
        self.paid_at = Some(at);
        Some(Notification {
            notify_id: uuid::Uuid::new_v4().to_string(),
            event: NotifyEvent::TransactionSuccess,
            out_trade_no: self.out_trade_no.clone(),
            transaction_id: self.transaction_id.clone(),
            trade_state: TradeState::Success,
            amount: self.amount,
            currency: self.currency,
            paid_at_ms: unix_ms(at),
        })
    }

    /// `POST /control/scan`: the shopper scans a merchant-presented order
    /// and pays it (or fails, or never pays, by the amount's rule).
    pub fn scan(&mut self, now: OffsetDateTime) -> Step<TradeAnswer> {
        let mut notifications = self.advance(now);
        if self.mode != Mode::Order {
            let refusal = refuse(
                ErrorCode::InvalidRequest,
                "only a merchant-presented order is scanned",
            );
            return Step::new(refusal, notifications);
        }
        match self.state {
            TradeState::NotPay | TradeState::UserPaying => match Shopper::for_amount(self.amount) {
                Shopper::NeverPays => {}
                Shopper::Fails => self.state = TradeState::PayError,
                _ => notifications.extend(self.pay(now)),
            },
            TradeState::Closed | TradeState::Revoked => {
                self.refused_payments += 1;
                let refusal = refuse(ErrorCode::OrderClosed, "the order is closed");
                return Step::new(refusal, notifications);
            }
            _ => {}
        }
        Step::new(Ok(self.answer()), notifications)
    }

    pub fn query(&mut self, now: OffsetDateTime) -> Step<TradeAnswer> {
        let notifications = self.advance(now);
        Step::new(Ok(self.answer()), notifications)
    }

    /// `/v1/close`: an unpaid order is closed for good; a paid one is
    /// refused `ORDERPAID`. Under a race fault the shopper's payment
    /// arrives together with the close and one of them wins.
    pub fn close(&mut self, race: Option<RaceWinner>, now: OffsetDateTime) -> Step<TradeAnswer> {
        let mut notifications = self.advance(now);
        if self.state.is_pending() {
            match race {
                Some(RaceWinner::Payment) => notifications.extend(self.pay(now)),
                Some(RaceWinner::Close) => self.refused_payments += 1,
                None => {}
            }
        }
        match self.state {
            TradeState::NotPay | TradeState::UserPaying | TradeState::PayError => {
                self.state = TradeState::Closed;
                self.pays_at = None;
            }
            TradeState::Success | TradeState::Refund => {
                let refusal = refuse(
                    ErrorCode::OrderPaid,
                    "the order is paid: refund or cancel it",
                );
                return Step::new(refusal, notifications);
            }
            TradeState::Closed | TradeState::Revoked => {}
        }
        Step::new(Ok(self.answer()), notifications)
    }

    /// `/v1/cancel` (reverse): an unpaid order is revoked; a paid one is
    /// refunded in full (what is left of it) and revoked.
    pub fn cancel(&mut self, now: OffsetDateTime) -> Step<TradeAnswer> {
        let notifications = self.advance(now);
        match self.state {
            TradeState::NotPay | TradeState::UserPaying | TradeState::PayError => {
                self.state = TradeState::Revoked;
                self.pays_at = None;
            }
            TradeState::Success | TradeState::Refund => {
                let left = self.amount - self.refunded();
                if left > 0 {
                    self.refunds.push(Refund {
                        out_refund_no: CANCEL_REFUND_NO.into(),
                        refund_id: new_refund_id(),
                        amount: left,
                        refunded_at: now,
                    });
                }
                self.state = TradeState::Revoked;
            }
            TradeState::Closed | TradeState::Revoked => {}
        }
        Step::new(Ok(self.answer()), notifications)
    }

    /// `/v1/refund`: part or all of a paid order; the same `out_refund_no`
    /// with the same amount is answered again, changing nothing.
    pub fn refund(
        &mut self,
        out_refund_no: &str,
        amount: i64,
        now: OffsetDateTime,
    ) -> Step<RefundAnswer> {
        let notifications = self.advance(now);
        let answer = self.refund_now(out_refund_no, amount, now);
        Step::new(answer, notifications)
    }

    fn refund_now(
        &mut self,
        out_refund_no: &str,
        amount: i64,
        now: OffsetDateTime,
    ) -> Result<RefundAnswer, Refusal> {
        if let Some(done) = self
            .refunds
            .iter()
            .find(|r| r.out_refund_no == out_refund_no)
        {
            if done.amount != amount {
                return refuse(
                    ErrorCode::RefundNoUsed,
                    format!("out_refund_no {out_refund_no} refunded {}", done.amount),
                );
            }
            let done = done.clone();
            return Ok(self.refund_answer(&done));
        }
        match self.state {
            TradeState::Success | TradeState::Refund => {}
            TradeState::Revoked | TradeState::Closed => {
                return refuse(ErrorCode::OrderClosed, "the order is closed or reversed");
            }
            TradeState::NotPay | TradeState::UserPaying | TradeState::PayError => {
                return refuse(ErrorCode::OrderNotPaid, "the order is not paid");
            }
        }
        let left = self.amount - self.refunded();
        if amount > left {
            return refuse(
                ErrorCode::RefundExceeded,
                format!("{amount} is more than the {left} left to refund"),
            );
        }
        let refund = Refund {
            out_refund_no: out_refund_no.to_owned(),
            refund_id: new_refund_id(),
            amount,
            refunded_at: now,
        };
        self.refunds.push(refund.clone());
        self.state = TradeState::Refund;
        Ok(self.refund_answer(&refund))
    }

    /// Everything refunded, a cancel's refund included.
    pub fn refunded(&self) -> i64 {
        self.refunds.iter().map(|r| r.amount).sum()
    }

    /// What the shopper was charged: the amount once paid, else nothing.
    pub fn charged(&self) -> i64 {
        if self.paid_at.is_some() {
            self.amount
        } else {
            0
        }
    }

    pub fn answer(&self) -> TradeAnswer {
        TradeAnswer {
            out_trade_no: self.out_trade_no.clone(),
            transaction_id: self.transaction_id.clone(),
            trade_state: self.state,
            amount: self.amount,
            currency: self.currency,
            refunded_amount: self.refunded(),
            code_url: (self.mode == Mode::Order)
                .then(|| format!("qr://sim/{}", self.transaction_id)),
            paid_at_ms: self.paid_at.map(unix_ms),
        }
    }

    fn refund_answer(&self, refund: &Refund) -> RefundAnswer {
        RefundAnswer {
            out_trade_no: self.out_trade_no.clone(),
            out_refund_no: refund.out_refund_no.clone(),
            refund_id: refund.refund_id.clone(),
            refund_amount: refund.amount,
            refunded_total: self.refunded(),
            currency: self.currency,
            trade_state: self.state,
        }
    }
}

pub fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// 28 digits, like a WeChat Pay transaction id: "42" and 26 random ones.
fn new_transaction_id() -> String {
    format!(
        "42{:013}{:013}",
        rand::random_range(0..10_000_000_000_000u64),
        rand::random_range(0..10_000_000_000_000u64)
    )
}

fn new_refund_id() -> String {
    format!(
        "50{:018}",
        rand::random_range(0..1_000_000_000_000_000_000u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use qr_platform::ALL_STATES;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-02 12:00 UTC);
    const DELAYS: Delays = Delays {
        confirm: Duration::seconds(5),
        late: Duration::seconds(60),
    };

    fn eur() -> Currency {
        Currency::parse("EUR").expect("EUR")
    }

    fn opened(mode: Mode, amount: i64) -> (Order, Notifications) {
        let mut slot = None;
        let step = Order::open(&mut slot, "T1", mode, amount, eur(), DELAYS, NOW);
        step.answer.expect("opened");
        (slot.expect("saved"), step.notifications)
    }

    fn in_state(state: TradeState) -> Order {
        let (mut order, _) = opened(Mode::Pay, 1_002);
        order.state = state;
        if state.was_paid() {
            order.paid_at = Some(NOW);
        }
        order
    }

    #[test]
    fn an_order_opens_by_the_shoppers_rule() {
        for (mode, amount, state, pays_at, notified) in [
            (Mode::Pay, 1_000, TradeState::Success, None, true),
            (
                Mode::Pay,
                1_001,
                TradeState::UserPaying,
                Some(NOW + DELAYS.confirm),
                false,
            ),
            (Mode::Pay, 1_002, TradeState::UserPaying, None, false),
            (Mode::Pay, 1_005, TradeState::PayError, None, false),
            (
                Mode::Pay,
                1_020,
                TradeState::UserPaying,
                Some(NOW + DELAYS.late),
                false,
            ),
            (Mode::Order, 1_000, TradeState::NotPay, None, false),
            (
                Mode::Order,
                1_001,
                TradeState::NotPay,
                Some(NOW + DELAYS.confirm),
                false,
            ),
            (Mode::Order, 1_005, TradeState::NotPay, None, false),
            (
                Mode::Order,
                1_020,
                TradeState::NotPay,
                Some(NOW + DELAYS.late),
                false,
            ),
        ] {
            let (order, notifications) = opened(mode, amount);
            assert_eq!(
                (order.state, order.pays_at, notifications.len() == 1),
                (state, pays_at, notified),
                "{mode:?} {amount}"
            );
        }
    }

    #[test]
    fn the_same_out_trade_no_is_the_same_order_and_a_different_one_is_refused() {
        let (order, _) = opened(Mode::Pay, 1_000);
        let mut slot = Some(order.clone());
        let again = Order::open(&mut slot, "T1", Mode::Pay, 1_000, eur(), DELAYS, NOW);
        assert_eq!(again.answer, Ok(order.answer()));
        assert!(again.notifications.is_empty(), "a repeat notifies nothing");
        for (mode, amount, currency) in [
            (Mode::Pay, 2_000, eur()),
            (Mode::Order, 1_000, eur()),
            (Mode::Pay, 1_000, Currency::parse("USD").expect("USD")),
        ] {
            let refused = Order::open(&mut slot, "T1", mode, amount, currency, DELAYS, NOW);
            assert_eq!(refused.answer.unwrap_err().code, ErrorCode::OutTradeNoUsed);
        }
        assert_eq!(slot, Some(order), "a refusal changes nothing");
    }

    #[test]
    fn a_scheduled_payment_is_made_when_due_never_before_and_notified_once() {
        let (mut order, _) = opened(Mode::Pay, 1_001);
        assert!(order.advance(NOW + Duration::seconds(4)).is_empty());
        assert_eq!(order.state, TradeState::UserPaying);
        let notified = order.advance(NOW + Duration::seconds(9));
        assert_eq!(notified.len(), 1);
        assert_eq!(order.state, TradeState::Success);
        assert_eq!(
            order.paid_at,
            Some(NOW + DELAYS.confirm),
            "paid when the shopper confirmed"
        );
        assert!(order.advance(NOW + Duration::seconds(10)).is_empty());
    }

    #[test]
    fn close_by_state() {
        for state in ALL_STATES {
            let mut order = in_state(state);
            let step = order.close(None, NOW);
            let expected = match state {
                TradeState::NotPay | TradeState::UserPaying | TradeState::PayError => {
                    Ok(TradeState::Closed)
                }
                TradeState::Closed => Ok(TradeState::Closed),
                TradeState::Revoked => Ok(TradeState::Revoked),
                TradeState::Success | TradeState::Refund => Err(ErrorCode::OrderPaid),
            };
            assert_eq!(
                step.answer.map(|a| a.trade_state).map_err(|r| r.code),
                expected,
                "{state:?}"
            );
        }
    }

    #[test]
    fn a_close_racing_the_payment_has_one_winner() {
        let mut order = in_state(TradeState::UserPaying);
        let step = order.close(Some(RaceWinner::Payment), NOW);
        assert_eq!(step.answer.unwrap_err().code, ErrorCode::OrderPaid);
        assert_eq!(step.notifications.len(), 1, "the payment is notified");
        assert_eq!((order.state, order.charged()), (TradeState::Success, 1_002));

        let mut order = in_state(TradeState::UserPaying);
        let step = order.close(Some(RaceWinner::Close), NOW);
        assert_eq!(step.answer.map(|a| a.trade_state), Ok(TradeState::Closed));
        assert!(step.notifications.is_empty());
        assert_eq!((order.charged(), order.refused_payments), (0, 1));
    }

    #[test]
    fn cancel_by_state_refunds_exactly_what_is_left_of_a_paid_order() {
        for state in ALL_STATES {
            let mut order = in_state(state);
            if state == TradeState::Refund {
                order.refunds.push(Refund {
                    out_refund_no: "R1".into(),
                    refund_id: "1".into(),
                    amount: 2,
                    refunded_at: NOW,
                });
            }
            let answer = order.cancel(NOW).answer.expect("a cancel is never refused");
            let (expected_state, expected_refunded) = match state {
                TradeState::Closed => (TradeState::Closed, 0),
                TradeState::Success | TradeState::Refund => (TradeState::Revoked, 1_002),
                _ => (TradeState::Revoked, 0),
            };
            assert_eq!(
                (answer.trade_state, answer.refunded_amount),
                (expected_state, expected_refunded),
                "{state:?}"
            );
        }
    }

    #[test]
    fn refunds_by_state_and_amount() {
        for state in ALL_STATES {
            let mut order = in_state(state);
            let expected = match state {
                TradeState::Success | TradeState::Refund => Ok(TradeState::Refund),
                TradeState::Closed | TradeState::Revoked => Err(ErrorCode::OrderClosed),
                _ => Err(ErrorCode::OrderNotPaid),
            };
            let answer = order.refund("R1", 1, NOW).answer;
            assert_eq!(
                answer.map(|a| a.trade_state).map_err(|r| r.code),
                expected,
                "{state:?}"
            );
        }
        let mut order = in_state(TradeState::Success);
        let first = order.refund("R1", 1_000, NOW).answer.expect("refunded");
        assert_eq!(order.refund("R1", 1_000, NOW).answer, Ok(first));
        let code = |step: Step<RefundAnswer>| step.answer.unwrap_err().code;
        assert_eq!(code(order.refund("R1", 999, NOW)), ErrorCode::RefundNoUsed);
        assert_eq!(code(order.refund("R2", 3, NOW)), ErrorCode::RefundExceeded);
        assert_eq!(
            order
                .refund("R2", 2, NOW)
                .answer
                .expect("the rest")
                .refunded_total,
            1_002
        );
        assert_eq!(order.refunded(), order.charged());
    }

    #[test]
    fn a_scan_pays_fails_or_bounces_by_rule_and_state() {
        for (amount, expected) in [
            (1_000, Ok(TradeState::Success)),
            (1_002, Ok(TradeState::NotPay)),
            (1_005, Ok(TradeState::PayError)),
        ] {
            let (mut order, _) = opened(Mode::Order, amount);
            let step = order.scan(NOW);
            assert_eq!(
                step.answer.map(|a| a.trade_state).map_err(|r| r.code),
                expected,
                "{amount}"
            );
            assert_eq!(step.notifications.len(), usize::from(amount == 1_000));
        }
        let (mut order, _) = opened(Mode::Order, 1_000);
        order.close(None, NOW).answer.expect("closed");
        assert_eq!(
            order.scan(NOW).answer.unwrap_err().code,
            ErrorCode::OrderClosed
        );
        assert_eq!(order.refused_payments, 1);
        let (mut paid, _) = opened(Mode::Pay, 1_000);
        assert_eq!(
            paid.scan(NOW).answer.unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }
}
