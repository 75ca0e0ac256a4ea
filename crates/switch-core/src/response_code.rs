//! ISO 8583 field 39: the response code returned to terminals and received
//! from issuers.

use std::fmt;

use crate::error::InvalidField;

/// A two-character ISO 8583 response code. Invariant: both bytes are ASCII
/// alphanumeric (enforced by `parse` and by the constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseCode([u8; 2]);

impl ResponseCode {
    pub const APPROVED: Self = Self(*b"00");
    pub const REFER_TO_ISSUER: Self = Self(*b"01");
    pub const INVALID_MERCHANT: Self = Self(*b"03");
    pub const DO_NOT_HONOUR: Self = Self(*b"05");
    /// Approved once the merchant checked the cardholder's identity.
    pub const HONOUR_WITH_IDENTIFICATION: Self = Self(*b"08");
    /// The issuer approved, and holds, less than the amount asked.
    pub const PARTIAL_APPROVAL: Self = Self(*b"10");
    /// Approved (VIP).
    pub const APPROVED_VIP: Self = Self(*b"11");
    pub const INVALID_TRANSACTION: Self = Self(*b"12");
    pub const INVALID_AMOUNT: Self = Self(*b"13");
    pub const INVALID_CARD_NUMBER: Self = Self(*b"14");
    /// Approved, update track 3.
    pub const APPROVED_UPDATE_TRACK_3: Self = Self(*b"16");
    /// To a reversal: the issuer holds no original to reverse.
    pub const UNABLE_TO_LOCATE_RECORD: Self = Self(*b"25");
    pub const FORMAT_ERROR: Self = Self(*b"30");
    pub const INSUFFICIENT_FUNDS: Self = Self(*b"51");
    pub const EXPIRED_CARD: Self = Self(*b"54");
    pub const RESPONSE_RECEIVED_TOO_LATE: Self = Self(*b"68");
    pub const ISSUER_UNAVAILABLE: Self = Self(*b"91");
    pub const DUPLICATE_TRANSMISSION: Self = Self(*b"94");
    pub const SYSTEM_MALFUNCTION: Self = Self(*b"96");

