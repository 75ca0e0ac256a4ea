//! The ISO 8583:1987 ASCII profile: field for field the layout of
//! pyiso8583's `default_ascii` spec (version 4.0.1): every length prefix
//! and every value in ASCII, a four-character MTI, hexadecimal bitmaps,
//! the same maximum lengths. On top of pyiso8583, which treats every field
//! as text, the table gives each field its 1987 data type, so a letter in
//! an amount is refused naming the field; binary fields (52, 55, 64, 96,
//! 128) are hexadecimal text whose length prefix counts characters, as in
//! pyiso8583, and unpack to bytes.
//!
//! Field 65 is not defined: pyiso8583 reads its bit as "a third bitmap
//! follows", which this codec does not support, so a message announcing it
//! is refused as a field the profile does not define.
//!
//! Framing, which pyiso8583 leaves to the application: a two-byte binary
//! length header; [`Profile::with_framing`] selects another.

use crate::frame::{Framing, LengthHeader};
use crate::profile::{BitmapEncoding, DEFAULT_MAX_LEN, Profile};
use crate::spec::Length::{LlVar, LllVar};
use crate::spec::{Encoding, FieldSpec, Kind, Length, PrefixEncoding, Spec};

impl Profile {
    /// ISO 8583:1987 in ASCII, compatible with pyiso8583's `default_ascii`.
    pub const ASCII_1987: Profile = Profile {
        name: "iso8583-1987-ascii",
        spec: &ASCII_1987_SPEC,
        mti: Encoding::Ascii,
        bitmap: BitmapEncoding::Hex,
        framing: Framing {
            length: LengthHeader::Binary2,
            tpdu: false,
            header: false,
        },
        max_len: DEFAULT_MAX_LEN,
    };
}

const fn n(name: &'static str, len: u16) -> FieldSpec {
    FieldSpec::fixed(name, Kind::N, len, Encoding::Ascii)
}
const fn xn(name: &'static str, len: u16) -> FieldSpec {
    FieldSpec::fixed(name, Kind::Xn, len, Encoding::Ascii)
}
const fn an(name: &'static str, len: u16) -> FieldSpec {
    FieldSpec::fixed(name, Kind::An, len, Encoding::Ascii)
}
const fn ans(name: &'static str, len: u16) -> FieldSpec {
    FieldSpec::fixed(name, Kind::Ans, len, Encoding::Ascii)
}
const fn b(name: &'static str, bytes: u16) -> FieldSpec {
    FieldSpec::fixed(name, Kind::B, bytes, Encoding::Hex)
}
const fn var(name: &'static str, kind: Kind, length: Length, encoding: Encoding) -> FieldSpec {
    FieldSpec::var(name, kind, length, encoding, PrefixEncoding::Ascii)
}
const fn var_n(name: &'static str, length: Length) -> FieldSpec {
    var(name, Kind::N, length, Encoding::Ascii)
}
const fn var_z(name: &'static str, length: Length) -> FieldSpec {
    var(name, Kind::Z, length, Encoding::Ascii)
}
const fn var_ans(name: &'static str, length: Length) -> FieldSpec {
    var(name, Kind::Ans, length, Encoding::Ascii)
}
/// `bytes` is the most bytes; the prefix counts hex characters (twice).
const fn var_b(name: &'static str, length: Length) -> FieldSpec {
    var(name, Kind::B, length, Encoding::Hex)
}

