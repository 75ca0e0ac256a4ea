//! Payout files: a settlement window's payouts rendered as a CSV report and
//! as an ISO 20022 pain.001 credit transfer initiation for the bank.
//!
//! Pure string rendering: amounts stay integer minor units until they are
//! written as decimal strings with the currency's exponent, never through
//! floating point. Length limits of the formats (35 characters for ids, 140
//! for names) are the caller's to respect: nothing is truncated silently.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use time::{Date, OffsetDateTime};

use crate::money::Currency;
use crate::settlement::Payout;

/// One credit transfer to a merchant.
#[derive(Debug, Clone, Copy)]
pub struct PayoutInstruction<'a> {
    /// At most 35 characters (pain.001 `EndToEndId`), e.g. "W000042-EUR".
    pub end_to_end_id: &'a str,
    pub merchant_id: &'a str,
    /// Free text; XML-escaped when rendered.
    pub merchant_name: &'a str,
    pub account: PayoutAccount<'a>,
    pub window_id: &'a str,
    pub payout: &'a Payout,
}

/// Where a merchant is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutAccount<'a> {
    /// An IBAN, without spaces.
    Iban(&'a str),
    /// The acquirer's own merchant account id (pain.001 `<Othr><Id>`).
    MerchantAccount(&'a str),
}

/// The payer side and identity of one payout file.
#[derive(Debug, Clone, Copy)]
pub struct PayoutRun<'a> {
    /// At most 35 characters (pain.001 `MsgId`), unique per file.
    pub message_id: &'a str,
    pub created_at: OffsetDateTime,
    pub execution_date: Date,
    pub debtor_name: &'a str,
    pub debtor_iban: &'a str,
    pub debtor_bic: &'a str,
}

/// The CSV header of [`render_csv`].
pub const PAYOUT_CSV_HEADER: &str = "end_to_end_id,merchant_id,window_id,currency,\
    transaction_count,gross,fee,net,refund_count,refunds";