    /// Field "response_code": exactly 2 ASCII alphanumeric characters. Codes
    /// outside the named constants are accepted, since issuers use private
    /// codes; they are simply described as unknown.
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        match s.as_bytes() {
            &[a, b] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => Ok(Self([a, b])),
            _ => Err(InvalidField::new(
                "response_code",
                format!("must be exactly 2 ASCII alphanumeric characters, got '{s}'"),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        // The bytes are always ASCII (type invariant), so this never falls
        // back; the fallback only avoids a panic path.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// Only "00" is an approval the switch accepts: the full amount,
    /// unconditionally.
    pub fn is_approval(&self) -> bool {
        *self == Self::APPROVED
    }

    /// Whether the issuer holds the shopper's funds after answering a sale
    /// with this code (ISO 8583:1987's approval family: "00", "08", "10",
    /// "11", "16"). Every code here but "00" is one the switch does not
    /// accept: the terminal is told "declined", so the hold must be
    /// reversed, or the shopper is charged for a sale that never happened.
    pub fn holds_funds(&self) -> bool {
        matches!(&self.0, b"00" | b"08" | b"10" | b"11" | b"16")
    }

    /// The code's text for people (terminal screens, `posctl`, logs). Every
    /// tool takes it from here, so the texts cannot drift apart.
    pub fn description(&self) -> &'static str {
        match &self.0 {
            b"00" => "Approved",
            b"01" => "Refer to card issuer",
            b"03" => "Invalid merchant",
            b"04" => "Pick up card",
            b"05" => "Do not honour",
            b"06" => "Error",
            b"08" => "Honour with identification",
            b"10" => "Approved for a partial amount",
            b"11" => "Approved (VIP)",
            b"12" => "Invalid transaction",
            b"13" => "Invalid amount",
            b"14" => "Invalid card number",
            b"16" => "Approved, update track 3",
            b"25" => "Unable to locate record",
            b"30" => "Format error",
            b"41" => "Lost card, pick up",
            b"43" => "Stolen card, pick up",
            b"51" => "Insufficient funds",
            b"54" => "Expired card",
            b"55" => "Incorrect PIN",
            b"57" => "Transaction not permitted to cardholder",
            b"58" => "Transaction not permitted to terminal",
            b"59" => "Suspected fraud",
            b"61" => "Exceeds withdrawal amount limit",
            b"62" => "Restricted card",
            b"65" => "Exceeds withdrawal frequency limit",
            b"68" => "Response received too late",
            b"91" => "Issuer unavailable",
            b"94" => "Duplicate transmission",
            b"95" => "Reconcile error",
            b"96" => "System malfunction",
            _ => "Unknown response code",
        }
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ResponseCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ResponseCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMED: [(ResponseCode, &str, &str); 14] = [
        (ResponseCode::APPROVED, "00", "Approved"),
        (ResponseCode::REFER_TO_ISSUER, "01", "Refer to card issuer"),
        (ResponseCode::INVALID_MERCHANT, "03", "Invalid merchant"),
        (ResponseCode::DO_NOT_HONOUR, "05", "Do not honour"),
        (
            ResponseCode::INVALID_TRANSACTION,
            "12",
            "Invalid transaction",
        ),
        (ResponseCode::INVALID_AMOUNT, "13", "Invalid amount"),
        (
            ResponseCode::INVALID_CARD_NUMBER,
            "14",
            "Invalid card number",
        ),
        (ResponseCode::FORMAT_ERROR, "30", "Format error"),
        (ResponseCode::INSUFFICIENT_FUNDS, "51", "Insufficient funds"),
        (ResponseCode::EXPIRED_CARD, "54", "Expired card"),
        (
            ResponseCode::RESPONSE_RECEIVED_TOO_LATE,
            "68",
            "Response received too late",
        ),
        (ResponseCode::ISSUER_UNAVAILABLE, "91", "Issuer unavailable"),
        (
            ResponseCode::DUPLICATE_TRANSMISSION,
            "94",
            "Duplicate transmission",
        ),
        (ResponseCode::SYSTEM_MALFUNCTION, "96", "System malfunction"),
    ];

    #[test]
    fn constants_parse_and_describe() {
        for (code, s, desc) in NAMED {
            assert_eq!(code.as_str(), s);
            assert_eq!(code.to_string(), s);
            assert_eq!(ResponseCode::parse(s).unwrap(), code);
            assert_eq!(code.description(), desc);
            assert_eq!(code.is_approval(), s == "00");
        }
    }

    #[test]
    fn the_approval_family_holds_funds_and_only_00_is_accepted() {
        for s in ["00", "08", "10", "11", "16"] {
            let code = ResponseCode::parse(s).unwrap();
            assert!(code.holds_funds(), "{s}");
            assert_eq!(code.is_approval(), s == "00", "{s}");
        }
        for s in ["01", "05", "12", "25", "51", "91", "96", "Z9"] {
            assert!(!ResponseCode::parse(s).unwrap().holds_funds(), "{s}");
        }
        assert_eq!(
            ResponseCode::PARTIAL_APPROVAL.description(),
            "Approved for a partial amount"
        );
    }

    #[test]
    fn codes_without_a_constant_are_described_too() {
        for (s, desc) in [
            ("04", "Pick up card"),
            ("06", "Error"),
            ("41", "Lost card, pick up"),
            ("43", "Stolen card, pick up"),
            ("55", "Incorrect PIN"),
            ("57", "Transaction not permitted to cardholder"),
            ("58", "Transaction not permitted to terminal"),
            ("59", "Suspected fraud"),
            ("61", "Exceeds withdrawal amount limit"),
            ("62", "Restricted card"),
            ("65", "Exceeds withdrawal frequency limit"),
            ("95", "Reconcile error"),
        ] {
            assert_eq!(ResponseCode::parse(s).unwrap().description(), desc, "{s}");
        }
    }

    #[test]
    fn parse_accepts_private_codes_and_rejects_malformed() {
        let private = ResponseCode::parse("Z9").unwrap();
        assert_eq!(private.as_str(), "Z9");
        assert_eq!(private.description(), "Unknown response code");
        assert!(!private.is_approval());
        for bad in ["", "0", "000", " 0", "0-", "é", "０0"] {
            assert_eq!(ResponseCode::parse(bad).unwrap_err().field, "response_code");
        }
    }

    #[test]
    fn deserialize_validates() {
        use serde::Deserialize;
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, StrDeserializer};
        let ok: StrDeserializer<'_, Error> = "51".into_deserializer();
        assert_eq!(
            ResponseCode::deserialize(ok).unwrap(),
            ResponseCode::INSUFFICIENT_FUNDS
        );
        let bad: StrDeserializer<'_, Error> = "511".into_deserializer();
        assert!(ResponseCode::deserialize(bad).is_err());
    }
}
