//! Card data: the PAN, its masked and fingerprinted forms, and the expiry.
//!
//! The types here are shaped so that a full PAN cannot leak by accident:
//! `Pan` has no `Serialize` impl, its `Debug` and `Display` show only the
//! masked form, and validation errors never echo the digits. The raw value is
//! reachable only through an explicit `expose()` call, which is easy to audit.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::InvalidField;

/// Length bounds of a PAN (ISO/IEC 7812).
const PAN_MIN_LEN: usize = 12;
const PAN_MAX_LEN: usize = 19;
/// PCI DSS allows showing at most the first 6 and last 4 digits.
const SHOWN_PREFIX: usize = 6;
const SHOWN_SUFFIX: usize = 4;

/// A validated primary account number. The inner string is ASCII digits only.
#[derive(Clone, PartialEq, Eq)]
pub struct Pan(String);

impl Pan {
    /// Field "pan": ASCII digits only (no spaces), 12..=19 digits, valid
    /// Luhn check digit.
    pub fn parse(s: &str) -> Result<Pan, InvalidField> {
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidField::new("pan", "must contain only ASCII digits"));
        }
        if !(PAN_MIN_LEN..=PAN_MAX_LEN).contains(&s.len()) {
            return Err(InvalidField::new(
                "pan",
                format!(
                    "must be {PAN_MIN_LEN} to {PAN_MAX_LEN} digits long, got {}",
                    s.len()
                ),
            ));
        }
        if !luhn_valid(s.as_bytes()) {
            return Err(InvalidField::new("pan", "check digit is invalid (Luhn)"));
        }
        Ok(Pan(s.to_owned()))
    }

    /// First 6, `*` for the middle, last 4; same length as the PAN.
    pub fn masked(&self) -> MaskedPan {
        let len = self.0.len();
        let mut out = String::with_capacity(len);
        out.push_str(self.bin());
        out.extend(std::iter::repeat_n('*', len - SHOWN_PREFIX - SHOWN_SUFFIX));
        out.push_str(self.last4());
        MaskedPan(out)
    }

    /// The only way to the raw digits; every call site is a place card data
    /// leaves the protected type, so keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The issuer identification number (first 6 digits).
    pub fn bin(&self) -> &str {
        // Slicing is safe: parse guarantees >= 12 ASCII digits.
        &self.0[..SHOWN_PREFIX]
    }

    pub fn last4(&self) -> &str {
        &self.0[self.0.len() - SHOWN_SUFFIX..]
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({})", self.masked())
    }
}

impl fmt::Display for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.masked(), f)
    }
}

/// Luhn (mod 10) check over ASCII digits, check digit last.
fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A PAN with only the first 6 and last 4 digits visible: safe to log,
/// store and show on receipts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MaskedPan(String);

impl MaskedPan {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Field "masked_pan": 12..=19 chars, first 6 and last 4 are digits, the
    /// middle is all `*` (so an unmasked PAN is rejected).
    pub fn parse(s: &str) -> Result<MaskedPan, InvalidField> {
        let bytes = s.as_bytes();
        if !(PAN_MIN_LEN..=PAN_MAX_LEN).contains(&bytes.len()) {
            return Err(InvalidField::new(
                "masked_pan",
                format!(
                    "must be {PAN_MIN_LEN} to {PAN_MAX_LEN} characters long, got {}",
                    bytes.len()
                ),
            ));
        }
        let (head, rest) = bytes.split_at(SHOWN_PREFIX);
        let (middle, tail) = rest.split_at(rest.len() - SHOWN_SUFFIX);
        if !head.iter().chain(tail).all(u8::is_ascii_digit) {
            return Err(InvalidField::new(
                "masked_pan",
                "first 6 and last 4 characters must be digits",
            ));
        }
        if !middle.iter().all(|&b| b == b'*') {
            return Err(InvalidField::new(
                "masked_pan",
                "middle characters must all be '*'",
            ));
        }
        Ok(MaskedPan(s.to_owned()))
    }
}

impl fmt::Display for MaskedPan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MaskedPan {
    type Error = InvalidField;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        MaskedPan::parse(&s)
    }
}