/// CSV with header
/// `end_to_end_id,merchant_id,window_id,currency,transaction_count,gross,fee,net,refund_count,refunds`,
/// one row per instruction in input order (zero payouts included: the CSV
/// is the report, not the transfer). Amounts are integer minor units. RFC
/// 4180: lines end in CRLF, and a field containing `,`, `"`, CR or LF is
/// quoted with inner quotes doubled.
pub fn render_csv(instructions: &[PayoutInstruction<'_>]) -> String {
    let mut out = String::with_capacity(64 * (instructions.len() + 1));
    out.push_str(PAYOUT_CSV_HEADER);
    out.push_str("\r\n");
    for i in instructions {
        let p = i.payout;
        let fields = [
            csv_field(i.end_to_end_id),
            csv_field(i.merchant_id),
            csv_field(i.window_id),
            p.currency.code().to_owned(),
            p.transaction_count.to_string(),
            p.gross_minor_units.to_string(),
            p.fee_minor_units.to_string(),
            p.net_minor_units.to_string(),
            p.refund_count.to_string(),
            p.refund_minor_units.to_string(),
        ];
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The XML namespace of pain.001.001.09.
pub const PAIN001_NAMESPACE: &str = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09";

/// ISO 20022 pain.001.001.09 (CustomerCreditTransferInitiationV09).
///
/// One `<PmtInf>` per currency, ordered by currency code, with the
/// instructions of that currency in input order. `<NbOfTxs>` and
/// `<CtrlSum>` appear in `<GrpHdr>` (all currencies: the control sum adds
/// the amounts irrespective of currency, as the standard defines it) and in
/// each `<PmtInf>`. Each instruction becomes a `<CdtTrfTxInf>` with
/// `<PmtId><EndToEndId>`, `<Amt><InstdAmt Ccy="EUR">12.34</InstdAmt>` (the
/// net, as a decimal string from minor units and the currency exponent: 0
/// decimals for JPY, 3 for KWD), `<Cdtr><Nm>`, `<CdtrAcct><Id><IBAN>` or
/// `<Othr><Id>`, and `<RmtInf><Ustrd>settlement window …</Ustrd>`.
///
/// Instructions with net <= 0 are skipped: a zero payout is not a transfer.
/// With nothing left the document has no `<PmtInf>` and `<NbOfTxs>0`,
/// which a bank rejects: callers should not submit it.
///
/// `<PmtInfId>` is `{message_id}-{currency}`, keeping only the last 31
/// characters of the message id so that it fits in 35. Every text value is
/// XML-escaped; control characters that XML 1.0 cannot carry are replaced
/// by spaces.
pub fn render_pain001(run: &PayoutRun<'_>, instructions: &[PayoutInstruction<'_>]) -> String {
    let mut groups: BTreeMap<&'static str, Vec<&PayoutInstruction<'_>>> = BTreeMap::new();
    for i in instructions.iter().filter(|i| i.payout.net_minor_units > 0) {
        groups.entry(i.payout.currency.code()).or_default().push(i);
    }
    let all: Vec<&PayoutInstruction<'_>> = groups.values().flatten().copied().collect();

    let mut x = String::with_capacity(1024 + 512 * all.len());
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(x, "<Document xmlns=\"{PAIN001_NAMESPACE}\">");
    x.push_str("  <CstmrCdtTrfInitn>\n");
    x.push_str("    <GrpHdr>\n");
    element(&mut x, 6, "MsgId", run.message_id);
    element(&mut x, 6, "CreDtTm", &iso_date_time(run.created_at));
    element(&mut x, 6, "NbOfTxs", &all.len().to_string());
    element(&mut x, 6, "CtrlSum", &control_sum(&all));
    x.push_str("      <InitgPty>\n");
    element(&mut x, 8, "Nm", run.debtor_name);
    x.push_str("      </InitgPty>\n");
    x.push_str("    </GrpHdr>\n");

    for (code, group) in &groups {
        x.push_str("    <PmtInf>\n");
        element(
            &mut x,
            6,
            "PmtInfId",
            &format!("{}-{code}", last_chars(run.message_id, 31)),
        );
        element(&mut x, 6, "PmtMtd", "TRF");
        element(&mut x, 6, "NbOfTxs", &group.len().to_string());
        element(&mut x, 6, "CtrlSum", &control_sum(group));
        x.push_str("      <ReqdExctnDt>\n");
        element(&mut x, 8, "Dt", &iso_date(run.execution_date));
        x.push_str("      </ReqdExctnDt>\n");
        x.push_str("      <Dbtr>\n");
        element(&mut x, 8, "Nm", run.debtor_name);
        x.push_str("      </Dbtr>\n");
        x.push_str("      <DbtrAcct>\n        <Id>\n");
        element(&mut x, 10, "IBAN", run.debtor_iban);
        x.push_str("        </Id>\n      </DbtrAcct>\n");
        x.push_str("      <DbtrAgt>\n        <FinInstnId>\n");
        element(&mut x, 10, "BICFI", run.debtor_bic);
        x.push_str("        </FinInstnId>\n      </DbtrAgt>\n");
        for i in group {
            transaction(&mut x, i);
        }
        x.push_str("    </PmtInf>\n");
    }
    x.push_str("  </CstmrCdtTrfInitn>\n");
    x.push_str("</Document>\n");
    x
}

fn transaction(x: &mut String, i: &PayoutInstruction<'_>) {
    let p = i.payout;
    x.push_str("      <CdtTrfTxInf>\n");
    x.push_str("        <PmtId>\n");
    element(x, 10, "EndToEndId", i.end_to_end_id);
    x.push_str("        </PmtId>\n");
    x.push_str("        <Amt>\n");
    let _ = writeln!(
        x,
        "          <InstdAmt Ccy=\"{}\">{}</InstdAmt>",
        escape(p.currency.code()),
        format_decimal(p.net_minor_units, p.currency)
    );
    x.push_str("        </Amt>\n");
    x.push_str("        <Cdtr>\n");
    element(x, 10, "Nm", i.merchant_name);
    x.push_str("        </Cdtr>\n");
    x.push_str("        <CdtrAcct>\n          <Id>\n");
    match i.account {
        PayoutAccount::Iban(iban) => element(x, 12, "IBAN", iban),
        PayoutAccount::MerchantAccount(id) => {
            x.push_str("            <Othr>\n");
            element(x, 14, "Id", id);
            x.push_str("            </Othr>\n");
        }
    }
    x.push_str("          </Id>\n        </CdtrAcct>\n");
    x.push_str("        <RmtInf>\n");
    let remittance = format!(
        "settlement window {} merchant {} transactions {} gross {} fee {}",
        i.window_id,
        i.merchant_id,
        p.transaction_count,
        format_decimal(p.gross_minor_units, p.currency),
        format_decimal(p.fee_minor_units, p.currency),
    );
    element(x, 10, "Ustrd", &remittance);
    x.push_str("        </RmtInf>\n");
    x.push_str("      </CdtTrfTxInf>\n");
}

/// Appends `<tag>escaped text</tag>` on its own line.
fn element(x: &mut String, indent: usize, tag: &str, text: &str) {
    let _ = writeln!(x, "{:indent$}<{tag}>{}</{tag}>", "", escape(text));
}

/// Escapes the five XML special characters; characters XML 1.0 cannot
/// carry at all (control characters other than tab, LF and CR) become
/// spaces.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn last_chars(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    match s.char_indices().nth(count.saturating_sub(n)) {
        Some((start, _)) if count > n => &s[start..],
        _ => s,
    }
}

