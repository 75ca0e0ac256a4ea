//! A profile is a field table plus the encodings of the MTI and bitmap and
//! the framing; the codec here is the one interpreter of every table.

use crate::error::{Error, Part, Partial, UnpackError};
use crate::frame::{Envelope, Frame, Framing, Header, LengthHeader, Tpdu};
use crate::message::{MAX_UNPACK_LEN, Message, Raw, Span, bit, first_field, index};
use crate::mti::Mti;
use crate::spec::{Align, Encoding, FieldSpec, Kind, Length, PrefixEncoding, Spec};

/// How the bitmaps are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitmapEncoding {
    /// Sixteen hexadecimal ASCII characters per bitmap (upper case when
    /// packing; either case when unpacking).
    Hex,
    /// Eight bytes per bitmap.
    Binary,
}

/// The largest message a profile accepts unless told otherwise: a sale is a
/// few hundred bytes, and whatever a listener buffers for a frame is
/// bounded by this.
pub const DEFAULT_MAX_LEN: usize = 4096;

/// A wire layout: which fields exist and how each is written, how the MTI
/// and bitmaps are written, and how a frame is delimited on a stream.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    pub name: &'static str,
    pub spec: &'static Spec,
    /// [`Encoding::Ascii`] (four bytes) or [`Encoding::Bcd`] (two bytes).
    pub mti: Encoding,
    pub bitmap: BitmapEncoding,
    pub framing: Framing,
    /// The largest message accepted or produced, in bytes: the message
    /// itself for [`Profile::unpack`] and [`Profile::pack`], everything
    /// after the length header (TPDU and header included) for frames.
    /// Unpacking reads at most [`MAX_UNPACK_LEN`](crate::MAX_UNPACK_LEN)
    /// bytes of message whatever this says.
    pub max_len: usize,
}

