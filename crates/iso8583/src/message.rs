//! A message: its MTI and the values of its fields, independent of any
//! profile. Unpacking borrows values from the input where the wire form is
//! the value (ASCII text, raw binary) and owns them only where it must
//! decode (BCD digits, hexadecimal), so an ASCII message without binary
//! fields unpacks without allocating.

use std::borrow::Cow;
use std::fmt;

use crate::mti::Mti;

/// The highest field number a message can hold.
pub const MAX_FIELD: u8 = 128;

/// A field's value: text for every kind but binary.
#[derive(Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Text(Cow<'a, str>),
    Binary(Cow<'a, [u8]>),
}

impl Value<'_> {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(text) => Some(text),
            Value::Binary(_) => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Binary(bytes) => Some(bytes),
            Value::Text(_) => None,
        }
    }

    /// Whether the value borrows from the unpacked input.
    pub fn is_borrowed(&self) -> bool {
        matches!(
            self,
            Value::Text(Cow::Borrowed(_)) | Value::Binary(Cow::Borrowed(_))
        )
    }

    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Text(text) => Value::Text(Cow::Owned(text.into_owned())),
            Value::Binary(bytes) => Value::Binary(Cow::Owned(bytes.into_owned())),
        }
    }
}

impl fmt::Debug for Value<'_> {
    /// Shows the value: only [`Message`]'s `Debug` knows which fields hold
    /// card data, so never log a bare `Value` of field 2, 35, 36, 45, 52
    /// or 55.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(text) => write!(f, "{text:?}"),
            Value::Binary(bytes) => {
                f.write_str("0x")?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02X}"))
            }
        }
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(text: &'a str) -> Self {
        Value::Text(Cow::Borrowed(text))
    }
}

impl From<String> for Value<'_> {
    fn from(text: String) -> Self {
        Value::Text(Cow::Owned(text))
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        Value::Binary(Cow::Borrowed(bytes))
    }
}

impl From<Vec<u8>> for Value<'_> {
    fn from(bytes: Vec<u8>) -> Self {
        Value::Binary(Cow::Owned(bytes))
    }
}

/// An ISO 8583 message. Fields are numbered 2–128 (1 is the secondary
/// bitmap, which packing derives from the fields present); values are
/// checked against a profile only when packed, so the errors name the
/// profile's rule.
#[derive(Clone, PartialEq, Eq)]
pub struct Message<'a> {
    mti: Mti,
    // Bit `128 - n` set when field `n` is: iterating the fields present is
    // then a walk over set bits, not over 129 slots.
    present: u128,
    // Indexed by field number; 0 and 1 stay empty. An array rather than a
    // map so unpacking allocates nothing for the container.
    fields: [Option<Value<'a>>; 129],
}

impl<'a> Message<'a> {
    pub fn new(mti: Mti) -> Self {
        Message {
            mti,
            present: 0,
            fields: std::array::from_fn(|_| None),
        }
    }

    pub fn mti(&self) -> Mti {
        self.mti
    }

    pub fn set_mti(&mut self, mti: Mti) {
        self.mti = mti;
    }

    /// Sets field `field` (2–128).
    ///
    /// # Panics
    ///
    /// When `field` is 0, 1 or above 128: a field number is a constant of
    /// the caller's code, so a wrong one is a bug, not bad input.
    pub fn set(&mut self, field: u8, value: impl Into<Value<'a>>) -> &mut Self {
        assert!(
            (2..=MAX_FIELD).contains(&field),
            "ISO 8583 data fields are numbered 2-128, not {field}"
        );
        self.fields[usize::from(field)] = Some(value.into());
        self.present |= bit(field);
        self
    }

    pub fn remove(&mut self, field: u8) -> Option<Value<'a>> {
        let value = self.fields.get_mut(usize::from(field))?.take()?;
        self.present &= !bit(field);
        Some(value)
    }

    pub fn get(&self, field: u8) -> Option<&Value<'a>> {
        self.fields.get(usize::from(field))?.as_ref()
    }

    /// The text of a text field (`None` if absent or binary).
    pub fn text(&self, field: u8) -> Option<&str> {
        self.get(field)?.as_text()
    }

    /// The bytes of a binary field (`None` if absent or text).
    pub fn bytes(&self, field: u8) -> Option<&[u8]> {
        self.get(field)?.as_bytes()
    }

    pub fn has(&self, field: u8) -> bool {
        self.get(field).is_some()
    }

    /// The fields present, in field-number order.
    pub fn fields(&self) -> impl Iterator<Item = (u8, &Value<'a>)> {
        let mut rest = self.present;
        std::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let field = (rest.leading_zeros() + 1) as u8;
            rest &= !bit(field);
            Some((field, self.fields[usize::from(field)].as_ref()?))
        })
    }

    /// The fields present as a 128-bit bitmap, field 1 in the top bit (the
    /// wire's order); bit 1 is never set here.
    pub(crate) fn present(&self) -> u128 {
        self.present
    }

    /// Field 11, the system trace audit number.
    pub fn stan(&self) -> Option<&str> {
        self.text(11)
    }

    /// Field 41, the card acceptor terminal identification.
    pub fn terminal_id(&self) -> Option<&str> {
        self.text(41)
    }

    /// A copy that no longer borrows the input.
    pub fn into_owned(self) -> Message<'static> {
        Message {
            mti: self.mti,
            present: self.present,
            fields: self.fields.map(|v| v.map(Value::into_owned)),
        }
    }
}

