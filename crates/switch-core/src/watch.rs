//! The reversal handler's watch over one approval, as a pure state machine.
//!
//! Authorization announces an approval; the handler watches it until its
//! acknowledgement deadline. Evidence or a final decision announced by
//! authorization closes the watch; at the deadline the merchant's policy
//! decides it ([`decide_at_deadline`]), and the handler asks authorization
//! to carry the decision out, again and again with backoff, until
//! authorization's answer closes it. An issuer timeout or an orphan found by
//! a batch upload is decided at once.
//!
//! ```text
//! unseen ─approved─▶ open ─sweep at deadline─▶ decided ─answer─▶ closed
//!    │                │                         ▲  │ failure: retry later
//!    ├─issuer timeout / batch orphan───────────┘  ◀┘
//!    └─announced (closing event first)──────────────────────────▶ closed
//!          open, decided ─announced──────────────────────────────▶ closed
//! ```
//!
//! [`decide`] is the one place these rules live: the handler locks the
//! watch's row, loads it, calls `decide` with its clock's `now`, and
//! persists [`WatchDecision::next`] and carries out its effects, without
//! looking at the state itself. Redeliveries and out-of-order events are
//! idempotent no-ops (the decision's `next` equals the state and it has no
//! effects); a closed watch never reopens, a watch is decided at most once,
//! and never before its deadline.

use std::fmt;
use std::time::Duration as StdDuration;

use time::{Duration, OffsetDateTime};

use crate::authorization::AuthorizationState;
use crate::error::InvalidField;
use crate::orphan::{
    Evidence, NextAttempt, OrphanDecision, OrphanPolicy, RetrySchedule, ReversalReason,
    decide_at_deadline, decide_batch_orphan,
};

/// What the handler knows about one approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// No event about it has been seen.
    Unseen,
    /// Approved; waiting for evidence until `deadline_at`.
    Open {
        approved_at: OffsetDateTime,
        deadline_at: OffsetDateTime,
    },
    /// A decision is made; authorization is asked to carry it out at
    /// `next_attempt_at` (also the lease of the sweeper asking now).
    Decided {
        /// When it became due: its deadline, or the moment it was owed a
        /// decision at once.
        deadline_at: OffsetDateTime,
        verdict: Verdict,
        /// Failed calls so far.
        attempts: u32,
        next_attempt_at: OffsetDateTime,
    },
    /// Nothing more to do.
    Closed {
        /// `None` for a watch closed before its approval was seen.
        deadline_at: Option<OffsetDateTime>,
        /// The decision made before it closed, if any.
        verdict: Option<Verdict>,
        attempts: u32,
        outcome: WatchOutcome,
        closed_at: OffsetDateTime,
    },
}

impl Watch {
    /// When the approval became (or becomes) due, if it is known.
    pub fn deadline_at(&self) -> Option<OffsetDateTime> {
        match *self {
            Watch::Unseen => None,
            Watch::Open { deadline_at, .. } | Watch::Decided { deadline_at, .. } => {
                Some(deadline_at)
            }
            Watch::Closed { deadline_at, .. } => deadline_at,
        }
    }
}

/// A decision and when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub decision: OrphanDecision,
    pub decided_at: OffsetDateTime,
}

/// What closed a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchOutcome {
    /// Confirmed, with the evidence authorization recorded (`None`: it
    /// named none we know).
    Confirmed(Option<Evidence>),
    /// Authorization accepted a reversal and repeats it until the issuer
    /// acknowledges; the reason is authorization's.
    ReversalRequested(Option<ReversalReason>),
    Reversed,
    ReversalDeadLettered,
    /// Authorization refused our request: another path (evidence, a
    /// terminal reversal) had decided the approval first.
    Superseded,
}

impl WatchOutcome {
    /// What an authorization in `state` tells its watch, with the evidence
    /// or reversal reason it recorded; `None` for a state that is no
    /// outcome (still deciding, approved, declined, timed out).
    pub fn of_authorization(
        state: AuthorizationState,
        evidence: Option<Evidence>,
        reason: Option<ReversalReason>,
    ) -> Option<WatchOutcome> {
        match state {
            AuthorizationState::Confirmed => Some(Self::Confirmed(evidence)),
            AuthorizationState::ReversalPending => Some(Self::ReversalRequested(reason)),
            AuthorizationState::Reversed => Some(Self::Reversed),
            AuthorizationState::ReversalDeadLettered => Some(Self::ReversalDeadLettered),
            AuthorizationState::Received
            | AuthorizationState::SentToIssuer
            | AuthorizationState::Approved
            | AuthorizationState::Declined
            | AuthorizationState::IssuerTimedOut => None,
        }
    }

