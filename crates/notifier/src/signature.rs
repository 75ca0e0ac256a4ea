//! Webhook signatures: the notifier signs every delivery with the
//! [`webhook_signature`] crate, re-exported here so `notifier::signature`
//! keeps naming them. Receivers (posctl, a merchant's endpoint) use that
//! crate directly rather than linking the notifier.
//!
//! ```
//! use notifier::signature::{sign, verify};
//! let header = sign("whsec_example", 1_700_000_000, b"{}");
//! assert!(verify("whsec_example", &header, b"{}", 1_700_000_030, 300).is_ok());
//! ```

pub use webhook_signature::{
    DEFAULT_TOLERANCE_S, EVENT_ID_HEADER, SIGNATURE_HEADER, VerifyError, sign, verify,
};