impl From<MaskedPan> for String {
    fn from(m: MaskedPan) -> String {
        m.0
    }
}

/// Which key made a fingerprint, so the key can be rotated (ADR 33): 1 to
/// 32 characters of `A-Z a-z 0-9 . _ -`. Not secret; stored beside every
/// fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PanKeyId(String);

impl PanKeyId {
    /// The id of the key configured before keys had ids: every fingerprint
    /// journaled until then carries it (authorization's migration 0012).
    pub const FIRST: &'static str = "k1";

    /// Field "pan_hash_key_id".
    pub fn parse(s: &str) -> Result<PanKeyId, InvalidField> {
        if s.is_empty() || s.len() > 32 {
            return Err(InvalidField::new(
                "pan_hash_key_id",
                "must be 1 to 32 characters",
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(InvalidField::new(
                "pan_hash_key_id",
                "must contain only letters, digits, '.', '_' and '-'",
            ));
        }
        Ok(PanKeyId(s.to_owned()))
    }

    /// [`PanKeyId::FIRST`].
    pub fn first() -> PanKeyId {
        PanKeyId(Self::FIRST.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PanKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Keyed hash of a PAN (HMAC-SHA256) so the journal can find a card again
/// without storing it. Keyed rather than a plain hash because the PAN space
/// is small enough to brute-force an unkeyed SHA-256. Each hasher has its
/// key's id, which every fingerprint it makes carries.
#[derive(Clone)]
pub struct PanHasher {
    id: PanKeyId,
    mac: Hmac<Sha256>,
}

impl PanHasher {
    /// A hasher for the key [`PanKeyId::FIRST`].
    pub fn new(key: &[u8]) -> PanHasher {
        PanHasher::with_id(PanKeyId::first(), key)
    }

    /// A hasher for the key named `id`.
    pub fn with_id(id: PanKeyId, key: &[u8]) -> PanHasher {
        // HMAC is defined for keys of any length (long keys are hashed, short
        // ones padded), so `new_from_slice` cannot fail for Hmac<Sha256>.
        let mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
        PanHasher { id, mac }
    }

    pub fn id(&self) -> &PanKeyId {
        &self.id
    }

    pub fn fingerprint(&self, pan: &Pan) -> PanFingerprint {
        let mut mac = self.mac.clone();
        mac.update(pan.expose().as_bytes());
        PanFingerprint {
            key_id: self.id.clone(),
            hex: hex::encode(mac.finalize().into_bytes()),
        }
    }
}

impl fmt::Debug for PanHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PanHasher {{ id: {}, key: <redacted> }}", self.id)
    }
}

/// The fingerprint keys in use (ADR 33): the current one, which
/// fingerprints every new sale, and the previous ones, kept as long as a
/// journaled fingerprint made with them may still be compared (a retry of
/// a sale from before a rotation). Which key a comparison uses is decided
/// here and nowhere else: the key the stored fingerprint names.
#[derive(Debug, Clone)]
pub struct PanKeyring {
    current: PanHasher,
    previous: Vec<PanHasher>,
}

/// A fingerprint names a key the keyring no longer holds: the card it was
/// made of cannot be compared with any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredKey(pub PanKeyId);

impl fmt::Display for RetiredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the card was fingerprinted with key {}, which is no longer configured",
            self.0
        )
    }
}

impl PanKeyring {
    pub fn new(current: PanHasher) -> PanKeyring {
        PanKeyring {
            current,
            previous: Vec::new(),
        }
    }

    /// Adds a previous key. Field "pan_hash_previous_keys": its id must be
    /// another than every key's already in the keyring.
    pub fn with_previous(mut self, previous: PanHasher) -> Result<PanKeyring, InvalidField> {
        if self.hasher(previous.id()).is_some() {
            return Err(InvalidField::new(
                "pan_hash_previous_keys",
                format!("key id {} is in the keyring already", previous.id()),
            ));
        }
        self.previous.push(previous);
        Ok(self)
    }

    pub fn current_id(&self) -> &PanKeyId {
        self.current.id()
    }

    /// A new sale's fingerprint: under the current key.
    pub fn fingerprint(&self, pan: &Pan) -> PanFingerprint {
        self.current.fingerprint(pan)
    }