/// The sum of the instructions' net amounts, irrespective of currency,
/// written with the largest exponent among them.
fn control_sum(instructions: &[&PayoutInstruction<'_>]) -> String {
    let exponent = instructions
        .iter()
        .map(|i| u32::from(i.payout.currency.exponent()))
        .max()
        .unwrap_or(0);
    let sum: i128 = instructions
        .iter()
        .map(|i| {
            let scale = 10i128.pow(exponent - u32::from(i.payout.currency.exponent()));
            i128::from(i.payout.net_minor_units) * scale
        })
        .sum();
    decimal(sum, exponent)
}

/// Decimal string of minor units in a currency, by integer arithmetic:
/// `format_decimal(1234, EUR) == "12.34"`, `(5, EUR) == "0.05"`,
/// `(100, JPY) == "100"`, `(1234, KWD) == "1.234"`. Negative amounts get a
/// leading `-`.
pub fn format_decimal(minor_units: i64, currency: Currency) -> String {
    decimal(i128::from(minor_units), u32::from(currency.exponent()))
}

fn decimal(value: i128, exponent: u32) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{abs}");
    }
    let divisor = 10u128.pow(exponent);
    let width = exponent as usize;
    format!("{sign}{}.{:0width$}", abs / divisor, abs % divisor)
}

