//! Duplicate detection: a retry carrying the same terminal + STAN + local
//! date as an earlier request must be the very same request. If the card or
//! amount differ it is a different sale reusing a key, which the switch must
//! refuse rather than answer with the original's outcome.

use crate::card::{Pan, PanFingerprint, PanKeyring, RetiredKey};
use crate::money::Money;

/// The parts of a sale that must match for a retry to be a true duplicate.
/// Holds the PAN fingerprint, not the PAN, so digests can be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleDigest {
    pub pan_fingerprint: PanFingerprint,
    pub amount: Money,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// Safe to replay the original outcome.
    Identical,
    /// The first differing field: "pan" or "amount".
    Modified { field: &'static str },
}

/// Compares a retry with the original; the PAN is checked first because a
/// different card is the more serious mismatch to report.
pub fn compare_replay(original: &SaleDigest, retry: &SaleDigest) -> ReplayVerdict {
    if original.pan_fingerprint != retry.pan_fingerprint {
        ReplayVerdict::Modified { field: "pan" }
    } else if original.amount != retry.amount {
        // Money equality includes the currency, so a currency change counts
        // as a modified amount.
        ReplayVerdict::Modified { field: "amount" }
    } else {
        ReplayVerdict::Identical
    }
}

/// Compares a retry's card and amount with the original, its card
/// fingerprinted under the key the original's was (ADR 33): a sale from
/// before a key rotation is still recognized, and a card is never compared
/// across two keys. A key no longer in the keyring cannot compare at all.
pub fn compare_retry(
    keyring: &PanKeyring,
    original: &SaleDigest,
    pan: &Pan,
    amount: Money,
) -> Result<ReplayVerdict, RetiredKey> {
    let retry = SaleDigest {
        pan_fingerprint: keyring.fingerprint_like(&original.pan_fingerprint, pan)?,
        amount,
    };
    Ok(compare_replay(original, &retry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::{Pan, PanHasher};
    use crate::money::Currency;

    fn digest(pan: &str, minor: i64, cur: &str) -> SaleDigest {
        let hasher = PanHasher::new(b"test-key");
        SaleDigest {
            pan_fingerprint: hasher.fingerprint(&Pan::parse(pan).unwrap()),
            amount: Money::new(minor, Currency::parse(cur).unwrap()),
        }
    }

    #[test]
    fn verdicts() {
        let a = digest("4111111111111111", 1000, "EUR");
        assert_eq!(compare_replay(&a, &a.clone()), ReplayVerdict::Identical);
        assert_eq!(
            compare_replay(&a, &digest("5555555555554444", 1000, "EUR")),
            ReplayVerdict::Modified { field: "pan" }
        );
        assert_eq!(
            compare_replay(&a, &digest("4111111111111111", 1001, "EUR")),
            ReplayVerdict::Modified { field: "amount" }
        );
        assert_eq!(
            compare_replay(&a, &digest("4111111111111111", 1000, "USD")),
            ReplayVerdict::Modified { field: "amount" }
        );
        // Both differ: pan is reported first.
        assert_eq!(
            compare_replay(&a, &digest("5555555555554444", 1, "JPY")),
            ReplayVerdict::Modified { field: "pan" }
        );
    }

    #[test]
    fn a_retry_is_compared_under_its_originals_key_across_a_rotation() {
        use crate::card::{PanHasher, PanKeyId};
        let visa = Pan::parse("4111111111111111").unwrap();
        let mastercard = Pan::parse("5555555555554444").unwrap();
        let eur = |minor| Money::new(minor, Currency::parse("EUR").unwrap());
        let old = PanHasher::new(b"test-key-before-rotation");
        let original = SaleDigest {
            pan_fingerprint: old.fingerprint(&visa),
            amount: eur(1000),
        };
        let rotated = PanKeyring::new(PanHasher::with_id(
            PanKeyId::parse("k2").unwrap(),
            b"test-key-after-rotation",
        ))
        .with_previous(old)
        .unwrap();
        assert_eq!(
            compare_retry(&rotated, &original, &visa, eur(1000)),
            Ok(ReplayVerdict::Identical)
        );
        assert_eq!(
            compare_retry(&rotated, &original, &mastercard, eur(1000)),
            Ok(ReplayVerdict::Modified { field: "pan" })
        );
        assert_eq!(
            compare_retry(&rotated, &original, &visa, eur(1001)),
            Ok(ReplayVerdict::Modified { field: "amount" })
        );
        // Under the new key alone the card is the same, yet its fingerprint
        // is another: what a retry after a rotation got before key ids.
        assert_ne!(
            rotated.fingerprint(&visa),
            original.pan_fingerprint,
            "the current key's fingerprint differs"
        );
        let retired = PanKeyring::new(PanHasher::with_id(
            PanKeyId::parse("k2").unwrap(),
            b"test-key-after-rotation",
        ));
        assert_eq!(
            compare_retry(&retired, &original, &visa, eur(1000)),
            Err(RetiredKey(PanKeyId::first()))
        );
    }
}