    /// `pan`'s fingerprint under the key `stored` was made with, so the two
    /// compare equal exactly when they are the same card, whichever key is
    /// current now.
    pub fn fingerprint_like(
        &self,
        stored: &PanFingerprint,
        pan: &Pan,
    ) -> Result<PanFingerprint, RetiredKey> {
        self.hasher(stored.key_id())
            .map(|hasher| hasher.fingerprint(pan))
            .ok_or_else(|| RetiredKey(stored.key_id().clone()))
    }

    fn hasher(&self, id: &PanKeyId) -> Option<&PanHasher> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|hasher| hasher.id() == id)
    }
}

/// HMAC-SHA256 of a PAN as 64 lowercase hex characters, with the id of the
/// key it was made with: fingerprints of one card under two keys differ,
/// and are never compared with each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PanFingerprint {
    key_id: PanKeyId,
    hex: String,
}

impl PanFingerprint {
    /// The HMAC, hex-encoded.
    pub fn as_str(&self) -> &str {
        &self.hex
    }

    pub fn key_id(&self) -> &PanKeyId {
        &self.key_id
    }

    /// Field "pan_fingerprint": exactly 64 lowercase hex characters, the
    /// canonical form, so equal fingerprints always compare equal as strings.
    pub fn from_hex(key_id: PanKeyId, s: &str) -> Result<PanFingerprint, InvalidField> {
        if s.len() != 64 {
            return Err(InvalidField::new(
                "pan_fingerprint",
                format!("must be 64 hex characters, got {}", s.len()),
            ));
        }
        if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(InvalidField::new(
                "pan_fingerprint",
                "must contain only lowercase hex characters",
            ));
        }
        Ok(PanFingerprint {
            key_id,
            hex: s.to_owned(),
        })
    }
}

impl fmt::Display for PanFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex)
    }
}

/// Card expiry date as "YYMM". Treated as card data: hidden from `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct CardExpiry(String);

