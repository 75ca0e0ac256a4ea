//! The authorization service's errors, and the one place they become gRPC
//! statuses. Messages name the offending field and never contain card data.

use switch_core::InvalidField;
use switch_core::lifecycle::Refusal;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum AuthorizationError {
    #[error("{0}")]
    InvalidField(#[from] InvalidField),
    #[error(
        "modified request: {field} differs from the original request with the same terminal, STAN and local date"
    )]
    ModifiedReplay { field: &'static str },
    #[error("no authorization found for {0}")]
    NotFound(String),
    /// The lifecycle refused the command; nothing was written.
    #[error("authorization {target} {refusal}")]
    Refused { target: String, refusal: Refusal },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("the journal holds a row that does not parse: {0}")]
    CorruptRow(InvalidField),
    #[error("journal unavailable: {0}")]
    Journal(#[from] sqlx::Error),
    /// The group-commit statement this request was part of failed: every
    /// request in it gets the same error.
    #[error("journal unavailable: {0}")]
    JournalBatch(std::sync::Arc<sqlx::Error>),
}

impl From<AuthorizationError> for Status {
    fn from(error: AuthorizationError) -> Status {
        match error {
            AuthorizationError::InvalidField(field) => Status::invalid_argument(field.to_string()),
            e @ AuthorizationError::ModifiedReplay { .. } => Status::already_exists(e.to_string()),
            e @ AuthorizationError::NotFound(_) => Status::not_found(e.to_string()),
            AuthorizationError::Refused {
                target,
                refusal: Refusal::Illegal(illegal),
            } => {
                tracing::error!(%target, error = %illegal, "Authorization invariant broken.");
                Status::internal("internal error; the transaction is recorded, query it by STAN")
            }
            e
            @ (AuthorizationError::Refused { .. } | AuthorizationError::FailedPrecondition(_)) => {
                Status::failed_precondition(e.to_string())
            }
            e @ AuthorizationError::CorruptRow(_) => {
                tracing::error!(error = %e, "Authorization invariant broken.");
                Status::internal("internal error; the transaction is recorded, query it by STAN")
            }
            AuthorizationError::Journal(e) => {
                tracing::error!(error = %e, "Journal unavailable.");
                Status::unavailable("journal unavailable; retry with the same STAN")
            }
            AuthorizationError::JournalBatch(e) => {
                tracing::error!(error = %e, "Journal unavailable.");
                Status::unavailable("journal unavailable; retry with the same STAN")
            }
        }
    }
}
