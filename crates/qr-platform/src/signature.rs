//! Signatures of requests, answers and notifications: HMAC-SHA256 with the
//! acquirer's key over `timestamp + "\n" + nonce + "\n" + body`, carried in
//! three headers. The timestamp and the nonce are inside the signed text, so
//! neither can be changed without breaking the signature; the timestamp
//! bounds how long a captured message could be replayed, and the nonce lets
//! the receiver's store refuse a replay inside that window (the store is the
//! receiver's: the switch keeps one for notifications, the simulator one for
//! requests).

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

/// Unix seconds at which the message was signed.
pub const TIMESTAMP_HEADER: &str = "qr-timestamp";
/// A value the sender never repeats: the receiver's replay key.
pub const NONCE_HEADER: &str = "qr-nonce";
/// Lower-case hex of the 32-byte HMAC.
pub const SIGNATURE_HEADER: &str = "qr-signature";
/// How far a timestamp may stray from the receiver's clock by default.
pub const DEFAULT_TOLERANCE_S: u64 = 300;
/// Nonces longer than this are refused: they are stored by receivers.
pub const MAX_NONCE_LEN: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// Why a signed message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {header} is malformed: {reason}")]
    Malformed {
        header: &'static str,
        reason: &'static str,
    },
    #[error("the signature does not match the message")]
    Mismatch,
    #[error("timestamp is {skew_s} s away from now, more than the {tolerance_s} s tolerated")]
    Stale { skew_s: u64, tolerance_s: u64 },
}

impl SignatureError {
    /// A bounded name for metrics and error codes.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Missing(_) => "missing",
            SignatureError::Malformed { .. } => "malformed",
            SignatureError::Mismatch => "mismatch",
            SignatureError::Stale { .. } => "stale",
        }
    }
}

/// What a verified message says about itself: the receiver records the
/// nonce (for a notification, also its id) to refuse a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub timestamp: i64,
    pub nonce: String,
}

/// The three headers of a message signed at `timestamp` with `nonce`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub timestamp: i64,
    pub nonce: String,
    pub signature: String,
}

impl Signed {
    /// Adds the three headers to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let value = |s: &str| HeaderValue::from_str(s).expect("digits, hex and nonce are ASCII");
        headers.insert(TIMESTAMP_HEADER, value(&self.timestamp.to_string()));
        headers.insert(NONCE_HEADER, value(&self.nonce));
        headers.insert(SIGNATURE_HEADER, value(&self.signature));
    }
}

/// Signs `body` at `timestamp` (unix seconds) with `nonce`.
///
/// # Panics
/// If `nonce` is empty, longer than [`MAX_NONCE_LEN`] or not printable
/// ASCII without spaces: a caller's bug, since nonces are generated.
pub fn sign(key: &[u8], timestamp: i64, nonce: &str, body: &[u8]) -> Signed {
    assert!(
        nonce_is_valid(nonce),
        "a nonce is 1 to 64 visible ASCII characters"
    );
    Signed {
        timestamp,
        nonce: nonce.to_owned(),
        signature: hex::encode(mac(key, timestamp, nonce, body).finalize().into_bytes()),
    }
}

/// Signs `body` now with a fresh random nonce.
pub fn sign_fresh(key: &[u8], timestamp: i64, body: &[u8]) -> Signed {
    sign(
        key,
        timestamp,
        &uuid::Uuid::new_v4().simple().to_string(),
        body,
    )
}

