//! What the authorization service works with, in domain terms: the
//! journaled record and its key are switch-core's; the sale as it arrives
//! (with the card, held only in memory) and a claimed reversal are this
//! service's own. Neither the store nor the wire edge defines these, so both
//! can depend on them without depending on each other.

use switch_core::lifecycle::SaleIntent;
use switch_core::{
    CardExpiry, Channel, MerchantId, Money, Pan, PanFingerprint, ReversalReason, Rrn, Stan,
    TransactionId,
};

pub use switch_core::lifecycle::{Authorization, RequestKey};

/// A validated sale, ready to journal. Holds the PAN only in memory.
#[derive(Debug)]
pub struct SaleCommand {
    pub key: RequestKey,
    pub merchant_id: MerchantId,
    pub pan: Pan,
    pub expiry: CardExpiry,
    pub amount: Money,
    /// Evidence that the terminal completed an earlier transaction.
    pub last_completed_stan: Option<Stan>,
    pub channel: Channel,
}

impl SaleCommand {
    /// What the journal records of this sale: everything but the card,
    /// which stays masked and fingerprinted.
    pub fn intent(&self, rrn: Rrn, pan_fingerprint: PanFingerprint) -> SaleIntent {
        SaleIntent {
            transaction_id: TransactionId::new(),
            key: self.key.clone(),
            merchant_id: self.merchant_id.clone(),
            rrn,
            masked_pan: self.pan.masked(),
            pan_fingerprint,
            amount: self.amount,
            channel: self.channel,
        }
    }
}

/// A reversal a worker has claimed for one attempt.
#[derive(Debug, Clone)]
pub struct ClaimedReversal {
    pub transaction_id: TransactionId,
    pub reason: ReversalReason,
    /// Including this one.
    pub attempts: u32,
    /// Since the reversal was requested.
    pub age_ms: u64,
    pub rrn: String,
    pub stan: String,
    pub amount: Money,
    /// Trace context of the request that made the reversal owed.
    pub traceparent: String,
}

/// A reversal the worker gave up on, with what its attempts got: what an
/// operator looks at before a redrive.
#[derive(Debug, Clone)]
pub struct DeadLetteredReversal {
    pub authorization: Authorization,
    pub reason: ReversalReason,
    pub attempts: u32,
    pub requested_at: time::OffsetDateTime,
    pub first_attempt_at: Option<time::OffsetDateTime>,
    pub last_attempt_at: Option<time::OffsetDateTime>,
    /// The issuer's code to the last attempt; `None` when it did not answer.
    pub last_response_code: Option<String>,
    pub last_error: Option<String>,
    pub dead_lettered_at: time::OffsetDateTime,
}

/// Where a page of dead-lettered reversals starts: after this one, in the
/// order they were given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterCursor {
    pub dead_lettered_at: time::OffsetDateTime,
    pub transaction_id: TransactionId,
}
