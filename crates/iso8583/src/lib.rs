//! An ISO 8583 codec with no I/O: bytes in, a [`Message`] out, and back.
//!
//! A field layout is data: a [`Spec`] table of [`FieldSpec`]s indexed by
//! field number, interpreted by one codec. A [`Profile`] adds the MTI and
//! bitmap encodings and the framing (length header, TPDU, header). Two
//! profiles ship:
//!
//! - [`Profile::ASCII_1987`]: ISO 8583:1987 in ASCII, field for field the
//!   `default_ascii` spec of pyiso8583 4.0.1 (proven by vectors that
//!   pyiso8583 packed, `tests/interop.rs`), typed per the 1987 standard;
//! - [`Profile::CUP_POS`]: China UnionPay POS — two-byte length, TPDU,
//!   six-byte header, BCD MTI and numerics, binary bitmap, BCD lengths, and
//!   field 60's sub-fields ([`cup::Field60`]).
//!
//! Unpacking borrows from the input wherever the wire form is the value
//! (ASCII text, raw binary), and every error names the part (field number,
//! MTI, bitmap, TPDU, ...) and the byte offset. When a message fails after
//! its MTI, the error still carries what was read — MTI, fields 11 and 41,
//! the envelope ([`Partial`]) — so a listener can answer "30" (format
//! error) in the MTI's response class ([`Mti::response`]).
//!
//! `Debug` of a [`Message`] masks the PAN (field 2, first six and last
//! four) and never shows tracks 1–3, the PIN block or the chip data.
//!
//! A listener's loop:
//!
//! ```
//! use iso8583::{Envelope, Header, Message, Mti, Profile, Tpdu};
//!
//! let profile = Profile::CUP_POS;
//! # let mut sale = Message::new(Mti::FINANCIAL_REQUEST);
//! # sale.set(3, "000000").set(4, "000000001000").set(11, "000123")
//! #     .set(41, "TERM0001").set(42, "123456789012345");
//! # let tpdu = Tpdu { destination: [0x00, 0x03], source: [0x00, 0x00] };
//! # let envelope = Envelope { tpdu: Some(tpdu), header: Some(Header([0x60, 0x31, 0x00, 0x31, 0x07, 0x30])) };
//! # let stream = profile.pack_frame(&envelope, &sale).unwrap();
//! // Read until the length is known, then the whole frame.
//! let len = profile.frame_len(&stream).unwrap().expect("two bytes read");
//! let frame = profile.unpack_frame(&stream[..len]).unwrap();
//! assert_eq!(frame.message.mti(), Mti::FINANCIAL_REQUEST);
//! assert_eq!(frame.message.terminal_id(), Some("TERM0001"));
//!
//! let mut answer = Message::new(frame.message.mti().response().unwrap());
//! answer.set(11, frame.message.stan().unwrap()).set(39, "00").set(41, "TERM0001");
//! let reply = profile.pack_frame(&frame.envelope.response(), &answer).unwrap();
//! assert_eq!(&reply[2..7], &[0x60, 0x00, 0x00, 0x00, 0x03]); // TPDU swapped
//! ```
//!
//! A message that fails after its MTI still answers:
//!
//! ```
//! use iso8583::{Error, Part, Profile};
//!
//! // 0200 with fields 4, 11, 41; the amount has a letter in it.
//! let body = b"02001020000000800000000000001X00012345TERM0001";
//! let rejected = Profile::ASCII_1987.unpack(body).unwrap_err();
//! assert_eq!(rejected.error, Error::NonNumeric { part: Part::Field(4), offset: 29 });
//! let partial = rejected.partial.unwrap();
//! assert_eq!(partial.answerable().map(|(mti, stan, tid)| (mti.to_string(), stan, tid)),
//!            Some(("0210".to_string(), "012345", "TERM0001")));
//! ```

pub mod ascii;
pub mod cup;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod message;
mod mti;
mod profile;
pub mod spec;

pub use error::{Error, Part, Partial, UnpackError};
pub use frame::{Envelope, Frame, Framing, Header, LengthHeader, Tpdu};
pub use message::{MAX_FIELD, MAX_UNPACK_LEN, Message, Value};
pub use mti::Mti;
pub use profile::{BitmapEncoding, DEFAULT_MAX_LEN, Profile};
pub use spec::{Align, Encoding, FieldSpec, Kind, Length, PrefixEncoding, Spec};

#[cfg(test)]
mod tests;
