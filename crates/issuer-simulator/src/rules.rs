//! The simulator's deterministic decision rules: what a healthy issuer answers
//! for a given authorization, before any fault is applied.

use switch_core::ResponseCode;
use switch_proto::v1::IssuerAuthorizeRequest;

// The codes the simulator answers with are switch-core's: one table of
// ISO 8583 response codes for the whole workspace.
pub const APPROVED: ResponseCode = ResponseCode::APPROVED;
pub const DO_NOT_HONOUR: ResponseCode = ResponseCode::DO_NOT_HONOUR;
pub const FORMAT_ERROR: ResponseCode = ResponseCode::FORMAT_ERROR;
pub const INSUFFICIENT_FUNDS: ResponseCode = ResponseCode::INSUFFICIENT_FUNDS;
pub const EXPIRED_CARD: ResponseCode = ResponseCode::EXPIRED_CARD;

/// Length of an approval code (ISO 8583 field 38).
pub const APPROVAL_CODE_LEN: usize = 6;

/// What the issuer decided for one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Approved with this approval code.
    Approve {
        /// Six uppercase alphanumerics, derived from the RRN.
        approval_code: String,
    },
    /// Approved for less than asked ("10"): this much is held.
    ApprovePartially {
        approval_code: String,
        held_minor_units: i64,
    },
    /// Declined with this ISO 8583 response code.
    Decline {
        /// Field 39.
        response_code: String,
    },
}

impl Decision {
    /// A decline with `code`.
    pub fn decline(code: ResponseCode) -> Self {
        Decision::Decline {
            response_code: code.as_str().to_owned(),
        }
    }

    /// Field 39 of the answer.
    pub fn response_code(&self) -> &str {
        match self {
            Decision::Approve { .. } => APPROVED.as_str(),
            Decision::ApprovePartially { .. } => ResponseCode::PARTIAL_APPROVAL.as_str(),
            Decision::Decline { response_code } => response_code,
        }
    }

    /// Field 38 of the answer; empty unless approved.
    pub fn approval_code(&self) -> &str {
        match self {
            Decision::Approve { approval_code }
            | Decision::ApprovePartially { approval_code, .. } => approval_code,
            Decision::Decline { .. } => "",
        }
    }

    /// The same decision as a partial approval of half of `amount`, if
    /// it is an approval.
    pub fn partially(self, amount: i64) -> Self {
        match self {
            Decision::Approve { approval_code } => Decision::ApprovePartially {
                approval_code,
                held_minor_units: (amount / 2).max(1),
            },
            other => other,
        }
    }
}

/// Applies the rules documented in the crate root to one request.
pub fn decide(request: &IssuerAuthorizeRequest) -> Decision {
    let Some(amount) = request.amount.as_ref() else {
        return Decision::decline(FORMAT_ERROR);
    };
    if request.rrn.is_empty() || amount.minor_units <= 0 {
        return Decision::decline(FORMAT_ERROR);
    }
    match amount.minor_units % 100 {
        51 => Decision::decline(INSUFFICIENT_FUNDS),
        5 => Decision::decline(DO_NOT_HONOUR),
        54 => Decision::decline(EXPIRED_CARD),
        _ => Decision::Approve {
            approval_code: approval_code(&request.rrn),
        },
    }
}

/// The approval code for `rrn`: 64-bit FNV-1a of its bytes, written in base
/// 36 (`0-9A-Z`), last six digits. Stable across runs, platforms and Rust
/// versions (unlike `std`'s `DefaultHasher`), so tests can hard-code it.
pub fn approval_code(rrn: &str) -> String {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

    let mut hash = rrn.bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    let mut code = [b'0'; APPROVAL_CODE_LEN];
    for slot in code.iter_mut().rev() {
        // `hash % 36` is always < 36, so the index is in bounds.
        *slot = DIGITS[(hash % 36) as usize];
        hash /= 36;
    }
    code.iter().map(|&b| char::from(b)).collect()
}

/// The last four characters of `pan`, the most of it that may be logged.
pub fn pan_last4(pan: &str) -> &str {
    let start = pan
        .char_indices()
        .rev()
        .nth(3)
        .map_or(0, |(index, _)| index);
    &pan[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch_proto::v1::Money;

    fn request(rrn: &str, minor_units: Option<i64>) -> IssuerAuthorizeRequest {
        IssuerAuthorizeRequest {
            rrn: rrn.to_owned(),
            stan: "000001".to_owned(),
            terminal_id: "TERM0001".to_owned(),
            merchant_id: "MERCHANT0000001".to_owned(),
            pan: "4111111111111111".to_owned(),
            expiry: "2812".to_owned(),
            amount: minor_units.map(|minor_units| Money {
                minor_units,
                currency: "EUR".to_owned(),
            }),
        }
    }

    #[test]
    fn rules_on_the_last_two_digits() {
        let code = |units| {
            decide(&request("123456789012", Some(units)))
                .response_code()
                .to_owned()
        };
        assert_eq!(code(1000), "00");
        assert_eq!(code(1051), "51");
        assert_eq!(code(51), "51");
        assert_eq!(code(1005), "05");
        assert_eq!(code(1054), "54");
        assert_eq!(code(1050), "00");
        assert_eq!(code(1), "00");
    }

    #[test]
    fn invalid_requests_are_format_errors() {
        assert_eq!(decide(&request("123456789012", None)).response_code(), "30");
        assert_eq!(decide(&request("", Some(1000))).response_code(), "30");
        assert_eq!(
            decide(&request("123456789012", Some(0))).response_code(),
            "30"
        );
        assert_eq!(
            decide(&request("123456789012", Some(-100))).response_code(),
            "30"
        );
        assert_eq!(
            decide(&request("123456789012", Some(i64::MIN))).response_code(),
            "30"
        );
    }

    #[test]
    fn approval_code_is_deterministic_and_well_formed() {
        let a = approval_code("123456789012");
        assert_eq!(a, approval_code("123456789012"));
        assert_ne!(a, approval_code("123456789013"));
        for rrn in ["", "1", "123456789012", "ÄÖÜ", "999999999999"] {
            let code = approval_code(rrn);
            assert_eq!(code.len(), APPROVAL_CODE_LEN, "{rrn}");
            assert!(
                code.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
                "{code}"
            );
        }
        let approved = decide(&request("123456789012", Some(1000)));
        assert_eq!(approved.approval_code(), a);
        assert_eq!(
            decide(&request("123456789012", Some(1051))).approval_code(),
            ""
        );
    }

    #[test]
    fn only_last_four_of_the_pan() {
        assert_eq!(pan_last4("4111111111111111"), "1111");
        assert_eq!(pan_last4("5500000000000004"), "0004");
        assert_eq!(pan_last4("123"), "123");
        assert_eq!(pan_last4(""), "");
    }
}
