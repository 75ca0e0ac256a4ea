//! The codec's rules, one test each: layouts, alignment, and every error
//! with the part and offset it names.

use crate::*;

const ASCII: Profile = Profile::ASCII_1987;
const CUP: Profile = Profile::CUP_POS;

fn bytes(spaced_hex: &str) -> Vec<u8> {
    hex::decode(spaced_hex.replace(' ', "")).unwrap()
}

fn err(profile: &Profile, body: &[u8]) -> Error {
    profile.unpack(body).unwrap_err().error
}

#[test]
fn every_table_entry_is_consistent() {
    for profile in [ASCII, CUP] {
        assert!(profile.spec[0].is_none() && profile.spec[1].is_none());
        assert!(
            profile.spec[65].is_none(),
            "{}: no tertiary bitmap",
            profile.name
        );
        for (n, spec) in profile.spec.iter().enumerate() {
            if let Some(spec) = spec {
                assert!(spec.is_consistent(), "{} field {n}: {spec:?}", profile.name);
            }
        }
    }
    assert_eq!(ASCII.spec.iter().flatten().count(), 126);
}

#[test]
fn packs_and_unpacks_pyiso8583s_own_examples() {
    // The examples in pyiso8583's `encode` and `decode` docstrings.
    let mut m = Message::new(Mti::parse("0210").unwrap());
    m.set(3, "111111").set(39, "05");
    assert_eq!(ASCII.pack(&m).unwrap(), b"0210200000000200000011111105");

    let m = ASCII
        .unpack(b"02004010100000000000161234567890123456123456111")
        .unwrap();
    assert_eq!(m.mti(), Mti::FINANCIAL_REQUEST);
    assert_eq!(m.text(2), Some("1234567890123456"));
    assert_eq!(m.text(12), Some("123456"));
    assert_eq!(m.text(20), Some("111"));
    assert_eq!(m.fields().count(), 3);
}

#[test]
fn ascii_unpacking_borrows_every_text_value() {
    let body =
        b"02007020000000C00000164761739001010010000000000000001000000123TERM0001MERCHANT0000001";
    let m = ASCII.unpack(body).unwrap();
    assert_eq!(m.fields().count(), 6);
    for (n, _) in m.fields() {
        assert!(m.is_borrowed(n), "field {n}");
    }
    assert_eq!(m.text(42), Some("MERCHANT0000001"));
}

#[test]
fn the_secondary_bitmap_appears_only_for_fields_above_64() {
    let mut m = Message::new(Mti::NETWORK_REQUEST);
    m.set(7, "1201123000").set(11, "000001").set(70, "301");
    let packed = ASCII.pack(&m).unwrap();
    assert_eq!(
        std::str::from_utf8(&packed).unwrap(),
        "0800822000000000000004000000000000001201123000000001301"
    );
    assert_eq!(ASCII.unpack(&packed).unwrap(), m);
    m.remove(70);
    assert!(ASCII.pack(&m).unwrap().starts_with(b"08000220000000000000"));
}

#[test]
fn binary_fields_in_ascii_are_hex_of_either_case_and_pack_upper_case() {
    let pin = [0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE, 0xF0];
    let mut m = Message::new(Mti::FINANCIAL_REQUEST);
    m.set(52, &pin[..]);
    let packed = ASCII.pack(&m).unwrap();
    assert_eq!(&packed[20..], b"123456789ABCDEF0");
    let lower = [&packed[..20], b"123456789abcdef0"].concat();
    assert_eq!(ASCII.unpack(&lower).unwrap().bytes(52), Some(&pin[..]));

    // Field 55: the prefix counts characters, twice the bytes.
    let mut m = Message::new(Mti::FINANCIAL_REQUEST);
    m.set(55, &[0x9F, 0x26, 0x01][..]);
    assert!(ASCII.pack(&m).unwrap().ends_with(b"0069F2601"));
    let odd = b"02000000000000000200005ABCDE";
    assert_eq!(
        err(&ASCII, odd),
        Error::WrongLength {
            part: Part::Field(55),
            offset: 20,
            len: 5,
            expected: 6
        }
    );
}

