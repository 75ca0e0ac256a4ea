//! The shopper's behaviour, decided by the amount alone so a test picks it
//! by choosing the amount (the table is in the crate's documentation).

/// What the shopper does with a payment of some amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shopper {
    /// `…00` and every amount not below: pays at once (a merchant-presented
    /// order: as soon as it is scanned).
    PaysAtOnce,
    /// `…01`: confirms on the phone `confirm_delay_ms` after the order
    /// arrived (`USERPAYING` / `NOTPAY` until then).
    ConfirmsAfterDelay,
    /// `…02`: never pays; the order waits until it is closed or cancelled.
    NeverPays,
    /// `…05`: the payment fails (`PAYERROR`), nothing moves.
    Fails,
    /// `…20`: pays `late_delay_ms` after the order arrived: after a
    /// terminal that waits less has given up.
    PaysLate,
}

impl Shopper {
    /// The shopper for `amount` (minor units), by its last two digits.
    pub fn for_amount(amount: i64) -> Shopper {
        match amount.rem_euclid(100) {
            1 => Shopper::ConfirmsAfterDelay,
            2 => Shopper::NeverPays,
            5 => Shopper::Fails,
            20 => Shopper::PaysLate,
            _ => Shopper::PaysAtOnce,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_two_digits_choose_the_shopper() {
        for (amount, shopper) in [
            (1_000, Shopper::PaysAtOnce),
            (1_001, Shopper::ConfirmsAfterDelay),
            (1_002, Shopper::NeverPays),
            (1_005, Shopper::Fails),
            (1_020, Shopper::PaysLate),
            (1_003, Shopper::PaysAtOnce),
            (1_099, Shopper::PaysAtOnce),
            (101, Shopper::ConfirmsAfterDelay),
            (5, Shopper::Fails),
        ] {
            assert_eq!(Shopper::for_amount(amount), shopper, "{amount}");
        }
    }
}
