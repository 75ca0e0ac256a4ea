//! An exhaustive model check of the money path's heart (issue 12).
//!
//! # What is modelled
//!
//! One terminal, the switch and one issuer; the terminal starts two sales,
//! one after the other (it waits for the first one's answer or times it
//! out). The switch is the authorization service (its journal of
//! [`Authorization`] records, its reversal queue, the outbox that puts every
//! announcement on the topic) and the reversal handler (its watches and its
//! consumer offset). Every rule is the one production uses: authorization
//! calls [`switch_core::lifecycle::decide`], the reversal handler calls
//! [`switch_core::watch::decide`]; this module only plays the adapters'
//! part, in the vocabulary of the randomized simulation (the crate root):
//! it carries messages, keeps the records and carries out the effects.
//!
//! [`check`] explores every reachable state breadth first from the two
//! initial states (the merchant's orphan policy is "reverse" or "confirm")
//! and checks, in every state, the invariants that must always hold, and,
//! in every quiescent state, the ones that must hold once everything
//! settled (problem.md's numbering). A state is quiescent when nothing can
//! happen in it unless a fault does: faults are never owed, so a run may
//! stop there even with budget left (a crash still allowed, say):
//!
//! - I1: never both confirmed and reversed announced (always); at
//!   quiescence every authorization is declined, confirmed or reversed;
//! - I2: the issuer releases an RRN at most once, the switch announces it
//!   reversed at most once (always);
//! - I3: the issuer sees at most one RRN per terminal and STAN, however
//!   often the sale is retried (always);
//! - I7: a confirmed authorization is never released at the issuer
//!   (always); at quiescence a reversed or declined one holds no funds at
//!   the issuer and a confirmed one does.
//!
//! The first violation found stops the search; breadth first, its path of
//! actions from an initial state is a shortest one, and
//! [`Counterexample`] prints it step by step with what each step decided.
//!
//! # Faults and options
//!
//! Every message between two parties may be delivered in any order, lost or
//! duplicated, within [`Bounds`]. Calls to the issuer for one RRN arrive in
//! the order they were sent (one connection), unless
//! [`Options::reversal_overtakes`] is on (issue 12, hole 2); a duplicate
//! keeps its original's place. A crash is of the reversal handler (it
//! restarts from the offset it committed last, which may be any offset it
//! had consumed up to: commits happen at any time) or of authorization
//! while no sale's issuer call is in flight (its memory is lost: pending
//! calls, late-answer waits, reversal calls in flight; the journal and the
//! queue stay). [`Options::crash_during_issuer_call`] allows the crash while
//! a call is in flight (the fault behind hole 1);
//! [`Options::partial_approvals`] lets the issuer answer "10" and hold the
//! funds (hole 3's). The issuer chooses freely, on first sight of an RRN,
//! whether it approves or declines (or approves partially).
//!
//! The holes are fixed: authorization's recovery sweep records an intent
//! still in flight past its call's deadline as timed out
//! (`Command::RecoverAbandonedCall`, an enabled action here), a "25" ends
//! a reversal only for an attempt sent past the original's deadline, and
//! an approval the switch does not accept is reversed. The hole options
//! must find nothing; [`Options::ablated`] takes a fix back out (the
//! simulation's [`Ablation`]), and the search must find the hole again.
//!
//! Each hole's option ([`Options::HOLE_1`], ...) is the smallest search
//! that exposes it.
//!
//! # Bounds
//!
//! Every fault at once over two sales does not fit a test's minute: one
//! loss, one duplicate, one premature timeout, one delay and one crash over
//! two sales passed 29 million states (before the subsumption below) when
//! it ran out of 12 GB after about four minutes; without the delay it
//! passed two minutes and 5 GB unfinished; without the premature timeout
//! it is 11.2 million states (over 70 s, 2.3 GB). [`SOUND_RUNS`] checks instead,
//! each search with a terminal that may retry once and three ticks of the
//! clock (a delay is a tick while a message is in flight: it arrives past
//! every window). States explored and time in the test build (which
//! compiles this crate optimized) on one core; the largest search peaks
//! at 830 MB:
//!
//! | sales | faults (one of each)                             | handler |    states |   time |
//! |-------|--------------------------------------------------|---------|-----------|--------|
//! | two   | loss, premature timeout, crash                   | eager   | 4,931,245 | 20.6 s |
//! | two   | premature timeout, delay, crash                  | eager   | 2,318,919 |  9.3 s |
//! | two   | duplicate, premature timeout, crash              | eager   |   902,740 |  3.2 s |
//! | two   | duplicate, delay, crash                          | eager   |   956,783 |  3.9 s |
//! | two   | loss, delay, crash                               | eager   |   806,102 |  2.8 s |
//! | two   | loss, duplicate, crash                           | eager   |   317,085 |  0.9 s |
//! | one   | loss, duplicate, premature timeout, delay, crash | lagging | 1,237,713 |  5.9 s |
//! | two   | premature timeout, crash                         | lagging |   503,666 |  2.1 s |
//!
//! So over two sales, the crash (of either process) is checked with every
//! pair of the four message faults, never with three of them at once; over
//! one sale, everything at once. Reordering is not a budget: any message
//! in flight may be delivered next in every search. The handler lags in
//! the last two only (see the assumptions).
//!
//! # The search
//!
//! Three things keep it within memory and time; only the first may, with
//! the chance given, leave a state unexplored:
//!
//! - the visited set keeps a 128-bit fingerprint of each state, not the
//!   state (see `Fingerprinter`: the chance that two of the states here
//!   share one is below 10⁻²³);
//! - fields that only feed [`Coverage`] are not part of a state;
//! - a state reached again having spent at least as much of every fault's
//!   budget is not explored again (see `Visited`); [`Report::subsumed`]
//!   counts those.
//!
//! # Time
//!
//! Time is discrete and finite. The model's clock is an epoch counter,
//! `now = START + epoch × 1 h`; an hour is longer than every window (the
//! acknowledgement window of 60 s, the issuer call's deadline of 30 s, the sweep's
//! lease of 5 s, every reversal backoff), so one tick makes every deadline
//! set before it due. At most [`Bounds::epochs`] ticks happen, and a tick
//! is enabled only while something waits for a deadline still ahead (a
//! watch, a reversal due later, a late-answer wait, an authorization
//! younger than its call's deadline), no adapter timer shorter than an
//! hour is running (the terminal's wait, an issuer call, a reversal call:
//! they end first), and no message is in flight: a tick while one is (the
//! message is delayed past every window) costs one of [`Bounds::delays`].
//!
//! The adapters' own timers are enabled actions, not deadlines: the issuer
//! call times out, the terminal retries or times out and reverses, a
//! reversal call times out, the sweep asks again once its lease ran out. A
//! timer may fire freely once what it waits for is lost (the request or its
//! answer is no longer in flight, or the process that would answer
//! crashed); firing while it is still in flight is premature and costs one
//! of [`Bounds::premature_timeouts`]. That is how a late answer happens,
//! and it keeps every run finite.
//!
//! A quiescent state that still waits for a deadline once the clock
//! reached its bound is "cut", and the quiescence properties are not
//! checked there; [`Report::cut`] counts them (the tests require none).
//!
//! # Assumptions (the same as the simulation's, unless said here)
//!
//! - Outbox and topic: an announcement is on the topic the moment its
//!   decision commits; the topic is one totally ordered partition.
//! - A decision, its record, its queue change and its outbox rows commit
//!   atomically; a crash falls between two steps.
//! - An answer from the issuer to a call made before a restart is lost with
//!   the connection; the issuer still acts on the call.
//! - The issuer drops an authorization call past its deadline (30 s after
//!   the intent was journaled) unanswered, as the call's deadline tells it.
//! - The issuer answers a repeated authorization with its first answer,
//!   releases funds on a reversal ("00", idempotently) and answers "25" to a
//!   reversal of an RRN it has not seen.
//! - The terminal retries a sale with the same STAN at most
//!   [`Bounds::terminal_retries`] times, reverses once when it times out,
//!   acknowledges an approval it is shown; it is never silenced (a lost
//!   acknowledgement has the same effect).
//! - The reversal queue never dead-letters (its maximum age is a day, far
//!   beyond the clock's bound); operators' redrives and the handler's
//!   `CallFailed` path are not modelled; jitter is zero.
//! - In most searches the handler keeps up with the topic
//!   ([`Options::eager_handler`]): it consumes each event before anything
//!   else happens, so it never sweeps a watch whose closing event is
//!   already on the topic. The race that lag opens (a request in flight
//!   while another path decides) stays, through the handler's request in
//!   flight. The searches made [`Options::lagging`] drop this: the handler
//!   consumes the next event whenever it likes, any number of events
//!   behind, and everything an eager handler does, a lagging one may do.
//!   A crash redelivers from the committed offset as always.
//! - A handler crash with nothing uncommitted changes nothing and is not
//!   explored.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration as StdDuration, Instant};

use switch_core::lifecycle::{
    self, Announcement, Authorization, Command, Effect, IssuerVerdict, IssuerWindows, RequestKey,
    ReversalAnswer, ReversalAttempt, SaleIntent,
};
use switch_core::watch::{self, millis_between};
use switch_core::{
    ApprovalCode, AuthorizationState, Channel, Currency, Evidence, LocalDate, MerchantId, Money,
    OrphanDecision, OrphanPolicy, Pan, PanHasher, ResponseCode, RetrySchedule, ReversalReason, Rrn,
    Stan, TerminalId, TransactionId, Watch, WatchCommand, WatchEffect, WatchOutcome,
};
use time::{Duration, OffsetDateTime};