#[test]
fn cup_numerics_are_bcd_aligned_per_field() {
    let mut m = Message::new(Mti::FINANCIAL_REQUEST);
    m.set(2, "62258800000000001") // 17 digits: trailing pad nibble
        .set(11, "000123")
        .set(22, "021") // left-aligned: 02 10
        .set(23, "001") // right-aligned: 00 01
        .set(35, "6225880000000000001=2912"); // '=' is nibble D
    let packed = CUP.pack(&m).unwrap();
    assert_eq!(
        packed,
        bytes(
            "0200 4020060020000000 \
             17 62 25 88 00 00 00 00 00 10 \
             00 01 23 \
             02 10 \
             00 01 \
             24 62 25 88 00 00 00 00 00 00 1D 29 12"
        )
    );
    assert_eq!(CUP.unpack(&packed).unwrap(), m);
}

#[test]
fn cup_lengths_are_bcd_and_text_is_ascii() {
    let mut m = Message::new(Mti::NETWORK_REQUEST);
    m.set(41, "TERM0001").set(60, "00000001003").set(63, "001");
    let packed = CUP.pack(&m).unwrap();
    assert_eq!(
        packed,
        bytes(
            "0800 0000000000800012 \
             5445524D30303031 \
             0011 00 00 00 01 00 30 \
             0003 303031"
        )
    );
    assert_eq!(CUP.unpack(&packed).unwrap(), m);
    let field60 = cup::Field60::of(&m).unwrap().unwrap();
    assert_eq!(field60.network_management_code.as_deref(), Some("003"));
}

#[test]
fn a_pad_nibble_may_be_zero_or_f_and_nothing_else() {
    // Field 2, 3 digits "123": 03 12 3x.
    let body = |pad: u8| [bytes("0200 4000000000000000 03 12"), vec![0x30 | pad]].concat();
    assert_eq!(CUP.unpack(&body(0x0)).unwrap().text(2), Some("123"));
    assert_eq!(CUP.unpack(&body(0xF)).unwrap().text(2), Some("123"));
    assert_eq!(
        err(&CUP, &body(0x5)),
        Error::BadBcdDigit {
            part: Part::Field(2),
            offset: 12
        }
    );
}

#[test]
fn unpacking_errors_name_the_part_and_offset() {
    let cases: Vec<(&str, Profile, Vec<u8>, Error)> = vec![
        (
            "a fixed field past the end",
            ASCII,
            b"02000020000000000000123".to_vec(),
            Error::Truncated {
                part: Part::Field(11),
                offset: 20,
                needed: 6,
                available: 3,
            },
        ),
        (
            "a length prefix past the end",
            ASCII,
            b"020040000000000000001".to_vec(),
            Error::Truncated {
                part: Part::Field(2),
                offset: 20,
                needed: 2,
                available: 1,
            },
        ),
        (
            "a variable field past its prefix",
            ASCII,
            b"0200400000000000000016123".to_vec(),
            Error::Truncated {
                part: Part::Field(2),
                offset: 22,
                needed: 16,
                available: 3,
            },
        ),
        (
            "a bad BCD digit",
            CUP,
            bytes("0200 0020000000000000 00 1A 23"),
            Error::BadBcdDigit {
                part: Part::Field(11),
                offset: 11,
            },
        ),
        (
            "a bad BCD length",
            CUP,
            bytes("0200 4000000000000000 1A 12"),
            Error::BadBcdDigit {
                part: Part::Field(2),
                offset: 10,
            },
        ),
        (
            "a letter in a numeric field",
            ASCII,
            b"02000020000000000000012A45".to_vec(),
            Error::NonNumeric {
                part: Part::Field(11),
                offset: 23,
            },
        ),
        (
            "a letter in a length",
            ASCII,
            b"020040000000000000001A".to_vec(),
            Error::NonNumeric {
                part: Part::Field(2),
                offset: 21,
            },
        ),
        (
            "a symbol in an alphanumeric field",
            ASCII,
            b"020000000000020000000#".to_vec(),
            Error::BadCharacter {
                part: Part::Field(39),
                offset: 21,
                kind: "an",
            },
        ),
        (
            "a control character in an ans field",
            CUP,
            [bytes("0200 0000000000800000"), b"TERM\x00001".to_vec()].concat(),
            Error::BadCharacter {
                part: Part::Field(41),
                offset: 14,
                kind: "ans",
            },
        ),
        (
            "a length over the maximum",
            ASCII,
            b"0200400000000000000020".to_vec(),
            Error::TooLong {
                part: Part::Field(2),
                offset: 20,
                len: 20,
                max: 19,
            },
        ),
        (
            "a field the profile does not define",
            CUP,
            bytes("0200 0800000000000000 00"),
            Error::UndefinedField {
                field: 5,
                offset: 2,
            },
        ),
        (
            "field 65 in the secondary bitmap",
            ASCII,
            b"080080000000000000008000000000000000".to_vec(),
            Error::UndefinedField {
                field: 65,
                offset: 20,
            },
        ),
        (
            "trailing bytes",
            ASCII,
            b"0200002000000000000000012399".to_vec(),
            Error::TrailingBytes {
                offset: 26,
                count: 2,
            },
        ),
        (
            "a letter in the MTI",
            ASCII,
            b"02X00000000000000000".to_vec(),
            Error::BadMti { offset: 0 },
        ),
        (
            "a BCD MTI above 9",
            CUP,
            bytes("020A 0000000000000000"),
            Error::BadMti { offset: 0 },
        ),
        (
            "a short MTI",
            CUP,
            bytes("02"),
            Error::Truncated {
                part: Part::Mti,
                offset: 0,
                needed: 2,
                available: 1,
            },
        ),
        (
            "a bitmap that is not hex",
            ASCII,
            b"02000000G00000000000".to_vec(),
            Error::BadBitmap { offset: 8 },
        ),
        (
            "a short bitmap",
            CUP,
            bytes("0200 00000000"),
            Error::Truncated {
                part: Part::Bitmap,
                offset: 2,
                needed: 8,
                available: 4,
            },
        ),
    ];
    for (what, profile, body, expected) in cases {
        assert_eq!(err(&profile, &body), expected, "{what}");
        // The message names the part and the offset, never the bytes.
        let shown = expected.to_string();
        assert!(shown.contains("offset"), "{what}: {shown}");
    }
}

