//! What travels around a message on a stream: a length header, and in the
//! UnionPay layout a TPDU and a six-byte application header. The framing
//! is part of a [`Profile`](crate::Profile); [`Envelope`] is what a
//! listener keeps from a request to address its response.

/// How a frame's length is written before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LengthHeader {
    /// Two bytes, big-endian binary: the bytes after the header (UnionPay,
    /// and most ISO 8583 links over TCP).
    Binary2,
    /// Four ASCII digits: the bytes after the header.
    Ascii4,
}

impl LengthHeader {
    /// Bytes the header takes.
    pub fn size(self) -> usize {
        match self {
            LengthHeader::Binary2 => 2,
            LengthHeader::Ascii4 => 4,
        }
    }

    /// The largest length the header can carry.
    pub fn max(self) -> usize {
        match self {
            LengthHeader::Binary2 => usize::from(u16::MAX),
            LengthHeader::Ascii4 => 9999,
        }
    }
}

/// A profile's framing: the length header, then optionally a TPDU and a
/// six-byte header, then the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    pub length: LengthHeader,
    pub tpdu: bool,
    pub header: bool,
}

impl Framing {
    /// Bytes between the length header and the message.
    pub fn envelope_len(&self) -> usize {
        (if self.tpdu { Tpdu::LEN } else { 0 }) + (if self.header { Header::LEN } else { 0 })
    }
}

/// The transport protocol data unit of the UnionPay POS layout: `0x60`,
/// then a two-byte destination and a two-byte source address (NII). A
/// response goes back with the two swapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tpdu {
    pub destination: [u8; 2],
    pub source: [u8; 2],
}

impl Tpdu {
    /// The identifier byte every TPDU starts with.
    pub const ID: u8 = 0x60;
    pub const LEN: usize = 5;

    /// The TPDU of the answer: destination and source swapped.
    pub fn response(&self) -> Tpdu {
        Tpdu {
            destination: self.source,
            source: self.destination,
        }
    }

    pub fn to_bytes(&self) -> [u8; 5] {
        let [d0, d1] = self.destination;
        let [s0, s1] = self.source;
        [Self::ID, d0, d1, s0, s1]
    }
}

/// The six-byte application header of the UnionPay POS layout after the
/// TPDU, for example `60 31 00 31 07 30`: application type (`60`), the
/// terminal software version, the terminal status and processing
/// requirement, and a reserved part. Kept as bytes and echoed in the
/// response: the codec does not interpret it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header(pub [u8; 6]);

impl Header {
    pub const LEN: usize = 6;
}

/// The TPDU and header of a frame, as the profile's framing has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Envelope {
    pub tpdu: Option<Tpdu>,
    pub header: Option<Header>,
}

impl Envelope {
    /// The envelope of the answer: the TPDU swapped, the header echoed.
    pub fn response(&self) -> Envelope {
        Envelope {
            tpdu: self.tpdu.map(|t| t.response()),
            header: self.header,
        }
    }
}

/// A frame as unpacked: its envelope and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub envelope: Envelope,
    pub message: crate::Message<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_swaps_destination_and_source() {
        let tpdu = Tpdu {
            destination: [0x00, 0x03],
            source: [0x00, 0x00],
        };
        assert_eq!(tpdu.to_bytes(), [0x60, 0x00, 0x03, 0x00, 0x00]);
        assert_eq!(tpdu.response().to_bytes(), [0x60, 0x00, 0x00, 0x00, 0x03]);
        assert_eq!(tpdu.response().response(), tpdu);
        let envelope = Envelope {
            tpdu: Some(tpdu),
            header: Some(Header([0x60, 0x31, 0x00, 0x31, 0x07, 0x30])),
        };
        assert_eq!(envelope.response().header, envelope.header);
        assert_eq!(envelope.response().tpdu, Some(tpdu.response()));
    }
}
