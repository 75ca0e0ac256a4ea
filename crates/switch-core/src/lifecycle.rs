//! The authorization lifecycle's decisions: for a journaled authorization,
//! a command (the issuer's verdict, the terminal's evidence, a reversal
//! request, the issuer's answer to a reversal, an operator's redrive, an
//! answer that arrived too late) and the time, [`decide`] returns the next
//! record and every effect the journal must carry out with it, or the
//! reason the command is refused.
//!
//! The journal's whole job is then: lock the row, load it, call `decide`,
//! write `next`, the audit row and the effects in one transaction, answer.
//! Which transitions are legal at all is [`AuthorizationState::on`]; this
//! module adds what each one writes and announces, the idempotent repeats
//! (a second acknowledgement, a reversal already under way) and the
//! refusals a caller is told about.

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use crate::authorization::{AuthorizationEvent, AuthorizationState, IllegalTransition};
use crate::card::{MaskedPan, PanFingerprint};
use crate::error::InvalidField;
use crate::ids::{ApprovalCode, LocalDate, MerchantId, Rrn, Stan, TerminalId, TransactionId};
use crate::money::Money;
use crate::orphan::{Channel, Evidence, NextAttempt, RetrySchedule, ReversalReason};
use crate::replay::SaleDigest;
use crate::response_code::ResponseCode;

/// What identifies a terminal's request: a retry carries the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub terminal_id: TerminalId,
    pub stan: Stan,
    pub local_date: LocalDate,
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "terminal {} STAN {} on {}",
            self.terminal_id, self.stan, self.local_date
        )
    }
}

/// One authorization as the journal holds it. Never holds the PAN: only its
/// masked form and keyed fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub transaction_id: TransactionId,
    pub key: RequestKey,
    pub merchant_id: MerchantId,
    pub rrn: Rrn,
    pub masked_pan: MaskedPan,
    pub pan_fingerprint: PanFingerprint,
    pub amount: Money,
    pub state: AuthorizationState,
    pub response_code: Option<ResponseCode>,
    pub approval_code: Option<ApprovalCode>,
    pub acknowledged_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub reversal_reason: Option<ReversalReason>,
    pub confirmation_evidence: Option<Evidence>,
    /// When the terminal acknowledged an authorization the switch had
    /// already reversed (S2): its receipt is void.
    pub conflict_at: Option<OffsetDateTime>,
    pub channel: Channel,
}

/// The facts of a new sale, before it is journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleIntent {
    pub transaction_id: TransactionId,
    pub key: RequestKey,
    pub merchant_id: MerchantId,
    pub rrn: Rrn,
    pub masked_pan: MaskedPan,
    pub pan_fingerprint: PanFingerprint,
    pub amount: Money,
    pub channel: Channel,
}

impl Authorization {
    /// The record a sale is journaled as before the issuer is asked, with
    /// the audit rows that lead to it (`received`, then `sent_to_issuer`).
    pub fn open(intent: SaleIntent, now: OffsetDateTime) -> (Authorization, [Transition; 2]) {
        let record = Authorization {
            transaction_id: intent.transaction_id,
            key: intent.key,
            merchant_id: intent.merchant_id,
            rrn: intent.rrn,
            masked_pan: intent.masked_pan,
            pan_fingerprint: intent.pan_fingerprint,
            amount: intent.amount,
            state: AuthorizationState::SentToIssuer,
            response_code: None,
            approval_code: None,
            acknowledged_at: None,
            created_at: now,
            reversal_reason: None,
            confirmation_evidence: None,
            conflict_at: None,
            channel: intent.channel,
        };
        let history = Self::open_history();
        (record, history)
    }

    /// The audit rows of every new authorization: `received`, then
    /// `sent_to_issuer` (the intent is journaled before the issuer is asked).
    pub fn open_history() -> [Transition; 2] {
        let sent = AuthorizationEvent::SentToIssuer;
        [
            Transition {
                from: None,
                to: AuthorizationState::Received,
                event: "received",
            },
            Transition {
                from: Some(AuthorizationState::Received),
                to: AuthorizationState::SentToIssuer,
                event: sent.name(),
            },
        ]
    }

