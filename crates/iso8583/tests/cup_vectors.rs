//! Byte-exact UnionPay POS frames built by hand from the published layout
//! (see the crate README for the sources), checked in both directions:
//! each unpacks to the listed fields and packs back to the same bytes.

use iso8583::cup::Field60;
use iso8583::{Envelope, Header, Message, Mti, Profile, Tpdu};

const CUP: Profile = Profile::CUP_POS;

fn bytes(annotated: &str) -> Vec<u8> {
    // One segment per line, `#` starts a comment.
    let hex: String = annotated
        .lines()
        .map(|line| line.split('#').next().unwrap())
        .collect::<String>()
        .split_whitespace()
        .collect();
    hex::decode(hex).unwrap()
}

fn terminal_envelope() -> Envelope {
    Envelope {
        tpdu: Some(Tpdu {
            destination: [0x00, 0x03],
            source: [0x00, 0x00],
        }),
        header: Some(Header([0x60, 0x31, 0x00, 0x31, 0x00, 0x00])),
    }
}

/// Unpacks `wire`, checks its envelope and fields, and packs it back.
fn check(wire: &[u8], mti: &str, text: &[(u8, &str)], binary: &[(u8, &[u8])]) -> Message<'static> {
    let frame = CUP.unpack_frame(wire).unwrap();
    assert_eq!(frame.envelope, terminal_envelope());
    assert_eq!(frame.message.mti().as_str(), mti);
    let present: Vec<u8> = frame.message.fields().map(|(n, _)| n).collect();
    let mut expected: Vec<u8> = text
        .iter()
        .map(|(n, _)| *n)
        .chain(binary.iter().map(|(n, _)| *n))
        .collect();
    expected.sort();
    assert_eq!(present, expected);
    for (n, value) in text {
        assert_eq!(frame.message.text(*n), Some(*value), "field {n}");
    }
    for (n, value) in binary {
        assert_eq!(frame.message.bytes(*n), Some(*value), "field {n}");
    }
    assert_eq!(
        CUP.pack_frame(&frame.envelope, &frame.message).unwrap(),
        wire
    );
    assert_eq!(CUP.frame_len(wire), Ok(Some(wire.len())));
    frame.message.into_owned()
}

#[test]
fn sign_on() {
    let wire = bytes(
        "003C                         # length: 60 bytes follow
         60 0003 0000                 # TPDU: to NII 0003 from 0000
         60 31 00 31 00 00            # header
         08 00                        # MTI
         00 20 00 00 00 C0 00 12      # bitmap: 11, 41, 42, 60, 63
         00 00 01                     # 11 STAN
         3132333435363738             # 41 terminal id
         313233343536373839303132333435  # 42 merchant id
         00 11  00 00 00 01 00 30     # 60: 11 digits, left-aligned, pad 0
         00 03  30 31 20              # 63: operator code '01 '",
    );
    let message = check(
        &wire,
        "0800",
        &[
            (11, "000001"),
            (41, "12345678"),
            (42, "123456789012345"),
            (60, "00000001003"),
            (63, "01 "),
        ],
        &[],
    );
    let field60 = Field60::of(&message).unwrap().unwrap();
    assert_eq!(field60.transaction_type, Field60::MANAGEMENT);
    assert_eq!(field60.batch_number.as_deref(), Some("000001"));
    assert_eq!(
        field60.network_management_code.as_deref(),
        Some(Field60::SIGN_ON_DOUBLE_LENGTH_KEY)
    );
}

const PIN_BLOCK: [u8; 8] = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
const MAC: [u8; 8] = [0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8];