fn bit(field: u8) -> u128 {
    1u128 << (128 - u32::from(field))
}

/// Fields whose values are never shown in clear: track 2 (35), track 3
/// (36), track 1 (45), the PIN block (52) and the chip data (55), which
/// carries track 2 equivalent data. Field 2 and field 34 (the extended PAN)
/// are masked to their first six and last four digits.
pub(crate) fn is_secret(field: u8) -> bool {
    matches!(field, 35 | 36 | 45 | 52 | 55)
}

pub(crate) fn is_pan(field: u8) -> bool {
    matches!(field, 2 | 34)
}

/// First six, last four; anything too short to keep ten digits in clear
/// and still hide some is hidden whole.
pub(crate) fn mask_pan(pan: &str) -> String {
    let n = pan.chars().count();
    if n <= 10 {
        return "*".repeat(n);
    }
    pan.chars()
        .enumerate()
        .map(|(i, c)| if i < 6 || i >= n - 4 { c } else { '*' })
        .collect()
}

struct Shown<'v, 'a>(u8, &'v Value<'a>);

impl fmt::Debug for Shown<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Shown(field, value) = *self;
        let len = match value {
            Value::Text(t) => t.len(),
            Value::Binary(b) => b.len(),
        };
        match value {
            _ if is_secret(field) => write!(f, "<redacted, {len} bytes>"),
            Value::Text(pan) if is_pan(field) => write!(f, "{:?}", mask_pan(pan)),
            Value::Binary(_) if is_pan(field) => write!(f, "<redacted, {len} bytes>"),
            value => value.fmt(f),
        }
    }
}

impl fmt::Debug for Message<'_> {
    /// Card data rule: field 2 (and 34) masked to first six and last four,
    /// fields 35, 36, 45, 52 and 55 shown only by their length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        map.entry(&"mti", &self.mti);
        for (n, value) in self.fields() {
            map.entry(&n, &Shown(n, value));
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_the_pan_and_hides_card_data() {
        let mut m = Message::new(Mti::FINANCIAL_REQUEST);
        m.set(2, "4761739001010010")
            .set(4, "000000001000")
            .set(35, "4761739001010010=22122011143804400000")
            .set(36, "011234567890123445=724724000000000****00300XXXX020200099010=********************==1=100000000000000000**")
            .set(45, "B4761739001010010^TEST/CARD^2212")
            .set(52, &[0x12u8, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE, 0xF0][..])
            .set(55, &[0x9Fu8, 0x26, 0x08, 0x47, 0x61, 0x73, 0x90][..]);
        let shown = format!("{m:?}");
        assert!(shown.contains("\"476173******0010\""), "{shown}");
        assert!(shown.contains("\"000000001000\""), "{shown}");
        for secret in [
            "4761739001010010",
            "22122011143804400000",
            "TEST/CARD",
            "123456789ABCDEF0",
            "9F2608",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("35: <redacted, 37 bytes>"), "{shown}");
        assert!(shown.contains("52: <redacted, 8 bytes>"), "{shown}");
        assert!(format!("{m:#?}").contains("476173******0010"));
    }

    #[test]
    fn short_pans_are_hidden_whole() {
        assert_eq!(mask_pan("1234567890"), "**********");
        assert_eq!(mask_pan("12345678901"), "123456*8901");
        assert_eq!(mask_pan(""), "");
    }

    #[test]
    fn fields_iterate_in_order_and_into_owned_keeps_values() {
        let text = String::from("123456");
        let mut m = Message::new(Mti::NETWORK_REQUEST);
        m.set(70, "001").set(11, text.as_str()).set(41, "TERM0001");
        let numbers: Vec<u8> = m.fields().map(|(n, _)| n).collect();
        assert_eq!(numbers, [11, 41, 70]);
        assert!(m.get(11).unwrap().is_borrowed());
        let mut owned = m.clone().into_owned();
        drop(text);
        assert_eq!(owned.stan(), Some("123456"));
        assert_eq!(owned.terminal_id(), Some("TERM0001"));
        assert!(!owned.get(11).unwrap().is_borrowed());
        assert_eq!(owned.remove(1), None);
        assert_eq!(owned.remove(200), None);
        assert_eq!(owned.remove(70), Some(Value::from("001")));
        assert!(!owned.has(70));
    }

    #[test]
    #[should_panic(expected = "numbered 2-128")]
    fn field_one_is_not_settable() {
        Message::new(Mti::NETWORK_REQUEST).set(1, "x");
    }
}