impl Profile {
    /// The same profile with another maximum message size.
    pub const fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// The same field layout with another framing.
    pub const fn with_framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// The layout of field `field`, if the profile defines it.
    pub fn field(&self, field: u8) -> Option<&'static FieldSpec> {
        self.spec.get(usize::from(field))?.as_ref()
    }

    fn mti_len(&self) -> usize {
        match self.mti {
            Encoding::Bcd => 2,
            _ => 4,
        }
    }

    fn bitmap_len(&self) -> usize {
        match self.bitmap {
            BitmapEncoding::Hex => 16,
            BitmapEncoding::Binary => 8,
        }
    }

    /// The smallest message: an MTI and an empty primary bitmap.
    pub fn min_message_len(&self) -> usize {
        self.mti_len() + self.bitmap_len()
    }

    /// Unpacks a message (no framing). Values borrow from `body` where the
    /// wire form is the value. Error offsets count from `body[0]`.
    pub fn unpack<'a>(&self, body: &'a [u8]) -> Result<Message<'a>, UnpackError> {
        self.unpack_at(body, 0, Envelope::default())
    }

    /// Packs a message (no framing).
    pub fn pack(&self, message: &Message<'_>) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(256);
        self.pack_into(message, &mut out)?;
        Ok(out)
    }

    /// Packs a message after whatever `out` already holds; error offsets
    /// count from where the message starts. On error `out` is left as it
    /// was.
    pub fn pack_into(&self, message: &Message<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        let result = self.pack_body(message, out, start);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// How long the frame starting with `head` is, length header included,
    /// once enough of it is there to tell: `Ok(None)` means "read more".
    /// A listener reads this many bytes, then calls
    /// [`Profile::unpack_frame`]. A declared length beyond
    /// [`Profile::max_len`] is an error before anything is buffered.
    pub fn frame_len(&self, head: &[u8]) -> Result<Option<usize>, Error> {
        let header = self.framing.length;
        let Some(bytes) = head.get(..header.size()) else {
            return Ok(None);
        };
        let declared = match header {
            LengthHeader::Binary2 => usize::from(u16::from_be_bytes([bytes[0], bytes[1]])),
            LengthHeader::Ascii4 => ascii_number(bytes, 0, Part::LengthHeader)?,
        };
        let min = self.framing.envelope_len() + self.min_message_len();
        if declared > self.max_len {
            return Err(Error::Oversize {
                len: declared,
                max: self.max_len,
            });
        }
        if declared < min {
            return Err(Error::FrameTooShort { declared, min });
        }
        Ok(Some(header.size() + declared))
    }

    /// Unpacks one whole frame: length header, envelope, message. Error
    /// offsets count from `frame[0]`.
    pub fn unpack_frame<'a>(&self, frame: &'a [u8]) -> Result<Frame<'a>, UnpackError> {
        let Some(total) = self.frame_len(frame)? else {
            return Err(Error::Truncated {
                part: Part::LengthHeader,
                offset: 0,
                needed: self.framing.length.size(),
                available: frame.len(),
            }
            .into());
        };
        let after_header = self.framing.length.size();
        if total != frame.len() {
            return Err(Error::FrameLength {
                declared: total - after_header,
                actual: frame.len() - after_header,
            }
            .into());
        }
        let mut pos = after_header;
        let mut envelope = Envelope::default();
        if self.framing.tpdu {
            let tpdu = &frame[pos..pos + Tpdu::LEN];
            if tpdu[0] != Tpdu::ID {
                return Err(Error::BadTpdu { offset: pos }.into());
            }
            envelope.tpdu = Some(Tpdu {
                destination: [tpdu[1], tpdu[2]],
                source: [tpdu[3], tpdu[4]],
            });
            pos += Tpdu::LEN;
        }
        if self.framing.header {
            let mut header = [0u8; Header::LEN];
            header.copy_from_slice(&frame[pos..pos + Header::LEN]);
            envelope.header = Some(Header(header));
            pos += Header::LEN;
        }
        let message = self.unpack_at(&frame[pos..], pos, envelope)?;
        Ok(Frame { envelope, message })
    }

    /// Packs one whole frame. The envelope must carry what the framing has
    /// (for a response, [`Envelope::response`] of the request's). Error
    /// offsets count from the message's first byte, after the envelope.
    pub fn pack_frame(&self, envelope: &Envelope, message: &Message<'_>) -> Result<Vec<u8>, Error> {
        let header_len = self.framing.length.size();
        let mut out = Vec::with_capacity(256);
        out.resize(header_len, 0);
        if self.framing.tpdu {
            let tpdu = envelope
                .tpdu
                .ok_or(Error::MissingEnvelope { part: Part::Tpdu })?;
            out.extend_from_slice(&tpdu.to_bytes());
        }
        if self.framing.header {
            let header = envelope
                .header
                .ok_or(Error::MissingEnvelope { part: Part::Header })?;
            out.extend_from_slice(&header.0);
        }
        let body_start = out.len();
        self.pack_body(message, &mut out, body_start)?;
        let declared = out.len() - header_len;
        if declared > self.max_len || declared > self.framing.length.max() {
            return Err(Error::Oversize {
                len: declared,
                max: self.max_len.min(self.framing.length.max()),
            });
        }
        match self.framing.length {
            LengthHeader::Binary2 => {
                let len = u16::try_from(declared).unwrap_or(u16::MAX);
                out[..2].copy_from_slice(&len.to_be_bytes());
            }
            LengthHeader::Ascii4 => {
                out[..4].copy_from_slice(format!("{declared:04}").as_bytes());
            }
        }
        Ok(out)
    }

    /// `value` padded to field `field`'s fixed length by its kind's rule:
    /// numbers with leading zeros, text with trailing spaces. An error if
    /// the field is not a fixed text field or the value is too long.
    pub fn pad_value(&self, field: u8, value: &str) -> Result<String, Error> {
        let part = Part::Field(field);
        let spec = self
            .field(field)
            .ok_or(Error::UndefinedField { field, offset: 0 })?;
        let (Length::Fixed(len), false) = (spec.length, spec.kind == Kind::B) else {
            return Err(Error::WrongValueType {
                part,
                offset: 0,
                kind: spec.kind.abbreviation(),
            });
        };
        let len = usize::from(len);
        if value.len() > len {
            return Err(Error::WrongLength {
                part,
                offset: 0,
                len: value.len(),
                expected: len,
            });
        }
        Ok(match spec.kind {
            Kind::N => format!("{value:0>len$}"),
            _ => format!("{value:<len$}"),
        })
    }

    fn unpack_at<'a>(
        &self,
        body: &'a [u8],
        base: usize,
        envelope: Envelope,
    ) -> Result<Message<'a>, UnpackError> {
        let max = self.max_len.min(MAX_UNPACK_LEN);
        if body.len() > max {
            return Err(Error::Oversize {
                len: body.len(),
                max,
            }
            .into());
        }
        let mut r = Reader {
            buf: body,
            pos: 0,
            base,
        };
        let mti = self.read_mti(&mut r)?;
        let mut message = Message::unpacked(mti, body);
        let first_error = match self.read_bitmaps(&mut r) {
            Ok(bitmap) => self.read_fields(&bitmap, &mut r, &mut message),
            Err(error) => Some(error),
        };
        match first_error {
            None => {
                message.unpacked_all();
                Ok(message)
            }
            Some(error) => Err(UnpackError {
                error,
                // Owned copies only here, so a good message costs none.
                partial: Some(Partial {
                    envelope,
                    mti,
                    stan: message.stan().map(str::to_owned),
                    terminal_id: message.terminal_id().map(str::to_owned),
                }),
            }),
        }
    }

    /// Reads every field the bitmap announces into `message` and returns
    /// the first error. A field whose length was readable is skipped
    /// rather than ending the read, and the fields that decoded are kept,
    /// so fields 11 and 41 after a malformed field still reach the partial
    /// read.
    fn read_fields<'a>(
        &self,
        bitmap: &Bitmap,
        r: &mut Reader<'a>,
        message: &mut Message<'a>,
    ) -> Option<Error> {
        let mut first_error = None;
        // The fields read as spans of the input, and which of those are
        // binary: kept here and given to the message once, after the loop.
        let mut input = 0u128;
        let mut binary = 0u128;
        // Bit 1 announces the secondary bitmap, already read.
        let mut rest = bitmap.bits & !bit(1);
        let unreadable = loop {
            if rest == 0 {
                break None;
            }
            let field = first_field(rest);
            let b = bit(field);
            rest &= !b;
            let Some(spec) = self.field(field) else {
                break Some(Error::UndefinedField {
                    field,
                    offset: r.base + bitmap.offset_of(field),
                });
            };
            match read_field(spec, field, r, message) {
                Ok(Some(span)) => {
                    message.put_span(field, span);
                    input |= b;
                    if spec.kind == Kind::B {
                        binary |= b;
                    }
                }
                Ok(None) => {}
                Err(FieldError::Content(error)) => {
                    first_error.get_or_insert(error);
                }
                Err(FieldError::Structure(error)) => break Some(error),
            }
        };
        message.put_input(input, binary);
        if let Some(error) = unreadable {
            return first_error.or(Some(error));
        }
        if first_error.is_none() && r.pos != r.buf.len() {
            first_error = Some(Error::TrailingBytes {
                offset: r.offset(),
                count: r.buf.len() - r.pos,
            });
        }
        first_error
    }

    fn read_mti(&self, r: &mut Reader<'_>) -> Result<Mti, Error> {
        let offset = r.offset();
        let bytes = r.take(self.mti_len(), Part::Mti)?;
        let digits = match self.mti {
            Encoding::Bcd => {
                let mut digits = [0u8; 4];
                for (i, d) in digits.iter_mut().enumerate() {
                    let nibble = nibble(bytes, i);
                    if nibble > 9 {
                        return Err(Error::BadMti { offset });
                    }
                    *d = b'0' + nibble;
                }
                digits
            }
            _ => [bytes[0], bytes[1], bytes[2], bytes[3]],
        };
        Mti::from_digits(digits).ok_or(Error::BadMti { offset })
    }

    fn read_bitmaps(&self, r: &mut Reader<'_>) -> Result<Bitmap, Error> {
        let primary_at = r.pos;
        let primary = self.read_bitmap(r)?;
        let mut bitmap = Bitmap {
            bits: u128::from(primary) << 64,
            primary_at,
            secondary_at: 0,
            hex: self.bitmap == BitmapEncoding::Hex,
        };
        if bitmap.has(1) {
            bitmap.secondary_at = r.pos;
            bitmap.bits |= u128::from(self.read_bitmap(r)?);
        }
        Ok(bitmap)
    }

    fn read_bitmap(&self, r: &mut Reader<'_>) -> Result<u64, Error> {
        let offset = r.offset();
        let bytes = r.take(self.bitmap_len(), Part::Bitmap)?;
        match self.bitmap {
            BitmapEncoding::Binary => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(bytes);
                Ok(u64::from_be_bytes(raw))
            }
            BitmapEncoding::Hex => {
                // Sixteen table lookups and no branch; where the bad
                // character is, only when there is one.
                let (bits, bad) = bytes.iter().fold((0u64, 0u8), |(bits, bad), &c| {
                    let v = HEX_VALUES[usize::from(c)];
                    ((bits << 4) | u64::from(v & 0x0F), bad | v)
                });
                if bad & NOT_HEX != 0 {
                    let i = bytes.iter().position(|&c| hex_value(c).is_none());
                    return Err(Error::BadBitmap {
                        offset: offset + i.unwrap_or(0),
                    });
                }
                Ok(bits)
            }
        }
    }

    fn pack_body(
        &self,
        message: &Message<'_>,
        out: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), Error> {
        let digits = message.mti().digits();
        match self.mti {
            Encoding::Bcd => out.extend_from_slice(&[
                ((digits[0] - b'0') << 4) | (digits[1] - b'0'),
                ((digits[2] - b'0') << 4) | (digits[3] - b'0'),
            ]),
            _ => out.extend_from_slice(&digits),
        }
        let mut bits = message.present();
        if bits & u128::from(u64::MAX) != 0 {
            bits |= bit(1);
        }
        let bitmap_at = out.len() - start;
        self.write_bitmap((bits >> 64) as u64, out);
        if bits & bit(1) != 0 {
            self.write_bitmap(bits as u64, out);
        }
        let mut rest = bits & !bit(1);
        while rest != 0 {
            let field = first_field(rest);
            rest &= !bit(field);
            let written = match (self.field(field), message.raw(field)) {
                (Some(spec), Some(raw)) => write_field(spec, field, raw, out, start),
                _ => Err(Error::UndefinedField {
                    field,
                    offset: bitmap_at,
                }),
            };
            if let Err(error) = written {
                // A field the profile does not define is the first thing
                // to say, wherever it is: look for one only now, so a
                // good message pays for one pass over its fields.
                return Err(self
                    .undefined_field(message.present(), bitmap_at)
                    .unwrap_or(error));
            }
        }
        let len = out.len() - start;
        if len > self.max_len {
            return Err(Error::Oversize {
                len,
                max: self.max_len,
            });
        }
        Ok(())
    }

    fn undefined_field(&self, present: u128, offset: usize) -> Option<Error> {
        let mut rest = present;
        while rest != 0 {
            let field = first_field(rest);
            rest &= !bit(field);
            if self.field(field).is_none() {
                return Some(Error::UndefinedField { field, offset });
            }
        }
        None
    }

    fn write_bitmap(&self, bits: u64, out: &mut Vec<u8>) {
        match self.bitmap {
            BitmapEncoding::Binary => out.extend_from_slice(&bits.to_be_bytes()),
            BitmapEncoding::Hex => {
                let mut text = [0u8; 16];
                for (i, c) in text.iter_mut().enumerate() {
                    *c = HEX_DIGITS[((bits >> (60 - 4 * i)) & 0x0F) as usize];
                }
                out.extend_from_slice(&text);
            }
        }
    }
}