    /// What a retry of the same request is compared with.
    pub fn digest(&self) -> SaleDigest {
        SaleDigest {
            pan_fingerprint: self.pan_fingerprint.clone(),
            amount: self.amount,
        }
    }

    /// The terminal acknowledged after the switch had reversed (S2).
    pub fn conflict(&self) -> bool {
        self.conflict_at.is_some()
    }
}

/// What the issuer said to a sale, as the lifecycle understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerVerdict {
    Approved(ApprovalCode),
    /// The issuer holds funds under an approval the switch does not accept
    /// (partial, or conditional: see [`ResponseCode::holds_funds`]). The
    /// terminal is told "declined" and the hold is reversed at once.
    NotAccepted {
        response_code: ResponseCode,
        approval_code: Option<ApprovalCode>,
    },
    Declined(ResponseCode),
    /// No answer in time, or one that could not be read: whether money
    /// moved is unknown.
    Unknown,
}

impl IssuerVerdict {
    /// Reads an issuer's raw answer: "00" with a valid approval code is an
    /// approval, another code of the approval family holds funds the switch
    /// does not accept, any other valid code is a decline; an approval
    /// without a usable approval code, or an unreadable code, is an error
    /// (the caller treats it as [`IssuerVerdict::Unknown`]).
    pub fn read(response_code: &str, approval_code: &str) -> Result<Self, InvalidField> {
        let code = ResponseCode::parse(response_code)?;
        if code.is_approval() {
            Ok(IssuerVerdict::Approved(ApprovalCode::parse(approval_code)?))
        } else if code.holds_funds() {
            // The approval code only helps the issuer find the hold; a
            // reversal without it is still a reversal.
            Ok(IssuerVerdict::NotAccepted {
                response_code: code,
                approval_code: ApprovalCode::parse(approval_code).ok(),
            })
        } else {
            Ok(IssuerVerdict::Declined(code))
        }
    }

    /// Whether the issuer holds the shopper's funds after this answer.
    pub fn holds_funds(&self) -> bool {
        matches!(
            self,
            IssuerVerdict::Approved(_) | IssuerVerdict::NotAccepted { .. }
        )
    }
}

/// How long the switch waits for the issuer's answer to a sale, and until
/// when the issuer may still act on the call: the call carries that
/// deadline (the gRPC deadline; ISO 8583's transmission time plays the
/// same part), and an issuer does not approve a request past it.
///
/// Both are measured from the moment the intent was journaled
/// ([`Authorization::created_at`]), just before the call is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuerWindows {
    /// The switch stops waiting and records the sale as timed out.
    pub call_timeout: Duration,
    /// The call's deadline at the issuer; an answer until then is late but
    /// recorded. Never shorter than `call_timeout`.
    pub late_window: Duration,
}

impl IssuerWindows {
    pub fn new(call_timeout: Duration, late_window: Duration) -> IssuerWindows {
        IssuerWindows {
            call_timeout,
            late_window: late_window.max(call_timeout),
        }
    }

    /// Until when the issuer may still act on the sale's call.
    pub fn call_deadline(&self, record: &Authorization) -> OffsetDateTime {
        record.created_at + self.late_window
    }

    /// Until when the switch's own call to the issuer waits.
    pub fn call_timeout_at(&self, record: &Authorization) -> OffsetDateTime {
        record.created_at + self.call_timeout
    }

    /// Whether the original call may still reach the issuer at `now`: an
    /// issuer that answers a reversal "25" (no original) may yet receive
    /// and approve the original until then.
    pub fn original_may_land(&self, record: &Authorization, now: OffsetDateTime) -> bool {
        now < self.call_deadline(record)
    }

    /// Intents journaled before this instant and still in flight were
    /// abandoned: no process can still be waiting for their answer.
    pub fn abandoned_before(&self, now: OffsetDateTime) -> OffsetDateTime {
        now - self.late_window
    }
}

/// One attempt to reverse at the issuer, as the reversal queue counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReversalAttempt {
    /// Including this one.
    pub attempts: u32,
    /// Since the reversal was requested.
    pub age_ms: u64,
    /// Random input for the backoff's jitter.
    pub jitter: u64,
    /// When this attempt was sent: the issuer answered it later.
    pub sent_at: OffsetDateTime,
}