impl CardExpiry {
    /// Field "expiry": exactly 4 digits YYMM, month 01..=12. Reasons do not
    /// echo the value.
    pub fn parse(s: &str) -> Result<CardExpiry, InvalidField> {
        let b = s.as_bytes();
        if b.len() != 4 || !b.iter().all(u8::is_ascii_digit) {
            return Err(InvalidField::new("expiry", "must be exactly 4 digits YYMM"));
        }
        let month = (b[2] - b'0') * 10 + (b[3] - b'0');
        if !(1..=12).contains(&month) {
            return Err(InvalidField::new("expiry", "month must be 01 to 12"));
        }
        Ok(CardExpiry(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CardExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CardExpiry(****)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VISA: &str = "4111111111111111";

    /// The Luhn check digit that makes `body` + digit valid.
    fn check_digit(body: &[u8]) -> u8 {
        let sum: u32 = body
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &d)| {
                let d = u32::from(d);
                if i % 2 == 0 {
                    let x = d * 2;
                    if x > 9 { x - 9 } else { x }
                } else {
                    d
                }
            })
            .sum();
        ((10 - sum % 10) % 10) as u8
    }

    fn pan_string(body: &[u8]) -> String {
        body.iter()
            .chain(std::iter::once(&check_digit(body)))
            .map(|d| char::from(b'0' + d))
            .collect()
    }

    #[test]
    fn parses_valid_pans() {
        for ok in [
            VISA,
            "5555555555554444",
            "378282246310005",
            "6011111111111117",
            "4222222222222",
            "4111111111119",
            "411111111117",
            "6759649826438453",
            "4000000000000000006",
        ] {
            let pan = Pan::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(pan.expose(), ok);
        }
    }

    #[test]
    fn rejects_invalid_pans_without_echoing_them() {
        for bad in [
            "",
            "4111111111111112",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "411111111111111a",
            "41111111116",
            "41111111111111111113",
            "４１１１111111111111",
        ] {
            let err = Pan::parse(bad).unwrap_err();
            assert_eq!(err.field, "pan");
            if bad.len() >= 4 {
                assert!(!err.reason.contains(bad));
                assert!(!err.to_string().contains(bad));
            }
        }
    }

    #[test]
    fn accessors_and_formatting() {
        let pan = Pan::parse(VISA).unwrap();
        assert_eq!(pan.bin(), "411111");
        assert_eq!(pan.last4(), "1111");
        assert_eq!(pan.masked().as_str(), "411111******1111");
        assert_eq!(format!("{pan:?}"), "Pan(411111******1111)");
        assert_eq!(pan.to_string(), "411111******1111");
        assert_eq!(format!("{pan:#?}"), "Pan(411111******1111)");
        let short = Pan::parse("4111111111119").unwrap();
        assert_eq!(short.masked().to_string(), "411111***1119");
    }

    #[test]
    fn masked_pan_parse() {
        for ok in ["411111******1111", "411111**1111", "400000*********0006"] {
            assert_eq!(MaskedPan::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            VISA,
            "411111*1111",
            "411111*********10006",
            "41111*******1111",
            "411111******111*",
            "411111***x**1111",
            "4111é1******1111",
            "411111*******١١١",
        ] {
            assert_eq!(MaskedPan::parse(bad).unwrap_err().field, "masked_pan");
        }
    }

    #[test]
    fn masked_pan_deserialize_validates() {
        use serde::Deserialize;
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, StringDeserializer};
        let ok: StringDeserializer<Error> = "411111******1111".to_owned().into_deserializer();
        assert!(MaskedPan::deserialize(ok).is_ok());
        let bad: StringDeserializer<Error> = VISA.to_owned().into_deserializer();
        assert!(MaskedPan::deserialize(bad).is_err());
    }

    #[test]
    fn fingerprint_is_keyed_and_deterministic() {
        let pan = Pan::parse(VISA).unwrap();
        let other = Pan::parse("5555555555554444").unwrap();
        let h = PanHasher::new(b"key-1");
        let fp = h.fingerprint(&pan);
        assert_eq!(fp, h.fingerprint(&pan));
        assert_ne!(fp, h.fingerprint(&other));
        assert_ne!(fp, PanHasher::new(b"key-2").fingerprint(&pan));
        assert_eq!(fp.as_str().len(), 64);
        assert_eq!(
            PanFingerprint::from_hex(PanKeyId::first(), fp.as_str()).unwrap(),
            fp
        );
        assert_eq!(fp.key_id().as_str(), "k1");
        assert!(!fp.as_str().contains(VISA));
        // Known answer computed independently (Python hmac module).
        assert_eq!(
            fp.as_str(),
            "9034db61a4c254b37e4bb1de63523cd3843b52c48944e75d0973d10422ee9fcb"
        );
        let empty_key = PanHasher::new(b"");
        assert_eq!(empty_key.fingerprint(&pan).as_str().len(), 64);
        let long_key = PanHasher::new(&[7u8; 200]);
        assert_eq!(long_key.fingerprint(&pan).to_string().len(), 64);
    }

    #[test]
    fn key_ids_are_short_plain_names() {
        for ok in ["k1", "2026-12.a", "K_2", &"a".repeat(32)] {
            assert_eq!(PanKeyId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "k 1", "k1/", "clé", &"a".repeat(33)] {
            assert_eq!(PanKeyId::parse(bad).unwrap_err().field, "pan_hash_key_id");
        }
    }

    #[test]
    fn the_keyring_fingerprints_with_the_current_key_and_compares_under_the_stored_ones() {
        let pan = Pan::parse(VISA).unwrap();
        let other = Pan::parse("5555555555554444").unwrap();
        let old = PanHasher::new(b"the-first-key-0001");
        let new = PanHasher::with_id(PanKeyId::parse("k2").unwrap(), b"the-second-key-002");
        let before_rotation = old.fingerprint(&pan);
        let keyring = PanKeyring::new(new.clone()).with_previous(old).unwrap();
        assert_eq!(keyring.current_id().as_str(), "k2");
        let after_rotation = keyring.fingerprint(&pan);
        assert_eq!(after_rotation.key_id().as_str(), "k2");
        assert_ne!(
            after_rotation, before_rotation,
            "one card under two keys: two fingerprints"
        );
        // A retry is fingerprinted as its original was, whichever key
        // that is: the same card compares equal, another card does not.
        for stored in [&before_rotation, &after_rotation] {
            assert_eq!(&keyring.fingerprint_like(stored, &pan).unwrap(), stored);
            assert_ne!(&keyring.fingerprint_like(stored, &other).unwrap(), stored);
        }
        // Once the old key is dropped, its fingerprints cannot be compared.
        let retired = PanKeyring::new(new);
        assert_eq!(
            retired.fingerprint_like(&before_rotation, &pan),
            Err(RetiredKey(PanKeyId::first()))
        );
    }

    #[test]
    fn a_key_id_is_in_the_keyring_once() {
        let keyring = PanKeyring::new(PanHasher::new(b"the-first-key-0001"));
        let again = PanHasher::new(b"another-key-with-the-same-id");
        assert_eq!(
            keyring.with_previous(again).unwrap_err().field,
            "pan_hash_previous_keys"
        );
    }

    #[test]
    fn hasher_debug_hides_key() {
        let h = PanHasher::new(b"super-secret-key");
        let dbg = format!("{h:?}");
        assert!(!dbg.contains("super-secret-key"));
        assert!(!dbg.contains(&hex::encode(b"super-secret-key")));
    }

    #[test]
    fn fingerprint_from_hex_rejects() {
        let good = "a".repeat(64);
        assert!(PanFingerprint::from_hex(PanKeyId::first(), &good).is_ok());
        for bad in [
            String::new(),
            "a".repeat(63),
            "a".repeat(65),
            "A".repeat(64),
            "g".repeat(64),
            format!("{}é", "a".repeat(62)),
        ] {
            assert_eq!(
                PanFingerprint::from_hex(PanKeyId::first(), &bad)
                    .unwrap_err()
                    .field,
                "pan_fingerprint"
            );
        }
    }

    #[test]
    fn expiry_parse() {
        for ok in ["2512", "0001", "9912", "3006"] {
            assert_eq!(CardExpiry::parse(ok).unwrap().expose(), ok);
        }
        for bad in ["", "251", "25123", "2500", "2513", "25-1", "ab12", "2599"] {
            assert_eq!(CardExpiry::parse(bad).unwrap_err().field, "expiry");
        }
        assert_eq!(
            format!("{:?}", CardExpiry::parse("2512").unwrap()),
            "CardExpiry(****)"
        );
    }

    fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..=9, 11..=18)
    }