/// Positions are 16-bit (`MAX_UNPACK_LEN`): a message just under the
/// bound reads back every value, borrowed and owned, and one over it is
/// refused however large the profile's maximum.
#[test]
fn unpacking_reads_up_to_its_bound_and_refuses_beyond_it() {
    let big = ASCII.with_max_len(100_000);
    let long_fields: Vec<u8> = (2..=MAX_FIELD)
        .filter(|&n| {
            ASCII
                .field(n)
                .is_some_and(|spec| spec.kind == Kind::Ans && spec.length == Length::LllVar(999))
        })
        .collect();
    let build = |count: usize| {
        let mut m = Message::new(Mti::FINANCIAL_REQUEST);
        for (i, &n) in long_fields.iter().take(count).enumerate() {
            let c = char::from(b'A' + (i % 26) as u8);
            m.set(n, c.to_string().repeat(999));
        }
        m
    };
    let under = build(MAX_UNPACK_LEN / 1002);
    let packed = big.pack(&under).unwrap();
    assert!(packed.len() <= MAX_UNPACK_LEN && packed.len() > MAX_UNPACK_LEN - 1100);
    let unpacked = big.unpack(&packed).unwrap();
    assert_eq!(unpacked, under);
    let owned = unpacked.clone().into_owned();
    assert_eq!(owned, under);
    let last = *long_fields.get(MAX_UNPACK_LEN / 1002 - 1).unwrap();
    assert_eq!(owned.text(last), under.text(last));

    let over = big.pack(&build(MAX_UNPACK_LEN / 1002 + 1)).unwrap();
    assert_eq!(
        err(&big, &over),
        Error::Oversize {
            len: over.len(),
            max: MAX_UNPACK_LEN
        }
    );
}

#[test]
fn an_oversize_message_is_refused_before_it_is_read() {
    let small = ASCII.with_max_len(24);
    let body = b"0200002000000000000000012399";
    assert_eq!(err(&small, body), Error::Oversize { len: 28, max: 24 });
    let mut m = Message::new(Mti::FINANCIAL_REQUEST);
    m.set(11, "000123").set(41, "TERM0001");
    assert_eq!(small.pack(&m), Err(Error::Oversize { len: 34, max: 24 }));
}