    /// Whether this outcome is what `decision` asked for.
    pub fn fulfils(&self, decision: OrphanDecision) -> bool {
        match decision {
            OrphanDecision::Reverse(_) => matches!(
                self,
                Self::ReversalRequested(_) | Self::Reversed | Self::ReversalDeadLettered
            ),
            OrphanDecision::Confirm(_) => matches!(self, Self::Confirmed(_)),
        }
    }

    /// The stored name, e.g. `confirmed:terminal_acknowledgement`,
    /// `reversal_requested:issuer_timeout`, `reversed`, `superseded`.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// Field "outcome": reads [`Self::name`] back. An evidence or reason we
    /// do not know reads as `None` (it was stored as `unknown`).
    pub fn parse(s: &str) -> Result<Self, InvalidField> {
        let invalid = || InvalidField::new("outcome", format!("unknown watch outcome '{s}'"));
        match s.split_once(':') {
            Some(("confirmed", evidence)) => Ok(Self::Confirmed(Evidence::parse(evidence).ok())),
            Some(("reversal_requested", reason)) => {
                Ok(Self::ReversalRequested(ReversalReason::parse(reason).ok()))
            }
            Some(_) => Err(invalid()),
            None => match s {
                "reversed" => Ok(Self::Reversed),
                "reversal_dead_lettered" => Ok(Self::ReversalDeadLettered),
                "superseded" => Ok(Self::Superseded),
                _ => Err(invalid()),
            },
        }
    }
}

impl fmt::Display for WatchOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Confirmed(evidence) => {
                write!(
                    f,
                    "confirmed:{}",
                    evidence.map_or("unknown", |e| e.as_str())
                )
            }
            Self::ReversalRequested(reason) => write!(
                f,
                "reversal_requested:{}",
                reason.map_or("unknown", |r| r.as_str())
            ),
            Self::Reversed => f.write_str("reversed"),
            Self::ReversalDeadLettered => f.write_str("reversal_dead_lettered"),
            Self::Superseded => f.write_str("superseded"),
        }
    }
}

/// How patiently authorization is asked again after a failed call. Never
/// gives up: until authorization accepts a decision, nobody else acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchRetry {
    pub initial_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl WatchRetry {
    /// The wait after the `attempts`-th failed call (≥ 1), doubling to the
    /// cap, minus a jitter taken from `jitter` (any random number).
    pub fn delay_after(&self, attempts: u32, jitter: u64) -> StdDuration {
        let schedule = RetrySchedule {
            initial_delay_ms: self.initial_delay_ms,
            max_delay_ms: self.max_delay_ms,
            max_age_ms: u64::MAX,
        };
        match schedule.after_failure(attempts.max(1), 0, jitter) {
            NextAttempt::After(ms) => StdDuration::from_millis(ms),
            NextAttempt::DeadLetter => StdDuration::from_millis(self.max_delay_ms),
        }
    }
}

/// Something that happened to the approval, or to our request about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchCommand {
    /// Authorization approved it at `approved_at`; the terminal has
    /// `window` (its merchant's or channel's) to show evidence.
    Approved {
        approved_at: OffsetDateTime,
        window: StdDuration,
    },
    /// The issuer did not answer in time (at `at`): a reversal is owed now.
    IssuerTimedOut { at: OffsetDateTime },
    /// The terminal's batch upload does not list it: decided now under the
    /// merchant's policy.
    BatchOrphanFound { policy: OrphanPolicy },
    /// Authorization announced a final decision (evidence, a reversal
    /// requested, reversed, dead-lettered) that occurred at `at`.
    Announced {
        outcome: WatchOutcome,
        at: OffsetDateTime,
    },
    /// A sweeper holds the watch's row: decide it if its deadline has come
    /// (under `policy`), ask again if its next attempt is due, and lease it
    /// for `lease` either way.
    Sweep {
        policy: OrphanPolicy,
        lease: StdDuration,
    },
    /// Authorization accepted our request; its record shows `outcome`.
    CallSucceeded { outcome: WatchOutcome },
    /// Authorization refused our request: the approval was decided by
    /// another path.
    CallRefused,
    /// The call failed (or its answer showed a state our request cannot
    /// leave): ask again after a backoff.
    CallFailed { retry: WatchRetry, jitter: u64 },
}

/// Why an orphan was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanFound {
    /// No evidence by the acknowledgement deadline.
    AtDeadline,
    IssuerTimeout,
    BatchUpload,
}

