//! The message type indicator: four decimal digits — version, class,
//! function, origin — and the one rule the gateway needs from it, which
//! response answers a request.

use std::fmt;

/// A message type indicator such as `0200`; always four ASCII digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mti([u8; 4]);

impl Mti {
    pub const AUTHORIZATION_REQUEST: Mti = Mti(*b"0100");
    pub const FINANCIAL_REQUEST: Mti = Mti(*b"0200");
    pub const FINANCIAL_RESPONSE: Mti = Mti(*b"0210");
    pub const FINANCIAL_ADVICE: Mti = Mti(*b"0220");
    pub const BATCH_UPLOAD: Mti = Mti(*b"0320");
    pub const REVERSAL_REQUEST: Mti = Mti(*b"0400");
    pub const REVERSAL_ADVICE: Mti = Mti(*b"0420");
    pub const RECONCILIATION_REQUEST: Mti = Mti(*b"0500");
    pub const NETWORK_REQUEST: Mti = Mti(*b"0800");

    /// Four ASCII digits, or `None`.
    pub const fn from_digits(digits: [u8; 4]) -> Option<Mti> {
        let mut i = 0;
        while i < 4 {
            if !digits[i].is_ascii_digit() {
                return None;
            }
            i += 1;
        }
        Some(Mti(digits))
    }

    /// Parses `"0200"`; anything but four digits is `None`.
    pub fn parse(text: &str) -> Option<Mti> {
        let digits: [u8; 4] = text.as_bytes().try_into().ok()?;
        Mti::from_digits(digits)
    }

    /// The four ASCII digits.
    pub fn digits(&self) -> [u8; 4] {
        self.0
    }

    pub fn as_str(&self) -> &str {
        // Four ASCII digits by construction; the fallback is unreachable
        // but keeps this free of panics and unsafe code.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }

    /// The message class (second digit): 1 authorization, 2 financial,
    /// 3 file action, 4 reversal, 5 reconciliation, 8 network management.
    pub fn class(&self) -> u8 {
        self.0[1] - b'0'
    }

    /// The function (third digit): 0 request, 1 request response, 2 advice,
    /// 3 advice response, 4 notification.
    pub fn function(&self) -> u8 {
        self.0[2] - b'0'
    }

    /// Whether the origin digit says "repeat" (1, 3, 5: a retransmission).
    pub fn is_repeat(&self) -> bool {
        matches!(self.0[3], b'1' | b'3' | b'5')
    }

    /// The MTI that answers this one: a request (function 0) is answered
    /// by function 1, an advice (2) by 3, and a repeat is answered like its
    /// original (0200 → 0210, 0401 → 0410, 0421 → 0430, 0800 → 0810).
    /// `None` for what is not answered: responses, notifications and the
    /// reserved functions.
    pub fn response(&self) -> Option<Mti> {
        let function = match self.0[2] {
            b'0' => b'1',
            b'2' => b'3',
            _ => return None,
        };
        // Origin 0/1 acquirer, 2/3 issuer, 4/5 other: the answer drops the
        // repeat bit and keeps who originated the exchange.
        let origin = b'0' + ((self.0[3] - b'0') & !1);
        Some(Mti([self.0[0], self.0[1], function, origin]))
    }
}

impl fmt::Display for Mti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Mti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mti({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_follow_function_and_drop_the_repeat() {
        for (request, response) in [
            ("0100", "0110"),
            ("0200", "0210"),
            ("0220", "0230"),
            ("0221", "0230"),
            ("0320", "0330"),
            ("0400", "0410"),
            ("0401", "0410"),
            ("0420", "0430"),
            ("0421", "0430"),
            ("0500", "0510"),
            ("0800", "0810"),
            ("0820", "0830"),
            ("0202", "0212"),
            ("0203", "0212"),
        ] {
            let mti = Mti::parse(request).unwrap();
            assert_eq!(
                mti.response().map(|m| m.to_string()).as_deref(),
                Some(response),
                "{request}"
            );
        }
    }

    #[test]
    fn responses_and_notifications_have_no_response() {
        for mti in ["0210", "0230", "0410", "0240", "0850", "0290"] {
            assert_eq!(Mti::parse(mti).unwrap().response(), None, "{mti}");
        }
    }

    #[test]
    fn only_four_digits_parse() {
        for bad in ["", "020", "02000", "02A0", " 200", "٠٢٠٠"] {
            assert_eq!(Mti::parse(bad), None, "{bad:?}");
        }
        let mti = Mti::parse("0421").unwrap();
        assert_eq!((mti.class(), mti.function(), mti.is_repeat()), (4, 2, true));
    }
}