#[test]
fn a_malformed_message_still_yields_mti_stan_and_terminal() {
    let mut m = Message::new(Mti::REVERSAL_REQUEST);
    m.set(4, "000000001000")
        .set(11, "000042")
        .set(35, "4761739001010010=2212")
        .set(41, "TERM0001");
    let good = ASCII.pack(&m).unwrap();

    // A letter in field 4, whose length is fixed: the read goes on.
    let mut bad = good.clone();
    bad[20 + 3] = b'X';
    let rejected = ASCII.unpack(&bad).unwrap_err();
    assert_eq!(
        rejected.error,
        Error::NonNumeric {
            part: Part::Field(4),
            offset: 23
        }
    );
    let partial = rejected.partial.unwrap();
    let (mti, stan, tid) = partial.answerable().unwrap();
    assert_eq!(
        (mti, stan, tid),
        (Mti::parse("0410").unwrap(), "000042", "TERM0001")
    );

    // A bad character inside field 35 (its length is known): still answerable.
    let mut bad = good.clone();
    let track = bad.windows(4).position(|w| w == b"=221").unwrap();
    bad[track] = b'A';
    let rejected = ASCII.unpack(&bad).unwrap_err();
    assert!(matches!(
        rejected.error,
        Error::BadCharacter {
            part: Part::Field(35),
            ..
        }
    ));
    assert_eq!(
        rejected.partial.unwrap().terminal_id.as_deref(),
        Some("TERM0001")
    );

    // A broken length in field 35: nothing after it can be found.
    let mut bad = good.clone();
    bad[track - 16 - 2] = b'Z';
    let rejected = ASCII.unpack(&bad).unwrap_err();
    assert!(matches!(
        rejected.error,
        Error::NonNumeric {
            part: Part::Field(35),
            ..
        }
    ));
    let partial = rejected.partial.unwrap();
    assert_eq!(
        (partial.stan.as_deref(), partial.terminal_id.as_deref()),
        (Some("000042"), None)
    );
    assert_eq!(partial.answerable(), None);

    // Before the MTI is read there is nothing to answer.
    assert_eq!(ASCII.unpack(b"04X0").unwrap_err().partial, None);
}

#[test]
fn packing_errors_name_the_field() {
    let packs = |field: u8, value: Value<'static>| {
        let mut m = Message::new(Mti::FINANCIAL_REQUEST);
        m.set(field, value);
        ASCII.pack(&m).unwrap_err()
    };
    assert_eq!(
        packs(11, "12345".into()),
        Error::WrongLength {
            part: Part::Field(11),
            offset: 20,
            len: 5,
            expected: 6
        }
    );
    assert_eq!(
        packs(11, "12a456".into()),
        Error::NonNumeric {
            part: Part::Field(11),
            offset: 22
        }
    );
    assert_eq!(
        packs(2, "12345678901234567890".into()),
        Error::TooLong {
            part: Part::Field(2),
            offset: 20,
            len: 20,
            max: 19
        }
    );
    assert_eq!(
        packs(52, "1234567890ABCDEF".into()),
        Error::WrongValueType {
            part: Part::Field(52),
            offset: 20,
            kind: "b"
        }
    );
    assert_eq!(
        packs(65, "1".into()),
        Error::UndefinedField {
            field: 65,
            offset: 4
        }
    );
    assert_eq!(
        packs(28, "X00000100".into()),
        Error::BadCharacter {
            part: Part::Field(28),
            offset: 20,
            kind: "x+n"
        }
    );
    let mut m = Message::new(Mti::FINANCIAL_REQUEST);
    m.set(5, "1");
    assert_eq!(
        CUP.pack(&m),
        Err(Error::UndefinedField {
            field: 5,
            offset: 2
        })
    );
}

#[test]
fn pack_into_leaves_the_buffer_as_it_was_on_error() {
    let mut out = b"prefix".to_vec();
    let mut m = Message::new(Mti::FINANCIAL_REQUEST);
    m.set(11, "12345");
    assert!(ASCII.pack_into(&m, &mut out).is_err());
    assert_eq!(out, b"prefix");
    m.set(11, "123456");
    ASCII.pack_into(&m, &mut out).unwrap();
    assert_eq!(out, b"prefix02000020000000000000123456");
}

