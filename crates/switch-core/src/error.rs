//! The single validation error type shared by every parser in the crate.
//!
//! Callers map it onto protocol errors (ISO 8583 format errors, gRPC invalid
//! argument), so it names the offending field by a stable, documented name.

/// A value that failed validation: which field, and why.
///
/// `reason` must never contain sensitive data (such as a full PAN); parsers
/// for card data describe the problem without echoing the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidField {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_field_and_reason() {
        let e = InvalidField::new("amount", "must be greater than zero");
        assert_eq!(e.to_string(), "amount: must be greater than zero");
        assert_eq!(e.field, "amount");
    }
}
