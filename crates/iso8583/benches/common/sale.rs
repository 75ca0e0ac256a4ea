//! The message every codec benchmark and the allocation test use: a card
//! sale (0200) with the fields a terminal usually sends, valid in both
//! profiles. The PAN and track 2 are test data (a card no issuer holds),
//! and nothing here is ever logged.

use iso8583::{Message, Mti};

/// Field number and value, in field order.
pub const SALE_FIELDS: [(u8, &str); 15] = [
    (2, "4761739001010010"),
    (3, "000000"),
    (4, "000000001250"),
    (11, "000123"),
    (12, "143015"),
    (13, "1202"),
    (14, "2812"),
    (22, "051"),
    (23, "001"),
    (25, "00"),
    (35, "4761739001010010=28122011758928889"),
    (41, "TERM0001"),
    (42, "MERCHANT0000001"),
    (49, "978"),
    // UnionPay's 60.1 (transaction type), 60.2 (batch), 60.3; in the 1987
    // profile a "reserved national" text field of the same digits.
    (60, "22000001000"),
];

pub fn sale() -> Message<'static> {
    let mut message = Message::new(Mti::FINANCIAL_REQUEST);
    for (field, value) in SALE_FIELDS {
        message.set(field, value);
    }
    message
}

/// The sale as pyiso8583's `default_ascii` encodes it (checked by
/// `scripts/pyiso-bench.py`, which reads this line) and as the 1987
/// profile must pack it: every codec measured times the same bytes.
pub const SALE_ASCII: &[u8] = b"0200703C068020C080101647617390010100100000000000000012500001231430151202281205100100344761739001010010=28122011758928889TERM0001MERCHANT000000197801122000001000";
