//! Envelope timestamps (`google.protobuf.Timestamp`) to and from times.

use prost_types::Timestamp;
use time::OffsetDateTime;

/// An envelope's timestamp as a time, if it is a plausible one (unset or
/// malformed timestamps are `None`, so callers fall back to "now").
pub fn to_time(ts: &Timestamp) -> Option<OffsetDateTime> {
    if ts.seconds <= 0 || !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

pub fn from_time(at: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_reject_the_implausible() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_000_000_123_456_789).unwrap();
        assert_eq!(to_time(&from_time(at)), Some(at));
        assert_eq!(to_time(&Timestamp::default()), None);
        let bad_nanos = Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert_eq!(to_time(&bad_nanos), None);
    }
}
