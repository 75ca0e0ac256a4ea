//! Identifiers carried by a transaction: ISO 8583 fields (STAN, RRN,
//! terminal and merchant ids, approval code), our own transaction id, and the
//! terminal's local business date.
//!
//! Each string identifier validates on construction and on deserialization,
//! so a value of these types is always well-formed.

use std::fmt;

use time::Date;
use uuid::Uuid;

use crate::error::InvalidField;

/// Declares a validated string identifier with `parse`, `as_str`, `Display`
/// and plain-string serde (validated via `TryFrom<String>`).
macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident, $field:literal, $check:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, InvalidField> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(s).map_err(|reason| InvalidField::new($field, reason))?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidField;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

fn exact_digits(s: &str, len: usize) -> Result<(), String> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("must be exactly {len} ASCII digits, got '{s}'"))
    }
}

fn alphanumeric(s: &str, min: usize, max: usize) -> Result<(), String> {
    let ok = (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
    match (ok, min == max) {
        (true, _) => Ok(()),
        (false, true) => Err(format!(
            "must be exactly {min} ASCII alphanumeric characters, got '{s}'"
        )),
        (false, false) => Err(format!(
            "must be {min} to {max} ASCII alphanumeric characters, got '{s}'"
        )),
    }
}

string_id!(
    /// System trace audit number (ISO 8583 field 11): 6 digits, zero allowed.
    Stan,
    "stan",
    |s| exact_digits(s, 6)
);

impl Stan {
    pub fn value(&self) -> u32 {
        // parse guarantees exactly 6 ASCII digits, which always fit in u32.
        self.0
            .bytes()
            .fold(0, |acc, b| acc * 10 + u32::from(b - b'0'))
    }
}

string_id!(
    /// Retrieval reference number (ISO 8583 field 37).
    Rrn,
    "rrn",
    |s| alphanumeric(s, 12, 12)
);

impl Rrn {
    /// 12 digits: last digit of the year, 3-digit day of year, then
    /// `sequence % 100_000_000` zero-padded to 8. Deterministic so that a
    /// retry regenerates the same RRN from the same inputs.
    pub fn from_parts(date: Date, sequence: u64) -> Rrn {
        let year_digit = date.year().rem_euclid(10);
        let day = date.ordinal();
        let seq = sequence % 100_000_000;
        Rrn(format!("{year_digit}{day:03}{seq:08}"))
    }
}

string_id!(
    /// Card acceptor terminal id (ISO 8583 field 41).
    TerminalId,
    "terminal_id",
    |s| alphanumeric(s, 8, 8)
);

string_id!(
    /// Card acceptor (merchant) id (ISO 8583 field 42).
    MerchantId,
    "merchant_id",
    |s| alphanumeric(s, 1, 15)
);

string_id!(
    /// Issuer's authorization identification response (ISO 8583 field 38).
    ApprovalCode,
    "approval_code",
    |s| alphanumeric(s, 6, 6)
);

/// The switch's own id for a transaction. UUIDv7 so ids sort by creation
/// time, which keeps journal indexes append-friendly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(Uuid);

impl TransactionId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Field "transaction_id": any textual UUID form accepted by `uuid`.
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| InvalidField::new("transaction_id", format!("'{s}' is not a UUID: {e}")))
    }
}

impl Default for TransactionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl serde::Serialize for TransactionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TransactionId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The terminal's local business date (ISO 8583 field 13 context), part of
/// the duplicate-detection key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalDate(Date);

const LOCAL_DATE_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

impl LocalDate {
    /// Field "local_date": "YYYY-MM-DD".
    pub fn parse(s: &str) -> Result<LocalDate, InvalidField> {
        Date::parse(s, LOCAL_DATE_FORMAT)
            .map(Self)
            .map_err(|e| InvalidField::new("local_date", format!("'{s}' is not YYYY-MM-DD: {e}")))
    }

    pub fn from_date(d: Date) -> Self {
        Self(d)
    }

