//! The China UnionPay POS profile: the layout the POS terminals of the
//! UnionPay kind speak to their acquirer's POS centre.
//!
//! ```text
//! length   TPDU            header              MTI    bitmap   fields
//! 00 3B    60 0003 0000    60 31 00 31 07 30   02 00  8 bytes  ...
//! ```
//!
//! - a two-byte binary length of everything after it;
//! - a five-byte TPDU: `0x60`, destination, source (a response swaps them,
//!   [`Envelope::response`](crate::Envelope::response));
//! - a six-byte application header, echoed;
//! - a BCD MTI (two bytes) and eight-byte binary bitmaps;
//! - numeric fields in BCD: fixed ones right-aligned with a leading zero
//!   nibble when the digit count is odd, except field 22, which is
//!   left-aligned; variable ones left-aligned with a trailing pad nibble
//!   (0 when packing; 0 or F accepted);
//! - lengths in BCD, counting digits for numeric fields and bytes
//!   otherwise: one byte for `LLVAR`, two for `LLLVAR`;
//! - track data (35, 36) in BCD with `=` as nibble `D`;
//! - text in ASCII, binary (52, 55, 62, 64) as raw bytes;
//! - field 60, the "self-defined" field, carries sub-fields ([`Field60`]).
//!
//! Fields the table does not list are refused when a bitmap announces
//! them. The sources are listed in the crate's README.

use std::fmt;

use crate::error::{Error, Part};
use crate::frame::{Framing, LengthHeader};
use crate::message::Message;
use crate::profile::{BitmapEncoding, DEFAULT_MAX_LEN, Profile};
use crate::spec::Length::{LlVar, LllVar};
use crate::spec::{Align, Encoding, FieldSpec, Kind, Length, PrefixEncoding, Spec};

impl Profile {
    /// China UnionPay POS: length, TPDU, header, BCD numerics, binary bitmap.
    pub const CUP_POS: Profile = Profile {
        name: "cup-pos",
        spec: &CUP_POS_SPEC,
        mti: Encoding::Bcd,
        bitmap: BitmapEncoding::Binary,
        framing: Framing {
            length: LengthHeader::Binary2,
            tpdu: true,
            header: true,
        },
        max_len: DEFAULT_MAX_LEN,
    };
}

const fn n(name: &'static str, digits: u16) -> FieldSpec {
    FieldSpec::fixed(name, Kind::N, digits, Encoding::Bcd)
}
const fn text(name: &'static str, kind: Kind, len: u16) -> FieldSpec {
    FieldSpec::fixed(name, kind, len, Encoding::Ascii)
}
const fn b(name: &'static str, bytes: u16) -> FieldSpec {
    FieldSpec::fixed(name, Kind::B, bytes, Encoding::Raw)
}
const fn var(name: &'static str, kind: Kind, length: Length) -> FieldSpec {
    let encoding = match kind {
        Kind::N | Kind::Z => Encoding::Bcd,
        Kind::B => Encoding::Raw,
        _ => Encoding::Ascii,
    };
    FieldSpec::var(name, kind, length, encoding, PrefixEncoding::Bcd)
}