    proptest! {
        #[test]
        fn luhn_valid_pans_parse(body in body_strategy()) {
            let s = pan_string(&body);
            let pan = Pan::parse(&s);
            prop_assert!(pan.is_ok());
            let pan = pan.unwrap();
            prop_assert_eq!(pan.expose(), s.as_str());
        }

        #[test]
        fn any_single_digit_change_fails(
            body in body_strategy(),
            pos in any::<prop::sample::Index>(),
            delta in 1u8..=9,
        ) {
            let s = pan_string(&body);
            let mut bytes = s.into_bytes();
            let i = pos.index(bytes.len());
            bytes[i] = b'0' + (bytes[i] - b'0' + delta) % 10;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(Pan::parse(&changed).is_err());
        }

        #[test]
        fn masking_properties(body in body_strategy()) {
            let s = pan_string(&body);
            let pan = Pan::parse(&s).unwrap();
            let masked = pan.masked();
            let m = masked.as_str();
            prop_assert_eq!(m.len(), s.len());
            prop_assert_eq!(&m[..6], &s[..6]);
            prop_assert_eq!(&m[m.len() - 4..], &s[s.len() - 4..]);
            prop_assert!(m[6..m.len() - 4].bytes().all(|b| b == b'*'));
            prop_assert!(!m.contains(s.as_str()));
            prop_assert_eq!(MaskedPan::parse(m).unwrap(), masked.clone());
            let renderings = [
                format!("{pan:?}"),
                format!("{pan:#?}"),
                pan.to_string(),
                format!("{masked:?}"),
            ];
            for r in &renderings {
                prop_assert!(!r.contains(s.as_str()));
            }
        }
    }
}