use crate::{Ablation, I1_FINAL, I2_REVERSED_ONCE, I3_ONE_AUTHORIZATION, I7_FUNDS, START};

/// Sales the terminal starts; also the number of RRNs the switch can hand out.
pub const SALES: usize = 2;

/// One tick of the model's clock: longer than every window and backoff.
const EPOCH: Duration = Duration::hours(1);
/// The issuer call's timeout and deadline (the simulation's).
const WINDOWS: IssuerWindows = IssuerWindows {
    call_timeout: StdDuration::from_secs(10),
    late_window: StdDuration::from_secs(30),
};
const ACK_WINDOW: StdDuration = StdDuration::from_secs(60);
const SWEEP_LEASE: StdDuration = StdDuration::from_secs(5);
const REVERSAL_SCHEDULE: RetrySchedule = RetrySchedule {
    initial_delay_ms: 500,
    max_delay_ms: 10_000,
    max_age_ms: 24 * 3_600_000,
};
const AMOUNT: i64 = 1_000;

/// How far the search goes: every run stays within these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Messages lost in a run.
    pub losses: u8,
    /// Messages duplicated in a run.
    pub duplicates: u8,
    /// Timers that repeat a request whose message or answer is in flight.
    pub premature_timeouts: u8,
    /// Process crashes in a run.
    pub crashes: u8,
    /// Retries of one sale by the terminal.
    pub terminal_retries: u8,
    /// Ticks of the clock.
    pub epochs: u8,
    /// Ticks while a message is in flight (it is delayed past every window).
    pub delays: u8,
}

/// Which faults the model may inject, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub bounds: Bounds,
    /// Sales the terminal starts, at most [`SALES`].
    pub sales: u8,
    /// The handler consumes every event before anything else happens.
    pub eager_handler: bool,
    /// Authorization may crash while a sale's issuer call is in flight
    /// (the fault behind issue 12's hole 1).
    pub crash_during_issuer_call: bool,
    /// A reversal to the issuer may overtake its original (hole 2).
    pub reversal_overtakes: bool,
    /// The issuer may approve partially ("10") and hold funds (hole 3).
    pub partial_approvals: bool,
    /// A fix of issue 12 taken back out (the simulation's ablations): the
    /// search must find its hole again.
    pub ablation: Ablation,
}

impl Bounds {
    /// No fault; one retry and three ticks of the clock.
    pub const NONE: Bounds = Bounds {
        losses: 0,
        duplicates: 0,
        premature_timeouts: 0,
        crashes: 0,
        terminal_retries: 1,
        epochs: 3,
        delays: 0,
    };
}

impl Options {
    /// Two sales under `bounds`, the sound faults only.
    pub const fn two_sales(bounds: Bounds) -> Options {
        Options {
            bounds,
            sales: SALES as u8,
            eager_handler: true,
            crash_during_issuer_call: false,
            reversal_overtakes: false,
            partial_approvals: false,
            ablation: Ablation::NONE,
        }
    }

    /// The same search with the handler free to lag: it consumes the next
    /// event whenever it likes, not before anything else happens.
    pub const fn lagging(self) -> Options {
        Options {
            eager_handler: false,
            ..self
        }
    }

    /// The same search with one of the fixes taken out.
    pub const fn ablated(self, ablation: Ablation) -> Options {
        Options { ablation, ..self }
    }

    /// One sale under `bounds`, the sound faults only.
    pub const fn one_sale(bounds: Bounds) -> Options {
        Options {
            sales: 1,
            ..Options::two_sales(bounds)
        }
    }

    /// Issue 12's hole 1's fault: two sales, a loss and a crash, which may
    /// come while the issuer call is in flight.
    pub const HOLE_1: Options = Options {
        crash_during_issuer_call: true,
        ..Options::two_sales(Bounds {
            losses: 1,
            crashes: 1,
            ..Bounds::NONE
        })
    };

    /// Issue 12's hole 2's fault: two sales, a premature timeout, and
    /// reversals that overtake their original.
    pub const HOLE_2: Options = Options {
        reversal_overtakes: true,
        ..Options::two_sales(Bounds {
            premature_timeouts: 1,
            ..Bounds::NONE
        })
    };

    /// Issue 12's hole 3's fault: two sales, no fault, and partial approvals.
    pub const HOLE_3: Options = Options {
        partial_approvals: true,
        ..Options::two_sales(Bounds::NONE)
    };
}

/// The searches that together check the sound faults (see the module
/// doc's "Bounds"): over two sales, a crash with every pair of the four
/// message faults; over one sale, every fault at once with the handler
/// lagging; and over two sales, a crash and a premature timeout with the
/// handler lagging.
pub const SOUND_RUNS: [(&str, Options); 8] = [
    (
        "two sales, a loss, a premature timeout and a crash",
        Options::two_sales(Bounds {
            losses: 1,
            premature_timeouts: 1,
            crashes: 1,
            ..Bounds::NONE
        }),
    ),
    (
        "two sales, a premature timeout, a delay and a crash",
        Options::two_sales(Bounds {
            premature_timeouts: 1,
            crashes: 1,
            delays: 1,
            ..Bounds::NONE
        }),
    ),
    (
        "two sales, a duplicate, a premature timeout and a crash",
        Options::two_sales(Bounds {
            duplicates: 1,
            premature_timeouts: 1,
            crashes: 1,
            ..Bounds::NONE
        }),
    ),
    (
        "two sales, a duplicate, a delay and a crash",
        Options::two_sales(Bounds {
            duplicates: 1,
            crashes: 1,
            delays: 1,
            ..Bounds::NONE
        }),
    ),
    (
        "two sales, a loss, a delay and a crash",
        Options::two_sales(Bounds {
            losses: 1,
            crashes: 1,
            delays: 1,
            ..Bounds::NONE
        }),
    ),
    (
        "two sales, a loss, a duplicate and a crash",
        Options::two_sales(Bounds {
            losses: 1,
            duplicates: 1,
            crashes: 1,
            ..Bounds::NONE
        }),
    ),
    (
        "one sale, every fault at once, the handler lagging",
        Options::one_sale(Bounds {
            losses: 1,
            duplicates: 1,
            premature_timeouts: 1,
            crashes: 1,
            delays: 1,
            ..Bounds::NONE
        })
        .lagging(),
    ),
    (
        "two sales, a premature timeout and a crash, the handler lagging",
        Options::two_sales(Bounds {
            premature_timeouts: 1,
            crashes: 1,
            ..Bounds::NONE
        })
        .lagging(),
    ),
];

/// What a search did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Distinct states reached.
    pub states: usize,
    /// Transitions taken (edges, including those to states already seen).
    pub transitions: usize,
    /// States reached again having spent no less of every fault's budget
    /// (see the module doc, "The search"): not explored again, not counted
    /// in `states`.
    pub subsumed: usize,
    /// Quiescent states (nothing can happen unless a fault does) whose
    /// quiescence properties were checked.
    pub quiescent: usize,
    /// Quiescent states left waiting for a deadline beyond the clock's bound.
    pub cut: usize,
    /// Length of the longest shortest path to a state.
    pub depth: usize,
    pub elapsed: StdDuration,
    /// What the reached states exercised: shows the search is not vacuous.
    pub coverage: Coverage,
    /// The first (shortest) violation, if any.
    pub violation: Option<Counterexample>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} states, {} transitions, {} subsumed, {} quiescent, {} cut, depth {}, in {} ms",
            self.states,
            self.transitions,
            self.subsumed,
            self.quiescent,
            self.cut,
            self.depth,
            self.elapsed.as_millis()
        )
    }
}

/// Paths the reached states went down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Quiescent states with a sale that ended confirmed, reversed, declined.
    pub ended_confirmed: usize,
    pub ended_reversed: usize,
    pub ended_declined: usize,
    /// States whose topic shows an issuer timeout, a late answer, an
    /// acknowledgement conflict.
    pub issuer_timed_out: usize,
    pub late_answers: usize,
    pub acknowledgement_conflicts: usize,
    /// States after a crash of authorization, of the handler.
    pub authorization_crashed: usize,
    pub handler_crashed: usize,
    /// States where the issuer answered a reversal "25".
    pub reversals_unmatched: usize,
    /// States after a terminal retry, a premature timeout.
    pub retried: usize,
    pub premature: usize,
}

impl Coverage {
    pub fn add(&mut self, other: &Coverage) {
        self.ended_confirmed += other.ended_confirmed;
        self.ended_reversed += other.ended_reversed;
        self.ended_declined += other.ended_declined;
        self.issuer_timed_out += other.issuer_timed_out;
        self.late_answers += other.late_answers;
        self.acknowledgement_conflicts += other.acknowledgement_conflicts;
        self.authorization_crashed += other.authorization_crashed;
        self.handler_crashed += other.handler_crashed;
        self.reversals_unmatched += other.reversals_unmatched;
        self.retried += other.retried;
        self.premature += other.premature;
    }
}