/// What happened to one reversal attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversalAnswer {
    /// The issuer answered with this code.
    Answered(ResponseCode),
    /// No answer (timeout, connection refused): why, for the operators.
    NoAnswer(String),
}

impl ReversalAnswer {
    /// Answers that end a reversal: done ("00"), or the issuer holds no
    /// original to reverse ("25") for an attempt sent once the original
    /// could no longer reach it. A "25" to an attempt sent earlier may only
    /// mean the reversal overtook the original, which the issuer can still
    /// approve (issue 12, hole 2) — however late that "25" arrives.
    fn ends_reversal(
        &self,
        record: &Authorization,
        windows: IssuerWindows,
        attempt: &ReversalAttempt,
    ) -> bool {
        match self {
            ReversalAnswer::Answered(code) if *code == ResponseCode::APPROVED => true,
            ReversalAnswer::Answered(code) if *code == ResponseCode::UNABLE_TO_LOCATE_RECORD => {
                !windows.original_may_land(record, attempt.sent_at)
            }
            _ => false,
        }
    }
}

impl fmt::Display for ReversalAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversalAnswer::Answered(code) => write!(f, "issuer answered {code}"),
            ReversalAnswer::NoAnswer(why) => f.write_str(why),
        }
    }
}

/// Everything that can happen to a journaled authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The issuer's answer to the sale, or its silence.
    IssuerDecided(IssuerVerdict),
    /// Evidence from the terminal that it completed the transaction: its
    /// acknowledgement, or a later request naming it as the last completed
    /// STAN.
    Acknowledge { evidence: Evidence },
    /// Confirmation without the terminal's acknowledgement: the merchant's
    /// policy at the deadline, or the terminal's batch upload.
    Confirm { evidence: Evidence },
    /// A reversal becomes owed to the issuer.
    RequestReversal { reason: ReversalReason },
    /// The outcome of one attempt to reverse at the issuer.
    ReversalAnswered {
        answer: ReversalAnswer,
        attempt: ReversalAttempt,
        schedule: RetrySchedule,
        windows: IssuerWindows,
    },
    /// A sweep found the intent still in flight: the process that sent the
    /// issuer call died before recording its answer (issue 12, hole 1).
    RecoverAbandonedCall { windows: IssuerWindows },
    /// An operator sends a dead-lettered reversal round again.
    Redrive,
    /// The issuer answered the sale after the switch had stopped waiting.
    LateIssuerAnswer {
        response_code: String,
        approval_code: String,
        latency_ms: u32,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::IssuerDecided(_) => "issuer_decided",
            Command::Acknowledge { .. } => "acknowledge",
            Command::Confirm { .. } => "confirm",
            Command::RequestReversal { .. } => "request_reversal",
            Command::ReversalAnswered { .. } => "reversal_answered",
            Command::RecoverAbandonedCall { .. } => "recover_abandoned_call",
            Command::Redrive => "redrive",
            Command::LateIssuerAnswer { .. } => "late_issuer_answer",
        }
    }
}

/// One row of the audit trail: a state change and the event behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// `None` for the first row of a new authorization.
    pub from: Option<AuthorizationState>,
    pub to: AuthorizationState,
    pub event: &'static str,
}

/// News other services hear about, in the order it is announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    Approved,
    Declined,
    IssuerTimedOut,
    Confirmed,
    /// The terminal acknowledged an authorization that needed no
    /// confirmation (declined, timed out, already confirmed).
    Acknowledged,
    /// The terminal acknowledged an authorization the switch reversed (S2).
    AcknowledgementConflict,
    ReversalRequested,
    Reversed {
        attempts: u32,
    },
    ReversalDeadLettered {
        attempts: u32,
    },
    LateIssuerResponse {
        response_code: String,
        approval_code: String,
        latency_ms: u32,
    },
}

/// How a reversal leaves the queue of reversals owed to the issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalClosed {
    Acknowledged,
    DeadLettered,
}

impl ReversalClosed {
    /// Storage name of the queue entry's status.
    pub fn as_str(&self) -> &'static str {
        match self {
            ReversalClosed::Acknowledged => "acknowledged",
            ReversalClosed::DeadLettered => "dead_lettered",
        }
    }
}

