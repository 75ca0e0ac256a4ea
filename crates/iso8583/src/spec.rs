//! The vocabulary of a field layout: what a field holds ([`Kind`]), how
//! long it is ([`Length`]), how its data and its length prefix are written
//! ([`Encoding`], [`PrefixEncoding`]) and which side an odd BCD digit count
//! or a short value is padded on ([`Align`]). A profile's layout is a
//! [`Spec`]: one optional [`FieldSpec`] per field number, so adding or
//! changing a field is an edit to a table, never new code.

/// One entry per field number `0..=128`; `None` means "not defined by this
/// profile", and a bitmap announcing such a field is an error. Entries 0
/// (the MTI) and 1 (the secondary bitmap) are always `None`: the profile
/// reads those itself.
pub type Spec = [Option<FieldSpec>; 129];

/// The character set of a field's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `n`: decimal digits `0`–`9`.
    N,
    /// `an`: letters, digits and the space ISO 8583 pads them with.
    An,
    /// `ans`: printable ASCII, `0x20`–`0x7E`.
    Ans,
    /// `z`: track 2/3 code set of ISO 7813/4909, the sixteen characters
    /// `0`–`9 : ; < = > ?` (`0x30`–`0x3F`), so that each is one BCD nibble
    /// (`=`, the field separator, is nibble `D`).
    Z,
    /// `x+n`: `C` (credit) or `D` (debit) followed by digits (fee amounts).
    Xn,
    /// `b`: binary data; its length counts bytes.
    B,
}

impl Kind {
    /// Whether `byte` may appear at position `index` of a value of this kind.
    pub(crate) const fn allows(self, index: usize, byte: u8) -> bool {
        match self {
            Kind::N => byte.is_ascii_digit(),
            Kind::An => byte.is_ascii_alphanumeric() || byte == b' ',
            Kind::Ans => byte >= 0x20 && byte <= 0x7E,
            Kind::Z => byte >= b'0' && byte <= b'?',
            Kind::Xn if index == 0 => byte == b'C' || byte == b'D',
            Kind::Xn => byte.is_ascii_digit(),
            Kind::B => true,
        }
    }

    /// Whether every byte of `data` is allowed (`allows` at each
    /// position), in one pass without a branch a byte: with the kind fixed
    /// outside the loop, `allows` is a range check or two, which the
    /// compiler turns into vector compares on longer values.
    #[inline]
    pub(crate) fn all_allowed(self, data: &[u8]) -> bool {
        fn every(data: &[u8], allowed: impl Fn(u8) -> bool) -> bool {
            data.iter().fold(true, |all, &b| all & allowed(b))
        }
        match self {
            Kind::B => true,
            Kind::N => every(data, |b| Kind::N.allows(1, b)),
            Kind::An => every(data, |b| Kind::An.allows(1, b)),
            Kind::Ans => every(data, |b| Kind::Ans.allows(1, b)),
            Kind::Z => every(data, |b| Kind::Z.allows(1, b)),
            Kind::Xn => match data.split_first() {
                None => true,
                Some((&sign, digits)) => {
                    Kind::Xn.allows(0, sign) & every(digits, |b| Kind::Xn.allows(1, b))
                }
            },
        }
    }

    /// The ISO 8583 abbreviation, for messages.
    pub fn abbreviation(self) -> &'static str {
        match self {
            Kind::N => "n",
            Kind::An => "an",
            Kind::Ans => "ans",
            Kind::Z => "z",
            Kind::Xn => "x+n",
            Kind::B => "b",
        }
    }
}

/// How many units a field holds: characters or digits for text kinds,
/// bytes for [`Kind::B`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// Exactly this many units, no prefix.
    Fixed(u16),
    /// Up to this many units after a two-digit length (`LLVAR`).
    LlVar(u16),
    /// Up to this many units after a three-digit length (`LLLVAR`).
    LllVar(u16),
}

impl Length {
    /// The most units the field may hold (the exact count when fixed).
    pub fn max(self) -> u16 {
        match self {
            Length::Fixed(n) | Length::LlVar(n) | Length::LllVar(n) => n,
        }
    }

    /// Digits in the length prefix (0 when fixed).
    pub(crate) fn prefix_digits(self) -> usize {
        match self {
            Length::Fixed(_) => 0,
            Length::LlVar(_) => 2,
            Length::LllVar(_) => 3,
        }
    }
}