/// A shortest path to a state that breaks a property.
#[derive(Debug, Clone)]
pub struct Counterexample {
    /// Which invariant (problem.md's number and words).
    pub invariant: &'static str,
    pub detail: String,
    /// Every step from an initial state, with what it decided.
    pub steps: Vec<String>,
    /// Actions on the path (its length).
    pub actions: usize,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invariant broken: {} ({}) after {} actions:",
            self.invariant, self.detail, self.actions
        )?;
        for step in &self.steps {
            writeln!(f, "  {step}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The state. Indices: `sale` is the terminal's sale (its STAN is sale + 1),
// `rrn` the slot of the RRN authorization handed out (its sequence is rrn + 1).

/// The issuer's answer, as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum IssuerCode {
    Approved,
    PartiallyApproved,
    Declined,
    NoOriginal,
}

impl IssuerCode {
    fn response_code(self) -> ResponseCode {
        match self {
            IssuerCode::Approved => ResponseCode::APPROVED,
            IssuerCode::PartiallyApproved => ResponseCode::PARTIAL_APPROVAL,
            IssuerCode::Declined => ResponseCode::INSUFFICIENT_FUNDS,
            IssuerCode::NoOriginal => ResponseCode::UNABLE_TO_LOCATE_RECORD,
        }
    }
}

/// An orphan decision, compact and ordered (indices into `ALL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Asked {
    Reverse(u8),
    Confirm(u8),
}

impl Asked {
    fn of(decision: OrphanDecision) -> Asked {
        match decision {
            OrphanDecision::Reverse(reason) => Asked::Reverse(reason_index(reason)),
            OrphanDecision::Confirm(evidence) => Asked::Confirm(evidence_index(evidence)),
        }
    }

    fn decision(self) -> OrphanDecision {
        match self {
            Asked::Reverse(i) => OrphanDecision::Reverse(ReversalReason::ALL[usize::from(i)]),
            Asked::Confirm(i) => OrphanDecision::Confirm(Evidence::ALL[usize::from(i)]),
        }
    }
}

fn reason_index(reason: ReversalReason) -> u8 {
    ReversalReason::ALL
        .iter()
        .position(|r| *r == reason)
        .expect("every reason is in ALL") as u8
}

fn evidence_index(evidence: Evidence) -> u8 {
    Evidence::ALL
        .iter()
        .position(|e| *e == evidence)
        .expect("every evidence is in ALL") as u8
}

/// A watch outcome, compact and ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Outcome {
    Confirmed(Option<u8>),
    ReversalRequested(Option<u8>),
    Reversed,
    ReversalDeadLettered,
    Superseded,
}

impl Outcome {
    fn of(outcome: WatchOutcome) -> Outcome {
        match outcome {
            WatchOutcome::Confirmed(e) => Outcome::Confirmed(e.map(evidence_index)),
            WatchOutcome::ReversalRequested(r) => Outcome::ReversalRequested(r.map(reason_index)),
            WatchOutcome::Reversed => Outcome::Reversed,
            WatchOutcome::ReversalDeadLettered => Outcome::ReversalDeadLettered,
            WatchOutcome::Superseded => Outcome::Superseded,
        }
    }

    fn watch_outcome(self) -> WatchOutcome {
        match self {
            Outcome::Confirmed(e) => {
                WatchOutcome::Confirmed(e.map(|i| Evidence::ALL[usize::from(i)]))
            }
            Outcome::ReversalRequested(r) => {
                WatchOutcome::ReversalRequested(r.map(|i| ReversalReason::ALL[usize::from(i)]))
            }
            Outcome::Reversed => WatchOutcome::Reversed,
            Outcome::ReversalDeadLettered => WatchOutcome::ReversalDeadLettered,
            Outcome::Superseded => WatchOutcome::Superseded,
        }
    }
}

/// Authorization's answer to the handler's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum CallAnswer {
    Succeeded(Outcome),
    Refused,
}

/// A message on a hop with no ordering: any one in flight may arrive next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Msg {
    Sale {
        sale: u8,
    },
    TerminalReversal {
        sale: u8,
    },
    Ack {
        sale: u8,
    },
    Answer {
        sale: u8,
        approved: bool,
    },
    IssuerAuthAnswer {
        rrn: u8,
        code: IssuerCode,
        incarnation: u8,
    },
    IssuerReversalAnswer {
        rrn: u8,
        code: IssuerCode,
        incarnation: u8,
        attempt: u8,
    },
    Ask {
        rrn: u8,
        asked: Asked,
    },
    AskAnswer {
        rrn: u8,
        answer: CallAnswer,
    },
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Msg::Sale { sale } => write!(f, "sale STAN {}", sale + 1),
            Msg::TerminalReversal { sale } => write!(f, "terminal reversal STAN {}", sale + 1),
            Msg::Ack { sale } => write!(f, "ack STAN {}", sale + 1),
            Msg::Answer { sale, approved } => write!(
                f,
                "answer to terminal STAN {}: {}",
                sale + 1,
                if approved { "approved" } else { "not approved" }
            ),
            Msg::IssuerAuthAnswer {
                rrn,
                code,
                incarnation,
            } => write!(
                f,
                "issuer auth answer rrn#{} {} (conn {incarnation})",
                rrn + 1,
                code.response_code().as_str()
            ),
            Msg::IssuerReversalAnswer {
                rrn,
                code,
                incarnation,
                attempt,
            } => write!(
                f,
                "issuer reversal answer rrn#{} attempt {attempt} {} (conn {incarnation})",
                rrn + 1,
                code.response_code().as_str()
            ),
            Msg::Ask { rrn, asked } => {
                write!(f, "handler asks {:?} for rrn#{}", asked.decision(), rrn + 1)
            }
            Msg::AskAnswer { rrn, answer } => {
                write!(f, "answer to handler for rrn#{}: {answer:?}", rrn + 1)
            }
        }
    }
}

/// A call to the issuer, on the connection that keeps one RRN's calls in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IssuerCall {
    /// The issuer does not act on the call after `deadline`.
    Auth {
        sale: u8,
        incarnation: u8,
        deadline: OffsetDateTime,
    },
    Reversal {
        incarnation: u8,
        attempt: u8,
    },
}

impl fmt::Display for IssuerCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IssuerCall::Auth {
                sale, incarnation, ..
            } => write!(f, "issuer auth STAN {} (conn {incarnation})", sale + 1),
            IssuerCall::Reversal {
                incarnation,
                attempt,
            } => write!(f, "issuer reversal attempt {attempt} (conn {incarnation})"),
        }
    }
}

/// The part of an [`Authorization`] that changes; the rest follows from
/// the sale and the RRN (see [`Model::authorization`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Record {
    rrn: u8,
    state: AuthorizationState,
    response_code: Option<ResponseCode>,
    /// Whether the record carries the issuer's approval code.
    approval_code: bool,
    acknowledged_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
    reversal_reason: Option<ReversalReason>,
    confirmation_evidence: Option<Evidence>,
    conflict_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct QueueEntry {
    attempts: u8,
    requested_at: OffsetDateTime,
    due_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Funds {
    Held,
    Released,
    Declined,
}

/// What the issuer's ledger holds for one RRN: its first answer, and the funds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ledger {
    answer: IssuerCode,
    funds: Funds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum EventKind {
    Approved,
    Declined,
    IssuerTimedOut,
    Confirmed,
    Acknowledged,
    AcknowledgementConflict,
    ReversalRequested,
    Reversed,
    ReversalDeadLettered,
    LateIssuerResponse,
}

impl EventKind {
    fn of(announcement: &Announcement) -> EventKind {
        match announcement {
            Announcement::Approved => EventKind::Approved,
            Announcement::Declined => EventKind::Declined,
            Announcement::IssuerTimedOut => EventKind::IssuerTimedOut,
            Announcement::Confirmed => EventKind::Confirmed,
            Announcement::Acknowledged => EventKind::Acknowledged,
            Announcement::AcknowledgementConflict => EventKind::AcknowledgementConflict,
            Announcement::ReversalRequested => EventKind::ReversalRequested,
            Announcement::Reversed { .. } => EventKind::Reversed,
            Announcement::ReversalDeadLettered { .. } => EventKind::ReversalDeadLettered,
            Announcement::LateIssuerResponse { .. } => EventKind::LateIssuerResponse,
        }
    }
}

/// One record on the topic: the announcement and what the record's state
/// told the handler when it was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Event {
    rrn: u8,
    kind: EventKind,
    outcome: Option<Outcome>,
    at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Waiting {
    sale: u8,
    retries: u8,
}

/// What the run has used of its [`Bounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Spent {
    losses: u8,
    duplicates: u8,
    premature: u8,
    crashes: u8,
    delays: u8,
}

#[derive(Clone, PartialEq, Eq)]
struct State {
    policy: OrphanPolicy,
    epoch: u8,
    spent: Spent,
    authorization_crashed: bool,
    handler_crashed: bool,
    // The terminal.
    started: u8,
    waiting: Option<Waiting>,
    retried: bool,
    // The network: a sorted multiset, and one ordered connection per RRN.
    bag: Vec<Msg>,
    issuer_calls: [Vec<IssuerCall>; SALES],
    // Authorization, committed: the journal per sale, the queue per RRN.
    records: [Option<Record>; SALES],
    rrn_sequence: u8,
    queue: [Option<QueueEntry>; SALES],
    // Authorization, memory (per RRN).
    incarnation: u8,
    pending_calls: [bool; SALES],
    late_waits: [Option<OffsetDateTime>; SALES],
    /// The attempt in flight, and when it was sent.
    reversal_calls: [Option<(u8, OffsetDateTime)>; SALES],
    // The issuer (per RRN; RRNs it saw per sale as a bit set).
    ledger: [Option<Ledger>; SALES],
    releases: [u8; SALES],
    rrns_seen: [u8; SALES],
    reversals_unmatched: bool,
    // The topic and the reversal handler (watches per RRN).
    topic: Vec<Event>,
    watches: [Watch; SALES],
    position: u8,
}

