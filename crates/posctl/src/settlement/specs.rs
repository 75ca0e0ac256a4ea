//! Parsing of the `--totals` and `--sale` values. Identifiers, dates and
//! currencies are switch-core's types (their rules, their reasons); the
//! numbers only have to be integers, because judging their values is the
//! switch's job.

use switch_core::{ApprovalCode, Currency, InvalidField, LocalDate, Stan};
use switch_proto::v1::{CurrencyTotals, Money, UploadedTransaction};

use crate::today_utc;

/// Shape of a `--totals` value.
pub const TOTALS_SHAPE: &str = "CUR:SALES_COUNT:SALES_MINOR:REVERSALS_COUNT:REVERSALS_MINOR";

/// Shape of a `--sale` value.
pub const SALE_SHAPE: &str = "STAN:DATE:AMOUNT:CURRENCY[:APPROVAL]";

/// One field of a spec through core's parser: `FIELD "value": core's reason`.
fn field<T>(
    name: &str,
    text: &str,
    parse: impl FnOnce(&str) -> Result<T, InvalidField>,
) -> Result<T, String> {
    parse(text).map_err(|e| format!("{name} {text:?}: {}", e.reason))
}

/// A currency as core knows it; lower case is accepted as a convenience of
/// the command line (`eur`), not a rule.
fn parse_currency(name: &str, text: &str) -> Result<String, String> {
    field(name, &text.to_ascii_uppercase(), Currency::parse).map(|c| c.code().to_owned())
}

fn parse_integer(name: &str, text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .map_err(|_| format!("{name} {text:?} is not an integer (minor units, no decimal point)"))
}

/// Parses a `--totals` value, `CUR:SALES_COUNT:SALES_MINOR:REVERSALS_COUNT:REVERSALS_MINOR`.
/// The numbers only have to be integers: the switch judges their values.
pub fn parse_totals_spec(spec: &str) -> Result<CurrencyTotals, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [
        currency,
        sales_count,
        sales_minor,
        reversals_count,
        reversals_minor,
    ] = parts[..]
    else {
        return Err(format!(
            "expected {TOTALS_SHAPE} (5 fields separated by ':'), got {} field(s)",
            parts.len()
        ));
    };
    Ok(CurrencyTotals {
        currency: parse_currency("CUR", currency)?,
        sales_count: parse_integer("SALES_COUNT", sales_count)?,
        sales_minor_units: parse_integer("SALES_MINOR", sales_minor)?,
        reversals_count: parse_integer("REVERSALS_COUNT", reversals_count)?,
        reversals_minor_units: parse_integer("REVERSALS_MINOR", reversals_minor)?,
    })
}

/// Value parser of `--cutoff`: kept as given once it parses as RFC 3339
/// (a timestamp, which core has no type for: the service parses it).
pub fn parse_cutoff(text: &str) -> Result<String, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|_| text.to_owned())
        .map_err(|_| format!("{text:?} is not RFC 3339, e.g. 2025-01-31T18:00:00Z"))
}

/// Parses a `--sale` value; `today` is today's UTC date.
pub fn parse_sale_spec(spec: &str) -> Result<UploadedTransaction, String> {
    parse_sale_spec_on(spec, today_utc())
}

