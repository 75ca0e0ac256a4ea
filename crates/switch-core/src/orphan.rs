//! Orphaned approvals: why a reversal is owed, what evidence confirms an
//! approval, the merchant's policy at the acknowledgement deadline, and how
//! a reversal is repeated until the issuer acknowledges it.
//!
//! An approval starts unconfirmed. Evidence that the terminal completed it
//! (its acknowledgement, a later request carrying it as the last completed
//! STAN, its batch upload) confirms it. Without evidence by the deadline it
//! is an orphan, and [`decide_at_deadline`] says what to do, with a reason
//! that is recorded alongside the decision.

use std::fmt;

use crate::error::InvalidField;

/// Why a reversal is owed to the issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReversalReason {
    /// The terminal showed no evidence of completion by the deadline (S1).
    NoTerminalAcknowledgement,
    /// The issuer did not answer in time: whether money moved is unknown.
    IssuerTimeout,
    /// The terminal timed out and asked for the reversal itself (S4).
    TerminalRequested,
    /// The issuer answered after the switch had given up on it.
    LateIssuerResponse,
    /// Approved at the host but missing from the terminal's batch upload.
    BatchOrphan,
    /// The issuer holds funds under an approval the switch does not accept
    /// (a partial approval, "10"; or "08", "11", "16"): the terminal was
    /// told "declined".
    ApprovalNotAccepted,
}

impl ReversalReason {
    pub const ALL: [ReversalReason; 6] = [
        Self::NoTerminalAcknowledgement,
        Self::IssuerTimeout,
        Self::TerminalRequested,
        Self::LateIssuerResponse,
        Self::BatchOrphan,
        Self::ApprovalNotAccepted,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoTerminalAcknowledgement => "no_terminal_acknowledgement",
            Self::IssuerTimeout => "issuer_timeout",
            Self::TerminalRequested => "terminal_requested",
            Self::LateIssuerResponse => "late_issuer_response",
            Self::BatchOrphan => "batch_orphan",
            Self::ApprovalNotAccepted => "approval_not_accepted",
        }
    }

    /// Field "reason".
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| InvalidField::new("reason", format!("unknown reversal reason '{s}'")))
    }
}

impl fmt::Display for ReversalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What confirmed an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Evidence {
    /// The terminal acknowledged it displayed or printed the result.
    TerminalAcknowledgement,
    /// A later request from the terminal named it as its last completed STAN.
    LastCompletedStan,
    /// The terminal's batch upload listed it.
    BatchUpload,
    /// No evidence, but the merchant's policy confirms at the deadline
    /// (goods handed over before the answer, e.g. unattended fuel).
    Policy,
}

impl Evidence {
    pub const ALL: [Evidence; 4] = [
        Self::TerminalAcknowledgement,
        Self::LastCompletedStan,
        Self::BatchUpload,
        Self::Policy,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TerminalAcknowledgement => "terminal_acknowledgement",
            Self::LastCompletedStan => "last_completed_stan",
            Self::BatchUpload => "batch_upload",
            Self::Policy => "policy",
        }
    }

    /// Field "evidence".
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| InvalidField::new("evidence", format!("unknown evidence '{s}'")))
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a payment was taken; acknowledgement deadlines differ per channel
/// (a QR wallet confirms asynchronously and needs longer than a card).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Channel {
    /// Chip, contactless or swipe at the terminal.
    #[default]
    Card,
    /// A QR code scanned by the shopper's wallet.
    Qr,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Self::Card, Self::Qr];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Qr => "qr",
        }
    }

    /// Field "channel"; empty means the default, `card`.
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        match s {
            "" | "card" => Ok(Self::Card),
            "qr" => Ok(Self::Qr),
            other => Err(InvalidField::new(
                "channel",
                format!("'{other}' is neither 'card' nor 'qr'"),
            )),
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A merchant's choice for approvals still unconfirmed at their deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OrphanPolicy {
    /// The default: nobody saw a receipt, so give the shopper's money back.
    #[default]
    Reverse,
    /// Goods were handed over before the answer: keep the payment, and tell
    /// merchant and terminal to reprint the receipt.
    Confirm,
}

impl OrphanPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Reverse => "reverse",
            Self::Confirm => "confirm",
        }
    }

    /// Field "orphan_policy".
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        match s {
            "reverse" => Ok(Self::Reverse),
            "confirm" => Ok(Self::Confirm),
            other => Err(InvalidField::new(
                "orphan_policy",
                format!("'{other}' is neither 'reverse' nor 'confirm'"),
            )),
        }
    }
}

/// What happens to an orphan at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanDecision {
    Reverse(ReversalReason),
    Confirm(Evidence),
}

/// The decision for an approval with no evidence of completion at its
/// deadline, under the merchant's policy.
pub fn decide_at_deadline(policy: OrphanPolicy) -> OrphanDecision {
    match policy {
        OrphanPolicy::Reverse => OrphanDecision::Reverse(ReversalReason::NoTerminalAcknowledgement),
        OrphanPolicy::Confirm => OrphanDecision::Confirm(Evidence::Policy),
    }
}

