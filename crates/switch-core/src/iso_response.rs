//! What an ISO 8583 terminal is told (field 39) when the switch does not
//! answer with an authorization's own code: the one table from the edge's
//! refusals and failures to response codes. An authorization that was
//! decided answers with `terminal_response_code` (in `authorization`),
//! through the record authorization returns; everything else a terminal
//! can be answered with is here, so the ISO listener never writes a code
//! literal.

use crate::error::InvalidField;
use crate::response_code::ResponseCode;

/// Why the edge answers a request without (or before) an authorization's
/// code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IsoRefusal {
    /// The message could not be read, or a field it needs is missing or
    /// malformed.
    Malformed,
    /// A message type, processing code or function the switch does not
    /// offer; or a message that speaks for another terminal than the
    /// certificate's.
    InvalidTransaction,
    /// The amount or its currency is not acceptable.
    InvalidAmount,
    /// The card number or its expiry is not acceptable.
    InvalidCard,
    /// Same terminal, STAN and date as an earlier request, but another card
    /// or amount: not a retry, and never a second authorization.
    ModifiedRetry,
    /// The switch's services behind the edge did not answer (unreachable,
    /// or past the edge's deadline): whether anything happened is unknown,
    /// so the terminal reverses or asks again.
    SwitchUnavailable,
    /// Anything else that went wrong on the switch's side.
    SystemMalfunction,
}

impl IsoRefusal {
    /// Field 39 for the refusal.
    pub fn response_code(self) -> ResponseCode {
        match self {
            IsoRefusal::Malformed => ResponseCode::FORMAT_ERROR,
            IsoRefusal::InvalidTransaction => ResponseCode::INVALID_TRANSACTION,
            IsoRefusal::InvalidAmount => ResponseCode::INVALID_AMOUNT,
            IsoRefusal::InvalidCard => ResponseCode::INVALID_CARD_NUMBER,
            IsoRefusal::ModifiedRetry => ResponseCode::DUPLICATE_TRANSMISSION,
            IsoRefusal::SwitchUnavailable => ResponseCode::ISSUER_UNAVAILABLE,
            IsoRefusal::SystemMalfunction => ResponseCode::SYSTEM_MALFUNCTION,
        }
    }

    /// The refusal for a value the core's parsers refused, by the field
    /// they name (`InvalidField::field`): card data is "invalid card",
    /// amount and currency "invalid amount", anything else a format error.
    pub fn for_field(invalid: &InvalidField) -> IsoRefusal {
        match invalid.field {
            "pan" | "expiry" => IsoRefusal::InvalidCard,
            "amount" | "currency" => IsoRefusal::InvalidAmount,
            _ => IsoRefusal::Malformed,
        }
    }
}

/// The answer to a reversal request or advice (0400/0420 and repeats)
/// that the switch accepted: "00" once the reversal is durable, whether or
/// not the original was found (the terminal must stop repeating either
/// way; the switch records the reversal and owes the issuer nothing for a
/// sale it never saw).
pub fn reversal_accepted() -> ResponseCode {
    ResponseCode::APPROVED
}

/// The answer to a network management request (0800: sign-on, echo,
/// sign-off) from a terminal whose certificate it matches.
pub fn network_management_accepted() -> ResponseCode {
    ResponseCode::APPROVED
}

/// The answer to a completion advice (0220) the switch recorded as the
/// terminal's acknowledgement.
pub fn advice_accepted() -> ResponseCode {
    ResponseCode::APPROVED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_its_code() {
        for (refusal, code) in [
            (IsoRefusal::Malformed, "30"),
            (IsoRefusal::InvalidTransaction, "12"),
            (IsoRefusal::InvalidAmount, "13"),
            (IsoRefusal::InvalidCard, "14"),
            (IsoRefusal::ModifiedRetry, "94"),
            (IsoRefusal::SwitchUnavailable, "91"),
            (IsoRefusal::SystemMalfunction, "96"),
        ] {
            assert_eq!(refusal.response_code().as_str(), code, "{refusal:?}");
        }
        assert_eq!(reversal_accepted().as_str(), "00");
        assert_eq!(network_management_accepted().as_str(), "00");
        assert_eq!(advice_accepted().as_str(), "00");
    }

    #[test]
    fn refused_fields_map_to_card_amount_or_format() {
        let refusal = |field| IsoRefusal::for_field(&InvalidField::new(field, "bad"));
        assert_eq!(refusal("pan"), IsoRefusal::InvalidCard);
        assert_eq!(refusal("expiry"), IsoRefusal::InvalidCard);
        assert_eq!(refusal("amount"), IsoRefusal::InvalidAmount);
        assert_eq!(refusal("currency"), IsoRefusal::InvalidAmount);
        assert_eq!(refusal("stan"), IsoRefusal::Malformed);
        assert_eq!(refusal("local_date"), IsoRefusal::Malformed);
        assert_eq!(refusal("terminal_id"), IsoRefusal::Malformed);
    }
}
