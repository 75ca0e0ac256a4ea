//! What an ISO 8583 terminal is told (field 39) when the switch does not
//! answer with an authorization's own code: the one table from the edge's
//! refusals and failures to response codes. An authorization that was
//! decided answers with `terminal_response_code` (in `authorization`),
//! through the record authorization returns; everything else a terminal
//! can be answered with is here, so the ISO listener never writes a code
//! literal.

use crate::error::InvalidField;
use crate::response_code::ResponseCode;

/// Whose list of response codes a terminal reads field 39 from. Most codes
/// mean the same in both; where a list has no code for a refusal, each
/// picks its own ([`IsoRefusal::response_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseCodes {
    /// ISO 8583:1987's table (the `ascii_1987` profile).
    Iso1987,
    /// China UnionPay's POS response codes (the `cup_pos` profile).
    UnionPay,
}

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
    /// The terminal is over its request rate: nothing was forwarded or
    /// written, and the same request succeeds once the terminal slows
    /// down. No list has a code for "rate exceeded"; each list's "send it
    /// again later" is used (ADR 23).
    OverRate,
}

/// ISO 8583:1987 "19": re-enter transaction. Terminals repeat the request;
/// nothing about the card or the amount is implied.
const REENTER_TRANSACTION: &str = "19";
/// UnionPay "90": the host is in its cut-off, send again in a few minutes.
/// UnionPay's list has no "19", and its "90" is the one code terminals
/// treat as "the host is busy, not the card".
const CUTOFF_IN_PROGRESS: &str = "90";

/// A code of the lists above that the core names no constant for.
fn listed(code: &'static str) -> ResponseCode {
    // Both literals are two ASCII digits, which parse never refuses; the
    // test below proves it, so the fallback is never taken.
    ResponseCode::parse(code).unwrap_or(ResponseCode::SYSTEM_MALFUNCTION)
}

impl IsoRefusal {
    /// Field 39 for the refusal, in the terminal's list of codes.
    pub fn response_code(self, codes: ResponseCodes) -> ResponseCode {
        match self {
            IsoRefusal::OverRate => match codes {
                ResponseCodes::Iso1987 => listed(REENTER_TRANSACTION),
                ResponseCodes::UnionPay => listed(CUTOFF_IN_PROGRESS),
            },
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

/// The answer to a batch upload message (0320): a transaction the edge
/// gathered into the upload, or the end of an upload the settlement
/// batcher reconciled. What reconciliation decided for each transaction is
/// the batcher's (reversals, confirmations, conflicts), not the
/// terminal's to act on.
pub fn upload_accepted() -> ResponseCode {
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
            for codes in [ResponseCodes::Iso1987, ResponseCodes::UnionPay] {
                assert_eq!(refusal.response_code(codes).as_str(), code, "{refusal:?}");
            }
        }
        assert_eq!(
            IsoRefusal::OverRate
                .response_code(ResponseCodes::Iso1987)
                .as_str(),
            "19"
        );
        assert_eq!(
            IsoRefusal::OverRate
                .response_code(ResponseCodes::UnionPay)
                .as_str(),
            "90"
        );
        assert_eq!(upload_accepted().as_str(), "00");
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
