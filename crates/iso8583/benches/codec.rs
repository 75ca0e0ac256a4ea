//! Pack and unpack of a typical 0200 sale in each profile, side by side
//! with the `i8583` crate on the same bytes. `i8583` speaks only the ASCII
//! layout (hexadecimal text bitmap, ASCII length prefixes): it has no BCD
//! or binary bitmap, so UnionPay POS is measured for this codec alone.
//!
//! What each side does is not the same work, and the names say so:
//! this codec checks every value against its field's type and length when
//! it packs and when it unpacks; `i8583` checks lengths when a field is set
//! and only splits the bytes when it unpacks. "build_and_pack" (a message
//! built from the values, then packed) is the like-for-like pack figure,
//! since `i8583` does its checking while building.

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use iso8583::{Message, Mti, Profile};

#[path = "common/sale.rs"]
mod common;
use common::{SALE_ASCII, SALE_FIELDS, sale};

fn i8583_build_and_pack() -> Vec<u8> {
    let mut packer = i8583::Packer::new(&i8583::v1987::SPEC);
    packer
        .set_field(0, Cow::Borrowed(b"0200"))
        .expect("the MTI");
    for (field, value) in SALE_FIELDS {
        packer
            .set_field(usize::from(field), Cow::Borrowed(value.as_bytes()))
            .expect("a valid 1987 field");
    }
    packer
        .pack(Vec::with_capacity(256))
        .expect("a message with its MTI")
}

fn build_and_pack(profile: &Profile, out: &mut Vec<u8>) {
    let mut message = Message::new(Mti::FINANCIAL_REQUEST);
    for (field, value) in SALE_FIELDS {
        message.set(field, value);
    }
    out.clear();
    profile.pack_into(&message, out).expect("a valid sale");
}

/// Both codecs must agree on the bytes before their speed means anything.
fn check_same_bytes(ascii: &[u8]) {
    assert_eq!(ascii, SALE_ASCII, "not the bytes pyiso8583 encodes");
    assert_eq!(
        i8583_build_and_pack(),
        ascii,
        "i8583 and this codec pack the sale differently"
    );
    let mut unpacker = i8583::Unpacker::new(ascii);
    let fields = unpacker
        .unpack(&i8583::v1987::SPEC)
        .expect("i8583 unpacks the sale");
    for (field, value) in SALE_FIELDS {
        assert_eq!(fields[usize::from(field)], Some(value.as_bytes()));
    }
}

fn codec(c: &mut Criterion) {
    let message = sale();
    let ascii = Profile::ASCII_1987.pack(&message).expect("a valid sale");
    let cup = Profile::CUP_POS.pack(&message).expect("a valid sale");
    check_same_bytes(&ascii);
    assert_eq!(
        Profile::CUP_POS.unpack(&cup).expect("unpacks").into_owned(),
        message
    );

    let mut pack = c.benchmark_group("pack_0200");
    let mut out = Vec::with_capacity(256);
    for (name, profile) in [
        ("ascii_1987", Profile::ASCII_1987),
        ("cup_pos", Profile::CUP_POS),
    ] {
        pack.bench_function(format!("iso8583/{name}"), |b| {
            b.iter(|| {
                out.clear();
                profile
                    .pack_into(black_box(&message), &mut out)
                    .expect("a valid sale");
                black_box(&out);
            })
        });
        pack.bench_function(format!("iso8583/{name}/build_and_pack"), |b| {
            b.iter(|| {
                build_and_pack(&profile, &mut out);
                black_box(&out);
            })
        });
    }
    let mut packer = i8583::Packer::new(&i8583::v1987::SPEC);
    packer
        .set_field(0, Cow::Borrowed(b"0200"))
        .expect("the MTI");
    for (field, value) in SALE_FIELDS {
        packer
            .set_field(usize::from(field), Cow::Borrowed(value.as_bytes()))
            .expect("a valid 1987 field");
    }
    pack.bench_function("i8583/ascii_1987", |b| {
        b.iter(|| black_box(packer.pack(Vec::with_capacity(256)).expect("packs")))
    });
    pack.bench_function("i8583/ascii_1987/build_and_pack", |b| {
        b.iter(|| black_box(i8583_build_and_pack()))
    });
    pack.finish();

    // Each side's result stays where it was made and `black_box` sees a
    // reference to it, as `i8583`'s unpacker keeps its slices and hands
    // out a reference: neither side pays for copying its result into the
    // harness.
    let mut unpack = c.benchmark_group("unpack_0200");
    unpack.bench_function("iso8583/ascii_1987", |b| {
        b.iter(|| {
            let unpacked = Profile::ASCII_1987
                .unpack(black_box(&ascii))
                .expect("unpacks");
            black_box(&unpacked);
        })
    });
    unpack.bench_function("iso8583/cup_pos", |b| {
        b.iter(|| {
            let unpacked = Profile::CUP_POS.unpack(black_box(&cup)).expect("unpacks");
            black_box(&unpacked);
        })
    });
    unpack.bench_function("i8583/ascii_1987", |b| {
        b.iter(|| {
            let mut unpacker = i8583::Unpacker::new(black_box(&ascii));
            black_box(unpacker.unpack(&i8583::v1987::SPEC).expect("unpacks"));
        })
    });
    // Unpacking and then reading every value as text (or bytes), what a
    // handler does: this codec's text views check UTF-8 again on reading
    // (the price of keeping only positions and no unsafe code), and
    // `i8583`'s byte slices need the same check to become text.
    unpack.bench_function("iso8583/ascii_1987/read_every_field", |b| {
        b.iter(|| {
            let unpacked = Profile::ASCII_1987
                .unpack(black_box(&ascii))
                .expect("unpacks");
            for (field, value) in unpacked.fields() {
                black_box((field, value));
            }
        })
    });
    unpack.bench_function("i8583/ascii_1987/read_every_field", |b| {
        b.iter(|| {
            let mut unpacker = i8583::Unpacker::new(black_box(&ascii));
            let fields = unpacker.unpack(&i8583::v1987::SPEC).expect("unpacks");
            for (field, value) in fields.iter().enumerate().skip(2) {
                if let Some(bytes) = value {
                    black_box((field, std::str::from_utf8(bytes).expect("ASCII")));
                }
            }
        })
    });
    // The floor under every unpack: the empty message an unpack fills
    // and returns, apart from any field's work.
    unpack.bench_function("iso8583/empty_message", |b| {
        b.iter(|| {
            let message = Message::new(black_box(Mti::FINANCIAL_REQUEST));
            black_box(&message);
        })
    });
    unpack.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