/// The decision for an approval the terminal's batch upload does not list:
/// the terminal holds no receipt for it, so it is decided at once rather
/// than at its deadline, under the same policy (a merchant who hands goods
/// over before the answer still keeps the payment).
pub fn decide_batch_orphan(policy: OrphanPolicy) -> OrphanDecision {
    match policy {
        OrphanPolicy::Reverse => OrphanDecision::Reverse(ReversalReason::BatchOrphan),
        OrphanPolicy::Confirm => OrphanDecision::Confirm(Evidence::Policy),
    }
}

/// How a reversal is repeated until the issuer acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Delay after the first failed attempt.
    pub initial_delay_ms: u64,
    /// The backoff never waits longer than this between attempts.
    pub max_delay_ms: u64,
    /// After this long since the reversal was requested, it is
    /// dead-lettered instead of repeated.
    pub max_age_ms: u64,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAttempt {
    /// Repeat after this many milliseconds.
    After(u64),
    /// Give up: dead-letter, count and alert.
    DeadLetter,
}

impl RetrySchedule {
    /// After `attempts` failed attempts (≥ 1) and `age_ms` since the
    /// reversal was requested. The delay doubles from `initial_delay_ms` up
    /// to `max_delay_ms`, minus up to a fifth taken from `jitter` (any random
    /// number), so repeats from many switches do not arrive in step.
    pub fn after_failure(&self, attempts: u32, age_ms: u64, jitter: u64) -> NextAttempt {
        if age_ms >= self.max_age_ms {
            return NextAttempt::DeadLetter;
        }
        let doublings = attempts.saturating_sub(1).min(32);
        let delay = self
            .initial_delay_ms
            .saturating_mul(1_u64 << doublings)
            .min(self.max_delay_ms);
        let jittered = delay - jitter % (delay / 5 + 1);
        // Never sleep past the dead-letter point: the last attempt happens
        // at the maximum age at the latest.
        NextAttempt::After(jittered.min(self.max_age_ms - age_ms).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_roundtrip() {
        for r in ReversalReason::ALL {
            assert_eq!(ReversalReason::parse(r.as_str()).unwrap(), r);
        }
        for e in Evidence::ALL {
            assert_eq!(Evidence::parse(e.as_str()).unwrap(), e);
        }
        assert_eq!(ReversalReason::parse("x").unwrap_err().field, "reason");
        assert_eq!(Evidence::parse("x").unwrap_err().field, "evidence");
        assert_eq!(
            OrphanPolicy::parse("confirm").unwrap(),
            OrphanPolicy::Confirm
        );
        assert_eq!(
            OrphanPolicy::parse("Reverse").unwrap_err().field,
            "orphan_policy"
        );
    }

    #[test]
    fn default_policy_reverses_with_a_reason() {
        assert_eq!(
            decide_at_deadline(OrphanPolicy::default()),
            OrphanDecision::Reverse(ReversalReason::NoTerminalAcknowledgement)
        );
        assert_eq!(
            decide_at_deadline(OrphanPolicy::Confirm),
            OrphanDecision::Confirm(Evidence::Policy)
        );
    }

    const SCHEDULE: RetrySchedule = RetrySchedule {
        initial_delay_ms: 100,
        max_delay_ms: 5_000,
        max_age_ms: 60_000,
    };

    #[test]
    fn backoff_doubles_to_the_cap() {
        let delays: Vec<NextAttempt> = (1..=8)
            .map(|attempt| SCHEDULE.after_failure(attempt, 0, 0))
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000].map(NextAttempt::After)
        );
        assert_eq!(
            SCHEDULE.after_failure(u32::MAX, 0, 0),
            NextAttempt::After(5_000)
        );
    }

    #[test]
    fn dead_letter_at_max_age_never_before() {
        assert_eq!(
            SCHEDULE.after_failure(3, 60_000, 0),
            NextAttempt::DeadLetter
        );
        assert_eq!(SCHEDULE.after_failure(3, 59_950, 0), NextAttempt::After(50));
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(attempts in 1u32..100, age in 0u64..70_000, jitter: u64) {
            match SCHEDULE.after_failure(attempts, age, jitter) {
                NextAttempt::DeadLetter => prop_assert!(age >= SCHEDULE.max_age_ms),
                NextAttempt::After(ms) => {
                    prop_assert!(age < SCHEDULE.max_age_ms);
                    prop_assert!(ms >= 1);
                    prop_assert!(ms <= SCHEDULE.max_delay_ms);
                    prop_assert!(age + ms <= SCHEDULE.max_age_ms);
                }
            }
        }
    }

    #[test]
    fn batch_orphans_are_decided_under_the_merchants_policy() {
        assert_eq!(
            decide_batch_orphan(OrphanPolicy::Reverse),
            OrphanDecision::Reverse(ReversalReason::BatchOrphan)
        );
        assert_eq!(
            decide_batch_orphan(OrphanPolicy::Confirm),
            OrphanDecision::Confirm(Evidence::Policy)
        );
    }
}
