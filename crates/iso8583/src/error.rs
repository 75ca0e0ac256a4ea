//! What can be wrong with a message, always saying where: the part (a field
//! number, the MTI, the bitmap, the frame's header) and the byte offset
//! from the first byte given to the function. Errors never quote a value:
//! the bytes may be card data.

use std::fmt;

use crate::frame::Envelope;
use crate::mti::Mti;

/// The part of a message an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The frame's length header.
    LengthHeader,
    /// The transport protocol data unit (UnionPay framing).
    Tpdu,
    /// The application header after the TPDU (UnionPay framing).
    Header,
    Mti,
    /// The primary or secondary bitmap.
    Bitmap,
    /// A data field, by number (2–128).
    Field(u8),
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::LengthHeader => f.write_str("length header"),
            Part::Tpdu => f.write_str("TPDU"),
            Part::Header => f.write_str("header"),
            Part::Mti => f.write_str("MTI"),
            Part::Bitmap => f.write_str("bitmap"),
            Part::Field(n) => write!(f, "field {n}"),
        }
    }
}

/// Why a message could not be unpacked or packed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A part (or its length prefix) runs past the end of the input.
    #[error("{part} at offset {offset} needs {needed} bytes, {available} left")]
    Truncated {
        part: Part,
        offset: usize,
        needed: usize,
        available: usize,
    },
    /// A BCD nibble above 9 in a numeric field or a BCD length, or a pad
    /// nibble other than 0 or F.
    #[error("{part}: bad BCD digit at offset {offset}")]
    BadBcdDigit { part: Part, offset: usize },
    /// A byte other than `0`–`9` in a numeric field or an ASCII length.
    #[error("{part}: non-numeric byte at offset {offset}")]
    NonNumeric { part: Part, offset: usize },
    /// A byte outside the field's character set (`an`, `ans`, `z`, `x+n`,
    /// hexadecimal).
    #[error("{part}: byte at offset {offset} is not allowed in a field of type {kind}")]
    BadCharacter {
        part: Part,
        offset: usize,
        kind: &'static str,
    },
    /// A variable field longer than its maximum (or the prefix cannot
    /// hold the length).
    #[error("{part}: length {len} at offset {offset} exceeds the maximum {max}")]
    TooLong {
        part: Part,
        offset: usize,
        len: usize,
        max: usize,
    },
    /// A fixed field given a value of another length (packing), or a hex
    /// field with an odd number of characters.
    #[error("{part}: length {len} at offset {offset}, expected {expected}")]
    WrongLength {
        part: Part,
        offset: usize,
        len: usize,
        expected: usize,
    },
    /// Text given for a binary field or bytes for a text field (packing).
    #[error("{part}: value at offset {offset} has the wrong type for a field of type {kind}")]
    WrongValueType {
        part: Part,
        offset: usize,
        kind: &'static str,
    },
    /// The bitmap announces (or the message holds) a field this profile
    /// does not define.
    #[error("field {field} announced at offset {offset} is not defined by the profile")]
    UndefinedField { field: u8, offset: usize },
    /// Bytes left after the last field the bitmap announced.
    #[error("{count} trailing bytes at offset {offset} after the last field")]
    TrailingBytes { offset: usize, count: usize },
    /// The message (or the length a frame declares) exceeds the profile's
    /// maximum.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    Oversize { len: usize, max: usize },
    /// The MTI is not four decimal digits.
    #[error("MTI at offset {offset} is not four decimal digits")]
    BadMti { offset: usize },
    /// An ASCII bitmap that is not sixteen hexadecimal characters.
    #[error("bitmap at offset {offset} is not hexadecimal")]
    BadBitmap { offset: usize },
    /// A TPDU whose identifier is not `0x60`.
    #[error("TPDU at offset {offset} does not start with 0x60")]
    BadTpdu { offset: usize },
    /// A frame whose length header disagrees with the bytes given.
    #[error("length header declares {declared} bytes, {actual} follow it")]
    FrameLength { declared: usize, actual: usize },
    /// A frame's length header declares fewer bytes than the smallest
    /// message of the profile.
    #[error("length header declares {declared} bytes, the smallest message has {min}")]
    FrameTooShort { declared: usize, min: usize },
    /// Packing a frame whose envelope lacks a part the profile's framing
    /// has (a TPDU or a header).
    #[error("the profile's framing needs a {part}, the envelope has none")]
    MissingEnvelope { part: Part },
}

impl Error {
    /// The part the error is about, if it is about one part.
    pub fn part(&self) -> Option<Part> {
        match self {
            Error::Truncated { part, .. }
            | Error::BadBcdDigit { part, .. }
            | Error::NonNumeric { part, .. }
            | Error::BadCharacter { part, .. }
            | Error::TooLong { part, .. }
            | Error::WrongLength { part, .. }
            | Error::WrongValueType { part, .. } => Some(*part),
            Error::UndefinedField { field, .. } => Some(Part::Field(*field)),
            Error::BadMti { .. } => Some(Part::Mti),
            Error::BadBitmap { .. } => Some(Part::Bitmap),
            Error::BadTpdu { .. } => Some(Part::Tpdu),
            Error::MissingEnvelope { part } => Some(*part),
            Error::FrameLength { .. } | Error::FrameTooShort { .. } => Some(Part::LengthHeader),
            Error::TrailingBytes { .. } | Error::Oversize { .. } => None,
        }
    }
}

/// What could be read of a message that failed to unpack: enough, when
/// the MTI and fields 11 and 41 are there, to answer it with a format error
/// ("30") in its MTI's response class instead of dropping the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    /// The frame's TPDU and header, to answer on the same route.
    pub envelope: Envelope,
    pub mti: Mti,
    /// Field 11 (STAN) as read, if it was present and well formed.
    pub stan: Option<String>,
    /// Field 41 (card acceptor terminal id) as read, if present and well
    /// formed.
    pub terminal_id: Option<String>,
}

impl Partial {
    /// The MTI, STAN and terminal id a format-error answer needs, when all
    /// three were readable.
    pub fn answerable(&self) -> Option<(Mti, &str, &str)> {
        Some((
            self.mti.response()?,
            self.stan.as_deref()?,
            self.terminal_id.as_deref()?,
        ))
    }
}

/// An unpacking failure: the first error found, and what was read before
/// (and, past a field whose length was known, around) it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct UnpackError {
    pub error: Error,
    /// `None` when the failure came before a readable MTI.
    pub partial: Option<Partial>,
}

impl From<Error> for UnpackError {
    fn from(error: Error) -> Self {
        UnpackError {
            error,
            partial: None,
        }
    }
}