#[test]
fn values_are_padded_by_their_kind() {
    assert_eq!(ASCII.pad_value(4, "1000").unwrap(), "000000001000");
    assert_eq!(ASCII.pad_value(41, "T1").unwrap(), "T1      ");
    assert_eq!(CUP.pad_value(38, "A1").unwrap(), "A1    ");
    assert!(matches!(
        ASCII.pad_value(2, "4"),
        Err(Error::WrongValueType { .. })
    ));
    assert!(matches!(
        ASCII.pad_value(52, "4"),
        Err(Error::WrongValueType { .. })
    ));
    assert!(matches!(
        ASCII.pad_value(39, "000"),
        Err(Error::WrongLength { .. })
    ));
    assert!(matches!(
        CUP.pad_value(5, "1"),
        Err(Error::UndefinedField { .. })
    ));
}

#[test]
fn frames_carry_the_length_the_tpdu_and_the_header() {
    let envelope = Envelope {
        tpdu: Some(Tpdu {
            destination: [0x00, 0x03],
            source: [0x00, 0x01],
        }),
        header: Some(Header([0x60, 0x31, 0x00, 0x31, 0x07, 0x30])),
    };
    let mut m = Message::new(Mti::NETWORK_REQUEST);
    m.set(11, "000001").set(41, "TERM0001");
    let frame = CUP.pack_frame(&envelope, &m).unwrap();
    assert_eq!(
        frame,
        bytes("0020 6000030001 603100310730 0800 0020000000800000 000001 5445524D30303031")
    );
    assert_eq!(CUP.frame_len(&frame[..1]), Ok(None));
    assert_eq!(CUP.frame_len(&frame[..2]), Ok(Some(34)));
    let read = CUP.unpack_frame(&frame).unwrap();
    assert_eq!((read.envelope, &read.message), (envelope, &m));

    // Offsets in a frame count from its first byte.
    let mut bad = frame.clone();
    bad[23] = 0x0A;
    assert_eq!(
        CUP.unpack_frame(&bad).unwrap_err().error,
        Error::BadBcdDigit {
            part: Part::Field(11),
            offset: 23
        }
    );
    let mut bad = frame.clone();
    bad[2] = 0x61;
    assert_eq!(
        CUP.unpack_frame(&bad).unwrap_err().error,
        Error::BadTpdu { offset: 2 }
    );
    assert_eq!(
        CUP.unpack_frame(&frame[..31]).unwrap_err().error,
        Error::FrameLength {
            declared: 32,
            actual: 29
        }
    );
    assert_eq!(
        CUP.frame_len(&[0x00, 0x05]),
        Err(Error::FrameTooShort {
            declared: 5,
            min: 21
        })
    );
    assert_eq!(
        CUP.with_max_len(29).frame_len(&frame),
        Err(Error::Oversize { len: 32, max: 29 })
    );
    assert_eq!(
        CUP.pack_frame(&Envelope::default(), &m),
        Err(Error::MissingEnvelope { part: Part::Tpdu })
    );

    // The partial read of a framed message keeps the envelope to answer on.
    let mut bad = frame;
    bad[27] = b'\n';
    let partial = CUP.unpack_frame(&bad).unwrap_err().partial.unwrap();
    assert_eq!(partial.envelope, envelope);
    assert_eq!(partial.stan.as_deref(), Some("000001"));
}

#[test]
fn ascii_frames_default_to_a_binary_length_and_may_use_four_digits() {
    let mut m = Message::new(Mti::NETWORK_REQUEST);
    m.set(70, "301");
    let frame = ASCII.pack_frame(&Envelope::default(), &m).unwrap();
    assert_eq!(&frame[..2], &[0, 39]);
    assert_eq!(ASCII.unpack_frame(&frame).unwrap().message, m);

    let four = ASCII.with_framing(Framing {
        length: LengthHeader::Ascii4,
        tpdu: false,
        header: false,
    });
    let frame = four.pack_frame(&Envelope::default(), &m).unwrap();
    assert_eq!(&frame[..4], b"0039");
    assert_eq!(four.frame_len(&frame[..3]), Ok(None));
    assert_eq!(four.frame_len(&frame[..4]), Ok(Some(43)));
    assert_eq!(four.unpack_frame(&frame).unwrap().message, m);
    assert_eq!(
        four.frame_len(b"00x9"),
        Err(Error::NonNumeric {
            part: Part::LengthHeader,
            offset: 2
        })
    );
}