/// Index = field number. Data types from ISO 8583:1987; `ans` where the
/// standard's `an` would refuse what hosts put there (track 1, the private
/// and national fields).
pub static ASCII_1987_SPEC: Spec = [
    None, // 0: MTI
    None, // 1: secondary bitmap
    Some(var_n("Primary Account Number (PAN)", LlVar(19))),
    Some(n("Processing Code", 6)),
    Some(n("Amount, Transaction", 12)),
    Some(n("Amount, Settlement", 12)),
    Some(n("Amount, Cardholder Billing", 12)),
    Some(n("Transmission Date and Time", 10)),
    Some(n("Amount, Cardholder Billing Fee", 8)),
    Some(n("Conversion Rate, Settlement", 8)),
    Some(n("Conversion Rate, Cardholder Billing", 8)),
    Some(n("System Trace Audit Number", 6)),
    Some(n("Time, Local Transaction", 6)),
    Some(n("Date, Local Transaction", 4)),
    Some(n("Date, Expiration", 4)),
    Some(n("Date, Settlement", 4)),
    Some(n("Date, Conversion", 4)),
    Some(n("Date, Capture", 4)),
    Some(n("Merchant Type", 4)),
    Some(n("Acquiring Institution Country Code", 3)),
    Some(n("PAN Country Code", 3)),
    Some(n("Forwarding Institution Country Code", 3)),
    Some(n("Point-of-Service Entry Mode", 3)),
    Some(n("PAN Sequence Number", 3)),
    Some(n("Network International ID (NII)", 3)),
    Some(n("Point-of-Service Condition Code", 2)),
    Some(n("Point-of-Service Capture Code", 2)),
    Some(n("Authorizing ID Response Length", 1)),
    Some(xn("Amount, Transaction Fee", 9)),
    Some(xn("Amount, Settlement Fee", 9)),
    Some(xn("Amount, Transaction Processing Fee", 9)),
    Some(xn("Amount, Settlement Processing Fee", 9)),
    Some(var_n("Acquiring Institution ID Code", LlVar(11))),
    Some(var_n("Forwarding Institution ID Code", LlVar(11))),
    Some(var_ans("Primary Account Number, Extended", LlVar(28))),
    Some(var_z("Track 2 Data", LlVar(37))),
    Some(var_z("Track 3 Data", LllVar(104))),
    Some(an("Retrieval Reference Number", 12)),
    Some(an("Authorization ID Response", 6)),
    Some(an("Response Code", 2)),
    Some(an("Service Restriction Code", 3)),
    Some(ans("Card Acceptor Terminal ID", 8)),
    Some(ans("Card Acceptor ID Code", 15)),
    Some(ans("Card Acceptor Name/Location", 40)),
    Some(var_ans("Additional Response Data", LlVar(25))),
    Some(var_ans("Track 1 Data", LlVar(76))),
    Some(var_ans("Additional Data - ISO", LllVar(999))),
    Some(var_ans("Additional Data - National", LllVar(999))),
    Some(var_ans("Additional Data - Private", LllVar(999))),
    Some(an("Currency Code, Transaction", 3)),
    Some(an("Currency Code, Settlement", 3)),
    Some(an("Currency Code, Cardholder Billing", 3)),
    Some(b("PIN", 8)),
    Some(n("Security-Related Control Information", 16)),
    Some(var_ans("Additional Amounts", LllVar(240))),
    Some(var_b("ICC data", LllVar(255))),
    Some(var_ans("Reserved ISO", LllVar(999))),
    Some(var_ans("Reserved National", LllVar(999))),
    Some(var_ans("Reserved National", LllVar(999))),
    Some(var_ans("Reserved National", LllVar(999))),
    Some(var_ans("Reserved National", LllVar(999))),
    Some(var_ans("Reserved Private", LllVar(999))),
    Some(var_ans("Reserved Private", LllVar(999))),
    Some(var_ans("Reserved Private", LllVar(999))),
    Some(b("MAC", 8)),
    None, // 65: tertiary bitmap indicator in pyiso8583; no third bitmap here
    Some(n("Settlement Code", 1)),
    Some(n("Extended Payment Code", 2)),
    Some(n("Receiving Institution Country Code", 3)),
    Some(n("Settlement Institution Country Code", 3)),
    Some(n("Network Management Information Code", 3)),
    Some(n("Message Number", 4)),
    Some(n("Message Number, Last", 4)),
    Some(n("Date, Action", 6)),
    Some(n("Credits, Number", 10)),
    Some(n("Credits, Reversal Number", 10)),
    Some(n("Debits, Number", 10)),
    Some(n("Debits, Reversal Number", 10)),
    Some(n("Transfer, Number", 10)),
    Some(n("Transfer, Reversal Number", 10)),
    Some(n("Inquiries, Number", 10)),
    Some(n("Authorizations, Number", 10)),
    Some(n("Credits, Processing Fee Amount", 12)),
    Some(n("Credits, Transaction Fee Amount", 12)),
    Some(n("Debits, Processing Fee Amount", 12)),
    Some(n("Debits, Transaction Fee Amount", 12)),
    Some(n("Credits, Amount", 16)),
    Some(n("Credits, Reversal Amount", 16)),
    Some(n("Debits, Amount", 16)),
    Some(n("Debits, Reversal Amount", 16)),
    Some(n("Original Data Elements", 42)),
    Some(an("File Update Code", 1)),
    Some(an("File Security Code", 2)),
    Some(an("Response Indicator", 5)),
    Some(an("Service Indicator", 7)),
    Some(an("Replacement Amounts", 42)),
    Some(b("Message Security Code", 8)),
    Some(xn("Amount, Net Settlement", 17)),
    Some(ans("Payee", 25)),
    Some(var_n("Settlement Institution ID Code", LlVar(11))),
    Some(var_n("Receiving Institution ID Code", LlVar(11))),
    Some(var_ans("File Name", LlVar(17))),
    Some(var_ans("Account ID 1", LlVar(28))),
    Some(var_ans("Account ID 2", LlVar(28))),
    Some(var_ans("Transaction Description", LllVar(100))),
    Some(var_ans("Reserved for ISO Use", LllVar(999))),
    Some(var_ans("Reserved for ISO Use", LllVar(999))),
    Some(var_ans("Reserved for ISO Use", LllVar(999))),
    Some(var_ans("Reserved for ISO Use", LllVar(999))),
    Some(var_ans("Reserved for ISO Use", LllVar(999))),
    Some(var_ans("Reserved for ISO Use", LllVar(999))),
    Some(var_ans("Reserved for ISO Use", LllVar(999))),
    Some(var_ans("Reserved for National Use", LllVar(999))),
    Some(var_ans("Reserved for National Use", LllVar(999))),
    Some(var_ans("Reserved for National Use", LllVar(999))),
    Some(var_ans("Reserved for National Use", LllVar(999))),
    Some(var_ans("Reserved for National Use", LllVar(999))),
    Some(var_ans("Reserved for National Use", LllVar(999))),
    Some(var_ans("Reserved for National Use", LllVar(999))),
    Some(var_ans("Reserved for National Use", LllVar(999))),
    Some(var_ans("Reserved for Private Use", LllVar(999))),
    Some(var_ans("Reserved for Private Use", LllVar(999))),
    Some(var_ans("Reserved for Private Use", LllVar(999))),
    Some(var_ans("Reserved for Private Use", LllVar(999))),
    Some(var_ans("Reserved for Private Use", LllVar(999))),
    Some(var_ans("Reserved for Private Use", LllVar(999))),
    Some(var_ans("Reserved for Private Use", LllVar(999))),
    Some(var_ans("Reserved for Private Use", LllVar(999))),
    Some(b("MAC", 8)),
];