/// Checks the headers of a message against its raw `body`, received at
/// `now` (unix seconds): the signature first (in constant time, so a forger
/// learns nothing from which check failed), then the timestamp's distance
/// from `now` in either direction.
pub fn verify(
    key: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    tolerance_s: u64,
) -> Result<Verified, SignatureError> {
    let timestamp: i64 =
        header(headers, TIMESTAMP_HEADER)?
            .parse()
            .map_err(|_| SignatureError::Malformed {
                header: TIMESTAMP_HEADER,
                reason: "must be unix seconds",
            })?;
    let nonce = header(headers, NONCE_HEADER)?;
    if !nonce_is_valid(nonce) {
        return Err(SignatureError::Malformed {
            header: NONCE_HEADER,
            reason: "must be 1 to 64 visible ASCII characters",
        });
    }
    let signature =
        hex::decode(header(headers, SIGNATURE_HEADER)?).map_err(|_| SignatureError::Malformed {
            header: SIGNATURE_HEADER,
            reason: "must be hex",
        })?;
    if signature.len() != 32 {
        return Err(SignatureError::Malformed {
            header: SIGNATURE_HEADER,
            reason: "must be 32 bytes",
        });
    }
    mac(key, timestamp, nonce, body)
        .verify_slice(&signature)
        .map_err(|_| SignatureError::Mismatch)?;
    let skew_s = now.abs_diff(timestamp);
    if skew_s > tolerance_s {
        return Err(SignatureError::Stale {
            skew_s,
            tolerance_s,
        });
    }
    Ok(Verified {
        timestamp,
        nonce: nonce.to_owned(),
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SignatureError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(SignatureError::Missing(name))?;
    if values.next().is_some() {
        return Err(SignatureError::Malformed {
            header: name,
            reason: "must appear once",
        });
    }
    value.to_str().map_err(|_| SignatureError::Malformed {
        header: name,
        reason: "must be ASCII",
    })
}

fn nonce_is_valid(nonce: &str) -> bool {
    (1..=MAX_NONCE_LEN).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_graphic())
}

fn mac(key: &[u8], timestamp: i64, nonce: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(nonce.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"acquirer-key-0123456789";
    const BODY: &[u8] = br#"{"out_trade_no":"T1","amount":1000,"currency":"EUR"}"#;
    const T: i64 = 1_764_000_000;

    fn headers(signed: &Signed) -> HeaderMap {
        let mut headers = HeaderMap::new();
        signed.apply(&mut headers);
        headers
    }

    #[test]
    fn a_signed_message_verifies_and_gives_back_its_nonce() {
        let signed = sign(KEY, T, "n-1", BODY);
        let verified = verify(KEY, &headers(&signed), BODY, T + 300, 300).expect("verifies");
        assert_eq!(
            verified,
            Verified {
                timestamp: T,
                nonce: "n-1".into()
            }
        );
        assert!(verify(KEY, &headers(&signed), BODY, T - 300, 300).is_ok());
    }

    #[test]
    fn a_known_vector_matches() {
        // printf '1\nn\n{}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sign(b"key", 1, "n", b"{}").signature,
            "a61b88d51f666d84e9e969c832ad839815a5232874776d1263b110a8c2c48a3d"
        );
    }

    #[test]
    fn a_tampered_body_timestamp_nonce_or_key_is_refused() {
        let signed = sign(KEY, T, "n-1", BODY);
        let tampered_body = br#"{"out_trade_no":"T1","amount":9000,"currency":"EUR"}"#;
        assert_eq!(
            verify(KEY, &headers(&signed), tampered_body, T, 300),
            Err(SignatureError::Mismatch)
        );
        let moved = Signed {
            timestamp: T + 1,
            ..signed.clone()
        };
        assert_eq!(
            verify(KEY, &headers(&moved), BODY, T, 300),
            Err(SignatureError::Mismatch)
        );
        let renonced = Signed {
            nonce: "n-2".into(),
            ..signed.clone()
        };
        assert_eq!(
            verify(KEY, &headers(&renonced), BODY, T, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another key", &headers(&signed), BODY, T, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_stale_timestamp_is_refused_even_when_the_signature_holds() {
        let signed = sign(KEY, T, "n-1", BODY);
        assert_eq!(
            verify(KEY, &headers(&signed), BODY, T + 301, 300),
            Err(SignatureError::Stale {
                skew_s: 301,
                tolerance_s: 300
            })
        );
        assert!(matches!(
            verify(KEY, &headers(&signed), BODY, T - 10_000, 300),
            Err(SignatureError::Stale { .. })
        ));
    }

    #[test]
    fn missing_and_malformed_headers_are_refused_by_name() {
        let good = headers(&sign(KEY, T, "n-1", BODY));
        for name in [TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER] {
            let mut missing = good.clone();
            missing.remove(name);
            assert_eq!(
                verify(KEY, &missing, BODY, T, 300),
                Err(SignatureError::Missing(name))
            );
        }
        for (name, value) in [
            (TIMESTAMP_HEADER, "soon"),
            (NONCE_HEADER, "has space"),
            (SIGNATURE_HEADER, "zz"),
            (SIGNATURE_HEADER, "abcd"),
        ] {
            let mut bad = good.clone();
            bad.insert(name, HeaderValue::from_static(value));
            assert!(
                matches!(
                    verify(KEY, &bad, BODY, T, 300),
                    Err(SignatureError::Malformed { header, .. }) if header == name
                ),
                "{name}: {value}"
            );
        }
        let mut long_nonce = good.clone();
        long_nonce.insert(
            NONCE_HEADER,
            HeaderValue::from_str(&"n".repeat(MAX_NONCE_LEN + 1)).expect("ascii"),
        );
        assert!(matches!(
            verify(KEY, &long_nonce, BODY, T, 300),
            Err(SignatureError::Malformed { .. })
        ));
        let mut twice = good.clone();
        twice.append(SIGNATURE_HEADER, HeaderValue::from_static("00"));
        assert!(matches!(
            verify(KEY, &twice, BODY, T, 300),
            Err(SignatureError::Malformed { .. })
        ));
    }

    #[test]
    fn fresh_nonces_differ() {
        let first = sign_fresh(KEY, T, BODY);
        let second = sign_fresh(KEY, T, BODY);
        assert_ne!(first.nonce, second.nonce);
        assert!(verify(KEY, &headers(&first), BODY, T, 300).is_ok());
    }
}
