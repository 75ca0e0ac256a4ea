//! Interoperability with pyiso8583, a codec nobody here wrote: every vector
//! in `vectors/ascii_1987.json` was packed by pyiso8583 4.0.1 with its
//! `default_ascii` spec (`vectors/generate.py` says how). This codec must
//! unpack each to the same field values and pack it back byte for byte,
//! and must refuse what pyiso8583 refuses, naming the same field.

use iso8583::{Error, Message, Part, Profile, Value};
use serde_json::Value as Json;

// The widest vectors hold every field at its maximum length.
const ASCII: Profile = Profile::ASCII_1987.with_max_len(65_535);

fn vectors() -> Json {
    let text = include_str!("vectors/ascii_1987.json");
    serde_json::from_str(text).expect("vectors parse")
}

fn field_number(key: &str) -> u8 {
    key.parse().unwrap_or_else(|_| panic!("field key {key:?}"))
}

#[test]
fn every_pyiso8583_vector_unpacks_to_its_fields_and_packs_back_identically() {
    let vectors = vectors();
    assert_eq!(vectors["generator"], "pyiso8583 4.0.1, spec default_ascii");
    let valid = vectors["valid"].as_array().unwrap();
    assert!(valid.len() >= 18);
    let mut fields_seen = std::collections::BTreeSet::new();
    for vector in valid {
        let name = vector["name"].as_str().unwrap();
        let wire = hex::decode(vector["hex"].as_str().unwrap()).unwrap();
        let message = ASCII
            .unpack(&wire)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let fields = vector["fields"].as_object().unwrap();
        assert_eq!(message.mti().as_str(), fields["t"], "{name}: MTI");
        let expected: Vec<u8> = fields
            .keys()
            .filter(|k| *k != "t")
            .map(|k| field_number(k))
            .collect();
        let got: Vec<u8> = message.fields().map(|(n, _)| n).collect();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort();
        assert_eq!(got, expected_sorted, "{name}: fields present");
        for (key, value) in fields.iter().filter(|(k, _)| *k != "t") {
            let n = field_number(key);
            let text = value.as_str().unwrap();
            match message.get(n).unwrap() {
                Value::Text(ours) => assert_eq!(ours, text, "{name}: field {n}"),
                // pyiso8583 keeps binary fields as the hex text it sends.
                Value::Binary(ours) => {
                    assert_eq!(hex::encode_upper(ours), text, "{name}: field {n}")
                }
            }
            fields_seen.insert(n);
        }
        assert_eq!(ASCII.pack(&message).unwrap(), wire, "{name}: packed back");
    }
    // Every field the profile defines was exercised by some vector.
    let defined: std::collections::BTreeSet<u8> =
        (2..=128).filter(|&n| ASCII.field(n).is_some()).collect();
    assert_eq!(fields_seen, defined);
}

#[test]
fn messages_built_here_are_what_pyiso8583_built() {
    // The sale vector, built field by field with this crate's API.
    let vectors = vectors();
    let sale = vectors["valid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sale")
        .unwrap();
    let fields = sale["fields"].as_object().unwrap();
    let mut message = Message::new(iso8583::Mti::FINANCIAL_REQUEST);
    for (key, value) in fields.iter().filter(|(k, _)| *k != "t") {
        let n = field_number(key);
        let text = value.as_str().unwrap();
        match ASCII.field(n).unwrap().kind {
            iso8583::Kind::B => message.set(n, hex::decode(text).unwrap()),
            _ => message.set(n, text.to_owned()),
        };
    }
    let wire = hex::decode(sale["hex"].as_str().unwrap()).unwrap();
    assert_eq!(ASCII.pack(&message).unwrap(), wire);
}

#[test]
fn what_pyiso8583_refuses_is_refused_naming_the_same_field() {
    let vectors = vectors();
    let invalid = vectors["invalid"].as_array().unwrap();
    assert!(invalid.len() >= 7);
    for vector in invalid {
        let name = vector["name"].as_str().unwrap();
        let wire = hex::decode(vector["hex"].as_str().unwrap()).unwrap();
        let error = ASCII.unpack(&wire).expect_err(name).error;
        let pyiso_field = vector["field"].as_str().unwrap();
        if vector["pyiso8583_error"]
            .as_str()
            .unwrap()
            .starts_with("Extra data after last field")
        {
            // pyiso8583 names the last field read; the bytes are after it.
            assert!(
                matches!(error, Error::TrailingBytes { .. }),
                "{name}: {error}"
            );
            continue;
        }
        let expected = match pyiso_field {
            "t" => Part::Mti,
            "p" | "1" => Part::Bitmap,
            n => Part::Field(field_number(n)),
        };
        assert_eq!(error.part(), Some(expected), "{name}: {error}");
    }
}