/// Every field but the four that only record what the run went through
/// for [`Coverage`] (`authorization_crashed`, `handler_crashed`, `retried`,
/// `reversals_unmatched`): no action or invariant reads them, so states
/// that differ only there have the same futures and are one state. Nor
/// `spent`: the visited set keeps it beside the rest (see [`Visited`]).
impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.policy.hash(h);
        self.epoch.hash(h);
        self.started.hash(h);
        self.waiting.hash(h);
        self.bag.hash(h);
        self.issuer_calls.hash(h);
        self.records.hash(h);
        self.rrn_sequence.hash(h);
        self.queue.hash(h);
        self.incarnation.hash(h);
        self.pending_calls.hash(h);
        self.late_waits.hash(h);
        self.reversal_calls.hash(h);
        self.ledger.hash(h);
        self.releases.hash(h);
        self.rrns_seen.hash(h);
        self.topic.hash(h);
        for watch in &self.watches {
            hash_watch(watch, h);
        }
        self.position.hash(h);
    }
}

/// Every field of a watch: equal watches hash equally.
fn hash_watch<H: Hasher>(watch: &Watch, h: &mut H) {
    match *watch {
        Watch::Unseen => 0_u8.hash(h),
        Watch::Open {
            approved_at,
            deadline_at,
        } => (1_u8, approved_at, deadline_at).hash(h),
        Watch::Decided {
            deadline_at,
            verdict,
            attempts,
            next_attempt_at,
        } => (
            2_u8,
            deadline_at,
            Asked::of(verdict.decision),
            verdict.decided_at,
            attempts,
            next_attempt_at,
        )
            .hash(h),
        Watch::Closed {
            deadline_at,
            verdict,
            attempts,
            outcome,
            closed_at,
        } => (
            3_u8,
            deadline_at,
            verdict.map(|v| (Asked::of(v.decision), v.decided_at)),
            attempts,
            Outcome::of(outcome),
            closed_at,
        )
            .hash(h),
    }
}

impl State {
    fn initial(policy: OrphanPolicy) -> State {
        State {
            policy,
            epoch: 0,
            spent: Spent::default(),
            authorization_crashed: false,
            handler_crashed: false,
            started: 0,
            waiting: None,
            retried: false,
            bag: Vec::new(),
            issuer_calls: Default::default(),
            records: Default::default(),
            rrn_sequence: 0,
            queue: [None; SALES],
            incarnation: 0,
            pending_calls: [false; SALES],
            late_waits: [None; SALES],
            reversal_calls: [None; SALES],
            ledger: [None; SALES],
            releases: [0; SALES],
            rrns_seen: [0; SALES],
            reversals_unmatched: false,
            topic: Vec::new(),
            watches: [Watch::Unseen; SALES],
            position: 0,
        }
    }

    fn now(&self) -> OffsetDateTime {
        START + EPOCH * i32::from(self.epoch)
    }

    fn record_of(&self, rrn: u8) -> Option<&Record> {
        self.records.iter().flatten().find(|r| r.rrn == rrn)
    }

    fn sale_of(&self, rrn: u8) -> Option<u8> {
        (0..SALES as u8)
            .find(|&s| self.records[usize::from(s)].as_ref().map(|r| r.rrn) == Some(rrn))
    }

    fn send(&mut self, msg: Msg) {
        let at = self.bag.partition_point(|m| *m <= msg);
        self.bag.insert(at, msg);
    }

    fn take(&mut self, msg: Msg) {
        let at = self
            .bag
            .iter()
            .position(|m| *m == msg)
            .expect("a message in flight");
        self.bag.remove(at);
    }

    /// The next moment something waits for, if it is still ahead.
    fn next_deadline(&self) -> Option<OffsetDateTime> {
        let now = self.now();
        let watches = self.watches.iter().filter_map(|w| match *w {
            Watch::Open { deadline_at, .. } => Some(deadline_at),
            Watch::Decided {
                next_attempt_at, ..
            } => Some(next_attempt_at),
            Watch::Unseen | Watch::Closed { .. } => None,
        });
        let queue = (0..SALES)
            .filter(|&r| self.reversal_calls[r].is_none())
            .filter_map(|r| self.queue[r].map(|e| e.due_at));
        let late_waits = self.late_waits.iter().flatten().copied();
        let young = self
            .records
            .iter()
            .flatten()
            .filter(|r| !r.state.is_final())
            .map(|r| r.created_at + WINDOWS.late_window);
        watches
            .chain(queue)
            .chain(late_waits)
            .chain(young)
            .filter(|at| *at > now)
            .min()
    }

    fn watch_due(&self, rrn: usize) -> bool {
        let now = self.now();
        match self.watches[rrn] {
            Watch::Open { deadline_at, .. } => now >= deadline_at,
            Watch::Decided {
                next_attempt_at, ..
            } => now >= next_attempt_at,
            Watch::Unseen | Watch::Closed { .. } => false,
        }
    }

    /// Whether the terminal's answer about `sale` is still coming: its
    /// request or the answer is in flight, or the switch's issuer call is
    /// live (it ends in an answer or a timeout).
    fn answer_coming(&self, sale: u8) -> bool {
        self.bag
            .iter()
            .any(|m| matches!(*m, Msg::Sale { sale: s } | Msg::Answer { sale: s, .. } if s == sale))
            || self.records[usize::from(sale)]
                .as_ref()
                .is_some_and(|r| self.pending_calls[usize::from(r.rrn)])
    }

    /// Whether the issuer's answer to the live authorization call for `rrn`
    /// is still coming.
    fn issuer_answer_coming(&self, rrn: u8) -> bool {
        let incarnation = self.incarnation;
        self.issuer_calls[usize::from(rrn)]
            .iter()
            .any(|c| matches!(*c, IssuerCall::Auth { incarnation: i, .. } if i == incarnation))
            || self.bag.iter().any(|m| {
                matches!(*m, Msg::IssuerAuthAnswer { rrn: r, incarnation: i, .. }
                    if r == rrn && i == incarnation)
            })
    }

    /// Whether an adapter's timer shorter than a tick is running: it fires
    /// (or its answer comes) before an hour has passed.
    fn timer_running(&self) -> bool {
        self.waiting.is_some()
            || self.pending_calls.iter().any(|p| *p)
            || self.reversal_calls.iter().any(|c| c.is_some())
    }

    /// Whether any message is in flight.
    fn in_flight(&self) -> bool {
        !self.bag.is_empty() || self.issuer_calls.iter().any(|calls| !calls.is_empty())
    }

    /// Whether the handler's request about `rrn`, or its answer, is in flight.
    fn ask_in_flight(&self, rrn: u8) -> bool {
        self.bag.iter().any(
            |m| matches!(*m, Msg::Ask { rrn: r, .. } | Msg::AskAnswer { rrn: r, .. } if r == rrn),
        )
    }

    /// Whether the current reversal attempt for `rrn`, or its answer, is in flight.
    fn reversal_in_flight(&self, rrn: u8, attempt: u8) -> bool {
        let incarnation = self.incarnation;
        self.issuer_calls[usize::from(rrn)].iter().any(|c| {
            *c == IssuerCall::Reversal {
                incarnation,
                attempt,
            }
        }) || self.bag.iter().any(|m| {
            matches!(*m, Msg::IssuerReversalAnswer { rrn: r, incarnation: i, attempt: a, .. }
                    if r == rrn && i == incarnation && a == attempt)
        })
    }
}

/// One step of a run: what may happen next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Deliver(Msg),
    /// Deliver one RRN's call to the issuer; `verdict` is the issuer's free
    /// choice when it sees an authorization for the first time.
    DeliverIssuerCall {
        rrn: u8,
        index: u8,
        verdict: Option<IssuerCode>,
    },
    Lose(Msg),
    LoseIssuerCall {
        rrn: u8,
        index: u8,
    },
    Duplicate(Msg),
    DuplicateIssuerCall {
        rrn: u8,
        index: u8,
    },
    Tick,
    StartSale,
    RetrySale,
    TerminalTimeout,
    IssuerTimeout(u8),
    SendReversal(u8),
    ReversalTimeout(u8),
    Consume,
    Sweep(u8),
    /// Authorization's recovery sweep finds the sale's intent abandoned.
    RecoverAbandonedCall(u8),
    CrashAuthorization,
    /// The handler restarts from the offset it had committed last:
    /// commits happen at any time, so any offset it consumed up to.
    CrashHandler {
        committed: u8,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Action::Deliver(m) => write!(f, "deliver {m}"),
            Action::DeliverIssuerCall {
                rrn,
                index,
                verdict,
            } => {
                write!(f, "deliver call #{index} for rrn#{} to the issuer", rrn + 1)?;
                match verdict {
                    Some(v) => write!(f, " (it chooses {v:?})"),
                    None => Ok(()),
                }
            }
            Action::Lose(m) => write!(f, "LOSE {m}"),
            Action::LoseIssuerCall { rrn, index } => {
                write!(f, "LOSE call #{index} for rrn#{} to the issuer", rrn + 1)
            }
            Action::Duplicate(m) => write!(f, "DUPLICATE {m}"),
            Action::DuplicateIssuerCall { rrn, index } => {
                write!(
                    f,
                    "DUPLICATE call #{index} for rrn#{} to the issuer",
                    rrn + 1
                )
            }
            Action::Tick => write!(f, "an hour passes: every deadline set before is due"),
            Action::StartSale => write!(f, "terminal starts a sale"),
            Action::RetrySale => write!(f, "terminal retries its sale"),
            Action::TerminalTimeout => write!(f, "terminal times out and reverses"),
            Action::IssuerTimeout(r) => write!(f, "issuer call for rrn#{} times out", r + 1),
            Action::SendReversal(r) => {
                write!(f, "authorization sends the reversal of rrn#{}", r + 1)
            }
            Action::ReversalTimeout(r) => {
                write!(f, "reversal call for rrn#{} times out", r + 1)
            }
            Action::Consume => write!(f, "handler consumes the next event"),
            Action::Sweep(r) => write!(f, "handler sweeps the watch of rrn#{}", r + 1),
            Action::RecoverAbandonedCall(sale) => write!(
                f,
                "authorization's recovery sweep finds STAN {} abandoned",
                sale + 1
            ),
            Action::CrashAuthorization => write!(f, "AUTHORIZATION CRASHES"),
            Action::CrashHandler { committed } => {
                write!(f, "HANDLER CRASHES, restarts from offset {committed}")
            }
        }
    }
}