/// What the handler must do, besides persisting the next state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEffect {
    /// An orphan was just decided: count and log it.
    OrphanDecided {
        decision: OrphanDecision,
        found: OrphanFound,
    },
    /// Ask authorization to carry `decision` out (after `attempts` failed
    /// calls), once the next state is committed.
    Ask {
        decision: OrphanDecision,
        attempts: u32,
    },
    /// Our request closed the watch: count whether it did what we asked
    /// (`fulfilled`) or another path had decided first, and how long after
    /// the deadline.
    Resolved {
        decision: OrphanDecision,
        outcome: WatchOutcome,
        fulfilled: bool,
        latency_ms: u64,
    },
    /// An event from authorization closed the watch.
    ClosedByAuthorization { outcome: WatchOutcome },
    /// The issuer acknowledged a reversal, `late_ms` after the deadline.
    ReversalAcknowledged { late_ms: u64 },
    /// A call failed; authorization is asked again after `delay`.
    RetryScheduled { attempts: u32, delay: StdDuration },
}

/// The next state and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchDecision {
    pub next: Watch,
    pub effects: Vec<WatchEffect>,
}

impl WatchDecision {
    fn unchanged(watch: &Watch) -> Self {
        WatchDecision {
            next: *watch,
            effects: Vec::new(),
        }
    }

    fn to(next: Watch, effects: Vec<WatchEffect>) -> Self {
        WatchDecision { next, effects }
    }

    /// Whether the state changed, i.e. whether there is anything to write.
    pub fn changes(&self, from: &Watch) -> bool {
        self.next != *from
    }
}

/// A command that does not apply to the watch as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WatchRefusal {
    /// A sweep before the deadline or the next attempt.
    #[error("not due before {due_at}")]
    NotDue { due_at: OffsetDateTime },
    /// A sweep or a call's answer for a watch nobody decided, or one
    /// already closed by a sweep's claim (nothing to ask).
    #[error("nothing to ask authorization about")]
    NothingToAsk,
}