/// Which fields the bitmaps announce, and where each bit was read (for
/// an error's offset).
struct Bitmap {
    bits: u128,
    primary_at: usize,
    secondary_at: usize,
    hex: bool,
}

impl Bitmap {
    fn has(&self, field: u8) -> bool {
        (self.bits >> (128 - u32::from(field))) & 1 == 1
    }

    fn offset_of(&self, field: u8) -> usize {
        let (start, index) = if field <= 64 {
            (self.primary_at, usize::from(field - 1))
        } else {
            (self.secondary_at, usize::from(field - 65))
        };
        start + if self.hex { index / 4 } else { index / 8 }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Added to positions in errors: where `buf` starts in what the caller
    /// gave us.
    base: usize,
}

impl<'a> Reader<'a> {
    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn take(&mut self, n: usize, part: Part) -> Result<&'a [u8], Error> {
        let available = self.buf.len() - self.pos;
        if n > available {
            return Err(Error::Truncated {
                part,
                offset: self.offset(),
                needed: n,
                available,
            });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }
}

enum FieldError {
    /// The field's extent is known and was skipped: reading can go on.
    Content(Error),
    /// The field's extent is unknown: nothing after it can be read.
    Structure(Error),
}

/// Reads and checks one field: its span in the input, or `None` when its
/// value was decoded into the message (and recorded there).
fn read_field<'a>(
    spec: &FieldSpec,
    field: u8,
    r: &mut Reader<'a>,
    message: &mut Message<'a>,
) -> Result<Option<Span>, FieldError> {
    let part = Part::Field(field);
    let units = match spec.length {
        Length::Fixed(n) => usize::from(n),
        length => {
            let offset = r.offset();
            let digits = length.prefix_digits();
            let declared = match spec.prefix {
                PrefixEncoding::Ascii => {
                    let bytes = r.take(digits, part).map_err(FieldError::Structure)?;
                    ascii_number(bytes, offset, part).map_err(FieldError::Structure)?
                }
                PrefixEncoding::Bcd => {
                    let bytes = r
                        .take(digits.div_ceil(2), part)
                        .map_err(FieldError::Structure)?;
                    bcd_number(bytes, offset, part).map_err(FieldError::Structure)?
                }
            };
            let max = spec.prefix_units(usize::from(length.max()));
            if declared > max {
                return Err(FieldError::Structure(Error::TooLong {
                    part,
                    offset,
                    len: declared,
                    max,
                }));
            }
            if spec.encoding == Encoding::Hex {
                if declared % 2 != 0 {
                    return Err(FieldError::Structure(Error::WrongLength {
                        part,
                        offset,
                        len: declared,
                        expected: declared + 1,
                    }));
                }
                declared / 2
            } else {
                declared
            }
        }
    };
    let offset = r.offset();
    let at = r.pos;
    // Text and raw bytes, most fields, are their own value: one test for
    // both (a binary kind allows every byte).
    if matches!(spec.encoding, Encoding::Ascii | Encoding::Raw) {
        let data = r.take(units, part).map_err(FieldError::Structure)?;
        check_text(spec.kind, part, data, |i| offset + i).map_err(FieldError::Content)?;
        return Ok(Some(Span {
            at: index(at),
            len: index(data.len()),
        }));
    }
    let data = r
        .take(spec.data_bytes(units), part)
        .map_err(FieldError::Structure)?;
    let binary = spec.kind == Kind::B;
    match spec.encoding {
        Encoding::Ascii | Encoding::Raw => {}
        Encoding::Hex => {
            let bytes = message.decoded_bytes();
            let start = bytes.len();
            if let Err(error) = decode_hex(part, data, offset, bytes) {
                bytes.truncate(start);
                return Err(FieldError::Content(error));
            }
            let span = Span {
                at: index(start),
                len: index(bytes.len() - start),
            };
            message.put_decoded(field, span, binary);
        }
        Encoding::Bcd => {
            let text = message.decoded_text();
            let start = text.len();
            if let Err(error) = decode_bcd(spec, part, data, units, offset, text) {
                text.truncate(start);
                return Err(FieldError::Content(error));
            }
            let span = Span {
                at: index(start),
                len: index(text.len() - start),
            };
            message.put_decoded(field, span, binary);
        }
    }
    Ok(None)
}

