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

    /// Whether the value is borrowed. A view from [`Message::get`] always
    /// is; [`Message::is_borrowed`] says whether the message's own value
    /// borrows its input.
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
///
/// Values are reached through views ([`Message::get`], [`Message::text`],
/// [`Message::bytes`], [`Message::fields`]) rather than stored as 129
/// [`Value`] slots: an unpacked message records, per field, only where its
/// value lies (ADR 17, "Unpacking records where values are").
#[derive(Clone)]
pub struct Message<'a> {
    mti: Mti,
    // Bit `128 - n` set when field `n` is: iterating the fields present is
    // then a walk over set bits, not over 129 slots.
    present: u128,
    // Same bit order: which present values are bytes (else text) ...
    binary: u128,
    // ... which are a slice of `input` ...
    from_input: u128,
    // ... and which were given to `set`, at `given[spans[n].at]`. A value
    // in neither set lies in `text` or `bytes`.
    from_given: u128,
    // Indexed by field number. Four bytes a slot and no destructor, so
    // creating, moving and dropping a message costs about half a
    // kilobyte's copy, where 129 `Option<Value>` slots cost four and a
    // drop check each.
    spans: [Span; 129],
    // The unpacked bytes the `from_input` spans point into ...
    input: &'a [u8],
    // ... and the same bytes as text when all of them are (every good
    // message of an ASCII profile), so that a text view of them needs no
    // UTF-8 check of its own: one check of the whole input instead of one
    // a read.
    input_text: Option<&'a str>,
    // Values decoded on unpack (BCD digits; hexadecimal bytes) and copied
    // by `into_owned`: one buffer of each for a message, not one
    // allocation a field.
    text: String,
    bytes: Vec<u8>,
    given: Vec<Value<'a>>,
}

/// Where a value lies: `len` bytes at `at` in `input`, `text` or `bytes`,
/// or `given[at]`.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) at: u16,
    pub(crate) len: u16,
}

/// A value's bytes as stored: text as its ASCII bytes.
pub(crate) struct Raw<'m> {
    pub(crate) bytes: &'m [u8],
    pub(crate) binary: bool,
}

impl<'a> Message<'a> {
    pub fn new(mti: Mti) -> Self {
        Message::unpacked(mti, &[])
    }