    /// Field "local_date" as ISO 8583 field 13 carries it: `MMDD`, no
    /// year. The year is the one that puts the date nearest `today` (the
    /// switch's date), so a terminal a few hours either side of midnight
    /// on 31 December keeps its own year; 29 February resolves only to a
    /// leap year within that reach.
    pub fn from_month_day(mmdd: &str, today: Date) -> Result<LocalDate, InvalidField> {
        let refuse = || InvalidField::new("local_date", format!("'{mmdd}' is not MMDD"));
        if mmdd.len() != 4 || !mmdd.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse());
        }
        let month: u8 = mmdd[..2].parse().map_err(|_| refuse())?;
        let day: u8 = mmdd[2..].parse().map_err(|_| refuse())?;
        let month = time::Month::try_from(month).map_err(|_| refuse())?;
        let year = today.year();
        [year - 1, year, year + 1]
            .into_iter()
            .filter_map(|y| Date::from_calendar_date(y, month, day).ok())
            .min_by_key(|candidate| (*candidate - today).whole_days().abs())
            .filter(|nearest| (*nearest - today).whole_days().abs() <= 183)
            .map(LocalDate)
            .ok_or_else(refuse)
    }

    pub fn date(&self) -> Date {
        self.0
    }
}

impl fmt::Display for LocalDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand rather than via `time` formatting, whose fallible
        // API would force Display to return an error.
        let d = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}",
            d.year(),
            u8::from(d.month()),
            d.day()
        )
    }
}