/// How a field's data is written on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// One ASCII byte per character (text kinds).
    Ascii,
    /// Two digits per byte, packed BCD ([`Kind::N`], [`Kind::Z`]).
    Bcd,
    /// Bytes as they are ([`Kind::B`]).
    Raw,
    /// Each byte as two hexadecimal ASCII characters ([`Kind::B`] in an
    /// ASCII profile). A length prefix then counts characters, as
    /// pyiso8583 and ASCII hosts do: twice the bytes.
    Hex,
}

/// How a variable field's length prefix is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixEncoding {
    /// Two or three ASCII digits.
    Ascii,
    /// BCD: one byte for `LL` (`0x00`–`0x99`), two for `LLL`
    /// (`0x0000`–`0x0999`).
    Bcd,
}

/// Which side of the value its padding goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Value first, padding after: an odd BCD digit count gets a trailing
    /// pad nibble; a short text value gets trailing spaces.
    Left,
    /// Padding first, value after: an odd BCD digit count gets a leading
    /// zero nibble; a short number gets leading zeros.
    Right,
}

/// The layout of one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    /// The field's name in its specification, for people.
    pub name: &'static str,
    pub kind: Kind,
    pub length: Length,
    pub encoding: Encoding,
    /// Ignored for fixed fields.
    pub prefix: PrefixEncoding,
    pub align: Align,
}

impl FieldSpec {
    /// A fixed field with the alignment its kind usually has: numbers to
    /// the right, everything else to the left.
    pub const fn fixed(name: &'static str, kind: Kind, len: u16, encoding: Encoding) -> Self {
        let align = match kind {
            Kind::N => Align::Right,
            _ => Align::Left,
        };
        FieldSpec {
            name,
            kind,
            length: Length::Fixed(len),
            encoding,
            prefix: PrefixEncoding::Ascii,
            align,
        }
    }

    /// A variable field: data left-aligned (a trailing pad nibble when BCD).
    pub const fn var(
        name: &'static str,
        kind: Kind,
        length: Length,
        encoding: Encoding,
        prefix: PrefixEncoding,
    ) -> Self {
        FieldSpec {
            name,
            kind,
            length,
            encoding,
            prefix,
            align: Align::Left,
        }
    }

    /// The same field with another alignment.
    pub const fn aligned(mut self, align: Align) -> Self {
        self.align = align;
        self
    }

    /// Whether the kind and the encoding go together (a table test checks
    /// every profile's entries).
    pub fn is_consistent(&self) -> bool {
        let encoding_fits = match self.encoding {
            Encoding::Ascii => !matches!(self.kind, Kind::B),
            Encoding::Bcd => matches!(self.kind, Kind::N | Kind::Z),
            Encoding::Raw | Encoding::Hex => matches!(self.kind, Kind::B),
        };
        let max = usize::from(self.length.max());
        let prefix_fits = match self.length {
            Length::Fixed(n) => n > 0,
            Length::LlVar(_) => self.prefix_units(max) <= 99,
            Length::LllVar(_) => self.prefix_units(max) <= 999,
        };
        encoding_fits && prefix_fits
    }

    /// The number a length prefix carries for a value of `units` units.
    pub(crate) fn prefix_units(&self, units: usize) -> usize {
        match self.encoding {
            Encoding::Hex => units * 2,
            _ => units,
        }
    }

    /// Bytes on the wire for `units` units of data (without the prefix).
    pub(crate) fn data_bytes(&self, units: usize) -> usize {
        match self.encoding {
            Encoding::Ascii | Encoding::Raw => units,
            Encoding::Bcd => units.div_ceil(2),
            Encoding::Hex => units * 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass check and the per-byte rule agree on every byte, at
    /// the first position and after it, for every kind.
    #[test]
    fn the_one_pass_check_is_the_per_byte_rule() {
        for kind in [Kind::N, Kind::An, Kind::Ans, Kind::Z, Kind::Xn, Kind::B] {
            for byte in 0..=255u8 {
                for value in [vec![byte], vec![b'C', byte], vec![b'D', b'1', byte]] {
                    let expected = value.iter().enumerate().all(|(i, &b)| kind.allows(i, b));
                    assert_eq!(kind.all_allowed(&value), expected, "{kind:?} {value:?}");
                }
            }
        }
        assert!(Kind::Xn.all_allowed(b""));
    }
}