/// What the journal does besides writing the next record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Publish this through the outbox, in the same transaction.
    Announce(Announcement),
    /// Put the reversal on the issuer's queue, due now (a new entry, or a
    /// dead-lettered one sent round again with its attempts reset).
    EnqueueReversal { reason: ReversalReason },
    /// Repeat the reversal after `delay_ms`.
    RetryReversal { delay_ms: u64, last_error: String },
    /// Take the reversal off the queue.
    CloseReversal(ReversalClosed),
    /// Keep the late answer for the record.
    RecordLateAnswer {
        response_code: String,
        approval_code: String,
        latency_ms: u32,
    },
}

/// The next record, its audit row and the effects, all committed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub next: Authorization,
    pub transition: Option<Transition>,
    pub effects: Vec<Effect>,
}

impl Decision {
    fn unchanged(current: &Authorization) -> Decision {
        Decision {
            next: current.clone(),
            transition: None,
            effects: Vec::new(),
        }
    }

    /// Nothing to write: an idempotent repeat.
    pub fn is_noop(&self) -> bool {
        self.transition.is_none() && self.effects.is_empty()
    }

    pub fn announcements(&self) -> impl Iterator<Item = &Announcement> {
        self.effects.iter().filter_map(|effect| match effect {
            Effect::Announce(announcement) => Some(announcement),
            _ => None,
        })
    }

    /// Whether the reversal queue has new work.
    pub fn enqueues_reversal(&self) -> bool {
        self.effects
            .iter()
            .any(|effect| matches!(effect, Effect::EnqueueReversal { .. }))
    }
}

/// Why a command is refused; nothing is written. The texts complete a
/// sentence that starts with the authorization's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("has no result yet; retry the acknowledgement later")]
    NotYetDecided,
    #[error("is {state} and cannot be confirmed")]
    NotConfirmable { state: AuthorizationState },
    #[error("is confirmed (evidence: {}); it is not reversed", evidence.map_or("unknown", |e| e.as_str()))]
    ConfirmedNotReversed { evidence: Option<Evidence> },
    #[error("is {state}: there is no dead-lettered reversal to redrive")]
    NothingToRedrive { state: AuthorizationState },
    #[error("may still be answered by the issuer until {deadline}")]
    CallStillOpen { deadline: OffsetDateTime },
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

