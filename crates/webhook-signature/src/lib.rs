//! Webhook signatures, in the style of Stripe's: pure functions a merchant's
//! receiver (or a test) can use as they are. The notifier signs with them,
//! `posctl webhooks listen` verifies with them; this crate is all either
//! needs, so a receiver does not link the notifier service.
//!
//! Every delivery carries
//!
//! ```text
//! Switch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
//! ```
//!
//! The timestamp is inside the signed text, so a captured delivery cannot be
//! replayed later with a fresh timestamp; the receiver rejects timestamps
//! too far from its own clock ([`DEFAULT_TOLERANCE_S`]) and deduplicates on
//! `Switch-Event-Id`, because delivery is at least once. The key is the
//! endpoint's secret string as given to the merchant (`whsec_…`), used as
//! its UTF-8 bytes.
//!
//! ```
//! use webhook_signature::{sign, verify};
//! let body = br#"{"id":"0193a5d4-7e1f-7c3a-9d5e-000000000001","type":"payment.reversed"}"#;
//! let header = sign("whsec_example", 1_700_000_000, body);
//! assert!(verify("whsec_example", &header, body, 1_700_000_030, 300).is_ok());
//! assert!(verify("whsec_example", &header, b"{}", 1_700_000_030, 300).is_err());
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Name of the signature header.
pub const SIGNATURE_HEADER: &str = "Switch-Signature";
/// Name of the header that carries the event id, the idempotency key.
pub const EVENT_ID_HEADER: &str = "Switch-Event-Id";
/// How far a receiver should let the timestamp stray from its clock.
pub const DEFAULT_TOLERANCE_S: u64 = 300;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature header was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed signature header: {0}")]
    Malformed(&'static str),
    #[error("no v1 signature matches the body")]
    Mismatch,
    #[error("timestamp is {skew_s} s away from now, more than the {tolerance_s} s tolerated")]
    Expired { skew_s: u64, tolerance_s: u64 },
}

/// The `Switch-Signature` header value for `body` sent at `timestamp`
/// (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

/// Checks a `Switch-Signature` header against the raw `body` received at
/// `now` (unix seconds): the header parses, one of its `v1` signatures is
/// the HMAC of `"<t>.<body>"` (compared in constant time), and `t` is
/// within `tolerance_s` of `now` in either direction. Unknown schemes
/// (anything but `t` and `v1`) are ignored, so a future scheme can be
/// added beside `v1` without breaking receivers.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_s: u64,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(VerifyError::Malformed("every element must be key=value"))?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(VerifyError::Malformed("more than one timestamp"));
                }
                let t: i64 = value
                    .parse()
                    .map_err(|_| VerifyError::Malformed("t must be unix seconds"))?;
                timestamp = Some(t);
            }
            "v1" => {
                let bytes =
                    hex::decode(value).map_err(|_| VerifyError::Malformed("v1 must be hex"))?;
                if bytes.len() != 32 {
                    return Err(VerifyError::Malformed("v1 must be 32 bytes"));
                }
                signatures.push(bytes);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed("no timestamp"))?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed("no v1 signature"));
    }
    // Signature before age: a forged header learns nothing from which check
    // failed.
    let matched = signatures.iter().any(|candidate| {
        let mut mac = keyed(secret);
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // `verify_slice` compares in constant time.
        mac.verify_slice(candidate).is_ok()
    });
    if !matched {
        return Err(VerifyError::Mismatch);
    }
    let skew_s = now.abs_diff(timestamp);
    if skew_s > tolerance_s {
        return Err(VerifyError::Expired {
            skew_s,
            tolerance_s,
        });
    }
    Ok(())
}

fn keyed(secret: &str) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut mac = keyed(secret);
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_0123456789abcdef";
    const BODY: &[u8] = br#"{"id":"e1","type":"payment.confirmed"}"#;
    const T: i64 = 1_764_000_000;

    #[test]
    fn a_signature_verifies_within_the_tolerance() {
        let header = sign(SECRET, T, BODY);
        assert!(header.starts_with(&format!("t={T},v1=")));
        assert_eq!(verify(SECRET, &header, BODY, T, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, BODY, T + 300, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, BODY, T - 300, 300), Ok(()));
    }

    #[test]
    fn a_known_vector_matches() {
        // printf '1.{}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sign("key", 1, b"{}"),
            "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }

    #[test]
    fn a_tampered_body_or_another_secret_fails() {
        let header = sign(SECRET, T, BODY);
        let tampered = br#"{"id":"e1","type":"payment.reversed"}"#;
        assert_eq!(
            verify(SECRET, &header, tampered, T, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("whsec_other", &header, BODY, T, 300),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn a_timestamp_outside_the_tolerance_fails() {
        let header = sign(SECRET, T, BODY);
        assert_eq!(
            verify(SECRET, &header, BODY, T + 301, 300),
            Err(VerifyError::Expired {
                skew_s: 301,
                tolerance_s: 300
            })
        );
        assert!(matches!(
            verify(SECRET, &header, BODY, T - 1_000, 300),
            Err(VerifyError::Expired { .. })
        ));
    }

    #[test]
    fn a_moved_timestamp_breaks_the_signature() {
        let header = sign(SECRET, T, BODY);
        let replayed = header.replacen(&T.to_string(), &(T + 1_000).to_string(), 1);
        assert_eq!(
            verify(SECRET, &replayed, BODY, T + 1_000, 300),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let good = sign(SECRET, T, BODY);
        let v1 = good.split_once(",v1=").unwrap().1;
        for header in [
            String::new(),
            "garbage".to_owned(),
            format!("v1={v1}"),
            format!("t={T}"),
            format!("t=soon,v1={v1}"),
            format!("t={T},v1=zz"),
            format!("t={T},v1=abcd"),
            format!("t={T},t={T},v1={v1}"),
        ] {
            assert!(
                matches!(
                    verify(SECRET, &header, BODY, T, 300),
                    Err(VerifyError::Malformed(_))
                ),
                "{header:?} was not rejected as malformed"
            );
        }
    }

    #[test]
    fn unknown_schemes_are_ignored_and_any_v1_may_match() {
        let good = sign(SECRET, T, BODY);
        let v1 = good.split_once(",v1=").unwrap().1;
        let header = format!("t={T}, v0=legacy, v1={}, v1={v1}", "00".repeat(32));
        assert_eq!(verify(SECRET, &header, BODY, T, 300), Ok(()));
    }
}