/// Index = field number; `None` = not used by the POS layout.
pub static CUP_POS_SPEC: Spec = {
    let mut spec: Spec = [None; 129];
    spec[2] = Some(var("Primary account number", Kind::N, LlVar(19)));
    spec[3] = Some(n("Processing code", 6));
    spec[4] = Some(n("Amount, transaction", 12));
    spec[11] = Some(n("System trace audit number", 6));
    spec[12] = Some(n("Time, local transaction", 6));
    spec[13] = Some(n("Date, local transaction", 4));
    spec[14] = Some(n("Date, expiration", 4));
    spec[15] = Some(n("Date, settlement", 4));
    // Left-aligned, unlike the other odd-length numerics: "021" is 02 10.
    spec[22] = Some(n("Point of service entry mode", 3).aligned(Align::Left));
    spec[23] = Some(n("Card sequence number", 3));
    spec[25] = Some(n("Point of service condition code", 2));
    spec[26] = Some(n("Point of service PIN capture code", 2));
    spec[32] = Some(var(
        "Acquiring institution identification code",
        Kind::N,
        LlVar(11),
    ));
    spec[35] = Some(var("Track 2 data", Kind::Z, LlVar(37)));
    spec[36] = Some(var("Track 3 data", Kind::Z, LllVar(104)));
    spec[37] = Some(text("Retrieval reference number", Kind::An, 12));
    spec[38] = Some(text("Authorization identification response", Kind::An, 6));
    spec[39] = Some(text("Response code", Kind::An, 2));
    spec[41] = Some(text("Card acceptor terminal identification", Kind::Ans, 8));
    spec[42] = Some(text("Card acceptor identification code", Kind::Ans, 15));
    spec[44] = Some(var("Additional response data", Kind::Ans, LlVar(25)));
    spec[48] = Some(var("Additional data, private", Kind::N, LllVar(322)));
    spec[49] = Some(text("Currency code, transaction", Kind::An, 3));
    spec[52] = Some(b("PIN data", 8));
    spec[53] = Some(n("Security related control information", 16));
    spec[54] = Some(var("Additional amounts", Kind::Ans, LllVar(20)));
    spec[55] = Some(var("IC card system related data", Kind::B, LllVar(255)));
    spec[60] = Some(var("Reserved private (self-defined)", Kind::N, LllVar(17)));
    spec[61] = Some(var("Original message", Kind::N, LllVar(29)));
    spec[62] = Some(var("Reserved private", Kind::B, LllVar(512)));
    spec[63] = Some(var("Reserved private", Kind::Ans, LllVar(163)));
    spec[64] = Some(b("Message authentication code", 8));
    spec
};

/// Field 60's sub-fields. Positional digits: 60.1 transaction type code
/// (n2), 60.2 batch number (n6), 60.3 network management information code
/// (n3), then 60.4 onward (terminal read capability n1, IC condition code
/// n1, ...) kept as sent in [`Field60::rest`]. A sub-field is present when
/// the value is long enough to hold it whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field60 {
    /// 60.1, for example [`Field60::SALE`].
    pub transaction_type: String,
    /// 60.2, the terminal's current batch.
    pub batch_number: Option<String>,
    /// 60.3, for example [`Field60::SIGN_ON_DOUBLE_LENGTH_KEY`].
    pub network_management_code: Option<String>,
    /// 60.4 onward, digits as sent.
    pub rest: String,
}

impl Field60 {
    /// 60.1 of a management message (sign-on, batch settlement, echo).
    pub const MANAGEMENT: &'static str = "00";
    pub const BALANCE_INQUIRY: &'static str = "01";
    pub const PRE_AUTHORIZATION: &'static str = "10";
    pub const SALE: &'static str = "22";
    pub const VOID_SALE: &'static str = "23";
    pub const REFUND: &'static str = "25";
    /// 60.3 of a sign-on with a single-length working key.
    pub const SIGN_ON_SINGLE_LENGTH_KEY: &'static str = "001";
    pub const SIGN_OFF: &'static str = "002";
    /// 60.3 of a sign-on with double-length working keys.
    pub const SIGN_ON_DOUBLE_LENGTH_KEY: &'static str = "003";
    /// 60.3 of a batch settlement (0500) and batch upload (0320).
    pub const BATCH_SETTLEMENT: &'static str = "201";
    pub const ECHO_TEST: &'static str = "301";

