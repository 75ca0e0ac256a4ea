//! The bodies of the fuzz targets (`fuzz/fuzz_targets/`), here so that the
//! deterministic smoke test in `cargo test` runs exactly what the fuzzer
//! runs, over the committed corpus. Each panics only on a broken
//! invariant.

use std::borrow::Cow;

use crate::cup::Field60;
use crate::message::{Message, Value, is_pan, is_secret};
use crate::profile::Profile;

/// Target `unpack_ascii`: every entry point on arbitrary bytes.
pub fn unpack_ascii(data: &[u8]) {
    unpack(&Profile::ASCII_1987, data);
}

/// Target `unpack_cup`: every entry point on arbitrary bytes.
pub fn unpack_cup(data: &[u8]) {
    unpack(&Profile::CUP_POS, data);
}

/// Target `round_trip`: whatever unpacks, in either profile, as a message
/// or as a frame, packs again and unpacks to the same message.
pub fn round_trip(data: &[u8]) {
    for profile in [Profile::ASCII_1987, Profile::CUP_POS] {
        if let Ok(message) = profile.unpack(data) {
            // Packing never grows what was unpacked (a canonical pad
            // nibble, upper-case hex, no empty secondary bitmap), so it
            // cannot hit the size limit the input passed.
            let packed = profile.pack(&message).expect("an unpacked message packs");
            let again = profile.unpack(&packed).expect("a packed message unpacks");
            assert_eq!(message, again, "{}: message round trip", profile.name);
            assert_eq!(
                message.clone().into_owned(),
                again,
                "{}: an owned copy keeps every value",
                profile.name
            );
            assert_eq!(
                profile.pack(&again).as_deref(),
                Ok(&packed[..]),
                "{}: packing is canonical",
                profile.name
            );
        }
        if let Ok(frame) = profile.unpack_frame(data) {
            let packed = profile
                .pack_frame(&frame.envelope, &frame.message)
                .expect("an unpacked frame packs");
            let again = profile
                .unpack_frame(&packed)
                .expect("a packed frame unpacks");
            assert_eq!(frame, again, "{}: frame round trip", profile.name);
        }
    }
}

fn unpack(profile: &Profile, data: &[u8]) {
    if let Ok(Some(len)) = profile.frame_len(data) {
        assert!(len <= profile.framing.length.size() + profile.max_len);
    }
    let results = [
        profile.unpack(data),
        profile.unpack_frame(data).map(|frame| frame.message),
    ];
    for result in results {
        match result {
            Ok(message) => {
                debug_hides_card_data(&message);
                if let Some(Ok(field60)) = Field60::of(&message) {
                    assert_eq!(message.text(60), Some(field60.to_string().as_str()));
                }
                let _ = message.mti().response();
            }
            Err(rejected) => {
                let _ = rejected.to_string();
                let _ = rejected.error.part();
                if let Some(partial) = &rejected.partial {
                    let _ = partial.answerable();
                }
            }
        }
    }
}

/// Card data rule, as an invariant: what `Debug` shows does not change
/// when a secret field's content (or a PAN's masked middle) does.
fn debug_hides_card_data(message: &Message<'_>) {
    let shown = format!("{message:?}");
    for (field, value) in message
        .fields()
        .filter(|(n, _)| is_secret(*n) || is_pan(*n))
    {
        let hidden = |i: usize, len: usize| {
            is_secret(field) || (is_pan(field) && (len <= 10 || (6..len - 4).contains(&i)))
        };
        let other = match value {
            Value::Text(text) => Value::Text(Cow::Owned(
                text.chars()
                    .enumerate()
                    .map(|(i, c)| match c {
                        _ if !hidden(i, text.len()) => c,
                        '0' => '1',
                        _ => '0',
                    })
                    .collect(),
            )),
            Value::Binary(bytes) => Value::Binary(Cow::Owned(
                bytes
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| if hidden(i, bytes.len()) { !b } else { b })
                    .collect(),
            )),
        };
        let mut changed = message.clone();
        changed.set(field, other);
        assert_eq!(shown, format!("{changed:?}"), "Debug shows field {field}");
    }
}