/// Hexadecimal text (pairs of characters, either case) to bytes.
fn decode_hex(part: Part, data: &[u8], offset: usize, out: &mut Vec<u8>) -> Result<(), Error> {
    for (i, pair) in data.chunks_exact(2).enumerate() {
        let bad = |j: usize| Error::BadCharacter {
            part,
            offset: offset + 2 * i + j,
            kind: "b (hexadecimal)",
        };
        let hi = hex_value(pair[0]).ok_or_else(|| bad(0))?;
        let lo = hex_value(pair[1]).ok_or_else(|| bad(1))?;
        out.push((hi << 4) | lo);
    }
    Ok(())
}

/// Packed BCD to `units` ASCII digits (or, for `z`, the characters
/// `0`-`?`). An odd digit count leaves one pad nibble: first when the
/// value is right-aligned, last when left-aligned; it must be 0 or F.
fn decode_bcd(
    spec: &FieldSpec,
    part: Part,
    data: &[u8],
    units: usize,
    offset: usize,
    out: &mut String,
) -> Result<(), Error> {
    let pad = data.len() * 2 - units;
    let right = spec.align == Align::Right;
    if pad == 1 {
        let pad_at = if right { 0 } else { units };
        if !matches!(nibble(data, pad_at), 0x0 | 0xF) {
            return Err(Error::BadBcdDigit {
                part,
                offset: offset + pad_at / 2,
            });
        }
    }
    // The digits: a lone one beside the pad nibble, and whole bytes of two.
    let (head, pairs, tail) = match (pad, data) {
        (1, [first, rest @ ..]) if right => (Some(first & 0x0F), rest, None),
        (1, [rest @ .., last]) => (None, rest, Some(last >> 4)),
        _ => (None, data, None),
    };
    if spec.kind != Kind::Z {
        // A nibble above 9 plus 6 carries into bit 4: one pass, no branch
        // a digit; the search for the offending one only when there is one.
        let carry = |n: u8| n + 6;
        let lone = carry(head.unwrap_or(0)) | carry(tail.unwrap_or(0));
        let all = pairs
            .iter()
            .fold(lone, |all, &b| all | carry(b >> 4) | carry(b & 0x0F));
        if all & 0x10 != 0 {
            let skip = if right { pad } else { 0 };
            let bad = (skip..skip + units).find(|&i| nibble(data, i) > 9);
            return Err(Error::BadBcdDigit {
                part,
                offset: offset + bad.unwrap_or(0) / 2,
            });
        }
    }
    let digit = |n: u8| char::from(b'0' + n);
    if let Some(n) = head {
        out.push(digit(n));
    }
    for &b in pairs {
        out.push(digit(b >> 4));
        out.push(digit(b & 0x0F));
    }
    if let Some(n) = tail {
        out.push(digit(n));
    }
    Ok(())
}