/// Decides what `command` does to `current` at `now`.
pub fn decide(
    current: &Authorization,
    command: Command,
    now: OffsetDateTime,
) -> Result<Decision, Refusal> {
    use AuthorizationState as S;
    match command {
        Command::IssuerDecided(verdict) => issuer_decided(current, verdict),

        Command::RecoverAbandonedCall { windows } => {
            if current.state != S::SentToIssuer {
                // Decided meanwhile: nothing was abandoned.
                return Ok(Decision::unchanged(current));
            }
            if windows.original_may_land(current, now) {
                return Err(Refusal::CallStillOpen {
                    deadline: windows.call_deadline(current),
                });
            }
            // Whether the issuer approved is unknown, exactly as after a
            // timeout: the same rule follows (the timeout reversal).
            issuer_decided(current, IssuerVerdict::Unknown)
        }

        Command::Acknowledge { evidence } => {
            if current.state.is_in_flight() {
                return Err(Refusal::NotYetDecided);
            }
            let first_acknowledgement = current.acknowledged_at.is_none();
            let mut acknowledged = current.clone();
            acknowledged.acknowledged_at = current.acknowledged_at.or(Some(now));
            match current.state {
                S::Approved => {
                    let event = AuthorizationEvent::Confirmed { evidence };
                    let mut next = moved(&acknowledged, &event)?;
                    next.confirmation_evidence = Some(evidence);
                    Ok(transition(
                        current,
                        next,
                        &event,
                        vec![Effect::Announce(Announcement::Confirmed)],
                    ))
                }
                S::ReversalPending | S::Reversed | S::ReversalDeadLettered => {
                    acknowledged.conflict_at = current.conflict_at.or(Some(now));
                    let effects = if current.conflict() {
                        Vec::new()
                    } else {
                        vec![Effect::Announce(Announcement::AcknowledgementConflict)]
                    };
                    Ok(updated(current, acknowledged, effects))
                }
                S::Declined | S::IssuerTimedOut | S::Confirmed | S::Received | S::SentToIssuer => {
                    let effects = if first_acknowledgement {
                        vec![Effect::Announce(Announcement::Acknowledged)]
                    } else {
                        Vec::new()
                    };
                    Ok(updated(current, acknowledged, effects))
                }
            }
        }

        Command::Confirm { evidence } => {
            if current.state == S::Confirmed {
                return Ok(Decision::unchanged(current));
            }
            let event = AuthorizationEvent::Confirmed { evidence };
            let mut next = current
                .state
                .on(&event)
                .map(|state| Authorization {
                    state,
                    ..current.clone()
                })
                .map_err(|_| Refusal::NotConfirmable {
                    state: current.state,
                })?;
            next.confirmation_evidence = Some(evidence);
            Ok(transition(
                current,
                next,
                &event,
                vec![Effect::Announce(Announcement::Confirmed)],
            ))
        }

        Command::RequestReversal { reason } => match current.state {
            // Already owed, done or waiting for an operator; a declined
            // authorization holds nothing to reverse.
            S::ReversalPending | S::Reversed | S::ReversalDeadLettered | S::Declined => {
                Ok(Decision::unchanged(current))
            }
            S::Confirmed => Err(Refusal::ConfirmedNotReversed {
                evidence: current.confirmation_evidence,
            }),
            S::Received | S::SentToIssuer | S::Approved | S::IssuerTimedOut => {
                Ok(reversal_requested(current, reason)?)
            }
        },

        Command::ReversalAnswered {
            answer,
            attempt,
            schedule,
            windows,
        } => {
            let owed = current.state == S::ReversalPending;
            if answer.ends_reversal(current, windows, &attempt) {
                if !matches!(current.state, S::ReversalPending | S::ReversalDeadLettered) {
                    // Another attempt finished it first.
                    return Ok(Decision::unchanged(current));
                }
                let event = AuthorizationEvent::IssuerReversed;
                let next = moved(current, &event)?;
                return Ok(transition(
                    current,
                    next,
                    &event,
                    vec![
                        Effect::CloseReversal(ReversalClosed::Acknowledged),
                        Effect::Announce(Announcement::Reversed {
                            attempts: attempt.attempts,
                        }),
                    ],
                ));
            }
            if !owed {
                return Ok(Decision::unchanged(current));
            }
            match schedule.after_failure(attempt.attempts, attempt.age_ms, attempt.jitter) {
                NextAttempt::After(backoff_ms) => {
                    // While the original may land, an attempt cannot end
                    // the reversal with "25": the next one that can is the
                    // first sent past the original's deadline.
                    let delay_ms = if windows.original_may_land(current, now) {
                        backoff_ms.max(millis_until(now, windows.call_deadline(current)))
                    } else {
                        backoff_ms
                    };
                    Ok(updated(
                        current,
                        current.clone(),
                        vec![Effect::RetryReversal {
                            delay_ms,
                            last_error: answer.to_string(),
                        }],
                    ))
                }
                NextAttempt::DeadLetter => {
                    let event = AuthorizationEvent::ReversalDeadLettered;
                    let next = moved(current, &event)?;
                    Ok(transition(
                        current,
                        next,
                        &event,
                        vec![
                            Effect::CloseReversal(ReversalClosed::DeadLettered),
                            Effect::Announce(Announcement::ReversalDeadLettered {
                                attempts: attempt.attempts,
                            }),
                        ],
                    ))
                }
            }
        }

        Command::Redrive => {
            if current.state != S::ReversalDeadLettered {
                return Err(Refusal::NothingToRedrive {
                    state: current.state,
                });
            }
            let reason = current
                .reversal_reason
                .unwrap_or(ReversalReason::NoTerminalAcknowledgement);
            Ok(reversal_requested(current, reason)?)
        }

        Command::LateIssuerAnswer {
            response_code,
            approval_code,
            latency_ms,
        } => {
            let late = vec![
                Effect::RecordLateAnswer {
                    response_code: response_code.clone(),
                    approval_code: approval_code.clone(),
                    latency_ms,
                },
                Effect::Announce(Announcement::LateIssuerResponse {
                    response_code: response_code.clone(),
                    approval_code: approval_code.clone(),
                    latency_ms,
                }),
            ];
            // A late approval means the issuer holds the shopper's funds: it
            // never resurrects the authorization, it is reversed. An answer
            // that cannot be read holds funds as far as anyone can tell.
            let holds_funds = IssuerVerdict::read(&response_code, &approval_code)
                .map_or(true, |verdict| verdict.holds_funds());
            // The same rule as any other reversal request: one already
            // owed, done or dead-lettered is not requested again.
            let reversal = if holds_funds {
                decide(
                    current,
                    Command::RequestReversal {
                        reason: ReversalReason::LateIssuerResponse,
                    },
                    now,
                )
                .ok()
                .filter(|decision| decision.transition.is_some())
            } else {
                None
            };
            match reversal {
                Some(mut decision) => {
                    decision.effects.splice(0..0, late);
                    Ok(decision)
                }
                None => Ok(updated(current, current.clone(), late)),
            }
        }
    }
}