/// [`parse_sale_spec`] with `today` given.
pub fn parse_sale_spec_on(spec: &str, today: LocalDate) -> Result<UploadedTransaction, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (stan, date, amount, currency, approval) = match parts[..] {
        [stan, date, amount, currency] => (stan, date, amount, currency, ""),
        [stan, date, amount, currency, approval] => (stan, date, amount, currency, approval),
        _ => {
            return Err(format!(
                "expected {SALE_SHAPE} (4 or 5 fields separated by ':'), got {} field(s)",
                parts.len()
            ));
        }
    };
    let stan = field("STAN", stan, Stan::parse)?;
    let local_date = if date.eq_ignore_ascii_case("today") {
        today
    } else {
        field("DATE", date, LocalDate::parse).map_err(|e| format!("{e} (or `today`)"))?
    };
    let approval_code = if approval.is_empty() {
        String::new()
    } else {
        field("APPROVAL", approval, ApprovalCode::parse)?.into()
    };
    Ok(UploadedTransaction {
        stan: stan.into(),
        local_date: local_date.to_string(),
        amount: Some(Money {
            minor_units: parse_integer("AMOUNT", amount)?,
            currency: parse_currency("CURRENCY", currency)?,
        }),
        approval_code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settlement::test_support::{money, totals};

    fn day(text: &str) -> LocalDate {
        LocalDate::parse(text).unwrap()
    }

    #[test]
    fn parses_totals_specs() {
        assert_eq!(
            parse_totals_spec("EUR:3:3000:0:0"),
            Ok(totals("EUR", (3, 3000), (0, 0)))
        );
        assert_eq!(
            parse_totals_spec("usd:1:500:2:250"),
            Ok(totals("USD", (1, 500), (2, 250)))
        );
        // Values are the switch's to judge: a negative count is sent as is.
        assert_eq!(
            parse_totals_spec("EUR:-1:0:0:0"),
            Ok(totals("EUR", (-1, 0), (0, 0)))
        );
    }

    #[test]
    fn rejects_bad_totals_specs_clearly() {
        assert_eq!(
            parse_totals_spec("EUR:3:3000:0").unwrap_err(),
            "expected CUR:SALES_COUNT:SALES_MINOR:REVERSALS_COUNT:REVERSALS_MINOR \
             (5 fields separated by ':'), got 4 field(s)"
        );
        assert!(
            parse_totals_spec("EUR:3:3000:0:0:0")
                .unwrap_err()
                .ends_with("got 6 field(s)")
        );
        assert_eq!(
            parse_totals_spec("EURO:3:3000:0:0").unwrap_err(),
            "CUR \"EURO\": 'EURO' is not an uppercase 3-letter ISO 4217 code"
        );
        // Core's table decides which codes are currencies.
        assert_eq!(
            parse_totals_spec("XYZ:1:1:0:0").unwrap_err(),
            "CUR \"XYZ\": unknown currency 'XYZ'"
        );
        assert_eq!(
            parse_totals_spec("EUR:three:3000:0:0").unwrap_err(),
            "SALES_COUNT \"three\" is not an integer (minor units, no decimal point)"
        );
        assert!(
            parse_totals_spec("EUR:3:30.00:0:0")
                .unwrap_err()
                .starts_with("SALES_MINOR \"30.00\"")
        );
        assert!(
            parse_totals_spec("EUR:3:3000::0")
                .unwrap_err()
                .starts_with("REVERSALS_COUNT \"\"")
        );
        assert!(
            parse_totals_spec("EUR:3:3000:0:x")
                .unwrap_err()
                .starts_with("REVERSALS_MINOR \"x\"")
        );
        assert!(parse_totals_spec("").is_err());
    }

    #[test]
    fn parses_sale_specs() {
        assert_eq!(
            parse_sale_spec_on("000123:2025-01-31:1050:EUR", day("2025-02-01")),
            Ok(UploadedTransaction {
                stan: "000123".to_owned(),
                local_date: "2025-01-31".to_owned(),
                amount: money(1050, "EUR"),
                approval_code: String::new(),
            })
        );
        assert_eq!(
            parse_sale_spec_on("000124:today:500:usd:A1B2C3", day("2025-02-01")),
            Ok(UploadedTransaction {
                stan: "000124".to_owned(),
                local_date: "2025-02-01".to_owned(),
                amount: money(500, "USD"),
                approval_code: "A1B2C3".to_owned(),
            })
        );
        // An empty approval field is no approval code.
        let sale = parse_sale_spec_on("000125:TODAY:1:EUR:", day("2025-02-01")).unwrap();
        assert_eq!(sale.approval_code, "");
        assert_eq!(sale.local_date, "2025-02-01");
        // `today` resolves to a real date.
        let sale = parse_sale_spec("000126:today:1:EUR").unwrap();
        assert_eq!(sale.local_date, today_utc().to_string());
    }

    #[test]
    fn rejects_bad_sale_specs_clearly() {
        let bad = |spec: &str| parse_sale_spec_on(spec, day("2025-02-01")).unwrap_err();
        assert_eq!(
            bad("000123:today:1050"),
            "expected STAN:DATE:AMOUNT:CURRENCY[:APPROVAL] (4 or 5 fields separated by ':'), \
             got 3 field(s)"
        );
        assert!(bad("000123:today:1050:EUR:A1:x").ends_with("got 6 field(s)"));
        assert_eq!(
            bad("123:today:1050:EUR"),
            "STAN \"123\": must be exactly 6 ASCII digits, got '123'"
        );
        assert_eq!(
            bad("00012a:today:1050:EUR"),
            "STAN \"00012a\": must be exactly 6 ASCII digits, got '00012a'"
        );
        for date in ["2025-02-30", "yesterday", "2025-1-31"] {
            let error = bad(&format!("000123:{date}:1050:EUR"));
            assert!(
                error.starts_with(&format!("DATE {date:?}: '{date}' is not YYYY-MM-DD"))
                    && error.ends_with("(or `today`)"),
                "{error}"
            );
        }
        assert_eq!(
            bad("000123:today:1050:EUR:A1"),
            "APPROVAL \"A1\": must be exactly 6 ASCII alphanumeric characters, got 'A1'"
        );
        assert_eq!(
            bad("000123:today:10.50:EUR"),
            "AMOUNT \"10.50\" is not an integer (minor units, no decimal point)"
        );
        assert_eq!(
            bad("000123:today:1050:E1R"),
            "CURRENCY \"E1R\": 'E1R' is not an uppercase 3-letter ISO 4217 code"
        );
    }

    #[test]
    fn validates_cutoffs() {
        assert_eq!(
            parse_cutoff("2025-01-31T18:00:00Z"),
            Ok("2025-01-31T18:00:00Z".to_owned())
        );
        assert_eq!(
            parse_cutoff("2025-01-31T18:00:00+01:00"),
            Ok("2025-01-31T18:00:00+01:00".to_owned())
        );
        assert_eq!(
            parse_cutoff("2025-01-31").unwrap_err(),
            "\"2025-01-31\" is not RFC 3339, e.g. 2025-01-31T18:00:00Z"
        );
    }
}