/// The constant parts of every record, and the options of one search.
struct Model {
    options: Options,
    /// What sale `s` journaled under RRN slot `r` opens as: `intents[s][r]`.
    intents: Vec<Vec<SaleIntent>>,
    approval_codes: Vec<ApprovalCode>,
}

impl Model {
    fn new(options: Options) -> Model {
        let pan = Pan::parse("4111111111111111").expect("a valid test PAN");
        let fingerprint = PanHasher::new(b"model").fingerprint(&pan);
        let intent = |sale: usize, rrn: usize| SaleIntent {
            transaction_id: TransactionId::from_uuid(uuid::Uuid::from_u128(rrn as u128 + 1)),
            key: RequestKey {
                terminal_id: TerminalId::parse("SIMT0001").expect("valid terminal id"),
                stan: Stan::parse(&format!("{:06}", sale + 1)).expect("valid STAN"),
                local_date: LocalDate::from_date(START.date()),
            },
            merchant_id: MerchantId::parse("SIMMERCHANT").expect("valid merchant id"),
            rrn: Rrn::from_parts(START.date(), rrn as u64 + 1),
            masked_pan: pan.masked(),
            pan_fingerprint: fingerprint.clone(),
            amount: Money::new(AMOUNT, Currency::parse("EUR").expect("EUR")),
            channel: Channel::Card,
        };
        Model {
            options,
            intents: (0..SALES)
                .map(|sale| (0..SALES).map(|rrn| intent(sale, rrn)).collect())
                .collect(),
            approval_codes: (0..SALES)
                .map(|rrn| {
                    ApprovalCode::parse(&format!("A{:05}", rrn + 1)).expect("valid approval code")
                })
                .collect(),
        }
    }

    fn intent(&self, sale: u8, rrn: u8) -> &SaleIntent {
        &self.intents[usize::from(sale)][usize::from(rrn)]
    }

    fn approval_code(&self, rrn: u8) -> &ApprovalCode {
        &self.approval_codes[usize::from(rrn)]
    }

    /// The journal's record of `sale`, whole.
    fn authorization(&self, sale: u8, record: &Record) -> Authorization {
        let intent = self.intent(sale, record.rrn).clone();
        Authorization {
            transaction_id: intent.transaction_id,
            key: intent.key,
            merchant_id: intent.merchant_id,
            rrn: intent.rrn,
            masked_pan: intent.masked_pan,
            pan_fingerprint: intent.pan_fingerprint,
            amount: intent.amount,
            state: record.state,
            response_code: record.response_code,
            approval_code: record
                .approval_code
                .then(|| self.approval_code(record.rrn).clone()),
            acknowledged_at: record.acknowledged_at,
            created_at: record.created_at,
            reversal_reason: record.reversal_reason,
            confirmation_evidence: record.confirmation_evidence,
            conflict_at: record.conflict_at,
            channel: intent.channel,
        }
    }

    /// The part of `authorization` that changes; panics if a decision
    /// changed a part the model keeps constant (the projection would lose it).
    fn record(&self, sale: u8, rrn: u8, authorization: &Authorization) -> Record {
        let intent = self.intent(sale, rrn);
        let Authorization {
            transaction_id,
            key,
            merchant_id,
            rrn: rrn_of,
            masked_pan,
            pan_fingerprint,
            amount,
            state,
            response_code,
            approval_code,
            acknowledged_at,
            created_at,
            reversal_reason,
            confirmation_evidence,
            conflict_at,
            channel,
        } = authorization;
        let constant = *transaction_id == intent.transaction_id
            && *key == intent.key
            && *merchant_id == intent.merchant_id
            && *rrn_of == intent.rrn
            && *masked_pan == intent.masked_pan
            && *pan_fingerprint == intent.pan_fingerprint
            && *amount == intent.amount
            && *channel == intent.channel
            && approval_code
                .as_ref()
                .is_none_or(|code| code == self.approval_code(rrn));
        assert!(
            constant,
            "a decision changed what the model keeps constant: {authorization:?}"
        );
        Record {
            rrn,
            state: *state,
            response_code: *response_code,
            approval_code: approval_code.is_some(),
            acknowledged_at: *acknowledged_at,
            created_at: *created_at,
            reversal_reason: *reversal_reason,
            confirmation_evidence: *confirmation_evidence,
            conflict_at: *conflict_at,
        }
    }

    /// Every action enabled in `s`.
    fn actions(&self, s: &State) -> Vec<Action> {
        self.actions_spent(s, s.spent)
    }

    /// Whether `s` is quiescent: nothing can happen unless a fault does
    /// (no action is enabled once every fault's budget is spent). Faults
    /// are never owed, so a run may stop here, and the quiescence
    /// properties must hold here.
    fn quiescent(&self, s: &State) -> bool {
        let b = self.options.bounds;
        let exhausted = Spent {
            losses: b.losses,
            duplicates: b.duplicates,
            premature: b.premature_timeouts,
            crashes: b.crashes,
            delays: b.delays,
        };
        self.actions_spent(s, exhausted).is_empty()
    }

    /// Every action enabled in `s` were `spent` what the run used.
    fn actions_spent(&self, s: &State, spent: Spent) -> Vec<Action> {
        let bounds = self.options.bounds;
        if self.options.eager_handler && usize::from(s.position) < s.topic.len() {
            return vec![Action::Consume];
        }
        let mut actions = Vec::new();
        let mut previous = None;
        for &msg in &s.bag {
            // Equal messages in flight lead to equal states.
            if previous == Some(msg) {
                continue;
            }
            previous = Some(msg);
            actions.push(Action::Deliver(msg));
            if spent.losses < bounds.losses {
                actions.push(Action::Lose(msg));
            }
            if spent.duplicates < bounds.duplicates {
                actions.push(Action::Duplicate(msg));
            }
        }
        for rrn in 0..SALES as u8 {
            let calls = &s.issuer_calls[usize::from(rrn)];
            for (index, call) in calls.iter().enumerate() {
                let index = index as u8;
                if index == 0 || self.options.reversal_overtakes {
                    let first_sight = matches!(call, IssuerCall::Auth { .. })
                        && s.ledger[usize::from(rrn)].is_none();
                    if first_sight {
                        let mut verdicts = vec![IssuerCode::Approved, IssuerCode::Declined];
                        if self.options.partial_approvals {
                            verdicts.push(IssuerCode::PartiallyApproved);
                        }
                        for verdict in verdicts {
                            actions.push(Action::DeliverIssuerCall {
                                rrn,
                                index,
                                verdict: Some(verdict),
                            });
                        }
                    } else {
                        actions.push(Action::DeliverIssuerCall {
                            rrn,
                            index,
                            verdict: None,
                        });
                    }
                }
                if spent.losses < bounds.losses {
                    actions.push(Action::LoseIssuerCall { rrn, index });
                }
                if spent.duplicates < bounds.duplicates {
                    actions.push(Action::DuplicateIssuerCall { rrn, index });
                }
            }
        }
        let now = s.now();
        let premature_left = spent.premature < bounds.premature_timeouts;
        match s.waiting {
            None if s.started < self.options.sales => actions.push(Action::StartSale),
            Some(w) if premature_left || !s.answer_coming(w.sale) => {
                if w.retries < bounds.terminal_retries {
                    actions.push(Action::RetrySale);
                }
                actions.push(Action::TerminalTimeout);
            }
            None | Some(_) => {}
        }
        for rrn in 0..SALES as u8 {
            let r = usize::from(rrn);
            if s.pending_calls[r] && (premature_left || !s.issuer_answer_coming(rrn)) {
                actions.push(Action::IssuerTimeout(rrn));
            }
            if let Some(entry) = s.queue[r]
                && now >= entry.due_at
                && s.reversal_calls[r].is_none()
            {
                actions.push(Action::SendReversal(rrn));
            }
            if let Some((attempt, _)) = s.reversal_calls[r]
                && (premature_left || !s.reversal_in_flight(rrn, attempt))
            {
                actions.push(Action::ReversalTimeout(rrn));
            }
            if s.watch_due(r) && (premature_left || !s.ask_in_flight(rrn)) {
                actions.push(Action::Sweep(rrn));
            }
        }
        if usize::from(s.position) < s.topic.len() {
            actions.push(Action::Consume);
        }
        let abandoned_before = WINDOWS.abandoned_before(now);
        for sale in 0..SALES as u8 {
            if let Some(record) = &s.records[usize::from(sale)]
                && !self.options.ablation.no_recovery_sweep
                && record.state == AuthorizationState::SentToIssuer
                && record.created_at < abandoned_before
            {
                actions.push(Action::RecoverAbandonedCall(sale));
            }
        }
        if spent.crashes < bounds.crashes {
            let calls = s.pending_calls.iter().any(|p| *p);
            if !calls || self.options.crash_during_issuer_call {
                actions.push(Action::CrashAuthorization);
            }
            for committed in 0..s.position {
                actions.push(Action::CrashHandler { committed });
            }
        }
        if s.epoch < bounds.epochs
            && s.next_deadline().is_some()
            && !s.timer_running()
            && (!s.in_flight() || spent.delays < bounds.delays)
        {
            actions.push(Action::Tick);
        }
        actions
    }