    /// An empty message whose values will be spans of `input`.
    pub(crate) fn unpacked(mti: Mti, input: &'a [u8]) -> Self {
        Message {
            mti,
            present: 0,
            binary: 0,
            from_input: 0,
            from_given: 0,
            spans: [Span::default(); 129],
            input,
            input_text: None,
            text: String::new(),
            bytes: Vec::new(),
            given: Vec::new(),
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
        let value = value.into();
        let b = bit(field);
        if matches!(value, Value::Binary(_)) {
            self.binary |= b;
        } else {
            self.binary &= !b;
        }
        let slot = &mut self.spans[usize::from(field)];
        if self.from_given & b != 0 {
            self.given[usize::from(slot.at)] = value;
        } else {
            if self.given.capacity() == 0 {
                // A message has ten to twenty fields: one allocation, not
                // the three doubling from four would make.
                self.given.reserve(16);
            }
            *slot = Span {
                at: index(self.given.len()),
                len: 0,
            };
            self.given.push(value);
            self.from_given |= b;
            self.from_input &= !b;
        }
        self.present |= b;
        self
    }

    /// Records where field `field` lies in the input; the caller checked
    /// its bytes against the field's kind, and marks it with `put_input`.
    #[inline]
    pub(crate) fn put_span(&mut self, field: u8, span: Span) {
        self.spans[usize::from(field)] = span;
    }

    /// Marks the fields `input` (bits) as present spans of the input, the
    /// `binary` ones among them as bytes.
    pub(crate) fn put_input(&mut self, input: u128, binary: u128) {
        self.present |= input;
        self.from_input |= input;
        self.binary |= binary;
    }

    /// The buffer unpacking decodes BCD digits into (ASCII only),
    /// allocated once for the most a message of `input`'s length can
    /// decode to: two digits a byte.
    pub(crate) fn decoded_text(&mut self) -> &mut String {
        if self.text.capacity() == 0 {
            self.text.reserve(2 * self.input.len());
        }
        &mut self.text
    }

    /// The buffer unpacking decodes hexadecimal into, allocated once:
    /// one byte for two characters.
    pub(crate) fn decoded_bytes(&mut self) -> &mut Vec<u8> {
        if self.bytes.capacity() == 0 {
            self.bytes.reserve(self.input.len() / 2);
        }
        &mut self.bytes
    }

    /// Records field `field` as `span` of the decoded text or bytes.
    pub(crate) fn put_decoded(&mut self, field: u8, span: Span, binary: bool) {
        let b = bit(field);
        self.spans[usize::from(field)] = span;
        self.present |= b;
        if binary {
            self.binary |= b;
        }
    }

    /// Called once every field of the input has been read and checked.
    pub(crate) fn unpacked_all(&mut self) {
        self.input_text = std::str::from_utf8(self.input).ok();
    }

    pub fn remove(&mut self, field: u8) -> Option<Value<'a>> {
        let b = bit_of(field).filter(|b| self.present & b != 0)?;
        let value = if self.from_given & b != 0 {
            let at = self.given_index(field);
            let value = self.given.swap_remove(at);
            // The last given value moved into the hole: repoint its field.
            let moved = index(self.given.len());
            if at < self.given.len() {
                let mut rest = self.from_given;
                while rest != 0 {
                    let other = first_field(rest);
                    rest &= !bit(other);
                    if self.spans[usize::from(other)].at == moved {
                        self.spans[usize::from(other)].at = index(at);
                        break;
                    }
                }
            }
            value
        } else if self.from_input & b != 0 {
            match self.binary & b != 0 {
                true => Value::Binary(Cow::Borrowed(self.input_bytes(field))),
                false => Value::Text(Cow::Borrowed(self.input_text(field))),
            }
        } else {
            match self.binary & b != 0 {
                true => Value::Binary(Cow::Owned(self.stored_bytes(field, b).to_vec())),
                false => Value::Text(Cow::Owned(self.stored_text(field, b).to_owned())),
            }
        };
        self.present &= !b;
        self.binary &= !b;
        self.from_input &= !b;
        self.from_given &= !b;
        Some(value)
    }