impl serde::Serialize for LocalDate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for LocalDate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error as DeError, StrDeserializer};
    use time::macros::date;

    fn de<'a, T: Deserialize<'a>>(s: &'a str) -> Result<T, DeError> {
        let d: StrDeserializer<'a, DeError> = s.into_deserializer();
        T::deserialize(d)
    }

    #[test]
    fn a_month_and_day_take_the_nearest_year() {
        let at = |mmdd, today| LocalDate::from_month_day(mmdd, today).map(|d| d.to_string());
        assert_eq!(at("1202", date!(2026 - 12 - 02)).unwrap(), "2026-12-02");
        assert_eq!(at("1231", date!(2027 - 01 - 01)).unwrap(), "2026-12-31");
        assert_eq!(at("0101", date!(2026 - 12 - 31)).unwrap(), "2027-01-01");
        assert_eq!(at("0229", date!(2028 - 03 - 01)).unwrap(), "2028-02-29");
        for bad in ["", "122", "12021", "1300", "0000", "0230", "12a1", "0229"] {
            assert_eq!(
                at(bad, date!(2026 - 12 - 02)).unwrap_err().field,
                "local_date",
                "{bad}"
            );
        }
    }

    #[test]
    fn stan() {
        for (ok, v) in [
            ("000001", 1),
            ("000000", 0),
            ("999999", 999_999),
            ("123456", 123_456),
        ] {
            let stan = Stan::parse(ok).unwrap();
            assert_eq!(stan.as_str(), ok);
            assert_eq!(stan.to_string(), ok);
            assert_eq!(stan.value(), v);
        }
        for bad in [
            "",
            "1",
            "00001",
            "0000001",
            "12345a",
            " 12345",
            "１２３４５６",
        ] {
            assert_eq!(Stan::parse(bad).unwrap_err().field, "stan");
        }
        assert!(de::<Stan>("000042").is_ok());
        assert!(de::<Stan>("42").is_err());
    }

    #[test]
    fn rrn() {
        for ok in ["123456789012", "ABCdef123456", "000000000000"] {
            assert_eq!(Rrn::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "12345678901",
            "1234567890123",
            "12345678901-",
            "12345678901 ",
        ] {
            assert_eq!(Rrn::parse(bad).unwrap_err().field, "rrn");
        }
    }

    #[test]
    fn rrn_from_parts_examples() {
        assert_eq!(
            Rrn::from_parts(date!(2024 - 02 - 01), 42).as_str(),
            "403200000042"
        );
        assert_eq!(
            Rrn::from_parts(date!(2025 - 12 - 31), 123_456_789_012).as_str(),
            "536556789012"
        );
        assert_eq!(
            Rrn::from_parts(date!(2030 - 01 - 01), 0).as_str(),
            "000100000000"
        );
    }

    #[test]
    fn terminal_id() {
        for ok in ["TERM0001", "12345678", "abcdefgh"] {
            assert_eq!(TerminalId::parse(ok).unwrap().to_string(), ok);
        }
        for bad in ["", "TERM001", "TERM00001", "TERM 001", "TERM_001"] {
            assert_eq!(TerminalId::parse(bad).unwrap_err().field, "terminal_id");
        }
        assert!(de::<TerminalId>("TERM0001").is_ok());
        assert!(de::<TerminalId>("T").is_err());
    }

    #[test]
    fn merchant_id() {
        for ok in ["M", "MERCHANT1", "123456789012345"] {
            assert_eq!(MerchantId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "1234567890123456", "MERCH ANT", "MERCH-1"] {
            assert_eq!(MerchantId::parse(bad).unwrap_err().field, "merchant_id");
        }
    }

    #[test]
    fn approval_code() {
        for ok in ["ABC123", "000000", "a1b2c3"] {
            assert_eq!(ApprovalCode::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "ABC12", "ABC1234", "ABC 12", "ABC-12"] {
            assert_eq!(ApprovalCode::parse(bad).unwrap_err().field, "approval_code");
        }
    }

    #[test]
    fn transaction_id() {
        let a = TransactionId::new();
        let b = TransactionId::default();
        assert_ne!(a, b);
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert_eq!(TransactionId::parse(&a.to_string()).unwrap(), a);
        assert_eq!(TransactionId::from_uuid(a.as_uuid()), a);
        let fixed = "0191e1a2-3b4c-7d5e-8f60-718293a4b5c6";
        assert_eq!(TransactionId::parse(fixed).unwrap().to_string(), fixed);
        for bad in ["", "not-a-uuid", "0191e1a2-3b4c-7d5e-8f60-718293a4b5c"] {
            assert_eq!(
                TransactionId::parse(bad).unwrap_err().field,
                "transaction_id"
            );
        }
        assert_eq!(de::<TransactionId>(fixed).unwrap().to_string(), fixed);
        assert!(de::<TransactionId>("x").is_err());
    }

    #[test]
    fn local_date() {
        let d = LocalDate::parse("2024-02-29").unwrap();
        assert_eq!(d.date(), date!(2024 - 02 - 29));
        assert_eq!(d.to_string(), "2024-02-29");
        assert_eq!(
            LocalDate::from_date(date!(2025 - 01 - 05)).to_string(),
            "2025-01-05"
        );
        assert!(LocalDate::parse("2024-01-01").unwrap() < LocalDate::parse("2024-01-02").unwrap());
        for bad in [
            "",
            "2023-02-29",
            "2024-13-01",
            "2024-1-01",
            "24-01-01",
            "2024/01/01",
            "2024-01-01T00:00",
        ] {
            assert_eq!(LocalDate::parse(bad).unwrap_err().field, "local_date");
        }
        assert_eq!(de::<LocalDate>("2024-02-29").unwrap(), d);
        assert!(de::<LocalDate>("2024-02-30").is_err());
    }

    fn any_date() -> impl Strategy<Value = Date> {
        (1900i32..=2200, 1u16..=365).prop_map(|(y, d)| Date::from_ordinal_date(y, d).unwrap())
    }

    proptest! {
        #[test]
        fn rrn_from_parts_is_12_digits_and_deterministic(d in any_date(), seq in any::<u64>()) {
            let a = Rrn::from_parts(d, seq);
            prop_assert_eq!(a.as_str().len(), 12);
            prop_assert!(a.as_str().bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(&a, &Rrn::from_parts(d, seq));
            prop_assert_eq!(Rrn::parse(a.as_str()).unwrap(), a.clone());
            let suffix = format!("{:08}", seq % 100_000_000);
            prop_assert!(a.as_str().ends_with(&suffix));
        }

        #[test]
        fn local_date_roundtrip(d in any_date()) {
            let ld = LocalDate::from_date(d);
            prop_assert_eq!(LocalDate::parse(&ld.to_string()).unwrap(), ld);
        }
    }
}