    /// The state `action` leads to from `s`; `log` collects what it decided.
    fn apply(&self, s: &State, action: Action, log: Option<&mut Vec<String>>) -> State {
        let mut step = Step {
            model: self,
            s: s.clone(),
            log,
        };
        step.run(action);
        step.s
    }
}

/// One action being carried out: the adapters' part.
struct Step<'a> {
    model: &'a Model,
    s: State,
    log: Option<&'a mut Vec<String>>,
}

impl Step<'_> {
    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(log) = self.log.as_deref_mut() {
            log.push(format!("      {}", line()));
        }
    }

    /// A timer fired: premature unless what it waits for is lost.
    fn premature_unless(&mut self, lost: impl FnOnce(&State) -> bool) {
        if !lost(&self.s) {
            self.s.spent.premature += 1;
        }
    }

    fn run(&mut self, action: Action) {
        let now = self.s.now();
        match action {
            Action::Deliver(msg) => {
                self.s.take(msg);
                self.deliver(msg);
            }
            Action::DeliverIssuerCall {
                rrn,
                index,
                verdict,
            } => {
                let call = self.s.issuer_calls[usize::from(rrn)].remove(usize::from(index));
                self.issuer(rrn, call, verdict);
            }
            Action::Lose(msg) => {
                self.s.spent.losses += 1;
                self.s.take(msg);
            }
            Action::LoseIssuerCall { rrn, index } => {
                self.s.spent.losses += 1;
                self.s.issuer_calls[usize::from(rrn)].remove(usize::from(index));
            }
            Action::Duplicate(msg) => {
                self.s.spent.duplicates += 1;
                self.s.send(msg);
            }
            Action::DuplicateIssuerCall { rrn, index } => {
                self.s.spent.duplicates += 1;
                let calls = &mut self.s.issuer_calls[usize::from(rrn)];
                let copy = calls[usize::from(index)];
                calls.insert(usize::from(index) + 1, copy);
            }
            Action::Tick => {
                if self.s.in_flight() {
                    self.s.spent.delays += 1;
                }
                self.s.epoch += 1;
            }
            Action::StartSale => {
                let sale = self.s.started;
                self.s.started += 1;
                self.s.waiting = Some(Waiting { sale, retries: 0 });
                self.s.send(Msg::Sale { sale });
            }
            Action::RetrySale => {
                self.premature_unless(|s| !s.answer_coming(s.waiting.expect("waiting").sale));
                let w = self.s.waiting.as_mut().expect("a sale to retry");
                w.retries += 1;
                let sale = w.sale;
                self.s.retried = true;
                self.s.send(Msg::Sale { sale });
            }
            Action::TerminalTimeout => {
                self.premature_unless(|s| !s.answer_coming(s.waiting.expect("waiting").sale));
                let w = self.s.waiting.take().expect("a sale to time out");
                self.s.send(Msg::TerminalReversal { sale: w.sale });
            }
            Action::IssuerTimeout(rrn) => {
                self.premature_unless(|s| !s.issuer_answer_coming(rrn));
                let r = usize::from(rrn);
                self.s.pending_calls[r] = false;
                let created_at = self.s.record_of(rrn).map(|r| r.created_at);
                self.s.late_waits[r] = created_at.map(|at| at + WINDOWS.late_window);
                self.issuer_decided(rrn, IssuerVerdict::Unknown);
            }
            Action::SendReversal(rrn) => {
                let r = usize::from(rrn);
                let entry = self.s.queue[r].expect("a queued reversal");
                let attempt = entry.attempts + 1;
                self.s.reversal_calls[r] = Some((attempt, now));
                let incarnation = self.s.incarnation;
                self.s.issuer_calls[r].push(IssuerCall::Reversal {
                    incarnation,
                    attempt,
                });
            }
            Action::ReversalTimeout(rrn) => {
                let r = usize::from(rrn);
                let (attempt, sent_at) = self.s.reversal_calls[r].take().expect("a reversal call");
                if self.s.reversal_in_flight(rrn, attempt) {
                    self.s.spent.premature += 1;
                }
                self.reversal_answered(rrn, ReversalAnswer::NoAnswer("timeout".into()), sent_at);
            }
            Action::Consume => self.consume(),
            Action::Sweep(rrn) => {
                if self.s.ask_in_flight(rrn) {
                    self.s.spent.premature += 1;
                }
                let policy = self.s.policy;
                self.watch_command(
                    rrn,
                    WatchCommand::Sweep {
                        policy,
                        lease: SWEEP_LEASE,
                    },
                );
            }
            Action::RecoverAbandonedCall(sale) => {
                self.execute(sale, Command::RecoverAbandonedCall { windows: WINDOWS });
            }
            Action::CrashAuthorization => {
                self.s.spent.crashes += 1;
                self.s.authorization_crashed = true;
                self.s.incarnation += 1;
                self.s.pending_calls = [false; SALES];
                self.s.late_waits = [None; SALES];
                self.s.reversal_calls = [None; SALES];
            }
            Action::CrashHandler { committed } => {
                self.s.spent.crashes += 1;
                self.s.handler_crashed = true;
                self.s.position = committed;
            }
        }
    }

    fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::Sale { sale } => self.sale(sale),
            Msg::TerminalReversal { sale } => {
                self.execute(
                    sale,
                    Command::RequestReversal {
                        reason: ReversalReason::TerminalRequested,
                    },
                );
            }
            Msg::Ack { sale } => {
                self.execute(
                    sale,
                    Command::Acknowledge {
                        evidence: Evidence::TerminalAcknowledgement,
                    },
                );
            }
            Msg::Answer { sale, approved } => {
                if self.s.waiting.is_some_and(|w| w.sale == sale) {
                    self.s.waiting = None;
                    if approved {
                        self.s.send(Msg::Ack { sale });
                    }
                }
            }
            Msg::IssuerAuthAnswer {
                rrn,
                code,
                incarnation,
            } => {
                if incarnation != self.s.incarnation {
                    return;
                }
                let r = usize::from(rrn);
                let response_code = code.response_code().as_str().to_owned();
                let approval_code = self.model.approval_code(rrn).as_str().to_owned();
                if self.s.pending_calls[r] {
                    self.s.pending_calls[r] = false;
                    let verdict = match IssuerVerdict::read(&response_code, &approval_code) {
                        Ok(IssuerVerdict::NotAccepted { response_code, .. })
                            if self.model.options.ablation.partial_approval_read_as_decline =>
                        {
                            IssuerVerdict::Declined(response_code)
                        }
                        Ok(verdict) => verdict,
                        Err(_) => IssuerVerdict::Unknown,
                    };
                    self.issuer_decided(rrn, verdict);
                } else if let Some(until) = self.s.late_waits[r].take()
                    && self.s.now() <= until
                    && let Some(sale) = self.s.sale_of(rrn)
                {
                    self.execute(
                        sale,
                        Command::LateIssuerAnswer {
                            response_code,
                            approval_code,
                            latency_ms: 0,
                        },
                    );
                }
            }
            Msg::IssuerReversalAnswer {
                rrn,
                code,
                incarnation,
                attempt,
            } => {
                let r = usize::from(rrn);
                let Some((sent, sent_at)) = self.s.reversal_calls[r] else {
                    return;
                };
                if incarnation != self.s.incarnation || sent != attempt {
                    return;
                }
                self.s.reversal_calls[r] = None;
                self.reversal_answered(
                    rrn,
                    ReversalAnswer::Answered(code.response_code()),
                    sent_at,
                );
            }
            Msg::Ask { rrn, asked } => {
                let Some(sale) = self.s.sale_of(rrn) else {
                    return;
                };
                let command = match asked.decision() {
                    OrphanDecision::Reverse(reason) => Command::RequestReversal { reason },
                    OrphanDecision::Confirm(evidence) => Command::Confirm { evidence },
                };
                let answer = match self.execute(sale, command) {
                    Some(record) => match outcome_of(&record) {
                        Some(outcome) => CallAnswer::Succeeded(Outcome::of(outcome)),
                        None => CallAnswer::Refused,
                    },
                    None => CallAnswer::Refused,
                };
                self.s.send(Msg::AskAnswer { rrn, answer });
            }
            Msg::AskAnswer { rrn, answer } => {
                let command = match answer {
                    CallAnswer::Succeeded(outcome) => WatchCommand::CallSucceeded {
                        outcome: outcome.watch_outcome(),
                    },
                    CallAnswer::Refused => WatchCommand::CallRefused,
                };
                self.watch_command(rrn, command);
            }
        }
    }

    fn sale(&mut self, sale: u8) {
        if let Some(record) = &self.s.records[usize::from(sale)] {
            // A retry: answer with the original's outcome once decided.
            if !record.state.is_in_flight() {
                let approved = matches!(
                    record.state,
                    AuthorizationState::Approved | AuthorizationState::Confirmed
                );
                self.s.send(Msg::Answer { sale, approved });
            }
            return;
        }
        let rrn = self.s.rrn_sequence;
        assert!(usize::from(rrn) < SALES, "one RRN per sale");
        self.s.rrn_sequence += 1;
        let now = self.s.now();
        let intent = self.model.intent(sale, rrn).clone();
        let (authorization, _history) = Authorization::open(intent, now);
        let record = self.model.record(sale, rrn, &authorization);
        self.note(|| format!("rrn#{} journaled: {}", rrn + 1, record.state));
        self.s.records[usize::from(sale)] = Some(record);
        self.s.pending_calls[usize::from(rrn)] = true;
        let incarnation = self.s.incarnation;
        let deadline = WINDOWS.call_deadline(&authorization);
        self.s.issuer_calls[usize::from(rrn)].push(IssuerCall::Auth {
            sale,
            incarnation,
            deadline,
        });
    }

    fn issuer(&mut self, rrn: u8, call: IssuerCall, verdict: Option<IssuerCode>) {
        let r = usize::from(rrn);
        match call {
            IssuerCall::Auth {
                sale,
                incarnation,
                deadline,
            } => {
                if self.s.now() > deadline {
                    // Past its deadline the call is dropped unanswered.
                    self.note(|| format!("issuer drops rrn#{}: past its deadline", rrn + 1));
                    return;
                }
                self.s.rrns_seen[usize::from(sale)] |= 1 << rrn;
                let ledger = *self.s.ledger[r].get_or_insert_with(|| {
                    let answer = verdict.expect("the issuer's choice on first sight");
                    let funds = match answer {
                        IssuerCode::Declined => Funds::Declined,
                        _ => Funds::Held,
                    };
                    Ledger { answer, funds }
                });
                self.note(|| format!("issuer answers rrn#{}: {:?}", rrn + 1, ledger.answer));
                self.s.send(Msg::IssuerAuthAnswer {
                    rrn,
                    code: ledger.answer,
                    incarnation,
                });
            }
            IssuerCall::Reversal {
                incarnation,
                attempt,
            } => {
                let code = match self.s.ledger[r].as_mut() {
                    None => {
                        self.s.reversals_unmatched = true;
                        IssuerCode::NoOriginal
                    }
                    Some(ledger) => {
                        if ledger.funds == Funds::Held {
                            ledger.funds = Funds::Released;
                            self.s.releases[r] += 1;
                        }
                        IssuerCode::Approved
                    }
                };
                self.note(|| {
                    format!(
                        "issuer answers the reversal of rrn#{}: {}",
                        rrn + 1,
                        code.response_code().as_str()
                    )
                });
                self.s.send(Msg::IssuerReversalAnswer {
                    rrn,
                    code,
                    incarnation,
                    attempt,
                });
            }
        }
    }

    fn issuer_decided(&mut self, rrn: u8, verdict: IssuerVerdict) {
        let Some(sale) = self.s.sale_of(rrn) else {
            return;
        };
        if let Some(record) = self.execute(sale, Command::IssuerDecided(verdict)) {
            let approved = record.state == AuthorizationState::Approved;
            self.s.send(Msg::Answer { sale, approved });
        }
    }

    fn reversal_answered(&mut self, rrn: u8, answer: ReversalAnswer, sent_at: OffsetDateTime) {
        let Some(sale) = self.s.sale_of(rrn) else {
            return;
        };
        let Some(entry) = self.s.queue[usize::from(rrn)] else {
            return;
        };
        let attempt = ReversalAttempt {
            attempts: u32::from(entry.attempts) + 1,
            age_ms: millis_between(entry.requested_at, self.s.now()),
            jitter: 0,
            sent_at,
        };
        let windows = if self.model.options.ablation.reversal_ends_on_first_25 {
            IssuerWindows {
                call_timeout: StdDuration::ZERO,
                late_window: StdDuration::ZERO,
            }
        } else {
            WINDOWS
        };
        self.execute(
            sale,
            Command::ReversalAnswered {
                answer,
                attempt,
                schedule: REVERSAL_SCHEDULE,
                windows,
            },
        );
    }

    /// The journal's adapter: load, decide, commit the record and its
    /// effects in one step. Returns the committed record, `None` if refused
    /// or if the sale was never journaled.
    fn execute(&mut self, sale: u8, command: Command) -> Option<Authorization> {
        let record = self.s.records[usize::from(sale)].clone()?;
        let rrn = record.rrn;
        let r = usize::from(rrn);
        let current = self.model.authorization(sale, &record);
        let now = self.s.now();
        let name = command.name();
        let decision = match lifecycle::decide(&current, command, now) {
            Ok(decision) => decision,
            Err(refusal) => {
                self.note(|| {
                    format!(
                        "rrn#{} {name} on {} refused: {refusal}",
                        rrn + 1,
                        record.state
                    )
                });
                return None;
            }
        };
        let next = decision.next;
        self.note(|| format!("rrn#{} {name}: {} -> {}", rrn + 1, record.state, next.state));
        for effect in decision.effects {
            match effect {
                Effect::Announce(announcement) => {
                    self.s.topic.push(Event {
                        rrn,
                        kind: EventKind::of(&announcement),
                        outcome: outcome_of(&next).map(Outcome::of),
                        at: now,
                    });
                }
                Effect::EnqueueReversal { .. } => {
                    self.s.queue[r] = Some(QueueEntry {
                        attempts: 0,
                        requested_at: now,
                        due_at: now,
                    });
                }
                Effect::RetryReversal { delay_ms, .. } => {
                    if let Some(entry) = self.s.queue[r].as_mut() {
                        entry.attempts += 1;
                        entry.due_at = now + StdDuration::from_millis(delay_ms);
                    }
                }
                Effect::CloseReversal(_) => self.s.queue[r] = None,
                Effect::RecordLateAnswer { .. } => {}
            }
        }
        self.s.records[usize::from(sale)] = Some(self.model.record(sale, rrn, &next));
        Some(next)
    }

    fn consume(&mut self) {
        let event = self.s.topic[usize::from(self.s.position)];
        self.s.position += 1;
        let command = match event.kind {
            EventKind::Approved => WatchCommand::Approved {
                approved_at: event.at,
                window: ACK_WINDOW,
            },
            EventKind::IssuerTimedOut => WatchCommand::IssuerTimedOut { at: event.at },
            EventKind::Confirmed
            | EventKind::ReversalRequested
            | EventKind::Reversed
            | EventKind::ReversalDeadLettered => {
                let outcome = match event.kind {
                    EventKind::Reversed => WatchOutcome::Reversed,
                    EventKind::ReversalDeadLettered => WatchOutcome::ReversalDeadLettered,
                    _ => match event.outcome {
                        Some(outcome) => outcome.watch_outcome(),
                        None => return,
                    },
                };
                WatchCommand::Announced {
                    outcome,
                    at: event.at,
                }
            }
            EventKind::Declined
            | EventKind::Acknowledged
            | EventKind::AcknowledgementConflict
            | EventKind::LateIssuerResponse => return,
        };
        self.watch_command(event.rrn, command);
    }

    /// The handler's adapter: load the watch, decide, commit, act.
    fn watch_command(&mut self, rrn: u8, command: WatchCommand) {
        let r = usize::from(rrn);
        let current = self.s.watches[r];
        let Ok(decision) = watch::decide(&current, command, self.s.now()) else {
            return;
        };
        self.s.watches[r] = decision.next;
        for effect in decision.effects {
            if let WatchEffect::Ask { decision, .. } = effect {
                self.note(|| format!("handler asks {decision:?} for rrn#{}", rrn + 1));
                self.s.send(Msg::Ask {
                    rrn,
                    asked: Asked::of(decision),
                });
            }
        }
    }
}