/// The issuer's verdict on a sale still in flight.
fn issuer_decided(current: &Authorization, verdict: IssuerVerdict) -> Result<Decision, Refusal> {
    match verdict {
        IssuerVerdict::Approved(approval_code) => {
            let event = AuthorizationEvent::IssuerApproved {
                approval_code: approval_code.clone(),
            };
            let mut next = moved(current, &event)?;
            next.response_code = Some(ResponseCode::APPROVED);
            next.approval_code = Some(approval_code);
            Ok(transition(
                current,
                next,
                &event,
                vec![Effect::Announce(Announcement::Approved)],
            ))
        }
        IssuerVerdict::NotAccepted {
            response_code,
            approval_code,
        } => {
            // Like every verdict, only for a sale still waiting for one.
            if current.state != AuthorizationState::SentToIssuer {
                return Err(Refusal::Illegal(IllegalTransition {
                    from: current.state,
                    event: "issuer_approved_not_accepted",
                }));
            }
            // Declined to the terminal, and owed back to the shopper: the
            // record goes straight to the reversal, keeping the issuer's
            // code and approval for the reversal and the audit.
            let mut decision = reversal_requested(current, ReversalReason::ApprovalNotAccepted)?;
            decision.next.response_code = Some(response_code);
            decision.next.approval_code = approval_code;
            Ok(decision)
        }
        IssuerVerdict::Declined(response_code) => {
            let event = AuthorizationEvent::IssuerDeclined { response_code };
            let mut next = moved(current, &event)?;
            next.response_code = Some(response_code);
            Ok(transition(
                current,
                next,
                &event,
                vec![Effect::Announce(Announcement::Declined)],
            ))
        }
        IssuerVerdict::Unknown => {
            let event = AuthorizationEvent::IssuerTimedOut;
            let next = moved(current, &event)?;
            Ok(transition(
                current,
                next,
                &event,
                vec![Effect::Announce(Announcement::IssuerTimedOut)],
            ))
        }
    }
}

/// Whole milliseconds from `now` until `at`, zero if it has passed.
fn millis_until(now: OffsetDateTime, at: OffsetDateTime) -> u64 {
    u64::try_from((at - now).whole_milliseconds()).unwrap_or(0)
}

fn moved(current: &Authorization, event: &AuthorizationEvent) -> Result<Authorization, Refusal> {
    let state = current.state.on(event)?;
    Ok(Authorization {
        state,
        ..current.clone()
    })
}

fn reversal_requested(
    current: &Authorization,
    reason: ReversalReason,
) -> Result<Decision, Refusal> {
    let event = AuthorizationEvent::ReversalRequested { reason };
    let mut next = moved(current, &event)?;
    next.reversal_reason = Some(reason);
    Ok(transition(
        current,
        next,
        &event,
        vec![
            Effect::EnqueueReversal { reason },
            Effect::Announce(Announcement::ReversalRequested),
        ],
    ))
}

fn transition(
    current: &Authorization,
    next: Authorization,
    event: &AuthorizationEvent,
    effects: Vec<Effect>,
) -> Decision {
    Decision {
        transition: Some(Transition {
            from: Some(current.state),
            to: next.state,
            event: event.name(),
        }),
        next,
        effects,
    }
}

/// A change of the record without a change of state.
fn updated(current: &Authorization, next: Authorization, effects: Vec<Effect>) -> Decision {
    debug_assert_eq!(current.state, next.state);
    Decision {
        next,
        transition: None,
        effects,
    }
}

#[cfg(test)]
mod tests;