fn write_field(
    spec: &FieldSpec,
    field: u8,
    raw: Raw<'_>,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<(), Error> {
    let part = Part::Field(field);
    let offset = out.len() - start;
    if raw.binary != (spec.kind == Kind::B) {
        return Err(Error::WrongValueType {
            part,
            offset,
            kind: spec.kind.abbreviation(),
        });
    }
    let data = raw.bytes;
    let units = data.len();
    match spec.length {
        Length::Fixed(n) if units != usize::from(n) => {
            return Err(Error::WrongLength {
                part,
                offset,
                len: units,
                expected: usize::from(n),
            });
        }
        Length::Fixed(_) => {}
        length => {
            let max = usize::from(length.max());
            if units > max {
                return Err(Error::TooLong {
                    part,
                    offset,
                    len: spec.prefix_units(units),
                    max: spec.prefix_units(max),
                });
            }
            // At most 999 (checked by the table test), so three decimal
            // digits, each of which fits a nibble.
            let len = spec.prefix_units(units);
            let [hundreds, tens, ones] = [len / 100, (len / 10) % 10, len % 10].map(|d| d as u8);
            match (spec.prefix, length.prefix_digits()) {
                (PrefixEncoding::Ascii, 3) => {
                    out.extend_from_slice(&[b'0' + hundreds, b'0' + tens, b'0' + ones]);
                }
                (PrefixEncoding::Ascii, _) => out.extend_from_slice(&[b'0' + tens, b'0' + ones]),
                (PrefixEncoding::Bcd, 3) => out.extend_from_slice(&[hundreds, (tens << 4) | ones]),
                (PrefixEncoding::Bcd, _) => out.push((tens << 4) | ones),
            }
        }
    }
    let data_at = out.len() - start;
    // A right-aligned odd BCD value starts with a pad nibble.
    let lead = spec.encoding == Encoding::Bcd && units % 2 == 1 && spec.align == Align::Right;
    if spec.kind != Kind::B {
        let at = |i: usize| match spec.encoding {
            Encoding::Bcd => data_at + (i + usize::from(lead)) / 2,
            _ => data_at + i,
        };
        check_text(spec.kind, part, data, at)?;
    }
    match spec.encoding {
        Encoding::Ascii | Encoding::Raw => out.extend_from_slice(data),
        Encoding::Hex => {
            for &byte in data {
                out.extend_from_slice(&[
                    HEX_DIGITS[usize::from(byte >> 4)],
                    HEX_DIGITS[usize::from(byte & 0x0F)],
                ]);
            }
        }
        Encoding::Bcd => {
            // Characters are checked above: digits, or `0`-`?` for z, so
            // `c - b'0'` is a nibble. Pairs of digits make a byte; a lone
            // digit goes with the pad nibble, 0, on its aligned side.
            let digit = |i: usize| data[i] - b'0';
            let mut i = 0;
            if lead {
                out.push(digit(0));
                i = 1;
            }
            while i + 1 < units {
                out.push((digit(i) << 4) | digit(i + 1));
                i += 2;
            }
            if i < units {
                out.push(digit(i) << 4);
            }
        }
    }
    Ok(())
}