/// What a record's state tells the reversal handler, if it is an outcome.
fn outcome_of(record: &Authorization) -> Option<WatchOutcome> {
    WatchOutcome::of_authorization(
        record.state,
        record.confirmation_evidence,
        record.reversal_reason,
    )
}

fn count(topic: &[Event], rrn: u8, kind: EventKind) -> usize {
    topic
        .iter()
        .filter(|e| e.rrn == rrn && e.kind == kind)
        .count()
}

/// The invariants that hold in every state.
fn check_always(s: &State) -> Result<(), (&'static str, String)> {
    for sale in 0..SALES {
        let seen = s.rrns_seen[sale].count_ones();
        if seen > 1 {
            return Err((
                I3_ONE_AUTHORIZATION,
                format!("STAN {}: the issuer saw {seen} RRNs", sale + 1),
            ));
        }
    }
    for rrn in 0..SALES as u8 {
        let r = usize::from(rrn);
        if s.releases[r] > 1 {
            return Err((
                I2_REVERSED_ONCE,
                format!("rrn#{} released {} times", rrn + 1, s.releases[r]),
            ));
        }
        let reversed = count(&s.topic, rrn, EventKind::Reversed);
        if reversed > 1 {
            return Err((
                I2_REVERSED_ONCE,
                format!("rrn#{} announced reversed {reversed} times", rrn + 1),
            ));
        }
        if reversed > 0 && count(&s.topic, rrn, EventKind::Confirmed) > 0 {
            return Err((
                I1_FINAL,
                format!("rrn#{} announced both confirmed and reversed", rrn + 1),
            ));
        }
    }
    for record in s.records.iter().flatten() {
        let released =
            s.ledger[usize::from(record.rrn)].is_some_and(|l| l.funds == Funds::Released);
        if record.state == AuthorizationState::Confirmed && released {
            return Err((
                I7_FUNDS,
                format!(
                    "rrn#{} confirmed but released at the issuer",
                    record.rrn + 1
                ),
            ));
        }
    }
    Ok(())
}