    /// A view of field `field`'s value: borrowed from the message (and,
    /// through it, from the unpacked input or the value given to `set`).
    /// [`Value::into_owned`] keeps it past the message.
    #[inline]
    pub fn get(&self, field: u8) -> Option<Value<'_>> {
        let b = bit_of(field).filter(|b| self.present & b != 0)?;
        Some(self.view(field, b))
    }

    /// The view of present field `field`, whose bit is `b`.
    #[inline]
    fn view(&self, field: u8, b: u128) -> Value<'_> {
        if self.from_given & b != 0 {
            return match &self.given[self.given_index(field)] {
                Value::Text(text) => Value::Text(Cow::Borrowed(text)),
                Value::Binary(bytes) => Value::Binary(Cow::Borrowed(bytes)),
            };
        }
        match self.binary & b != 0 {
            true => Value::Binary(Cow::Borrowed(self.stored_bytes(field, b))),
            false => Value::Text(Cow::Borrowed(self.stored_text(field, b))),
        }
    }

    /// The text of a text field (`None` if absent or binary).
    #[inline]
    pub fn text(&self, field: u8) -> Option<&str> {
        let b = bit_of(field).filter(|b| self.present & !self.binary & b != 0)?;
        if self.from_given & b != 0 {
            return self.given[self.given_index(field)].as_text();
        }
        Some(self.stored_text(field, b))
    }

    /// The bytes of a binary field (`None` if absent or text).
    #[inline]
    pub fn bytes(&self, field: u8) -> Option<&[u8]> {
        let b = bit_of(field).filter(|b| self.present & self.binary & b != 0)?;
        if self.from_given & b != 0 {
            return self.given[self.given_index(field)].as_bytes();
        }
        Some(self.stored_bytes(field, b))
    }

    pub fn has(&self, field: u8) -> bool {
        bit_of(field).is_some_and(|b| self.present & b != 0)
    }

    /// Whether field `field`'s value borrows what it was made from (the
    /// unpacked input, or a borrowed value given to `set`), so that
    /// [`Message::into_owned`] would copy it; `false` when absent.
    pub fn is_borrowed(&self, field: u8) -> bool {
        let Some(b) = bit_of(field).filter(|b| self.present & b != 0) else {
            return false;
        };
        if self.from_given & b != 0 {
            return self.given[self.given_index(field)].is_borrowed();
        }
        self.from_input & b != 0
    }

    /// The fields present, in field-number order.
    #[inline]
    pub fn fields(&self) -> impl Iterator<Item = (u8, Value<'_>)> {
        let mut rest = self.present;
        std::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let field = first_field(rest);
            let b = bit(field);
            rest &= !b;
            Some((field, self.view(field, b)))
        })
    }

    /// The fields present as a 128-bit bitmap, field 1 in the top bit (the
    /// wire's order); bit 1 is never set here.
    pub(crate) fn present(&self) -> u128 {
        self.present
    }

    /// A present field's bytes as stored, text or binary, without the
    /// UTF-8 view text needs: what packing writes.
    #[inline]
    pub(crate) fn raw(&self, field: u8) -> Option<Raw<'_>> {
        let b = bit_of(field).filter(|b| self.present & b != 0)?;
        let binary = self.binary & b != 0;
        let bytes = if self.from_given & b != 0 {
            match &self.given[self.given_index(field)] {
                Value::Text(text) => text.as_bytes(),
                Value::Binary(bytes) => bytes,
            }
        } else if binary {
            self.stored_bytes(field, b)
        } else {
            self.stored_text(field, b).as_bytes()
        };
        Some(Raw { bytes, binary })
    }

    #[inline]
    fn given_index(&self, field: u8) -> usize {
        usize::from(self.spans[usize::from(field)].at)
    }

    /// The text of a present text field that is not a given value. Every
    /// such span holds ASCII (checked against its kind on unpack, decoded
    /// BCD digits, or copies of those), so it is a whole `str` of the
    /// input or of `text`; the fallbacks are unreachable and keep this
    /// free of panics and unsafe code.
    #[inline]
    fn stored_text(&self, field: u8, b: u128) -> &str {
        let range = self.spans[usize::from(field)].range();
        if self.from_input & b == 0 {
            return self.text.get(range).unwrap_or("");
        }
        match self.input_text {
            Some(all) => all.get(range).unwrap_or(""),
            None => self.input_text(field),
        }
    }

    #[inline]
    fn stored_bytes(&self, field: u8, b: u128) -> &[u8] {
        let range = self.spans[usize::from(field)].range();
        let from = match self.from_input & b != 0 {
            true => self.input,
            false => &self.bytes,
        };
        from.get(range).unwrap_or_default()
    }

    /// A text span of the input, checked on its own: the input is not
    /// all text (a binary bitmap or binary fields), or not all read.
    fn input_text(&self, field: u8) -> &'a str {
        std::str::from_utf8(self.input_bytes(field)).unwrap_or("")
    }

    fn input_bytes(&self, field: u8) -> &'a [u8] {
        let input: &'a [u8] = self.input;
        input
            .get(self.spans[usize::from(field)].range())
            .unwrap_or_default()
    }

    /// Field 11, the system trace audit number.
    pub fn stan(&self) -> Option<&str> {
        self.text(11)
    }

    /// Field 41, the card acceptor terminal identification.
    pub fn terminal_id(&self) -> Option<&str> {
        self.text(41)
    }

    /// A copy that no longer borrows the input: the values borrowed from
    /// it are copied into the message's own text and bytes buffers.
    pub fn into_owned(self) -> Message<'static> {
        let mut text = self.text;
        let mut bytes = self.bytes;
        let mut spans = self.spans;
        let mut rest = self.from_input;
        if rest != 0 {
            text.reserve(self.input.len());
        }
        while rest != 0 {
            let field = first_field(rest);
            let b = bit(field);
            rest &= !b;
            let span = &mut spans[usize::from(field)];
            let range = span.range();
            if self.binary & b != 0 {
                span.at = index(bytes.len());
                bytes.extend_from_slice(self.input.get(range).unwrap_or_default());
            } else {
                span.at = index(text.len());
                let value = match self.input_text {
                    Some(all) => all.get(range),
                    None => std::str::from_utf8(self.input.get(range).unwrap_or_default()).ok(),
                };
                text.push_str(value.unwrap_or(""));
            }
        }
        Message {
            mti: self.mti,
            present: self.present,
            binary: self.binary,
            from_input: 0,
            from_given: self.from_given,
            spans,
            input: &[],
            input_text: None,
            text,
            bytes,
            given: self.given.into_iter().map(Value::into_owned).collect(),
        }
    }
}