#[test]
fn sale() {
    let wire = bytes(
        "007C                         # length: 124 bytes follow
         60 0003 0000                 # TPDU
         60 31 00 31 00 00            # header
         02 00                        # MTI
         70 24 04 C0 20 C0 98 11      # bitmap: 2 3 4 11 14 22 25 26 35 41 42 49 52 53 60 64
         16 6225880012345678          # 2 PAN: 16 digits
         00 00 00                     # 3 processing code
         00 00 00 00 10 00            # 4 amount 10.00
         00 00 02                     # 11 STAN
         29 12                        # 14 expiry
         02 10                        # 22 entry mode 021, left-aligned
         00                           # 25 condition code
         12                           # 26 PIN capture code
         34 6225880012345678 D2 9122010000000000  # 35 track 2: 34 digits, '=' is D
         3132333435363738             # 41
         313233343536373839303132333435  # 42
         31 35 36                     # 49 currency 156
         1122334455667788             # 52 PIN block
         20 00 00 00 00 00 00 00      # 53 security control
         00 11  22 00 00 01 00 00     # 60: sale, batch 000001, 000
         A1A2A3A4A5A6A7A8             # 64 MAC",
    );
    let message = check(
        &wire,
        "0200",
        &[
            (2, "6225880012345678"),
            (3, "000000"),
            (4, "000000001000"),
            (11, "000002"),
            (14, "2912"),
            (22, "021"),
            (25, "00"),
            (26, "12"),
            (35, "6225880012345678=29122010000000000"),
            (41, "12345678"),
            (42, "123456789012345"),
            (49, "156"),
            (53, "2000000000000000"),
            (60, "22000001000"),
        ],
        &[(52, &PIN_BLOCK), (64, &MAC)],
    );
    let field60 = Field60::of(&message).unwrap().unwrap();
    assert_eq!(field60, Field60::new(Field60::SALE, "000001", "000"));

    // The card data rule holds for what a log line would show.
    let shown = format!("{message:?}");
    assert!(shown.contains("622588******5678"), "{shown}");
    assert!(!shown.contains("6225880012345678"), "{shown}");
    assert!(!shown.contains("2912201"), "{shown}");

    // The answer goes back with the TPDU swapped and the header echoed.
    let request = CUP.unpack_frame(&wire).unwrap();
    let mut answer = Message::new(request.message.mti().response().unwrap());
    answer
        .set(11, "000002")
        .set(37, "120210300001")
        .set(39, "00")
        .set(41, "12345678");
    assert_eq!(
        CUP.pack_frame(&request.envelope.response(), &answer)
            .unwrap(),
        bytes(
            "002E 60 0000 0003 60 31 00 31 00 00  02 10
             00 20 00 00 0A 80 00 00   # 11, 37, 39, 41
             00 00 02
             313230323130333030303031  # 37
             3030                      # 39
             3132333435363738          # 41"
        )
    );
}

#[test]
fn reversal() {
    let wire = bytes(
        "005D                         # length: 93 bytes follow
         60 0003 0000  60 31 00 31 00 00
         04 00                        # MTI
         70 24 04 80 02 C0 80 11      # bitmap: 2 3 4 11 14 22 25 39 41 42 49 60 64
         19 6225880012345678901 0     # 2 PAN: 19 digits, trailing pad nibble
         00 00 00
         00 00 00 00 10 00
         00 00 02                     # 11: the original's STAN
         29 12
         02 10
         00
         39 38                        # 39 reason: 98, no answer from the host
         3132333435363738
         313233343536373839303132333435
         31 35 36
         00 11  22 00 00 01 00 00
         A1A2A3A4A5A6A7A8",
    );
    check(
        &wire,
        "0400",
        &[
            (2, "6225880012345678901"),
            (3, "000000"),
            (4, "000000001000"),
            (11, "000002"),
            (14, "2912"),
            (22, "021"),
            (25, "00"),
            (39, "98"),
            (41, "12345678"),
            (42, "123456789012345"),
            (49, "156"),
            (60, "22000001000"),
        ],
        &[(64, &MAC)],
    );
    assert_eq!(
        Mti::parse("0400")
            .unwrap()
            .response()
            .map(|m| m.to_string()),
        Some("0410".into())
    );
}