/// "YYYY-MM-DD", written by hand so that it cannot fail.
fn iso_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// ISO 8601 date-time with the run's own offset ("Z" for UTC), to the
/// second.
fn iso_date_time(t: OffsetDateTime) -> String {
    let offset = t.offset();
    let zone = if offset.is_utc() {
        "Z".to_owned()
    } else {
        let (h, m, _) = offset.as_hms();
        let sign = if offset.is_negative() { '-' } else { '+' };
        format!("{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
    };
    format!(
        "{}T{:02}:{:02}:{:02}{zone}",
        iso_date(t.date()),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Money;
    use time::macros::{date, datetime};

    fn cur(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn payout(code: &str, count: u64, gross: i64, fee: i64) -> Payout {
        Payout {
            currency: cur(code),
            transaction_count: count,
            gross_minor_units: gross,
            fee_minor_units: fee,
            net_minor_units: gross - fee,
            refund_count: 0,
            refund_minor_units: 0,
        }
    }

    fn instruction<'a>(id: &'a str, name: &'a str, p: &'a Payout) -> PayoutInstruction<'a> {
        PayoutInstruction {
            end_to_end_id: id,
            merchant_id: "M000001",
            merchant_name: name,
            account: PayoutAccount::Iban("DE89370400440532013000"),
            window_id: "W000042",
            payout: p,
        }
    }

    fn run() -> PayoutRun<'static> {
        PayoutRun {
            message_id: "PAYOUT-W000042",
            created_at: datetime!(2026-11-24 18:30:05 UTC),
            execution_date: date!(2026 - 11 - 25),
            debtor_name: "Acquirer & Co",
            debtor_iban: "NL91ABNA0417164300",
            debtor_bic: "ABNANL2A",
        }
    }

    /// Every opening tag is closed, in order, and no `&` starts anything
    /// but an entity: enough to catch broken rendering without an XML crate.
    fn assert_well_formed(xml: &str) {
        let body = xml
            .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
            .expect("declaration");
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = body;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unterminated tag") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "nested '<' in {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "closing {name}");
            } else {
                let name = tag.split(' ').next().unwrap();
                assert!(!name.is_empty() && !tag.ends_with('/'));
                stack.push(name);
            }
            let text = &rest[end + 1..];
            let text = &text[..text.find('<').unwrap_or(text.len())];
            assert!(!text.contains('>'), "raw '>' in {text}");
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        for (i, _) in xml.match_indices('&') {
            let entity = &xml[i..xml[i..].find(';').map_or(xml.len(), |e| i + e + 1)];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity),
                "bad entity {entity}"
            );
        }
    }

    fn between<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        xml.match_indices(&open)
            .map(|(i, _)| {
                let start = i + open.len();
                let end = xml[start..].find(&close).unwrap() + start;
                &xml[start..end]
            })
            .collect()
    }

    #[test]
    fn format_decimal_table() {
        for (minor, code, expected) in [
            (1234, "EUR", "12.34"),
            (5, "EUR", "0.05"),
            (0, "EUR", "0.00"),
            (100, "EUR", "1.00"),
            (100, "JPY", "100"),
            (0, "JPY", "0"),
            (1234, "KWD", "1.234"),
            (7, "KWD", "0.007"),
            (Money::MAX_MINOR_UNITS, "EUR", "9999999999.99"),
            (i64::MAX, "EUR", "92233720368547758.07"),
        ] {
            assert_eq!(format_decimal(minor, cur(code)), expected, "{minor} {code}");
        }
    }

    #[test]
    fn both_files_pay_the_net_after_refunds() {
        let refunded = Payout {
            refund_count: 1,
            refund_minor_units: 300,
            net_minor_units: 694,
            ..payout("EUR", 3, 1000, 6)
        };
        let i = instruction("W000042-EUR", "Shop", &refunded);
        let csv = render_csv(&[i]);
        assert!(csv.contains(",EUR,3,1000,6,694,1,300\r\n"), "{csv}");
        let xml = render_pain001(&run(), &[i]);
        assert!(
            xml.contains("<InstdAmt Ccy=\"EUR\">6.94</InstdAmt>"),
            "{xml}"
        );
    }

    #[test]
    fn csv_header_rows_and_quoting() {
        let a = payout("EUR", 3, 1000, 6);
        let b = payout("JPY", 0, 0, 0);
        let mut quoted = instruction("W000042-EUR", "ignored", &a);
        quoted.merchant_id = "M,1";
        quoted.window_id = "W \"42\"\nnext";
        let csv = render_csv(&[quoted, instruction("W000042-JPY", "x", &b)]);
        assert_eq!(
            csv,
            "end_to_end_id,merchant_id,window_id,currency,transaction_count,gross,fee,net,\
             refund_count,refunds\r\n\
             W000042-EUR,\"M,1\",\"W \"\"42\"\"\nnext\",EUR,3,1000,6,994,0,0\r\n\
             W000042-JPY,M000001,W000042,JPY,0,0,0,0,0,0\r\n"
        );
        assert_eq!(render_csv(&[]), format!("{PAYOUT_CSV_HEADER}\r\n"));
    }

    #[test]
    fn pain001_groups_by_currency_with_counts_and_sums() {
        let eur1 = payout("EUR", 3, 1241, 7);
        let usd = payout("USD", 1, 500, 3);
        let eur2 = payout("EUR", 1, 100, 1);
        let jpy = payout("JPY", 2, 1000, 6);
        let instructions = [
            instruction("W000042-EUR-1", "Alpha", &eur1),
            instruction("W000042-USD", "Beta", &usd),
            instruction("W000042-EUR-2", "Gamma", &eur2),
            instruction("W000042-JPY", "Delta", &jpy),
        ];
        let xml = render_pain001(&run(), &instructions);
        assert_well_formed(&xml);
        assert!(
            xml.contains("<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pain.001.001.09\">")
        );
        assert!(xml.contains("<CreDtTm>2026-11-24T18:30:05Z</CreDtTm>"));
        assert!(xml.contains("<Dt>2026-11-25</Dt>"));
        // GrpHdr then one PmtInf per currency, ordered by code.
        assert_eq!(between(&xml, "NbOfTxs"), ["4", "2", "1", "1"]);
        // 12.34 + 0.99 (EUR) + 994 (JPY) + 4.97 (USD).
        assert_eq!(
            between(&xml, "CtrlSum"),
            ["1012.30", "13.33", "994", "4.97"]
        );
        assert_eq!(
            between(&xml, "PmtInfId"),
            [
                "PAYOUT-W000042-EUR",
                "PAYOUT-W000042-JPY",
                "PAYOUT-W000042-USD"
            ]
        );
        assert_eq!(
            between(&xml, "EndToEndId"),
            [
                "W000042-EUR-1",
                "W000042-EUR-2",
                "W000042-JPY",
                "W000042-USD"
            ]
        );
        assert!(xml.contains("<InstdAmt Ccy=\"EUR\">12.34</InstdAmt>"));
        assert!(xml.contains("<InstdAmt Ccy=\"EUR\">0.99</InstdAmt>"));
        assert!(xml.contains("<InstdAmt Ccy=\"JPY\">994</InstdAmt>"));
        assert!(xml.contains("<InstdAmt Ccy=\"USD\">4.97</InstdAmt>"));
        assert!(xml.contains(
            "<Ustrd>settlement window W000042 merchant M000001 transactions 3 gross 12.41 fee 0.07</Ustrd>"
        ));
        assert_eq!(between(&xml, "BICFI"), ["ABNANL2A"; 3]);
        assert_eq!(between(&xml, "PmtMtd"), ["TRF"; 3]);
    }

    #[test]
    fn pain001_escapes_and_accounts() {
        let p = payout("KWD", 1, 1234, 0);
        let mut other = instruction("E2E-2", "Plain", &p);
        other.account = PayoutAccount::MerchantAccount("ACC<1>");
        let r = PayoutRun {
            debtor_name: "Bank \"B\" 'n' C",
            ..run()
        };
        let xml = render_pain001(&r, &[instruction("E2E-1", "A&B <Shop>\u{7}", &p), other]);
        assert_well_formed(&xml);
        assert!(xml.contains("<Nm>A&amp;B &lt;Shop&gt; </Nm>"));
        assert!(!xml.contains("A&B"));
        assert!(xml.contains("<Nm>Bank &quot;B&quot; &apos;n&apos; C</Nm>"));
        assert!(xml.contains("<IBAN>DE89370400440532013000</IBAN>"));
        assert!(xml.contains("<Othr>\n              <Id>ACC&lt;1&gt;</Id>\n            </Othr>"));
        assert_eq!(between(&xml, "CtrlSum"), ["2.468", "2.468"]);
    }

    #[test]
    fn pain001_skips_zero_payouts() {
        let zero = payout("EUR", 0, 0, 0);
        let all_fee = payout("EUR", 1, 5, 5);
        let paid = payout("USD", 1, 1000, 6);
        let xml = render_pain001(
            &run(),
            &[
                instruction("ZERO", "Z", &zero),
                instruction("FEE", "F", &all_fee),
                instruction("PAID", "P", &paid),
            ],
        );
        assert_well_formed(&xml);
        assert_eq!(between(&xml, "EndToEndId"), ["PAID"]);
        assert_eq!(between(&xml, "NbOfTxs"), ["1", "1"]);
        assert_eq!(xml.matches("<PmtInf>").count(), 1);
        assert!(!xml.contains("Ccy=\"EUR\""));

        let empty = render_pain001(&run(), &[instruction("ZERO", "Z", &zero)]);
        assert_well_formed(&empty);
        assert_eq!(between(&empty, "NbOfTxs"), ["0"]);
        assert_eq!(between(&empty, "CtrlSum"), ["0"]);
        assert!(!empty.contains("<PmtInf>"));
    }

    #[test]
    fn pain001_ids_and_offsets() {
        let p = payout("EUR", 1, 100, 1);
        let long = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345678"; // 35
        let r = PayoutRun {
            message_id: long,
            created_at: datetime!(2026-11-24 18:30:05 -05:30),
            ..run()
        };
        let xml = render_pain001(&r, &[instruction("E", "N", &p)]);
        assert_eq!(between(&xml, "MsgId"), [long]);
        let pmt_inf_id = between(&xml, "PmtInfId");
        assert_eq!(pmt_inf_id, ["EFGHIJKLMNOPQRSTUVWXYZ012345678-EUR"]);
        assert_eq!(pmt_inf_id[0].len(), 35);
        assert!(xml.contains("<CreDtTm>2026-11-24T18:30:05-05:30</CreDtTm>"));
        assert_eq!(last_chars("ééé", 2), "éé");
        assert_eq!(last_chars("ab", 31), "ab");
    }
}