    /// Reads the sub-fields of field 60's digits. Errors name field 60 and
    /// the offset within its value.
    pub fn parse(value: &str) -> Result<Field60, Error> {
        let part = Part::Field(60);
        if let Some(i) = value.bytes().position(|b| !b.is_ascii_digit()) {
            return Err(Error::NonNumeric { part, offset: i });
        }
        let wrong = |expected| Error::WrongLength {
            part,
            offset: 0,
            len: value.len(),
            expected,
        };
        let sub = |from: usize, to: usize| value.get(from..to).map(str::to_owned);
        let transaction_type = sub(0, 2).ok_or(wrong(2))?;
        let batch_number = match value.len() {
            2 => None,
            3..8 => return Err(wrong(8)),
            _ => sub(2, 8),
        };
        let network_management_code = match value.len() {
            0..=8 => None,
            9..11 => return Err(wrong(11)),
            _ => sub(8, 11),
        };
        Ok(Field60 {
            transaction_type,
            batch_number,
            network_management_code,
            rest: value.get(11..).unwrap_or("").to_owned(),
        })
    }

    /// Field 60 of `message`, if present.
    pub fn of(message: &Message<'_>) -> Option<Result<Field60, Error>> {
        message.text(60).map(Field60::parse)
    }

    /// 60.1–60.3, the common case.
    pub fn new(
        transaction_type: &str,
        batch_number: &str,
        network_management_code: &str,
    ) -> Field60 {
        Field60 {
            transaction_type: transaction_type.to_owned(),
            batch_number: Some(batch_number.to_owned()),
            network_management_code: Some(network_management_code.to_owned()),
            rest: String::new(),
        }
    }
}

impl fmt::Display for Field60 {
    /// The digits of field 60, the sub-fields in order; a sub-field after
    /// an absent one is written as zeros so positions hold.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.transaction_type)?;
        let later = self.network_management_code.is_some() || !self.rest.is_empty();
        match &self.batch_number {
            Some(batch) => f.write_str(batch)?,
            None if later => f.write_str("000000")?,
            None => {}
        }
        match &self.network_management_code {
            Some(code) => f.write_str(code)?,
            None if !self.rest.is_empty() => f.write_str("000")?,
            None => {}
        }
        f.write_str(&self.rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_fields_are_positional() {
        let sale = Field60::parse("22000123000").unwrap();
        assert_eq!(sale, Field60::new(Field60::SALE, "000123", "000"));
        assert_eq!(sale.to_string(), "22000123000");

        let sign_on = Field60::parse("0000000100350").unwrap();
        assert_eq!(sign_on.transaction_type, Field60::MANAGEMENT);
        assert_eq!(sign_on.batch_number.as_deref(), Some("000001"));
        assert_eq!(
            sign_on.network_management_code.as_deref(),
            Some(Field60::SIGN_ON_DOUBLE_LENGTH_KEY)
        );
        assert_eq!(sign_on.rest, "50");
        assert_eq!(sign_on.to_string(), "0000000100350");

        let bare = Field60::parse("22").unwrap();
        assert_eq!(
            (bare.batch_number, bare.network_management_code),
            (None, None)
        );
        let batch_only = Field60::parse("22123456").unwrap();
        assert_eq!(batch_only.batch_number.as_deref(), Some("123456"));
        assert_eq!(batch_only.to_string(), "22123456");
    }

    #[test]
    fn a_cut_sub_field_or_a_letter_is_refused() {
        for (value, expected) in [("", 2), ("2", 2), ("22000", 8), ("220001230", 11)] {
            assert_eq!(
                Field60::parse(value),
                Err(Error::WrongLength {
                    part: Part::Field(60),
                    offset: 0,
                    len: value.len(),
                    expected
                }),
                "{value:?}"
            );
        }
        assert_eq!(
            Field60::parse("2200A123000"),
            Err(Error::NonNumeric {
                part: Part::Field(60),
                offset: 4
            })
        );
    }

    #[test]
    fn absent_middle_sub_fields_are_written_as_zeros() {
        let f = Field60 {
            transaction_type: "22".into(),
            batch_number: None,
            network_management_code: None,
            rest: "5".into(),
        };
        assert_eq!(f.to_string(), "220000000005");
    }
}
