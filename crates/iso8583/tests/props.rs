//! Properties of both profiles: every valid message survives packing and
//! unpacking unchanged, as a message and as a frame; no input makes
//! unpacking panic.

use iso8583::cup::Field60;
use iso8583::{
    Envelope, FieldSpec, Header, Kind, Length, Message, Mti, Profile, Tpdu, Value, fuzzing,
};
use proptest::prelude::*;
use proptest::sample::select;

// Large enough for any generated message: the size limit has its own tests.
const ASCII: Profile = Profile::ASCII_1987.with_max_len(65_535);
const CUP: Profile = Profile::CUP_POS.with_max_len(65_535);

fn charset(kind: Kind) -> Vec<u8> {
    match kind {
        Kind::N | Kind::Xn => (b'0'..=b'9').collect(),
        Kind::An => (b'0'..=b'9')
            .chain(b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .chain([b' '])
            .collect(),
        Kind::Ans => (0x20..=0x7E).collect(),
        Kind::Z => (b'0'..=b'?').collect(),
        Kind::B => (0..=255).collect(),
    }
}

/// A value the field accepts: its length fixed, or anywhere up to its
/// maximum with the maximum itself often enough to be tried.
fn value(spec: &'static FieldSpec) -> BoxedStrategy<Value<'static>> {
    let max = usize::from(spec.length.max());
    let len = match spec.length {
        Length::Fixed(n) => Just(usize::from(n)).boxed(),
        _ => prop_oneof![4 => 0..=max.min(24), 1 => Just(max)].boxed(),
    };
    let kind = spec.kind;
    len.prop_flat_map(move |len| prop::collection::vec(select(charset(kind)), len))
        .prop_flat_map(move |bytes| {
            select(vec![b'C', b'D']).prop_map(move |sign| {
                let mut bytes = bytes.clone();
                if kind == Kind::Xn && !bytes.is_empty() {
                    bytes[0] = sign;
                }
                match kind {
                    Kind::B => Value::from(bytes),
                    _ => Value::from(String::from_utf8(bytes).unwrap()),
                }
            })
        })
        .boxed()
}

fn mti() -> impl Strategy<Value = Mti> {
    prop::array::uniform4(select((b'0'..=b'9').collect::<Vec<u8>>()))
        .prop_map(|digits| Mti::from_digits(digits).unwrap())
}

fn message(profile: Profile) -> impl Strategy<Value = Message<'static>> {
    let fields: Vec<_> = (2..=128u8)
        .filter_map(|n| profile.field(n).map(|spec| (n, spec)))
        .map(|(n, spec)| prop::option::weighted(0.3, value(spec)).prop_map(move |v| (n, v)))
        .collect();
    (mti(), fields).prop_map(|(mti, fields)| {
        let mut message = Message::new(mti);
        for (n, value) in fields {
            if let Some(value) = value {
                message.set(n, value);
            }
        }
        message
    })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (any::<[u8; 4]>(), any::<[u8; 6]>()).prop_map(|(tpdu, header)| Envelope {
        tpdu: Some(Tpdu {
            destination: [tpdu[0], tpdu[1]],
            source: [tpdu[2], tpdu[3]],
        }),
        header: Some(Header(header)),
    })
}

/// `unpacked` holds `built`'s values, whichever way they are read: equal
/// as messages (a hand-written `PartialEq`), field for field through
/// `fields`, `get`, `text` and `bytes`, and again once owned.
fn same_values(unpacked: &Message<'_>, built: &Message<'_>) -> Result<(), TestCaseError> {
    prop_assert_eq!(unpacked, built);
    let owned = unpacked.clone().into_owned();
    prop_assert_eq!(&owned, built);
    for read in [unpacked, &owned] {
        let fields: Vec<_> = read.fields().map(|(n, v)| (n, v.into_owned())).collect();
        let expected: Vec<_> = built.fields().map(|(n, v)| (n, v.into_owned())).collect();
        prop_assert_eq!(&fields, &expected);
        for (n, value) in &expected {
            prop_assert_eq!(read.get(*n).map(Value::into_owned), Some(value.clone()));
            prop_assert_eq!(read.text(*n), value.as_text());
            prop_assert_eq!(read.bytes(*n), value.as_bytes());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ascii_messages_round_trip(m in message(ASCII)) {
        let packed = ASCII.pack(&m).unwrap();
        same_values(&ASCII.unpack(&packed).unwrap(), &m)?;
    }

    #[test]
    fn cup_messages_round_trip(m in message(CUP)) {
        let packed = CUP.pack(&m).unwrap();
        same_values(&CUP.unpack(&packed).unwrap(), &m)?;
    }

    #[test]
    fn frames_round_trip(m in message(CUP), envelope in envelope(), ascii in message(ASCII)) {
        let packed = CUP.pack_frame(&envelope, &m).unwrap();
        prop_assert_eq!(CUP.frame_len(&packed), Ok(Some(packed.len())));
        let frame = CUP.unpack_frame(&packed).unwrap();
        prop_assert_eq!((frame.envelope, frame.message), (envelope, m));

        let packed = ASCII.pack_frame(&Envelope::default(), &ascii).unwrap();
        prop_assert_eq!(ASCII.unpack_frame(&packed).unwrap().message, ascii);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::unpack_ascii(&data);
        fuzzing::unpack_cup(&data);
        fuzzing::round_trip(&data);
    }

    /// Arbitrary bytes rarely get past the bitmap; damaged valid messages
    /// reach every field's decoder.
    #[test]
    fn damaged_messages_never_panic(
        m in message(CUP),
        a in message(ASCII),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        for mut packed in [CUP.pack(&m).unwrap(), ASCII.pack(&a).unwrap()] {
            for (at, byte) in &damage {
                let i = at.index(packed.len());
                packed[i] = *byte;
            }
            fuzzing::round_trip(&packed);
            fuzzing::unpack_ascii(&packed);
            fuzzing::unpack_cup(&packed);
            packed.truncate(cut.index(packed.len() + 1));
            fuzzing::round_trip(&packed);
        }
    }

    #[test]
    fn field_60_reads_back_what_it_writes(
        kind in "[0-9]{2}", batch in "[0-9]{6}", code in "[0-9]{3}", rest in "[0-9]{0,6}",
    ) {
        let f = Field60 { transaction_type: kind, batch_number: Some(batch), network_management_code: Some(code), rest };
        prop_assert_eq!(Field60::parse(&f.to_string()), Ok(f));
    }
}