/// The one decision function of the watch lifecycle.
pub fn decide(
    watch: &Watch,
    command: WatchCommand,
    now: OffsetDateTime,
) -> Result<WatchDecision, WatchRefusal> {
    use WatchCommand as C;
    match (*watch, command) {
        // An approval opens a watch once; a redelivered approval, or one
        // whose closing event came first, changes nothing.
        (
            Watch::Unseen,
            C::Approved {
                approved_at,
                window,
            },
        ) => Ok(WatchDecision::to(
            Watch::Open {
                approved_at,
                deadline_at: add(approved_at, window),
            },
            Vec::new(),
        )),
        (_, C::Approved { .. }) => Ok(WatchDecision::unchanged(watch)),

        // Owed a decision at once, unless one is made or the watch closed.
        (Watch::Unseen, C::IssuerTimedOut { at }) => Ok(decided_now(
            at,
            OrphanDecision::Reverse(ReversalReason::IssuerTimeout),
            OrphanFound::IssuerTimeout,
            now,
        )),
        (Watch::Open { deadline_at, .. }, C::IssuerTimedOut { .. }) => Ok(decided_now(
            deadline_at,
            OrphanDecision::Reverse(ReversalReason::IssuerTimeout),
            OrphanFound::IssuerTimeout,
            now,
        )),
        (Watch::Unseen, C::BatchOrphanFound { policy }) => Ok(decided_now(
            now,
            decide_batch_orphan(policy),
            OrphanFound::BatchUpload,
            now,
        )),
        (Watch::Open { deadline_at, .. }, C::BatchOrphanFound { policy }) => Ok(decided_now(
            deadline_at,
            decide_batch_orphan(policy),
            OrphanFound::BatchUpload,
            now,
        )),
        (Watch::Decided { .. } | Watch::Closed { .. }, C::IssuerTimedOut { .. })
        | (Watch::Decided { .. } | Watch::Closed { .. }, C::BatchOrphanFound { .. }) => {
            Ok(WatchDecision::unchanged(watch))
        }

        // Authorization's final decision closes the watch, whatever came
        // before; a reversal's acknowledgement is timed against the deadline
        // even when the request had closed the watch already.
        (_, C::Announced { outcome, at }) => {
            let deadline_at = watch.deadline_at();
            let mut effects = Vec::new();
            if let (WatchOutcome::Reversed, Some(deadline_at)) = (outcome, deadline_at) {
                effects.push(WatchEffect::ReversalAcknowledged {
                    late_ms: millis_between(deadline_at, at),
                });
            }
            if let Watch::Closed { .. } = watch {
                return Ok(WatchDecision::to(*watch, effects));
            }
            effects.push(WatchEffect::ClosedByAuthorization { outcome });
            Ok(WatchDecision::to(closed(watch, outcome, now), effects))
        }

        // At the deadline, the merchant's policy decides; then authorization
        // is asked, under a lease.
        (
            Watch::Open {
                deadline_at,
                approved_at: _,
            },
            C::Sweep { policy, lease },
        ) => {
            if now < deadline_at {
                return Err(WatchRefusal::NotDue {
                    due_at: deadline_at,
                });
            }
            let decision = decide_at_deadline(policy);
            Ok(WatchDecision::to(
                Watch::Decided {
                    deadline_at,
                    verdict: Verdict {
                        decision,
                        decided_at: now,
                    },
                    attempts: 0,
                    next_attempt_at: add(now, lease),
                },
                vec![
                    WatchEffect::OrphanDecided {
                        decision,
                        found: OrphanFound::AtDeadline,
                    },
                    WatchEffect::Ask {
                        decision,
                        attempts: 0,
                    },
                ],
            ))
        }
        (
            Watch::Decided {
                deadline_at,
                verdict,
                attempts,
                next_attempt_at,
            },
            C::Sweep { lease, .. },
        ) => {
            if now < next_attempt_at {
                return Err(WatchRefusal::NotDue {
                    due_at: next_attempt_at,
                });
            }
            Ok(WatchDecision::to(
                Watch::Decided {
                    deadline_at,
                    verdict,
                    attempts,
                    next_attempt_at: add(now, lease),
                },
                vec![WatchEffect::Ask {
                    decision: verdict.decision,
                    attempts,
                }],
            ))
        }
        (Watch::Unseen | Watch::Closed { .. }, C::Sweep { .. }) => Err(WatchRefusal::NothingToAsk),

        // Authorization's answer closes a decided watch; a watch an event
        // closed in the meantime keeps that event's outcome.
        (
            Watch::Decided {
                deadline_at,
                verdict,
                ..
            },
            C::CallSucceeded { .. } | C::CallRefused,
        ) => {
            let outcome = match command {
                C::CallSucceeded { outcome } => outcome,
                _ => WatchOutcome::Superseded,
            };
            Ok(WatchDecision::to(
                closed(watch, outcome, now),
                vec![WatchEffect::Resolved {
                    decision: verdict.decision,
                    outcome,
                    fulfilled: outcome.fulfils(verdict.decision),
                    latency_ms: millis_between(deadline_at, now),
                }],
            ))
        }
        (
            Watch::Decided {
                deadline_at,
                verdict,
                attempts,
                ..
            },
            C::CallFailed { retry, jitter },
        ) => {
            let attempts = attempts.saturating_add(1);
            let delay = retry.delay_after(attempts, jitter);
            Ok(WatchDecision::to(
                Watch::Decided {
                    deadline_at,
                    verdict,
                    attempts,
                    next_attempt_at: add(now, delay),
                },
                vec![WatchEffect::RetryScheduled { attempts, delay }],
            ))
        }
        (Watch::Closed { .. }, C::CallSucceeded { .. } | C::CallRefused | C::CallFailed { .. }) => {
            Ok(WatchDecision::unchanged(watch))
        }
        (
            Watch::Unseen | Watch::Open { .. },
            C::CallSucceeded { .. } | C::CallRefused | C::CallFailed { .. },
        ) => Err(WatchRefusal::NothingToAsk),
    }
}

/// Decided at once: due now, asked by the next sweep.
fn decided_now(
    deadline_at: OffsetDateTime,
    decision: OrphanDecision,
    found: OrphanFound,
    now: OffsetDateTime,
) -> WatchDecision {
    WatchDecision::to(
        Watch::Decided {
            deadline_at,
            verdict: Verdict {
                decision,
                decided_at: now,
            },
            attempts: 0,
            next_attempt_at: now,
        },
        vec![WatchEffect::OrphanDecided { decision, found }],
    )
}

fn closed(watch: &Watch, outcome: WatchOutcome, now: OffsetDateTime) -> Watch {
    let (verdict, attempts) = match *watch {
        Watch::Decided {
            verdict, attempts, ..
        } => (Some(verdict), attempts),
        Watch::Closed {
            verdict, attempts, ..
        } => (verdict, attempts),
        Watch::Unseen | Watch::Open { .. } => (None, 0),
    };
    Watch::Closed {
        deadline_at: watch.deadline_at(),
        verdict,
        attempts,
        outcome,
        closed_at: now,
    }
}

