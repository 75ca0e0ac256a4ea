//! Currencies (ISO 4217) and amounts in integer minor units.
//!
//! Money never touches floating point: an amount is an `i64` count of the
//! currency's minor unit, and formatting is done with integer arithmetic.

use std::fmt;

use crate::error::InvalidField;

/// One row of the built-in ISO 4217 table.
struct CurrencyInfo {
    code: &'static str,
    numeric: u16,
    exponent: u8,
}

const fn info(code: &'static str, numeric: u16, exponent: u8) -> CurrencyInfo {
    CurrencyInfo {
        code,
        numeric,
        exponent,
    }
}

/// The currencies the switch accepts. Unknown codes are rejected rather than
/// guessed, because a wrong exponent would silently scale amounts by 10^n.
static CURRENCIES: &[CurrencyInfo] = &[
    info("EUR", 978, 2),
    info("USD", 840, 2),
    info("GBP", 826, 2),
    info("JPY", 392, 0),
    info("VND", 704, 0),
    info("KWD", 414, 3),
    info("BHD", 48, 3),
    info("CHF", 756, 2),
    info("SEK", 752, 2),
    info("NOK", 578, 2),
    info("DKK", 208, 2),
    info("PLN", 985, 2),
    info("CZK", 203, 2),
    info("HUF", 348, 2),
    info("RON", 946, 2),
    info("AUD", 36, 2),
    info("CAD", 124, 2),
    info("NZD", 554, 2),
    info("SGD", 702, 2),
    info("HKD", 344, 2),
    info("CNY", 156, 2),
    info("INR", 356, 2),
    info("IDR", 360, 2),
    info("THB", 764, 2),
    info("MYR", 458, 2),
    info("PHP", 608, 2),
    info("KRW", 410, 0),
    info("BRL", 986, 2),
    info("MXN", 484, 2),
    info("ZAR", 710, 2),
    info("TRY", 949, 2),
    info("AED", 784, 2),
    info("SAR", 682, 2),
    info("ILS", 376, 2),
    info("QAR", 634, 2),
    info("OMR", 512, 3),
    info("JOD", 400, 3),
    info("TND", 788, 3),
    info("IQD", 368, 3),
    info("LYD", 434, 3),
    info("CLP", 152, 0),
    info("ISK", 352, 0),
    info("UGX", 800, 0),
    info("XOF", 952, 0),
    info("XAF", 950, 0),
    info("TWD", 901, 2),
    info("EGP", 818, 2),
    info("NGN", 566, 2),
    info("KES", 404, 2),
    info("MAD", 504, 2),
    info("UAH", 980, 2),
    info("RSD", 941, 2),
    info("COP", 170, 2),
    info("PEN", 604, 2),
    info("ARS", 32, 2),
    info("PKR", 586, 2),
];

/// An ISO 4217 currency from the built-in table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    numeric: u16,
    exponent: u8,
}

impl Currency {
    /// Field "currency": an uppercase 3-letter ISO 4217 alpha code known to
    /// the built-in table. Lower-case codes are rejected, not normalised, so
    /// that sloppy clients are caught early.
    pub fn parse(code: &str) -> Result<Currency, InvalidField> {
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(InvalidField::new(
                "currency",
                format!("'{code}' is not an uppercase 3-letter ISO 4217 code"),
            ));
        }
        CURRENCIES
            .iter()
            .find(|c| c.code == code)
            .map(|c| Currency {
                code: c.code,
                numeric: c.numeric,
                exponent: c.exponent,
            })
            .ok_or_else(|| InvalidField::new("currency", format!("unknown currency '{code}'")))
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Field "currency" as ISO 8583 field 49 carries it: three digits of
    /// the ISO 4217 numeric code, known to the built-in table.
    pub fn from_numeric(digits: &str) -> Result<Currency, InvalidField> {
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidField::new(
                "currency",
                format!("'{digits}' is not a 3-digit ISO 4217 numeric code"),
            ));
        }
        let numeric: u16 = digits
            .parse()
            .map_err(|_| InvalidField::new("currency", "not a number"))?;
        CURRENCIES
            .iter()
            .find(|c| c.numeric == numeric)
            .map(|c| Currency {
                code: c.code,
                numeric: c.numeric,
                exponent: c.exponent,
            })
            .ok_or_else(|| {
                InvalidField::new("currency", format!("unknown numeric currency '{digits}'"))
            })
    }

    /// The ISO 4217 numeric code (ISO 8583 field 49).
    pub fn numeric(&self) -> u16 {
        self.numeric
    }

    /// Number of minor-unit digits (2 for EUR, 0 for JPY, 3 for KWD).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code)
    }
}

impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Currency::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An amount in integer minor units of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    minor_units: i64,
    currency: Currency,
}

impl Money {
    /// ISO 8583 field 4 is n12, so nothing larger can be sent to an issuer.
    pub const MAX_MINOR_UNITS: i64 = 999_999_999_999;

    /// Any sign, no bounds check: for totals, refunds and arithmetic results.
    pub fn new(minor_units: i64, currency: Currency) -> Money {
        Money {
            minor_units,
            currency,
        }
    }

    /// Field "amount": a transaction amount, strictly positive and
    /// representable in ISO 8583 field 4.
    pub fn positive(minor_units: i64, currency: Currency) -> Result<Money, InvalidField> {
        if minor_units <= 0 {
            return Err(InvalidField::new("amount", "must be greater than zero"));
        }
        if minor_units > Self::MAX_MINOR_UNITS {
            return Err(InvalidField::new(
                "amount",
                format!("must not exceed {} minor units", Self::MAX_MINOR_UNITS),
            ));
        }
        Ok(Money::new(minor_units, currency))
    }

    pub fn minor_units(&self) -> i64 {
        self.minor_units
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// `None` on overflow or currency mismatch: adding EUR to USD is a bug in
    /// the caller, never something to convert implicitly.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        self.minor_units
            .checked_add(other.minor_units)
            .map(|m| Money::new(m, self.currency))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.minor_units < 0 { "-" } else { "" };
        // unsigned_abs so that i64::MIN formats instead of overflowing.
        let abs = self.minor_units.unsigned_abs();
        let exponent = u32::from(self.currency.exponent);
        if exponent == 0 {
            return write!(f, "{} {sign}{abs}", self.currency);
        }
        let divisor = 10u64.pow(exponent);
        let whole = abs / divisor;
        let frac = abs % divisor;
        let width = usize::from(self.currency.exponent);
        write!(f, "{} {sign}{whole}.{frac:0width$}", self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn parses_known_currencies() {
        let eur = cur("EUR");
        assert_eq!((eur.code(), eur.numeric(), eur.exponent()), ("EUR", 978, 2));
        assert_eq!(Currency::from_numeric("978").unwrap(), eur);
        for bad in ["", "97", "9780", "97A", "999", "+78"] {
            assert_eq!(
                Currency::from_numeric(bad).unwrap_err().field,
                "currency",
                "{bad}"
            );
        }
        assert_eq!(cur("USD").numeric(), 840);
        assert_eq!(cur("GBP").numeric(), 826);
        assert_eq!((cur("JPY").numeric(), cur("JPY").exponent()), (392, 0));
        assert_eq!((cur("VND").numeric(), cur("VND").exponent()), (704, 0));
        assert_eq!((cur("KWD").numeric(), cur("KWD").exponent()), (414, 3));
        assert_eq!((cur("BHD").numeric(), cur("BHD").exponent()), (48, 3));
        assert_eq!((cur("IDR").numeric(), cur("IDR").exponent()), (360, 2));
        assert_eq!((cur("KRW").numeric(), cur("KRW").exponent()), (410, 0));
        for code in [
            "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "RON", "AUD", "CAD", "NZD", "SGD",
            "HKD", "CNY", "INR", "THB", "MYR", "PHP", "BRL", "MXN", "ZAR", "TRY", "AED", "SAR",
            "ILS",
        ] {
            assert_eq!(cur(code).code(), code);
            assert_eq!(cur(code).to_string(), code);
        }
    }

    #[test]
    fn table_is_large_and_consistent() {
        assert!(CURRENCIES.len() >= 30);
        for (i, a) in CURRENCIES.iter().enumerate() {
            assert_eq!(a.code.len(), 3);
            assert!(a.exponent <= 3);
            for b in &CURRENCIES[i + 1..] {
                assert_ne!(a.code, b.code);
                assert_ne!(a.numeric, b.numeric);
            }
        }
    }

    #[test]
    fn rejects_bad_currencies_naming_the_code() {
        for bad in ["eur", "Eur", "XXX", "ABC", "", "EU", "EURO", "978", "E1R"] {
            let err = Currency::parse(bad).unwrap_err();
            assert_eq!(err.field, "currency");
            assert!(err.reason.contains(bad), "{err}");
        }
    }

    #[test]
    fn currency_deserializes_from_validated_string() {
        use serde::Deserialize;
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, StrDeserializer};
        let ok: StrDeserializer<'_, Error> = "EUR".into_deserializer();
        assert_eq!(Currency::deserialize(ok).unwrap(), cur("EUR"));
        let bad: StrDeserializer<'_, Error> = "eur".into_deserializer();
        assert!(Currency::deserialize(bad).is_err());
    }

    #[test]
    fn display_by_exponent() {
        assert_eq!(Money::new(1050, cur("EUR")).to_string(), "EUR 10.50");
        assert_eq!(Money::new(5, cur("EUR")).to_string(), "EUR 0.05");
        assert_eq!(Money::new(0, cur("EUR")).to_string(), "EUR 0.00");
        assert_eq!(Money::new(-5, cur("EUR")).to_string(), "EUR -0.05");
        assert_eq!(Money::new(-1050, cur("EUR")).to_string(), "EUR -10.50");
        assert_eq!(Money::new(1050, cur("JPY")).to_string(), "JPY 1050");
        assert_eq!(Money::new(-7, cur("JPY")).to_string(), "JPY -7");
        assert_eq!(Money::new(1050, cur("KWD")).to_string(), "KWD 1.050");
        assert_eq!(Money::new(-1, cur("KWD")).to_string(), "KWD -0.001");
        assert_eq!(
            Money::new(i64::MIN, cur("EUR")).to_string(),
            "EUR -92233720368547758.08"
        );
    }

    #[test]
    fn positive_bounds() {
        let eur = cur("EUR");
        assert_eq!(Money::positive(1, eur).unwrap().minor_units(), 1);
        assert_eq!(
            Money::positive(Money::MAX_MINOR_UNITS, eur)
                .unwrap()
                .minor_units(),
            Money::MAX_MINOR_UNITS
        );
        for bad in [0, -1, i64::MIN, Money::MAX_MINOR_UNITS + 1, i64::MAX] {
            let err = Money::positive(bad, eur).unwrap_err();
            assert_eq!(err.field, "amount");
        }
        assert_eq!(
            Money::positive(0, eur).unwrap_err().reason,
            "must be greater than zero"
        );
    }

    #[test]
    fn checked_add_cases() {
        let eur = cur("EUR");
        let usd = cur("USD");
        assert_eq!(
            Money::new(100, eur).checked_add(Money::new(-30, eur)),
            Some(Money::new(70, eur))
        );
        assert_eq!(Money::new(1, eur).checked_add(Money::new(1, usd)), None);
        assert_eq!(
            Money::new(i64::MAX, eur).checked_add(Money::new(1, eur)),
            None
        );
        assert_eq!(
            Money::new(i64::MIN, eur).checked_add(Money::new(-1, eur)),
            None
        );
        let m = Money::new(42, usd);
        assert_eq!((m.minor_units(), m.currency()), (42, usd));
    }
}
