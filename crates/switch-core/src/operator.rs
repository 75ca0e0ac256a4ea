//! What an operator acting by hand must say: who (a person or a runbook's
//! name) and why (the incident, the fix). Every operator's action — a
//! redrive, a ledger rejection's resolution, a replay of dead-lettered
//! events — takes both, checked by this one rule, and records them with the
//! change it makes.

use crate::error::InvalidField;

/// Longest operator name or reason kept, in characters.
pub const MAX_OPERATOR_TEXT: usize = 200;

/// An operator's name or reason (field `field`): required, trimmed, at
/// most [`MAX_OPERATOR_TEXT`] characters.
pub fn operator_text<'a>(field: &'static str, value: &'a str) -> Result<&'a str, InvalidField> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(InvalidField::new(field, "is required"));
    }
    if trimmed.chars().count() > MAX_OPERATOR_TEXT {
        return Err(InvalidField::new(
            field,
            format!("must be at most {MAX_OPERATOR_TEXT} characters"),
        ));
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_and_why_are_required_trimmed_and_bounded() {
        assert_eq!(operator_text("operator", " ops.alice "), Ok("ops.alice"));
        for blank in ["", "   ", "\t\n"] {
            let refused = operator_text("reason", blank).unwrap_err();
            assert_eq!(
                (refused.field, refused.reason.as_str()),
                ("reason", "is required")
            );
        }
        let longest = "é".repeat(MAX_OPERATOR_TEXT);
        assert_eq!(operator_text("reason", &longest), Ok(longest.as_str()));
        let refused = operator_text("operator", &format!("{longest}x")).unwrap_err();
        assert_eq!(refused.reason, "must be at most 200 characters");
    }
}