/// `at + by`; a span too long to represent leaves `at` as it is.
fn add(at: OffsetDateTime, by: StdDuration) -> OffsetDateTime {
    Duration::try_from(by)
        .ok()
        .and_then(|by| at.checked_add(by))
        .unwrap_or(at)
}

/// Milliseconds from `from` to `to`, zero if `to` is earlier.
pub fn millis_between(from: OffsetDateTime, to: OffsetDateTime) -> u64 {
    u64::try_from((to - from).whole_milliseconds()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-12-01 10:00 UTC);
    const WINDOW: StdDuration = StdDuration::from_secs(30);
    const LEASE: StdDuration = StdDuration::from_secs(5);
    const RETRY: WatchRetry = WatchRetry {
        initial_delay_ms: 200,
        max_delay_ms: 5_000,
    };
    const REVERSE: OrphanDecision =
        OrphanDecision::Reverse(ReversalReason::NoTerminalAcknowledgement);

    fn secs(s: i64) -> OffsetDateTime {
        T0 + Duration::seconds(s)
    }

    fn open() -> Watch {
        Watch::Open {
            approved_at: T0,
            deadline_at: secs(30),
        }
    }

    fn decided(next_attempt_s: i64) -> Watch {
        Watch::Decided {
            deadline_at: secs(30),
            verdict: Verdict {
                decision: REVERSE,
                decided_at: secs(30),
            },
            attempts: 1,
            next_attempt_at: secs(next_attempt_s),
        }
    }

    fn closed_watch() -> Watch {
        Watch::Closed {
            deadline_at: Some(secs(30)),
            verdict: None,
            attempts: 0,
            outcome: WatchOutcome::Confirmed(Some(Evidence::TerminalAcknowledgement)),
            closed_at: secs(10),
        }
    }

    fn phase(watch: &Watch) -> &'static str {
        match watch {
            Watch::Unseen => "unseen",
            Watch::Open { .. } => "open",
            Watch::Decided { .. } => "decided",
            Watch::Closed { .. } => "closed",
        }
    }

    fn effect_name(effect: &WatchEffect) -> &'static str {
        match effect {
            WatchEffect::OrphanDecided { .. } => "orphan",
            WatchEffect::Ask { .. } => "ask",
            WatchEffect::Resolved { .. } => "resolved",
            WatchEffect::ClosedByAuthorization { .. } => "announced",
            WatchEffect::ReversalAcknowledged { .. } => "acknowledged",
            WatchEffect::RetryScheduled { .. } => "retry",
        }
    }

    /// "same" for a no-op, the next phase and its effects otherwise, or
    /// the refusal.
    fn summary(watch: &Watch, command: WatchCommand, now: OffsetDateTime) -> String {
        match decide(watch, command, now) {
            Err(WatchRefusal::NotDue { .. }) => "refused: not due".into(),
            Err(WatchRefusal::NothingToAsk) => "refused: nothing to ask".into(),
            Ok(d) => {
                let effects: Vec<&str> = d.effects.iter().map(effect_name).collect();
                let next = if d.changes(watch) {
                    phase(&d.next)
                } else {
                    "same"
                };
                if effects.is_empty() {
                    next.to_owned()
                } else {
                    format!("{next} + {}", effects.join(" + "))
                }
            }
        }
    }

    fn commands() -> [(&'static str, WatchCommand); 8] {
        [
            (
                "approved",
                WatchCommand::Approved {
                    approved_at: T0,
                    window: WINDOW,
                },
            ),
            ("issuer timeout", WatchCommand::IssuerTimedOut { at: T0 }),
            (
                "batch orphan",
                WatchCommand::BatchOrphanFound {
                    policy: OrphanPolicy::Reverse,
                },
            ),
            (
                "reversed",
                WatchCommand::Announced {
                    outcome: WatchOutcome::Reversed,
                    at: secs(40),
                },
            ),
            (
                "sweep",
                WatchCommand::Sweep {
                    policy: OrphanPolicy::Reverse,
                    lease: LEASE,
                },
            ),
            (
                "accepted",
                WatchCommand::CallSucceeded {
                    outcome: WatchOutcome::ReversalRequested(Some(
                        ReversalReason::NoTerminalAcknowledgement,
                    )),
                },
            ),
            ("refused", WatchCommand::CallRefused),
            (
                "failed",
                WatchCommand::CallFailed {
                    retry: RETRY,
                    jitter: 0,
                },
            ),
        ]
    }

    /// Every (state, command) pair, at a moment before the deadline (t=10s)
    /// and one after it (t=40s, when the decided watch's next attempt is due).
    #[test]
    fn every_state_and_command() {
        let states = [
            ("unseen", Watch::Unseen),
            ("open", open()),
            ("decided", decided(35)),
            ("closed", closed_watch()),
        ];
        #[rustfmt::skip]
        let expected: [[(&str, &str); 8]; 4] = [
            // unseen
            [
                ("open", "open"),
                ("decided + orphan", "decided + orphan"),
                ("decided + orphan", "decided + orphan"),
                ("closed + announced", "closed + announced"),
                ("refused: nothing to ask", "refused: nothing to ask"),
                ("refused: nothing to ask", "refused: nothing to ask"),
                ("refused: nothing to ask", "refused: nothing to ask"),
                ("refused: nothing to ask", "refused: nothing to ask"),
            ],
            // open
            [
                ("same", "same"),
                ("decided + orphan", "decided + orphan"),
                ("decided + orphan", "decided + orphan"),
                ("closed + acknowledged + announced", "closed + acknowledged + announced"),
                ("refused: not due", "decided + orphan + ask"),
                ("refused: nothing to ask", "refused: nothing to ask"),
                ("refused: nothing to ask", "refused: nothing to ask"),
                ("refused: nothing to ask", "refused: nothing to ask"),
            ],
            // decided
            [
                ("same", "same"),
                ("same", "same"),
                ("same", "same"),
                ("closed + acknowledged + announced", "closed + acknowledged + announced"),
                ("refused: not due", "decided + ask"),
                ("closed + resolved", "closed + resolved"),
                ("closed + resolved", "closed + resolved"),
                ("decided + retry", "decided + retry"),
            ],
            // closed
            [
                ("same", "same"),
                ("same", "same"),
                ("same", "same"),
                ("same + acknowledged", "same + acknowledged"),
                ("refused: nothing to ask", "refused: nothing to ask"),
                ("same", "same"),
                ("same", "same"),
                ("same", "same"),
            ],
        ];
        for ((state_name, state), row) in states.iter().zip(expected) {
            for ((command_name, command), (before, after)) in commands().into_iter().zip(row) {
                assert_eq!(
                    summary(state, command, secs(10)),
                    before,
                    "{state_name} + {command_name} before the deadline"
                );
                assert_eq!(
                    summary(state, command, secs(40)),
                    after,
                    "{state_name} + {command_name} after the deadline"
                );
            }
        }
    }

    #[test]
    fn an_approval_opens_with_its_window() {
        let d = decide(
            &Watch::Unseen,
            WatchCommand::Approved {
                approved_at: T0,
                window: WINDOW,
            },
            secs(1),
        )
        .unwrap();
        assert_eq!(d.next, open());
        let endless = decide(
            &Watch::Unseen,
            WatchCommand::Approved {
                approved_at: T0,
                window: StdDuration::MAX,
            },
            T0,
        )
        .unwrap();
        assert_eq!(
            endless.next,
            Watch::Open {
                approved_at: T0,
                deadline_at: T0
            }
        );
    }

    #[test]
    fn the_deadline_decides_by_policy_and_leases() {
        for (policy, decision) in [
            (OrphanPolicy::Reverse, REVERSE),
            (
                OrphanPolicy::Confirm,
                OrphanDecision::Confirm(Evidence::Policy),
            ),
        ] {
            let d = decide(
                &open(),
                WatchCommand::Sweep {
                    policy,
                    lease: LEASE,
                },
                secs(30),
            )
            .unwrap();
            assert_eq!(
                d.next,
                Watch::Decided {
                    deadline_at: secs(30),
                    verdict: Verdict {
                        decision,
                        decided_at: secs(30)
                    },
                    attempts: 0,
                    next_attempt_at: secs(35),
                }
            );
            assert_eq!(
                d.effects,
                vec![
                    WatchEffect::OrphanDecided {
                        decision,
                        found: OrphanFound::AtDeadline
                    },
                    WatchEffect::Ask {
                        decision,
                        attempts: 0
                    }
                ]
            );
        }
    }

    #[test]
    fn orphans_found_early_are_due_at_once() {
        let d = decide(
            &Watch::Unseen,
            WatchCommand::IssuerTimedOut { at: secs(2) },
            secs(3),
        )
        .unwrap();
        let Watch::Decided {
            deadline_at,
            verdict,
            next_attempt_at,
            ..
        } = d.next
        else {
            panic!("not decided: {:?}", d.next)
        };
        assert_eq!((deadline_at, next_attempt_at), (secs(2), secs(3)));
        assert_eq!(
            verdict.decision,
            OrphanDecision::Reverse(ReversalReason::IssuerTimeout)
        );
        let d = decide(
            &open(),
            WatchCommand::BatchOrphanFound {
                policy: OrphanPolicy::Confirm,
            },
            secs(5),
        )
        .unwrap();
        assert_eq!(
            d.effects,
            vec![WatchEffect::OrphanDecided {
                decision: OrphanDecision::Confirm(Evidence::Policy),
                found: OrphanFound::BatchUpload
            }]
        );
    }

    #[test]
    fn answers_close_with_their_outcome_and_failures_back_off() {
        let confirmed = WatchOutcome::Confirmed(Some(Evidence::LastCompletedStan));
        let d = decide(
            &decided(35),
            WatchCommand::CallSucceeded { outcome: confirmed },
            secs(31),
        )
        .unwrap();
        assert_eq!(
            d.effects,
            vec![WatchEffect::Resolved {
                decision: REVERSE,
                outcome: confirmed,
                fulfilled: false,
                latency_ms: 1_000
            }]
        );
        let Watch::Closed {
            outcome, verdict, ..
        } = d.next
        else {
            panic!("not closed")
        };
        assert_eq!(
            (outcome, verdict.map(|v| v.decision)),
            (confirmed, Some(REVERSE))
        );

        let d = decide(
            &decided(35),
            WatchCommand::CallFailed {
                retry: RETRY,
                jitter: 0,
            },
            secs(40),
        )
        .unwrap();
        let Watch::Decided {
            attempts,
            next_attempt_at,
            ..
        } = d.next
        else {
            panic!("not decided")
        };
        assert_eq!(attempts, 2);
        assert_eq!(next_attempt_at, secs(40) + Duration::milliseconds(400));
    }

    #[test]
    fn reversal_acknowledgement_is_timed_from_the_deadline() {
        let d = decide(
            &closed_watch(),
            WatchCommand::Announced {
                outcome: WatchOutcome::Reversed,
                at: secs(31),
            },
            secs(50),
        )
        .unwrap();
        assert_eq!(
            d.effects,
            vec![WatchEffect::ReversalAcknowledged { late_ms: 1_000 }]
        );
    }

    #[test]
    fn outcomes_roundtrip_through_their_names() {
        let outcomes = [
            WatchOutcome::Confirmed(Some(Evidence::TerminalAcknowledgement)),
            WatchOutcome::Confirmed(None),
            WatchOutcome::ReversalRequested(Some(ReversalReason::IssuerTimeout)),
            WatchOutcome::ReversalRequested(None),
            WatchOutcome::Reversed,
            WatchOutcome::ReversalDeadLettered,
            WatchOutcome::Superseded,
        ];
        for outcome in outcomes {
            assert_eq!(WatchOutcome::parse(&outcome.name()), Ok(outcome));
        }
        assert_eq!(
            WatchOutcome::Confirmed(Some(Evidence::Policy)).name(),
            "confirmed:policy"
        );
        assert_eq!(
            WatchOutcome::ReversalRequested(None).name(),
            "reversal_requested:unknown"
        );
        assert_eq!(
            WatchOutcome::parse("refunded").unwrap_err().field,
            "outcome"
        );
        assert!(WatchOutcome::parse("refunded:x").is_err());
        assert!(WatchOutcome::Reversed.fulfils(REVERSE));
        assert!(!WatchOutcome::Superseded.fulfils(REVERSE));
        assert!(WatchOutcome::Confirmed(None).fulfils(OrphanDecision::Confirm(Evidence::Policy)));
    }

    #[test]
    fn retries_back_off_to_the_cap_and_never_stop() {
        assert_eq!(RETRY.delay_after(1, 0), StdDuration::from_millis(200));
        assert_eq!(RETRY.delay_after(0, 0), StdDuration::from_millis(200));
        assert_eq!(RETRY.delay_after(3, 0), StdDuration::from_millis(800));
        assert_eq!(
            RETRY.delay_after(u32::MAX, 0),
            StdDuration::from_millis(5_000)
        );
        let jittered = RETRY.delay_after(10, u64::MAX);
        assert!(
            jittered >= StdDuration::from_millis(4_000)
                && jittered <= StdDuration::from_millis(5_000)
        );
    }

    #[test]
    fn latency_is_never_negative() {
        assert_eq!(
            millis_between(T0, T0 + Duration::milliseconds(1_250)),
            1_250
        );
        assert_eq!(millis_between(T0, T0 - Duration::seconds(1)), 0);
    }

    fn outcome_strategy() -> impl Strategy<Value = WatchOutcome> {
        prop_oneof![
            Just(WatchOutcome::Confirmed(Some(
                Evidence::TerminalAcknowledgement
            ))),
            Just(WatchOutcome::ReversalRequested(Some(
                ReversalReason::TerminalRequested
            ))),
            Just(WatchOutcome::Reversed),
            Just(WatchOutcome::ReversalDeadLettered),
        ]
    }

    fn policy_strategy() -> impl Strategy<Value = OrphanPolicy> {
        prop_oneof![Just(OrphanPolicy::Reverse), Just(OrphanPolicy::Confirm)]
    }

    fn command_strategy() -> impl Strategy<Value = WatchCommand> {
        prop_oneof![
            (0i64..60_000, 1u64..60_000).prop_map(|(at, window)| WatchCommand::Approved {
                approved_at: T0 + Duration::milliseconds(at),
                window: StdDuration::from_millis(window),
            }),
            (0i64..60_000).prop_map(|at| WatchCommand::IssuerTimedOut {
                at: T0 + Duration::milliseconds(at)
            }),
            policy_strategy().prop_map(|policy| WatchCommand::BatchOrphanFound { policy }),
            (outcome_strategy(), 0i64..120_000).prop_map(|(outcome, at)| {
                WatchCommand::Announced {
                    outcome,
                    at: T0 + Duration::milliseconds(at),
                }
            }),
            (policy_strategy(), 1u64..10_000).prop_map(|(policy, lease)| WatchCommand::Sweep {
                policy,
                lease: StdDuration::from_millis(lease)
            }),
            prop_oneof![outcome_strategy(), Just(WatchOutcome::Superseded)]
                .prop_map(|outcome| WatchCommand::CallSucceeded { outcome }),
            Just(WatchCommand::CallRefused),
            any::<u64>().prop_map(|jitter| WatchCommand::CallFailed {
                retry: RETRY,
                jitter
            }),
        ]
    }

    proptest! {
        /// Random commands at non-decreasing times, with redeliveries and
        /// closing events before approvals among them.
        #[test]
        fn the_lifecycle_keeps_its_invariants(
            steps in proptest::collection::vec((command_strategy(), 0i64..20_000), 1..40)
        ) {
            let mut watch = Watch::Unseen;
            let mut now = T0;
            let mut decided_count = 0;
            let mut decision_made: Option<OrphanDecision> = None;
            for (command, advance_ms) in steps {
                now += Duration::milliseconds(advance_ms);
                let before = watch;
                let Ok(d) = decide(&before, command, now) else {
                    continue;
                };
                // A closed watch never reopens, nor changes.
                if let Watch::Closed { .. } = before {
                    prop_assert_eq!(d.next, before);
                }
                // A no-op has nothing to carry out but an acknowledgement's timing.
                if !d.changes(&before) {
                    let only_timing = d
                        .effects
                        .iter()
                        .all(|e| matches!(e, WatchEffect::ReversalAcknowledged { .. }));
                    prop_assert!(only_timing);
                }
                for effect in &d.effects {
                    match *effect {
                        WatchEffect::OrphanDecided { decision, found } => {
                            decided_count += 1;
                            // Never decided at the deadline before it.
                            if found == OrphanFound::AtDeadline {
                                let Watch::Open { deadline_at, .. } = before else {
                                    return Err(TestCaseError::fail("decided from a state not open"));
                                };
                                prop_assert!(now >= deadline_at);
                            }
                            decision_made = Some(decision);
                        }
                        WatchEffect::Ask { decision, .. } => {
                            prop_assert_eq!(Some(decision), decision_made);
                            let Watch::Decided { next_attempt_at, .. } = d.next else {
                                return Err(TestCaseError::fail("asked without a decision"));
                            };
                            // Leased while asked, and never asked before due.
                            prop_assert!(next_attempt_at > now);
                            if let Watch::Decided { next_attempt_at: due, .. } = before {
                                prop_assert!(now >= due);
                            }
                        }
                        _ => {}
                    }
                }
                // A decision, once made, stays the same.
                match (before, d.next) {
                    (Watch::Decided { verdict: a, .. }, Watch::Decided { verdict: b, .. }) => {
                        prop_assert_eq!(a, b)
                    }
                    (Watch::Decided { verdict: a, .. }, Watch::Closed { verdict: b, .. }) => {
                        prop_assert_eq!(Some(a), b)
                    }
                    _ => {}
                }
                watch = d.next;
            }
            // A watch is decided at most once.
            prop_assert!(decided_count <= 1);
        }
    }
}