/// Checks every character of a text value; `at(i)` is the offset to name
/// for the `i`-th character.
fn check_text(
    kind: Kind,
    part: Part,
    data: &[u8],
    at: impl Fn(usize) -> usize,
) -> Result<(), Error> {
    // One table lookup a byte and no branch, the common case; the search
    // for the offending byte only when there is one.
    if kind.all_allowed(data) {
        return Ok(());
    }
    match data.iter().enumerate().find(|&(i, &b)| !kind.allows(i, b)) {
        None => Ok(()),
        Some((i, _)) if kind == Kind::N => Err(Error::NonNumeric {
            part,
            offset: at(i),
        }),
        Some((i, _)) => Err(Error::BadCharacter {
            part,
            offset: at(i),
            kind: kind.abbreviation(),
        }),
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";

const fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Set in [`HEX_VALUES`] for a byte that is not a hexadecimal digit.
const NOT_HEX: u8 = 0x10;

/// `hex_value` of every byte, `NOT_HEX` for `None`.
static HEX_VALUES: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut c = 0;
    while c < 256 {
        if let Some(v) = hex_value(c as u8) {
            table[c] = v;
        }
        c += 1;
    }
    table
};

/// The `i`-th nibble of `bytes`, high nibble first.
fn nibble(bytes: &[u8], i: usize) -> u8 {
    let byte = bytes[i / 2];
    if i.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0F
    }
}

fn ascii_number(bytes: &[u8], offset: usize, part: Part) -> Result<usize, Error> {
    bytes.iter().enumerate().try_fold(0usize, |acc, (i, &c)| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + usize::from(c - b'0'))
        } else {
            Err(Error::NonNumeric {
                part,
                offset: offset + i,
            })
        }
    })
}

fn bcd_number(bytes: &[u8], offset: usize, part: Part) -> Result<usize, Error> {
    (0..bytes.len() * 2).try_fold(0usize, |acc, i| {
        let n = nibble(bytes, i);
        if n > 9 {
            Err(Error::BadBcdDigit {
                part,
                offset: offset + i / 2,
            })
        } else {
            Ok(acc * 10 + usize::from(n))
        }
    })
}