/// The invariants that hold once nothing is left to do.
fn check_quiescent(s: &State) -> Result<(), (&'static str, String)> {
    for record in s.records.iter().flatten() {
        let ledger = s.ledger[usize::from(record.rrn)];
        let held = ledger.is_some_and(|l| l.funds == Funds::Held);
        if !record.state.is_final() {
            return Err((
                I1_FINAL,
                format!(
                    "rrn#{} ends {}, issuer {:?}",
                    record.rrn + 1,
                    record.state,
                    ledger
                ),
            ));
        }
        let wrong = match record.state {
            AuthorizationState::Reversed | AuthorizationState::Declined => held,
            AuthorizationState::Confirmed => !held,
            _ => false,
        };
        if wrong {
            return Err((
                I7_FUNDS,
                format!(
                    "rrn#{} is {} but the issuer shows {:?}",
                    record.rrn + 1,
                    record.state,
                    ledger
                ),
            ));
        }
    }
    Ok(())
}

fn cover(coverage: &mut Coverage, s: &State) {
    let has = |kind| s.topic.iter().any(|e| e.kind == kind);
    coverage.issuer_timed_out += usize::from(has(EventKind::IssuerTimedOut));
    coverage.late_answers += usize::from(has(EventKind::LateIssuerResponse));
    coverage.acknowledgement_conflicts += usize::from(has(EventKind::AcknowledgementConflict));
    coverage.authorization_crashed += usize::from(s.authorization_crashed);
    coverage.handler_crashed += usize::from(s.handler_crashed);
    coverage.reversals_unmatched += usize::from(s.reversals_unmatched);
    coverage.retried += usize::from(s.retried);
    coverage.premature += usize::from(s.spent.premature > 0);
}

fn cover_quiescent(coverage: &mut Coverage, s: &State) {
    let ended = |state| s.records.iter().flatten().any(|r| r.state == state);
    coverage.ended_confirmed += usize::from(ended(AuthorizationState::Confirmed));
    coverage.ended_reversed += usize::from(ended(AuthorizationState::Reversed));
    coverage.ended_declined += usize::from(ended(AuthorizationState::Declined));
}

/// A state's fingerprint: MurmurHash3's 128-bit x64 mixing over the bytes
/// its `Hash` writes (every field that decides what can happen next).
/// Two distinct states share one with a chance of about n²/2¹²⁹ over n
/// states, below 10⁻²³ for the searches here; keeping fingerprints instead
/// of states is what lets tens of millions of states fit in memory.
#[derive(Default)]
struct Fingerprinter {
    /// Reused for every state.
    bytes: Vec<u8>,
}

impl Fingerprinter {
    fn of(&mut self, s: &State) -> u128 {
        const C1: u64 = 0x87c3_7b91_1142_53d5;
        const C2: u64 = 0x4cf5_ad43_2745_937f;
        let bytes = &mut self.bytes;
        bytes.clear();
        s.hash(&mut ByteWriter(bytes));
        let len = bytes.len() as u64;
        // Zero padding, then the length mixed in below: still one-to-one.
        bytes.resize(bytes.len().next_multiple_of(16), 0);
        // Fixed seeds: the search is the same in every process.
        let (mut h1, mut h2) = (0_u64, 0_u64);
        for block in bytes.chunks_exact(16) {
            let (lo, hi) = block.split_at(8);
            let k1 = u64::from_le_bytes(lo.try_into().expect("8 bytes"));
            let k2 = u64::from_le_bytes(hi.try_into().expect("8 bytes"));
            h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
            h1 = h1
                .rotate_left(27)
                .wrapping_add(h2)
                .wrapping_mul(5)
                .wrapping_add(0x52dc_e729);
            h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
            h2 = h2
                .rotate_left(31)
                .wrapping_add(h1)
                .wrapping_mul(5)
                .wrapping_add(0x3849_5ab5);
        }
        h1 ^= len;
        h2 ^= len;
        h1 = h1.wrapping_add(h2);
        h2 = h2.wrapping_add(h1);
        h1 = fmix64(h1);
        h2 = fmix64(h2);
        h1 = h1.wrapping_add(h2);
        h2 = h2.wrapping_add(h1);
        (u128::from(h1) << 64) | u128::from(h2)
    }
}

/// MurmurHash3's finalizer: every input bit flips each output bit with
/// probability one half.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// Collects what a `Hash` writes, so that it is hashed in one pass.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl Hasher for ByteWriter<'_> {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("the bytes are hashed by Fingerprinter::of")
    }
}

/// The states reached: per fingerprint of everything but `spent`, the set
/// of budgets it was reached with (a bit per `Spent`).
///
/// A state reached again having spent at least as much of every fault's
/// budget as before is subsumed: every action enabled in it is enabled in
/// the earlier one (a fault needs budget left, nothing else reads what was
/// spent) and leads to the same state having spent no more, so everything
/// it can reach, the earlier one reaches in as many steps, and the
/// invariants do not read `spent`. Breadth first, the earlier one is no
/// deeper: the first violation found is still a shortest one.
struct Visited {
    budgets: HashMap<u128, u64, BuildHasherDefault<FingerprintHasher>>,
    fingerprinter: Fingerprinter,
    /// How many values each fault's spending can take (its bound + 1).
    radix: [u8; 5],
    /// Per budget index, the bits of every budget spent no more than it.
    no_more: Vec<u64>,
}

impl Visited {
    fn new(bounds: Bounds) -> Visited {
        let radix = [
            bounds.losses,
            bounds.duplicates,
            bounds.premature_timeouts,
            bounds.crashes,
            bounds.delays,
        ]
        .map(|b| b + 1);
        let budgets: usize = radix.iter().map(|r| usize::from(*r)).product();
        assert!(budgets <= 64, "a bit per budget: at most 64 budgets");
        let digits = |mut index: usize| {
            radix.map(|r| {
                let digit = (index % usize::from(r)) as u8;
                index /= usize::from(r);
                digit
            })
        };
        let no_more = (0..budgets)
            .map(|v| {
                let dv = digits(v);
                (0..budgets)
                    .filter(|&u| digits(u).iter().zip(&dv).all(|(a, b)| a <= b))
                    .fold(0_u64, |bits, u| bits | 1 << u)
            })
            .collect();
        Visited {
            budgets: HashMap::default(),
            fingerprinter: Fingerprinter::default(),
            radix,
            no_more,
        }
    }

    fn index(&self, spent: Spent) -> usize {
        let digits = [
            spent.losses,
            spent.duplicates,
            spent.premature,
            spent.crashes,
            spent.delays,
        ];
        digits
            .iter()
            .zip(self.radix)
            .rev()
            .fold(0, |index, (d, r)| index * usize::from(r) + usize::from(*d))
    }

    /// Records `s`; false if it was reached before having spent no more.
    fn insert(&mut self, s: &State) -> bool {
        let fingerprint = self.fingerprinter.of(s);
        let index = self.index(s.spent);
        let bits = self.budgets.entry(fingerprint).or_insert(0);
        if *bits & self.no_more[index] != 0 {
            return false;
        }
        *bits |= 1 << index;
        true
    }
}

/// The visited set's own hash of a fingerprint: its low bits, already
/// uniformly spread.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, fingerprint: u128) {
        self.0 = fingerprint as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Explores every state reachable under `options`, breadth first, and
/// checks the invariants in each; stops at the first violation.
pub fn check(options: Options) -> Report {
    let started = Instant::now();
    let model = Model::new(options);
    let mut visited = Visited::new(options.bounds);
    let mut subsumed = 0;
    // Per state: its parent and the action that reached it first.
    let mut parents: Vec<Option<(u32, Action)>> = Vec::new();
    let mut depths: Vec<u32> = Vec::new();
    let mut frontier: VecDeque<(State, u32)> = VecDeque::new();
    let mut coverage = Coverage::default();
    let mut transitions = 0;
    let mut quiescent = 0;
    let mut cut = 0;
    let mut violation = None;

    let initial: Vec<State> = [OrphanPolicy::Reverse, OrphanPolicy::Confirm]
        .into_iter()
        .map(State::initial)
        .collect();
    for s in &initial {
        let id = parents.len() as u32;
        parents.push(None);
        depths.push(0);
        visited.insert(s);
        frontier.push_back((s.clone(), id));
    }

    'search: while let Some((s, id)) = frontier.pop_front() {
        if model.quiescent(&s) {
            if s.next_deadline().is_some() {
                cut += 1;
            } else {
                quiescent += 1;
                cover_quiescent(&mut coverage, &s);
                if let Err((invariant, detail)) = check_quiescent(&s) {
                    violation = Some((invariant, detail, id));
                    break 'search;
                }
            }
        }
        for action in model.actions(&s) {
            transitions += 1;
            let next = model.apply(&s, action, None);
            if !visited.insert(&next) {
                subsumed += 1;
                continue;
            }
            let next_id = parents.len() as u32;
            parents.push(Some((id, action)));
            depths.push(depths[id as usize] + 1);
            cover(&mut coverage, &next);
            if let Err((invariant, detail)) = check_always(&next) {
                violation = Some((invariant, detail, next_id));
                break 'search;
            }
            frontier.push_back((next, next_id));
        }
    }

    let violation = violation.map(|(invariant, detail, id)| {
        let mut path = Vec::new();
        let mut at = id;
        while let Some((parent, action)) = parents[at as usize] {
            path.push(action);
            at = parent;
        }
        path.reverse();
        let mut s = initial[at as usize].clone();
        let mut steps = vec![format!("merchant's orphan policy: {:?}", s.policy)];
        for action in &path {
            steps.push(format!("epoch {}: {action}", s.epoch));
            s = model.apply(&s, *action, Some(&mut steps));
        }
        Counterexample {
            invariant,
            detail,
            steps,
            actions: path.len(),
        }
    });
    Report {
        states: parents.len(),
        transitions,
        subsumed,
        quiescent,
        cut,
        depth: depths.iter().copied().max().unwrap_or(0) as usize,
        elapsed: started.elapsed(),
        coverage,
        violation,
    }
}
