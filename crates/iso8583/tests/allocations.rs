//! Unpacking a message whose wire form is its value allocates nothing: the
//! container is an array and every value borrows from the input. Counted
//! by a global allocator wrapper from `stats_alloc` (the workspace forbids
//! unsafe code, which a hand-written `GlobalAlloc` needs). Its own binary
//! without the test harness (`harness = false`): the counter is global, and
//! the harness's own threads (its timer, output capture) allocated while it
//! counted once, on a loaded machine.

use std::alloc::System;
use std::hint::black_box;

use iso8583::Profile;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static COUNTING: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[path = "../benches/common/sale.rs"]
mod common;

fn main() {
    unpacking_an_ascii_sale_allocates_nothing_while_cup_decoding_does();
    println!("allocations: unpacking an ASCII sale allocates nothing; a CUP unpack does");
}

fn unpacking_an_ascii_sale_allocates_nothing_while_cup_decoding_does() {
    let message = common::sale();
    let ascii = Profile::ASCII_1987.pack(&message).unwrap();
    assert_eq!(ascii, common::SALE_ASCII);
    let cup = Profile::CUP_POS.pack(&message).unwrap();
    let framed = Profile::ASCII_1987
        .pack_frame(&Default::default(), &message)
        .unwrap();

    let region = Region::new(COUNTING);
    for _ in 0..1000 {
        let unpacked = Profile::ASCII_1987.unpack(black_box(&ascii)).unwrap();
        black_box(&unpacked);
        let frame = Profile::ASCII_1987
            .unpack_frame(black_box(&framed))
            .unwrap();
        black_box(&frame);
    }
    let ascii_stats = region.change();
    assert_eq!(
        (ascii_stats.allocations, ascii_stats.reallocations),
        (0, 0),
        "unpacking the ASCII sale allocated: {ascii_stats:?}"
    );

    // The counter is live: BCD digits must be decoded into owned text, so
    // the same sale in UnionPay POS does allocate.
    let region = Region::new(COUNTING);
    let unpacked = Profile::CUP_POS.unpack(black_box(&cup)).unwrap();
    let cup_stats = region.change();
    assert!(
        cup_stats.allocations > 0,
        "a CUP unpack decodes BCD, which cannot borrow: {cup_stats:?}"
    );
    assert_eq!(unpacked.into_owned(), message);

    // Every value of the ASCII unpack borrows from the input.
    let unpacked = Profile::ASCII_1987.unpack(&ascii).unwrap();
    assert!(unpacked.fields().all(|(n, _)| unpacked.is_borrowed(n)));
    assert_eq!(unpacked.fields().count(), common::SALE_FIELDS.len());
}