impl PartialEq for Message<'_> {
    /// Equal when the MTI and every field's value are: where a value lies
    /// (input, decoded, given) is not part of the message.
    fn eq(&self, other: &Self) -> bool {
        if self.mti != other.mti || self.present != other.present || self.binary != other.binary {
            return false;
        }
        let mut rest = self.present;
        while rest != 0 {
            let field = first_field(rest);
            rest &= !bit(field);
            let same = match (self.raw(field), other.raw(field)) {
                (Some(a), Some(b)) => a.bytes == b.bytes,
                _ => false,
            };
            if !same {
                return false;
            }
        }
        true
    }
}

impl Eq for Message<'_> {}

impl Span {
    fn range(self) -> std::ops::Range<usize> {
        usize::from(self.at)..usize::from(self.at) + usize::from(self.len)
    }
}

/// The longest message [`Profile::unpack`](crate::Profile::unpack) reads,
/// whatever the profile's `max_len`: a message records where its values
/// lie in 16 bits, and what it decodes or copies never exceeds twice its
/// input (two BCD digits a byte), so 32,767 bytes of input keep every
/// position below 65,536. An ISO 8583 message is a few hundred bytes; a
/// listener's frames are bounded at 4,096 by default.
pub const MAX_UNPACK_LEN: usize = (u16::MAX as usize) / 2;

/// A position or length as a span holds it: within bounds by
/// [`MAX_UNPACK_LEN`] (positions in the input and the owned buffer) or by
/// the 127 fields a message can hold (indices into the given values).
pub(crate) fn index(n: usize) -> u16 {
    debug_assert!(n <= usize::from(u16::MAX), "a span position beyond 16 bits");
    n as u16
}

/// The lowest-numbered field of a non-empty bitmap.
#[inline]
pub(crate) fn first_field(bits: u128) -> u8 {
    (bits.leading_zeros() + 1) as u8
}

#[inline]
fn bit_of(field: u8) -> Option<u128> {
    (1..=MAX_FIELD).contains(&field).then(|| bit(field))
}

#[inline]
pub(crate) fn bit(field: u8) -> u128 {
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
            map.entry(&n, &Shown(n, &value));
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
        assert!(m.is_borrowed(11));
        let mut owned = m.clone().into_owned();
        drop(text);
        assert_eq!(owned.stan(), Some("123456"));
        assert_eq!(owned.terminal_id(), Some("TERM0001"));
        assert!(!owned.is_borrowed(11));
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
